//! Certificates from a real ACME server (Debian's pebble), answered with
//! tls-alpn-01 on the server's own port: issuance, then a renewal.

use std::time::{Duration, Instant};

use ferrolink::acme::AcmeSetting;
use ferrolink::tls::TlsSetting;
use ferrolink_testkit::TestServer;
use ferrolink_testkit::pebble::Pebble;

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Connects over TLS trusting only `root_pem` and authenticates.
async fn tls_auth(server: &TestServer, root_pem: &str) -> Result<(), String> {
    ferrolink_testkit::raw::tls_authenticated(&server.url(), &server.client_key, root_pem).await
}

#[tokio::test(flavor = "multi_thread")]
async fn acme_issues_and_renews_a_certificate_that_clients_accept() {
    let mut pebble = Pebble::new();
    let mut server = TestServer::start_with(|c| {
        c.tls = Some(TlsSetting::Acme(AcmeSetting {
            domain: "localhost".to_owned(),
            directory_url: pebble.directory_url.clone(),
            directory_root: Some(pebble.api_root.clone()),
            // Longer than any certificate lives: clamped to two thirds of
            // the lifetime, so it neither renews in a loop nor never.
            renew_before: Duration::from_secs(100 * 365 * 86_400),
        }));
    })
    .await;
    // Before issuance the server has only a temporary self-signed
    // certificate, which a client pinning the ACME root refuses.
    pebble.start(server.port());
    let root = pebble.issuing_root_pem().await;
    wait_for("the first certificate", || {
        server.acme_certificates_issued() >= 1
    })
    .await;
    tls_auth(&server, &root)
        .await
        .expect("the issued certificate verifies");
    // Pebble's certificates live for years, so the renewal is not due: no
    // second issuance follows at once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(server.acme_certificates_issued(), 1, "renewed in a loop");
    let stored = server.data_dir().join("acme").join("certificate.pem");
    assert!(
        stored.is_file(),
        "certificate and key are stored as one file"
    );

    // A stored certificate close to its end (an hour's lifetime, a minute
    // left) is loaded at start and renewed at once.
    let ca = ferrolink_testkit::pki::Ca::root("short-lived");
    let leaf = ca.leaf_valid(&["localhost"], -3540, 60);
    std::fs::write(&stored, format!("{}{}", leaf.chain_pem, leaf.key_pem)).unwrap();
    server.restart().await;
    wait_for("the renewal", || server.acme_certificates_issued() >= 1).await;
    tls_auth(&server, &root)
        .await
        .expect("the renewed certificate verifies");

    // A stored pair whose key is not the certificate's is not served:
    // the server issues a new one instead.
    let other = ca.leaf_valid(&["localhost"], -60, 30 * 86_400);
    let wrong = ca.leaf_valid(&["localhost"], -60, 30 * 86_400);
    std::fs::write(&stored, format!("{}{}", other.chain_pem, wrong.key_pem)).unwrap();
    server.restart().await;
    wait_for("a certificate replacing the mismatched pair", || {
        server.acme_certificates_issued() >= 1
    })
    .await;
    tls_auth(&server, &root)
        .await
        .expect("the new certificate verifies");
    // A client pinning another root still refuses it.
    let stranger = ferrolink_testkit::pki::Ca::root("other");
    assert!(tls_auth(&server, &stranger.pem).await.is_err());
}
