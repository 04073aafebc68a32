//! Server settings, as a typed value the CLI builds (libraries never read
//! files or the environment).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ferrolink_proto::server_session::SessionConfig;

use crate::edge::certificates::TlsSetting;

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// The data directory (the SQLite database, app files, certificates).
    pub data_dir: PathBuf,
    /// A `postgres://` URL: apps, keys, accounts, trust bundles and data
    /// tables are kept there, shared with other servers given the same
    /// URL, instead of in the data directory's SQLite database.
    pub database: Option<String>,
    /// A `nats://` (or `tls://`) URL: calls for functions this server does
    /// not hold go to the other servers connected to the same NATS server
    /// (with a shared `database`), and theirs come here (docs/cluster.md).
    pub cluster: Option<String>,
    /// PEM certificates of the authorities the NATS server's certificate
    /// must chain to; given, the connection to NATS must be TLS.
    pub cluster_ca: Option<PathBuf>,
    /// Deadline of a routed call; past it the caller gets `anvil.server.TimeoutError`.
    pub call_timeout: Duration,
    /// Largest websocket message accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Most calls one connection may have in flight; more get `QuotaExceededError`.
    pub max_pending_calls: usize,
    /// Most bytes queued for one connection that is not reading; past it the
    /// connection is closed as a slow consumer.
    pub max_queued_bytes: usize,
    /// How long a connection's socket may take none of the bytes waiting
    /// for it before it is closed as a slow consumer.
    pub write_stall_timeout: Duration,
    /// How often the key table is checked for revocations made by the CLI.
    pub revocation_poll: Duration,
    /// Per-connection protocol limits and timeouts.
    pub session: SessionConfig,
    /// Environment name shown to clients (`anvil.app.environment.name`).
    pub environment: String,
    /// TLS for every endpoint; `None` serves plain HTTP/ws.
    pub tls: Option<TlsSetting>,
    /// Extra host names or IP addresses for the development certificate
    /// (with [`TlsSetting::Dev`]), so devices on the LAN can verify it.
    pub dev_tls_names: Vec<String>,
    /// Serve plain ws on a non-loopback address. Keys then cross the network
    /// in clear text; only for a network you control.
    pub insecure_plain_ws: bool,
    /// Failed-authentication throttling per source address.
    pub auth_throttle: crate::ThrottleConfig,
    /// How long a client may take to send a request's headers (and the TLS
    /// handshake) before it is dropped.
    pub header_timeout: Duration,
    /// How often certificate files are checked for changes.
    pub cert_reload_every: Duration,
    /// Public origin of the server (`https://host`), answered to
    /// `anvil.private.get_app_origin`; defaults to `http://<listen address>`.
    pub public_origin: Option<String>,
    /// How many connections are allowed at once.
    pub limits: ConnectionLimits,
    /// Reverse proxies whose `Forwarded` / `X-Forwarded-For` headers name
    /// the real client (for throttling, limits, logs and `client.ip`).
    /// Connections from anywhere else are taken at their TCP address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header the trusted proxies write the client's address into.
    pub trusted_proxy_header: ProxyHeader,
    /// Host names requests may carry in `Host` besides the ones the server
    /// already knows (its certificate names, the public origin, IP
    /// addresses and `localhost`). Anything else is refused, which stops
    /// DNS-rebinding pages from reaching a server on a private address.
    pub allowed_hosts: Vec<String>,
    /// Where the operator dashboard listens: its own origin, so app pages
    /// (the operators' and their users' code) can never script it. On a
    /// loopback address it is plain HTTP; elsewhere it needs TLS (the same
    /// certificate as `listen`). `None` serves no dashboard.
    pub admin_listen: Option<SocketAddr>,
    /// A listener of its own for Prometheus metrics and the health checks
    /// (plain http), besides `/_/metrics` on the dashboard's listener.
    pub metrics_listen: Option<SocketAddr>,
}

/// Which header a trusted reverse proxy names the client in. Only that
/// one is read (a proxy passes the other through from the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyHeader {
    /// `X-Forwarded-For` (nginx, HAProxy, most load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239).
    Forwarded,
}

/// Limits on simultaneous connections. A refusal names the limit and the
/// option that raises it; refusals are logged once per interval with a
/// count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// All TCP connections (HTTP, uplinks, browser sessions).
    pub total: usize,
    /// TCP connections from one address (one /64 for IPv6); behind a
    /// trusted proxy, websockets per forwarded client address.
    pub per_address: usize,
    /// Uplinks authenticated with one key.
    pub per_key: usize,
    /// Session websockets of one logged-in browser session (anonymous
    /// sessions count per address).
    pub per_browser: usize,
}

impl Default for ConnectionLimits {
    /// 50,000 in all, 1,000 per address, 100 per key, 20 per browser.
    fn default() -> Self {
        Self {
            total: 50_000,
            per_address: 1_000,
            per_key: 100,
            per_browser: 20,
        }
    }
}

impl ServerConfig {
    /// Defaults for a server on `listen` using `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen,
            data_dir: data_dir.into(),
            database: None,
            cluster: None,
            cluster_ca: None,
            call_timeout: Duration::from_secs(30),
            max_frame_bytes: 4 * 1024 * 1024,
            max_pending_calls: 1024,
            max_queued_bytes: 16 * 1024 * 1024,
            write_stall_timeout: Duration::from_secs(20),
            revocation_poll: Duration::from_secs(1),
            session: SessionConfig::default(),
            environment: "ferrolink".to_owned(),
            tls: None,
            dev_tls_names: Vec::new(),
            insecure_plain_ws: false,
            auth_throttle: crate::ThrottleConfig::default(),
            cert_reload_every: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            public_origin: None,
            limits: ConnectionLimits::default(),
            trusted_proxies: Vec::new(),
            trusted_proxy_header: ProxyHeader::XForwardedFor,
            allowed_hosts: Vec::new(),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            metrics_listen: None,
        }
    }
}
