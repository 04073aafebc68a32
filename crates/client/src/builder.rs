//! [`ClientBuilder`]: the settings of a [`Client`] and the first connection.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use crate::backoff::ReconnectPolicy;
use crate::client::Client;
use crate::driver::{self, Dispatch, OutputFn, Settings};
use crate::error::{ConnectError, HandlerError};
use crate::handler::{self, Handler, Request};
use crate::status::Status;

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
            functions: self.handlers.keys().cloned().collect(),
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
        let client = Client::new(commands, status, self.call_timeout);
        let weak = client.downgrade();
        let handlers = self.handlers;
        let dispatch: Dispatch =
            Box::new(move |call, respond| handler::dispatch(&handlers, &weak, respond, call));
        tokio::spawn(driver::supervise(settings, link, rx, status_tx, dispatch));
        Ok(client)
    }
}
