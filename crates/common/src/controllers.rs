//! [`Controllers`]: a service's connections to the controller quorum (brokers and coordinators
//! register, heartbeat and follow metadata through it), trying the known Raft leader first and
//! following `NOT_CONTROLLER` redirects.

use std::collections::HashMap;
use std::time::Duration;

use tideline_proto::v1::controller_service_client::ControllerServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::{ErrorCode, error_code_of, leader_hint_of};

/// Connections to the controllers (one reused channel each), trying the known Raft leader
/// first.
#[derive(Debug)]
pub struct Controllers {
    addresses: Vec<String>,
    leader: Option<String>,
    next: usize,
    channels: HashMap<String, Channel>,
}

impl Controllers {
    /// Connections to `addresses` (host:port).
    pub fn new(addresses: Vec<String>) -> Self {
        Controllers { addresses, leader: None, next: 0, channels: HashMap::new() }
    }

    fn pick(&mut self) -> String {
        if let Some(l) = &self.leader {
            return l.clone();
        }
        let a = self.addresses[self.next % self.addresses.len()].clone();
        self.next += 1;
        a
    }

    fn client(&mut self, address: &str) -> Result<ControllerServiceClient<Channel>, tonic::Status> {
        if let Some(c) = self.channels.get(address) {
            return Ok(ControllerServiceClient::new(c.clone()));
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| tonic::Status::invalid_argument(format!("bad address {address}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            // Bounds each call's answer (not the metadata stream's later messages).
            .timeout(Duration::from_secs(5))
            // A controller that vanishes without closing the connection ends the metadata
            // stream within seconds instead of leaving the broker on stale metadata.
            .http2_keep_alive_interval(Duration::from_secs(3))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        self.channels.insert(address.to_string(), channel.clone());
        Ok(ControllerServiceClient::new(channel))
    }

    /// Calls `f` on a controller, following `NOT_CONTROLLER` redirects and moving on to the next
    /// controller when one cannot be reached, up to one round over all of them (plus redirects).
    pub async fn call<T, F, Fut>(&mut self, mut f: F) -> Result<T, tonic::Status>
    where
        F: FnMut(ControllerServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = tonic::Status::unavailable("no controller tried");
        for _ in 0..self.addresses.len() + 2 {
            let address = self.pick();
            let result = match self.client(&address) {
                Ok(client) => f(client).await.map(tonic::Response::into_inner),
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => {
                    self.leader = Some(address);
                    return Ok(v);
                }
                Err(s) if error_code_of(&s) == Some(ErrorCode::NotController) => {
                    self.leader = leader_hint_of(&s).map(|(_, addr)| addr);
                    last = s;
                }
                Err(s) if error_code_of(&s).is_none() => {
                    // Transport failure or a controller that is not up: try another.
                    self.leader = None;
                    last = s;
                }
                Err(s) => return Err(s),
            }
        }
        Err(last)
    }
}

/// A value new at every process start (pid, clock and random state hashed), telling a
/// restarted process apart from a retried registration.
pub fn incarnation_id() -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    let mut out = Vec::with_capacity(16);
    for salt in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        out.extend_from_slice(&h.finish().to_be_bytes());
    }
    out
}
