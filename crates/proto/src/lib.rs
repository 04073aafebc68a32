//! The Anvil Uplink wire protocol as ferrolink speaks it: message model,
//! codec and sans-IO state machines for both ends of a connection.
//!
//! This crate never opens a socket, reads a clock or draws randomness:
//! drivers (the tokio server and client, the embassy device client) do the
//! IO and feed it frames and [`Instant`]s. Everything it holds is bounded.
//!
//! Where to start:
//! - [`codec::decode`] turns one text frame into a borrowed [`Message`];
//!   values the router does not inspect stay raw JSON.
//! - [`encode`] writes frames; forwarded values are copied, not re-encoded.
//! - [`server_session::ServerSession`] checks what one uplink may send, and when.
//! - [`client_session::ClientSession`] is the client side: key, registrations,
//!   calls with deadlines, heartbeat.
//! - [`calls::CallTable`] tracks calls in flight with their deadlines.
//!
//! What it deliberately does not do: routing between connections (the
//! server's job), media transfer, live objects.
//!
//! ```
//! use ferrolink_proto::codec::{decode, DecodeLimits};
//! use ferrolink_proto::Message;
//!
//! let frame = r#"{"type":"CALL","id":"c1","command":"blink","args":[3]}"#;
//! let Ok(Message::Call(call)) = decode(frame, &DecodeLimits::default()) else {
//!     panic!("not a call");
//! };
//! assert_eq!(call.command, "blink");
//! assert_eq!(call.args.get(), "[3]");
//! assert_eq!(call.kwargs.get(), "{}"); // defaulted, as the official server does
//! ```
//!
//! # Features
//!
//! - `alloc` (default): everything above, which needs a heap. Without it the
//!   crate is heap-free and offers [`sntp`] and [`roughtime`] (network time,
//!   plain and signed), [`trust`] (signed trust bundles: checking, not
//!   signing), [`ws`] (websocket framing for both ends), [`Instant`],
//!   [`civil_date`] and the protocol constants in [`wire`]: the part the
//!   heap-free device client (`ferrolink-device`) shares.
//!
//! The crate is `no_std`.

#![no_std]
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

#[cfg(feature = "alloc")]
extern crate alloc;

#[cfg(feature = "alloc")]
pub mod admission;
pub mod backoff;
#[cfg(feature = "alloc")]
pub mod calls;
#[cfg(feature = "alloc")]
pub mod client_session;
#[cfg(feature = "alloc")]
pub mod codec;
#[cfg(feature = "alloc")]
pub mod encode;
pub mod escape;
#[cfg(feature = "alloc")]
mod json;
#[cfg(feature = "alloc")]
pub mod message;
pub mod revocation;
pub mod roughtime;
pub mod scan;
#[cfg(feature = "alloc")]
pub mod server_session;
pub mod sntp;
mod time;
pub mod trust;
pub mod wire;
pub mod ws;

#[cfg(feature = "alloc")]
pub use json::push_str_literal;
#[cfg(feature = "alloc")]
pub use message::Message;
pub use time::{BUILD_FLOOR, BeforeFloor, Instant, UtcDate, check_floor, civil_date};
pub use wire::error_type;
