//! Websocket client framing (RFC 6455), sans IO and heap-free: the upgrade
//! request and the check of its answer, parsing of received frame headers
//! against the receive buffer's capacity, and sealing of masked frames in
//! place.
//!
//! The parser is the part that sees untrusted bytes first; it is covered by
//! property tests and a fuzz target (`crates/device/fuzz`).

use ferrolink_proto::ws::{self as frame, Role};
pub use ferrolink_proto::ws::{MAX_HEADER, Opcode};

/// A complete frame at the start of the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The kind of frame.
    pub opcode: Opcode,
    /// Bytes of header before the payload.
    pub header_len: usize,
    /// Bytes of payload.
    pub payload_len: usize,
}

impl FrameHeader {
    /// Header plus payload.
    pub fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Why received bytes are not an acceptable frame. Each is fatal to the
/// connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Reserved bits are set though no extension was negotiated.
    #[error("the server set reserved frame bits; no websocket extension was negotiated")]
    Reserved,
    /// An opcode RFC 6455 does not define.
    #[error("the server sent a frame with unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// Servers must not mask frames.
    #[error("the server sent a masked frame, which servers must not do")]
    Masked,
    /// A fragmented message (or a stray continuation frame).
    #[error(
        "the server sent a fragmented message; uplink servers must send each message in one frame"
    )]
    Fragmented,
    /// A control frame longer than 125 bytes.
    #[error("the server sent a control frame of more than 125 bytes")]
    LongControl,
    /// The frame can never fit the receive buffer.
    #[error(
        "a frame of {len} bytes does not fit the {capacity}-byte receive buffer; keep messages to the device smaller or give it a larger buffer"
    )]
    TooLarge {
        /// Header plus payload announced.
        len: u64,
        /// The receive buffer's size.
        capacity: usize,
    },
}

/// Parses the frame header at the start of `buf` (with
/// `ferrolink_proto::ws`, as a client), and refuses fragments.
///
/// Returns `Ok(None)` while the header or payload is still incomplete. A
/// frame that could never fit a buffer of `capacity` bytes is an error as
/// soon as its length is known. Never panics, whatever `buf` holds.
pub fn parse_frame(buf: &[u8], capacity: usize) -> Result<Option<FrameHeader>, FrameError> {
    let header = match frame::parse_header(buf, Role::Client, capacity) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Err(match e {
                frame::FrameError::Reserved => FrameError::Reserved,
                frame::FrameError::UnknownOpcode(op) => FrameError::UnknownOpcode(op),
                frame::FrameError::Masking => FrameError::Masked,
                frame::FrameError::BadControl if buf[0] & 0x80 == 0 => FrameError::Fragmented,
                frame::FrameError::TooLarge { len, .. } => {
                    let header_len = match buf[1] & 0x7f {
                        126 => 4,
                        127 => 10,
                        _ => 2,
                    };
                    FrameError::TooLarge {
                        len: len.saturating_add(header_len),
                        capacity,
                    }
                }
                _ => FrameError::LongControl,
            });
        }
    };
    if !header.fin || header.opcode == Opcode::Continuation {
        return Err(FrameError::Fragmented);
    }
    let total = header.total_len();
    if total > capacity {
        return Err(FrameError::TooLarge {
            len: total as u64,
            capacity,
        });
    }
    Ok((buf.len() >= total).then_some(FrameHeader {
        opcode: header.opcode,
        header_len: header.header_len,
        payload_len: header.payload_len,
    }))
}

/// Seals the payload already written at `buf[MAX_HEADER..MAX_HEADER + len]`
/// into one masked, final frame: writes the header just before it and masks
/// the payload in place. Returns where the frame starts in `buf` (it ends at
/// `MAX_HEADER + len`).
pub fn seal_frame(buf: &mut [u8], opcode: Opcode, len: usize, mask: [u8; 4]) -> Option<usize> {
    let payload = buf.get_mut(MAX_HEADER..MAX_HEADER.checked_add(len)?)?;
    frame::apply_mask(payload, mask, 0);
    let mut header = [0u8; MAX_HEADER];
    let n = frame::write_header(&mut header, true, opcode, len, Some(mask));
    let start = MAX_HEADER - n;
    buf[start..MAX_HEADER].copy_from_slice(&header[..n]);
    Some(start)
}

/// The `Sec-WebSocket-Key` for a 16-byte random nonce (24 base64 characters).
pub fn client_key(nonce: [u8; 16]) -> [u8; 24] {
    let mut out = [0u8; 24];
    frame::base64(&nonce, &mut out);
    out
}

/// The `Sec-WebSocket-Accept` the server must answer `key` with.
pub fn expected_accept(key: &[u8; 24]) -> [u8; 28] {
    frame::accept_key(key)
}

/// Why the upgrade failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The answer's headers do not fit the receive buffer.
    #[error("the server's upgrade answer does not fit the receive buffer")]
    TooLong,
    /// Not `101 Switching Protocols`.
    #[error("the server did not switch to websocket (expected HTTP/1.1 101); check the URL path")]
    NotSwitching,
    /// `Sec-WebSocket-Accept` missing or wrong.
    #[error("the server's Sec-WebSocket-Accept does not match our key")]
    BadAccept,
    /// The request does not fit the transmit buffer.
    #[error("the upgrade request does not fit the transmit buffer")]
    RequestTooLong,
}

