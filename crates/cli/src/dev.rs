//! `tide dev`: a whole cluster on one machine. Starts controllers, brokers and group
//! coordinators as separate processes (this same executable, in its hidden
//! `controller`/`broker`/`coordinator` roles) on 127.0.0.1,
//! with data and logs under one directory, waits until the cluster is healthy, prints how to
//! use it, and on Ctrl-C or SIGTERM stops every process cleanly. The ports chosen are kept in
//! `dev.json` in the data directory, so running it again resumes the same cluster.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tideline_proto::v1 as pb;
use tideline_proto::v1::controller_service_client::ControllerServiceClient;

/// Options of `tide dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Where controllers and brokers keep their data and logs.
    #[arg(long, default_value = "tideline-data")]
    pub data_dir: PathBuf,
    /// Number of controllers (1, 3 or 5).
    #[arg(long, default_value_t = 3)]
    pub controllers: u32,
    /// Number of brokers.
    #[arg(long, default_value_t = 3)]
    pub brokers: u32,
    /// First controller port (the others follow); 0 picks free ports. Used on the first run
    /// only: later runs reuse the ports in dev.json.
    #[arg(long, default_value_t = 7001)]
    pub controller_port: u16,
    /// First broker port (the others follow); 0 picks free ports.
    #[arg(long, default_value_t = 9092)]
    pub broker_port: u16,
    /// Number of group coordinators.
    #[arg(long, default_value_t = 2)]
    pub coordinators: u32,
    /// First coordinator port (the others follow); 0 picks free ports.
    #[arg(long, default_value_t = 9192)]
    pub coordinator_port: u16,
    /// Broker lease in ms (how long a silent broker keeps its partitions).
    #[arg(long, default_value_t = 6000)]
    pub broker_lease_ms: u64,
}

/// The ports of a dev cluster, kept across runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Layout {
    controller_ports: Vec<u16>,
    broker_ports: Vec<u16>,
    /// Absent in layouts written before coordinators existed: then chosen at the next start.
    #[serde(default)]
    coordinator_ports: Vec<u16>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn ports(first: u16, n: u32) -> anyhow::Result<Vec<u16>> {
    (0..n)
        .map(|i| {
            if first == 0 {
                free_port()
            } else {
                u16::try_from(u32::from(first) + i).context("port above 65535")
            }
        })
        .collect()
}

impl Layout {
    fn load_or_create(args: &DevArgs) -> anyhow::Result<Layout> {
        let file = args.data_dir.join("dev.json");
        if let Ok(text) = std::fs::read_to_string(&file) {
            let mut layout: Layout = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a dev cluster layout", file.display()))?;
            if layout.coordinator_ports.is_empty() && args.coordinators > 0 {
                layout.coordinator_ports = ports(args.coordinator_port, args.coordinators)?;
                std::fs::write(&file, serde_json::to_string_pretty(&layout)?)
                    .with_context(|| format!("cannot write {}", file.display()))?;
            }
            return Ok(layout);
        }
        if !matches!(args.controllers, 1 | 3 | 5) {
            bail!("--controllers must be 1, 3 or 5, not {}", args.controllers);
        }
        if args.brokers == 0 {
            bail!("--brokers must be at least 1");
        }
        let layout = Layout {
            controller_ports: ports(args.controller_port, args.controllers)?,
            broker_ports: ports(args.broker_port, args.brokers)?,
            coordinator_ports: ports(args.coordinator_port, args.coordinators)?,
        };
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
        std::fs::write(&file, serde_json::to_string_pretty(&layout)?)
            .with_context(|| format!("cannot write {}", file.display()))?;
        Ok(layout)
    }

    fn controller_addrs(&self) -> Vec<String> {
        self.controller_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect()
    }
}

/// A child process of the dev cluster.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Kills whatever is still running when dropped (the clean path has already stopped them).
#[derive(Debug, Default)]
struct Procs(Vec<Proc>);

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.0 {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

fn spawn(exe: &Path, name: &str, args: &[String], log: PathBuf) -> anyhow::Result<Proc> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Proc { name: name.to_string(), child, log })
}

