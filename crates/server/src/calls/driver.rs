//! The driver of one uplink websocket: authenticates it, then runs the loop
//! that feeds frames to its [`ServerSession`], routes its calls, writes what
//! other connections queued for it, and fires its deadlines.
//!
//! Calls forwarded *to* this connection are pending in its own
//! [`CallTable`], so answering, timing out and failing them on disconnect
//! all happen here, without locks.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use futures_util::{FutureExt as _, SinkExt as _};
use serde_json::value::RawValue;
use tracing::Instrument as _;

use ferrolink_proto::calls::{CallId, CallTable};
use ferrolink_proto::encode::{self, AppInfo, CallOrigin, OutgoingCall};
use ferrolink_proto::message::Privilege;
use ferrolink_proto::message::{Call, Outcome, Reply};
use ferrolink_proto::server_session::{Inbound, PeerAction, ServerSession, SessionTimeout};
use ferrolink_proto::{Instant, error_type, wire};

use crate::calls::peer::{
    BrowserSession, ForwardedCall, Outbound, Peer, PeerSetup, ReplyTo, fail_queued_calls,
};
use crate::calls::registry::{AppRuntime, Route, Target};
use crate::state::ServerState;

/// Deepest chain of nested calls (as the official server).
const MAX_CALL_DEPTH: u8 = 10;
/// Frames handled per wake-up before flushing, to batch writes.
const BATCH: usize = 32;

const CLOSE_NORMAL: u16 = 1000;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_PROTOCOL: u16 = 1002;

/// How a connection ended.
enum End {
    /// The peer closed or the transport failed.
    PeerGone,
    /// Close with a fatal `{"error": text}` first.
    Fatal { text: String, code: u16 },
    /// A frame over the size limit.
    TooBig { text: String },
}

struct Pending {
    reply: ReplyTo,
    depth: u8,
    /// The browser session the call was made for (see `ForwardedCall`).
    origin: Option<Arc<Peer>>,
}

/// Runs one uplink connection to its end.
pub(crate) async fn serve(state: Arc<ServerState>, ws: WebSocket, peer: SocketAddr) {
    let span = tracing::debug_span!("uplink", %peer);
    run(state, ws, peer).instrument(span).await;
}

async fn run(state: Arc<ServerState>, mut ws: WebSocket, peer: SocketAddr) {
    let mut session = ServerSession::new(state.config.session.clone(), state.now());
    let Some((record, library)) = authenticate(&state, &mut ws, &mut session, peer).await else {
        return;
    };
    let shared = Arc::new(Peer::new(
        state.next_conn_id(),
        PeerSetup {
            key_id: record.id.clone(),
            device: record.device.clone(),
            privilege: record.privilege,
            library,
            protocol_version: session.protocol_version(),
            ip: peer.ip().to_string(),
            app: record.app.clone(),
            browser: None,
        },
        &state.config.environment,
        state.config.max_queued_bytes,
        state.monitor.clone(),
    ));
    state.attach(&shared);
    tracing::info!(
        conn = shared.id,
        key = %record.id,
        app = %record.app,
        device = record.device.as_deref().unwrap_or("-"),
        %peer,
        version = shared.protocol_version,
        "uplink connected"
    );
    // The driver is built and run here rather than in a helper `async fn`
    // that takes the socket: a nested future would keep a second,
    // moved-from slot for the websocket in every idle connection.
    let mut driver = Driver::new(state, ws, session, shared);
    let end = driver.run().await;
    driver.finish(end).await;
}

