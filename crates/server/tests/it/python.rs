//! Interop with the official `anvil-uplink==0.7.0` Python client.

use std::time::{Duration, Instant};

use ferrolink_testkit::TestServer;
use ferrolink_testkit::python::PyProcess;

const WAIT: Duration = Duration::from_secs(60);

fn provider(server: &TestServer) -> PyProcess {
    let mut p = PyProcess::spawn("provider.py", &[&server.url(), &server.server_key]);
    p.expect_line("READY", WAIT);
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn python_calls_flow_both_ways_with_the_right_types() {
    let server = TestServer::start().await;
    let _provider = provider(&server);
    let mut caller = PyProcess::spawn("caller.py", &[&server.url(), &server.server_key, "basics"]);
    let r = caller.result(WAIT);

    assert_eq!(r["add"], serde_json::json!({"ok": 5}));
    assert_eq!(r["unicode"]["ok"], "héllo wörld ✓ 日本語 🚀");
    assert_eq!(
        r["kwargs"]["ok"],
        serde_json::json!({"args": [1], "kwargs": {"unit": "C", "nested": {"a": [1, 2]}}})
    );
    // A plain Python exception arrives with its type string and message.
    assert_eq!(r["value_error"]["error"], "AnvilWrappedError", "{r}");
    assert_eq!(r["value_error"]["error_type"], "ValueError");
    assert!(
        r["value_error"]["message"]
            .as_str()
            .unwrap()
            .contains("offset must be positive")
    );
    // An Anvil error type is rebuilt as that class on the calling side.
    assert_eq!(r["anvil_error"]["error"], "NoServerFunctionError", "{r}");
    assert_eq!(r["missing"]["error"], "NoServerFunctionError");
    assert_eq!(
        r["missing"]["message"],
        "No server function matching \"no_such_function\" has been registered"
    );
    assert_eq!(r["echo"]["ok"], "keep-alive");
    assert!(
        r["origin"]["ok"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
    // Device -> app direction, nested inside an app -> device call.
    assert_eq!(r["nested"]["ok"], "logged 21.5", "{r}");
    // 2**70 travels as a `Long` object descriptor, passed through untouched.
    assert_eq!(r["big_int"]["ok"].as_f64(), Some(2f64.powi(70)), "{r}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_calls_from_threads_all_complete() {
    let server = TestServer::start().await;
    let _provider = provider(&server);
    let mut caller = PyProcess::spawn(
        "caller.py",
        &[&server.url(), &server.client_key, "concurrent", "200"],
    );
    let r = caller.result(WAIT);
    assert_eq!(r["ok"], 200, "{r}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_512_kib_argument_and_result_pass_through() {
    let server = TestServer::start().await;
    let _provider = provider(&server);
    let size = (512 * 1024).to_string();
    let mut caller = PyProcess::spawn(
        "caller.py",
        &[&server.url(), &server.client_key, "large", &size],
    );
    let r = caller.result(WAIT);
    assert_eq!(r["length"]["ok"], 512 * 1024, "{r}");
    assert_eq!(r["echo_len"], 512 * 1024);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_provider_mid_call_fails_the_caller_at_once() {
    let server = TestServer::start().await;
    let mut provider = provider(&server);
    let mut caller = PyProcess::spawn("caller.py", &[&server.url(), &server.client_key, "hang"]);
    caller.expect_line("CALLING", WAIT);
    // Give the call time to reach the provider, then pull the plug.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    provider.kill();
    let r = caller.result(WAIT);
    assert_eq!(r["error"], "UplinkDisconnectedError", "{r}");
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "caller waited {:?}",
        killed.elapsed()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_key_is_a_fatal_error_for_the_python_client() {
    let server = TestServer::start().await;
    let bogus = format!("{}x", server.server_key);
    let mut caller = PyProcess::spawn(
        "caller.py",
        &[&server.url(), &bogus, "call", "anvil.private.echo", "[1]"],
    );
    let r = caller.result(WAIT);
    assert!(
        r["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Incorrect uplink key"),
        "{r}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_outlives_several_heartbeats() {
    // Idle timeout below the 10 s heartbeat spacing x 2: the session survives
    // only because heartbeats are answered and counted as life.
    let server = TestServer::start_with(|c| c.session.idle_timeout = Duration::from_secs(15)).await;
    let _provider = provider(&server);
    let mut caller = PyProcess::spawn(
        "caller.py",
        &[&server.url(), &server.client_key, "hold", "32"],
    );
    let r = caller.result(Duration::from_secs(90));
    assert_eq!(r["first"]["ok"], 2, "{r}");
    assert_eq!(r["after"]["ok"], 4, "{r}");
    assert!(
        server.uplink_count() >= 1,
        "the provider is still connected"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_client_works_over_wss_with_the_dev_ca() {
    let server = TestServer::start_with(|c| c.tls = Some(ferrolink_testkit::TlsSetting::Dev)).await;
    assert!(server.url().starts_with("wss://localhost:"));
    let ca = server.dev_ca_path();
    let env = [("SSL_CERT_FILE", ca.as_os_str())];
    let mut provider =
        PyProcess::spawn_env("provider.py", &[&server.url(), &server.server_key], &env);
    provider.expect_line("READY", WAIT);
    let mut caller = PyProcess::spawn_env(
        "caller.py",
        &[&server.url(), &server.client_key, "call", "add", "[20, 22]"],
        &env,
    );
    assert_eq!(caller.result(WAIT), serde_json::json!({"ok": 42}));
    // Without the CA the official client refuses the server (and never
    // authenticates).
    let mut untrusting = PyProcess::spawn(
        "caller.py",
        &[&server.url(), &server.client_key, "call", "add", "[1, 1]"],
    );
    let seen = server.key_messages_received();
    let r = untrusting.result(WAIT);
    assert!(
        r["connect_error"]
            .as_str()
            .unwrap_or_default()
            .contains("CERTIFICATE_VERIFY_FAILED"),
        "{r}"
    );
    assert_eq!(server.key_messages_received(), seen);
    server.shutdown().await;
}
