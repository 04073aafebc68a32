//! The protocol messages a device reads and writes, heap-free: decoding
//! into borrowed views of the received text, encoding into a [`Writer`].
//!
//! Field meanings and defaults follow `ferrolink_proto::codec` (the
//! heap-using model the server and tokio client share); the shared vectors
//! in `tests/vectors/decode.json` are replayed against this decoder
//! (`crates/device/tests/it/vectors.rs`).

use ferrolink_proto::wire;

use crate::json::{self, JsonError, Writer};

/// Prefix of the ids of calls this device makes (`d-<n>`).
pub const CALL_ID_PREFIX: &str = "d-";

/// A received message, borrowing the frame text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// `{"auth":"OK",…}`: the key was accepted.
    AuthOk,
    /// A fatal error (`{"error":…}` without an id, or an `auth` other than
    /// `"OK"`); the server closes after it. The raw JSON value.
    Fatal(&'a str),
    /// A call to one of this device's functions.
    Call(CallIn<'a>),
    /// A reply to a call this device made (`id` is `"d-<n>"`).
    Reply {
        /// The number in the call's id.
        id: u32,
        /// Raw JSON result, or the raw error object.
        outcome: Result<&'a str, &'a str>,
    },
    /// Anything else (output, events, replies to ids not ours, unknown types).
    Ignored,
}

/// A call the server sent, as raw JSON slices of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallIn<'a> {
    /// The id literal (quotes included), echoed in the reply.
    pub id: &'a str,
    /// The command literal (quotes included).
    pub command: &'a str,
    /// Raw JSON array.
    pub args: &'a str,
    /// Raw JSON object.
    pub kwargs: &'a str,
    /// Whether the call carries non-JSON values (`objects` non-empty),
    /// which a device cannot receive.
    pub has_objects: bool,
}

