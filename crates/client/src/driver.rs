//! The task that owns the connection: a loop around the sans-IO
//! `ClientSession`, plus the supervisor that reconnects.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use ferrolink_proto::calls::CallId;
use ferrolink_proto::client_session::{
    CallResult, ClientConfig, ClientEvent, ClientSession, CloseReason, IncomingCall, LocalFailure,
};
use ferrolink_proto::{Instant, wire};

use ferrolink_proto::backoff::Backoff;

use crate::backoff::ReconnectPolicy;
use crate::error::{
    CallError, CallErrorKind, ConnectError, ConnectErrorKind, HandlerError, RemoteError,
};
use crate::status::{Status, status_text};

/// Any byte stream the websocket runs over (TCP, or TLS over TCP).
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Ws = WebSocketStream<Box<dyn Io>>;
type Reply = oneshot::Sender<Result<String, CallError>>;

/// Receives `output` text from the server.
pub(crate) type OutputFn = Arc<dyn Fn(&str) + Send + Sync>;

/// Where the answers of incoming calls come back to the connection task:
/// the call id and the function's result.
pub(crate) type Responder = mpsc::UnboundedSender<(String, Result<String, HandlerError>)>;

/// Starts one incoming call (the builder supplies it: running a function
/// needs the handlers and a handle on the client, which this task does not
/// know).
pub(crate) type Dispatch = Box<dyn Fn(IncomingCall, &Responder) + Send + Sync>;

pub(crate) struct Settings {
    pub(crate) url: String,
    pub(crate) key: String,
    /// The names of the registered functions.
    pub(crate) functions: Vec<String>,
    pub(crate) reconnect: ReconnectPolicy,
    pub(crate) connect_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) max_pending: usize,
    pub(crate) on_output: Option<OutputFn>,
    pub(crate) tls: crate::tls::TlsConfig,
}

pub(crate) enum Command {
    Call {
        command: String,
        args: String,
        kwargs: String,
        timeout: Duration,
        call_stack_id: Option<String>,
        reply: Reply,
    },
    Disconnect(oneshot::Sender<()>),
}

/// The protocol core's clock: milliseconds since the link opened, on tokio's
/// clock (so paused-time tests drive it).
#[derive(Clone, Copy)]
struct Clock(tokio::time::Instant);

impl Clock {
    fn now(self) -> Instant {
        Instant::from_millis(self.0.elapsed().as_millis() as u64)
    }

    fn to_tokio(self, t: Instant) -> tokio::time::Instant {
        self.0 + Duration::from_millis(t.as_millis())
    }
}

/// An authenticated connection.
pub(crate) struct Link {
    ws: Ws,
    conn: ClientSession,
    clock: Clock,
    /// Calls that arrived while `connect` was still reading replies of its
    /// own; `run` dispatches them first.
    early: Vec<IncomingCall>,
}

/// `ws://` or `wss://` URL parts.
struct Target {
    tls: bool,
    host: String,
    port: u16,
}

fn target(url: &str) -> Result<Target, ConnectError> {
    let bad =
        |why: &str| ConnectError::new(ConnectErrorKind::InvalidUrl, format!("\"{url}\" {why}"));
    let (tls, rest) = if let Some(rest) = url.strip_prefix("wss://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("ws://") {
        (false, rest)
    } else {
        return Err(bad("is not a ws:// or wss:// URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(bad(
            "must not carry credentials; the key is sent after connecting",
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
            h.trim_matches(['[', ']']).to_owned(),
            p.parse().map_err(|_| bad("has a bad port"))?,
        ),
        _ => (
            authority.trim_matches(['[', ']']).to_owned(),
            if tls { 443 } else { 80 },
        ),
    };
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    Ok(Target { tls, host, port })
}

/// TCP, then TLS with every check (for `wss://`), then the websocket
/// upgrade. Nothing about the key leaves before TLS has verified.
async fn open(settings: &Settings) -> Result<Ws, ConnectError> {
    let t = target(&settings.url)?;
    let tcp = TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|e| {
            ConnectError::with_source(
                ConnectErrorKind::Transport,
                format!("cannot reach {}:{}", t.host, t.port),
                e,
            )
        })?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = if t.tls {
        let name = rustls::pki_types::ServerName::try_from(t.host.clone()).map_err(|_| {
            ConnectError::new(
                ConnectErrorKind::InvalidUrl,
                format!("\"{}\" is not a valid host name", t.host),
            )
        })?;
        let connector = tokio_rustls::TlsConnector::from(settings.tls.client_config());
        let stream = connector.connect(name, tcp).await.map_err(|e| {
            ConnectError::new(
                ConnectErrorKind::Tls,
                crate::tls::explain(&e, &t.host, &settings.tls),
            )
        })?;
        Box::new(stream)
    } else {
        Box::new(tcp)
    };
    // tungstenite zero-fills the free part of its read buffer before every
    // read; its 128 KiB default makes that memset the client's top cost.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(16 * 1024);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(settings.url.as_str(), io, Some(config))
            .await
            .map_err(|e| {
                ConnectError::with_source(
                    ConnectErrorKind::Transport,
                    format!("the websocket upgrade with {} failed", settings.url),
                    e,
                )
            })?;
    Ok(ws)
}

