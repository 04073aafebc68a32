//! The device side of one uplink connection, sans IO: what may arrive when,
//! which call a reply belongs to, when the heartbeat is due and when the
//! server is declared dead. [`crate::Session`] is the driver around it.
//!
//! # Call contract
//!
//! Inputs are [`Connection::handle_text`] (one received text frame) and
//! [`Connection::handle_timeout`] (called at or after
//! [`Connection::poll_timeout`]); outgoing calls are reserved with
//! [`Connection::start_call`]. Each input returns what the driver must do
//! (answer a call, send a heartbeat, report a result); re-read
//! `poll_timeout` after every input. Time is an [`Instant`] passed in.

use core::fmt;
use core::time::Duration;

use ferrolink_proto::{Instant, wire};

use crate::json;
use crate::message::{self, CallIn, DecodeError, Incoming};

/// Timing of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Between heartbeats (the first one this long after authentication).
    pub heartbeat_interval: Duration,
    /// How long a heartbeat may go unanswered before the server is declared dead.
    pub heartbeat_timeout: Duration,
    /// How long the server may take to answer the key.
    pub auth_timeout: Duration,
}

impl Default for Timing {
    /// The official clients' 10 s heartbeat; 20 s to answer it; 10 s for the key.
    fn default() -> Self {
        Self {
            heartbeat_interval: wire::HEARTBEAT_INTERVAL,
            heartbeat_timeout: Duration::from_secs(20),
            auth_timeout: Duration::from_secs(10),
        }
    }
}

/// A short text copied out of a frame (for errors that outlive it): at most
/// 96 bytes, cut at a character boundary.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ShortText {
    buf: [u8; 96],
    len: usize,
}

impl ShortText {
    /// Copies `s`, cut to fit.
    pub fn new(s: &str) -> Self {
        let mut len = s.len().min(96);
        while !s.is_char_boundary(len) {
            len -= 1;
        }
        let mut buf = [0u8; 96];
        buf[..len].copy_from_slice(&s.as_bytes()[..len]);
        Self { buf, len }
    }

    /// The decoded text of a raw JSON value: a string's contents, or the
    /// raw text of any other value.
    pub fn from_json(raw: &str) -> Self {
        let mut tmp = [0u8; 96];
        match json::unescape(raw, &mut tmp) {
            Ok(s) => Self::new(s),
            Err(_) => Self::new(json::plain_str(raw).unwrap_or(raw)),
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl fmt::Debug for ShortText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ShortText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the connection ended, from the protocol's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// The server refused the key (or sent another fatal error).
    #[error("the server refused the connection: {0}")]
    Refused(ShortText),
    /// After authentication the server sent a fatal error and closes
    /// (shutting down, key revoked, …).
    #[error("the server ended the session: {0}")]
    Ended(ShortText),
    /// The server sent something that is not a protocol message.
    #[error(transparent)]
    Decode(DecodeError),
    /// The server sent a message that is not allowed at this point.
    #[error("the server sent {0} before answering the key")]
    Unexpected(&'static str),
    /// The server did not answer the key in time.
    #[error("the server did not answer the key within the auth timeout")]
    AuthTimeout,
    /// A heartbeat went unanswered.
    #[error("the server did not answer a heartbeat in time; the link is dead")]
    HeartbeatLost,
}

/// What a received frame means for the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// The key was accepted: send the registrations.
    Authenticated,
    /// Answer this call.
    Call(CallIn<'a>),
    /// The call reserved under `id` finished.
    Completed {
        /// The id from [`Connection::start_call`].
        id: u32,
        /// Raw JSON result, or the raw error object.
        outcome: Result<&'a str, &'a str>,
    },
    /// Nothing to do (heartbeat answers, output, late replies).
    Nothing,
}

/// What a timeout means for the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing is due.
    Nothing,
    /// Send a heartbeat call with this id.
    Heartbeat(u32),
    /// The call reserved under this id timed out.
    CallTimedOut(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingAuth { deadline: Instant },
    Ready,
}

/// A call in flight: its id and deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    id: u32,
    deadline: Instant,
}

/// The connection already has a call in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a call is already in flight on this connection; wait for its result")]
pub struct Busy;

/// Device side of one connection. See the module docs for the contract.
#[derive(Debug)]
pub struct Connection {
    timing: Timing,
    state: State,
    next_id: u32,
    next_heartbeat: Instant,
    heartbeat: Option<Pending>,
    call: Option<Pending>,
}

impl Connection {
    /// A connection whose key message was sent at `now`.
    pub fn new(timing: Timing, now: Instant) -> Self {
        Self {
            timing,
            state: State::AwaitingAuth {
                deadline: now + timing.auth_timeout,
            },
            next_id: 0,
            next_heartbeat: now + timing.heartbeat_interval,
            heartbeat: None,
            call: None,
        }
    }

    /// Whether the key was accepted.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Handles one received text frame.
    pub fn handle_text<'a>(&mut self, now: Instant, text: &'a str) -> Result<Event<'a>, ConnError> {
        let incoming = message::decode(text).map_err(ConnError::Decode)?;
        match (incoming, self.state) {
            (Incoming::Fatal(raw), State::AwaitingAuth { .. }) => {
                Err(ConnError::Refused(ShortText::from_json(raw)))
            }
            (Incoming::Fatal(raw), State::Ready) => {
                Err(ConnError::Ended(ShortText::from_json(raw)))
            }
            (Incoming::AuthOk, State::AwaitingAuth { .. }) => {
                self.state = State::Ready;
                self.next_heartbeat = now + self.timing.heartbeat_interval;
                Ok(Event::Authenticated)
            }
            (_, State::AwaitingAuth { .. }) => Err(ConnError::Unexpected("another message")),
            (Incoming::Call(call), State::Ready) => Ok(Event::Call(call)),
            (Incoming::Reply { id, outcome }, State::Ready) => {
                if self.heartbeat.is_some_and(|h| h.id == id) {
                    self.heartbeat = None;
                    return Ok(Event::Nothing);
                }
                if self.call.is_some_and(|c| c.id == id) {
                    self.call = None;
                    return Ok(Event::Completed { id, outcome });
                }
                Ok(Event::Nothing) // late: that call already timed out
            }
            (Incoming::AuthOk | Incoming::Ignored, State::Ready) => Ok(Event::Nothing),
        }
    }

