//! The man-in-the-middle suite (see the crate docs).

mod mitm;
