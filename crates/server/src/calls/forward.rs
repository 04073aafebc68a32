//! The one way a call reaches its provider, for every caller: uplinks and
//! browser sessions (through their drivers) and the dashboard's console.
//! Admission (`ferrolink_proto::admission`), routing, the `objects` rule
//! for the provider, encoding and queueing all happen here, so no caller
//! can skip a check.

use std::sync::Arc;

use ferrolink_proto::Instant;
use ferrolink_proto::admission::{self, Caller, Refused};
use ferrolink_proto::encode::{self, CallOrigin, OutgoingCall};
use ferrolink_proto::error_type;

use crate::calls::peer::{ForwardedCall, Outbound, Peer, ReplyTo};
use crate::calls::registry::{AppRuntime, Route};
use crate::state::ServerState;

/// A call to forward.
pub(crate) struct Request<'a> {
    /// The name called, possibly `name@device`.
    pub(crate) command: &'a str,
    /// Raw JSON array.
    pub(crate) args: &'a str,
    /// Raw JSON object.
    pub(crate) kwargs: &'a str,
    /// Raw non-empty `objects`, if any.
    pub(crate) objects: Option<&'a str>,
    /// How deep it is nested (1 = top level).
    pub(crate) depth: u8,
    /// The browser session it acts for, if any.
    pub(crate) origin: Option<Arc<Peer>>,
}

/// A call on its way: the caller waits for the answer under `call` until
/// `deadline`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarded {
    pub(crate) call: u64,
    pub(crate) deadline: Instant,
}

/// `name@device` → (`name`, `device`).
pub(crate) fn split_device(command: &str) -> (&str, Option<&str>) {
    match command.rsplit_once('@') {
        Some((name, device)) if !name.is_empty() && !device.is_empty() => (name, Some(device)),
        _ => (command, None),
    }
}

/// Admits, routes and queues `request` from `caller` (which has
/// `in_flight` calls awaiting answers), at `now`. The answer will reach
/// `caller`'s queue as an `Outbound::Answer` for the returned call id.
pub(crate) fn forward(
    state: &ServerState,
    app: &AppRuntime,
    caller: &Arc<Peer>,
    in_flight: usize,
    request: Request<'_>,
    now: Instant,
) -> Result<Forwarded, Refused> {
    // While the server drains, calls made to finish a call already in
    // flight (nested, depth > 1) still go through; new ones do not.
    let result = if request.depth <= 1 && state.draining.load(std::sync::atomic::Ordering::Relaxed)
    {
        Err(Refused {
            error_type: error_type::UPLINK_DISCONNECTED,
            message:
                "the server is shutting down and takes no new calls; call again once it is back"
                    .to_owned(),
        })
    } else {
        route_and_send(state, app, caller, in_flight, request, now)
    };
    match &result {
        Ok(_) => state.metrics.call_started(),
        Err(refused) => state
            .metrics
            .call_finished(crate::metrics::Outcome::of(refused.error_type), None),
    }
    result
}

fn route_and_send(
    state: &ServerState,
    app: &AppRuntime,
    caller: &Arc<Peer>,
    in_flight: usize,
    request: Request<'_>,
    now: Instant,
) -> Result<Forwarded, Refused> {
    let (name, device) = split_device(request.command);
    let facts = Caller {
        privilege: caller.privilege,
        browser_user: caller.browser.as_ref().map(|b| b.email.is_some()),
        anonymous_calls: caller.browser.is_none() || app.anonymous_calls(),
        app: &caller.app,
        in_flight,
        max_in_flight: state.config.max_pending_calls,
    };
    admission::admit_call(&facts, name, request.depth)?;
    let provider = match app.route(name, device) {
        Route::Provider(p) => p,
        // Not held here: another server of the cluster may hold it.
        Route::Stale | Route::Missing if state.cluster.get().is_some() => {
            return forward_to_cluster(state, caller, name, device, &request, now);
        }
        Route::Stale => {
            return Err(Refused {
                error_type: error_type::UPLINK_DISCONNECTED,
                message: format!("The uplink server for \"{name}\" has been disconnected"),
            });
        }
        Route::Missing => {
            return Err(Refused {
                error_type: error_type::NO_SERVER_FUNCTION,
                message: match device {
                    Some(d) => format!(
                        "No server function matching \"{name}\" has been registered by device \"{d}\""
                    ),
                    None => format!("No server function matching \"{name}\" has been registered"),
                },
            });
        }
    };
    admission::admit_objects(request.objects, provider.is_pico)?;
    let call = state.next_call_id();
    let mut frame = String::with_capacity(
        request.args.len() + request.kwargs.len() + name.len() + caller.call_tail.len() + 64,
    );
    let outgoing = OutgoingCall {
        id: call,
        command: name,
        args: request.args,
        kwargs: request.kwargs,
        objects: request.objects,
        origin: CallOrigin {
            frame_type: caller.privilege.frame_type(),
            protocol_version: caller.protocol_version,
            ip: Some(&caller.ip),
        },
    };
    encode::call_with_tail(&mut frame, &outgoing, &caller.call_tail);
    tracing::debug!(conn = caller.id, to = provider.id, call, command = %crate::calls::shown(name), "routing call");
    let deadline = now + state.config.call_timeout;
    let forwarded = ForwardedCall {
        id: call,
        frame,
        reply: ReplyTo {
            caller: caller.clone(),
            call,
        },
        depth: request.depth,
        origin: request.origin,
        deadline,
    };
    match provider.enqueue(Outbound::Call(forwarded)) {
        Ok(()) => Ok(Forwarded { call, deadline }),
        Err(_) => Err(Refused {
            error_type: error_type::UPLINK_DISCONNECTED,
            message: "Uplink disconnected".to_owned(),
        }),
    }
}

/// Sends the call to whichever server of the cluster provides `name`.
fn forward_to_cluster(
    state: &ServerState,
    caller: &Arc<Peer>,
    name: &str,
    device: Option<&str>,
    request: &Request<'_>,
    now: Instant,
) -> Result<Forwarded, Refused> {
    let Some(cluster) = state.cluster.get() else {
        unreachable!("checked by the caller")
    };
    let call = state.next_call_id();
    let deadline = now + state.config.call_timeout;
    cluster.call(
        caller,
        &crate::cluster::Outgoing {
            call,
            name,
            device,
            args: request.args,
            kwargs: request.kwargs,
            objects: request.objects,
            depth: request.depth,
            deadline,
            session: request.origin.as_ref().and_then(|o| o.browser.as_deref()),
        },
    )?;
    Ok(Forwarded { call, deadline })
}
