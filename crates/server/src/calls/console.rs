//! Callers without a connection — the dashboard console (server privilege,
//! labelled `dashboard`) and the HTTP API (the key's privilege, labelled
//! `http`): one [`Peer`] per app and kind whose calls go through the
//! same `forward` as every uplink's — admission, routing, the in-flight
//! bound — and whose answers a small task hands to the waiting requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use tokio::sync::oneshot;

use ferrolink_proto::admission::Refused;
use ferrolink_proto::error_type;
use ferrolink_proto::message::Privilege;

use crate::calls::forward::{self, Request};
use crate::calls::peer::{Answer, Outbound, Peer, PeerSetup, WAKE};
use crate::keys::KeyId;
use crate::state::ServerState;

/// One app's console caller.
pub(crate) struct Console {
    peer: Arc<Peer>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
}

impl Console {
    /// A caller for `app` with `privilege`, labelled `label` (as a
    /// device name is), with the task that delivers its answers.
    pub(crate) fn start(
        state: &ServerState,
        app: &str,
        privilege: Privilege,
        label: &str,
    ) -> Arc<Self> {
        let peer = Arc::new(Peer::new(
            state.next_conn_id(),
            PeerSetup {
                key_id: KeyId(String::new()),
                device: Some(label.to_owned()),
                privilege,
                library: None,
                protocol_version: 8,
                ip: label.to_owned(),
                app: app.to_owned(),
                browser: None,
            },
            &state.config.environment,
            state.config.max_queued_bytes,
            state.now(),
        ));
        let console = Arc::new(Self {
            peer,
            waiting: Mutex::default(),
        });
        let weak = Arc::downgrade(&console);
        tokio::spawn(async move {
            let mut items = std::collections::VecDeque::new();
            loop {
                let Some(console) = weak.upgrade() else {
                    return;
                };
                let woken = std::future::poll_fn(|cx| {
                    console.peer.signal.register(cx.waker());
                    let flags = console.peer.signal.take();
                    if flags & WAKE != 0 {
                        Poll::Ready(true)
                    } else if flags != 0 {
                        Poll::Ready(false)
                    } else {
                        Poll::Pending
                    }
                });
                if !woken.await {
                    return;
                }
                console.peer.take_queued(&mut items);
                let mut waiting = console.waiting.lock().unwrap_or_else(|p| p.into_inner());
                for item in items.drain(..) {
                    if let Outbound::Answer(answer) = item
                        && let Some(tx) = waiting.remove(&answer.call)
                    {
                        let _ = tx.send(answer);
                    }
                }
                drop(waiting);
                console.peer.set_unsent(0);
            }
        });
        console
    }

    /// Whether this caller can still receive answers (its peer is closed
    /// after a burst of answers over its byte bound; a new one replaces it).
    pub(crate) fn is_open(&self) -> bool {
        self.peer.close_reason().is_none()
    }

    /// Calls forwarded and not yet answered.
    pub(crate) fn in_flight(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Calls `function` (possibly `name@device`) with raw JSON `args` and
    /// `kwargs`, and waits for the answer until the call's deadline:
    /// `{"response": …}` or `{"error": {…}}`.
    pub(crate) async fn call(
        &self,
        state: &ServerState,
        function: &str,
        args: &str,
        kwargs: &str,
    ) -> serde_json::Value {
        let request = Request {
            command: function,
            args,
            kwargs,
            objects: None,
            depth: 1,
            origin: None,
        };
        let (_, body) = self.call_raw(state, request).await;
        serde_json::from_str(&format!("{{{body}"))
            .unwrap_or_else(|_| error_json(error_type::INTERNAL, "the answer was not JSON"))
    }

    /// Forwards `request` (with its objects, depth and browser session, if
    /// any) and waits for the answer: the outcome (`ok` or the error type)
    /// and the reply's body as the provider sent it (`"response":…}` or
    /// `"error":…}`: the reply frame after its id).
    pub(crate) async fn call_raw(
        &self,
        state: &ServerState,
        request: Request<'_>,
    ) -> (String, String) {
        let function = request.command;
        let app = state.app(&self.peer.app);
        let started = std::time::Instant::now();
        let (tx, rx) = oneshot::channel();
        let forwarded = {
            // Held across `forward` so the answer cannot come before its
            // waiter is in the table.
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            let result =
                forward::forward(state, &app, &self.peer, waiting.len(), request, state.now());
            if let Ok(f) = &result {
                waiting.insert(f.call, tx);
            }
            result
        };
        let f = match forwarded {
            Ok(f) => f,
            Err(Refused {
                error_type,
                message,
            }) => return (error_type.to_owned(), error_body(error_type, &message)),
        };
        // Whatever ends this wait — the answer, the deadline, or the HTTP
        // client going away (the handler's future is then dropped) — the
        // call leaves the waiting table, so abandoned calls never hold the
        // caller's in-flight budget.
        let _forget = Forget {
            waiting: &self.waiting,
            call: f.call,
        };
        let (outcome, body) = match tokio::time::timeout_at(state.to_tokio(f.deadline), rx).await {
            Ok(Ok(answer)) => (answer.outcome.as_str().to_owned(), answer.body),
            _ => (
                error_type::TIMEOUT.to_owned(),
                error_body(
                    error_type::TIMEOUT,
                    &format!(
                        "call to \"{function}\" got no answer within {} s",
                        state.config.call_timeout.as_secs_f64()
                    ),
                ),
            ),
        };
        state.call_finished(
            &self.peer.app,
            &self.peer.label,
            function,
            started.elapsed(),
            &outcome,
        );
        (outcome, body)
    }
}

/// Removes a call from the waiting table when dropped.
struct Forget<'a> {
    waiting: &'a Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    call: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.call);
    }
}

fn error_json(error_type: &str, message: &str) -> serde_json::Value {
    serde_json::json!({ "error": { "type": error_type, "message": message } })
}

/// A reply body (the frame after its id) for an error the server makes up.
fn error_body(error_type: &str, message: &str) -> String {
    let mut body = String::with_capacity(message.len() + 96);
    ferrolink_proto::encode::reply_body_error(&mut body, error_type, message);
    body
}
