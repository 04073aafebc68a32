//! The browser side: app front ends, the browser client module, the
//! session websocket, user sign-up/log-in, and the headers every response
//! carries. See docs/web.md.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};

use crate::edge::limits::Held;
use crate::web::passwords;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use tower::ServiceExt as _;

use crate::auth;
use crate::calls::peer::BrowserSession;
use crate::state::ServerState;
use crate::storage::{AppRecord, Store, StoreError};
use crate::web::http::{ApiError, blocking, check_origin, cookie, set_cookie};

/// How long a user stays logged in.
const USER_SESSION_SECS: i64 = 30 * 86_400;

pub(crate) const CLIENT_JS: &str = include_str!("../../../../web/ferrolink.js");
pub(crate) const CLIENT_DTS: &str = include_str!("../../../../web/ferrolink.d.ts");

#[derive(Deserialize)]
pub(crate) struct AppQuery {
    app: Option<String>,
}

/// The app a browser request is for: `?app=NAME`, or the default app (the
/// only app with a front end, else the only app).
pub(crate) async fn resolve_app(
    state: &Arc<ServerState>,
    name: Option<String>,
) -> Result<AppRecord, ApiError> {
    let data_dir = state.config.data_dir.clone();
    blocking(state, move |store| match name {
        Some(name) => store.app(&name),
        None => {
            let apps = store.apps()?;
            let with_site: Vec<&AppRecord> = apps
                .iter()
                .filter(|a| {
                    crate::web::sites::site_dir(&data_dir, &a.name)
                        .join("index.html")
                        .is_file()
                })
                .collect();
            match (with_site.as_slice(), apps.as_slice()) {
                ([one], _) => Ok((*one).clone()),
                ([], [one]) => Ok(one.clone()),
                _ => Err(StoreError::NoSuchApp(
                    "(none given: this server hosts several apps, pass ?app=NAME)".to_owned(),
                )),
            }
        }
    })
    .await
}

fn user_cookie(app: &str) -> String {
    format!("flk_u_{app}")
}

/// The email of the user whose login cookie for `app` the request carries.
async fn cookie_user(
    state: &Arc<ServerState>,
    headers: &HeaderMap,
    app: &str,
) -> Result<Option<String>, ApiError> {
    let Some(token) = cookie(headers, &user_cookie(app)) else {
        return Ok(None);
    };
    let hash = auth::token_hash(token);
    let app = app.to_owned();
    blocking(state, move |s| s.user_session(&app, &hash)).await
}

/// `GET /_/session`: upgrades to a browser session websocket.
pub(crate) async fn session_endpoint(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<AppQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let headers = req.headers().clone();
    check_origin(&state, &headers)?;
    let app = resolve_app(&state, q.app).await?;
    let email = cookie_user(&state, &headers, &app.name).await?;
    // The login it belongs to (logging out closes it), if a user is in.
    let login = cookie(&headers, &user_cookie(&app.name))
        .filter(|_| email.is_some())
        .map(auth::token_hash);
    // One logged-in browser session, or one address for anonymous ones.
    let who = match login {
        Some(hash) => format!("user:{hash:x?}"),
        None => format!("anonymous:{}", crate::edge::limits::block(peer.ip())),
    };
    let limit = state.config.limits.per_browser;
    let Some(place) = state.browsers.take(who, limit) else {
        return Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "this browser already has {limit} live sessions (the most allowed); close some tabs (operators: --max-sessions-per-browser)"
            ),
        ));
    };
    let held = Held {
        browser: Some(Box::new(place)),
        ..Held::default()
    };
    state
        .app(&app.name)
        .set_anonymous_calls(app.anonymous_calls);
    let browser = BrowserSession {
        id: auth::new_token()[..22].to_owned(),
        email,
        channels: std::sync::Mutex::default(),
        elsewhere: false,
        login,
    };
    let st = state.clone();
    Ok(crate::web::websocket::upgrade(
        req,
        &st,
        peer,
        held,
        move |io, first, held| {
            crate::calls::driver::serve_browser(state, io, first, peer, app.name, browser, held)
        },
    ))
}

#[derive(Deserialize)]
pub(crate) struct Credentials {
    email: String,
    password: String,
}

fn logged_in(state: &ServerState, app: &str, token: &str, email: &str) -> Response {
    let mut res = Json(serde_json::json!({ "user": email })).into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(
            crate::web::http::secure(state),
            &user_cookie(app),
            token,
            "/",
            "Lax",
            USER_SESSION_SECS,
        ),
    );
    res
}

