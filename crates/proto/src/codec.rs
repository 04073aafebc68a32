//! Decoding frames into [`Message`]s.
//!
//! Decoding is strict about what the router relies on (ids are strings,
//! `args` is an array, `kwargs` an object) and lenient about the rest, as the
//! official clients are: unknown fields are ignored, missing `kwargs`,
//! `objects` and `call-stack-id` take their defaults.

use alloc::borrow::Cow;
use alloc::string::{String, ToString};

use crate::message::{AuthOk, Call, Hello, Message, Outcome, RawJson, Reply, WireStr};
use crate::scan;

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Deepest allowed nesting of arrays and objects in one frame.
    pub max_depth: usize,
    /// Longest call id, in bytes of its JSON literal (ids are echoed back
    /// and kept while a call is in flight).
    pub max_id_len: usize,
    /// Longest function name, registration or device name, in bytes.
    pub max_name_len: usize,
}

impl Default for DecodeLimits {
    /// 64 levels, ids of 128 bytes, names of 1 KiB.
    fn default() -> Self {
        Self {
            max_depth: 64,
            max_id_len: crate::wire::MAX_ID_LEN,
            max_name_len: crate::wire::MAX_NAME_LEN,
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct DecodeError {
    /// What was wrong.
    pub kind: DecodeErrorKind,
    /// The literal id of the offending message when it had a usable one, so
    /// the error can be answered as a reply to that message.
    pub id: Option<String>,
}

/// What was wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The text is not JSON.
    #[error("message is not valid JSON ({detail}); send one JSON object per text frame")]
    NotJson {
        /// What the scanner found, and where.
        detail: String,
    },
    /// The JSON is valid but not an object.
    #[error("message must be a JSON object {{…}}, not another JSON value")]
    NotObject,
    /// The JSON is nested deeper than allowed.
    #[error("message nests arrays/objects deeper than {limit} levels; flatten the value")]
    TooDeep {
        /// The configured limit.
        limit: usize,
    },
    /// A field the message kind needs is missing.
    #[error("{message} is missing the required field \"{field}\"")]
    Missing {
        /// The message kind.
        message: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("field \"{field}\" of {message} must be {expected}")]
    WrongType {
        /// The message kind.
        message: &'static str,
        /// The field.
        field: &'static str,
        /// The expected JSON type.
        expected: &'static str,
    },
    /// A field is longer than its limit.
    #[error("field \"{field}\" of {message} is longer than {limit} bytes; use a shorter one")]
    TooLong {
        /// The message kind.
        message: &'static str,
        /// The field.
        field: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The message has none of the fields that identify a kind.
    #[error("message has no \"type\" and is not a key message or a reply; nothing to do with it")]
    Unrecognised,
}

impl DecodeErrorKind {
    /// A stable short name of the kind, used by the shared test vectors.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotJson { .. } => "not_json",
            Self::NotObject => "not_object",
            Self::TooDeep { .. } => "too_deep",
            Self::Missing { .. } => "missing",
            Self::WrongType { .. } => "wrong_type",
            Self::TooLong { .. } => "too_long",
            Self::Unrecognised => "unrecognised",
        }
    }
}

/// The fields ferrolink reads, as raw values. Each is kept raw so that a
/// wrongly typed field is reported by name (and answered by id) instead of
/// failing the whole frame.
#[derive(Default)]
struct Fields<'a> {
    kind: Option<RawJson<'a>>,
    id: Option<RawJson<'a>>,
    command: Option<RawJson<'a>>,
    args: Option<RawJson<'a>>,
    kwargs: Option<RawJson<'a>>,
    objects: Option<RawJson<'a>>,
    call_stack_id: Option<RawJson<'a>>,
    live_object_call: Option<RawJson<'a>>,
    response: Option<RawJson<'a>>,
    error: Option<RawJson<'a>>,
    output: Option<RawJson<'a>>,
    key: Option<RawJson<'a>>,
    v: Option<RawJson<'a>>,
    device: Option<RawJson<'a>>,
    name: Option<RawJson<'a>>,
    auth: Option<RawJson<'a>>,
    privilege: Option<RawJson<'a>>,
    app_info: Option<RawJson<'a>>,
    request_id: Option<RawJson<'a>>,
    media_id: Option<RawJson<'a>>,
    last_chunk: Option<RawJson<'a>>,
    event: Option<RawJson<'a>>,
}

