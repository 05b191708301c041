//! The sendfile data listener: a plain TCP port beside the gRPC one, where consumers and
//! follower replicas read record batches that go from the page cache to the socket with
//! `sendfile(2)`, never copied through user space. The framing (documented in
//! `docs/data-protocol.md`): a request is a big-endian `u32` length and an encoded
//! `DataFetchRequest`; each answer, in request order, is a `u32` length, an encoded
//! `DataFetchResponse`, then each partition's batches back to back.
//!
//! Reads follow gRPC Fetch: only the partition's leader answers, up to its high watermark,
//! whole batches, at least one batch per partition, and a fetch waits (long poll) until
//! `min_bytes` are there, `max_wait_ms` passed, or the broker stops. A request with
//! `replica_id` is a follower's replica fetch, with gRPC Fetch's `replica_id` semantics: it
//! reads up to the log end, records the follower's progress, and waits for the log end to move.
//! Followers fetch here (`leader_link`); gRPC Fetch is their fallback.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prost::Message;
use tideline_common::{ErrorCode, error_code_of, offset_range_of};
use tideline_log::FileRegion;
use tideline_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::Status;

use crate::membership::Shared;
use crate::service::{BrokerApi, MAX_FETCH_BYTES, join_status, read_status};

/// Largest request frame accepted (a request names partitions, it carries no data).
pub const MAX_REQUEST_BYTES: u32 = 1 << 20;

/// Largest single `sendfile(2)` call (Linux moves at most this much at once).
const MAX_SENDFILE: u64 = 0x7fff_f000;

