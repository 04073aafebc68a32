//! Connecting, refusals, reconnecting and disconnecting.

use std::time::{Duration, Instant};

use ferrolink_client::{
    CallErrorKind, Client, ConnectErrorKind, HandlerError, ReconnectPolicy, Status,
};
use ferrolink_proto::message::Privilege;
use ferrolink_testkit::TestServer;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;

fn quick_reconnect() -> ReconnectPolicy {
    ReconnectPolicy {
        enabled: true,
        initial_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(400),
    }
}

#[tokio::test]
async fn wrong_key_and_bad_urls_are_reported_at_connect() {
    let server = TestServer::start().await;
    let e = Client::builder(server.url(), "flk_nonexistent_secret")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ConnectErrorKind::BadKey);
    assert!(e.to_string().contains("Incorrect uplink key"), "{e}");
    let e = Client::builder("http://x", "k")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ConnectErrorKind::InvalidUrl);
    let e = Client::builder("ws://127.0.0.1:9/_/uplink", "k")
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ConnectErrorKind::Transport);
    // Registering with a client key is refused by the server, and said so.
    let e = Client::builder(server.url(), &server.client_key)
        .register("f", |(): ()| async { Ok::<_, HandlerError>(1) })
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ConnectErrorKind::Refused);
    assert!(
        e.to_string().contains("unprivileged (client) uplink"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnects_after_a_server_restart_and_never_loses_a_call() {
    let mut server = TestServer::start().await;
    let provider = Client::builder(server.url(), &server.server_key)
        .reconnect(quick_reconnect())
        .register("slow_square", |(x, ms): (i64, u64)| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, HandlerError>(x * x)
        })
        .connect()
        .await
        .unwrap();
    let caller = Client::builder(server.url(), &server.client_key)
        .reconnect(quick_reconnect())
        .connect()
        .await
        .unwrap();
    assert_eq!(caller.call::<i64>("slow_square", (3, 0)).await.unwrap(), 9);

    // A call in flight across the restart must end, one way or another.
    let in_flight = {
        let caller = caller.clone();
        tokio::spawn(async move { caller.call::<i64>("slow_square", (4, 2_000)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.restart().await;
    let restarted = Instant::now();
    let e = in_flight.await.unwrap().unwrap_err();
    assert!(
        matches!(
            e.kind(),
            CallErrorKind::ConnectionLost | CallErrorKind::ProviderDisconnected
        ),
        "{e}"
    );

    // While it is down or reconnecting, calls fail fast instead of hanging.
    let during = Instant::now();
    if let Err(e) = caller.call::<i64>("slow_square", (5, 0)).await {
        assert!(
            matches!(
                e.kind(),
                CallErrorKind::NotConnected
                    | CallErrorKind::NoSuchFunction
                    | CallErrorKind::ConnectionLost
            ),
            "{e}"
        );
        assert!(during.elapsed() < Duration::from_secs(2));
    }

    // Both come back and the provider re-registers; a call succeeds again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match caller.call::<i64>("slow_square", (6, 0)).await {
            Ok(v) => {
                assert_eq!(v, 36);
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "not back after 10 s: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(restarted.elapsed() < Duration::from_secs(10));
    assert_eq!(provider.status(), Status::Connected);
    provider.disconnect().await;
    caller.disconnect().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_key_stops_the_client_instead_of_retrying() {
    let server = TestServer::start().await;
    let key = server.create_key("demo", Privilege::Server, Some("pico-5"));
    let client = Client::builder(server.url(), &key)
        .reconnect(quick_reconnect())
        .connect()
        .await
        .unwrap();
    server.store().revoke("pico-5").unwrap();
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        client.wait_for(|s| matches!(s, Status::Failed { .. })),
    )
    .await
    .expect("the client gives up within seconds");
    let Status::Failed { kind, reason } = status else {
        unreachable!()
    };
    assert_eq!(kind, ConnectErrorKind::RevokedKey);
    assert!(reason.contains("revoked"), "{reason}");
    let e = client
        .call::<Value>("anvil.private.echo", (1,))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), CallErrorKind::NotConnected);
    assert!(e.to_string().contains("revoked"), "{e}");
    // It stays down: no reconnect loop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.uplink_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_server_is_detected_by_the_heartbeat() {
    // A "server" that accepts the key and then never answers anything.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/_/uplink", listener.local_addr().unwrap());
    let black_hole = tokio::spawn(async move {
        let mut kept = Vec::new();
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let _ = ws.next().await;
            let ok = r#"{"auth":"OK","priv":"client","app-info":{"id":"x","branch":null,"environment":{"description":"x","tags":[]}}}"#;
            ws.send(tokio_tungstenite::tungstenite::Message::text(ok))
                .await
                .unwrap();
            kept.push(ws);
        }
    });
    let client = Client::builder(url, "k")
        .heartbeat(Duration::from_millis(200), Duration::from_millis(300))
        .reconnect(quick_reconnect())
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    let status = tokio::time::timeout(
        Duration::from_secs(5),
        client.wait_for(|s| matches!(s, Status::Reconnecting { .. })),
    )
    .await
    .expect("a dead server is noticed without TCP's help");
    assert!(matches!(status, Status::Reconnecting { .. }));
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    black_hole.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn disconnect_fails_calls_in_flight_and_closes() {
    let server = TestServer::start().await;
    let provider = Client::builder(server.url(), &server.server_key)
        .register("never", |(): ()| async {
            std::future::pending::<()>().await;
            Ok::<_, HandlerError>(())
        })
        .connect()
        .await
        .unwrap();
    let caller = Client::builder(server.url(), &server.client_key)
        .connect()
        .await
        .unwrap();
    let pending = {
        let caller = caller.clone();
        tokio::spawn(async move { caller.call::<Value>("never", ()).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    caller.disconnect().await;
    let e = pending.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), CallErrorKind::ConnectionLost, "{e}");
    assert_eq!(caller.status(), Status::Closed);
    let e = caller.call::<Value>("never", ()).await.unwrap_err();
    assert_eq!(e.kind(), CallErrorKind::NotConnected);
    // The provider's pending call was answered by the server, not forgotten.
    drop(provider);
}

#[tokio::test(flavor = "multi_thread")]
async fn many_calls_in_flight_over_one_connection_and_device_addressing() {
    let server = TestServer::start().await;
    let mut devices = Vec::new();
    for name in ["pico-a", "pico-b"] {
        let key = server.create_key("demo", Privilege::Server, Some(name));
        let tag = name.to_owned();
        devices.push(
            Client::builder(server.url(), &key)
                .register("whoami", move |(): ()| {
                    let tag = tag.clone();
                    async move { Ok::<_, HandlerError>(tag) }
                })
                .register("double", |(x,): (u64,)| async move {
                    Ok::<_, HandlerError>(x * 2)
                })
                .connect()
                .await
                .unwrap(),
        );
    }
    let caller = Client::builder(server.url(), &server.client_key)
        .connect()
        .await
        .unwrap();
    let calls = (0..500u64).map(|i| {
        let caller = caller.clone();
        async move { caller.call::<u64>("double", (i,)).await.map(|v| (i, v)) }
    });
    let results = futures_util::future::join_all(calls).await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok((i, v)) if *v == i * 2))
    );
    for name in ["pico-a", "pico-b"] {
        let who: String = caller.call_device(name, "whoami", ()).await.unwrap();
        assert_eq!(who, name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_function_answers_with_an_error() {
    let server = TestServer::start().await;
    let _provider = Client::builder(server.url(), &server.server_key)
        .register("boom", |(): ()| async {
            if true {
                panic!("on purpose");
            }
            Ok::<u8, HandlerError>(0)
        })
        .connect()
        .await
        .unwrap();
    let caller = Client::builder(server.url(), &server.client_key)
        .connect()
        .await
        .unwrap();
    let e = caller.call::<Value>("boom", ()).await.unwrap_err();
    assert_eq!(e.kind(), CallErrorKind::Remote);
    assert!(e.to_string().contains("panicked"), "{e}");
}
