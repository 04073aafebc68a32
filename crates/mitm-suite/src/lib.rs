//! Tests only: every client ferrolink ships (the no_std device client over
//! host TCP, the tokio client and the official `anvil-uplink` Python
//! client) against a man in the middle — `ferrolink_testkit::mitm`, a TLS
//! 1.3 server that misbehaves on purpose — and against the certificate and
//! time cases, each asserting from the server's side that no
//! application-data byte arrived. `tests/it/mitm.rs` also keeps the table
//! in `docs/security.md` true.
