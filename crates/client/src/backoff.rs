//! Reconnect timing: exponential backoff with full jitter.

use std::time::Duration;

/// When to try again after a lost connection.
///
/// Attempt `n` (from 0) waits a uniformly random time in
/// `[0, min(max_delay, initial_delay × 2ⁿ)]` ("full jitter"), so a fleet of
/// devices that lost the same server does not come back in lockstep. The
/// attempt count resets once a connection is authenticated. Bad or revoked
/// keys are never retried: they surface as [`crate::Status::Failed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Whether to reconnect at all.
    pub enabled: bool,
    /// Ceiling of the first wait.
    pub initial_delay: Duration,
    /// Largest wait between attempts.
    pub max_delay: Duration,
}

impl Default for ReconnectPolicy {
    /// 0–0.5 s, doubling up to 0–30 s.
    fn default() -> Self {
        Self {
            enabled: true,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// The state of one reconnect sequence. Randomness is passed in, so the
/// schedule is testable.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    policy: ReconnectPolicy,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(policy: ReconnectPolicy) -> Self {
        Self { policy, attempt: 0 }
    }

    /// The ceiling of the next wait.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.policy
            .initial_delay
            .checked_mul(factor)
            .unwrap_or(self.policy.max_delay)
            .min(self.policy.max_delay)
    }

    /// The next wait, for `unit` uniformly drawn from `[0, 1)`.
    pub(crate) fn next_delay(&mut self, unit: f64) -> Duration {
        let delay = self.ceiling().mul_f64(unit.clamp(0.0, 1.0));
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Attempts made since the last success.
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// A connection succeeded.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let mut b = Backoff::new(ReconnectPolicy::default());
        let ceilings: Vec<u64> = (0..10)
            .map(|_| {
                let c = b.ceiling().as_millis() as u64;
                b.next_delay(0.5);
                c
            })
            .collect();
        assert_eq!(
            ceilings,
            [
                500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000
            ]
        );
    }

    #[test]
    fn full_jitter_spans_zero_to_the_ceiling() {
        let mut b = Backoff::new(ReconnectPolicy::default());
        assert_eq!(b.next_delay(0.0), Duration::ZERO);
        assert_eq!(b.next_delay(0.999_999).as_millis(), 999);
        assert_eq!(
            b.next_delay(7.0),
            Duration::from_secs(2),
            "out-of-range draws are clamped"
        );
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(ReconnectPolicy::default());
        for _ in 0..1_000 {
            assert!(b.next_delay(1.0) <= Duration::from_secs(30));
        }
    }
}
