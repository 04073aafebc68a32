//! Trusted time for certificate checks, never earlier than this build:
//! signed Roughtime answers (`ferrolink_proto::roughtime`), or several SNTP
//! servers that agree (`ferrolink_proto::sntp`); both are shared with the
//! tokio client. Until a [`TrustedTime`] is set, [`crate::tls`] refuses to
//! connect.
//!
//! Prefer Roughtime: an attacker on the Wi-Fi at boot can answer SNTP for
//! every server the device asks, but cannot sign a Roughtime answer, which
//! binds the device's random nonce.

use ferrolink_proto::sntp::{self, AgreementError, Sample};
use ferrolink_proto::{BeforeFloor, Instant, check_floor, roughtime};

/// Seconds since the Unix epoch before which no clock is believed: a day
/// before ferrolink was built (the same floor as the tokio client's).
pub const BUILD_FLOOR: u64 = ferrolink_proto::BUILD_FLOOR;

/// Why the time cannot be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimeError {
    /// No trusted time was set yet.
    #[error(
        "no trusted time yet; ask Roughtime (TrustedTime::from_roughtime) or SNTP servers (from_sntp) before connecting"
    )]
    NotSet,
    /// The time given reads earlier than the floor.
    #[error(transparent)]
    BeforeFloor(BeforeFloor),
    /// The SNTP answers were too few or disagreed.
    #[error(transparent)]
    Sntp(AgreementError),
    /// The verified Roughtime answers were too few or did not overlap.
    #[error(transparent)]
    Roughtime(roughtime::AgreementError),
}

/// Wall-clock time anchored to the monotonic clock, or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedTime {
    /// Unix milliseconds at monotonic `Instant`.
    anchor: Option<(u64, Instant)>,
    floor: u64,
}

impl Default for TrustedTime {
    fn default() -> Self {
        Self::unset()
    }
}

impl TrustedTime {
    /// No time yet: every certificate check refuses.
    pub const fn unset() -> Self {
        Self {
            anchor: None,
            floor: BUILD_FLOOR,
        }
    }

    /// The time agreed by `samples` (answers taken at monotonic `at`): at
    /// least `need` of them within `bound_ms` of each other, and not before
    /// the build floor.
    pub fn from_sntp(
        samples: &mut [Sample],
        need: usize,
        bound_ms: u64,
        at: Instant,
    ) -> Result<Self, TimeError> {
        let unix_ms = sntp::agree(samples, need, bound_ms).map_err(TimeError::Sntp)?;
        Self::from_trusted_source(unix_ms, at)
    }

    /// The time where at least `need` verified Roughtime answers overlap
    /// (each checked with `ferrolink_proto::roughtime::Pending::verify`
    /// against the server's pinned key), at monotonic `now`; not before
    /// the build floor.
    pub fn from_roughtime(
        samples: &[roughtime::Sample],
        need: usize,
        now: Instant,
    ) -> Result<Self, TimeError> {
        let unix_ms = roughtime::agree(samples, need, now).map_err(TimeError::Roughtime)?;
        Self::from_trusted_source(unix_ms, now)
    }

    /// A time known by other trusted means (a battery-backed clock set
    /// securely, or a test), still held to the build floor.
    pub fn from_trusted_source(unix_ms: u64, at: Instant) -> Result<Self, TimeError> {
        let t = Self {
            anchor: Some((unix_ms, at)),
            floor: BUILD_FLOOR,
        };
        t.unix_secs(at)?;
        Ok(t)
    }

    /// Seconds since the Unix epoch at monotonic `now`.
    pub fn unix_secs(&self, now: Instant) -> Result<u64, TimeError> {
        let (unix_ms, at) = self.anchor.ok_or(TimeError::NotSet)?;
        let elapsed = now.as_millis().saturating_sub(at.as_millis());
        let secs = unix_ms.saturating_add(elapsed) / 1000;
        check_floor(secs, self.floor).map_err(TimeError::BeforeFloor)
    }
}

#[cfg(test)]
mod tests {
    use std::string::ToString as _;

    use super::*;

    #[test]
    fn time_is_refused_until_set_and_before_the_floor() {
        assert_eq!(
            TrustedTime::unset().unix_secs(Instant::ZERO),
            Err(TimeError::NotSet)
        );
        let e = TrustedTime::from_trusted_source(978_307_200_000, Instant::ZERO).unwrap_err();
        assert!(e.to_string().contains("2001-01-01"), "{e}");
        let now = (BUILD_FLOOR + 86_400) * 1000;
        let t = TrustedTime::from_trusted_source(now, Instant::from_millis(5_000)).unwrap();
        assert_eq!(
            t.unix_secs(Instant::from_millis(65_000)),
            Ok(BUILD_FLOOR + 86_400 + 60)
        );
    }

    #[test]
    fn sntp_answers_must_agree() {
        let s = |ms| Sample {
            unix_ms: ms,
            round_trip_ms: 10,
        };
        let now = (BUILD_FLOOR + 10) * 1000;
        assert!(
            TrustedTime::from_sntp(&mut [s(now), s(now + 500)], 2, 2_000, Instant::ZERO).is_ok()
        );
        assert!(matches!(
            TrustedTime::from_sntp(&mut [s(now), s(now + 3_600_000)], 2, 2_000, Instant::ZERO),
            Err(TimeError::Sntp(AgreementError::Disagree { .. }))
        ));
        assert!(matches!(
            TrustedTime::from_sntp(&mut [s(now)], 2, 2_000, Instant::ZERO),
            Err(TimeError::Sntp(AgreementError::TooFew { .. }))
        ));
    }
}
