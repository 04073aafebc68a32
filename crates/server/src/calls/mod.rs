//! The call core: one driver task per connection (`driver`) over its
//! websocket (`link`), what other tasks see of a connection (`peer`), the
//! one way a call reaches its provider (`forward`), the functions the
//! server answers itself (`builtins`), each app's function registry
//! (`registry`), and the dashboard console's caller (`console`).

pub(crate) mod builtins;
pub(crate) mod console;
pub(crate) mod driver;
pub(crate) mod forward;
pub(crate) mod link;
pub(crate) mod peer;
pub(crate) mod registry;

/// Peer-chosen text as logs and the dashboard show it: at most
/// [`SHOWN_BYTES`] bytes, cut at a character boundary, with `…` when cut.
pub(crate) fn shown(s: &str) -> Shown<'_> {
    Shown(s)
}

/// Most bytes of peer-chosen text a log line or the call log shows.
pub(crate) const SHOWN_BYTES: usize = 128;

/// See [`shown`].
pub(crate) struct Shown<'a>(&'a str);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.len() <= SHOWN_BYTES {
            return f.write_str(self.0);
        }
        let mut end = SHOWN_BYTES;
        while !self.0.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{}…", &self.0[..end])
    }
}
