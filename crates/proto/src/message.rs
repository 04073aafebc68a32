//! The message model: every frame of the Anvil Uplink protocol that ferrolink
//! reads, as borrowed views into the received text.
//!
//! Values the router does not need to look inside (`args`, `kwargs`,
//! `response`, `error`, `objects`) stay as raw JSON slices, so forwarding
//! copies bytes instead of re-encoding them.

use alloc::borrow::Cow;

pub use crate::wire::error_type;

/// A JSON value exactly as received: a slice of the frame that the codec
/// has checked to be valid JSON. Forwarding copies it; nothing re-encodes it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RawJson<'a>(&'a str);

impl<'a> RawJson<'a> {
    /// Wraps text the caller checked to be one JSON value.
    pub(crate) fn checked(text: &'a str) -> Self {
        Self(text)
    }

    /// The JSON text.
    pub fn get(&self) -> &'a str {
        self.0
    }
}

/// A JSON string value kept exactly as received, quotes and escapes included.
///
/// Call ids are echoed back verbatim, so keeping the literal avoids an
/// unescape/escape round trip and guarantees byte-identical echoes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct WireStr<'a>(&'a str);

impl<'a> WireStr<'a> {
    /// Wraps `raw` if it is a JSON string literal.
    pub fn from_raw(raw: RawJson<'a>) -> Option<Self> {
        let text = raw.get();
        text.starts_with('"').then_some(Self(text))
    }

    /// The literal as it appeared on the wire, with quotes.
    pub fn literal(&self) -> &'a str {
        self.0
    }

    /// The decoded string value.
    pub fn value(&self) -> Cow<'a, str> {
        let inner = &self.0[1..self.0.len() - 1];
        if !inner.contains('\\') {
            return Cow::Borrowed(inner);
        }
        // The literal was validated by the JSON parser, so this cannot fail;
        // fall back to the raw text rather than panic if it ever did.
        serde_json::from_str::<alloc::string::String>(self.0)
            .map(Cow::Owned)
            .unwrap_or(Cow::Borrowed(inner))
    }
}

/// One decoded frame.
#[derive(Debug)]
pub enum Message<'a> {
    /// C→S first message: `{"key":…,"v":…,"device":…}`.
    Hello(Hello<'a>),
    /// S→C successful authentication reply.
    AuthOk(AuthOk<'a>),
    /// S→C fatal error (no `id`); the connection closes after it.
    Fatal {
        /// The error text.
        error: Cow<'a, str>,
    },
    /// C→S `REGISTER`.
    Register {
        /// Function name (exact, or a regular expression).
        name: Cow<'a, str>,
    },
    /// C→S `REGISTER_LIVE_OBJECT_BACKEND`, which ferrolink refuses.
    RegisterLiveObjectBackend,
    /// `CALL` in either direction.
    Call(Call<'a>),
    /// A response or error answering a call.
    Reply(Reply<'a>),
    /// `{"output": …}`, with or without an id.
    Output {
        /// The call the output belongs to.
        id: Option<WireStr<'a>>,
        /// The printed text.
        text: Cow<'a, str>,
    },
    /// `CHUNK_HEADER`: the next binary frame is one chunk of a media object.
    ChunkHeader {
        /// The message whose `objects` declared the media.
        request_id: Option<WireStr<'a>>,
        /// Which of its media objects the chunk belongs to.
        media_id: Option<WireStr<'a>>,
        /// Whether this is the last chunk.
        last_chunk: bool,
    },
    /// `MEDIA_ERROR`: media objects of a request were aborted.
    MediaError {
        /// The message whose media failed.
        request_id: Option<WireStr<'a>>,
    },
    /// S→C event pushed to a browser session.
    Event {
        /// The raw `event` object (`{"name":…,"payload":…}`).
        event: RawJson<'a>,
    },
    /// A message with a `type` this implementation does not know.
    Unknown {
        /// The unknown type string.
        kind: Cow<'a, str>,
        /// Its id, if it had one.
        id: Option<WireStr<'a>>,
    },
}

impl Message<'_> {
    /// A short name of the message kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello(_) => "key message",
            Self::AuthOk(_) => "auth reply",
            Self::Fatal { .. } => "fatal error",
            Self::Register { .. } => "REGISTER",
            Self::RegisterLiveObjectBackend => "REGISTER_LIVE_OBJECT_BACKEND",
            Self::Call(_) => "CALL",
            Self::Reply(_) => "reply",
            Self::Output { .. } => "output",
            Self::ChunkHeader { .. } => "CHUNK_HEADER",
            Self::MediaError { .. } => "MEDIA_ERROR",
            Self::Event { .. } => "event",
            Self::Unknown { .. } => "unknown message",
        }
    }
}

