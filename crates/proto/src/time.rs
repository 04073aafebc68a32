//! Time as an input: the protocol core never reads a clock.

/// Seconds since the Unix epoch before which no clock is believed: a day
/// before this crate was built (`SOURCE_DATE_EPOCH` when set). Clients
/// refuse to check certificate validity against an earlier clock.
pub const BUILD_FLOOR: u64 = parse_floor(env!("FERROLINK_BUILD_FLOOR"));

const fn parse_floor(s: &str) -> u64 {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut n = 0u64;
    while i < bytes.len() {
        n = n * 10 + (bytes[i] - b'0') as u64;
        i += 1;
    }
    n
}

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

/// The UTC calendar date `(year, month, day)` of `secs` seconds since the
/// Unix epoch (H. Hinnant's civil-from-days), for messages that name a date.
pub fn civil_date(secs: u64) -> (i64, u32, u32) {
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A day, shown as `YYYY-MM-DD` (UTC), for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcDate(pub u64);

impl core::fmt::Display for UtcDate {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (y, m, d) = civil_date(self.0);
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

/// A clock reading earlier than the build floor: it was never set, and
/// certificate validity cannot be judged by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the clock reads {} ({now}), earlier than this build ({}); set it from a trusted source (Roughtime, NTP) before connecting",
    UtcDate(*now),
    UtcDate(*floor)
)]
pub struct BeforeFloor {
    /// What the clock said (Unix seconds).
    pub now: u64,
    /// The floor (Unix seconds).
    pub floor: u64,
}

/// `now` (Unix seconds), if it is not earlier than `floor` (usually
/// [`BUILD_FLOOR`]): the one check every client makes of any clock.
pub fn check_floor(now: u64, floor: u64) -> Result<u64, BeforeFloor> {
    if now < floor {
        Err(BeforeFloor { now, floor })
    } else {
        Ok(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_before_the_floor_are_refused_with_dates() {
        let e = check_floor(978_307_200, 1_800_000_000).unwrap_err();
        let mut text = [0u8; 200];
        let mut w = Cursor(&mut text, 0);
        core::fmt::Write::write_fmt(&mut w, format_args!("{e}")).unwrap();
        let text = core::str::from_utf8(&w.0[..w.1]).unwrap();
        assert!(
            text.starts_with(
                "the clock reads 2001-01-01 (978307200), earlier than this build (2027-01-15)"
            ),
            "{text}"
        );
        assert_eq!(check_floor(5, 5), Ok(5));
    }

    struct Cursor<'a>(&'a mut [u8], usize);

    impl core::fmt::Write for Cursor<'_> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let dst = self
                .0
                .get_mut(self.1..self.1 + s.len())
                .ok_or(core::fmt::Error)?;
            dst.copy_from_slice(s.as_bytes());
            self.1 += s.len();
            Ok(())
        }
    }

    #[test]
    fn civil_dates_are_utc() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(951_782_400), (2000, 2, 29));
        assert_eq!(civil_date(1_697_810_870), (2023, 10, 20));
    }

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
