//! The client side of one uplink connection, sans IO.
//!
//! [`ClientSession`] sends the key, registers functions, correlates the
//! calls it makes with their replies and deadlines, surfaces incoming calls,
//! and keeps the heartbeat the official clients use (`anvil.private.echo`
//! every 10 s), declaring the server dead when an echo goes unanswered.
//!
//! # Call contract
//!
//! After every input (`handle_text`, `handle_timeout`, `handle_closed`, or an
//! API call such as `call`), drain [`ClientSession::poll_transmit`] and
//! [`ClientSession::poll_event`] until both return `None`, then re-read
//! [`ClientSession::poll_timeout`] and wake at that instant.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::time::Duration;

use crate::calls::{CallId, CallTable, TableFull};
use crate::codec::{DecodeLimits, decode};
use crate::encode;
use crate::message::Privilege;
use crate::message::{Message, Outcome};
use crate::time::Instant;

/// Settings of a client connection.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The uplink key.
    pub key: String,
    /// Protocol version announced (8, as the Python client).
    pub version: u32,
    /// Optional device identification.
    pub device: Option<String>,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// How long a heartbeat may go unanswered before the link is declared dead.
    pub heartbeat_timeout: Duration,
    /// Most calls in flight at once.
    pub max_pending: usize,
    /// Decoding limits.
    pub decode: DecodeLimits,
}

impl ClientConfig {
    /// Defaults matching the official clients, for `key`.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            version: 8,
            device: None,
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(20),
            max_pending: 4096,
            decode: DecodeLimits::default(),
        }
    }
}

/// A call that the server sent to this client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingCall {
    /// The literal id to answer with [`ClientSession::respond`].
    pub id: String,
    /// The function name.
    pub command: String,
    /// Raw JSON array.
    pub args: String,
    /// Raw JSON object.
    pub kwargs: String,
}

/// How a call this client made failed locally (not a remote error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalFailure {
    /// No reply before the deadline.
    Timeout,
    /// The connection closed before the reply came.
    ConnectionClosed,
}

/// The outcome of a call made by this client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// The raw JSON return value.
    Response(String),
    /// The raw JSON error object sent by the server or the provider.
    Error(String),
    /// The call failed locally.
    Failed(LocalFailure),
}

/// Why a client connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The server refused the key or sent another fatal error.
    Fatal(String),
    /// A heartbeat went unanswered.
    HeartbeatTimeout,
    /// The transport closed.
    TransportClosed,
    /// The server sent something this client cannot understand.
    Protocol(String),
}

/// Something the application must see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The key was accepted.
    Authenticated {
        /// The privilege granted.
        privilege: Privilege,
    },
    /// A call arrived.
    Incoming(IncomingCall),
    /// A call made with [`ClientSession::call`] finished.
    Completed {
        /// The id returned by `call`.
        id: CallId,
        /// How it ended.
        result: CallResult,
    },
    /// Text printed by the server.
    Output(String),
    /// The connection is over; every pending call has been completed first.
    Closed(CloseReason),
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    AwaitingAuth,
    Ready,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    User,
    Heartbeat,
}

/// Client side of one uplink connection. See the module docs for the contract.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    state: State,
    outbox: VecDeque<String>,
    events: VecDeque<ClientEvent>,
    calls: CallTable<Pending>,
    next_id: u64,
    next_heartbeat: Instant,
}

impl ClientSession {
    /// Starts a connection whose transport opened at `now`; the key message
    /// is the first frame in [`ClientSession::poll_transmit`].
    pub fn new(config: ClientConfig, now: Instant) -> Self {
        let mut hello = String::new();
        encode::hello(
            &mut hello,
            &config.key,
            config.version,
            config.device.as_deref(),
        );
        let mut outbox = VecDeque::new();
        outbox.push_back(hello);
        Self {
            calls: CallTable::new(config.max_pending + 1),
            next_heartbeat: now + config.heartbeat_interval,
            config,
            state: State::AwaitingAuth,
            outbox,
            events: VecDeque::new(),
            next_id: 0,
        }
    }

    /// Whether the server accepted the key and the link is up.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Whether the connection is over.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Registers `name` (sent right away, as PY does, even before the verdict).
    pub fn register(&mut self, name: &str) {
        let mut frame = String::new();
        encode::register(&mut frame, name);
        self.outbox.push_back(frame);
    }

    /// Calls `command` with raw JSON `args` (array) and `kwargs` (object).
    /// The result arrives as [`ClientEvent::Completed`] with the returned id.
    pub fn call(
        &mut self,
        now: Instant,
        command: &str,
        args: &str,
        kwargs: &str,
        timeout: Duration,
    ) -> Result<CallId, TableFull> {
        self.call_nested(now, command, args, kwargs, timeout, None)
    }

