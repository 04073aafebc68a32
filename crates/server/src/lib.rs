//! The ferrolink server: hosts apps whose devices and computers connect over
//! the Anvil Uplink protocol, authenticates them by key, and routes function
//! calls between them.
//!
//! The `ferrolink` binary wraps this library; tests and embedders start a
//! [`Server`] directly:
//!
//! ```no_run
//! # async fn demo() -> Result<(), ferrolink::StartError> {
//! use ferrolink::{Server, ServerConfig};
//!
//! let config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), "./ferrolink-data");
//! let server = Server::start(config).await?;
//! println!("uplink: {}", server.uplink_url());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Where to look (`ARCHITECTURE.md` has the map): [`storage`] (SQLite:
//! apps, keys, accounts, data tables), [`keys`] (key shape, hashing),
//! `calls` (one driver task per connection around
//! `ferrolink_proto::server_session::ServerSession`, the registry of who
//! provides which function, the one `forward`), `edge` (the accept loop,
//! TLS, connection limits).
//!
//! TLS: [`tls::TlsSetting`] (certificate files reloaded on change, a
//! generated development CA, or ACME). Web apps: [`sites`] (deployed front
//! ends), [`auth`] (passwords and tokens), `web` (browser sessions, the
//! browser client, user accounts, the dashboard); see `docs/web.md`.

mod activity;
pub mod auth;
mod buffers;
mod calls;
mod clock;
mod cluster;
mod config;
mod edge;
pub mod keys;
mod logs;
mod metrics;
mod names;
mod state;
pub mod storage;
mod tables;
mod throttle;
pub mod trust;
mod web;

pub use edge::{acme, certificates as tls};
pub use throttle::ThrottleConfig;
pub use web::sites;

use std::net::SocketAddr;
use std::sync::Arc;

pub use config::{ConnectionLimits, ProxyHeader, ServerConfig};
pub use ferrolink_proto::server_session::SessionConfig;

use crate::state::ServerState;
use crate::storage::{Store, StoreError};

