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

use crate::names::is_pattern;

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
    /// All of `patterns` as one automaton, so a name that no exact entry
    /// has is tried against every pattern in one pass (not one regex
    /// after another under the lock). Rebuilt on a blocking thread when
    /// patterns change (up to 256 patterns of 64 KiB programs is too much
    /// work for an async thread or the lock); it answers only while it is
    /// current (`set_generation == generation`).
    set: Option<Arc<regex::RegexSet>>,
    /// Bumped on every change to `patterns`.
    generation: u64,
    /// The `generation` `set` was built for.
    set_generation: u64,
    stale: HashSet<Box<str>>,
}

/// Most distinct patterns per app.
const MAX_PATTERNS: usize = 256;

/// Builds the combined automaton of `sources` (already validated one by
/// one, so failure here is only the combined size limit).
fn build_set(sources: &[String]) -> Option<Arc<regex::RegexSet>> {
    if sources.is_empty() {
        return None;
    }
    regex::RegexSetBuilder::new(sources)
        .size_limit(crate::names::COMPILED_LIMIT * sources.len())
        .dfa_size_limit(crate::names::COMPILED_LIMIT * 4)
        .build()
        .ok()
        .map(Arc::new)
}

/// Marks the patterns changed and rebuilds their automaton on a blocking
/// thread (inline where there is no runtime, as in unit tests). Until it
/// is installed, lookups try the patterns one by one.
fn patterns_changed(registry: &Arc<RwLock<Registry>>, reg: &mut Registry) {
    reg.generation += 1;
    let generation = reg.generation;
    let sources: Vec<String> = reg
        .patterns
        .iter()
        .map(|p| p.regex.as_str().to_owned())
        .collect();
    let registry = registry.clone();
    let build = move || {
        let current = |r: &Registry| r.generation == generation;
        if !current(&registry.read().unwrap_or_else(|p| p.into_inner())) {
            return; // a newer change has its own build coming
        }
        let set = build_set(&sources);
        if set.is_none() && !sources.is_empty() {
            // Over the combined size limit: lookups keep trying the
            // patterns one by one (at most 256, each bounded).
            tracing::warn!(
                patterns = sources.len(),
                "function patterns too large to combine"
            );
            return;
        }
        let mut reg = registry.write().unwrap_or_else(|p| p.into_inner());
        if current(&reg) {
            reg.set = set;
            reg.set_generation = generation;
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(build);
        }
        Err(_) => std::thread::spawn(build).join().unwrap_or(()),
    }
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
    registry: Arc<RwLock<Registry>>,
    /// Open browser sessions, for events.
    browsers: std::sync::Mutex<Vec<Arc<Peer>>>,
    /// Whether browser sessions without a logged-in user may call
    /// functions: the app's setting, kept current (`ServerState` applies
    /// changes from the dashboard and the CLI), so turning it off holds
    /// for sessions already open.
    anonymous_calls: std::sync::atomic::AtomicBool,
}

/// Which browser sessions an event goes to.
pub(crate) enum Target<'a> {
    /// Sessions with these ids.
    Sessions(&'a [&'a str]),
    /// Sessions subscribed to this channel; `*` is every session of the app.
    Channel(&'a str),
}

impl AppRuntime {
    pub(crate) fn new() -> Self {
        Self {
            registry: Arc::default(),
            browsers: std::sync::Mutex::default(),
            anonymous_calls: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn browsers(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Peer>>> {
        self.browsers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies the app's anonymous-calls setting.
    pub(crate) fn set_anonymous_calls(&self, allowed: bool) {
        self.anonymous_calls.store(allowed, Ordering::Relaxed);
    }

    /// Whether browser sessions without a user may call functions now.
    pub(crate) fn anonymous_calls(&self) -> bool {
        self.anonymous_calls.load(Ordering::Relaxed)
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

    /// Asks the open browser sessions of the login whose cookie hash is
    /// `login` to close ("logged out"); answers how many.
    pub(crate) fn close_login(&self, login: &[u8; 32]) -> usize {
        let mut closed = 0;
        for c in self.browsers().iter() {
            if c.browser
                .as_ref()
                .is_some_and(|b| b.login.as_ref() == Some(login))
            {
                c.close_with("logged out".to_owned());
                closed += 1;
            }
        }
        closed
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

    /// Registered names (exact names, then patterns) with who provides
    /// each: the device name, or the key id for keys without a device.
    pub(crate) fn functions(&self) -> Vec<(String, Vec<String>)> {
        fn who(p: &Providers) -> Vec<String> {
            p.conns
                .iter()
                .map(|c| {
                    c.device
                        .as_deref()
                        .map_or_else(|| format!("key {}", c.key_id), str::to_owned)
                })
                .collect()
        }
        let reg = self.read();
        let mut names: Vec<(String, Vec<String>)> = reg
            .exact
            .iter()
            .map(|(n, p)| (n.to_string(), who(p)))
            .collect();
        names.sort();
        names.extend(
            reg.patterns
                .iter()
                .map(|p| (p.source.to_string(), who(&p.providers))),
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
            Some(crate::names::compile(name).map_err(|_| InvalidName)?)
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
                        if reg.patterns.len() >= MAX_PATTERNS {
                            return Err(InvalidName);
                        }
                        reg.patterns.push(Pattern {
                            source: name.into(),
                            regex,
                            providers: Providers::default(),
                        });
                        patterns_changed(&self.registry, &mut reg);
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
        let patterns_before = reg.patterns.len();
        for name in gone {
            reg.exact.remove(&name);
            reg.patterns.retain(|p| p.source != name);
            if reg.stale.len() < MAX_STALE {
                reg.stale.insert(name);
            }
        }
        if reg.patterns.len() != patterns_before {
            patterns_changed(&self.registry, &mut reg);
        }
    }

    /// Finds a provider for `name`, optionally on one device.
    pub(crate) fn route(&self, name: &str, device: Option<&str>) -> Route {
        let reg = self.read();
        if let Some(c) = reg.exact.get(name).and_then(|p| p.pick(device)) {
            return Route::Provider(c);
        }
        if reg.set_generation == reg.generation {
            if let Some(set) = &reg.set {
                for i in set.matches(name).iter() {
                    if let Some(c) = reg.patterns.get(i).and_then(|p| p.providers.pick(device)) {
                        return Route::Provider(c);
                    }
                }
            }
        } else {
            // Moments after a change, before the new automaton is in.
            for p in reg.patterns.iter().filter(|p| p.regex.is_match(name)) {
                if let Some(c) = p.providers.pick(device) {
                    return Route::Provider(c);
                }
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
