//! The operator dashboard at `/_/admin` on its own listener (its own origin,
//! never shared with app pages): login, a live view of apps, keys,
//! devices, calls and events, and a call console. Pages and assets are
//! served from the binary; data comes from a small JSON API and a
//! server-sent event stream. Every value a device or user supplied is put
//! into the page with `textContent` by `admin.js`, never as markup.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Form, Json};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq as _;

use ferrolink_proto::message::Privilege;

use crate::activity::Activity;
use crate::auth;
use crate::state::ServerState;
use crate::storage::OperatorSession;
use crate::web::http::{ApiError, blocking, check_admin_origin, cookie, set_cookie};
use crate::web::passwords;

const SESSION_COOKIE: &str = "flk_admin";
const FORM_COOKIE: &str = "flk_csrf";
const PATH: &str = "/_/admin";
/// How long an operator stays logged in.
const SESSION_SECS: i64 = 12 * 3600;

const LOGIN_HTML: &str = include_str!("../../../../web/admin/login.html");
const INDEX_HTML: &str = include_str!("../../../../web/admin/index.html");
pub(crate) const ADMIN_JS: &str = include_str!("../../../../web/admin/admin.js");
pub(crate) const ADMIN_CSS: &str = include_str!("../../../../web/admin/admin.css");

/// Escapes text for HTML element content and attribute values.
pub(crate) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn now_secs() -> i64 {
    crate::clock::unix_ms() as i64 / 1000
}

/// The operator session of the request, if it has a live one.
async fn session(
    state: &Arc<ServerState>,
    headers: &HeaderMap,
) -> Result<Option<OperatorSession>, ApiError> {
    let Some(token) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let hash = auth::token_hash(token);
    blocking(state, move |s| s.operator_session(&hash)).await
}

pub(crate) async fn require(
    state: &Arc<ServerState>,
    headers: &HeaderMap,
) -> Result<OperatorSession, ApiError> {
    session(state, headers).await?.ok_or_else(|| {
        ApiError(
            StatusCode::UNAUTHORIZED,
            "log in to the dashboard first (your session may have expired)".to_owned(),
        )
    })
}

/// For changes: a live session, a same-origin request, and the session's
/// CSRF token in `X-CSRF-Token`.
pub(crate) async fn require_change(
    state: &Arc<ServerState>,
    headers: &HeaderMap,
) -> Result<OperatorSession, ApiError> {
    check_admin_origin(state, headers)?;
    let s = require(state, headers).await?;
    let sent = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if bool::from(sent.as_bytes().ct_eq(s.csrf.as_bytes())) {
        Ok(s)
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token; reload the dashboard".to_owned(),
        ))
    }
}

fn login_page(state: &ServerState, error: Option<&str>) -> Response {
    let token = auth::new_token();
    let error = error.map_or_else(String::new, |e| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", html_escape(e))
    });
    let page = LOGIN_HTML
        .replace("{{csrf}}", &html_escape(&token))
        .replace("{{error}}", &error);
    let mut res = Html(page).into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state.admin_https, FORM_COOKIE, &token, PATH, "Strict", 3600),
    );
    res
}

#[derive(Deserialize)]
pub(crate) struct PageQuery {
    error: Option<String>,
}

