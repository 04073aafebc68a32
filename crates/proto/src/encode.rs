//! Encoders writing frames as JSON text into a caller-provided `String`.
//!
//! Raw JSON values (arguments, results, error objects) are copied verbatim;
//! only strings ferrolink itself produces are escaped here.

use alloc::string::String;
use core::fmt::Write as _;

use crate::json::push_str_literal;
use crate::message::Privilege;

/// The identity of the app a connection belongs to, as both official
/// clients need it in the auth reply (`app-info`).
#[derive(Debug, Clone)]
pub struct AppInfo<'a> {
    /// App id (`anvil.app.id` in PY; printed by PICO).
    pub id: &'a str,
    /// Environment description (`anvil.app.environment.name` in PY).
    pub environment: &'a str,
}

/// Writes `app-info` in the shape both official clients accept: never null,
/// and never a `name` key inside `environment` (PY crashes on it).
pub fn push_app_info(out: &mut String, app: &AppInfo<'_>) {
    out.push_str("{\"id\":");
    push_str_literal(out, app.id);
    out.push_str(",\"branch\":null,\"environment\":{\"description\":");
    push_str_literal(out, app.environment);
    out.push_str(",\"tags\":[]}}");
}

/// `{"auth":"OK","priv":…,"app-info":{…}}`.
pub fn auth_ok(out: &mut String, privilege: Privilege, app: &AppInfo<'_>) {
    out.push_str("{\"auth\":\"OK\",\"priv\":\"");
    out.push_str(privilege.wire_name());
    out.push_str("\",\"app-info\":");
    push_app_info(out, app);
    out.push('}');
}

/// `{"error":"…"}`: a fatal error, after which the sender closes.
pub fn fatal(out: &mut String, text: &str) {
    out.push_str("{\"error\":");
    push_str_literal(out, text);
    out.push('}');
}

/// `{"id":<id_literal>,`: how every reply starts. The rest is a reply
/// body ([`reply_body_response`], [`reply_body_error`]), which the server
/// builds on the provider's side and completes with the caller's id on the
/// caller's side.
pub fn reply_head(out: &mut String, id_literal: &str) {
    out.push_str("{\"id\":");
    out.push_str(id_literal);
    out.push(',');
}

/// `"response":…,"objects":…}` with `response` (and `objects`) raw.
pub fn reply_body_response(out: &mut String, response: &str, objects: Option<&str>) {
    out.reserve(response.len() + objects.map_or(2, str::len) + 26);
    out.push_str("\"response\":");
    out.push_str(response);
    out.push_str(",\"objects\":");
    out.push_str(objects.unwrap_or("[]"));
    out.push('}');
}

/// `"error":…,"objects":[]}` with a raw error object.
pub fn reply_body_error_raw(out: &mut String, error: &str) {
    out.reserve(error.len() + 24);
    out.push_str("\"error\":");
    out.push_str(error);
    out.push_str(",\"objects\":[]}");
}

/// `"error":{"type":…,"message":…,"trace":…},"objects":[]}`: an error
/// produced by the server itself.
pub fn reply_body_error(out: &mut String, error_type: &str, message: &str) {
    out.push_str("\"error\":");
    error_object(out, error_type, message);
    out.push_str(",\"objects\":[]}");
}

/// `{"id":…,"response":…,"objects":…}` with `id_literal` and `response` raw.
pub fn reply_response(out: &mut String, id_literal: &str, response: &str, objects: Option<&str>) {
    out.reserve(id_literal.len() + 8);
    reply_head(out, id_literal);
    reply_body_response(out, response, objects);
}

/// `{"id":…,"error":…,"objects":[]}` with a raw error object.
pub fn reply_error_raw(out: &mut String, id_literal: &str, error: &str) {
    out.reserve(id_literal.len() + 8);
    reply_head(out, id_literal);
    reply_body_error_raw(out, error);
}

