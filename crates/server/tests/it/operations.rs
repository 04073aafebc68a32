//! What an operator and an integrator use: the HTTP call API, metrics,
//! health and readiness, the config file, graceful shutdown, backups, and
//! logs that never hold a secret.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferrolink_proto::message::Privilege;
use ferrolink_testkit::http::request;
use ferrolink_testkit::python::PyProcess;
use ferrolink_testkit::{RawClient, TestServer};
use serde_json::{Value, json};

use crate::cli::{BIN, ferrolink, field, spawn_serve};

const WAIT: Duration = Duration::from_secs(60);

/// `key` with its last character changed: same id, wrong secret.
fn wrong_key(key: &str) -> String {
    let last = if key.ends_with('Q') { 'R' } else { 'Q' };
    format!("{}{last}", &key[..key.len() - 1])
}

async fn api_call(
    server: &TestServer,
    key: Option<&str>,
    function: &str,
    body: &str,
) -> (u16, Value) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    let r = request(
        server.addr(),
        "POST",
        &format!("/_/api/call/{function}"),
        &headers,
        Some(body),
    )
    .await;
    let json = serde_json::from_str(&r.body).unwrap_or(Value::String(r.body.clone()));
    (r.status, json)
}

/// Every status the HTTP API documents, against functions registered by
/// the official `anvil-uplink` client.
#[tokio::test(flavor = "multi_thread")]
async fn the_http_api_calls_real_uplink_functions_and_says_what_happened() {
    let server = TestServer::start_with(|c| {
        c.call_timeout = Duration::from_secs(2);
        c.max_pending_calls = 2;
    })
    .await;
    let mut provider = PyProcess::spawn("provider.py", &[&server.url(), &server.server_key]);
    provider.expect_line("READY", WAIT);
    let (sk, ck) = (server.server_key.clone(), server.client_key.clone());

    // 200: a result, with positional and keyword arguments.
    let (status, body) = api_call(&server, Some(&ck), "add", r#"{"args": [2, 3]}"#).await;
    assert_eq!((status, &body), (200, &json!({"response": 5})));
    let (status, body) = api_call(
        &server,
        Some(&sk),
        "echo_kwargs",
        r#"{"args": [1], "kwargs": {"unit": "C"}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["response"],
        json!({"args": [1], "kwargs": {"unit": "C"}})
    );
    // An empty body is a call without arguments.
    let (status, body) = api_call(&server, Some(&ck), "whoami", "").await;
    assert_eq!((status, &body["response"]), (200, &json!("provider")));

    // 400: not a call request.
    for bad in [
        "{",
        r#"{"args": 5}"#,
        r#"{"kwargs": []}"#,
        r#"{"argz": []}"#,
        "[1]",
    ] {
        let (status, body) = api_call(&server, Some(&ck), "add", bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().len() > 10,
            "{body}"
        );
    }
    // 401: no key, or a wrong one.
    let (status, body) = api_call(&server, None, "add", "{}").await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Bearer")
    );
    let wrong = wrong_key(&ck);
    let (status, _) = api_call(&server, Some(&wrong), "add", "{}").await;
    assert_eq!(status, 401);
    // 403: a client key may not call server-only names.
    let (status, body) = api_call(&server, Some(&ck), "task:cleanup", "{}").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["type"], "anvil.server.PermissionDenied");
    // 404: nothing registered under the name.
    let (status, body) = api_call(&server, Some(&ck), "no_such_thing", "{}").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["type"], "anvil.server.NoServerFunctionError");
    // 502: the function raised; its type comes along.
    let (status, body) = api_call(
        &server,
        Some(&ck),
        "fail_value",
        r#"{"args": ["bad reading"]}"#,
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["type"], "ValueError");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad reading")
    );
    // 503: the device named is not connected.
    let (status, body) = api_call(
        &server,
        Some(&ck),
        "add",
        r#"{"args": [1, 2], "device": "pico-9"}"#,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    // 504: no answer within the call deadline (2 s).
    let started = Instant::now();
    let (status, body) = api_call(&server, Some(&ck), "hang", r#"{"args": [5]}"#).await;
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() < Duration::from_secs(4));
    // 429: past the calls in flight the API may have (2 here) ...
    let slow = |key: String| {
        let server = &server;
        async move { api_call(server, Some(&key), "hang", r#"{"args": [1]}"#).await }
    };
    let (a, b, c) = tokio::join!(slow(ck.clone()), slow(ck.clone()), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        api_call(&server, Some(&ck), "add", r#"{"args": [1, 1]}"#).await
    });
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    assert_eq!(c.0, 429, "{c:?}");
    assert_eq!(c.1["error"]["type"], "anvil.server.QuotaExceededError");
    // ... and after repeated wrong keys from one address.
    let mut last = 0;
    for _ in 0..6 {
        last = api_call(&server, Some(&wrong), "add", "{}").await.0;
    }
    assert_eq!(last, 429);
    let auth = format!("Bearer {wrong}");
    let throttled = request(
        server.addr(),
        "POST",
        "/_/api/call/add",
        &[("authorization", &auth)],
        Some("{}"),
    )
    .await;
    assert_eq!(throttled.status, 429);
    let wait: u64 = throttled.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&wait), "{wait}");
    // A correct key is still served at once from that address.
    let (status, _) = api_call(&server, Some(&ck), "add", r#"{"args": [1, 1]}"#).await;
    assert_eq!(status, 200);

    let spec = request(server.addr(), "GET", "/_/api/openapi.json", &[], None).await;
    assert_eq!(spec.status, 200);
    let spec = spec.json();
    assert_eq!(spec["openapi"], "3.1.0");
    assert!(spec["paths"]["/_/api/call/{function}"]["post"]["responses"]["504"].is_object());
}

/// Prometheus text, parsed strictly: every sample belongs to a family
/// with HELP and TYPE, and is `name{labels} value`.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "no TYPE for {line}");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        samples.insert(
            series.to_owned(),
            value.parse::<f64>().unwrap_or_else(|_| panic!("{line}")),
        );
    }
    samples
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_exactly_what_happened() {
    let server = TestServer::start_with(|c| c.call_timeout = Duration::from_secs(1)).await;
    let mut provider = PyProcess::spawn("provider.py", &[&server.url(), &server.server_key]);
    provider.expect_line("READY", WAIT);
    let ck = server.client_key.clone();
    let mut wrong = RawClient::connect(&server.url()).await;
    wrong
        .send_json(&json!({"key": "flk_0000000000_nope", "v": 7}))
        .await;
    let _ = wrong.recv_until_closed().await;
    for i in 0..7 {
        let (status, _) = api_call(
            &server,
            Some(&ck),
            "add",
            &format!(r#"{{"args": [{i}, 1]}}"#),
        )
        .await;
        assert_eq!(status, 200);
    }
    for _ in 0..2 {
        assert_eq!(api_call(&server, Some(&ck), "missing", "{}").await.0, 404);
    }
    assert_eq!(
        api_call(&server, Some(&ck), "fail_value", r#"{"args": ["x"]}"#)
            .await
            .0,
        502
    );
    assert_eq!(
        api_call(&server, Some(&ck), "hang", r#"{"args": [3]}"#)
            .await
            .0,
        504
    );
    let scrape = request(server.admin_addr(), "GET", "/_/metrics", &[], None).await;
    assert_eq!(scrape.status, 200);
    assert!(
        scrape
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let m = parse_prometheus(&scrape.body);
    let get = |k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("no {k} in\n{}", scrape.body))
    };
    assert_eq!(
        get("ferrolink_calls_started_total"),
        9.0,
        "7 ok + 1 raised + 1 timed out"
    );
    assert_eq!(get(r#"ferrolink_calls_finished_total{outcome="ok"}"#), 7.0);
    assert_eq!(
        get(r#"ferrolink_calls_finished_total{outcome="no_such_function"}"#),
        2.0
    );
    assert_eq!(
        get(r#"ferrolink_calls_finished_total{outcome="remote_error"}"#),
        1.0
    );
    assert_eq!(
        get(r#"ferrolink_calls_finished_total{outcome="timeout"}"#),
        1.0
    );
    assert_eq!(get(r#"ferrolink_call_duration_seconds_count"#), 9.0);
    assert_eq!(
        get(r#"ferrolink_call_duration_seconds_bucket{le="+Inf"}"#),
        9.0
    );
    assert!(get(r#"ferrolink_call_duration_seconds_bucket{le="0.5"}"#) >= 8.0);
    assert!(
        get("ferrolink_call_duration_seconds_sum") >= 1.0,
        "the timeout took 1 s"
    );
    assert_eq!(get("ferrolink_http_api_calls_total"), 11.0);
    assert_eq!(
        get(r#"ferrolink_auth_failures_total{reason="incorrect"}"#),
        1.0
    );
    assert_eq!(
        get(r#"ferrolink_uplinks{app="demo",privilege="server"}"#),
        1.0
    );
    assert_eq!(get("ferrolink_pending_calls"), 0.0);
    assert!(get("ferrolink_received_bytes_total") > 0.0);
    assert!(get("ferrolink_sent_bytes_total") > 0.0);
    // Not on the public listener: app names and counts are the operator's.
    let public = request(server.addr(), "GET", "/_/metrics", &[], None).await;
    assert_eq!(public.status, 404);
}

#[tokio::test]
async fn ready_and_health_say_different_things() {
    let server = TestServer::start().await;
    let health = request(server.addr(), "GET", "/_/health", &[], None).await;
    assert_eq!(health.json()["status"], "ok");
    let ready = request(server.addr(), "GET", "/_/ready", &[], None).await;
    assert_eq!(
        (ready.status, ready.json()["ready"].clone()),
        (200, json!(true))
    );
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_config_file_is_checked_and_sits_between_defaults_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Unknown keys are refused with the file and the key named.
    let bad = write(
        dir.path(),
        "bad.toml",
        "listen = \"127.0.0.1:0\"\nlisten-adress = \"x\"\n",
    );
    let out = Command::new(BIN)
        .arg("--data")
        .arg(&data)
        .arg("--config")
        .arg(&bad)
        .args(["serve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("unknown setting `listen-adress`"),
        "{err}"
    );
    let (ok, _, err) = ferrolink(&data, &["config", "check", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("listen-adress"), "{err}");
    // A value of the wrong shape is refused too.
    let typo = write(dir.path(), "typo.toml", "call-timeout-ms = \"soon\"\n");
    let (ok, _, err) = ferrolink(&data, &["config", "check", typo.to_str().unwrap()]);
    assert!(
        !ok && err.contains("typo.toml") && err.contains("soon"),
        "{err}"
    );

    // The commented default file, uncommented where a default exists, is a
    // valid file.
    let (ok, default, _) = ferrolink(&data, &["config", "default"]);
    assert!(
        ok && default.contains("# listen = \"127.0.0.1:3030\""),
        "{default}"
    );
    let uncommented: String = default
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| is_setting(l) && !l.ends_with("= \"\""))
        .map(|l| format!("{l}\n"))
        .collect();
    let full = write(dir.path(), "full.toml", &uncommented);
    let (ok, out, err) = ferrolink(&data, &["config", "check", full.to_str().unwrap()]);
    assert!(ok, "{err}\n{uncommented}");
    assert!(out.contains("ok"));

    // defaults < file < environment < flags: the file turns the dashboard
    // off, the environment turns it on again on a free port ...
    let file = write(
        dir.path(),
        "ferrolink.toml",
        "admin-listen = \"off\"\ncall_timeout_ms = 5000\n",
    );
    let (_s, lines) = spawn_serve(&data, &["--config", file.to_str().unwrap()], "dashboard");
    assert_eq!(field(&lines, "dashboard: "), "off (--admin-listen off)");
    drop(_s);
    let (_s, lines) = crate::cli::spawn_serve_env(
        &data,
        &["--config", file.to_str().unwrap()],
        &[("FERROLINK_ADMIN_LISTEN", "127.0.0.1:0")],
        "dashboard",
    );
    assert!(
        field(&lines, "dashboard: ").starts_with("http://127.0.0.1:"),
        "{lines:?}"
    );
    drop(_s);
    // ... and a flag beats both.
    let (_s, lines) = crate::cli::spawn_serve_env(
        &data,
        &["--config", file.to_str().unwrap(), "--admin-listen", "off"],
        &[("FERROLINK_ADMIN_LISTEN", "127.0.0.1:0")],
        "dashboard",
    );
    assert_eq!(field(&lines, "dashboard: "), "off (--admin-listen off)");
}

/// Whether a line of the default file (comment mark removed) is a
/// `setting = value` line rather than help text.
fn is_setting(line: &str) -> bool {
    let Some((name, v)) = line.split_once(" = ") else {
        return false;
    };
    let v = v.trim();
    name.chars().all(|c| c.is_ascii_lowercase() || c == '-')
        && ((v.starts_with('"') && v.ends_with('"') && v.len() >= 2)
            || v.parse::<i64>().is_ok()
            || v == "true"
            || v == "false"
            || (v.starts_with('[') && v.ends_with(']')))
}

/// SIGTERM while 100 calls are in flight: each caller gets its answer
/// (the provider has until the grace period ends) and nothing hangs; new
/// calls are refused with a reason; the process exits.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_calls_in_flight_finish_and_hangs_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let (mut serve, lines) = spawn_serve(dir.path(), &["--shutdown-grace-ms", "5000"], "uplink: ");
    let url = field(&lines, "uplink: ");
    let (sk, ck) = (field(&lines, "server key: "), field(&lines, "client key: "));
    let (mut provider, _) = RawClient::authenticated(&url, &sk).await;
    provider.register("slow").await;
    let (mut helper, _) = RawClient::authenticated(&url, &sk).await;
    helper.register("lookup").await;
    let (mut caller, _) = RawClient::authenticated(&url, &ck).await;
    for i in 0..100 {
        caller
            .send_json(&json!({"type": "CALL", "id": format!("c{i}"), "command": "slow", "args": [i], "kwargs": {}}))
            .await;
    }
    let mut received = Vec::new();
    while received.len() < 100 {
        received.push(provider.recv_json().await);
    }
    // Every call is with the provider: now the signal.
    let pid = serve.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Draining has begun once the listener is closed (the flag is set
    // just before), however loaded the machine is.
    let addr: std::net::SocketAddr = url
        .trim_start_matches("ws://")
        .trim_end_matches("/_/uplink")
        .parse()
        .unwrap();
    let since = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "the listener stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Draining: a new call is refused with a reason, not left waiting.
    caller
        .send_json(
            &json!({"type": "CALL", "id": "late", "command": "slow", "args": [0], "kwargs": {}}),
        )
        .await;
    let late = tokio::time::timeout(Duration::from_secs(5), caller.recv_json())
        .await
        .expect("the late call is answered");
    assert_eq!(late["id"], "late");
    assert!(
        late["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "{late}"
    );
    // To finish a call it holds, the provider may still call out: a
    // nested call (it carries the call's call-stack-id) goes through.
    provider
        .send_json(
            &json!({"type": "CALL", "id": "nested", "command": "lookup", "args": [], "kwargs": {},
            "call-stack-id": received[0]["call-stack-id"]}),
        )
        .await;
    let asked = helper.recv_json().await;
    assert_eq!(asked["command"], "lookup", "{asked}");
    helper
        .send_json(&json!({"id": asked["id"], "response": "found"}))
        .await;
    let nested = provider.recv_json().await;
    assert_eq!(nested["response"], "found", "{nested}");
    // The provider answers what it holds, a second after the signal.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for call in &received {
        provider
            .send_json(&json!({"id": call["id"], "response": call["args"][0]}))
            .await;
    }
    let mut answered = std::collections::HashSet::new();
    while answered.len() < 100 {
        let reply = tokio::time::timeout(Duration::from_secs(5), caller.recv_json())
            .await
            .expect("no caller hangs");
        let id = reply["id"].as_str().unwrap().to_owned();
        let i: i64 = id.trim_start_matches('c').parse().unwrap();
        assert_eq!(reply["response"], i, "{reply}");
        answered.insert(id);
    }
    // Then the connections are closed with a reason and the process ends.
    let (fatal, end) = caller.recv_until_closed().await;
    assert!(
        fatal.as_deref().unwrap_or_default().contains("reconnect"),
        "the close tells clients to reconnect: {fatal:?} {end:?}"
    );
    let started = Instant::now();
    loop {
        if let Some(status) = serve.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the server did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A backup taken while rows are being written holds every row written
/// before it began, passes SQLite's integrity check, and restores into a
/// data directory a server starts from.
#[tokio::test(flavor = "multi_thread")]
async fn an_online_backup_restores_every_row_acknowledged_before_it() {
    let server = TestServer::start().await;
    let data = server.data_dir().to_owned();
    // A writer creating apps (and their keys) as fast as SQLite takes them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let writer = {
        let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
        let store = server.store();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("app-{i}");
                store.create_app(&name).unwrap();
                store.create_key(&name, Privilege::Client, None).unwrap();
                acknowledged.lock().unwrap().push(name);
                i += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: Vec<String> = acknowledged.lock().unwrap().clone();
    let backups = tempfile::tempdir().unwrap();
    let dest = backups.path().join("nightly");
    let out = Command::new(BIN)
        .arg("--data")
        .arg(&data)
        .arg("backup")
        .arg(&dest)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        before.len() > 5,
        "the writer was writing ({} rows)",
        before.len()
    );

    let restored = backups.path().join("restored");
    let (ok, out, err) = ferrolink(&restored, &["restore", dest.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("restored"), "{out}");
    let conn = rusqlite::Connection::open(restored.join("ferrolink.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let mut stmt = conn.prepare("SELECT name FROM apps").unwrap();
    let apps: std::collections::HashSet<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for name in &before {
        assert!(
            apps.contains(name),
            "{name} was acknowledged before the backup"
        );
    }
    // The development CA and the rest of the directory came along.
    let (ok, _, err) = ferrolink(&restored, &["key", "list", "--app", "demo"]);
    assert!(ok, "{err}");
    // Restoring over a directory that holds data needs --replace.
    let (ok, _, err) = ferrolink(&restored, &["restore", dest.to_str().unwrap()]);
    assert!(!ok && err.contains("--replace"), "{err}");
    let (ok, out, err) = ferrolink(&restored, &["restore", "--replace", dest.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("previous data directory"), "{out}");
    // A backup never goes over an existing one.
    let (ok, _, err) = ferrolink(&data, &["backup", dest.to_str().unwrap()]);
    assert!(!ok && err.contains("already exists"), "{err}");
}

/// Runs a server with debug logs through everything that handles a secret
/// — keys accepted, refused and revoked, the HTTP API, passwords — and
/// finds none of the secrets in the logs.
#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let (serve, lines) = crate::cli::spawn_serve_logged(
        dir.path(),
        &["--log-format", "json"],
        &log,
        "dashboard login",
    );
    let url = field(&lines, "uplink: ");
    let admin = field(&lines, "dashboard: ");
    let (sk, ck) = (field(&lines, "server key: "), field(&lines, "client key: "));
    let password = field(
        &lines,
        "dashboard login (created on first run, shown only now): admin / ",
    );
    let mut secrets = vec![sk.clone(), ck.clone(), password.clone()];
    let (ok, out, _) = ferrolink(
        dir.path(),
        &[
            "key",
            "create",
            "--app",
            "demo",
            "--privilege",
            "server",
            "--device",
            "pico-7",
        ],
    );
    assert!(ok);
    let device_key = out.lines().last().unwrap().trim().to_owned();
    secrets.push(device_key.clone());
    let (_device, _) = RawClient::authenticated(&url, &device_key).await;
    let (_provider, _) = RawClient::authenticated(&url, &sk).await;
    // A wrong key that differs from a real one only in its secret.
    let wrong = wrong_key(&ck);
    secrets.push(wrong.clone());
    let mut w = RawClient::connect(&url).await;
    w.send_json(&json!({"key": wrong, "v": 7})).await;
    let _ = w.recv_until_closed().await;
    let addr: std::net::SocketAddr = url
        .trim_start_matches("ws://")
        .trim_end_matches("/_/uplink")
        .parse()
        .unwrap();
    for key in [&ck, &wrong] {
        let auth = format!("Bearer {key}");
        request(
            addr,
            "POST",
            "/_/api/call/anything",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            Some("{}"),
        )
        .await;
    }
    // A user's password, at sign-up and at a wrong login.
    let origin = format!("http://{addr}");
    let user_password = "a user's long secret passphrase";
    secrets.push(user_password.to_owned());
    for path in ["/_/auth/signup?app=demo", "/_/auth/login?app=demo"] {
        request(
            addr,
            "POST",
            path,
            &[("origin", &origin), ("content-type", "application/json")],
            Some(&json!({"email": "u@example.com", "password": user_password}).to_string()),
        )
        .await;
    }
    // The operator's password at the dashboard's login form.
    let admin_addr: std::net::SocketAddr = admin
        .trim_start_matches("http://")
        .trim_end_matches("/_/admin")
        .parse()
        .unwrap();
    let form = request(admin_addr, "GET", "/_/admin", &[], None).await;
    let csrf_cookie = form.cookie("flk_csrf").unwrap();
    let token = csrf_cookie.split_once('=').unwrap().1.to_owned();
    let admin_origin = format!("http://{admin_addr}");
    let login = request(
        admin_addr,
        "POST",
        "/_/admin/login",
        &[
            ("origin", &admin_origin),
            ("content-type", "application/x-www-form-urlencoded"),
            ("cookie", &csrf_cookie),
        ],
        Some(&format!("name=admin&password={password}&csrf={token}")),
    )
    .await;
    let session = login.cookie("flk_admin").expect("logged in");
    secrets.push(session.split_once('=').unwrap().1.to_owned());
    let (ok, _, _) = ferrolink(dir.path(), &["key", "revoke", "pico-7"]);
    assert!(ok);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(serve);
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.lines().count() >= 3, "logs were written:\n{logs}");
    assert!(logs.contains("uplink connected"), "{logs}");
    for secret in &secrets {
        // The whole secret, and the part after the key id.
        let tail = secret.rsplit('_').next().unwrap();
        assert!(!logs.contains(secret.as_str()), "a secret is in the logs");
        assert!(
            tail.len() < 16 || !logs.contains(tail),
            "part of a secret is in the logs"
        );
    }
    // Connection lines carry the connection's span: address and key id.
    let connected = logs
        .lines()
        .find(|l| l.contains("uplink connected"))
        .unwrap();
    let line: Value = serde_json::from_str(connected).unwrap();
    assert!(line["span"]["peer"].is_string(), "{line}");
    assert!(line["span"]["key"].as_str().unwrap().len() >= 10, "{line}");
}

/// HTTP callers that give up (a webhook's client timeout) leave nothing
/// behind: the app's HTTP in-flight budget is free again at once.
#[tokio::test(flavor = "multi_thread")]
async fn abandoned_http_calls_give_their_in_flight_place_back() {
    let server = TestServer::start_with(|c| {
        c.max_pending_calls = 2;
        c.call_timeout = Duration::from_secs(30);
    })
    .await;
    let (mut provider, _) = RawClient::authenticated(&server.url(), &server.server_key).await;
    provider.register("hang").await;
    provider.register("quick").await;
    let ck = server.client_key.clone();
    for _ in 0..2 {
        // The client hangs up after 200 ms; the provider never answers.
        let gave_up = tokio::time::timeout(
            Duration::from_millis(200),
            api_call(&server, Some(&ck), "hang", "{}"),
        )
        .await;
        assert!(gave_up.is_err());
        let call = provider.recv_json().await;
        assert_eq!(call["command"], "hang");
    }
    // The provider answers every `quick` call from now on.
    let answering = tokio::spawn(async move {
        loop {
            let call = provider.recv_json().await;
            assert_eq!(call["command"], "quick", "{call}");
            provider
                .send_json(&json!({"id": call["id"], "response": "done"}))
                .await;
        }
    });
    // The server notices the hang-ups as it polls those connections; on a
    // loaded machine that may take a moment, so ask again for a while.
    // Without the cleanup the budget stays full and this never succeeds.
    let since = Instant::now();
    let (status, body) = loop {
        let (status, body) = api_call(&server, Some(&ck), "quick", "{}").await;
        if status != 429 || since.elapsed() > Duration::from_secs(5) {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((status, &body), (200, &json!({"response": "done"})));
    answering.abort();
}

/// The key is checked before the body is read: a client without a key
/// that announces a body and never sends it is answered at once.
#[tokio::test]
async fn the_http_api_checks_the_key_before_reading_the_body() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = TestServer::start().await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "POST /_/api/call/add HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n",
        server.addr()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut answer))
        .await
        .expect("answered without waiting for the body")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
}

/// One server per data directory, and no restore under a running one.
#[test]
fn a_data_directory_serves_one_server_and_is_not_restored_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_serve, lines) = spawn_serve(&data, &[], "uplink: ");
    assert!(!lines.is_empty());
    let out = Command::new(BIN)
        .arg("--data")
        .arg(&data)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another `ferrolink serve` is running"),
        "{err}"
    );
    // A backup inside the data directory would copy itself.
    let inside = data.join("backups");
    let (ok, _, err) = ferrolink(&data, &["backup", inside.join("today").to_str().unwrap()]);
    assert!(!ok && err.contains("inside the data directory"), "{err}");
    let outside = dir.path().join("backup");
    let (ok, _, err) = ferrolink(&data, &["backup", outside.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, _, err) = ferrolink(&data, &["restore", "--replace", outside.to_str().unwrap()]);
    assert!(!ok && err.contains("stop it first"), "{err}");
    assert!(
        data.join("ferrolink.db").is_file(),
        "the data directory was left alone"
    );
}

/// A switch set in the config file can be turned off from the
/// environment, and the strongest source picks the certificate.
#[test]
fn switches_in_the_config_file_yield_to_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = write(
        dir.path(),
        "tls.toml",
        "dev-tls = true\nadmin-listen = \"off\"\n",
    );
    let (_s, lines) = spawn_serve(&data, &["--config", file.to_str().unwrap()], "uplink: ");
    assert!(field(&lines, "uplink: ").starts_with("wss://"), "{lines:?}");
    drop(_s);
    let (_s, lines) = crate::cli::spawn_serve_env(
        &data,
        &["--config", file.to_str().unwrap()],
        &[("FERROLINK_DEV_TLS", "false")],
        "uplink: ",
    );
    assert!(field(&lines, "uplink: ").starts_with("ws://"), "{lines:?}");
    drop(_s);
    // Files in the config file, ACME from a flag: the flag wins, no conflict.
    let both = write(
        dir.path(),
        "both.toml",
        "tls-cert = \"/nonexistent/cert.pem\"\ntls-key = \"/nonexistent/key.pem\"\n",
    );
    let (ok, out, err) = ferrolink(
        &data,
        &[
            "--config",
            both.to_str().unwrap(),
            "config",
            "check",
            both.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}{err}");
    let out = Command::new(BIN)
        .arg("--data")
        .arg(&data)
        .args([
            "--config",
            both.to_str().unwrap(),
            "serve",
            "--dev-tls",
            "--tls-cert",
            "/x.pem",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("choose one way to get a certificate"), "{err}");
}
