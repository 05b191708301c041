//! Server-side partition assignors for consumer groups (the shape of Kafka's KIP-848): the
//! coordinator, not a group leader, computes each group's target assignment from the members,
//! their subscriptions, the topics' partition counts and the current target assignment.
//!
//! Two assignors, chosen by name with [`Assignor::from_str`](std::str::FromStr):
//!
//! - `uniform` (the default) spreads the subscribed partitions as evenly as the subscriptions
//!   allow and moves as few partitions as it can. Exactly: the loads (partitions per member)
//!   minimise the sum of squares over every assignment that gives each partition to a member
//!   subscribed to its topic, which also minimises the largest load; with identical
//!   subscriptions this is "loads differ by at most one". Among all assignments that
//!   balanced, it keeps the most partitions with their current owner, so a member joining or
//!   leaving moves only the partitions the new balance needs. Identical subscriptions take a
//!   fast path (sorting, `O(P log P)` for `P` partitions); different ones solve a min-cost
//!   flow from topics to members, whose every search relaxes about `T · M` edges (`T`
//!   topics, `M` members) and adds a partition to each member found equally cheap, so a group
//!   takes a few searches per partition per member.
//! - `range` is Kafka's range assignor: per topic, the subscribed members sorted by id take
//!   contiguous ranges of partitions, and the first `partitions % members` take one more. It
//!   ignores the current assignment.
//!
//! Both are deterministic: the inputs are ordered maps and sets, and every tie is broken by
//! member id, topic name and partition number. Member racks are carried in [`MemberSpec`] for a
//! rack-aware variant but used by neither assignor yet.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::str::FromStr;

use tideline_common::{ErrorCode, PartitionId, TopicName};

/// One partition of one topic.
pub type TopicPartition = (TopicName, PartitionId);

/// A target assignment: every member of the group (also those given nothing) and its
/// partitions, sorted by topic name, then partition.
pub type TargetAssignment = BTreeMap<String, Vec<TopicPartition>>;

/// A group member as the assignors see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberSpec {
    /// The member's rack, when its client sent one. Not used by the assignors yet.
    pub rack: Option<String>,
    /// Topics the member subscribes to. Topics the group spec does not list (not created yet,
    /// or deleted) are skipped.
    pub subscribed_topics: BTreeSet<TopicName>,
}

/// Everything an assignor looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupSpec {
    /// The members by member id.
    pub members: BTreeMap<String, MemberSpec>,
    /// The topics by name, with their partition counts (at least 0).
    pub topics: BTreeMap<TopicName, i32>,
    /// The current target assignment, for stickiness. Stale claims are ignored: members that
    /// left, topics that are gone or no longer subscribed by the member, partitions beyond the
    /// topic's count. A partition claimed by several members stays (if it does) with the one
    /// with the smallest id.
    pub current: BTreeMap<String, BTreeSet<TopicPartition>>,
}

/// Why no assignment could be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignorError {
    /// No assignor has this name.
    #[error("unknown assignor {name:?}: expected \"uniform\" or \"range\"")]
    UnknownAssignor {
        /// The name asked for.
        name: String,
    },
    /// A topic's partition count is negative.
    #[error("topic {topic} has partition count {count}, expected at least 0")]
    InvalidPartitionCount {
        /// The topic.
        topic: TopicName,
        /// Its count.
        count: i32,
    },
}

impl AssignorError {
    /// The error code a client sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            AssignorError::UnknownAssignor { .. } => ErrorCode::UnsupportedAssignor,
            AssignorError::InvalidPartitionCount { .. } => ErrorCode::InvalidPartitions,
        }
    }
}

/// A server-side assignor, chosen by name (`"uniform"`, `"range"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Assignor {
    /// Balanced and sticky; the default.
    #[default]
    Uniform,
    /// Kafka's range assignor: contiguous ranges per topic.
    Range,
}

impl Assignor {
    /// Every assignor, the default first.
    pub const ALL: [Assignor; 2] = [Assignor::Uniform, Assignor::Range];

