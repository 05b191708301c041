//! [`balance_plan`]: a reassignment plan that spreads partition replicas and preferred leaders
//! evenly over a set of brokers while moving as few replicas as it can, as `tide partitions
//! reassign --balance` submits it (after adding brokers, or to empty brokers before removing
//! them).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// One partition's replicas: (topic, partition, replica broker ids with the preferred leader
/// first).
pub type Assignment = (String, i32, Vec<i32>);

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No broker to place replicas on.
    #[error("no brokers to balance over")]
    NoBrokers,
    /// A partition has more replicas than there are brokers to hold them.
    #[error(
        "{topic}/{partition} has {replicas} replicas but only {brokers} brokers are in the plan"
    )]
    TooFewBrokers {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: i32,
        /// Its replica count.
        replicas: usize,
        /// Brokers in the plan.
        brokers: usize,
    },
}

/// The moves that balance `partitions` over `brokers`: the partitions whose replica list
/// changes, with their new lists (sorted by topic, then partition). Afterwards:
/// - no replica is on a broker outside `brokers` (so a broker can be emptied before it is
///   removed);
/// - replica counts per broker differ by at most one, and a replica moves off a broker only to
///   even them out, preferably a follower, and preferably of the topic with most replicas on
///   that broker (so each topic spreads as well);
/// - preferred leaders (first replicas) per broker differ by at most one wherever the replica
///   sets allow it, by reordering replicas (no data moves for that).
///
/// Deterministic: the same input gives the same plan (ties go to the smallest broker id and the
/// first partition).
///
/// # Errors
/// [`PlanError`] when `brokers` is empty or smaller than a partition's replica count.
pub fn balance_plan(
    brokers: &[i32],
    partitions: &[Assignment],
) -> Result<Vec<Assignment>, PlanError> {
    let mut brokers: Vec<i32> = brokers.to_vec();
    brokers.sort_unstable();
    brokers.dedup();
    if brokers.is_empty() {
        return Err(PlanError::NoBrokers);
    }
    let mut sorted: Vec<&Assignment> = partitions.iter().collect();
    sorted.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    for (topic, partition, replicas) in &sorted {
        if replicas.len() > brokers.len() {
            return Err(PlanError::TooFewBrokers {
                topic: topic.clone(),
                partition: *partition,
                replicas: replicas.len(),
                brokers: brokers.len(),
            });
        }
    }
    let mut plan: Vec<Vec<i32>> = sorted.iter().map(|(_, _, r)| r.clone()).collect();
    let topics: Vec<&str> = sorted.iter().map(|(t, _, _)| t.as_str()).collect();
    let all: Vec<usize> = (0..plan.len()).collect();

    // 1. Replicas on brokers outside the plan go to the broker of the plan with the fewest
    //    replicas of that topic, then the fewest overall.
    for i in 0..plan.len() {
        for slot in 0..plan[i].len() {
            if brokers.contains(&plan[i][slot]) {
                continue;
            }
            let of_topic: Vec<usize> =
                (0..plan.len()).filter(|j| topics[*j] == topics[i]).collect();
            let (counts, topic_counts) =
                (replica_counts(&plan, &all, &brokers), replica_counts(&plan, &of_topic, &brokers));
            let to = *brokers
                .iter()
                .filter(|b| !plan[i].contains(b))
                .min_by_key(|b| (topic_counts[b], counts[b], **b))
                .expect("more brokers than replicas, checked above");
            plan[i][slot] = to;
        }
    }

    // 2. Even out replica counts, each topic's first, then the totals (preferring moves that
    //    keep topics even).
    let mut names: Vec<&str> = topics.clone();
    names.dedup();
    for name in names {
        let of_topic: Vec<usize> = (0..plan.len()).filter(|j| topics[*j] == name).collect();
        even_out(&mut plan, &of_topic, &brokers, |_, _, _| 0);
    }
    let skew = |plan: &[Vec<i32>], i: usize, (most, least): (i32, i32)| {
        let count = |b: i32| {
            (0..plan.len()).filter(|j| topics[*j] == topics[i] && plan[*j].contains(&b)).count()
                as i64
        };
        count(most) - count(least)
    };
    even_out(&mut plan, &all, &brokers, skew);

    // 3. Even out preferred leaders by reordering replicas.
    balance_leaders(&mut plan, &brokers);

    Ok(sorted
        .iter()
        .zip(plan)
        .filter(|((_, _, before), after)| before != after)
        .map(|((topic, partition, _), after)| (topic.clone(), *partition, after))
        .collect())
}

