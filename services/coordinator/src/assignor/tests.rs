//! Table-driven cases for both assignors, then properties over random groups, topics and
//! previous assignments, checked against independent re-computations (owners, lower bounds,
//! brute force) rather than the assignors' own helpers.

use super::*;
use proptest::prelude::*;

fn topic(name: &str) -> TopicName {
    TopicName::new(name).expect("valid test topic")
}

fn tp(t: &str, p: i32) -> TopicPartition {
    (topic(t), PartitionId(p))
}

type Owned<'a> = &'a [(&'a str, i32)];

/// A group from (member, subscribed topics), (topic, partition count) and (member, owned
/// partitions).
fn group(
    members: &[(&str, &[&str])],
    topics: &[(&str, i32)],
    current: &[(&str, Owned)],
) -> GroupSpec {
    GroupSpec {
        members: members
            .iter()
            .map(|(id, subs)| {
                let subscribed_topics = subs.iter().map(|t| topic(t)).collect();
                (id.to_string(), MemberSpec { rack: None, subscribed_topics })
            })
            .collect(),
        topics: topics.iter().map(|(t, count)| (topic(t), *count)).collect(),
        current: current
            .iter()
            .map(|(id, owned)| (id.to_string(), owned.iter().map(|(t, p)| tp(t, *p)).collect()))
            .collect(),
    }
}

fn assignment(pairs: &[(&str, Owned)]) -> TargetAssignment {
    pairs
        .iter()
        .map(|(id, owned)| (id.to_string(), owned.iter().map(|(t, p)| tp(t, *p)).collect()))
        .collect()
}

/// The target assignment as the next round's current assignment.
fn as_current(a: &TargetAssignment) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    a.iter().map(|(m, ps)| (m.clone(), ps.iter().cloned().collect())).collect()
}

// ---- unit cases ----

/// Range: Kafka's documented example, two members and two 3-partition topics: the first member
/// takes partitions 0 and 1 of each topic, the second partition 2.
#[test]
fn range_matches_kafkas_example() {
    let subs: &[&str] = &["t0", "t1"];
    let g = group(&[("c0", subs), ("c1", subs)], &[("t0", 3), ("t1", 3)], &[]);
    let expected = assignment(&[
        ("c0", &[("t0", 0), ("t0", 1), ("t1", 0), ("t1", 1)]),
        ("c1", &[("t0", 2), ("t1", 2)]),
    ]);
    assert_eq!(Assignor::Range.assign(&g).unwrap(), expected);
}

/// Range: contiguous ranges per topic among that topic's subscribers sorted by id, the first
/// `partitions % subscribers` one larger; members beyond the partition count get none.
#[test]
fn range_splits_each_topic_among_its_subscribers() {
    let cases: &[(&str, GroupSpec, TargetAssignment)] = &[
        (
            "7 over 3",
            group(&[("c", &["x"]), ("a", &["x"]), ("b", &["x"])], &[("x", 7)], &[]),
            assignment(&[
                ("a", &[("x", 0), ("x", 1), ("x", 2)]),
                ("b", &[("x", 3), ("x", 4)]),
                ("c", &[("x", 5), ("x", 6)]),
            ]),
        ),
        (
            "different subscriptions",
            group(&[("a", &["x"]), ("b", &["x", "y"]), ("c", &["y"])], &[("x", 4), ("y", 3)], &[]),
            assignment(&[
                ("a", &[("x", 0), ("x", 1)]),
                ("b", &[("x", 2), ("x", 3), ("y", 0), ("y", 1)]),
                ("c", &[("y", 2)]),
            ]),
        ),
        (
            "more members than partitions",
            group(&[("a", &["x"]), ("b", &["x"]), ("c", &["x"])], &[("x", 1)], &[]),
            assignment(&[("a", &[("x", 0)]), ("b", &[]), ("c", &[])]),
        ),
        (
            "current assignment ignored",
            group(
                &[("a", &["x"]), ("b", &["x"])],
                &[("x", 2)],
                &[("a", &[("x", 1)]), ("b", &[("x", 0)])],
            ),
            assignment(&[("a", &[("x", 0)]), ("b", &[("x", 1)])]),
        ),
    ];
    for (name, g, expected) in cases {
        assert_eq!(&Assignor::Range.assign(g).unwrap(), expected, "{name}");
    }
}

/// Uniform, table of small groups: fresh groups are dealt round robin; members keep what they
/// own up to their share; joining and leaving move only what the new balance needs; stale and
/// duplicate claims are ignored; subscriptions that force imbalance are honoured.
#[test]
fn uniform_small_groups() {
    let ab: &[&str] = &["A", "B"];
    let a_only: &[&str] = &["A"];
    let cases: &[(&str, GroupSpec, TargetAssignment)] = &[
        (
            "fresh group dealt round robin",
            group(&[("a", ab), ("b", ab), ("c", ab)], &[("A", 3), ("B", 3)], &[]),
            assignment(&[
                ("a", &[("A", 0), ("B", 0)]),
                ("b", &[("A", 1), ("B", 1)]),
                ("c", &[("A", 2), ("B", 2)]),
            ]),
        ),
        (
            "a member leaves: only its partitions move",
            group(
                &[("a", ab), ("b", ab)],
                &[("A", 3), ("B", 3)],
                &[
                    ("a", &[("A", 0), ("B", 0)]),
                    ("b", &[("A", 1), ("B", 1)]),
                    ("c", &[("A", 2), ("B", 2)]),
                ],
            ),
            assignment(&[
                ("a", &[("A", 0), ("A", 2), ("B", 0)]),
                ("b", &[("A", 1), ("B", 1), ("B", 2)]),
            ]),
        ),
        (
            "a member joins: one partition moves, from the most loaded",
            group(
                &[("a", a_only), ("b", a_only), ("c", a_only)],
                &[("A", 5)],
                &[("a", &[("A", 0), ("A", 1), ("A", 2)]), ("b", &[("A", 3), ("A", 4)])],
            ),
            assignment(&[
                ("a", &[("A", 0), ("A", 1)]),
                ("b", &[("A", 3), ("A", 4)]),
                ("c", &[("A", 2)]),
            ]),
        ),
        (
            "stale claims ignored",
            group(
                &[("a", a_only), ("b", a_only)],
                &[("A", 2), ("B", 1)],
                &[
                    ("a", &[("A", 5), ("gone", 0), ("B", 0)]),
                    ("b", &[("A", 0)]),
                    ("left", &[("A", 1)]),
                ],
            ),
            assignment(&[("a", &[("A", 1)]), ("b", &[("A", 0)])]),
        ),
        (
            "a partition claimed twice stays with the smaller id",
            group(
                &[("a", a_only), ("b", a_only)],
                &[("A", 2)],
                &[("a", &[("A", 1)]), ("b", &[("A", 1)])],
            ),
            assignment(&[("a", &[("A", 1)]), ("b", &[("A", 0)])]),
        ),
        (
            // Loads 3, 2, 1 admit no single move that helps (a -> b gives 2, 3, 1), yet a
            // chain does: a gives X2 to b, b gives Y1 to c.
            "a chain of moves balances different subscriptions",
            group(
                &[("a", &["X"]), ("b", &["X", "Y"]), ("c", &["Y"])],
                &[("X", 3), ("Y", 3)],
                &[
                    ("a", &[("X", 0), ("X", 1), ("X", 2)]),
                    ("b", &[("Y", 0), ("Y", 1)]),
                    ("c", &[("Y", 2)]),
                ],
            ),
            assignment(&[
                ("a", &[("X", 0), ("X", 1)]),
                ("b", &[("X", 2), ("Y", 0)]),
                ("c", &[("Y", 1), ("Y", 2)]),
            ]),
        ),
        (
            "subscriptions can force imbalance",
            group(&[("a", &["X"]), ("b", &["Y"])], &[("X", 1), ("Y", 5)], &[]),
            assignment(&[
                ("a", &[("X", 0)]),
                ("b", &[("Y", 0), ("Y", 1), ("Y", 2), ("Y", 3), ("Y", 4)]),
            ]),
        ),
        (
            "topics nobody subscribes to and unknown topics are skipped",
            group(
                &[("a", &["X", "ghost"]), ("b", &[])],
                &[("X", 2), ("lonely", 4), ("empty", 0)],
                &[],
            ),
            assignment(&[("a", &[("X", 0), ("X", 1)]), ("b", &[])]),
        ),
        ("empty group", GroupSpec::default(), TargetAssignment::new()),
    ];
    for (name, g, expected) in cases {
        assert_eq!(&Assignor::Uniform.assign(g).unwrap(), expected, "{name}");
    }
}

/// Assignors are found by name, the default is uniform, and an unknown name is an error that
/// names the choices.
#[test]
fn assignors_are_chosen_by_name() {
    for assignor in Assignor::ALL {
        assert_eq!(assignor.name().parse::<Assignor>(), Ok(assignor));
        assert_eq!(assignor.to_string(), assignor.name());
    }
    assert_eq!(Assignor::default(), Assignor::Uniform);
    let err = "sticky".parse::<Assignor>().unwrap_err();
    assert_eq!(err, AssignorError::UnknownAssignor { name: "sticky".into() });
    assert_eq!(err.to_string(), r#"unknown assignor "sticky": expected "uniform" or "range""#);
    assert_eq!(err.code(), ErrorCode::UnsupportedAssignor);
}

/// A negative partition count is refused by both assignors, not treated as zero.
#[test]
fn negative_partition_count_is_an_error() {
    let g = group(&[("a", &["X"])], &[("X", -1)], &[]);
    for assignor in Assignor::ALL {
        let err = assignor.assign(&g).unwrap_err();
        assert_eq!(err, AssignorError::InvalidPartitionCount { topic: topic("X"), count: -1 });
        assert_eq!(err.code(), ErrorCode::InvalidPartitions);
        assert_eq!(err.to_string(), "topic X has partition count -1, expected at least 0");
    }
}

// ---- independent re-computations for the properties ----

fn subscribes(g: &GroupSpec, member: &str, t: &TopicName) -> bool {
    g.members[member].subscribed_topics.contains(t) && g.topics.contains_key(t)
}

/// Partitions of topics at least one member subscribes to.
fn subscribed_partitions(g: &GroupSpec) -> BTreeSet<TopicPartition> {
    let mut out = BTreeSet::new();
    for (t, &count) in &g.topics {
        if g.members.keys().any(|m| subscribes(g, m, t)) {
            out.extend((0..count).map(|p| (t.clone(), PartitionId(p))));
        }
    }
    out
}

/// Who may keep each partition: a claim by a member still in the group, subscribed, within
/// the count; the first claim in member id order.
fn previous_owners(g: &GroupSpec) -> BTreeMap<TopicPartition, String> {
    let mut out = BTreeMap::new();
    for (m, owned) in &g.current {
        if !g.members.contains_key(m) {
            continue;
        }
        for (t, p) in owned {
            if subscribes(g, m, t) && (0..g.topics[t]).contains(&p.0) {
                out.entry((t.clone(), *p)).or_insert_with(|| m.clone());
            }
        }
    }
    out
}

/// Subscribed partitions that do not stay with their previous owner.
fn moved(g: &GroupSpec, a: &TargetAssignment) -> usize {
    let before = previous_owners(g);
    let stayed =
        a.iter().flat_map(|(m, ps)| ps.iter().filter(|p| before.get(*p) == Some(m))).count();
    subscribed_partitions(g).len() - stayed
}

fn loads(a: &TargetAssignment) -> Vec<usize> {
    a.values().map(Vec::len).collect()
}

fn sum_of_squares(a: &TargetAssignment) -> usize {
    loads(a).iter().map(|l| l * l).sum()
}

/// Every member present, partitions sorted and unique, and every subscribed partition
/// assigned exactly once to a member subscribed to its topic.
fn assert_valid(g: &GroupSpec, a: &TargetAssignment) {
    assert!(a.keys().eq(g.members.keys()), "one entry per member");
    let mut seen = BTreeSet::new();
    for (m, ps) in a {
        assert!(ps.windows(2).all(|w| w[0] < w[1]), "{m}'s partitions sorted and unique");
        for (t, p) in ps {
            assert!(subscribes(g, m, t), "{m} got {t}-{p} without subscribing");
            assert!(seen.insert((t.clone(), *p)), "{t}-{p} assigned twice");
        }
    }
    assert_eq!(seen, subscribed_partitions(g), "exactly the subscribed partitions");
}

/// The fewest moves any assignment with loads within one can make, for members with
/// identical subscriptions: `P % M` members take `P / M + 1` and the rest `P / M`; a member
/// keeps at most what it owns up to its quota, and the larger quotas go best to those that own
/// more than `P / M`.
fn fewest_moves_balanced(g: &GroupSpec) -> usize {
    let total = subscribed_partitions(g).len();
    let members = g.members.len();
    if members == 0 {
        return 0;
    }
    let before = previous_owners(g);
    let owned: Vec<usize> =
        g.members.keys().map(|m| before.values().filter(|o| *o == m).count()).collect();
    let (floor, extra) = (total / members, total % members);
    let kept = owned.iter().map(|&c| c.min(floor)).sum::<usize>()
        + extra.min(owned.iter().filter(|&&c| c > floor).count());
    total - kept
}

/// No chain of moves (each partition to a member subscribed to its topic) from a member to
/// one with at least two fewer partitions: by Harvey, Ladner, Lovász and Tamir ("Semi-matchings
/// for bipartite graphs and load balancing", 2006) the loads then minimise the sum of squares
/// and the maximum.
fn assert_no_cost_reducing_path(g: &GroupSpec, a: &TargetAssignment) {
    let ids: Vec<&String> = a.keys().collect();
    let can_pass = |from: usize, to: usize| {
        from != to && a[ids[from]].iter().any(|(t, _)| subscribes(g, ids[to], t))
    };
    for start in 0..ids.len() {
        let mut reached = vec![false; ids.len()];
        let mut stack = vec![start];
        reached[start] = true;
        while let Some(x) = stack.pop() {
            let start_load = a[ids[start]].len();
            assert!(
                start_load <= a[ids[x]].len() + 1,
                "{} ({start_load}) could pass a partition down a chain to {} ({})",
                ids[start],
                ids[x],
                a[ids[x]].len()
            );
            for (y, reached) in reached.iter_mut().enumerate() {
                if !*reached && can_pass(x, y) {
                    *reached = true;
                    stack.push(y);
                }
            }
        }
    }
}

/// (sum of squared loads, moves), lexicographically smallest over every valid assignment.
fn brute_force_best(g: &GroupSpec) -> (usize, usize) {
    let before = previous_owners(g);
    let ids: Vec<&String> = g.members.keys().collect();
    let parts: Vec<(Vec<usize>, Option<usize>)> = subscribed_partitions(g)
        .into_iter()
        .map(|(t, p)| {
            let subs = (0..ids.len()).filter(|&m| subscribes(g, ids[m], &t)).collect();
            let owner = before.get(&(t, p)).map(|o| ids.iter().position(|m| *m == o).unwrap());
            (subs, owner)
        })
        .collect();
    fn search(
        parts: &[(Vec<usize>, Option<usize>)],
        loads: &mut [usize],
        kept: usize,
        total: usize,
    ) -> (usize, usize) {
        let Some(((subs, owner), rest)) = parts.split_first() else {
            return (loads.iter().map(|l| l * l).sum(), total - kept);
        };
        let mut best = (usize::MAX, usize::MAX);
        for &m in subs {
            loads[m] += 1;
            best = best.min(search(rest, loads, kept + usize::from(*owner == Some(m)), total));
            loads[m] -= 1;
        }
        best
    }
    search(&parts, &mut vec![0; ids.len()], 0, parts.len())
}

// ---- random groups ----

/// A group of members `m0..`, topics `t0..` with the given counts, subscriptions from bit
/// masks (bit i: topic `ti`, bit 7: a topic that does not exist; all masks equal to the first
/// when `homogeneous`), and a previous assignment giving each partition (and one past each
/// topic's end) to a member, to a member that left, or to nobody, plus `extra` claims that may
/// duplicate others.
fn build(
    homogeneous: bool,
    counts: &[i32],
    masks: &[u8],
    choices: &[u8],
    extra: &[(usize, usize, i32)],
) -> GroupSpec {
    let topic_name = |t: usize| format!("t{t}");
    let mut g = GroupSpec {
        topics: counts.iter().enumerate().map(|(t, &c)| (topic(&topic_name(t)), c)).collect(),
        ..GroupSpec::default()
    };
    for (m, &mask) in masks.iter().enumerate() {
        let mask = if homogeneous { masks[0] } else { mask };
        let mut subscribed_topics: BTreeSet<TopicName> = (0..counts.len())
            .filter(|t| mask & (1 << t) != 0)
            .map(|t| topic(&topic_name(t)))
            .collect();
        if mask & 0x80 != 0 {
            subscribed_topics.insert(topic("ghost"));
        }
        g.members.insert(format!("m{m}"), MemberSpec { rack: None, subscribed_topics });
    }
    let mut choice = choices.iter().cycle();
    for (t, &count) in counts.iter().enumerate() {
        for p in 0..=count {
            let c = usize::from(*choice.next().unwrap()) % (masks.len() + 2);
            let owner = match c {
                c if c < masks.len() => format!("m{c}"),
                c if c == masks.len() => continue,
                _ => "left".to_string(),
            };
            g.current.entry(owner).or_default().insert(tp(&topic_name(t), p));
        }
    }
    for &(m, t, p) in extra {
        g.current.entry(format!("m{m}")).or_default().insert(tp(&topic_name(t), p));
    }
    g
}

/// Up to `members` members, `topics` topics of up to `partitions` partitions each.
fn groups(
    homogeneous: bool,
    members: usize,
    topics: usize,
    partitions: i32,
) -> impl Strategy<Value = GroupSpec> {
    (
        prop::collection::vec(0..=partitions, 1..=topics),
        prop::collection::vec(any::<u8>(), 1..=members),
        prop::collection::vec(any::<u8>(), 64),
    )
        .prop_map(move |(counts, masks, choices)| {
            build(homogeneous, &counts, &masks, &choices, &[])
        })
}

/// Like [`groups`], with claims that may duplicate others or be out of range.
fn groups_with_duplicate_claims() -> impl Strategy<Value = GroupSpec> {
    (
        any::<bool>(),
        prop::collection::vec(0..=8i32, 1..=4),
        prop::collection::vec(any::<u8>(), 1..=6),
        prop::collection::vec(any::<u8>(), 64),
        prop::collection::vec((0..6usize, 0..4usize, 0..10i32), 0..8),
    )
        .prop_map(|(homogeneous, counts, masks, choices, extra)| {
            build(homogeneous, &counts, &masks, &choices, &extra)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Both assignors: every subscribed partition goes to exactly one member subscribed to its
    /// topic, whatever the previous assignment holds (stale, duplicate, out-of-range claims).
    #[test]
    fn every_subscribed_partition_goes_to_exactly_one_subscriber(g in groups_with_duplicate_claims()) {
        for assignor in Assignor::ALL {
            assert_valid(&g, &assignor.assign(&g).unwrap());
        }
    }

    /// Both assignors are deterministic: assigning twice, or from a copy, gives the same
    /// answer.
    #[test]
    fn assigning_twice_gives_the_same_answer(g in groups_with_duplicate_claims()) {
        for assignor in Assignor::ALL {
            prop_assert_eq!(assignor.assign(&g).unwrap(), assignor.assign(&g.clone()).unwrap());
        }
    }

    /// Uniform: handing the result back as the current assignment changes nothing.
    #[test]
    fn uniform_result_is_a_fixed_point(g in groups_with_duplicate_claims()) {
        let first = Assignor::Uniform.assign(&g).unwrap();
        let again = GroupSpec { current: as_current(&first), ..g };
        prop_assert_eq!(Assignor::Uniform.assign(&again).unwrap(), first);
    }

    /// Uniform, identical subscriptions, any previous assignment: loads differ by at most one
    /// and exactly the fewest partitions such a balance needs are moved.
    #[test]
    fn uniform_homogeneous_is_balanced_and_moves_the_fewest(g in groups(true, 6, 4, 10)) {
        let a = Assignor::Uniform.assign(&g).unwrap();
        assert_valid(&g, &a);
        let loads = loads(&a);
        prop_assert!(loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1, "{loads:?}");
        prop_assert_eq!(moved(&g, &a), fewest_moves_balanced(&g));
    }

    /// Uniform, identical subscriptions: after a balanced round, a member joining or one
    /// leaving moves exactly the fewest partitions the new balance needs.
    #[test]
    fn uniform_join_or_leave_moves_the_fewest(
        g in groups(true, 6, 4, 10),
        leaving in any::<prop::sample::Index>(),
    ) {
        let first = Assignor::Uniform.assign(&g).unwrap();
        let settled = GroupSpec { current: as_current(&first), ..g };

        let mut joined = settled.clone();
        let subs = joined.members.values().next().unwrap().clone();
        joined.members.insert("new".into(), subs);
        let a = Assignor::Uniform.assign(&joined).unwrap();
        assert_valid(&joined, &a);
        prop_assert_eq!(moved(&joined, &a), fewest_moves_balanced(&joined));

        let mut left = settled;
        let gone = left.members.keys().nth(leaving.index(left.members.len())).unwrap().clone();
        left.members.remove(&gone);
        let a = Assignor::Uniform.assign(&left).unwrap();
        assert_valid(&left, &a);
        prop_assert_eq!(moved(&left, &a), fewest_moves_balanced(&left));
    }

    /// Uniform, any subscriptions: no chain of moves could even the loads further, so they
    /// minimise the largest load and the sum of squares.
    #[test]
    fn uniform_heterogeneous_has_no_cost_reducing_path(g in groups(false, 6, 4, 10)) {
        let a = Assignor::Uniform.assign(&g).unwrap();
        assert_valid(&g, &a);
        assert_no_cost_reducing_path(&g, &a);
    }

    /// Uniform, any subscriptions, small enough to try every assignment: the loads have the
    /// smallest sum of squares, and no assignment with that sum moves fewer partitions.
    #[test]
    fn uniform_matches_brute_force(g in groups(false, 3, 2, 3)) {
        let a = Assignor::Uniform.assign(&g).unwrap();
        prop_assert_eq!((sum_of_squares(&a), moved(&g, &a)), brute_force_best(&g));
    }

    /// The fast path for identical subscriptions and the general flow reach the same optimum:
    /// the same loads (as a multiset) and the same number of moves.
    #[test]
    fn homogeneous_fast_path_agrees_with_the_flow(g in groups(true, 6, 4, 10)) {
        let problem = Problem::new(&g).unwrap();
        let fast = problem.assignment(uniform_homogeneous(&problem, problem.current_owners(&g)));
        let flow = problem.assignment(uniform_heterogeneous(&problem, problem.current_owners(&g)));
        let (mut fast_loads, mut flow_loads) = (loads(&fast), loads(&flow));
        fast_loads.sort_unstable();
        flow_loads.sort_unstable();
        prop_assert_eq!(fast_loads, flow_loads);
        prop_assert_eq!(moved(&g, &fast), moved(&g, &flow));
    }

    /// Range: per topic, its subscribers in id order hold consecutive ranges from partition 0,
    /// the earlier ones at most one larger than the later ones.
    #[test]
    fn range_gives_contiguous_balanced_ranges(g in groups(false, 6, 4, 10)) {
        let a = Assignor::Range.assign(&g).unwrap();
        assert_valid(&g, &a);
        for (t, &count) in &g.topics {
            let subscribers: Vec<&String> = g.members.keys().filter(|m| subscribes(&g, m, t)).collect();
            let mut next = 0;
            let mut sizes = Vec::new();
            for m in subscribers {
                let mine: Vec<i32> = a[m].iter().filter(|(u, _)| u == t).map(|(_, p)| p.0).collect();
                prop_assert_eq!(&mine, &(next..next + mine.len() as i32).collect::<Vec<_>>());
                next += mine.len() as i32;
                sizes.push(mine.len());
            }
            prop_assert!(sizes.windows(2).all(|w| w[0] == w[1] || w[0] == w[1] + 1), "{sizes:?}");
            prop_assert_eq!(next, if sizes.is_empty() { 0 } else { count });
        }
    }
}