    /// The name members ask for it by.
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Uniform => "uniform",
            Assignor::Range => "range",
        }
    }

    /// The next target assignment of `group`: each partition of each topic that at least one
    /// member subscribes to goes to exactly one member subscribed to that topic; partitions of
    /// other topics go to nobody. See the [module docs](self) for how each assignor chooses.
    ///
    /// ```
    /// use std::collections::BTreeSet;
    /// use tideline_common::{PartitionId, TopicName};
    /// use tideline_coordinator::{Assignor, GroupSpec, MemberSpec};
    ///
    /// let orders = TopicName::new("orders").unwrap();
    /// let member = MemberSpec { rack: None, subscribed_topics: BTreeSet::from([orders.clone()]) };
    /// let mut group = GroupSpec::default();
    /// group.members.insert("a".into(), member.clone());
    /// group.members.insert("b".into(), member);
    /// group.topics.insert(orders.clone(), 3);
    ///
    /// let assignment = Assignor::Range.assign(&group).unwrap();
    /// assert_eq!(assignment["a"], [(orders.clone(), PartitionId(0)), (orders.clone(), PartitionId(1))]);
    /// assert_eq!(assignment["b"], [(orders, PartitionId(2))]);
    /// ```
    ///
    /// # Errors
    /// [`AssignorError::InvalidPartitionCount`] when a topic's partition count is negative.
    pub fn assign(self, group: &GroupSpec) -> Result<TargetAssignment, AssignorError> {
        let problem = Problem::new(group)?;
        let per_member = match self {
            Assignor::Uniform => {
                let owners = problem.current_owners(group);
                if problem.is_homogeneous() {
                    uniform_homogeneous(&problem, owners)
                } else {
                    uniform_heterogeneous(&problem, owners)
                }
            }
            Assignor::Range => range(&problem),
        };
        Ok(problem.assignment(per_member))
    }
}

impl fmt::Display for Assignor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Assignor {
    type Err = AssignorError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Assignor::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| AssignorError::UnknownAssignor { name: name.to_string() })
    }
}

/// A partition by index: (topic index in [`Problem`], partition number).
type Slot = (usize, usize);

/// A group spec in indices: members and topics numbered in sorted order, subscriptions
/// restricted to topics that exist and have partitions.
#[derive(Debug)]
struct Problem<'a> {
    member_ids: Vec<&'a str>,
    topic_names: Vec<&'a TopicName>,
    partition_counts: Vec<usize>,
    /// Per topic: the members subscribed to it, ascending.
    subscribers: Vec<Vec<usize>>,
    /// Per member: the topics it subscribes to, ascending.
    subscriptions: Vec<Vec<usize>>,
}

impl<'a> Problem<'a> {
    fn new(group: &'a GroupSpec) -> Result<Self, AssignorError> {
        let mut topic_names = Vec::new();
        let mut partition_counts = Vec::new();
        for (topic, &count) in &group.topics {
            let Ok(count) = usize::try_from(count) else {
                return Err(AssignorError::InvalidPartitionCount { topic: topic.clone(), count });
            };
            if count > 0 {
                topic_names.push(topic);
                partition_counts.push(count);
            }
        }
        let mut subscribers = vec![Vec::new(); topic_names.len()];
        let mut subscriptions = vec![Vec::new(); group.members.len()];
        for (m, spec) in group.members.values().enumerate() {
            for topic in &spec.subscribed_topics {
                if let Ok(t) = topic_names.binary_search(&topic) {
                    subscribers[t].push(m);
                    subscriptions[m].push(t);
                }
            }
        }
        Ok(Problem {
            member_ids: group.members.keys().map(String::as_str).collect(),
            topic_names,
            partition_counts,
            subscribers,
            subscriptions,
        })
    }

    /// Whether every member subscribes to the same (existing) topics.
    fn is_homogeneous(&self) -> bool {
        self.subscriptions.windows(2).all(|w| w[0] == w[1])
    }

    /// Per topic and partition, the member that owns it in `group.current` and may keep it:
    /// still in the group and subscribed to the topic; the smallest id among several claims.
    fn current_owners(&self, group: &GroupSpec) -> Vec<Vec<Option<usize>>> {
        let mut owners: Vec<Vec<Option<usize>>> =
            self.partition_counts.iter().map(|&count| vec![None; count]).collect();
        for (member_id, partitions) in &group.current {
            let Ok(m) = self.member_ids.binary_search(&member_id.as_str()) else { continue };
            for (topic, partition) in partitions {
                let Ok(t) = self.topic_names.binary_search(&topic) else { continue };
                let Ok(p) = usize::try_from(partition.0) else { continue };
                if p < self.partition_counts[t]
                    && owners[t][p].is_none()
                    && self.subscriptions[m].binary_search(&t).is_ok()
                {
                    owners[t][p] = Some(m);
                }
            }
        }
        owners
    }

