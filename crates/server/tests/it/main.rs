//! Integration tests: the real server on ephemeral loopback ports, driven by
//! the official Python client, raw websocket peers and the CLI binary.

mod acme;
mod browser;
mod cli;
mod cluster;
mod hostile;
mod keys;
mod operations;
mod protocol;
mod python;
mod routing;
mod shared_database;
mod tables;
mod web;
