//! The driver: one uplink session over an `embedded-io-async` transport,
//! around the sans-IO [`Connection`].
//!
//! A [`Session`] owns the transport and borrows the caller's [`Buffers`].
//! It does one thing at a time on one task: [`Session::serve_until`]
//! answers incoming calls (one after another) and keeps the heartbeat until
//! a deadline; [`Session::call`] makes one call and serves incoming ones
//! while it waits. Reconnecting is the application's loop, paced by
//! [`Backoff`] (see the crate docs).

use core::future::Future;
use core::time::Duration;

use embassy_futures::select::{Either, select};
use embedded_io_async::{Read, Write};
use ferrolink_proto::{Instant, error_type, wire};

use crate::json::{self, JsonError, Writer};
use crate::message::{self, CallIn};
use crate::protocol::{Busy, ConnError, Connection, Due, Event, ShortText, Timing};
#[cfg(feature = "tls")]
use crate::trust::{TrustStore, TrustUpdate, TrustUpdateError};
use crate::ws::{self, FrameError, HandshakeError, MAX_HEADER, Opcode};

/// Where the time comes from, and how to wait. Implemented over
/// `embassy_time` in firmware and over tokio in the host tests.
// Firmware executors are single-threaded; no `Send` bound is wanted here.
#[allow(async_fn_in_trait)]
pub trait Clock {
    /// The current monotonic time.
    fn now(&self) -> Instant;
    /// Completes at `at` (at once if it has passed).
    async fn sleep_until(&self, at: Instant);
}

/// What a transport vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// A TLS session whose server certificate passed every check
    /// ([`crate::tls`] only builds such a transport after the handshake).
    VerifiedTls,
    /// Plain bytes; the key would travel in the clear.
    Plaintext,
}

/// A byte stream to the server that says whether it is a verified TLS session.
///
/// The session races reads against its timers, so a `read` future may be
/// dropped before it completes. A transport whose reads lose data when
/// dropped part-way (TLS, mid-record) says so through its [`ReadGuard`];
/// the session then lets the read finish before acting on a timer.
pub trait Transport: Read + Write {
    /// See [`ReadGuard`].
    type Guard: ReadGuard;

    /// What this transport vouches for.
    fn security(&self) -> Security;

    /// A handle the session checks, while a read is pending, before it
    /// drops that read for a timer.
    fn read_guard(&self) -> Self::Guard;
}

/// Whether a pending read may be dropped without losing data.
pub trait ReadGuard: Copy {
    /// `true` while a read is part-way through a unit it cannot resume
    /// (a TLS record whose header it has consumed).
    fn busy(&self) -> bool;
}

/// The guard of transports whose reads can always be dropped safely
/// (sockets of embassy-net and tokio: a dropped read consumed nothing).
#[derive(Debug, Clone, Copy, Default)]
pub struct NeverBusy;

impl ReadGuard for NeverBusy {
    fn busy(&self) -> bool {
        false
    }
}

/// A plaintext transport (host TCP in tests, `ws://` on a network you
/// control). Sessions refuse it unless [`Config::danger_allow_plaintext`] is set.
#[derive(Debug)]
pub struct InsecurePlaintext<T>(pub T);

impl<T: embedded_io::ErrorType> embedded_io::ErrorType for InsecurePlaintext<T> {
    type Error = T::Error;
}

impl<T: Read> Read for InsecurePlaintext<T> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.0.read(buf).await
    }
}

impl<T: Write> Write for InsecurePlaintext<T> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.0.write(buf).await
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.0.flush().await
    }
}

impl<T: Read + Write> Transport for InsecurePlaintext<T> {
    type Guard = NeverBusy;

    fn security(&self) -> Security {
        Security::Plaintext
    }

    fn read_guard(&self) -> NeverBusy {
        NeverBusy
    }
}

/// The receive and transmit buffers of a session; their sizes bound the
/// largest message in each direction (less 14 bytes of frame header).
#[derive(Debug)]
pub struct Buffers<const RX: usize, const TX: usize> {
    rx: [u8; RX],
    tx: [u8; TX],
}

