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
async fn a_burst_of_wrong_keys_is_throttled_per_address() {
    // A long first window keeps the test independent of machine speed.
    let server =
        TestServer::start_with(|c| c.auth_throttle.first_window = Duration::from_secs(30)).await;
    let attacker: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let mut replies = Vec::new();
    for i in 0..8 {
        let mut c = RawClient::connect_from(&server.url(), attacker).await;
        c.send_json(&json!({"key": format!("flk_guessguess_{i}"), "v": 8}))
            .await;
        replies.push(c.recv_json().await["error"].as_str().unwrap().to_owned());
    }
    assert!(
        replies[..3].iter().all(|r| r == "Incorrect uplink key"),
        "{replies:?}"
    );
    assert!(
        replies[4..]
            .iter()
            .all(|r| r.contains("too many wrong keys from 127.0.0.1")),
        "{replies:?}"
    );
    // While throttled, even the right key from that address is not checked.
    let mut c = RawClient::connect_from(&server.url(), attacker).await;
    c.send_json(&json!({"key": server.server_key, "v": 8}))
        .await;
    assert!(
        c.recv_json().await["error"]
            .as_str()
            .unwrap()
            .contains("too many wrong keys")
    );
    // Another address is not slowed down at all.
    let started = Instant::now();
    let mut good = RawClient::connect_from(&server.url(), "127.0.0.2".parse().unwrap()).await;
    good.send_json(&json!({"key": server.server_key, "v": 8}))
        .await;
    assert_eq!(good.recv_json().await["auth"], "OK");
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
