//! What the `tide` process tests share: a running `tide dev` cluster ([`Dev`]) to run `tide`
//! commands against, and stopping processes (SIGTERM, then SIGKILL).
#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `tide` binary under test.
pub const TIDE: &str = env!("CARGO_BIN_EXE_tide");
/// Longest wait for an ordinary `tide` command.
pub const CLI: Duration = Duration::from_secs(60);

/// A running `tide dev` on ephemeral ports with a 3 s broker lease, stopped (SIGTERM, then
/// SIGKILL) when dropped.
#[derive(Debug)]
pub struct Dev {
    child: Child,
    /// Its controllers, as `TIDELINE_BOOTSTRAP` takes them.
    pub bootstrap: String,
}

impl Dev {
    /// Starts `tide dev` with its data in `data` and `extra` options, and waits until it says
    /// it is ready.
    pub fn start(data: &Path, extra: &[&str]) -> Dev {
        let mut child = Command::new(TIDE)
            .args(["dev", "--controller-port", "0", "--broker-port", "0"])
            .args(["--coordinator-port", "0", "--broker-lease-ms", "3000"])
            .args(extra)
            .arg("--data-dir")
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Read stdout (all of it, so that it never blocks) for the bootstrap addresses.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(b) = line.trim().strip_prefix("export TIDELINE_BOOTSTRAP=") {
                    let _ = tx.send(b.to_string());
                }
            }
        });
        let bootstrap = rx.recv_timeout(Duration::from_secs(120)).expect("tide dev became ready");
        Dev { child, bootstrap }
    }

    /// Runs `tide ARGS` against the cluster with `stdin`, within [`CLI`].
    pub fn tide(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.tide_within(args, stdin, CLI)
    }

    /// Runs `tide ARGS` against the cluster with `stdin`, killing it and failing after
    /// `within`.
    pub fn tide_within(&self, args: &[&str], stdin: Option<&str>, within: Duration) -> Output {
        let mut child = Command::new(TIDE)
            .args(args)
            .env("TIDELINE_BOOTSTRAP", &self.bootstrap)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        let stdout = read_all(child.stdout.take().unwrap());
        let stderr = read_all(child.stderr.take().unwrap());
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tide {args:?} did not finish within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
    }

    /// `tide ARGS`, which must succeed within [`CLI`]; its stdout.
    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        self.ok_within(args, stdin, CLI)
    }

    /// `tide ARGS`, which must succeed within `within`; its stdout.
    pub fn ok_within(&self, args: &[&str], stdin: Option<&str>, within: Duration) -> String {
        let out = self.tide_within(args, stdin, within);
        assert!(
            out.status.success(),
            "tide {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `tide ARGS --output json`, which must succeed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--output", "json"]);
        let out = self.ok(&all, None);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("tide {all:?} printed {out:?}: {e}"))
    }

    /// SIGTERM, and true when `tide dev` and all its processes exited cleanly within 60 s.
    pub fn stop(mut self) -> bool {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "tide dev did not stop within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(60));
    }
}

/// SIGTERM, then SIGKILL if it has not exited within `grace`.
pub fn stop(child: &mut Child, grace: Duration) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn read_all(mut from: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = from.read_to_end(&mut all);
        all
    })
}