/// Runs one browser session websocket to its end. The session was
/// authenticated by its cookie (or is anonymous) before the upgrade; it
/// speaks the uplink protocol with client privilege, and receives events.
pub(crate) async fn serve_browser(
    state: Arc<ServerState>,
    mut ws: WebSocket,
    peer: SocketAddr,
    app: String,
    browser: BrowserSession,
) {
    let span = tracing::debug_span!("browser", %peer, app = %app);
    async move {
        let session = ServerSession::pre_authenticated(
            state.config.session.clone(),
            state.now(),
            Privilege::Client,
            8,
        );
        let mut hello = String::from("{\"session\":{\"id\":");
        ferrolink_proto::push_str_literal(&mut hello, &browser.id);
        hello.push_str(",\"app\":");
        ferrolink_proto::push_str_literal(&mut hello, &app);
        hello.push_str(",\"user\":");
        match &browser.email {
            Some(e) => ferrolink_proto::push_str_literal(&mut hello, e),
            None => hello.push_str("null"),
        }
        hello.push_str(if browser.anonymous_calls {
            ",\"anonymous_calls\":true}}"
        } else {
            ",\"anonymous_calls\":false}}"
        });
        if ws.send(WsMessage::Text(hello.into())).await.is_err() {
            return;
        }
        let shared = Arc::new(Peer::new(
            state.next_conn_id(),
            PeerSetup {
                key_id: crate::keys::KeyId(String::new()),
                device: None,
                privilege: Privilege::Client,
                library: None,
                protocol_version: 8,
                ip: peer.ip().to_string(),
                app,
                browser: Some(Box::new(browser)),
            },
            &state.config.environment,
            state.config.max_queued_bytes,
            state.monitor.clone(),
        ));
        state.app(&shared.app).add_browser(&shared);
        state.monitor.changed();
        tracing::debug!(conn = shared.id, "browser session opened");
        let mut driver = Driver::new(state, ws, session, shared);
        let end = driver.run().await;
        driver.finish(end).await;
    }
    .instrument(span)
    .await;
}

async fn send_fatal(ws: &mut WebSocket, text: &str, code: u16) {
    let mut frame = String::new();
    encode::fatal(&mut frame, text);
    let close = CloseFrame {
        code,
        reason: Utf8Bytes::from(close_reason(text)),
    };
    // A peer that does not read must not hold the task: give it two seconds.
    let wait = Duration::from_secs(2);
    if let Ok(Ok(())) = tokio::time::timeout(wait, ws.send(WsMessage::Text(frame.into()))).await {
        let _ = tokio::time::timeout(wait, ws.send(WsMessage::Close(Some(close)))).await;
    }
    if code != CLOSE_TOO_BIG {
        // Complete the close handshake so unread input does not turn our
        // close into a TCP reset that could eat the error text. (After an
        // oversized header nothing more may be read: it would be buffered.)
        let drain = async { while let Some(Ok(_)) = ws.recv().await {} };
        let _ = tokio::time::timeout(wait, drain).await;
    }
}

/// Close reasons are limited to 123 bytes; cut at a character boundary.
fn close_reason(text: &str) -> String {
    let mut end = text.len().min(123);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

async fn authenticate(
    state: &Arc<ServerState>,
    ws: &mut WebSocket,
    session: &mut ServerSession,
    peer: SocketAddr,
) -> Option<(crate::keys::KeyRecord, Option<String>)> {
    let deadline = state.to_tokio(session.poll_timeout()?);
    loop {
        let msg = tokio::select! {
            m = ws.recv() => m,
            () = tokio::time::sleep_until(deadline) => {
                let _ = session.handle_timeout(state.now());
                tracing::info!(%peer, "closing: no key message in time");
                let text = format!(
                    "ferrolink: no key message within {} s; send {{\"key\": \"<uplink key>\", \"v\": 8}} first",
                    state.config.session.auth_timeout.as_secs()
                );
                send_fatal(ws, &text, CLOSE_POLICY).await;
                return None;
            }
        };
        let text = match msg {
            Some(Ok(WsMessage::Text(t))) => t,
            Some(Ok(WsMessage::Binary(_))) => {
                session.handle_binary(state.now());
                continue;
            }
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(WsMessage::Close(_))) | None => return None,
            Some(Err(e)) => {
                tracing::debug!(%peer, error = %e, "uplink failed before authenticating");
                return None;
            }
        };
        let (key, library) = match session.handle_text(state.now(), text.as_str()) {
            Ok(Inbound::Hello(hello)) => (
                hello.key.into_owned(),
                hello
                    .device
                    .map(|d| d.chars().take(128).collect::<String>()),
            ),
            Ok(_) => continue,
            Err(refusal) => {
                tracing::info!(%peer, reason = %refusal, "refused before authentication");
                if let PeerAction::Close { text } = refusal.action {
                    send_fatal(ws, &text, CLOSE_PROTOCOL).await;
                }
                return None;
            }
        };
        let key_id = crate::keys::Secret::new(key.as_str())
            .id()
            .map_or_else(|| "-".to_owned(), |id| id.0);
        return match state.authenticate(&key, peer.ip()).await {
            Ok(record) => {
                session.accept(record.privilege);
                let mut frame = String::new();
                let app = AppInfo {
                    id: &record.app,
                    environment: &state.config.environment,
                };
                encode::auth_ok(&mut frame, record.privilege, &app);
                if ws.send(WsMessage::Text(frame.into())).await.is_err() {
                    return None;
                }
                Some((record, library))
            }
            Err(e) => {
                session.reject();
                tracing::info!(%peer, key = %key_id, reason = %e, "authentication failed");
                send_fatal(ws, &e.to_string(), CLOSE_POLICY).await;
                None
            }
        };
    }
}