impl<const RX: usize, const TX: usize> Buffers<RX, TX> {
    /// Zeroed buffers (const, so they can live in a `static`).
    pub const fn new() -> Self {
        Self {
            rx: [0; RX],
            tx: [0; TX],
        }
    }
}

impl<const RX: usize, const TX: usize> Default for Buffers<RX, TX> {
    fn default() -> Self {
        Self::new()
    }
}

/// Settings of a session.
#[derive(Debug, Clone, Copy)]
pub struct Config<'a> {
    /// The server's host name (also the TLS name checked).
    pub host: &'a str,
    /// The server's port.
    pub port: u16,
    /// The websocket path (`/_/uplink`).
    pub path: &'a str,
    /// The uplink key (server privilege, to register functions).
    pub key: &'a str,
    /// The functions this device registers.
    pub functions: &'a [&'a str],
    /// Protocol version announced (7, as the Pico W library).
    pub version: u32,
    /// Device identification sent with the key (`"PICO_W"`).
    pub device: &'a str,
    /// Heartbeat and auth timing.
    pub timing: Timing,
    /// Send the key over a transport that is not verified TLS. Only for
    /// tests and networks you control.
    pub danger_allow_plaintext: bool,
}

impl<'a> Config<'a> {
    /// Defaults as the official Pico W library: path `/_/uplink`, `v` 7,
    /// device `PICO_W`, 10 s heartbeat; TLS required.
    pub fn new(host: &'a str, port: u16, key: &'a str, functions: &'a [&'a str]) -> Self {
        Self {
            host,
            port,
            path: wire::UPLINK_PATH,
            key,
            functions,
            version: wire::PICO_VERSION,
            device: wire::PICO_DEVICE,
            timing: Timing::default(),
            danger_allow_plaintext: false,
        }
    }
}

/// Why a session failed or ended. Sorted by who must act: the server, the
/// transport, this device's configuration or limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The protocol failed (key refused, bad message, dead heartbeat).
    #[error(transparent)]
    Conn(ConnError),
    /// The server broke websocket framing.
    #[error(transparent)]
    Frame(FrameError),
    /// The websocket upgrade failed.
    #[error(transparent)]
    Handshake(HandshakeError),
    /// A text frame was not UTF-8.
    #[error("the server sent a text frame that is not UTF-8")]
    NotUtf8,
    /// The server closed the websocket or the transport ended.
    #[error("the server closed the connection")]
    Closed,
    /// The transport failed.
    #[error("transport error ({0:?})")]
    Io(embedded_io::ErrorKind),
    /// The transport is not verified TLS and plaintext was not allowed;
    /// nothing was sent.
    #[error(
        "refusing to send the key over a transport that is not verified TLS; use crate::tls, or set danger_allow_plaintext for a network you control"
    )]
    PlaintextRefused,
    /// A message to send does not fit the transmit buffer.
    #[error("a message does not fit the {0}-byte transmit buffer")]
    TxFull(usize),
}

impl SessionError {
    /// Whether the server refused the key: reconnecting with the same key
    /// will not help (back off to the longest delay).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Conn(ConnError::Refused(_)))
    }
}

/// How a call made by the device failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The function raised an error (its message).
    #[error("the call failed remotely: {0}")]
    Remote(ShortText),
    /// No answer before the timeout.
    #[error("no answer within the call timeout")]
    Timeout,
    /// The arguments are not a JSON array / object.
    #[error("call arguments must be a JSON array and keyword arguments a JSON object")]
    BadArguments,
    /// Another call is in flight (only from inside a handler).
    #[error(transparent)]
    Busy(Busy),
    /// The session failed while waiting; reconnect.
    #[error(transparent)]
    Session(SessionError),
}

impl From<SessionError> for CallError {
    fn from(e: SessionError) -> Self {
        Self::Session(e)
    }
}

