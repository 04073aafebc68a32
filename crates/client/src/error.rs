//! One error type per operation: [`ConnectError`] for connecting,
//! [`CallError`] for calls, [`HandlerError`] for what a registered function
//! returns to its caller.

use std::fmt;

use ferrolink_proto::error_type;
use serde_json::Value;

/// What kind of connection failure this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// The server does not know the key (`Incorrect uplink key`).
    BadKey,
    /// The key was revoked.
    RevokedKey,
    /// The server refused the protocol version.
    VersionMismatch,
    /// The server refused the connection for another reason (its text says why).
    Refused,
    /// The URL is not a `ws://` or `wss://` URL.
    InvalidUrl,
    /// The TCP/websocket connection could not be made or broke during the handshake.
    Transport,
    /// The server's certificate was refused (not pinned, wrong name,
    /// expired, revoked) or the clock cannot be trusted; the message says
    /// which check failed.
    Tls,
    /// No verdict on the key in time.
    Timeout,
    /// The server sent something that is not the protocol.
    Protocol,
}

/// Connecting to the server failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConnectError {
    kind: ConnectErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ConnectError {
    pub(crate) fn new(kind: ConnectErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn with_source(
        kind: ConnectErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Classifies a fatal error text sent by the server during the handshake.
    pub(crate) fn from_fatal(text: &str) -> Self {
        let kind = if text == ferrolink_proto::server_session::INCORRECT_KEY {
            ConnectErrorKind::BadKey
        } else if text.contains("was revoked") {
            ConnectErrorKind::RevokedKey
        } else if text.contains("outdated version") {
            ConnectErrorKind::VersionMismatch
        } else {
            ConnectErrorKind::Refused
        };
        let message = match kind {
            ConnectErrorKind::BadKey => {
                "the server does not know this uplink key (\"Incorrect uplink key\"); check the key, or create one with `ferrolink key create`".to_owned()
            }
            _ => format!("the server refused the connection: {text}"),
        };
        Self::new(kind, message)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ConnectErrorKind {
        self.kind
    }

    /// Whether trying again with the same settings can help (it cannot for a
    /// bad or revoked key or a version the server refuses). Certificate
    /// refusals are retried with backoff: a server may fix its certificate,
    /// and a device's clock may get set.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ConnectErrorKind::Transport
                | ConnectErrorKind::Timeout
                | ConnectErrorKind::Protocol
                | ConnectErrorKind::Tls
        )
    }
}

/// What kind of call failure this is; branch on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallErrorKind {
    /// No function of that name is registered (`anvil.server.NoServerFunctionError`).
    NoSuchFunction,
    /// The provider disconnected before answering (`anvil.server.UplinkDisconnectedError`).
    ProviderDisconnected,
    /// No answer before the deadline (the server's or this call's own).
    Timeout,
    /// The function raised an error; see [`CallError::remote`].
    Remote,
    /// Too many calls in flight (`anvil.server.QuotaExceededError`, or the local bound).
    QuotaExceeded,
    /// The key's privilege does not allow this call (`anvil.server.PermissionDenied`).
    PermissionDenied,
    /// The client is not connected (reconnecting, refused, or disconnected).
    NotConnected,
    /// The connection was lost while the call was in flight.
    ConnectionLost,
    /// The arguments could not be encoded.
    Encode,
    /// The result could not be decoded into the requested type.
    Decode,
}

/// An error object sent by the other side, with its type string kept so
/// callers can branch on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    /// The error type (`"ValueError"`, `"anvil.server.TimeoutError"`, …), if given.
    pub error_type: Option<String>,
    /// The message.
    pub message: String,
    /// Stack frames as `(file, line)`, innermost first.
    pub trace: Vec<(String, i64)>,
}

