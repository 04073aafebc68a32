//! Whether a call may be forwarded, decided without a socket: the server's
//! call-admission policy as pure functions next to the session that
//! decoded the call. The driver asks [`admit_call`] before looking for a
//! provider and [`admit_objects`] once it knows who the provider is; each
//! refusal carries the error type and text the caller is answered with.

use alloc::format;
use alloc::string::String;

use crate::message::Privilege;
use crate::wire::error_type;

/// Deepest chain of nested calls (as the official server).
pub const MAX_CALL_DEPTH: u8 = 10;

/// What admission needs to know about the caller.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The privilege of its key (browser sessions: client).
    pub privilege: Privilege,
    /// For a browser session: whether a user is logged in.
    pub browser_user: Option<bool>,
    /// Whether the app lets sessions without a user call functions.
    pub anonymous_calls: bool,
    /// The app, for messages.
    pub app: &'a str,
    /// Calls it has in flight now.
    pub in_flight: usize,
    /// The most it may have.
    pub max_in_flight: usize,
}

/// A refused call: the error the caller is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The error type (`anvil.server.…`).
    pub error_type: &'static str,
    /// What was wrong and what to do.
    pub message: String,
}

fn refused(error_type: &'static str, message: String) -> Refused {
    Refused {
        error_type,
        message,
    }
}

/// Whether `caller` may call `name` (without its `@device` part) `depth`
/// calls deep (1 = top level).
pub fn admit_call(caller: &Caller<'_>, name: &str, depth: u8) -> Result<(), Refused> {
    if caller.privilege == Privilege::Client && name.contains(':') {
        return Err(refused(
            error_type::PERMISSION_DENIED,
            format!(
                "a client-privilege key may not call \"{name}\": names containing ':' are server-only"
            ),
        ));
    }
    if caller.browser_user == Some(false) && !caller.anonymous_calls {
        return Err(refused(
            error_type::PERMISSION_DENIED,
            format!(
                "app \"{}\" only accepts calls from logged-in users; log in first",
                caller.app
            ),
        ));
    }
    if depth > MAX_CALL_DEPTH {
        return Err(refused(
            error_type::STACK_OVERFLOW,
            "Too many nested anvil.server.call()s".into(),
        ));
    }
    if caller.in_flight >= caller.max_in_flight {
        return Err(refused(
            error_type::QUOTA_EXCEEDED,
            format!(
                "{} calls are already in flight on this connection; wait for some to finish",
                caller.max_in_flight
            ),
        ));
    }
    Ok(())
}

/// Whether the raw `objects` of a call (or a reply) can go to the receiver:
/// ferrolink does not carry media or live objects between peers, and the
/// official Pico W library (`to_pico`) cannot take any object at all.
/// Capabilities (data table handles) pass: the server verifies them
/// whenever they are used.
pub fn admit_objects(objects: Option<&str>, to_pico: bool) -> Result<(), Refused> {
    let Some(text) = objects else {
        return Ok(());
    };
    for unsupported in ["DataMedia", "LazyMedia", "LiveObject"] {
        let quoted = format!("\"{unsupported}\"");
        if text.contains(&quoted) {
            return Err(refused(
                error_type::SERIALIZATION,
                format!(
                    "ferrolink does not carry {unsupported} values yet; send the data as JSON (e.g. base64 text) instead"
                ),
            ));
        }
    }
    if to_pico {
        return Err(refused(
            error_type::SERIALIZATION,
            "the Pico W cannot receive dates, big integers or other non-JSON values; send plain JSON"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(privilege: Privilege) -> Caller<'static> {
        Caller {
            privilege,
            browser_user: None,
            anonymous_calls: true,
            app: "demo",
            in_flight: 0,
            max_in_flight: 4,
        }
    }

    #[test]
    fn server_only_names_are_refused_to_clients() {
        let e = admit_call(&caller(Privilege::Client), "app:secret", 1).unwrap_err();
        assert_eq!(e.error_type, error_type::PERMISSION_DENIED);
        assert!(e.message.contains("server-only"), "{}", e.message);
        assert!(admit_call(&caller(Privilege::Server), "app:secret", 1).is_ok());
        assert!(admit_call(&caller(Privilege::Client), "blink", 1).is_ok());
    }

    #[test]
    fn anonymous_browsers_need_the_apps_permission() {
        let mut c = caller(Privilege::Client);
        c.browser_user = Some(false);
        c.anonymous_calls = false;
        let e = admit_call(&c, "blink", 1).unwrap_err();
        assert!(e.message.contains("log in first"), "{}", e.message);
        c.browser_user = Some(true);
        assert!(admit_call(&c, "blink", 1).is_ok());
    }

    #[test]
    fn depth_and_in_flight_are_bounded() {
        let mut c = caller(Privilege::Server);
        assert!(admit_call(&c, "f", MAX_CALL_DEPTH).is_ok());
        let e = admit_call(&c, "f", MAX_CALL_DEPTH + 1).unwrap_err();
        assert_eq!(e.error_type, error_type::STACK_OVERFLOW);
        c.in_flight = 4;
        let e = admit_call(&c, "f", 1).unwrap_err();
        assert_eq!(e.error_type, error_type::QUOTA_EXCEEDED);
        assert!(
            e.message.starts_with("4 calls are already in flight"),
            "{}",
            e.message
        );
    }

    #[test]
    fn objects_the_receiver_cannot_take_are_refused() {
        assert!(admit_objects(None, true).is_ok());
        let date = r#"[{"type":["datetime"],"path":[0]}]"#;
        assert!(admit_objects(Some(date), false).is_ok());
        assert!(
            admit_objects(Some(date), true)
                .unwrap_err()
                .message
                .contains("Pico W")
        );
        let media = r#"[{"type":["DataMedia"],"path":[0]}]"#;
        let e = admit_objects(Some(media), false).unwrap_err();
        assert!(e.message.contains("DataMedia"), "{}", e.message);
    }
}
