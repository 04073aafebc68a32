//! Host tests of `ferrolink-device`: the device client over host TCP and
//! over TLS against the real server, the official Python client calling
//! device functions, reconnects, refusals; property tests of the parsers.

mod against_server_session;
mod frames;
mod plain;
mod support;
mod time;
mod tls;
mod trust;
mod vectors;