    /// Names the partitions of `per_member` and sorts them; checks that each subscribed
    /// partition went to exactly one subscriber (a broken assignor must not hand out its
    /// result).
    fn assignment(&self, per_member: Vec<Vec<Slot>>) -> TargetAssignment {
        assert_eq!(per_member.len(), self.member_ids.len(), "one partition list per member");
        let mut seen: Vec<Vec<bool>> =
            self.partition_counts.iter().map(|&count| vec![false; count]).collect();
        let mut out = TargetAssignment::new();
        for (m, mut slots) in per_member.into_iter().enumerate() {
            slots.sort_unstable();
            for &(t, p) in &slots {
                assert!(self.subscriptions[m].binary_search(&t).is_ok(), "assigned unsubscribed");
                assert!(!std::mem::replace(&mut seen[t][p], true), "assigned twice");
            }
            let named = slots
                .into_iter()
                .map(|(t, p)| {
                    // p < partition count <= i32::MAX
                    (self.topic_names[t].clone(), PartitionId(p as i32))
                })
                .collect();
            out.insert(self.member_ids[m].to_string(), named);
        }
        for (t, seen) in seen.iter().enumerate() {
            let subscribed = !self.subscribers[t].is_empty();
            assert!(seen.iter().all(|&s| s == subscribed), "every subscribed partition assigned");
        }
        out
    }
}

/// Kafka's range assignor, per topic.
fn range(problem: &Problem<'_>) -> Vec<Vec<Slot>> {
    let mut out = vec![Vec::new(); problem.member_ids.len()];
    for (t, subscribers) in problem.subscribers.iter().enumerate() {
        if subscribers.is_empty() {
            continue;
        }
        let count = problem.partition_counts[t];
        let (per_member, extra) = (count / subscribers.len(), count % subscribers.len());
        for (i, &m) in subscribers.iter().enumerate() {
            let start = per_member * i + i.min(extra);
            let len = per_member + usize::from(i < extra);
            out[m].extend((start..start + len).map(|p| (t, p)));
        }
    }
    out
}

/// Uniform assignment when every member subscribes to the same topics: quotas of `P / M` and
/// `P / M + 1`, the larger ones to the members that own the most now; each member keeps what it
/// owns up to its quota, and the rest is dealt round robin.
fn uniform_homogeneous(
    problem: &Problem<'_>,
    mut owners: Vec<Vec<Option<usize>>>,
) -> Vec<Vec<Slot>> {
    let members = problem.member_ids.len();
    let mut out: Vec<Vec<Slot>> = vec![Vec::new(); members];
    let Some(topics) = problem.subscriptions.first() else { return out };
    for &t in topics {
        for (p, owner) in owners[t].iter().enumerate() {
            if let Some(m) = *owner {
                out[m].push((t, p));
            }
        }
    }
    let total: usize = topics.iter().map(|&t| problem.partition_counts[t]).sum();
    let (floor, extra) = (total / members, total % members);
    let mut by_owned: Vec<usize> = (0..members).collect();
    by_owned.sort_by_key(|&m| (Reverse(out[m].len()), m));
    let mut quota = vec![floor; members];
    for &m in &by_owned[..extra] {
        quota[m] += 1;
    }
    for (m, kept) in out.iter_mut().enumerate() {
        for &(t, p) in kept.iter().skip(quota[m]) {
            owners[t][p] = None;
        }
        kept.truncate(quota[m]);
    }
    let pool = topics
        .iter()
        .flat_map(|&t| (0..problem.partition_counts[t]).map(move |p| (t, p)))
        .filter(|&(t, p)| owners[t][p].is_none());
    let needs: Vec<(usize, usize)> = (0..members).map(|m| (m, quota[m] - out[m].len())).collect();
    deal(pool, &needs, &mut out);
    out
}

