//! Uplink keys: generation, the shape of a key, hashing and verification.
//!
//! A key looks like `flk_<id>_<secret>`: the 10-character id names the key
//! in listings, logs and revocation; the 43-character secret carries 256
//! bits from the OS random generator. Only SHA-256 of the whole key is
//! stored (a fast hash is right here: the secret is random, not a password),
//! and a presented key is compared with the stored hash in constant time.

use std::fmt;

use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use ferrolink_proto::message::Privilege;

const PREFIX: &str = "flk_";
const ID_LEN: usize = 10;
const ID_ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";

/// The public name of a key (the `<id>` part of `flk_<id>_<secret>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub String);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A whole secret key. `Debug` and `Display` show only the key id, so a key
/// cannot end up in a log by accident; [`Secret::expose`] is the one way out.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a presented key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key text, for showing once at creation.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The id part, if the key has ferrolink's shape.
    pub fn id(&self) -> Option<KeyId> {
        let rest = self.0.strip_prefix(PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        (id.len() == ID_LEN && !secret.is_empty()).then(|| KeyId(id.to_owned()))
    }

    /// SHA-256 of the whole key, as stored.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }

    /// Whether this key hashes to `stored`, compared in constant time.
    pub fn matches(&self, stored: &[u8; 32]) -> bool {
        self.hash().ct_eq(stored).into()
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let mut id_bytes = [0u8; ID_LEN];
        rng.fill_bytes(&mut id_bytes);
        let id: String = id_bytes
            .iter()
            .map(|b| char::from(ID_ALPHABET[usize::from(b & 31)]))
            .collect();
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        Self(format!("{PREFIX}{id}_{secret}"))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.id() {
            Some(id) => write!(f, "Secret(key {id})"),
            None => f.write_str("Secret(not a ferrolink key)"),
        }
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A stored key (never the secret itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Public id.
    pub id: KeyId,
    /// The app the key belongs to.
    pub app: String,
    /// What the key may do.
    pub privilege: Privilege,
    /// The device this key is for, if any.
    pub device: Option<String>,
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
    /// The names (or patterns) the key may register; `None`: any.
    pub functions: Option<Vec<String>>,
}

/// What a key may register, compiled: exact names, and patterns a
/// registered plain name may match. A pattern itself may be registered
/// only if it is on the list word for word, so a key limited to
/// `sensor_.*` cannot register `.*`.
#[derive(Debug)]
pub struct FunctionList {
    exact: Vec<String>,
    patterns: Vec<regex::Regex>,
}

impl FunctionList {
    /// Compiles a list; an entry that is not a valid pattern is an error.
    pub fn new(list: &[String]) -> Result<Self, String> {
        let mut patterns = Vec::new();
        for entry in list {
            if entry.is_empty() {
                return Err("an empty function name".to_owned());
            }
            if crate::names::is_pattern(entry) {
                let compiled = crate::names::compile(entry)
                    .map_err(|e| format!("\"{entry}\" is not a usable pattern: {e}"))?;
                patterns.push(compiled);
            }
        }
        Ok(Self {
            exact: list.to_vec(),
            patterns,
        })
    }

    /// Whether `name` may be registered.
    pub fn allows(&self, name: &str) -> bool {
        self.exact.iter().any(|e| e == name)
            || (!crate::names::is_pattern(name) && self.patterns.iter().any(|p| p.is_match(name)))
    }
}

/// Parses `server` / `client`.
pub fn parse_privilege(text: &str) -> Option<Privilege> {
    match text {
        "server" => Some(Privilege::Server),
        "client" => Some(Privilege::Client),
        _ => None,
    }
}

/// The name of a privilege as the CLI and storage spell it.
pub fn privilege_name(p: Privilege) -> &'static str {
    match p {
        Privilege::Server => "server",
        Privilege::Client => "client",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_an_id_and_differ() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.id().unwrap().0.len(), ID_LEN);
        assert!(a.expose().len() > 50);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let k = Secret::generate();
        let shown = format!("{k:?} {k}");
        assert!(!shown.contains(k.expose()), "{shown}");
        assert!(shown.contains(&k.id().unwrap().0));
    }

    #[test]
    fn wrong_key_with_the_right_id_does_not_match() {
        let k = Secret::generate();
        let stored = k.hash();
        let mut forged = k.expose().to_owned();
        forged.pop();
        forged.push('x');
        let forged = Secret::new(forged);
        assert_eq!(forged.id(), k.id());
        assert!(!forged.matches(&stored) || forged.expose() == k.expose());
        assert!(k.matches(&stored));
    }

    #[test]
    fn foreign_shapes_have_no_id() {
        for s in ["", "flk_", "flk_short_x", "abc", "flk_abcdefghij_"] {
            assert!(Secret::new(s).id().is_none(), "{s}");
        }
    }
}
