//! The device client over TLS against the real server: the development
//! CA's happy path, a P-384 chain, timers mid-record. Every refusal is in
//! the man-in-the-middle suite (`crates/mitm-suite`).

use std::time::Duration;

use embedded_io_adapters::tokio_1::FromTokio;
use ferrolink_device::tls::{self, TlsBuffers, TlsConnectError, TrustConfig};
use ferrolink_device::{Clock as _, Config, Session, TrustedTime};
use ferrolink_testkit::TestServer;
use ferrolink_testkit::TlsSetting;
use ferrolink_testkit::pki::{Ca, Leaf};
use ferrolink_testkit::python::PyProcess;
use serde_json::json;
use tokio::net::TcpStream;

use crate::support::{
    Bufs, Device, FUNCTIONS, TokioClock, WAIT, barrier, host_time, rand_seed, serve_while,
};

type Buffers = TlsBuffers<17_000, 2_048>;

/// A TLS server presenting `leaf`, and the temp dir holding its files.
async fn tls_server(leaf: &Leaf) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = leaf.write(dir.path());
    let server = TestServer::start_with(|c| c.tls = Some(TlsSetting::Files { cert, key })).await;
    (server, dir)
}

async fn handshake<'a>(
    server: &TestServer,
    host: &'a str,
    trust: TrustConfig<'a>,
    time: &TrustedTime,
    clock: &TokioClock,
    buffers: &'a mut Buffers,
) -> Result<tls::TlsStream<'a, FromTokio<TcpStream>>, TlsConnectError> {
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    tls::connect(
        FromTokio::new(tcp),
        host,
        trust,
        time,
        clock.now(),
        rand_core::OsRng,
        buffers,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn works_over_tls_with_the_dev_ca_in_both_directions() {
    let server = TestServer::start_with(|c| c.tls = Some(TlsSetting::Dev)).await;
    let ca_der = std::fs::read(server.data_dir().join("tls/dev-ca.der")).unwrap();
    let roots = [ca_der.as_slice()];
    let clock = TokioClock::new();
    let time = host_time(&clock);
    let mut tls_buffers = Box::new(Buffers::new());
    let stream = handshake(
        &server,
        "localhost",
        TrustConfig::pinned(&roots),
        &time,
        &clock,
        &mut tls_buffers,
    )
    .await
    .unwrap();
    let config = Config::new("localhost", server.port(), &server.server_key, FUNCTIONS);
    let mut buffers = Box::new(Bufs::new());
    let mut session = Session::connect(stream, clock, &config, &mut buffers, rand_seed())
        .await
        .unwrap();
    barrier(&mut session).await;
    assert_eq!(server.key_messages_received(), 1);

    // The official Python client, over wss with the dev CA, calls the device.
    let py = {
        let (url, key, ca) = (
            server.url(),
            server.client_key.clone(),
            server.dev_ca_path(),
        );
        tokio::task::spawn_blocking(move || {
            let mut p = PyProcess::spawn_env(
                "caller.py",
                &[&url, &key, "call", "blink_morse", "[\"SOS\"]"],
                &[("SSL_CERT_FILE", ca.as_os_str())],
            );
            p.result(WAIT)
        })
    };
    let mut device = Device::default();
    assert_eq!(
        serve_while(&mut session, &mut device, py).await,
        json!({"ok": 3})
    );
    assert_eq!(device.blinked, ["SOS"]);
    // And the device calls the server.
    let r = session
        .call(
            &mut device,
            "anvil.private.echo",
            "[\"over tls\"]",
            "{}",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(r, "\"over tls\"");
}

/// Forwards one connection to `target`, passing the server's bytes on in
/// 7-byte pieces a millisecond apart, so TLS records arrive in many reads.
async fn trickle_proxy(target: std::net::SocketAddr) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (device, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(target).await.unwrap();
        let (mut dr, mut dw) = device.into_split();
        let (mut sr, mut sw) = server.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut dr, &mut sw).await;
        });
        let mut buf = [0u8; 4096];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for piece in buf[..n].chunks(7) {
                if dw.write_all(piece).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn timers_firing_mid_record_do_not_break_the_tls_stream() {
    let server = TestServer::start_with(|c| c.tls = Some(TlsSetting::Dev)).await;
    let ca_der = std::fs::read(server.data_dir().join("tls/dev-ca.der")).unwrap();
    let roots = [ca_der.as_slice()];
    let proxy = trickle_proxy(server.addr()).await;
    let clock = TokioClock::new();
    let time = host_time(&clock);
    let mut tls_buffers = Box::new(Buffers::new());
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let stream = tls::connect(
        FromTokio::new(tcp),
        "localhost",
        TrustConfig::pinned(&roots),
        &time,
        clock.now(),
        rand_core::OsRng,
        &mut tls_buffers,
    )
    .await
    .unwrap();
    let mut config = Config::new("localhost", server.port(), &server.server_key, FUNCTIONS);
    // Timers every few milliseconds, while each record takes tens of them.
    config.timing.heartbeat_interval = Duration::from_millis(15);
    config.timing.heartbeat_timeout = Duration::from_secs(10);
    let mut buffers = Box::new(Bufs::new());
    let mut session = Session::connect(stream, clock, &config, &mut buffers, rand_seed())
        .await
        .unwrap();
    let mut device = Device::default();
    let long = "x".repeat(1_500);
    for round in 0..3 {
        let deadline = session.now() + Duration::from_millis(200);
        // Many short serving slices: each ends with a timer racing a read.
        while session.now() < deadline {
            let slice = session.now() + Duration::from_millis(3);
            session.serve_until(&mut device, slice).await.unwrap();
        }
        let args = format!("[\"{long}{round}\"]");
        let r = session
            .call(
                &mut device,
                "anvil.private.echo",
                &args,
                "{}",
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        assert_eq!(r, format!("\"{long}{round}\""));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_p384_chain_like_lets_encrypt_ecdsa_verifies() {
    // ISRG Root X2 (P-384) -> E5-like intermediate (P-384) -> P-256 leaf.
    let root = Ca::root_p384("x2-like root");
    let issuing = root.intermediate_p384("e5-like");
    let (server, _dir) = tls_server(&issuing.leaf(&["localhost"])).await;
    let roots = [root.der.as_slice()];
    let clock = TokioClock::new();
    let time = host_time(&clock);
    let mut tls_buffers = Box::new(Buffers::new());
    let stream = handshake(
        &server,
        "localhost",
        TrustConfig::pinned(&roots),
        &time,
        &clock,
        &mut tls_buffers,
    )
    .await
    .unwrap();
    let config = Config::new("localhost", server.port(), &server.server_key, FUNCTIONS);
    let mut buffers = Box::new(Bufs::new());
    let mut session = Session::connect(stream, clock, &config, &mut buffers, rand_seed())
        .await
        .unwrap();
    barrier(&mut session).await;
}
