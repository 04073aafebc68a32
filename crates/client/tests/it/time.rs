//! Trusted time over Roughtime and SNTP, with local time servers on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrolink_client::time::{
    NetworkClock, RoughtimeQuery, RoughtimeServer, SntpQuery, TrustedTime,
};
use ferrolink_client::tls::{TimeSource as _, TlsConfig};
use ferrolink_client::{Client, ConnectErrorKind};
use ferrolink_testkit::TestServer;
use ferrolink_testkit::roughtime::{Fault, RoughtimeServer as RoughtimeServerUnderTest};
use ferrolink_testkit::sntp::time_server;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn query(servers: Vec<SocketAddr>) -> SntpQuery {
    let mut q = SntpQuery::new(servers);
    q.timeout = Duration::from_millis(500);
    q
}

#[tokio::test]
async fn agreeing_servers_give_a_trusted_time() {
    let servers = vec![
        time_server(Some(0)).await,
        time_server(Some(300)).await,
        time_server(Some(-200)).await,
    ];
    let clock = NetworkClock::sntp(&query(servers)).await.unwrap();
    let now = clock.now().unwrap();
    assert!(now.abs_diff(unix_ms() / 1000) <= 2, "{now}");
}

#[tokio::test]
async fn disagreeing_servers_are_not_trusted() {
    let servers = vec![
        time_server(Some(0)).await,
        time_server(Some(-3_600_000)).await,
    ];
    let e = NetworkClock::sntp(&query(servers)).await.unwrap_err();
    assert!(e.to_string().contains("disagree by"), "{e}");
}

#[tokio::test]
async fn one_answer_is_not_enough() {
    let servers = vec![time_server(Some(0)).await, time_server(None).await];
    let e = NetworkClock::sntp(&query(servers)).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("1 time server(s) answered; 2 must agree"),
        "{e}"
    );
}

#[tokio::test]
async fn no_connection_before_the_time_is_trusted() {
    let server = TestServer::start_with(|c| c.tls = Some(ferrolink_testkit::TlsSetting::Dev)).await;
    let trusted = Arc::new(TrustedTime::default());
    let tls = TlsConfig::with_root_pem(&server.dev_ca_pem())
        .unwrap()
        .time_source(trusted.clone());
    let e = Client::builder(server.url(), &server.client_key)
        .tls(tls.clone())
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ConnectErrorKind::Tls);
    assert!(
        e.to_string().contains("not been obtained from the network"),
        "{e}"
    );
    assert_eq!(server.key_messages_received(), 0);
    // Once agreeing servers set the time, the same settings connect.
    let servers = vec![time_server(Some(0)).await, time_server(Some(100)).await];
    trusted.set(NetworkClock::sntp(&query(servers)).await.unwrap());
    Client::builder(server.url(), &server.client_key)
        .tls(tls)
        .connect()
        .await
        .unwrap();
}

fn roughtime_query(servers: &[&RoughtimeServerUnderTest]) -> RoughtimeQuery {
    let mut q = RoughtimeQuery::new(
        servers
            .iter()
            .map(|s| RoughtimeServer {
                addr: s.addr(),
                public_key: s.public_key(),
            })
            .collect(),
    );
    q.timeout = Duration::from_millis(1_500);
    q
}

#[tokio::test]
async fn a_signed_roughtime_answer_gives_a_trusted_time() {
    let server = RoughtimeServerUnderTest::start(Fault::None).await;
    let clock = NetworkClock::roughtime(&roughtime_query(&[&server]))
        .await
        .unwrap();
    let now = clock.now().unwrap();
    assert!(now.abs_diff(unix_ms() / 1000) <= 5, "{now}");
}

#[tokio::test]
async fn forged_or_misplaced_roughtime_answers_are_refused() {
    for (fault, says) in [
        (
            Fault::BadDelegationSignature,
            "not signed by the server's pinned key",
        ),
        (
            Fault::BadResponseSignature,
            "not signed by the server's delegated key",
        ),
        (Fault::WrongNonce, "nonce mismatch"),
        (
            Fault::MidpointOutsideDelegation,
            "outside the delegation's validity",
        ),
        (Fault::WrongRoot, "does not cover our request"),
    ] {
        let server = RoughtimeServerUnderTest::start(fault).await;
        let e = NetworkClock::roughtime(&roughtime_query(&[&server]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains(says), "{fault:?}: {e}");
    }
    // An honest answer checked against another server's key.
    let server = RoughtimeServerUnderTest::start(Fault::None).await;
    let mut q = roughtime_query(&[&server]);
    q.servers[0].public_key = RoughtimeServerUnderTest::start(Fault::None)
        .await
        .public_key();
    let e = NetworkClock::roughtime(&q).await.unwrap_err();
    assert!(e.to_string().contains("pinned key"), "{e}");
}

#[tokio::test]
async fn a_roughtime_server_lying_with_its_own_key_is_outvoted_or_refused() {
    let honest = RoughtimeServerUnderTest::start(Fault::None).await;
    let honest2 = RoughtimeServerUnderTest::start(Fault::None).await;
    let liar = RoughtimeServerUnderTest::start(Fault::Offset(3_600)).await;
    // Two of three agree: their time wins.
    let clock = NetworkClock::roughtime(&roughtime_query(&[&honest, &liar, &honest2]))
        .await
        .unwrap();
    assert!(clock.now().unwrap().abs_diff(unix_ms() / 1000) <= 5);
    // One honest and one liar: no two overlap.
    let e = NetworkClock::roughtime(&roughtime_query(&[&honest, &liar]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("disagree"), "{e}");
}

#[tokio::test]
async fn no_connection_until_roughtime_is_trusted() {
    let server = TestServer::start_with(|c| c.tls = Some(ferrolink_testkit::TlsSetting::Dev)).await;
    let trusted = Arc::new(TrustedTime::default());
    let tls = TlsConfig::with_root_pem(&server.dev_ca_pem())
        .unwrap()
        .time_source(trusted.clone());
    let refused = Client::builder(server.url(), &server.client_key)
        .tls(tls.clone())
        .connect()
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("not been obtained"),
        "{refused}"
    );
    // A forged answer leaves it unset.
    let forger = RoughtimeServerUnderTest::start(Fault::BadResponseSignature).await;
    assert!(
        NetworkClock::roughtime(&roughtime_query(&[&forger]))
            .await
            .is_err()
    );
    assert_eq!(server.key_messages_received(), 0);
    let honest = RoughtimeServerUnderTest::start(Fault::None).await;
    trusted.set(
        NetworkClock::roughtime(&roughtime_query(&[&honest]))
            .await
            .unwrap(),
    );
    Client::builder(server.url(), &server.client_key)
        .tls(tls)
        .connect()
        .await
        .unwrap();
}
