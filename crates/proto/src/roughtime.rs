//! Roughtime (RFC 10049, and drafts 12–19 of draft-ietf-ntp-roughtime),
//! sans IO and heap-free: build a request, verify a response, and decide
//! whether several servers agree.
//!
//! Unlike SNTP, every answer is signed: the server's long-term Ed25519 key
//! (pinned by the client, like a CA) signs a short-lived delegated key,
//! which signs the midpoint and radius together with a Merkle root that
//! covers our exact request — so the nonce we chose is bound into the
//! signature, and an attacker on the network can neither forge a time nor
//! replay an old one. What remains is a server that lies with its own key:
//! ask several, and [`agree`] wants their intervals to overlap.
//!
//! The request offers version 1 (RFC 10049) and `0x8000000c` (drafts
//! 12–19, still what several public servers speak); the response's
//! signature context strings follow the version it chose. RFC 10049's own
//! Appendix B signs version-1 responses with the drafts' spelling
//! (`RoughTime`), so for version 1 both spellings are accepted: they are
//! Roughtime-only contexts either way.
//!
//! ```
//! use ferrolink_proto::roughtime;
//! let server_key = [7u8; 32]; // the server's long-term public key, pinned
//! let mut packet = [0u8; roughtime::REQUEST_LEN];
//! let pending = roughtime::request(&[1u8; 32], &server_key, &mut packet);
//! // send `packet` over UDP, receive `response`, then:
//! # let response = [0u8; 8];
//! assert!(pending.verify(&response, &server_key).is_err());
//! ```

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest as _, Sha512};

use crate::Instant;

/// Bytes of a request packet (the 12-byte frame and a 1024-byte message, as
/// RFC 10049 section 5.1 asks).
pub const REQUEST_LEN: usize = 1036;
/// Roughtime version 1 (RFC 10049).
pub const VERSION_1: u32 = 1;
/// The version drafts 12 to 19 put on the wire.
pub const VERSION_DRAFT: u32 = 0x8000_000c;
/// Largest response accepted: a reply must not be larger than the request.
pub const MAX_RESPONSE_LEN: usize = REQUEST_LEN;
/// The IANA port (some public servers still listen on 2002).
pub const PORT: u16 = 5319;

const MAGIC: &[u8; 8] = b"ROUGHTIM";
/// Most tags accepted in one message.
const MAX_TAGS: usize = 32;
/// Most Merkle path elements (RFC 10049 section 5.2.4).
const MAX_PATH: usize = 32;
/// Most bytes of a signed value (SREP or DELE) with its context.
const MAX_SIGNED: usize = 512;

const fn tag(name: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*name)
}

const SIG: u32 = tag(b"SIG\0");
const VER: u32 = tag(b"VER\0");
const SRV: u32 = tag(b"SRV\0");
const NONC: u32 = tag(b"NONC");
const DELE: u32 = tag(b"DELE");
const TYPE: u32 = tag(b"TYPE");
const PATH: u32 = tag(b"PATH");
const RADI: u32 = tag(b"RADI");
const PUBK: u32 = tag(b"PUBK");
const MIDP: u32 = tag(b"MIDP");
const SREP: u32 = tag(b"SREP");
const MINT: u32 = tag(b"MINT");
const ROOT: u32 = tag(b"ROOT");
const CERT: u32 = tag(b"CERT");
const MAXT: u32 = tag(b"MAXT");
const INDX: u32 = tag(b"INDX");
const ZZZZ: u32 = tag(b"ZZZZ");

/// Delegation and response signature contexts (the trailing NUL included).
const V1_CONTEXTS: [(&[u8], &[u8]); 2] = [
    (
        b"Roughtime v1 delegation signature\0",
        b"Roughtime v1 response signature\0",
    ),
    (
        b"RoughTime v1 delegation signature\0",
        b"RoughTime v1 response signature\0",
    ),
];
const DRAFT_CONTEXTS: [(&[u8], &[u8]); 1] = [(
    b"RoughTime v1 delegation signature\0",
    b"RoughTime v1 response signature\0",
)];

