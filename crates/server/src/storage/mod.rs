//! Embedded storage: one SQLite file in the data directory, created and
//! migrated on first open. The server and the CLI open the same file; SQLite
//! (WAL mode, a busy timeout) arbitrates between them.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::keys::{KeyId, KeyRecord, Secret, parse_privilege, privilege_name};
use ferrolink_proto::message::Privilege;

mod accounts;
pub(crate) mod files;
pub mod tables;
pub use accounts::{OperatorSession, UserRecord};

/// The database file name inside the data directory.
pub const DB_FILE: &str = "ferrolink.db";

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many have run. Append, never edit.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE apps (
        name        TEXT PRIMARY KEY,
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE keys (
        id          TEXT PRIMARY KEY,
        app         TEXT NOT NULL REFERENCES apps(name),
        privilege   TEXT NOT NULL CHECK (privilege IN ('server', 'client')),
        device      TEXT,
        hash        BLOB NOT NULL,
        created_at  INTEGER NOT NULL,
        revoked_at  INTEGER
    );
    CREATE UNIQUE INDEX keys_active_device ON keys(app, device)
        WHERE device IS NOT NULL AND revoked_at IS NULL;
"#,
    r#"
    ALTER TABLE apps ADD COLUMN anonymous_calls INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE apps ADD COLUMN signup INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE users (
        id          INTEGER PRIMARY KEY,
        app         TEXT NOT NULL REFERENCES apps(name),
        email       TEXT NOT NULL,
        password    TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        UNIQUE (app, email)
    );
    CREATE TABLE user_sessions (
        token_hash  BLOB PRIMARY KEY,
        user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL
    );
    CREATE TABLE operators (
        name        TEXT PRIMARY KEY,
        password    TEXT NOT NULL,
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE operator_sessions (
        token_hash  BLOB PRIMARY KEY,
        name        TEXT NOT NULL REFERENCES operators(name) ON DELETE CASCADE,
        csrf        TEXT NOT NULL,
        expires_at  INTEGER NOT NULL
    );
"#,
    r#"
    CREATE TABLE trust_bundles (
        sequence     INTEGER PRIMARY KEY,
        signer       BLOB NOT NULL,
        bundle       BLOB NOT NULL,
        published_at INTEGER NOT NULL
    );
"#,
    r#"
    ALTER TABLE keys ADD COLUMN functions TEXT;
"#,
    r#"
    CREATE TABLE data_tables (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        app         TEXT NOT NULL REFERENCES apps(name),
        name        TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        UNIQUE (app, name)
    );
    CREATE TABLE data_columns (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        table_id    INTEGER NOT NULL REFERENCES data_tables(id),
        name        TEXT NOT NULL,
        kind        TEXT NOT NULL,
        linked      TEXT,
        UNIQUE (table_id, name)
    );
"#,
    r#"
    ALTER TABLE data_tables ADD COLUMN client_access TEXT NOT NULL DEFAULT 'none';
    ALTER TABLE data_tables ADD COLUMN client_login INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE secrets (
        name        TEXT PRIMARY KEY,
        value       BLOB NOT NULL
    );
"#,
    r#"
    ALTER TABLE apps ADD COLUMN auto_columns INTEGER NOT NULL DEFAULT 0;
"#,
];

/// A storage failure, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No app of that name.
    #[error("no app named \"{0}\"; list apps with `ferrolink app list`")]
    NoSuchApp(String),
    /// The app already exists.
    #[error("an app named \"{0}\" already exists")]
    AppExists(String),
    /// Bad app or device name.
    #[error("invalid {what} \"{name}\": use 1-64 characters from a-z, A-Z, 0-9, '-', '_' and '.'")]
    InvalidName {
        /// App or device.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// Another active key already names that device.
    #[error("app \"{app}\" already has an active key for device \"{device}\"; revoke it first")]
    DeviceTaken {
        /// The app.
        app: String,
        /// The device.
        device: String,
    },
    /// The email is already registered in the app.
    #[error("{email} already has an account in app \"{app}\"; log in instead")]
    UserExists {
        /// The app.
        app: String,
        /// The email.
        email: String,
    },
    /// The operator already exists.
    #[error("operator \"{0}\" already exists; pass --replace to set a new password")]
    OperatorExists(String),
    /// A key's function list has an entry that cannot be used.
    #[error("invalid --functions: {0}")]
    BadFunctions(String),
    /// Nothing matches a revoke request.
    #[error("no active key has id or device name \"{0}\"; see `ferrolink key list`")]
    NoSuchKey(String),
    /// A device name matches keys of several apps.
    #[error("device name \"{name}\" matches keys {ids}; revoke one of them by key id")]
    Ambiguous {
        /// The name given.
        name: String,
        /// The matching key ids.
        ids: String,
    },
    /// A trust bundle that is not one, or not self-consistent.
    #[error("not a usable trust bundle: {0}")]
    BadTrustBundle(#[source] ferrolink_proto::trust::BundleError),
    /// A trust bundle not newer than the one published.
    #[error(
        "trust bundle {offered} is not newer than the published bundle {published}; sign it with a higher --sequence"
    )]
    TrustBundleNotNewer {
        /// The sequence offered.
        offered: u64,
        /// The newest published.
        published: u64,
    },
    /// The data directory could not be created or opened.
    #[error("cannot use data directory {}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A data table, column or value that cannot be used (the message
    /// says which and why).
    #[error("{0}")]
    BadTable(String),
    /// A column a table does not have (the message lists those it has).
    #[error("{0}")]
    NoSuchColumn(String),
    /// Another transaction changed the database first; try again.
    #[error("another transaction changed these rows first; try again")]
    Conflict,
    /// A copy of the database failed SQLite's integrity check.
    #[error("the copy {} failed SQLite's integrity check: {detail}", path.display())]
    Corrupt {
        /// The copy.
        path: PathBuf,
        /// What `PRAGMA integrity_check` said.
        detail: String,
    },
    /// SQLite failed.
    #[error("database error in {}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
}

