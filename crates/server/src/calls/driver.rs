//! The driver of one connection — an uplink or a browser session — as one
//! task: authenticate (uplinks), then a loop that reads frames into the
//! connection's `ServerSession`, answers built-ins, forwards calls
//! (`forward.rs`), writes what other connections queued for it, and fires
//! its deadlines.
//!
//! Two tables hold every call that touches a connection, so nothing waits
//! forever: `serving`, the calls forwarded *to* it (answered by it, failed
//! with `UplinkDisconnectedError` if it goes), and `made`, the calls it
//! made, each with its deadline from the moment it was accepted. A caller
//! is answered `TimeoutError` by its own driver at its deadline, wherever
//! the call is — queued for a provider that stopped reading, or in flight —
//! and a provider's late answer is dropped.
//!
//! The loop is one hand-written `poll` ([`Driver::poll_run`]): the
//! connection's signal (work queued, or close), its timer, the socket's
//! read side and its write side are all polled in one place, so a peer
//! that stops reading cannot stall the timers (its writes stay pending
//! while deadlines fire; after `write_stall_timeout` without progress it is
//! closed as a slow consumer).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tracing::Instrument as _;

use ferrolink_proto::calls::{CallId, CallTable};
use ferrolink_proto::encode::{self, AppInfo};
use ferrolink_proto::message::{Call, Outcome as ReplyOutcome, Privilege, Reply};
use ferrolink_proto::server_session::{Inbound, PeerAction, ServerSession, SessionTimeout};
use ferrolink_proto::{Instant, error_type};

use crate::calls::builtins::{self, Context as BuiltinContext};
use crate::calls::forward::{self, Request};
use crate::calls::link::{HIGH_WATER, Incoming, Input, Output, Stream};
use crate::calls::peer::{
    BrowserSession, KILL, Outbound, Outcome, Peer, PeerSetup, ReplyTo, WAKE, fail_queued_calls,
};
use crate::calls::registry::AppRuntime;
use crate::calls::shown;
use crate::edge::limits::Held;
use crate::state::ServerState;

/// Largest message before a connection has authenticated (the key
/// message is a few hundred bytes).
const PREAUTH_LIMIT: usize = 16 * 1024;
/// Messages handled per wake-up before the driver writes and lets others run.
const BATCH: usize = 64;
/// How long closing may take: the last frames, then the peer's close.
const CLOSING: Duration = Duration::from_secs(2);

const CLOSE_NORMAL: u16 = 1000;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_PROTOCOL: u16 = 1002;

/// How a connection ended.
enum Ending {
    /// The transport failed or the peer vanished.
    PeerGone,
    /// The peer sent a close frame (with this code, echoed).
    PeerClosed(Option<u16>),
    /// Close with a fatal `{"error": text}` first.
    Fatal { text: String, code: u16 },
}

/// A call this connection serves.
struct Serving {
    reply: ReplyTo,
    depth: u8,
    origin: Option<Arc<Peer>>,
}

/// A call this connection made: its id as the peer wrote it, the function
/// called (one allocation), and when.
struct Made {
    id_and_command: Box<str>,
    id_len: usize,
    started: Instant,
}

impl Made {
    fn new(id: &str, command: &str, started: Instant) -> Self {
        let mut both = String::with_capacity(id.len() + command.len());
        both.push_str(id);
        both.push_str(command);
        Self {
            id_and_command: both.into_boxed_str(),
            id_len: id.len(),
            started,
        }
    }

    fn id(&self) -> &str {
        &self.id_and_command[..self.id_len]
    }

    fn command(&self) -> &str {
        &self.id_and_command[self.id_len..]
    }
}

/// Runs one uplink connection to its end.
pub(crate) async fn serve_uplink(
    state: Arc<ServerState>,
    io: Stream,
    first: Bytes,
    addr: SocketAddr,
    held: Held,
) {
    // Every log line of the connection carries its address, and once
    // authenticated its connection number and key id (never the secret).
    let span = tracing::info_span!(
        "uplink",
        peer = %addr,
        conn = tracing::field::Empty,
        key = tracing::field::Empty
    );
    run_uplink(state, io, first, addr, held)
        .instrument(span)
        .await;
}

