//! The web side: the route table over the browser pages, the dashboard,
//! app sites and accounts, with shared HTTP helpers (`http`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::calls::driver as uplink;
use crate::state::ServerState;

pub(crate) mod browser;
pub(crate) mod dashboard;
pub(crate) mod http;
pub mod sites;
pub(crate) mod websocket;

use browser as web;
use dashboard as admin;

pub(crate) fn router(state: Arc<ServerState>) -> Router {
    use axum::routing::post;
    Router::new()
        .route("/_/uplink", get(uplink_endpoint))
        .route("/_/uplink/{*rest}", get(uplink_endpoint))
        .route("/uplink", get(uplink_endpoint))
        .route("/uplink/{*rest}", get(uplink_endpoint))
        .route("/_/health", get(health))
        .route("/_/ferrolink.js", get(web::client_js))
        .route("/_/ferrolink.d.ts", get(web::client_dts))
        .route("/_/session", get(web::session_endpoint))
        .route("/_/auth/signup", post(web::signup))
        .route("/_/auth/login", post(web::login))
        .route("/_/auth/logout", post(web::logout))
        .route("/_/auth/me", get(web::me))
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
        .route("/app/{name}", get(web::app_root))
        .route("/app/{name}/", get(web::app_index))
        .route("/app/{name}/{*rest}", get(web::app_file))
        .fallback(web::fallback)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            web::security_headers,
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
    websocket::upgrade(req, move |io, first| {
        uplink::serve_uplink(state, io, first, peer)
    })
}

async fn health(State(state): State<Arc<ServerState>>) -> impl IntoResponse {
    let body = format!(
        "{{\"status\":\"ok\",\"uplinks\":{}}}",
        state.live_connections()
    );
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
}
