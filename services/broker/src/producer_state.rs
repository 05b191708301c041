//! [`ProducerStates`]: per partition, what each idempotent producer last wrote, so a leader
//! drops a retried batch (answering with the offsets it got the first time) and refuses a gap
//! in sequence numbers with `OUT_OF_ORDER_SEQUENCE`, as Kafka does.
//!
//! Followers keep it too, from the batches they replicate, so it survives a leader change; a
//! replica rebuilds it from its log when it opens or truncates (a scan of batch headers).
//! Sequence numbers are taken not to wrap (2^31 batches records per producer and partition).

use std::collections::{HashMap, VecDeque};

use tideline_log::batch::batches;
use tideline_log::{BatchError, Log, LogError};

/// How many recent batches per producer are remembered for duplicate detection (Kafka's
/// `max.in.flight.requests.per.connection` bound for idempotence).
pub const REMEMBERED_BATCHES: usize = 5;

/// One batch an idempotent producer wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducedBatch {
    /// Sequence of its first record.
    pub first_seq: i32,
    /// Sequence of its last record.
    pub last_seq: i32,
    /// Offset of its first record.
    pub first_offset: i64,
    /// Offset of its last record.
    pub last_offset: i64,
}

#[derive(Debug, Clone, Default)]
struct Producer {
    epoch: i16,
    recent: VecDeque<ProducedBatch>,
}

/// What to do with a batch from an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// The next batch: append it.
    Append,
    /// A retry of a batch already written: answer with its offsets, append nothing.
    Duplicate(ProducedBatch),
    /// A gap or an unknown older sequence: refuse.
    OutOfOrder {
        /// The sequence expected next.
        expected: i32,
    },
    /// A batch from an older epoch of the producer: refuse.
    StaleEpoch {
        /// The producer's current epoch here.
        current: i16,
    },
}

/// The idempotent producers' state of one partition replica.
#[derive(Debug, Clone, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, Producer>,
}

impl ProducerStates {
    /// Checks a batch of producer `pid` at `epoch` holding sequences `first_seq..=last_seq`.
    pub fn check(&self, pid: i64, epoch: i16, first_seq: i32, last_seq: i32) -> SequenceCheck {
        let Some(p) = self.producers.get(&pid) else {
            // A producer this partition has no state for: new here, or its batches were all
            // deleted by retention (a retry of something that old cannot happen). Refusing
            // would fail a healthy producer for good, so its sequence is taken as it comes.
            return SequenceCheck::Append;
        };
        if epoch < p.epoch {
            return SequenceCheck::StaleEpoch { current: p.epoch };
        }
        if epoch > p.epoch {
            return if first_seq == 0 {
                SequenceCheck::Append
            } else {
                SequenceCheck::OutOfOrder { expected: 0 }
            };
        }
        if let Some(b) =
            p.recent.iter().find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
        {
            return SequenceCheck::Duplicate(*b);
        }
        let next = p.recent.back().map_or(0, |b| b.last_seq.wrapping_add(1));
        if first_seq == next {
            SequenceCheck::Append
        } else {
            SequenceCheck::OutOfOrder { expected: next }
        }
    }

    /// Records a written batch.
    pub fn record(&mut self, pid: i64, epoch: i16, batch: ProducedBatch) {
        let p = self.producers.entry(pid).or_default();
        if epoch > p.epoch {
            p.recent.clear();
        }
        p.epoch = epoch;
        p.recent.push_back(batch);
        while p.recent.len() > REMEMBERED_BATCHES {
            p.recent.pop_front();
        }
    }

    /// Records every idempotent batch in `bytes` (whole v2 batches with their offsets, as
    /// appended or replicated).
    ///
    /// # Errors
    /// A [`BatchError`] when the bytes are not whole batches.
    pub fn record_batches(&mut self, bytes: &[u8]) -> Result<(), BatchError> {
        for b in batches(bytes) {
            let b = b?;
            if b.producer_id() >= 0 {
                let first_seq = b.base_sequence();
                self.record(
                    b.producer_id(),
                    b.producer_epoch(),
                    ProducedBatch {
                        first_seq,
                        last_seq: first_seq.wrapping_add(b.last_offset_delta()),
                        first_offset: b.base_offset(),
                        last_offset: b.last_offset(),
                    },
                );
            }
        }
        Ok(())
    }

    /// The state of a log, rebuilt by reading every batch from its start.
    ///
    /// # Errors
    /// A [`LogError`] when the log cannot be read.
    pub fn rebuild(log: &Log) -> Result<Self, LogError> {
        let mut states = ProducerStates::default();
        let mut offset = log.log_start_offset();
        let mut buf = Vec::new();
        while offset < log.log_end_offset() {
            let read = log.read(offset, 1 << 20, None)?;
            if read.region.is_empty() {
                break;
            }
            buf.clear();
            read.region.read_into(&mut buf)?;
            states
                .record_batches(&buf)
                .map_err(|source| LogError::InvalidBatch { index: 0, source })?;
            offset = read.region.next_offset();
        }
        Ok(states)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first_seq: i32, last_seq: i32, first_offset: i64) -> ProducedBatch {
        ProducedBatch {
            first_seq,
            last_seq,
            first_offset,
            last_offset: first_offset + i64::from(last_seq - first_seq),
        }
    }

    #[test]
    fn sequences_append_deduplicate_and_refuse_gaps() {
        let mut s = ProducerStates::default();
        assert_eq!(s.check(7, 0, 0, 4), SequenceCheck::Append);
        assert_eq!(s.check(8, 0, 40, 44), SequenceCheck::Append, "state lost to retention");
        s.record(7, 0, batch(0, 4, 100));
        assert_eq!(s.check(7, 0, 5, 9), SequenceCheck::Append);
        assert_eq!(s.check(7, 0, 0, 4), SequenceCheck::Duplicate(batch(0, 4, 100)));
        assert_eq!(s.check(7, 0, 6, 9), SequenceCheck::OutOfOrder { expected: 5 });
        for i in 1..=REMEMBERED_BATCHES as i32 {
            s.record(7, 0, batch(i * 5, i * 5 + 4, 100 + i64::from(i) * 5));
        }
        // Older than the remembered window: neither a known duplicate nor next.
        assert_eq!(s.check(7, 0, 0, 4), SequenceCheck::OutOfOrder { expected: 30 });
        assert_eq!(s.check(7, 1, 0, 0), SequenceCheck::Append, "a new epoch starts over");
        s.record(7, 1, batch(0, 0, 200));
        assert_eq!(s.check(7, 0, 30, 30), SequenceCheck::StaleEpoch { current: 1 });
    }
}
