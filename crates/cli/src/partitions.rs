//! `tide partitions reassign`: moves partition replicas between brokers while producers and
//! consumers keep running (an explicit plan, or `--balance`), shows moves in progress
//! (`--status`) and cancels them (`--cancel`). The controller does the moving; this command
//! plans, submits and watches.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tideline_client::reassign::{Assignment, balance_plan};
use tideline_client::{Admin, Metadata};
use tideline_proto::v1 as pb;

use crate::admin::{connect, ids};
use crate::output::{self, Output};

/// `tide partitions` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PartitionsCommand {
    /// Move replicas between brokers: an explicit plan, or --balance to spread replicas and
    /// preferred leaders evenly (e.g. after adding brokers). New replicas copy the log, join
    /// the ISR, take the lead where they are first in the target, and then the old replicas
    /// leave; producers and consumers follow the leaders. Also --status and --cancel.
    Reassign(ReassignArgs),
}

/// Options of `tide partitions reassign`.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("action").required(true).args(["plan", "balance", "status", "cancel"])
))]
pub struct ReassignArgs {
    /// Submit this plan, a JSON file: {"partitions":[{"topic":"t","partition":0,
    /// "replicas":[1,2,3]}]} (what --balance --dry-run --output json prints).
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Plan and submit moves that spread replicas and preferred leaders evenly over the
    /// registered brokers (refused while one is down), or over --brokers.
    #[arg(long)]
    balance: bool,
    /// With --balance: the brokers to spread over; replicas on any other broker move off it
    /// (to empty a broker before removing it).
    #[arg(long, value_delimiter = ',', requires = "balance")]
    brokers: Vec<i32>,
    /// With --balance: only this topic (repeatable; default: every topic, internal ones too).
    #[arg(long = "topic", requires = "balance")]
    topics: Vec<String>,
    /// With --balance: print the plan and submit nothing.
    #[arg(long, requires = "balance")]
    dry_run: bool,
    /// Bytes per second each broker receiving replicas may copy for them, over all its moving
    /// partitions (0: no limit). Submitting the same plan again changes it.
    #[arg(long, default_value_t = 0)]
    throttle: u64,
    /// Return only once every submitted move completed, printing progress on stderr.
    #[arg(long)]
    wait: bool,
    /// Show the partitions moving now.
    #[arg(long)]
    status: bool,
    /// Cancel every move in progress: each partition goes back to its replicas from before.
    #[arg(long)]
    cancel: bool,
}

/// A plan as JSON.
#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    partitions: Vec<PlannedPartition>,
}

/// One partition's target in a plan.
#[derive(Debug, Serialize, Deserialize)]
struct PlannedPartition {
    topic: String,
    partition: i32,
    replicas: Vec<i32>,
}

/// Runs a `tide partitions` subcommand.
pub async fn partitions(
    bootstrap: &[String],
    out: Output,
    command: PartitionsCommand,
) -> anyhow::Result<()> {
    let PartitionsCommand::Reassign(args) = command;
    let admin = Admin::new(&connect(bootstrap)?);
    if args.status {
        return status(&admin, out).await;
    }
    if args.cancel {
        let answer = admin.cancel_reassignments(&[]).await?;
        return report(out, "cancelled", &answer);
    }
    let moves: Vec<Assignment> = if let Some(path) = &args.plan {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read plan {}", path.display()))?;
        let plan: Plan = serde_json::from_str(&text)
            .with_context(|| format!("plan {} is not a reassignment plan", path.display()))?;
        plan.partitions.into_iter().map(|p| (p.topic, p.partition, p.replicas)).collect()
    } else {
        let moves = balance(&admin, &args).await?;
        print_plan(&moves, out);
        if args.dry_run || moves.is_empty() {
            return Ok(());
        }
        moves
    };
    if moves.is_empty() {
        bail!("the plan moves no partition");
    }
    let answer = admin.reassign_partitions(&moves, args.throttle).await?;
    // The plan went to stdout already with --balance; JSON output stays one document.
    if args.plan.is_some() || out == Output::Table {
        report(out, "submitted", &answer)?;
    }
    if args.wait {
        wait(&admin, &moves).await?;
    }
    Ok(())
}

/// The moves that balance the chosen topics over the chosen brokers.
async fn balance(admin: &Admin, args: &ReassignArgs) -> anyhow::Result<Vec<Assignment>> {
    let m = admin.metadata(&[]).await?;
    let moving: Vec<String> =
        moving(&m).iter().map(|(topic, p)| format!("{topic}/{}", p.partition)).collect();
    if !moving.is_empty() {
        bail!(
            "{} partition(s) are moving ({}); wait for them (--status) or --cancel first",
            moving.len(),
            moving.join(", ")
        );
    }
    let brokers: Vec<i32> = if args.brokers.is_empty() {
        // Every registered broker. One that is down or stopping right now (a restart) would be
        // emptied by the plan: that must be asked for by name.
        let down: Vec<String> = m
            .brokers()
            .filter(|b| b.fenced || b.shutting_down)
            .filter_map(|b| b.endpoint.as_ref().map(|e| e.broker_id.to_string()))
            .collect();
        if !down.is_empty() {
            bail!(
                "broker(s) {} are down or stopping; the plan would move every replica off them: \
                 wait for them, or list the brokers to balance over with --brokers",
                down.join(",")
            );
        }
        m.brokers().filter_map(|b| b.endpoint.as_ref().map(|e| e.broker_id)).collect()
    } else {
        for id in &args.brokers {
            if m.broker(*id).is_none() {
                bail!("--brokers names broker {id}, which is not registered");
            }
        }
        args.brokers.clone()
    };
    for name in &args.topics {
        if m.topic(name).is_none() {
            bail!("unknown topic {name}");
        }
    }
    let current: Vec<Assignment> = m
        .topics()
        .filter(|t| args.topics.is_empty() || args.topics.contains(&t.name))
        .flat_map(|t| {
            t.partitions.iter().map(|p| (t.name.clone(), p.partition, p.replicas.clone()))
        })
        .collect();
    Ok(balance_plan(&brokers, &current)?)
}