impl<'a> Fields<'a> {
    /// Records one member; unknown keys are ignored, a known key twice is
    /// refused (which value would win is not for us to guess).
    fn set(&mut self, key: &str, value: &'a str) -> Result<(), &'static str> {
        let slot = match key {
            "type" => &mut self.kind,
            "id" => &mut self.id,
            "command" => &mut self.command,
            "args" => &mut self.args,
            "kwargs" => &mut self.kwargs,
            "objects" => &mut self.objects,
            "call-stack-id" => &mut self.call_stack_id,
            "liveObjectCall" => &mut self.live_object_call,
            "response" => &mut self.response,
            "error" => &mut self.error,
            "output" => &mut self.output,
            "key" => &mut self.key,
            "v" => &mut self.v,
            "device" => &mut self.device,
            "name" => &mut self.name,
            "auth" => &mut self.auth,
            "priv" => &mut self.privilege,
            "app-info" => &mut self.app_info,
            "requestId" => &mut self.request_id,
            "mediaId" => &mut self.media_id,
            "lastChunk" => &mut self.last_chunk,
            "event" => &mut self.event,
            _ => return Ok(()),
        };
        if slot.is_some() {
            return Err("duplicate field");
        }
        *slot = Some(RawJson::checked(value));
        Ok(())
    }
}

fn string_value(raw: RawJson<'_>) -> Option<Cow<'_, str>> {
    WireStr::from_raw(raw).map(|s| s.value())
}

fn is_array(raw: RawJson<'_>) -> bool {
    raw.get().starts_with('[')
}

fn is_object(raw: RawJson<'_>) -> bool {
    raw.get().starts_with('{')
}

/// A non-empty `objects` array, or `None` for absent, `null` and `[]`.
fn nonempty_array(raw: Option<RawJson<'_>>) -> Option<RawJson<'_>> {
    let raw = raw?;
    let text = raw.get();
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    (!inner.trim().is_empty()).then_some(raw)
}

fn not_json(e: scan::ScanError, limits: &DecodeLimits) -> DecodeError {
    let kind = if e.too_deep {
        DecodeErrorKind::TooDeep {
            limit: limits.max_depth,
        }
    } else {
        DecodeErrorKind::NotJson {
            detail: e.to_string(),
        }
    };
    DecodeError { kind, id: None }
}

/// Decodes one text frame.
///
/// One pass checks the whole frame (valid JSON, nesting within the limit)
/// and finds the fields ferrolink reads; values it forwards stay raw.
/// Never panics, whatever the input; the work is linear in the frame length.
pub fn decode<'a>(text: &'a str, limits: &DecodeLimits) -> Result<Message<'a>, DecodeError> {
    if !scan::is_object(text) {
        let kind = match scan::validate(text, limits.max_depth) {
            Ok(()) => DecodeErrorKind::NotObject,
            Err(e) => return Err(not_json(e, limits)),
        };
        return Err(DecodeError { kind, id: None });
    }
    let mut f = Fields::default();
    scan::object(text, limits.max_depth, |key, escaped, value| {
        let inner = &key[1..key.len() - 1];
        if escaped {
            let unescaped = WireStr::from_raw(RawJson::checked(key))
                .map(|k| k.value())
                .unwrap_or(Cow::Borrowed(inner));
            f.set(&unescaped, value)
        } else {
            f.set(inner, value)
        }
    })
    .map_err(|e| not_json(e, limits))?;
    let id = f.id.and_then(WireStr::from_raw);
    let id_too_long = id.is_some_and(|i| i.literal().len() > limits.max_id_len);
    let id_for_errors = if id_too_long { None } else { id };
    let fail = |kind| DecodeError {
        kind,
        id: id_for_errors.map(|i| i.literal().to_string()),
    };
    let too_long = |message, field, limit| {
        fail(DecodeErrorKind::TooLong {
            message,
            field,
            limit,
        })
    };
    let named = |raw: RawJson<'a>, message: &'static str, field: &'static str| {
        let value = string_value(raw).ok_or_else(|| {
            fail(DecodeErrorKind::WrongType {
                message,
                field,
                expected: "a string",
            })
        })?;
        if value.len() > limits.max_name_len {
            return Err(too_long(message, field, limits.max_name_len));
        }
        Ok(value)
    };

