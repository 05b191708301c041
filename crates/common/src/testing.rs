//! Helpers for the integration tests of every crate (feature `test-util`).

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A service process a test started: killed when dropped (also when the test fails, then
/// printing its log).
#[derive(Debug)]
pub struct ServiceProcess {
    /// A name for messages, e.g. "broker 2".
    pub name: String,
    /// The child process.
    pub child: Child,
    /// Where its output goes.
    pub log: PathBuf,
}

impl ServiceProcess {
    /// Wraps `child`, whose output goes to `log`.
    pub fn new(name: impl Into<String>, child: Child, log: impl Into<PathBuf>) -> Self {
        ServiceProcess { name: name.into(), child, log: log.into() }
    }

    /// Sends `signal` (e.g. "STOP", "CONT", "TERM", "KILL") to the process.
    ///
    /// # Panics
    /// When `kill` fails.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {} failed", self.name);
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    /// Stops the process with SIGTERM and waits; true when it exited with success.
    pub fn terminate(&mut self) -> bool {
        self.signal("TERM");
        self.child.wait().is_ok_and(|s| s.success())
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ---\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, failing the test after `limit`.
///
/// # Panics
/// When `limit` passes first, naming `what` was awaited.
pub async fn wait_until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Prometheus text served at `addr` (`GET /metrics` of a service started with
/// `--metrics-listen`), or empty when it cannot be read.
pub async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut body = Vec::new();
    let _ = s.read_to_end(&mut body).await;
    String::from_utf8_lossy(&body).into_owned()
}

/// The value of the series named exactly `series` (name and labels) in `text`.
pub fn series(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}