impl RemoteError {
    /// Reads an error object (`{"type":…,"message":…,"trace":…}`).
    pub(crate) fn parse(raw: &str) -> Self {
        let v: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
        let trace = v["trace"]
            .as_array()
            .map(|frames| {
                frames
                    .iter()
                    .filter_map(|f| Some((f.get(0)?.as_str()?.to_owned(), f.get(1)?.as_i64()?)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            error_type: v["type"].as_str().map(str::to_owned),
            message: v["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| raw.to_owned()),
            trace,
        }
    }
}

/// A call failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    kind: CallErrorKind,
    message: String,
    remote: Option<RemoteError>,
}

impl CallError {
    pub(crate) fn new(kind: CallErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            remote: None,
        }
    }

    /// Builds the error for an error object received for call `name`.
    pub(crate) fn from_remote(name: &str, remote: RemoteError) -> Self {
        let kind = match remote.error_type.as_deref() {
            Some(error_type::NO_SERVER_FUNCTION) => CallErrorKind::NoSuchFunction,
            Some(error_type::UPLINK_DISCONNECTED) => CallErrorKind::ProviderDisconnected,
            Some(error_type::TIMEOUT) => CallErrorKind::Timeout,
            Some(error_type::QUOTA_EXCEEDED) => CallErrorKind::QuotaExceeded,
            Some(error_type::PERMISSION_DENIED) => CallErrorKind::PermissionDenied,
            _ => CallErrorKind::Remote,
        };
        let message = match &remote.error_type {
            Some(t) if kind == CallErrorKind::Remote => format!("{name}: {t}: {}", remote.message),
            _ => format!("{name}: {}", remote.message),
        };
        Self {
            kind,
            message,
            remote: Some(remote),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> CallErrorKind {
        self.kind
    }

    /// The error object sent by the server or the function, if there was one.
    pub fn remote(&self) -> Option<&RemoteError> {
        self.remote.as_ref()
    }

    /// The remote error type string, if any (`"ValueError"`).
    pub fn remote_type(&self) -> Option<&str> {
        self.remote.as_ref()?.error_type.as_deref()
    }
}

/// What a registered function returns when it fails; the caller receives an
/// error object with this type and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    error_type: String,
    message: String,
}

impl HandlerError {
    /// An error with an explicit type string. Types the official clients
    /// know (`"anvil.server.NoServerFunctionError"`, …) become those
    /// exception classes on the Python side; others arrive with the type kept.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error_type: error_type.into(),
            message: message.into(),
        }
    }

    /// An error with the generic type `"Exception"`.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self::new("Exception", message.to_string())
    }

    /// The type string.
    pub fn error_type(&self) -> &str {
        &self.error_type
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

impl std::error::Error for HandlerError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_types_map_to_kinds_and_others_keep_their_type() {
        let e = CallError::from_remote(
            "f",
            RemoteError::parse(r#"{"type":"anvil.server.NoServerFunctionError","message":"nope"}"#),
        );
        assert_eq!(e.kind(), CallErrorKind::NoSuchFunction);
        let e = CallError::from_remote(
            "f",
            RemoteError::parse(r#"{"type":"ValueError","message":"bad","trace":[["a.py",3]]}"#),
        );
        assert_eq!(e.kind(), CallErrorKind::Remote);
        assert_eq!(e.remote_type(), Some("ValueError"));
        assert_eq!(e.remote().unwrap().trace, vec![("a.py".to_owned(), 3)]);
        assert_eq!(e.to_string(), "f: ValueError: bad");
        // A Pico W sends only a message.
        let e = CallError::from_remote("f", RemoteError::parse(r#"{"message":"Unauthorised"}"#));
        assert_eq!(e.kind(), CallErrorKind::Remote);
        assert_eq!(e.remote_type(), None);
    }

    #[test]
    fn fatal_texts_are_classified() {
        assert_eq!(
            ConnectError::from_fatal("Incorrect uplink key").kind(),
            ConnectErrorKind::BadKey
        );
        assert_eq!(
            ConnectError::from_fatal("uplink key abc was revoked on 2026-01-01; create a new key")
                .kind(),
            ConnectErrorKind::RevokedKey
        );
        assert!(!ConnectError::from_fatal("Incorrect uplink key").is_retryable());
    }
}
