//! The server's shared state: the key cache, each app's runtime, the live
//! connections per key (so revocation can close them), and the clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use ferrolink_proto::Instant;

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
    #[error("ferrolink: too many wrong keys from {ip}; no key from this address is checked for another {:.1} s", wait.as_secs_f64())]
    Throttled {
        ip: std::net::IpAddr,
        wait: std::time::Duration,
    },
}

/// `YYYY-MM-DD` for seconds since the Unix epoch (UTC).
pub(crate) fn format_date(secs: i64) -> String {
    ferrolink_proto::UtcDate(u64::try_from(secs).unwrap_or(0)).to_string()
}

pub(crate) struct ServerState {
    pub(crate) config: ServerConfig,
    pub(crate) store: Arc<Store>,
    keys: RwLock<HashMap<KeyId, KeyRecord>>,
    apps: Mutex<HashMap<String, Arc<AppRuntime>>>,
    live: Mutex<HashMap<KeyId, Vec<Weak<Peer>>>>,
    /// When and from where each key's last connection closed (since start).
    last_seen: Mutex<HashMap<KeyId, (u64, String)>>,
    next_call_id: AtomicU64,
    next_conn_id: AtomicU64,
    key_messages: AtomicU64,
    throttle: crate::throttle::Throttle,
    /// Failed operator and user logins, per address.
    pub(crate) login_throttle: crate::throttle::Throttle,
    /// The call log and live activity feed.
    pub(crate) monitor: Arc<Monitor>,
    /// The protocol clock.
    pub(crate) clock: Clock,
    /// Public origin answered to `anvil.private.get_app_origin`.
    pub(crate) origin: String,
    /// The newest published trust bundle, as devices fetch it.
    trust_bundle: RwLock<Option<Arc<PublishedBundle>>>,
    /// The dashboard console's caller, per app.
    consoles: Mutex<HashMap<String, Arc<crate::calls::console::Console>>>,
}

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
    ) -> Result<Self, StoreError> {
        let keys = load_keys(&store)?;
        let trust_bundle = RwLock::new(load_trust_bundle(&store)?);
        let throttle = crate::throttle::Throttle::new(config.auth_throttle.clone());
        let login_throttle = crate::throttle::Throttle::new(config.auth_throttle.clone());
        let clock = Clock::start();
        Ok(Self {
            config,
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
            monitor: Arc::new(Monitor::new(clock)),
            clock,
            origin,
            trust_bundle,
            consoles: Mutex::default(),
        })
    }

    /// The dashboard console's caller for `app`, started on first use.
    pub(crate) fn console(&self, app: &str) -> Arc<crate::calls::console::Console> {
        let mut consoles = self.consoles.lock().unwrap_or_else(|p| p.into_inner());
        consoles
            .entry(app.to_owned())
            .or_insert_with(|| crate::calls::console::Console::start(self, app))
            .clone()
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
    ) -> Result<KeyRecord, AuthError> {
        self.key_messages.fetch_add(1, Ordering::Relaxed);
        let now = std::time::Instant::now();
        if let Some(wait) = self.throttle.wait(ip, now) {
            return Err(AuthError::Throttled { ip, wait });
        }
        let result = self.check_key(key).await;
        match &result {
            Ok(_) => self.throttle.succeeded(ip),
            Err(AuthError::Incorrect | AuthError::Revoked { .. }) => {
                let wait = self.throttle.failed(ip, now);
                if !wait.is_zero() {
                    tracing::warn!(%ip, wait_ms = wait.as_millis() as u64, "throttling an address after repeated wrong keys");
                }
            }
            Err(_) => {}
        }
        result
    }

    async fn check_key(self: &Arc<Self>, key: &str) -> Result<KeyRecord, AuthError> {
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
                self.keys
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone(), r.clone());
                r
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

    /// The runtime of app `name`, created on first use.
    pub(crate) fn app(&self, name: &str) -> Arc<AppRuntime> {
        let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        apps.entry(name.to_owned())
            .or_insert_with(|| Arc::new(AppRuntime::new()))
            .clone()
    }

    /// Records a live connection under its key, for revocation.
    pub(crate) fn attach(&self, conn: &Arc<Peer>) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let list = live.entry(conn.key_id.clone()).or_default();
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(conn));
        drop(live);
        self.monitor.changed();
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

fn load_keys(store: &Store) -> Result<HashMap<KeyId, KeyRecord>, StoreError> {
    Ok(store
        .keys(None)?
        .into_iter()
        .map(|k| (k.id.clone(), k))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::format_date;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(format_date(1_697_810_870), "2023-10-20");
        assert_eq!(format_date(951_782_400), "2000-02-29");
    }
}
