//! What other tasks may see of a live connection: its identity, its
//! outbound queue and the signal that wakes its driver. Everything else
//! about a connection is owned by its driver task (`driver.rs`).
//!
//! Other tasks hand a connection three kinds of work ([`Outbound`]): a
//! finished frame (an event), a call to serve ([`ForwardedCall`]), or the
//! answer to a call it made ([`Answer`]). The queue is bounded in bytes,
//! counting what the driver has taken but not yet written
//! ([`Peer::set_unsent`]): a connection that stops reading is closed, not
//! allowed to grow the server's memory.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use futures_util::task::AtomicWaker;

use ferrolink_proto::encode;
use ferrolink_proto::message::Privilege;
use ferrolink_proto::{Instant, error_type};

use crate::keys::KeyId;

/// A message for a connection's driver.
pub(crate) enum Outbound {
    /// A finished text frame to write (events, data table answers).
    Frame(String),
    /// An answer that carries media: its text frame, then each chunk as a
    /// `CHUNK_HEADER` text frame and the binary frame right after it.
    Media(String, Vec<(String, Vec<u8>)>),
    /// A call for this connection to serve; it becomes pending on it.
    Call(ForwardedCall),
    /// The answer to a call this connection made.
    Answer(Answer),
}

impl Outbound {
    /// Bytes this message holds, for the queue's bound.
    fn weight(&self) -> usize {
        match self {
            Self::Frame(f) => f.len(),
            Self::Media(f, chunks) => {
                f.len() + chunks.iter().map(|(h, b)| h.len() + b.len()).sum::<usize>()
            }
            Self::Call(c) => c.frame.len(),
            Self::Answer(a) => a.body.len(),
        }
    }
}

/// A call on its way to its provider.
pub(crate) struct ForwardedCall {
    /// The server's id for the call: unique server-wide, the key under
    /// which the caller waits for the answer.
    pub(crate) id: u64,
    /// The encoded `CALL` frame.
    pub(crate) frame: String,
    /// Where the answer goes.
    pub(crate) reply: ReplyTo,
    /// How many calls deep this call is nested (1 = top level).
    pub(crate) depth: u8,
    /// The browser session this call was made for, directly or through
    /// nested calls: its user is the call's user, and events raised inside
    /// the call go to it.
    pub(crate) origin: Option<Arc<Peer>>,
    /// Past this the caller has been told `TimeoutError` already; the call
    /// is not sent if it is still queued then.
    pub(crate) deadline: Instant,
}

/// How a call ended, for the call log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response.
    Ok,
    /// An error of this type.
    Error(Box<str>),
}

impl Outcome {
    /// `"ok"` or the error type.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Ok => "ok",
            Self::Error(t) => t,
        }
    }
}

/// The answer to call `call`: the reply frame without its id. The caller's
/// driver writes `{"id":` + the id its peer used + `,` + `body`, so only
/// the caller keeps that id.
pub(crate) struct Answer {
    pub(crate) call: u64,
    /// Everything after the id: `"response":…}` or `"error":…}`.
    pub(crate) body: String,
    pub(crate) outcome: Outcome,
}

impl Answer {
    /// An error the server makes up (timeouts, disconnects, refusals).
    pub(crate) fn error(call: u64, error_type: &'static str, message: &str) -> Self {
        let mut body = String::with_capacity(message.len() + 96);
        encode::reply_body_error(&mut body, error_type, message);
        Self {
            call,
            body,
            outcome: Outcome::Error(error_type.into()),
        }
    }
}

/// The caller of a forwarded call, and the call's id.
pub(crate) struct ReplyTo {
    pub(crate) caller: Arc<Peer>,
    pub(crate) call: u64,
}

impl ReplyTo {
    /// Hands the answer to the caller's driver. A caller that has gone
    /// (or already timed the call out) drops it.
    pub(crate) fn answer(self, body: String, outcome: Outcome) {
        let _ = self.caller.enqueue(Outbound::Answer(Answer {
            call: self.call,
            body,
            outcome,
        }));
    }

    /// Answers with an error the server makes up.
    pub(crate) fn fail(self, error_type: &'static str, message: &str) {
        let _ = self.caller.enqueue(Outbound::Answer(Answer::error(
            self.call, error_type, message,
        )));
    }
}