/// Stops the coordinators first (their shards are released), then the brokers (SIGTERM; they
/// close their logs), then the controllers, giving each group 20 s before killing what
/// remains. True when every process exited with success.
fn stop_all(procs: &mut Procs) -> bool {
    let mut clean = true;
    for role in ["coordinator", "broker", "controller"] {
        for p in procs.0.iter().filter(|p| p.name.starts_with(role)) {
            if let Some(pid) = rustix::process::Pid::from_raw(p.child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for p in procs.0.iter_mut().filter(|p| p.name.starts_with(role)) {
            loop {
                match p.child.try_wait() {
                    Ok(Some(status)) => {
                        clean &= status.success();
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    _ => {
                        eprintln!("{} did not stop in time; killing it", p.name);
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        clean = false;
                        break;
                    }
                }
            }
        }
    }
    procs.0.clear();
    clean
}

/// True when the service at `addr` reports `service` (e.g. `tideline.v1.BrokerService`) as
/// serving: a broker holds a lease and is up to date with the metadata, a coordinator is
/// registered.
async fn serving(addr: &str, service: &str) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let Ok(channel) = endpoint.connect_timeout(Duration::from_secs(1)).connect().await else {
        return false;
    };
    let request = tonic_health::pb::HealthCheckRequest { service: service.into() };
    matches!(
        tonic_health::pb::health_client::HealthClient::new(channel).check(request).await,
        Ok(r) if r.get_ref().status() == tonic_health::pb::health_check_response::ServingStatus::Serving
    )
}

/// Waits until a controller leads, every partition is fully in sync, and every broker and
/// coordinator serves (its own health says so: a stale registration from before a restart does
/// not count).
async fn wait_healthy(layout: &Layout, procs: &mut Procs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let want = layout.broker_ports.len() + layout.coordinator_ports.len();
    loop {
        for p in &mut procs.0 {
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "{} exited during start-up ({status}); its log is {}",
                    p.name,
                    p.log.display()
                );
            }
        }
        for addr in layout.controller_addrs() {
            let Ok(mut c) = ControllerServiceClient::connect(format!("http://{addr}")).await else {
                continue;
            };
            let Ok(m) = c.get_metadata(pb::GetMetadataRequest { topics: vec![] }).await else {
                continue;
            };
            let m = m.into_inner();
            // Led, and every partition (the offsets topic's too) fully in sync.
            let in_sync = m
                .topics
                .iter()
                .flat_map(|t| &t.partitions)
                .all(|p| p.leader >= 0 && p.isr.len() == p.replicas.len());
            if m.controller_leader_id < 0 || !in_sync {
                continue;
            }
            let mut up = 0;
            for port in &layout.broker_ports {
                let addr = format!("127.0.0.1:{port}");
                up += usize::from(serving(&addr, "tideline.v1.BrokerService").await);
            }
            for port in &layout.coordinator_ports {
                let addr = format!("127.0.0.1:{port}");
                up += usize::from(serving(&addr, "tideline.v1.CoordinatorService").await);
            }
            if up == want {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster did not become healthy within 60 s; see the logs in the data directory"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn interrupted() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Runs `tide dev` until interrupted.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let layout = Layout::load_or_create(&args)?;
    let exe = std::env::current_exe().context("cannot find the tide executable")?;
    let logs = args.data_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let peers: Vec<String> = layout
        .controller_ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect();
    let peers = peers.join(",");
    let controllers = layout.controller_addrs().join(",");
    let mut procs = Procs::default();
    for (i, _) in layout.controller_ports.iter().enumerate() {
        let id = i + 1;
        let data = args.data_dir.join(format!("controller-{id}"));
        procs.0.push(spawn(
            &exe,
            &format!("controller {id}"),
            &[
                "controller".into(),
                "--node-id".into(),
                id.to_string(),
                "--peers".into(),
                peers.clone(),
                "--listen".into(),
                format!("127.0.0.1:{}", layout.controller_ports[i]),
                "--data-dir".into(),
                data.display().to_string(),
                "--broker-lease-ms".into(),
                args.broker_lease_ms.to_string(),
                "--offsets-topic-replication-factor".into(),
                layout.broker_ports.len().clamp(1, 3).to_string(),
            ],
            logs.join(format!("controller-{id}.log")),
        )?);
    }
    for (i, port) in layout.broker_ports.iter().enumerate() {
        let id = i + 1;
        let data = args.data_dir.join(format!("broker-{id}"));
        procs.0.push(spawn(
            &exe,
            &format!("broker {id}"),
            &[
                "broker".into(),
                "--broker-id".into(),
                id.to_string(),
                "--controllers".into(),
                controllers.clone(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--data-dir".into(),
                data.display().to_string(),
            ],
            logs.join(format!("broker-{id}.log")),
        )?);
    }
    for (i, port) in layout.coordinator_ports.iter().enumerate() {
        let id = i + 1;
        procs.0.push(spawn(
            &exe,
            &format!("coordinator {id}"),
            &[
                "coordinator".into(),
                "--coordinator-id".into(),
                format!("coordinator-{id}"),
                "--controllers".into(),
                controllers.clone(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
            ],
            logs.join(format!("coordinator-{id}.log")),
        )?);
    }
    let ready = tokio::select! {
        r = wait_healthy(&layout, &mut procs) => r,
        _ = interrupted() => {
            stop_all(&mut procs);
            bail!("interrupted during start-up");
        }
    };
    if let Err(e) = ready {
        stop_all(&mut procs);
        return Err(e);
    }
    let tide = std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| exe.clone());
    print_ready(&args, &layout, &tide);
    let failed = tokio::select! {
        _ = interrupted() => None,
        name = watch_children(&mut procs) => Some(name),
    };
    println!("stopping the cluster...");
    let clean = stop_all(&mut procs);
    if let Some((name, log)) = failed {
        bail!("{name} exited unexpectedly; its log is {}", log.display());
    }
    if !clean {
        bail!("not every process stopped cleanly; see the logs in {}", logs.display());
    }
    println!("stopped; run `tide dev` again to resume with the same data");
    Ok(())
}

/// Resolves with the name and log of the first child that exits.
async fn watch_children(procs: &mut Procs) -> (String, PathBuf) {
    loop {
        for p in &mut procs.0 {
            if let Ok(Some(_)) = p.child.try_wait() {
                return (p.name.clone(), p.log.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_ready(args: &DevArgs, layout: &Layout, tide: &Path) {
    let tide = tide.display();
    let bootstrap = layout.controller_addrs().join(",");
    println!("Tideline dev cluster is up (data in {})", args.data_dir.display());
    for (i, a) in layout.controller_addrs().iter().enumerate() {
        println!("  controller {}  {a}", i + 1);
    }
    for (i, p) in layout.broker_ports.iter().enumerate() {
        println!("  broker {}      127.0.0.1:{p}", i + 1);
    }
    for (i, p) in layout.coordinator_ports.iter().enumerate() {
        println!("  coordinator {} 127.0.0.1:{p}", i + 1);
    }
    println!("  logs          {}", args.data_dir.join("logs").display());
    println!();
    println!("In another terminal:");
    println!("  export TIDELINE_BOOTSTRAP={bootstrap}");
    println!("  {tide} topic create greetings --partitions 3 --replication-factor 1");
    println!("  printf 'alice:hello\\nbob:hi\\n' | {tide} produce greetings --key-separator :");
    println!("  {tide} consume greetings --from-beginning --max-messages 2");
    println!("  {tide} consume greetings --group readers --from-beginning --max-messages 2");
    println!("  {tide} group describe readers");
    println!();
    println!("Press Ctrl-C to stop.");
}
