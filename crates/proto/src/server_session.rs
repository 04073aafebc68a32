//! The server side of one uplink connection, sans IO.
//!
//! [`ServerSession`] checks the order and shape of what a client sends:
//! the key message first, nothing else until the driver has decided on the
//! key, registrations only from server-privilege keys and within bounds, and
//! an idle deadline. Routing between connections is the driver's business.
//!
//! # Call contract
//!
//! - Feed every text frame to [`ServerSession::handle_text`] and every binary
//!   frame to [`ServerSession::handle_binary`], in arrival order.
//! - After [`Inbound::Hello`], answer with [`ServerSession::accept`] or
//!   [`ServerSession::reject`] *before* feeding the next frame; frames that
//!   arrived meanwhile wait in the driver (PY sends `REGISTER`s right after the
//!   key without waiting for the verdict).
//! - After every input re-read [`ServerSession::poll_timeout`] and call
//!   [`ServerSession::handle_timeout`] when it passes.
//! - A [`Refusal`] tells the driver what to say to the peer
//!   ([`Refusal::action`]); after [`PeerAction::Close`] the session is closed.

use alloc::borrow::Cow;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use core::time::Duration;

use crate::codec::{DecodeError, DecodeLimits, decode};
use crate::message::Privilege;
use crate::message::{Call, Hello, Message, Reply, WireStr, error_type};
use crate::time::Instant;

/// The fatal text the official clients know for a version below 5.
pub const OUTDATED_VERSION: &str = "You are using an outdated version of the uplink library. Please use 'pip install --upgrade anvil-uplink' to get a new one.";
/// The fatal text for an unknown key, exactly as the official clients expect.
pub const INCORRECT_KEY: &str = "Incorrect uplink key";
/// The fatal text for `REGISTER` from a client-privilege key.
pub const CLIENT_CANNOT_REGISTER: &str =
    "Cannot register @anvil.server.callable functions from an unprivileged (client) uplink.";

/// Limits and timeouts of a server session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// How long a new connection may take to send its key.
    pub auth_timeout: Duration,
    /// How long an authenticated connection may stay silent (clients send a
    /// heartbeat every 10 s, so the default allows three to go missing).
    pub idle_timeout: Duration,
    /// Most `REGISTER`s one connection may send.
    pub max_registrations: usize,
    /// Decoding limits.
    pub decode: DecodeLimits,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            auth_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(45),
            max_registrations: 1024,
            decode: DecodeLimits::default(),
        }
    }
}

/// Proof that the key was accepted. Only [`ServerSession::accept`] makes one,
/// so a session cannot be `Ready` without it.
#[derive(Debug)]
struct Authenticated(());

#[derive(Debug)]
enum State {
    AwaitingKey,
    AwaitingVerdict,
    Ready {
        privilege: Privilege,
        _auth: Authenticated,
    },
    Closed,
}

/// What a frame asks the driver to do.
#[derive(Debug)]
pub enum Inbound<'a> {
    /// The client presented its key: look it up, then call `accept` or `reject`.
    Hello(Hello<'a>),
    /// Register `name` for this connection.
    Register {
        /// The function name.
        name: Cow<'a, str>,
    },
    /// Route or answer a call.
    Call(Call<'a>),
    /// A reply to a call the server sent this connection.
    Reply(Reply<'a>),
    /// A media chunk's header: the binary frame that follows carries the
    /// chunk's bytes.
    ChunkHeader {
        /// The id of the call whose `objects` declared the media.
        request_id: String,
        /// The media object's id.
        media_id: String,
        /// Whether it is the media's last chunk.
        last: bool,
    },
    /// Nothing to do (binary media data, output, media errors).
    Nothing,
}

/// What to tell the peer about a refused frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAction {
    /// Answer the message with `{"id":…,"error":{…}}` and carry on.
    ReplyError {
        /// The literal id to answer.
        id: String,
        /// Error type string.
        error_type: &'static str,
        /// What was wrong and what to do.
        message: String,
    },
    /// Send `{"error": text}` and close the connection.
    Close {
        /// The fatal error text.
        text: String,
    },
}

/// A frame the session refused, with what the peer is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct Refusal {
    /// Why.
    pub kind: RefusalKind,
    /// What the peer is told.
    pub action: PeerAction,
}