struct Driver {
    state: Arc<ServerState>,
    ws: WebSocket,
    session: ServerSession,
    shared: Arc<Peer>,
    app: Arc<AppRuntime>,
    pending: CallTable<Pending>,
    inbox: VecDeque<Outbound>,
    /// Frames were fed since the last flush.
    dirty: bool,
}

impl Driver {
    fn new(
        state: Arc<ServerState>,
        ws: WebSocket,
        session: ServerSession,
        shared: Arc<Peer>,
    ) -> Self {
        Self {
            app: state.app(&shared.app),
            pending: CallTable::new(state.config.max_pending_calls.saturating_mul(4).max(16)),
            state,
            ws,
            session,
            shared,
            inbox: VecDeque::new(),
            dirty: false,
        }
    }

    async fn run(&mut self) -> End {
        let mut armed = self.next_deadline();
        let sleep = tokio::time::sleep_until(self.state.to_tokio(armed));
        tokio::pin!(sleep);
        loop {
            let step = tokio::select! {
                biased;
                () = self.shared.kill.notified() => Err(self.killed()),
                () = self.shared.wake.notified() => self.on_wake().await,
                msg = self.ws.recv() => self.on_ws_batch(msg).await,
                () = &mut sleep => {
                    armed = Instant::from_millis(u64::MAX);
                    self.on_timer()
                }
            };
            let flushed = match step {
                Ok(()) => self.flush().await,
                Err(end) => return end,
            };
            if let Err(end) = flushed {
                return end;
            }
            let next = self.next_deadline();
            if next < armed {
                armed = next;
                sleep.as_mut().reset(self.state.to_tokio(next));
            }
        }
    }

    fn killed(&self) -> End {
        let text = self
            .shared
            .close_reason()
            .unwrap_or_else(|| "ferrolink: connection closed by the server".to_owned());
        End::Fatal {
            text,
            code: CLOSE_POLICY,
        }
    }

    fn next_deadline(&mut self) -> Instant {
        let session = self
            .session
            .poll_timeout()
            .unwrap_or(Instant::from_millis(u64::MAX));
        match self.pending.poll_timeout() {
            Some(p) => p.min(session),
            None => session,
        }
    }

    /// Feeds one frame to the websocket, giving up if the connection is
    /// killed meanwhile (a peer that does not read blocks writes).
    async fn send(&mut self, frame: String) -> Result<(), End> {
        self.dirty = true;
        tokio::select! {
            r = self.ws.feed(WsMessage::Text(frame.into())) => r.map_err(|_| End::PeerGone),
            () = self.shared.kill.notified() => Err(self.killed()),
        }
    }

    async fn flush(&mut self) -> Result<(), End> {
        if !std::mem::take(&mut self.dirty) {
            return Ok(());
        }
        tokio::select! {
            r = self.ws.flush() => r.map_err(|_| End::PeerGone),
            () = self.shared.kill.notified() => Err(self.killed()),
        }
    }