async fn run_uplink(
    state: Arc<ServerState>,
    mut io: Stream,
    first: Bytes,
    addr: SocketAddr,
    held: Held,
) {
    let mut input = Input::new(first, PREAUTH_LIMIT);
    let mut out = Output::default();
    let mut session = ServerSession::new(state.config.session.clone(), state.now());
    let auth = tokio::time::timeout(
        state.config.session.auth_timeout,
        authenticate(&state, &mut io, &mut input, &mut out, &mut session, addr),
    )
    .await;
    let (record, library) = match auth {
        Ok(Ok(found)) => found,
        Ok(Err((ending, delay))) => {
            // Repeated wrong keys from one address are answered slowly.
            tokio::time::sleep(delay).await;
            close(&mut io, &mut input, &mut out, ending).await;
            return;
        }
        Err(_) => {
            tracing::info!(peer = %addr, "closing: no key message in time");
            let text = format!(
                "ferrolink: no key message within {} s; send {{\"key\": \"<uplink key>\", \"v\": 8}} first",
                state.config.session.auth_timeout.as_secs()
            );
            let ending = Ending::Fatal {
                text,
                code: CLOSE_POLICY,
            };
            close(&mut io, &mut input, &mut out, ending).await;
            return;
        }
    };
    input.set_limit(state.config.max_frame_bytes);
    let peer = Arc::new(Peer::new(
        state.next_conn_id(),
        PeerSetup {
            key_id: record.id.clone(),
            device: record.device.clone(),
            privilege: record.privilege,
            library,
            protocol_version: session.protocol_version(),
            ip: addr.ip().to_string(),
            app: record.app.clone(),
            browser: None,
        },
        &state.config.environment,
        state.config.max_queued_bytes,
        state.now(),
    ));
    if let Err(e) = state.attach(&peer) {
        tracing::info!(peer = %addr, key = %record.id, reason = %e, "refused after authentication");
        // The verdict has not been sent yet: send this refusal instead.
        let mut out = Output::default();
        let ending = Ending::Fatal {
            text: e.to_string(),
            code: CLOSE_POLICY,
        };
        close(&mut io, &mut input, &mut out, ending).await;
        return;
    }
    let span = tracing::Span::current();
    span.record("conn", peer.id);
    span.record("key", tracing::field::display(&record.id));
    tracing::info!(
        app = %record.app,
        device = record.device.as_deref().unwrap_or("-"),
        peer = %addr,
        version = peer.protocol_version,
        "uplink connected"
    );
    let mut driver = Driver::new(state, peer, session, io, input, out, held);
    driver.core.allowed = record
        .functions
        .as_deref()
        .and_then(|list| crate::keys::FunctionList::new(list).ok())
        .map(Box::new);
    driver.spawn();
}

/// Runs one browser session websocket to its end. The session was
/// authenticated by its cookie (or is anonymous) before the upgrade; it
/// speaks the uplink protocol with client privilege, and receives events.
pub(crate) async fn serve_browser(
    state: Arc<ServerState>,
    io: Stream,
    first: Bytes,
    addr: SocketAddr,
    app: String,
    browser: BrowserSession,
    held: Held,
) {
    let span = tracing::info_span!("browser", peer = %addr, app = %app);
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
        hello.push_str(if state.app(&app).anonymous_calls() {
            ",\"anonymous_calls\":true}}"
        } else {
            ",\"anonymous_calls\":false}}"
        });
        let mut out = Output::default();
        out.text(&hello);
        let input = Input::new(first, state.config.max_frame_bytes);
        let peer = Arc::new(Peer::new(
            state.next_conn_id(),
            PeerSetup {
                key_id: crate::keys::KeyId(String::new()),
                device: None,
                privilege: Privilege::Client,
                library: None,
                protocol_version: 8,
                ip: addr.ip().to_string(),
                app,
                browser: Some(Box::new(browser)),
            },
            &state.config.environment,
            state.config.max_queued_bytes,
            state.now(),
        ));
        state.app(&peer.app).add_browser(&peer);
        state.monitor.changed();
        tracing::debug!(conn = peer.id, "browser session opened");
        Driver::new(state, peer, session, io, input, out, held).spawn();
    }
    .instrument(span)
    .await;
}

