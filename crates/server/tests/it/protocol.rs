//! Bad input from the network: every case gets a clear error reply or a
//! close with a reason, and the server carries on.

use std::time::Duration;

use ferrolink_testkit::raw::Received;
use ferrolink_testkit::{RawClient, TestServer};
use serde_json::json;

async fn echo_works(server: &TestServer) {
    let (mut c, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    c.send_json(
        &json!({"type":"CALL","id":"e1","command":"anvil.private.echo","args":["ok"],"kwargs":{}}),
    )
    .await;
    assert_eq!(c.recv_json().await["response"], "ok");
}

#[tokio::test]
async fn auth_reply_is_the_first_frame_and_has_app_info() {
    let server = TestServer::start().await;
    let (_, reply) = RawClient::authenticated(&server.url(), &server.server_key).await;
    assert_eq!(reply["priv"], "uplink");
    assert_eq!(reply["app-info"]["id"], "demo");
    assert!(reply["app-info"]["environment"].get("name").is_none());
    let (_, reply) = RawClient::authenticated(&server.url(), &server.client_key).await;
    assert_eq!(reply["priv"], "client");
}

#[tokio::test]
async fn non_json_first_message_closes_with_a_reason() {
    let server = TestServer::start().await;
    let mut c = RawClient::connect(&server.url()).await;
    c.send_text("hello?").await;
    let (fatal, close) = c.recv_until_closed().await;
    let fatal = fatal.expect("a fatal error message");
    assert!(fatal.contains("first message must be"), "{fatal}");
    assert!(
        matches!(close, Received::Close(1002, _) | Received::Eof),
        "{close:?}"
    );
    echo_works(&server).await;
}

#[tokio::test]
async fn missing_version_gets_the_outdated_library_error() {
    let server = TestServer::start().await;
    let mut c = RawClient::connect(&server.url()).await;
    c.send_json(&json!({"key": server.server_key})).await;
    let (fatal, _) = c.recv_until_closed().await;
    assert!(fatal.unwrap().contains("outdated version"));
}

#[tokio::test]
async fn binary_garbage_is_dropped_and_the_connection_lives() {
    let server = TestServer::start().await;
    let (mut c, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    c.send_binary(vec![0xff, 0x00, 0x13, 0x37]).await;
    c.send_json(&json!({"type":"CALL","id":"e1","command":"anvil.private.echo","args":[1]}))
        .await;
    assert_eq!(
        c.recv_json().await,
        json!({"id":"e1","response":1,"objects":[]})
    );
}

#[tokio::test]
async fn malformed_calls_get_error_replies_naming_the_field() {
    let server = TestServer::start().await;
    let (mut c, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    c.send_text(r#"{"type":"CALL","id":"m1","command":"f","args":"nope"}"#)
        .await;
    let r = c.recv_json().await;
    assert_eq!(r["id"], "m1");
    assert_eq!(r["error"]["type"], "anvil.server.SerializationError");
    assert_eq!(
        r["error"]["message"],
        "field \"args\" of CALL must be an array"
    );
    c.send_text(r#"{"type":"CALL","id":"m2"}"#).await;
    let r = c.recv_json().await;
    assert_eq!(
        r["error"]["message"],
        "CALL is missing the required field \"command\""
    );
    // Echo with the wrong arity answers like the official server.
    c.send_text(r#"{"type":"CALL","id":"m3","command":"anvil.private.echo","args":[1,2]}"#)
        .await;
    let r = c.recv_json().await;
    assert_eq!(r["error"]["type"], "TypeError");
}

#[tokio::test]
async fn deeply_nested_json_is_refused_by_id() {
    let server = TestServer::start().await;
    let (mut c, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    c.send_text(format!(
        r#"{{"type":"CALL","id":"d1","command":"f","args":{deep}}}"#
    ))
    .await;
    // The depth check runs before parsing, so there is no id to answer:
    // the connection is closed with the reason.
    let (fatal, _) = c.recv_until_closed().await;
    assert!(fatal.unwrap().contains("deeper than"));
    echo_works(&server).await;
}

#[tokio::test]
async fn unknown_message_types_close_with_a_reason() {
    let server = TestServer::start().await;
    let (mut c, _) = RawClient::authenticated(&server.url(), &server.server_key).await;
    c.send_text(r#"{"type":"SUBSCRIBE_ALL"}"#).await;
    let (fatal, _) = c.recv_until_closed().await;
    assert!(fatal.unwrap().contains("SUBSCRIBE_ALL"));
}

#[tokio::test]
async fn oversized_frames_close_with_1009_and_fail_pending_callers() {
    let server = TestServer::start_with(|c| c.max_frame_bytes = 64 * 1024).await;
    let (mut provider, _) = RawClient::authenticated(&server.url(), &server.server_key).await;
    provider.register("slow").await;
    let (mut caller, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    caller
        .send_text(r#"{"type":"CALL","id":"c1","command":"slow","args":[]}"#)
        .await;
    let call = provider.recv_json().await;
    assert_eq!(call["command"], "slow");
    provider
        .send_text(format!(
            r#"{{"id":{},"response":"{}"}}"#,
            call["id"],
            "x".repeat(100_000)
        ))
        .await;
    // The server stops reading at the oversized header and closes; the rest of
    // the frame is never read, so the peer's TCP stack may see a reset before
    // the close frame. When the words arrive they must be the right ones.
    let (fatal, close) = provider.recv_until_closed().await;
    if let Some(fatal) = fatal {
        assert!(fatal.contains("65536-byte limit"), "{fatal}");
    }
    assert!(
        matches!(close, Received::Close(1009, _) | Received::Eof),
        "{close:?}"
    );
    let r = caller.recv_json().await;
    assert_eq!(r["error"]["type"], "anvil.server.UplinkDisconnectedError");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Data payload too big")
    );
}

#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = TestServer::start().await;
    // Hand-made masked text frame carrying invalid UTF-8.
    let mut tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let req = "GET /_/uplink HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101 Switching Protocols"));
    let key = format!(r#"{{"key":"{}","v":8}}"#, server.client_key);
    assert!(key.len() < 126);
    let mut frame = vec![0x81, 0x80 | key.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(key.as_bytes());
    tcp.write_all(&frame).await.unwrap();
    tcp.write_all(&[0x81, 0x82, 0, 0, 0, 0, 0xc3, 0x28])
        .await
        .unwrap();
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("not valid UTF-8"), "{text}");
}

#[tokio::test]
async fn register_floods_are_cut_off() {
    let server = TestServer::start_with(|c| c.session.max_registrations = 50).await;
    let (mut c, _) = RawClient::authenticated(&server.url(), &server.server_key).await;
    for i in 0..60 {
        if !c
            .try_send_text(format!(r#"{{"type":"REGISTER","name":"f{i}"}}"#))
            .await
        {
            break;
        }
    }
    let (fatal, _) = c.recv_until_closed().await;
    assert!(fatal.unwrap().contains("more than 50 functions"));
    echo_works(&server).await;
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_auth_timeout() {
    let server =
        TestServer::start_with(|c| c.session.auth_timeout = Duration::from_millis(300)).await;
    let mut c = RawClient::connect(&server.url()).await;
    let (fatal, _) = c.recv_until_closed().await;
    assert!(fatal.unwrap().contains("no key message"));
}

#[tokio::test]
async fn idle_uplinks_are_closed() {
    let server =
        TestServer::start_with(|c| c.session.idle_timeout = Duration::from_millis(400)).await;
    let (mut c, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    let (fatal, _) = c.recv_until_closed().await;
    assert!(fatal.unwrap().contains("nothing received"));
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_is_dropped() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = TestServer::start_with(|c| c.header_timeout = Duration::from_millis(300)).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    tcp.write_all(b"GET /_/uplink HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the half-sent request was not dropped");
}
