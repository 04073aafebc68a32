//! Calls between servers over NATS (`serve --cluster nats://…`).
//!
//! A server that holds providers of a function name subscribes for it on
//! NATS — `ferrolink.call.<app>.<name>` in a queue group, so that one of
//! the servers holding the name answers each call, and
//! `ferrolink.call.<app>.<name>.<device>` for calls addressed to one
//! device (app, name and device hex-encoded, as names may hold any
//! character). A call for a name no local connection provides goes out as
//! a NATS request with the call's deadline; its arguments travel as the
//! caller sent them (`args`, `kwargs` and `objects` one after the other,
//! split by length headers), the
//! answer comes back as the provider's reply body, and the caller's driver
//! receives it like any local answer. Local calls never touch NATS.
//!
//! The serving side forwards a request through `calls::forward` like any
//! other caller (a connection-less caller per app and privilege,
//! `calls::console`), so admission, routing and the in-flight bound apply.
//!
//! Servers that die: every server announces itself on
//! `ferrolink.node.<id>` each second. Answers come to the calling server
//! on its own subject (`ferrolink.reply.<id>.<call>`), and the serving
//! server first says there that it took the call; a call taken by a
//! server not heard from for [`NODE_SILENCE`] — or that no server said it
//! took within that time — is answered `UplinkDisconnectedError` then, not
//! at its deadline.
//!
//! Not yet: names registered as regular expressions are reachable only on
//! their own server, and the browser user of a session's calls does not
//! cross servers (docs/cluster.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;

use ferrolink_proto::Instant;
use ferrolink_proto::admission::Refused;
use ferrolink_proto::error_type;
use ferrolink_proto::message::Privilege;

use crate::calls::console::Console;
use crate::calls::peer::{Answer, Outbound, Outcome, Peer};
use crate::state::ServerState;

/// The queue group every server's shared-name subscriptions join.
const QUEUE: &str = "ferrolink";
/// How long a server serves a call from another server before it tells
/// the asker that it took it (calls answered sooner need no note: the
/// asker fails a call nobody announced after [`NODE_SILENCE`]).
const TAKEN_AFTER: Duration = Duration::from_millis(250);
/// How long a call for a name no server holds exactly waits for a server
/// whose pattern matches it (the sweep answers it after this).
const MATCH_WAIT: Duration = Duration::from_millis(300);
/// The header a server answering a pattern question gives its id in.
const MATCHED: &str = "Ferrolink-Matched";
/// Where a server asks every other for the uplinks it holds (for its
/// dashboard).
const UPLINKS: &str = "ferrolink.uplinks";
/// How long a dashboard waits for the other servers' uplinks.
const UPLINKS_WAIT: Duration = Duration::from_millis(500);

/// How often a server announces itself, and the silence after which the
/// calls it took are failed.
const HEARTBEAT: Duration = Duration::from_secs(1);
pub(crate) const NODE_SILENCE: Duration = Duration::from_millis(3_500);

/// Headers of a call request and its answer.
const ARGS_LEN: &str = "Ferrolink-Args-Len";
const KWARGS_LEN: &str = "Ferrolink-Kwargs-Len";
const PRIVILEGE: &str = "Ferrolink-Privilege";
const DEPTH: &str = "Ferrolink-Depth";
const OUTCOME: &str = "Ferrolink-Outcome";
/// On the first message back: the id of the server that took the call.
const TAKEN: &str = "Ferrolink-Taken";
/// On an event: the server that raised it, its target sessions
/// (comma-separated) and channel.
const NODE: &str = "Ferrolink-Node";
/// On a call made for a browser session: its id, and its user's email
/// (hex-encoded) if one is logged in.
const SESSION: &str = "Ferrolink-Session";
const USER: &str = "Ferrolink-User";
const SESSIONS: &str = "Ferrolink-Sessions";
const CHANNEL: &str = "Ferrolink-Channel";

/// This server's part in a cluster.
pub(crate) struct Cluster {
    client: async_nats::Client,
    /// Subscriptions held: per subject, how many local registrations want
    /// it and the task that serves it.
    subscriptions: Mutex<HashMap<String, (usize, tokio::task::JoinHandle<()>)>>,
    /// Connection-less callers that serve requests from other servers.
    callers: Mutex<HashMap<(String, Privilege), Arc<Console>>>,
    state: Weak<ServerState>,
    /// This server's id in the cluster (random, per start).
    node: String,
    /// Calls sent to other servers and not answered yet.
    pending: Mutex<HashMap<u64, Pending>>,
    /// Other servers: when each was last heard from.
    nodes: Mutex<HashMap<String, std::time::Instant>>,
    /// Calls to publish, in order (bounded by the callers' in-flight
    /// limits: every queued call is a pending call of a caller).
    outbox: tokio::sync::mpsc::UnboundedSender<Queued>,
}

/// A call waiting for another server's answer.
struct Pending {
    caller: Arc<Peer>,
    /// The server that took it, once it said so.
    node: Option<String>,
    /// When it was sent: a call no server has said it took within
    /// [`NODE_SILENCE`] was lost with the server that received it.
    sent: std::time::Instant,
    deadline: Instant,
    /// The text of `NoServerFunctionError` if no server has the name.
    missing: String,
    /// The call as sent, kept to send it again to a server whose pattern
    /// matches its name if no server holds the name itself.
    resend: Option<Resend>,
}

/// A server's view of its cluster, for its metrics.
pub(crate) struct View {
    /// Whether NATS is connected.
    pub(crate) connected: bool,
    /// Other servers heard from lately.
    pub(crate) peers: usize,
    /// Calls sent to other servers and not answered yet.
    pub(crate) pending: usize,
    /// Subscriptions held for names provided here.
    pub(crate) subscriptions: usize,
}

