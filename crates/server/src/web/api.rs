//! The HTTP call API, for curl, webhooks, cron jobs and notebooks:
//! `POST /_/api/call/{function}` with an uplink key as a bearer token and
//! `{"args": [...], "kwargs": {...}, "device": "..."}` as the body. The
//! call goes through the same `forward` as an uplink's, as a caller of the
//! key's app with the key's privilege; the answer is `{"response": ...}`
//! or `{"error": {"type", "message"}}` with a status that says what
//! happened. `GET /_/api/openapi.json` describes it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use ferrolink_proto::error_type;

use crate::state::{AuthError, ServerState};

/// An error answer: `{"error": {"type", "message"}}`.
fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body = json!({ "error": { "type": kind, "message": message.into() } });
    let mut res = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    res
}

/// The status for an error a call ended with.
fn status_of(kind: &str, device: bool) -> StatusCode {
    match kind {
        // A device-addressed call whose device is not connected.
        error_type::NO_SERVER_FUNCTION if device => StatusCode::SERVICE_UNAVAILABLE,
        error_type::NO_SERVER_FUNCTION => StatusCode::NOT_FOUND,
        error_type::UPLINK_DISCONNECTED => StatusCode::SERVICE_UNAVAILABLE,
        error_type::TIMEOUT => StatusCode::GATEWAY_TIMEOUT,
        error_type::QUOTA_EXCEEDED => StatusCode::TOO_MANY_REQUESTS,
        error_type::PERMISSION_DENIED => StatusCode::FORBIDDEN,
        error_type::SERIALIZATION => StatusCode::BAD_REQUEST,
        error_type::INTERNAL => StatusCode::INTERNAL_SERVER_ERROR,
        // The provider raised an exception of its own.
        _ => StatusCode::BAD_GATEWAY,
    }
}

const BAD_REQUEST: &str = "ferrolink.BadRequest";

/// `POST /_/api/call/{function}`. The key is checked from the headers
/// before the body is read; the body is then read with a size bound and
/// within the header timeout, so nobody without a key makes the server
/// buffer anything.
pub(crate) async fn call(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(function): Path<String>,
    req: axum::extract::Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let headers: &HeaderMap = &parts.headers;
    let Some(key) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
    else {
        return error(
            StatusCode::UNAUTHORIZED,
            "ferrolink.Unauthorized",
            "send an uplink key as `Authorization: Bearer <key>` (create one with `ferrolink key create`)",
        );
    };
    let record = match state.authenticate(key, peer.ip()).await {
        Ok(record) => record,
        Err(refusal) => {
            return match refusal.error {
                AuthError::Store(_) => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    error_type::INTERNAL,
                    refusal.error.to_string(),
                ),
                _ if !refusal.delay.is_zero() => {
                    let secs = refusal.delay.as_secs_f64().ceil().max(1.0) as u64;
                    retry_after(
                        error(
                            StatusCode::TOO_MANY_REQUESTS,
                            "ferrolink.TooManyWrongKeys",
                            format!("too many wrong keys from your address; try again in {secs} s"),
                        ),
                        secs,
                    )
                }
                e => error(
                    StatusCode::UNAUTHORIZED,
                    "ferrolink.Unauthorized",
                    e.to_string(),
                ),
            };
        }
    };
    let limit = state.config.max_frame_bytes;
    let body: Bytes = match tokio::time::timeout(
        state.config.header_timeout,
        axum::body::to_bytes(body, limit),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                BAD_REQUEST,
                format!("the body is over {limit} bytes (--max-frame-bytes)"),
            );
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                BAD_REQUEST,
                "the body did not arrive in time",
            );
        }
    };
    let request: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    BAD_REQUEST,
                    format!(
                        "the body is not JSON ({e}); send {{\"args\": [...], \"kwargs\": {{...}}}}"
                    ),
                );
            }
        }
    };
    let Some(fields) = request.as_object() else {
        return error(
            StatusCode::BAD_REQUEST,
            BAD_REQUEST,
            "the body must be a JSON object: {\"args\": [...], \"kwargs\": {...}, \"device\": \"...\"}",
        );
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "args" | "kwargs" | "device"))
    {
        return error(
            StatusCode::BAD_REQUEST,
            BAD_REQUEST,
            format!(
                "unknown field \"{}\" in the body; the fields are args, kwargs and device",
                crate::calls::shown(unknown)
            ),
        );
    }
    let args = match fields.get("args") {
        None | Some(Value::Null) => "[]".to_owned(),
        Some(a @ Value::Array(_)) => a.to_string(),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                BAD_REQUEST,
                "\"args\" must be a JSON array of the positional arguments",
            );
        }
    };
    let kwargs = match fields.get("kwargs") {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(k @ Value::Object(_)) => k.to_string(),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                BAD_REQUEST,
                "\"kwargs\" must be a JSON object of the keyword arguments",
            );
        }
    };
    let device = match fields.get("device") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) if !d.is_empty() => Some(d.clone()),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                BAD_REQUEST,
                "\"device\" must be a device name (a non-empty string)",
            );
        }
    };
    if function.contains('@') {
        return error(
            StatusCode::BAD_REQUEST,
            BAD_REQUEST,
            "name the device in the body's \"device\" field, not with @ in the path",
        );
    }
    let target = match &device {
        Some(d) => format!("{function}@{d}"),
        None => function.clone(),
    };
    state.metrics.http_api_call();
    tracing::debug!(key = %record.id, app = %record.app, function = %crate::calls::shown(&function), "http api call");
    let caller = state.caller(&record.app, record.privilege, "http");
    let answer = caller.call(&state, &target, &args, &kwargs).await;
    if let Some(response) = answer.get("response") {
        return (StatusCode::OK, axum::Json(json!({ "response": response }))).into_response();
    }
    let kind = answer["error"]["type"]
        .as_str()
        .unwrap_or(error_type::INTERNAL);
    let status = status_of(kind, device.is_some());
    let res = (status, axum::Json(answer)).into_response();
    match status {
        // Calls in flight free up within a call's time; a device or
        // provider may be back after its reconnect backoff.
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => retry_after(res, 1),
        _ => res,
    }
}

/// Adds `Retry-After: secs`.
fn retry_after(mut res: Response, secs: u64) -> Response {
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    res
}

/// `GET /_/api/openapi.json`.
pub(crate) async fn openapi(State(state): State<Arc<ServerState>>) -> Response {
    let spec = OPENAPI.replace("{{ORIGIN}}", &state.origin);
    ([(header::CONTENT_TYPE, "application/json")], spec).into_response()
}

const OPENAPI: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_say_what_happened() {
        assert_eq!(
            status_of(error_type::NO_SERVER_FUNCTION, false),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status_of(error_type::NO_SERVER_FUNCTION, true),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status_of(error_type::TIMEOUT, false),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(status_of("ValueError", false), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn the_openapi_document_is_json() {
        let v: Value = serde_json::from_str(&OPENAPI.replace("{{ORIGIN}}", "http://x")).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
    }
}
