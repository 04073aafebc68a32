//! Time as an input: the protocol core never reads a clock.

use core::ops::Add;
use core::time::Duration;

/// A point in time, in milliseconds since an epoch the driver chooses.
///
/// Drivers map their clock onto it (tokio: milliseconds since the driver
/// started; tests: a virtual counter). Only differences between instants
/// carry meaning.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The epoch itself.
    pub const ZERO: Self = Self(0);

    /// An instant `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// How long after `earlier` this instant is, or zero if it is not later.
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Self;

    fn add(self, rhs: Duration) -> Self {
        let ms = u64::try_from(rhs.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_a_huge_duration_saturates() {
        let t = Instant::from_millis(5) + Duration::from_secs(u64::MAX);
        assert_eq!(t.as_millis(), u64::MAX);
    }

    #[test]
    fn duration_since_a_later_instant_is_zero() {
        let a = Instant::from_millis(10);
        let b = Instant::from_millis(30);
        assert_eq!(b.saturating_duration_since(a), Duration::from_millis(20));
        assert_eq!(a.saturating_duration_since(b), Duration::ZERO);
    }
}
