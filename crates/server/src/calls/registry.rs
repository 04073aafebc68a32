//! Per-app function registry: which connections provide which names.
//!
//! Lookup is exact name first, then registered regular expressions (full
//! match), as the official server does. When several connections provide a
//! name, calls rotate among them (round robin); a caller can pin one device
//! by calling `name@device`, which only the connection authenticated with
//! that device's key can serve.

use hashbrown::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use regex::Regex;

use crate::calls::peer::Peer;

/// Most names remembered as "stale" per app (names whose last provider left).
const MAX_STALE: usize = 4096;

#[derive(Default)]
struct Providers {
    conns: Vec<Arc<Peer>>,
    next: AtomicUsize,
}

impl Providers {
    fn pick(&self, device: Option<&str>) -> Option<Arc<Peer>> {
        match device {
            Some(d) => self
                .conns
                .iter()
                .find(|c| c.device.as_deref() == Some(d))
                .cloned(),
            None => {
                let n = self.conns.len();
                if n == 0 {
                    return None;
                }
                let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
                Some(self.conns[i].clone())
            }
        }
    }
}

struct Pattern {
    source: Box<str>,
    regex: Regex,
    providers: Providers,
}

#[derive(Default)]
struct Registry {
    exact: HashMap<Box<str>, Providers>,
    patterns: Vec<Pattern>,
    stale: HashSet<Box<str>>,
}

/// The result of looking a name up.
pub(crate) enum Route {
    /// Send the call here.
    Provider(Arc<Peer>),
    /// Only a provider that has since disconnected matched.
    Stale,
    /// Nothing matches.
    Missing,
}

/// A name that is neither a plain name nor a valid regular expression.
#[derive(Debug)]
pub(crate) struct InvalidName;

/// One app's live state.
pub(crate) struct AppRuntime {
    registry: RwLock<Registry>,
    /// Open browser sessions, for events.
    browsers: std::sync::Mutex<Vec<Arc<Peer>>>,
}

/// Which browser sessions an event goes to.
pub(crate) enum Target<'a> {
    /// Sessions with these ids.
    Sessions(&'a [&'a str]),
    /// Sessions subscribed to this channel; `*` is every session of the app.
    Channel(&'a str),
}

fn is_pattern(name: &str) -> bool {
    name.contains([
        '*', '+', '?', '(', ')', '[', ']', '{', '}', '|', '^', '$', '\\',
    ])
}

impl AppRuntime {
    pub(crate) fn new() -> Self {
        Self {
            registry: RwLock::default(),
            browsers: std::sync::Mutex::default(),
        }
    }

    fn browsers(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Peer>>> {
        self.browsers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an open browser session.
    pub(crate) fn add_browser(&self, conn: &Arc<Peer>) {
        self.browsers().push(conn.clone());
    }

    /// Forgets a closed browser session.
    pub(crate) fn remove_browser(&self, conn: &Peer) {
        self.browsers().retain(|c| c.id != conn.id);
    }

    /// Asks every open browser session to close with `reason`.
    pub(crate) fn close_browsers(&self, reason: &str) {
        for c in self.browsers().iter() {
            c.close_with(reason.to_owned());
        }
    }

    /// Number of open browser sessions.
    pub(crate) fn browser_count(&self) -> usize {
        self.browsers().len()
    }

    /// The open browser sessions `target` names.
    pub(crate) fn browsers_for(&self, target: &Target<'_>) -> Vec<Arc<Peer>> {
        let browsers = self.browsers();
        browsers
            .iter()
            .filter(|c| {
                let Some(b) = &c.browser else { return false };
                match target {
                    Target::Sessions(ids) => ids.contains(&b.id.as_str()),
                    Target::Channel("*") => true,
                    Target::Channel(ch) => b
                        .channels
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains(*ch),
                }
            })
            .cloned()
            .collect()
    }

    /// Registered names (exact names, then patterns) with their number of
    /// providers.
    pub(crate) fn functions(&self) -> Vec<(String, usize)> {
        let reg = self.read();
        let mut names: Vec<(String, usize)> = reg
            .exact
            .iter()
            .map(|(n, p)| (n.to_string(), p.conns.len()))
            .collect();
        names.sort();
        names.extend(
            reg.patterns
                .iter()
                .map(|p| (p.source.to_string(), p.providers.conns.len())),
        );
        names
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        // The registry holds no invariant a panicking writer could break
        // half-way that matters more than keeping calls flowing.
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `name` for `conn`. Registering the same name twice on one
    /// connection is a no-op.
    pub(crate) fn register(&self, conn: &Arc<Peer>, name: &str) -> Result<(), InvalidName> {
        let regex = if is_pattern(name) {
            Some(Regex::new(&format!("^(?:{name})$")).map_err(|_| InvalidName)?)
        } else {
            None
        };
        let mut reg = self.write();
        reg.stale.remove(name);
        let providers = match regex {
            None => reg.exact.entry(name.into()).or_default(),
            Some(regex) => {
                let i = match reg.patterns.iter().position(|p| &*p.source == name) {
                    Some(i) => i,
                    None => {
                        reg.patterns.push(Pattern {
                            source: name.into(),
                            regex,
                            providers: Providers::default(),
                        });
                        reg.patterns.len() - 1
                    }
                };
                &mut reg.patterns[i].providers
            }
        };
        if !providers.conns.iter().any(|c| c.id == conn.id) {
            providers.conns.push(conn.clone());
        }
        Ok(())
    }

    /// Removes every registration of `conn` (it closed).
    pub(crate) fn unregister_all(&self, conn: &Peer, names: &[Box<str>]) {
        let mut reg = self.write();
        let mut gone = Vec::new();
        for name in names {
            let emptied = if let Some(p) = reg.exact.get_mut(&**name) {
                p.conns.retain(|c| c.id != conn.id);
                p.conns.is_empty()
            } else if let Some(p) = reg.patterns.iter_mut().find(|p| &p.source == name) {
                p.providers.conns.retain(|c| c.id != conn.id);
                p.providers.conns.is_empty()
            } else {
                false
            };
            if emptied {
                gone.push(name.clone());
            }
        }
        for name in gone {
            reg.exact.remove(&name);
            reg.patterns.retain(|p| p.source != name);
            if reg.stale.len() < MAX_STALE {
                reg.stale.insert(name);
            }
        }
    }

    /// Finds a provider for `name`, optionally on one device.
    pub(crate) fn route(&self, name: &str, device: Option<&str>) -> Route {
        let reg = self.read();
        if let Some(c) = reg.exact.get(name).and_then(|p| p.pick(device)) {
            return Route::Provider(c);
        }
        for pattern in &reg.patterns {
            if pattern.regex.is_match(name)
                && let Some(c) = pattern.providers.pick(device)
            {
                return Route::Provider(c);
            }
        }
        // Stale names are matched literally: recompiling departed patterns
        // on every miss would let a caller make each miss expensive.
        if reg.stale.contains(name) {
            Route::Stale
        } else {
            Route::Missing
        }
    }
}
