//! `wss://` against the real server: the default pins, a `ws://` URL to a
//! TLS server, then the happy paths. Every other refusal is in the
//! man-in-the-middle suite (`crates/mitm-suite`).

use ferrolink_client::tls::TlsConfig;
use ferrolink_client::{Client, ConnectError, ConnectErrorKind};
use ferrolink_testkit::TestServer;
use ferrolink_testkit::TlsSetting;
use ferrolink_testkit::pki::{Ca, Leaf};

/// A TLS server presenting `leaf`, and the temp dir holding its files.
async fn tls_server(leaf: &Leaf) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = leaf.write(dir.path());
    let server = TestServer::start_with(|c| c.tls = Some(TlsSetting::Files { cert, key })).await;
    (server, dir)
}

async fn refused(server: &TestServer, tls: TlsConfig) -> ConnectError {
    refused_at(server, &server.url(), tls).await
}

async fn refused_at(server: &TestServer, url: &str, tls: TlsConfig) -> ConnectError {
    let e = Client::builder(url, &server.server_key)
        .tls(tls)
        .connect()
        .await
        .expect_err("the client must refuse this server");
    assert_eq!(
        server.key_messages_received(),
        0,
        "the key reached the server: {e}"
    );
    e
}

fn pinned(ca: &Ca) -> TlsConfig {
    TlsConfig::with_root_pem(ca.pem.as_bytes()).unwrap()
}

#[tokio::test]
async fn refuses_a_certificate_from_an_unpinned_ca() {
    let trusted = Ca::root("trusted");
    let other = Ca::root("other");
    let (server, _dir) = tls_server(&other.leaf(&["localhost"])).await;
    let e = refused(&server, pinned(&trusted)).await;
    assert_eq!(e.kind(), ConnectErrorKind::Tls);
    assert!(
        e.to_string().contains("does not chain to a pinned root"),
        "{e}"
    );
    // The default pins (Let's Encrypt only) refuse it too.
    let e = refused(&server, TlsConfig::default()).await;
    assert!(e.to_string().contains("ISRG Root X1"), "{e}");
}

#[tokio::test]
async fn plain_ws_to_a_tls_server_fails_without_sending_the_key() {
    let ca = Ca::root("ca");
    let (server, _dir) = tls_server(&ca.leaf(&["localhost"])).await;
    let plain = server.url().replacen("wss://", "ws://", 1);
    let e = refused_at(&server, &plain, pinned(&ca)).await;
    assert_eq!(e.kind(), ConnectErrorKind::Transport, "{e}");
}

#[tokio::test]
async fn connects_through_an_intermediate_to_a_pinned_root() {
    let root = Ca::root("root");
    let intermediate = root.intermediate("issuing CA");
    let (server, _dir) = tls_server(&intermediate.leaf(&["localhost"])).await;
    let client = Client::builder(server.url(), &server.client_key)
        .tls(pinned(&root))
        .connect()
        .await
        .unwrap();
    let v: String = client
        .call("anvil.private.echo", ("over tls",))
        .await
        .unwrap();
    assert_eq!(v, "over tls");
    assert_eq!(server.key_messages_received(), 1);
}

#[tokio::test]
async fn connects_to_dev_tls_with_its_ca_pinned() {
    let server = TestServer::start_with(|c| c.tls = Some(TlsSetting::Dev)).await;
    assert!(server.url().starts_with("wss://localhost:"));
    let tls = TlsConfig::with_root_pem(&server.dev_ca_pem()).unwrap();
    let client = Client::builder(server.url(), &server.client_key)
        .tls(tls)
        .connect()
        .await
        .unwrap();
    let v: u32 = client.call("anvil.private.echo", (7,)).await.unwrap();
    assert_eq!(v, 7);
}

#[tokio::test]
async fn a_renewed_certificate_file_is_picked_up_without_restart() {
    let old_ca = Ca::root("old");
    let new_ca = Ca::root("new");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = old_ca.leaf(&["localhost"]).write(dir.path());
    let server = TestServer::start_with(|c| {
        c.tls = Some(TlsSetting::Files { cert, key });
        c.cert_reload_every = std::time::Duration::from_millis(100);
    })
    .await;
    Client::builder(server.url(), &server.client_key)
        .tls(pinned(&old_ca))
        .connect()
        .await
        .unwrap();
    // mtime resolution can be coarse: make sure the new files look newer.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    new_ca.leaf(&["localhost"]).write(dir.path());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let attempt = Client::builder(server.url(), &server.client_key)
            .tls(pinned(&new_ca))
            .connect()
            .await;
        if attempt.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new certificate not served after 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