    async fn on_wake(&mut self) -> Result<(), End> {
        let mut inbox = std::mem::take(&mut self.inbox);
        self.shared.take_queued(&mut inbox);
        let now = self.state.now();
        let mut result = Ok(());
        while let Some(item) = inbox.pop_front() {
            if let Err(end) = self.on_outbound(now, item).await {
                // Whatever is left is answered when the connection finishes.
                result = Err(end);
                break;
            }
        }
        for item in inbox.drain(..) {
            if let Outbound::Call(call) = item {
                call.reply
                    .fail(error_type::UPLINK_DISCONNECTED, "Uplink disconnected");
            }
        }
        self.inbox = inbox;
        result
    }

    async fn on_outbound(&mut self, now: Instant, item: Outbound) -> Result<(), End> {
        match item {
            Outbound::Frame(frame) => self.send(frame).await,
            Outbound::Call(call) => {
                let ForwardedCall {
                    id,
                    frame,
                    reply,
                    depth,
                    origin,
                } = *call;
                let deadline = now + self.state.config.call_timeout;
                match self.pending.insert(
                    CallId(id),
                    deadline,
                    Pending {
                        reply,
                        depth,
                        origin,
                    },
                ) {
                    Ok(()) => self.send(frame).await,
                    Err((full, p)) => {
                        let msg =
                            format!("the provider of \"{}\" is busy: {full}", p.reply.command());
                        p.reply.fail(error_type::QUOTA_EXCEEDED, &msg);
                        Ok(())
                    }
                }
            }
        }
    }

    async fn on_ws_batch(
        &mut self,
        first: Option<Result<WsMessage, axum::Error>>,
    ) -> Result<(), End> {
        // One clock read per batch: frames read together arrived together.
        let now = self.state.now();
        self.shared
            .last_seen
            .store(now.as_millis(), std::sync::atomic::Ordering::Relaxed);
        self.on_ws(now, first).await?;
        for _ in 1..BATCH {
            match self.ws.recv().now_or_never() {
                Some(msg) => self.on_ws(now, msg).await?,
                None => return Ok(()),
            }
        }
        // A full batch and more may be waiting: write what is ready and let
        // the tasks this batch woke run (they can start their peers' work on
        // another core) before reading on, so a burst flows through in
        // slices instead of one clump.
        self.flush().await?;
        tokio::task::yield_now().await;
        Ok(())
    }

    async fn on_ws(
        &mut self,
        now: Instant,
        msg: Option<Result<WsMessage, axum::Error>>,
    ) -> Result<(), End> {
        match msg {
            Some(Ok(WsMessage::Text(text))) => self.on_text(now, text.as_str()).await,
            Some(Ok(WsMessage::Binary(_) | WsMessage::Ping(_) | WsMessage::Pong(_))) => {
                // Media chunks are not supported (calls carrying media are
                // refused), so their data is dropped; pings count as life.
                self.session.handle_binary(now);
                Ok(())
            }
            Some(Ok(WsMessage::Close(_))) | None => Err(End::PeerGone),
            Some(Err(e)) => Err(classify_ws_error(&e, self.state.config.max_frame_bytes)),
        }
    }

    async fn on_text(&mut self, now: Instant, text: &str) -> Result<(), End> {
        match self.session.handle_text(now, text) {
            Ok(Inbound::Call(call)) => self.on_call(now, call).await,
            Ok(Inbound::Reply(reply)) => {
                self.on_reply(reply);
                Ok(())
            }
            Ok(Inbound::Register { name }) => {
                if self.app.register(&self.shared, &name).is_err() {
                    return Err(End::Fatal {
                        text: "Invalid function name specification".to_owned(),
                        code: CLOSE_POLICY,
                    });
                }
                let mut registered = self
                    .shared
                    .registered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if !registered.iter().any(|n| **n == *name) {
                    tracing::debug!(conn = self.shared.id, name = %name, "registered");
                    registered.push(name.into());
                    drop(registered);
                    self.state.monitor.changed();
                }
                Ok(())
            }
            Ok(Inbound::Hello(_) | Inbound::Nothing) => Ok(()),
            Err(refusal) => match refusal.action {
                PeerAction::ReplyError {
                    id,
                    error_type,
                    message,
                } => {
                    tracing::warn!(conn = self.shared.id, reason = %refusal.kind, "refused a message");
                    let mut frame = String::new();
                    encode::reply_error(&mut frame, &id, error_type, &message);
                    self.send(frame).await
                }
                PeerAction::Close { text } => {
                    tracing::warn!(conn = self.shared.id, reason = %refusal.kind, "closing: protocol violation");
                    Err(End::Fatal {
                        text,
                        code: CLOSE_PROTOCOL,
                    })
                }
            },
        }
    }

