//! HTTP helpers shared by the browser side and the dashboard: errors as
//! JSON, database work off the async threads, cookies, the Origin check.

use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::state::ServerState;
use crate::storage::{Store, StoreError};

/// A failure answered to a browser as `{"error": message}`.
#[derive(Debug)]
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchApp(_) => Self(StatusCode::NOT_FOUND, e.to_string()),
            StoreError::UserExists { .. }
            | StoreError::AppExists(_)
            | StoreError::DeviceTaken { .. }
            | StoreError::Conflict => Self(StatusCode::CONFLICT, e.to_string()),
            StoreError::InvalidName { .. }
            | StoreError::BadTable(_)
            | StoreError::NoSuchColumn(_)
            | StoreError::NoSuchKey(_)
            | StoreError::Ambiguous { .. } => Self(StatusCode::BAD_REQUEST, e.to_string()),
            e => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "storage failed");
                Self(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the server could not read or write its database; see its log".to_owned(),
                )
            }
        }
    }
}

/// Runs `f` on the database off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    state: &Arc<ServerState>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&state.store))
        .await
        .map_err(|_| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error".to_owned(),
            )
        })?
        .map_err(ApiError::from)
}

/// The value of cookie `name` in the request.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether cookies must be `Secure` (the server is reached over https).
pub(crate) fn secure(state: &ServerState) -> bool {
    state.config.tls.is_some() || state.origin.starts_with("https:")
}

/// A `Set-Cookie` value: HttpOnly, with the given SameSite and lifetime
/// (`max_age` 0 deletes the cookie), `Secure` when `secure`.
pub(crate) fn set_cookie(
    secure: bool,
    name: &str,
    value: &str,
    path: &str,
    same_site: &str,
    max_age: i64,
) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite={same_site}{secure}"
    ))
    .expect("cookie names and token values are header-safe")
}

/// Checks a browser request's `Origin`: it must be `scheme://Host` of
/// the listener the request came to, or one of `also`. `missing` and
/// `foreign` say what the endpoint is for when it is not.
fn check_origin_is(
    headers: &HeaderMap,
    scheme: &str,
    also: Option<&str>,
    missing: &str,
    foreign: &str,
) -> Result<(), ApiError> {
    let refuse = |what: String| Err(ApiError(StatusCode::FORBIDDEN, what));
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return refuse(missing.to_owned());
    };
    if also == Some(origin) {
        return Ok(());
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if host.is_some_and(|h| {
        origin
            .strip_prefix(scheme)
            .and_then(|r| r.strip_prefix("://"))
            == Some(h)
    }) {
        return Ok(());
    }
    let shown: String = origin.chars().take(100).collect();
    refuse(format!("origin {shown} {foreign}"))
}

/// Checks that a browser request comes from a page of this server: the
/// `Origin` header must be the server's public origin, or the scheme and
/// `Host` this request was sent to. This stops other sites from opening
/// session websockets or posting forms with a visitor's cookies.
pub(crate) fn check_origin(state: &ServerState, headers: &HeaderMap) -> Result<(), ApiError> {
    let scheme = if state.config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    check_origin_is(
        headers,
        scheme,
        Some(&state.origin),
        "requests from browsers must carry an Origin header; this endpoint is for pages served by this server",
        "may not use this server's sessions: only pages served by this server may",
    )
}

/// Checks that a dashboard request comes from a dashboard page: `Origin`
/// must be the scheme and `Host` of the dashboard's own listener. The
/// public origin (where app pages live) is never accepted, so an app's
/// script cannot drive the dashboard with an operator's cookie (cookies
/// are shared between ports of one host; origins are not).
pub(crate) fn check_admin_origin(state: &ServerState, headers: &HeaderMap) -> Result<(), ApiError> {
    check_origin_is(
        headers,
        if state.admin_https { "https" } else { "http" },
        None,
        "dashboard requests must carry an Origin header; use the dashboard page itself",
        "may not use the dashboard: only the dashboard's own pages may",
    )
}
