//! [`Throttle`]: the byte rate at which this broker copies the partitions it is adding in a
//! reassignment (Kafka's `follower.replication.throttled.rate`). Every fetcher of an adding
//! replica pays for the bytes it fetched before fetching again, from one budget shared by all
//! of them, so together they copy at most the rate and leave the disks and the network to
//! producers and consumers. In-sync followers are never throttled.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How much unused budget (as time) a fetch may draw on: about one fetch's worth at
/// [`Throttle::fetch_size`].
const CREDIT: Duration = Duration::from_millis(250);

/// A shared byte budget refilled at a rate (see the module doc).
#[derive(Debug, Default)]
pub struct Throttle {
    /// When the bytes paid for so far will have been "sent" at the rate; `None` at first.
    paid_until: Mutex<Option<Instant>>,
}

impl Throttle {
    /// Pays for `bytes` at `rate` bytes per second (after every payment before it) and returns
    /// how long to wait before fetching again. A rate of 0 is no limit.
    pub fn charge(&self, bytes: u64, rate: u64) -> Duration {
        if rate == 0 || bytes == 0 {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut paid_until = self.paid_until.lock().unwrap_or_else(|e| e.into_inner());
        // The time a fetch itself took counts towards the budget (else the copy would run at
        // the throttle minus that), but at most [`CREDIT`] of it: a long idle while does not
        // allow a burst afterwards.
        let floor = now.checked_sub(CREDIT).unwrap_or(now);
        let start = paid_until.map_or(now, |t| t.max(floor));
        let end = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
        *paid_until = Some(end);
        end - now
    }

    /// The largest fetch to ask for at `rate`: about a quarter second's worth, between 64 KiB
    /// and `max`, so the copy runs smoothly rather than in long bursts and pauses.
    pub fn fetch_size(rate: u64, max: i32) -> i32 {
        let quarter = (rate / 4).clamp(64 << 10, u64::try_from(max).unwrap_or(0).max(64 << 10));
        i32::try_from(quarter).unwrap_or(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fetchers sharing the budget wait in turn; time spent fetching counts, an idle while
    /// earns at most a quarter second of credit.
    #[tokio::test(start_paused = true)]
    async fn shared_budget_at_the_rate_without_bursts() {
        let t = Throttle::default();
        let mib = 1 << 20;
        assert_eq!(t.charge(mib, 0), Duration::ZERO, "0 is no limit");
        assert_eq!(t.charge(mib, mib), Duration::from_secs(1));
        assert_eq!(t.charge(mib, mib), Duration::from_secs(2), "the second fetcher waits longer");
        assert_eq!(t.charge(mib / 2, mib), Duration::from_millis(2500));
        // The budget ran until 2.5 s; a fetch that took until 2.6 s pays from 2.5 s.
        tokio::time::advance(Duration::from_millis(2600)).await;
        assert_eq!(t.charge(mib / 2, mib), Duration::from_millis(400));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(t.charge(mib, 2 * mib), Duration::from_millis(250), "a quarter second credit");
        assert_eq!(Throttle::fetch_size(mib, 8 << 20), 256 << 10);
        assert_eq!(Throttle::fetch_size(1000, 8 << 20), 64 << 10);
        assert_eq!(Throttle::fetch_size(u64::MAX, 8 << 20), 8 << 20);
    }
}