async fn start_user_session(state: &Arc<ServerState>, user_id: i64) -> Result<String, ApiError> {
    let token = auth::new_token();
    let hash = auth::token_hash(&token);
    let expires = crate::clock::unix_ms() as i64 / 1000 + USER_SESSION_SECS;
    blocking(state, move |s| {
        s.create_user_session(user_id, &hash, expires)
    })
    .await?;
    Ok(token)
}

/// `POST /_/auth/signup` with `{"email", "password"}`.
pub(crate) async fn signup(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<AppQuery>,
    headers: HeaderMap,
    Json(c): Json<Credentials>,
) -> Result<Response, ApiError> {
    check_origin(&state, &headers)?;
    let app = resolve_app(&state, q.app).await?;
    if !app.signup {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "app \"{}\" does not take sign-ups; ask its operator for an account",
                app.name
            ),
        ));
    }
    let bad = |e: auth::CredentialError| ApiError(StatusCode::BAD_REQUEST, e.to_string());
    let email = auth::normalize_email(&c.email).map_err(bad)?;
    auth::check_password(&c.password).map_err(bad)?;
    let hash = passwords::sign_up(&state, peer.ip(), c.password)
        .await
        .map_err(passwords::NotChecked::api_error)?;
    let (name, e2) = (app.name.clone(), email.clone());
    let id = blocking(&state, move |s| s.create_user(&name, &e2, &hash)).await?;
    let token = start_user_session(&state, id).await?;
    tracing::info!(app = %app.name, "user signed up");
    Ok(logged_in(&state, &app.name, &token, &email))
}

/// `POST /_/auth/login` with `{"email", "password"}`.
pub(crate) async fn login(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<AppQuery>,
    headers: HeaderMap,
    Json(c): Json<Credentials>,
) -> Result<Response, ApiError> {
    check_origin(&state, &headers)?;
    let app = resolve_app(&state, q.app).await?;
    let email = auth::normalize_email(&c.email).unwrap_or_default();
    let attempt = passwords::admit(&state, peer.ip(), format!("user:{}/{email}", app.name))
        .map_err(passwords::NotChecked::api_error)?;
    let (name, e2) = (app.name.clone(), email.clone());
    let user = blocking(&state, move |s| s.user(&name, &e2)).await?;
    let ok = attempt
        .verify(c.password, user.as_ref().map(|u| u.password.clone()))
        .await
        .map_err(passwords::NotChecked::api_error)?;
    match user {
        Some(user) if ok => {
            let token = start_user_session(&state, user.id).await?;
            Ok(logged_in(&state, &app.name, &token, &user.email))
        }
        _ => {
            tracing::info!(app = %app.name, %peer, "failed user login");
            Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "wrong email or password".to_owned(),
            ))
        }
    }
}

/// `POST /_/auth/logout`.
pub(crate) async fn logout(
    State(state): State<Arc<ServerState>>,
    Query(q): Query<AppQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_origin(&state, &headers)?;
    let app = resolve_app(&state, q.app).await?;
    let name = user_cookie(&app.name);
    if let Some(token) = cookie(&headers, &name) {
        let hash = auth::token_hash(token);
        blocking(&state, move |s| s.delete_user_session(&hash)).await?;
        // The login's open pages (every tab, on every server) are logged
        // out too: their session websockets close and reopen anonymous.
        let closed = state.app(&app.name).close_login(&hash);
        if let Some(cluster) = state.cluster.get() {
            cluster.publish_logout(&app.name, &hash);
        }
        tracing::info!(app = %app.name, sessions = closed, "user logged out");
    }
    let mut res = Json(serde_json::json!({ "user": null })).into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(crate::web::http::secure(&state), &name, "", "/", "Lax", 0),
    );
    Ok(res)
}

