//! A Rust client for ferrolink (and other Anvil Uplink servers): connect
//! with a key, register functions the app can call, call the app's
//! functions — with automatic reconnect and the official heartbeat.
//!
//! Built on the same sans-IO protocol core as the server
//! (`ferrolink-proto`); this crate adds the tokio driver.
//!
//! ```no_run
//! use ferrolink_client::{Client, HandlerError};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::builder("ws://127.0.0.1:3030/_/uplink", "flk_…")
//!     .register("add", |(a, b): (f64, f64)| async move { Ok::<_, HandlerError>(a + b) })
//!     .connect()
//!     .await?;
//! let temperature: f64 = client.call("read_temperature", ()).await?;
//! let pattern: String = client.call_device("pico-1", "blink_morse", ("SOS",)).await?;
//! client.disconnect().await;
//! # let _ = (temperature, pattern); Ok(()) }
//! ```
//!
//! Behaviour to know:
//!
//! - **Arguments** are positional: pass a tuple (`(x,)` for one, `()` for none).
//!   Keyword arguments, per-call deadlines and device addressing go through
//!   [`Client::call_with`] and [`CallOptions`].
//! - **Errors**: every failure is a [`CallError`] whose [`CallError::kind`]
//!   says what to do; errors raised by the function keep their type string
//!   ([`CallError::remote_type`], e.g. `"ValueError"`).
//! - **Reconnect**: after a lost connection the client waits
//!   (exponential backoff with full jitter, [`ReconnectPolicy`]), reconnects,
//!   and registers its functions again. Calls made while disconnected fail at
//!   once with [`CallErrorKind::NotConnected`] rather than wait; calls in
//!   flight when the link drops fail with [`CallErrorKind::ConnectionLost`].
//!   No call is dropped without an answer. A bad or revoked key is not
//!   retried: [`Client::status`] becomes [`Status::Failed`].
//! - **Heartbeat**: `anvil.private.echo` every 10 s, as the official
//!   clients; an echo unanswered for 20 s means the server is gone, and the
//!   client reconnects without waiting for TCP to notice.
//!
//! - **TLS**: `wss://` URLs are verified against pinned roots (Let's
//!   Encrypt's by default), the host name, a revocation list and a clock
//!   that must read later than this build ([`tls::TlsConfig`]); the key is
//!   sent only after all of that passed.

mod backoff;
mod builder;
mod client;
mod driver;
mod error;
mod handler;
mod status;
pub mod tables;
pub mod time;
pub mod tls;

pub use backoff::ReconnectPolicy;
pub use builder::ClientBuilder;
pub use client::{CallOptions, Client};
pub use error::{
    CallError, CallErrorKind, ConnectError, ConnectErrorKind, HandlerError, RemoteError,
};
pub use handler::{CallContext, Request};
pub use status::Status;
