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
//! Where to look: [`storage`] (SQLite: apps and keys), [`keys`] (key shape,
//! hashing), `router` (who provides which function), `uplink` (one
//! connection's driver around `ferrolink_proto::server::ServerSession`).
//!
//! Not here yet: TLS, browser sessions, users, the dashboard.

mod config;
mod conn;
mod http;
mod hub;
pub mod keys;
mod router;
pub mod storage;
mod uplink;

use std::net::SocketAddr;
use std::sync::Arc;

pub use config::ServerConfig;
pub use ferrolink_proto::server::SessionConfig;

use crate::hub::Hub;
use crate::storage::{Store, StoreError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The data directory or database could not be opened.
    #[error("cannot open the data directory")]
    Store(#[from] StoreError),
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
    hub: Arc<Hub>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Opens the data directory, binds the listen address and starts serving.
    pub async fn start(config: ServerConfig) -> Result<Self, StartError> {
        let store = Arc::new(Store::open(&config.data_dir)?);
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
        let origin = config
            .public_origin
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let hub = Arc::new(Hub::new(config, store, origin)?);
        let watcher = tokio::spawn(hub.clone().watch_keys());
        let app = http::router(hub.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "server stopped with an error");
            }
            watcher.abort();
        });
        tracing::info!(%addr, "listening");
        Ok(Self {
            addr,
            hub,
            stop,
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://HOST:PORT/_/uplink`.
    pub fn uplink_url(&self) -> String {
        format!("ws://{}/_/uplink", self.addr)
    }

    /// Number of authenticated uplink connections.
    pub fn uplink_count(&self) -> usize {
        self.hub.live_connections()
    }

    /// Stops accepting connections and closes every uplink (their pending
    /// callers are answered with `UplinkDisconnectedError`).
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        self.hub.close_all("ferrolink: the server is shutting down");
        let _ = self.task.await;
    }
}
