//! Protocol constants every implementation shares, heap or not: names and
//! numbers the official clients use on the wire.

use core::time::Duration;

/// Standard error type strings, as the official clients map them to
/// exception classes.
pub mod error_type {
    /// No registration matches the called name.
    pub const NO_SERVER_FUNCTION: &str = "anvil.server.NoServerFunctionError";
    /// The provider of a call disconnected before answering.
    pub const UPLINK_DISCONNECTED: &str = "anvil.server.UplinkDisconnectedError";
    /// The call's deadline passed.
    pub const TIMEOUT: &str = "anvil.server.TimeoutError";
    /// The caller may not do this (privilege).
    pub const PERMISSION_DENIED: &str = "anvil.server.PermissionDenied";
    /// A value could not be carried (malformed arguments, unsupported objects).
    pub const SERIALIZATION: &str = "anvil.server.SerializationError";
    /// A limit of the server was hit (calls in flight).
    pub const QUOTA_EXCEEDED: &str = "anvil.server.QuotaExceededError";
    /// Too many nested calls.
    pub const STACK_OVERFLOW: &str = "anvil.server.StackOverflow";
    /// Internal failure of the server.
    pub const INTERNAL: &str = "anvil.server.InternalError";
}

/// Longest call id accepted, in bytes of its JSON literal: ids are echoed
/// back and kept while a call is in flight, so peers may not make them
/// large. (The official clients use a dozen or so characters.)
pub const MAX_ID_LEN: usize = 128;

/// Longest function name, registration or device name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// The built-in function the official clients call as their heartbeat.
pub const ECHO_COMMAND: &str = "anvil.private.echo";

/// The built-in function a client calls, once authenticated, for the
/// server's newest signed trust bundle (see [`crate::trust`]). Argument:
/// the sequence the client holds, or `null`. Answer: `null` when nothing
/// newer is published, else `{"sequence": N, "bundle": "<base64>"}`. The
/// client decides, by the signature and the sequence inside, whether to
/// take it; the server is not trusted with that.
pub const TRUST_BUNDLE_COMMAND: &str = "ferrolink.trust.bundle";

/// The argument list of a heartbeat call, as the official clients send it.
pub const HEARTBEAT_ARGS: &str = "[\"keep-alive\"]";

/// How often the official clients send a heartbeat (also the delay of the
/// first one after authentication).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// The protocol version the official Pico W library announces.
pub const PICO_VERSION: u32 = 7;

/// The `device` value the official Pico W library sends with its key.
pub const PICO_DEVICE: &str = "PICO_W";

/// The server's uplink path.
pub const UPLINK_PATH: &str = "/_/uplink";

/// The only `auth` value the Pico W library accepts as success.
pub const AUTH_OK: &str = "OK";
