//! Debian's `pebble`, the ACME test server, run on loopback ports for a test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::pki::Ca;

/// A pebble set up on loopback ports; running after [`Pebble::start`],
/// killed when dropped.
pub struct Pebble {
    child: Option<Child>,
    listen: u16,
    cert: PathBuf,
    key: PathBuf,
    /// The ACME directory URL.
    pub directory_url: String,
    /// PEM file of the CA that signed pebble's own HTTPS certificate.
    pub api_root: PathBuf,
    api_ca_pem: String,
    management_port: u16,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The pebble binary, installed from Debian's packages when missing (tests
/// run as root on these machines).
pub fn binary() -> PathBuf {
    crate::apt_install("pebble", "/usr/bin/pebble")
}

impl Pebble {
    /// Prepares pebble: its own HTTPS certificate and ports, so the server
    /// under test can be configured with [`Pebble::directory_url`] first.
    pub fn new() -> Self {
        binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let api_ca = Ca::root("pebble API test CA");
        let leaf = api_ca.leaf(&["localhost", "127.0.0.1"]);
        let (cert, key) = leaf.write(dir.path());
        let api_root = dir.path().join("api-root.pem");
        std::fs::write(&api_root, &api_ca.pem).expect("write API root");
        let listen = free_port();
        Self {
            child: None,
            listen,
            cert,
            key,
            directory_url: format!("https://127.0.0.1:{listen}/dir"),
            api_root,
            api_ca_pem: api_ca.pem,
            management_port: free_port(),
            _dir: dir,
        }
    }

    /// Starts pebble validating `tls-alpn-01` challenges on `tls_port` of
    /// the domain's address (where the server under test listens).
    pub fn start(&mut self, tls_port: u16) {
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{}", self.listen),
            "managementListenAddress": format!("127.0.0.1:{}", self.management_port),
            "certificate": self.cert,
            "privateKey": self.key,
            "httpPort": free_port(),
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        let config_path = self._dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).expect("write config");
        let child = Command::new(binary())
            .arg("-config")
            .arg(&config_path)
            // No random sleeps before validating, no random nonce rejections.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble");
        self.child = Some(child);
    }

    /// The root that signs pebble's issued certificates (from its
    /// management interface; pebble makes a new one each run).
    pub async fn issuing_root_pem(&self) -> String {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(self.api_ca_pem.as_bytes()) {
            roots.add(c.expect("PEM")).expect("root");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        for _ in 0..100 {
            let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", self.management_port)).await
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            let mut tls = connector
                .connect(name, tcp)
                .await
                .expect("TLS to pebble management");
            tls.write_all(b"GET /roots/0 HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .await
                .expect("request");
            let mut response = Vec::new();
            let _ = tls.read_to_end(&mut response).await;
            let text = String::from_utf8_lossy(&response).into_owned();
            let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
            assert!(
                body.contains("BEGIN CERTIFICATE"),
                "unexpected answer from pebble: {text}"
            );
            return body;
        }
        panic!("pebble's management interface did not come up");
    }

    /// Where pebble keeps its files.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}

impl Default for Pebble {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
