//! Websocket framing (RFC 6455), sans IO and heap-free, for both ends: the
//! server (`ferrolink`) reads masked frames and writes plain ones; the
//! device client does the opposite.
//!
//! [`parse_header`] is the first code to see untrusted bytes: it checks the
//! reserved bits, the opcode, the masking rule of the reader's [`Role`],
//! control-frame rules and the announced length against a limit before a
//! single payload byte is buffered, so a peer cannot make the reader hold
//! more than the limit it chose (which may change, e.g. small until the
//! peer has authenticated). [`write_header`] and [`apply_mask`] build
//! frames; [`accept_key`] is the upgrade's `Sec-WebSocket-Accept`.
//!
//! Fragmented messages are reported frame by frame ([`FrameHeader::fin`],
//! [`Opcode::Continuation`]); reassembly, if wanted, is the caller's (the
//! server does it, the heap-free device refuses fragments).

use sha1::{Digest as _, Sha1};

/// Most bytes a frame header takes (2 + 8 length + 4 mask).
pub const MAX_HEADER: usize = 14;
/// Largest payload of a control frame (close, ping, pong).
pub const MAX_CONTROL: usize = 125;

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// The next part of a fragmented message.
    Continuation,
    /// A UTF-8 text message (every protocol message).
    Text,
    /// A binary message (media chunks).
    Binary,
    /// The peer is closing.
    Close,
    /// Liveness probe; answer with a pong carrying the same payload.
    Ping,
    /// Answer to a ping.
    Pong,
}

impl Opcode {
    /// The opcode's 4 bits.
    pub fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0,
            Self::Text => 1,
            Self::Binary => 2,
            Self::Close => 8,
            Self::Ping => 9,
            Self::Pong => 10,
        }
    }

    /// Whether this is a control frame.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Which end reads the frames: servers must receive masked frames, clients
/// unmasked ones (RFC 6455 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The reader is the server.
    Server,
    /// The reader is the client.
    Client,
}

/// A frame header at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The last (or only) frame of its message.
    pub fin: bool,
    /// The kind of frame.
    pub opcode: Opcode,
    /// The masking key, for frames from a client.
    pub mask: Option<[u8; 4]>,
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
/// connection; [`FrameError::close_code`] is the code to close with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Reserved bits are set though no extension was negotiated.
    #[error("a websocket frame set reserved bits; no extension was negotiated")]
    Reserved,
    /// An opcode RFC 6455 does not define.
    #[error("a websocket frame has the unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    /// A server sent a masked frame, or a client an unmasked one.
    #[error(
        "a websocket frame was masked the wrong way for its sender (clients mask, servers do not)"
    )]
    Masking,
    /// A control frame longer than 125 bytes, or fragmented.
    #[error("a websocket control frame was longer than 125 bytes or fragmented")]
    BadControl,
    /// The announced payload is over the reader's limit.
    #[error("a websocket frame of {len} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// Payload length announced.
        len: u64,
        /// The limit.
        limit: usize,
    },
}

impl FrameError {
    /// The close code RFC 6455 gives this error (1009 for too large, else
    /// 1002, protocol error).
    pub fn close_code(&self) -> u16 {
        match self {
            Self::TooLarge { .. } => 1009,
            _ => 1002,
        }
    }
}

/// Parses the frame header at the start of `buf`, read by `role`, whose
/// payload may be at most `max_payload` bytes.
///
/// Returns `Ok(None)` while the header is incomplete (the payload may still
/// be arriving when it returns a header). Never panics, whatever `buf`
/// holds.
pub fn parse_header(
    buf: &[u8],
    role: Role,
    max_payload: usize,
) -> Result<Option<FrameHeader>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = match b0 & 0x0f {
        0 => Opcode::Continuation,
        1 => Opcode::Text,
        2 => Opcode::Binary,
        8 => Opcode::Close,
        9 => Opcode::Ping,
        10 => Opcode::Pong,
        other => return Err(FrameError::UnknownOpcode(other)),
    };
    let masked = b1 & 0x80 != 0;
    if masked != (role == Role::Server) {
        return Err(FrameError::Masking);
    }
    let (mut header_len, len) = match b1 & 0x7f {
        126 => {
            let Some(ext) = buf.get(2..4) else {
                return Ok(None);
            };
            (4, u64::from(u16::from_be_bytes([ext[0], ext[1]])))
        }
        127 => {
            let Some(ext) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut b = [0u8; 8];
            b.copy_from_slice(ext);
            (10, u64::from_be_bytes(b))
        }
        n => (2, u64::from(n)),
    };
    if opcode.is_control() && (len > MAX_CONTROL as u64 || !fin) {
        return Err(FrameError::BadControl);
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooLarge {
            len,
            limit: max_payload,
        });
    }
    let mask = if masked {
        let Some(key) = buf.get(header_len..header_len + 4) else {
            return Ok(None);
        };
        header_len += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    // `len <= max_payload`, a usize, so the conversion is exact.
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask,
        header_len,
        payload_len: len as usize,
    }))
}

