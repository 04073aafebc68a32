//! HTTP routes: the uplink websocket endpoints and a small status surface.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::hub::Hub;
use crate::uplink;

pub(crate) fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/_/uplink", get(uplink_endpoint))
        .route("/_/uplink/{*rest}", get(uplink_endpoint))
        .route("/uplink", get(uplink_endpoint))
        .route("/uplink/{*rest}", get(uplink_endpoint))
        .route("/_/health", get(health))
        .route("/", get(index))
        .with_state(hub)
}

/// Upgrades to an uplink websocket. No Origin check here: the official Pico W
/// library always claims `http://localhost`; the key is the authentication.
async fn uplink_endpoint(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let limit = hub.config.max_frame_bytes;
    ws.read_buffer_size(hub.config.read_buffer_bytes)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| uplink::serve(hub, socket, peer))
}

async fn health(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    let body = format!(
        "{{\"status\":\"ok\",\"uplinks\":{}}}",
        hub.live_connections()
    );
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
}

async fn index(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    format!(
        "ferrolink {}\nuplink endpoint: {}/_/uplink (websocket)\nauthenticated uplinks: {}\n",
        env!("CARGO_PKG_VERSION"),
        hub.origin.replacen("http", "ws", 1),
        hub.live_connections()
    )
}