/// `{"id":…,"error":{"type":…,"message":…,"trace":[["<rpc>",0]]},"objects":[]}`:
/// an error produced by the server itself.
pub fn reply_error(out: &mut String, id_literal: &str, error_type: &str, message: &str) {
    reply_head(out, id_literal);
    reply_body_error(out, error_type, message);
}

/// `{"type":…,"message":…,"trace":[["<rpc>",0]]}`.
pub fn error_object(out: &mut String, error_type: &str, message: &str) {
    out.push_str("{\"type\":");
    push_str_literal(out, error_type);
    out.push_str(",\"message\":");
    push_str_literal(out, message);
    out.push_str(",\"trace\":[[\"<rpc>\",0]]}");
}

/// `{"output":"…"}` (no id): server output shown by the client.
pub fn output(out: &mut String, text: &str) {
    out.push_str("{\"output\":");
    push_str_literal(out, text);
    out.push('}');
}

/// Who made a call, as the provider sees it in `call-stack` and `client`.
#[derive(Debug, Clone, Copy)]
pub struct CallOrigin<'a> {
    /// Call-stack frame type (`uplink`, `client-uplink`, `browser`).
    pub frame_type: &'a str,
    /// The caller's protocol version.
    pub protocol_version: u32,
    /// The caller's address, if known.
    pub ip: Option<&'a str>,
}

/// A server→uplink `CALL`. The id doubles as `call-stack-id`.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingCall<'a> {
    /// The id the server chose (unique on the provider's connection).
    pub id: u64,
    /// The function name.
    pub command: &'a str,
    /// Raw JSON array.
    pub args: &'a str,
    /// Raw JSON object.
    pub kwargs: &'a str,
    /// Raw non-empty `objects` array to pass through, if any.
    pub objects: Option<&'a str>,
    /// Who called.
    pub origin: CallOrigin<'a>,
}

/// Writes `"server-<n>"` (with quotes), the literal form of a server call id.
pub fn push_server_call_id(out: &mut String, id: u64) {
    // Formatted by hand: this runs twice for every routed call, and
    // `core::fmt` costs several times more than the digits.
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = id;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str("\"server-");
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
    out.push('"');
}

/// Parses a server call id (without quotes) back to its number.
pub fn parse_server_call_id(value: &str) -> Option<u64> {
    value.strip_prefix("server-")?.parse().ok()
}

/// Writes a server→uplink `CALL` with every field PY and PICO need
/// (`args` list, `kwargs` dict, `objects`, a non-empty `call-stack`).
pub fn call(out: &mut String, call: &OutgoingCall<'_>, app: &AppInfo<'_>) {
    let mut tail = String::new();
    call_tail(&mut tail, &call.origin, app);
    call_with_tail(out, call, &tail);
}

/// The part of a server→uplink `CALL` that depends only on who calls and
/// which app: `,"call-stack":[…],"client":{…},"sessionData":{},"app-info":{…}}`.
/// A router computes it once per caller and reuses it with
/// [`call_with_tail`].
pub fn call_tail(out: &mut String, origin: &CallOrigin<'_>, app: &AppInfo<'_>) {
    out.push_str(",\"call-stack\":[{\"type\":");
    push_str_literal(out, origin.frame_type);
    let _ = write!(
        out,
        ",\"protocol-version\":{}}}],\"client\":{{\"type\":",
        origin.protocol_version
    );
    push_str_literal(out, origin.frame_type);
    out.push_str(",\"ip\":");
    match origin.ip {
        Some(ip) => push_str_literal(out, ip),
        None => out.push_str("null"),
    }
    out.push_str(",\"location\":null},\"sessionData\":{},\"app-info\":");
    push_app_info(out, app);
    out.push('}');
}