/// `GET /_/admin`: the dashboard, or the login form.
pub(crate) async fn page(
    State(state): State<Arc<ServerState>>,
    axum::extract::Query(q): axum::extract::Query<PageQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    match session(&state, &headers).await? {
        Some(s) => Ok(Html(
            INDEX_HTML
                .replace("{{csrf}}", &html_escape(&s.csrf))
                .replace("{{operator}}", &html_escape(&s.name)),
        )
        .into_response()),
        None => {
            let error = match q.error.as_deref() {
                Some("login") => Some("Wrong name or password."),
                Some("form") => Some("The form expired; please try again."),
                Some("throttled") => Some("Too many failed logins; wait a little and try again."),
                Some("busy") => {
                    Some("The server is busy checking other logins; try again in a few seconds.")
                }
                _ => None,
            };
            Ok(login_page(&state, error))
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    name: String,
    password: String,
    csrf: String,
}

/// `POST /_/admin/login`.
pub(crate) async fn login(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, ApiError> {
    check_admin_origin(&state, &headers)?;
    let expected = cookie(&headers, FORM_COOKIE).unwrap_or("");
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(form.csrf.as_bytes())) {
        return Ok(Redirect::to("/_/admin?error=form").into_response());
    }
    let name = form.name.trim().to_owned();
    let attempt = match passwords::admit(&state, peer.ip(), format!("operator:{name}")) {
        Ok(a) => a,
        Err(passwords::NotChecked::Throttled(_)) => {
            return Ok(Redirect::to("/_/admin?error=throttled").into_response());
        }
        Err(passwords::NotChecked::Busy) => {
            return Ok(Redirect::to("/_/admin?error=busy").into_response());
        }
    };
    let n2 = name.clone();
    let stored = blocking(&state, move |s| s.operator_password(&n2)).await?;
    match attempt.verify(form.password, stored).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(%peer, "failed dashboard login");
            return Ok(Redirect::to("/_/admin?error=login").into_response());
        }
        Err(_) => return Ok(Redirect::to("/_/admin?error=busy").into_response()),
    }
    let token = auth::new_token();
    let hash = auth::token_hash(&token);
    let csrf = auth::new_token();
    let n2 = name.clone();
    blocking(&state, move |s| {
        s.create_operator_session(&n2, &hash, &csrf, now_secs() + SESSION_SECS)
    })
    .await?;
    tracing::info!(operator = %name, %peer, "operator logged in");
    let mut res = Redirect::to(PATH).into_response();
    let h = res.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(
            state.admin_https,
            SESSION_COOKIE,
            &token,
            PATH,
            "Strict",
            SESSION_SECS,
        ),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(state.admin_https, FORM_COOKIE, "", PATH, "Strict", 0),
    );
    Ok(res)
}

#[derive(Deserialize)]
pub(crate) struct LogoutForm {
    csrf: String,
}

/// `POST /_/admin/logout`.
pub(crate) async fn logout(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Result<Response, ApiError> {
    check_admin_origin(&state, &headers)?;
    if let (Some(s), Some(token)) = (
        session(&state, &headers).await?,
        cookie(&headers, SESSION_COOKIE),
    ) && bool::from(s.csrf.as_bytes().ct_eq(form.csrf.as_bytes()))
    {
        let hash = auth::token_hash(token);
        blocking(&state, move |st| st.delete_operator_session(&hash)).await?;
    }
    let mut res = Redirect::to(PATH).into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state.admin_https, SESSION_COOKIE, "", PATH, "Strict", 0),
    );
    Ok(res)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// `GET /_/admin/admin.js`.
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", ADMIN_JS)
}

/// `GET /_/admin/admin.css`.
pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", ADMIN_CSS)
}