/// Why a handler did not produce a result; answered to the caller as an
/// error with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandlerError {
    /// The handler has no function of that name.
    NoSuchFunction,
    /// The arguments were not what the function takes (the message says what).
    BadArguments(&'static str),
    /// The function failed (the message says why).
    Failed(&'static str),
}

/// The arguments of an incoming call, raw JSON.
#[derive(Debug, Clone, Copy)]
pub struct Args<'a> {
    args: &'a str,
    kwargs: &'a str,
}

impl<'a> Args<'a> {
    /// Wraps raw JSON `args` (array) and `kwargs` (object).
    pub fn new(args: &'a str, kwargs: &'a str) -> Self {
        Self { args, kwargs }
    }

    /// The raw positional arguments array.
    pub fn raw(&self) -> &'a str {
        self.args
    }

    /// The raw keyword arguments object.
    pub fn raw_kwargs(&self) -> &'a str {
        self.kwargs
    }

    /// Positional argument `i`.
    pub fn get(&self, i: usize) -> Option<Value<'a>> {
        json::array(self.args).ok()?.nth(i).map(Value)
    }

    /// Keyword argument `name`.
    pub fn kwarg(&self, name: &str) -> Option<Value<'a>> {
        json::object(self.kwargs).ok()?.get(name).map(Value)
    }
}

/// One raw JSON argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Value<'a>(&'a str);

impl<'a> Value<'a> {
    /// The raw JSON text.
    pub fn raw(&self) -> &'a str {
        self.0
    }

    /// The number, if it is one.
    pub fn as_f64(&self) -> Option<f64> {
        self.0.parse().ok()
    }

    /// The integer, if it is one that fits.
    pub fn as_i64(&self) -> Option<i64> {
        self.0.parse().ok()
    }

    /// The string, unescaped into `buf`, if it is one that fits.
    pub fn as_str<'o>(&self, buf: &'o mut [u8]) -> Option<&'o str> {
        json::unescape(self.0, buf).ok()
    }
}

/// The device's functions.
// Firmware executors are single-threaded; no `Send` bound is wanted here.
#[allow(async_fn_in_trait)]
pub trait Handler {
    /// Runs function `name` with `args` and writes its JSON result into
    /// `result` (for example `result.raw("21.5")` or `result.string("ok")`;
    /// nothing written means `null`). A result that does not fit, or is
    /// not JSON, is answered as an error.
    async fn call(
        &mut self,
        name: &str,
        args: Args<'_>,
        result: &mut Writer<'_>,
    ) -> Result<(), HandlerError>;
}

/// Completes at `wake`, but not while `guard` says a read is part-way
/// through something it cannot resume: then it waits (checking every
/// 5 ms) for the read to finish its unit or return.
async fn timer<C: Clock, G: ReadGuard>(clock: &C, wake: Instant, guard: G) {
    clock.sleep_until(wake).await;
    while guard.busy() {
        clock
            .sleep_until(clock.now() + Duration::from_millis(5))
            .await;
    }
}

fn io_err<E: embedded_io::Error>(e: E) -> SessionError {
    SessionError::Io(e.kind())
}

/// A tiny PRNG for websocket masks and the handshake nonce (neither is a
/// secret; masking exists for proxies, not confidentiality).
#[derive(Debug)]
struct MaskRng(u64);

impl MaskRng {
    fn next(&mut self) -> u32 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
}

/// The parts of a session, split so that received text (in `rx`) can be
/// read while replies are written (into `tx`) and sent.
struct Link<'b, T> {
    io: T,
    rx: &'b mut [u8],
    tx: &'b mut [u8],
    rx_len: usize,
    /// Bytes at the start of `rx` that were handled and go before the next read.
    consumed: usize,
    mask: MaskRng,
}