/// The embedded database.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    /// Read-only connections for data table reads, so that a long search
    /// does not hold the connection every login and write needs (WAL lets
    /// them read while it writes).
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
    fresh: bool,
}

/// A stored app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRecord {
    /// The app's name (its id on the wire).
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
    /// Whether browser sessions without a logged-in user may call functions.
    pub anonymous_calls: bool,
    /// Whether visitors may create user accounts themselves.
    pub signup: bool,
    /// Whether the app's server code creates data table columns by adding
    /// rows with values for them.
    pub auto_columns: bool,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Checks an app or device name.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName {
            what,
            name: name.to_owned(),
        })
    }
}

impl Store {
    /// Opens (creating and migrating if needed) the database in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)?;
        let version: usize = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.execute_batch(migration).map_err(sql)?;
            tx.pragma_update(None, "user_version", i + 1).map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        Ok(Self {
            conn: Mutex::new(conn),
            readers: Mutex::default(),
            path,
            fresh: version == 0,
        })
    }

    /// Whether this open created the database.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        // A poisoned lock only means another thread panicked mid-query;
        // SQLite itself is still consistent, so carry on with the connection.
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(|source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    /// Checks that the database answers (a read of its schema version).
    pub fn ping(&self) -> Result<(), StoreError> {
        self.with(|c| c.query_row("PRAGMA user_version", [], |_| Ok(())))
    }

    /// Copies the database of `data_dir` to `dest` while a server may be
    /// using it (SQLite's online backup: a consistent snapshot of one
    /// moment, copied in steps so writers are held up only briefly), then
    /// checks the copy with `PRAGMA integrity_check`. The source is opened
    /// read-only: no migration runs, so a newer binary can back up an
    /// older server's data as it is. `dest` must not exist.
    pub fn backup(data_dir: &Path, dest: &Path) -> Result<(), StoreError> {
        let path = data_dir.join(DB_FILE);
        let at_source = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let at_dest = |source| StoreError::Sqlite {
            path: dest.to_owned(),
            source,
        };
        let src = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(at_source)?;
        src.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(at_source)?;
        let mut out = Connection::open(dest).map_err(at_dest)?;
        {
            let backup = rusqlite::backup::Backup::new(&src, &mut out).map_err(at_dest)?;
            backup
                .run_to_completion(256, std::time::Duration::from_millis(5), None)
                .map_err(at_dest)?;
        }
        let ok: String = out
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(at_dest)?;
        if ok != "ok" {
            return Err(StoreError::Corrupt {
                path: dest.to_owned(),
                detail: ok,
            });
        }
        Ok(())
    }

    /// Creates an app. Its pages' anonymous visitors may not call device
    /// functions until the operator allows it ([`Store::set_app`]); sign-up
    /// is open.
    pub fn create_app(&self, name: &str) -> Result<AppRecord, StoreError> {
        self.create_app_with(name, false)
    }

    /// Creates an app whose anonymous visitors may (or may not) call
    /// device functions (the demo app allows it).
    pub fn create_app_with(
        &self,
        name: &str,
        anonymous_calls: bool,
    ) -> Result<AppRecord, StoreError> {
        validate_name("app name", name)?;
        let created_at = now_secs();
        let inserted = self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO apps (name, created_at, anonymous_calls) VALUES (?1, ?2, ?3)",
                params![name, created_at, anonymous_calls],
            )
        })?;
        if inserted == 0 {
            return Err(StoreError::AppExists(name.to_owned()));
        }
        Ok(AppRecord {
            name: name.to_owned(),
            created_at,
            anonymous_calls,
            signup: true,
            auto_columns: false,
        })
    }

    /// All apps, by name.
    pub fn apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT name, created_at, anonymous_calls, signup, auto_columns FROM apps ORDER BY name",
            )?;
            let rows = stmt.query_map([], row_to_app)?;
            rows.collect()
        })
    }

    /// One app by name.
    pub fn app(&self, name: &str) -> Result<AppRecord, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT name, created_at, anonymous_calls, signup, auto_columns FROM apps WHERE name = ?1",
                [name],
                row_to_app,
            )
            .optional()
        })?
        .ok_or_else(|| StoreError::NoSuchApp(name.to_owned()))
    }

    /// Changes an app's settings; `None` leaves a setting as it is.
    pub fn set_app(
        &self,
        name: &str,
        anonymous_calls: Option<bool>,
        signup: Option<bool>,
    ) -> Result<AppRecord, StoreError> {
        let changed = self.with(|c| {
            c.execute(
                "UPDATE apps SET anonymous_calls = coalesce(?2, anonymous_calls),
                                 signup = coalesce(?3, signup) WHERE name = ?1",
                params![name, anonymous_calls, signup],
            )
        })?;
        if changed == 0 {
            return Err(StoreError::NoSuchApp(name.to_owned()));
        }
        self.app(name)
    }

    /// Sets whether the app's server code creates data table columns by
    /// adding rows with values for them (docs/tables.md).
    pub fn set_auto_columns(&self, name: &str, on: bool) -> Result<AppRecord, StoreError> {
        let changed = self.with(|c| {
            c.execute(
                "UPDATE apps SET auto_columns = ?2 WHERE name = ?1",
                params![name, on],
            )
        })?;
        if changed == 0 {
            return Err(StoreError::NoSuchApp(name.to_owned()));
        }
        self.app(name)
    }

    /// Creates a key and returns it with its secret, which is not stored.
    pub fn create_key(
        &self,
        app: &str,
        privilege: Privilege,
        device: Option<&str>,
    ) -> Result<(KeyRecord, Secret), StoreError> {
        if let Some(d) = device {
            validate_name("device name", d)?;
        }
        let exists = self.with(|c| {
            c.query_row("SELECT 1 FROM apps WHERE name = ?1", [app], |_| Ok(()))
                .optional()
        })?;
        if exists.is_none() {
            return Err(StoreError::NoSuchApp(app.to_owned()));
        }
        let secret = Secret::generate();
        let record = KeyRecord {
            id: secret.id().expect("generated keys always have an id"),
            app: app.to_owned(),
            privilege,
            device: device.map(str::to_owned),
            hash: secret.hash(),
            created_at: now_secs(),
            revoked_at: None,
            functions: None,
        };
        let result = self.with(|c| {
            c.execute(
                "INSERT INTO keys (id, app, privilege, device, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    record.id.0,
                    record.app,
                    privilege_name(privilege),
                    record.device,
                    &record.hash[..],
                    record.created_at
                ],
            )
        });
        match result {
            Ok(_) => Ok((record, secret)),
            Err(StoreError::Sqlite {
                source: rusqlite::Error::SqliteFailure(e, _),
                ..
            }) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                Err(StoreError::DeviceTaken {
                    app: app.to_owned(),
                    device: device.unwrap_or_default().to_owned(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Keys, optionally of one app, oldest first.
    pub fn keys(&self, app: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, app, privilege, device, hash, created_at, revoked_at, functions FROM keys
                 WHERE ?1 IS NULL OR app = ?1 ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([app], row_to_key)?;
            rows.filter_map(|r| r.transpose()).collect()
        })
    }

    /// One key by id.
    pub fn key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT id, app, privilege, device, hash, created_at, revoked_at, functions FROM keys WHERE id = ?1",
                [&id.0],
                row_to_key,
            )
            .optional()
            .map(Option::flatten)
        })
    }

    /// Limits the names key `id` may register to `functions` (exact names,
    /// or patterns that registered names must match in full); `None` lifts
    /// the limit. Patterns are checked here, so a typo is an error now
    /// rather than a refused device later.
    pub fn restrict_key(
        &self,
        id: &KeyId,
        functions: Option<&[String]>,
    ) -> Result<KeyRecord, StoreError> {
        if let Some(list) = functions {
            crate::keys::FunctionList::new(list).map_err(StoreError::BadFunctions)?;
        }
        let text = functions.map(|l| l.join("\n"));
        let changed = self.with(|c| {
            c.execute(
                "UPDATE keys SET functions = ?2 WHERE id = ?1",
                params![id.0, text],
            )
        })?;
        if changed == 0 {
            return Err(StoreError::NoSuchKey(id.0.clone()));
        }
        self.key(id)?
            .ok_or_else(|| StoreError::NoSuchKey(id.0.clone()))
    }

    /// Revokes the active key with this id, or the active key of this device.
    pub fn revoke(&self, id_or_device: &str) -> Result<KeyRecord, StoreError> {
        let active: Vec<KeyRecord> = self
            .keys(None)?
            .into_iter()
            .filter(|k| k.revoked_at.is_none())
            .collect();
        let by_id: Vec<&KeyRecord> = active.iter().filter(|k| k.id.0 == id_or_device).collect();
        let matches: Vec<&KeyRecord> = if by_id.is_empty() {
            active
                .iter()
                .filter(|k| k.device.as_deref() == Some(id_or_device))
                .collect()
        } else {
            by_id
        };
        let key = match matches.as_slice() {
            [] => return Err(StoreError::NoSuchKey(id_or_device.to_owned())),
            [one] => (*one).clone(),
            many => {
                return Err(StoreError::Ambiguous {
                    name: id_or_device.to_owned(),
                    ids: many
                        .iter()
                        .map(|k| k.id.0.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        };
        let at = now_secs();
        self.with(|c| {
            c.execute(
                "UPDATE keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![key.id.0, at],
            )
        })?;
        Ok(KeyRecord {
            revoked_at: Some(at),
            ..key
        })
    }

    /// A number that changes whenever another connection (such as the CLI)
    /// commits to the database.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        self.with(|c| c.query_row("PRAGMA data_version", [], |r| r.get(0)))
    }

    /// Publishes a signed trust bundle for devices to fetch: it must carry
    /// a valid signature by the key it names and a sequence higher than
    /// every published one. Returns its sequence.
    pub fn publish_trust_bundle(&self, bundle: &[u8]) -> Result<u64, StoreError> {
        use ferrolink_proto::trust;
        let signer: [u8; 32] =
            bundle
                .get(5..37)
                .and_then(|s| s.try_into().ok())
                .ok_or(StoreError::BadTrustBundle(trust::BundleError::Malformed(
                    "too short",
                )))?;
        let parsed = trust::verify(bundle, &signer).map_err(StoreError::BadTrustBundle)?;
        let offered = parsed.sequence();
        if let Some((published, _)) = self.trust_bundle()?
            && published >= offered
        {
            return Err(StoreError::TrustBundleNotNewer { offered, published });
        }
        let sequence = i64::try_from(offered).map_err(|_| {
            StoreError::BadTrustBundle(trust::BundleError::Malformed("sequence above 2^63"))
        })?;
        self.with(|c| {
            c.execute(
                "INSERT INTO trust_bundles (sequence, signer, bundle, published_at) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![sequence, &signer[..], bundle, now_secs()],
            )
        })?;
        Ok(offered)
    }

    /// The newest published trust bundle: its sequence and bytes.
    pub fn trust_bundle(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT sequence, bundle FROM trust_bundles ORDER BY sequence DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?)),
            )
            .optional()
        })
    }
}

