//! The application-facing handle and its builder.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::backoff::ReconnectPolicy;
use crate::driver::{self, Command, Settings};
use crate::error::{CallError, CallErrorKind, ConnectError, ConnectErrorKind, HandlerError};
use crate::handler::{self, Handler, Request};

/// Receives `output` text from the server.
pub(crate) type OutputFn = Arc<dyn Fn(&str) + Send + Sync>;

/// Where the connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Authenticated; calls flow.
    Connected,
    /// The connection was lost; trying again. Calls fail fast meanwhile.
    Reconnecting {
        /// Attempts made so far in this outage.
        attempt: u32,
    },
    /// The server refused the key (or the version) and the client gave up:
    /// retrying could not help. Calls fail with the reason.
    Failed {
        /// Why.
        kind: ConnectErrorKind,
        /// The server's words.
        reason: String,
    },
    /// [`Client::disconnect`] was called (or reconnecting is off and the
    /// connection was lost).
    Closed,
}

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

/// Settings for a [`Client`]; made by [`Client::builder`].
pub struct ClientBuilder {
    url: String,
    key: String,
    handlers: HashMap<String, Handler>,
    reconnect: ReconnectPolicy,
    call_timeout: Duration,
    connect_timeout: Duration,
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
    max_pending: usize,
    on_output: Option<OutputFn>,
    tls: crate::tls::TlsConfig,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .field("functions", &self.handlers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Registers `name` as an async function of typed positional arguments.
    ///
    /// `A` is decoded from the argument array, so a function of two numbers
    /// takes `(f64, f64)` and a function of one string takes `(String,)`.
    pub fn register<A, R, F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        self.handlers.insert(name.into(), handler::typed(f));
        self
    }

    /// Registers `name` as an async function of the whole [`Request`]
    /// (positional and keyword arguments, and a context for nested calls).
    pub fn register_raw<R, F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        R: Serialize + Send + 'static,
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        self.handlers.insert(name.into(), handler::raw(f));
        self
    }

    /// How to reconnect after a lost connection (default: on, 0.5 s to 30 s).
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// Default deadline of a call (default 30 s, as the server's).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Longest wait for the websocket and the key verdict (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Heartbeat spacing, and how long one may go unanswered before the
    /// server is declared dead (default 10 s and 20 s).
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat_interval = interval;
        self.heartbeat_timeout = timeout;
        self
    }

    /// Most calls in flight at once (default 4096).
    pub fn max_pending_calls(mut self, n: usize) -> Self {
        self.max_pending = n.max(1);
        self
    }

    /// Which servers to trust for `wss://` (default: Let's Encrypt's roots,
    /// the shipped revocation list, the system clock with the build floor).
    pub fn tls(mut self, tls: crate::tls::TlsConfig) -> Self {
        self.tls = tls;
        self
    }

    /// Receives text the server prints to this client (`output` messages);
    /// by default it is logged at `info`.
    pub fn on_output(mut self, f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_output = Some(Arc::new(f));
        self
    }

    /// Connects, registers every function, and waits for the server to
    /// accept the key. Later losses of the connection are handled by
    /// reconnecting; this first connection is not retried, so a wrong URL
    /// or key is reported here.
    pub async fn connect(self) -> Result<Client, ConnectError> {
        let settings = Arc::new(Settings {
            url: self.url,
            key: self.key,
            handlers: self.handlers,
            reconnect: self.reconnect,
            connect_timeout: self.connect_timeout,
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_timeout: self.heartbeat_timeout,
            max_pending: self.max_pending,
            on_output: self.on_output,
            tls: self.tls,
        });
        let link = driver::connect(&settings).await?;
        let (commands, rx) = mpsc::channel(1024);
        let (status_tx, status) = watch::channel(Status::Connected);
        let client = Client {
            inner: Arc::new(Inner {
                commands,
                status,
                call_timeout: self.call_timeout,
            }),
        };
        tokio::spawn(driver::supervise(
            settings,
            link,
            rx,
            status_tx,
            client.downgrade(),
        ));
        Ok(client)
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
    /// Starts configuring a client for `url` (`ws://host:port/_/uplink`) and `key`.
    pub fn builder(url: impl Into<String>, key: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            key: key.into(),
            handlers: HashMap::new(),
            reconnect: ReconnectPolicy::default(),
            call_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(20),
            max_pending: 4096,
            on_output: None,
            tls: crate::tls::TlsConfig::default(),
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

pub(crate) fn status_text(status: &Status) -> String {
    match status {
        Status::Connected => "the connection was lost".to_owned(),
        Status::Reconnecting { attempt } => {
            format!("not connected: reconnecting to the server (attempt {attempt})")
        }
        Status::Failed { reason, .. } => format!("not connected: {reason}"),
        Status::Closed => "not connected: the client was disconnected".to_owned(),
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