/// Wakes a driver: from other tasks when they queued work for it, and to
/// close it. Cheaper than two `Notify`s, and a burst of enqueues wakes the
/// driver once (the waker is taken by the first).
#[derive(Default)]
pub(crate) struct Signal {
    waker: AtomicWaker,
    flags: AtomicU8,
}

/// Work was queued.
pub(crate) const WAKE: u8 = 1;
/// Close the connection.
pub(crate) const KILL: u8 = 2;

impl Signal {
    fn raise(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Registers the driver's waker; call before [`Signal::take`].
    pub(crate) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// The flags raised since the last call.
    pub(crate) fn take(&self) -> u8 {
        self.flags.swap(0, Ordering::AcqRel)
    }
}

struct Queue {
    items: VecDeque<Outbound>,
    bytes: usize,
    closed: Option<String>,
}

/// A browser session: the identity behind a session websocket.
pub(crate) struct BrowserSession {
    /// Public id, for targeting events (`session_id=`).
    pub(crate) id: String,
    /// The logged-in user's email, if any.
    pub(crate) email: Option<String>,
    /// Event channels this session subscribed to.
    pub(crate) channels: Mutex<std::collections::HashSet<Box<str>>>,
    /// Whether the session is open on another server of the cluster (this
    /// record stands for it in a call from there; events for it go back
    /// over NATS).
    pub(crate) elsewhere: bool,
    /// The hash of the login cookie it was opened with, if a user was
    /// logged in: logging out closes every session of that login.
    pub(crate) login: Option<[u8; 32]>,
}

/// Who a connection is, as known when it was accepted.
pub(crate) struct PeerSetup {
    pub(crate) key_id: KeyId,
    pub(crate) device: Option<String>,
    pub(crate) privilege: Privilege,
    pub(crate) library: Option<String>,
    pub(crate) protocol_version: u32,
    pub(crate) ip: String,
    pub(crate) app: String,
    pub(crate) browser: Option<Box<BrowserSession>>,
}

/// The shared part of a connection.
pub(crate) struct Peer {
    /// Server-wide connection number.
    pub(crate) id: u64,
    /// The key it authenticated with (empty for browser sessions).
    pub(crate) key_id: KeyId,
    /// The device named by that key, if any.
    pub(crate) device: Option<Box<str>>,
    /// The key's privilege.
    pub(crate) privilege: Privilege,
    /// The official Pico W library (`"device": "PICO_W"`), which cannot take
    /// non-empty `objects`.
    pub(crate) is_pico: bool,
    /// What the client said it is (the key message's `device` field).
    pub(crate) library: Option<Box<str>>,
    /// The client's protocol version.
    pub(crate) protocol_version: u32,
    /// The peer address, shown to providers in `client.ip`.
    pub(crate) ip: Box<str>,
    /// The app it belongs to.
    pub(crate) app: Arc<str>,
    /// How it appears in the call log.
    pub(crate) label: Arc<str>,
    /// Set for browser sessions.
    pub(crate) browser: Option<Box<BrowserSession>>,
    /// When it connected, ms since the Unix epoch.
    pub(crate) connected_at_ms: u64,
    /// When a frame last arrived, on the protocol clock.
    pub(crate) last_seen: AtomicU64,
    /// Names it registered.
    pub(crate) registered: Mutex<Vec<Box<str>>>,
    /// The caller-dependent tail of every `CALL` this connection makes
    /// (see `ferrolink_proto::encode::call_tail`).
    pub(crate) call_tail: Box<str>,
    /// Calls this connection made that await an answer (kept by its driver,
    /// published for the dashboard and for callers without a driver).
    pub(crate) in_flight: AtomicUsize,
    /// Data table calls it made that are running or waiting.
    pub(crate) table_calls: AtomicU64,
    /// Bytes its driver took from the queue but has not written yet.
    unsent: AtomicUsize,
    max_queued_bytes: usize,
    queue: Mutex<Queue>,
    pub(crate) signal: Signal,
}

/// The connection is closed (or closing); nothing more can be queued.
pub(crate) struct Closed;

impl Peer {
    pub(crate) fn new(
        id: u64,
        setup: PeerSetup,
        environment: &str,
        max_queued_bytes: usize,
        now: Instant,
    ) -> Self {
        let frame_type = if setup.browser.is_some() {
            "browser"
        } else {
            setup.privilege.frame_type()
        };
        let mut call_tail = String::new();
        let origin = encode::CallOrigin {
            frame_type,
            protocol_version: setup.protocol_version,
            ip: Some(&setup.ip),
        };
        let app = encode::AppInfo {
            id: &setup.app,
            environment,
        };
        encode::call_tail(&mut call_tail, &origin, &app);
        let label: Arc<str> = match (&setup.browser, &setup.device) {
            (Some(b), _) => match &b.email {
                Some(e) => format!("browser {e}").into(),
                None => "browser (anonymous)".into(),
            },
            (None, Some(d)) => d.as_str().into(),
            (None, None) => format!("key {}", setup.key_id).into(),
        };
        Self {
            call_tail: call_tail.into_boxed_str(),
            id,
            key_id: setup.key_id,
            device: setup.device.map(Into::into),
            privilege: setup.privilege,
            is_pico: setup.library.as_deref() == Some("PICO_W"),
            library: setup.library.map(Into::into),
            protocol_version: setup.protocol_version,
            ip: setup.ip.into(),
            app: setup.app.into(),
            label,
            browser: setup.browser,
            connected_at_ms: crate::clock::unix_ms(),
            last_seen: AtomicU64::new(now.as_millis()),
            registered: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            table_calls: AtomicU64::new(0),
            unsent: AtomicUsize::new(0),
            max_queued_bytes,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                closed: None,
            }),
            signal: Signal::default(),
        }
    }

    /// The names this connection registered.
    pub(crate) fn registered(&self) -> Vec<Box<str>> {
        self.registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Queue operations cannot panic half-way; a poisoned lock is usable.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a message for this connection's driver.
    ///
    /// A connection whose queued and unwritten bytes would exceed its limit
    /// (a peer that does not read) is closed instead of growing.
    pub(crate) fn enqueue(&self, item: Outbound) -> Result<(), Closed> {
        let mut q = self.lock();
        if q.closed.is_some() {
            drop(item);
            return Err(Closed);
        }
        let weight = item.weight();
        let held = q.bytes + self.unsent.load(Ordering::Relaxed);
        if held + weight > self.max_queued_bytes {
            q.closed = Some(format!(
                "ferrolink: closing a connection that stopped reading: over {} bytes were waiting to be sent to it",
                self.max_queued_bytes
            ));
            drop(q);
            self.signal.raise(KILL);
            drop(item);
            return Err(Closed);
        }
        q.bytes += weight;
        q.items.push_back(item);
        drop(q);
        self.signal.raise(WAKE);
        Ok(())
    }

    /// Moves every queued message into `into` (which should be empty).
    /// Their bytes count as unsent until [`Peer::set_unsent`] says
    /// otherwise.
    pub(crate) fn take_queued(&self, into: &mut VecDeque<Outbound>) {
        let mut q = self.lock();
        std::mem::swap(&mut q.items, into);
        self.unsent.fetch_add(q.bytes, Ordering::Relaxed);
        q.bytes = 0;
        if q.items.capacity() > 8192 {
            q.items = VecDeque::new();
        }
    }

    /// The driver's count of bytes taken but not yet written.
    pub(crate) fn set_unsent(&self, bytes: usize) {
        self.unsent.store(bytes, Ordering::Relaxed);
    }

    /// Asks the driver to close the connection, telling the peer `reason`.
    pub(crate) fn close_with(&self, reason: String) {
        let mut q = self.lock();
        if q.closed.is_none() {
            q.closed = Some(reason);
        }
        drop(q);
        self.signal.raise(KILL);
    }

    /// Why the connection was asked to close, if it was.
    pub(crate) fn close_reason(&self) -> Option<String> {
        self.lock().closed.clone()
    }

    /// Refuses further messages and hands back whatever was still queued,
    /// so calls in it can be answered.
    pub(crate) fn shut(&self, reason: &str) -> VecDeque<Outbound> {
        let mut q = self.lock();
        if q.closed.is_none() {
            q.closed = Some(reason.to_owned());
        }
        q.bytes = 0;
        std::mem::take(&mut q.items)
    }
}

/// Answers every call in `items` with `UplinkDisconnectedError`.
pub(crate) fn fail_queued_calls(items: impl IntoIterator<Item = Outbound>, message: &str) {
    for item in items {
        if let Outbound::Call(call) = item {
            call.reply.fail(error_type::UPLINK_DISCONNECTED, message);
        }
    }
}