/// Uniform assignment for any subscriptions. First the number of partitions of each topic for
/// each member, by a min-cost flow; then each member keeps what it owns of each topic up to
/// that number, and the rest of each topic is dealt round robin.
fn uniform_heterogeneous(
    problem: &Problem<'_>,
    mut owners: Vec<Vec<Option<usize>>>,
) -> Vec<Vec<Slot>> {
    let mut flow = CountFlow::new(problem, &owners);
    let total: usize = (0..problem.topic_names.len())
        .filter(|&t| !problem.subscribers[t].is_empty())
        .map(|t| problem.partition_counts[t])
        .sum();
    // The cost of a load unit outweighs every possible difference in moves (at most `total`),
    // so balance comes first and stickiness second.
    let load_unit_cost = i64::try_from(total).unwrap_or(i64::MAX / 4).saturating_add(1);
    let mut unassigned = total;
    while unassigned > 0 {
        unassigned -= flow.augment(load_unit_cost);
    }
    let mut out: Vec<Vec<Slot>> = vec![Vec::new(); problem.member_ids.len()];
    for (t, subscribers) in problem.subscribers.iter().enumerate() {
        if subscribers.is_empty() {
            continue;
        }
        let mut kept = vec![0; subscribers.len()];
        for (p, owner) in owners[t].iter_mut().enumerate() {
            let Some(m) = *owner else { continue };
            let j = subscribers.binary_search(&m).expect("owners are subscribers");
            if kept[j] < flow.assigned[t][j] {
                kept[j] += 1;
                out[m].push((t, p));
            } else {
                *owner = None;
            }
        }
        let pool = (0..problem.partition_counts[t]).filter(|&p| owners[t][p].is_none());
        let needs: Vec<(usize, usize)> = subscribers
            .iter()
            .enumerate()
            .map(|(j, &m)| (m, flow.assigned[t][j] - kept[j]))
            .collect();
        deal(pool.map(|p| (t, p)), &needs, &mut out);
    }
    out
}

/// Deals `pool` round robin to the members of `needs` (member, how many), in order.
fn deal(pool: impl IntoIterator<Item = Slot>, needs: &[(usize, usize)], out: &mut [Vec<Slot>]) {
    let mut queue: VecDeque<(usize, usize)> =
        needs.iter().copied().filter(|&(_, n)| n > 0).collect();
    for slot in pool {
        let (m, need) = queue.pop_front().expect("no more partitions than needed");
        out[m].push(slot);
        if need > 1 {
            queue.push_back((m, need - 1));
        }
    }
    assert!(queue.is_empty(), "as many partitions as needed");
}

/// How many partitions of each topic each member gets, as a min-cost flow from topics to
/// members. Assigning one more partition to a member at load `l` costs
/// `load_unit_cost * (2l + 1)`, which sums to `load_unit_cost * l²`; assigning a member a
/// partition of a topic beyond what it owns of it costs 1 more (a move). Successive shortest
/// paths add partitions along cheapest paths in the residual graph, which keeps the flow a
/// cheapest one for its size; a path may reassign partitions between members on its way
/// (topic → member → topic → ... → member).
#[derive(Debug)]
struct CountFlow<'p> {
    subscribers: &'p [Vec<usize>],
    /// Per member: (topic, index among the topic's subscribers).
    slots: Vec<Vec<(usize, usize)>>,
    /// `owned[t][j]`: partitions of topic `t` its `j`-th subscriber owns and may keep.
    owned: Vec<Vec<usize>>,
    /// `assigned[t][j]`: partitions of topic `t` its `j`-th subscriber gets.
    assigned: Vec<Vec<usize>>,
    /// Per topic: partitions not given to anyone yet.
    unassigned: Vec<usize>,
    /// Per member: partitions given to it.
    load: Vec<usize>,
}

impl<'p> CountFlow<'p> {
    fn new(problem: &'p Problem<'_>, owners: &[Vec<Option<usize>>]) -> Self {
        let subscribers = &problem.subscribers;
        let mut slots = vec![Vec::new(); problem.member_ids.len()];
        let mut owned: Vec<Vec<usize>> = subscribers.iter().map(|s| vec![0; s.len()]).collect();
        for (t, subs) in subscribers.iter().enumerate() {
            for (j, &m) in subs.iter().enumerate() {
                slots[m].push((t, j));
            }
            for &m in owners[t].iter().flatten() {
                owned[t][subs.binary_search(&m).expect("owners are subscribers")] += 1;
            }
        }
        CountFlow {
            subscribers,
            slots,
            assigned: subscribers.iter().map(|s| vec![0; s.len()]).collect(),
            owned,
            unassigned: problem.partition_counts.clone(),
            load: vec![0; problem.member_ids.len()],
        }
    }