/// `GET /_/auth/me`: the logged-in user of the app, or null.
pub(crate) async fn me(
    State(state): State<Arc<ServerState>>,
    Query(q): Query<AppQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let app = resolve_app(&state, q.app).await?;
    let email = cookie_user(&state, &headers, &app.name).await?;
    Ok(Json(serde_json::json!({
        "app": app.name,
        "user": email,
        "signup": app.signup,
        "anonymous_calls": app.anonymous_calls,
    }))
    .into_response())
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /_/ferrolink.js`.
pub(crate) async fn client_js() -> Response {
    asset("text/javascript; charset=utf-8", CLIENT_JS)
}

/// `GET /_/ferrolink.d.ts`.
pub(crate) async fn client_dts() -> Response {
    asset("application/typescript; charset=utf-8", CLIENT_DTS)
}

/// `GET /app/NAME`: to the folder URL, so relative links work.
pub(crate) async fn app_root(Path(name): Path<String>) -> Redirect {
    let mut to = String::from("/app/");
    to.push_str(&percent_path(&name));
    to.push('/');
    Redirect::permanent(&to)
}

fn percent_path(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `GET /app/NAME/PATH`: a file of the app's front end.
pub(crate) async fn app_file(
    State(state): State<Arc<ServerState>>,
    Path((name, rest)): Path<(String, String)>,
    req: Request,
) -> Response {
    if crate::storage::validate_name("app name", &name).is_err() {
        return StatusCode::NOT_FOUND.into_response();
    }
    serve_site(&state, &name, &format!("/{rest}"), req).await
}

/// `GET /app/NAME/`.
pub(crate) async fn app_index(
    State(state): State<Arc<ServerState>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    if crate::storage::validate_name("app name", &name).is_err() {
        return StatusCode::NOT_FOUND.into_response();
    }
    serve_site(&state, &name, "/", req).await
}

/// Any other `GET`: the default app's front end, or the status text at `/`.
pub(crate) async fn fallback(State(state): State<Arc<ServerState>>, req: Request) -> Response {
    if req.method() != axum::http::Method::GET && req.method() != axum::http::Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").into_response();
    }
    let path = req.uri().path().to_owned();
    if path.starts_with("/_/admin") {
        return (
            StatusCode::NOT_FOUND,
            "the dashboard is not served on this listener: it has its own (see the \"dashboard:\" line `ferrolink serve` prints, and --admin-listen)\n",
        )
            .into_response();
    }
    if path.starts_with("/_/") {
        return (StatusCode::NOT_FOUND, "no such ferrolink endpoint\n").into_response();
    }
    match resolve_app(&state, None).await {
        Ok(app) if crate::web::sites::site_dir(&state.config.data_dir, &app.name).is_dir() => {
            serve_site(&state, &app.name, &path, req).await
        }
        _ if path == "/" => index(&state).await,
        _ => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

async fn index(state: &Arc<ServerState>) -> Response {
    let apps = blocking(state, Store::apps).await.unwrap_or_default();
    let mut text = format!(
        "ferrolink {}\nuplink endpoint: {}/_/uplink (websocket)\nauthenticated uplinks: {}\ndashboard: {}/_/admin\n",
        env!("CARGO_PKG_VERSION"),
        state.origin.replacen("http", "ws", 1),
        state.live_connections(),
        state.origin,
    );
    for app in apps {
        if crate::web::sites::site_dir(&state.config.data_dir, &app.name).is_dir() {
            text.push_str(&format!(
                "app {}: {}/app/{}/\n",
                app.name, state.origin, app.name
            ));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

async fn serve_site(state: &Arc<ServerState>, app: &str, path: &str, req: Request) -> Response {
    let dir = crate::web::sites::site_dir(&state.config.data_dir, app);
    let mut parts = req.into_parts().0;
    let Ok(uri) = path.parse::<axum::http::Uri>() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    parts.uri = uri;
    let req = Request::from_parts(parts, Body::empty());
    match tower_http::services::ServeDir::new(dir)
        .append_index_html_on_directories(true)
        .oneshot(req)
        .await
    {
        Ok(res) => res.map(Body::new),
        Err(e) => match e {},
    }
}

/// Adds the security headers to every response.
pub(crate) async fn security_headers(
    State(state): State<Arc<ServerState>>,
    req: Request,
    next: Next,
) -> Response {
    let server_page = req.uri().path().starts_with("/_/");
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let set = |h: &mut HeaderMap, name: &'static str, value: &'static str| {
        h.entry(name).or_insert(HeaderValue::from_static(value));
    };
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "same-origin");
    set(h, "cross-origin-opener-policy", "same-origin");
    if server_page {
        set(h, "x-frame-options", "DENY");
        set(
            h,
            "content-security-policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'",
        );
        set(h, "cache-control", "no-store");
    } else {
        // App pages are the operator's own code: framing and plugins are
        // limited, scripts are theirs to choose.
        set(h, "x-frame-options", "SAMEORIGIN");
        set(
            h,
            "content-security-policy",
            "frame-ancestors 'self'; base-uri 'self'; object-src 'none'",
        );
    }
    if matches!(
        state.config.tls,
        Some(
            crate::edge::certificates::TlsSetting::Files { .. }
                | crate::edge::certificates::TlsSetting::Acme(_)
        )
    ) {
        set(h, "strict-transport-security", "max-age=31536000");
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; flk_u_demo=tok; flk_u_demo2=x"),
        );
        assert_eq!(cookie(&h, "flk_u_demo"), Some("tok"));
        assert_eq!(cookie(&h, "flk_u"), None);
    }

    #[test]
    fn app_paths_are_escaped() {
        assert_eq!(percent_path("a b/.."), "a%20b%2F..");
    }
}
