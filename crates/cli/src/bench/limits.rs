//! `tide bench limits`: the physical limits of this machine
//! that Tideline's figures are compared with, measured the same way every time: sequential
//! disk write (through the page cache, then with `fsync`) and cold read in 1 MiB blocks,
//! loopback TCP, and loopback `sendfile(2)` of a page-cached file to a socket a reader drains.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use crate::output::{self, Output};

/// Options of `tide bench limits`.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitsArgs {
    /// Directory for the test file (on the disk to measure).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Bytes moved by each measurement, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub mib: u64,
}

const BLOCK: usize = 1 << 20;

/// This machine's limits, in MiB/s.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Limits {
    /// Sequential write through the page cache, 1 MiB blocks.
    pub disk_write_mib_s: f64,
    /// The same write including the `fsync` that puts it on the disk.
    pub disk_write_fsync_mib_s: f64,
    /// Sequential read after the file was dropped from the page cache.
    pub disk_read_cold_mib_s: f64,
    /// Memory to a loopback socket that a reader drains.
    pub loopback_tcp_mib_s: f64,
    /// `sendfile(2)` of a page-cached file to a loopback socket that a reader drains.
    pub loopback_sendfile_mib_s: f64,
}

/// Writes back every dirty page of the machine (`sync(2)`), so that a measurement does not
/// start behind the writeback of what was written before it: with gigabytes dirty, the
/// kernel throttles writers to the disk's speed, and a page-cache write measured then is the
/// disk's, several times slower.
pub fn settle() {
    rustix::fs::sync();
}

/// Measures the limits with a test file of `mib` MiB in `dir`, removed afterwards, after
/// [`settle`].
pub fn measure(dir: &Path, mib: u64) -> anyhow::Result<Limits> {
    anyhow::ensure!(mib > 0, "--mib must be positive");
    settle();
    let path = dir.join(format!(".tide-bench-limits-{}", std::process::id()));
    let _cleanup = Remove(path.clone());
    let bytes = mib << 20;
    let (write, write_fsync) = disk_write(&path, bytes)?;
    let read = disk_read_cold(&path, bytes)?;
    let tcp = loopback_tcp(bytes)?;
    let sendfile = loopback_sendfile(&path, bytes)?;
    Ok(Limits {
        disk_write_mib_s: write,
        disk_write_fsync_mib_s: write_fsync,
        disk_read_cold_mib_s: read,
        loopback_tcp_mib_s: tcp,
        loopback_sendfile_mib_s: sendfile,
    })
}

fn mib_per_s(bytes: u64, since: Instant) -> f64 {
    bytes as f64 / (1 << 20) as f64 / since.elapsed().as_secs_f64()
}

/// Runs `tide bench limits`.
pub fn limits(out: Output, args: &LimitsArgs) -> anyhow::Result<()> {
    let l = measure(&args.dir, args.mib)?;
    match out {
        Output::Json => {
            let mut v = serde_json::to_value(l)?;
            v["mib"] = json!(args.mib);
            v["dir"] = json!(args.dir.display().to_string());
            output::json(&v);
        }
        Output::Table => output::table(
            &["limit", "MiB/s"],
            &l.rows()
                .iter()
                .map(|(n, v)| vec![n.to_string(), format!("{v:.0}")])
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

impl Limits {
    /// Each limit with its name, for tables.
    pub fn rows(&self) -> [(&'static str, f64); 5] {
        [
            ("disk write, page cache (1 MiB blocks)", self.disk_write_mib_s),
            ("disk write with fsync", self.disk_write_fsync_mib_s),
            ("disk read, cold (1 MiB blocks)", self.disk_read_cold_mib_s),
            ("loopback TCP", self.loopback_tcp_mib_s),
            ("loopback sendfile, page-cached file", self.loopback_sendfile_mib_s),
        ]
    }
}

/// Removes a file when dropped.
struct Remove(PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `bytes` in 1 MiB blocks: the rate into the page cache, and the rate including the
/// `fsync` that puts it on the disk.
fn disk_write(path: &Path, bytes: u64) -> anyhow::Result<(f64, f64)> {
    let block = vec![0x5au8; BLOCK];
    let mut file =
        File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let started = Instant::now();
    let mut written = 0;
    while written < bytes {
        file.write_all(&block)?;
        written += BLOCK as u64;
    }
    let buffered = mib_per_s(written, started);
    file.sync_all()?;
    Ok((buffered, mib_per_s(written, started)))
}

/// Reads the file back after asking the kernel to drop it from the page cache.
fn disk_read_cold(path: &Path, bytes: u64) -> anyhow::Result<f64> {
    let mut file = File::open(path)?;
    let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
    let mut block = vec![0u8; BLOCK];
    let started = Instant::now();
    let mut read = 0u64;
    while read < bytes {
        let n = file.read(&mut block)?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    Ok(mib_per_s(read, started))
}

/// A reader on a loopback listener that drains what it receives; returns its address and the
/// thread, which ends with the byte count.
fn drain() -> anyhow::Result<(std::net::SocketAddr, std::thread::JoinHandle<u64>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else { return 0 };
        let mut buf = vec![0u8; BLOCK];
        let mut total = 0u64;
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    Ok((addr, reader))
}

/// Writes `bytes` from memory to a loopback socket in 1 MiB writes.
fn loopback_tcp(bytes: u64) -> anyhow::Result<f64> {
    let (addr, reader) = drain()?;
    let mut s = TcpStream::connect(addr)?;
    let block = vec![0x5au8; BLOCK];
    let started = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        s.write_all(&block)?;
        sent += BLOCK as u64;
    }
    drop(s);
    let received = reader.join().map_err(|_| anyhow::anyhow!("reader thread failed"))?;
    Ok(mib_per_s(received, started))
}

/// Sends the (page-cached) file to a loopback socket with `sendfile(2)`.
fn loopback_sendfile(path: &Path, bytes: u64) -> anyhow::Result<f64> {
    let file = File::open(path)?;
    // Warm the page cache first: the limit is page cache to socket.
    let mut warm = File::open(path)?;
    std::io::copy(&mut warm, &mut std::io::sink())?;
    let (addr, reader) = drain()?;
    let s = TcpStream::connect(addr)?;
    let started = Instant::now();
    let mut offset = 0u64;
    while offset < bytes {
        let count = (bytes - offset).min(0x7fff_f000) as usize;
        match rustix::fs::sendfile(&s, &file, Some(&mut offset), count) {
            Ok(0) => break,
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(std::io::Error::from(e).into()),
        }
    }
    drop(s);
    let received = reader.join().map_err(|_| anyhow::anyhow!("reader thread failed"))?;
    Ok(mib_per_s(received, started))
}
