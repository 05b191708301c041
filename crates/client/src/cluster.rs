//! [`Cluster`]: the handle every client of one cluster shares. It holds one gRPC channel per
//! node address, finds the controller leader (following `NOT_CONTROLLER` redirects, trying the
//! next controller on transport errors), and caches the metadata that maps partitions to
//! leader brokers and groups to coordinators, refreshing it when a request says it is wrong or
//! when it gets old.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tideline_common::ErrorCode;
use tideline_proto::v1 as pb;
use tideline_proto::v1::broker_service_client::BrokerServiceClient;
use tideline_proto::v1::controller_service_client::ControllerServiceClient;
use tideline_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, warn};

use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::grpc_call::{TraceContext, Traced};
use crate::metadata::Metadata;

/// Largest gRPC message sent or received (fetches of many MiB, big produce batches).
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Largest HTTP/2 frame the client accepts (the protocol's maximum).
const MAX_FRAME_BYTES: u32 = 16_777_215;
/// HTTP/2 flow-control windows large enough for MiB-sized batches without stalls.
const STREAM_WINDOW_BYTES: u32 = 16 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;
/// HTTP/2 pings that notice a dead node between requests.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pauses between rounds of controller attempts (doubling), e.g. during an election.
const CONTROLLER_BACKOFF_MIN: Duration = Duration::from_millis(50);
const CONTROLLER_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Redirects followed in a row before pausing: a hint can name a node that lost leadership.
const MAX_REDIRECTS_IN_A_ROW: u32 = 3;
/// Controller addresses remembered at most (bootstrap plus those learned from redirects).
const MAX_CONTROLLERS: usize = 64;

/// A connection to one Tideline cluster, shared by [`Admin`](crate::Admin),
/// [`Producer`](crate::Producer) and [`Consumer`](crate::Consumer). Cloning is cheap: clones
/// share the channels and the metadata cache.
///
/// Connections are made lazily, on the first request to each node.
#[derive(Debug, Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    /// One channel per `host:port`. Never held across `.await`.
    channels: Mutex<HashMap<String, Channel>>,
    /// Never held across `.await`.
    controllers: Mutex<Controllers>,
    /// Never held across `.await`.
    metadata: Mutex<MetadataCache>,
    /// Held across the `GetMetadata` call (hence tokio's mutex): one refresh runs at a time,
    /// and callers queued behind it reuse its answer.
    refresh: tokio::sync::Mutex<()>,
    /// A background refresh (of metadata older than `metadata_max_age`) is running.
    background_refresh: AtomicBool,
    /// Idle connections to brokers' data ports.
    data: crate::data::DataConnections,
}

#[derive(Debug)]
struct Controllers {
    addresses: Vec<String>,
    /// Index into `addresses` of the controller to use while no leader is known.
    next: usize,
    /// Address of the Raft leader, as a redirect named it.
    leader: Option<String>,
}

#[derive(Debug)]
struct MetadataCache {
    current: Arc<Metadata>,
    /// When the request behind `current` was sent; `None` before the first.
    fetched_at: Option<Instant>,
    /// When an admin change made the metadata outdated.
    invalidated_at: Option<Instant>,
    /// Topics clients asked about: refreshes ask for these.
    wanted: HashSet<String, foldhash::fast::RandomState>,
}

impl MetadataCache {
    /// Whether `current` reflects the cluster as of `since` or later.
    fn valid_since(&self, since: Instant) -> bool {
        self.fetched_at
            .is_some_and(|at| at >= since && self.invalidated_at.is_none_or(|inv| inv <= at))
    }
}