/// Opens the websocket, sends the key and the registrations, and waits for
/// the verdict. Over TLS with trust bundles kept, then asks the server for
/// a newer bundle; if one is installed, connects again under it.
pub(crate) async fn connect(settings: &Settings) -> Result<Link, ConnectError> {
    let attempt = async {
        let mut link = handshake(settings).await?;
        if target(&settings.url)?.tls
            && settings.tls.keeps_bundles()
            && let Some(sequence) = update_trust(&mut link, settings).await?
        {
            tracing::info!(
                sequence,
                "installed a newer trust bundle; connecting again under it"
            );
            let _ = link.ws.close(None).await;
            link = handshake(settings).await?;
        }
        Ok(link)
    };
    match tokio::time::timeout(settings.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::new(
            ConnectErrorKind::Timeout,
            format!(
                "no answer to the key from {} within {:?}",
                settings.url, settings.connect_timeout
            ),
        )),
    }
}

/// The websocket, the key, the registrations and the verdict.
async fn handshake(settings: &Settings) -> Result<Link, ConnectError> {
    let ws = open(settings).await?;
    let clock = Clock(tokio::time::Instant::now());
    let mut config = ClientConfig::new(settings.key.clone());
    config.heartbeat_interval = settings.heartbeat_interval;
    config.heartbeat_timeout = settings.heartbeat_timeout;
    config.max_pending = settings.max_pending;
    let mut conn = ClientSession::new(config, clock.now());
    for name in &settings.functions {
        conn.register(name);
    }
    let mut link = Link {
        ws,
        conn,
        clock,
        early: Vec::new(),
    };
    // Registrations have no acknowledgement; once the key is accepted, an
    // echo sent after them comes back only after the server has processed
    // them (it handles a connection's frames in order), so a refusal
    // arrives first and `connect` reports it.
    let mut barrier = None;
    loop {
        flush(&mut link).await.map_err(|e| {
            ConnectError::with_source(
                ConnectErrorKind::Transport,
                "the connection broke during the handshake",
                e,
            )
        })?;
        // Only the verdict is read here; anything after it stays queued
        // in the connection for the driver.
        if let Some(ev) = link.conn.poll_event() {
            match ev {
                ClientEvent::Authenticated { .. } if settings.functions.is_empty() => {
                    return Ok(link);
                }
                ClientEvent::Authenticated { .. } => {
                    let now = link.clock.now();
                    let id = link
                        .conn
                        .call(
                            now,
                            "anvil.private.echo",
                            "[\"registered\"]",
                            "{}",
                            settings.connect_timeout,
                        )
                        .map_err(|e| {
                            ConnectError::new(ConnectErrorKind::Protocol, e.to_string())
                        })?;
                    barrier = Some(id);
                }
                ClientEvent::Completed { id, result } if Some(id) == barrier => {
                    return match result {
                        CallResult::Response(_) => Ok(link),
                        // The link closed; the reason follows as `Closed`.
                        CallResult::Failed(LocalFailure::ConnectionClosed) => continue,
                        other => Err(ConnectError::new(
                            ConnectErrorKind::Protocol,
                            format!("the server did not confirm the registrations: {other:?}"),
                        )),
                    };
                }
                ClientEvent::Closed(CloseReason::Fatal(text)) => {
                    return Err(ConnectError::from_fatal(&text));
                }
                ClientEvent::Closed(CloseReason::Protocol(text)) => {
                    return Err(ConnectError::new(
                        ConnectErrorKind::Protocol,
                        format!("the server does not speak the uplink protocol: {text}"),
                    ));
                }
                ClientEvent::Closed(_) => {
                    return Err(ConnectError::new(
                        ConnectErrorKind::Transport,
                        "the server closed the connection before answering the key",
                    ));
                }
                ClientEvent::Output(text) => output(settings, &text),
                ClientEvent::Incoming(call) => link.early.push(call),
                _ => {}
            }
            continue;
        }
        match link.ws.next().await {
            Some(Ok(Message::Text(t))) => link.conn.handle_text(link.clock.now(), &t),
            Some(Ok(Message::Close(_))) | None => link.conn.handle_closed(),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                return Err(ConnectError::with_source(
                    ConnectErrorKind::Transport,
                    "the connection broke during the handshake",
                    e,
                ));
            }
        }
    }
}

