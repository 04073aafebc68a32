//! A connection's websocket, on `ferrolink_proto::ws` framing: the stream
//! under it ([`Stream`]), the bytes read but not yet handled ([`Input`])
//! and the bytes encoded but not yet written ([`Output`]).
//!
//! Both buffers are empty — not merely cleared, freed — whenever a
//! connection is idle, so an idle uplink holds no read or write buffer.
//! [`Input`] checks each frame header against its limit before buffering
//! the payload (the limit is small until the peer has authenticated),
//! unmasks in place, reassembles fragmented messages and checks UTF-8.
//! Everything here is polled by the driver (`driver.rs`) from one task;
//! nothing blocks and nothing is awaited while a message is handled.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use ferrolink_proto::ws::{self, FrameError, MAX_HEADER, Opcode, Role};

use crate::buffers;
use crate::edge::tls_stream::ServerTls;

/// The transport under a websocket.
pub(crate) enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<ServerTls>),
    /// Anything else hyper handed over (kept working, never expected).
    Other(Box<TokioIo<hyper::upgrade::Upgraded>>),
}

impl Stream {
    /// The stream under an upgraded HTTP connection, and the bytes hyper
    /// had already read past the request.
    pub(crate) fn from_upgraded(upgraded: hyper::upgrade::Upgraded) -> (Self, Bytes) {
        let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => return (Self::Plain(parts.io.into_inner()), parts.read_buf),
            Err(u) => u,
        };
        match upgraded.downcast::<TokioIo<ServerTls>>() {
            Ok(parts) => (Self::Tls(Box::new(parts.io.into_inner())), parts.read_buf),
            Err(u) => (Self::Other(Box::new(TokioIo::new(u))), Bytes::new()),
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Other(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Other(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Other(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    /// Shuts the write side (after a close frame).
    pub(crate) async fn shutdown(&mut self) {
        use tokio::io::AsyncWriteExt as _;
        let _ = match self {
            Self::Plain(s) => s.shutdown().await,
            Self::Tls(s) => s.shutdown().await,
            Self::Other(s) => s.shutdown().await,
        };
    }
}

/// Why a websocket cannot go on.
#[derive(Debug)]
pub(crate) enum LinkError {
    /// A frame broke RFC 6455 or a limit.
    Frame(FrameError),
    /// A text message was not UTF-8.
    NotUtf8,
    /// A continuation without a message, or a message inside another.
    BadFragment,
}

impl LinkError {
    /// The close code and the text the peer is told.
    pub(crate) fn close(&self, limit: usize) -> (u16, String) {
        match self {
            Self::Frame(FrameError::TooLarge { .. }) => (
                1009,
                format!(
                    "ferrolink: a message exceeded the {limit}-byte limit; send smaller arguments or raise --max-frame-bytes"
                ),
            ),
            Self::Frame(e) => (1002, format!("ferrolink: {e}")),
            Self::NotUtf8 => (
                1007,
                "ferrolink: a text frame was not valid UTF-8; send JSON text as UTF-8".to_owned(),
            ),
            Self::BadFragment => (
                1002,
                "ferrolink: a fragmented message was interleaved with another".to_owned(),
            ),
        }
    }
}

/// A complete message.
pub(crate) enum Incoming<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong,
    /// The peer is closing (its close code, if any).
    Close(Option<u16>),
}

/// Bytes read and not yet handled, and the message being reassembled.
pub(crate) struct Input {
    buf: Vec<u8>,
    /// Bytes of `buf` already handled.
    pos: usize,
    /// A fragmented message: its opcode and payload so far.
    fragments: Option<(Opcode, Vec<u8>)>,
    /// The last fragmented message completed (returned borrowed).
    reassembled: Vec<u8>,
    /// Largest message accepted now.
    limit: usize,
}

/// Smallest read.
const READ_CHUNK: usize = buffers::CHUNK;

impl Input {
    /// An input holding `first` (bytes read with the upgrade request),
    /// accepting messages of at most `limit` bytes.
    pub(crate) fn new(first: Bytes, limit: usize) -> Self {
        Self {
            buf: first.to_vec(),
            pos: 0,
            fragments: None,
            reassembled: Vec::new(),
            limit,
        }
    }

    /// Changes the largest message accepted from now on.
    pub(crate) fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// The largest message accepted now.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Whether bytes are waiting to be handled.
    pub(crate) fn has_unhandled(&self) -> bool {
        self.pos < self.buf.len()
    }

    /// Reads what the stream has. `Ready(Ok(0))` is the end of the stream.
    pub(crate) fn poll_fill(
        &mut self,
        io: &mut Stream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.pos > 0 {
            // Keep the unhandled tail at the front.
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        // Room for the frame in progress when its size is known.
        let want = match ws::parse_header(&self.buf, Role::Server, self.limit) {
            Ok(Some(h)) => (h.total_len().saturating_sub(self.buf.len())).max(READ_CHUNK),
            _ => READ_CHUNK,
        };
        if self.buf.capacity() == 0 {
            self.buf = buffers::take(want);
        } else {
            self.buf.reserve(want);
        }
        let spare: &mut [MaybeUninit<u8>] = self.buf.spare_capacity_mut();
        let mut read = ReadBuf::uninit(spare);
        ready!(io.poll_read(cx, &mut read))?;
        let n = read.filled().len();
        // SAFETY: `poll_read` initialised the first `n` spare bytes.
        unsafe { self.buf.set_len(self.buf.len() + n) };
        Poll::Ready(Ok(n))
    }

    /// Frees the buffer once everything in it was handled (idle
    /// connections hold none).
    pub(crate) fn release(&mut self) {
        if self.pos >= self.buf.len() {
            buffers::give(std::mem::take(&mut self.buf));
            self.pos = 0;
        }
    }

    /// The next complete message, if the buffer holds one.
    pub(crate) fn next(&mut self) -> Result<Option<Incoming<'_>>, LinkError> {
        if !self.reassembled.is_empty() {
            self.reassembled = Vec::new();
        }
        loop {
            let rest = &self.buf[self.pos..];
            let Some(h) =
                ws::parse_header(rest, Role::Server, self.limit).map_err(LinkError::Frame)?
            else {
                return Ok(None);
            };
            if rest.len() < h.total_len() {
                return Ok(None);
            }
            let start = self.pos + h.header_len;
            let end = start + h.payload_len;
            self.pos = end;
            if let Some(mask) = h.mask {
                ws::apply_mask(&mut self.buf[start..end], mask, 0);
            }
            match h.opcode {
                Opcode::Text | Opcode::Binary if h.fin => {
                    if self.fragments.is_some() {
                        return Err(LinkError::BadFragment);
                    }
                    return if h.opcode == Opcode::Text {
                        let text = std::str::from_utf8(&self.buf[start..end])
                            .map_err(|_| LinkError::NotUtf8)?;
                        Ok(Some(Incoming::Text(text)))
                    } else {
                        Ok(Some(Incoming::Binary(&self.buf[start..end])))
                    };
                }
                Opcode::Text | Opcode::Binary => {
                    if self.fragments.is_some() {
                        return Err(LinkError::BadFragment);
                    }
                    self.fragments = Some((h.opcode, self.buf[start..end].to_vec()));
                }
                Opcode::Continuation => {
                    let Some((_, parts)) = self.fragments.as_mut() else {
                        return Err(LinkError::BadFragment);
                    };
                    if parts.len() + h.payload_len > self.limit {
                        return Err(LinkError::Frame(FrameError::TooLarge {
                            len: (parts.len() + h.payload_len) as u64,
                            limit: self.limit,
                        }));
                    }
                    parts.extend_from_slice(&self.buf[start..end]);
                    if h.fin {
                        let Some((opcode, parts)) = self.fragments.take() else {
                            unreachable!("checked above");
                        };
                        self.reassembled = parts;
                        return if opcode == Opcode::Text {
                            let text = std::str::from_utf8(&self.reassembled)
                                .map_err(|_| LinkError::NotUtf8)?;
                            Ok(Some(Incoming::Text(text)))
                        } else {
                            Ok(Some(Incoming::Binary(&self.reassembled)))
                        };
                    }
                }
                Opcode::Ping => return Ok(Some(Incoming::Ping(&self.buf[start..end]))),
                Opcode::Pong => return Ok(Some(Incoming::Pong)),
                Opcode::Close => {
                    let code = (end - start >= 2)
                        .then(|| u16::from_be_bytes([self.buf[start], self.buf[start + 1]]));
                    return Ok(Some(Incoming::Close(code)));
                }
            }
        }
    }
}

/// Frames encoded and not yet written.
#[derive(Default)]
pub(crate) struct Output {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    pos: usize,
}

/// Most bytes of frames kept unwritten before the driver stops reading
/// (its own answers would otherwise pile up behind a slow reader).
pub(crate) const HIGH_WATER: usize = 256 * 1024;

impl Output {
    /// Bytes waiting to be written.
    pub(crate) fn len(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn reserve(&mut self, additional: usize) {
        if self.buf.capacity() == 0 {
            self.buf = buffers::take(additional);
        } else {
            self.buf.reserve(additional);
        }
    }

    fn header(&mut self, opcode: Opcode, len: usize) {
        self.reserve(len + MAX_HEADER);
        let mut h = [0u8; MAX_HEADER];
        let n = ws::write_header(&mut h, true, opcode, len, None);
        self.buf.extend_from_slice(&h[..n]);
    }

    /// Queues a text frame.
    pub(crate) fn text(&mut self, text: &str) {
        self.header(Opcode::Text, text.len());
        self.buf.extend_from_slice(text.as_bytes());
    }

    /// Queues a text frame made of `parts` in order.
    pub(crate) fn text_parts(&mut self, parts: &[&str]) {
        let len = parts.iter().map(|p| p.len()).sum();
        self.header(Opcode::Text, len);
        for p in parts {
            self.buf.extend_from_slice(p.as_bytes());
        }
    }

    /// Queues a binary frame.
    pub(crate) fn binary(&mut self, bytes: &[u8]) {
        self.header(Opcode::Binary, bytes.len());
        self.buf.extend_from_slice(bytes);
    }

    /// Queues a pong echoing `payload`.
    pub(crate) fn pong(&mut self, payload: &[u8]) {
        self.header(Opcode::Pong, payload.len());
        self.buf.extend_from_slice(payload);
    }

    /// Queues a close frame with `code` and `reason` (cut to fit 123 bytes).
    pub(crate) fn close(&mut self, code: u16, reason: &str) {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.header(Opcode::Close, 2 + end);
        self.buf.extend_from_slice(&code.to_be_bytes());
        self.buf.extend_from_slice(&reason.as_bytes()[..end]);
    }

    /// Writes as much as the stream takes. `Ready(Ok(()))` once everything
    /// is written (the buffer is then freed); `Pending` while the peer's
    /// window is full.
    pub(crate) fn poll_flush(
        &mut self,
        io: &mut Stream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pos < self.buf.len() {
            let n = ready!(io.poll_write(cx, &self.buf[self.pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pos += n;
        }
        buffers::give(std::mem::take(&mut self.buf));
        self.pos = 0;
        io.poll_flush(cx)
    }
}
