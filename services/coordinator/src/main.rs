//! `tideline-coordinator`: one group coordinator. Parses options, starts logging, runs until
//! SIGTERM or Ctrl-C, then leaves the cluster so its shards move at once. Errors are one line
//! and exit status 1.

use clap::Parser;
use tideline_common::process::{init_tracing, run_main, shutdown_signal};
use tideline_coordinator::options::Options;

/// The global allocator: mimalloc keeps freed large buffers (fetch and produce payloads) for
/// reuse, where glibc gives them back to the OS and every new one page-faults again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    run_main(|| async {
        let options = Options::parse();
        let tracing = init_tracing("tideline-coordinator", &options.log_format);
        let (config, listen) = <(_, _)>::try_from(options).map_err(anyhow::Error::msg)?;
        tracing::info!(version = env!("CARGO_PKG_VERSION"), coordinator_id = %config.coordinator_id, %listen, controllers = ?config.controllers, "starting coordinator");
        let result = tideline_coordinator::run(config, listen, shutdown_signal()).await;
        tracing.shutdown().await;
        result?;
        anyhow::Ok(())
    });
}
