//! `tideline-controller`: one controller of the metadata quorum. Parses options, starts logging,
//! runs until SIGTERM or Ctrl-C, then stops cleanly. Errors are one line and exit status 1.

use clap::Parser;
use tideline_common::process::{init_tracing, run_main, shutdown_signal};
use tideline_controller::options::Options;

/// The global allocator: mimalloc keeps freed large buffers (fetch and produce payloads) for
/// reuse, where glibc gives them back to the OS and every new one page-faults again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    run_main(|| async {
        let options = Options::parse();
        let tracing = init_tracing("tideline-controller", &options.log_format);
        let (config, listen) = <(_, _)>::try_from(options).map_err(anyhow::Error::msg)?;
        tracing::info!(version = env!("CARGO_PKG_VERSION"), node_id = config.node_id, %listen, peers = ?config.peers, data_dir = %config.data_dir.display(), "starting controller");
        let result = tideline_controller::run(config, listen, shutdown_signal()).await;
        tracing.shutdown().await;
        result?;
        anyhow::Ok(())
    });
}