/// A call kept for sending again (see [`Pending::resend`]).
struct Resend {
    app: String,
    name: String,
    device: Option<String>,
    headers: async_nats::HeaderMap,
    payload: Bytes,
    /// When servers holding patterns were asked about the name.
    asked: Option<std::time::Instant>,
}

fn hex(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The value of header `name` of `m`, if it has one.
fn header(m: &async_nats::Message, name: &str) -> Option<String> {
    m.headers
        .as_ref()
        .and_then(|map| map.get(name))
        .map(|v| v.as_str().to_owned())
}

/// The text [`hex`] encoded, if `s` is that.
fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// The subject of `name` in `app`, and of `name` on `device`.
fn subject(app: &str, name: &str, device: Option<&str>) -> String {
    tail("ferrolink.call", app, name, device)
}

/// `prefix.<app>.<name>[.<device>]`, each hex-encoded.
fn tail(prefix: &str, app: &str, name: &str, device: Option<&str>) -> String {
    match device {
        Some(d) => format!("{prefix}.{}.{}.{}", hex(app), hex(name), hex(d)),
        None => format!("{prefix}.{}.{}", hex(app), hex(name)),
    }
}

/// What a server holding providers registered as patterns for `app`
/// subscribes to: questions "does a pattern of yours match this name?".
fn patterns_subject(app: &str) -> String {
    format!("ferrolink.match.{}.>", hex(app))
}

impl Cluster {
    /// Connects to the NATS server at `url` (in the background: the
    /// server starts, and keeps trying, while NATS is away).
    /// With `ca`, the NATS server must speak TLS with a certificate from
    /// one of the authorities in that PEM file (so must a `tls://` URL,
    /// against the system's roots).
    pub(crate) async fn join(
        url: &str,
        ca: Option<&std::path::Path>,
        state: Weak<ServerState>,
    ) -> Result<Arc<Self>, String> {
        let mut options = async_nats::ConnectOptions::new()
            .name("ferrolink")
            .retry_on_initial_connect();
        if let Some(ca) = ca {
            // Read here so that a wrong path is a start-up error, not a
            // connection that silently never comes.
            std::fs::metadata(ca).map_err(|e| format!("--cluster-ca {}: {e}", ca.display()))?;
            options = options
                .require_tls(true)
                .add_root_certificates(ca.to_owned());
        }
        let client = options.connect(url).await.map_err(|e| {
            format!(
                "cannot use the cluster's NATS server at {}: {e}",
                crate::storage::redact_url(url)
            )
        })?;
        let node = format!("{:016x}", rand::random::<u64>());
        tracing::info!(node = %node, nats = %crate::storage::redact_url(url), "joining the cluster");
        let (outbox, queued) = tokio::sync::mpsc::unbounded_channel();
        let cluster = Arc::new(Self {
            client,
            subscriptions: Mutex::default(),
            callers: Mutex::default(),
            state,
            node,
            pending: Mutex::default(),
            nodes: Mutex::default(),
            outbox,
        });
        tokio::spawn(Self::publish_calls(
            Arc::downgrade(&cluster),
            cluster.client.clone(),
            queued,
        ));
        let replies = cluster
            .subscribe(format!("ferrolink.reply.{}.*", cluster.node))
            .await?;
        let beats = cluster.subscribe("ferrolink.node.*").await?;
        let events = cluster.subscribe("ferrolink.event.*").await?;
        let asked = cluster.subscribe(UPLINKS).await?;
        tokio::spawn(Self::answer_uplinks(Arc::downgrade(&cluster), asked));
        let logouts = cluster.subscribe("ferrolink.logout.*").await?;
        tokio::spawn(Self::receive_logouts(Arc::downgrade(&cluster), logouts));
        // Calls sent to this server alone: those for a name its patterns
        // match (see `serve_match`).
        let direct = cluster
            .subscribe(format!("ferrolink.direct.{}.>", cluster.node))
            .await?;
        tokio::spawn(Self::serve_direct(Arc::downgrade(&cluster), direct));
        tokio::spawn(Self::receive_events(Arc::downgrade(&cluster), events));
        tokio::spawn(Self::receive_replies(Arc::downgrade(&cluster), replies));
        tokio::spawn(Self::watch_nodes(Arc::downgrade(&cluster), beats));
        Ok(cluster)
    }

    /// Subscribes to `subject` (while joining: a failure stops the start).
    async fn subscribe(
        &self,
        subject: impl async_nats::subject::ToSubject,
    ) -> Result<async_nats::Subscriber, String> {
        self.client
            .subscribe(subject)
            .await
            .map_err(|e| format!("cannot subscribe on the cluster's NATS server: {e}"))
    }

    /// Publishes on a task of its own (the caller does not wait for NATS);
    /// a failure is logged as not having done `what`.
    fn publish_soon(
        &self,
        subject: String,
        reply: Option<String>,
        headers: async_nats::HeaderMap,
        payload: Bytes,
        what: &'static str,
    ) {
        let client = self.client.clone();
        tokio::spawn(async move {
            let sent = match reply {
                Some(r) => {
                    client
                        .publish_with_reply_and_headers(subject, r, headers, payload)
                        .await
                }
                None => client.publish_with_headers(subject, headers, payload).await,
            };
            if let Err(e) = sent {
                tracing::warn!(error = %e, "cannot {what}");
            }
        });
    }

    /// The subject on which the answer (and "taken" note) of call `call`
    /// reaches this server.
    fn reply_subject(&self, call: u64) -> String {
        format!("ferrolink.reply.{}.{call}", self.node)
    }

    /// Sends an event raised here (its finished `frame`) to the browser
    /// sessions of `app` on the other servers with one of the ids
    /// `sessions` or subscribed to `channel`.
    pub(crate) fn publish_event(
        &self,
        app: &str,
        sessions: &[String],
        channel: Option<&str>,
        frame: &str,
    ) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(NODE, self.node.as_str());
        // Session ids are the server's own (letters and digits); anything
        // else names no session anywhere.
        let ids: Vec<&str> = sessions
            .iter()
            .map(String::as_str)
            .filter(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            .collect();
        headers.insert(SESSIONS, ids.join(",").as_str());
        if let Some(c) = channel {
            headers.insert(CHANNEL, hex(c).as_str());
        }
        self.publish_soon(
            format!("ferrolink.event.{}", hex(app)),
            None,
            headers,
            Bytes::from(frame.to_owned()),
            "send an event to the other servers",
        );
    }

    /// Delivers events raised on other servers to the sessions here.
    async fn receive_events(cluster: Weak<Self>, mut events: async_nats::Subscriber) {
        while let Some(m) = events.next().await {
            let Some(cluster) = cluster.upgrade() else {
                return;
            };
            let Some(state) = cluster.state.upgrade() else {
                return;
            };
            let header = |h: &str| header(&m, h);
            if header(NODE).as_deref() == Some(cluster.node.as_str()) {
                continue; // raised here, delivered here already
            }
            let Some(app) = m.subject.strip_prefix("ferrolink.event.").and_then(unhex) else {
                continue;
            };
            let Ok(frame) = std::str::from_utf8(&m.payload) else {
                continue;
            };
            let sessions: Vec<String> = header(SESSIONS)
                .unwrap_or_default()
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            let channel = header(CHANNEL).and_then(|c| unhex(&c));
            let runtime = state.app(&app);
            crate::calls::builtins::event_targets_here(
                &runtime,
                &sessions,
                channel.as_deref(),
                frame,
            );
        }
    }

    /// Delivers answers (and "taken by" notes) to the calls waiting here.
    async fn receive_replies(cluster: Weak<Self>, mut replies: async_nats::Subscriber) {
        while let Some(m) = replies.next().await {
            let Some(cluster) = cluster.upgrade() else {
                return;
            };
            let Some(call) = m
                .subject
                .rsplit('.')
                .next()
                .and_then(|c| c.parse::<u64>().ok())
            else {
                continue;
            };
            cluster.on_reply(call, &m);
        }
    }

    fn on_reply(&self, call: u64, m: &async_nats::Message) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let header = |h: &str| header(m, h);
        if m.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            let Some(p) = pending.get_mut(&call) else {
                return;
            };
            match p.resend.as_mut() {
                // No server holds the name itself: ask the servers that
                // hold patterns of the app whether one matches it.
                Some(r) if r.asked.is_none() => {
                    r.asked = Some(std::time::Instant::now());
                    self.publish_soon(
                        tail("ferrolink.match", &r.app, &r.name, r.device.as_deref()),
                        Some(self.reply_subject(call)),
                        async_nats::HeaderMap::new(),
                        Bytes::new(),
                        "ask the cluster which pattern matches a name",
                    );
                }
                // Nor does any pattern.
                _ => {
                    if let Some(p) = pending.remove(&call) {
                        let answer =
                            Answer::error(call, error_type::NO_SERVER_FUNCTION, &p.missing);
                        let _ = p.caller.enqueue(Outbound::Answer(answer));
                    }
                }
            }
            return;
        }
        if let Some(node) = header(MATCHED) {
            // The first server whose pattern matches takes the call.
            if let Some(p) = pending.get_mut(&call)
                && p.resend.as_ref().is_some_and(|r| r.asked.is_some())
                && let Some(r) = p.resend.take()
                && !node.contains(['.', '*', '>', ' '])
            {
                p.sent = std::time::Instant::now();
                let subject = tail(
                    &format!("ferrolink.direct.{node}"),
                    &r.app,
                    &r.name,
                    r.device.as_deref(),
                );
                let caller = p.caller.clone();
                // `send` may take the lock itself (when it cannot send).
                drop(pending);
                self.send(call, caller, subject, r.headers, r.payload);
            }
            return;
        }
        if let Some(node) = header(TAKEN) {
            if let Some(p) = pending.get_mut(&call) {
                p.node = Some(node);
                p.resend = None;
            }
            return;
        }
        let Some(p) = pending.remove(&call) else {
            return; // answered already, or past its deadline
        };
        drop(pending);
        let outcome = header(OUTCOME).unwrap_or_else(|| "ok".to_owned());
        let answer = match String::from_utf8(m.payload.to_vec()) {
            Ok(body) => Answer {
                call,
                body,
                outcome: if outcome == "ok" {
                    Outcome::Ok
                } else {
                    Outcome::Error(outcome.into())
                },
            },
            Err(_) => Answer::error(
                call,
                error_type::INTERNAL,
                "another server's answer was not UTF-8",
            ),
        };
        let _ = p.caller.enqueue(Outbound::Answer(answer));
    }

    /// Announces this server each [`HEARTBEAT`], notes the others', and
    /// fails the calls taken by servers gone silent. A heartbeat carries
    /// the server's count of connection changes: when another server's
    /// moves, or a server appears or falls silent, dashboards here refresh.
    async fn watch_nodes(cluster: Weak<Self>, mut beats: async_nats::Subscriber) {
        let mut tick = tokio::time::interval(HEARTBEAT / 2);
        let mut beat = 0u32;
        // Each other server's last change count (bounded like `nodes`).
        let mut changes: HashMap<String, u64> = HashMap::new();
        let mut live = 0;
        loop {
            tokio::select! {
                m = beats.next() => {
                    let Some(m) = m else { return };
                    let Some(cluster) = cluster.upgrade() else { return };
                    if let Some(node) = m.subject.strip_prefix("ferrolink.node.") {
                        if node == cluster.node {
                            continue;
                        }
                        {
                            let mut nodes = cluster.nodes.lock().unwrap_or_else(|p| p.into_inner());
                            // Bounded by the servers of the cluster; a stale
                            // entry is dropped once silent.
                            nodes.insert(node.to_owned(), std::time::Instant::now());
                        }
                        let count = std::str::from_utf8(&m.payload).ok().and_then(|t| t.parse().ok());
                        if let Some(count) = count
                            && changes.insert(node.to_owned(), count) != Some(count)
                            && let Some(state) = cluster.state.upgrade()
                        {
                            state.monitor.changed_elsewhere();
                        }
                    }
                }
                _ = tick.tick() => {
                    let Some(cluster) = cluster.upgrade() else { return };
                    let Some(state) = cluster.state.upgrade() else { return };
                    beat += 1;
                    if beat.is_multiple_of(2) {
                        let subject = format!("ferrolink.node.{}", cluster.node);
                        let count = Bytes::from(state.monitor.changes().to_string());
                        let _ = cluster.client.publish(subject, count).await;
                    }
                    cluster.sweep();
                    let now = cluster.live_nodes();
                    if now != live {
                        live = now;
                        state.monitor.changed_elsewhere();
                    }
                    {
                        let nodes = cluster.nodes.lock().unwrap_or_else(|p| p.into_inner());
                        changes.retain(|n, _| nodes.contains_key(n));
                    }
                }
            }
        }
    }

    /// What the metrics show of this server's place in the cluster.
    pub(crate) fn view(&self) -> View {
        View {
            connected: self.connected(),
            peers: self.live_nodes(),
            pending: self.pending.lock().unwrap_or_else(|p| p.into_inner()).len(),
            subscriptions: self
                .subscriptions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len(),
        }
    }

    /// How many other servers were heard from within [`NODE_SILENCE`].
    fn live_nodes(&self) -> usize {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .values()
            .filter(|seen| seen.elapsed() < NODE_SILENCE)
            .count()
    }

    /// Tells the other servers that a user of `app` logged out (`login` is
    /// the hash of the login cookie): they close that login's sessions.
    pub(crate) fn publish_logout(&self, app: &str, login: &[u8; 32]) {
        self.publish_soon(
            format!("ferrolink.logout.{}", hex(app)),
            None,
            async_nats::HeaderMap::new(),
            Bytes::copy_from_slice(login),
            "tell the cluster about a log-out",
        );
    }

    /// Closes the sessions of logins that logged out on other servers.
    async fn receive_logouts(cluster: Weak<Self>, mut logouts: async_nats::Subscriber) {
        while let Some(m) = logouts.next().await {
            let Some(cluster) = cluster.upgrade() else {
                return;
            };
            let Some(state) = cluster.state.upgrade() else {
                return;
            };
            let app = m.subject.strip_prefix("ferrolink.logout.").and_then(unhex);
            let (Some(app), Ok(login)) = (app, <[u8; 32]>::try_from(&m.payload[..])) else {
                continue;
            };
            let closed = state.app(&app).close_login(&login);
            if closed > 0 {
                tracing::info!(app = %app, sessions = closed, "closed the sessions of a login that logged out elsewhere");
            }
        }
    }

    /// Serves the calls sent to this server alone.
    async fn serve_direct(cluster: Weak<Self>, mut calls: async_nats::Subscriber) {
        while let Some(request) = calls.next().await {
            let Some(cluster) = cluster.upgrade() else {
                return;
            };
            tokio::spawn(async move { cluster.serve(request).await });
        }
    }

    /// Answers other servers asking for this server's uplinks.
    async fn answer_uplinks(cluster: Weak<Self>, mut asked: async_nats::Subscriber) {
        while let Some(m) = asked.next().await {
            let Some(cluster) = cluster.upgrade() else {
                return;
            };
            let (Some(reply), Some(state)) = (m.reply, cluster.state.upgrade()) else {
                continue;
            };
            // The question names who asks: not this server.
            if *m.payload == *cluster.node.as_bytes() {
                continue;
            }
            let answer = serde_json::json!({
                "node": cluster.node,
                "uplinks": crate::activity::uplinks(&state),
            });
            let _ = cluster
                .client
                .publish(reply, Bytes::from(answer.to_string()))
                .await;
        }
    }

    /// The uplinks the other servers hold (each entry names its server's
    /// `node`), and per server that answered within [`UPLINKS_WAIT`]
    /// `{"node", "uplinks": count}`. Waits no longer than that, and not at
    /// all once every live server has answered.
    pub(crate) async fn uplinks_elsewhere(
        &self,
    ) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        let expected = self.live_nodes();
        let (mut uplinks, mut nodes) = (Vec::new(), Vec::new());
        if expected == 0 || !self.connected() {
            return (uplinks, nodes);
        }
        let inbox = self.client.new_inbox();
        let Ok(mut answers) = self.client.subscribe(inbox.clone()).await else {
            return (uplinks, nodes);
        };
        if self
            .client
            .publish_with_reply(UPLINKS, inbox, Bytes::from(self.node.clone()))
            .await
            .is_err()
        {
            return (uplinks, nodes);
        }
        let deadline = tokio::time::Instant::now() + UPLINKS_WAIT;
        while nodes.len() < expected {
            let Ok(Some(m)) = tokio::time::timeout_at(deadline, answers.next()).await else {
                break;
            };
            let Ok(answer) = serde_json::from_slice::<serde_json::Value>(&m.payload) else {
                continue;
            };
            let (Some(node), Some(list)) = (answer["node"].as_str(), answer["uplinks"].as_array())
            else {
                continue;
            };
            if node == self.node {
                continue;
            }
            nodes.push(serde_json::json!({"node": node, "uplinks": list.len()}));
            uplinks.extend(list.iter().cloned());
        }
        (uplinks, nodes)
    }

    /// Fails the calls taken by servers not heard from for
    /// [`NODE_SILENCE`], and forgets calls past their deadline (their
    /// callers were answered by their own drivers).
    fn sweep(&self) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let now = state.now();
        let silent: Vec<String> = {
            let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            nodes.retain(|_, seen| seen.elapsed() < NODE_SILENCE * 10);
            nodes
                .iter()
                .filter(|(_, seen)| seen.elapsed() >= NODE_SILENCE)
                .map(|(n, _)| n.clone())
                .collect()
        };
        let connected = self.connected();
        let mut failed = Vec::new();
        let mut unmatched = Vec::new();
        {
            let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.retain(|call, p| {
                if p.deadline <= now {
                    return false;
                }
                if p.resend
                    .as_ref()
                    .and_then(|r| r.asked)
                    .is_some_and(|t| t.elapsed() >= MATCH_WAIT)
                {
                    unmatched.push((*call, p.caller.clone(), p.missing.clone()));
                    return false;
                }
                let gone = match &p.node {
                    Some(n) => silent.contains(n) || (!nodes.contains_key(n) && !connected),
                    // A call still running is announced after
                    // `TAKEN_AFTER`; silence for longer means the server
                    // that received it died first.
                    None => p.sent.elapsed() >= NODE_SILENCE,
                };
                if gone {
                    failed.push((*call, p.caller.clone()));
                }
                !gone
            });
        }
        for (call, caller, missing) in unmatched {
            let answer = Answer::error(call, error_type::NO_SERVER_FUNCTION, &missing);
            let _ = caller.enqueue(Outbound::Answer(answer));
        }
        for (call, caller) in failed {
            let answer = Answer::error(
                call,
                error_type::UPLINK_DISCONNECTED,
                "the server that held this function's provider stopped answering; call again (its devices reconnect to another server)",
            );
            let _ = caller.enqueue(Outbound::Answer(answer));
        }
    }

    /// Whether the NATS server is connected now.
    pub(crate) fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// A local connection (on `device`, if it has one) registered `name`
    /// of `app`: serve calls for it from other servers.
    pub(crate) fn provide(self: &Arc<Self>, app: &str, name: &str, device: Option<&str>) {
        for (s, shared) in Self::subjects(app, name, device) {
            self.hold(s, shared);
        }
    }

    /// The subjects a registration of `name` holds, and whether each is
    /// shared with other servers' providers (a queue group): a plain name's
    /// own (and its device's); for a pattern, the app's pattern questions.
    fn subjects(app: &str, name: &str, device: Option<&str>) -> Vec<(String, bool)> {
        if crate::names::is_pattern(name) {
            return vec![(patterns_subject(app), false)];
        }
        let mut out = vec![(subject(app, name, None), true)];
        if let Some(d) = device {
            out.push((subject(app, name, Some(d)), false));
        }
        out
    }

    /// A local connection's registrations ended.
    pub(crate) fn withdraw(&self, app: &str, names: &[Box<str>], device: Option<&str>) {
        let mut subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        for name in names {
            for (s, _) in Self::subjects(app, name, device) {
                if let Some((count, _)) = subs.get_mut(&s) {
                    *count -= 1;
                    if *count == 0
                        && let Some((_, task)) = subs.remove(&s)
                    {
                        // Dropping the subscriber unsubscribes.
                        task.abort();
                    }
                }
            }
        }
    }

    /// Takes no more calls from other servers (the server is draining):
    /// every subscription for a name goes; calls already taken are
    /// answered.
    pub(crate) fn stop_serving(&self) {
        let mut subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        for (_, (_, task)) in subs.drain() {
            task.abort();
        }
    }

    /// This server's id in the cluster.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    fn hold(self: &Arc<Self>, subject: String, shared: bool) {
        let draining = self
            .state
            .upgrade()
            .is_none_or(|s| s.draining.load(std::sync::atomic::Ordering::Relaxed));
        let mut subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        if draining {
            return;
        }
        if let Some((count, _)) = subs.get_mut(&subject) {
            *count += 1;
            return;
        }
        let cluster = Arc::downgrade(self);
        let client = self.client.clone();
        let s = subject.clone();
        let task = tokio::spawn(async move {
            let subscribed = if shared {
                client.queue_subscribe(s.clone(), QUEUE.to_owned()).await
            } else {
                client.subscribe(s.clone()).await
            };
            let mut requests = match subscribed {
                Ok(sub) => sub,
                Err(e) => {
                    tracing::warn!(subject = %s, error = %e, "cannot subscribe on NATS");
                    return;
                }
            };
            while let Some(request) = requests.next().await {
                let Some(cluster) = cluster.upgrade() else {
                    return;
                };
                tokio::spawn(async move { cluster.serve(request).await });
            }
        });
        subs.insert(subject, (1, task));
    }

    /// Answers a call from another server through the local providers (or
    /// a question about a name, see [`Cluster::serve_match`]).
    async fn serve(&self, request: async_nats::Message) {
        let Some(reply) = request.reply.clone() else {
            return;
        };
        let Some(state) = self.state.upgrade() else {
            return;
        };
        if request.subject.starts_with("ferrolink.match.") {
            return self.serve_match(&state, &request, reply).await;
        }
        let (outcome, body) = match parse_request(&request) {
            Ok(call) => {
                let caller = self.caller(&state, &call.app, call.privilege);
                let origin = call.session.map(|(id, email)| {
                    remote_session(&state, &call.app, call.privilege, id, email)
                });
                let request = crate::calls::forward::Request {
                    command: &call.command,
                    args: call.args,
                    kwargs: call.kwargs,
                    objects: call.objects,
                    depth: call.depth,
                    origin,
                };
                let answered = caller.call_raw(&state, request);
                tokio::pin!(answered);
                // Most calls are answered before the asking server needs to
                // know who took them; one still running after a moment is
                // announced, so that the asker fails it at once if this
                // server dies.
                tokio::select! {
                    done = &mut answered => done,
                    () = tokio::time::sleep(TAKEN_AFTER) => {
                        let mut taken = async_nats::HeaderMap::new();
                        taken.insert(TAKEN, self.node.as_str());
                        let _ = self
                            .client
                            .publish_with_headers(reply.clone(), taken, Bytes::new())
                            .await;
                        answered.await
                    }
                }
            }
            Err(message) => {
                let mut body = String::new();
                ferrolink_proto::encode::reply_body_error(
                    &mut body,
                    error_type::INTERNAL,
                    &message,
                );
                (error_type::INTERNAL.to_owned(), body)
            }
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(OUTCOME, outcome.as_str());
        if let Err(e) = self
            .client
            .publish_with_headers(reply, headers, Bytes::from(body))
            .await
        {
            tracing::warn!(error = %e, "cannot answer a call from another server");
        }
    }

    /// Answers "does a provider of yours match this name?" — asked when no
    /// server holds the name itself — with this server's id if one does
    /// (the asker then sends the call to `ferrolink.direct.<id>`), and not
    /// at all otherwise.
    async fn serve_match(
        &self,
        state: &ServerState,
        request: &async_nats::Message,
        reply: async_nats::Subject,
    ) {
        let parts: Vec<&str> = request.subject.as_str().split('.').collect();
        let (app, name, device) = match parts.as_slice() {
            ["ferrolink", "match", app, name] => (unhex(app), unhex(name), None),
            ["ferrolink", "match", app, name, device] => {
                (unhex(app), unhex(name), Some(unhex(device)))
            }
            _ => return,
        };
        let (Some(app), Some(name)) = (app, name) else {
            return;
        };
        let device = match device {
            Some(Some(d)) => Some(d),
            Some(None) => return,
            None => None,
        };
        if matches!(
            state.app(&app).route(&name, device.as_deref()),
            crate::calls::registry::Route::Provider(_)
        ) {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(MATCHED, self.node.as_str());
            let _ = self
                .client
                .publish_with_headers(reply, headers, Bytes::new())
                .await;
        }
    }

    fn caller(&self, state: &ServerState, app: &str, privilege: Privilege) -> Arc<Console> {
        let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        let key = (app.to_owned(), privilege);
        if let Some(c) = callers.get(&key)
            && c.is_open()
        {
            return c.clone();
        }
        let c = Console::start(state, app, privilege, "cluster");
        callers.insert(key, c.clone());
        c
    }

    /// Sends `out` (call `out.call` of `caller`) to whichever server
    /// provides its name; the answer reaches `caller` as an
    /// [`Outbound::Answer`]. Refused at once when NATS is not connected.
    pub(crate) fn call(
        self: &Arc<Self>,
        caller: &Arc<Peer>,
        out: &Outgoing<'_>,
    ) -> Result<(), Refused> {
        let &Outgoing {
            call,
            name,
            device,
            args,
            kwargs,
            objects,
            depth,
            deadline,
            session,
        } = out;
        if !self.connected() {
            return Err(Refused {
                error_type: error_type::UPLINK_DISCONNECTED,
                message: format!(
                    "no local provider of \"{name}\", and this server is not connected to the cluster's NATS server; try again shortly"
                ),
            });
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(ARGS_LEN, args.len().to_string().as_str());
        headers.insert(KWARGS_LEN, kwargs.len().to_string().as_str());
        headers.insert(
            PRIVILEGE,
            match caller.privilege {
                Privilege::Server => "server",
                Privilege::Client => "client",
            },
        );
        headers.insert(DEPTH, depth.to_string().as_str());
        if let Some(b) = session {
            headers.insert(SESSION, b.id.as_str());
            if let Some(email) = &b.email {
                headers.insert(USER, hex(email).as_str());
            }
        }
        let objects = objects.unwrap_or_default();
        let mut payload = String::with_capacity(args.len() + kwargs.len() + objects.len());
        payload.push_str(args);
        payload.push_str(kwargs);
        payload.push_str(objects);
        let payload = Bytes::from(payload);
        let subject = subject(&caller.app, name, device);
        let missing = match device {
            Some(d) => format!(
                "No server function matching \"{name}\" has been registered by device \"{d}\""
            ),
            None => format!("No server function matching \"{name}\" has been registered"),
        };
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                call,
                Pending {
                    caller: caller.clone(),
                    node: None,
                    sent: std::time::Instant::now(),
                    deadline,
                    missing,
                    resend: Some(Resend {
                        app: caller.app.to_string(),
                        name: name.to_owned(),
                        device: device.map(str::to_owned),
                        headers: headers.clone(),
                        payload: payload.clone(),
                        asked: None,
                    }),
                },
            );
        self.send(call, caller.clone(), subject, headers, payload);
        Ok(())
    }

    /// Publishes call `call` of `caller` on `subject`, its answer to come
    /// back on this server's reply subject; a publish that fails answers
    /// the caller at once.
    fn send(
        &self,
        call: u64,
        caller: Arc<Peer>,
        subject: String,
        headers: async_nats::HeaderMap,
        payload: Bytes,
    ) {
        let send = Queued {
            call,
            caller,
            subject,
            reply: self.reply_subject(call),
            headers,
            payload,
        };
        if let Err(unsent) = self.outbox.send(send) {
            // The sending task is gone with the cluster's client.
            let s = unsent.0;
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&s.call);
            let answer = Answer::error(
                s.call,
                error_type::UPLINK_DISCONNECTED,
                "this server is leaving the cluster",
            );
            let _ = s.caller.enqueue(Outbound::Answer(answer));
        }
    }

    /// Publishes the calls [`Cluster::send`] queues, in order, on one task
    /// (no task per call); a publish that fails answers its caller at once.
    async fn publish_calls(
        cluster: Weak<Self>,
        client: async_nats::Client,
        mut outbox: tokio::sync::mpsc::UnboundedReceiver<Queued>,
    ) {
        while let Some(Queued {
            call,
            caller,
            subject,
            reply,
            headers,
            payload,
        }) = outbox.recv().await
        {
            let sent = client
                .publish_with_reply_and_headers(subject, reply, headers, payload)
                .await;
            if let Err(e) = sent {
                let Some(cluster) = cluster.upgrade() else {
                    return;
                };
                cluster
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&call);
                let answer = if e.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded
                {
                    Answer::error(
                        call,
                        error_type::INTERNAL,
                        "the arguments are larger than the cluster's NATS server carries (its max_payload); send smaller arguments or raise max_payload",
                    )
                } else {
                    Answer::error(
                        call,
                        error_type::UPLINK_DISCONNECTED,
                        &format!("the call could not reach another server: {e}"),
                    )
                };
                let _ = caller.enqueue(Outbound::Answer(answer));
            }
        }
    }
}

