//! The web side: the route table over the browser pages, the dashboard,
//! app sites and accounts, with shared HTTP helpers (`http`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::calls::driver as uplink;
use crate::edge::limits::Held;
use crate::state::ServerState;

pub(crate) mod api;
pub(crate) mod browser;
pub(crate) mod dashboard;
pub(crate) mod dashboard_tables;
pub(crate) mod http;
pub(crate) mod passwords;
pub mod sites;
pub(crate) mod websocket;

use browser as web;
use dashboard as admin;

/// The public listener: uplinks, browser sessions, accounts and app sites.
/// The dashboard is not here (see [`admin_router`]).
pub(crate) fn router(state: Arc<ServerState>) -> Router {
    use axum::routing::post;
    let routes = Router::new()
        .route("/_/uplink", get(uplink_endpoint))
        .route("/_/uplink/{*rest}", get(uplink_endpoint))
        .route("/uplink", get(uplink_endpoint))
        .route("/uplink/{*rest}", get(uplink_endpoint))
        .route("/_/health", get(health))
        .route("/_/ready", get(ready))
        .route("/_/api/call/{function}", post(api::call))
        .route("/_/api/openapi.json", get(api::openapi))
        .route("/_/ferrolink.js", get(web::client_js))
        .route("/_/ferrolink.d.ts", get(web::client_dts))
        .route("/_/session", get(web::session_endpoint))
        .route("/_/auth/signup", post(web::signup))
        .route("/_/auth/login", post(web::login))
        .route("/_/auth/logout", post(web::logout))
        .route("/_/auth/me", get(web::me))
        .route("/app/{name}", get(web::app_root))
        .route("/app/{name}/", get(web::app_index))
        .route("/app/{name}/{*rest}", get(web::app_file))
        .fallback(web::fallback);
    served(routes, state)
}

/// The dashboard's own listener: the dashboard and its API at `/_/admin`,
/// and nothing else. Its origin differs from the app pages' (another
/// port, or another address), so no app script can read its pages or
/// send it requests it accepts.
pub(crate) fn admin_router(state: Arc<ServerState>) -> Router {
    use axum::routing::post;
    let routes = Router::new()
        .route(
            "/",
            get(|| async { axum::response::Redirect::to("/_/admin") }),
        )
        .route("/_/health", get(health))
        .route("/_/ready", get(ready))
        .route("/_/metrics", get(metrics))
        .route("/_/admin", get(admin::page))
        .route("/_/admin/", get(admin::page))
        .route("/_/admin/login", post(admin::login))
        .route("/_/admin/logout", post(admin::logout))
        .route("/_/admin/admin.js", get(admin::script))
        .route("/_/admin/admin.css", get(admin::style))
        .route("/_/admin/api/state", get(admin::overview))
        .route("/_/admin/api/live", get(admin::live))
        .route("/_/admin/api/keys", post(admin::create_key))
        .route("/_/admin/api/keys/revoke", post(admin::revoke_key))
        .route("/_/admin/api/apps", post(admin::create_app))
        .route("/_/admin/api/apps/settings", post(admin::app_settings))
        .route("/_/admin/api/call", post(admin::call))
        .route(
            "/_/admin/api/tables",
            get(dashboard_tables::list).post(dashboard_tables::create),
        )
        .route(
            "/_/admin/api/tables/columns",
            post(dashboard_tables::add_column),
        )
        .route("/_/admin/api/tables/access", post(dashboard_tables::access))
        .route("/_/admin/api/tables/rename", post(dashboard_tables::rename))
        .route("/_/admin/api/tables/drop", post(dashboard_tables::drop))
        .route("/_/admin/api/tables/rows", post(dashboard_tables::rows))
        .route("/_/admin/api/tables/chart", post(dashboard_tables::chart))
        .route("/_/admin/api/tables/csv", get(dashboard_tables::export))
        .route(
            "/_/admin/api/tables/import",
            post(dashboard_tables::import).layer(axum::extract::DefaultBodyLimit::max(
                dashboard_tables::IMPORT_BYTES,
            )),
        );
    served(routes, state)
}

/// A listener of its own for Prometheus (`--metrics-listen`): `/_/metrics`
/// and the health checks, nothing else.
pub(crate) fn metrics_router(state: Arc<ServerState>) -> Router {
    let routes = Router::new()
        .route("/_/metrics", get(metrics))
        .route("/metrics", get(metrics))
        .route("/_/health", get(health))
        .route("/_/ready", get(ready));
    served(routes, state)
}

/// `GET /_/metrics`: Prometheus text format.
async fn metrics(State(state): State<Arc<ServerState>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&state),
    )
}

/// `GET /_/ready`: 200 when the server takes work — its database answers
/// and it is not shutting down; 503 with the reason otherwise (for load
/// balancers and orchestrators; `/_/health` only says the process is up).
async fn ready(State(state): State<Arc<ServerState>>) -> Response {
    let unready = |why: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "ready": false, "reason": why }).to_string(),
        )
            .into_response()
    };
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return unready("the server is shutting down");
    }
    let store = state.store.clone();
    let check = tokio::task::spawn_blocking(move || store.ping());
    match tokio::time::timeout(std::time::Duration::from_secs(2), check).await {
        Ok(Ok(Ok(()))) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            r#"{"ready":true}"#,
        )
            .into_response(),
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "readiness check: the database does not answer");
            unready("the database does not answer (see the server's log)")
        }
        _ => unready("the database did not answer within 2 s"),
    }
}

/// What every listener's routes get: security headers on the answers and
/// the `Host` check on the requests (the layer added last runs first).
fn served(routes: Router<Arc<ServerState>>, state: Arc<ServerState>) -> Router {
    routes
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            web::security_headers,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            check_host,
        ))
        .with_state(state)
}

/// Upgrades to an uplink websocket. No Origin check here: the official Pico W
/// library always claims `http://localhost`; the key is the authentication.
async fn uplink_endpoint(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let st = state.clone();
    websocket::upgrade(req, &st, peer, Held::default(), move |io, first, held| {
        uplink::serve_uplink(state, io, first, peer, held)
    })
}

async fn health(State(state): State<Arc<ServerState>>) -> impl IntoResponse {
    // In a cluster: this server's id and whether NATS is connected.
    let cluster = state.cluster.get().map_or(String::new(), |c| {
        format!(
            ",\"node\":\"{}\",\"cluster\":\"{}\"",
            c.node(),
            if c.connected() {
                "connected"
            } else {
                "disconnected"
            }
        )
    });
    let body = format!(
        "{{\"status\":\"ok\",\"uplinks\":{},\"connections\":{}{cluster}}}",
        state.live_connections(),
        state.connections.open()
    );
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
}

/// Refuses requests whose `Host` names a server this is not (421). A page
/// on an attacker's domain that re-resolves to this server's private
/// address (DNS rebinding) is same-origin with itself, not with the
/// server, so it can only reach the server under its own name — which
/// this refuses. IP addresses and `localhost` are always answered.
async fn check_host(
    State(state): State<Arc<ServerState>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    match host {
        Some(host) if !state.answers_to(host) => (
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this server does not answer to the host name \"{}\"; operators: add it with --allowed-host (or --public-origin)\n",
                crate::calls::shown(host)
            ),
        )
            .into_response(),
        _ => next.run(req).await,
    }
}
