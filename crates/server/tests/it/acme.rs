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
    let server = TestServer::start_with(|c| {
        c.tls = Some(TlsSetting::Acme(AcmeSetting {
            domain: "localhost".to_owned(),
            directory_url: pebble.directory_url.clone(),
            directory_root: Some(pebble.api_root.clone()),
            // Longer than pebble's certificates live: renew right after each
            // issuance, so the test sees a renewal.
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
    wait_for("a renewal", || server.acme_certificates_issued() >= 2).await;
    tls_auth(&server, &root)
        .await
        .expect("the renewed certificate verifies");
    // A client pinning another root still refuses it.
    let other = ferrolink_testkit::pki::Ca::root("other");
    assert!(tls_auth(&server, &other.pem).await.is_err());
}