impl<T: Transport> Link<'_, T> {
    async fn send_frame(&mut self, opcode: Opcode, len: usize) -> Result<(), SessionError> {
        let mask = self.mask.next().to_be_bytes();
        let cap = self.tx.len();
        let start = ws::seal_frame(self.tx, opcode, len, mask).ok_or(SessionError::TxFull(cap))?;
        self.io
            .write_all(&self.tx[start..MAX_HEADER + len])
            .await
            .map_err(io_err)?;
        self.io.flush().await.map_err(io_err)
    }

    /// Writes a JSON message with `f` and sends it as one text frame.
    async fn send_json(
        &mut self,
        f: impl FnOnce(&mut Writer<'_>) -> Result<(), JsonError>,
    ) -> Result<(), SessionError> {
        let cap = self.tx.len();
        let body = self
            .tx
            .get_mut(MAX_HEADER..)
            .ok_or(SessionError::TxFull(cap))?;
        let mut w = Writer::new(body);
        f(&mut w).map_err(|_| SessionError::TxFull(cap))?;
        let len = w.len();
        self.send_frame(Opcode::Text, len).await
    }

    fn discard_consumed(&mut self) {
        if self.consumed > 0 {
            self.rx.copy_within(self.consumed..self.rx_len, 0);
            self.rx_len -= self.consumed;
            self.consumed = 0;
        }
    }

    /// Reads until a whole frame is at the start of `rx` (`Some`) or `wake`
    /// passes (`None`).
    async fn next_frame<C: Clock>(
        &mut self,
        clock: &C,
        wake: Instant,
    ) -> Result<Option<ws::FrameHeader>, SessionError> {
        self.discard_consumed();
        loop {
            if let Some(h) = ws::parse_frame(&self.rx[..self.rx_len], self.rx.len())
                .map_err(SessionError::Frame)?
            {
                return Ok(Some(h));
            }
            let free = &mut self.rx[self.rx_len..];
            let guard = self.io.read_guard();
            match select(self.io.read(free), timer(clock, wake, guard)).await {
                Either::First(Ok(0)) => return Err(SessionError::Closed),
                Either::First(Ok(n)) => self.rx_len += n,
                Either::First(Err(e)) => return Err(io_err(e)),
                Either::Second(()) => return Ok(None),
            }
        }
    }
}

/// What one step of the session produced.
enum Progress {
    Nothing,
    Authenticated,
    /// A call finished; its outcome is `rx[start..end]`.
    Completed {
        id: u32,
        ok: bool,
        start: usize,
        end: usize,
    },
    TimedOut(u32),
}

/// One uplink session. See the module docs.
pub struct Session<'b, T, C> {
    link: Link<'b, T>,
    clock: C,
    conn: Connection,
    functions: &'b [&'b str],
}

