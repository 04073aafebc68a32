//! What other tasks may see of a live connection: its identity and its
//! outbound queue. Everything else about a connection is owned by its driver
//! task (`uplink.rs`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use ferrolink_proto::encode;
use ferrolink_proto::message::Privilege;
use ferrolink_proto::{Instant, error_type};

use crate::activity::Monitor;
use crate::keys::KeyId;

/// A message for a connection's driver.
pub(crate) enum Outbound {
    /// A finished frame to write.
    Frame(String),
    /// A call to forward to this connection, which becomes pending on it.
    Call(Box<ForwardedCall>),
}

impl Outbound {
    fn weight(&self) -> usize {
        match self {
            Self::Frame(f) => f.len(),
            Self::Call(c) => c.frame.len(),
        }
    }
}

/// A call on its way to its provider.
pub(crate) struct ForwardedCall {
    /// The server's id for the call, unique on the provider's connection.
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
}

/// The caller of a forwarded call. Dropping it (answered or not) releases
/// the caller's in-flight slot, so the count can never leak.
pub(crate) struct ReplyTo {
    pub(crate) caller: Arc<Peer>,
    /// The caller's id literal followed by the function name, in one
    /// allocation (this is on the path of every call).
    id_and_command: Box<str>,
    id_len: usize,
    /// When the call was made, on the protocol clock (ms).
    started: Instant,
}

impl ReplyTo {
    /// Takes one of `caller`'s in-flight slots, released when this is dropped.
    pub(crate) fn new(caller: Arc<Peer>, caller_id: &str, command: &str, started: Instant) -> Self {
        caller.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut both = String::with_capacity(caller_id.len() + command.len());
        both.push_str(caller_id);
        both.push_str(command);
        Self {
            caller,
            id_and_command: both.into_boxed_str(),
            id_len: caller_id.len(),
            started,
        }
    }

    /// The caller's id for the call, as a JSON literal.
    pub(crate) fn caller_id(&self) -> &str {
        &self.id_and_command[..self.id_len]
    }

    /// The function called, for error messages.
    pub(crate) fn command(&self) -> &str {
        &self.id_and_command[self.id_len..]
    }

    /// Sends the answer frame to the caller and logs the call; `outcome`
    /// is `"ok"` or the error type.
    pub(crate) fn deliver(self, frame: String, outcome: &str) {
        let c = &self.caller;
        let took = c
            .monitor
            .now()
            .as_millis()
            .saturating_sub(self.started.as_millis());
        c.monitor
            .call(&c.app, &c.label, self.command(), took, outcome);
        let _ = self.caller.enqueue(Outbound::Frame(frame));
    }

    /// Answers the caller with an error made by the server.
    pub(crate) fn fail(self, error_type: &str, message: &str) {
        let mut frame = String::new();
        encode::reply_error(&mut frame, self.caller_id(), error_type, message);
        self.deliver(frame, error_type);
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        self.caller.in_flight.fetch_sub(1, Ordering::Relaxed);
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
    /// Whether the app let sessions without a user call functions (as it
    /// was when the session opened).
    pub(crate) anonymous_calls: bool,
    /// Event channels this session subscribed to.
    pub(crate) channels: Mutex<std::collections::HashSet<Box<str>>>,
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

/// The shared part of an authenticated connection.
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
    /// Calls this connection made that are awaiting an answer.
    pub(crate) in_flight: AtomicUsize,
    pub(crate) monitor: Arc<Monitor>,
    max_queued_bytes: usize,
    queue: Mutex<Queue>,
    /// Wakes the driver when the queue gains items.
    pub(crate) wake: Notify,
    /// Wakes the driver to close the connection.
    pub(crate) kill: Notify,
}

/// The connection is closed (or closing); nothing more can be queued.
pub(crate) struct Closed(pub(crate) Outbound);

impl Peer {
    pub(crate) fn new(
        id: u64,
        setup: PeerSetup,
        environment: &str,
        max_queued_bytes: usize,
        monitor: Arc<Monitor>,
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
        let now = monitor.now().as_millis();
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
            connected_at_ms: crate::activity::unix_ms(),
            last_seen: AtomicU64::new(now),
            registered: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            monitor,
            max_queued_bytes,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                closed: None,
            }),
            wake: Notify::new(),
            kill: Notify::new(),
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
    /// A connection whose queue exceeds its byte limit (a peer that does not
    /// read) is closed instead of growing without bound.
    pub(crate) fn enqueue(&self, item: Outbound) -> Result<(), Closed> {
        let mut q = self.lock();
        if q.closed.is_some() {
            return Err(Closed(item));
        }
        let weight = item.weight();
        if q.bytes + weight > self.max_queued_bytes {
            q.closed = Some(format!(
                "ferrolink: closing a connection that stopped reading: over {} bytes were waiting to be sent to it",
                self.max_queued_bytes
            ));
            drop(q);
            self.kill.notify_one();
            return Err(Closed(item));
        }
        q.bytes += weight;
        q.items.push_back(item);
        drop(q);
        self.wake.notify_one();
        Ok(())
    }

    /// Moves every queued message into `into` (which should be empty).
    pub(crate) fn take_queued(&self, into: &mut VecDeque<Outbound>) {
        let mut q = self.lock();
        std::mem::swap(&mut q.items, into);
        q.bytes = 0;
        if q.items.capacity() > 256 {
            q.items = VecDeque::new();
        }
    }

    /// Asks the driver to close the connection, telling the peer `reason`.
    pub(crate) fn close_with(&self, reason: String) {
        let mut q = self.lock();
        if q.closed.is_none() {
            q.closed = Some(reason);
        }
        drop(q);
        self.kill.notify_one();
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
pub(crate) fn fail_queued_calls(items: VecDeque<Outbound>, message: &str) {
    for item in items {
        if let Outbound::Call(call) = item {
            call.reply.fail(error_type::UPLINK_DISCONNECTED, message);
        }
    }
}
