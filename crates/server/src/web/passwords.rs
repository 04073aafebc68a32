//! Password checks for user and operator logins, and sign-ups: throttled
//! per address and per account *before* any hash is computed, and every
//! hash through the server's [`HashGate`](crate::auth::HashGate).
//!
//! An attempt is counted when it arrives ([`Throttle::attempt`]); a
//! correct password takes its count back. So a thousand guesses sent at
//! once are a thousand counted attempts, of which only the free few are
//! ever hashed; the rest are refused with the time to wait.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use crate::edge::limits::block;
use crate::state::ServerState;
use crate::web::http::ApiError;

/// Why a password was not checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotChecked {
    /// Too many recent failures from this address or for this account.
    Throttled(Duration),
    /// The server is hashing as many passwords as it will right now.
    Busy,
}

impl NotChecked {
    /// The HTTP answer for an API client.
    pub(crate) fn api_error(self) -> ApiError {
        match self {
            Self::Throttled(wait) => ApiError(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many failed logins; try again in {:.0} s",
                    wait.as_secs_f64().ceil().max(1.0)
                ),
            ),
            Self::Busy => ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is busy checking other logins; try again in a few seconds".to_owned(),
            ),
        }
    }
}

/// A login attempt admitted past the throttles (and counted against them).
pub(crate) struct Attempt<'a> {
    state: &'a ServerState,
    address: IpAddr,
    account: String,
}

/// Counts a login attempt for `account` from `ip`, or refuses it unchecked.
pub(crate) fn admit(
    state: &ServerState,
    ip: IpAddr,
    account: String,
) -> Result<Attempt<'_>, NotChecked> {
    let now = Instant::now();
    let address = block(ip);
    state
        .login_throttle
        .attempt(&address, now)
        .map_err(NotChecked::Throttled)?;
    if let Err(wait) = state.account_throttle.attempt(&account, now) {
        state.login_throttle.refund(&address);
        return Err(NotChecked::Throttled(wait));
    }
    Ok(Attempt {
        state,
        address,
        account,
    })
}

impl Attempt<'_> {
    /// Checks `password` against `stored` (none: no such account, which
    /// costs the same). A correct password takes the attempt's counts back.
    pub(crate) async fn verify(
        self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, NotChecked> {
        match self.state.hash_gate.verify(password, stored).await {
            Ok(true) => {
                self.state.login_throttle.refund(&self.address);
                self.state.account_throttle.refund(&self.account);
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(crate::auth::Busy) => {
                // Not checked: the attempt does not count.
                self.state.login_throttle.refund(&self.address);
                self.state.account_throttle.refund(&self.account);
                Err(NotChecked::Busy)
            }
        }
    }
}

/// Hashes a new user's password, if `ip` may sign up now.
pub(crate) async fn sign_up(
    state: &ServerState,
    ip: IpAddr,
    password: String,
) -> Result<String, NotChecked> {
    let address = block(ip);
    state
        .signup_throttle
        .attempt(&address, Instant::now())
        .map_err(NotChecked::Throttled)?;
    match state
        .hash_gate
        .run(move || crate::auth::hash_password(&password))
        .await
    {
        Ok(hash) => Ok(hash),
        Err(crate::auth::Busy) => {
            state.signup_throttle.refund(&address);
            Err(NotChecked::Busy)
        }
    }
}
