//! Prometheus metrics: counters the call path bumps (relaxed atomics, no
//! locks, nothing allocated), gauges read from the live state when
//! scraped, and the text exposition format (version 0.0.4) written by
//! hand — a few lines, where a metrics crate would put a lock or a map
//! lookup on every call.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferrolink_proto::error_type;
use ferrolink_proto::message::Privilege;

use crate::state::ServerState;

/// How calls ended, as a bounded label set (a provider's own exception
/// types are the provider's to choose, so they are one label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Outcome {
    Ok,
    Timeout,
    NoFunction,
    Disconnected,
    Quota,
    Denied,
    RemoteError,
}

impl Outcome {
    const ALL: [Self; 7] = [
        Self::Ok,
        Self::Timeout,
        Self::NoFunction,
        Self::Disconnected,
        Self::Quota,
        Self::Denied,
        Self::RemoteError,
    ];

    /// The class of an outcome the call path reports (`"ok"` or an error type).
    pub(crate) fn of(outcome: &str) -> Self {
        match outcome {
            "ok" => Self::Ok,
            error_type::TIMEOUT => Self::Timeout,
            error_type::NO_SERVER_FUNCTION => Self::NoFunction,
            error_type::UPLINK_DISCONNECTED => Self::Disconnected,
            error_type::QUOTA_EXCEEDED => Self::Quota,
            error_type::PERMISSION_DENIED => Self::Denied,
            _ => Self::RemoteError,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Timeout => "timeout",
            Self::NoFunction => "no_such_function",
            Self::Disconnected => "provider_disconnected",
            Self::Quota => "quota_exceeded",
            Self::Denied => "permission_denied",
            Self::RemoteError => "remote_error",
        }
    }
}

/// Why a key was refused.
#[derive(Clone, Copy, Debug)]
#[repr(usize)]
pub(crate) enum AuthFailure {
    Incorrect,
    Revoked,
    Limit,
    Unavailable,
}

impl AuthFailure {
    const ALL: [Self; 4] = [
        Self::Incorrect,
        Self::Revoked,
        Self::Limit,
        Self::Unavailable,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Incorrect => "incorrect",
            Self::Revoked => "revoked",
            Self::Limit => "connection_limit",
            Self::Unavailable => "storage_unavailable",
        }
    }
}

/// Upper bounds of the call duration histogram, in seconds.
const BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The server's counters.
#[derive(Default)]
pub(crate) struct Metrics {
    calls_started: AtomicU64,
    calls_finished: [AtomicU64; 7],
    /// Per bucket (not cumulative; summed when written), then `+Inf`.
    duration_buckets: [AtomicU64; BUCKETS.len() + 1],
    duration_micros: AtomicU64,
    auth_failures: [AtomicU64; 4],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    http_api_calls: AtomicU64,
}

impl Metrics {
    /// A call was accepted and forwarded to a provider.
    pub(crate) fn call_started(&self) {
        self.calls_started.fetch_add(1, Ordering::Relaxed);
    }

