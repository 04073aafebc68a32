//! The device client over TLS: every refusal first, each proving the server
//! never received the key; then the development CA's happy path.

use std::time::Duration;

use embedded_io_adapters::tokio_1::FromTokio;
use ferrolink_device::time::TimeError;
use ferrolink_device::tls::{self, CertError, TlsBuffers, TlsConnectError, TrustConfig};
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

/// Connects to `server` as `host` with `trust`, expecting a refusal, and
/// checks that the key never reached the server.
async fn refused(
    server: &TestServer,
    host: &str,
    trust: TrustConfig<'_>,
    time: Option<TrustedTime>,
) -> TlsConnectError {
    let clock = TokioClock::new();
    let time = time.unwrap_or_else(|| host_time(&clock));
    let mut buffers = Box::new(Buffers::new());
    let e = handshake(server, host, trust, &time, &clock, &mut buffers)
        .await
        .map(|_| ())
        .expect_err("the device must refuse this server");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        server.key_messages_received(),
        0,
        "the key reached the server: {e}"
    );
    e
}

fn reason(e: TlsConnectError) -> CertError {
    match e {
        TlsConnectError::Certificate { reason, .. } => reason,
        other => panic!("not a certificate refusal: {other}"),
    }
}

#[tokio::test]
async fn refuses_a_certificate_from_an_unpinned_ca() {
    let trusted = Ca::root("trusted");
    let other = Ca::root("other");
    let (server, _dir) = tls_server(&other.leaf(&["localhost"])).await;
    let roots = [trusted.der.as_slice()];
    let e = refused(&server, "localhost", TrustConfig::pinned(&roots), None).await;
    assert!(
        e.to_string().contains("does not chain to a pinned root"),
        "{e}"
    );
    assert_eq!(reason(e), CertError::UnknownIssuer);
}

#[tokio::test]
async fn refuses_a_certificate_for_another_host() {
    let ca = Ca::root("ca");
    let (server, _dir) = tls_server(&ca.leaf(&["device-gateway.example"])).await;
    let roots = [ca.der.as_slice()];
    let e = refused(&server, "localhost", TrustConfig::pinned(&roots), None).await;
    assert_eq!(reason(e), CertError::WrongName);
}

#[tokio::test]
async fn refuses_an_expired_certificate() {
    let ca = Ca::root("ca");
    let (server, _dir) = tls_server(&ca.leaf_valid(&["localhost"], -30 * 86_400, -86_400)).await;
    let roots = [ca.der.as_slice()];
    let e = refused(&server, "localhost", TrustConfig::pinned(&roots), None).await;
    assert!(e.to_string().contains("expired"), "{e}");
    assert_eq!(reason(e), CertError::Expired);
}

#[tokio::test]
async fn refuses_a_certificate_not_yet_valid() {
    let ca = Ca::root("ca");
    let (server, _dir) = tls_server(&ca.leaf_valid(&["localhost"], 86_400, 30 * 86_400)).await;
    let roots = [ca.der.as_slice()];
    let e = refused(&server, "localhost", TrustConfig::pinned(&roots), None).await;
    assert_eq!(reason(e), CertError::NotValidYet);
}

#[tokio::test]
async fn refuses_a_revoked_certificate_or_key() {
    let ca = Ca::root("ca");
    let leaf = ca.leaf(&["localhost"]);
    let (server, _dir) = tls_server(&leaf).await;
    let roots = [ca.der.as_slice()];
    let revoked = [hex32(&leaf.cert_sha256)];
    let trust = TrustConfig {
        roots: &roots,
        revoked: &revoked,
    };
    let e = refused(&server, "localhost", trust, None).await;
    assert_eq!(reason(e), CertError::Revoked { position: 0 });
    // An intermediate's public key, listed by its SPKI fingerprint.
    let inter = ca.intermediate("issuing");
    let (server, _dir) = tls_server(&inter.leaf(&["localhost"])).await;
    let revoked = [hex32(&inter.spki_sha256)];
    let trust = TrustConfig {
        roots: &roots,
        revoked: &revoked,
    };
    let e = refused(&server, "localhost", trust, None).await;
    assert_eq!(reason(e), CertError::Revoked { position: 1 });
}

#[tokio::test]
async fn refuses_to_connect_before_the_time_is_trusted() {
    let ca = Ca::root("ca");
    let (server, _dir) = tls_server(&ca.leaf(&["localhost"])).await;
    let roots = [ca.der.as_slice()];
    let e = refused(
        &server,
        "localhost",
        TrustConfig::pinned(&roots),
        Some(TrustedTime::unset()),
    )
    .await;
    assert_eq!(e, TlsConnectError::Time(TimeError::NotSet));
    assert!(e.to_string().contains("no trusted time yet"), "{e}");
    // A clock that was never set (1970, 2001) is not a time either.
    assert!(matches!(
        TrustedTime::from_trusted_source(978_307_200_000, TokioClock::new().now()),
        Err(TimeError::BeforeFloor { .. })
    ));
}

#[tokio::test]
async fn refuses_a_self_signed_certificate_and_the_wrong_dev_ca() {
    let (server, _dir) = tls_server(&ferrolink_testkit::pki::self_signed(&["localhost"])).await;
    let other = Ca::root("other");
    let roots = [other.der.as_slice()];
    let e = refused(&server, "localhost", TrustConfig::pinned(&roots), None).await;
    assert_eq!(reason(e), CertError::UnknownIssuer);
    let dev = TestServer::start_with(|c| c.tls = Some(TlsSetting::Dev)).await;
    let e = refused(&dev, "localhost", TrustConfig::pinned(&roots), None).await;
    assert_eq!(reason(e), CertError::UnknownIssuer);
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

fn hex32(hex: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
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
