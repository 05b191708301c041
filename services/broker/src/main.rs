//! `tideline-broker`: one storage broker. Parses options, starts tracing, runs until SIGTERM or
//! Ctrl-C, then closes its logs cleanly.

use clap::Parser;
use tideline_broker::options::Options;

/// Errors are one readable line and a non-zero exit status.
fn main() {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(broker()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn broker() -> anyhow::Result<()> {
    let options = Options::parse();
    let json = options.log_format == "json";
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let (config, listen) = <(_, _)>::try_from(options).map_err(anyhow::Error::msg)?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), broker_id = config.broker_id, %listen, controllers = ?config.controllers, "starting broker");
    tideline_broker::run(config, listen, shutdown_signal()).await?;
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
