//! The device client over host TCP against the real server.

use std::time::Duration;

use ferrolink_device::protocol::ConnError;
use ferrolink_device::{Backoff, CallError, Clock as _, Config, Session, SessionError};
use ferrolink_testkit::TestServer;
use ferrolink_testkit::python::PyProcess;
use serde_json::json;

use crate::support::{
    Bufs, Device, TokioClock, WAIT, barrier, connect_plain, plain_config, rand_seed, serve_while,
    tcp,
};

fn python_call(server: &TestServer, function: &str, args: serde_json::Value) -> serde_json::Value {
    let mut p = PyProcess::spawn(
        "caller.py",
        &[
            &server.url(),
            &server.client_key,
            "call",
            function,
            &args.to_string(),
        ],
    );
    p.result(WAIT)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_python_client_calls_device_functions() {
    let server = TestServer::start().await;
    let config = plain_config(&server, &server.server_key);
    let mut buffers = Bufs::new();
    let mut session = connect_plain(&server, &config, &mut buffers).await.unwrap();
    let mut device = Device::default();

    let cases = [
        ("read_temperature", json!([]), json!({"ok": 21.5})),
        ("blink_morse", json!(["SOS ✓"]), json!({"ok": 7})),
        ("add", json!([2, 3.5]), json!({"ok": 5.5})),
        (
            "echo",
            json!([{"nested": ["é", 1, null]}]),
            json!({"ok": {"nested": ["é", 1, null]}}),
        ),
    ];
    for (function, args, expected) in cases {
        let s = server.url();
        let key = server.client_key.clone();
        let args2 = args.clone();
        let py = tokio::task::spawn_blocking(move || {
            let mut p = PyProcess::spawn(
                "caller.py",
                &[&s, &key, "call", function, &args2.to_string()],
            );
            p.result(WAIT)
        });
        let got = serve_while(&mut session, &mut device, py).await;
        assert_eq!(got, expected, "{function}({args})");
    }
    assert_eq!(device.blinked, ["SOS ✓"]);

    // Errors reach the Python caller with their messages.
    let py = {
        let (s, key) = (server.url(), server.client_key.clone());
        tokio::task::spawn_blocking(move || {
            let mut p = PyProcess::spawn("caller.py", &[&s, &key, "call", "fail", "[]"]);
            p.result(WAIT)
        })
    };
    let got = serve_while(&mut session, &mut device, py).await;
    assert_eq!(got["message"], "failed on purpose", "{got}");
    let py = {
        let (s, key) = (server.url(), server.client_key.clone());
        tokio::task::spawn_blocking(move || {
            let mut p = PyProcess::spawn("caller.py", &[&s, &key, "call", "add", "[\"x\"]"]);
            p.result(WAIT)
        })
    };
    let got = serve_while(&mut session, &mut device, py).await;
    assert_eq!(got["message"], "add(a, b) takes two numbers", "{got}");
    let _ = python_call; // (kept for single calls without a session)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_device_calls_functions_of_a_python_provider() {
    let server = TestServer::start().await;
    let mut py = PyProcess::spawn("provider.py", &[&server.url(), &server.server_key]);
    py.expect_line("READY", WAIT);
    let config = plain_config(&server, &server.server_key);
    let mut buffers = Bufs::new();
    let mut session = connect_plain(&server, &config, &mut buffers).await.unwrap();
    let mut device = Device::default();
    let t = Duration::from_secs(20);

    let sum = session
        .call(&mut device, "add", "[2, 3]", "{}", t)
        .await
        .unwrap();
    assert_eq!(sum, "5");
    let echoed = session
        .call(&mut device, "echo", r#"["h\u00e9llo \"q\""]"#, "{}", t)
        .await
        .unwrap();
    let echoed: serde_json::Value = serde_json::from_str(echoed).unwrap();
    assert_eq!(echoed, json!("héllo \"q\""));
    let kw = session
        .call(&mut device, "echo_kwargs", "[1]", r#"{"unit":"C"}"#, t)
        .await
        .unwrap();
    let kw: serde_json::Value = serde_json::from_str(kw).unwrap();
    assert_eq!(kw, json!({"args": [1], "kwargs": {"unit": "C"}}));

    let e = session
        .call(
            &mut device,
            "fail_value",
            "[\"offset must be positive\"]",
            "{}",
            t,
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the call failed remotely: offset must be positive"
    );
    let e = session
        .call(&mut device, "no_such_function", "[]", "{}", t)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("No server function matching"), "{e}");
    // A call from the device that comes back to the device through the app.
    let nested = session
        .call(&mut device, "call_app", "[\"read_temperature\"]", "{}", t)
        .await
        .unwrap();
    assert_eq!(nested, "21.5");
    // Bad arguments never leave the device.
    assert_eq!(
        session
            .call(&mut device, "add", "{", "{}", t)
            .await
            .unwrap_err(),
        CallError::BadArguments
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_answer_times_out_and_the_session_goes_on() {
    let server = TestServer::start().await;
    let mut py = PyProcess::spawn("provider.py", &[&server.url(), &server.server_key]);
    py.expect_line("READY", WAIT);
    let config = plain_config(&server, &server.server_key);
    let mut buffers = Bufs::new();
    let mut session = connect_plain(&server, &config, &mut buffers).await.unwrap();
    let mut device = Device::default();
    let e = session
        .call(&mut device, "hang", "[3]", "{}", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(e, CallError::Timeout);
    // The late answer is dropped; the next call gets its own result.
    let sum = session
        .call(&mut device, "add", "[1, 1]", "{}", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(sum, "2");
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_keep_an_idle_session_alive() {
    let server = TestServer::start().await;
    let mut config = plain_config(&server, &server.server_key);
    config.timing.heartbeat_interval = Duration::from_millis(200);
    config.timing.heartbeat_timeout = Duration::from_secs(1);
    let mut buffers = Bufs::new();
    let mut session = connect_plain(&server, &config, &mut buffers).await.unwrap();
    let until = session.now() + Duration::from_millis(1_500);
    session
        .serve_until(&mut Device::default(), until)
        .await
        .unwrap();
    assert_eq!(server.uplink_count(), 1);
}

#[tokio::test]
async fn a_wrong_key_is_refused_with_the_servers_text() {
    let server = TestServer::start().await;
    let config = plain_config(&server, "not-a-key");
    let mut buffers = Bufs::new();
    let e = connect_plain(&server, &config, &mut buffers)
        .await
        .unwrap_err();
    assert!(e.is_refusal(), "{e}");
    assert!(matches!(e, SessionError::Conn(ConnError::Refused(_))));
    assert!(
        e.to_string().contains("the server refused the connection"),
        "{e}"
    );
}

#[tokio::test]
async fn plaintext_is_refused_unless_allowed_and_nothing_is_sent() {
    let server = TestServer::start().await;
    let config = Config::new("127.0.0.1", server.port(), &server.server_key, &[]);
    let mut buffers = Bufs::new();
    let io = tcp(&server).await.unwrap();
    let e = Session::connect(io, TokioClock::new(), &config, &mut buffers, 1)
        .await
        .unwrap_err();
    assert_eq!(e, SessionError::PlaintextRefused);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.key_messages_received(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_device_reconnects_after_a_server_restart() {
    let mut server = TestServer::start().await;
    let key = server.server_key.clone();
    let config = plain_config(&server, &key);
    let mut buffers = Bufs::new();
    let mut device = Device::default();
    {
        let mut session = connect_plain(&server, &config, &mut buffers).await.unwrap();
        barrier(&mut session).await;
        server.restart().await;
        // The session notices: the transport closes.
        let until = session.now() + WAIT;
        let e = session.serve_until(&mut device, until).await.unwrap_err();
        assert!(
            matches!(
                e,
                SessionError::Closed
                    | SessionError::Io(_)
                    | SessionError::Conn(ConnError::Ended(_))
            ),
            "{e}"
        );
    }
    // The application's reconnect loop, paced by a Backoff; bounded.
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(400));
    let clock = TokioClock::new();
    let deadline = clock.after(WAIT);
    let mut attempts = 0;
    let mut session = loop {
        attempts += 1;
        assert!(
            clock.now() < deadline && attempts < 100,
            "never reconnected"
        );
        // While the server is down the TCP connect itself fails.
        if let Ok(io) = tcp(&server).await {
            match Session::connect(io, TokioClock::new(), &config, &mut buffers, rand_seed()).await
            {
                Ok(s) => break s,
                Err(e) => assert!(!e.is_refusal(), "{e}"),
            }
        }
        tokio::time::sleep(backoff.next_delay(rand_seed() as u32)).await;
    };
    backoff.reset();
    barrier(&mut session).await;
    // Registrations came back with the connection.
    let py = {
        let (s, k) = (server.url(), server.client_key.clone());
        tokio::task::spawn_blocking(move || {
            let mut p = PyProcess::spawn("caller.py", &[&s, &k, "call", "read_temperature", "[]"]);
            p.result(WAIT)
        })
    };
    assert_eq!(
        serve_while(&mut session, &mut device, py).await,
        json!({"ok": 21.5})
    );
}
