//! `tide topic ...` and `tide cluster status`: admin through the controllers.

use std::collections::HashMap;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tideline_client::{Admin, ClientConfig, Cluster};
use tideline_proto::v1 as pb;
use tideline_proto::v1::controller_service_client::ControllerServiceClient;

use crate::output::{self, Output};

/// `tide topic` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name: [a-zA-Z0-9._-], at most 249 characters.
        name: String,
        /// Number of partitions.
        #[arg(long, short, default_value_t = 1)]
        partitions: i32,
        /// Replicas per partition (at most the number of live brokers).
        #[arg(long, short, default_value_t = 1)]
        replication_factor: i32,
        /// Topic config KEY=VALUE (repeatable), e.g. retention.ms=86400000.
        #[arg(long = "config", short)]
        configs: Vec<String>,
    },
    /// List topics.
    List,
    /// Show a topic's partitions, leaders, replicas, ISR and configs.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
    },
    /// Change a topic's configs or add partitions.
    Alter {
        /// Topic name.
        name: String,
        /// Set a config KEY=VALUE (repeatable).
        #[arg(long)]
        set: Vec<String>,
        /// Remove a config KEY, back to the default (repeatable).
        #[arg(long)]
        remove: Vec<String>,
        /// Increase the partition count to this total.
        #[arg(long)]
        partitions: Option<i32>,
    },
}

/// `tide cluster` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Controllers (Raft role, term, commit index), brokers (address, epoch, fenced), topics.
    Status,
}

/// A client for `bootstrap`.
pub fn connect(bootstrap: &[String]) -> anyhow::Result<Cluster> {
    Ok(Cluster::new(ClientConfig::new(bootstrap.iter().cloned()))?)
}

fn key_values(pairs: &[String]) -> anyhow::Result<HashMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            let (k, v) = p.split_once('=').with_context(|| format!("{p:?} is not KEY=VALUE"))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

fn topic_json(t: &pb::TopicMetadata) -> Value {
    json!({
        "name": t.name,
        "topic_id": t.topic_id.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "replication_factor": t.replication_factor,
        "configs": t.configs,
        "partitions": t.partitions.iter().map(|p| json!({
            "partition": p.partition,
            "leader": p.leader,
            "leader_epoch": p.leader_epoch,
            "replicas": p.replicas,
            "isr": p.isr,
        })).collect::<Vec<_>>(),
    })
}

/// Broker ids as `1,2,3`.
pub(crate) fn ids(v: &[i32]) -> String {
    v.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

fn print_topic(t: &pb::TopicMetadata, out: Output) {
    if out == Output::Json {
        return output::json(&topic_json(t));
    }
    let mut configs: Vec<_> = t.configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    configs.sort();
    output::emit(&format!(
        "topic {}  partitions {}  replication factor {}  configs {}\n",
        t.name,
        t.partitions.len(),
        t.replication_factor,
        if configs.is_empty() { "(defaults)".to_string() } else { configs.join(" ") }
    ));
    let rows: Vec<Vec<String>> = t
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.partition.to_string(),
                if p.leader < 0 { "none".into() } else { p.leader.to_string() },
                p.leader_epoch.to_string(),
                ids(&p.replicas),
                ids(&p.isr),
            ]
        })
        .collect();
    output::table(&["PARTITION", "LEADER", "EPOCH", "REPLICAS", "ISR"], &rows);
}

/// Runs a `tide topic` subcommand.
pub async fn topic(bootstrap: &[String], out: Output, command: TopicCommand) -> anyhow::Result<()> {
    let admin = Admin::new(&connect(bootstrap)?);
    match command {
        TopicCommand::Create { name, partitions, replication_factor, configs } => {
            let t = admin
                .create_topic(&name, partitions, replication_factor, key_values(&configs)?)
                .await?;
            if out == Output::Table {
                output::emit(&format!("created topic {name}\n"));
            }
            print_topic(&t, out);
        }
        TopicCommand::List => {
            let names = admin.list_topics().await?;
            if out == Output::Json {
                output::json(&json!(names));
            } else {
                output::emit(&names.iter().map(|n| format!("{n}\n")).collect::<String>());
            }
        }
        TopicCommand::Describe { name } => print_topic(&admin.describe_topic(&name).await?, out),
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            if out == Output::Json {
                output::json(&json!({ "deleted": name }));
            } else {
                output::emit(&format!("deleted topic {name}\n"));
            }
        }
        TopicCommand::Alter { name, set, remove, partitions } => {
            if set.is_empty() && remove.is_empty() && partitions.is_none() {
                bail!("nothing to alter: give --set, --remove or --partitions");
            }
            let mut t = None;
            if !set.is_empty() || !remove.is_empty() {
                t = Some(admin.alter_topic_config(&name, key_values(&set)?, remove).await?);
            }
            if let Some(total) = partitions {
                t = Some(admin.create_partitions(&name, total).await?);
            }
            if let Some(t) = t {
                print_topic(&t, out);
            }
        }
    }
    Ok(())
}

