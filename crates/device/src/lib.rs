//! `ferrolink-device`: an Anvil Uplink client for microcontroller firmware
//! (embassy on a Pico W), `no_std` and heap-free, over any
//! `embedded-io-async` transport.
//!
//! What it does: the websocket upgrade and framing ([`ws`]), the key
//! message as the official Pico W library sends it, registrations,
//! incoming calls answered by your [`Handler`], calls made by the device,
//! the 10 s heartbeat, and a [`Backoff`] for the reconnect loop. With the
//! `tls` feature (default) it adds [`tls`]: TLS 1.3 whose server
//! certificate is checked against pinned roots, a revocation list and a
//! [`TrustedTime`] from several SNTP servers. A session refuses to send the
//! key over any transport that is not such a verified TLS stream unless
//! told otherwise ([`Config::danger_allow_plaintext`]).
//!
//! What it deliberately does not do: allocate (buffers are the caller's,
//! sized by const generics: [`Buffers`], [`tls::TlsBuffers`]), run handlers
//! concurrently (one call at a time, in order), media and live objects.
//!
//! Where to start: [`Session::connect`], then [`Session::serve_until`] and
//! [`Session::call`] in a loop; reconnect with a [`Backoff`] when they fail.
//! The protocol state lives in the sans-IO [`protocol::Connection`].
//!
//! ```no_run
//! # async fn demo<T: ferrolink_device::Transport, C: ferrolink_device::Clock>(io: T, clock: C) {
//! use ferrolink_device::{Args, Buffers, Config, Handler, HandlerError, Session};
//! use ferrolink_device::json::Writer;
//!
//! struct Functions;
//! impl Handler for Functions {
//!     async fn call(&mut self, name: &str, args: Args<'_>, out: &mut Writer<'_>)
//!         -> Result<(), HandlerError> {
//!         match name {
//!             "add" => {
//!                 let a = args.get(0).and_then(|v| v.as_i64()).ok_or(HandlerError::BadArguments("add(a, b)"))?;
//!                 let b = args.get(1).and_then(|v| v.as_i64()).ok_or(HandlerError::BadArguments("add(a, b)"))?;
//!                 use core::fmt::Write as _;
//!                 write!(out, "{}", a + b).map_err(|_| HandlerError::Failed("no room"))
//!             }
//!             _ => Err(HandlerError::NoSuchFunction),
//!         }
//!     }
//! }
//!
//! static FUNCTIONS: &[&str] = &["add"];
//! let mut buffers = Buffers::<2048, 1024>::new();
//! let config = Config::new("example.com", 443, "UPLINK-KEY", FUNCTIONS);
//! let mut session = Session::connect(io, clock, &config, &mut buffers, 0x5eed).await.unwrap();
//! let until = ferrolink_device::Instant::from_millis(60_000);
//! session.serve_until(&mut Functions, until).await.unwrap();
//! # }
//! ```
//!
//! # Features
//!
//! - `tls` (default): [`tls`], with embedded-tls, rustls-webpki (no heap)
//!   and RustCrypto's ECDSA P-256.
//! - `p384` (default, implies `tls`): ECDSA P-384 in certificate chains
//!   (ISRG Root X2); about 125 KiB of flash on a Cortex-M0+.
//!
//! Design, security checks and the footprint on an RP2040 are in
//! `docs/device.md`.

#![no_std]
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

#[cfg(test)]
extern crate std;

pub mod json;
pub mod message;
pub mod protocol;
mod session;
pub mod time;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "tls")]
pub mod trust;
pub mod ws;

pub use ferrolink_proto::backoff::Backoff;
pub use ferrolink_proto::{Instant, roughtime, sntp};
pub use session::{
    Args, Buffers, CallError, Clock, Config, Handler, HandlerError, InsecurePlaintext, NeverBusy,
    ReadGuard, Security, Session, SessionError, Transport, Value,
};
pub use time::TrustedTime;