/// Replicas per broker of the partitions `of` (brokers of the plan only).
fn replica_counts(plan: &[Vec<i32>], of: &[usize], brokers: &[i32]) -> BTreeMap<i32, usize> {
    let mut counts: BTreeMap<i32, usize> = brokers.iter().map(|b| (*b, 0)).collect();
    for b in of.iter().flat_map(|i| &plan[*i]) {
        if let Some(c) = counts.get_mut(b) {
            *c += 1;
        }
    }
    counts
}

/// Evens out the replica counts of the partitions `of`: one replica at a time from the most to
/// the least loaded broker, of a partition on the first and not on the second (one exists
/// while they differ by two or more), a follower rather than a leader, then the partition with
/// the highest `preference(plan, partition, (most, least))`, then the first. Each move lowers
/// the sum of squared counts, so this ends.
fn even_out(
    plan: &mut [Vec<i32>],
    of: &[usize],
    brokers: &[i32],
    preference: impl Fn(&[Vec<i32>], usize, (i32, i32)) -> i64,
) {
    loop {
        let counts = replica_counts(plan, of, brokers);
        let most = *brokers.iter().max_by_key(|b| (counts[b], -**b)).expect("not empty");
        let least = *brokers.iter().min_by_key(|b| (counts[b], **b)).expect("not empty");
        if counts[&most] <= counts[&least] + 1 {
            return;
        }
        let chosen = of
            .iter()
            .copied()
            .filter(|i| plan[*i].contains(&most) && !plan[*i].contains(&least))
            .max_by_key(|i| {
                let preferred = preference(plan, *i, (most, least));
                (plan[*i][0] != most, preferred, std::cmp::Reverse(*i))
            })
            .expect("exists while the counts differ by two or more");
        let slot = plan[chosen].iter().position(|b| *b == most).expect("contains it");
        plan[chosen][slot] = least;
    }
}

fn leader_counts(plan: &[Vec<i32>], brokers: &[i32]) -> HashMap<i32, usize> {
    let mut counts: HashMap<i32, usize> = brokers.iter().map(|b| (*b, 0)).collect();
    for r in plan.iter().filter(|r| !r.is_empty()) {
        *counts.entry(r[0]).or_default() += 1;
    }
    counts
}

