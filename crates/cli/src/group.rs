//! `tide group ...`: consumer groups through their coordinators: list, describe (members,
//! assignments, committed offsets and lag), delete, and reset the committed offsets of a
//! group without members.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde_json::json;
use tideline_client::{
    Admin, ClientError, Consumer, ConsumerConfig, DescribeGroupResponse, ErrorCode,
};

use crate::admin::connect;
use crate::output::{self, Output};

/// `tide group` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum GroupCommand {
    /// List consumer groups and their states.
    List,
    /// Show a group's state, its members and their assignments, and per partition the
    /// committed offset, end offset, lag and owner.
    Describe {
        /// Group id.
        group: String,
    },
    /// Delete a group without members, and its committed offsets.
    Delete {
        /// Group id.
        group: String,
    },
    /// Set a group's committed offsets for a topic (only while the group has no members).
    ResetOffsets(ResetOffsetsArgs),
}

/// Options of `tide group reset-offsets`.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("target")
        .required(true)
        .args(["to_earliest", "to_latest", "to_offset", "to_datetime"])
))]
pub struct ResetOffsetsArgs {
    /// Group id.
    pub group: String,
    /// Topic whose offsets to reset.
    #[arg(long)]
    pub topic: String,
    /// Only this partition (default: all of the topic's).
    #[arg(long)]
    pub partition: Option<i32>,
    /// To the first offset of each partition's log.
    #[arg(long)]
    pub to_earliest: bool,
    /// To the end of each partition's log (skip everything there now).
    #[arg(long)]
    pub to_latest: bool,
    /// To this offset (kept within each partition's log).
    #[arg(long)]
    pub to_offset: Option<i64>,
    /// To the first record at or after this time: RFC 3339 (2026-05-01T12:00:00Z) or ms since
    /// the Unix epoch.
    #[arg(long)]
    pub to_datetime: Option<String>,
    /// Print the plan without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs a `tide group` subcommand.
pub async fn group(bootstrap: &[String], out: Output, command: GroupCommand) -> anyhow::Result<()> {
    let cluster = connect(bootstrap)?;
    let admin = Admin::new(&cluster);
    match command {
        GroupCommand::List => {
            let groups = admin.list_groups().await?;
            if out == Output::Json {
                output::json(&json!(
                    groups
                        .iter()
                        .map(
                            |g| json!({"group_id": g.group_id, "state": g.state, "shard": g.shard})
                        )
                        .collect::<Vec<_>>()
                ));
            } else {
                let rows: Vec<Vec<String>> = groups
                    .iter()
                    .map(|g| vec![g.group_id.clone(), g.state.clone(), g.shard.to_string()])
                    .collect();
                output::table(&["GROUP", "STATE", "SHARD"], &rows);
            }
        }
        GroupCommand::Describe { group } => print_group(&admin.describe_group(&group).await?, out),
        GroupCommand::Delete { group } => {
            admin.delete_group(&group).await.map_err(|e| refused_while_members(e, &group))?;
            if out == Output::Json {
                output::json(&json!({ "deleted": group }));
            } else {
                output::emit(&format!("deleted group {group}\n"));
            }
        }
        GroupCommand::ResetOffsets(args) => reset_offsets(&admin, &cluster, out, args).await?,
    }
    Ok(())
}

/// A clearer one-line error for NON_EMPTY_GROUP.
fn refused_while_members(error: ClientError, group: &str) -> anyhow::Error {
    if error.code() == Some(ErrorCode::NonEmptyGroup) {
        anyhow::Error::new(error)
            .context(format!("group {group} has members: stop its consumers first"))
    } else {
        error.into()
    }
}

/// `orders:0,1 payments:3`.
fn partitions_text(partitions: &[tideline_proto::v1::TopicPartition]) -> String {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in partitions {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    if by_topic.is_empty() {
        return "-".into();
    }
    by_topic
        .iter_mut()
        .map(|(topic, ps)| {
            ps.sort_unstable();
            let ps: Vec<String> = ps.iter().map(i32::to_string).collect();
            format!("{topic}:{}", ps.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn opt(value: Option<i64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn print_group(g: &DescribeGroupResponse, out: Output) {
    if out == Output::Json {
        return output::json(&json!({
            "group_id": g.group_id,
            "state": g.state,
            "group_epoch": g.group_epoch,
            "assignor": g.assignor,
            "members": g.members.iter().map(|m| json!({
                "member_id": m.member_id,
                "instance_id": m.instance_id,
                "member_epoch": m.member_epoch,
                "rack": m.rack,
                "subscribed_topics": m.subscribed_topics,
                "subscribed_regex": m.subscribed_regex,
                "assignment": m.assignment.iter()
                    .map(|tp| json!({"topic": tp.topic, "partition": tp.partition}))
                    .collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "partitions": g.partitions.iter().map(|p| json!({
                "topic": p.topic,
                "partition": p.partition,
                "committed_offset": p.committed_offset,
                "end_offset": p.end_offset,
                "lag": p.lag,
                "owner": p.owner,
            })).collect::<Vec<_>>(),
        }));
    }
    output::emit(&format!(
        "group {}  state {}  epoch {}  assignor {}  members {}\n",
        g.group_id,
        g.state,
        g.group_epoch,
        if g.assignor.is_empty() { "-" } else { &g.assignor },
        g.members.len()
    ));
    if !g.members.is_empty() {
        output::emit("\n");
        let rows: Vec<Vec<String>> = g
            .members
            .iter()
            .map(|m| {
                let mut subscription = m.subscribed_topics.join(",");
                if let Some(pattern) = &m.subscribed_regex {
                    if !subscription.is_empty() {
                        subscription.push(' ');
                    }
                    subscription.push_str(&format!("/{pattern}/"));
                }
                vec![
                    m.member_id.clone(),
                    m.instance_id.clone().unwrap_or_else(|| "-".into()),
                    m.member_epoch.to_string(),
                    m.rack.clone().unwrap_or_else(|| "-".into()),
                    subscription,
                    partitions_text(&m.assignment),
                ]
            })
            .collect();
        output::table(
            &["MEMBER", "INSTANCE", "EPOCH", "RACK", "SUBSCRIPTION", "ASSIGNMENT"],
            &rows,
        );
    }
    if !g.partitions.is_empty() {
        output::emit("\n");
        let rows: Vec<Vec<String>> = g
            .partitions
            .iter()
            .map(|p| {
                vec![
                    p.topic.clone(),
                    p.partition.to_string(),
                    opt(p.committed_offset),
                    opt(p.end_offset),
                    opt(p.lag),
                    p.owner.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        output::table(&["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "OWNER"], &rows);
    }
}

/// Runs `tide group reset-offsets`: finds the new offset of each partition through its
/// leader's ListOffsets, prints the plan, and (unless a dry run) commits it as an admin.
async fn reset_offsets(
    admin: &Admin,
    cluster: &tideline_client::Cluster,
    out: Output,
    args: ResetOffsetsArgs,
) -> anyhow::Result<()> {
    let topic = admin.describe_topic(&args.topic).await?;
    let partitions: Vec<i32> = match args.partition {
        Some(p) if topic.partitions.iter().any(|x| x.partition == p) => vec![p],
        Some(p) => bail!(
            "topic {} has {} partitions; there is no partition {p}",
            args.topic,
            topic.partitions.len()
        ),
        None => topic.partitions.iter().map(|p| p.partition).collect(),
    };
    let timestamp_ms = args.to_datetime.as_deref().map(parse_datetime).transpose()?;
    if args.to_offset.is_some_and(|o| o < 0) {
        bail!("--to-offset must not be negative");
    }
    let mut lookup = Consumer::new(cluster, ConsumerConfig::default())?;
    lookup.assign(partitions.iter().map(|&p| (args.topic.clone(), p)).collect());
    let mut plan = BTreeMap::new();
    for &p in &partitions {
        let offset = if args.to_earliest {
            lookup.seek_to_beginning(&args.topic, p).await?
        } else if args.to_latest {
            lookup.seek_to_end(&args.topic, p).await?
        } else if let Some(offset) = args.to_offset {
            let start = lookup.seek_to_beginning(&args.topic, p).await?;
            let end = lookup.seek_to_end(&args.topic, p).await?;
            offset.clamp(start, end.max(start))
        } else if let Some(ms) = timestamp_ms {
            lookup.seek_to_timestamp(&args.topic, p, ms).await?
        } else {
            unreachable!("clap requires one of the --to-* options")
        };
        plan.insert((args.topic.clone(), p), offset);
    }
    let current: BTreeMap<(String, i32), i64> = admin
        .fetch_offsets(&args.group)
        .await?
        .into_iter()
        .map(|o| ((o.topic, o.partition), o.offset))
        .collect();
    if !args.dry_run {
        admin
            .commit_offsets_admin(&args.group, &plan)
            .await
            .map_err(|e| refused_while_members(e, &args.group))
            .with_context(|| format!("cannot reset offsets of group {}", args.group))?;
    }
    if out == Output::Json {
        output::json(&json!({
            "group": args.group,
            "dry_run": args.dry_run,
            "partitions": plan.iter().map(|((t, p), new)| json!({
                "topic": t, "partition": p,
                "current_offset": current.get(&(t.clone(), *p)), "new_offset": new,
            })).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    output::emit(&if args.dry_run {
        format!("dry run: would reset offsets of group {} (nothing changed)\n", args.group)
    } else {
        format!("reset offsets of group {}\n", args.group)
    });
    let rows: Vec<Vec<String>> = plan
        .iter()
        .map(|((t, p), new)| {
            let cur = current.get(&(t.clone(), *p)).copied();
            vec![t.clone(), p.to_string(), opt(cur), new.to_string()]
        })
        .collect();
    output::table(&["TOPIC", "PARTITION", "CURRENT", "NEW"], &rows);
    Ok(())
}

/// Ms since the Unix epoch from a number of ms, or from RFC 3339
/// (`2026-05-01T12:00:00Z`, `2026-05-01T14:00:00.250+02:00`).
fn parse_datetime(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || {
        anyhow::anyhow!(
            "--to-datetime {s:?} is neither RFC 3339 (e.g. 2026-05-01T12:00:00Z) nor ms since the \
             Unix epoch"
        )
    };
    let b = s.as_bytes();
    let num = |from: usize, to: usize| -> anyhow::Result<i64> {
        s.get(from..to)
            .filter(|d| d.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|d| d.parse().ok())
            .ok_or_else(bad)
    };
    let sep = |at: usize, ok: &[u8]| {
        if b.get(at).is_some_and(|c| ok.contains(c)) { Ok(()) } else { Err(bad()) }
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    sep(4, b"-")?;
    sep(7, b"-")?;
    sep(10, b"Tt ")?;
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    sep(13, b":")?;
    sep(16, b":")?;
    let mut i = 19;
    let mut millis = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        let digits = format!("{:0<3}", &s[start..(start + 3).min(i)]);
        millis = digits.parse::<i64>().map_err(|_| bad())?;
    }
    let offset_s = match &s[i..] {
        "Z" | "z" => 0,
        zone if zone.len() == 6 && (zone.starts_with('+') || zone.starts_with('-')) => {
            sep(i + 3, b":")?;
            let minutes = num(i + 1, i + 3)? * 60 + num(i + 4, i + 6)?;
            if zone.starts_with('-') { -minutes * 60 } else { minutes * 60 }
        }
        _ => return Err(bad()),
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Ok(seconds * 1000 + millis)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3339 times and plain ms both parse; bad ones are refused with the value.
    #[test]
    fn datetimes() {
        assert_eq!(parse_datetime("1700000000123").unwrap(), 1_700_000_000_123);
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_datetime("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_datetime("2023-11-14T23:13:20.5+01:00").unwrap(), 1_700_000_000_500);
        assert_eq!(parse_datetime("2023-11-14 22:13:20.123456z").unwrap(), 1_700_000_000_123);
        assert_eq!(parse_datetime("2024-02-29T00:00:00-00:30").unwrap(), 1_709_166_600_000);
        for bad in ["yesterday", "2023-02-29T00:00:00Z", "2023-11-14T22:13:20", "2023-11-14"] {
            let error = parse_datetime(bad).unwrap_err().to_string();
            assert!(error.contains(bad), "{error}");
        }
    }

    /// Assignments print grouped by topic, partitions sorted.
    #[test]
    fn partition_lists() {
        let tp = |t: &str, p| tideline_proto::v1::TopicPartition { topic: t.into(), partition: p };
        assert_eq!(partitions_text(&[tp("b", 3), tp("a", 2), tp("a", 0)]), "a:0,2 b:3");
        assert_eq!(partitions_text(&[]), "-");
    }
}
