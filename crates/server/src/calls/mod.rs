//! The call core: one driver task per connection (`driver`), what other
//! tasks see of a connection (`peer`), and each app's function registry
//! (`registry`).

pub(crate) mod driver;
pub(crate) mod peer;
pub(crate) mod registry;
