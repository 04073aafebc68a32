//! The browser side without a browser: session websockets (origin checks,
//! identity, events), user accounts, the dashboard's API guards and app
//! hosting, driven over plain HTTP and websockets.

use std::time::Duration;

use ferrolink_client::{Client, HandlerError, Request};
use ferrolink_testkit::http::{Response, request};
use ferrolink_testkit::{RawClient, TestServer};
use serde_json::json;

pub(crate) async fn post_json(
    server: &TestServer,
    path: &str,
    body: serde_json::Value,
    cookie: Option<&str>,
) -> Response {
    let origin = server.origin();
    let mut headers = vec![
        ("origin", origin.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    request(
        server.addr(),
        "POST",
        path,
        &headers,
        Some(&body.to_string()),
    )
    .await
}

/// The dashboard's state (`/_/admin/api/state`) as the operator whose
/// session cookie is `session` sees it.
pub(crate) async fn admin_state(addr: std::net::SocketAddr, session: &str) -> serde_json::Value {
    request(
        addr,
        "GET",
        "/_/admin/api/state",
        &[("cookie", session)],
        None,
    )
    .await
    .json()
}

/// Opens a browser session as a page of the server would.
pub(crate) async fn session(
    server: &TestServer,
    cookie: Option<&str>,
) -> (RawClient, serde_json::Value) {
    let origin = server.origin();
    let mut headers = vec![("origin", origin.as_str())];
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    let mut ws = RawClient::connect_with_headers(&server.session_url("demo"), &headers)
        .await
        .expect("session opens");
    let hello = ws.recv_json().await;
    (ws, hello["session"].clone())
}

fn call(id: &str, command: &str, args: serde_json::Value) -> serde_json::Value {
    json!({"type": "CALL", "id": id, "command": command, "args": args, "kwargs": {}})
}

#[tokio::test]
async fn session_websockets_only_open_for_pages_of_this_server() {
    let server = TestServer::start().await;
    let url = server.session_url("demo");
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let refused = RawClient::connect_with_headers(&url, &[("origin", origin)]).await;
        assert_eq!(refused.err(), Some(403), "origin {origin}");
    }
    assert_eq!(
        RawClient::connect_with_headers(&url, &[]).await.err(),
        Some(403),
        "no Origin"
    );
    let (_ws, s) = session(&server, None).await;
    assert_eq!(s["app"], "demo");
    assert_eq!(s["user"], serde_json::Value::Null);
    let unknown = RawClient::connect_with_headers(
        &server.session_url("nope"),
        &[("origin", &server.origin())],
    )
    .await;
    assert_eq!(unknown.err(), Some(404));
}

#[tokio::test]
async fn accounts_sign_up_log_in_and_out_with_safe_cookies() {
    let server = TestServer::start().await;
    let creds = json!({"email": "Ada@Example.org", "password": "correct horse"});
    let r = post_json(&server, "/_/auth/signup?app=demo", creds.clone(), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["user"], "ada@example.org");
    let set = r.set_cookies().join("\n");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    let again = post_json(&server, "/_/auth/signup?app=demo", creds.clone(), None).await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(
        again.json()["error"]
            .as_str()
            .unwrap()
            .contains("log in instead")
    );

    let weak = post_json(
        &server,
        "/_/auth/signup?app=demo",
        json!({"email": "b@c.d", "password": "short"}),
        None,
    )
    .await;
    assert_eq!(weak.status, 400);
    let bad_email = post_json(
        &server,
        "/_/auth/signup?app=demo",
        json!({"email": "nobody", "password": "long enough"}),
        None,
    )
    .await;
    assert_eq!(bad_email.status, 400);
    assert!(
        bad_email.json()["error"]
            .as_str()
            .unwrap()
            .contains("not an email")
    );

    let wrong = post_json(
        &server,
        "/_/auth/login?app=demo",
        json!({"email": "ada@example.org", "password": "wrong horse"}),
        None,
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.set_cookies().is_empty());
    let ok = post_json(&server, "/_/auth/login?app=demo", creds.clone(), None).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let cookie = ok.cookie("flk_u_demo").expect("session cookie");

    // Cross-site posts and form posts are refused (CSRF).
    let cross = request(
        server.addr(),
        "POST",
        "/_/auth/login?app=demo",
        &[
            ("origin", "http://evil.example"),
            ("content-type", "application/json"),
        ],
        Some(&creds.to_string()),
    )
    .await;
    assert_eq!(cross.status, 403);
    let form = request(
        server.addr(),
        "POST",
        "/_/auth/login?app=demo",
        &[
            ("origin", &server.origin()),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        Some("email=ada%40example.org&password=correct+horse"),
    )
    .await;
    assert_eq!(form.status, 415, "only JSON bodies: {}", form.body);

    let me = request(
        server.addr(),
        "GET",
        "/_/auth/me?app=demo",
        &[("cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(me.json()["user"], "ada@example.org");
    let (mut tab_1, s) = session(&server, Some(&cookie)).await;
    assert_eq!(s["user"], "ada@example.org");
    let (mut tab_2, _) = session(&server, Some(&cookie)).await;
    // The same user logged in from another browser, and an anonymous page.
    let other_login = post_json(&server, "/_/auth/login?app=demo", creds.clone(), None)
        .await
        .cookie("flk_u_demo")
        .unwrap();
    let (mut elsewhere, _) = session(&server, Some(&other_login)).await;
    let (mut anonymous, _) = session(&server, None).await;

    let out = post_json(&server, "/_/auth/logout?app=demo", json!({}), Some(&cookie)).await;
    assert_eq!(out.status, 200);
    // Every page of that login is logged out at once: its session
    // websockets close (and reopen anonymous); others stay.
    for tab in [&mut tab_1, &mut tab_2] {
        let (fatal, end) = tab.recv_until_closed().await;
        assert!(
            fatal.as_deref() == Some("logged out")
                || matches!(&end, ferrolink_testkit::raw::Received::Close(_, r) if r == "logged out"),
            "{fatal:?} {end:?}"
        );
    }
    for open in [&mut elsewhere, &mut anonymous] {
        assert_eq!(open.recv_within(Duration::from_millis(300)).await, None);
    }
    let me = request(
        server.addr(),
        "GET",
        "/_/auth/me?app=demo",
        &[("cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(
        me.json()["user"],
        serde_json::Value::Null,
        "the old cookie is dead"
    );

    // Passwords are stored as argon2id hashes.
    let stored = server
        .store()
        .user("demo", "ada@example.org")
        .unwrap()
        .unwrap();
    assert!(
        stored.password.starts_with("$argon2id$"),
        "{}",
        stored.password
    );
}

#[tokio::test]
async fn repeated_wrong_logins_are_throttled_per_account_and_per_address() {
    let server =
        TestServer::start_with(|c| c.auth_throttle.first_window = Duration::from_secs(30)).await;
    let login = |email: &'static str| {
        let server = &server;
        async move {
            let wrong = json!({"email": email, "password": "not the password"});
            post_json(server, "/_/auth/login?app=demo", wrong, None)
                .await
                .status
        }
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(login("x@y.z").await);
    }
    // Three free failures and the one that opens the window are checked;
    // then the account is refused without a check.
    assert_eq!(&statuses[..4], &[401, 401, 401, 401], "{statuses:?}");
    assert_eq!(&statuses[4..], &[429, 429], "{statuses:?}");
    // Another account from the same address is still checked ...
    assert_eq!(login("other@y.z").await, 401);
    // ... until the address has used its (larger) allowance.
    let mut last = 0;
    for i in 0..40 {
        let email: &'static str = Box::leak(format!("user{i}@y.z").into_boxed_str());
        last = login(email).await;
    }
    assert_eq!(last, 429);
}

#[tokio::test]
async fn device_functions_see_the_browser_user_through_nested_calls() {
    let server = TestServer::start().await;
    let device = Client::builder(server.url(), &server.server_key)
        .register_raw("whoami", |req: Request| async move {
            let email: Option<String> = req
                .context
                .call("anvil.private.users.get_current_user_email", ())
                .await
                .map_err(|e| HandlerError::new("Exception", e.to_string()))?;
            Ok::<_, HandlerError>(json!({ "email": email }))
        })
        .connect()
        .await
        .unwrap();
    let signup = post_json(
        &server,
        "/_/auth/signup?app=demo",
        json!({"email": "grace@example.org", "password": "hopper1906"}),
        None,
    )
    .await;
    let cookie = signup.cookie("flk_u_demo").unwrap();
    let (mut logged_in, _) = session(&server, Some(&cookie)).await;
    logged_in.send_json(&call("1", "whoami", json!([]))).await;
    assert_eq!(
        logged_in.recv_json().await["response"],
        json!({"email": "grace@example.org"})
    );
    let (mut anonymous, _) = session(&server, None).await;
    anonymous.send_json(&call("1", "whoami", json!([]))).await;
    assert_eq!(
        anonymous.recv_json().await["response"],
        json!({"email": null})
    );
    // A top-level call from an uplink has no user either.
    let (mut uplink, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    uplink.send_json(&call("1", "whoami", json!([]))).await;
    assert_eq!(uplink.recv_json().await["response"], json!({"email": null}));
    // The call is tagged as coming from a browser.
    let (mut raw_device, _) = RawClient::authenticated(&server.url(), &server.server_key).await;
    raw_device.register("peek").await;
    logged_in.send_json(&call("2", "peek", json!([]))).await;
    let forwarded = raw_device.recv_json().await;
    assert_eq!(forwarded["call-stack"][0]["type"], "browser");
    assert_eq!(forwarded["client"]["type"], "browser");
    device.disconnect().await;
}

#[tokio::test]
async fn apps_can_refuse_anonymous_calls() {
    let server = TestServer::start().await;
    server.store().set_app("demo", Some(false), None).unwrap();
    let (mut provider, _) = RawClient::authenticated(&server.url(), &server.server_key).await;
    provider.register("f").await;
    let (mut anonymous, s) = session(&server, None).await;
    assert_eq!(s["anonymous_calls"], false);
    anonymous.send_json(&call("1", "f", json!([]))).await;
    let r = anonymous.recv_json().await;
    assert_eq!(r["error"]["type"], "anvil.server.PermissionDenied");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("log in"),
        "{r}"
    );
    assert!(
        provider
            .recv_within(Duration::from_millis(200))
            .await
            .is_none()
    );
    // Browser sessions have client privilege: no registering, no events.
    anonymous
        .send_json(&call("2", "anvil.private.raise_event", json!(["x", 1])))
        .await;
    assert_eq!(
        anonymous.recv_json().await["error"]["type"],
        "anvil.server.PermissionDenied"
    );
}

#[tokio::test]
async fn new_apps_refuse_anonymous_calls_and_turning_them_off_reaches_open_sessions() {
    let server = TestServer::start().await;
    // `app create` (the store's default): anonymous calls are off.
    server.create_app("fresh");
    assert!(!server.store().app("fresh").unwrap().anonymous_calls);
    // The demo app allows them; a session opened now may call ...
    let (mut provider, _) = RawClient::authenticated(&server.url(), &server.server_key).await;
    provider.register("f").await;
    let (mut anonymous, s) = session(&server, None).await;
    assert_eq!(s["anonymous_calls"], true);
    anonymous.send_json(&call("1", "f", json!([]))).await;
    let forwarded = provider.recv_json().await;
    provider
        .send_json(&json!({"id": forwarded["id"], "response": 1}))
        .await;
    assert_eq!(anonymous.recv_json().await["response"], 1);
    // ... until the operator turns them off from the CLI (another
    // process, seen through the database): the open session is refused.
    server.store().set_app("demo", Some(false), None).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        anonymous.send_json(&call("2", "f", json!([]))).await;
        match provider.recv_within(Duration::from_millis(300)).await {
            Some(ferrolink_testkit::raw::Received::Text(t)) => {
                // Not yet seen: answer, and try again shortly.
                let forwarded: serde_json::Value = serde_json::from_str(&t).unwrap();
                provider
                    .send_json(&json!({"id": forwarded["id"], "response": 1}))
                    .await;
                assert_eq!(anonymous.recv_json().await["response"], 1);
                assert!(
                    std::time::Instant::now() < deadline,
                    "the open session kept calling"
                );
            }
            None => {
                let r = anonymous.recv_json().await;
                assert_eq!(r["error"]["type"], "anvil.server.PermissionDenied", "{r}");
                break;
            }
            Some(other) => panic!("the provider got {other:?}"),
        }
    }
}

#[tokio::test]
async fn events_reach_the_sessions_they_target() {
    let server = TestServer::start().await;
    let (mut a, sa) = session(&server, None).await;
    let (mut b, _) = session(&server, None).await;
    let (mut device, _) = RawClient::authenticated(&server.url(), &server.server_key).await;
    let raise = |id: &str, kwargs: serde_json::Value| {
        json!({"type": "CALL", "id": id, "command": "anvil.private.raise_event",
               "args": ["temperature", {"celsius": 21.5}], "kwargs": kwargs})
    };
    // Every session of the app.
    device
        .send_json(&raise(
            "1",
            json!({"channel": "*", "session_id": null, "session_ids": null}),
        ))
        .await;
    assert_eq!(
        device.recv_json().await["response"],
        serde_json::Value::Null
    );
    for s in [&mut a, &mut b] {
        let e = s.recv_json().await;
        assert_eq!(
            e["event"],
            json!({"name": "temperature", "payload": {"celsius": 21.5}})
        );
        assert!(e["id"].as_str().unwrap().starts_with("evt"));
    }
    // One session by id.
    device
        .send_json(&raise("2", json!({"session_id": sa["id"]})))
        .await;
    device.recv_json().await;
    assert_eq!(a.recv_json().await["event"]["name"], "temperature");
    assert!(b.recv_within(Duration::from_millis(200)).await.is_none());
    // A channel: only subscribers.
    b.send_json(&call(
        "s",
        "ferrolink.session.subscribe",
        json!(["kitchen"]),
    ))
    .await;
    assert_eq!(b.recv_json().await["id"], "s");
    device
        .send_json(&raise("3", json!({"channel": "kitchen"})))
        .await;
    device.recv_json().await;
    assert_eq!(b.recv_json().await["event"]["name"], "temperature");
    assert!(a.recv_within(Duration::from_millis(200)).await.is_none());
    // No target, at top level: the uplink's own session, where no browser listens.
    device.send_json(&raise("4", json!({}))).await;
    device.recv_json().await;
    assert!(a.recv_within(Duration::from_millis(200)).await.is_none());
    // Raised inside a browser's call with no target: back to that browser.
    device.register("notify_me").await;
    a.send_json(&call("n", "notify_me", json!([]))).await;
    let inner = device.recv_json().await;
    device
        .send_json(
            &json!({"type": "CALL", "id": "5", "command": "anvil.private.raise_event",
            "args": ["done", "yes"], "kwargs": {}, "call-stack-id": inner["call-stack-id"]}),
        )
        .await;
    device.recv_json().await;
    device
        .send_json(&json!({"id": inner["id"], "response": true}))
        .await;
    assert_eq!(
        a.recv_json().await["event"],
        json!({"name": "done", "payload": "yes"})
    );
    assert_eq!(a.recv_json().await["response"], true);
    assert!(b.recv_within(Duration::from_millis(200)).await.is_none());
    // Client-privilege keys may not raise events.
    let (mut client, _) = RawClient::authenticated(&server.url(), &server.client_key).await;
    client.send_json(&raise("6", json!({"channel": "*"}))).await;
    assert_eq!(
        client.recv_json().await["error"]["type"],
        "anvil.server.PermissionDenied"
    );
}

#[tokio::test]
async fn the_dashboard_api_needs_a_session_and_its_csrf_token() {
    let server = TestServer::start().await;
    server.create_operator("ops", "operator password");
    let addr = server.admin_addr();
    let origin = server.admin_origin();
    assert_eq!(
        request(addr, "GET", "/_/admin/api/state", &[], None)
            .await
            .status,
        401
    );
    // The login form carries a token bound to a cookie.
    let form = request(addr, "GET", "/_/admin", &[], None).await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains("name=\"csrf\""));
    let csrf_cookie = form.cookie("flk_csrf").unwrap();
    let token = csrf_cookie.split_once('=').unwrap().1.to_owned();
    let login = |body: String, cookie: String| {
        let origin = origin.clone();
        async move {
            request(
                addr,
                "POST",
                "/_/admin/login",
                &[
                    ("origin", &origin),
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("cookie", &cookie),
                ],
                Some(&body),
            )
            .await
        }
    };
    let forged = login(
        "name=ops&password=operator+password&csrf=other".to_owned(),
        csrf_cookie.clone(),
    )
    .await;
    assert_eq!(forged.header("location"), Some("/_/admin?error=form"));
    assert!(forged.cookie("flk_admin").is_none());
    let wrong = login(
        format!("name=ops&password=nope&csrf={token}"),
        csrf_cookie.clone(),
    )
    .await;
    assert_eq!(wrong.header("location"), Some("/_/admin?error=login"));
    let ok = login(
        format!("name=ops&password=operator+password&csrf={token}"),
        csrf_cookie.clone(),
    )
    .await;
    let session = ok.cookie("flk_admin").expect("operator session");
    let set = ok.set_cookies().join("\n");
    assert!(
        set.contains("SameSite=Strict")
            && set.contains("HttpOnly")
            && set.contains("Path=/_/admin"),
        "{set}"
    );

    let page = request(addr, "GET", "/_/admin", &[("cookie", &session)], None).await;
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let csrf = page
        .body
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let state = request(
        addr,
        "GET",
        "/_/admin/api/state",
        &[("cookie", &session)],
        None,
    )
    .await;
    assert_eq!(state.json()["operator"], "ops");

    let create = |token: String| {
        let (origin, session) = (origin.clone(), session.clone());
        async move {
            request(
                addr,
                "POST",
                "/_/admin/api/keys",
                &[
                    ("origin", &origin),
                    ("cookie", &session),
                    ("content-type", "application/json"),
                    ("x-csrf-token", &token),
                ],
                Some(r#"{"app":"demo","privilege":"server","device":"pico-9"}"#),
            )
            .await
        }
    };
    assert_eq!(create("wrong".to_owned()).await.status, 403);
    let created = create(csrf.clone()).await;
    assert_eq!(created.status, 200, "{}", created.body);
    let key = created.json()["key"].as_str().unwrap().to_owned();
    let (_device, _) = RawClient::authenticated(&server.url(), &key).await;
    let state = admin_state(addr, &session).await;
    let dev = state["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == "pico-9")
        .expect("device listed");
    assert_eq!(dev["app"], "demo");
    assert_eq!(dev["address"], "127.0.0.1");
}

#[tokio::test]
async fn front_ends_are_served_and_confined_to_their_folder() {
    let server = TestServer::start().await;
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "<h1>hello</h1>").unwrap();
    std::fs::write(site.path().join("app.js"), "console.log(1)").unwrap();
    ferrolink::sites::deploy_dir(server.data_dir(), "demo", site.path()).unwrap();
    let addr = server.addr();
    let get = |path: &'static str| async move { request(addr, "GET", path, &[], None).await };
    let index = get("/app/demo/").await;
    assert_eq!(index.status, 200);
    assert_eq!(index.body, "<h1>hello</h1>");
    assert_eq!(index.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        get("/").await.body,
        "<h1>hello</h1>",
        "the only app with a front end is at /"
    );
    assert!(
        get("/app.js")
            .await
            .header("content-type")
            .unwrap()
            .contains("javascript")
    );
    assert_eq!(get("/app/demo").await.status, 308);
    for escape in [
        "/app/demo/../../ferrolink.db",
        "/app/demo/%2e%2e/%2e%2e/ferrolink.db",
        "/../ferrolink.db",
        "/app/demo/..%2F..%2Fferrolink.db",
    ] {
        let r = get(escape).await;
        assert!(r.status == 404 || r.status == 400, "{escape}: {}", r.status);
        assert!(!r.body.contains("SQLite"), "{escape}");
    }
    let js = get("/_/ferrolink.js").await;
    assert!(js.body.contains("export async function connect"));
    assert!(
        get("/_/ferrolink.d.ts")
            .await
            .body
            .contains("export class Link")
    );
}

#[tokio::test]
async fn browser_sessions_are_closed_with_a_reason_when_the_server_stops() {
    let server = TestServer::start().await;
    let (mut ws, _) = session(&server, None).await;
    server.shutdown().await;
    let (fatal, _) = ws.recv_until_closed().await;
    assert!(fatal.unwrap_or_default().contains("shutting down"));
}

#[tokio::test]
async fn behind_a_proxy_the_public_origin_is_the_one_pages_come_from() {
    let server =
        TestServer::start_with(|c| c.public_origin = Some("https://app.example".to_owned())).await;
    let url = server.session_url("demo");
    let mut ws = RawClient::connect_with_headers(&url, &[("origin", "https://app.example")])
        .await
        .expect("the public origin may open sessions");
    assert!(ws.recv_json().await["session"].is_object());
    assert_eq!(
        RawClient::connect_with_headers(&url, &[("origin", "https://other.example")])
            .await
            .err(),
        Some(403)
    );
    let r = request(
        server.addr(),
        "POST",
        "/_/auth/signup?app=demo",
        &[
            ("origin", "https://app.example"),
            ("content-type", "application/json"),
        ],
        Some(r#"{"email":"p@example.org","password":"proxy pass"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.set_cookies().join("").contains("; Secure"),
        "https origin: Secure cookies"
    );
}

/// App pages are the operators' and their users' code; they must not be
/// able to drive the dashboard. It is not on the public listener at all,
/// and its own listener accepts changes only from its own origin — not
/// from the app pages' origin, though both are on one host and browsers
/// send the operator's cookie to either port.
#[tokio::test]
async fn app_pages_cannot_reach_or_drive_the_dashboard() {
    let server = TestServer::start().await;
    for path in [
        "/_/admin",
        "/_/admin/",
        "/_/admin/api/state",
        "/_/admin/admin.js",
    ] {
        let r = request(server.addr(), "GET", path, &[], None).await;
        assert_eq!(r.status, 404, "{path} on the public listener: {}", r.body);
    }
    let r = request(
        server.addr(),
        "POST",
        "/_/admin/api/keys",
        &[("content-type", "application/json")],
        Some(r#"{"app":"demo","privilege":"server"}"#),
    )
    .await;
    assert!(
        r.status == 404 || r.status == 405,
        "{}: {}",
        r.status,
        r.body
    );
    assert!(!r.body.contains("flk_"), "{}", r.body);
    assert_ne!(server.admin_origin(), server.origin());

    let (session, csrf) = operator_login(&server).await;
    let create = |origin: String| {
        let (session, csrf, addr) = (session.clone(), csrf.clone(), server.admin_addr());
        async move {
            request(
                addr,
                "POST",
                "/_/admin/api/keys",
                &[
                    ("origin", &origin),
                    ("cookie", &session),
                    ("content-type", "application/json"),
                    ("x-csrf-token", &csrf),
                ],
                Some(r#"{"app":"demo","privilege":"server","device":"from-a-page"}"#),
            )
            .await
        }
    };
    // A script on an app page holds everything but the right origin.
    let refused = create(server.origin()).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("may not use the dashboard"),
        "{}",
        refused.body
    );
    assert!(refused.json().get("key").is_none());
    // The control: the same request from the dashboard's own page works.
    let made = create(server.admin_origin()).await;
    assert_eq!(made.status, 200, "{}", made.body);
    assert!(made.json()["key"].is_string());
}

/// Logs an operator in through the dashboard's form; returns the session
/// cookie and the CSRF token the API wants with every change.
pub(crate) async fn operator_login(server: &TestServer) -> (String, String) {
    server.create_operator("ops", "operator password");
    let (addr, origin) = (server.admin_addr(), server.admin_origin());
    let form = request(addr, "GET", "/_/admin", &[], None).await;
    let csrf_cookie = form.cookie("flk_csrf").unwrap();
    let token = csrf_cookie.split_once('=').unwrap().1.to_owned();
    let ok = request(
        addr,
        "POST",
        "/_/admin/login",
        &[
            ("origin", &origin),
            ("content-type", "application/x-www-form-urlencoded"),
            ("cookie", &csrf_cookie),
        ],
        Some(&format!("name=ops&password=operator+password&csrf={token}")),
    )
    .await;
    let session = ok.cookie("flk_admin").expect("operator session");
    let page = request(addr, "GET", "/_/admin", &[("cookie", &session)], None).await;
    let csrf = page
        .body
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    (session, csrf)
}

#[tokio::test]
async fn the_dashboard_console_is_held_to_the_in_flight_bound() {
    let server = TestServer::start_with(|c| {
        c.max_pending_calls = 2;
        c.call_timeout = Duration::from_secs(3);
    })
    .await;
    let (mut provider, _) = RawClient::authenticated(&server.url(), &server.server_key).await;
    provider.register("hang").await;
    let (session, csrf) = operator_login(&server).await;
    let console_call = |function: &'static str| {
        let (addr, origin, session, csrf) = (
            server.admin_addr(),
            server.admin_origin(),
            session.clone(),
            csrf.clone(),
        );
        async move {
            let r = request(
                addr,
                "POST",
                "/_/admin/api/call",
                &[
                    ("origin", &origin),
                    ("cookie", &session),
                    ("content-type", "application/json"),
                    ("x-csrf-token", &csrf),
                ],
                Some(&json!({"app": "demo", "function": function, "args": "[]"}).to_string()),
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()
        }
    };
    // Two calls the provider never answers fill the console's slots ...
    let first = tokio::spawn(console_call("hang"));
    let second = tokio::spawn(console_call("hang"));
    for _ in 0..2 {
        let got = provider.recv_json().await;
        assert_eq!(got["command"], "hang", "{got}");
    }
    // ... so a third is refused at once, by the same admission as uplinks.
    let started = std::time::Instant::now();
    let third = console_call("hang").await;
    assert_eq!(
        third["error"]["type"], "anvil.server.QuotaExceededError",
        "{third}"
    );
    assert!(
        third["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 calls are already in flight"),
        "{third}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // The held calls end at their deadline and free their slots.
    for held in [first.await.unwrap(), second.await.unwrap()] {
        assert_eq!(held["error"]["type"], "anvil.server.TimeoutError", "{held}");
    }
    let again = tokio::spawn(console_call("hang"));
    let got = provider.recv_json().await;
    assert_eq!(
        got["command"], "hang",
        "a freed slot admits a call again: {got}"
    );
    let id = got["id"].as_str().unwrap().to_owned();
    provider
        .send_json(&json!({"id": id, "response": "done"}))
        .await;
    assert_eq!(again.await.unwrap()["response"], "done");
}