impl<T, C> core::fmt::Debug for Session<'_, T, C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl<'b, T: Transport, C: Clock> Session<'b, T, C> {
    /// Upgrades `io` to a websocket, sends the key and registers
    /// `config.functions`. Refuses, before writing a byte, a transport
    /// that is not verified TLS unless `config.danger_allow_plaintext`.
    /// `seed` should be random (it picks the handshake nonce and masks).
    pub async fn connect<const RX: usize, const TX: usize>(
        io: T,
        clock: C,
        config: &Config<'b>,
        buffers: &'b mut Buffers<RX, TX>,
        seed: u64,
    ) -> Result<Self, SessionError> {
        if io.security() != Security::VerifiedTls && !config.danger_allow_plaintext {
            return Err(SessionError::PlaintextRefused);
        }
        let mut link = Link {
            io,
            rx: &mut buffers.rx,
            tx: &mut buffers.tx,
            rx_len: 0,
            consumed: 0,
            mask: MaskRng(seed | 1),
        };
        let mut nonce = [0u8; 16];
        for chunk in nonce.chunks_mut(4) {
            chunk.copy_from_slice(&link.mask.next().to_be_bytes());
        }
        let key = ws::client_key(nonce);
        let n = ws::write_request(link.tx, config.host, config.port, config.path, &key)
            .map_err(SessionError::Handshake)?;
        link.io.write_all(&link.tx[..n]).await.map_err(io_err)?;
        link.io.flush().await.map_err(io_err)?;

        let deadline = clock.now() + config.timing.auth_timeout;
        let head = loop {
            if let Some(n) = ws::check_response(&link.rx[..link.rx_len], link.rx.len(), &key)
                .map_err(SessionError::Handshake)?
            {
                break n;
            }
            let free = &mut link.rx[link.rx_len..];
            let guard = link.io.read_guard();
            match select(link.io.read(free), timer(&clock, deadline, guard)).await {
                Either::First(Ok(0)) => return Err(SessionError::Closed),
                Either::First(Ok(n)) => link.rx_len += n,
                Either::First(Err(e)) => return Err(io_err(e)),
                Either::Second(()) => return Err(SessionError::Conn(ConnError::AuthTimeout)),
            }
        };
        link.consumed = head;

        link.send_json(|w| message::hello(w, config.key, config.version, config.device))
            .await?;
        let conn = Connection::new(config.timing, clock.now());
        let mut session = Self {
            link,
            clock,
            conn,
            functions: config.functions,
        };
        loop {
            if let Progress::Authenticated = session.step(&mut Unreachable, None).await? {
                return Ok(session);
            }
        }
    }

    /// The session clock's current time (to compute `serve_until` deadlines).
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Whether the key was accepted (always, once `connect` returned).
    pub fn is_ready(&self) -> bool {
        self.conn.is_ready()
    }

    /// Answers incoming calls with `handler` and keeps the heartbeat until
    /// `until`. An error means the session is over: reconnect.
    pub async fn serve_until<H: Handler>(
        &mut self,
        handler: &mut H,
        until: Instant,
    ) -> Result<(), SessionError> {
        while self.clock.now() < until {
            self.step(handler, Some(until)).await?;
        }
        Ok(())
    }

    /// Calls `command` on the server (an app function or another uplink's)
    /// with raw JSON `args` (array) and `kwargs` (object), serving incoming
    /// calls with `handler` while waiting. Returns the raw JSON result,
    /// which borrows the session until the next operation.
    pub async fn call<H: Handler>(
        &mut self,
        handler: &mut H,
        command: &str,
        args: &str,
        kwargs: &str,
        timeout: Duration,
    ) -> Result<&str, CallError> {
        if json::array(args).is_err() || json::object(kwargs).is_err() {
            return Err(CallError::BadArguments);
        }
        let id = self
            .conn
            .start_call(self.clock.now(), timeout)
            .map_err(CallError::Busy)?;
        self.link
            .send_json(|w| message::call(w, id, command, args, kwargs))
            .await?;
        loop {
            match self.step(handler, None).await? {
                Progress::Completed {
                    id: done,
                    ok,
                    start,
                    end,
                } if done == id => {
                    // The frame stays in `rx` until the next operation.
                    let text = core::str::from_utf8(&self.link.rx[start..end]).unwrap_or("null");
                    return if ok {
                        Ok(text)
                    } else {
                        let message = json::object(text)
                            .ok()
                            .and_then(|m| m.get("message"))
                            .unwrap_or(text);
                        Err(CallError::Remote(ShortText::from_json(message)))
                    };
                }
                Progress::TimedOut(done) if done == id => return Err(CallError::Timeout),
                _ => {}
            }
        }
    }

    /// Asks the server for a newer signed trust bundle than `current` (the
    /// sequence of the bundle in use, if any) and, if one comes that
    /// verifies with `signer` (the firmware's built-in key) and is newer,
    /// saves it in `store`. `scratch` must hold the decoded bundle
    /// (`ferrolink_proto::trust::MAX_LEN` at most; a bundle of two ECDSA
    /// roots and a few revocations is under 2 KiB) and the session's `RX`
    /// buffer its base64 reply. A refused bundle is ignored: the error says
    /// why, and nothing is saved. Reconnect after [`TrustUpdate::Updated`]
    /// to use it.
    #[cfg(feature = "tls")]
    pub async fn update_trust<H: Handler, S: TrustStore>(
        &mut self,
        handler: &mut H,
        store: &mut S,
        signer: &[u8; 32],
        current: Option<u64>,
        scratch: &mut [u8],
        timeout: Duration,
    ) -> Result<TrustUpdate, TrustUpdateError<S::Error>> {
        use base64::Engine as _;
        use core::fmt::Write as _;
        let mut args_buf = [0u8; 32];
        let mut args = Writer::new(&mut args_buf);
        let _ = match current {
            Some(seq) => write!(args, "[{seq}]"),
            None => write!(args, "[null]"),
        };
        let len = args.len();
        let args = core::str::from_utf8(&args_buf[..len]).unwrap_or("[null]");
        let reply = self
            .call(handler, wire::TRUST_BUNDLE_COMMAND, args, "{}", timeout)
            .await
            .map_err(TrustUpdateError::Call)?;
        if reply.trim() == "null" {
            return Ok(TrustUpdate::Current);
        }
        let encoded = json::object(reply)
            .ok()
            .and_then(|m| m.get("bundle"))
            .and_then(json::plain_str)
            .ok_or(TrustUpdateError::Malformed)?;
        let n = base64::engine::general_purpose::STANDARD
            .decode_slice(encoded, scratch)
            .map_err(|_| TrustUpdateError::TooLarge(scratch.len()))?;
        let bundle = crate::trust::accept(&scratch[..n], signer, current)
            .map_err(TrustUpdateError::Refused)?;
        store
            .save(bundle.as_bytes())
            .await
            .map_err(TrustUpdateError::Store)?;
        Ok(TrustUpdate::Updated {
            sequence: bundle.sequence(),
        })
    }

    /// Closes the websocket (best effort) and returns the transport.
    pub async fn close(mut self) -> T {
        let _ = self.link.send_frame(Opcode::Close, 0).await;
        self.link.io
    }

    /// Waits for one frame or the next deadline and handles it.
    async fn step<H: Handler>(
        &mut self,
        handler: &mut H,
        until: Option<Instant>,
    ) -> Result<Progress, SessionError> {
        let due = self.conn.poll_timeout();
        let wake = until.map_or(due, |u| u.min(due));
        let Some(h) = self.link.next_frame(&self.clock, wake).await? else {
            let now = self.clock.now();
            return match self.conn.handle_timeout(now).map_err(SessionError::Conn)? {
                Due::Nothing => Ok(Progress::Nothing),
                Due::CallTimedOut(id) => Ok(Progress::TimedOut(id)),
                Due::Heartbeat(id) => {
                    self.link
                        .send_json(|w| {
                            message::call(w, id, wire::ECHO_COMMAND, wire::HEARTBEAT_ARGS, "{}")
                        })
                        .await?;
                    Ok(Progress::Nothing)
                }
            };
        };
        let (start, end) = (h.header_len, h.total_len());
        self.link.consumed = end;
        match h.opcode {
            // parse_frame refuses fragments, so no continuation arrives here.
            Opcode::Binary | Opcode::Pong | Opcode::Continuation => Ok(Progress::Nothing),
            Opcode::Close => {
                let _ = self.link.send_frame(Opcode::Close, 0).await;
                Err(SessionError::Closed)
            }
            Opcode::Ping => {
                let len = end - start;
                let cap = self.link.tx.len();
                let dst = self
                    .link
                    .tx
                    .get_mut(MAX_HEADER..MAX_HEADER + len)
                    .ok_or(SessionError::TxFull(cap))?;
                dst.copy_from_slice(&self.link.rx[start..end]);
                self.link.send_frame(Opcode::Pong, len).await?;
                Ok(Progress::Nothing)
            }
            Opcode::Text => self.on_text(handler, start, end).await,
        }
    }

    async fn on_text<H: Handler>(
        &mut self,
        handler: &mut H,
        start: usize,
        end: usize,
    ) -> Result<Progress, SessionError> {
        let Link { rx, tx, .. } = &mut self.link;
        let text = core::str::from_utf8(&rx[start..end]).map_err(|_| SessionError::NotUtf8)?;
        let now = self.clock.now();
        match self
            .conn
            .handle_text(now, text)
            .map_err(SessionError::Conn)?
        {
            Event::Nothing => Ok(Progress::Nothing),
            Event::Authenticated => {
                for name in self.functions {
                    self.link.send_json(|w| message::register(w, name)).await?;
                }
                Ok(Progress::Authenticated)
            }
            Event::Completed { id, outcome } => {
                let (ok, raw) = match outcome {
                    Ok(r) => (true, r),
                    Err(e) => (false, e),
                };
                // `raw` points into `rx`; keep its position, not the borrow.
                let at = raw.as_ptr() as usize - rx.as_ptr() as usize;
                Ok(Progress::Completed {
                    id,
                    ok,
                    start: at,
                    end: at + raw.len(),
                })
            }
            Event::Call(call) => {
                let cap = tx.len();
                let body = tx.get_mut(MAX_HEADER..).ok_or(SessionError::TxFull(cap))?;
                let len = answer(handler, &call, body)
                    .await
                    .ok_or(SessionError::TxFull(cap))?;
                self.link.send_frame(Opcode::Text, len).await?;
                Ok(Progress::Nothing)
            }
        }
    }
}

