//! The broker's standing with the controller quorum: registration (a new broker epoch per
//! start), heartbeats that renew its lease, and the metadata watch that keeps a local image of
//! the cluster and brings the replicas in line with it.
//!
//! The lease is also enforced locally: a broker serves only while its last acknowledged
//! heartbeat, counted from when it was *sent*, is younger than the lease. The controller counts
//! from when it *received* it, so a broker that was stopped or cut off stops serving before the
//! controller fences it and moves its leaderships.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub use tideline_common::controllers::{Controllers, incarnation_id};
use tideline_common::{ErrorCode, error_code_of};
use tideline_proto::v1 as pb;
use tokio::sync::watch;

use crate::config::BrokerConfig;
use crate::replicas::ReplicaManager;

/// The cluster metadata as this broker last saw it.
#[derive(Debug, Default, Clone)]
pub struct MetadataImage {
    /// Metadata version, 0 before the first image arrived.
    pub version: u64,
    /// True once a full image arrived.
    pub loaded: bool,
    /// Brokers by id.
    pub brokers: HashMap<i32, pb::BrokerMetadata>,
    /// Topics by name.
    pub topics: BTreeMap<String, pb::TopicMetadata>,
    /// When the metadata stream broke, while it is down.
    pub stream_down_since: Option<Instant>,
}

impl MetadataImage {
    /// Applies one event of the watch stream. An image older than what was already applied is
    /// refused (false): acting on it could delete the logs of topics it does not know yet.
    pub fn apply(&mut self, event: pb::MetadataEvent) -> bool {
        if event.version < self.version {
            return false;
        }
        self.version = event.version;
        match event.event {
            Some(pb::metadata_event::Event::Image(image)) => {
                self.loaded = true;
                self.brokers = image
                    .brokers
                    .into_iter()
                    .filter_map(|b| Some((b.endpoint.as_ref()?.broker_id, b)))
                    .collect();
                self.topics = image.topics.into_iter().map(|t| (t.name.clone(), t)).collect();
            }
            Some(pb::metadata_event::Event::Delta(delta)) => {
                for b in delta.brokers {
                    if let Some(id) = b.endpoint.as_ref().map(|e| e.broker_id) {
                        self.brokers.insert(id, b);
                    }
                }
                for t in delta.topics {
                    self.topics.insert(t.name.clone(), t);
                }
                for name in delta.deleted_topics {
                    self.topics.remove(&name);
                }
            }
            None => {}
        }
        true
    }

    /// The gRPC address (host:port) of broker `id`, if known.
    pub fn broker_address(&self, id: i32) -> Option<String> {
        let e = self.brokers.get(&id)?.endpoint.as_ref()?;
        Some(format!("{}:{}", e.host, e.port))
    }

    /// The sendfile data-port address (host:data_port) of broker `id`, if it advertises one.
    pub fn broker_data_address(&self, id: i32) -> Option<String> {
        let e = self.brokers.get(&id)?.endpoint.as_ref()?;
        (e.data_port > 0).then(|| format!("{}:{}", e.host, e.data_port))
    }
}

/// This broker's registration: its epoch and until when it may serve.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lease {
    /// Epoch of the current registration, if registered.
    pub broker_epoch: Option<i64>,
    /// The broker serves until this instant.
    pub valid_until: Option<Instant>,
    /// The metadata version that includes the registration: until the broker's metadata has
    /// reached it, its view of leadership may predate a fencing.
    pub metadata_version: u64,
}

impl Lease {
    /// True while the broker holds a lease it may serve under.
    pub fn is_live(&self) -> bool {
        self.broker_epoch.is_some() && self.valid_until.is_some_and(|t| Instant::now() < t)
    }
}

/// State the membership tasks and the request handlers share.
#[derive(Debug)]
pub struct Shared {
    /// The broker's settings.
    pub config: BrokerConfig,
    /// The gRPC port the broker listens on (advertised with `config.advertised_host`).
    pub port: u16,
    /// The port of the sendfile data listener (advertised beside the gRPC port).
    pub data_port: u16,
    /// The lease length the controller granted, in ms.
    pub lease_ms: std::sync::atomic::AtomicU64,
    /// The replicas held.
    pub replicas: ReplicaManager,
    /// The cluster metadata.
    pub metadata: RwLock<MetadataImage>,
    /// Bumped after every metadata change is applied to the replicas; long-poll fetches watch
    /// it to notice a change of leadership.
    pub metadata_applied: watch::Sender<u64>,
    /// The lease.
    pub lease: Mutex<Lease>,
    /// Turns true when the broker stops.
    pub stop: watch::Receiver<bool>,
    /// Reports `tideline.v1.BrokerService` as serving only while the broker may serve.
    pub health: tonic_health::server::HealthReporter,
    /// Follower fetcher tasks.
    pub fetchers: crate::replication::Fetchers,
    /// Replication counters.
    pub counters: crate::replication::ReplicationCounters,
    /// Wakes the ISR maintenance when a follower may rejoin.
    pub isr_check: tokio::sync::Notify,
    /// The byte budget of the replicas this broker is adding in reassignments.
    pub reassignment_throttle: crate::throttle::Throttle,
}