/// How long a server of a cluster may be silent on NATS before the calls
/// it took are failed with `UplinkDisconnectedError` (docs/cluster.md).
pub fn cluster_node_silence() -> std::time::Duration {
    cluster::NODE_SILENCE
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The data directory or database could not be opened.
    #[error("cannot open the data directory")]
    Store(#[from] StoreError),
    /// A certificate could not be loaded or generated.
    #[error("TLS setup failed")]
    Tls(#[from] tls::TlsError),
    /// Plain ws on a non-loopback address without the explicit flag.
    #[error(
        "refusing to serve plain ws:// on {addr}: uplink keys would cross the network unencrypted; use --tls-cert/--tls-key, --dev-tls, or accept the risk with --insecure-plain-ws"
    )]
    Insecure {
        /// The address.
        addr: SocketAddr,
    },
    /// The dashboard on a non-loopback address without TLS.
    #[error(
        "refusing to serve the dashboard over plain http on {addr}: operator passwords would cross the network unencrypted; keep --admin-listen on a loopback address (and reach it over SSH), or configure TLS"
    )]
    InsecureDashboard {
        /// The dashboard's address.
        addr: SocketAddr,
    },
    /// The cluster's NATS URL cannot be used.
    #[error("{0}")]
    Cluster(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A running server. Dropping it leaves the server running in the
/// background; call [`Server::shutdown`] to stop it.
pub struct Server {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    state: Arc<ServerState>,
    dev_ca: Option<tls::DevCa>,
    acme: Option<Arc<acme::AcmeResolver>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Opens the data directory, binds the listen address and starts serving.
    pub async fn start(config: ServerConfig) -> Result<Self, StartError> {
        if config.tls.is_none() && !config.listen.ip().is_loopback() && !config.insecure_plain_ws {
            return Err(StartError::Insecure {
                addr: config.listen,
            });
        }
        if let Some(admin) = config.admin_listen
            && config.tls.is_none()
            && !admin.ip().is_loopback()
        {
            return Err(StartError::InsecureDashboard { addr: admin });
        }
        let store = Arc::new(Store::open_database(
            &config.data_dir,
            config.database.as_deref(),
        )?);
        let mut acme_setup = None;
        let (acceptor, dev_ca, reload) = match &config.tls {
            None => (None, None, None),
            Some(setting) => {
                let mut alpn = vec![b"http/1.1".to_vec()];
                let (resolver, dev_ca, reload): (
                    Arc<dyn rustls::server::ResolvesServerCert>,
                    _,
                    _,
                ) = match setting {
                    tls::TlsSetting::Files { cert, key } => {
                        let r = tls::Reloading::new(tls::load_files(cert, key)?);
                        (r.clone(), None, Some((r, cert.clone(), key.clone())))
                    }
                    tls::TlsSetting::Dev => {
                        let (key, ca) = tls::dev_tls(&config.data_dir, &config.dev_tls_names)?;
                        (tls::Reloading::new(key), Some(ca), None)
                    }
                    tls::TlsSetting::Acme(a) => {
                        let r =
                            acme::AcmeResolver::new(&a.domain).map_err(tls::TlsError::Generate)?;
                        alpn = acme::alpn();
                        acme_setup = Some((a.clone(), r.clone()));
                        (r, None, None)
                    }
                };
                let mut server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| tls::TlsError::Generate(e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(resolver);
                server_config.alpn_protocols = alpn;
                (Some(Arc::new(server_config)), dev_ca, reload)
            }
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        // The dashboard: plain HTTP on loopback (a browser on this machine,
        // or one at the end of an SSH tunnel), TLS anywhere else.
        let admin = match config.admin_listen {
            None => None,
            Some(at) => {
                let listener = tokio::net::TcpListener::bind(at)
                    .await
                    .map_err(|source| StartError::Bind { addr: at, source })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| StartError::Bind { addr: at, source })?;
                let tls = if at.ip().is_loopback() {
                    None
                } else {
                    acceptor.clone()
                };
                Some((listener, bound, tls))
            }
        };
        let admin_addr = admin.as_ref().map(|(_, bound, _)| *bound);
        let metrics = match config.metrics_listen {
            None => None,
            Some(at) => {
                let listener = tokio::net::TcpListener::bind(at)
                    .await
                    .map_err(|source| StartError::Bind { addr: at, source })?;
                Some(listener)
            }
        };
        let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
        let admin_https = admin.as_ref().is_some_and(|(_, _, tls)| tls.is_some());
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let origin = config
            .public_origin
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{addr}"));
        let every = config.cert_reload_every;
        let data_dir = config.data_dir.clone();
        let state = Arc::new(ServerState::new(config, store, origin, admin_https)?);
        if let Some(url) = &state.config.cluster {
            let ca = state.config.cluster_ca.as_deref();
            let cluster = cluster::Cluster::join(url, ca, Arc::downgrade(&state))
                .await
                .map_err(StartError::Cluster)?;
            let _ = state.cluster.set(cluster);
        }
        let mut background = vec![
            tokio::spawn(state.clone().watch_keys()),
            tokio::spawn(state.clone().purge_sessions()),
        ];
        if let Some((resolver, cert, key)) = reload {
            background.push(tokio::spawn(tls::watch_files(resolver, cert, key, every)));
        }
        let acme_resolver = acme_setup.as_ref().map(|(_, r)| r.clone());
        if let Some((setting, resolver)) = acme_setup {
            background.push(tokio::spawn(acme::maintain(setting, resolver, data_dir)));
        }
        let router = web::router(state.clone());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let edge_state = state.clone();
        let admin_loop = admin.map(|(listener, _, tls)| {
            let edge = edge::Edge {
                router: web::admin_router(state.clone()),
                tls,
                state: state.clone(),
            };
            tokio::spawn(edge::accept_loop(listener, edge, stopped.clone()))
        });
        let metrics_loop = metrics.map(|listener| {
            let edge = edge::Edge {
                router: web::metrics_router(state.clone()),
                tls: None,
                state: state.clone(),
            };
            tokio::spawn(edge::accept_loop(listener, edge, stopped.clone()))
        });
        let task = tokio::spawn(async move {
            let edge = edge::Edge {
                router,
                tls: acceptor,
                state: edge_state,
            };
            edge::accept_loop(listener, edge, stopped).await;
            for other in [admin_loop, metrics_loop].into_iter().flatten() {
                let _ = other.await;
            }
            for task in background {
                task.abort();
            }
        });
        tracing::info!(%addr, tls = scheme == "https", dashboard = ?admin_addr, "listening");
        Ok(Self {
            addr,
            admin_addr,
            metrics_addr,
            state,
            dev_ca,
            acme: acme_resolver,
            stop,
            task,
        })
    }

    /// The public origin of apps (`http://127.0.0.1:PORT`,
    /// `https://localhost:PORT` with a development CA, or the configured
    /// public origin).
    pub fn origin(&self) -> String {
        if self.state.config.public_origin.is_none()
            && self.state.config.tls.is_some()
            && self.addr.ip().is_loopback()
        {
            format!("https://localhost:{}", self.addr.port())
        } else {
            self.state.origin.clone()
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The dashboard listener's bound address, when it has one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The dashboard's origin (`http://127.0.0.1:PORT` on loopback), when
    /// it is served.
    pub fn admin_origin(&self) -> Option<String> {
        let addr = self.admin_addr?;
        Some(if self.state.admin_https {
            format!("https://{addr}")
        } else {
            format!("http://{addr}")
        })
    }

    /// The metrics listener's bound address (`--metrics-listen`), if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The dashboard's URL (`http://127.0.0.1:PORT/_/admin`), when served.
    pub fn admin_url(&self) -> Option<String> {
        self.admin_origin().map(|o| format!("{o}/_/admin"))
    }

    /// `ws://HOST:PORT/_/uplink`, or `wss://localhost:PORT/_/uplink` with TLS.
    pub fn uplink_url(&self) -> String {
        match &self.state.config.tls {
            None => format!("ws://{}/_/uplink", self.addr),
            Some(_) if self.addr.ip().is_loopback() => {
                format!("wss://localhost:{}/_/uplink", self.addr.port())
            }
            Some(_) => format!("wss://{}/_/uplink", self.addr),
        }
    }

    /// The development CA, when started with [`tls::TlsSetting::Dev`].
    pub fn dev_ca(&self) -> Option<&tls::DevCa> {
        self.dev_ca.as_ref()
    }

    /// Certificates installed from the ACME server since start.
    pub fn acme_certificates_issued(&self) -> u64 {
        self.acme.as_ref().map_or(0, |a| a.issued())
    }

    /// Number of authenticated uplink connections.
    pub fn uplink_count(&self) -> usize {
        self.state.live_connections()
    }

    /// Number of key messages received since start (accepted or not); tests
    /// use it to prove a refused client never sent its key.
    pub fn key_messages_received(&self) -> u64 {
        self.state.key_messages()
    }

    /// Shuts down gracefully: `/_/ready` answers 503 at once, no new
    /// connection is accepted and no new call is forwarded (callers get a
    /// clear error), the calls already forwarded have up to `grace` to be
    /// answered, then every connection is closed with a reason that tells
    /// clients to reconnect (to another server, or to this one once it is
    /// back).
    pub async fn shutdown_gracefully(self, grace: std::time::Duration) {
        self.state
            .draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // In a cluster, other servers stop sending calls here at once.
        if let Some(cluster) = self.state.cluster.get() {
            cluster.stop_serving();
        }
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        while self.state.calls_in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let left = self.state.calls_in_flight();
        if left > 0 {
            tracing::warn!(
                calls = left,
                "shutting down with calls still in flight; their callers are told the provider disconnected"
            );
        }
        self.shutdown().await;
    }

    /// Stops accepting connections and closes every uplink (their pending
    /// callers are answered with `UplinkDisconnectedError`).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.state.close_all(
            "ferrolink: the server is shutting down; reconnect (to another server, or to this one once it is back)",
        );
        let _ = self.task.await;
        // Give the closing handshakes (which carry the reason) a moment
        // to be written before the caller ends the process.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while self.state.connections.websockets() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
