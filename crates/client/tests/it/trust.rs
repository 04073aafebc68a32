//! Trust bundles kept in a file: a client holding bundle N takes N+1 from
//! the server (a root added, the server's leaf revoked), connects again
//! under it and refuses that leaf; replayed, forged and foreign bundles
//! are ignored and the file keeps what it had.

use ed25519_dalek::SigningKey;
use ferrolink_client::tls::TlsConfig;
use ferrolink_client::{CallOptions, Client, ConnectErrorKind};
use ferrolink_proto::{trust, wire};
use ferrolink_testkit::pki::{Ca, Leaf};
use ferrolink_testkit::{TestServer, TlsSetting};

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bundle(key: &SigningKey, sequence: u64, roots: &[&Ca], revoked: &[[u8; 32]]) -> Vec<u8> {
    let roots: Vec<&[u8]> = roots.iter().map(|ca| ca.der.as_slice()).collect();
    trust::sign(key, sequence, 1_800_000_000, &roots, revoked).unwrap()
}

async fn tls_server(leaf: &Leaf) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = leaf.write(dir.path());
    let server = TestServer::start_with(|c| {
        c.tls = Some(TlsSetting::Files { cert, key });
        c.revocation_poll = std::time::Duration::from_millis(50);
    })
    .await;
    (server, dir)
}

/// Waits until the server offers a bundle above `have` (it notices
/// database changes within its poll interval).
async fn until_offered(client: &Client, have: u64) {
    for _ in 0..200 {
        let offer = client
            .call_raw(wire::TRUST_BUNDLE_COMMAND, (have,), CallOptions::default())
            .await
            .unwrap();
        if offer != "null" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the server never offered a bundle above {have}");
}

#[tokio::test]
async fn a_newer_bundle_revokes_the_servers_leaf_and_persists() {
    let operator = SigningKey::from_bytes(&[6; 32]);
    let signer = hex(operator.verifying_key().as_bytes());
    let ca1 = Ca::root("configured root");
    let ca2 = Ca::root("root added later");
    let leaf = ca1.leaf(&["localhost"]);
    let (server, _dir) = tls_server(&leaf).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("trust.bundle");
    let b1 = bundle(&operator, 1, &[&ca1], &[]);
    std::fs::write(&file, &b1).unwrap();
    server.store().publish_trust_bundle(&b1).unwrap();
    let tls = || {
        TlsConfig::with_root_pem(ca1.pem.as_bytes())
            .unwrap()
            .trust_bundle(&file, &signer)
            .unwrap()
    };
    assert_eq!(tls().trust_bundle_sequence(), Some(1));
    let client = Client::builder(server.url(), &server.client_key)
        .tls(tls())
        .connect()
        .await
        .unwrap();

    let b2 = bundle(&operator, 2, &[&ca1, &ca2], &[sha256(&leaf.chain_der[0])]);
    server.store().publish_trust_bundle(&b2).unwrap();
    until_offered(&client, 1).await;
    let keys_before = server.key_messages_received();
    let config = tls();
    let e = Client::builder(server.url(), &server.client_key)
        .tls(config.clone())
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ConnectErrorKind::Tls, "{e}");
    assert!(
        e.to_string()
            .contains("certificate 0 of the server's chain is on the revocation list"),
        "{e}"
    );
    // The first connection (under bundle 1) sent the key; the second did not.
    assert_eq!(server.key_messages_received(), keys_before + 1);
    assert_eq!(config.trust_bundle_sequence(), Some(2));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b2,
        "saved for the next start"
    );
    assert_eq!(tls().trust_bundle_sequence(), Some(2));

    // The added root works.
    let (other, _dir2) = tls_server(&ca2.leaf(&["localhost"])).await;
    Client::builder(other.url(), &other.client_key)
        .tls(tls())
        .connect()
        .await
        .unwrap();
}

#[tokio::test]
async fn replayed_forged_and_foreign_bundles_are_ignored() {
    let operator = SigningKey::from_bytes(&[7; 32]);
    let signer = hex(operator.verifying_key().as_bytes());
    let ca = Ca::root("root");
    let (server, _dir) = tls_server(&ca.leaf(&["localhost"])).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("trust.bundle");
    let b1 = bundle(&operator, 1, &[&ca], &[]);
    let b2 = bundle(&operator, 2, &[&ca], &[]);
    std::fs::write(&file, &b2).unwrap();
    let mut forged = bundle(&operator, 11, &[&ca], &[[9; 32]]);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let foreign = bundle(&SigningKey::from_bytes(&[8; 32]), 12, &[&ca], &[]);
    let db = server.database();
    for (sequence, bytes) in [(10, &b1), (11, &forged), (12, &foreign)] {
        // As a compromised server would serve them.
        db.execute(
            "INSERT INTO trust_bundles (sequence, signer, bundle, published_at) VALUES (?1, x'00', ?2, 0)",
            rusqlite::params![sequence, bytes],
        )
        .unwrap();
        let tls = TlsConfig::with_root_pem(ca.pem.as_bytes())
            .unwrap()
            .trust_bundle(&file, &signer)
            .unwrap();
        let probe = Client::builder(server.url(), &server.client_key)
            .tls(tls.clone())
            .connect()
            .await
            .unwrap();
        until_offered(&probe, sequence as u64 - 1).await;
        // Connecting takes the offer, refuses it, and carries on.
        let client = Client::builder(server.url(), &server.client_key)
            .tls(tls.clone())
            .connect()
            .await
            .unwrap();
        let echo: String = client
            .call("anvil.private.echo", ("still here",))
            .await
            .unwrap();
        assert_eq!(echo, "still here");
        assert_eq!(tls.trust_bundle_sequence(), Some(2), "bundle {sequence}");
        assert_eq!(std::fs::read(&file).unwrap(), b2);
    }
}
