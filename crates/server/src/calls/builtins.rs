//! Functions the server answers itself, under the names the official
//! clients use: the heartbeat echo, the app's origin, the current browser
//! user, events to browser sessions, event channels, trust bundles.

use std::sync::Arc;

use serde_json::value::RawValue;

use ferrolink_proto::message::{Call, Privilege};
use ferrolink_proto::{error_type, wire};

use crate::calls::peer::{Outbound, Peer};
use crate::calls::registry::{AppRuntime, Target};
use crate::state::ServerState;

/// A built-in's answer: the raw JSON result, or an error type and text.
pub(crate) type BuiltinResult = Result<String, (&'static str, String)>;

/// What a built-in may look at.
pub(crate) struct Context<'a> {
    pub(crate) state: &'a ServerState,
    /// The connection calling.
    pub(crate) peer: &'a Arc<Peer>,
    pub(crate) app: &'a AppRuntime,
    /// The browser session the call acts for (itself, or through the call
    /// it is nested in), if any.
    pub(crate) origin: Option<Arc<Peer>>,
}

fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    ferrolink_proto::push_str_literal(&mut out, s);
    out
}

fn wrong_arity(n: usize, name: &str) -> String {
    format!(
        "Wrong number of arguments ({n}) passed to {name}(). Did you pass keyword arguments as positional arguments, or vice versa?"
    )
}

/// Answers `call` if it names a built-in; `None` for any other name.
pub(crate) fn answer(cx: &Context<'_>, call: &Call<'_>) -> Option<BuiltinResult> {
    Some(match &*call.command {
        wire::ECHO_COMMAND => match serde_json::from_str::<Vec<&RawValue>>(call.args.get()) {
            Ok(args) if args.len() == 1 => Ok(args[0].get().to_owned()),
            Ok(args) => Err(("TypeError", wrong_arity(args.len(), wire::ECHO_COMMAND))),
            Err(_) => Err(("TypeError", wrong_arity(0, wire::ECHO_COMMAND))),
        },
        "anvil.private.get_client_config" => {
            Ok(crate::tables::client_config(call.args.get())?.to_owned())
        }
        "anvil.private.get_app_origin" => Ok(string(&cx.state.origin)),
        "anvil.private.get_api_origin" => Ok(string(&format!("{}/_/api", cx.state.origin))),
        // The user of the browser session the call acts for (directly, or
        // through the call-stack-id of the call it is nested in).
        "anvil.private.users.get_current_user_email" => Ok(
            match cx
                .origin
                .as_ref()
                .and_then(|o| o.browser.as_ref()?.email.as_deref())
            {
                Some(email) => string(email),
                None => "null".to_owned(),
            },
        ),
        // A user row is a live object, which ferrolink does not carry.
        "anvil.private.users.get_current_user" => Ok("null".to_owned()),
        "anvil.private.raise_event" => raise_event(cx, call),
        "ferrolink.session.subscribe" if cx.peer.browser.is_some() => subscribe(cx, call, true),
        "ferrolink.session.unsubscribe" if cx.peer.browser.is_some() => subscribe(cx, call, false),
        wire::TRUST_BUNDLE_COMMAND => trust_bundle(cx, call),
        _ => return None,
    })
}