    async fn reply_error(&mut self, id: &str, error_type: &str, message: &str) -> Result<(), End> {
        let mut frame = String::new();
        encode::reply_error(&mut frame, id, error_type, message);
        self.send(frame).await
    }

    async fn on_call(&mut self, now: Instant, call: Call<'_>) -> Result<(), End> {
        let id = call.id.literal();
        if let Some(result) = self.builtin(&call) {
            let mut frame = String::new();
            match result {
                Ok(value) => encode::reply_response(&mut frame, id, &value, None),
                Err((ty, message)) => encode::reply_error(&mut frame, id, ty, &message),
            }
            return self.send(frame).await;
        }
        let (name, device) = match call.command.rsplit_once('@') {
            Some((name, device)) if !name.is_empty() && !device.is_empty() => (name, Some(device)),
            _ => (&*call.command, None),
        };
        if self.shared.privilege == Privilege::Client && name.contains(':') {
            let msg = format!(
                "a client-privilege key may not call \"{name}\": names containing ':' are server-only"
            );
            return self
                .reply_error(id, error_type::PERMISSION_DENIED, &msg)
                .await;
        }
        if let Some(b) = &self.shared.browser
            && b.email.is_none()
            && !b.anonymous_calls
        {
            let msg = format!(
                "app \"{}\" only accepts calls from logged-in users; log in first",
                self.shared.app
            );
            return self
                .reply_error(id, error_type::PERMISSION_DENIED, &msg)
                .await;
        }
        let outer = self.outer_call(&call);
        let depth = outer.map_or(1, |o| o.depth + 1);
        let origin = self.call_origin(outer);
        if depth > MAX_CALL_DEPTH {
            return self
                .reply_error(
                    id,
                    error_type::STACK_OVERFLOW,
                    "Too many nested anvil.server.call()s",
                )
                .await;
        }
        let provider = match self.app.route(name, device) {
            Route::Provider(p) => p,
            Route::Stale => {
                let msg = format!("The uplink server for \"{name}\" has been disconnected");
                return self
                    .reply_error(id, error_type::UPLINK_DISCONNECTED, &msg)
                    .await;
            }
            Route::Missing => {
                let msg = match device {
                    Some(d) => format!(
                        "No server function matching \"{name}\" has been registered by device \"{d}\""
                    ),
                    None => format!("No server function matching \"{name}\" has been registered"),
                };
                return self
                    .reply_error(id, error_type::NO_SERVER_FUNCTION, &msg)
                    .await;
            }
        };
        if let Some(msg) = call
            .objects
            .and_then(|o| refuse_objects(o, provider.is_pico))
        {
            return self.reply_error(id, error_type::SERIALIZATION, &msg).await;
        }
        let limit = self.state.config.max_pending_calls;
        if self
            .shared
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
            >= limit
        {
            let msg = format!(
                "{limit} calls are already in flight on this connection; wait for some to finish"
            );
            return self.reply_error(id, error_type::QUOTA_EXCEEDED, &msg).await;
        }
        let call_id = self.state.next_call_id();
        let mut frame = String::new();
        let outgoing = OutgoingCall {
            id: call_id,
            command: name,
            args: call.args.get(),
            kwargs: call.kwargs.get(),
            objects: call.objects.map(RawValue::get),
            origin: CallOrigin {
                frame_type: self.shared.privilege.frame_type(),
                protocol_version: self.shared.protocol_version,
                ip: Some(&self.shared.ip),
            },
        };
        encode::call_with_tail(&mut frame, &outgoing, &self.shared.call_tail);
        tracing::debug!(
            conn = self.shared.id,
            to = provider.id,
            call = call_id,
            command = name,
            "routing call"
        );
        let forwarded = ForwardedCall {
            id: call_id,
            frame,
            reply: ReplyTo::new(self.shared.clone(), id, name, now),
            depth,
            origin,
        };
        if let Err(closed) = provider.enqueue(Outbound::Call(Box::new(forwarded))) {
            fail_queued_calls(VecDeque::from([closed.0]), "Uplink disconnected");
        }
        Ok(())
    }

