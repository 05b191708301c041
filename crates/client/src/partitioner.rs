//! Choosing a partition for a record: Kafka's murmur2 hash for keyed records (so a key lands
//! on the same partition as with a Java client), sticky partitioning for unkeyed ones (fill one
//! partition's batch, then move on, for bigger batches than round robin gives).

use std::collections::HashMap;

/// Kafka's `Utils.murmur2`: MurmurHash2, 32 bits, seed `0x9747b28c`, little-endian blocks.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let mut h = SEED ^ data.len() as u32;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes(block.try_into().expect("blocks of 4 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        for (i, &byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner gives a keyed record:
/// `(murmur2(key) & 0x7fffffff) % partitions`.
///
/// # Panics
/// If `partitions` is not positive.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition, got {partitions}");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// Partitioner state of a producer: the sticky partition of each topic.
#[derive(Debug)]
pub(crate) struct Partitioner {
    sticky: HashMap<String, Sticky, foldhash::fast::RandomState>,
    rng: XorShift,
}

#[derive(Debug, Default, Clone, Copy)]
struct Sticky {
    current: Option<i32>,
    /// The partition whose batch closed last: the next choice avoids it when it can.
    previous: Option<i32>,
}

impl Partitioner {
    /// A partitioner whose random choices come from `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Partitioner { sticky: HashMap::default(), rng: XorShift::new(seed) }
    }

    /// The partition for a record of `topic` with `key`, given the topic's partition count and
    /// the partitions that have a leader (`available`, may be empty).
    pub(crate) fn partition(
        &mut self,
        topic: &str,
        key: Option<&[u8]>,
        partitions: i32,
        available: &[i32],
    ) -> i32 {
        if let Some(key) = key {
            return partition_for_key(key, partitions);
        }
        let sticky = match self.sticky.get_mut(topic) {
            Some(sticky) => sticky,
            None => self.sticky.entry(topic.to_string()).or_default(),
        };
        if let Some(current) = sticky.current.filter(|&p| p < partitions) {
            return current;
        }
        let choice = choose(&mut self.rng, partitions, available, sticky.previous);
        sticky.current = Some(choice);
        choice
    }

    /// A batch of `topic`-`partition` was closed for sending: when it is the sticky partition,
    /// the next unkeyed record of the topic picks another.
    pub(crate) fn on_batch_closed(&mut self, topic: &str, partition: i32) {
        if let Some(sticky) = self.sticky.get_mut(topic)
            && sticky.current == Some(partition)
        {
            sticky.previous = sticky.current.take();
        }
    }
}

/// A random partition among `available` (all partitions when none is), avoiding `previous`
/// when there is another choice.
fn choose(rng: &mut XorShift, partitions: i32, available: &[i32], previous: Option<i32>) -> i32 {
    let pick = |rng: &mut XorShift| -> i32 {
        if available.is_empty() {
            (rng.next() % partitions as u64) as i32
        } else {
            available[(rng.next() % available.len() as u64) as usize]
        }
    };
    let choices = if available.is_empty() { partitions as usize } else { available.len() };
    let mut choice = pick(rng);
    if choices > 1 {
        while Some(choice) == previous {
            choice = pick(rng);
        }
    }
    choice
}

/// xorshift64*: enough randomness to spread sticky partitions, without a dependency.
#[derive(Debug)]
pub(crate) struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (any value; zero is replaced).
    pub(crate) fn new(seed: u64) -> Self {
        XorShift(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// A seed that differs between producers and runs.
    pub(crate) fn seed_from_time() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
    }

    /// The next value.
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own vectors (`UtilsTest.testMurmur2`), librdkafka's cases (`rdmurmur2.c`), and the
    /// values Akka's Kafka-compatible sharding pins for short numeric keys: the hash is
    /// bit-for-bit Kafka's, across every tail length (0 to 3 bytes past a 4-byte block).
    #[test]
    fn murmur2_matches_kafka() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
            (b"string-f-24-chars-length", 124_730_809),
            (b"string-fo-25-chars-length", 1_269_511_650),
            (b"string-foo-26-chars-length", 119_165_628),
            (b"string-last-27-chars-length", 1_089_971_754),
            (b"kafka", -798_503_068),
            (b"giberish123456789", -1_890_243_828),
            (b"234", -406_844_982),
            (b"34", -2_026_295_078),
            (b"4", 1_514_888_353),
            (b"0", 971_027_396),
            (b"1", -1_993_445_489),
            (b"12", 126_087_238),
            (b"123", -267_702_483),
            (b"1234", -1_614_185_708),
            (b"12345", -1_188_365_604),
            (b"", 275_646_681),
        ];
        for &(key, expected) in cases {
            assert_eq!(murmur2(key), expected, "murmur2({:?})", String::from_utf8_lossy(key));
        }
    }

    /// Keyed records go to `(murmur2 & 0x7fffffff) % n`, whatever the partitioner state.
    #[test]
    fn keyed_records_use_the_hash() {
        let mut p = Partitioner::new(1);
        // murmur2("21") = -973932308; & 0x7fffffff = 1173551340; % 6 = 0; % 7 = 1
        assert_eq!(partition_for_key(b"21", 6), 0);
        assert_eq!(partition_for_key(b"21", 7), 1173551340 % 7);
        for _ in 0..10 {
            assert_eq!(p.partition("t", Some(b"21"), 7, &[0, 1, 2, 3, 4, 5, 6]), 1173551340 % 7);
        }
    }

    /// Unkeyed records stay on one partition until its batch closes, then move to another.
    #[test]
    fn unkeyed_records_stick_until_the_batch_closes() {
        let mut p = Partitioner::new(42);
        let available = [0, 1, 2, 3];
        let first = p.partition("t", None, 4, &available);
        for _ in 0..100 {
            assert_eq!(p.partition("t", None, 4, &available), first);
        }
        // Closing another partition's batch changes nothing.
        p.on_batch_closed("t", (first + 1) % 4);
        assert_eq!(p.partition("t", None, 4, &available), first);
        // Each topic sticks on its own.
        let other = p.partition("u", None, 4, &available);
        p.on_batch_closed("u", other);

        let mut seen = std::collections::HashSet::from([first]);
        let mut current = first;
        for _ in 0..50 {
            p.on_batch_closed("t", current);
            let next = p.partition("t", None, 4, &available);
            assert_ne!(next, current, "a closed sticky partition is not chosen again at once");
            current = next;
            seen.insert(current);
        }
        assert_eq!(seen.len(), 4, "every partition is chosen over time");
    }

    /// Sticky choices go to partitions with a leader when there are some.
    #[test]
    fn sticky_choice_prefers_available_partitions() {
        let mut p = Partitioner::new(7);
        for _ in 0..50 {
            let chosen = p.partition("t", None, 8, &[5]);
            assert_eq!(chosen, 5);
            p.on_batch_closed("t", chosen);
        }
        // No partition has a leader: any partition, and still not the previous one.
        let mut previous = p.partition("t", None, 2, &[]);
        for _ in 0..20 {
            p.on_batch_closed("t", previous);
            let next = p.partition("t", None, 2, &[]);
            assert_ne!(next, previous);
            previous = next;
        }
    }
}
