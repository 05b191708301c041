//! [`ClientConfig`]: where the cluster is and how long to wait for it.

use std::time::Duration;

use crate::error::ClientError;

/// How a [`Cluster`](crate::Cluster) reaches the controllers and how long it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Controller addresses (`host:port`); any one reachable is enough, the others are tried
    /// in turn when it is not. Kafka's `bootstrap.servers`.
    pub bootstrap: Vec<String>,
    /// Longest wait for one request's answer (`request.timeout.ms`), and for a controller
    /// request including its redirects and retries. Default 30 s.
    pub request_timeout: Duration,
    /// Cached metadata older than this is refreshed in the background (`metadata.max.age.ms`).
    /// Default 5 min.
    pub metadata_max_age: Duration,
    /// Longest wait for a TCP connection to a node. Default 10 s
    /// (`socket.connection.setup.timeout.ms`).
    pub connect_timeout: Duration,
}

impl ClientConfig {
    /// The defaults with these controller addresses.
    pub fn new<I, S>(bootstrap: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            bootstrap: bootstrap.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Checks the values, and strips an `http://` prefix from the addresses.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] naming the first bad value.
    pub(crate) fn validated(mut self) -> Result<Self, ClientError> {
        let invalid = |reason: String| Err(ClientError::InvalidArgument { reason });
        if self.bootstrap.is_empty() {
            return invalid("bootstrap lists no controller address".into());
        }
        for address in &mut self.bootstrap {
            let trimmed = address.trim();
            let trimmed = trimmed.strip_prefix("http://").unwrap_or(trimmed);
            if trimmed.is_empty() || !trimmed.contains(':') {
                return invalid(format!("bootstrap address {address:?} is not host:port"));
            }
            *address = trimmed.to_string();
        }
        if self.request_timeout.is_zero() {
            return invalid("request_timeout must be positive".into());
        }
        if self.connect_timeout.is_zero() {
            return invalid("connect_timeout must be positive".into());
        }
        Ok(self)
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            bootstrap: Vec::new(),
            request_timeout: Duration::from_secs(30),
            metadata_max_age: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Addresses are normalized to host:port and bad configs are refused with a reason.
    #[test]
    fn validation_normalizes_and_refuses() {
        let config = ClientConfig::new(["http://10.0.0.1:7001", " 10.0.0.2:7001 "]);
        let config = config.validated().unwrap();
        assert_eq!(config.bootstrap, ["10.0.0.1:7001", "10.0.0.2:7001"]);

        let empty = ClientConfig::new(Vec::<String>::new()).validated().unwrap_err();
        assert!(empty.to_string().contains("bootstrap"), "{empty}");
        let no_port = ClientConfig::new(["localhost"]).validated().unwrap_err();
        assert!(no_port.to_string().contains("localhost"), "{no_port}");
    }
}