    if let Some(kind) = f.kind {
        let Some(kind) = string_value(kind) else {
            return Err(fail(DecodeErrorKind::WrongType {
                message: "message",
                field: "type",
                expected: "a string",
            }));
        };
        if id_too_long {
            return Err(too_long("message", "id", limits.max_id_len));
        }
        return match &*kind {
            "CALL" => {
                let call = decode_call(&f, id).map_err(fail)?;
                if call.command.len() > limits.max_name_len {
                    return Err(too_long("CALL", "command", limits.max_name_len));
                }
                Ok(Message::Call(call))
            }
            "REGISTER" => {
                let name = f.name.ok_or_else(|| {
                    fail(DecodeErrorKind::Missing {
                        message: "REGISTER",
                        field: "name",
                    })
                })?;
                named(name, "REGISTER", "name").map(|name| Message::Register { name })
            }
            "REGISTER_LIVE_OBJECT_BACKEND" => Ok(Message::RegisterLiveObjectBackend),
            "CHUNK_HEADER" => Ok(Message::ChunkHeader {
                request_id: f.request_id.and_then(WireStr::from_raw),
                media_id: f.media_id.and_then(WireStr::from_raw),
                last_chunk: f.last_chunk.is_some_and(|l| l.get() == "true"),
            }),
            "MEDIA_ERROR" => Ok(Message::MediaError {
                request_id: f.request_id.and_then(WireStr::from_raw),
            }),
            _ => Ok(Message::Unknown { kind, id }),
        };
    }
    if let Some(key) = f.key {
        let device = f.device.and_then(string_value);
        if device
            .as_ref()
            .is_some_and(|d| d.len() > limits.max_name_len)
        {
            return Err(too_long("key message", "device", limits.max_name_len));
        }
        return Ok(Message::Hello(Hello {
            key: string_value(key).unwrap_or(Cow::Borrowed("")),
            version: f.v.and_then(|v| v.get().parse::<f64>().ok()),
            device,
        }));
    }
    if f.auth.is_some() {
        return Ok(Message::AuthOk(AuthOk {
            privilege: f.privilege.and_then(string_value),
            app_info: f.app_info,
        }));
    }
    if let Some(output) = f.output {
        let text = string_value(output).unwrap_or(Cow::Borrowed(output.get()));
        return Ok(Message::Output { id, text });
    }
    if f.response.is_some() || f.error.is_some() {
        let Some(id) = id else {
            if let Some(error) = f.error.filter(|_| f.id.is_none()) {
                let error = string_value(error).unwrap_or(Cow::Borrowed(error.get()));
                return Ok(Message::Fatal { error });
            }
            return Err(fail(DecodeErrorKind::WrongType {
                message: "reply",
                field: "id",
                expected: "a string",
            }));
        };
        if id_too_long {
            return Err(too_long("reply", "id", limits.max_id_len));
        }
        let outcome = match (f.response, f.error) {
            (_, Some(error)) => Outcome::Error(error),
            (Some(response), None) => Outcome::Response(response),
            (None, None) => unreachable!("checked above"),
        };
        return Ok(Message::Reply(Reply {
            id,
            outcome,
            objects: nonempty_array(f.objects),
        }));
    }
    if let Some(event) = f.event {
        return Ok(Message::Event { event });
    }
    Err(fail(DecodeErrorKind::Unrecognised))
}

