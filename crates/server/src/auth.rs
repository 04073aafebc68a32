//! Secrets that people choose or carry: password hashing (argon2id),
//! session tokens, and the checks on what users type.
//!
//! Passwords are hashed with argon2id at the crate's default cost (19 MiB,
//! 2 passes), which is what OWASP recommends as a minimum; session tokens
//! are 256 random bits, stored only as SHA-256 (they are random, so a fast
//! hash is right, as for uplink keys).

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 8;
/// Longest password accepted (argon2 takes any length; this bounds the work).
pub const MAX_PASSWORD: usize = 1024;

/// Hashes a password as a PHC string (`$argon2id$v=19$...`).
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt length");
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters accepts any password")
        .to_string()
}

/// Whether `password` matches the PHC string `stored`. A malformed stored
/// hash never matches.
pub fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|hash| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// The gate every password hash goes through: at most one hash per core
/// at a time (argon2id takes 19 MiB and tens of milliseconds each), and a
/// short queue behind them; past the queue, requests are turned away at
/// once instead of piling up threads and memory.
#[derive(Debug)]
pub(crate) struct HashGate {
    permits: tokio::sync::Semaphore,
    waiting: std::sync::atomic::AtomicUsize,
    max_waiting: usize,
}

/// How long a hash may wait for its turn before the request is turned away.
const HASH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The gate is full: the server is hashing as many passwords as it will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Busy;

impl HashGate {
    /// A gate with one permit per core and a queue of `max_waiting`.
    pub(crate) fn new(max_waiting: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Self {
            permits: tokio::sync::Semaphore::new(cores),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// Runs `work` (a hash) on a blocking thread once a permit is free.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        use std::sync::atomic::Ordering;
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let permit = if queued >= self.max_waiting {
            None
        } else {
            tokio::time::timeout(HASH_WAIT, self.permits.acquire())
                .await
                .ok()
                .and_then(Result::ok)
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let Some(_permit) = permit else {
            return Err(Busy);
        };
        tokio::task::spawn_blocking(work).await.map_err(|_| Busy)
    }

    /// Verifies `password` against `stored`. Without a stored hash (no
    /// such user) it verifies against a dummy hash and answers false, so a
    /// wrong name costs as long as a wrong password.
    pub(crate) async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, Busy> {
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        self.run(move || match stored {
            Some(hash) => verify_password(&password, &hash),
            None => {
                let dummy = DUMMY.get_or_init(|| hash_password("ferrolink-no-such-user"));
                let _ = verify_password(&password, dummy);
                false
            }
        })
        .await
    }
}

/// A new random token (256 bits, URL-safe base64).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What is stored for a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Why an email or password was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    /// Not an email address.
    #[error("\"{0}\" is not an email address (expected name@domain)")]
    Email(String),
    /// Too short or too long.
    #[error("passwords must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long")]
    PasswordLength,
}

/// Normalises an email address (trimmed, lower case) or says what is wrong.
pub fn normalize_email(email: &str) -> Result<String, CredentialError> {
    let email = email.trim().to_lowercase();
    let valid = (3..=254).contains(&email.len())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(email)
    } else {
        let mut shown: String = email.chars().take(64).collect();
        if email.chars().count() > 64 {
            shown.push('…');
        }
        Err(CredentialError::Email(shown))
    }
}

/// Checks a new password's length (in characters).
pub fn check_password(password: &str) -> Result<(), CredentialError> {
    let n = password.chars().count();
    if (MIN_PASSWORD..=MAX_PASSWORD).contains(&n) && password.len() <= 4 * MAX_PASSWORD {
        Ok(())
    } else {
        Err(CredentialError::PasswordLength)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_with_the_right_text() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsE", &h));
        assert!(!verify_password("correct horse", "not a hash"));
        assert_ne!(h, hash_password("correct horse"), "salts differ");
    }

    #[test]
    fn emails_and_passwords_are_checked() {
        assert_eq!(
            normalize_email(" Ada@Example.org ").unwrap(),
            "ada@example.org"
        );
        for bad in ["", "ada", "@x", "a@", "a b@c", "a@b@c", &"x".repeat(300)] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        assert!(check_password("short").is_err());
        assert!(check_password("long enough").is_ok());
        assert!(check_password(&"p".repeat(2000)).is_err());
    }

    #[test]
    fn tokens_are_random_and_hash_stably() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(token_hash(&a), token_hash(&a));
    }
}