/// Writes the upgrade request for `host:port` and `path` into `out`,
/// returning its length. Headers as the official Pico W library sends them.
pub fn write_request(
    out: &mut [u8],
    host: &str,
    port: u16,
    path: &str,
    key: &[u8; 24],
) -> Result<usize, HandshakeError> {
    use core::fmt::Write as _;
    let mut w = crate::json::Writer::new(out);
    let key = core::str::from_utf8(key).unwrap_or("");
    write!(
        w,
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: http://localhost\r\n\r\n"
    )
    .map_err(|_| HandshakeError::RequestTooLong)?;
    Ok(w.len())
}

/// Checks the server's answer to the upgrade. `Ok(None)`: the headers are
/// not complete yet; `Ok(Some(n))`: the first `n` bytes were the answer and
/// what follows is websocket frames.
pub fn check_response(
    buf: &[u8],
    capacity: usize,
    key: &[u8; 24],
) -> Result<Option<usize>, HandshakeError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= capacity {
            Err(HandshakeError::TooLong)
        } else {
            Ok(None)
        };
    };
    let head = &buf[..end];
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(HandshakeError::NotSwitching);
    }
    let expected = expected_accept(key);
    let accepted = head.split(|&b| b == b'\n').any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        let (name, value) = line.split_at(colon);
        name.eq_ignore_ascii_case(b"sec-websocket-accept") && value[1..].trim_ascii() == expected
    });
    if !accepted {
        return Err(HandshakeError::BadAccept);
    }
    Ok(Some(end + 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matches_rfc_6455_example() {
        // RFC 6455 section 1.3.
        let key: [u8; 24] = *b"dGhlIHNhbXBsZSBub25jZQ==";
        assert_eq!(&expected_accept(&key), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(&client_key(*b"the sample nonce"), &key);
    }

    #[test]
    fn headers_are_parsed_incrementally() {
        // FIN + text, unmasked, 5 bytes "hello".
        let frame = [0x81, 5, b'h', b'e', b'l', b'l', b'o'];
        for cut in 0..frame.len() {
            assert_eq!(parse_frame(&frame[..cut], 64), Ok(None));
        }
        let h = parse_frame(&frame, 64).unwrap().unwrap();
        assert_eq!(
            (h.opcode, h.header_len, h.payload_len),
            (Opcode::Text, 2, 5)
        );
        // 16-bit length: 300 bytes.
        assert_eq!(
            parse_frame(&[0x82, 126, 1, 44], 1024),
            Ok(None),
            "waits for the payload"
        );
        assert_eq!(
            parse_frame(&[0x82, 126, 1, 44], 100),
            Err(FrameError::TooLarge {
                len: 304,
                capacity: 100
            })
        );
        // 64-bit length with the top bit set never overflows.
        assert!(matches!(
            parse_frame(
                &[0x81, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                1 << 20
            ),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn protocol_violations_are_errors() {
        assert_eq!(parse_frame(&[0x01, 0], 64), Err(FrameError::Fragmented));
        assert_eq!(parse_frame(&[0x80, 0], 64), Err(FrameError::Fragmented));
        assert_eq!(parse_frame(&[0xc1, 0], 64), Err(FrameError::Reserved));
        assert_eq!(
            parse_frame(&[0x83, 0], 64),
            Err(FrameError::UnknownOpcode(3))
        );
        assert_eq!(parse_frame(&[0x81, 0x80], 64), Err(FrameError::Masked));
        assert_eq!(
            parse_frame(&[0x89, 126, 0, 200], 1024),
            Err(FrameError::LongControl)
        );
    }

    #[test]
    fn sealed_frames_are_masked_with_minimal_headers() {
        let mut buf = [0u8; MAX_HEADER + 300];
        buf[MAX_HEADER..MAX_HEADER + 2].copy_from_slice(b"hi");
        let start = seal_frame(&mut buf, Opcode::Text, 2, [1, 2, 3, 4]).unwrap();
        assert_eq!(
            &buf[start..MAX_HEADER + 2],
            &[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]
        );
        let start = seal_frame(&mut buf, Opcode::Binary, 300, [0; 4]).unwrap();
        assert_eq!(&buf[start..start + 4], &[0x82, 0xfe, 1, 44]);
        assert_eq!(seal_frame(&mut buf, Opcode::Text, 301, [0; 4]), None);
    }

    #[test]
    fn only_a_matching_101_is_accepted() {
        let key = client_key([7; 16]);
        let accept = expected_accept(&key);
        let mut ok = [0u8; 200];
        let head =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nsec-websocket-accept: ";
        ok[..head.len()].copy_from_slice(head);
        ok[head.len()..head.len() + 28].copy_from_slice(&accept);
        let tail = b"\r\n\r\n\x81\x00";
        let n = head.len() + 28;
        ok[n..n + tail.len()].copy_from_slice(tail);
        let all = &ok[..n + tail.len()];
        assert_eq!(check_response(&all[..n], 512, &key), Ok(None));
        assert_eq!(check_response(all, 512, &key), Ok(Some(n + 4)));
        assert_eq!(
            check_response(b"HTTP/1.1 404 Not Found\r\n\r\n", 512, &key),
            Err(HandshakeError::NotSwitching)
        );
        assert_eq!(
            check_response(
                b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: x\r\n\r\n",
                512,
                &key
            ),
            Err(HandshakeError::BadAccept)
        );
    }
}
