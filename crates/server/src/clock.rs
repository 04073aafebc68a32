//! The server's clocks: the protocol core's monotonic [`Instant`]s (ms since
//! the server started), their tokio equivalents for timers, and wall-clock
//! milliseconds for what people read (logs, the dashboard, session expiry).

use std::time::{SystemTime, UNIX_EPOCH};

use ferrolink_proto::Instant;

/// The protocol clock: every `Instant` handed to `ferrolink-proto` comes
/// from here, so deadlines computed by the sans-IO core and the timers that
/// enforce them agree.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    epoch: tokio::time::Instant,
}

impl Clock {
    /// A clock whose zero is now.
    pub(crate) fn start() -> Self {
        Self {
            epoch: tokio::time::Instant::now(),
        }
    }

    /// Now, on the protocol clock.
    pub(crate) fn now(self) -> Instant {
        Instant::from_millis(self.epoch.elapsed().as_millis() as u64)
    }

    /// The tokio instant of a protocol instant.
    pub(crate) fn to_tokio(self, t: Instant) -> tokio::time::Instant {
        self.epoch + std::time::Duration::from_millis(t.as_millis())
    }

    /// The wall-clock time (ms since the Unix epoch) of a protocol instant.
    pub(crate) fn to_unix_ms(self, t: Instant) -> u64 {
        let ago = self.now().as_millis().saturating_sub(t.as_millis());
        unix_ms().saturating_sub(ago)
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn protocol_and_tokio_instants_agree() {
        let clock = Clock::start();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let now = clock.now();
        assert!(now.as_millis() >= 50);
        let back = clock.to_tokio(now);
        let drift = tokio::time::Instant::now().saturating_duration_since(back);
        assert!(drift < std::time::Duration::from_millis(5), "{drift:?}");
        // The clock's zero was at least 50 ms of wall time ago.
        let wall = clock.to_unix_ms(Instant::ZERO);
        assert!(unix_ms() - wall >= 50);
    }
}
