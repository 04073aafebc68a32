//! Servers in a cluster: one PostgreSQL database and one NATS server, calls
//! routed between servers (docs/cluster.md).

use std::time::{Duration, Instant};

use ferrolink_proto::message::Privilege;
use ferrolink_testkit::nats::TestNats;
use ferrolink_testkit::python::PyProcess;
use ferrolink_testkit::{RawClient, TestServer};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

async fn node(database: &str, nats: &str) -> TestServer {
    let (database, nats) = (database.to_owned(), nats.to_owned());
    TestServer::start_with(move |c| {
        c.database = Some(database);
        c.cluster = Some(nats);
    })
    .await
}

/// `N` servers on a fresh database and a NATS server of their own; the
/// NATS server and the database's URL come back too, for more servers or
/// to stop NATS.
async fn servers<const N: usize>() -> (TestNats, String, [TestServer; N]) {
    let nats = TestNats::start();
    let database = ferrolink_testkit::postgres::database();
    let mut all = Vec::with_capacity(N);
    for _ in 0..N {
        all.push(node(&database, &nats.url()).await);
    }
    let Ok(all) = all.try_into() else {
        unreachable!("{N} servers were started")
    };
    (nats, database, all)
}

/// A server of the cluster as a process of its own (to be killed with
/// SIGKILL): it, its uplink URL, and its data directory.
fn server_process(
    database: &str,
    nats: &TestNats,
) -> (crate::cli::Serve, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (serve, lines) = crate::cli::spawn_serve(
        dir.path(),
        &["--database", database, "--cluster", &nats.url()],
        "uplink: ",
    );
    let url = crate::cli::field(&lines, "uplink: ");
    (serve, url, dir)
}

