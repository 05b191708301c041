//! `tide bench`: measurements. `limits` measures this machine's physical limits (disk,
//! loopback TCP, loopback `sendfile`); `produce`, `consume` and `e2e` measure a running
//! cluster in the spirit of `kafka-producer-perf-test` and `kafka-consumer-perf-test`, and can
//! measure the limits in the same run to report each figure as a ratio to its limit.

mod limits;
mod perf;

pub use limits::LimitsArgs;
pub use perf::{ConsumeArgs, E2eArgs, ProduceArgs};

use crate::output::Output;

/// `tide bench` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// Measure this machine's limits: disk write and read, loopback TCP, loopback sendfile.
    Limits(LimitsArgs),
    /// Produce records as fast as possible (or at `--throughput`) and report the rate and the
    /// latency from `send` to acknowledgement.
    Produce(ProduceArgs),
    /// Consume records from the beginning of a topic (produce them first) and report the rate.
    Consume(ConsumeArgs),
    /// Produce and consume at once and report the latency from `send` to the consumer.
    E2e(E2eArgs),
}

/// Runs a `tide bench` command.
pub async fn bench(bootstrap: &[String], out: Output, command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Limits(args) => {
            tokio::task::spawn_blocking(move || limits::limits(out, &args)).await?
        }
        BenchCommand::Produce(args) => perf::produce(bootstrap, out, args).await,
        BenchCommand::Consume(args) => perf::consume(bootstrap, out, args).await,
        BenchCommand::E2e(args) => perf::e2e(bootstrap, out, args).await,
    }
}
