//! App users, operators, and their login sessions.

use super::{Store, StoreError, now_secs};

/// A stored app user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Row id.
    pub id: i64,
    /// The app the account belongs to.
    pub app: String,
    /// Normalised email address.
    pub email: String,
    /// PHC password hash.
    pub password: String,
}

/// A live operator (dashboard) session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSession {
    /// The operator's name.
    pub name: String,
    /// The token that must accompany every change made in this session.
    pub csrf: String,
}

impl Store {
    /// Creates a user of `app` with an already hashed password.
    pub fn create_user(
        &self,
        app: &str,
        email: &str,
        password_hash: &str,
    ) -> Result<i64, StoreError> {
        self.app(app)?;
        let result = self.rows_raw(
            "INSERT INTO users (app, email, password, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
            &[app.into(), email.into(), password_hash.into(), now_secs().into()],
        );
        match result {
            Ok(rows) => rows
                .first()
                .map(|r| r.int(0))
                .transpose()
                .map_err(|e| self.db_error(e))?
                .ok_or_else(|| StoreError::Unreadable("no id for a new user".to_owned())),
            Err(e) if e.is_unique_violation() => Err(StoreError::UserExists {
                app: app.to_owned(),
                email: email.to_owned(),
            }),
            Err(e) => Err(self.db_error(e)),
        }
    }

    /// The user of `app` with this (normalised) email.
    pub fn user(&self, app: &str, email: &str) -> Result<Option<UserRecord>, StoreError> {
        self.row(
            "SELECT id, app, email, password FROM users WHERE app = $1 AND email = $2",
            &[app.into(), email.into()],
            |r| {
                Ok(UserRecord {
                    id: r.int(0)?,
                    app: r.text(1)?,
                    email: r.text(2)?,
                    password: r.text(3)?,
                })
            },
        )
    }

    /// Number of users of `app`.
    pub fn user_count(&self, app: &str) -> Result<u64, StoreError> {
        self.count("SELECT count(*) FROM users WHERE app = $1", &[app.into()])
    }