/// `GET /_/admin/api/state`: everything the dashboard shows.
pub(crate) async fn overview(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let op = require(&state, &headers).await?;
    let (apps, keys) = blocking(&state, |s| Ok((s.apps()?, s.keys(None)?))).await?;
    let runtimes: HashMap<String, _> = state.app_runtimes().into_iter().collect();
    // In a cluster, the other servers' uplinks too (each entry says which
    // server holds it).
    let (elsewhere, nodes) = match state.cluster.get() {
        Some(c) => c.uplinks_elsewhere().await,
        None => (Vec::new(), Vec::new()),
    };
    let mut devices = crate::activity::uplinks(&state);
    let here = devices.len();
    devices.extend(elsewhere);
    let apps: Vec<Value> = apps
        .iter()
        .map(|a| {
            let rt = runtimes.get(&a.name);
            // Who provides each name, here and on the other servers.
            let mut provided: std::collections::BTreeMap<String, Vec<String>> = rt
                .map(|r| r.functions())
                .unwrap_or_default()
                .into_iter()
                .collect();
            for d in devices[here..].iter().filter(|d| d["app"] == a.name.as_str()) {
                let who = d["device"]
                    .as_str()
                    .map_or_else(|| format!("key {}", d["key"].as_str().unwrap_or("?")), str::to_owned);
                for f in d["functions"].as_array().into_iter().flatten() {
                    if let Some(f) = f.as_str() {
                        provided.entry(f.to_owned()).or_default().push(who.clone());
                    }
                }
            }
            let functions: Vec<Value> = provided
                .into_iter()
                .map(|(name, providers)| {
                    // Served by more than one device: calls are shared
                    // between them, which may be meant (a pool) or may be
                    // a device registering what it should not.
                    let mut devices = providers.clone();
                    devices.sort();
                    devices.dedup();
                    json!({
                        "name": name,
                        "providers": providers.len(),
                        "provided_by": providers,
                        "shared": devices.len() > 1,
                    })
                })
                .collect();
            json!({
                "name": a.name,
                "created_at": a.created_at,
                "anonymous_calls": a.anonymous_calls,
                "auto_columns": a.auto_columns,
                "signup": a.signup,
                "site": crate::web::sites::site_dir(&state.config.data_dir, &a.name).join("index.html").is_file(),
                "url": format!("{}/app/{}/", state.origin, a.name),
                "sessions": rt.map_or(0, |r| r.browser_count()),
                "functions": functions,
            })
        })
        .collect();
    let last_seen = state.last_seen();
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| {
            let seen = last_seen.get(&k.id);
            json!({
                "id": k.id.0,
                "app": k.app,
                "privilege": encode_privilege(k.privilege),
                "device": k.device,
                "created_at": k.created_at,
                "revoked_at": k.revoked_at,
                "online": devices.iter().filter(|d| d["key"] == k.id.0.as_str()).count(),
                "last_seen_ms": seen.map(|s| s.0),
                "last_address": seen.map(|s| s.1.clone()),
            })
        })
        .collect();
    Ok(Json(json!({
        "operator": op.name,
        "origin": state.origin,
        "apps": apps,
        "keys": keys,
        "devices": devices,
        // This server's id in its cluster (`null` alone), and the others
        // that answered with their uplinks.
        "node": state.cluster.get().map(|c| c.node()),
        "nodes": nodes,
        "calls": state.monitor.recent_calls(),
        "calls_not_logged": state.monitor.unrecorded_calls(),
        "connections": {
            "open": state.connections.open(),
            "limits": {
                "total": state.config.limits.total,
                "per_address": state.config.limits.per_address,
                "per_key": state.config.limits.per_key,
                "per_browser": state.config.limits.per_browser,
            },
        },
        "events": state.monitor.recent_events(),
    })))
}

fn encode_privilege(p: Privilege) -> &'static str {
    match p {
        Privilege::Server => "server",
        Privilege::Client => "client",
    }
}

/// `GET /_/admin/api/live`: server-sent events `call`, `event` and
/// `changed`.
pub(crate) async fn live(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require(&state, &headers).await?;
    let rx = state.monitor.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(Activity::Call(c)) => Event::default().event("call").json_data(&*c).ok()?,
            Ok(Activity::Event(e)) => Event::default().event("event").json_data(&*e).ok()?,
            // Fell behind: the page reloads its state instead.
            Ok(Activity::Changed) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                Event::default().event("changed").data("{}")
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(event), rx))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[derive(Deserialize)]
pub(crate) struct NewKey {
    app: String,
    privilege: String,
    device: Option<String>,
}

/// `POST /_/admin/api/keys`: creates a key; the secret is in this answer only.
pub(crate) async fn create_key(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Json(k): Json<NewKey>,
) -> Result<Json<Value>, ApiError> {
    let op = require_change(&state, &headers).await?;
    let privilege = crate::keys::parse_privilege(&k.privilege).ok_or_else(|| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "privilege must be \"server\" or \"client\"".to_owned(),
        )
    })?;
    let device = k.device.filter(|d| !d.trim().is_empty());
    let (record, secret) = blocking(&state, move |s| {
        s.create_key(&k.app, privilege, device.as_deref())
    })
    .await?;
    tracing::info!(operator = %op.name, key = %record.id, app = %record.app, "key created from the dashboard");
    state.monitor.changed();
    Ok(Json(json!({ "id": record.id.0, "key": secret.expose() })))
}

#[derive(Deserialize)]
pub(crate) struct RevokeKey {
    id: String,
}