/// Why a response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoughtimeError {
    /// Not a well-formed Roughtime packet (which part, in the text).
    #[error("malformed Roughtime response: {0}")]
    Malformed(&'static str),
    /// Not a response (TYPE is not 1).
    #[error("the packet is not a Roughtime response")]
    NotAResponse,
    /// The response does not echo our nonce: not an answer to our request.
    #[error("the response answers another request (nonce mismatch)")]
    WrongNonce,
    /// The server chose a version we did not offer.
    #[error("the server answered with version {0:#x}, which was not offered")]
    VersionNotOffered(u32),
    /// The delegation (CERT) is not signed by the pinned long-term key.
    #[error("the delegation is not signed by the server's pinned key")]
    BadDelegationSignature,
    /// The signed response (SREP) is not signed by the delegated key.
    #[error("the signed time is not signed by the server's delegated key")]
    BadResponseSignature,
    /// The midpoint lies outside the delegated key's validity.
    #[error("the midpoint {midpoint} lies outside the delegation's validity ({min}..={max})")]
    OutsideDelegation {
        /// MIDP (Unix seconds).
        midpoint: u64,
        /// MINT.
        min: u64,
        /// MAXT.
        max: u64,
    },
    /// Our request is not in the signed Merkle tree.
    #[error("the signed Merkle root does not cover our request")]
    NotInTree,
    /// A radius of zero (servers must not send it).
    #[error("the server claims a radius of 0 s")]
    ZeroRadius,
}

/// A verified answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The server's time when it answered, Unix seconds.
    pub midpoint: u64,
    /// The server's uncertainty, seconds: the true time was within
    /// `midpoint ± radius`.
    pub radius: u32,
    /// The version the server answered with.
    pub version: u32,
}

/// A request sent, remembered for verifying its response: our nonce and
/// the Merkle leaf of the exact packet (so the packet need not be kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    nonce: [u8; 32],
    leaf: [u8; 32],
}

/// SHA-512 truncated to 32 bytes over the concatenation of `parts`.
fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha512::new();
    for part in parts {
        h.update(part);
    }
    let full = h.finalize();
    let mut out = [0u8; 32];
    out.copy_from_slice(&full[..32]);
    out
}

/// `SRV`: the hash of the long-term key the request is for.
fn server_id(long_term_key: &[u8; 32]) -> [u8; 32] {
    hash(&[&[0xff], long_term_key])
}

/// Writes a request for the server with `long_term_key` into `out`, using
/// `nonce` (32 random bytes, fresh for every request), and returns what is
/// needed to verify the answer.
pub fn request(nonce: &[u8; 32], long_term_key: &[u8; 32], out: &mut [u8; REQUEST_LEN]) -> Pending {
    out.fill(0);
    out[..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&((REQUEST_LEN - 12) as u32).to_le_bytes());
    let msg = &mut out[12..];
    // Five tags (VER, SRV, NONC, TYPE, ZZZZ), sorted by their value.
    let tags = [VER, SRV, NONC, TYPE, ZZZZ];
    let offsets = [8u32, 40, 72, 76];
    msg[..4].copy_from_slice(&(tags.len() as u32).to_le_bytes());
    for (i, off) in offsets.iter().enumerate() {
        msg[4 + 4 * i..8 + 4 * i].copy_from_slice(&off.to_le_bytes());
    }
    for (i, t) in tags.iter().enumerate() {
        msg[20 + 4 * i..24 + 4 * i].copy_from_slice(&t.to_le_bytes());
    }
    let values = &mut msg[40..];
    values[..4].copy_from_slice(&VERSION_1.to_le_bytes());
    values[4..8].copy_from_slice(&VERSION_DRAFT.to_le_bytes());
    values[8..40].copy_from_slice(&server_id(long_term_key));
    values[40..72].copy_from_slice(nonce);
    // TYPE 0 (request), then ZZZZ: zeros to the end, already there.
    Pending {
        nonce: *nonce,
        leaf: hash(&[&[0x00], out]),
    }
}

/// A parsed tag-value message (RFC 10049 section 4), borrowing its bytes.
#[derive(Debug, Clone, Copy)]
struct Message<'a> {
    count: usize,
    header: &'a [u8],
    values: &'a [u8],
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