/// Masks (or unmasks) `payload` in place; `offset` is how many payload
/// bytes came before it in the same frame.
pub fn apply_mask(payload: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut key = mask;
    key.rotate_left(offset % 4);
    let word = u32::from_ne_bytes(key);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i];
    }
}

/// Writes the header of a frame with `len` payload bytes into `out` and
/// returns its length. With `mask` (clients) the payload must be masked
/// with it.
pub fn write_header(
    out: &mut [u8; MAX_HEADER],
    fin: bool,
    opcode: Opcode,
    len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = (u8::from(fin) << 7) | opcode.bits();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    n
}

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Standard base64 of `input` into `out` (which must hold `4 * ceil(n/3)`
/// bytes); returns the length written.
pub fn base64(input: &[u8], out: &mut [u8]) -> usize {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut n = 0;
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            out[n + k] = if k <= chunk.len() {
                T[((v >> (18 - 6 * k)) & 63) as usize]
            } else {
                b'='
            };
        }
        n += 4;
    }
    n
}

/// The `Sec-WebSocket-Accept` answering the `Sec-WebSocket-Key` `key`.
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID);
    let digest = h.finalize();
    let mut out = [0u8; 28];
    base64(&digest, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matches_rfc_6455_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn masked_client_frames_parse_and_unmask() {
        // RFC 6455 section 5.7: a masked "Hello".
        let mut frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        for cut in 0..6 {
            assert_eq!(parse_header(&frame[..cut], Role::Server, 64), Ok(None));
        }
        let h = parse_header(&frame, Role::Server, 64).unwrap().unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.header_len, h.payload_len),
            (true, Opcode::Text, 6, 5)
        );
        let mask = h.mask.unwrap();
        apply_mask(&mut frame[6..], mask, 0);
        assert_eq!(&frame[6..], b"Hello");
        // Unmasking in two pieces gives the same bytes.
        let mut again = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut again[..3], mask, 0);
        apply_mask(&mut again[3..], mask, 3);
        assert_eq!(&again, b"Hello");
        // The same frame unmasked is refused by a server, accepted by a client.
        assert_eq!(
            parse_header(&[0x81, 5], Role::Server, 64),
            Err(FrameError::Masking)
        );
        assert!(
            parse_header(&[0x81, 5], Role::Client, 64)
                .unwrap()
                .is_some()
        );
        assert_eq!(
            parse_header(&[0x81, 0x85], Role::Client, 64),
            Err(FrameError::Masking)
        );
    }

    #[test]
    fn lengths_are_checked_before_any_payload_arrives() {
        assert_eq!(
            parse_header(&[0x82, 126 | 0x80, 1, 44], Role::Server, 100),
            Err(FrameError::TooLarge {
                len: 300,
                limit: 100
            })
        );
        assert!(matches!(
            parse_header(
                &[0x81, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                Role::Server,
                1 << 20
            ),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(FrameError::TooLarge { len: 1, limit: 0 }.close_code(), 1009);
    }

    #[test]
    fn protocol_violations_are_errors() {
        assert_eq!(
            parse_header(&[0xc1, 0x80], Role::Server, 64),
            Err(FrameError::Reserved)
        );
        assert_eq!(
            parse_header(&[0x83, 0x80], Role::Server, 64),
            Err(FrameError::UnknownOpcode(3))
        );
        assert_eq!(
            parse_header(&[0x89, 126 | 0x80, 0, 200], Role::Server, 1024),
            Err(FrameError::BadControl)
        );
        assert_eq!(
            parse_header(&[0x09, 0x80], Role::Server, 1024),
            Err(FrameError::BadControl),
            "fragmented ping"
        );
        let h = parse_header(&[0x01, 0x80, 0, 0, 0, 0], Role::Server, 64)
            .unwrap()
            .unwrap();
        assert!(!h.fin);
        let h = parse_header(&[0x80, 0x80, 0, 0, 0, 0], Role::Server, 64)
            .unwrap()
            .unwrap();
        assert_eq!(h.opcode, Opcode::Continuation);
        assert_eq!(FrameError::Reserved.close_code(), 1002);
    }

    #[test]
    fn headers_are_minimal_and_round_trip() {
        let mut out = [0u8; MAX_HEADER];
        for (len, header_len) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let n = write_header(&mut out, true, Opcode::Text, len, None);
            assert_eq!(n, header_len);
            let h = parse_header(&out[..n], Role::Client, 1 << 20)
                .unwrap()
                .unwrap();
            assert_eq!(
                (h.fin, h.opcode, h.payload_len, h.mask),
                (true, Opcode::Text, len, None)
            );
        }
        let n = write_header(&mut out, false, Opcode::Binary, 300, Some([1, 2, 3, 4]));
        assert_eq!(&out[..n], &[0x02, 0xfe, 1, 44, 1, 2, 3, 4]);
        let h = parse_header(&out[..n], Role::Server, 1024)
            .unwrap()
            .unwrap();
        assert_eq!(h.mask, Some([1, 2, 3, 4]));
    }
}