fn decode_call<'a>(f: &Fields<'a>, id: Option<WireStr<'a>>) -> Result<Call<'a>, DecodeErrorKind> {
    const M: &str = "CALL";
    let Some(id) = id else {
        return Err(match f.id {
            None => DecodeErrorKind::Missing {
                message: M,
                field: "id",
            },
            Some(_) => DecodeErrorKind::WrongType {
                message: M,
                field: "id",
                expected: "a string",
            },
        });
    };
    let command = match (f.command, f.live_object_call) {
        (Some(c), _) => string_value(c).ok_or(DecodeErrorKind::WrongType {
            message: M,
            field: "command",
            expected: "a string",
        })?,
        (None, Some(_)) => {
            return Err(DecodeErrorKind::WrongType {
                message: M,
                field: "liveObjectCall",
                expected: "absent (live objects are not supported; call a function by name)",
            });
        }
        (None, None) => {
            return Err(DecodeErrorKind::Missing {
                message: M,
                field: "command",
            });
        }
    };
    let args = match f.args {
        None => RawJson::checked("[]"),
        Some(a) if is_array(a) => a,
        Some(_) => {
            return Err(DecodeErrorKind::WrongType {
                message: M,
                field: "args",
                expected: "an array",
            });
        }
    };
    let kwargs = match f.kwargs {
        None => RawJson::checked("{}"),
        Some(k) if k.get() == "null" => RawJson::checked("{}"),
        Some(k) if is_object(k) => k,
        Some(_) => {
            return Err(DecodeErrorKind::WrongType {
                message: M,
                field: "kwargs",
                expected: "an object",
            });
        }
    };
    let call_stack_id = match f.call_stack_id {
        None => None,
        Some(c) if c.get() == "null" => None,
        Some(c) => Some(string_value(c).ok_or(DecodeErrorKind::WrongType {
            message: M,
            field: "call-stack-id",
            expected: "a string",
        })?),
    };
    Ok(Call {
        id,
        command,
        args,
        kwargs,
        objects: nonempty_array(f.objects),
        call_stack_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(text: &str) -> Result<Message<'_>, DecodeError> {
        decode(text, &DecodeLimits::default())
    }

    #[test]
    fn py_call_keeps_args_raw_and_defaults_nothing_it_was_given() {
        // Field order and extra fields exactly as PY 0.7.0 sends them.
        let text = r#"{"type": "CALL", "id": "a8Kq2LmZ0p", "args": ["hi", 1.50], "kwargs": {"x": 1},
            "call-stack-id": "outbound-Q7fT1xWmNc", "originating-call": null,
            "step-in": false, "paused": false, "span-ctx": null,
            "command": "anvil.private.echo", "objects": []}"#;
        let Message::Call(call) = dec(text).unwrap() else {
            panic!("expected a call")
        };
        assert_eq!(call.id.literal(), r#""a8Kq2LmZ0p""#);
        assert_eq!(call.command, "anvil.private.echo");
        assert_eq!(call.args.get(), r#"["hi", 1.50]"#, "number text preserved");
        assert_eq!(call.kwargs.get(), r#"{"x": 1}"#);
        assert!(call.objects.is_none(), "empty objects is no objects");
        assert_eq!(call.call_stack_id.as_deref(), Some("outbound-Q7fT1xWmNc"));
    }

    #[test]
    fn pico_call_without_kwargs_gets_an_empty_object() {
        let text = r#"{"type":"CALL","id":"pico-call-1-2","command":"log","args":[21.5]}"#;
        let Message::Call(call) = dec(text).unwrap() else {
            panic!("expected a call")
        };
        assert_eq!(call.kwargs.get(), "{}");
        assert!(call.call_stack_id.is_none());
    }

    #[test]
    fn call_with_bad_args_reports_field_and_keeps_id() {
        let err = dec(r#"{"type":"CALL","id":"x1","command":"f","args":{}}"#).unwrap_err();
        assert_eq!(err.id.as_deref(), Some(r#""x1""#));
        assert_eq!(err.to_string(), r#"field "args" of CALL must be an array"#);
    }

    #[test]
    fn null_response_is_a_response_not_absent() {
        let Message::Reply(r) = dec(r#"{"id":"s-1","response":null}"#).unwrap() else {
            panic!("expected a reply")
        };
        assert!(matches!(r.outcome, Outcome::Response(v) if v.get() == "null"));
    }

    #[test]
    fn error_without_id_is_fatal() {
        let Message::Fatal { error } = dec(r#"{"error":"Incorrect uplink key"}"#).unwrap() else {
            panic!("expected fatal")
        };
        assert_eq!(error, "Incorrect uplink key");
    }

    #[test]
    fn escaped_ids_are_echoed_byte_for_byte() {
        let Message::Reply(r) = dec(r#"{"id":"a\"b\u0041","response":1}"#).unwrap() else {
            panic!("expected a reply")
        };
        assert_eq!(r.id.literal(), r#""a\"b\u0041""#);
        assert_eq!(r.id.value(), "a\"bA");
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = alloc::format!("{{\"args\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        let err = dec(&deep).unwrap_err();
        assert_eq!(err.kind, DecodeErrorKind::TooDeep { limit: 64 });
    }

    #[test]
    fn hello_with_non_string_key_never_matches() {
        let Message::Hello(h) = dec(r#"{"key":12,"v":8}"#).unwrap() else {
            panic!("expected hello")
        };
        assert_eq!(h.key, "");
        assert_eq!(h.version, Some(8.0));
    }
}
