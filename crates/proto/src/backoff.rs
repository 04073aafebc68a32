//! Reconnect timing shared by every client: exponential backoff with full
//! jitter, randomness passed in.

use core::time::Duration;

/// Delays between reconnection attempts.
///
/// Attempt `n` (from 0) waits a uniformly random time in
/// `[0, min(max, initial × 2ⁿ)]` ("full jitter"), so a fleet of devices that
/// lost the same server does not come back in lockstep, and a lone client
/// usually retries at once. [`Backoff::reset`] after a connection that
/// worked; [`Backoff::give_up_quickly`] after a refusal that will not change
/// soon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    /// 1 s doubling to 60 s (the official Pico W library waits 1 s).
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(60))
    }
}

impl Backoff {
    /// Ceilings from `initial` doubling to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The ceiling of the next wait.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The next wait, for `random` drawn uniformly from all `u32`s.
    pub fn next_delay(&mut self, random: u32) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = ceiling.as_nanos().saturating_mul(u128::from(random)) >> 32;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Attempts since the last [`Backoff::reset`].
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// A connection worked: start again from the first ceiling.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// From now on, wait up to the longest delay (after a refusal).
    pub fn give_up_quickly(&mut self) {
        self.attempt = 31;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_to_the_cap_and_delays_stay_under_them() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        for want in [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000] {
            assert_eq!(b.ceiling(), Duration::from_millis(want));
            assert!(b.next_delay(u32::MAX) < Duration::from_millis(want));
        }
        assert_eq!(b.next_delay(0), Duration::ZERO);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
        b.give_up_quickly();
        assert_eq!(b.ceiling(), Duration::from_secs(30));
        let half = b.next_delay(u32::MAX / 2);
        assert!(
            half.abs_diff(Duration::from_secs(15)) < Duration::from_millis(1),
            "{half:?}"
        );
    }
}