/// `POST /_/admin/api/keys/revoke`: revokes a key and closes its connections.
pub(crate) async fn revoke_key(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Json(r): Json<RevokeKey>,
) -> Result<Json<Value>, ApiError> {
    let op = require_change(&state, &headers).await?;
    let h2 = state.clone();
    let (record, closed) = blocking(&state, move |s| {
        let record = s.revoke(&r.id)?;
        Ok((record, h2.refresh_keys()?))
    })
    .await?;
    tracing::info!(operator = %op.name, key = %record.id, closed, "key revoked from the dashboard");
    state.monitor.changed();
    Ok(Json(json!({ "id": record.id.0, "closed": closed })))
}

#[derive(Deserialize)]
pub(crate) struct NewApp {
    name: String,
}

/// `POST /_/admin/api/apps`: creates an app.
pub(crate) async fn create_app(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Json(a): Json<NewApp>,
) -> Result<Json<Value>, ApiError> {
    require_change(&state, &headers).await?;
    let app = blocking(&state, move |s| s.create_app(&a.name)).await?;
    state.monitor.changed();
    Ok(Json(json!({ "name": app.name })))
}

#[derive(Deserialize)]
pub(crate) struct AppSettings {
    name: String,
    anonymous_calls: Option<bool>,
    signup: Option<bool>,
    auto_columns: Option<bool>,
}

/// `POST /_/admin/api/apps/settings`.
pub(crate) async fn app_settings(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Json(a): Json<AppSettings>,
) -> Result<Json<Value>, ApiError> {
    require_change(&state, &headers).await?;
    let app = blocking(&state, move |s| {
        let app = s.set_app(&a.name, a.anonymous_calls, a.signup)?;
        match a.auto_columns {
            Some(on) => s.set_auto_columns(&a.name, on),
            None => Ok(app),
        }
    })
    .await?;
    state
        .app(&app.name)
        .set_anonymous_calls(app.anonymous_calls);
    state.monitor.changed();
    Ok(Json(
        json!({ "name": app.name, "anonymous_calls": app.anonymous_calls, "signup": app.signup }),
    ))
}

#[derive(Deserialize)]
pub(crate) struct ConsoleCall {
    app: String,
    function: String,
    /// JSON text of the positional arguments (a list).
    args: String,
    /// JSON text of the keyword arguments (an object), if any.
    kwargs: Option<String>,
    device: Option<String>,
}

/// `POST /_/admin/api/call`: calls a function as the app's server would,
/// and answers `{"response": ...}` or `{"error": {...}}`.
pub(crate) async fn call(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Json(c): Json<ConsoleCall>,
) -> Result<Json<Value>, ApiError> {
    let op = require_change(&state, &headers).await?;
    let bad = |what: &str| ApiError(StatusCode::BAD_REQUEST, what.to_owned());
    let args = if c.args.trim().is_empty() {
        "[]"
    } else {
        c.args.trim()
    };
    let args: Value =
        serde_json::from_str(args).map_err(|e| bad(&format!("arguments are not JSON: {e}")))?;
    let args = match args {
        Value::Array(_) => args,
        one => Value::Array(vec![one]),
    };
    let kwargs: Value = match c.kwargs.as_deref().map(str::trim).filter(|k| !k.is_empty()) {
        Some(k) => serde_json::from_str(k)
            .map_err(|e| bad(&format!("keyword arguments are not JSON: {e}")))?,
        None => json!({}),
    };
    if !kwargs.is_object() {
        return Err(bad("keyword arguments must be a JSON object"));
    }
    let app = blocking(&state, move |s| s.app(&c.app)).await?;
    let function = match c.device.filter(|d| !d.is_empty()) {
        Some(device) => format!("{}@{device}", c.function),
        None => c.function,
    };
    tracing::info!(operator = %op.name, app = %app.name, function = %crate::calls::shown(&function), "console call");
    let console = state.console(&app.name);
    Ok(Json(
        console
            .call(&state, &function, &args.to_string(), &kwargs.to_string())
            .await,
    ))
}

#[cfg(test)]
mod tests {
    use super::html_escape;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            html_escape("<script>\"a\"&'b'</script>"),
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;&lt;/script&gt;"
        );
    }
}
