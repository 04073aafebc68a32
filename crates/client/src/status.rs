//! Where a client's connection stands, as its users and its errors say it.

use crate::error::ConnectErrorKind;

/// Where the connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Authenticated; calls flow.
    Connected,
    /// The connection was lost; trying again. Calls fail fast meanwhile.
    Reconnecting {
        /// Attempts made so far in this outage.
        attempt: u32,
    },
    /// The server refused the key (or the version) and the client gave up:
    /// retrying could not help. Calls fail with the reason.
    Failed {
        /// Why.
        kind: ConnectErrorKind,
        /// The server's words.
        reason: String,
    },
    /// [`Client::disconnect`](crate::Client::disconnect) was called (or reconnecting is off and the
    /// connection was lost).
    Closed,
}

pub(crate) fn status_text(status: &Status) -> String {
    match status {
        Status::Connected => "the connection was lost".to_owned(),
        Status::Reconnecting { attempt } => {
            format!("not connected: reconnecting to the server (attempt {attempt})")
        }
        Status::Failed { reason, .. } => format!("not connected: {reason}"),
        Status::Closed => "not connected: the client was disconnected".to_owned(),
    }
}