/// A call queued for publishing (see [`Cluster::publish_calls`]).
struct Queued {
    call: u64,
    caller: Arc<Peer>,
    subject: String,
    reply: String,
    headers: async_nats::HeaderMap,
    payload: Bytes,
}

/// A call for another server.
pub(crate) struct Outgoing<'a> {
    /// The server's id for the call (the caller waits under it).
    pub(crate) call: u64,
    /// The function, and the device it is addressed to.
    pub(crate) name: &'a str,
    pub(crate) device: Option<&'a str>,
    /// Raw JSON, as the caller sent them.
    pub(crate) args: &'a str,
    pub(crate) kwargs: &'a str,
    pub(crate) objects: Option<&'a str>,
    /// How deep it is nested (1 = top level).
    pub(crate) depth: u8,
    pub(crate) deadline: Instant,
    /// The browser session it acts for, if any.
    pub(crate) session: Option<&'a crate::calls::peer::BrowserSession>,
}

/// A record standing for a browser session open on another server, for
/// the calls made on its behalf here (`get_current_user_email`; events
/// with no target go back to it over NATS).
fn remote_session(
    state: &ServerState,
    app: &str,
    privilege: Privilege,
    id: String,
    email: Option<String>,
) -> Arc<Peer> {
    Arc::new(Peer::new(
        state.next_conn_id(),
        crate::calls::peer::PeerSetup {
            key_id: crate::keys::KeyId(String::new()),
            device: None,
            privilege,
            library: None,
            protocol_version: 8,
            ip: "cluster".to_owned(),
            app: app.to_owned(),
            browser: Some(Box::new(crate::calls::peer::BrowserSession {
                login: None,
                id,
                email,
                channels: Mutex::default(),
                elsewhere: true,
            })),
        },
        &state.config.environment,
        state.config.max_queued_bytes,
        state.now(),
    ))
}