fn print_plan(moves: &[Assignment], out: Output) {
    if out == Output::Json {
        let plan = Plan {
            partitions: moves
                .iter()
                .map(|(topic, partition, replicas)| PlannedPartition {
                    topic: topic.clone(),
                    partition: *partition,
                    replicas: replicas.clone(),
                })
                .collect(),
        };
        return output::json(&serde_json::to_value(plan).expect("serializable"));
    }
    if moves.is_empty() {
        return output::emit("already balanced: nothing to move\n");
    }
    let rows: Vec<Vec<String>> = moves
        .iter()
        .map(|(topic, partition, replicas)| {
            vec![topic.clone(), partition.to_string(), ids(replicas)]
        })
        .collect();
    output::table(&["TOPIC", "PARTITION", "TARGET REPLICAS"], &rows);
}

fn report(
    out: Output,
    what: &str,
    answer: &pb::AlterPartitionReassignmentsResponse,
) -> anyhow::Result<()> {
    if out == Output::Json {
        output::json(&json!({ "moving": answer.moving, "completed": answer.completed }));
    } else {
        output::emit(&format!(
            "{what}: {} partition(s) moving, {} completed at once\n",
            answer.moving, answer.completed
        ));
    }
    Ok(())
}

/// Every partition moving now: replicas, target, adding, removing, ISR.
async fn status(admin: &Admin, out: Output) -> anyhow::Result<()> {
    let m = admin.metadata(&[]).await?;
    let moving = moving(&m);
    if out == Output::Json {
        output::json(&json!({
            "reassignments": moving.iter().map(|(topic, p)| json!({
                "topic": topic,
                "partition": p.partition,
                "replicas": p.replicas,
                "target": p.target_replicas,
                "adding": p.adding_replicas,
                "removing": p.removing_replicas,
                "isr": p.isr,
                "leader": p.leader,
                "throttle_bytes_per_sec": p.reassignment_throttle,
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    if moving.is_empty() {
        output::emit("no partition is moving\n");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = moving
        .iter()
        .map(|(topic, p)| {
            let waiting: Vec<i32> =
                p.adding_replicas.iter().copied().filter(|r| !p.isr.contains(r)).collect();
            vec![
                topic.to_string(),
                p.partition.to_string(),
                ids(&p.replicas),
                ids(&p.target_replicas),
                ids(&p.adding_replicas),
                ids(&p.removing_replicas),
                ids(&p.isr),
                if waiting.is_empty() {
                    "completing".into()
                } else {
                    format!("{} catching up", ids(&waiting))
                },
                if p.reassignment_throttle == 0 {
                    "none".into()
                } else {
                    format!("{} B/s", p.reassignment_throttle)
                },
            ]
        })
        .collect();
    output::table(
        &[
            "TOPIC",
            "PARTITION",
            "REPLICAS",
            "TARGET",
            "ADDING",
            "REMOVING",
            "ISR",
            "STATE",
            "THROTTLE",
        ],
        &rows,
    );
    Ok(())
}

/// Polls the metadata until no partition of `moves` is moving, reporting on stderr whenever
/// the count changes.
async fn wait(admin: &Admin, moves: &[Assignment]) -> anyhow::Result<()> {
    let mut last = usize::MAX;
    loop {
        let m = admin.metadata(&[]).await?;
        let moving = moves
            .iter()
            .filter(|(topic, partition, _)| {
                m.partition(topic, *partition).is_some_and(|p| !p.target_replicas.is_empty())
            })
            .count();
        if moving != last {
            eprintln!("{moving} of {} partition(s) still moving", moves.len());
            last = moving;
        }
        if moving == 0 {
            // Completed, or cancelled meanwhile: say which.
            let differ: Vec<String> = moves
                .iter()
                .filter(|(topic, partition, target)| {
                    m.partition(topic, *partition).is_some_and(|p| p.replicas != *target)
                })
                .map(|(topic, partition, _)| format!("{topic}/{partition}"))
                .collect();
            if !differ.is_empty() {
                bail!("the moves of {} were cancelled", differ.join(", "));
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every partition moving now, with its topic.
fn moving(m: &Metadata) -> Vec<(&str, &pb::PartitionMetadata)> {
    m.topics()
        .flat_map(|t| {
            let moving = t.partitions.iter().filter(|p| !p.target_replicas.is_empty());
            moving.map(move |p| (t.name.as_str(), p))
        })
        .collect()
}
