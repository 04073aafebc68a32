//! The Rust client against the real server: interop with the official
//! Python client in both directions, reconnects, deadlines, refusals.

mod interop;
mod lifecycle;
mod tables;
mod time;
mod tls;
mod trust;
