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

/// The state of one reconnect sequence: `ferrolink_proto::backoff`, the
/// schedule every client shares, under this policy.
pub(crate) fn backoff(policy: &ReconnectPolicy) -> ferrolink_proto::backoff::Backoff {
    ferrolink_proto::backoff::Backoff::new(policy.initial_delay, policy.max_delay)
}