impl Shared {
    /// The current lease.
    pub fn lease(&self) -> Lease {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the broker may not serve now, or `None` when it may: it must hold a lease, have
    /// metadata at least as new as its registration, and a live metadata stream (or one that
    /// broke less than a lease ago).
    pub fn not_serving_reason(&self) -> Option<String> {
        let lease = self.lease();
        if !lease.is_live() {
            return Some("holds no lease from the controller".into());
        }
        let m = self.metadata.read().unwrap_or_else(|e| e.into_inner());
        if !m.loaded || m.version < lease.metadata_version {
            return Some(format!(
                "has metadata version {}, older than its registration (version {})",
                m.version, lease.metadata_version
            ));
        }
        if let Some(since) = m.stream_down_since
            && since.elapsed() > self.lease_length()
        {
            return Some(format!(
                "has had no metadata stream for {} ms",
                since.elapsed().as_millis()
            ));
        }
        None
    }

    /// True while the broker may serve.
    pub fn is_serving(&self) -> bool {
        self.not_serving_reason().is_none()
    }

    fn lease_length(&self) -> Duration {
        Duration::from_millis(self.lease_ms.load(std::sync::atomic::Ordering::Relaxed).max(1))
    }

    fn set_lease(&self, lease: Lease) {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = lease;
    }
}

/// Registers, then heartbeats every third of the lease; registers again (with a new epoch)
/// when the controller says the broker is fenced or its epoch is stale. Runs until `stop`.
pub async fn run_lease(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut controllers = Controllers::new(shared.config.controllers.clone());
    let incarnation = incarnation_id();
    let endpoint = pb::BrokerEndpoint {
        broker_id: shared.config.broker_id,
        host: shared.config.advertised_host.clone(),
        port: u32::from(shared.port),
        data_port: u32::from(shared.data_port),
        rack: shared.config.rack.clone(),
    };
    let mut backoff = Duration::from_millis(100);
    'register: loop {
        let sent = Instant::now();
        let request = pb::RegisterBrokerRequest {
            endpoint: Some(endpoint.clone()),
            incarnation_id: incarnation.clone().into(),
        };
        let call = controllers.call(|mut c| {
            let request = request.clone();
            async move { c.register_broker(request).await }
        });
        let Some(registered) = until_stop(call, &mut stop).await else { return };
        let (epoch, lease, version) = match registered {
            Ok(r) => (
                r.broker_epoch,
                Duration::from_millis(r.lease_ms.max(1) as u64),
                r.metadata_version,
            ),
            Err(e) => {
                tracing::warn!(error = %e.message(), "broker registration failed; retrying");
                if sleep_or_stop(backoff, &mut stop).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        tracing::info!(
            broker_id = endpoint.broker_id,
            broker_epoch = epoch,
            metadata_version = version,
            "registered"
        );
        shared.lease_ms.store(lease.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
        let live = |sent: Instant| Lease {
            broker_epoch: Some(epoch),
            valid_until: Some(sent + lease),
            metadata_version: version,
        };
        shared.set_lease(live(sent));
        let interval = lease / 3;
        loop {
            if sleep_or_stop(interval, &mut stop).await {
                return;
            }
            let sent = Instant::now();
            let request =
                pb::BrokerHeartbeatRequest { broker_id: endpoint.broker_id, broker_epoch: epoch };
            let call = controllers.call(|mut c| async move { c.broker_heartbeat(request).await });
            let Some(answer) = until_stop(call, &mut stop).await else { return };
            match answer {
                Ok(_) => shared.set_lease(live(sent)),
                Err(s)
                    if matches!(
                        error_code_of(&s),
                        Some(ErrorCode::BrokerFenced | ErrorCode::StaleBrokerEpoch)
                    ) =>
                {
                    tracing::warn!(error = %s.message(), "fenced by the controller; registering again");
                    shared.set_lease(Lease::default());
                    continue 'register;
                }
                Err(s) => {
                    // The lease lapses locally if this goes on; keep trying.
                    tracing::warn!(error = %s.message(), "heartbeat failed");
                }
            }
        }
    }
}

/// Runs `f` unless `stop` turns true first (`None` then).
pub(crate) async fn until_stop<T>(
    f: impl std::future::Future<Output = T>,
    stop: &mut watch::Receiver<bool>,
) -> Option<T> {
    tokio::select! {
        v = f => Some(v),
        _ = stop.wait_for(|s| *s) => None,
    }
}

/// Sleeps for `d`; true when `stop` turned true first.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    stopped || *stop.borrow()
}

/// Brings the replicas in line with the current metadata (off the async threads), logs what
/// changed, and tells waiting fetches. True when every partition is in line.
async fn apply_replicas(shared: &Arc<Shared>) -> bool {
    let topics: Vec<pb::TopicMetadata> = shared
        .metadata
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .topics
        .values()
        .cloned()
        .collect();
    let s = Arc::clone(shared);
    let outcome = tokio::task::spawn_blocking(move || s.replicas.apply(&topics)).await;
    crate::replication::after_metadata(shared);
    shared.metadata_applied.send_modify(|v| *v += 1);
    match outcome {
        Ok(outcome) => {
            if !outcome.opened.is_empty() || !outcome.removed.is_empty() {
                tracing::info!(opened = ?outcome.opened, removed = ?outcome.removed, "replicas changed");
            }
            for e in &outcome.errors {
                tracing::error!(error = %e, "cannot bring a replica in line; retrying");
            }
            outcome.errors.is_empty()
        }
        Err(e) => {
            tracing::error!(error = %e, "replica update task failed");
            false
        }
    }
}

/// Follows WatchMetadata on the Raft leader (following `NOT_CONTROLLER` redirects),
/// reconnecting and starting over from a full image when the stream breaks; after every event
/// brings the replicas in line, and retries partitions that failed every 5 s. Runs until `stop`.
pub async fn run_watch(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut controllers = Controllers::new(shared.config.controllers.clone());
    let mark_down = |shared: &Shared| {
        let mut m = shared.metadata.write().unwrap_or_else(|e| e.into_inner());
        m.stream_down_since.get_or_insert_with(Instant::now);
    };
    mark_down(&shared);
    loop {
        let call = controllers.call(|mut c| async move {
            c.watch_metadata(pb::WatchMetadataRequest { from_version: 0 }).await
        });
        let Some(stream) = until_stop(call, &mut stop).await else { return };
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e.message(), "metadata watch failed");
                if sleep_or_stop(Duration::from_millis(200), &mut stop).await {
                    return;
                }
                continue;
            }
        };
        let mut in_line = true;
        loop {
            let retry = tokio::time::sleep(Duration::from_secs(5));
            let event = tokio::select! {
                e = stream.message() => Some(e),
                _ = retry, if !in_line => None,
                _ = stop.wait_for(|s| *s) => return,
            };
            let Some(event) = event else {
                in_line = apply_replicas(&shared).await;
                continue;
            };
            match event {
                Ok(Some(event)) => {
                    let accepted = {
                        let mut m = shared.metadata.write().unwrap_or_else(|e| e.into_inner());
                        let accepted = m.apply(event);
                        if accepted {
                            m.stream_down_since = None;
                        }
                        accepted
                    };
                    if !accepted {
                        tracing::warn!("metadata older than already applied; reconnecting");
                        break;
                    }
                    in_line = apply_replicas(&shared).await;
                }
                Ok(None) | Err(_) => {
                    tracing::debug!("metadata watch ended; reconnecting");
                    break;
                }
            }
        }
        mark_down(&shared);
        if sleep_or_stop(Duration::from_millis(200), &mut stop).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(version: u64, topics: &[&str]) -> pb::MetadataEvent {
        pb::MetadataEvent {
            version,
            event: Some(pb::metadata_event::Event::Image(pb::MetadataImage {
                brokers: vec![],
                topics: topics
                    .iter()
                    .map(|t| pb::TopicMetadata { name: t.to_string(), ..Default::default() })
                    .collect(),
            })),
        }
    }

    /// An image older than what was applied (from a controller that is behind) is refused, so
    /// it cannot make the broker delete topics it does not know yet.
    #[test]
    fn older_images_are_refused() {
        let mut m = MetadataImage::default();
        assert!(m.apply(image(5, &["a", "b"])));
        assert!(!m.apply(image(4, &["a"])));
        assert_eq!(m.topics.len(), 2);
        assert!(m.apply(pb::MetadataEvent {
            version: 6,
            event: Some(pb::metadata_event::Event::Delta(pb::MetadataDelta {
                deleted_topics: vec!["b".into()],
                ..Default::default()
            })),
        }));
        assert_eq!(m.topics.keys().collect::<Vec<_>>(), ["a"]);
    }
}