/// Asks the server for a trust bundle newer than the one in use and
/// installs it if it verifies. `Some(sequence)` when one was installed.
async fn update_trust(link: &mut Link, settings: &Settings) -> Result<Option<u64>, ConnectError> {
    let have = settings
        .tls
        .trust_bundle_sequence()
        .map_or_else(|| "null".to_owned(), |s| s.to_string());
    let now = link.clock.now();
    let id = link
        .conn
        .call(
            now,
            wire::TRUST_BUNDLE_COMMAND,
            &format!("[{have}]"),
            "{}",
            settings.connect_timeout,
        )
        .map_err(|e| ConnectError::new(ConnectErrorKind::Protocol, e.to_string()))?;
    let broke = |e| {
        ConnectError::with_source(
            ConnectErrorKind::Transport,
            "the connection broke while asking for a trust bundle",
            e,
        )
    };
    loop {
        flush(link).await.map_err(broke)?;
        while let Some(ev) = link.conn.poll_event() {
            match ev {
                ClientEvent::Completed { id: done, result } if done == id => {
                    return Ok(match result {
                        CallResult::Response(reply) => offer_bundle(settings, &reply),
                        CallResult::Error(e) => {
                            tracing::debug!(error = %e, "the server offers no trust bundles");
                            None
                        }
                        CallResult::Failed(f) => {
                            return Err(ConnectError::new(
                                ConnectErrorKind::Transport,
                                format!("asking for a trust bundle failed: {f:?}"),
                            ));
                        }
                    });
                }
                ClientEvent::Incoming(call) => link.early.push(call),
                ClientEvent::Output(text) => output(settings, &text),
                _ => {}
            }
        }
        match link.ws.next().await {
            Some(Ok(Message::Text(t))) => link.conn.handle_text(link.clock.now(), &t),
            Some(Ok(Message::Close(_))) | None => link.conn.handle_closed(),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(broke(e)),
        }
    }
}

/// Installs the bundle in a `ferrolink.trust.bundle` reply, if it is one
/// newer than ours by our signer; logs why not otherwise.
fn offer_bundle(settings: &Settings, reply: &str) -> Option<u64> {
    use base64::Engine as _;
    #[derive(serde::Deserialize)]
    struct Offer {
        bundle: String,
    }
    let offer = match serde_json::from_str::<Option<Offer>>(reply) {
        Ok(Some(offer)) => offer,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "the server's trust bundle reply is malformed; ignored");
            return None;
        }
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(offer.bundle) else {
        tracing::warn!("the server's trust bundle is not base64; ignored");
        return None;
    };
    match settings.tls.offer_bundle(&bytes) {
        Ok(sequence) => Some(sequence),
        Err(e) => {
            tracing::warn!(error = %e, "trust bundle offered by the server");
            None
        }
    }
}

async fn flush(link: &mut Link) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let mut wrote = false;
    while let Some(frame) = link.conn.poll_transmit() {
        link.ws.feed(Message::text(frame)).await?;
        wrote = true;
    }
    if wrote {
        link.ws.flush().await?;
    }
    Ok(())
}

fn output(settings: &Settings, text: &str) {
    match &settings.on_output {
        Some(f) => f(text),
        None => tracing::info!(output = text, "server output"),
    }
}

/// How one connection ended.
enum End {
    /// `disconnect()` was called.
    Disconnected,
    /// Every `Client` was dropped.
    Dropped,
    /// The link broke; reconnect.
    Lost(String),
    /// The server sent a fatal error (for example, the key was revoked).
    Fatal(String),
}