/// Runs a `tide cluster` subcommand.
pub async fn cluster(
    bootstrap: &[String],
    out: Output,
    command: ClusterCommand,
) -> anyhow::Result<()> {
    let ClusterCommand::Status = command;
    // Every controller answers for itself; one that is down shows as such.
    let mut controllers = Vec::new();
    for addr in bootstrap {
        // One controller that hangs must not hang the command.
        let ask = async {
            let mut c = ControllerServiceClient::connect(format!("http://{addr}"))
                .await
                .map_err(|e| format!("unreachable: {e}"))?;
            c.get_controller_status(pb::GetControllerStatusRequest {})
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| s.message().to_string())
        };
        let status = tokio::time::timeout(std::time::Duration::from_secs(5), ask)
            .await
            .unwrap_or_else(|_| Err("no answer within 5 s".into()));
        controllers.push((addr.clone(), status));
    }
    let admin = Admin::new(&connect(bootstrap)?);
    let m = admin.metadata(&[]).await?;
    let mut brokers: Vec<&pb::BrokerMetadata> = m.brokers().collect();
    brokers.sort_by_key(|b| b.endpoint.as_ref().map_or(-1, |e| e.broker_id));
    let topics: Vec<&pb::TopicMetadata> = m.topics().collect();
    let offline: usize =
        topics.iter().map(|t| t.partitions.iter().filter(|p| p.leader < 0).count()).sum();
    let under_replicated: usize = topics
        .iter()
        .map(|t| {
            t.partitions
                .iter()
                .filter(|p| {
                    // Replicas being added in a reassignment are not missing ones.
                    let mut wanted = p.replicas.iter().filter(|r| !p.adding_replicas.contains(r));
                    p.leader >= 0 && wanted.any(|r| !p.isr.contains(r))
                })
                .count()
        })
        .sum();
    if out == Output::Json {
        return {
            output::json(&json!({
                "controllers": controllers.iter().map(|(addr, s)| match s {
                    Ok(s) => json!({"address": addr, "node_id": s.node_id, "leader_id": s.leader_id,
                        "term": s.term, "commit_index": s.commit_index, "metadata_version": s.metadata_version}),
                    Err(e) => json!({"address": addr, "error": e}),
                }).collect::<Vec<_>>(),
                "brokers": brokers.iter().map(|b| {
                    let e = b.endpoint.clone().unwrap_or_default();
                    json!({"broker_id": e.broker_id, "host": e.host, "port": e.port, "rack": e.rack,
                        "broker_epoch": b.broker_epoch, "fenced": b.fenced})
                }).collect::<Vec<_>>(),
                "topics": topics.len(),
                "partitions_without_leader": offline,
                "under_replicated_partitions": under_replicated,
            }));
            Ok(())
        };
    }
    let rows: Vec<Vec<String>> = controllers
        .iter()
        .map(|(addr, s)| match s {
            Ok(s) => vec![
                s.node_id.to_string(),
                addr.clone(),
                if s.leader_id == s.node_id { "leader".into() } else { "follower".into() },
                s.term.to_string(),
                s.commit_index.to_string(),
            ],
            Err(e) => vec!["?".into(), addr.clone(), e.clone(), String::new(), String::new()],
        })
        .collect();
    output::table(&["CONTROLLER", "ADDRESS", "ROLE", "TERM", "COMMIT"], &rows);
    output::emit("\n");
    let rows: Vec<Vec<String>> = brokers
        .iter()
        .map(|b| {
            let e = b.endpoint.clone().unwrap_or_default();
            vec![
                e.broker_id.to_string(),
                format!("{}:{}", e.host, e.port),
                if e.rack.is_empty() { "-".into() } else { e.rack },
                b.broker_epoch.to_string(),
                if b.fenced { "fenced".into() } else { "live".into() },
            ]
        })
        .collect();
    output::table(&["BROKER", "ADDRESS", "RACK", "EPOCH", "STATE"], &rows);
    output::emit(&format!(
        "\n{} topic(s), {offline} partition(s) without a leader, {under_replicated} under-replicated\n",
        topics.len()
    ));
    Ok(())
}
