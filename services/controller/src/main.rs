//! `tideline-controller`: one controller of the metadata quorum. Parses options, starts tracing,
//! runs until SIGTERM or Ctrl-C, then stops cleanly.

use clap::Parser;
use tideline_controller::options::Options;

/// Errors are one readable line and a non-zero exit status.
fn main() {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(controller()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn controller() -> anyhow::Result<()> {
    let options = Options::parse();
    let json = options.log_format == "json";
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn"));
    if json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let (config, listen) = <(_, _)>::try_from(options).map_err(anyhow::Error::msg)?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), node_id = config.node_id, %listen, peers = ?config.peers, data_dir = %config.data_dir.display(), "starting controller");
    tideline_controller::run(config, listen, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