/// Why a frame was refused, sorted by who must act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RefusalKind {
    /// The frame could not be decoded.
    #[error(transparent)]
    Malformed(DecodeError),
    /// The first message was not a key message.
    #[error("expected the key message {{\"key\":…,\"v\":…}} first, got {got}")]
    ExpectedKey {
        /// What arrived instead.
        got: &'static str,
    },
    /// The client's protocol version is missing or below 5.
    #[error("protocol version {} is not supported (need 5 or later)", version.as_deref().unwrap_or("(missing)"))]
    OutdatedVersion {
        /// The version sent, if numeric, as text.
        version: Option<String>,
    },
    /// A client-privilege key tried to register.
    #[error("a client-privilege key may not register functions")]
    ClientRegister,
    /// Too many registrations on one connection.
    #[error("more than {limit} registrations on one connection")]
    TooManyRegistrations {
        /// The limit.
        limit: usize,
    },
    /// Live-object backends are not supported.
    #[error("live-object backends are not supported")]
    LiveObjectBackend,
    /// A message kind the client may not send.
    #[error("unexpected {got} from a client")]
    Unexpected {
        /// The kind received.
        got: String,
    },
    /// A frame arrived while the key was still being decided (driver bug).
    #[error("frame fed before the key verdict")]
    VerdictPending,
    /// A frame arrived after the session closed (driver bug).
    #[error("frame fed after close")]
    Closed,
}

/// Why the session timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionTimeout {
    /// No key message in time.
    NoKey,
    /// No frame at all for the idle timeout.
    Idle,
}

/// Server side of one uplink connection. See the module docs for the contract.
#[derive(Debug)]
pub struct ServerSession {
    state: State,
    config: SessionConfig,
    started: Instant,
    last_rx: Instant,
    registrations: usize,
    version: u32,
}

impl ServerSession {
    /// A session for a connection that opened at `now`.
    pub fn new(config: SessionConfig, now: Instant) -> Self {
        Self {
            state: State::AwaitingKey,
            config,
            started: now,
            last_rx: now,
            registrations: 0,
            version: 0,
        }
    }

    /// A session whose peer its transport already authenticated (a browser
    /// session carrying a login cookie): no key message is expected, and
    /// frames are handled with `privilege` from the first one on.
    pub fn pre_authenticated(
        config: SessionConfig,
        now: Instant,
        privilege: Privilege,
        version: u32,
    ) -> Self {
        Self {
            state: State::Ready {
                privilege,
                _auth: Authenticated(()),
            },
            config,
            started: now,
            last_rx: now,
            registrations: 0,
            version,
        }
    }

    /// The privilege of the accepted key, once authenticated.
    pub fn privilege(&self) -> Option<Privilege> {
        match self.state {
            State::Ready { privilege, .. } => Some(privilege),
            _ => None,
        }
    }

    /// The client's protocol version (0 before the key message).
    pub fn protocol_version(&self) -> u32 {
        self.version
    }

