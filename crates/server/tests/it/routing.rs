//! Routing rules: isolation between apps, device addressing, deadlines,
//! bounded calls in flight and slow consumers.

use std::time::Duration;

use ferrolink_proto::message::Privilege;
use ferrolink_testkit::{RawClient, TestServer};
use serde_json::json;

fn call(id: &str, command: &str, args: serde_json::Value) -> serde_json::Value {
    json!({"type":"CALL","id":id,"command":command,"args":args,"kwargs":{}})
}

#[tokio::test]
async fn apps_cannot_see_each_others_functions() {
    let server = TestServer::start().await;
    server.create_app("other");
    let other_key = server.create_key("other", Privilege::Server, None);
    let (mut provider, _) = RawClient::authenticated(&server.url(), &server.server_key).await;
    provider.register("secret_fn").await;
    let (mut outsider, reply) = RawClient::authenticated(&server.url(), &other_key).await;
    assert_eq!(reply["app-info"]["id"], "other");
    outsider.send_json(&call("x", "secret_fn", json!([]))).await;
    let r = outsider.recv_json().await;
    assert_eq!(r["error"]["type"], "anvil.server.NoServerFunctionError");
    assert!(
        provider
            .recv_within(Duration::from_millis(200))
            .await
            .is_none(),
        "provider never saw it"
    );
}

#[tokio::test]
async fn a_device_can_be_addressed_by_name_and_others_share_the_load() {
    let server = TestServer::start().await;
    let k1 = server.create_key("demo", Privilege::Server, Some("pico-1"));
    let k2 = server.create_key("demo", Privilege::Server, Some("pico-2"));
    let (mut d1, _) = RawClient::authenticated(&server.url(), &k1).await;
    let (mut d2, _) = RawClient::authenticated(&server.url(), &k2).await;
    for d in [&mut d1, &mut d2] {
        d.register("blink").await;
    }
    let (mut caller, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    for i in 0..3 {
        caller
            .send_json(&call(&format!("c{i}"), "blink@pico-2", json!([i])))
            .await;
        let forwarded = d2.recv_json().await;
        assert_eq!(
            forwarded["command"], "blink",
            "the device sees the plain name"
        );
        assert_eq!(forwarded["args"], json!([i]));
        d2.send_json(&json!({"id": forwarded["id"], "response": "from 2"}))
            .await;
        assert_eq!(caller.recv_json().await["response"], "from 2");
    }
    assert!(d1.recv_within(Duration::from_millis(100)).await.is_none());
    // Without a device name, calls rotate between providers.
    caller.send_json(&call("r1", "blink", json!([]))).await;
    caller.send_json(&call("r2", "blink", json!([]))).await;
    assert_eq!(d1.recv_json().await["command"], "blink");
    assert_eq!(d2.recv_json().await["command"], "blink");
    caller
        .send_json(&call("n", "blink@pico-9", json!([])))
        .await;
    let r = caller.recv_json().await;
    assert_eq!(
        r["error"]["message"],
        "No server function matching \"blink\" has been registered by device \"pico-9\""
    );
}

#[tokio::test]
async fn a_silent_provider_yields_timeout_error_at_the_deadline() {
    let server = TestServer::start_with(|c| c.call_timeout = Duration::from_millis(300)).await;
    let (mut provider, _) = RawClient::authenticated(&server.url(), &server.server_key).await;
    provider.register("mute").await;
    let (mut caller, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    caller.send_json(&call("t1", "mute", json!([]))).await;
    let forwarded = provider.recv_json().await;
    let r = caller.recv_json().await;
    assert_eq!(r["id"], "t1");
    assert_eq!(r["error"]["type"], "anvil.server.TimeoutError");
    // A late answer is dropped, not delivered twice.
    provider
        .send_json(&json!({"id": forwarded["id"], "response": 1}))
        .await;
    assert!(
        caller
            .recv_within(Duration::from_millis(200))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn calls_in_flight_per_connection_are_bounded() {
    let server = TestServer::start_with(|c| c.max_pending_calls = 4).await;
    let (mut provider, _) = RawClient::authenticated(&server.url(), &server.server_key).await;
    provider.register("mute").await;
    let (mut caller, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    for i in 0..6 {
        caller
            .send_json(&call(&format!("q{i}"), "mute", json!([])))
            .await;
    }
    for i in 4..6 {
        let r = caller.recv_json().await;
        assert_eq!(r["id"], format!("q{i}"));
        assert_eq!(r["error"]["type"], "anvil.server.QuotaExceededError");
    }
    // Answering frees slots.
    let first = provider.recv_json().await;
    provider
        .send_json(&json!({"id": first["id"], "response": "done"}))
        .await;
    assert_eq!(caller.recv_json().await["response"], "done");
    caller.send_json(&call("q9", "mute", json!([]))).await;
    let mut seen = 0;
    while let Some(ferrolink_testkit::raw::Received::Text(t)) =
        provider.recv_within(Duration::from_millis(300)).await
    {
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["type"], "CALL");
        seen += 1;
    }
    assert_eq!(seen, 4, "three still pending plus q9");
}

#[tokio::test]
async fn a_caller_that_never_reads_is_closed_and_others_carry_on() {
    let server = TestServer::start_with(|c| c.max_queued_bytes = 256 * 1024).await;
    let (mut provider, _) = RawClient::authenticated(&server.url(), &server.server_key).await;
    provider.register("blob").await;
    let (mut hog, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    let blob = "y".repeat(64 * 1024);
    // The hog asks for 400 x 64 KiB and never reads; the provider answers all.
    for i in 0..400 {
        if !hog
            .try_send_text(call(&format!("h{i}"), "blob", json!([])).to_string())
            .await
        {
            break;
        }
    }
    let mut answered = 0;
    while let Some(ferrolink_testkit::raw::Received::Text(t)) =
        provider.recv_within(Duration::from_millis(500)).await
    {
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        provider
            .send_text(format!(r#"{{"id":{},"response":"{blob}"}}"#, v["id"]))
            .await;
        answered += 1;
    }
    assert!(answered > 0);
    // A well-behaved caller is unaffected.
    let (mut good, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    good.send_json(&call("g", "anvil.private.echo", json!(["fine"])))
        .await;
    assert_eq!(good.recv_json().await["response"], "fine");
    // The hog was cut off: reading now ends in a close, not 400 replies.
    let mut replies = 0;
    while let ferrolink_testkit::raw::Received::Text(_) = hog.recv().await {
        replies += 1;
    }
    assert!(replies < 400, "hog got {replies} replies");
}

#[tokio::test]
async fn nested_calls_deeper_than_ten_are_refused() {
    let server = TestServer::start().await;
    let (mut p, _) = RawClient::authenticated(&server.url(), &server.server_key).await;
    p.register("recurse").await;
    let (mut caller, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    caller.send_json(&call("top", "recurse", json!([]))).await;
    // The provider keeps calling itself from inside each call.
    let mut depth = 0;
    loop {
        let v = p.recv_json().await;
        if v.get("type").is_some() {
            depth += 1;
            let id = v["call-stack-id"].as_str().unwrap().to_owned();
            p.send_json(&json!({"type":"CALL","id":format!("n{depth}"),"command":"recurse","args":[],"kwargs":{},"call-stack-id":id})).await;
        } else {
            assert_eq!(v["error"]["type"], "anvil.server.StackOverflow", "{v}");
            break;
        }
    }
    assert_eq!(depth, 10);
}