/// `anvil.private.raise_event(name, payload, session_id=, session_ids=,
/// channel=)`: sends the event to browser sessions (see docs/web.md).
fn raise_event(cx: &Context<'_>, call: &Call<'_>) -> BuiltinResult {
    if cx.peer.privilege != Privilege::Server || cx.peer.browser.is_some() {
        return Err((
            error_type::PERMISSION_DENIED,
            "only server-privilege uplinks may raise events".to_owned(),
        ));
    }
    let (name, payload) = match serde_json::from_str::<Vec<&RawValue>>(call.args.get()) {
        Ok(args) if (1..=2).contains(&args.len()) => {
            match serde_json::from_str::<String>(args[0].get()) {
                Ok(name) if !name.is_empty() && name.len() <= 128 => {
                    (name, args.get(1).map_or("null", |p| p.get()))
                }
                _ => {
                    return Err((
                        "TypeError",
                        "raise_event(name, payload): name must be a non-empty string of at most 128 bytes".to_owned(),
                    ));
                }
            }
        }
        _ => return Err(("TypeError", "raise_event takes (name, payload)".to_owned())),
    };
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Targeting {
        session_id: Option<String>,
        session_ids: Option<Vec<String>>,
        channel: Option<String>,
    }
    let t: Targeting = serde_json::from_str(call.kwargs.get()).map_err(|_| {
        (
            "TypeError",
            "raise_event: session_id must be a string, session_ids a list of strings, channel a string".to_owned(),
        )
    })?;
    let mut frame = format!(
        "{{\"id\":\"evt{}\",\"event\":{{\"name\":",
        cx.state.next_call_id()
    );
    ferrolink_proto::push_str_literal(&mut frame, &name);
    frame.push_str(",\"payload\":");
    frame.push_str(payload);
    frame.push_str("},\"objects\":[]}");
    let delivered = match (t.session_id, t.session_ids, t.channel) {
        (None, None, None) => match (&cx.origin, cx.state.cluster.get()) {
            // The browser is on another server of the cluster.
            (Some(o), Some(cluster)) if o.browser.as_ref().is_some_and(|b| b.elsewhere) => {
                let id = o.browser.as_ref().map(|b| b.id.clone()).unwrap_or_default();
                cluster.publish_event(&cx.peer.app, &[id], None, &frame);
                0
            }
            _ => {
                let targets: Vec<_> = cx.origin.iter().cloned().collect();
                deliver_event(&targets, &frame)
            }
        },
        (id, ids, channel) => {
            let mut sessions: Vec<String> = ids.unwrap_or_default();
            sessions.extend(id);
            // Sessions on the other servers of a cluster get it too.
            if let Some(cluster) = cx.state.cluster.get() {
                cluster.publish_event(&cx.peer.app, &sessions, channel.as_deref(), &frame);
            }
            event_targets_here(cx.app, &sessions, channel.as_deref(), &frame)
        }
    };
    cx.state
        .monitor
        .event(&cx.peer.app, &cx.peer.label, &name, payload, delivered);
    Ok("null".to_owned())
}

/// `ferrolink.session.subscribe(channel)` / `unsubscribe(channel)`, for
/// browser sessions.
fn subscribe(cx: &Context<'_>, call: &Call<'_>, on: bool) -> BuiltinResult {
    let Some(b) = &cx.peer.browser else {
        return Err((
            error_type::PERMISSION_DENIED,
            "only browser sessions subscribe to event channels".to_owned(),
        ));
    };
    let channel = match serde_json::from_str::<(String,)>(call.args.get()) {
        Ok((c,)) if !c.is_empty() && c.len() <= 64 && c != "*" => c,
        _ => {
            return Err((
                "TypeError",
                "subscribe(channel): channel must be a string of 1-64 bytes other than \"*\""
                    .to_owned(),
            ));
        }
    };
    let mut channels = b.channels.lock().unwrap_or_else(|p| p.into_inner());
    if on {
        if channels.len() >= 32 && !channels.contains(channel.as_str()) {
            return Err((
                error_type::QUOTA_EXCEEDED,
                "a session may subscribe to at most 32 channels".to_owned(),
            ));
        }
        channels.insert(channel.into());
    } else {
        channels.remove(channel.as_str());
    }
    Ok("null".to_owned())
}

/// `ferrolink.trust.bundle(have)`: the newest published trust bundle if
/// its sequence is above `have` (a number or `null`), else `null`.
fn trust_bundle(cx: &Context<'_>, call: &Call<'_>) -> BuiltinResult {
    let Ok((have,)) = serde_json::from_str::<(Option<u64>,)>(call.args.get()) else {
        return Err((
            "TypeError",
            format!(
                "{}(have) takes one argument: the sequence of the bundle held, or null",
                wire::TRUST_BUNDLE_COMMAND
            ),
        ));
    };
    Ok(match cx.state.trust_bundle() {
        Some(b) if have.is_none_or(|h| b.sequence > h) => b.reply.clone(),
        _ => "null".to_owned(),
    })
}

/// Queues an event `frame` to `targets`; how many took it.
fn deliver_event(targets: &[Arc<Peer>], frame: &str) -> usize {
    targets
        .iter()
        .filter(|t| t.enqueue(Outbound::Frame(frame.to_owned())).is_ok())
        .count()
}

/// Queues an event `frame` to the browser sessions of `app` on this
/// server with one of the ids `sessions` or subscribed to `channel` (`*`:
/// all), each once; how many took it.
pub(crate) fn event_targets_here(
    app: &AppRuntime,
    sessions: &[String],
    channel: Option<&str>,
    frame: &str,
) -> usize {
    let refs: Vec<&str> = sessions.iter().map(String::as_str).collect();
    let mut targets = app.browsers_for(&Target::Sessions(&refs));
    if let Some(ch) = channel {
        for c in app.browsers_for(&Target::Channel(ch)) {
            if !targets.iter().any(|t| t.id == c.id) {
                targets.push(c);
            }
        }
    }
    deliver_event(&targets, frame)
}