impl<'a> Message<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, RoughtimeError> {
        let bad = RoughtimeError::Malformed;
        if bytes.len() < 4 || !bytes.len().is_multiple_of(4) {
            return Err(bad("a message's length is not a multiple of 4"));
        }
        let count = u32_at(bytes, 0) as usize;
        if count == 0 || count > MAX_TAGS {
            return Err(bad("a message has no tags or too many"));
        }
        let header_len = 8 * count;
        if bytes.len() < header_len {
            return Err(bad("a message is shorter than its header"));
        }
        let (header, values) = bytes.split_at(header_len);
        let msg = Self {
            count,
            header,
            values,
        };
        let mut previous_end = 0;
        for i in 0..count {
            let (start, end) = msg.bounds(i);
            if !start.is_multiple_of(4) || start < previous_end || end < start || end > values.len()
            {
                return Err(bad("a message's offsets are out of order or out of bounds"));
            }
            previous_end = start;
            if i > 0 && msg.tag(i) <= msg.tag(i - 1) {
                return Err(bad("a message's tags are not in ascending order"));
            }
        }
        Ok(msg)
    }

    fn tag(&self, i: usize) -> u32 {
        // After the count and the count - 1 offsets.
        u32_at(self.header, 4 * (self.count + i))
    }

    /// Start and end of value `i` in `values` (unchecked offsets).
    fn bounds(&self, i: usize) -> (usize, usize) {
        let start = if i == 0 {
            0
        } else {
            u32_at(self.header, 4 * i) as usize
        };
        let end = if i + 1 == self.count {
            self.values.len()
        } else {
            u32_at(self.header, 4 * (i + 1)) as usize
        };
        (start, end)
    }

    fn get(&self, tag: u32) -> Option<&'a [u8]> {
        (0..self.count).find(|&i| self.tag(i) == tag).map(|i| {
            let (start, end) = self.bounds(i);
            &self.values[start..end]
        })
    }

    fn require(&self, tag: u32, what: &'static str) -> Result<&'a [u8], RoughtimeError> {
        self.get(tag).ok_or(RoughtimeError::Malformed(what))
    }

    fn fixed<const N: usize>(
        &self,
        tag: u32,
        what: &'static str,
    ) -> Result<[u8; N], RoughtimeError> {
        self.require(tag, what)?
            .try_into()
            .map_err(|_| RoughtimeError::Malformed(what))
    }

    fn u32(&self, tag: u32, what: &'static str) -> Result<u32, RoughtimeError> {
        self.fixed::<4>(tag, what).map(u32::from_le_bytes)
    }

    fn u64(&self, tag: u32, what: &'static str) -> Result<u64, RoughtimeError> {
        self.fixed::<8>(tag, what).map(u64::from_le_bytes)
    }
}

/// Verifies `signature` by `key` over `context ‖ value` without a heap.
fn signed_by(key: &VerifyingKey, signature: &Signature, context: &[u8], value: &[u8]) -> bool {
    let mut buf = [0u8; MAX_SIGNED];
    let len = context.len() + value.len();
    if len > MAX_SIGNED {
        return false;
    }
    buf[..context.len()].copy_from_slice(context);
    buf[context.len()..len].copy_from_slice(value);
    key.verify_strict(&buf[..len], signature).is_ok()
}

impl Pending {
    /// What [`request`] would have returned for `packet`, a request made
    /// elsewhere (a recorded exchange, another client's request).
    pub fn from_request(packet: &[u8]) -> Result<Self, RoughtimeError> {
        if packet.len() < 12 || &packet[..8] != MAGIC {
            return Err(RoughtimeError::Malformed("no ROUGHTIM frame"));
        }
        let msg = Message::parse(&packet[12..])?;
        Ok(Self {
            nonce: msg.fixed(NONC, "no 32-byte NONC")?,
            leaf: hash(&[&[0x00], packet]),
        })
    }

