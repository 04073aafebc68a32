//! The server's shared state: the key cache, each app's runtime, the live
//! connections per key (so revocation can close them), the console per app,
//! and the protocol clock (`clock.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use ferrolink_proto::Instant;
use ferrolink_proto::message::Privilege;

use crate::activity::Monitor;
use crate::calls::peer::Peer;
use crate::calls::registry::AppRuntime;
use crate::clock::Clock;
use crate::config::ServerConfig;
use crate::keys::{KeyId, KeyRecord, Secret};
use crate::storage::{Store, StoreError};

/// Why a key was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("{}", ferrolink_proto::server_session::INCORRECT_KEY)]
    Incorrect,
    #[error("uplink key {id} was revoked on {}; create a new key with `ferrolink key create`", format_date(*at))]
    Revoked { id: KeyId, at: i64 },
    #[error("the server could not check the key; try again shortly")]
    Store(#[source] StoreError),
    #[error("{0}")]
    Limit(String),
}

/// A key refused, and how long to wait before saying so (repeated wrong
/// keys from one address are answered ever more slowly).
#[derive(Debug)]
pub(crate) struct KeyRefusal {
    pub(crate) error: AuthError,
    pub(crate) delay: std::time::Duration,
}

/// Sign-ups one address may make before they are spaced out (see
/// `throttle.rs`: then 250 ms doubling, forgotten after 15 quiet minutes).
const SIGNUPS_PER_ADDRESS: u32 = 5;

/// Wrong passwords one address may send before its attempts are spaced
/// out; higher than an account's allowance, as many people may share an
/// address.
const LOGIN_FAILURES_PER_ADDRESS: u32 = 20;

/// How often expired login sessions are deleted.
const SESSION_PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Password hashes that may wait for a core; more are turned away.
const HASHES_WAITING: usize = 32;

/// The longest a wrong key's refusal is held back.
const MAX_FAILURE_DELAY: std::time::Duration = std::time::Duration::from_secs(10);

/// `YYYY-MM-DD` for seconds since the Unix epoch (UTC).
pub(crate) fn format_date(secs: i64) -> String {
    ferrolink_proto::UtcDate(u64::try_from(secs).unwrap_or(0)).to_string()
}

pub(crate) struct ServerState {
    pub(crate) config: ServerConfig,
    /// This server's part in a cluster (`--cluster`), once joined.
    pub(crate) cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    pub(crate) store: Arc<Store>,
    /// The app's data tables over the uplink.
    pub(crate) tables: crate::tables::Service,
    keys: RwLock<HashMap<KeyId, KeyRecord>>,
    apps: Mutex<HashMap<String, Arc<AppRuntime>>>,
    live: Mutex<HashMap<KeyId, Vec<Weak<Peer>>>>,
    /// When and from where each key's last connection closed (since start).
    last_seen: Mutex<HashMap<KeyId, (u64, String)>>,
    next_call_id: AtomicU64,
    next_conn_id: AtomicU64,
    key_messages: AtomicU64,
    throttle: crate::throttle::Throttle<std::net::IpAddr>,
    /// Failed operator and user logins, per address.
    pub(crate) login_throttle: crate::throttle::Throttle<std::net::IpAddr>,
    /// Password attempts per account (`app/email`, or `operator:name`).
    pub(crate) account_throttle: crate::throttle::Throttle<String>,
    /// Sign-ups per address.
    pub(crate) signup_throttle: crate::throttle::Throttle<std::net::IpAddr>,
    /// Host names the server answers to besides IP addresses and
    /// `localhost` (lower case, without port).
    hosts: std::collections::HashSet<String>,
    /// Every password hash goes through it.
    pub(crate) hash_gate: crate::auth::HashGate,
    /// Browser session websockets per browser.
    pub(crate) browsers: Arc<crate::edge::limits::Named>,
    /// Connections counted against the limits.
    pub(crate) connections: Arc<crate::edge::limits::Counter>,
    /// One line per interval about delayed wrong keys.
    refusal_log: crate::logs::Shared,
    /// The call log and live activity feed.
    pub(crate) monitor: Arc<Monitor>,
    /// Counters for `/_/metrics`.
    pub(crate) metrics: crate::metrics::Metrics,
    /// Set when the server is shutting down: `/_/ready` then says so.
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// The protocol clock.
    pub(crate) clock: Clock,
    /// Public origin answered to `anvil.private.get_app_origin`.
    pub(crate) origin: String,
    /// Whether the dashboard's listener speaks https (its cookies are then
    /// `Secure`, and its pages' origin is `https://`).
    pub(crate) admin_https: bool,
    /// The newest published trust bundle, as devices fetch it.
    trust_bundle: RwLock<Option<Arc<PublishedBundle>>>,
    /// The dashboard console's caller, per app.
    consoles: Mutex<HashMap<CallerKind, Arc<crate::calls::console::Console>>>,
}

