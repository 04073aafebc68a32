//! Servers and the CLI sharing one PostgreSQL database (`--database`): the
//! storage a cluster's nodes have in common.

use std::time::{Duration, Instant};

use ferrolink_proto::message::Privilege;
use ferrolink_testkit::{RawClient, TestServer};
use serde_json::json;

use crate::cli::ferrolink;

async fn node(url: &str) -> TestServer {
    let url = url.to_owned();
    TestServer::start_with(move |c| {
        c.database = Some(url);
        c.revocation_poll = Duration::from_millis(250);
    })
    .await
}

#[tokio::test]
async fn two_servers_on_one_postgres_database_share_keys_and_revocations() {
    let url = ferrolink_testkit::postgres::database();
    let a = node(&url).await;
    let b = node(&url).await;
    // A key made through one node's database works on the other, and keys
    // made at the other node's start work on the first.
    let key = a.create_key("demo", Privilege::Server, Some("pico-9"));
    let (mut on_b, _) = RawClient::authenticated(&b.url(), &key).await;
    let (_on_a, _) = RawClient::authenticated(&a.url(), &b.server_key).await;
    on_b.send_json(&json!({"type": "REGISTER", "name": "blink"}))
        .await;

    // The operator revokes it with the CLI against the same database.
    let revoked_at = Instant::now();
    let (ok, out, err) = ferrolink(
        a.data_dir(),
        &["--database", &url, "key", "revoke", "pico-9"],
    );
    assert!(ok, "{out}{err}");
    let (fatal, _) = on_b.recv_until_closed().await;
    assert!(
        revoked_at.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        revoked_at.elapsed()
    );
    assert!(fatal.expect("told why").contains("was revoked on"));
    // Each server notices on its own poll: both refuse the key within 5 s
    // of the revocation.
    for node in [&a, &b] {
        loop {
            let mut again = RawClient::connect(&node.url()).await;
            again.send_json(&json!({"key": key, "v": 8})).await;
            let reply = again.recv_json().await;
            if reply["error"]
                .as_str()
                .is_some_and(|e| e.contains("was revoked"))
            {
                break;
            }
            assert!(
                revoked_at.elapsed() < Duration::from_secs(5),
                "still accepted after {:?}: {reply}",
                revoked_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[test]
fn the_cli_manages_apps_keys_and_tables_in_postgres_and_says_what_it_cannot_do_there() {
    let url = ferrolink_testkit::postgres::database();
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["--database", url.as_str()];
        all.extend_from_slice(args);
        ferrolink(dir.path(), &all)
    };
    let (ok, _, err) = run(&["app", "create", "plant"]);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&[
        "key",
        "create",
        "--app",
        "plant",
        "--privilege",
        "server",
        "--device",
        "pump",
    ]);
    assert!(ok, "{err}");
    let secret = out.lines().last().unwrap().to_owned();
    let (ok, listed, _) = run(&["key", "list", "--app", "plant"]);
    assert!(ok);
    assert!(listed.contains("pump"), "{listed}");
    assert!(!listed.contains(&secret), "secrets are never listed");
    // Nothing went into the data directory's SQLite database.
    assert!(!dir.path().join(ferrolink::storage::DB_FILE).exists());

    // Data tables live there too.
    let (ok, _, err) = run(&[
        "table",
        "create",
        "--app",
        "plant",
        "moisture",
        "--column",
        "pct:number",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(&[
        "table",
        "add-row",
        "--app",
        "plant",
        "moisture",
        r#"{"pct": 41.5}"#,
    ]);
    assert!(ok, "{err}");
    let (ok, listed, err) = run(&["table", "list", "--app", "plant"]);
    assert!(ok && listed.contains("moisture\trows=1"), "{listed}{err}");
    assert!(!dir.path().join(ferrolink::storage::DB_FILE).exists());
    let (ok, _, err) = run(&["backup", "/tmp/never"]);
    assert!(!ok);
    assert!(err.contains("pg_dump"), "{err}");
    let (ok, _, err) = ferrolink(
        dir.path(),
        &[
            "--database",
            "postgres://ferrolink:pw@127.0.0.1:1/none",
            "app",
            "list",
        ],
    );
    assert!(!ok);
    assert!(err.contains("cannot connect to PostgreSQL"), "{err}");
    assert!(!err.contains(":pw@"), "the password is not shown: {err}");
}

/// PostgreSQL down: connected devices keep working and the keys the server
/// has loaded still authenticate; a key it cannot check is told to try
/// again (never that it is wrong, which would stop a device retrying);
/// `/_/ready` says why it is not ready. PostgreSQL back: all of it returns.
#[tokio::test(flavor = "multi_thread")]
async fn with_postgres_down_devices_keep_working_and_new_keys_are_told_to_retry() {
    let pg = std::sync::Arc::new(ferrolink_testkit::postgres::TestPostgres::private());
    let url = pg.database();
    let server = node(&url).await;
    let (mut device, _) = RawClient::authenticated(&server.url(), &server.server_key).await;
    device.register("ping").await;
    let (mut caller, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    let ready = |server: &TestServer| {
        let addr = server.addr();
        async move { ferrolink_testkit::http::request(addr, "GET", "/_/ready", &[], None).await }
    };
    assert_eq!(ready(&server).await.status, 200);

    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.stop()).await.unwrap();
    // Calls between connected uplinks do not touch the database.
    for i in 0..3 {
        caller
            .send_json(&json!({"type": "CALL", "id": i.to_string(), "command": "ping", "args": [], "kwargs": {}}))
            .await;
        let call = device.recv_json().await;
        device
            .send_json(&json!({"id": call["id"], "response": "pong"}))
            .await;
        assert_eq!(caller.recv_json().await["response"], "pong");
    }
    // A key the server has loaded reconnects.
    let (_again, reply) = RawClient::authenticated(&server.url(), &server.server_key).await;
    assert_eq!(reply["auth"], "OK");
    // One it has not: try again, not "wrong key".
    let mut unknown = RawClient::connect(&server.url()).await;
    unknown
        .send_json(&json!({"key": ferrolink::keys::Secret::generate().expose(), "v": 8}))
        .await;
    let (fatal, _) = unknown.recv_until_closed().await;
    assert!(
        fatal
            .as_deref()
            .is_some_and(|e| e.contains("try again shortly")),
        "{fatal:?}"
    );
    let r = ready(&server).await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("database"), "{}", r.body);

    let p = pg.clone();
    tokio::task::spawn_blocking(move || p.resume())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while ready(&server).await.status != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // New keys work again (the server checks them in the database).
    let key = server.create_key("demo", Privilege::Server, Some("pico-new"));
    let (_new, reply) = RawClient::authenticated(&server.url(), &key).await;
    assert_eq!(reply["auth"], "OK");
}