/// Reads until the key message, checks the key, answers the verdict.
async fn authenticate(
    state: &Arc<ServerState>,
    io: &mut Stream,
    input: &mut Input,
    out: &mut Output,
    session: &mut ServerSession,
    addr: SocketAddr,
) -> Result<(crate::keys::KeyRecord, Option<String>), (Ending, Duration)> {
    let (key, library) = std::future::poll_fn(|cx| {
        loop {
            match input.next() {
                Ok(Some(Incoming::Text(text))) => match session.handle_text(state.now(), text) {
                    Ok(Inbound::Hello(hello)) => {
                        let library = hello.device.map(|d| shown(&d).to_string());
                        return Poll::Ready(Ok((hello.key.into_owned(), library)));
                    }
                    Ok(_) => {}
                    Err(refusal) => {
                        tracing::info!(peer = %addr, reason = %refusal, "refused before authentication");
                        return Poll::Ready(Err(match refusal.action {
                            PeerAction::Close { text } => Ending::Fatal {
                                text,
                                code: CLOSE_PROTOCOL,
                            },
                            PeerAction::ReplyError { .. } => Ending::PeerGone,
                        }));
                    }
                },
                Ok(Some(Incoming::Ping(p))) => out.pong(p),
                Ok(Some(Incoming::Binary(_) | Incoming::Pong)) => {
                    session.handle_binary(state.now());
                }
                Ok(Some(Incoming::Close(code))) => return Poll::Ready(Err(Ending::PeerClosed(code))),
                Ok(None) => match input.poll_fill(io, cx) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Err(Ending::PeerGone)),
                    Poll::Ready(Ok(_)) => {}
                    Poll::Pending => return Poll::Pending,
                },
                Err(e) => {
                    let (code, mut text) = e.close(input.limit());
                    if code == 1009 {
                        text = format!(
                            "ferrolink: before authentication only the key message may be sent (at most {} bytes): {{\"key\": \"<uplink key>\", \"v\": 8}}",
                            input.limit()
                        );
                    }
                    tracing::info!(peer = %addr, reason = %text, "closing before authentication");
                    return Poll::Ready(Err(link_ending(code, text)));
                }
            }
        }
    })
    .await
    .map_err(|ending| (ending, Duration::ZERO))?;
    let key_id = crate::keys::Secret::new(key.as_str())
        .id()
        .map_or_else(|| "-".to_owned(), |id| id.0);
    match state.authenticate(&key, addr.ip()).await {
        Ok(record) => {
            session.accept(record.privilege);
            let mut frame = String::new();
            let app = AppInfo {
                id: &record.app,
                environment: &state.config.environment,
            };
            encode::auth_ok(&mut frame, record.privilege, &app);
            out.text(&frame);
            Ok((record, library))
        }
        Err(refusal) => {
            session.reject();
            tracing::info!(peer = %addr, key = %key_id, reason = %refusal.error, "authentication failed");
            let ending = Ending::Fatal {
                text: refusal.error.to_string(),
                code: CLOSE_POLICY,
            };
            Err((ending, refusal.delay))
        }
    }
}

fn link_ending(code: u16, text: String) -> Ending {
    if text.is_empty() {
        Ending::PeerGone
    } else {
        Ending::Fatal { text, code }
    }
}

/// Sends the last words of a connection and closes it: a fatal error and a
/// close frame (or the answer to the peer's close), within [`CLOSING`];
/// then waits for the peer's close so unread input does not turn ours into
/// a reset that could eat the error text (except after an oversized frame,
/// whose rest must not be read).
async fn close(io: &mut Stream, input: &mut Input, out: &mut Output, ending: Ending) {
    let drain = match ending {
        Ending::PeerGone => return,
        Ending::PeerClosed(code) => {
            // Echo the peer's code (RFC 6455 section 5.5.1); 1005 and
            // 1006 may not be sent.
            let code = code
                .filter(|c| !matches!(c, 1005 | 1006))
                .unwrap_or(CLOSE_NORMAL);
            out.close(code, "");
            false
        }
        Ending::Fatal { text, code } => {
            let mut frame = String::new();
            encode::fatal(&mut frame, &text);
            out.text(&frame);
            out.close(code, &text);
            code != 1009
        }
    };
    let flush = std::future::poll_fn(|cx| out.poll_flush(io, cx));
    if !matches!(tokio::time::timeout(CLOSING, flush).await, Ok(Ok(()))) {
        return;
    }
    if drain {
        let read_to_close = std::future::poll_fn(|cx| {
            loop {
                match input.next() {
                    Ok(Some(Incoming::Close(_))) | Err(_) => return Poll::Ready(()),
                    Ok(Some(_)) => {}
                    Ok(None) => match input.poll_fill(io, cx) {
                        Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(()),
                        Poll::Ready(Ok(_)) => {}
                        Poll::Pending => return Poll::Pending,
                    },
                }
            }
        });
        let _ = tokio::time::timeout(CLOSING, read_to_close).await;
    }
    io.shutdown().await;
}

