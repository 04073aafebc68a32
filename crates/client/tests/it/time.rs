//! Trusted time over SNTP, with local time servers on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrolink_client::time::{SntpClock, SntpQuery, TrustedTime};
use ferrolink_client::tls::{TimeSource as _, TlsConfig};
use ferrolink_client::{Client, ConnectErrorKind};
use ferrolink_testkit::TestServer;
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
    let clock = SntpClock::query(&query(servers)).await.unwrap();
    let now = clock.now().unwrap();
    assert!(now.abs_diff(unix_ms() / 1000) <= 2, "{now}");
}

#[tokio::test]
async fn disagreeing_servers_are_not_trusted() {
    let servers = vec![
        time_server(Some(0)).await,
        time_server(Some(-3_600_000)).await,
    ];
    let e = SntpClock::query(&query(servers)).await.unwrap_err();
    assert!(e.to_string().contains("disagree by"), "{e}");
}

#[tokio::test]
async fn one_answer_is_not_enough() {
    let servers = vec![time_server(Some(0)).await, time_server(None).await];
    let e = SntpClock::query(&query(servers)).await.unwrap_err();
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
    assert!(e.to_string().contains("no trusted time yet"), "{e}");
    assert_eq!(server.key_messages_received(), 0);
    // Once agreeing servers set the time, the same settings connect.
    let servers = vec![time_server(Some(0)).await, time_server(Some(100)).await];
    trusted.set(SntpClock::query(&query(servers)).await.unwrap());
    Client::builder(server.url(), &server.client_key)
        .tls(tls)
        .connect()
        .await
        .unwrap();
}
