//! Trust that outlives a release: a device holding bundle N fetches N+1
//! over the link (a root added, the server's leaf revoked), reconnects and
//! refuses that leaf; a replayed bundle, a forged signature and another
//! signer's bundle are ignored, and nothing is saved for them.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use embedded_io_adapters::tokio_1::FromTokio;
use ferrolink_device::tls::{self, CertError, TlsBuffers, TlsConnectError, TrustConfig};
use ferrolink_device::trust::{
    BundleError, RamTrustStore, TrustStore as _, TrustUpdate, TrustUpdateError,
};
use ferrolink_device::{Clock as _, Config, Session};
use ferrolink_proto::trust;
use ferrolink_testkit::pki::{Ca, Leaf};
use ferrolink_testkit::{TestServer, TlsSetting};
use tokio::net::TcpStream;

use crate::support::{Bufs, Device, FUNCTIONS, TokioClock, host_time, rand_seed};

type Store = RamTrustStore<4096>;

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
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
        c.revocation_poll = Duration::from_millis(50);
    })
    .await;
    (server, dir)
}

/// Boots as firmware does: the stored bundle (if it verifies) over the
/// built-in roots, then TLS. `Ok` carries the session's outcome of
/// `update_trust`.
async fn boot_and_update(
    server: &TestServer,
    built_in: &Ca,
    store: &mut Store,
    signer: &[u8; 32],
) -> Result<
    Result<TrustUpdate, TrustUpdateError<ferrolink_device::trust::StoreFull>>,
    TlsConnectError,
> {
    let mut stored = vec![0u8; 4096];
    let n = store.load(&mut stored).await.unwrap();
    let held = trust::verify(&stored[..n], signer).ok();
    let roots = [built_in.der.as_slice()];
    let mut trust = TrustConfig::pinned(&roots);
    if let Some(b) = held {
        trust = trust.with_bundle(b);
    }
    let clock = TokioClock::new();
    let time = host_time(&clock);
    let mut tls_buffers = Box::new(TlsBuffers::<17_000, 2_048>::new());
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    let stream = tls::connect(
        FromTokio::new(tcp),
        "localhost",
        trust,
        &time,
        clock.now(),
        rand_core::OsRng,
        &mut tls_buffers,
    )
    .await?;
    let config = Config::new("localhost", server.port(), &server.server_key, FUNCTIONS);
    let mut buffers = Box::new(Bufs::new());
    let mut session = Session::connect(stream, clock, &config, &mut buffers, rand_seed())
        .await
        .unwrap();
    let mut scratch = vec![0u8; trust::MAX_LEN];
    Ok(session
        .update_trust(
            &mut Device::default(),
            store,
            signer,
            held.map(|b| b.sequence()),
            &mut scratch,
            Duration::from_secs(10),
        )
        .await)
}

/// What the store holds, by sequence.
async fn stored_sequence(store: &mut Store, signer: &[u8; 32]) -> Option<u64> {
    let mut buf = vec![0u8; 4096];
    let n = store.load(&mut buf).await.unwrap();
    trust::verify(&buf[..n], signer).ok().map(|b| b.sequence())
}

/// Writes a row as a compromised server would: `bytes` served as `sequence`.
fn serve_behind_the_servers_back(server: &TestServer, sequence: i64, bytes: &[u8]) {
    server
        .database()
        .execute(
            "INSERT INTO trust_bundles (sequence, signer, bundle, published_at) VALUES (?1, x'00', ?2, 0)",
            rusqlite::params![sequence, bytes],
        )
        .unwrap();
}

async fn until_offered(
    server: &TestServer,
    root: &Ca,
    store: &mut Store,
    signer: &[u8; 32],
) -> Result<TrustUpdate, TrustUpdateError<ferrolink_device::trust::StoreFull>> {
    // The server notices database changes within its poll interval.
    for _ in 0..100 {
        let r = boot_and_update(server, root, store, signer).await.unwrap();
        if r != Ok(TrustUpdate::Current) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server never offered the new bundle");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_bundle_over_the_link_revokes_the_servers_leaf_and_adds_a_root() {
    let operator = SigningKey::from_bytes(&[3; 32]);
    let signer = operator.verifying_key().to_bytes();
    let ca1 = Ca::root("built-in root");
    let ca2 = Ca::root("root added later");
    let leaf = ca1.leaf(&["localhost"]);
    let (server, _dir) = tls_server(&leaf).await;

    // The device holds bundle 1 (the built-in root), as published.
    let b1 = bundle(&operator, 1, &[&ca1], &[]);
    server.store().publish_trust_bundle(&b1).unwrap();
    let mut store = Store::new();
    store.save(&b1).await.unwrap();
    assert_eq!(
        boot_and_update(&server, &ca1, &mut store, &signer).await,
        Ok(Ok(TrustUpdate::Current))
    );

    // Bundle 2: a root added, the server's leaf revoked.
    let b2 = bundle(&operator, 2, &[&ca1, &ca2], &[sha256(&leaf.chain_der[0])]);
    server.store().publish_trust_bundle(&b2).unwrap();
    assert_eq!(
        until_offered(&server, &ca1, &mut store, &signer).await,
        Ok(TrustUpdate::Updated { sequence: 2 })
    );
    assert_eq!(stored_sequence(&mut store, &signer).await, Some(2));

    // Reconnecting under bundle 2: the leaf is refused before the key is sent.
    let keys_before = server.key_messages_received();
    let e = boot_and_update(&server, &ca1, &mut store, &signer)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            TlsConnectError::Certificate {
                reason: CertError::Revoked { position: 0 },
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(server.key_messages_received(), keys_before);

    // The added root works: a server with a leaf from it is accepted.
    let (other, _dir2) = tls_server(&ca2.leaf(&["localhost"])).await;
    assert_eq!(
        boot_and_update(&other, &ca1, &mut store, &signer).await,
        Ok(Ok(TrustUpdate::Current))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_forged_or_foreign_bundles_are_ignored() {
    let operator = SigningKey::from_bytes(&[4; 32]);
    let signer = operator.verifying_key().to_bytes();
    let ca = Ca::root("root");
    let (server, _dir) = tls_server(&ca.leaf(&["localhost"])).await;
    let b1 = bundle(&operator, 1, &[&ca], &[]);
    let b2 = bundle(&operator, 2, &[&ca], &[]);
    server.store().publish_trust_bundle(&b2).unwrap();
    let mut store = Store::new();
    store.save(&b2).await.unwrap();

    // A compromised server replays bundle 1 as if it were newer.
    serve_behind_the_servers_back(&server, 10, &b1);
    assert_eq!(
        until_offered(&server, &ca, &mut store, &signer).await,
        Err(TrustUpdateError::Refused(BundleError::NotNewer {
            offered: 1,
            current: 2
        }))
    );
    // A bundle whose signature was tampered with.
    let mut forged = bundle(&operator, 11, &[&ca], &[[9; 32]]);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    serve_behind_the_servers_back(&server, 11, &forged);
    assert_eq!(
        until_offered(&server, &ca, &mut store, &signer).await,
        Err(TrustUpdateError::Refused(BundleError::BadSignature))
    );
    // A validly signed bundle from someone else's key.
    let stranger = SigningKey::from_bytes(&[5; 32]);
    serve_behind_the_servers_back(&server, 12, &bundle(&stranger, 12, &[&ca], &[]));
    assert_eq!(
        until_offered(&server, &ca, &mut store, &signer).await,
        Err(TrustUpdateError::Refused(BundleError::WrongSigner))
    );
    // None of them was saved.
    assert_eq!(stored_sequence(&mut store, &signer).await, Some(2));
}