/// Writes a server→uplink `CALL` whose caller-dependent part was prepared by
/// [`call_tail`] (`call.origin` is not read).
pub fn call_with_tail(out: &mut String, call: &OutgoingCall<'_>, tail: &str) {
    out.reserve(
        call.args.len()
            + call.kwargs.len()
            + call.command.len()
            + call.objects.map_or(2, str::len)
            + tail.len()
            + 96,
    );
    out.push_str("{\"type\":\"CALL\",\"id\":");
    push_server_call_id(out, call.id);
    out.push_str(",\"call-stack-id\":");
    push_server_call_id(out, call.id);
    out.push_str(",\"command\":");
    push_str_literal(out, call.command);
    out.push_str(",\"args\":");
    out.push_str(call.args);
    out.push_str(",\"kwargs\":");
    out.push_str(call.kwargs);
    out.push_str(",\"objects\":");
    out.push_str(call.objects.unwrap_or("[]"));
    out.push_str(tail);
}

/// A client→server `CALL`, as a client library sends it.
pub fn client_call(
    out: &mut String,
    id: &str,
    command: &str,
    args: &str,
    kwargs: &str,
    call_stack_id: Option<&str>,
) {
    out.reserve(args.len() + kwargs.len() + command.len() + 96);
    out.push_str("{\"type\":\"CALL\",\"id\":");
    push_str_literal(out, id);
    out.push_str(",\"command\":");
    push_str_literal(out, command);
    out.push_str(",\"args\":");
    out.push_str(args);
    out.push_str(",\"kwargs\":");
    out.push_str(kwargs);
    if let Some(c) = call_stack_id {
        out.push_str(",\"call-stack-id\":");
        push_str_literal(out, c);
    }
    out.push_str(",\"objects\":[]}");
}

/// `{"key":…,"v":…}` plus `device` when given.
pub fn hello(out: &mut String, key: &str, version: u32, device: Option<&str>) {
    out.push_str("{\"key\":");
    push_str_literal(out, key);
    let _ = write!(out, ",\"v\":{version}");
    if let Some(d) = device {
        out.push_str(",\"device\":");
        push_str_literal(out, d);
    }
    out.push('}');
}

/// `{"type":"REGISTER","name":…}`.
pub fn register(out: &mut String, name: &str) {
    out.push_str("{\"type\":\"REGISTER\",\"name\":");
    push_str_literal(out, name);
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{DecodeLimits, decode};
    use crate::message::Message;

    const APP: AppInfo<'static> = AppInfo {
        id: "demo",
        environment: "ferrolink",
    };

    #[test]
    fn auth_reply_is_what_both_clients_accept() {
        let mut s = String::new();
        auth_ok(&mut s, Privilege::Client, &APP);
        assert_eq!(
            s,
            r#"{"auth":"OK","priv":"client","app-info":{"id":"demo","branch":null,"environment":{"description":"ferrolink","tags":[]}}}"#
        );
    }

    #[test]
    fn server_call_ids_round_trip() {
        for id in [0, 7, 10, 99, 12_345, u64::MAX] {
            let mut s = String::new();
            push_server_call_id(&mut s, id);
            assert_eq!(s, alloc::format!("\"server-{id}\""));
            assert_eq!(parse_server_call_id(&s[1..s.len() - 1]), Some(id));
        }
    }

    #[test]
    fn outgoing_call_decodes_as_the_call_it_describes() {
        let mut s = String::new();
        let c = OutgoingCall {
            id: 7,
            command: "blink \"x\"",
            args: r#"[1, "two"]"#,
            kwargs: "{}",
            objects: None,
            origin: CallOrigin {
                frame_type: "uplink",
                protocol_version: 8,
                ip: Some("127.0.0.1"),
            },
        };
        call(&mut s, &c, &APP);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["id"], "server-7");
        assert_eq!(v["call-stack-id"], "server-7");
        assert_eq!(v["call-stack"][0]["protocol-version"], 8);
        assert_eq!(v["client"]["ip"], "127.0.0.1");
        let Message::Call(back) = decode(&s, &DecodeLimits::default()).unwrap() else {
            panic!("not a call")
        };
        assert_eq!(back.command, "blink \"x\"");
        assert_eq!(back.args.get(), r#"[1, "two"]"#);
        assert_eq!(parse_server_call_id(&back.id.value()), Some(7));
    }
}