/// The client's first message.
#[derive(Debug)]
pub struct Hello<'a> {
    /// The uplink key (a non-string key decodes as empty and never matches).
    pub key: Cow<'a, str>,
    /// Protocol version, if present and numeric.
    pub version: Option<f64>,
    /// Device identification (`"PICO_W"` for the official Pico W library).
    pub device: Option<Cow<'a, str>>,
}

/// The server's successful authentication reply.
#[derive(Debug)]
pub struct AuthOk<'a> {
    /// `"uplink"` (server privilege) or `"client"`; absent means `"uplink"`.
    pub privilege: Option<Cow<'a, str>>,
    /// The raw `app-info` object, if present.
    pub app_info: Option<RawJson<'a>>,
}

/// A `CALL`.
#[derive(Debug)]
pub struct Call<'a> {
    /// The caller's id for this call, echoed in the reply.
    pub id: WireStr<'a>,
    /// The function name.
    pub command: Cow<'a, str>,
    /// Positional arguments: a raw JSON array (`[]` when absent).
    pub args: RawJson<'a>,
    /// Keyword arguments: a raw JSON object (`{}` when absent).
    pub kwargs: RawJson<'a>,
    /// The raw `objects` array, if present and non-empty.
    pub objects: Option<RawJson<'a>>,
    /// Links a nested call to the call it is made from.
    pub call_stack_id: Option<Cow<'a, str>>,
}

/// A reply to a call.
#[derive(Debug)]
pub struct Reply<'a> {
    /// The id of the call being answered.
    pub id: WireStr<'a>,
    /// The result.
    pub outcome: Outcome<'a>,
    /// The raw `objects` array, if present and non-empty.
    pub objects: Option<RawJson<'a>>,
}

/// How a call ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// The raw JSON return value.
    Response(RawJson<'a>),
    /// The raw JSON error object (`{"type":…,"message":…,"trace":…}`).
    Error(RawJson<'a>),
}

/// Which privilege a key grants, as named on the wire (`priv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Privilege {
    /// May register functions and call anything (`"uplink"`).
    Server,
    /// Acts like a browser: may only call (`"client"`).
    Client,
}

impl Privilege {
    /// The `priv` value of the auth reply.
    pub fn wire_name(self) -> &'static str {
        match self {
            Self::Server => "uplink",
            Self::Client => "client",
        }
    }

    /// The call-stack frame type a call from this privilege carries.
    pub fn frame_type(self) -> &'static str {
        match self {
            Self::Server => "uplink",
            Self::Client => "client-uplink",
        }
    }
}

/// Longest error `type` taken from a peer's error object; a longer one is
/// logged as `"error"` (the error itself is forwarded untouched).
pub const MAX_ERROR_TYPE: usize = 1024;

/// The `type` of a raw error object (`{"type": "ValueError", …}`), for
/// logs: `"error"` when there is none, it is not a string, or it is longer
/// than [`MAX_ERROR_TYPE`].
pub fn error_type_of(error: RawJson<'_>) -> Cow<'_, str> {
    #[derive(serde::Deserialize)]
    struct ErrorType<'a> {
        #[serde(borrow, rename = "type")]
        ty: Option<Cow<'a, str>>,
    }
    match serde_json::from_str::<ErrorType<'_>>(error.get()) {
        Ok(ErrorType { ty: Some(ty) }) if ty.len() <= MAX_ERROR_TYPE => ty,
        _ => Cow::Borrowed("error"),
    }
}