/// Runs `handler` for `call` and writes the reply into `body`; returns its
/// length, or `None` if not even an error reply fits.
async fn answer<H: Handler>(handler: &mut H, call: &CallIn<'_>, body: &mut [u8]) -> Option<usize> {
    let mut name_buf = [0u8; 64];
    let mut message_buf = [0u8; 128];
    let failure: (Option<&str>, &str) = 'fail: {
        let Ok(name) = json::unescape(call.command, &mut name_buf) else {
            break 'fail (None, "the function name is longer than this device accepts");
        };
        if call.has_objects {
            break 'fail (
                Some(error_type::SERIALIZATION),
                "this device accepts only plain JSON arguments (no media or objects)",
            );
        }
        let mut w = Writer::new(body);
        message::reply_start(&mut w, call.id).ok()?;
        let mark = w.len();
        match handler
            .call(name, Args::new(call.args, call.kwargs), &mut w)
            .await
        {
            Ok(()) => {
                if w.len() == mark {
                    w.raw("null").ok();
                }
                let valid = json::validate(&w.as_str()[mark..]).is_ok();
                if valid && w.raw(message::REPLY_END).is_ok() {
                    return Some(w.len());
                }
                break 'fail (
                    None,
                    if valid {
                        "the result is larger than this device's transmit buffer"
                    } else {
                        "the device's function wrote a result that is not JSON"
                    },
                );
            }
            Err(HandlerError::NoSuchFunction) => {
                use core::fmt::Write as _;
                let mut m = Writer::new(&mut message_buf);
                let _ = write!(
                    m,
                    "No server function matching \"{name}\" has been registered"
                );
                let len = m.len();
                let text = core::str::from_utf8(&message_buf[..len]).unwrap_or("");
                break 'fail (Some(error_type::NO_SERVER_FUNCTION), text);
            }
            Err(HandlerError::BadArguments(m)) => break 'fail (Some("TypeError"), m),
            Err(HandlerError::Failed(m)) => break 'fail (None, m),
        }
    };
    let mut w = Writer::new(body);
    message::reply_error(&mut w, call.id, failure.0, failure.1).ok()?;
    Some(w.len())
}

/// The handler used before authentication, when no call can arrive
/// (the connection refuses them before the verdict).
struct Unreachable;

impl Handler for Unreachable {
    fn call(
        &mut self,
        _name: &str,
        _args: Args<'_>,
        _result: &mut Writer<'_>,
    ) -> impl Future<Output = Result<(), HandlerError>> {
        core::future::ready(Err(HandlerError::NoSuchFunction))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_read_without_a_heap() {
        let a = Args::new(r#"[3, "S\u00d6S", 2.5]"#, r#"{"unit":"C"}"#);
        assert_eq!(a.get(0).and_then(|v| v.as_i64()), Some(3));
        let mut buf = [0u8; 8];
        assert_eq!(a.get(1).and_then(|v| v.as_str(&mut buf)), Some("SÖS"));
        assert_eq!(a.get(2).and_then(|v| v.as_f64()), Some(2.5));
        assert_eq!(a.get(3), None);
        let mut buf = [0u8; 8];
        assert_eq!(a.kwarg("unit").and_then(|v| v.as_str(&mut buf)), Some("C"));
    }
}