impl Cluster {
    /// A handle on the cluster whose controllers are `config.bootstrap`. No connection is made
    /// until the first request.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] for a config without addresses or with bad values.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let config = config.validated()?;
        let controllers =
            Controllers { addresses: config.bootstrap.clone(), next: 0, leader: None };
        Ok(Cluster {
            inner: Arc::new(Inner {
                config,
                channels: Mutex::new(HashMap::new()),
                data: Default::default(),
                controllers: Mutex::new(controllers),
                metadata: Mutex::new(MetadataCache {
                    current: Arc::new(Metadata::default()),
                    fetched_at: None,
                    invalidated_at: None,
                    wanted: HashSet::default(),
                }),
                refresh: tokio::sync::Mutex::new(()),
                background_refresh: AtomicBool::new(false),
            }),
        })
    }

    /// The configuration (addresses normalized to `host:port`).
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The cached metadata, without a request (empty before the first refresh). It covers
    /// the topics the clients of this handle used.
    pub fn metadata(&self) -> Arc<Metadata> {
        lock(&self.inner.metadata).current.clone()
    }

    /// Fetches fresh metadata for the topics in use now.
    ///
    /// # Errors
    /// When no controller answers within `request_timeout`.
    pub async fn refresh_metadata(&self) -> Result<Arc<Metadata>, ClientError> {
        self.refresh_after(Instant::now()).await
    }

    /// Marks the cached metadata outdated (after an admin change), so the next use refreshes.
    pub(crate) fn invalidate_metadata(&self) {
        lock(&self.inner.metadata).invalidated_at = Some(Instant::now());
    }

    /// The cached metadata if it has `topic` (refreshed in the background when old); never
    /// waits. Notes the topic as wanted, so refreshes ask for it.
    pub(crate) fn cached_topic_metadata(&self, topic: &str) -> Option<Arc<Metadata>> {
        let (current, fresh) = {
            let mut cache = lock(&self.inner.metadata);
            let max_age = self.inner.config.metadata_max_age;
            let fresh = Instant::now().checked_sub(max_age).is_none_or(|t| cache.valid_since(t));
            if !cache.wanted.contains(topic) {
                cache.wanted.insert(topic.to_string());
            }
            (cache.current.clone(), fresh)
        };
        current.topic(topic)?;
        if !fresh {
            self.spawn_background_refresh();
        }
        Some(current)
    }

    /// Metadata that has `topic`: the cached one (refreshed in the background when old), or
    /// a fresh one when the cache lacks the topic.
    ///
    /// # Errors
    /// [`ClientError::UnknownTopic`] when fresh metadata lacks it too; the refresh's error.
    pub(crate) async fn topic_metadata(&self, topic: &str) -> Result<Arc<Metadata>, ClientError> {
        if let Some(current) = self.cached_topic_metadata(topic) {
            return Ok(current);
        }
        let metadata = self.refresh_after(Instant::now()).await?;
        if metadata.topic(topic).is_some() {
            Ok(metadata)
        } else {
            Err(ClientError::UnknownTopic { topic: topic.to_string() })
        }
    }

    /// Metadata fetched no earlier than `since`: the cached one when it is that recent (a
    /// concurrent refresh got it), else a new one. Concurrent callers share one request.
    pub(crate) async fn refresh_after(&self, since: Instant) -> Result<Arc<Metadata>, ClientError> {
        let _one_at_a_time = self.inner.refresh.lock().await;
        let wanted = {
            let cache = lock(&self.inner.metadata);
            if cache.valid_since(since) {
                return Ok(cache.current.clone());
            }
            cache.wanted.clone()
        };
        let sent_at = Instant::now();
        let mut topics: Vec<String> = wanted.iter().cloned().collect();
        topics.sort_unstable();
        let response = match self.get_metadata(topics).await {
            // A topic we track is gone (or never existed): the controller refuses the whole
            // request, so ask for every topic and keep ours.
            Err(e)
                if !wanted.is_empty() && e.code() == Some(ErrorCode::UnknownTopicOrPartition) =>
            {
                let mut all = self.get_metadata(Vec::new()).await?;
                all.topics.retain(|t| wanted.contains(&t.name));
                all
            }
            other => other?,
        };
        let metadata = Arc::new(Metadata::from_response(response));
        let mut cache = lock(&self.inner.metadata);
        // Stop asking about asked-for topics that do not exist (a client asking again re-adds).
        cache.wanted.retain(|t| metadata.topic(t).is_some() || !wanted.contains(t));
        cache.current = metadata.clone();
        cache.fetched_at = Some(sent_at);
        debug!(version = metadata.version(), topics = wanted.len(), "metadata refreshed");
        Ok(metadata)
    }

    fn spawn_background_refresh(&self) {
        if self.inner.background_refresh.swap(true, Ordering::AcqRel) {
            return;
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            if let Err(error) = cluster.refresh_after(Instant::now()).await {
                warn!(%error, "background metadata refresh failed");
            }
            cluster.inner.background_refresh.store(false, Ordering::Release);
        });
    }

    async fn get_metadata(
        &self,
        topics: Vec<String>,
    ) -> Result<pb::GetMetadataResponse, ClientError> {
        let request = pb::GetMetadataRequest { topics };
        self.call_controller("get metadata", move |mut client| {
            let request = request.clone();
            async move { client.get_metadata(request).await }
        })
        .await
    }

    /// The address (`host:port`) of the partition's leader broker, from the metadata.
    ///
    /// # Errors
    /// [`ClientError::UnknownTopic`], [`ClientError::UnknownPartition`] or
    /// [`ClientError::LeaderNotAvailable`] (all retriable), or the metadata refresh's error.
    pub(crate) async fn leader(&self, topic: &str, partition: i32) -> Result<String, ClientError> {
        let metadata = self.topic_metadata(topic).await?;
        let no_leader = |reason: String| ClientError::LeaderNotAvailable {
            topic: topic.to_string(),
            partition,
            reason,
        };
        let Some(p) = metadata.partition(topic, partition) else {
            return Err(ClientError::UnknownPartition {
                topic: topic.to_string(),
                partition,
                partitions: metadata.partition_count(topic).unwrap_or(0),
            });
        };
        if p.leader < 0 {
            return Err(no_leader("the partition has no leader".into()));
        }
        match metadata.broker(p.leader) {
            Some(b) if b.fenced => Err(no_leader(format!("leader broker {} is fenced", p.leader))),
            Some(_) => metadata
                .broker_address(p.leader)
                .ok_or_else(|| no_leader(format!("leader broker {} has no address", p.leader))),
            None => Err(no_leader(format!("leader broker {} is not in the metadata", p.leader))),
        }
    }

    /// The data port address (`host:data_port`) of the broker at gRPC `address`, when it
    /// advertises one.
    pub(crate) fn data_address(&self, address: &str) -> Option<String> {
        let metadata = self.metadata();
        metadata.brokers().filter_map(|b| b.endpoint.as_ref()).find_map(|e| {
            let grpc = crate::metadata::host_port(&e.host, e.port);
            (grpc == address && e.data_port > 0)
                .then(|| crate::metadata::host_port(&e.host, e.data_port))
        })
    }

    /// The pool of connections to brokers' data ports.
    pub(crate) fn data_connections(&self) -> &crate::data::DataConnections {
        &self.inner.data
    }

    /// The request timeout.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.config.request_timeout
    }

    /// Calls the leader of `topic`-`partition` until it answers, `deadline` passes, or an
    /// error that is not retriable comes back. Between attempts it refreshes the metadata
    /// when the error says it is wrong, and pauses `backoff`. Each attempt waits at most
    /// `request_timeout`.
    ///
    /// # Errors
    /// The first error that is not retriable, or [`ClientError::TimedOut`] with the last one.
    pub(crate) async fn call_leader<T, F, Fut>(
        &self,
        operation: &str,
        topic: &str,
        partition: i32,
        deadline: Instant,
        backoff: Duration,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(BrokerServiceClient<Traced>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let with_client = |channel| {
            BrokerServiceClient::with_interceptor(channel, TraceContext)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        };
        let mut call = call;
        self.call_leader_on_channel(operation, topic, partition, deadline, backoff, |channel| {
            call(with_client(channel))
        })
        .await
    }

    /// [`Cluster::call_leader`] with the bare channel to the leader, for a call framed by
    /// hand (the producer's `Produce`, which sends its batches without tonic's copy).
    ///
    /// # Errors
    /// As [`Cluster::call_leader`].
    pub(crate) async fn call_leader_on_channel<T, F, Fut>(
        &self,
        operation: &str,
        topic: &str,
        partition: i32,
        deadline: Instant,
        backoff: Duration,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let target = || async {
            let address = self.leader(topic, partition).await?;
            let channel = self.channel(&address)?;
            Ok((address, channel))
        };
        // A `TimedOut` here is a metadata refresh that found no controller: worth retrying.
        let retry = |e: &ClientError| e.is_retriable() || matches!(e, ClientError::TimedOut { .. });
        self.call_until(operation, deadline, backoff, target, call, retry, |e| {
            e.invalidates_metadata()
        })
        .await
    }

    /// The retry loop of [`Cluster::call_leader`] and [`Cluster::call_coordinator`]: finds the
    /// node to ask with `target`, calls it, and on an error that `retry` accepts refreshes the
    /// metadata when `refresh` says so, pauses `backoff` and tries again, until `deadline`.
    #[allow(clippy::too_many_arguments)]
    async fn call_until<C, T, A, AFut, F, Fut>(
        &self,
        operation: &str,
        deadline: Instant,
        backoff: Duration,
        mut target: A,
        mut call: F,
        retry: impl Fn(&ClientError) -> bool,
        refresh: impl Fn(&ClientError) -> bool,
    ) -> Result<T, ClientError>
    where
        A: FnMut() -> AFut,
        AFut: Future<Output = Result<(String, C), ClientError>>,
        F: FnMut(C) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let mut attempts = 0;
        let mut last = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::TimedOut {
                    operation: operation.to_string(),
                    after: now - started,
                    attempts,
                    last: last.map(Box::new),
                });
            }
            attempts += 1;
            let error = match target().await {
                Err(e) => e,
                Ok((address, client)) => {
                    let limit = (deadline - now).min(self.request_timeout());
                    match tokio::time::timeout(limit, call(client)).await {
                        Ok(Ok(response)) => return Ok(response.into_inner()),
                        Ok(Err(status)) => ClientError::from_status(operation, &address, &status),
                        Err(_) => ClientError::no_answer(operation, &address, limit),
                    }
                }
            };
            if !retry(&error) {
                return Err(error);
            }
            debug!(%error, attempts, operation, "retrying");
            if refresh(&error) {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let refreshed = tokio::time::timeout(remaining, self.refresh_after(now)).await;
                if let Ok(Err(e)) = refreshed {
                    debug!(error = %e, "metadata refresh failed");
                }
            }
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            last = Some(error);
        }
    }

    /// The id and address of `group`'s coordinator, from the cached metadata (fetched first
    /// when there is none yet; refreshed in the background when old).
    ///
    /// # Errors
    /// [`ClientError::CoordinatorNotAvailable`] (retriable) when the metadata names no live
    /// owner of the group's shard; the first refresh's error.
    pub(crate) async fn coordinator(&self, group: &str) -> Result<(String, String), ClientError> {
        let (current, fetched, fresh) = {
            let cache = lock(&self.inner.metadata);
            let max_age = self.inner.config.metadata_max_age;
            let fresh = Instant::now().checked_sub(max_age).is_none_or(|t| cache.valid_since(t));
            (cache.current.clone(), cache.fetched_at.is_some(), fresh)
        };
        let metadata = if fetched {
            if !fresh {
                self.spawn_background_refresh();
            }
            current
        } else {
            self.refresh_after(Instant::now()).await?
        };
        metadata.coordinator_for(group).ok_or_else(|| {
            let reason = match metadata.shard_for(group) {
                None => "the metadata has no shards of __consumer_offsets yet (no coordinator \
                         registered)"
                    .to_string(),
                Some(shard) => match metadata.shards().iter().find(|s| s.shard == shard) {
                    Some(s) if !s.coordinator_id.is_empty() => {
                        format!("shard {shard} is owned by {}, which is not live", s.coordinator_id)
                    }
                    _ => format!("shard {shard} has no coordinator"),
                },
            };
            ClientError::CoordinatorNotAvailable { group: group.to_string(), reason }
        })
    }

    /// A `CoordinatorService` client on the channel to `address`.
    pub(crate) fn coordinator_client(
        &self,
        address: &str,
    ) -> Result<CoordinatorServiceClient<Traced>, ClientError> {
        Ok(CoordinatorServiceClient::with_interceptor(self.channel(address)?, TraceContext)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Calls the coordinator of `group` until it answers, `deadline` passes, or an error that
    /// is not retriable comes back. After `NOT_COORDINATOR`, `COORDINATOR_LOAD_IN_PROGRESS`,
    /// `COORDINATOR_NOT_AVAILABLE` or a transport error it refreshes the metadata (the group's
    /// shard may have moved); after every retriable error it pauses `backoff`. Each attempt
    /// waits at most `request_timeout`.
    ///
    /// A call that is not idempotent may have taken effect when its answer was lost; a join
    /// is safe to retry because members bring their own id (a join with a known id is the same
    /// member starting over).
    ///
    /// # Errors
    /// The first error that is not retriable (e.g. `UNKNOWN_MEMBER_ID`,
    /// `STALE_MEMBER_EPOCH`, `NON_EMPTY_GROUP`, `GROUP_ID_NOT_FOUND`), or
    /// [`ClientError::TimedOut`] with the last one.
    pub(crate) async fn call_coordinator<T, F, Fut>(
        &self,
        operation: &str,
        group: &str,
        deadline: Instant,
        backoff: Duration,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(CoordinatorServiceClient<Traced>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let target = || async {
            let (_, address) = self.coordinator(group).await?;
            let client = self.coordinator_client(&address)?;
            Ok((address, client))
        };
        let retry = |e: &ClientError| match e {
            // A topic that is gone does not come back by retrying.
            ClientError::Server { code: ErrorCode::UnknownTopicOrPartition, .. } => false,
            // A metadata refresh that found no controller.
            ClientError::TimedOut { .. } => true,
            other => other.is_retriable(),
        };
        let refresh = |e: &ClientError| {
            e.invalidates_metadata() || e.code() == Some(ErrorCode::CoordinatorLoadInProgress)
        };
        self.call_until(operation, deadline, backoff, target, call, retry, refresh).await
    }

    /// Calls a controller: the leader when known, else the controllers in turn. Follows
    /// `NOT_CONTROLLER` redirects, moves to the next controller on transport errors, and
    /// pauses (50 ms doubling to 1 s) while no leader is known or none answers; gives up after
    /// `request_timeout`.
    ///
    /// Writes are not idempotent: a write retried after its answer was lost can fail as if
    /// it had been made by someone else (e.g. `TOPIC_ALREADY_EXISTS`), as in Kafka.
    ///
    /// # Errors
    /// The first error that is neither a redirect nor a transport error, or
    /// [`ClientError::TimedOut`] with the last one.
    pub(crate) async fn call_controller<T, F, Fut>(
        &self,
        operation: &str,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(ControllerServiceClient<Traced>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let deadline = started + self.inner.config.request_timeout;
        let mut attempts = 0;
        let mut backoff = CONTROLLER_BACKOFF_MIN;
        let mut redirects_in_a_row = 0;
        let mut failures_since_pause = 0;
        loop {
            let address = self.pick_controller();
            let client =
                ControllerServiceClient::with_interceptor(self.channel(&address)?, TraceContext)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES);
            attempts += 1;
            let limit = deadline.saturating_duration_since(Instant::now());
            let error = match tokio::time::timeout(limit, call(client)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => ClientError::from_status(operation, &address, &status),
                Err(_) => ClientError::no_answer(operation, &address, limit),
            };
            let pause = match &error {
                ClientError::Server { code: ErrorCode::NotController, leader, .. } => {
                    match leader {
                        Some((_, leader))
                            if *leader != address
                                && redirects_in_a_row < MAX_REDIRECTS_IN_A_ROW =>
                        {
                            debug!(from = %address, to = %leader, "following controller redirect");
                            redirects_in_a_row += 1;
                            self.set_controller_leader(leader);
                            false
                        }
                        // No leader known (an election is under way) or the redirects go in
                        // circles: wait for the quorum to settle.
                        _ => {
                            self.controller_failed(&address);
                            true
                        }
                    }
                }
                ClientError::Transport { .. } => {
                    self.controller_failed(&address);
                    failures_since_pause += 1;
                    failures_since_pause >= lock(&self.inner.controllers).addresses.len()
                }
                _ => return Err(error),
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::TimedOut {
                    operation: operation.to_string(),
                    after: now - started,
                    attempts,
                    last: Some(Box::new(error)),
                });
            }
            if pause {
                debug!(%error, ?backoff, "no controller leader available; pausing");
                tokio::time::sleep(backoff.min(deadline - now)).await;
                backoff = (backoff * 2).min(CONTROLLER_BACKOFF_MAX);
                failures_since_pause = 0;
                redirects_in_a_row = 0;
            }
        }
    }

    fn pick_controller(&self) -> String {
        let c = lock(&self.inner.controllers);
        c.leader.clone().unwrap_or_else(|| c.addresses[c.next % c.addresses.len()].clone())
    }

    fn set_controller_leader(&self, address: &str) {
        let mut c = lock(&self.inner.controllers);
        if !c.addresses.iter().any(|a| a == address) && c.addresses.len() < MAX_CONTROLLERS {
            c.addresses.push(address.to_string());
        }
        c.leader = Some(address.to_string());
    }

    /// `address` failed or does not lead: forget it as leader and move on to the next.
    fn controller_failed(&self, address: &str) {
        let mut c = lock(&self.inner.controllers);
        if c.leader.as_deref() == Some(address) {
            c.leader = None;
        }
        let len = c.addresses.len();
        if c.addresses[c.next % len] == address {
            c.next = (c.next + 1) % len;
        }
    }

    /// The channel to `address` (`host:port`), created lazily on first use.
    pub(crate) fn channel(&self, address: &str) -> Result<Channel, ClientError> {
        let mut channels = lock(&self.inner.channels);
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| ClientError::InvalidArgument {
                reason: format!("bad node address {address:?}: {e}"),
            })?
            .connect_timeout(self.inner.config.connect_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            // A fetch answer's batches arrive in one frame, which `grpc_call::fetch` hands
            // out as they are (frames of 16 KiB would have to be joined: a copy).
            .max_frame_size(MAX_FRAME_BYTES)
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }
}

/// Locks a mutex that is never held across `.await`; a panic while it was held cannot leave
/// these maps half-updated, so poisoning is ignored.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(addresses: &[&str]) -> Cluster {
        Cluster::new(ClientConfig::new(addresses.iter().copied())).unwrap()
    }

    /// Without a known leader the controllers are used in turn, moving on from a failed one;
    /// a redirect makes the named leader the first choice, and learns its address.
    #[test]
    fn controller_choice_follows_failures_and_redirects() {
        let c = cluster(&["a:1", "b:1", "c:1"]);
        assert_eq!(c.pick_controller(), "a:1");
        c.controller_failed("a:1");
        assert_eq!(c.pick_controller(), "b:1");
        c.controller_failed("a:1"); // a stale failure does not skip b
        assert_eq!(c.pick_controller(), "b:1");
        c.set_controller_leader("d:1");
        assert_eq!(c.pick_controller(), "d:1");
        c.controller_failed("d:1");
        assert_eq!(c.pick_controller(), "b:1");
        assert_eq!(lock(&c.inner.controllers).addresses, ["a:1", "b:1", "c:1", "d:1"]);
    }

    /// Cached metadata counts as fresh only when fetched after the asked-for time and not
    /// invalidated since.
    #[test]
    fn metadata_validity() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut cache = MetadataCache {
            current: Arc::new(Metadata::default()),
            fetched_at: None,
            invalidated_at: None,
            wanted: HashSet::default(),
        };
        assert!(!cache.valid_since(t0));
        cache.fetched_at = Some(t1);
        assert!(cache.valid_since(t0));
        assert!(cache.valid_since(t1));
        assert!(!cache.valid_since(t1 + Duration::from_millis(1)));
        cache.invalidated_at = Some(t1 + Duration::from_millis(1));
        assert!(!cache.valid_since(t0));
    }
}
