//! Simple Network Time Protocol (RFC 4330), sans IO: build a request, check
//! a response, and decide whether several servers agree on the time.
//!
//! A device without a battery-backed clock learns the time here before it
//! checks certificate expiry. One server can lie (or be spoofed on the local
//! network), so the caller asks several and [`agree`] accepts a time only
//! when every answer falls within a bound of the others.

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// Size of an SNTP packet without extensions.
pub const PACKET_LEN: usize = 48;

/// Why a response was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SntpError {
    /// Shorter than an SNTP packet.
    #[error("response of {0} bytes is shorter than an SNTP packet (48)")]
    Short(usize),
    /// Not a server-mode answer.
    #[error("response is not from a server (mode {0})")]
    NotServer(u8),
    /// The server says it is not synchronised (leap 3) or sent a kiss-of-death (stratum 0).
    #[error("server is not synchronised (leap {leap}, stratum {stratum})")]
    Unsynchronised {
        /// Leap indicator.
        leap: u8,
        /// Stratum.
        stratum: u8,
    },
    /// The answer does not echo our request (spoofed or stale).
    #[error("response does not answer our request (origin timestamp mismatch)")]
    NotOurs,
    /// The server's transmit time is zero.
    #[error("response carries no time")]
    NoTime,
}

/// Why the answers were not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AgreementError {
    /// Fewer answers than required.
    #[error("{got} time server(s) answered; {need} must agree")]
    TooFew {
        /// Answers received.
        got: usize,
        /// Answers required.
        need: usize,
    },
    /// The answers differ by more than the bound.
    #[error("time servers disagree by {spread_ms} ms (allowed {bound_ms} ms)")]
    Disagree {
        /// Largest difference between two answers.
        spread_ms: u64,
        /// The bound.
        bound_ms: u64,
    },
}

/// A request packet. `nonce` goes in the transmit timestamp field and must
/// come back as the origin timestamp; use a random value so off-path
/// attackers cannot forge answers.
pub fn request(nonce: u64) -> [u8; PACKET_LEN] {
    let mut p = [0u8; PACKET_LEN];
    p[0] = (4 << 3) | 3; // leap 0, version 4, mode 3 (client)
    p[40..48].copy_from_slice(&nonce.to_be_bytes());
    p
}

/// One server's answer, as an offset from the local clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The server's time at the midpoint of the exchange, ms since the Unix epoch.
    pub unix_ms: u64,
    /// Round-trip time of the exchange, ms.
    pub round_trip_ms: u64,
}

/// Checks a response to the request made with `nonce`. `sent_ms` and
/// `received_ms` are local monotonic milliseconds around the exchange; the
/// result is corrected to the moment `received_ms`.
pub fn parse(buf: &[u8], nonce: u64, sent_ms: u64, received_ms: u64) -> Result<Sample, SntpError> {
    if buf.len() < PACKET_LEN {
        return Err(SntpError::Short(buf.len()));
    }
    let leap = buf[0] >> 6;
    let mode = buf[0] & 7;
    let stratum = buf[1];
    if mode != 4 {
        return Err(SntpError::NotServer(mode));
    }
    if leap == 3 || stratum == 0 || stratum > 15 {
        return Err(SntpError::Unsynchronised { leap, stratum });
    }
    let origin = u64::from_be_bytes(buf[24..32].try_into().unwrap_or_default());
    if origin != nonce {
        return Err(SntpError::NotOurs);
    }
    let secs = u64::from(u32::from_be_bytes(
        buf[40..44].try_into().unwrap_or_default(),
    ));
    let frac = u64::from(u32::from_be_bytes(
        buf[44..48].try_into().unwrap_or_default(),
    ));
    if secs == 0 {
        return Err(SntpError::NoTime);
    }
    // NTP era 0 ends in 2036; a seconds field below 1970 then means era 1.
    let secs = if secs < NTP_UNIX_OFFSET {
        secs + (1 << 32)
    } else {
        secs
    };
    let server_ms = (secs - NTP_UNIX_OFFSET) * 1000 + ((frac * 1000) >> 32);
    let round_trip_ms = received_ms.saturating_sub(sent_ms);
    Ok(Sample {
        // The server stamped its answer about half a round trip ago.
        unix_ms: server_ms + round_trip_ms / 2,
        round_trip_ms,
    })
}