    /// Assigns more partitions along cheapest paths, found by Bellman-Ford with a queue
    /// (reverse edges cost -1, but the residual graph has no negative cycle): along every
    /// path of the least cost that shares no edge with another one taken. Returns how many
    /// (at least one).
    fn augment(&mut self, load_unit_cost: i64) -> usize {
        let topics = self.subscribers.len();
        let nodes = topics + self.load.len();
        let mut dist = vec![i64::MAX; nodes];
        // How each node was reached: (topic, subscriber index) of the edge used.
        let mut via: Vec<Option<(usize, usize)>> = vec![None; nodes];
        // Edges on each node's best path so far: more than `nodes` would mean a negative cycle,
        // which would make this loop forever instead of failing.
        let mut hops = vec![0; nodes];
        let mut queued = vec![false; nodes];
        let mut queue = VecDeque::new();
        for t in 0..topics {
            if self.unassigned[t] > 0 && !self.subscribers[t].is_empty() {
                dist[t] = 0;
                queued[t] = true;
                queue.push_back(t);
            }
        }
        while let Some(u) = queue.pop_front() {
            queued[u] = false;
            let (du, hops_v) = (dist[u], hops[u] + 1);
            assert!(hops_v <= nodes, "negative cycle in the assignment flow");
            let mut relax = |v: usize, d: i64, edge: (usize, usize)| {
                if d < dist[v] {
                    dist[v] = d;
                    hops[v] = hops_v;
                    via[v] = Some(edge);
                    if !std::mem::replace(&mut queued[v], true) {
                        queue.push_back(v);
                    }
                }
            };
            if u < topics {
                // Give `m` one more partition of `u`: free while it is one `m` owns.
                for (j, &m) in self.subscribers[u].iter().enumerate() {
                    let cost = i64::from(self.assigned[u][j] >= self.owned[u][j]);
                    relax(topics + m, du + cost, (u, j));
                }
            } else {
                // Take one partition of `t` back from `m`: saves a move when `m` got more of
                // `t` than it owns.
                for &(t, j) in &self.slots[u - topics] {
                    let assigned = self.assigned[t][j];
                    if assigned > 0 {
                        let cost = -i64::from(assigned > self.owned[t][j]);
                        relax(t, du + cost, (t, j));
                    }
                }
            }
        }
        // Cost of the cheapest path ending at each member, loading it by one more.
        let path_costs: Vec<Option<i64>> = (0..self.load.len())
            .map(|m| {
                let load = i64::try_from(2 * self.load[m] + 1).unwrap_or(i64::MAX);
                let d = dist[topics + m];
                (d != i64::MAX).then(|| d.saturating_add(load_unit_cost.saturating_mul(load)))
            })
            .collect();
        let cheapest = path_costs.iter().flatten().min().copied();
        let cheapest = Some(cheapest.expect("an unassigned partition has a subscriber"));
        // Every path of that cost stays a cheapest one while its edges and its ends are
        // untouched (cheapest path costs never decrease), so one search serves all of them.
        let mut touched: Vec<Vec<bool>> =
            self.assigned.iter().map(|a| vec![false; a.len()]).collect();
        let mut path = Vec::new();
        let mut augmented = 0;
        for end in (0..self.load.len()).filter(|&m| path_costs[m] == cheapest) {
            path.clear();
            let mut node = topics + end;
            while let Some((t, j)) = via[node] {
                assert!(path.len() < nodes, "a shortest path visits each node at most once");
                let forward = node >= topics;
                path.push((forward, t, j));
                node = if forward { t } else { topics + self.subscribers[t][j] };
            }
            if self.unassigned[node] == 0 || path.iter().any(|&(_, t, j)| touched[t][j]) {
                continue;
            }
            for &(forward, t, j) in &path {
                touched[t][j] = true;
                if forward {
                    self.assigned[t][j] += 1;
                } else {
                    self.assigned[t][j] -= 1;
                }
            }
            self.unassigned[node] -= 1;
            self.load[end] += 1;
            augmented += 1;
        }
        augmented
    }
}

#[cfg(test)]
mod tests;