    /// Whether the session has closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Handles one text frame.
    pub fn handle_text<'a>(
        &mut self,
        now: Instant,
        text: &'a str,
    ) -> Result<Inbound<'a>, Box<Refusal>> {
        self.last_rx = now;
        let result = self.classify(text);
        if let Err(refusal) = &result
            && let PeerAction::Close { .. } = refusal.action
        {
            self.state = State::Closed;
        }
        result
    }

    fn classify<'a>(&mut self, text: &'a str) -> Result<Inbound<'a>, Box<Refusal>> {
        let privilege = match self.state {
            State::AwaitingKey => return self.classify_first(text),
            State::AwaitingVerdict => return Err(internal(RefusalKind::VerdictPending)),
            State::Closed => return Err(internal(RefusalKind::Closed)),
            State::Ready { privilege, .. } => privilege,
        };
        let message = decode(text, &self.config.decode).map_err(|e| {
            let action = match &e.id {
                Some(id) => PeerAction::ReplyError {
                    id: id.clone(),
                    error_type: error_type::SERIALIZATION,
                    message: e.to_string(),
                },
                None => PeerAction::Close {
                    text: format!("ferrolink: {e}"),
                },
            };
            Box::new(Refusal {
                kind: RefusalKind::Malformed(e),
                action,
            })
        })?;
        match message {
            Message::Call(call) => Ok(Inbound::Call(call)),
            Message::Reply(reply) => Ok(Inbound::Reply(reply)),
            Message::Register { name } => {
                if privilege == Privilege::Client {
                    return Err(close(RefusalKind::ClientRegister, CLIENT_CANNOT_REGISTER.to_string()));
                }
                if self.registrations >= self.config.max_registrations {
                    let limit = self.config.max_registrations;
                    return Err(close(
                        RefusalKind::TooManyRegistrations { limit },
                        format!("ferrolink: more than {limit} functions registered on one connection; register fewer names (a regular expression can cover many)"),
                    ));
                }
                self.registrations += 1;
                Ok(Inbound::Register { name })
            }
            Message::RegisterLiveObjectBackend => Err(close(
                RefusalKind::LiveObjectBackend,
                "Cannot register live-object backends from this uplink: ferrolink does not support live objects.".to_string(),
            )),
            Message::ChunkHeader {
                request_id: Some(request_id),
                media_id: Some(media_id),
                last_chunk,
            } => Ok(Inbound::ChunkHeader {
                request_id: request_id.value().into_owned(),
                media_id: media_id.value().into_owned(),
                last: last_chunk,
            }),
            Message::Output { .. } | Message::ChunkHeader { .. } | Message::MediaError { .. } => {
                Ok(Inbound::Nothing)
            }
            Message::Unknown { kind, id } => {
                let got = format!("message type \"{kind}\"");
                Err(refuse_unexpected(got, id))
            }
            other @ (Message::Hello(_)
            | Message::AuthOk(_)
            | Message::Fatal { .. }
            | Message::Event { .. }) => Err(refuse_unexpected(other.kind().to_string(), None)),
        }
    }

    fn classify_first<'a>(&mut self, text: &'a str) -> Result<Inbound<'a>, Box<Refusal>> {
        let message = decode(text, &self.config.decode).map_err(|e| {
            close(
                RefusalKind::Malformed(e.clone()),
                format!("ferrolink: the first message must be {{\"key\": \"<uplink key>\", \"v\": 8}}; {e}"),
            )
        })?;
        let Message::Hello(hello) = message else {
            let got = message.kind();
            return Err(close(
                RefusalKind::ExpectedKey { got },
                format!(
                    "ferrolink: the first message must be {{\"key\": \"<uplink key>\", \"v\": 8}}, got a {got}"
                ),
            ));
        };
        match hello.version {
            Some(v) if v >= 5.0 => {
                // Versions are small integers; clamp anything odd into range.
                self.version = if v > 1_000.0 { 1_000 } else { v as u32 };
            }
            version => {
                return Err(close(
                    RefusalKind::OutdatedVersion {
                        version: version.map(|v| format!("{v}")),
                    },
                    OUTDATED_VERSION.to_string(),
                ));
            }
        }
        self.state = State::AwaitingVerdict;
        Ok(Inbound::Hello(hello))
    }

    /// Handles one binary frame (media chunk data, which ferrolink discards).
    pub fn handle_binary(&mut self, now: Instant) -> Inbound<'static> {
        self.last_rx = now;
        Inbound::Nothing
    }

    /// The key was accepted with `privilege`.
    pub fn accept(&mut self, privilege: Privilege) {
        if matches!(self.state, State::AwaitingVerdict) {
            self.state = State::Ready {
                privilege,
                _auth: Authenticated(()),
            };
        }
    }

    /// The key was refused; the driver sends [`INCORRECT_KEY`] (or its own
    /// text) as a fatal error and closes.
    pub fn reject(&mut self) {
        self.state = State::Closed;
    }

    /// When [`ServerSession::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitingKey | State::AwaitingVerdict => {
                Some(self.started + self.config.auth_timeout)
            }
            State::Ready { .. } => Some(self.last_rx + self.config.idle_timeout),
            State::Closed => None,
        }
    }

    /// Closes the session if its deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<SessionTimeout> {
        let deadline = self.poll_timeout()?;
        if now < deadline {
            return None;
        }
        let why = match self.state {
            State::Ready { .. } => SessionTimeout::Idle,
            _ => SessionTimeout::NoKey,
        };
        self.state = State::Closed;
        Some(why)
    }
}

fn close(kind: RefusalKind, text: String) -> Box<Refusal> {
    Box::new(Refusal {
        kind,
        action: PeerAction::Close { text },
    })
}

fn internal(kind: RefusalKind) -> Box<Refusal> {
    let text = format!("ferrolink: internal error ({kind})");
    close(kind, text)
}

