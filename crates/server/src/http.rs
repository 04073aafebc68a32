//! HTTP routes: the uplink websocket endpoints and a small status surface.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::hub::Hub;
use crate::{admin, uplink, web};

/// Accepts connections until `stop` turns true; each is served (after the
/// TLS handshake, when configured) by hyper with upgrades, so websocket
/// connections continue on their own tasks.
pub(crate) async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_timeout: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors or similar: back off briefly
                    // instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    let mut router = router.clone();
                    async move { tower::Service::call(&mut router, req).await }
                },
            );
            // A client that never finishes its request headers is dropped
            // (slowloris); websocket connections leave hyper after the upgrade.
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            match tls {
                None => {
                    let _ = http
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(tcp),
                    );
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            let _ = http
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

pub(crate) fn router(hub: Arc<Hub>) -> Router {
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
        .route("/_/admin/api/state", get(admin::state))
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
            hub.clone(),
            web::security_headers,
        ))
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
