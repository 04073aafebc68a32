//! Debian's `nats-server`, run on a free loopback port for a test; killed
//! when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running NATS server.
pub struct TestNats {
    child: Child,
    port: u16,
    /// `--tlscert` and `--tlskey`, for a server that requires TLS.
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl TestNats {
    /// Starts a NATS server on a free loopback port and waits until it
    /// accepts connections.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        Self::start_on(port, None)
    }

    /// Starts a NATS server that requires TLS, with the certificate and key
    /// in those PEM files.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        Self::start_on(port, Some((cert.to_owned(), key.to_owned())))
    }

    fn start_on(port: u16, tls: Option<(std::path::PathBuf, std::path::PathBuf)>) -> Self {
        let bin = crate::apt_install("nats-server", "/usr/sbin/nats-server");
        let mut cmd = Command::new(bin);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        if let Some((cert, key)) = &tls {
            cmd.arg("--tls")
                .arg("--tlscert")
                .arg(cert)
                .arg("--tlskey")
                .arg(key);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, tls }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (its port stays this server's, for [`TestNats::resume`]).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a new server on the same port after [`TestNats::stop`]
    /// (clients reconnect to it by themselves).
    pub fn resume(&mut self) {
        let port = self.port;
        let fresh = Self::start_on(port, self.tls.take());
        *self = fresh;
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