/// A connection-less caller's app, privilege and label.
type CallerKind = (String, Privilege, &'static str);

/// A published trust bundle and the reply that carries it.
#[derive(Debug)]
pub(crate) struct PublishedBundle {
    pub(crate) sequence: u64,
    /// `{"sequence":N,"bundle":"<base64>"}`.
    pub(crate) reply: String,
}

fn load_trust_bundle(store: &Store) -> Result<Option<Arc<PublishedBundle>>, StoreError> {
    use base64::Engine as _;
    Ok(store.trust_bundle()?.map(|(sequence, bytes)| {
        let bundle = base64::engine::general_purpose::STANDARD.encode(bytes);
        Arc::new(PublishedBundle {
            sequence,
            reply: format!("{{\"sequence\":{sequence},\"bundle\":\"{bundle}\"}}"),
        })
    }))
}

impl ServerState {
    pub(crate) fn new(
        config: ServerConfig,
        store: Arc<Store>,
        origin: String,
        admin_https: bool,
    ) -> Result<Self, StoreError> {
        let keys = load_keys(&store)?;
        let trust_bundle = RwLock::new(load_trust_bundle(&store)?);
        let throttle = crate::throttle::Throttle::new(config.auth_throttle.clone());
        let login_throttle = crate::throttle::Throttle::new(crate::ThrottleConfig {
            free_failures: LOGIN_FAILURES_PER_ADDRESS,
            ..config.auth_throttle.clone()
        });
        let account_throttle = crate::throttle::Throttle::new(config.auth_throttle.clone());
        let signup_throttle = crate::throttle::Throttle::new(crate::ThrottleConfig {
            free_failures: SIGNUPS_PER_ADDRESS,
            ..config.auth_throttle.clone()
        });
        let clock = Clock::start();
        let connections = crate::edge::limits::Counter::new(config.limits.clone());
        let hosts = host_names(&config, &origin);
        Ok(Self {
            cluster: std::sync::OnceLock::new(),
            config,
            tables: crate::tables::Service::new(&store)?,
            store,
            keys: RwLock::new(keys),
            apps: Mutex::default(),
            live: Mutex::default(),
            last_seen: Mutex::default(),
            next_call_id: AtomicU64::new(1),
            next_conn_id: AtomicU64::new(1),
            key_messages: AtomicU64::new(0),
            throttle,
            login_throttle,
            account_throttle,
            signup_throttle,
            refusal_log: crate::logs::Shared::default(),
            connections,
            hosts,
            browsers: Arc::default(),
            hash_gate: crate::auth::HashGate::new(HASHES_WAITING),
            monitor: Arc::new(Monitor::new(clock)),
            metrics: crate::metrics::Metrics::default(),
            draining: std::sync::atomic::AtomicBool::new(false),
            clock,
            origin,
            admin_https,
            trust_bundle,
            consoles: Mutex::default(),
        })
    }

    /// The dashboard console's caller for `app`, started on first use.
    pub(crate) fn console(&self, app: &str) -> Arc<crate::calls::console::Console> {
        self.caller(app, Privilege::Server, "dashboard")
    }

    /// A connection-less caller for `app` with `privilege`, labelled
    /// `label` in logs (the dashboard console, the HTTP API), started on
    /// first use: its calls go through `forward` like any uplink's.
    pub(crate) fn caller(
        &self,
        app: &str,
        privilege: Privilege,
        label: &'static str,
    ) -> Arc<crate::calls::console::Console> {
        let mut consoles = self.consoles.lock().unwrap_or_else(|p| p.into_inner());
        let entry = consoles
            .entry((app.to_owned(), privilege, label))
            .or_insert_with(|| crate::calls::console::Console::start(self, app, privilege, label));
        if !entry.is_open() {
            *entry = crate::calls::console::Console::start(self, app, privilege, label);
        }
        entry.clone()
    }

    /// The newest published trust bundle, if any.
    pub(crate) fn trust_bundle(&self) -> Option<Arc<PublishedBundle>> {
        self.trust_bundle
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Now, on the protocol core's clock.
    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The tokio instant of a protocol instant.
    pub(crate) fn to_tokio(&self, t: Instant) -> tokio::time::Instant {
        self.clock.to_tokio(t)
    }

    pub(crate) fn key_messages(&self) -> u64 {
        self.key_messages.load(Ordering::Relaxed)
    }

    pub(crate) fn next_call_id(&self) -> u64 {
        self.next_call_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Checks a presented key. Keys created by the CLI since the last cache
    /// refresh are found in the database.
    /// Checks a presented key from `ip`, applying the failed-attempt
    /// throttle (see `throttle.rs`).
    pub(crate) async fn authenticate(
        self: &Arc<Self>,
        key: &str,
        ip: std::net::IpAddr,
    ) -> Result<KeyRecord, KeyRefusal> {
        self.key_messages.fetch_add(1, Ordering::Relaxed);
        let now = std::time::Instant::now();
        // The secret is checked first, always: a correct key is accepted
        // even while its address is throttled for a neighbour's guesses.
        // Only the database lookup of a key id the cache does not hold is
        // skipped for a throttled address, so guesses cost no queries.
        let throttled = self.throttle.wait(&ip, now).is_some();
        let error = match self.check_key(key, !throttled).await {
            Ok(record) => return Ok(record),
            Err(e) => e,
        };
        use crate::metrics::AuthFailure;
        self.metrics.auth_failed(match &error {
            AuthError::Incorrect => AuthFailure::Incorrect,
            AuthError::Revoked { .. } => AuthFailure::Revoked,
            AuthError::Limit(_) => AuthFailure::Limit,
            AuthError::Store(_) => AuthFailure::Unavailable,
        });
        let delay = match error {
            AuthError::Incorrect | AuthError::Revoked { .. } => {
                let window = self.throttle.failed(&ip, now).min(MAX_FAILURE_DELAY);
                if !window.is_zero()
                    && let Some(left_out) = self.refusal_log.allow(self.now())
                {
                    tracing::warn!(%ip, delay_ms = window.as_millis() as u64, left_out, "delaying the refusal of repeated wrong keys");
                }
                window
            }
            AuthError::Store(_) | AuthError::Limit(_) => std::time::Duration::ZERO,
        };
        Err(KeyRefusal { error, delay })
    }

    async fn check_key(
        self: &Arc<Self>,
        key: &str,
        may_query: bool,
    ) -> Result<KeyRecord, AuthError> {
        let secret = Secret::new(key);
        let Some(id) = secret.id() else {
            return Err(AuthError::Incorrect);
        };
        let cached = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        let record = match cached {
            Some(r) => r,
            None if !may_query => return Err(AuthError::Incorrect),
            None => {
                let state = self.clone();
                let lookup_id = id.clone();
                let found = tokio::task::spawn_blocking(move || state.store.key(&lookup_id))
                    .await
                    .map_err(|_| AuthError::Incorrect)?
                    .map_err(AuthError::Store)?;
                let Some(r) = found else {
                    return Err(AuthError::Incorrect);
                };
                // Never over a record the watcher put there meanwhile: it
                // is fresher (it may say the key was just revoked).
                self.keys
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(id.clone())
                    .or_insert(r)
                    .clone()
            }
        };
        if !secret.matches(&record.hash) {
            return Err(AuthError::Incorrect);
        }
        if let Some(at) = record.revoked_at {
            return Err(AuthError::Revoked { id, at });
        }
        Ok(record)
    }

    /// Records a call that ended after it was forwarded: metrics (every
    /// call) and the dashboard's call log (sampled).
    pub(crate) fn call_finished(
        &self,
        app: &Arc<str>,
        caller: &Arc<str>,
        function: &str,
        took: std::time::Duration,
        outcome: &str,
    ) {
        self.metrics
            .call_finished(crate::metrics::Outcome::of(outcome), Some(took));
        self.monitor
            .call(app, caller, function, took.as_millis() as u64, outcome);
    }

    /// Calls uplinks, browser sessions and the server's own callers have
    /// in flight (forwarded, not yet answered).
    pub(crate) fn calls_in_flight(&self) -> usize {
        let uplinks: usize = self
            .live_uplinks()
            .iter()
            .map(|p| p.in_flight.load(Ordering::Relaxed))
            .sum();
        let browsers: usize = self
            .app_runtimes()
            .iter()
            .flat_map(|(_, app)| app.browsers_for(&crate::calls::registry::Target::Channel("*")))
            .map(|p| p.in_flight.load(Ordering::Relaxed))
            .sum();
        let consoles: usize = self
            .consoles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|c| c.in_flight())
            .sum();
        uplinks + browsers + consoles
    }

    /// The runtime of app `name`, created on first use.
    pub(crate) fn app(&self, name: &str) -> Arc<AppRuntime> {
        let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        apps.entry(name.to_owned())
            .or_insert_with(|| Arc::new(AppRuntime::new()))
            .clone()
    }

    /// Records a live connection under its key (for revocation), unless
    /// the key already has its most connections or was revoked after it
    /// was checked — a revocation that lands between the check and this
    /// call still closes the connection.
    pub(crate) fn attach(&self, conn: &Arc<Peer>) -> Result<(), AuthError> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let list = live.entry(conn.key_id.clone()).or_default();
        list.retain(|w| w.strong_count() > 0);
        let limit = self.config.limits.per_key;
        if list.len() >= limit {
            return Err(AuthError::Limit(format!(
                "ferrolink: key {} already has {limit} connections (the most allowed per key); close one, or raise --max-connections-per-key",
                conn.key_id
            )));
        }
        list.push(Arc::downgrade(conn));
        drop(live);
        // `refresh_keys` updates the cache before it takes `live`: either
        // it sees this connection, or this sees its revocation.
        let revoked = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&conn.key_id)
            .and_then(|k| k.revoked_at);
        if let Some(at) = revoked {
            return Err(AuthError::Revoked {
                id: conn.key_id.clone(),
                at,
            });
        }
        self.monitor.changed();
        Ok(())
    }

    /// Every authenticated uplink, oldest first.
    pub(crate) fn live_uplinks(&self) -> Vec<Arc<Peer>> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<Arc<Peer>> = live.values().flatten().filter_map(Weak::upgrade).collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// The runtimes of every app that has had a connection.
    pub(crate) fn app_runtimes(&self) -> Vec<(String, Arc<AppRuntime>)> {
        let apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        apps.iter().map(|(n, a)| (n.clone(), a.clone())).collect()
    }

    /// When and from where each key's last connection closed.
    pub(crate) fn last_seen(&self) -> HashMap<KeyId, (u64, String)> {
        self.last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Forgets a closed connection.
    pub(crate) fn detach(&self, conn: &Peer) {
        self.last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                conn.key_id.clone(),
                (crate::clock::unix_ms(), conn.ip.to_string()),
            );
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = live.get_mut(&conn.key_id) {
            list.retain(|w| w.strong_count() > 0 && w.as_ptr() != std::ptr::from_ref(conn));
            if list.is_empty() {
                live.remove(&conn.key_id);
            }
        }
        drop(live);
        self.monitor.changed();
    }

    /// Number of authenticated connections.
    pub(crate) fn live_connections(&self) -> usize {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.values()
            .map(|l| l.iter().filter(|w| w.strong_count() > 0).count())
            .sum()
    }

    /// Asks every authenticated connection and browser session to close
    /// with `reason`.
    pub(crate) fn close_all(&self, reason: &str) {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for conn in live.values().flatten().filter_map(Weak::upgrade) {
            conn.close_with(reason.to_owned());
        }
        drop(live);
        for (_, app) in self.app_runtimes() {
            app.close_browsers(reason);
        }
    }

    /// Reloads keys from the database and closes connections whose key was
    /// revoked.
    pub(crate) fn refresh_keys(&self) -> Result<usize, StoreError> {
        let keys = load_keys(&self.store)?;
        let revoked: Vec<(KeyId, i64)> = keys
            .values()
            .filter_map(|k| k.revoked_at.map(|at| (k.id.clone(), at)))
            .collect();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        let mut closed = 0;
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for (id, at) in revoked {
            for conn in live
                .get(&id)
                .into_iter()
                .flatten()
                .filter_map(Weak::upgrade)
            {
                let reason = AuthError::Revoked { id: id.clone(), at }.to_string();
                tracing::info!(conn = conn.id, key = %id, "closing connection: key revoked");
                conn.close_with(reason);
                closed += 1;
            }
        }
        Ok(closed)
    }

    /// Applies app settings changed elsewhere (the CLI's `app set`) to the
    /// apps running here.
    pub(crate) fn refresh_apps(&self) -> Result<(), StoreError> {
        let records = self.store.apps()?;
        let runtimes = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        for record in records {
            if let Some(runtime) = runtimes.get(&record.name) {
                runtime.set_anonymous_calls(record.anonymous_calls);
            }
        }
        Ok(())
    }

    /// Deletes expired login sessions now and then every hour, so the
    /// session tables do not grow with every login ever made. Runs until
    /// the server stops.
    pub(crate) async fn purge_sessions(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SESSION_PURGE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let state = self.clone();
            let now = crate::clock::unix_ms() as i64 / 1000;
            match tokio::task::spawn_blocking(move || state.store.purge_expired_sessions(now)).await
            {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(sessions = n, "purged expired login sessions"),
                Ok(Err(e)) => tracing::error!(error = %e, "cannot purge expired login sessions"),
                Err(_) => return,
            }
        }
    }

    /// Watches the database for changes made by other processes (the CLI:
    /// keys, published trust bundles) and applies them. Runs until the
    /// server stops.
    pub(crate) async fn watch_keys(self: Arc<Self>) {
        let mut last = None;
        let mut tick = tokio::time::interval(self.config.revocation_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let state = self.clone();
            let result = tokio::task::spawn_blocking(move || -> Result<Option<i64>, StoreError> {
                let v = state.store.data_version()?;
                if Some(v) != last {
                    state.refresh_keys()?;
                    state.refresh_apps()?;
                    let bundle = load_trust_bundle(&state.store)?;
                    *state
                        .trust_bundle
                        .write()
                        .unwrap_or_else(|p| p.into_inner()) = bundle;
                }
                Ok(Some(v))
            })
            .await;
            match result {
                Ok(Ok(v)) => last = v,
                Ok(Err(e)) => tracing::error!(error = %e, "cannot refresh keys from the database"),
                Err(_) => return,
            }
        }
    }
}

