//! Host tests of `ferrolink-device`: the device client over host TCP and
//! over TLS against the real server, the official Python client calling
//! device functions, reconnects, refusals; property tests of the parsers.

mod frames;
mod plain;
mod sim;
mod support;
mod time;
mod tls;
mod trust;
mod vectors;
