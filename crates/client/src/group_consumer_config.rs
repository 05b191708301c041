//! [`GroupConsumerConfig`]: which group a [`GroupConsumer`](crate::GroupConsumer) joins, as
//! what kind of member, and how it commits and fetches.

use std::time::Duration;

use crate::consumer_config::ConsumerConfig;
use crate::error::ClientError;

/// Group consumer settings, named after Kafka's consumer configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConsumerConfig {
    /// The consumer group (`group.id`).
    pub group_id: String,
    /// Instance id of a static member (`group.instance.id`): a member that comes back with the
    /// same instance id within the session timeout gets its partitions back, and `close`
    /// leaves with epoch -2 (keeping them) instead of -1. Default none (a dynamic member).
    pub instance_id: Option<String>,
    /// The member's rack (`client.rack`), for rack-aware assignors. Default none.
    pub rack: Option<String>,
    /// Server-side assignor asked for when the group is created: `uniform` (sticky) or
    /// `range` (`group.remote.assignor`). Default none: the coordinator's default.
    pub server_assignor: Option<String>,
    /// Commit the positions of owned partitions every `auto_commit_interval` during `poll`,
    /// before a partition is revoked, and at `close` (`enable.auto.commit`). Default true.
    pub auto_commit: bool,
    /// How often `poll` commits with `auto_commit` (`auto.commit.interval.ms`). Default 5 s.
    pub auto_commit_interval: Duration,
    /// How long the member keeps its partitions while no heartbeat succeeds (the coordinator
    /// unreachable, or refusing): by then the coordinator has removed it and given them to
    /// others, so it drops them as lost ([`on_lost`](crate::RebalanceListener::on_lost),
    /// nothing committed) and joins again once the coordinator answers. Should match the
    /// coordinator's group session timeout: a longer one lets the member read partitions that
    /// have new owners already, a shorter one drops them early. Default 45 s.
    pub session_timeout: Duration,
    /// Where partitions without a committed offset start (`auto_offset_reset`), and the fetch
    /// settings, as for a [`Consumer`](crate::Consumer).
    pub consumer: ConsumerConfig,
}

impl GroupConsumerConfig {
    /// The defaults for a dynamic member of `group_id`.
    pub fn new(group_id: impl Into<String>) -> Self {
        GroupConsumerConfig {
            group_id: group_id.into(),
            instance_id: None,
            rack: None,
            server_assignor: None,
            auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            session_timeout: Duration::from_secs(45),
            consumer: ConsumerConfig::default(),
        }
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] naming the first bad value.
    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        let invalid = |reason: &str| Err(ClientError::InvalidArgument { reason: reason.into() });
        if self.group_id.is_empty() {
            return invalid("group_id must not be empty");
        }
        if self.instance_id.as_deref().is_some_and(str::is_empty) {
            return invalid("instance_id must not be empty when set");
        }
        if self.auto_commit && self.auto_commit_interval.is_zero() {
            return invalid("auto_commit_interval must be positive");
        }
        if self.session_timeout.is_zero() {
            return invalid("session_timeout must be positive");
        }
        self.consumer.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defaults are Kafka's (auto-commit every 5 s, a 45 s session); empty ids and a zero
    /// session timeout are refused.
    #[test]
    fn defaults_and_validation() {
        let config = GroupConsumerConfig::new("g");
        assert!(config.auto_commit);
        assert_eq!(config.auto_commit_interval, Duration::from_secs(5));
        assert_eq!(config.session_timeout, Duration::from_secs(45));
        config.validate().unwrap();
        let no_session = GroupConsumerConfig { session_timeout: Duration::ZERO, ..config.clone() };
        assert!(no_session.validate().is_err());
        assert!(GroupConsumerConfig::new("").validate().is_err());
        let config = GroupConsumerConfig { instance_id: Some(String::new()), ..config };
        assert!(config.validate().is_err());
    }
}