/// Accepts a time only if at least `need` samples (taken at the same local
/// moment) lie within `bound_ms` of each other; returns their median.
pub fn agree(samples: &mut [Sample], need: usize, bound_ms: u64) -> Result<u64, AgreementError> {
    if samples.len() < need.max(1) {
        return Err(AgreementError::TooFew {
            got: samples.len(),
            need: need.max(1),
        });
    }
    samples.sort_unstable_by_key(|s| s.unix_ms);
    let spread_ms = samples[samples.len() - 1].unix_ms - samples[0].unix_ms;
    if spread_ms > bound_ms {
        return Err(AgreementError::Disagree {
            spread_ms,
            bound_ms,
        });
    }
    Ok(samples[samples.len() / 2].unix_ms)
}

/// Builds a server response (for tests and simulators): answers `request`
/// with `unix_ms` as the time.
pub fn response(request: &[u8; PACKET_LEN], unix_ms: u64, stratum: u8) -> [u8; PACKET_LEN] {
    let mut p = [0u8; PACKET_LEN];
    p[0] = (4 << 3) | 4; // leap 0, version 4, mode 4 (server)
    p[1] = stratum;
    p[24..32].copy_from_slice(&request[40..48]);
    let secs = (unix_ms / 1000 + NTP_UNIX_OFFSET) as u32;
    let frac = (((unix_ms % 1000) << 32) / 1000) as u32;
    for field in [16, 32, 40] {
        p[field..field + 4].copy_from_slice(&secs.to_be_bytes());
        p[field + 4..field + 8].copy_from_slice(&frac.to_be_bytes());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_795_000_000_000; // 2026-11-18

    #[test]
    fn a_valid_answer_is_corrected_by_half_the_round_trip() {
        let req = request(0xfeed);
        let resp = response(&req, NOW, 2);
        let s = parse(&resp, 0xfeed, 1_000, 1_040).unwrap();
        assert_eq!(s.round_trip_ms, 40);
        assert_eq!(s.unix_ms, NOW + 20);
    }

    #[test]
    fn spoofed_short_and_unsynchronised_answers_are_refused() {
        let req = request(1);
        let resp = response(&req, NOW, 2);
        assert_eq!(parse(&resp, 2, 0, 1), Err(SntpError::NotOurs));
        assert_eq!(parse(&resp[..40], 1, 0, 1), Err(SntpError::Short(40)));
        let mut kod = resp;
        kod[1] = 0;
        assert!(matches!(
            parse(&kod, 1, 0, 1),
            Err(SntpError::Unsynchronised { .. })
        ));
        let mut client = resp;
        client[0] = (4 << 3) | 3;
        assert_eq!(parse(&client, 1, 0, 1), Err(SntpError::NotServer(3)));
    }

    #[test]
    fn agreement_needs_enough_close_answers() {
        let s = |ms| Sample {
            unix_ms: ms,
            round_trip_ms: 1,
        };
        assert_eq!(
            agree(&mut [s(NOW), s(NOW + 300), s(NOW - 200)], 3, 1_000),
            Ok(NOW)
        );
        assert_eq!(
            agree(&mut [s(NOW), s(NOW + 3_600_000)], 2, 1_000),
            Err(AgreementError::Disagree {
                spread_ms: 3_600_000,
                bound_ms: 1_000
            })
        );
        assert_eq!(
            agree(&mut [s(NOW)], 2, 1_000),
            Err(AgreementError::TooFew { got: 1, need: 2 })
        );
    }
}