    /// Records a login session for a user, valid until `expires_at`.
    pub fn create_user_session(
        &self,
        user_id: i64,
        token_hash: &[u8; 32],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO user_sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
            &[(&token_hash[..]).into(), user_id.into(), now_secs().into(), expires_at.into()],
        )
        .map(drop)
    }

    /// The email of the user a live session of `app` belongs to.
    pub fn user_session(
        &self,
        app: &str,
        token_hash: &[u8; 32],
    ) -> Result<Option<String>, StoreError> {
        self.row(
            "SELECT u.email FROM user_sessions s JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = $1 AND u.app = $2 AND s.expires_at > $3",
            &[(&token_hash[..]).into(), app.into(), now_secs().into()],
            |r| r.text(0),
        )
    }

    /// Ends a user session (logging out); unknown tokens are ignored.
    pub fn delete_user_session(&self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.exec(
            "DELETE FROM user_sessions WHERE token_hash = $1 OR expires_at <= $2",
            &[(&token_hash[..]).into(), now_secs().into()],
        )
        .map(drop)
    }

    /// Creates an operator, or with `replace` sets a new password for an
    /// existing one (ending their sessions).
    pub fn create_operator(
        &self,
        name: &str,
        password_hash: &str,
        replace: bool,
    ) -> Result<(), StoreError> {
        super::validate_name("operator name", name)?;
        let sql = if replace {
            "INSERT INTO operators (name, password, created_at) VALUES ($1, $2, $3)
             ON CONFLICT(name) DO UPDATE SET password = excluded.password"
        } else {
            "INSERT INTO operators (name, password, created_at) VALUES ($1, $2, $3)"
        };
        match self.exec_raw(sql, &[name.into(), password_hash.into(), now_secs().into()]) {
            Ok(_) => {}
            Err(e) if e.is_unique_violation() => {
                return Err(StoreError::OperatorExists(name.to_owned()));
            }
            Err(e) => return Err(self.db_error(e)),
        }
        self.exec(
            "DELETE FROM operator_sessions WHERE name = $1",
            &[name.into()],
        )
        .map(drop)
    }

    /// Number of operators.
    pub fn operator_count(&self) -> Result<u64, StoreError> {
        self.count("SELECT count(*) FROM operators", &[])
    }

    /// An operator's password hash.
    pub fn operator_password(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.row(
            "SELECT password FROM operators WHERE name = $1",
            &[name.into()],
            |r| r.text(0),
        )
    }

    /// Records an operator session.
    pub fn create_operator_session(
        &self,
        name: &str,
        token_hash: &[u8; 32],
        csrf: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO operator_sessions (token_hash, name, csrf, expires_at) VALUES ($1, $2, $3, $4)",
            &[(&token_hash[..]).into(), name.into(), csrf.into(), expires_at.into()],
        )
        .map(drop)
    }

    /// The live operator session with this token.
    pub fn operator_session(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<OperatorSession>, StoreError> {
        self.row(
            "SELECT name, csrf FROM operator_sessions WHERE token_hash = $1 AND expires_at > $2",
            &[(&token_hash[..]).into(), now_secs().into()],
            |r| {
                Ok(OperatorSession {
                    name: r.text(0)?,
                    csrf: r.text(1)?,
                })
            },
        )
    }

    /// Ends an operator session (and forgets expired ones).
    pub fn delete_operator_session(&self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.exec(
            "DELETE FROM operator_sessions WHERE token_hash = $1 OR expires_at <= $2",
            &[(&token_hash[..]).into(), now_secs().into()],
        )
        .map(drop)
    }

    /// Deletes every user and operator session that expired before `now`
    /// (seconds since the Unix epoch); returns how many.
    pub fn purge_expired_sessions(&self, now: i64) -> Result<usize, StoreError> {
        let users = self.exec(
            "DELETE FROM user_sessions WHERE expires_at <= $1",
            &[now.into()],
        )?;
        let operators = self.exec(
            "DELETE FROM operator_sessions WHERE expires_at <= $1",
            &[now.into()],
        )?;
        Ok((users + operators) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token_hash;
    use crate::storage::tests::on_both;

    #[test]
    fn expired_sessions_are_purged_and_live_ones_kept() {
        on_both(|store| {
            store.create_app("a").unwrap();
            let id = store.create_user("a", "x@y.z", "hash").unwrap();
            store
                .create_user_session(id, &token_hash("old"), 100)
                .unwrap();
            store
                .create_user_session(id, &token_hash("new"), 10_000)
                .unwrap();
            store.create_operator("ops", "hash", false).unwrap();
            store
                .create_operator_session("ops", &token_hash("op-old"), "c", 50)
                .unwrap();
            assert_eq!(store.purge_expired_sessions(1_000).unwrap(), 2);
            assert_eq!(store.purge_expired_sessions(1_000).unwrap(), 0);
            assert_eq!(store.purge_expired_sessions(20_000).unwrap(), 1);
        });
    }

    #[test]
    fn users_sessions_and_operators_round_trip() {
        on_both(|store| {
            store.create_app("a").unwrap();
            store.create_app("b").unwrap();
            let id = store.create_user("a", "ada@example.org", "h").unwrap();
            assert!(matches!(
                store.create_user("a", "ada@example.org", "h"),
                Err(StoreError::UserExists { .. })
            ));
            assert!(matches!(
                store.create_user("nope", "x@y", "h"),
                Err(StoreError::NoSuchApp(_))
            ));
            let t = token_hash("tok");
            store.create_user_session(id, &t, now_secs() + 60).unwrap();
            assert_eq!(
                store.user_session("a", &t).unwrap().as_deref(),
                Some("ada@example.org")
            );
            assert_eq!(
                store.user_session("b", &t).unwrap(),
                None,
                "sessions belong to one app"
            );
            store.delete_user_session(&t).unwrap();
            assert_eq!(store.user_session("a", &t).unwrap(), None);
            let old = token_hash("old");
            store.create_user_session(id, &old, now_secs() - 1).unwrap();
            assert_eq!(store.user_session("a", &old).unwrap(), None, "expired");

            store.create_operator("root", "p1", false).unwrap();
            assert!(matches!(
                store.create_operator("root", "p2", false),
                Err(StoreError::OperatorExists(_))
            ));
            let s = token_hash("s");
            store
                .create_operator_session("root", &s, "csrf", now_secs() + 60)
                .unwrap();
            assert_eq!(store.operator_session(&s).unwrap().unwrap().csrf, "csrf");
            store.create_operator("root", "p2", true).unwrap();
            assert_eq!(
                store.operator_password("root").unwrap().as_deref(),
                Some("p2")
            );
            assert_eq!(
                store.operator_session(&s).unwrap(),
                None,
                "a new password ends sessions"
            );
            assert_eq!(store.operator_count().unwrap(), 1);
        });
    }
}
