//! End-to-end tests in a real browser: Debian's Chromium driven by
//! Playwright (scripts in tests/browser/, screenshots in
//! target/browser-screenshots/).

use std::time::Duration;

use ferrolink_testkit::python::PyProcess;
use ferrolink_testkit::{RawClient, TestServer, browser};

use crate::cli::{field, serve_demo};

/// The README's first command (`serve --demo`) as a user sees it: the demo
/// app works in the browser, then the operator uses the dashboard.
#[tokio::test(flavor = "multi_thread")]
async fn demo_app_and_dashboard_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, lines) = serve_demo(dir.path());
    let base = field(&lines, "dashboard: ")
        .trim_end_matches("/_/admin")
        .to_owned();
    let password = field(
        &lines,
        "dashboard login (created on first run, shown only now): admin / ",
    );
    let app_url = field(&lines, "demo app \"Morse & thermometer\": ");
    browser::run("demo.mjs", &[("APP_URL", app_url)]).await;
    browser::run(
        "dashboard_tables.mjs",
        &[
            ("BASE", base.clone()),
            ("OP_NAME", "admin".to_owned()),
            ("OP_PASSWORD", password.clone()),
        ],
    )
    .await;
    browser::run(
        "dashboard.mjs",
        &[
            ("BASE", base),
            ("OP_NAME", "admin".to_owned()),
            ("OP_PASSWORD", password),
            ("DEVICE", "pico-sim".to_owned()),
        ],
    )
    .await;
}

fn deploy_test_page(server: &TestServer) -> String {
    let site = tempfile::tempdir().unwrap();
    std::fs::write(
        site.path().join("index.html"),
        "<!doctype html><title>test page</title><link rel=\"icon\" href=\"data:,\"><p>ferrolink test page</p>",
    )
    .unwrap();
    ferrolink::sites::deploy_dir(server.data_dir(), "demo", site.path()).unwrap();
    format!("{}/app/demo/", server.origin())
}

/// A function registered through the real anvil-uplink client that, like
/// the Pico W library's `require_user`, refuses callers without a user;
/// and pages of other origins cannot open sessions.
#[tokio::test(flavor = "multi_thread")]
async fn require_user_and_origin_checks_in_a_real_browser() {
    let server = TestServer::start().await;
    let app_url = deploy_test_page(&server);
    let mut provider = PyProcess::spawn("provider.py", &[&server.url(), &server.server_key]);
    provider.expect_line("READY", Duration::from_secs(60));
    browser::run(
        "require_user.mjs",
        &[("APP_URL", app_url), ("FUNCTION", "greet_user".to_owned())],
    )
    .await;
    browser::run("cross_origin.mjs", &[("BASE", server.origin())]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn device_provided_strings_are_shown_as_text() {
    let server = TestServer::start().await;
    server.create_operator("ops", "operator password");
    let evil = "<script>window.__pwned=1</script>";
    let evil_function = "<img src=x onerror=\"window.__pwned=2\">";
    let mut device = RawClient::connect(&server.url()).await;
    device
        .send_json(&serde_json::json!({"key": server.server_key, "v": 7, "device": evil}))
        .await;
    assert_eq!(device.recv_json().await["auth"], "OK");
    device.register(evil_function).await;
    browser::run(
        "escaping.mjs",
        &[
            ("BASE", server.admin_origin()),
            ("OP_NAME", "ops".to_owned()),
            ("OP_PASSWORD", "operator password".to_owned()),
            ("EVIL", evil.to_owned()),
            ("EVIL_FUNCTION", evil_function.to_owned()),
        ],
    )
    .await;
}

/// Data tables from an app page (`link.table`), under each table's client
/// access.
#[tokio::test(flavor = "multi_thread")]
async fn app_pages_use_tables_as_their_access_allows() {
    use ferrolink::storage::tables::ClientAccess;
    let server = TestServer::start().await;
    let app_url = deploy_test_page(&server);
    let store = server.store();
    let cols = |c: &[&str]| c.iter().map(|c| c.parse().unwrap()).collect::<Vec<_>>();
    for (table, columns, access, login) in [
        (
            "notes",
            &["title:text", "n:number"][..],
            ClientAccess::Write,
            false,
        ),
        ("log", &["line:text"][..], ClientAccess::Add, false),
        ("secret", &["v:text"][..], ClientAccess::None, false),
        ("members", &["name:text"][..], ClientAccess::Read, true),
    ] {
        store.create_table("demo", table, &cols(columns)).unwrap();
        store
            .set_client_access("demo", table, access, login)
            .unwrap();
    }
    store
        .add_rows(
            "demo",
            "members",
            &[serde_json::json!({"name": "ada"})
                .as_object()
                .unwrap()
                .clone()],
        )
        .unwrap();
    browser::run("tables.mjs", &[("APP_URL", app_url)]).await;
    assert_eq!(store.count_rows("demo", "secret").unwrap(), 0);
    assert_eq!(store.count_rows("demo", "log").unwrap(), 1);
}
