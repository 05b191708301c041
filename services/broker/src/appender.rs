//! Group commit of produce requests. Concurrent produces to one partition queue up in the
//! replica's [`AppendQueue`]; the first to find it idle becomes the writer: on a blocking
//! thread it takes every queued request, checks that this broker still leads at each
//! request's epoch and each idempotent producer's sequence, appends them all with one
//! `Log::append_many` (one vectored write), answers each, and goes on until the queue is empty.
//! While it writes, new requests gather for its next round.

use std::sync::Mutex;

use bytes::Bytes;
use tideline_common::{ErrorCode, status};
use tokio::sync::oneshot;
use tonic::Status;

use crate::producer_state::{ProducedBatch, SequenceCheck};
use crate::replicas::Replica;
use crate::service::log_status;

/// Where a produce landed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Appended {
    pub(crate) first_offset: i64,
    pub(crate) last_offset: i64,
    pub(crate) log_append_time_ms: i64,
}

/// One produce request waiting for the writer.
#[derive(Debug)]
struct Queued {
    bytes: Bytes,
    leader_epoch: i32,
    done: oneshot::Sender<Result<Appended, Status>>,
}

#[derive(Debug, Default)]
struct Inner {
    queued: Vec<Queued>,
    /// A writer is draining the queue.
    writing: bool,
}

/// A partition's produce requests waiting to be written, shared by every copy of its
/// [`Replica`].
#[derive(Debug, Default)]
pub struct AppendQueue {
    inner: Mutex<Inner>,
    /// Appends (log writes) done, and requests they carried: their ratio is the grouping.
    stats: Mutex<(u64, u64)>,
}

impl AppendQueue {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Log writes done and the produce requests they carried, since the replica was opened.
    pub fn stats(&self) -> (u64, u64) {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Appends `bytes` (one or more batches from a producer) to `replica`'s log as leader at
/// `leader_epoch`, grouped with the other produces to the partition queued meanwhile.
///
/// # Errors
/// `NOT_LEADER` when leadership moved, `OUT_OF_ORDER_SEQUENCE` or `INVALID_REQUEST` for an
/// idempotent producer's bad sequence or epoch, the log's error otherwise (see
/// [`log_status`]).
pub(crate) async fn append(
    replica: &Replica,
    me: i32,
    topic: &str,
    partition: i32,
    bytes: Bytes,
    leader_epoch: i32,
) -> Result<Appended, Status> {
    let (done, answer) = oneshot::channel();
    let start = {
        let mut inner = replica.appends.inner();
        inner.queued.push(Queued { bytes, leader_epoch, done });
        !std::mem::replace(&mut inner.writing, true)
    };
    if start {
        let (replica, topic) = (replica.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || drain(&replica, me, &topic, partition));
    }
    answer.await.unwrap_or_else(|_| {
        Err(status(
            ErrorCode::StorageError,
            format!("{topic}-{partition}: the append was abandoned (its writer failed)"),
        ))
    })
}

/// When the writer panics: answers every request still queued (their senders dropped: "the
/// append was abandoned") and clears the writing flag, so the next request starts a new
/// writer. (A writer that ends normally clears it when it finds the queue empty.)
struct Writing<'a>(&'a AppendQueue);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut inner = self.0.inner();
            inner.queued.clear();
            inner.writing = false;
        }
    }
}

/// Most bytes one round writes (at least one request): a round lands whole in the active
/// segment, whose index holds 32-bit positions.
const MAX_ROUND_BYTES: usize = 64 << 20;

/// Writes rounds of queued requests until none is left.
fn drain(replica: &Replica, me: i32, topic: &str, partition: i32) {
    let queue = &*replica.appends;
    let _writing = Writing(queue);
    loop {
        let round = {
            let mut inner = queue.inner();
            if inner.queued.is_empty() {
                inner.writing = false;
                return;
            }
            let mut bytes = 0;
            let take = inner
                .queued
                .iter()
                .position(|q| {
                    bytes += q.bytes.len();
                    bytes > MAX_ROUND_BYTES
                })
                .unwrap_or(inner.queued.len())
                .max(1);
            inner.queued.drain(..take).collect::<Vec<_>>()
        };
        let deferred = write_round(replica, me, topic, partition, round);
        if !deferred.is_empty() {
            // Put back in front of what arrived meanwhile, in their order.
            let mut inner = queue.inner();
            let later = std::mem::replace(&mut inner.queued, deferred);
            inner.queued.extend(later);
        }
    }
}

/// An idempotent batch's identity and sequence range.
struct Sequenced {
    pid: i64,
    producer_epoch: i16,
    first_seq: i32,
    last_seq: i32,
}

