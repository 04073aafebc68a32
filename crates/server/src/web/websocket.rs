//! The websocket opening handshake (RFC 6455 section 4.2), answered here
//! so the connection continues on ferrolink's own framing
//! (`calls::link`) rather than a general websocket library.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::calls::link::Stream;
use crate::edge::Connection;
use crate::edge::limits::Held;
use crate::state::ServerState;

/// Whether header `name` holds `token` in its comma-separated list
/// (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, format!("{why}\n")).into_response()
}

/// Checks `req` is a websocket opening request and answers `101 Switching
/// Protocols`; `run` gets the stream (and any bytes read past the
/// request) once hyper hands the connection over, with `held`: the places
/// the connection holds against the limits (a client behind a trusted
/// proxy, `client`, is counted here). Anything else is answered with what
/// was wrong.
pub(crate) fn upgrade<F, Fut>(
    mut req: Request,
    state: &ServerState,
    client: std::net::SocketAddr,
    mut held: Held,
    run: F,
) -> Response
where
    F: FnOnce(Stream, bytes::Bytes, Held) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    if let Some(conn) = req.extensions().get::<Connection>() {
        held.tcp = Some(conn.slot.clone());
        if conn.via_proxy {
            match state.connections.forwarded(client.ip(), state.now()) {
                Ok(slot) => held.forwarded = Some(Box::new(slot)),
                Err(refusal) => {
                    return refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &refusal.text(state.connections.limits()),
                    );
                }
            }
        }
    }
    let headers = req.headers();
    if req.method() != axum::http::Method::GET
        || !has_token(headers, header::UPGRADE, "websocket")
        || !has_token(headers, header::CONNECTION, "upgrade")
    {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks websocket: send GET with Upgrade: websocket",
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut res = refuse(
            StatusCode::BAD_REQUEST,
            "unsupported websocket version; use 13 (RFC 6455)",
        );
        res.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return res;
    }
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(HeaderValue::as_bytes)
        .filter(|k| !k.is_empty() && k.len() <= 64)
    else {
        return refuse(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let accept = ferrolink_proto::ws::accept_key(key);
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "this connection cannot be upgraded (HTTP/1.1 is needed)",
        );
    };
    held.socket = Some(state.connections.websocket());
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let (stream, first) = Stream::from_upgraded(upgraded);
                run(stream, first, held).await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_bytes(&accept).expect("base64 is a valid header value"),
    );
    res
}
