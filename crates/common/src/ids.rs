//! Typed ids: newtypes instead of bare integers and strings where values cross crates.

use std::fmt;
use std::str::FromStr;

/// Longest topic name Kafka accepts (its partition directories append `-<partition>`).
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Why a topic name is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTopicName {
    /// The name is empty.
    #[error("topic name is empty")]
    Empty,
    /// The name is longer than [`MAX_TOPIC_NAME_LEN`].
    #[error("topic name is {len} characters long, the limit is {MAX_TOPIC_NAME_LEN}")]
    TooLong {
        /// Length of the name.
        len: usize,
    },
    /// The name is `.` or `..`.
    #[error("topic name cannot be {0:?}")]
    Dots(String),
    /// The name holds a character outside `[a-zA-Z0-9._-]`.
    #[error(
        "topic name {name:?} has an illegal character {ch:?}: use only a-z, A-Z, 0-9, '.', '_' and '-'"
    )]
    IllegalChar {
        /// The name.
        name: String,
        /// The first illegal character.
        ch: char,
    },
}

/// A topic name that follows Kafka's rules: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.`
/// or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

impl TopicName {
    /// Validates `name`.
    ///
    /// # Errors
    /// The [`InvalidTopicName`] naming the first rule broken.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidTopicName> {
        let name = name.into();
        if name.is_empty() {
            return Err(InvalidTopicName::Empty);
        }
        if name.len() > MAX_TOPIC_NAME_LEN {
            return Err(InvalidTopicName::TooLong { len: name.len() });
        }
        if name == "." || name == ".." {
            return Err(InvalidTopicName::Dots(name));
        }
        if let Some(ch) =
            name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(InvalidTopicName::IllegalChar { name, ch });
        }
        Ok(TopicName(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TopicName {
    type Err = InvalidTopicName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TopicName::new(s)
    }
}

impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

macro_rules! id {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                $name(v)
            }
        }
    };
}

id!(
    /// A storage broker's id, unique in the cluster.
    BrokerId(i32)
);
id!(
    /// A controller's node id in the Raft group.
    NodeId(u64)
);
id!(
    /// A partition's index within its topic, from 0.
    PartitionId(i32)
);
id!(
    /// A partition's leader epoch, bumped on every leader change.
    LeaderEpoch(i32)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafkas_rules() {
        for good in ["orders", "a", "A.b_c-9", &"x".repeat(249), "..."] {
            assert_eq!(TopicName::new(good).unwrap().as_str(), good);
        }
        let cases: &[(&str, InvalidTopicName)] = &[
            ("", InvalidTopicName::Empty),
            (".", InvalidTopicName::Dots(".".into())),
            ("..", InvalidTopicName::Dots("..".into())),
            ("a b", InvalidTopicName::IllegalChar { name: "a b".into(), ch: ' ' }),
            ("topic/1", InvalidTopicName::IllegalChar { name: "topic/1".into(), ch: '/' }),
            ("é", InvalidTopicName::IllegalChar { name: "é".into(), ch: 'é' }),
        ];
        for (bad, err) in cases {
            assert_eq!(&TopicName::new(*bad).unwrap_err(), err, "{bad:?}");
        }
        assert_eq!(
            TopicName::new("x".repeat(250)).unwrap_err(),
            InvalidTopicName::TooLong { len: 250 }
        );
    }
}
