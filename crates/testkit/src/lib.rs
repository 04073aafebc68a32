//! Test helpers for ferrolink (dev-only).
//!
//! - [`TestServer`]: the real server in-process on `127.0.0.1:0` with a
//!   temporary data directory and an app `demo` with a server and a client key.
//! - [`python`]: a virtualenv under `target/` with the official
//!   `anvil-uplink==0.7.0` from the package index, and helpers to run the
//!   scripts in `crates/testkit/python/`.
//! - [`pki`]: certificate authorities and leaves made on the spot (rcgen),
//!   valid or broken in the ways the TLS tests need.
//! - [`RawClient`]: a bare websocket peer for sending exactly the bytes a
//!   test wants.
//! - [`mitm`]: a hand-made TLS 1.3 server that misbehaves on purpose (the
//!   man in the middle every client must refuse).
//! - [`sntp`]: time servers on loopback, honest or skewed; [`roughtime`]:
//!   a signed-time server that can lie on purpose.

pub mod browser;
pub mod http;
pub mod mitm;
pub mod nats;
pub mod pebble;
pub mod pki;
pub mod postgres;
pub mod python;
pub mod raw;
pub mod roughtime;
pub mod sntp;

use std::path::Path;

use ferrolink::storage::Store;
use ferrolink::{Server, ServerConfig};
use ferrolink_proto::message::Privilege;

pub use ferrolink::tls::TlsSetting;
pub use raw::RawClient;

/// Debian's `package`, installed with apt-get if `binary` is missing (tests
/// run as root on these machines; `.ci/run` installs packages up front).
pub fn apt_install(package: &str, binary: &str) -> std::path::PathBuf {
    let path = std::path::PathBuf::from(binary);
    apt_install_unless(package, || path.exists());
    path
}

/// Installs Debian's `package` unless `installed()` says it is there.
pub fn apt_install_unless(package: &str, installed: impl Fn() -> bool) {
    // One apt-get at a time: tests run in parallel, and dpkg's lock turns
    // a second concurrent install into a failure.
    static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _apt = APT.lock().unwrap_or_else(|p| p.into_inner());
    if !installed() {
        let install = |args: &[&str]| {
            std::process::Command::new("apt-get")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !install(&["install", "-y", "-qq", package]) {
            install(&["update", "-qq"]);
            assert!(
                install(&["install", "-y", "-qq", package]),
                "cannot install {package}: run `apt-get install {package}` as root"
            );
        }
    }
}

/// A server running in this process on an ephemeral loopback port.
pub struct TestServer {
    server: Option<Server>,
    config: ServerConfig,
    dir: tempfile::TempDir,
    /// A server-privilege key of app `demo`.
    pub server_key: String,
    /// A client-privilege key of app `demo`.
    pub client_key: String,
}

impl TestServer {
    /// Starts a server with default settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `adjust` has changed its settings.
    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = ServerConfig::new("127.0.0.1:0".parse().expect("address"), dir.path());
        adjust(&mut config);
        let store =
            Store::open_database(dir.path(), config.database.as_deref()).expect("open store");
        // A database shared with another test server has the app already.
        match store.create_app_with("demo", true) {
            Ok(_) | Err(ferrolink::storage::StoreError::AppExists(_)) => {}
            Err(e) => panic!("create demo app: {e}"),
        }
        let (_, server_key) = store
            .create_key("demo", Privilege::Server, None)
            .expect("server key");
        let (_, client_key) = store
            .create_key("demo", Privilege::Client, None)
            .expect("client key");
        drop(store);
        let server = Server::start(config.clone()).await.expect("server starts");
        Self {
            server: Some(server),
            config,
            dir,
            server_key: server_key.expose().to_owned(),
            client_key: client_key.expose().to_owned(),
        }
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("server is running")
    }

    /// `ws://127.0.0.1:PORT/_/uplink`.
    pub fn url(&self) -> String {
        self.server().uplink_url()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Number of key messages the server has received (accepted or not).
    pub fn key_messages_received(&self) -> u64 {
        self.server().key_messages_received()
    }

    /// The development CA's PEM, when started with `TlsSetting::Dev`.
    pub fn dev_ca_pem(&self) -> Vec<u8> {
        let ca = self.server().dev_ca().expect("started with --dev-tls");
        std::fs::read(&ca.cert_pem).expect("read the dev CA")
    }

    /// The development CA's PEM file, when started with `TlsSetting::Dev`.
    pub fn dev_ca_path(&self) -> std::path::PathBuf {
        self.server()
            .dev_ca()
            .expect("started with --dev-tls")
            .cert_pem
            .clone()
    }

    /// Certificates installed from the ACME server since start.
    pub fn acme_certificates_issued(&self) -> u64 {
        self.server().acme_certificates_issued()
    }

    /// The origin pages are served from (`http://127.0.0.1:PORT`).
    pub fn origin(&self) -> String {
        self.server().origin()
    }

    /// The dashboard's listener (its own loopback port).
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        self.server().admin_addr().expect("the dashboard is served")
    }

    /// The dashboard's origin (`http://127.0.0.1:ADMIN_PORT`).
    pub fn admin_origin(&self) -> String {
        self.server()
            .admin_origin()
            .expect("the dashboard is served")
    }

    /// `ws://127.0.0.1:PORT/_/session?app=APP`, the browser session endpoint.
    pub fn session_url(&self, app: &str) -> String {
        format!("ws://{}/_/session?app={app}", self.addr())
    }

    /// Creates a dashboard operator.
    pub fn create_operator(&self, name: &str, password: &str) {
        self.store()
            .create_operator(name, &ferrolink::auth::hash_password(password), true)
            .expect("create operator");
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.server().local_addr().port()
    }

    /// The bound address (for raw TCP tests).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server().local_addr()
    }

    /// Number of authenticated uplinks.
    pub fn uplink_count(&self) -> usize {
        self.server().uplink_count()
    }

    /// Opens the server's database as another process (such as the CLI) would.
    pub fn store(&self) -> Store {
        Store::open_database(self.dir.path(), self.config.database.as_deref()).expect("open store")
    }

    /// The database itself, for tests that play a compromised server
    /// (rows written behind the server's back).
    pub fn database(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join(ferrolink::storage::DB_FILE))
            .expect("open the database")
    }

    /// Creates an app.
    pub fn create_app(&self, name: &str) {
        self.store().create_app(name).expect("create app");
    }

    /// Creates a key and returns it.
    pub fn create_key(&self, app: &str, privilege: Privilege, device: Option<&str>) -> String {
        let (_, secret) = self
            .store()
            .create_key(app, privilege, device)
            .expect("create key");
        secret.expose().to_owned()
    }

    /// Stops the server and starts it again on the same port and data directory.
    pub async fn restart(&mut self) {
        let addr = self.server().local_addr();
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        let mut config = self.config.clone();
        config.listen = addr;
        self.server = Some(Server::start(config).await.expect("server restarts"));
    }

    /// Stops the server.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}
