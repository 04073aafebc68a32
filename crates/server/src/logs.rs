//! Log lines about floods, at most one per interval: what a peer (or the
//! whole internet) can make happen a million times must not write a
//! million lines.

use std::sync::Mutex;
use std::time::Duration;

use ferrolink_proto::Instant;

/// How often a repeated warning is written.
pub(crate) const EVERY: Duration = Duration::from_secs(10);

/// Whether to log a repeated event now, and how many were left out since.
#[derive(Debug, Default)]
pub(crate) struct Every {
    next: Option<Instant>,
    suppressed: u64,
}

impl Every {
    /// An event happened at `now`: `Some(left_out)` if it should be logged
    /// (with the number of events not logged since the last line).
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|next| now < next) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + EVERY);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// [`Every`] shared between tasks.
#[derive(Debug, Default)]
pub(crate) struct Shared(Mutex<Every>);

impl Shared {
    /// See [`Every::allow`].
    pub(crate) fn allow(&self, now: Instant) -> Option<u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).allow(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_out() {
        let mut e = Every::default();
        let t0 = Instant::from_millis(1_000);
        assert_eq!(e.allow(t0), Some(0));
        for ms in 1..1000 {
            assert_eq!(e.allow(Instant::from_millis(1_000 + ms)), None);
        }
        assert_eq!(e.allow(t0 + EVERY), Some(999));
        assert_eq!(e.allow(t0 + EVERY), None);
    }
}
