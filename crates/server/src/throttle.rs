//! Failure throttling: per source address for uplink keys, per address and
//! per account for passwords, per address for sign-ups.
//!
//! Each tracked subject (an address, an account) may fail `free_failures`
//! times (3 by default: a typo, a stale key) at no cost. After that, each
//! further failure opens a window — 250 ms, doubling with each failure, up
//! to 5 minutes — and a subject that stays quiet for 15 minutes starts
//! over.
//!
//! The two users of this module apply the window differently:
//!
//! - **Uplink keys** carry 256 random bits, so guessing is hopeless and the
//!   throttle exists to keep floods cheap and quiet. The key is always
//!   checked first: a correct key is accepted at once even from a
//!   throttled address (devices behind one NAT or one reverse proxy keep
//!   working while a neighbour guesses); only a *wrong* key waits out the
//!   window before its refusal is sent ([`Throttle::failed`]).
//! - **Passwords** are guessable, so an attempt is counted *before* the
//!   (expensive) hash is checked ([`Throttle::attempt`]), and refused
//!   without checking while the window is open; a correct password refunds
//!   its attempt. Parallel guesses therefore cannot outrun the count.
//!
//! The table is bounded ([`MAX_TRACKED`] subjects); when full, expired
//! entries are dropped and new subjects go untracked rather than growing
//! memory.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits of a failure throttle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures allowed before the subject is slowed down.
    pub free_failures: u32,
    /// The first window; it doubles with each further failure.
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

/// Most subjects tracked at once per throttle.
pub(crate) const MAX_TRACKED: usize = 65_536;

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

    fn open_until(&self, c: &ThrottleConfig) -> Instant {
        self.last + self.window(c)
    }
}

/// Failure counts per subject (`K`: an address, an account name).
#[derive(Debug)]
pub(crate) struct Throttle<K> {
    config: ThrottleConfig,
    by_subject: Mutex<HashMap<K, Failures>>,
}

impl<K: Hash + Eq + Clone> Throttle<K> {
    pub(crate) fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            by_subject: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Failures>> {
        self.by_subject.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `subject` must still wait (None: not throttled now).
    pub(crate) fn wait(&self, subject: &K, now: Instant) -> Option<Duration> {
        let map = self.lock();
        let until = map.get(subject)?.open_until(&self.config);
        (until > now).then(|| until - now)
    }

    /// Records a failure of `subject`; returns the window it opens (zero
    /// while failures are free).
    pub(crate) fn failed(&self, subject: &K, now: Instant) -> Duration {
        let mut map = self.lock();
        self.count(&mut map, subject, now)
    }

    /// An attempt that may fail: refused (with the wait left) while
    /// `subject`'s window is open, else counted as a failure up front —
    /// [`Throttle::refund`] takes it back if it succeeds. Checking and
    /// counting under one lock means parallel attempts are all counted.
    pub(crate) fn attempt(&self, subject: &K, now: Instant) -> Result<(), Duration> {
        let mut map = self.lock();
        if let Some(f) = map.get(subject) {
            let until = f.open_until(&self.config);
            if until > now {
                return Err(until - now);
            }
        }
        self.count(&mut map, subject, now);
        Ok(())
    }

    /// A counted attempt of `subject` succeeded: take it back.
    pub(crate) fn refund(&self, subject: &K) {
        let mut map = self.lock();
        if let Some(f) = map.get_mut(subject) {
            f.count = f.count.saturating_sub(1);
            if f.count == 0 {
                map.remove(subject);
            }
        }
    }

    fn count(&self, map: &mut HashMap<K, Failures>, subject: &K, now: Instant) -> Duration {
        if map.len() >= MAX_TRACKED && !map.contains_key(subject) {
            let c = &self.config;
            map.retain(|_, f| {
                now.saturating_duration_since(f.last) < FORGET_AFTER.max(f.window(c))
            });
            if map.len() >= MAX_TRACKED {
                return Duration::ZERO;
            }
        }
        let entry = map.entry(subject.clone()).or_insert(Failures {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn throttle() -> Throttle<IpAddr> {
        Throttle::new(ThrottleConfig::default())
    }

    #[test]
    fn windows_start_after_the_free_failures_and_double_to_a_cap() {
        let t = throttle();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        let windows: Vec<u128> = (0..16).map(|_| t.failed(&ip, now).as_millis()).collect();
        assert_eq!(&windows[..6], &[0, 0, 0, 250, 500, 1000]);
        assert_eq!(*windows.last().unwrap(), 300_000);
        assert!(t.wait(&ip, now).is_some());
        assert!(t.wait(&ip, now + Duration::from_secs(300)).is_none());
    }

    #[test]
    fn other_subjects_are_unaffected_and_quiet_ones_start_over() {
        let t = throttle();
        let bad: IpAddr = "192.0.2.1".parse().unwrap();
        let good: IpAddr = "192.0.2.2".parse().unwrap();
        let now = Instant::now();
        for _ in 0..10 {
            t.failed(&bad, now);
        }
        assert!(t.wait(&good, now).is_none());
        let later = now + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(t.failed(&bad, later), Duration::ZERO, "counted afresh");
    }

    #[test]
    fn parallel_attempts_are_all_counted_before_any_is_checked() {
        let t: Throttle<String> = Throttle::new(ThrottleConfig::default());
        let account = "ops".to_owned();
        let now = Instant::now();
        // A thousand attempts arriving together: only the free ones (and
        // the first that opens the window) get through to a check.
        let admitted = (0..1000)
            .filter(|_| t.attempt(&account, now).is_ok())
            .count();
        assert_eq!(admitted, 4);
        // A success refunds its own attempt, not the others: one more
        // attempt fits, and it opens the window again.
        t.refund(&account);
        assert!(t.attempt(&account, now).is_ok());
        assert!(t.attempt(&account, now).is_err());
    }

    #[test]
    fn a_refunded_success_leaves_no_trace() {
        let t: Throttle<String> = Throttle::new(ThrottleConfig::default());
        let account = "ops".to_owned();
        let now = Instant::now();
        for _ in 0..10 {
            t.attempt(&account, now).unwrap();
            t.refund(&account);
        }
        assert!(t.wait(&account, now).is_none());
        assert!(t.lock().is_empty());
    }

    #[test]
    fn the_table_is_bounded() {
        let t: Throttle<u32> = Throttle::new(ThrottleConfig::default());
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 100) {
            t.failed(&i, now);
        }
        assert_eq!(t.lock().len(), MAX_TRACKED);
    }
}