/// Calls `command` from a raw client on `server` until another server's
/// provider answers (its NATS subscription is made as it registers).
async fn until_served(server: &TestServer, key: &str, command: &str, args: serde_json::Value) {
    let (mut c, _) = RawClient::authenticated(&server.url(), key).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        c.send_json(
            &json!({"type": "CALL", "id": "probe", "command": command, "args": args, "kwargs": {}}),
        )
        .await;
        let reply = c.recv_json().await;
        if reply.get("response").is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "never served: {reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Servers A and B on one database and NATS server, with the official
/// client's `provider.py` on A and its functions reachable from B.
struct ProviderOnA {
    _nats: TestNats,
    _a: TestServer,
    b: TestServer,
    provider: PyProcess,
}

async fn provider_on_a() -> ProviderOnA {
    let (nats, _database, [a, b]) = servers().await;
    let mut provider = PyProcess::spawn("provider.py", &[&a.url(), &a.server_key]);
    provider.expect_line("READY", WAIT);
    until_served(&b, &b.client_key, "add", json!([1, 2])).await;
    ProviderOnA {
        _nats: nats,
        _a: a,
        b,
        provider,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_client_calls_across_servers_both_ways() {
    // The device (provider) on server A, the caller on server B.
    let servers = provider_on_a().await;
    let b = &servers.b;
    let mut caller = PyProcess::spawn("caller.py", &[&b.url(), &b.server_key, "basics"]);
    let r = caller.result(WAIT);
    assert_eq!(r["add"], json!({"ok": 5}), "{r}");
    assert_eq!(r["unicode"]["ok"], "héllo wörld ✓ 日本語 🚀");
    assert_eq!(
        r["kwargs"]["ok"],
        json!({"args": [1], "kwargs": {"unit": "C", "nested": {"a": [1, 2]}}})
    );
    assert_eq!(r["value_error"]["error_type"], "ValueError", "{r}");
    assert_eq!(r["anvil_error"]["error"], "NoServerFunctionError", "{r}");
    // A name no server provides: NATS has no responder, the caller is told
    // at once.
    assert_eq!(r["missing"]["error"], "NoServerFunctionError");
    assert_eq!(
        r["missing"]["message"],
        "No server function matching \"no_such_function\" has been registered"
    );
    // The device on A calls back a function the caller registered on B,
    // inside B's call to A.
    assert_eq!(r["nested"]["ok"], "logged 21.5", "{r}");
    assert_eq!(r["big_int"]["ok"].as_f64(), Some(2f64.powi(70)), "{r}");
}

/// Answers the next call `p` receives with `who`.
async fn answer(p: &mut RawClient, who: &str) {
    let call = p.recv_json().await;
    assert_eq!(call["type"], "CALL", "{call}");
    p.send_json(&json!({"id": call["id"], "response": who}))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_is_addressed_by_name_on_another_server_and_unknown_names_fail_fast() {
    let (nats, database, [a, b]) = servers().await;
    let key_1 = a.create_key("demo", Privilege::Server, Some("pump-1"));
    let key_2 = a.create_key("demo", Privilege::Server, Some("pump-2"));
    // Two devices provide the same name, one on each server.
    let (mut one, _) = RawClient::authenticated(&a.url(), &key_1).await;
    let (mut two, _) = RawClient::authenticated(&b.url(), &key_2).await;
    for p in [&mut one, &mut two] {
        p.send_json(&json!({"type": "REGISTER", "name": "whoami"}))
            .await;
    }
    // A caller on a third server.
    let c = node(&database, &nats.url()).await;
    let (mut caller, _) = RawClient::authenticated(&c.url(), &c.client_key).await;
    // Their NATS subscriptions are made as they register.
    tokio::time::sleep(Duration::from_secs(1)).await;
    caller
        .send_json(&json!({"type": "CALL", "id": "1", "command": "whoami@pump-2", "args": [], "kwargs": {}}))
        .await;
    answer(&mut two, "pump-2").await;
    assert_eq!(caller.recv_json().await["response"], "pump-2");
    caller
        .send_json(&json!({"type": "CALL", "id": "2", "command": "whoami@pump-1", "args": [], "kwargs": {}}))
        .await;
    answer(&mut one, "pump-1").await;
    assert_eq!(caller.recv_json().await["response"], "pump-1");
    // Calls for the name alone are shared between the two servers'
    // devices (one NATS queue group).
    let mut served = std::collections::BTreeMap::new();
    for i in 0..24 {
        caller
            .send_json(&json!({"type": "CALL", "id": format!("s{i}"), "command": "whoami", "args": [], "kwargs": {}}))
            .await;
        let who = tokio::select! {
            call = one.recv_json() => {
                one.send_json(&json!({"id": call["id"], "response": "pump-1"})).await;
                "pump-1"
            }
            call = two.recv_json() => {
                two.send_json(&json!({"id": call["id"], "response": "pump-2"})).await;
                "pump-2"
            }
        };
        assert_eq!(caller.recv_json().await["response"], who);
        *served.entry(who).or_insert(0) += 1;
    }
    assert_eq!(served.len(), 2, "both devices serve the name: {served:?}");

    answered_missing_at_once(&mut caller, "whoami@pump-9").await;
}

/// Calls `command`, which no server provides: `NoServerFunctionError`
/// within 2 s, not at the call's deadline.
async fn answered_missing_at_once(caller: &mut RawClient, command: &str) {
    let started = Instant::now();
    caller
        .send_json(
            &json!({"type": "CALL", "id": command, "command": command, "args": [], "kwargs": {}}),
        )
        .await;
    let reply = caller.recv_json().await;
    assert_eq!(
        reply["error"]["type"], "anvil.server.NoServerFunctionError",
        "{command}: {reply}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{command}: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn large_arguments_cross_and_a_provider_that_dies_fails_its_remote_caller_at_once() {
    let mut servers = provider_on_a().await;
    let b = &servers.b;
    let size = (512 * 1024).to_string();
    let mut caller = PyProcess::spawn("caller.py", &[&b.url(), &b.client_key, "large", &size]);
    let r = caller.result(WAIT);
    assert_eq!(r["length"]["ok"], 512 * 1024, "{r}");
    assert_eq!(r["echo_len"], 512 * 1024);

    let mut caller = PyProcess::spawn("caller.py", &[&b.url(), &b.client_key, "hang"]);
    caller.expect_line("CALLING", WAIT);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    servers.provider.kill();
    let r = caller.result(WAIT);
    assert_eq!(r["error"], "UplinkDisconnectedError", "{r}");
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "{:?}",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_nats_local_calls_work_remote_ones_fail_fast_and_all_come_back() {
    let mut nats = TestNats::start();
    let database = ferrolink_testkit::postgres::database();
    let a = node(&database, &nats.url()).await;
    let b = node(&database, &nats.url()).await;
    let (mut on_a, _) = RawClient::authenticated(&a.url(), &a.server_key).await;
    on_a.send_json(&json!({"type": "REGISTER", "name": "ping"}))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut local, _) = RawClient::authenticated(&a.url(), &a.client_key).await;
    let (mut remote, _) = RawClient::authenticated(&b.url(), &b.client_key).await;
    let call =
        |id: &str| json!({"type": "CALL", "id": id, "command": "ping", "args": [], "kwargs": {}});

    remote.send_json(&call("r1")).await;
    answer(&mut on_a, "pong").await;
    assert_eq!(remote.recv_json().await["response"], "pong");

    let health = |server: &TestServer| {
        let addr = server.addr();
        async move {
            ferrolink_testkit::http::request(addr, "GET", "/_/health", &[], None)
                .await
                .json()
        }
    };
    let (ha, hb) = (health(&a).await, health(&b).await);
    assert_eq!(
        (&ha["cluster"], &hb["cluster"]),
        (&json!("connected"), &json!("connected"))
    );
    assert_ne!(ha["node"], hb["node"], "each server has its own id");

    // NATS goes away.
    nats.stop();
    let stopped = Instant::now();
    while health(&b).await["cluster"] != "disconnected" {
        assert!(
            stopped.elapsed() < Duration::from_secs(5),
            "B never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    remote.send_json(&call("r2")).await;
    let reply = remote.recv_json().await;
    assert_eq!(
        reply["error"]["type"], "anvil.server.UplinkDisconnectedError",
        "{reply}"
    );
    assert!(
        reply["error"]["message"].as_str().unwrap().contains("NATS"),
        "{reply}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    local.send_json(&call("l1")).await;
    answer(&mut on_a, "pong").await;
    assert_eq!(
        local.recv_json().await["response"],
        "pong",
        "local calls go on"
    );

    // NATS is back on the same address: the servers reconnect by
    // themselves and remote calls flow again.
    nats.resume();
    let back = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        remote.send_json(&call(&format!("again{n}"))).await;
        // Either the provider gets it, or the caller is told at once.
        let reply = tokio::select! {
            reply = remote.recv_json() => reply,
            () = answer(&mut on_a, "pong") => remote.recv_json().await,
        };
        if reply["response"] == "pong" {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "never reconnected: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_mid_call_fails_its_remote_callers_within_seconds() {
    let nats = TestNats::start();
    let database = ferrolink_testkit::postgres::database();
    let a = node(&database, &nats.url()).await;
    // Server B as a process of its own, to be killed with SIGKILL.
    let (mut b, b_url, _dir) = server_process(&database, &nats);
    let key = a.create_key("demo", Privilege::Server, None);
    let mut provider = PyProcess::spawn("provider.py", &[&b_url, &key]);
    provider.expect_line("READY", WAIT);
    until_served(&a, &a.client_key, "add", json!([1, 2])).await;
    let mut caller = PyProcess::spawn("caller.py", &[&a.url(), &a.client_key, "hang"]);
    caller.expect_line("CALLING", WAIT);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    b.0.kill().unwrap();
    let r = caller.result(WAIT);
    assert_eq!(r["error"], "UplinkDisconnectedError", "{r}");
    assert!(
        killed.elapsed() < ferrolink::cluster_node_silence() + Duration::from_secs(2),
        "answered after {:?}",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_a_server_under_500_calls_in_flight_answers_every_caller() {
    let nats = TestNats::start();
    let database = ferrolink_testkit::postgres::database();
    let a = node(&database, &nats.url()).await;
    let (mut b, b_url, _dir) = server_process(&database, &nats);
    // A provider on B that takes calls and never answers.
    let key = a.create_key("demo", Privilege::Server, None);
    let (mut provider, _) = RawClient::authenticated(&b_url, &key).await;
    provider
        .send_json(&json!({"type": "REGISTER", "name": "slow"}))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // 500 calls from a caller on A, all taken by B's provider.
    let (mut caller, _) = RawClient::authenticated(&a.url(), &a.client_key).await;
    for i in 0..500 {
        caller
            .send_json(&json!({"type": "CALL", "id": format!("c{i}"), "command": "slow", "args": [i], "kwargs": {}}))
            .await;
    }
    for _ in 0..500 {
        assert_eq!(provider.recv_json().await["type"], "CALL");
    }
    let killed = Instant::now();
    b.0.kill().unwrap();
    let mut answered = std::collections::HashSet::new();
    while answered.len() < 500 {
        let reply = tokio::time::timeout(Duration::from_secs(10), caller.recv_json())
            .await
            .expect("every call is answered; none hangs");
        assert_eq!(
            reply["error"]["type"], "anvil.server.UplinkDisconnectedError",
            "{reply}"
        );
        assert!(answered.insert(reply["id"].as_str().unwrap().to_owned()));
    }
    assert!(
        killed.elapsed() < ferrolink::cluster_node_silence() + Duration::from_secs(2),
        "answered after {:?}",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn events_raised_on_one_server_reach_sessions_on_the_others() {
    let (_nats, _database, [a, b]) = servers().await;
    let (mut here, _) = crate::web::session(&a, None).await;
    let (mut there, there_id) = crate::web::session(&b, None).await;
    let (mut other, _) = crate::web::session(&b, None).await;
    let (mut device, _) = RawClient::authenticated(&a.url(), &a.server_key).await;
    let raise = |id: &str, kwargs: serde_json::Value| {
        json!({"type": "CALL", "id": id, "command": "anvil.private.raise_event",
               "args": ["temperature", {"celsius": 21.5}], "kwargs": kwargs})
    };
    // Every session of the app, on both servers.
    device.send_json(&raise("1", json!({"channel": "*"}))).await;
    assert_eq!(
        device.recv_json().await["response"],
        serde_json::Value::Null
    );
    for s in [&mut here, &mut there, &mut other] {
        let e = s.recv_json().await;
        assert_eq!(
            e["event"],
            json!({"name": "temperature", "payload": {"celsius": 21.5}})
        );
    }
    // One session on the other server, by id.
    device
        .send_json(&raise("2", json!({"session_id": there_id["id"]})))
        .await;
    device.recv_json().await;
    assert_eq!(there.recv_json().await["event"]["name"], "temperature");
    assert!(
        other
            .recv_within(Duration::from_millis(300))
            .await
            .is_none()
    );
    assert!(here.recv_within(Duration::from_millis(100)).await.is_none());
}

/// A TCP proxy on a free loopback port that sends each connection to the
/// first of `backends` that accepts it: the one address devices know.
async fn front(backends: Vec<std::net::SocketAddr>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let backends = backends.clone();
            tokio::spawn(async move {
                for b in backends {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(b).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_whose_server_is_killed_comes_back_through_another_server() {
    let nats = TestNats::start();
    let database = ferrolink_testkit::postgres::database();
    let a = node(&database, &nats.url()).await;
    let (mut b, b_url, _dir) = server_process(&database, &nats);
    let b_addr: std::net::SocketAddr = b_url
        .trim_start_matches("ws://")
        .trim_end_matches("/_/uplink")
        .parse()
        .unwrap();
    // Devices dial one address; it reaches B while B is up, else A.
    let front = front(vec![b_addr, a.addr()]).await;
    let key = a.create_key("demo", Privilege::Server, Some("pump"));
    let device = ferrolink_client::Client::builder(format!("ws://{front}/_/uplink"), &key)
        .register_raw("level", |_req: ferrolink_client::Request| async move {
            Ok::<_, ferrolink_client::HandlerError>(json!(42))
        })
        .connect()
        .await
        .unwrap();
    // A caller on A reaches the device on B.
    until_served(&a, &a.client_key, "level@pump", json!([])).await;
    let killed = Instant::now();
    b.0.kill().unwrap();
    // The device reconnects through the same address, now to A, within
    // the client's backoff (0.5 s doubling); calls flow again.
    until_served(&a, &a.client_key, "level@pump", json!([])).await;
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "back after {:?}",
        killed.elapsed()
    );
    drop(device);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_user_on_one_server_is_seen_by_a_device_on_another() {
    let (_nats, _database, [a, b]) = servers().await;
    // The device on A asks who the browser's user is (a nested call), and
    // raises an event with no target (back to the calling browser).
    let device = ferrolink_client::Client::builder(a.url(), &a.server_key)
        .register_raw("whoami", |req: ferrolink_client::Request| async move {
            let email: Option<String> = req
                .context
                .call("anvil.private.users.get_current_user_email", ())
                .await
                .map_err(|e| ferrolink_client::HandlerError::new("Exception", e.to_string()))?;
            let _: serde_json::Value = req
                .context
                .call("anvil.private.raise_event", ("seen", &email))
                .await
                .map_err(|e| ferrolink_client::HandlerError::new("Exception", e.to_string()))?;
            Ok::<_, ferrolink_client::HandlerError>(json!({ "email": email }))
        })
        .connect()
        .await
        .unwrap();
    until_served(&b, &b.server_key, "whoami", json!([])).await;
    // A user signs up and opens a session on B.
    let signup = crate::web::post_json(
        &b,
        "/_/auth/signup?app=demo",
        json!({"email": "ada@example.org", "password": "analytical1843"}),
        None,
    )
    .await;
    let cookie = signup.cookie("flk_u_demo").unwrap();
    let (mut page, _) = crate::web::session(&b, Some(&cookie)).await;
    page.send_json(
        &json!({"type": "CALL", "id": "1", "command": "whoami", "args": [], "kwargs": {}}),
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(page.recv_json().await);
    }
    let event = got
        .iter()
        .find(|m| m.get("event").is_some())
        .expect("the event came back");
    assert_eq!(
        event["event"],
        json!({"name": "seen", "payload": "ada@example.org"})
    );
    let reply = got.iter().find(|m| m["id"] == "1").expect("the answer");
    assert_eq!(
        reply["response"],
        json!({"email": "ada@example.org"}),
        "{reply}"
    );
    // An anonymous page on B: no user on A either.
    let (mut anonymous, _) = crate::web::session(&b, None).await;
    anonymous
        .send_json(
            &json!({"type": "CALL", "id": "2", "command": "whoami", "args": [], "kwargs": {}}),
        )
        .await;
    let mut reply = anonymous.recv_json().await;
    if reply.get("event").is_some() {
        reply = anonymous.recv_json().await;
    }
    assert_eq!(reply["response"], json!({"email": null}), "{reply}");
    device.disconnect().await;
}

/// Data tables live in the shared PostgreSQL database: rows the official
/// client adds through server A are read through server C, and the other
/// way round.
#[tokio::test(flavor = "multi_thread")]
async fn the_official_clients_on_two_servers_see_each_others_rows() {
    let nats = TestNats::start();
    let database = ferrolink_testkit::postgres::database();
    let a = node(&database, &nats.url()).await;
    let c = node(&database, &nats.url()).await;
    let (dir, url) = (a.data_dir().to_owned(), database.clone());
    tokio::task::spawn_blocking(move || {
        let store = ferrolink::storage::Store::open_database(&dir, Some(&url)).unwrap();
        crate::tables::make_tables_in(&store);
    })
    .await
    .unwrap();
    let log = |server: &TestServer, n: &str| {
        let mut py = PyProcess::spawn("tables.py", &[&server.url(), &server.server_key, "log", n]);
        py.expect_line("DONE", WAIT);
    };
    let count = |server: &TestServer| {
        let mut py = PyProcess::spawn("tables.py", &[&server.url(), &server.server_key, "count"]);
        py.result(WAIT)["count"].as_u64().unwrap()
    };
    log(&a, "30");
    assert_eq!(count(&c), 30);
    log(&c, "12");
    assert_eq!(count(&a), 42);
}

/// The dashboard of any server shows the devices of every server, and
/// which server holds each; a device connecting elsewhere appears without
/// a reload (in a real browser).
#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_shows_the_devices_of_every_server() {
    let (_nats, _database, [a, b]) = servers().await;
    let node_of = |server: &TestServer| {
        let addr = server.addr();
        async move {
            ferrolink_testkit::http::request(addr, "GET", "/_/health", &[], None)
                .await
                .json()["node"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (node_a, node_b) = (node_of(&a).await, node_of(&b).await);
    let key = |device: &str| {
        a.store()
            .create_key("demo", Privilege::Server, Some(device))
            .unwrap()
            .1
            .expose()
            .to_owned()
    };
    let (mut pico, _) = RawClient::authenticated(&a.url(), &key("pico-a")).await;
    pico.register("blink").await;
    let (session, _) = crate::web::operator_login(&b).await;
    let state = |server: &TestServer| crate::web::admin_state(server.admin_addr(), &session);
    // Heartbeats make A known to B within a second or two.
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = state(&b).await;
        if s["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["device"] == "pico-a")
        {
            break s;
        }
        assert!(Instant::now() < deadline, "pico-a never listed on B: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(s["node"], node_b.as_str());
    let pico_a = s["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == "pico-a")
        .unwrap();
    assert_eq!(pico_a["node"], node_a.as_str(), "{s}");
    assert_eq!(pico_a["functions"], json!(["blink"]), "{s}");
    assert_eq!(s["nodes"], json!([{"node": node_a, "uplinks": 1}]), "{s}");
    let demo = s["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "demo")
        .unwrap();
    assert_eq!(
        demo["functions"],
        json!([{"name": "blink", "providers": 1, "provided_by": ["pico-a"], "shared": false}]),
        "{s}"
    );
    let online = |s: &serde_json::Value, device: &str| {
        s["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["device"] == device)
            .map(|k| k["online"].clone())
    };
    assert_eq!(online(&s, "pico-a"), Some(json!(1)), "{s}");
    // Each server's metrics say which server it is and what it sees.
    let scrape = ferrolink_testkit::http::request(b.admin_addr(), "GET", "/_/metrics", &[], None)
        .await
        .body;
    for line in [
        format!("ferrolink_cluster_node_info{{node=\"{node_b}\"}} 1"),
        "ferrolink_cluster_connected 1".to_owned(),
        "ferrolink_cluster_peers 1".to_owned(),
    ] {
        assert!(scrape.lines().any(|l| l == line), "{line} in {scrape}");
    }

    // In the browser: B's dashboard names A as pico-a's server, and a
    // device connecting to A later appears by itself.
    let later = key("pico-later");
    let a_url = a.url();
    let connect_later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let (mut c, _) = RawClient::authenticated(&a_url, &later).await;
        c.register("later").await;
        // Held until the browser has seen it.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(c);
    });
    b.create_operator("viewer", "viewer password");
    ferrolink_testkit::browser::run(
        "dashboard_cluster.mjs",
        &[
            ("BASE", b.admin_origin()),
            ("OP_NAME", "viewer".to_owned()),
            ("OP_PASSWORD", "viewer password".to_owned()),
            ("NODE", node_a),
        ],
    )
    .await;
    connect_later.abort();
    drop(pico);
}

/// Names registered as regular expressions are reached from other servers:
/// the server whose pattern matches takes the call; a name nothing matches
/// still fails fast.
#[tokio::test(flavor = "multi_thread")]
async fn names_registered_as_patterns_are_reached_from_other_servers() {
    let (nats, database, [a, b]) = servers().await;
    let c = node(&database, &nats.url()).await;
    let key = a.create_key("demo", Privilege::Server, Some("sensors"));
    let (mut sensors, _) = RawClient::authenticated(&a.url(), &key).await;
    sensors
        .send_json(&json!({"type": "REGISTER", "name": "sensor_[0-9]+"}))
        .await;
    let (mut motors, _) = RawClient::authenticated(&c.url(), &c.server_key).await;
    motors
        .send_json(&json!({"type": "REGISTER", "name": "motor_.*"}))
        .await;
    let (mut caller, _) = RawClient::authenticated(&b.url(), &b.client_key).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    async fn send(caller: &mut RawClient, command: &str) {
        caller
            .send_json(&json!({"type": "CALL", "id": command, "command": command, "args": [1], "kwargs": {}}))
            .await;
    }
    async fn serve(p: &mut RawClient, expect: &str) {
        let call = p.recv_json().await;
        assert_eq!(call["command"], expect, "{call}");
        assert_eq!(call["args"], json!([1]), "{call}");
        p.send_json(&json!({"id": call["id"], "response": expect}))
            .await;
    }
    send(&mut caller, "sensor_7").await;
    serve(&mut sensors, "sensor_7").await;
    assert_eq!(caller.recv_json().await["response"], "sensor_7");
    send(&mut caller, "motor_left").await;
    serve(&mut motors, "motor_left").await;
    assert_eq!(caller.recv_json().await["response"], "motor_left");
    send(&mut caller, "sensor_12@sensors").await;
    serve(&mut sensors, "sensor_12").await;
    assert_eq!(caller.recv_json().await["response"], "sensor_12");
    for missing in ["sensor_x", "valve_1", "sensor_3@elsewhere"] {
        answered_missing_at_once(&mut caller, missing).await;
    }
    // The pattern's provider leaves: its name is no longer served.
    drop(sensors);
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(&mut caller, "sensor_7").await;
    let reply = caller.recv_json().await;
    assert_eq!(
        reply["error"]["type"], "anvil.server.NoServerFunctionError",
        "{reply}"
    );
}

/// Logging out on one server logs the login out of its pages on every
/// server: their session websockets close at once.
#[tokio::test(flavor = "multi_thread")]
async fn logging_out_on_one_server_closes_that_logins_sessions_on_the_others() {
    let (_nats, _database, [a, b]) = servers().await;
    let creds = json!({"email": "ada@example.org", "password": "correct horse"});
    let made = crate::web::post_json(&a, "/_/auth/signup?app=demo", creds, None).await;
    assert_eq!(made.status, 200, "{}", made.body);
    let cookie = made.cookie("flk_u_demo").unwrap();
    // Pages of that login on B (the session lives in the shared database).
    let (mut page, hello) = crate::web::session(&b, Some(&cookie)).await;
    assert_eq!(hello["user"], "ada@example.org");
    let (mut anonymous, _) = crate::web::session(&b, None).await;
    let out = crate::web::post_json(&a, "/_/auth/logout?app=demo", json!({}), Some(&cookie)).await;
    assert_eq!(out.status, 200);
    let started = Instant::now();
    let (fatal, end) = page.recv_until_closed().await;
    assert!(
        fatal.as_deref() == Some("logged out")
            || matches!(&end, ferrolink_testkit::raw::Received::Close(_, r) if r == "logged out"),
        "{fatal:?} {end:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        anonymous.recv_within(Duration::from_millis(300)).await,
        None
    );
    // Reopened, the page is anonymous.
    let (_, hello) = crate::web::session(&b, Some(&cookie)).await;
    assert_eq!(hello["user"], serde_json::Value::Null);
}

/// With `--cluster-ca`, servers reach NATS over TLS and only trust a NATS
/// server whose certificate chains to that authority: calls cross; a
/// server given another authority never joins (and says so in /_/health).
#[tokio::test(flavor = "multi_thread")]
async fn servers_reach_nats_over_tls_and_refuse_a_server_they_cannot_verify() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ferrolink_testkit::pki::Ca::root("cluster CA");
    let (cert, key) = ca.leaf(&["127.0.0.1", "localhost"]).write(dir.path());
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, &ca.pem).unwrap();
    let other = ferrolink_testkit::pki::Ca::root("someone else");
    let other_pem = dir.path().join("other.pem");
    std::fs::write(&other_pem, &other.pem).unwrap();
    let nats = TestNats::start_tls(&cert, &key);
    let database = ferrolink_testkit::postgres::database();
    let over_tls = |ca: std::path::PathBuf| {
        let (database, url) = (database.clone(), nats.url());
        TestServer::start_with(move |c| {
            c.database = Some(database);
            c.cluster = Some(url);
            c.cluster_ca = Some(ca);
        })
    };
    let a = over_tls(ca_pem.clone()).await;
    let b = over_tls(ca_pem.clone()).await;
    let (mut provider, _) = RawClient::authenticated(&a.url(), &a.server_key).await;
    provider.register("ping").await;
    let (mut caller, _) = RawClient::authenticated(&b.url(), &b.client_key).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        caller
            .send_json(
                &json!({"type": "CALL", "id": "1", "command": "ping", "args": [], "kwargs": {}}),
            )
            .await;
        if let Some(ferrolink_testkit::raw::Received::Text(_)) =
            provider.recv_within(Duration::from_millis(300)).await
        {
            break;
        }
        let _ = caller.recv_within(Duration::from_millis(10)).await;
        assert!(Instant::now() < deadline, "the call never crossed over TLS");
    }
    let health = |server: &TestServer| {
        let addr = server.addr();
        async move {
            ferrolink_testkit::http::request(addr, "GET", "/_/health", &[], None)
                .await
                .json()
        }
    };
    assert_eq!(health(&a).await["cluster"], "connected");
    // Trusting another authority: never connected.
    let c = over_tls(other_pem).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(health(&c).await["cluster"], "disconnected");
}
