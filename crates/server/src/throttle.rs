//! Failed-authentication throttling per source address.
//!
//! The first `free_failures` (3) wrong keys from an address cost nothing
//! (a typo, a stale key). After that the address is refused outright — the
//! key is not even checked — for a window that starts at 250 ms and doubles
//! with each further failure, up to 5 minutes. A success resets the address;
//! an address that stays quiet for 15 minutes starts over. Because a
//! refused attempt is not checked, opening many connections in parallel does
//! not buy more guesses: an address gets at most one guess per window.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits of the failed-authentication throttle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Wrong keys allowed before the address is slowed down.
    pub free_failures: u32,
    /// The first refusal window; it doubles with each further failure.
    pub first_window: Duration,
    /// The longest window.
    pub max_window: Duration,
}

impl Default for ThrottleConfig {
    /// 3 free failures, then 250 ms doubling to 5 minutes.
    fn default() -> Self {
        Self {
            free_failures: 3,
            first_window: Duration::from_millis(250),
            max_window: Duration::from_secs(300),
        }
    }
}

const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Most addresses tracked at once; beyond it, expired entries are dropped
/// and new addresses go untracked rather than growing memory.
const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl Failures {
    fn window(&self, c: &ThrottleConfig) -> Duration {
        if self.count <= c.free_failures {
            return Duration::ZERO;
        }
        let doublings = (self.count - c.free_failures - 1).min(20);
        c.first_window
            .saturating_mul(1 << doublings)
            .min(c.max_window)
    }
}

/// Per-address failure counts.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    config: ThrottleConfig,
    by_address: Mutex<HashMap<IpAddr, Failures>>,
}

impl Throttle {
    pub(crate) fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            by_address: Mutex::default(),
        }
    }

    /// How long `ip` must still wait before its next attempt is checked.
    pub(crate) fn wait(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        let f = map.get(&ip)?;
        let until = f.last + f.window(&self.config);
        (until > now).then(|| until - now)
    }

    /// Records a wrong key from `ip`; returns the wait now imposed.
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) -> Duration {
        let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            let c = &self.config;
            map.retain(|_, f| {
                now.saturating_duration_since(f.last) < FORGET_AFTER.max(f.window(c))
            });
            if map.len() >= MAX_TRACKED {
                return Duration::ZERO;
            }
        }
        let entry = map.entry(ip).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.saturating_duration_since(entry.last) > FORGET_AFTER {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        entry.window(&self.config)
    }

    /// A correct key from `ip`: forget its failures.
    pub(crate) fn succeeded(&self, ip: IpAddr) {
        self.by_address
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_start_after_the_free_failures_and_double_to_a_cap() {
        let t = Throttle::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        let windows: Vec<u128> = (0..16).map(|_| t.failed(ip, now).as_millis()).collect();
        assert_eq!(&windows[..6], &[0, 0, 0, 250, 500, 1000]);
        assert_eq!(*windows.last().unwrap(), 300_000);
        assert!(t.wait(ip, now).is_some());
        assert!(t.wait(ip, now + Duration::from_secs(300)).is_none());
        t.succeeded(ip);
        assert!(t.wait(ip, now).is_none());
    }

    #[test]
    fn other_addresses_are_unaffected_and_quiet_addresses_start_over() {
        let t = Throttle::default();
        let bad: IpAddr = "192.0.2.1".parse().unwrap();
        let good: IpAddr = "192.0.2.2".parse().unwrap();
        let now = Instant::now();
        for _ in 0..10 {
            t.failed(bad, now);
        }
        assert!(t.wait(good, now).is_none());
        let later = now + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(t.failed(bad, later), Duration::ZERO, "counted afresh");
    }
}