/// A call from another server.
struct RemoteCall<'a> {
    app: String,
    command: String,
    privilege: Privilege,
    depth: u8,
    args: &'a str,
    kwargs: &'a str,
    objects: Option<&'a str>,
    /// The browser session it acts for: its id and user.
    session: Option<(String, Option<String>)>,
}

/// Reads a request: its subject names the app and function (and device);
/// its headers the caller's privilege, the nesting depth and where the
/// arguments end.
fn parse_request(m: &async_nats::Message) -> Result<RemoteCall<'_>, String> {
    let bad = |what: &str| format!("a call from another server had {what}");
    let parts: Vec<&str> = m.subject.as_str().split('.').collect();
    let (app, name, device) = match parts.as_slice() {
        ["ferrolink", "call", app, name] | ["ferrolink", "direct", _, app, name] => {
            (*app, *name, None)
        }
        ["ferrolink", "call", app, name, device]
        | ["ferrolink", "direct", _, app, name, device] => (*app, *name, Some(*device)),
        _ => return Err(bad("an unknown subject")),
    };
    let app = unhex(app).ok_or_else(|| bad("a bad app"))?;
    let mut command = unhex(name).ok_or_else(|| bad("a bad function name"))?;
    if let Some(d) = device {
        command.push('@');
        command.push_str(&unhex(d).ok_or_else(|| bad("a bad device name"))?);
    }
    let header = |h: &str| header(m, h);
    let privilege = match header(PRIVILEGE).as_deref() {
        Some("server") => Privilege::Server,
        Some("client") => Privilege::Client,
        _ => return Err(bad("no caller privilege")),
    };
    let depth: u8 = header(DEPTH)
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| bad("no call depth"))?;
    let length = |h: &str| -> Result<usize, String> {
        header(h)
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| bad("no argument length"))
    };
    let (args_len, kwargs_len) = (length(ARGS_LEN)?, length(KWARGS_LEN)?);
    let payload = std::str::from_utf8(&m.payload).map_err(|_| bad("arguments not in UTF-8"))?;
    let parts = args_len.checked_add(kwargs_len).and_then(|end| {
        Some((
            payload.get(..args_len)?,
            payload.get(args_len..end)?,
            payload.get(end..)?,
        ))
    });
    let Some((args, kwargs, objects)) = parts else {
        return Err(bad("a wrong argument length"));
    };
    // Checked, not decoded: the provider receives them as they came.
    let valid = |s: &str, open: char| {
        s.starts_with(open) && serde_json::from_str::<&serde_json::value::RawValue>(s).is_ok()
    };
    if !valid(args, '[') || !valid(kwargs, '{') || !(objects.is_empty() || valid(objects, '[')) {
        return Err(bad("arguments that are not a JSON array, object and array"));
    }
    let objects = (!objects.is_empty()).then_some(objects);
    let session = match header(SESSION) {
        Some(id) => {
            let email = match header(USER) {
                Some(h) => Some(unhex(&h).ok_or_else(|| bad("a bad user"))?),
                None => None,
            };
            Some((id, email))
        }
        None => None,
    };
    Ok(RemoteCall {
        app,
        command,
        privilege,
        depth,
        args,
        kwargs,
        objects,
        session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_carry_any_name_as_one_token_each() {
        let s = subject("my.app", "do it.*>", Some("pico 1"));
        let tokens: Vec<&str> = s.split('.').collect();
        assert_eq!(tokens.len(), 5, "{s}");
        assert!(
            tokens
                .iter()
                .all(|t| t.bytes().all(|b| b.is_ascii_alphanumeric()))
        );
        assert_ne!(subject("a", "b", None), subject("a", "b", Some("c")));
    }

    fn message(subject: &str, headers: &[(&str, &str)], payload: &[u8]) -> async_nats::Message {
        let mut map = async_nats::HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, *v);
        }
        async_nats::Message {
            subject: subject.into(),
            reply: Some("inbox".into()),
            payload: Bytes::copy_from_slice(payload),
            headers: Some(map),
            status: None,
            description: None,
            length: payload.len(),
        }
    }

    #[test]
    fn requests_are_read_back_and_bad_ones_refused_without_panicking() {
        let good = subject("demo", "add", Some("pico"));
        let headers = [
            (PRIVILEGE, "client"),
            (DEPTH, "2"),
            (ARGS_LEN, "5"),
            (KWARGS_LEN, "9"),
        ];
        let m = message(&good, &headers, br#"[1,2]{"u":"C"}[{"type":["Long"]}]"#);
        let call = parse_request(&m).unwrap();
        assert_eq!(
            (
                call.app.as_str(),
                call.command.as_str(),
                call.privilege,
                call.depth
            ),
            ("demo", "add@pico", Privilege::Client, 2)
        );
        assert_eq!((call.args, call.kwargs), ("[1,2]", r#"{"u":"C"}"#));
        assert_eq!(call.objects, Some(r#"[{"type":["Long"]}]"#));

        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [u8]);
        let hostile: &[Case<'_>] = &[
            ("ferrolink.call.zz.00", &headers, br#"[1,2]{"u":"C"}"#),
            ("elsewhere", &headers, br#"[1,2]{"u":"C"}"#),
            (
                &good,
                &[
                    (PRIVILEGE, "root"),
                    (DEPTH, "1"),
                    (ARGS_LEN, "5"),
                    (KWARGS_LEN, "8"),
                ],
                br#"[1,2]{"u":"C"}"#,
            ),
            (
                &good,
                &[
                    (PRIVILEGE, "client"),
                    (DEPTH, "1"),
                    (ARGS_LEN, "18446744073709551615"),
                    (KWARGS_LEN, "8"),
                ],
                b"[]{}",
            ),
            (
                &good,
                &[
                    (PRIVILEGE, "client"),
                    (DEPTH, "1"),
                    (ARGS_LEN, "2"),
                    (KWARGS_LEN, "1"),
                ],
                "[]é{}".as_bytes(),
            ),
            (
                &good,
                &[
                    (PRIVILEGE, "client"),
                    (DEPTH, "1"),
                    (ARGS_LEN, "2"),
                    (KWARGS_LEN, "2"),
                ],
                b"[]\xff\xfe",
            ),
            (
                &good,
                &[
                    (PRIVILEGE, "client"),
                    (DEPTH, "1"),
                    (ARGS_LEN, "3"),
                    (KWARGS_LEN, "2"),
                ],
                b"[1,{}",
            ),
            (
                &good,
                &[
                    (PRIVILEGE, "client"),
                    (DEPTH, "999"),
                    (ARGS_LEN, "2"),
                    (KWARGS_LEN, "2"),
                ],
                b"[]{}",
            ),
            (&good, &[], b"[]{}"),
        ];
        for (subject, headers, payload) in hostile {
            let m = message(subject, headers, payload);
            assert!(
                parse_request(&m).is_err(),
                "{subject} {headers:?} {payload:?}"
            );
        }
    }
}
