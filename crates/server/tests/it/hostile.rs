//! The server against peers that misbehave on purpose: providers that stop
//! reading, frames too large or too long, floods of malformed frames, wrong
//! keys and passwords by the thousand, and more connections than allowed.
//! The figures at full size (10,000 calls, 1,000 logins) are measured by
//! `ferrolink-bench hostile` (docs/benchmarks.md); these tests keep each
//! behaviour true at a size a test run affords.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrolink_testkit::http::request_from;
use ferrolink_testkit::raw::Received;
use ferrolink_testkit::{RawClient, TestServer};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn a_provider_that_stops_reading_leaves_no_caller_past_its_deadline() {
    const CALLS: usize = 2000;
    let server = TestServer::start_with(|c| {
        c.call_timeout = Duration::from_secs(2);
        c.write_stall_timeout = Duration::from_secs(5);
        c.max_pending_calls = 4096;
    })
    .await;
    // The provider registers, then never reads again (a device that lost
    // its Wi-Fi without closing): its socket fills and stays full.
    let (mut provider, _) = RawClient::authenticated(&server.url(), &server.server_key).await;
    provider.register("stuck").await;
    let (mut caller, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    let arg = "x".repeat(4096);
    let mut sent = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        caller
            .send_json(&json!({"type": "CALL", "id": format!("c{i}"), "command": "stuck", "args": [arg], "kwargs": {}}))
            .await;
        sent.push(Instant::now());
    }
    // Every call is answered at its deadline, wherever it waits: in the
    // provider's socket, in its queue or in its driver's inbox.
    let mut answered = 0;
    while answered < CALLS {
        let reply = tokio::time::timeout(Duration::from_secs(5), caller.recv_json())
            .await
            .expect("every call is answered");
        assert_eq!(
            reply["error"]["type"], "anvil.server.TimeoutError",
            "{reply}"
        );
        // Each caller hears at its own deadline (2 s), within a second.
        let i: usize = reply["id"].as_str().unwrap()[1..].parse().unwrap();
        let took = sent[i].elapsed();
        assert!(
            took < Duration::from_secs(3),
            "call {i} was answered {took:?} after it was sent (deadline 2 s)"
        );
        answered += 1;
    }
    // The provider, whose socket takes nothing, is closed as a slow
    // consumer once its writes have stalled for the bound.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.uplink_count() > 1 {
        assert!(
            Instant::now() < deadline,
            "the stalled provider was not closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(provider);
    // The caller carries on.
    let (mut echo, _) = RawClient::authenticated(&server.url(), &server.server_key).await;
    echo.register("alive").await;
    caller
        .send_json(
            &json!({"type": "CALL", "id": "after", "command": "alive", "args": [], "kwargs": {}}),
        )
        .await;
    let call = echo.recv_json().await;
    echo.send_json(&json!({"id": call["id"], "response": 1}))
        .await;
    assert_eq!(caller.recv_json().await["response"], 1);
}

/// Opens a websocket by hand on a plain TCP socket (to send frames no
/// client library would).
async fn raw_websocket(server: &TestServer) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let request = format!(
        "GET /_/uplink HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

#[tokio::test]
async fn before_authentication_only_a_small_frame_is_accepted() {
    let server = TestServer::start().await;
    let mut tcp = raw_websocket(&server).await;
    // A masked text frame that declares 4 MiB (the authenticated limit)
    // and sends 16 bytes of it.
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(4u64 * 1024 * 1024).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend_from_slice(&[b'a'; 16]);
    tcp.write_all(&frame).await.unwrap();
    // The server answers at once with a close frame (1009, too big) and
    // does not wait for the megabytes.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server waited for the declared payload");
    let close = answer
        .windows(4)
        .position(|w| w[0] == 0x88)
        .map(|i| &answer[i..])
        .expect("a close frame");
    let code = u16::from_be_bytes([close[2], close[3]]);
    assert_eq!(code, 1009, "{:?}", String::from_utf8_lossy(close));
    assert!(
        String::from_utf8_lossy(close).contains("key message"),
        "the reason says what may be sent: {:?}",
        String::from_utf8_lossy(close)
    );
}

#[tokio::test]
async fn ids_and_names_past_their_caps_are_refused_with_a_clear_error() {
    let server = TestServer::start().await;
    let (mut c, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    // A long function name, with a usable id: an error reply by id.
    let long_name = "f".repeat(2000);
    c.send_json(
        &json!({"type": "CALL", "id": "n1", "command": long_name, "args": [], "kwargs": {}}),
    )
    .await;
    let reply = c.recv_json().await;
    assert_eq!(reply["id"], "n1");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"command\"") && message.contains("longer than 1024 bytes"),
        "{message}"
    );
    // A long id cannot be answered by id: the connection is closed with
    // the reason.
    let long_id = "i".repeat(1024 * 1024);
    c.send_json(&json!({"type": "CALL", "id": long_id, "command": "f", "args": [], "kwargs": {}}))
        .await;
    let mut reason = String::new();
    loop {
        match c.recv().await {
            Received::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if let Some(e) = v["error"].as_str() {
                    reason = e.to_owned();
                }
            }
            Received::Close(_, r) => {
                if reason.is_empty() {
                    reason = r;
                }
                break;
            }
            Received::Eof => break,
        }
    }
    assert!(
        reason.contains("\"id\"") && reason.contains("128"),
        "{reason}"
    );
}