/// Moves preferred leadership from brokers that lead two or more partitions more than another
/// broker could, along augmenting paths: broker A hands a partition's lead to a replica B of
/// it, B hands one of its own to C, and so on to a broker that leads at least two fewer than A.
/// Every step lowers the sum of squared lead counts, so this ends; it stops when no path
/// exists (the replica sets do not allow a better spread).
fn balance_leaders(plan: &mut [Vec<i32>], brokers: &[i32]) {
    'improve: loop {
        let leads = leader_counts(plan, brokers);
        let mut by_load: Vec<i32> = brokers.to_vec();
        by_load.sort_by_key(|b| (std::cmp::Reverse(leads[b]), *b));
        for &from in &by_load {
            let top = leads[&from];
            // Breadth first from `from`: through each partition a reached broker leads, to
            // that partition's other replicas. `via[b]` is the partition b was reached through.
            let mut via: HashMap<i32, usize> = HashMap::new();
            let mut seen: HashSet<i32> = HashSet::from([from]);
            let mut queue = VecDeque::from([from]);
            let mut end = None;
            'search: while let Some(b) = queue.pop_front() {
                for (i, replicas) in plan.iter().enumerate() {
                    if replicas.first() != Some(&b) {
                        continue;
                    }
                    for &next in &replicas[1..] {
                        if !brokers.contains(&next) || !seen.insert(next) {
                            continue;
                        }
                        via.insert(next, i);
                        if leads[&next] + 2 <= top {
                            end = Some(next);
                            break 'search;
                        }
                        queue.push_back(next);
                    }
                }
            }
            let Some(mut to) = end else { continue };
            // Walk the path back: each partition on it is led by the broker before `to`.
            loop {
                let i = via[&to];
                let previous = plan[i][0];
                let slot = plan[i].iter().position(|b| *b == to).expect("on the path");
                plan[i].swap(0, slot);
                if previous == from {
                    break;
                }
                to = previous;
            }
            continue 'improve;
        }
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(topic: &str, lists: &[&[i32]]) -> Vec<Assignment> {
        lists.iter().enumerate().map(|(i, r)| (topic.to_string(), i as i32, r.to_vec())).collect()
    }

    /// The replica lists after applying `moves` to `before`.
    fn after(before: &[Assignment], moves: &[Assignment]) -> Vec<Vec<i32>> {
        before
            .iter()
            .map(|(t, p, r)| {
                moves
                    .iter()
                    .find(|(mt, mp, _)| mt == t && mp == p)
                    .map_or(r.clone(), |m| m.2.clone())
            })
            .collect()
    }

    fn spread(lists: &[Vec<i32>], brokers: &[i32]) -> (Vec<usize>, Vec<usize>) {
        let replicas = brokers.iter().map(|b| lists.iter().filter(|r| r.contains(b)).count());
        let leaders = brokers.iter().map(|b| lists.iter().filter(|r| r[0] == *b).count());
        (replicas.collect(), leaders.collect())
    }

    /// A fourth broker added to three that hold every replica of 4 partitions (RF 3) gets its
    /// share: 3 replicas each and one preferred leader each, moving 3 replicas (the minimum).
    #[test]
    fn a_new_broker_gets_an_even_share_of_replicas_and_leaders() {
        let before = parts("t", &[&[0, 1, 2], &[1, 2, 0], &[2, 0, 1], &[0, 1, 2]]);
        let moves = balance_plan(&[0, 1, 2, 3], &before).unwrap();
        let lists = after(&before, &moves);
        assert_eq!(spread(&lists, &[0, 1, 2, 3]), (vec![3, 3, 3, 3], vec![1, 1, 1, 1]));
        let moved: usize = before
            .iter()
            .zip(&lists)
            .map(|((_, _, b), a)| a.iter().filter(|r| !b.contains(r)).count())
            .sum();
        assert_eq!(moved, 3, "{lists:?}");
        for r in &lists {
            let mut sorted = r.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 3, "no broker twice: {r:?}");
        }
        // Balanced input: nothing to do; and the plan is deterministic.
        assert_eq!(balance_plan(&[0, 1], &parts("t", &[&[0, 1], &[1, 0]])).unwrap(), []);
        assert_eq!(balance_plan(&[3, 2, 1, 0], &before).unwrap(), moves);
    }

    /// Brokers left out of the plan are emptied; each topic spreads, not just the total.
    #[test]
    fn brokers_left_out_are_emptied_and_each_topic_spreads() {
        let mut before = parts("a", &[&[0, 3], &[3, 1], &[2, 3], &[3, 0]]);
        before.extend(parts("b", &[&[1, 2], &[2, 1], &[1, 0], &[0, 2]]));
        let moves = balance_plan(&[0, 1, 2], &before).unwrap();
        let lists = after(&before, &moves);
        assert!(lists.iter().all(|r| !r.contains(&3)), "{lists:?}");
        let (replicas, leaders) = spread(&lists, &[0, 1, 2]);
        assert!(replicas.iter().max().unwrap() - replicas.iter().min().unwrap() <= 1, "{lists:?}");
        assert!(leaders.iter().max().unwrap() - leaders.iter().min().unwrap() <= 1, "{lists:?}");
        let (a, _) = spread(&lists[..4], &[0, 1, 2]);
        assert!(a.iter().max().unwrap() - a.iter().min().unwrap() <= 1, "topic a: {lists:?}");
    }

    /// Leadership moves along a chain when the most loaded leader shares no partition with the
    /// least loaded one.
    #[test]
    fn leaders_move_along_a_chain() {
        // Broker 0 leads two, 2 leads none, and 0 and 2 share no partition led by 0.
        let before = parts("t", &[&[0, 1], &[0, 1], &[1, 2], &[3, 2]]);
        let moves = balance_plan(&[0, 1, 2, 3], &before).unwrap();
        let lists = after(&before, &moves);
        assert_eq!(spread(&lists, &[0, 1, 2, 3]).1, vec![1, 1, 1, 1], "{lists:?}");
    }

    #[test]
    fn impossible_plans_are_refused() {
        let before = parts("t", &[&[0, 1, 2]]);
        assert_eq!(balance_plan(&[], &before), Err(PlanError::NoBrokers));
        assert!(matches!(
            balance_plan(&[0, 1], &before),
            Err(PlanError::TooFewBrokers { replicas: 3, brokers: 2, .. })
        ));
    }
}