    /// A call ended (answered, timed out, or refused before forwarding;
    /// refused calls have no duration).
    pub(crate) fn call_finished(&self, outcome: Outcome, took: Option<Duration>) {
        self.calls_finished[outcome as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(took) = took {
            let secs = took.as_secs_f64();
            let i = BUCKETS
                .iter()
                .position(|&b| secs <= b)
                .unwrap_or(BUCKETS.len());
            self.duration_buckets[i].fetch_add(1, Ordering::Relaxed);
            self.duration_micros
                .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// A key was refused.
    pub(crate) fn auth_failed(&self, why: AuthFailure) {
        self.auth_failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes read from connections.
    pub(crate) fn read(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Bytes written to connections.
    pub(crate) fn wrote(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A call arrived over the HTTP API.
    pub(crate) fn http_api_call(&self) {
        self.http_api_calls.fetch_add(1, Ordering::Relaxed);
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// A label value with `\`, `"` and newlines escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The metrics of `state` in the Prometheus text format.
pub(crate) fn render(state: &ServerState) -> String {
    let m = &state.metrics;
    let mut out = String::with_capacity(4096);

    header(
        &mut out,
        "ferrolink_uplinks",
        "gauge",
        "Authenticated uplink connections, by app and privilege.",
    );
    let mut uplinks = std::collections::BTreeMap::<(String, &str), u64>::new();
    let mut pending = 0u64;
    for peer in state.live_uplinks() {
        let privilege = match peer.privilege {
            Privilege::Server => "server",
            Privilege::Client => "client",
        };
        *uplinks
            .entry((peer.app.to_string(), privilege))
            .or_default() += 1;
        pending += peer.in_flight.load(Ordering::Relaxed) as u64;
    }
    for ((app, privilege), n) in &uplinks {
        let _ = writeln!(
            out,
            "ferrolink_uplinks{{app=\"{}\",privilege=\"{privilege}\"}} {n}",
            label_value(app)
        );
    }

    header(
        &mut out,
        "ferrolink_browser_sessions",
        "gauge",
        "Open browser session websockets, by app.",
    );
    for (app, runtime) in state.app_runtimes() {
        let _ = writeln!(
            out,
            "ferrolink_browser_sessions{{app=\"{}\"}} {}",
            label_value(&app),
            runtime.browser_count()
        );
    }

    header(
        &mut out,
        "ferrolink_connections",
        "gauge",
        "Open TCP connections (HTTP, uplinks, browser sessions, dashboard).",
    );
    let _ = writeln!(out, "ferrolink_connections {}", state.connections.open());

    header(
        &mut out,
        "ferrolink_pending_calls",
        "gauge",
        "Calls uplinks have in flight through the server.",
    );
    let _ = writeln!(out, "ferrolink_pending_calls {pending}");

    header(
        &mut out,
        "ferrolink_calls_started_total",
        "counter",
        "Calls accepted and forwarded to a provider.",
    );
    let _ = writeln!(
        out,
        "ferrolink_calls_started_total {}",
        load(&m.calls_started)
    );

    header(
        &mut out,
        "ferrolink_calls_finished_total",
        "counter",
        "Calls ended, by outcome (refusals before forwarding included).",
    );
    for outcome in Outcome::ALL {
        let _ = writeln!(
            out,
            "ferrolink_calls_finished_total{{outcome=\"{}\"}} {}",
            outcome.label(),
            load(&m.calls_finished[outcome as usize])
        );
    }

    header(
        &mut out,
        "ferrolink_call_duration_seconds",
        "histogram",
        "Time from forwarding a call to its answer or timeout.",
    );
    let mut cumulative = 0;
    for (i, bound) in BUCKETS.iter().enumerate() {
        cumulative += load(&m.duration_buckets[i]);
        let _ = writeln!(
            out,
            "ferrolink_call_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += load(&m.duration_buckets[BUCKETS.len()]);
    let _ = writeln!(
        out,
        "ferrolink_call_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}\nferrolink_call_duration_seconds_sum {}\nferrolink_call_duration_seconds_count {cumulative}",
        load(&m.duration_micros) as f64 / 1e6
    );

    header(
        &mut out,
        "ferrolink_auth_failures_total",
        "counter",
        "Uplink keys refused, by reason.",
    );
    for why in AuthFailure::ALL {
        let _ = writeln!(
            out,
            "ferrolink_auth_failures_total{{reason=\"{}\"}} {}",
            why.label(),
            load(&m.auth_failures[why as usize])
        );
    }

    header(
        &mut out,
        "ferrolink_http_api_calls_total",
        "counter",
        "Calls made through POST /_/api/call/{function}.",
    );
    let _ = writeln!(
        out,
        "ferrolink_http_api_calls_total {}",
        load(&m.http_api_calls)
    );

    header(
        &mut out,
        "ferrolink_received_bytes_total",
        "counter",
        "Bytes read from uplink and browser session websockets.",
    );
    let _ = writeln!(out, "ferrolink_received_bytes_total {}", load(&m.bytes_in));
    header(
        &mut out,
        "ferrolink_sent_bytes_total",
        "counter",
        "Bytes written to uplink and browser session websockets.",
    );
    let _ = writeln!(out, "ferrolink_sent_bytes_total {}", load(&m.bytes_out));
    if let Some(cluster) = state.cluster.get() {
        cluster_metrics(&mut out, cluster);
    }
    out
}

/// A server of a cluster: which one, and how it sees the others.
fn cluster_metrics(out: &mut String, cluster: &crate::cluster::Cluster) {
    let view = cluster.view();
    header(
        out,
        "ferrolink_cluster_node_info",
        "gauge",
        "This server's id in its cluster (the label; always 1).",
    );
    let _ = writeln!(
        out,
        "ferrolink_cluster_node_info{{node=\"{}\"}} 1",
        label_value(cluster.node())
    );
    for (name, help, value) in [
        (
            "ferrolink_cluster_connected",
            "1 while the cluster's NATS server is connected.",
            u64::from(view.connected),
        ),
        (
            "ferrolink_cluster_peers",
            "Other servers heard from within the last 3.5 s.",
            view.peers as u64,
        ),
        (
            "ferrolink_cluster_calls_pending",
            "Calls sent to other servers and not answered yet.",
            view.pending as u64,
        ),
        (
            "ferrolink_cluster_subscriptions",
            "NATS subscriptions held for names provided here.",
            view.subscriptions as u64,
        ),
    ] {
        header(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_a_bounded_label_set() {
        assert_eq!(Outcome::of("ok"), Outcome::Ok);
        assert_eq!(Outcome::of(error_type::TIMEOUT), Outcome::Timeout);
        assert_eq!(Outcome::of("ValueError"), Outcome::RemoteError);
        assert_eq!(Outcome::of("anything\"at all"), Outcome::RemoteError);
    }

    #[test]
    fn durations_land_in_their_bucket() {
        let m = Metrics::default();
        m.call_finished(Outcome::Ok, Some(Duration::from_micros(400)));
        m.call_finished(Outcome::Ok, Some(Duration::from_millis(3)));
        m.call_finished(Outcome::Timeout, Some(Duration::from_secs(60)));
        m.call_finished(Outcome::NoFunction, None);
        assert_eq!(load(&m.duration_buckets[0]), 1);
        assert_eq!(load(&m.duration_buckets[3]), 1);
        assert_eq!(load(&m.duration_buckets[BUCKETS.len()]), 1);
        assert_eq!(load(&m.calls_finished[Outcome::NoFunction as usize]), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