/// Why a frame is not a message this device understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not a JSON object.
    #[error("the server sent a frame that is not a JSON object: {0}")]
    Json(#[source] JsonError),
    /// A field is longer than the protocol's limit
    /// (`ferrolink_proto::wire::MAX_ID_LEN`, `MAX_NAME_LEN`).
    #[error("the server sent a message whose \"{0}\" is longer than the protocol allows")]
    TooLong(&'static str),
    /// A field this client reads appears twice (which one counts is
    /// ambiguous, so the frame is refused, as `ferrolink_proto` does).
    #[error("the server sent a message with the field \"{0}\" twice")]
    Duplicate(&'static str),
    /// A field the message kind needs is missing or has the wrong type.
    #[error("the server sent a {message} whose \"{field}\" is missing or not {expected}")]
    Field {
        /// The message kind.
        message: &'static str,
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
}

fn is_string(raw: &str) -> bool {
    raw.starts_with('"')
}

/// The fields [`decode`] reads.
const READ: [&str; 9] = [
    "type", "id", "command", "args", "kwargs", "objects", "auth", "error", "response",
];

/// Decodes one text frame. Never panics; linear in the frame length.
pub fn decode(text: &str) -> Result<Incoming<'_>, DecodeError> {
    let m = json::object(text).map_err(DecodeError::Json)?;
    let mut seen = [false; READ.len()];
    for (key, _) in m.clone() {
        let Some(i) = READ.iter().position(|f| json::plain_str(key) == Some(f)) else {
            continue;
        };
        if seen[i] {
            return Err(DecodeError::Duplicate(READ[i]));
        }
        seen[i] = true;
    }
    if let Some(kind) = m.get("type") {
        if json::plain_str(kind) != Some("CALL") {
            return Ok(Incoming::Ignored);
        }
        let field = |field, expected| DecodeError::Field {
            message: "CALL",
            field,
            expected,
        };
        let id = m
            .get("id")
            .filter(|v| is_string(v))
            .ok_or(field("id", "a string"))?;
        let command = m
            .get("command")
            .filter(|v| is_string(v))
            .ok_or(field("command", "a string"))?;
        // The same limits as `ferrolink_proto::codec`.
        if id.len() > wire::MAX_ID_LEN {
            return Err(DecodeError::TooLong("id"));
        }
        if command.len() > wire::MAX_NAME_LEN {
            return Err(DecodeError::TooLong("command"));
        }
        // Missing arguments default to none, as in `ferrolink_proto::codec`.
        let args = match m.get("args") {
            None => "[]",
            Some(v) if v.starts_with('[') => v,
            Some(_) => return Err(field("args", "an array")),
        };
        let kwargs = match m.get("kwargs") {
            None | Some("null") => "{}",
            Some(v) if v.starts_with('{') => v,
            Some(_) => return Err(field("kwargs", "an object")),
        };
        let has_objects = m
            .get("objects")
            .and_then(|o| json::array(o).ok())
            .is_some_and(|mut e| e.next().is_some());
        return Ok(Incoming::Call(CallIn {
            id,
            command,
            args,
            kwargs,
            has_objects,
        }));
    }
    if let Some(auth) = m.get("auth") {
        return Ok(if json::plain_str(auth) == Some(wire::AUTH_OK) {
            Incoming::AuthOk
        } else {
            Incoming::Fatal(auth)
        });
    }
    let id = m.get("id");
    if let (Some(id), Some(outcome)) = (
        id,
        m.get("response")
            .map(Ok)
            .or_else(|| m.get("error").map(Err)),
    ) {
        let ours = json::plain_str(id)
            .and_then(|v| v.strip_prefix(CALL_ID_PREFIX))
            .and_then(|n| n.parse().ok());
        return Ok(match ours {
            Some(id) => Incoming::Reply { id, outcome },
            None => Incoming::Ignored,
        });
    }
    if let (None, Some(error)) = (id, m.get("error")) {
        return Ok(Incoming::Fatal(error));
    }
    Ok(Incoming::Ignored)
}

/// `{"key":K,"v":7,"device":"PICO_W"}`-style first message.
pub fn hello(w: &mut Writer<'_>, key: &str, version: u32, device: &str) -> Result<(), JsonError> {
    use core::fmt::Write as _;
    w.raw("{\"key\":")?;
    w.string(key)?;
    write!(w, ",\"v\":{version},\"device\":").map_err(|_| JsonError::Full)?;
    w.string(device)?;
    w.raw("}")
}

/// `{"type":"REGISTER","name":N}`.
pub fn register(w: &mut Writer<'_>, name: &str) -> Result<(), JsonError> {
    w.raw("{\"type\":\"REGISTER\",\"name\":")?;
    w.string(name)?;
    w.raw("}")
}

/// A call made by this device, as the Pico W library sends it.
pub fn call(
    w: &mut Writer<'_>,
    id: u32,
    command: &str,
    args: &str,
    kwargs: &str,
) -> Result<(), JsonError> {
    use core::fmt::Write as _;
    write!(
        w,
        "{{\"type\":\"CALL\",\"id\":\"{CALL_ID_PREFIX}{id}\",\"command\":"
    )
    .map_err(|_| JsonError::Full)?;
    w.string(command)?;
    w.raw(",\"args\":")?;
    w.raw(args)?;
    w.raw(",\"kwargs\":")?;
    w.raw(kwargs)?;
    w.raw("}")
}

/// The start of a successful reply: `{"id":ID,"response":`; the value and
/// [`REPLY_END`] follow.
pub fn reply_start(w: &mut Writer<'_>, id_literal: &str) -> Result<(), JsonError> {
    w.raw("{\"id\":")?;
    w.raw(id_literal)?;
    w.raw(",\"response\":")
}

/// What closes a reply begun with [`reply_start`].
pub const REPLY_END: &str = "}";

/// An error reply: `{"id":ID,"error":{"type":T,"message":M}}` (`type` only
/// when given; the Pico W library sends only `message`).
pub fn reply_error(
    w: &mut Writer<'_>,
    id_literal: &str,
    error_type: Option<&str>,
    message: &str,
) -> Result<(), JsonError> {
    w.raw("{\"id\":")?;
    w.raw(id_literal)?;
    w.raw(",\"error\":{")?;
    if let Some(t) = error_type {
        w.raw("\"type\":")?;
        w.string(t)?;
        w.raw(",")?;
    }
    w.raw("\"message\":")?;
    w.string(message)?;
    w.raw("}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_replies_and_verdicts_decode() {
        let call = r#"{"type":"CALL","id":"server-1","call-stack-id":"server-1","command":"blink","args":[3],"objects":[]}"#;
        let Ok(Incoming::Call(c)) = decode(call) else {
            panic!("not a call")
        };
        assert_eq!(
            (c.id, c.command, c.args, c.kwargs, c.has_objects),
            ("\"server-1\"", "\"blink\"", "[3]", "{}", false)
        );
        assert_eq!(
            decode(r#"{"id":"d-7","response":{"a":1},"objects":[]}"#),
            Ok(Incoming::Reply {
                id: 7,
                outcome: Ok(r#"{"a":1}"#)
            })
        );
        assert_eq!(
            decode(r#"{"id":"other","response":1}"#),
            Ok(Incoming::Ignored)
        );
        assert_eq!(
            decode(r#"{"auth":"OK","priv":"uplink","app-info":{"id":"x"}}"#),
            Ok(Incoming::AuthOk)
        );
        assert_eq!(
            decode(r#"{"error":"Incorrect uplink key"}"#),
            Ok(Incoming::Fatal("\"Incorrect uplink key\""))
        );
        assert!(matches!(
            decode(r#"{"type":"CALL","id":1,"command":"x","args":[]}"#),
            Err(DecodeError::Field { field: "id", .. })
        ));
        assert!(matches!(decode("[1]"), Err(DecodeError::Json(_))));
    }

    #[test]
    fn encoders_write_what_the_pico_library_writes() {
        let mut buf = [0u8; 160];
        let mut w = Writer::new(&mut buf);
        hello(&mut w, "k\"ey", 7, "PICO_W").unwrap();
        assert_eq!(w.as_str(), r#"{"key":"k\"ey","v":7,"device":"PICO_W"}"#);
        let mut w = Writer::new(&mut buf);
        call(&mut w, 3, "log", "[21.5]", "{}").unwrap();
        assert_eq!(
            w.as_str(),
            r#"{"type":"CALL","id":"d-3","command":"log","args":[21.5],"kwargs":{}}"#
        );
        let mut w = Writer::new(&mut buf);
        reply_error(&mut w, "\"s-1\"", None, "no").unwrap();
        assert_eq!(w.as_str(), r#"{"id":"s-1","error":{"message":"no"}}"#);
    }
}