/// Accepts connections until `stop`, serving each on its own task, at most
/// `data_max_connections` at once: a connection beyond that is closed at once (the client
/// sees the connection end before any answer, and may retry or fall back to gRPC).
pub(crate) async fn run(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(shared.config.data_max_connections));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::warn!(
                        %peer,
                        max = shared.config.data_max_connections,
                        "data listener at its connection limit; connection closed"
                    );
                    drop(stream);
                    continue;
                };
                let api = BrokerApi::new(Arc::clone(&shared));
                let stop = stop.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(e) = serve(api, stream, stop).await {
                        tracing::debug!(%peer, error = %e, "data connection closed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "data listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one connection: requests in order until the peer closes it or the broker stops.
async fn serve(
    api: BrokerApi,
    mut stream: TcpStream,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    loop {
        let len = tokio::select! {
            r = stream.read_u32() => match r {
                Ok(len) => len,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            },
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        if len > MAX_REQUEST_BYTES {
            return Err(invalid(format!("request of {len} bytes, at most {MAX_REQUEST_BYTES}")));
        }
        let mut body = vec![0; len as usize];
        stream.read_exact(&mut body).await?;
        let request = pb::DataFetchRequest::decode(body.as_slice())
            .map_err(|e| invalid(format!("undecodable request: {e}")))?;
        let answers = fetch(&api, &request, &stop).await;
        let header = pb::DataFetchResponse {
            partitions: answers.iter().map(|(result, _)| result.clone()).collect(),
        };
        let mut frame = Vec::with_capacity(4 + header.encoded_len());
        frame.extend_from_slice(&(header.encoded_len() as u32).to_be_bytes());
        header.encode(&mut frame).map_err(|e| invalid(e.to_string()))?;
        stream.write_all(&frame).await?;
        for (_, region) in &answers {
            if let Some(region) = region {
                send_region(&stream, region).await?;
            }
        }
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Sends `region` with `sendfile(2)`, waiting for the socket to be writable and resuming
/// partial sends.
async fn send_region(stream: &TcpStream, region: &FileRegion) -> std::io::Result<()> {
    let mut position = region.position();
    let end = position + region.len();
    while position < end {
        stream.writable().await?;
        let count = (end - position).min(MAX_SENDFILE) as usize;
        let sent = stream.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(stream, region.file(), Some(&mut position), count)
                .map_err(std::io::Error::from)
        });
        match sent {
            // The file ends before the region: it was truncated under the read. The frame
            // promised more bytes than exist; only closing the connection keeps it consistent.
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "segment shorter than the region being sent",
                ));
            }
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One partition's answer: the header entry, and the batches to send (none on error).
type Answer = (pb::DataFetchPartitionResult, Option<FileRegion>);

/// Reads every partition of `request` now; if they hold fewer than `min_bytes` in all, waits
/// for a high watermark (a log end, for a replica fetch) to move, or the metadata to change,
/// the broker to stop, the deadline, and reads again.
async fn fetch(
    api: &BrokerApi,
    request: &pb::DataFetchRequest,
    stop: &watch::Receiver<bool>,
) -> Vec<Answer> {
    let shared = api.shared();
    let follower = request.replica_id;
    if follower.is_some() {
        shared.counters.data_port_replica_fetches.fetch_add(1, Ordering::Relaxed);
    }
    let mut first = true;
    let wait = Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0))
        .min(shared.config.max_fetch_wait);
    let deadline = tokio::time::Instant::now() + wait;
    let min_bytes = u64::try_from(request.min_bytes).unwrap_or(0).max(1);
    let mut metadata_changed = shared.metadata_applied.subscribe();
    loop {
        metadata_changed.borrow_and_update();
        let mut answers = Vec::with_capacity(request.partitions.len());
        let mut watchers = Vec::new();
        let mut failed = false;
        let mut total = 0;
        for p in &request.partitions {
            match read(api, p, follower, first).await {
                Ok((answer, region, end)) => {
                    total += region.len();
                    watchers.push(end);
                    answers.push((answer, (!region.is_empty()).then_some(region)));
                }
                Err(s) => {
                    failed = true;
                    answers.push((refused(p, &s, follower.is_some()), None));
                }
            }
        }
        first = false;
        let stopping = *stop.borrow();
        if total >= min_bytes || failed || stopping || tokio::time::Instant::now() >= deadline {
            return answers;
        }
        let mut changes = tokio::task::JoinSet::new();
        for mut w in watchers {
            changes.spawn(async move { w.changed().await.is_ok() });
        }
        let mut stop = stop.clone();
        tokio::select! {
            _ = changes.join_next() => {}
            _ = metadata_changed.changed() => {}
            _ = stop.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
        changes.abort_all();
    }
}

/// The header entry of a refused partition. An offset out of range comes with the range the
/// reader may read: for a consumer it ends at the high watermark; for a replica at the log end,
/// which is not sent as a high watermark (a follower must never adopt it as one): -1.
fn refused(
    p: &pb::DataFetchPartition,
    s: &Status,
    replica_fetch: bool,
) -> pb::DataFetchPartitionResult {
    let (log_start_offset, end) = offset_range_of(s).unwrap_or((-1, -1));
    let high_watermark = if replica_fetch { -1 } else { end };
    pb::DataFetchPartitionResult {
        topic: p.topic.clone(),
        partition: p.partition,
        error_code: error_code_of(s).unwrap_or(ErrorCode::StorageError) as i32,
        error_message: s.message().to_string(),
        high_watermark,
        log_start_offset,
        next_offset: p.offset,
        payload_length: 0,
        traceparents: Vec::new(),
    }
}

/// One read of one partition, without waiting: the header entry, the region, and a receiver
/// of the end it reads up to (marked seen before the read, so no move after it is missed): the
/// high watermark for a consumer; the log end for a replica fetch by broker `follower`, whose
/// fetch is checked and, on the request's `first` round, recorded as gRPC Fetch does.
async fn read(
    api: &BrokerApi,
    p: &pb::DataFetchPartition,
    follower: Option<i32>,
    first: bool,
) -> Result<(pb::DataFetchPartitionResult, FileRegion, watch::Receiver<i64>), Status> {
    if p.offset < 0 || p.max_bytes < 0 {
        return Err(tideline_common::status(
            ErrorCode::InvalidRequest,
            format!("negative offset {} or max_bytes {}", p.offset, p.max_bytes),
        ));
    }
    let replica = api.readable_replica(&p.topic, p.partition, p.current_leader_epoch)?;
    if let Some(f) = follower {
        api.follower_fetch(&replica, &p.topic, p.partition, f, p.offset, first)?;
    }
    let mut end_changed = match follower {
        Some(_) => replica.log_end.subscribe(),
        None => replica.high_watermark.subscribe(),
    };
    end_changed.borrow_and_update();
    let hw = replica.high_watermark();
    let bound = if follower.is_some() { replica.log.log_end_offset() } else { hw };
    let log = Arc::clone(&replica.log);
    let (offset, max_bytes) = (p.offset, (p.max_bytes as usize).min(MAX_FETCH_BYTES));
    let read = tokio::task::spawn_blocking(move || log.read(offset, max_bytes, Some(bound)))
        .await
        .map_err(join_status)?
        .map_err(|e| read_status(&p.topic, p.partition, e, &replica, follower.is_some()))?;
    let region = read.region;
    crate::metrics::fetched(&p.topic, "data_port", region.len());
    let answer = pb::DataFetchPartitionResult {
        topic: p.topic.clone(),
        partition: p.partition,
        error_code: ErrorCode::Unspecified as i32,
        error_message: String::new(),
        // A consumer's read was bounded by this high watermark. A follower takes the latest,
        // as from gRPC Fetch: its own fetch may just have moved it.
        high_watermark: if follower.is_some() { replica.high_watermark() } else { hw },
        log_start_offset: read.log_start_offset,
        next_offset: if region.is_empty() { p.offset } else { region.next_offset() },
        payload_length: u32::try_from(region.len()).unwrap_or(u32::MAX),
        traceparents: match follower {
            Some(_) if !region.is_empty() => replica.traces_between(p.offset, region.next_offset()),
            _ => Vec::new(),
        },
    };
    Ok((answer, region, end_changed))
}