/// Runs connections until the client is disconnected, dropped, or refused.
pub(crate) async fn supervise(
    settings: Arc<Settings>,
    first: Link,
    mut commands: mpsc::Receiver<Command>,
    status: watch::Sender<Status>,
    dispatch: Dispatch,
) {
    let mut backoff = crate::backoff::backoff(&settings.reconnect);
    let mut link = Some(first);
    loop {
        let current = match link.take() {
            Some(l) => l,
            None => match reconnect(&settings, &mut backoff, &mut commands, &status).await {
                Some(l) => l,
                None => break,
            },
        };
        backoff.reset();
        status.send_replace(Status::Connected);
        tracing::info!(url = %settings.url, "uplink connected");
        let end = run(current, &settings, &mut commands, &dispatch).await;
        match end {
            End::Disconnected | End::Dropped => {
                status.send_replace(Status::Closed);
                break;
            }
            End::Lost(reason) => {
                tracing::warn!(reason = %reason, "uplink connection lost");
                if !settings.reconnect.enabled {
                    status.send_replace(Status::Closed);
                    break;
                }
            }
            End::Fatal(text) => {
                let e = ConnectError::from_fatal(&text);
                if !e.is_retryable() && e.kind() != ConnectErrorKind::Refused {
                    tracing::error!(error = %e, "the server closed the uplink");
                    status.send_replace(Status::Failed {
                        kind: e.kind(),
                        reason: e.to_string(),
                    });
                    break;
                }
                // Shutting down, a connection limit, a restart: the
                // server's words, and then the reconnect loop.
                tracing::warn!(reason = %text, "the server closed the uplink");
                if !settings.reconnect.enabled {
                    status.send_replace(Status::Closed);
                    break;
                }
            }
        }
    }
    refuse_forever(&mut commands, &status).await;
}

/// Waits and retries until connected; `None` if the client was closed
/// meanwhile or the server refused the key.
async fn reconnect(
    settings: &Settings,
    backoff: &mut Backoff,
    commands: &mut mpsc::Receiver<Command>,
    status: &watch::Sender<Status>,
) -> Option<Link> {
    loop {
        status.send_replace(Status::Reconnecting {
            attempt: backoff.attempt() + 1,
        });
        let delay = backoff.next_delay(rand::random::<u32>());
        if !idle(delay, commands, status).await {
            status.send_replace(Status::Closed);
            return None;
        }
        match connect(settings).await {
            Ok(link) => return Some(link),
            Err(e) if e.is_retryable() => {
                tracing::warn!(attempt = backoff.attempt(), error = %e, "reconnect failed");
            }
            Err(e) => {
                tracing::error!(error = %e, "reconnect refused; giving up");
                status.send_replace(Status::Failed {
                    kind: e.kind(),
                    reason: e.to_string(),
                });
                return None;
            }
        }
    }
}

/// Sleeps for `delay`, failing calls fast meanwhile. `false` if the client
/// was disconnected or dropped.
async fn idle(
    delay: Duration,
    commands: &mut mpsc::Receiver<Command>,
    status: &watch::Sender<Status>,
) -> bool {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return true,
            cmd = commands.recv() => match cmd {
                Some(Command::Call { reply, .. }) => {
                    let _ = reply.send(Err(CallError::new(CallErrorKind::NotConnected, status_text(&status.borrow()))));
                }
                Some(Command::Disconnect(done)) => {
                    let _ = done.send(());
                    return false;
                }
                None => return false,
            },
        }
    }
}

async fn refuse_forever(commands: &mut mpsc::Receiver<Command>, status: &watch::Sender<Status>) {
    while let Some(cmd) = commands.recv().await {
        match cmd {
            Command::Call { reply, .. } => {
                let _ = reply.send(Err(CallError::new(
                    CallErrorKind::NotConnected,
                    status_text(&status.borrow()),
                )));
            }
            Command::Disconnect(done) => {
                let _ = done.send(());
            }
        }
    }
}

fn call_result(name: &str, timeout: Duration, result: CallResult) -> Result<String, CallError> {
    match result {
        CallResult::Response(raw) => Ok(raw),
        CallResult::Error(raw) => Err(CallError::from_remote(name, RemoteError::parse(&raw))),
        CallResult::Failed(LocalFailure::Timeout) => Err(CallError::new(
            CallErrorKind::Timeout,
            format!("{name}: no answer within {} s", timeout.as_secs_f64()),
        )),
        CallResult::Failed(LocalFailure::ConnectionClosed) => Err(CallError::new(
            CallErrorKind::ConnectionLost,
            format!(
                "{name}: the connection was lost before the answer came (the function may or may not have run)"
            ),
        )),
    }
}

