//! Keys: wrong keys, client privilege, revocation while connected.

use std::time::{Duration, Instant};

use ferrolink_proto::message::Privilege;
use ferrolink_testkit::raw::Received;
use ferrolink_testkit::{RawClient, TestServer};
use serde_json::json;

#[tokio::test]
async fn wrong_key_gets_incorrect_uplink_key_then_close() {
    let server = TestServer::start().await;
    for key in [
        json!("nonsense"),
        json!(format!("{}A", server.server_key)),
        json!(42),
    ] {
        let mut c = RawClient::connect(&server.url()).await;
        c.send_json(&json!({"key": key, "v": 8})).await;
        assert_eq!(
            c.recv_json().await,
            json!({"error": "Incorrect uplink key"})
        );
        let (_, close) = c.recv_until_closed().await;
        assert!(matches!(close, Received::Close(..) | Received::Eof));
    }
}

#[tokio::test]
async fn client_keys_cannot_register() {
    let server = TestServer::start().await;
    let (mut c, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    c.send_text(r#"{"type":"REGISTER","name":"evil"}"#).await;
    let (fatal, _) = c.recv_until_closed().await;
    assert_eq!(
        fatal.unwrap(),
        "Cannot register @anvil.server.callable functions from an unprivileged (client) uplink."
    );
}

#[tokio::test]
async fn client_keys_cannot_call_scoped_names() {
    let server = TestServer::start().await;
    let (mut c, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    c.send_json(&json!({"type":"CALL","id":"1","command":"task:nightly","args":[]}))
        .await;
    assert_eq!(
        c.recv_json().await["error"]["type"],
        "anvil.server.PermissionDenied"
    );
}

#[tokio::test]
async fn revoking_a_key_refuses_new_connections_and_closes_live_ones_within_5_s() {
    let server = TestServer::start().await;
    let key = server.create_key("demo", Privilege::Server, Some("pico-7"));
    let (mut live, _) = RawClient::authenticated(&server.url(), &key).await;
    // Revoke from "another process": a separate database connection, as the CLI.
    let revoked_at = Instant::now();
    server.store().revoke("pico-7").unwrap();
    let (fatal, _) = live.recv_until_closed().await;
    assert!(
        revoked_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        revoked_at.elapsed()
    );
    let fatal = fatal.expect("told why");
    assert!(fatal.contains("was revoked on"), "{fatal}");
    let mut again = RawClient::connect(&server.url()).await;
    again.send_json(&json!({"key": key, "v": 8})).await;
    let reply = again.recv_json().await;
    assert!(
        reply["error"].as_str().unwrap().contains("was revoked"),
        "{reply}"
    );
}

#[tokio::test]
async fn keys_created_while_running_work_at_once() {
    let server = TestServer::start().await;
    let key = server.create_key("demo", Privilege::Client, None);
    let (_, reply) = RawClient::authenticated(&server.url(), &key).await;
    assert_eq!(reply["priv"], "client");
}

#[tokio::test]
async fn wrong_keys_are_answered_ever_more_slowly_but_a_correct_key_never_waits() {
    let server =
        TestServer::start_with(|c| c.auth_throttle.first_window = Duration::from_secs(1)).await;
    let attacker: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let mut took = Vec::new();
    for i in 0..5 {
        let mut c = RawClient::connect_from(&server.url(), attacker).await;
        let started = Instant::now();
        c.send_json(&json!({"key": format!("flk_guessguess_{i}"), "v": 8}))
            .await;
        assert_eq!(c.recv_json().await["error"], "Incorrect uplink key");
        took.push(started.elapsed());
    }
    // Three free failures, then 1 s, then 2 s before the refusal.
    assert!(
        took[..3].iter().all(|t| *t < Duration::from_millis(500)),
        "{took:?}"
    );
    assert!(took[3] >= Duration::from_millis(900), "{took:?}");
    assert!(took[4] >= Duration::from_millis(1900), "{took:?}");
    // The right key from that very address is checked and accepted at once.
    let started = Instant::now();
    let mut c = RawClient::connect_from(&server.url(), attacker).await;
    c.send_json(&json!({"key": server.server_key, "v": 8}))
        .await;
    assert_eq!(c.recv_json().await["auth"], "OK");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn plain_ws_off_loopback_needs_the_explicit_insecure_flag() {
    let dir = tempfile::tempdir().unwrap();
    let config = ferrolink::ServerConfig::new("0.0.0.0:0".parse().unwrap(), dir.path());
    let Err(e) = ferrolink::Server::start(config.clone()).await else {
        panic!("plain ws on 0.0.0.0 must be refused");
    };
    assert!(e.to_string().contains("--insecure-plain-ws"), "{e}");
    let mut allowed = config;
    allowed.insecure_plain_ws = true;
    let server = ferrolink::Server::start(allowed).await.unwrap();
    server.shutdown().await;
}