fn row_to_app(r: &rusqlite::Row<'_>) -> rusqlite::Result<AppRecord> {
    Ok(AppRecord {
        name: r.get(0)?,
        created_at: r.get(1)?,
        anonymous_calls: r.get(2)?,
        signup: r.get(3)?,
        auto_columns: r.get(4)?,
    })
}

fn row_to_key(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<KeyRecord>> {
    let privilege: String = r.get(2)?;
    let hash: Vec<u8> = r.get(4)?;
    let (Some(privilege), Ok(hash)) = (parse_privilege(&privilege), <[u8; 32]>::try_from(hash))
    else {
        // The schema's CHECK makes this unreachable for rows we wrote; skip
        // anything else rather than fail every listing.
        return Ok(None);
    };
    Ok(Some(KeyRecord {
        id: KeyId(r.get(0)?),
        app: r.get(1)?,
        privilege,
        device: r.get(3)?,
        hash,
        created_at: r.get(5)?,
        revoked_at: r.get(6)?,
        functions: r
            .get::<_, Option<String>>(7)?
            .map(|list| list.lines().map(str::to_owned).collect()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stored_only_as_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.is_fresh());
        store.create_app("demo").unwrap();
        let (_, secret) = store.create_key("demo", Privilege::Server, None).unwrap();
        drop(store);
        let raw = std::fs::read(dir.path().join(DB_FILE)).unwrap();
        let wal = std::fs::read(dir.path().join("ferrolink.db-wal")).unwrap_or_default();
        let hay = [raw, wal].concat();
        let needle = secret.expose().as_bytes();
        assert!(!hay.windows(needle.len()).any(|w| w == needle));
        assert!(!Store::open(dir.path()).unwrap().is_fresh());
    }

    #[test]
    fn revoke_by_device_name_and_device_names_are_unique_while_active() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.create_app("a").unwrap();
        store
            .create_key("a", Privilege::Server, Some("pico-1"))
            .unwrap();
        let err = store
            .create_key("a", Privilege::Server, Some("pico-1"))
            .unwrap_err();
        assert!(matches!(err, StoreError::DeviceTaken { .. }), "{err}");
        let revoked = store.revoke("pico-1").unwrap();
        assert!(revoked.revoked_at.is_some());
        store
            .create_key("a", Privilege::Server, Some("pico-1"))
            .unwrap();
        assert!(matches!(
            store.revoke("nope"),
            Err(StoreError::NoSuchKey(_))
        ));
    }

    #[test]
    fn keys_for_missing_apps_and_bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(matches!(
            store.create_key("ghost", Privilege::Client, None),
            Err(StoreError::NoSuchApp(_))
        ));
        assert!(matches!(
            store.create_app("a b"),
            Err(StoreError::InvalidName { .. })
        ));
        store.create_app("x").unwrap();
        assert!(matches!(
            store.create_app("x"),
            Err(StoreError::AppExists(_))
        ));
    }
}