/// Everything a connection's task owns but the socket and its input, so
/// handling a message (borrowed from the input) can change the rest.
struct Core {
    state: Arc<ServerState>,
    peer: Arc<Peer>,
    app: Arc<AppRuntime>,
    session: ServerSession,
    out: Output,
    /// Calls forwarded to this connection, by server call id.
    serving: CallTable<Serving>,
    /// Calls this connection made, by server call id.
    made: CallTable<Made>,
    inbox: VecDeque<Outbound>,
    /// Since when the socket has taken none of the bytes waiting.
    stalled_since: Option<Instant>,
    /// The deadline the timer is set to.
    armed: Instant,
    /// What this connection's key may register (`None`: anything).
    allowed: Option<Box<crate::keys::FunctionList>>,
    warnings: crate::logs::Every,
    /// Data table calls waiting for the media they declared.
    media: Option<Box<crate::tables::MediaIn>>,
}

struct Driver {
    io: Stream,
    input: Input,
    core: Core,
    /// The connection's places against the limits, given back when the
    /// driver ends.
    _held: Held,
}

pin_project_lite::pin_project! {
    /// A connection's task while it runs: written out by hand because an
    /// `async fn` would keep two copies of the driver (its argument and
    /// its local), and idle connections are counted in their thousands.
    struct Running {
        driver: Option<Driver>,
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl Future for Running {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let Some(driver) = this.driver.as_mut() else {
            return Poll::Ready(());
        };
        let ending = std::task::ready!(driver.poll_run(cx, this.sleep));
        if let Some(driver) = this.driver.take() {
            tokio::spawn(driver.close(ending).in_current_span());
        }
        Poll::Ready(())
    }
}

impl Driver {
    fn new(
        state: Arc<ServerState>,
        peer: Arc<Peer>,
        session: ServerSession,
        io: Stream,
        input: Input,
        out: Output,
        held: Held,
    ) -> Self {
        let capacity = state.config.max_pending_calls;
        Self {
            io,
            input,
            _held: held,
            core: Core {
                app: state.app(&peer.app),
                serving: CallTable::new(capacity.saturating_mul(4).max(16)),
                made: CallTable::new(capacity.saturating_add(1)),
                state,
                peer,
                session,
                out,
                inbox: VecDeque::new(),
                stalled_since: None,
                armed: Instant::from_millis(u64::MAX),
                allowed: None,
                warnings: crate::logs::Every::default(),
                media: None,
            },
        }
    }

    /// Runs the connection as a task of its own, so what an idle
    /// connection holds is the driver and its timer, not the (larger)
    /// state of the upgrade and authentication that came before.
    fn spawn(mut self) {
        let first = self.core.next_deadline();
        let sleep = tokio::time::sleep_until(self.core.state.to_tokio(first));
        self.core.armed = first;
        let driver = self;
        tokio::spawn(
            Running {
                driver: Some(driver),
                sleep,
            }
            .in_current_span(),
        );
    }

    /// The closing handshake, run as a task of its own once the
    /// connection has ended.
    async fn close(mut self, ending: Ending) {
        let ending = self.core.finish(ending);
        close(&mut self.io, &mut self.input, &mut self.core.out, ending).await;
    }

    /// One wake-up: the signal, the timer, reading and writing, until
    /// nothing is ready (or a batch is done and others should run).
    fn poll_run(
        &mut self,
        cx: &mut Context<'_>,
        mut sleep: Pin<&mut tokio::time::Sleep>,
    ) -> Poll<Ending> {
        let core = &mut self.core;
        for _ in 0..8 {
            let now = core.state.now();
            core.peer.signal.register(cx.waker());
            let flags = core.peer.signal.take();
            if flags & KILL != 0 {
                return Poll::Ready(core.killed());
            }
            let mut progress = false;
            if flags & WAKE != 0 {
                core.drain_outbox(now);
                progress = true;
            }
            if sleep.as_mut().poll(cx).is_ready() {
                core.armed = Instant::from_millis(u64::MAX);
                if let Err(ending) = core.on_timer(now) {
                    return Poll::Ready(ending);
                }
                progress = true;
            }
            // Read unless our own unwritten answers pile up (the peer is
            // not reading them): then let the socket's backpressure work.
            if core.out.len() < HIGH_WATER {
                let mut handled = 0;
                while handled < BATCH {
                    match self.input.next() {
                        Ok(Some(message)) => {
                            handled += 1;
                            if let Err(ending) = core.on_incoming(now, message) {
                                return Poll::Ready(ending);
                            }
                        }
                        Ok(None) => match self.input.poll_fill(&mut self.io, cx) {
                            Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Ending::PeerGone),
                            Poll::Ready(Ok(n)) => core.state.metrics.read(n),
                            Poll::Pending => break,
                        },
                        Err(e) => {
                            let (code, text) = e.close(self.input.limit());
                            tracing::warn!(conn = core.peer.id, reason = %text, "closing: websocket violation");
                            return Poll::Ready(link_ending(code, text));
                        }
                    }
                }
                if handled > 0 {
                    core.peer
                        .last_seen
                        .store(now.as_millis(), std::sync::atomic::Ordering::Relaxed);
                    progress = true;
                }
                if !self.input.has_unhandled() {
                    self.input.release();
                }
            }
            if !core.out.is_empty() {
                let before = core.out.len();
                match core.out.poll_flush(&mut self.io, cx) {
                    Poll::Ready(Ok(())) => core.stalled_since = None,
                    Poll::Ready(Err(_)) => return Poll::Ready(Ending::PeerGone),
                    Poll::Pending if core.out.len() < before => core.stalled_since = Some(now),
                    Poll::Pending => {
                        core.stalled_since.get_or_insert(now);
                    }
                }
                core.state.metrics.wrote(before - core.out.len());
                core.peer.set_unsent(core.out.len());
            }
            let next = core.next_deadline();
            if next != core.armed {
                core.armed = next;
                sleep.as_mut().reset(core.state.to_tokio(next));
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // A long burst: let other tasks run, then carry on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Core {
    fn killed(&self) -> Ending {
        let text = self
            .peer
            .close_reason()
            .unwrap_or_else(|| "ferrolink: connection closed by the server".to_owned());
        Ending::Fatal {
            text,
            code: CLOSE_POLICY,
        }
    }

    fn next_deadline(&mut self) -> Instant {
        let never = Instant::from_millis(u64::MAX);
        let mut next = self.session.poll_timeout().unwrap_or(never);
        for t in [self.serving.poll_timeout(), self.made.poll_timeout()]
            .into_iter()
            .flatten()
        {
            next = next.min(t);
        }
        if let Some(since) = self.stalled_since {
            next = next.min(since + self.state.config.write_stall_timeout);
        }
        next
    }

    fn reply_error(&mut self, id: &str, error_type: &str, message: &str) {
        let mut frame = String::with_capacity(id.len() + message.len() + 96);
        encode::reply_error(&mut frame, id, error_type, message);
        self.out.text(&frame);
    }

    fn on_incoming(&mut self, now: Instant, message: Incoming<'_>) -> Result<(), Ending> {
        match message {
            Incoming::Text(text) => self.on_text(now, text),
            Incoming::Ping(payload) => {
                self.session.handle_binary(now);
                self.out.pong(payload);
                Ok(())
            }
            // Media chunks go to the table call waiting for them, if any
            // (other calls carrying media are refused); pongs count as life.
            Incoming::Binary(bytes) => {
                self.session.handle_binary(now);
                let done = self.media.as_mut().and_then(|m| m.data(bytes));
                match done {
                    Some(Ok(job)) => {
                        crate::tables::Service::submit_job(&self.state, &self.peer, job)
                    }
                    Some(Err((id, f))) => self.reply_error(&id, f.ty, &f.message),
                    None => {}
                }
                Ok(())
            }
            Incoming::Pong => {
                self.session.handle_binary(now);
                Ok(())
            }
            Incoming::Close(code) => Err(Ending::PeerClosed(code)),
        }
    }

    fn on_text(&mut self, now: Instant, text: &str) -> Result<(), Ending> {
        match self.session.handle_text(now, text) {
            Ok(Inbound::Call(call)) => {
                self.on_call(now, &call);
                Ok(())
            }
            Ok(Inbound::Reply(reply)) => {
                self.on_reply(now, reply);
                Ok(())
            }
            Ok(Inbound::Register { name }) => {
                if let Some(allowed) = &self.allowed
                    && !allowed.allows(&name)
                {
                    tracing::warn!(conn = self.peer.id, key = %self.peer.key_id, name = %shown(&name), "refused a registration the key does not allow");
                    return Err(Ending::Fatal {
                        text: format!(
                            "ferrolink: key {} may not register \"{}\"; ask the operator to add it to the key's --functions",
                            self.peer.key_id,
                            shown(&name)
                        ),
                        code: CLOSE_POLICY,
                    });
                }
                if self.app.register(&self.peer, &name).is_err() {
                    return Err(Ending::Fatal {
                        text: "Invalid function name specification".to_owned(),
                        code: CLOSE_POLICY,
                    });
                }
                let mut registered = self
                    .peer
                    .registered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if !registered.iter().any(|n| **n == *name) {
                    tracing::debug!(conn = self.peer.id, name = %shown(&name), "registered");
                    // Once per name and connection, as `finish` withdraws.
                    if let Some(cluster) = self.state.cluster.get() {
                        cluster.provide(&self.peer.app, &name, self.peer.device.as_deref());
                    }
                    registered.push(name.into());
                    drop(registered);
                    self.state.monitor.changed();
                }
                Ok(())
            }
            Ok(Inbound::ChunkHeader {
                request_id,
                media_id,
                last,
            }) => {
                if let Some(m) = self.media.as_mut() {
                    m.header(request_id, media_id, last);
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
                    if let Some(suppressed) = self.warnings.allow(now) {
                        tracing::warn!(conn = self.peer.id, suppressed, reason = %refusal.kind, "refused a message");
                    }
                    self.reply_error(&id, error_type, &message);
                    Ok(())
                }
                PeerAction::Close { text } => {
                    tracing::warn!(conn = self.peer.id, reason = %refusal.kind, "closing: protocol violation");
                    Err(Ending::Fatal {
                        text,
                        code: CLOSE_PROTOCOL,
                    })
                }
            },
        }
    }

    /// The still-pending call on this connection that `call` was made
    /// from (its `call-stack-id`), if any. Only this connection's own
    /// calls are looked at, so nobody can borrow another connection's
    /// context by guessing ids.
    fn outer(&self, call: &Call<'_>) -> Option<&Serving> {
        call.call_stack_id
            .as_deref()
            .and_then(encode::parse_server_call_id)
            .and_then(|outer| self.serving.get(CallId(outer)))
    }

    fn on_call(&mut self, now: Instant, call: &Call<'_>) {
        let id = call.id.literal();
        let outer = self.outer(call);
        let depth = outer.map_or(1, |o| o.depth.saturating_add(1));
        // The browser session the call acts for: this connection itself
        // when it is one, else the one the outer call acts for.
        let origin = if self.peer.browser.is_some() {
            Some(self.peer.clone())
        } else {
            outer.and_then(|o| o.origin.clone())
        };
        let cx = BuiltinContext {
            state: &self.state,
            peer: &self.peer,
            app: &self.app,
            origin: origin.clone(),
        };
        if crate::tables::handles(&call.command) {
            let media = crate::tables::declared_media(call);
            if media.is_empty() {
                crate::tables::Service::submit(&self.state, &self.peer, call);
                return;
            }
            // Its media follows in chunks: hold the call until they are in.
            let waiting = self.media.get_or_insert_with(Box::default);
            let expired = waiting.expired(now);
            let held = waiting.hold(&self.peer, call, media, now);
            for (id, f) in expired {
                self.reply_error(&id, f.ty, &f.message);
            }
            if let Err(f) = held {
                self.reply_error(id, f.ty, &f.message);
            }
            return;
        }
        if let Some(result) = builtins::answer(&cx, call) {
            let mut frame = String::new();
            match result {
                Ok(value) => encode::reply_response(&mut frame, id, &value, None),
                Err((ty, message)) => encode::reply_error(&mut frame, id, ty, &message),
            }
            self.out.text(&frame);
            return;
        }
        let request = Request {
            command: &call.command,
            args: call.args.get(),
            kwargs: call.kwargs.get(),
            objects: call.objects.map(|o| o.get()),
            depth,
            origin,
        };
        match forward::forward(
            &self.state,
            &self.app,
            &self.peer,
            self.made.len(),
            request,
            now,
        ) {
            Ok(f) => {
                let made = Made::new(id, &call.command, now);
                if self.made.insert(CallId(f.call), f.deadline, made).is_err() {
                    // Cannot happen (admission keeps the table below its
                    // capacity); if it did, answer now and drop the late reply.
                    self.reply_error(
                        id,
                        error_type::INTERNAL,
                        "the server lost track of this call",
                    );
                }
                self.peer
                    .in_flight
                    .store(self.made.len(), std::sync::atomic::Ordering::Relaxed);
            }
            Err(refused) => self.reply_error(id, refused.error_type, &refused.message),
        }
    }

    fn on_reply(&mut self, now: Instant, reply: Reply<'_>) {
        let id = reply.id.value();
        let Some(call) = encode::parse_server_call_id(&id) else {
            if let Some(suppressed) = self.warnings.allow(now) {
                tracing::warn!(conn = self.peer.id, suppressed, id = %shown(&id), "a reply to no call of the server's");
            }
            return;
        };
        let Some(serving) = self.serving.remove(CallId(call)) else {
            tracing::debug!(conn = self.peer.id, call, "late reply dropped");
            return;
        };
        let objects = reply.objects.map(|o| o.get());
        if serving.reply.caller.is_pico && objects.is_some() {
            serving.reply.fail(
                error_type::SERIALIZATION,
                "the result contains values a Pico W cannot receive (dates, media or other objects); return plain JSON",
            );
            return;
        }
        let mut body = String::new();
        let outcome = match reply.outcome {
            ReplyOutcome::Response(value) => {
                encode::reply_body_response(&mut body, value.get(), objects);
                Outcome::Ok
            }
            ReplyOutcome::Error(error) => {
                encode::reply_body_error_raw(&mut body, error.get());
                Outcome::Error(ferrolink_proto::message::error_type_of(error).into())
            }
        };
        serving.reply.answer(body, outcome);
    }

    /// Handles what other connections queued for this one.
    fn drain_outbox(&mut self, now: Instant) {
        let mut inbox = std::mem::take(&mut self.inbox);
        self.peer.take_queued(&mut inbox);
        for item in inbox.drain(..) {
            match item {
                Outbound::Frame(frame) => self.out.text(&frame),
                Outbound::Media(frame, chunks) => {
                    self.out.text(&frame);
                    for (header, bytes) in chunks {
                        self.out.text(&header);
                        self.out.binary(&bytes);
                    }
                }
                Outbound::Call(call) => {
                    if call.deadline <= now {
                        // Its caller has been answered `TimeoutError` already.
                        continue;
                    }
                    let serving = Serving {
                        reply: call.reply,
                        depth: call.depth,
                        origin: call.origin,
                    };
                    match self.serving.insert(CallId(call.id), call.deadline, serving) {
                        Ok(()) => self.out.text(&call.frame),
                        Err((full, s)) => s.reply.fail(
                            error_type::QUOTA_EXCEEDED,
                            &format!("the provider is busy: {full}"),
                        ),
                    }
                }
                Outbound::Answer(answer) => {
                    let Some(made) = self.made.remove(CallId(answer.call)) else {
                        // Timed out (answered already) before this came.
                        continue;
                    };
                    self.out
                        .text_parts(&["{\"id\":", made.id(), ",", &answer.body]);
                    let took = now.saturating_duration_since(made.started);
                    self.state.call_finished(
                        &self.peer.app,
                        &self.peer.label,
                        made.command(),
                        took,
                        answer.outcome.as_str(),
                    );
                }
            }
        }
        self.inbox = inbox;
        self.peer
            .in_flight
            .store(self.made.len(), std::sync::atomic::Ordering::Relaxed);
        self.peer.set_unsent(self.out.len());
    }

    fn on_timer(&mut self, now: Instant) -> Result<(), Ending> {
        if let Some(why) = self.session.handle_timeout(now) {
            let text = match why {
                SessionTimeout::Idle => format!(
                    "ferrolink: nothing received for {} s (heartbeats stopped); closing",
                    self.state.config.session.idle_timeout.as_secs()
                ),
                SessionTimeout::NoKey => "ferrolink: no key message in time".to_owned(),
            };
            return Err(Ending::Fatal {
                text,
                code: CLOSE_POLICY,
            });
        }
        // Calls to this connection past their deadline: their callers are
        // answered by their own drivers; forget them here.
        while self.serving.expire(now).is_some() {}
        let timeout = self.state.config.call_timeout;
        while let Some((_, made)) = self.made.expire(now) {
            let msg = format!(
                "call to \"{}\" got no answer within {} s",
                made.command(),
                timeout.as_secs_f64()
            );
            self.reply_error(made.id(), error_type::TIMEOUT, &msg);
            let took = now.saturating_duration_since(made.started);
            self.state.call_finished(
                &self.peer.app,
                &self.peer.label,
                made.command(),
                took,
                error_type::TIMEOUT,
            );
        }
        self.peer
            .in_flight
            .store(self.made.len(), std::sync::atomic::Ordering::Relaxed);
        if let Some(since) = self.stalled_since
            && now.saturating_duration_since(since) >= self.state.config.write_stall_timeout
        {
            tracing::warn!(
                conn = self.peer.id,
                "closing a slow consumer: its socket took nothing for the stall bound"
            );
            self.peer.close_with(format!(
                "ferrolink: closing a connection that stopped reading: nothing was written to it for {} s",
                self.state.config.write_stall_timeout.as_secs()
            ));
            // Its writes are stuck: do not wait for them when closing.
            return Err(Ending::PeerGone);
        }
        Ok(())
    }

    /// Unregisters the connection and answers everything still waiting on
    /// it; returns how to close the socket.
    fn finish(&mut self, ending: Ending) -> Ending {
        let (lost, fatal) = match &ending {
            Ending::Fatal { text, code } if *code == 1009 => (
                "Data payload too big - please use Media objects to transfer large amounts of data.".to_owned(),
                Some(text.clone()),
            ),
            Ending::Fatal { text, .. } => ("Uplink disconnected".to_owned(), Some(text.clone())),
            Ending::PeerGone | Ending::PeerClosed(_) => ("Uplink disconnected".to_owned(), None),
        };
        let registered = self.peer.registered();
        self.app.unregister_all(&self.peer, &registered);
        if let Some(cluster) = self.state.cluster.get() {
            cluster.withdraw(&self.peer.app, &registered, self.peer.device.as_deref());
        }
        if self.peer.browser.is_some() {
            self.app.remove_browser(&self.peer);
            self.state.monitor.changed();
        }
        fail_queued_calls(self.peer.shut(&lost), &lost);
        fail_queued_calls(std::mem::take(&mut self.inbox), &lost);
        self.state.tables.closed(self.peer.id);
        let failed = self.serving.len();
        for (_, s) in self.serving.drain() {
            s.reply.fail(error_type::UPLINK_DISCONNECTED, &lost);
        }
        if self.peer.browser.is_none() {
            self.state.detach(&self.peer);
        }
        tracing::info!(
            conn = self.peer.id,
            key = %self.peer.key_id,
            failed_calls = failed,
            reason = fatal.as_deref().unwrap_or("peer closed"),
            "uplink disconnected"
        );
        ending
    }
}
#[cfg(test)]
mod tests {
    /// An idle connection's task is this future (plus tokio's task header
    /// and the tracing span): keep it small, the idle-memory target in
    /// docs/benchmarks.md counts it ten thousand times.
    #[test]
    fn an_idle_connection_task_stays_small() {
        let running = size_of::<super::Running>();
        assert!(
            running <= 768,
            "a running connection's task grew to {running} bytes"
        );
    }
}
