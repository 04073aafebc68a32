//! The application-facing handle and its builder.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::driver::Command;
use crate::error::{CallError, CallErrorKind};
use crate::status::{Status, status_text};

/// Per-call settings for [`Client::call_with`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// Keyword arguments (a JSON object).
    pub kwargs: Option<Value>,
    /// This call's deadline, instead of the client's default.
    pub timeout: Option<Duration>,
    /// Serve the call only on the device with this name (`name@device`).
    pub device: Option<String>,
    /// Run in the context of this incoming call (set by [`crate::CallContext`]).
    pub(crate) call_stack_id: Option<String>,
}

impl CallOptions {
    /// Options with keyword arguments.
    pub fn kwargs(mut self, kwargs: Value) -> Self {
        self.kwargs = Some(kwargs);
        self
    }

    /// Options with a deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Options addressing one device.
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }
}

struct Inner {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<Status>,
    call_timeout: Duration,
}

/// A connection to a ferrolink (or Anvil) server. Cheap to clone; every clone
/// uses the same connection. The connection closes when [`Client::disconnect`]
/// is called or the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// A handle that does not keep the connection open (given to handlers).
#[derive(Clone)]
pub(crate) struct WeakClient(std::sync::Weak<Inner>);

impl WeakClient {
    pub(crate) fn upgrade(&self) -> Option<Client> {
        self.0.upgrade().map(|inner| Client { inner })
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("status", &self.status())
            .finish()
    }
}

impl Client {
    /// A client over the connection task that `commands` reach.
    pub(crate) fn new(
        commands: mpsc::Sender<Command>,
        status: watch::Receiver<Status>,
        call_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                commands,
                status,
                call_timeout,
            }),
        }
    }

    pub(crate) fn downgrade(&self) -> WeakClient {
        WeakClient(Arc::downgrade(&self.inner))
    }

    /// Calls `name` with positional `args` (a tuple, array or `Vec`; `()` for
    /// none) and decodes the result as `R`.
    pub async fn call<R: DeserializeOwned>(
        &self,
        name: &str,
        args: impl Serialize,
    ) -> Result<R, CallError> {
        self.call_with(name, args, CallOptions::default()).await
    }

    /// Calls `name` on the device named `device` only.
    pub async fn call_device<R: DeserializeOwned>(
        &self,
        device: &str,
        name: &str,
        args: impl Serialize,
    ) -> Result<R, CallError> {
        self.call_with(name, args, CallOptions::default().device(device))
            .await
    }

    /// Calls `name` with keyword arguments, a deadline or a device.
    pub async fn call_with<R: DeserializeOwned>(
        &self,
        name: &str,
        args: impl Serialize,
        options: CallOptions,
    ) -> Result<R, CallError> {
        let raw = self.call_raw(name, args, options).await?;
        serde_json::from_str(&raw).map_err(|e| {
            CallError::new(
                CallErrorKind::Decode,
                format!(
                    "{name}: the result {} does not fit the requested type: {e}",
                    preview(&raw)
                ),
            )
        })
    }

    /// Calls `name` and returns the result as raw JSON text.
    pub async fn call_raw(
        &self,
        name: &str,
        args: impl Serialize,
        options: CallOptions,
    ) -> Result<String, CallError> {
        let args = encode_args(name, &args)?;
        let kwargs = match &options.kwargs {
            None => "{}".to_owned(),
            Some(v @ Value::Object(_)) => v.to_string(),
            Some(other) => {
                return Err(CallError::new(
                    CallErrorKind::Encode,
                    format!("{name}: keyword arguments must be a JSON object, not {other}"),
                ));
            }
        };
        let command = match &options.device {
            Some(device) => format!("{name}@{device}"),
            None => name.to_owned(),
        };
        let (reply, result) = oneshot::channel();
        let cmd = Command::Call {
            command,
            args,
            kwargs,
            timeout: options.timeout.unwrap_or(self.inner.call_timeout),
            call_stack_id: options.call_stack_id,
            reply,
        };
        if self.inner.commands.send(cmd).await.is_err() {
            return Err(self.not_connected());
        }
        result.await.unwrap_or_else(|_| Err(self.not_connected()))
    }

    fn not_connected(&self) -> CallError {
        CallError::new(CallErrorKind::NotConnected, status_text(&self.status()))
    }

    /// Where the connection stands now.
    pub fn status(&self) -> Status {
        self.inner.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.inner.status.clone()
    }

    /// Waits until the status satisfies `ready` (for example, reconnected).
    pub async fn wait_for(&self, ready: impl Fn(&Status) -> bool) -> Status {
        let mut rx = self.watch_status();
        match rx.wait_for(|s| ready(s)).await {
            Ok(s) => s.clone(),
            Err(_) => self.status(),
        }
    }

    /// Closes the connection gracefully: calls still in flight fail with
    /// [`CallErrorKind::ConnectionLost`], the server is told, no reconnect.
    pub async fn disconnect(&self) {
        let (done, wait) = oneshot::channel();
        if self
            .inner
            .commands
            .send(Command::Disconnect(done))
            .await
            .is_ok()
        {
            let _ = wait.await;
        }
    }
}

fn preview(raw: &str) -> String {
    if raw.len() <= 60 {
        raw.to_owned()
    } else {
        let mut end = 60;
        while !raw.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &raw[..end])
    }
}

fn encode_args(name: &str, args: &impl Serialize) -> Result<String, CallError> {
    let text = serde_json::to_string(args).map_err(|e| {
        CallError::new(
            CallErrorKind::Encode,
            format!("{name}: the arguments could not be encoded as JSON: {e}"),
        )
    })?;
    match text.as_bytes().first() {
        Some(b'[') => Ok(text),
        _ if text == "null" => Ok("[]".to_owned()),
        _ => Err(CallError::new(
            CallErrorKind::Encode,
            format!(
                "{name}: positional arguments must encode as a JSON array; pass a tuple such as (x,) for one argument"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_must_be_positional_arrays() {
        assert_eq!(encode_args("f", &(1, "a")).unwrap(), r#"[1,"a"]"#);
        assert_eq!(encode_args("f", &()).unwrap(), "[]");
        assert_eq!(encode_args("f", &(5,)).unwrap(), "[5]");
        let e = encode_args("f", &5).unwrap_err();
        assert_eq!(e.kind(), CallErrorKind::Encode);
        assert!(e.to_string().contains("(x,)"));
    }
}