/// The names in `Host` headers this server answers to, from its settings.
fn host_names(config: &ServerConfig, origin: &str) -> std::collections::HashSet<String> {
    let mut names: Vec<String> = config.allowed_hosts.clone();
    if let Some(tls) = &config.tls {
        names.extend(crate::edge::certificates::dns_names(
            tls,
            &config.dev_tls_names,
        ));
    }
    for o in [Some(origin), config.public_origin.as_deref()]
        .into_iter()
        .flatten()
    {
        if let Some(host) = o
            .split("://")
            .nth(1)
            .map(|rest| rest.split('/').next().unwrap_or(rest))
        {
            names.push(host.to_owned());
        }
    }
    names
        .into_iter()
        .map(|n| strip_port(&n).to_ascii_lowercase())
        .collect()
}

/// `host` without a `:port` (IPv6 literals keep their brackets).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..=h.len()]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

impl ServerState {
    /// Whether a request's `Host` names this server.
    pub(crate) fn answers_to(&self, host: &str) -> bool {
        let name = strip_port(host.trim()).to_ascii_lowercase();
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<std::net::IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.hosts.contains(&name)
    }
}

fn load_keys(store: &Store) -> Result<HashMap<KeyId, KeyRecord>, StoreError> {
    Ok(store
        .keys(None)?
        .into_iter()
        .map(|k| (k.id.clone(), k))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::{format_date, strip_port};

    #[test]
    fn ports_are_stripped_from_host_headers() {
        assert_eq!(strip_port("example.com:8443"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(format_date(1_697_810_870), "2023-10-20");
        assert_eq!(format_date(951_782_400), "2000-02-29");
    }
}