fn refuse_unexpected(got: String, id: Option<WireStr<'_>>) -> Box<Refusal> {
    let message =
        format!("ferrolink does not accept {got} from an uplink; send CALL, REGISTER or replies");
    match id {
        Some(id) => Box::new(Refusal {
            action: PeerAction::ReplyError {
                id: id.literal().to_string(),
                error_type: error_type::INTERNAL,
                message,
            },
            kind: RefusalKind::Unexpected { got },
        }),
        None => close(
            RefusalKind::Unexpected { got },
            format!("ferrolink: {message}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn ready(privilege: Privilege) -> ServerSession {
        let mut s = ServerSession::new(SessionConfig::default(), t(0));
        assert!(matches!(
            s.handle_text(t(1), r#"{"key":"k","v":8}"#),
            Ok(Inbound::Hello(_))
        ));
        s.accept(privilege);
        s
    }

    #[test]
    fn version_below_five_is_refused_with_the_official_text() {
        let mut s = ServerSession::new(SessionConfig::default(), t(0));
        let err = s.handle_text(t(1), r#"{"key":"k","v":4}"#).unwrap_err();
        assert_eq!(
            err.action,
            PeerAction::Close {
                text: OUTDATED_VERSION.into()
            }
        );
        assert!(s.is_closed());
    }

    #[test]
    fn missing_version_is_refused_before_the_key_is_looked_at() {
        let mut s = ServerSession::new(SessionConfig::default(), t(0));
        let err = s.handle_text(t(1), r#"{"key":"k"}"#).unwrap_err();
        assert!(matches!(
            err.kind,
            RefusalKind::OutdatedVersion { version: None }
        ));
    }

    #[test]
    fn a_call_before_the_key_closes_with_a_clear_reason() {
        let mut s = ServerSession::new(SessionConfig::default(), t(0));
        let err = s
            .handle_text(t(1), r#"{"type":"CALL","id":"1","command":"f"}"#)
            .unwrap_err();
        let PeerAction::Close { text } = err.action else {
            panic!("must close")
        };
        assert!(text.contains("first message must be"), "{text}");
    }

    #[test]
    fn client_keys_cannot_register() {
        let mut s = ready(Privilege::Client);
        let err = s
            .handle_text(t(2), r#"{"type":"REGISTER","name":"f"}"#)
            .unwrap_err();
        assert_eq!(err.kind, RefusalKind::ClientRegister);
        assert!(s.is_closed());
    }

    #[test]
    fn registrations_are_bounded() {
        let mut s = ServerSession::new(
            SessionConfig {
                max_registrations: 2,
                ..SessionConfig::default()
            },
            t(0),
        );
        s.handle_text(t(1), r#"{"key":"k","v":8}"#).unwrap();
        s.accept(Privilege::Server);
        for _ in 0..2 {
            s.handle_text(t(2), r#"{"type":"REGISTER","name":"f"}"#)
                .unwrap();
        }
        let err = s
            .handle_text(t(3), r#"{"type":"REGISTER","name":"g"}"#)
            .unwrap_err();
        assert_eq!(err.kind, RefusalKind::TooManyRegistrations { limit: 2 });
    }

    #[test]
    fn a_malformed_call_with_an_id_gets_an_error_reply_and_the_session_lives() {
        let mut s = ready(Privilege::Server);
        let err = s
            .handle_text(t(2), r#"{"type":"CALL","id":"c1","command":5}"#)
            .unwrap_err();
        assert!(matches!(err.action, PeerAction::ReplyError { ref id, .. } if id == "\"c1\""));
        assert!(!s.is_closed());
        assert!(matches!(
            s.handle_text(t(3), r#"{"type":"CALL","id":"c2","command":"f"}"#),
            Ok(Inbound::Call(_))
        ));
    }

    #[test]
    fn unknown_type_without_id_closes() {
        let mut s = ready(Privilege::Server);
        let err = s.handle_text(t(2), r#"{"type":"BOGUS"}"#).unwrap_err();
        assert!(matches!(err.action, PeerAction::Close { .. }));
    }

    #[test]
    fn idle_deadline_moves_with_traffic() {
        let mut s = ready(Privilege::Server);
        assert_eq!(s.poll_timeout(), Some(t(1) + Duration::from_secs(45)));
        s.handle_binary(t(10_000));
        assert_eq!(s.handle_timeout(t(45_001)), None);
        assert_eq!(s.handle_timeout(t(55_000)), Some(SessionTimeout::Idle));
        assert!(s.is_closed());
    }

    #[test]
    fn silent_new_connections_time_out() {
        let mut s = ServerSession::new(SessionConfig::default(), t(0));
        assert_eq!(s.handle_timeout(t(9_999)), None);
        assert_eq!(s.handle_timeout(t(10_000)), Some(SessionTimeout::NoKey));
    }
}
