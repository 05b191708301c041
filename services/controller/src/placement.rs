//! Replica placement for new partitions: Kafka's round-robin assignment over live brokers (the
//! first replica, which leads, walks the brokers from a rotating start so leaders spread evenly;
//! followers follow at a shift that grows every full round), made rack-aware by walking a broker
//! list that alternates racks and preferring, for each further replica, a rack not used yet.
//! A pure function: the leader computes it before proposing, and the result goes in the log.

/// A live broker that can take replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Broker id.
    pub id: i32,
    /// Rack, empty when unknown.
    pub rack: String,
}

/// Why replicas cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Replication factor below 1.
    #[error("replication factor must be at least 1, got {0}")]
    InvalidReplicationFactor(i32),
    /// More replicas than live brokers.
    #[error("replication factor {replication_factor} is larger than the {live} live brokers")]
    NotEnoughBrokers {
        /// Requested replicas per partition.
        replication_factor: i32,
        /// Live brokers.
        live: usize,
    },
    /// Partition count below 1.
    #[error("partition count must be at least 1, got {0}")]
    InvalidPartitions(i32),
}

/// Places `partitions` new partitions with `replication_factor` replicas each, the first of
/// which is numbered `first_partition` (partitions added to an existing topic continue its
/// rotation). `start` rotates the walk (the caller derives it from the topic, so topics do not
/// all start on the same broker). Returns replica lists, preferred leader first.
///
/// # Errors
/// [`PlacementError`] when the counts are out of range or there are too few brokers.
pub fn place(
    brokers: &[Candidate],
    partitions: i32,
    replication_factor: i32,
    first_partition: usize,
    start: usize,
) -> Result<Vec<Vec<i32>>, PlacementError> {
    if replication_factor < 1 {
        return Err(PlacementError::InvalidReplicationFactor(replication_factor));
    }
    if partitions < 1 {
        return Err(PlacementError::InvalidPartitions(partitions));
    }
    let rf = replication_factor as usize;
    if rf > brokers.len() {
        return Err(PlacementError::NotEnoughBrokers { replication_factor, live: brokers.len() });
    }
    let list = rack_alternating(brokers);
    let n = list.len();
    let racks = {
        let mut r: Vec<&str> = list.iter().map(|b| b.rack.as_str()).collect();
        r.sort_unstable();
        r.dedup();
        r.len()
    };
    let mut out = Vec::with_capacity(partitions as usize);
    for p in 0..partitions as usize {
        let index = first_partition + p;
        let first = (index + start) % n;
        let shift = start + index / n;
        let mut chosen: Vec<usize> = vec![first];
        for j in 0..rf - 1 {
            // Kafka's follower position for replica j, then onward to the first broker that is
            // not chosen yet and, while racks remain unused, on a new rack.
            let base = if n > 1 { (first + 1 + (shift + j) % (n - 1)) % n } else { first };
            let used_racks = |chosen: &[usize]| {
                let mut r: Vec<&str> = chosen.iter().map(|&c| list[c].rack.as_str()).collect();
                r.sort_unstable();
                r.dedup();
                r
            };
            let want_new_rack = used_racks(&chosen).len() < racks;
            let pick = (0..n)
                .map(|k| (base + k) % n)
                .find(|c| {
                    !chosen.contains(c)
                        && (!want_new_rack
                            || !used_racks(&chosen).contains(&list[*c].rack.as_str()))
                })
                .or_else(|| (0..n).map(|k| (base + k) % n).find(|c| !chosen.contains(c)))
                .expect("rf <= brokers leaves a free broker");
            chosen.push(pick);
        }
        out.push(chosen.into_iter().map(|c| list[c].id).collect());
    }
    Ok(out)
}

/// Brokers sorted by id within each rack, racks interleaved: r1b1, r2b1, r3b1, r1b2, ...
fn rack_alternating(brokers: &[Candidate]) -> Vec<Candidate> {
    let mut by_rack: std::collections::BTreeMap<&str, Vec<&Candidate>> = Default::default();
    for b in brokers {
        by_rack.entry(b.rack.as_str()).or_default().push(b);
    }
    for list in by_rack.values_mut() {
        list.sort_by_key(|b| b.id);
    }
    let longest = by_rack.values().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|i| by_rack.values().filter_map(move |list| list.get(i).map(|b| (*b).clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn brokers(racks: &[&str]) -> Vec<Candidate> {
        racks
            .iter()
            .enumerate()
            .map(|(i, r)| Candidate { id: i as i32 + 1, rack: r.to_string() })
            .collect()
    }

    #[test]
    fn bad_counts_are_refused() {
        let b = brokers(&["", "", ""]);
        assert_eq!(place(&b, 3, 0, 0, 0), Err(PlacementError::InvalidReplicationFactor(0)));
        assert_eq!(place(&b, 0, 1, 0, 0), Err(PlacementError::InvalidPartitions(0)));
        assert_eq!(
            place(&b, 3, 4, 0, 0),
            Err(PlacementError::NotEnoughBrokers { replication_factor: 4, live: 3 })
        );
    }

    #[test]
    fn replicas_spread_over_racks() {
        let b = brokers(&["a", "a", "b", "b", "c", "c"]);
        for replicas in place(&b, 12, 3, 0, 1).unwrap() {
            let racks: BTreeSet<&str> =
                replicas.iter().map(|id| b[*id as usize - 1].rack.as_str()).collect();
            assert_eq!(racks.len(), 3, "{replicas:?} should span all three racks");
        }
    }

    proptest! {
        /// Every partition gets distinct replicas, leaders are balanced (at most one apart over
        /// a whole number of rounds), and the same input gives the same placement.
        #[test]
        fn placement_is_valid_balanced_and_deterministic(
            racks in proptest::collection::vec(prop_oneof![Just(""), Just("a"), Just("b")], 1..8),
            rounds in 1usize..4,
            rf_seed in any::<usize>(),
            start in 0usize..100,
        ) {
            let b = brokers(&racks);
            let rf = 1 + rf_seed % b.len();
            let partitions = (rounds * b.len()) as i32;
            let placed = place(&b, partitions, rf as i32, 0, start).unwrap();
            prop_assert_eq!(&placed, &place(&b, partitions, rf as i32, 0, start).unwrap());
            let mut leaders: BTreeMap<i32, usize> = b.iter().map(|x| (x.id, 0)).collect();
            for replicas in &placed {
                prop_assert_eq!(replicas.len(), rf);
                let distinct: BTreeSet<_> = replicas.iter().collect();
                prop_assert_eq!(distinct.len(), rf);
                *leaders.get_mut(&replicas[0]).unwrap() += 1;
            }
            let (min, max) = (leaders.values().min().unwrap(), leaders.values().max().unwrap());
            prop_assert!(max - min <= 1, "leaders unbalanced: {:?}", leaders);
        }
    }
}