/// Collects what the server logs on this test's thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_flood_of_malformed_frames_writes_a_bounded_number_of_log_lines() {
    const FRAMES: usize = 10_000;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    // A current-thread runtime: the server's tasks log on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = TestServer::start().await;
    let (mut c2, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    for i in 0..FRAMES {
        c2.send_text(format!(
            r#"{{"type":"CALL","id":"m{i}","command":5,"args":[],"kwargs":{{}}}}"#
        ))
        .await;
    }
    for _ in 0..FRAMES {
        let reply = c2.recv_json().await;
        assert_eq!(
            reply["error"]["type"], "anvil.server.SerializationError",
            "{reply}"
        );
    }
    // Still usable afterwards.
    c2.send_json(&json!({"type": "CALL", "id": "ok", "command": "anvil.private.echo", "args": [1], "kwargs": {}}))
        .await;
    assert_eq!(c2.recv_json().await["response"], json!(1));
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let refusals = log
        .lines()
        .filter(|l| l.contains("refused a message"))
        .count();
    assert!(
        (1..=2).contains(&refusals),
        "{refusals} log lines for {FRAMES} malformed frames:\n{log}"
    );
}

#[tokio::test]
async fn wrong_keys_from_an_address_do_not_lock_out_its_devices() {
    let server = TestServer::start().await;
    let nat = ip("127.0.0.5");
    let url = server.url();
    // A neighbour behind the same address guesses about 100 keys a second.
    let guessing = {
        let url = url.clone();
        tokio::spawn(async move {
            let mut guesses = Vec::new();
            for i in 0..300 {
                let url = url.clone();
                guesses.push(tokio::spawn(async move {
                    let mut c = RawClient::connect_from(&url, nat).await;
                    c.send_json(&json!({"key": format!("flk_guessguess_{i}"), "v": 8}))
                        .await;
                    // Later guesses are answered only after a delay (up to 10 s).
                    match c.recv_within(Duration::from_secs(15)).await {
                        Some(Received::Text(t)) => {
                            serde_json::from_str::<serde_json::Value>(&t).unwrap()
                        }
                        other => panic!("a guess got {other:?}"),
                    }
                }));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            guesses
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Meanwhile 100 devices behind that address (re)connect with their
    // correct key: every one is accepted, promptly.
    let mut devices = Vec::new();
    for _ in 0..100 {
        let (url, key) = (url.clone(), server.server_key.clone());
        devices.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut c = RawClient::connect_from(&url, nat).await;
            c.send_json(&json!({"key": key, "v": 8})).await;
            let reply = c.recv_json().await;
            (reply, started.elapsed())
        }));
    }
    for d in devices {
        let (reply, took) = d.await.unwrap();
        assert_eq!(reply["auth"], "OK", "{reply}");
        assert!(
            took < Duration::from_secs(2),
            "a correct key waited {took:?}"
        );
    }
    // The guesses were all refused, the later ones slowly.
    for g in guessing.await.unwrap() {
        let reply = g.await.unwrap();
        assert_eq!(reply["error"], "Incorrect uplink key", "{reply}");
    }
}

#[tokio::test]
async fn a_thousand_concurrent_wrong_passwords_neither_pile_up_nor_delay_a_correct_login() {
    // A long first window: the burst is spread over time by the spawning
    // below, and the count of checked guesses should not depend on how.
    let server =
        TestServer::start_with(|c| c.auth_throttle.first_window = Duration::from_secs(60)).await;
    let addr = server.addr();
    let origin = server.origin();
    // Two users of the demo app: Ada is attacked, Bob logs in meanwhile.
    for (who, from) in [("ada", "127.0.0.8"), ("bob", "127.0.0.9")] {
        let signup = request_from(
            Some(ip(from)),
            addr,
            "POST",
            "/_/auth/signup?app=demo",
            &[("origin", &origin), ("content-type", "application/json")],
            Some(&format!(
                r#"{{"email":"{who}@example.com","password":"correct horse battery"}}"#
            )),
        )
        .await;
        assert_eq!(signup.status, 200, "{}", signup.body);
    }
    let rss_before = rss_kib();
    let attacker = ip("127.0.0.6");
    let mut guesses = Vec::new();
    for i in 0..1000 {
        let origin = origin.clone();
        guesses.push(tokio::spawn(async move {
            request_from(
                Some(attacker),
                addr,
                "POST",
                "/_/auth/login?app=demo",
                &[("origin", &origin), ("content-type", "application/json")],
                Some(&format!(
                    r#"{{"email":"ada@example.com","password":"guess number {i}"}}"#
                )),
            )
            .await
            .status
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let login = request_from(
        Some(ip("127.0.0.7")),
        addr,
        "POST",
        "/_/auth/login?app=demo",
        &[("origin", &origin), ("content-type", "application/json")],
        Some(r#"{"email":"bob@example.com","password":"correct horse battery"}"#),
    )
    .await;
    let took = started.elapsed();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for g in guesses {
        *statuses.entry(g.await.unwrap()).or_default() += 1;
    }
    let rss_after = rss_kib();
    // Only the account's free attempts (and the one that opened its
    // window) were hashed; the rest were refused before any hash.
    assert_eq!(statuses.values().sum::<usize>(), 1000);
    assert!(
        statuses.get(&401).copied().unwrap_or(0) <= 4,
        "only the account's free attempts were checked: {statuses:?}"
    );
    assert!(
        statuses.get(&429).copied().unwrap_or(0) >= 990,
        "{statuses:?}"
    );
    assert_eq!(login.status, 200, "{}", login.body);
    // Ada's account waits out its window, whoever asks; the answer says so.
    let ada = request_from(
        Some(ip("127.0.0.8")),
        addr,
        "POST",
        "/_/auth/login?app=demo",
        &[("origin", &origin), ("content-type", "application/json")],
        Some(r#"{"email":"ada@example.com","password":"correct horse battery"}"#),
    )
    .await;
    assert_eq!(ada.status, 429, "{}", ada.body);
    assert!(ada.body.contains("try again in"), "{}", ada.body);
    assert!(
        took < Duration::from_secs(3),
        "the login from elsewhere took {took:?}"
    );
    let grown = rss_after.saturating_sub(rss_before);
    assert!(grown < 200 * 1024, "RSS grew by {grown} KiB");
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn connection_limits_hold_per_address_per_key_and_in_all() {
    let server = TestServer::start_with(|c| {
        c.limits.per_address = 3;
        c.limits.per_key = 2;
        c.limits.total = 8;
    })
    .await;
    let url = server.url();
    let crowded = ip("127.0.0.10");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(RawClient::try_connect_from(&url, crowded).await.unwrap());
    }
    let Err((status, body)) = RawClient::try_connect_from(&url, crowded).await else {
        panic!("a fourth connection from one address was let in");
    };
    assert_eq!(status, 503);
    assert!(
        body.contains("too many connections from your address (the limit is 3)"),
        "{body}"
    );
    // Another address is not affected; closing one frees a place.
    let _other = RawClient::try_connect_from(&url, ip("127.0.0.11"))
        .await
        .unwrap();
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    held.push(RawClient::try_connect_from(&url, crowded).await.unwrap());

    // Per key: the third uplink with one key is refused after its key
    // checked out, with the reason instead of the auth reply.
    let (_k1, _) = RawClient::authenticated(&url, &server.server_key).await;
    let (_k2, _) = RawClient::authenticated(&url, &server.server_key).await;
    let mut k3 = RawClient::connect(&url).await;
    k3.send_json(&json!({"key": server.server_key, "v": 8}))
        .await;
    let reply = k3.recv_json().await;
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("already has 2 connections"),
        "{reply}"
    );
    drop(k3);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // In all: 3 + 1 + 2 open; two more fit, the next is refused.
    let _a = RawClient::try_connect_from(&url, ip("127.0.0.12"))
        .await
        .unwrap();
    let _b = RawClient::try_connect_from(&url, ip("127.0.0.13"))
        .await
        .unwrap();
    let Err((status, body)) = RawClient::try_connect_from(&url, ip("127.0.0.14")).await else {
        panic!("the total limit was not enforced");
    };
    assert_eq!(status, 503);
    assert!(body.contains("limit of 8 connections"), "{body}");
}

#[tokio::test]
async fn browser_sessions_are_limited_per_browser() {
    let server = TestServer::start_with(|c| c.limits.per_browser = 2).await;
    let origin = server.origin();
    let headers = [("origin", origin.as_str())];
    let _s1 = RawClient::connect_with_headers(&server.session_url("demo"), &headers)
        .await
        .unwrap();
    let _s2 = RawClient::connect_with_headers(&server.session_url("demo"), &headers)
        .await
        .unwrap();
    let third = RawClient::connect_with_headers(&server.session_url("demo"), &headers).await;
    assert_eq!(third.err(), Some(429));
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_the_client() {
    let server = TestServer::start_with(|c| {
        c.trusted_proxies = vec!["127.0.0.20/32".parse().unwrap()];
        c.limits.per_address = 2;
    })
    .await;
    let url = server.url();
    let proxy = ip("127.0.0.20");
    let via = |client: &'static str| {
        let url = url.clone();
        async move {
            RawClient::connect_from_with_headers(&url, proxy, &[("x-forwarded-for", client)]).await
        }
    };
    // The proxy's own connections are not limited per address; its
    // clients are, each on its own.
    let _a1 = via("198.51.100.1").await.unwrap();
    let _a2 = via("198.51.100.1").await.unwrap();
    assert_eq!(via("198.51.100.1").await.err().map(|e| e.0), Some(503));
    let _b1 = via("198.51.100.2").await.unwrap();
    // A client that is not a trusted proxy cannot claim another address.
    let direct = ip("127.0.0.21");
    let _d1 =
        RawClient::connect_from_with_headers(&url, direct, &[("x-forwarded-for", "203.0.113.1")])
            .await
            .unwrap();
    let _d2 =
        RawClient::connect_from_with_headers(&url, direct, &[("x-forwarded-for", "203.0.113.2")])
            .await
            .unwrap();
    let third =
        RawClient::connect_from_with_headers(&url, direct, &[("x-forwarded-for", "203.0.113.3")])
            .await;
    assert_eq!(third.err().map(|e| e.0), Some(503));
    // And providers see the forwarded address as the caller's.
    let (mut provider, _) = RawClient::authenticated(&url, &server.server_key).await;
    provider.register("whoami").await;
    let mut caller = via("198.51.100.3").await.unwrap();
    caller
        .send_json(&json!({"key": server.client_key, "v": 8}))
        .await;
    assert_eq!(caller.recv_json().await["auth"], "OK");
    caller
        .send_json(
            &json!({"type": "CALL", "id": "w", "command": "whoami", "args": [], "kwargs": {}}),
        )
        .await;
    let call = provider.recv_json().await;
    assert_eq!(call["client"]["ip"], "198.51.100.3", "{call}");
}
