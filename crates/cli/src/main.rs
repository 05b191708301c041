//! `tide`: Tideline's command line. Topic admin, produce and consume (by partition or as a
//! consumer group) from a terminal or a script, consumer group admin, cluster status, and
//! `tide dev` for a whole cluster on one machine. Tables for people, `--output json` for
//! scripts; an error is one line on stderr and a non-zero exit status.

mod admin;
mod bench;
mod dev;
mod group;
mod io;
mod output;
mod partitions;
mod quorum;

use std::future::Future;

use clap::{Parser, Subcommand};

use output::Output;
use tideline_common::process::{init_tracing, run_main};

/// The global allocator: mimalloc keeps freed large buffers (fetch and produce payloads) for
/// reuse, where glibc gives them back to the OS and every new one page-faults again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tideline: a distributed commit log.
#[derive(Debug, Parser)]
#[command(name = "tide", version, about)]
struct Cli {
    /// Controller addresses (HOST:PORT, comma separated).
    #[arg(
        long,
        global = true,
        env = "TIDELINE_BOOTSTRAP",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    )]
    bootstrap: Vec<String>,
    /// Output format: table (for people) or json (for scripts).
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole cluster on this machine: 3 controllers and 3 brokers as processes.
    Dev(dev::DevArgs),
    /// Create, list, describe, delete and alter topics.
    #[command(subcommand)]
    Topic(admin::TopicCommand),
    /// Produce lines from stdin or a file as records.
    Produce(io::ProduceArgs),
    /// Consume records and print them.
    Consume(io::ConsumeArgs),
    /// Consumer groups: list, describe, delete, reset offsets.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Measurements: this machine's limits, and produce, consume and end-to-end runs against a
    /// cluster (`tide bench limits|produce|consume|e2e`).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Cluster health: controllers, brokers, topics.
    #[command(subcommand)]
    Cluster(admin::ClusterCommand),
    /// Move partition replicas between brokers (`tide partitions reassign`).
    #[command(subcommand)]
    Partitions(partitions::PartitionsCommand),
    /// The controller quorum: list, add and remove controllers.
    #[command(subcommand)]
    Controllers(quorum::ControllersCommand),
    /// Run a controller (what `tide dev` starts; same options as `tideline-controller`).
    #[command(hide = true)]
    Controller(tideline_controller::options::Options),
    /// Run a broker (what `tide dev` starts; same options as `tideline-broker`).
    #[command(hide = true)]
    Broker(tideline_broker::options::Options),
    /// Run a group coordinator (what `tide dev` starts; same options as
    /// `tideline-coordinator`).
    #[command(hide = true)]
    Coordinator(tideline_coordinator::options::Options),
}

fn main() {
    let cli = Cli::parse();
    run_main(|| run(cli));
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Topic(c) => admin::topic(&cli.bootstrap, cli.output, c).await,
        Command::Cluster(c) => admin::cluster(&cli.bootstrap, cli.output, c).await,
        Command::Partitions(c) => partitions::partitions(&cli.bootstrap, cli.output, c).await,
        Command::Controllers(c) => quorum::controllers(&cli.bootstrap, cli.output, c).await,
        Command::Group(c) => group::group(&cli.bootstrap, cli.output, c).await,
        Command::Bench(c) => bench::bench(&cli.bootstrap, cli.output, c).await,
        Command::Produce(args) => io::produce(&cli.bootstrap, cli.output, args).await,
        Command::Consume(args) => io::consume(&cli.bootstrap, cli.output, args).await,
        Command::Controller(options) => {
            let tracing = init_tracing("tideline-controller", &options.log_format);
            let (config, listen) = <(_, _)>::try_from(options).map_err(anyhow::Error::msg)?;
            let result = tideline_controller::run(config, listen, shutdown_signal()).await;
            tracing.shutdown().await;
            Ok(result?)
        }
        Command::Broker(options) => {
            let tracing = init_tracing("tideline-broker", &options.log_format);
            let (config, listen) = <(_, _)>::try_from(options).map_err(anyhow::Error::msg)?;
            let result = tideline_broker::run(config, listen, shutdown_signal()).await;
            tracing.shutdown().await;
            Ok(result?)
        }
        Command::Coordinator(options) => {
            let tracing = init_tracing("tideline-coordinator", &options.log_format);
            let (config, listen) = <(_, _)>::try_from(options).map_err(anyhow::Error::msg)?;
            let result = tideline_coordinator::run(config, listen, shutdown_signal()).await;
            tracing.shutdown().await;
            Ok(result?)
        }
    }
}

/// Resolves on SIGTERM, Ctrl-C, or when the parent process (`tide dev`) is gone, so that a
/// killed `tide dev` leaves no orphaned processes behind.
fn shutdown_signal() -> impl Future<Output = ()> {
    let parent = rustix::process::getppid();
    async move {
        let orphaned = async {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                if rustix::process::getppid() != parent {
                    return;
                }
            }
        };
        tokio::select! {
            _ = tideline_common::process::shutdown_signal() => {}
            _ = orphaned => tracing::warn!("parent process exited; shutting down"),
        }
    }
}