async fn run(
    mut link: Link,
    settings: &Settings,
    commands: &mut mpsc::Receiver<Command>,
    dispatch: &Dispatch,
) -> End {
    let mut waiting: Waiting = HashMap::new();
    let (respond_tx, mut respond_rx) =
        mpsc::unbounded_channel::<(String, Result<String, HandlerError>)>();
    let clock = link.clock;
    let sleep = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(sleep);
    let mut requested: Option<End> = None;
    for call in std::mem::take(&mut link.early) {
        dispatch(call, &respond_tx);
    }
    loop {
        let mut closed = None;
        while let Some(ev) = link.conn.poll_event() {
            match ev {
                ClientEvent::Completed { id, result } => {
                    if let Some((reply, name, timeout)) = waiting.remove(&id) {
                        let _ = reply.send(call_result(&name, timeout, result));
                    }
                }
                ClientEvent::Incoming(call) => dispatch(call, &respond_tx),
                ClientEvent::Output(text) => output(settings, &text),
                ClientEvent::Authenticated { .. } => {}
                ClientEvent::Closed(reason) => closed = Some(reason),
            }
        }
        if let Some(reason) = closed {
            let _ = link.ws.close(None).await;
            return match (requested, reason) {
                (Some(end), _) => end,
                (None, CloseReason::Fatal(text)) => End::Fatal(text),
                (None, CloseReason::HeartbeatTimeout) => End::Lost(format!(
                    "the server did not answer a heartbeat within {:?}",
                    settings.heartbeat_timeout
                )),
                (None, CloseReason::TransportClosed) => {
                    End::Lost("the server closed the connection".to_owned())
                }
                (None, CloseReason::Protocol(text)) => End::Lost(format!("protocol error: {text}")),
            };
        }
        if let Err(e) = flush(&mut link).await {
            tracing::debug!(error = %e, "write failed");
            link.conn.handle_closed();
            continue;
        }
        if let Some(t) = link.conn.poll_timeout() {
            sleep.as_mut().reset(clock.to_tokio(t));
        }
        tokio::select! {
            msg = link.ws.next() => on_frame(&mut link, msg),
            cmd = commands.recv() => on_command(&mut link, &mut waiting, &mut requested, cmd),
            Some((id, result)) = respond_rx.recv() => on_response(&mut link, &id, result),
            () = &mut sleep => link.conn.handle_timeout(clock.now()),
        }
        // Take whatever else is ready before writing, so a burst of calls or
        // replies goes out in one write instead of one write each.
        for _ in 0..BATCH {
            let mut progressed = false;
            if let Ok(cmd) = commands.try_recv() {
                on_command(&mut link, &mut waiting, &mut requested, Some(cmd));
                progressed = true;
            }
            if let Ok((id, result)) = respond_rx.try_recv() {
                on_response(&mut link, &id, result);
                progressed = true;
            }
            if let Some(msg) = link.ws.next().now_or_never() {
                on_frame(&mut link, msg);
                progressed = true;
            }
            if !progressed || requested.is_some() {
                break;
            }
        }
    }
}

/// Inputs handled per wake-up before writing.
const BATCH: usize = 64;

type Waiting = HashMap<CallId, (Reply, String, Duration)>;

fn on_frame(link: &mut Link, msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) {
    match msg {
        Some(Ok(Message::Text(t))) => link.conn.handle_text(link.clock.now(), &t),
        Some(Ok(Message::Close(_)) | Err(_)) | None => link.conn.handle_closed(),
        Some(Ok(_)) => {}
    }
}

fn on_command(
    link: &mut Link,
    waiting: &mut Waiting,
    requested: &mut Option<End>,
    cmd: Option<Command>,
) {
    match cmd {
        Some(Command::Call {
            command,
            args,
            kwargs,
            timeout,
            call_stack_id,
            reply,
        }) => {
            let now = link.clock.now();
            match link.conn.call_nested(
                now,
                &command,
                &args,
                &kwargs,
                timeout,
                call_stack_id.as_deref(),
            ) {
                Ok(id) => {
                    waiting.insert(id, (reply, command, timeout));
                }
                Err(full) => {
                    let _ = reply.send(Err(CallError::new(
                        CallErrorKind::QuotaExceeded,
                        format!("{command}: {full}"),
                    )));
                }
            }
        }
        Some(Command::Disconnect(done)) => {
            let _ = done.send(());
            *requested = Some(End::Disconnected);
            link.conn.close();
        }
        None => {
            *requested = Some(End::Dropped);
            link.conn.close();
        }
    }
}

fn on_response(link: &mut Link, id: &str, result: Result<String, HandlerError>) {
    link.conn.respond(
        id,
        result
            .as_ref()
            .map(String::as_str)
            .map_err(|e| (e.error_type(), e.message())),
    );
}