    /// Like [`ClientSession::call`], made from inside the incoming call
    /// whose id value (without quotes) is `call_stack_id`, so the server can
    /// run it in that call's context (for example the browser user's session).
    pub fn call_nested(
        &mut self,
        now: Instant,
        command: &str,
        args: &str,
        kwargs: &str,
        timeout: Duration,
        call_stack_id: Option<&str>,
    ) -> Result<CallId, TableFull> {
        if self.calls.len() >= self.config.max_pending {
            return Err(TableFull {
                capacity: self.config.max_pending,
            });
        }
        self.send_call(
            now,
            command,
            args,
            kwargs,
            timeout,
            call_stack_id,
            Pending::User,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn send_call(
        &mut self,
        now: Instant,
        command: &str,
        args: &str,
        kwargs: &str,
        timeout: Duration,
        call_stack_id: Option<&str>,
        kind: Pending,
    ) -> Result<CallId, TableFull> {
        let id = CallId(self.next_id);
        self.calls
            .insert(id, now + timeout, kind)
            .map_err(|(full, _)| full)?;
        self.next_id += 1;
        let mut frame = String::new();
        encode::client_call(
            &mut frame,
            &format!("c-{}", id.0),
            command,
            args,
            kwargs,
            call_stack_id,
        );
        if self.state == State::Closed {
            self.calls.remove(id);
            self.complete(id, CallResult::Failed(LocalFailure::ConnectionClosed));
        } else {
            self.outbox.push_back(frame);
        }
        Ok(id)
    }

    /// Answers an incoming call with a raw JSON result, or an error.
    pub fn respond(&mut self, id: &str, result: Result<&str, (&str, &str)>) {
        let mut frame = String::new();
        match result {
            Ok(raw) => encode::reply_response(&mut frame, id, raw, None),
            Err((error_type, message)) => encode::reply_error(&mut frame, id, error_type, message),
        }
        self.outbox.push_back(frame);
    }

    /// Handles one text frame from the server.
    pub fn handle_text(&mut self, now: Instant, text: &str) {
        if self.state == State::Closed {
            return;
        }
        let message = match decode(text, &self.config.decode) {
            Ok(m) => m,
            Err(e) => return self.close_with(CloseReason::Protocol(e.to_string())),
        };
        match (message, &self.state) {
            (Message::AuthOk(auth), State::AwaitingAuth) => {
                let privilege = match auth.privilege.as_deref() {
                    Some("client") => Privilege::Client,
                    _ => Privilege::Server,
                };
                self.state = State::Ready;
                self.next_heartbeat = now + self.config.heartbeat_interval;
                self.events
                    .push_back(ClientEvent::Authenticated { privilege });
            }
            (Message::Fatal { error }, _) => {
                self.close_with(CloseReason::Fatal(error.into_owned()))
            }
            (Message::Reply(reply), State::Ready | State::AwaitingAuth) => {
                let value = reply.id.value();
                let Some(n) = value.strip_prefix("c-").and_then(|n| n.parse().ok()) else {
                    return;
                };
                let id = CallId(n);
                let Some(kind) = self.calls.remove(id) else {
                    return; // late reply to a call that already timed out
                };
                if kind == Pending::User {
                    let result = match reply.outcome {
                        Outcome::Response(r) => CallResult::Response(r.get().to_string()),
                        Outcome::Error(e) => CallResult::Error(e.get().to_string()),
                    };
                    self.complete(id, result);
                }
            }
            (Message::Call(call), State::Ready) => {
                self.events.push_back(ClientEvent::Incoming(IncomingCall {
                    id: call.id.literal().to_string(),
                    command: call.command.into_owned(),
                    args: call.args.get().to_string(),
                    kwargs: call.kwargs.get().to_string(),
                }));
            }
            (Message::Output { text, .. }, _) => {
                self.events
                    .push_back(ClientEvent::Output(text.into_owned()));
            }
            (other, _) => {
                let reason = format!("unexpected {} from the server", other.kind());
                self.close_with(CloseReason::Protocol(reason));
            }
        }
    }

    /// The application closes the connection: pending calls complete with
    /// [`LocalFailure::ConnectionClosed`], then [`ClientEvent::Closed`].
    pub fn close(&mut self) {
        self.close_with(CloseReason::TransportClosed);
    }

    /// The transport closed.
    pub fn handle_closed(&mut self) {
        self.close_with(CloseReason::TransportClosed);
    }

    /// When [`ClientSession::handle_timeout`] must next be called.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let calls = self.calls.poll_timeout();
        let heartbeat = (self.state == State::Ready).then_some(self.next_heartbeat);
        match (calls, heartbeat) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires due deadlines and heartbeats.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((id, kind)) = self.calls.expire(now) {
            match kind {
                Pending::Heartbeat => return self.close_with(CloseReason::HeartbeatTimeout),
                Pending::User => self.complete(id, CallResult::Failed(LocalFailure::Timeout)),
            }
        }
        if self.state == State::Ready && now >= self.next_heartbeat {
            self.next_heartbeat = now + self.config.heartbeat_interval;
            // The heartbeat slot is reserved (capacity is max_pending + 1).
            let timeout = self.config.heartbeat_timeout;
            let _ = self.send_call(
                now,
                crate::wire::ECHO_COMMAND,
                crate::wire::HEARTBEAT_ARGS,
                "{}",
                timeout,
                None,
                Pending::Heartbeat,
            );
        }
    }

    /// The next frame to write to the transport.
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.outbox.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    fn complete(&mut self, id: CallId, result: CallResult) {
        self.events.push_back(ClientEvent::Completed { id, result });
    }

    fn close_with(&mut self, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.outbox.clear();
        let pending: Vec<_> = self.calls.drain().collect();
        for (id, kind) in pending {
            if kind == Pending::User {
                self.complete(id, CallResult::Failed(LocalFailure::ConnectionClosed));
            }
        }
        self.events.push_back(ClientEvent::Closed(reason));
    }
}