    /// Checks `response` (one datagram) against this request and the
    /// server's pinned `long_term_key`: framing, type, nonce, version, the
    /// delegation's signature and validity, the Merkle proof of our exact
    /// request, and the signature over the time.
    pub fn verify(
        &self,
        response: &[u8],
        long_term_key: &[u8; 32],
    ) -> Result<Answer, RoughtimeError> {
        let bad = RoughtimeError::Malformed;
        if response.len() < 12 || &response[..8] != MAGIC {
            return Err(bad("no ROUGHTIM frame"));
        }
        if response.len() > MAX_RESPONSE_LEN {
            return Err(bad("the response is larger than the request"));
        }
        if u32_at(response, 8) as usize != response.len() - 12 {
            return Err(bad("the frame's length does not match the packet"));
        }
        let top = Message::parse(&response[12..])?;
        if top.get(TYPE) != Some(&1u32.to_le_bytes()[..]) {
            return Err(RoughtimeError::NotAResponse);
        }
        if top.require(NONC, "no NONC")? != self.nonce {
            return Err(RoughtimeError::WrongNonce);
        }
        let srep_bytes = top.require(SREP, "no SREP")?;
        let srep = Message::parse(srep_bytes)?;
        let version = srep.u32(VER, "no single VER in SREP")?;
        let contexts: &[(&[u8], &[u8])] = match version {
            VERSION_1 => &V1_CONTEXTS,
            VERSION_DRAFT => &DRAFT_CONTEXTS,
            other => return Err(RoughtimeError::VersionNotOffered(other)),
        };
        let radius = srep.u32(RADI, "no RADI")?;
        let midpoint = srep.u64(MIDP, "no MIDP")?;
        let root: [u8; 32] = srep.fixed(ROOT, "no 32-byte ROOT")?;

        // The delegation, signed by the pinned long-term key.
        let cert = Message::parse(top.require(CERT, "no CERT")?)?;
        let cert_sig = Signature::from_bytes(&cert.fixed(SIG, "no 64-byte SIG in CERT")?);
        let dele_bytes = cert.require(DELE, "no DELE")?;
        let long_term = VerifyingKey::from_bytes(long_term_key)
            .map_err(|_| RoughtimeError::BadDelegationSignature)?;
        if !contexts
            .iter()
            .any(|(ctx, _)| signed_by(&long_term, &cert_sig, ctx, dele_bytes))
        {
            return Err(RoughtimeError::BadDelegationSignature);
        }
        let dele = Message::parse(dele_bytes)?;
        let online = VerifyingKey::from_bytes(&dele.fixed(PUBK, "no 32-byte PUBK")?)
            .map_err(|_| RoughtimeError::BadResponseSignature)?;
        let (min, max) = (dele.u64(MINT, "no MINT")?, dele.u64(MAXT, "no MAXT")?);
        if !(min..=max).contains(&midpoint) {
            return Err(RoughtimeError::OutsideDelegation { midpoint, min, max });
        }

        // Our request is a leaf of the tree whose root was signed.
        let path = top.require(PATH, "no PATH")?;
        if !path.len().is_multiple_of(32) || path.len() / 32 > MAX_PATH {
            return Err(bad("a PATH that is not whole 32-byte nodes, or too long"));
        }
        let mut index = top.u32(INDX, "no INDX")?;
        let mut node = self.leaf;
        for sibling in path.chunks_exact(32) {
            node = if index & 1 == 0 {
                hash(&[&[0x01], &node, sibling])
            } else {
                hash(&[&[0x01], sibling, &node])
            };
            index >>= 1;
        }
        if index != 0 || node != root {
            return Err(RoughtimeError::NotInTree);
        }

        // The time, signed by the delegated key.
        let sig = Signature::from_bytes(&top.fixed(SIG, "no 64-byte SIG")?);
        if !contexts
            .iter()
            .any(|(_, ctx)| signed_by(&online, &sig, ctx, srep_bytes))
        {
            return Err(RoughtimeError::BadResponseSignature);
        }
        if radius == 0 {
            return Err(RoughtimeError::ZeroRadius);
        }
        Ok(Answer {
            midpoint,
            radius,
            version,
        })
    }
}

/// A verified answer placed on the local timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Estimated Unix milliseconds at local moment `at`.
    pub unix_ms: u64,
    /// Uncertainty of that estimate, milliseconds.
    pub radius_ms: u64,
    /// When the answer arrived (the local monotonic clock).
    pub at: Instant,
}

impl Sample {
    /// Places `answer` to a request sent at `sent` and answered at
    /// `received`: the server stamped its midpoint somewhere in that round
    /// trip, to the second, within its radius.
    pub fn new(answer: &Answer, sent: Instant, received: Instant) -> Self {
        let round_trip_ms = received.as_millis().saturating_sub(sent.as_millis());
        Self {
            unix_ms: answer.midpoint.saturating_mul(1000) + round_trip_ms / 2,
            radius_ms: u64::from(answer.radius).saturating_mul(1000) + round_trip_ms / 2 + 1000,
            at: received,
        }
    }

    /// The estimate carried forward to local moment `now`.
    fn at(&self, now: Instant) -> u64 {
        self.unix_ms + now.as_millis().saturating_sub(self.at.as_millis())
    }
}

/// Why the answers were not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AgreementError {
    /// Fewer verified answers than required.
    #[error("{got} Roughtime server(s) gave a verified answer; {need} must agree")]
    TooFew {
        /// Verified answers.
        got: usize,
        /// Answers required.
        need: usize,
    },
    /// No `need` of the answers overlap (a server lies, with its own key).
    #[error(
        "Roughtime servers disagree: at most {overlapping} of {got} intervals overlap; {need} must"
    )]
    Disagree {
        /// Largest number of answers with a common point.
        overlapping: usize,
        /// Verified answers.
        got: usize,
        /// Answers required.
        need: usize,
    },
}