    /// The still-pending call on this connection that `call` was made
    /// from (its `call-stack-id`), if any. Only this connection's own
    /// pending calls are looked at, so nobody can borrow another
    /// connection's context by guessing ids.
    fn outer_call(&self, call: &Call<'_>) -> Option<&Pending> {
        call.call_stack_id
            .as_deref()
            .and_then(encode::parse_server_call_id)
            .and_then(|outer| self.pending.get(CallId(outer)))
    }

    /// The browser session a call made now (from inside `outer`, if set)
    /// acts for: this connection itself when it is a browser session.
    fn call_origin(&self, outer: Option<&Pending>) -> Option<Arc<Peer>> {
        if self.shared.browser.is_some() {
            Some(self.shared.clone())
        } else {
            outer.and_then(|o| o.origin.clone())
        }
    }

    /// `anvil.private.raise_event(name, payload, session_id=, session_ids=,
    /// channel=)`: sends the event to browser sessions (see docs/web.md).
    fn raise_event(&self, call: &Call<'_>) -> Result<String, (&'static str, String)> {
        if self.shared.privilege != Privilege::Server || self.shared.browser.is_some() {
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
            _ => {
                return Err(("TypeError", "raise_event takes (name, payload)".to_owned()));
            }
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
        let app = &self.app;
        let targets = match (t.session_id, t.session_ids, t.channel) {
            (None, None, None) => self
                .call_origin(self.outer_call(call))
                .into_iter()
                .collect(),
            (id, ids, channel) => {
                let mut all: Vec<String> = ids.unwrap_or_default();
                all.extend(id);
                let refs: Vec<&str> = all.iter().map(String::as_str).collect();
                let mut targets = app.browsers_for(&Target::Sessions(&refs));
                if let Some(ch) = channel {
                    for c in app.browsers_for(&Target::Channel(&ch)) {
                        if !targets.iter().any(|t| t.id == c.id) {
                            targets.push(c);
                        }
                    }
                }
                targets
            }
        };
        let mut frame = String::new();
        let _ = std::fmt::Write::write_fmt(
            &mut frame,
            format_args!(
                "{{\"id\":\"evt{}\",\"event\":{{\"name\":",
                self.state.next_call_id()
            ),
        );
        ferrolink_proto::push_str_literal(&mut frame, &name);
        frame.push_str(",\"payload\":");
        frame.push_str(payload);
        frame.push_str("},\"objects\":[]}");
        let mut delivered = 0;
        for target in &targets {
            if target.enqueue(Outbound::Frame(frame.clone())).is_ok() {
                delivered += 1;
            }
        }
        self.state.monitor.event(
            &self.shared.app,
            &self.shared.label,
            &name,
            payload,
            delivered,
        );
        Ok("null".to_owned())
    }

    /// `ferrolink.session.subscribe(channel)` / `unsubscribe(channel)`,
    /// for browser sessions.
    fn subscribe(&self, call: &Call<'_>, on: bool) -> Result<String, (&'static str, String)> {
        let Some(b) = &self.shared.browser else {
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
    fn trust_bundle(&self, call: &Call<'_>) -> Result<String, (&'static str, String)> {
        let Ok((have,)) = serde_json::from_str::<(Option<u64>,)>(call.args.get()) else {
            return Err((
                "TypeError",
                format!(
                    "{}(have) takes one argument: the sequence of the bundle held, or null",
                    wire::TRUST_BUNDLE_COMMAND
                ),
            ));
        };
        Ok(match self.state.trust_bundle() {
            Some(b) if have.is_none_or(|h| b.sequence > h) => b.reply.clone(),
            _ => "null".to_owned(),
        })
    }

    /// Answers the built-in functions; `None` for any other name.
    fn builtin(&self, call: &Call<'_>) -> Option<Result<String, (&'static str, String)>> {
        let string = |s: &str| {
            let mut out = String::new();
            ferrolink_proto::push_str_literal(&mut out, s);
            out
        };
        Some(match &*call.command {
            "anvil.private.echo" => match serde_json::from_str::<Vec<&RawValue>>(call.args.get()) {
                Ok(args) if args.len() == 1 => Ok(args[0].get().to_owned()),
                Ok(args) => Err(("TypeError", wrong_arity(args.len(), "anvil.private.echo"))),
                Err(_) => Err(("TypeError", wrong_arity(0, "anvil.private.echo"))),
            },
            "anvil.private.get_app_origin" => Ok(string(&self.state.origin)),
            "anvil.private.get_api_origin" => Ok(string(&format!("{}/_/api", self.state.origin))),
            // The user of the browser session the call acts for (directly,
            // or through the call-stack-id of the call it is nested in).
            "anvil.private.users.get_current_user_email" => {
                let origin = self.call_origin(self.outer_call(call));
                Ok(
                    match origin
                        .as_ref()
                        .and_then(|o| o.browser.as_ref()?.email.as_deref())
                    {
                        Some(email) => string(email),
                        None => "null".to_owned(),
                    },
                )
            }
            // A user row is a live object, which ferrolink does not carry.
            "anvil.private.users.get_current_user" => Ok("null".to_owned()),
            "anvil.private.raise_event" => self.raise_event(call),
            wire::TRUST_BUNDLE_COMMAND => self.trust_bundle(call),
            "ferrolink.session.subscribe" if self.shared.browser.is_some() => {
                self.subscribe(call, true)
            }
            "ferrolink.session.unsubscribe" if self.shared.browser.is_some() => {
                self.subscribe(call, false)
            }
            _ => return None,
        })
    }

    fn on_reply(&mut self, reply: Reply<'_>) {
        let Some(id) = encode::parse_server_call_id(&reply.id.value()) else {
            tracing::debug!(conn = self.shared.id, "reply to an unknown id ignored");
            return;
        };
        let Some(p) = self.pending.remove(CallId(id)) else {
            // Late reply to a call that already timed out: the caller has its answer.
            tracing::debug!(conn = self.shared.id, call = id, "late reply ignored");
            return;
        };
        let caller_id = p.reply.caller_id();
        let mut frame = String::new();
        let outcome = match (reply.outcome, reply.objects) {
            (_, Some(_)) if p.reply.caller.is_pico => {
                let msg = format!(
                    "the result of \"{}\" contains values a Pico W cannot receive (dates, media or other objects); return plain JSON",
                    p.reply.command()
                );
                encode::reply_error(&mut frame, caller_id, error_type::SERIALIZATION, &msg);
                error_type::SERIALIZATION
            }
            (Outcome::Response(value), objects) => {
                encode::reply_response(
                    &mut frame,
                    caller_id,
                    value.get(),
                    objects.map(RawValue::get),
                );
                "ok"
            }
            (Outcome::Error(error), _) => {
                encode::reply_error_raw(&mut frame, caller_id, error.get());
                #[derive(serde::Deserialize)]
                struct ErrorType<'a> {
                    #[serde(borrow, rename = "type")]
                    ty: Option<std::borrow::Cow<'a, str>>,
                }
                let error_type_field = serde_json::from_str::<ErrorType<'_>>(error.get()).ok();
                p.reply.deliver(
                    frame,
                    error_type_field
                        .as_ref()
                        .and_then(|t| t.ty.as_deref())
                        .unwrap_or("error"),
                );
                return;
            }
        };
        p.reply.deliver(frame, outcome);
    }

    fn on_timer(&mut self) -> Result<(), End> {
        let now = self.state.now();
        if let Some(why) = self.session.handle_timeout(now) {
            let text = match why {
                SessionTimeout::Idle => format!(
                    "ferrolink: nothing received for {} s (heartbeats stopped); closing",
                    self.state.config.session.idle_timeout.as_secs()
                ),
                SessionTimeout::NoKey => "ferrolink: no key message in time".to_owned(),
            };
            return Err(End::Fatal {
                text,
                code: CLOSE_POLICY,
            });
        }
        let timeout = self.state.config.call_timeout;
        while let Some((_, p)) = self.pending.expire(now) {
            let who = match &self.shared.device {
                Some(d) => format!("device \"{d}\""),
                None => format!("connection {}", self.shared.id),
            };
            let msg = format!(
                "call to \"{}\" got no answer from {who} within {} s",
                p.reply.command(),
                timeout.as_secs_f64()
            );
            p.reply.fail(error_type::TIMEOUT, &msg);
        }
        Ok(())
    }

    async fn finish(mut self, end: End) {
        let (lost, fatal) = match end {
            End::PeerGone => ("Uplink disconnected".to_owned(), None),
            End::Fatal { text, code } => ("Uplink disconnected".to_owned(), Some((text, code))),
            End::TooBig { text } => (
                "Data payload too big - please use Media objects to transfer large amounts of data.".to_owned(),
                Some((text, CLOSE_TOO_BIG)),
            ),
        };
        self.app
            .unregister_all(&self.shared, &self.shared.registered());
        if self.shared.browser.is_some() {
            self.app.remove_browser(&self.shared);
            self.state.monitor.changed();
        }
        let queued = self.shared.shut(&lost);
        fail_queued_calls(queued, &lost);
        let inbox = std::mem::take(&mut self.inbox);
        fail_queued_calls(inbox, &lost);
        let failed = self.pending.len();
        for (_, p) in self.pending.drain() {
            p.reply.fail(error_type::UPLINK_DISCONNECTED, &lost);
        }
        if self.shared.browser.is_none() {
            self.state.detach(&self.shared);
        }
        tracing::info!(
            conn = self.shared.id,
            key = %self.shared.key_id,
            failed_calls = failed,
            reason = fatal.as_ref().map_or("peer closed", |(t, _)| t.as_str()),
            "uplink disconnected"
        );
        match fatal {
            Some((text, code)) => send_fatal(&mut self.ws, &text, code).await,
            None => {
                let close = WsMessage::Close(Some(CloseFrame {
                    code: CLOSE_NORMAL,
                    reason: Utf8Bytes::from_static(""),
                }));
                let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.send(close)).await;
            }
        }
    }
}

fn wrong_arity(n: usize, name: &str) -> String {
    format!(
        "Wrong number of arguments ({n}) passed to {name}(). Did you pass keyword arguments as positional arguments, or vice versa?"
    )
}

/// Object descriptors ferrolink cannot carry, or `None` if `objects` may be
/// passed through as they are.
fn refuse_objects(objects: &RawValue, to_pico: bool) -> Option<String> {
    let text = objects.get();
    for unsupported in ["DataMedia", "LazyMedia", "LiveObject", "Capability"] {
        if text.contains(&format!("\"{unsupported}\"")) {
            return Some(format!(
                "ferrolink does not carry {unsupported} values yet; send the data as JSON (e.g. base64 text) instead"
            ));
        }
    }
    to_pico.then(|| {
        "the Pico W cannot receive dates, big integers or other non-JSON values; send plain JSON".to_owned()
    })
}

fn classify_ws_error(e: &axum::Error, limit: usize) -> End {
    let text = e.to_string();
    if text.contains("UTF-8") || text.contains("utf-8") {
        return End::Fatal {
            text: "ferrolink: a text frame was not valid UTF-8; send JSON text as UTF-8".to_owned(),
            code: 1007,
        };
    }
    if text.contains("too long") || text.contains("Space limit") || text.contains("capacity") {
        End::TooBig {
            text: format!(
                "ferrolink: a message exceeded the {limit}-byte limit; send smaller arguments or raise --max-frame-bytes"
            ),
        }
    } else {
        tracing::debug!(error = %e, "websocket error");
        End::PeerGone
    }
}
