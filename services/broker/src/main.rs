//! `tideline-broker`: one storage broker. Parses options, starts logging, runs until SIGTERM or
//! Ctrl-C, then closes its logs cleanly. Errors are one line and exit status 1.

use clap::Parser;
use tideline_broker::options::Options;
use tideline_common::process::{init_tracing, run_main, shutdown_signal};

/// The global allocator: mimalloc keeps freed large buffers (fetch and produce payloads) for
/// reuse, where glibc gives them back to the OS and every new one page-faults again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    run_main(|| async {
        let options = Options::parse();
        let tracing = init_tracing("tideline-broker", &options.log_format);
        let (config, listen) = <(_, _)>::try_from(options).map_err(anyhow::Error::msg)?;
        tracing::info!(version = env!("CARGO_PKG_VERSION"), broker_id = config.broker_id, %listen, controllers = ?config.controllers, "starting broker");
        let result = tideline_broker::run(config, listen, shutdown_signal()).await;
        tracing.shutdown().await;
        result?;
        anyhow::Ok(())
    });
}