/// Accepts a time only where at least `need` samples overlap, and returns
/// the middle of the overlap: the Unix time in milliseconds at local
/// moment `now` (no earlier than every sample's `at`).
pub fn agree(samples: &[Sample], need: usize, now: Instant) -> Result<u64, AgreementError> {
    let need = need.max(1);
    if samples.len() < need {
        return Err(AgreementError::TooFew {
            got: samples.len(),
            need,
        });
    }
    let interval = |s: &Sample| {
        let t = s.at(now);
        (t.saturating_sub(s.radius_ms), t + s.radius_ms)
    };
    let mut best: Option<(usize, u64, u64)> = None;
    for candidate in samples {
        // The point where `candidate` starts: which intervals hold it?
        let point = interval(candidate).0;
        let (mut count, mut lo, mut hi) = (0, 0, u64::MAX);
        for s in samples {
            let (a, b) = interval(s);
            if a <= point && point <= b {
                count += 1;
                lo = lo.max(a);
                hi = hi.min(b);
            }
        }
        if best.is_none_or(|(c, _, _)| count > c) {
            best = Some((count, lo, hi));
        }
    }
    let (count, lo, hi) = best.expect("at least one sample");
    if count < need {
        return Err(AgreementError::Disagree {
            overlapping: count,
            got: samples.len(),
            need,
        });
    }
    Ok(lo + (hi - lo) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_framed_padded_and_sorted() {
        let mut packet = [0u8; REQUEST_LEN];
        let key = [9u8; 32];
        let pending = request(&[5u8; 32], &key, &mut packet);
        assert_eq!(&packet[..8], b"ROUGHTIM");
        assert_eq!(u32_at(&packet, 8), 1024);
        let msg = Message::parse(&packet[12..]).unwrap();
        assert_eq!(msg.get(NONC), Some(&[5u8; 32][..]));
        assert_eq!(msg.get(SRV), Some(&server_id(&key)[..]));
        assert_eq!(msg.get(TYPE), Some(&[0u8; 4][..]));
        assert_eq!(msg.get(VER), Some(&[1, 0, 0, 0, 0x0c, 0, 0, 0x80][..]));
        assert_eq!(msg.get(ZZZZ).map(<[u8]>::len), Some(1024 - 40 - 76));
        assert_eq!(pending.leaf, hash(&[&[0], &packet]));
    }

    #[test]
    fn malformed_messages_are_refused_without_panicking() {
        for bytes in [
            &[][..],
            &[1, 0, 0][..],
            &[0, 0, 0, 0][..],
            &[2, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0][..],
            &[
                2, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ][..],
            &[0xff, 0xff, 0xff, 0xff][..],
        ] {
            assert!(Message::parse(bytes).is_err(), "{bytes:?}");
        }
        let pending = request(&[0; 32], &[0; 32], &mut [0; REQUEST_LEN]);
        assert!(
            pending
                .verify(b"ROUGHTIM\x00\x00\x00\x00", &[0; 32])
                .is_err()
        );
    }

    #[test]
    fn agreement_wants_overlapping_intervals() {
        let s = |unix_ms, radius_ms, at| Sample {
            unix_ms,
            radius_ms,
            at: Instant::from_millis(at),
        };
        let now = Instant::from_millis(500);
        assert_eq!(agree(&[s(10_000, 1_000, 500)], 1, now), Ok(10_000));
        // Two overlap on [10_500, 11_000] (the second was taken 500 ms
        // before `now`); the third is an hour off.
        let samples = [
            s(10_000, 1_000, 500),
            s(11_000, 1_000, 0),
            s(3_610_000, 1_000, 500),
        ];
        assert_eq!(agree(&samples, 2, now), Ok(10_750));
        assert!(matches!(
            agree(&samples, 3, now),
            Err(AgreementError::Disagree { overlapping: 2, .. })
        ));
        assert!(matches!(
            agree(&samples[..1], 2, now),
            Err(AgreementError::TooFew { .. })
        ));
        let answer = Answer {
            midpoint: 100,
            radius: 3,
            version: VERSION_1,
        };
        let placed = Sample::new(&answer, Instant::from_millis(0), Instant::from_millis(200));
        assert_eq!((placed.unix_ms, placed.radius_ms), (100_100, 4_100));
    }
}