/// Appends one round with one write and answers each request. Returns the requests left for
/// the next round: from the second batch of an idempotent producer already in this round on
/// (its sequence check needs the first one recorded).
fn write_round(
    replica: &Replica,
    me: i32,
    topic: &str,
    partition: i32,
    round: Vec<Queued>,
) -> Vec<Queued> {
    // Held through the append: the broker cannot turn follower (and truncate) meanwhile, and
    // an append after it did is refused here.
    let st = replica.state.read().unwrap_or_else(|e| e.into_inner());
    let mut producers = replica.producers.lock().unwrap_or_else(|e| e.into_inner());
    let mut included: Vec<(Queued, Option<Sequenced>)> = Vec::with_capacity(round.len());
    let mut deferred = Vec::new();
    let mut round = round.into_iter();
    for q in round.by_ref() {
        if st.leader != me || st.leader_epoch != q.leader_epoch {
            let _ = q.done.send(Err(status(
                ErrorCode::NotLeader,
                format!(
                    "{topic}-{partition}: leadership moved (now broker {} at epoch {})",
                    st.leader, st.leader_epoch
                ),
            )));
            continue;
        }
        // Malformed bytes get their precise error from the log's validation.
        let Ok((first, rest)) = tideline_log::RecordBatch::parse(&q.bytes) else {
            included.push((q, None));
            continue;
        };
        if first.producer_id() < 0 {
            included.push((q, None));
            continue;
        }
        if !rest.is_empty() {
            let _ = q.done.send(Err(status(
                ErrorCode::InvalidRequest,
                format!("{topic}-{partition}: an idempotent produce carries exactly one batch"),
            )));
            continue;
        }
        let s = Sequenced {
            pid: first.producer_id(),
            producer_epoch: first.producer_epoch(),
            first_seq: first.base_sequence(),
            last_seq: first.base_sequence().wrapping_add(first.last_offset_delta()),
        };
        if included.iter().any(|(_, other)| other.as_ref().is_some_and(|o| o.pid == s.pid)) {
            deferred.push(q);
            break;
        }
        match producers.check(s.pid, s.producer_epoch, s.first_seq, s.last_seq) {
            SequenceCheck::Append => included.push((q, Some(s))),
            SequenceCheck::Duplicate(b) => {
                let _ = q.done.send(Ok(Appended {
                    first_offset: b.first_offset,
                    last_offset: b.last_offset,
                    log_append_time_ms: crate::service::now_ms(),
                }));
            }
            SequenceCheck::OutOfOrder { expected } => {
                let _ = q.done.send(Err(status(
                    ErrorCode::OutOfOrderSequence,
                    format!(
                        "{topic}-{partition}: producer {} sent sequence {}, expected {expected}",
                        s.pid, s.first_seq
                    ),
                )));
            }
            SequenceCheck::StaleEpoch { current } => {
                let _ = q.done.send(Err(status(
                    ErrorCode::InvalidRequest,
                    format!(
                        "{topic}-{partition}: producer {} epoch {} is older than its current epoch {current}",
                        s.pid, s.producer_epoch
                    ),
                )));
            }
        }
    }
    deferred.extend(round);
    if included.is_empty() {
        return deferred;
    }
    let requests: Vec<&[u8]> = included.iter().map(|(q, _)| &q.bytes[..]).collect();
    let results = replica.log.append_many(&requests, st.leader_epoch);
    drop(requests);
    {
        let mut stats = replica.appends.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.0 += 1;
        stats.1 += included.len() as u64;
    }
    match results {
        Err(e) => {
            let refused = log_status(topic, partition, &e);
            for (q, _) in included {
                let _ = q.done.send(Err(refused.clone()));
            }
        }
        Ok(results) => {
            for ((q, sequenced), result) in included.into_iter().zip(results) {
                let answer = match result {
                    Ok(info) => {
                        if let Some(s) = sequenced {
                            producers.record(
                                s.pid,
                                s.producer_epoch,
                                ProducedBatch {
                                    first_seq: s.first_seq,
                                    last_seq: s.last_seq,
                                    first_offset: info.first_offset,
                                    last_offset: info.last_offset,
                                },
                            );
                        }
                        Ok(Appended {
                            first_offset: info.first_offset,
                            last_offset: info.last_offset,
                            log_append_time_ms: info.log_append_time_ms,
                        })
                    }
                    Err(e) => Err(log_status(topic, partition, &e)),
                };
                let _ = q.done.send(answer);
            }
        }
    }
    deferred
}
