//! [`RebalanceListener`] and [`RebalanceEvent`]: how a [`GroupConsumer`](crate::GroupConsumer)
//! tells its user that partitions came or went.

/// A change of the partitions a [`GroupConsumer`](crate::GroupConsumer) owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// These partitions are now owned: their positions are the committed offsets (or per
    /// `auto_offset_reset` without one), and the next `poll` may return their records.
    Assigned(Vec<(String, i32)>),
    /// These partitions are given up: with auto-commit their positions were committed just
    /// before; no record of them is returned from now on, and the coordinator hears of the
    /// release only after this event.
    Revoked(Vec<(String, i32)>),
    /// These partitions were lost without a commit: the member was fenced (`UNKNOWN_MEMBER_ID`
    /// or `STALE_MEMBER_EPOCH`, e.g. after its session timed out) and other members may own
    /// them already. The consumer joins the group again.
    Lost(Vec<(String, i32)>),
}

/// Hears of partitions assigned to and taken from a [`GroupConsumer`](crate::GroupConsumer)
/// (Kafka's `ConsumerRebalanceListener`). Called on the task that calls `poll` (or `close`), in
/// the order the changes happen, never for an empty set; partitions are sorted by topic and
/// partition.
///
/// Any `FnMut(RebalanceEvent) + Send` closure is a listener.
pub trait RebalanceListener: Send {
    /// Partitions newly owned, already positioned.
    fn on_assigned(&mut self, partitions: &[(String, i32)]);
    /// Partitions given up (after their auto-commit), before the release is reported.
    fn on_revoked(&mut self, partitions: &[(String, i32)]);
    /// Partitions lost without a commit after the member was fenced. By default the same as
    /// [`on_revoked`](Self::on_revoked), as in Kafka.
    fn on_lost(&mut self, partitions: &[(String, i32)]) {
        self.on_revoked(partitions);
    }
}

impl<F: FnMut(RebalanceEvent) + Send> RebalanceListener for F {
    fn on_assigned(&mut self, partitions: &[(String, i32)]) {
        self(RebalanceEvent::Assigned(partitions.to_vec()));
    }

    fn on_revoked(&mut self, partitions: &[(String, i32)]) {
        self(RebalanceEvent::Revoked(partitions.to_vec()));
    }

    fn on_lost(&mut self, partitions: &[(String, i32)]) {
        self(RebalanceEvent::Lost(partitions.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closure hears each kind of change as its event.
    #[test]
    fn closures_are_listeners() {
        let mut events = Vec::new();
        {
            let mut listener = |e: RebalanceEvent| events.push(e);
            let p = [("t".to_string(), 1)];
            listener.on_assigned(&p);
            listener.on_revoked(&p);
            listener.on_lost(&p);
        }
        let p = vec![("t".to_string(), 1)];
        assert_eq!(
            events,
            [
                RebalanceEvent::Assigned(p.clone()),
                RebalanceEvent::Revoked(p.clone()),
                RebalanceEvent::Lost(p)
            ]
        );
    }
}