    /// Reserves an id for a call made now with `timeout`; the driver then
    /// writes it with [`message::call`].
    pub fn start_call(&mut self, now: Instant, timeout: Duration) -> Result<u32, Busy> {
        if self.call.is_some() {
            return Err(Busy);
        }
        let id = self.fresh_id();
        self.call = Some(Pending {
            id,
            deadline: now + timeout,
        });
        Ok(id)
    }

    fn fresh_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// When [`Connection::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Instant {
        let base = match self.state {
            State::AwaitingAuth { deadline } => deadline,
            State::Ready => self.next_heartbeat,
        };
        [self.heartbeat, self.call]
            .into_iter()
            .flatten()
            .map(|p| p.deadline)
            .fold(base, Instant::min)
    }

    /// Fires whatever is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<Due, ConnError> {
        if let State::AwaitingAuth { deadline } = self.state {
            return if now >= deadline {
                Err(ConnError::AuthTimeout)
            } else {
                Ok(Due::Nothing)
            };
        }
        if self.heartbeat.is_some_and(|h| now >= h.deadline) {
            return Err(ConnError::HeartbeatLost);
        }
        if let Some(call) = self.call.filter(|c| now >= c.deadline) {
            self.call = None;
            return Ok(Due::CallTimedOut(call.id));
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.timing.heartbeat_interval;
            if self.heartbeat.is_none() {
                let id = self.fresh_id();
                self.heartbeat = Some(Pending {
                    id,
                    deadline: now + self.timing.heartbeat_timeout,
                });
                return Ok(Due::Heartbeat(id));
            }
        }
        Ok(Due::Nothing)
    }
}

#[cfg(test)]
mod tests {
    use std::string::ToString as _;

    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn ready() -> Connection {
        let mut c = Connection::new(Timing::default(), at(0));
        assert_eq!(
            c.handle_text(at(5), r#"{"auth":"OK"}"#),
            Ok(Event::Authenticated)
        );
        c
    }

    #[test]
    fn nothing_but_the_verdict_is_accepted_before_auth() {
        let mut c = Connection::new(Timing::default(), at(0));
        assert_eq!(
            c.handle_text(at(1), r#"{"type":"CALL","id":"s","command":"x","args":[]}"#),
            Err(ConnError::Unexpected("another message"))
        );
        let mut c = Connection::new(Timing::default(), at(0));
        let e = c
            .handle_text(at(1), r#"{"error":"Incorrect uplink key"}"#)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the server refused the connection: Incorrect uplink key"
        );
        let mut c = Connection::new(Timing::default(), at(0));
        assert_eq!(c.poll_timeout(), at(10_000));
        assert_eq!(c.handle_timeout(at(10_000)), Err(ConnError::AuthTimeout));
    }

    #[test]
    fn heartbeats_are_sent_and_a_missing_answer_kills_the_link() {
        let mut c = ready();
        assert_eq!(c.poll_timeout(), at(10_005));
        let Ok(Due::Heartbeat(id)) = c.handle_timeout(at(10_005)) else {
            panic!("heartbeat due")
        };
        let answer = [
            r#"{"id":"d-"#,
            itoa(id).as_str(),
            r#"","response":"keep-alive"}"#,
        ]
        .concat();
        assert_eq!(c.handle_text(at(10_050), &answer), Ok(Event::Nothing));
        let Ok(Due::Heartbeat(_)) = c.handle_timeout(at(20_005)) else {
            panic!("second heartbeat due")
        };
        assert_eq!(c.poll_timeout(), at(30_005));
        assert_eq!(c.handle_timeout(at(30_005)), Ok(Due::Nothing));
        assert_eq!(c.handle_timeout(at(40_005)), Err(ConnError::HeartbeatLost));
    }

    #[test]
    fn one_call_at_a_time_with_a_deadline() {
        let mut c = ready();
        let id = c.start_call(at(100), Duration::from_secs(1)).unwrap();
        assert_eq!(c.start_call(at(100), Duration::from_secs(1)), Err(Busy));
        assert_eq!(c.poll_timeout(), at(1_100));
        assert_eq!(c.handle_timeout(at(1_100)), Ok(Due::CallTimedOut(id)));
        let late = [r#"{"id":"d-"#, itoa(id).as_str(), r#"","response":1}"#].concat();
        assert_eq!(c.handle_text(at(1_200), &late), Ok(Event::Nothing));
        let id = c.start_call(at(2_000), Duration::from_secs(1)).unwrap();
        let reply = [
            r#"{"id":"d-"#,
            itoa(id).as_str(),
            r#"","error":{"message":"no"}}"#,
        ]
        .concat();
        assert_eq!(
            c.handle_text(at(2_100), &reply),
            Ok(Event::Completed {
                id,
                outcome: Err(r#"{"message":"no"}"#)
            })
        );
    }

    fn itoa(n: u32) -> std::string::String {
        std::format!("{n}")
    }
}
