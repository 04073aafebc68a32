//! Storage: by default one SQLite file in the data directory, created and
//! migrated on first open (the server and the CLI open the same file;
//! SQLite, in WAL mode with a busy timeout, arbitrates between them); or,
//! with `--database postgres://…`, a PostgreSQL database that several
//! servers share. Apps, keys, accounts and trust bundles live in either
//! (`sql.rs` is the one interface both answer); data tables are SQLite's
//! only for now.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use sql::{Database, DbError, Param, Row};

use crate::keys::{KeyId, KeyRecord, Secret, parse_privilege, privilege_name};
use ferrolink_proto::message::Privilege;

mod accounts;
pub(crate) mod files;
mod migrate;
mod sql;
mod table_sql;
pub mod tables;
pub use accounts::{OperatorSession, UserRecord};
pub use migrate::Migrated;

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

/// The same schema for PostgreSQL, applied in order
/// under an advisory lock so that nodes starting together migrate once;
/// `schema_version` records how many have run. Append, never edit.
/// `data_version` counts changes to apps, keys and trust bundles, which
/// every node polls (SQLite's `PRAGMA data_version` does this there).
const PG_MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE apps (
        name            TEXT PRIMARY KEY,
        created_at      BIGINT NOT NULL,
        anonymous_calls BIGINT NOT NULL DEFAULT 1,
        signup          BIGINT NOT NULL DEFAULT 1,
        auto_columns    BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE keys (
        id          TEXT PRIMARY KEY,
        app         TEXT NOT NULL REFERENCES apps(name),
        privilege   TEXT NOT NULL CHECK (privilege IN ('server', 'client')),
        device      TEXT,
        hash        BYTEA NOT NULL,
        created_at  BIGINT NOT NULL,
        revoked_at  BIGINT,
        functions   TEXT
    );
    CREATE UNIQUE INDEX keys_active_device ON keys(app, device)
        WHERE device IS NOT NULL AND revoked_at IS NULL;
    CREATE TABLE users (
        id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        app         TEXT NOT NULL REFERENCES apps(name),
        email       TEXT NOT NULL,
        password    TEXT NOT NULL,
        created_at  BIGINT NOT NULL,
        UNIQUE (app, email)
    );
    CREATE TABLE user_sessions (
        token_hash  BYTEA PRIMARY KEY,
        user_id     BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at  BIGINT NOT NULL,
        expires_at  BIGINT NOT NULL
    );
    CREATE TABLE operators (
        name        TEXT PRIMARY KEY,
        password    TEXT NOT NULL,
        created_at  BIGINT NOT NULL
    );
    CREATE TABLE operator_sessions (
        token_hash  BYTEA PRIMARY KEY,
        name        TEXT NOT NULL REFERENCES operators(name) ON DELETE CASCADE,
        csrf        TEXT NOT NULL,
        expires_at  BIGINT NOT NULL
    );
    CREATE TABLE trust_bundles (
        sequence     BIGINT PRIMARY KEY,
        signer       BYTEA NOT NULL,
        bundle       BYTEA NOT NULL,
        published_at BIGINT NOT NULL
    );
    CREATE TABLE secrets (
        name        TEXT PRIMARY KEY,
        value       BYTEA NOT NULL
    );
    CREATE TABLE data_version (n BIGINT NOT NULL);
    INSERT INTO data_version VALUES (0);
    CREATE FUNCTION ferrolink_changed() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        UPDATE data_version SET n = n + 1;
        RETURN NULL;
    END
    $fn$;
    CREATE TRIGGER apps_changed AFTER INSERT OR UPDATE OR DELETE ON apps
        FOR EACH STATEMENT EXECUTE FUNCTION ferrolink_changed();
    CREATE TRIGGER keys_changed AFTER INSERT OR UPDATE OR DELETE ON keys
        FOR EACH STATEMENT EXECUTE FUNCTION ferrolink_changed();
    CREATE TRIGGER trust_bundles_changed AFTER INSERT OR UPDATE OR DELETE ON trust_bundles
        FOR EACH STATEMENT EXECUTE FUNCTION ferrolink_changed();
"#,
    r#"
    CREATE TABLE data_tables (
        id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        app           TEXT NOT NULL REFERENCES apps(name),
        name          TEXT NOT NULL,
        created_at    BIGINT NOT NULL,
        client_access TEXT NOT NULL DEFAULT 'none',
        client_login  BIGINT NOT NULL DEFAULT 0,
        UNIQUE (app, name)
    );
    CREATE TABLE data_columns (
        id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        table_id    BIGINT NOT NULL REFERENCES data_tables(id),
        name        TEXT NOT NULL,
        kind        TEXT NOT NULL,
        linked      TEXT,
        UNIQUE (table_id, name)
    );
"#,
];

/// `url` with any password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    sql::redact(url)
}

/// Whether `database` names a PostgreSQL database.
pub fn is_postgres_url(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

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
    /// PostgreSQL refused a statement.
    #[error("database error (PostgreSQL at {url})")]
    Postgres {
        /// The database, without its password.
        url: String,
        /// The cause.
        #[source]
        source: postgres::Error,
    },
    /// The database cannot be reached (the message says which and why).
    #[error("{0}")]
    Unavailable(String),
    /// Something this storage does not offer (the message says what to
    /// use instead).
    #[error("{0}")]
    Unsupported(String),
    /// A row this version of ferrolink cannot read.
    #[error("the database holds a row this version cannot read: {0}")]
    Unreadable(String),
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
    db: Database,
    /// Read-only connections for data table reads, so that a long search
    /// does not hold the connection every login and write needs (WAL lets
    /// them read while it writes).
    readers: Mutex<Vec<Connection>>,
    /// On PostgreSQL, the connections data table operations run on.
    pg_tables: Option<table_sql::PgPool>,
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
    /// Opens (creating and migrating if needed) the SQLite database in
    /// `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_database(data_dir, None)
    }

    /// Opens the database `database` names — a `postgres://` URL — or,
    /// without one, the SQLite database in `data_dir`; creates and
    /// migrates its schema if needed.
    pub fn open_database(data_dir: &Path, database: Option<&str>) -> Result<Self, StoreError> {
        match database {
            Some(url) if is_postgres_url(url) => Self::open_postgres(url),
            Some(other) => Err(StoreError::Unsupported(format!(
                "--database {}: expected a postgres:// URL (or no --database for SQLite in the data directory)",
                sql::redact(other)
            ))),
            None => Self::open_sqlite(data_dir),
        }
    }

    fn open_sqlite(data_dir: &Path) -> Result<Self, StoreError> {
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
            db: Database::Sqlite {
                conn: Mutex::new(conn),
                path,
            },
            readers: Mutex::default(),
            pg_tables: None,
            fresh: version == 0,
        })
    }

    fn open_postgres(url: &str) -> Result<Self, StoreError> {
        let shown = sql::redact(url);
        let pg = sql::Postgres::connect(url).map_err(|e| match e {
            DbError::Postgres(source) => StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL at {shown}: {}; check that it runs and that --database (or FERROLINK_DATABASE) names it",
                sql::causes(&source)
            )),
            other => db_error(other, None, &shown),
        })?;
        let store = Self {
            db: Database::Postgres(pg),
            readers: Mutex::default(),
            pg_tables: Some(table_sql::PgPool::new(url, &shown)?),
            fresh: false,
        };
        let migrations: Vec<String> = PG_MIGRATIONS.iter().map(|m| (*m).to_owned()).collect();
        let Database::Postgres(pg) = &store.db else {
            unreachable!("made above")
        };
        let version = pg
            .run(move |c| {
                let mut tx = c.transaction()?;
                // One node migrates; the others wait here, then find it done.
                tx.batch_execute(
                    "SELECT pg_advisory_xact_lock(727384501);
                     CREATE TABLE IF NOT EXISTS schema_version (n BIGINT NOT NULL);
                     INSERT INTO schema_version SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM schema_version);",
                )?;
                let version: i64 = tx.query_one("SELECT n FROM schema_version", &[])?.get(0);
                for (i, migration) in migrations.iter().enumerate().skip(version as usize) {
                    tx.batch_execute(migration)?;
                    tx.execute("UPDATE schema_version SET n = $1", &[&(i as i64 + 1)])?;
                }
                tx.commit()?;
                Ok(version)
            })
            .map_err(|e| store.db_error(e))?;
        Ok(Self {
            fresh: version == 0,
            ..store
        })
    }

    /// Whether this open created the database.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Where the database is, for messages (a PostgreSQL URL without its
    /// password).
    pub fn location(&self) -> String {
        match &self.db {
            Database::Sqlite { path, .. } => path.display().to_string(),
            Database::Postgres(pg) => pg.shown.clone(),
        }
    }

    fn db_error(&self, e: DbError) -> StoreError {
        match &self.db {
            Database::Sqlite { path, .. } => db_error(e, Some(path), ""),
            Database::Postgres(pg) => db_error(e, None, &pg.shown),
        }
    }

    /// The SQLite connection and file; data tables need them.
    fn sqlite(&self) -> Result<(&Mutex<Connection>, &Path), StoreError> {
        match &self.db {
            Database::Sqlite { conn, path } => Ok((conn, path)),
            Database::Postgres(_) => Err(StoreError::Unsupported(
                "this needs the SQLite database in the data directory; run it without --database"
                    .to_owned(),
            )),
        }
    }

    /// Runs one statement; the number of rows it changed.
    fn exec_raw(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, DbError> {
        match &self.db {
            Database::Sqlite { conn, .. } => {
                let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                sql::sqlite_exec(&conn, sql, params)
            }
            Database::Postgres(pg) => pg.exec(sql, params),
        }
    }

    fn exec(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        self.exec_raw(sql, params).map_err(|e| self.db_error(e))
    }

    /// Runs a query; its rows.
    fn rows_raw(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError> {
        match &self.db {
            Database::Sqlite { conn, .. } => {
                let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                sql::sqlite_rows(&conn, sql, params)
            }
            Database::Postgres(pg) => pg.rows(sql, params),
        }
    }

    fn rows<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        read: impl Fn(&Row) -> Result<T, DbError>,
    ) -> Result<Vec<T>, StoreError> {
        self.rows_raw(sql, params)
            .and_then(|rows| rows.iter().map(&read).collect())
            .map_err(|e| self.db_error(e))
    }

    /// The first row of a query, if any.
    fn row<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        read: impl Fn(&Row) -> Result<T, DbError>,
    ) -> Result<Option<T>, StoreError> {
        Ok(self.rows(sql, params, read)?.into_iter().next())
    }

    /// A `count(*)` query's answer.
    fn count(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        Ok(self.row(sql, params, |r| r.int(0))?.unwrap_or(0) as u64)
    }

    /// Checks that the database answers.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.row("SELECT 1", &[], |_| Ok(())).map(drop)
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
        let inserted = self.exec(
            "INSERT INTO apps (name, created_at, anonymous_calls) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[name.into(), created_at.into(), anonymous_calls.into()],
        )?;
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
        self.rows(
            "SELECT name, created_at, anonymous_calls, signup, auto_columns FROM apps ORDER BY name",
            &[],
            row_to_app,
        )
    }

    /// One app by name.
    pub fn app(&self, name: &str) -> Result<AppRecord, StoreError> {
        self.row(
            "SELECT name, created_at, anonymous_calls, signup, auto_columns FROM apps WHERE name = $1",
            &[name.into()],
            row_to_app,
        )?
        .ok_or_else(|| StoreError::NoSuchApp(name.to_owned()))
    }

    /// Changes an app's settings; `None` leaves a setting as it is.
    pub fn set_app(
        &self,
        name: &str,
        anonymous_calls: Option<bool>,
        signup: Option<bool>,
    ) -> Result<AppRecord, StoreError> {
        let changed = self.exec(
            "UPDATE apps SET anonymous_calls = coalesce($2, anonymous_calls),
                             signup = coalesce($3, signup) WHERE name = $1",
            &[name.into(), anonymous_calls.into(), signup.into()],
        )?;
        if changed == 0 {
            return Err(StoreError::NoSuchApp(name.to_owned()));
        }
        self.app(name)
    }

    /// Sets whether the app's server code creates data table columns by
    /// adding rows with values for them (docs/tables.md).
    pub fn set_auto_columns(&self, name: &str, on: bool) -> Result<AppRecord, StoreError> {
        let changed = self.exec(
            "UPDATE apps SET auto_columns = $2 WHERE name = $1",
            &[name.into(), on.into()],
        )?;
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
        self.app(app)?;
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
        let result = self.exec_raw(
            "INSERT INTO keys (id, app, privilege, device, hash, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                (&record.id.0).into(),
                (&record.app).into(),
                privilege_name(privilege).into(),
                record.device.as_ref().into(),
                (&record.hash[..]).into(),
                record.created_at.into(),
            ],
        );
        match result {
            Ok(_) => Ok((record, secret)),
            Err(e) if e.is_unique_violation() => Err(StoreError::DeviceTaken {
                app: app.to_owned(),
                device: device.unwrap_or_default().to_owned(),
            }),
            Err(e) => Err(self.db_error(e)),
        }
    }

    /// Keys, optionally of one app, oldest first.
    pub fn keys(&self, app: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(self
            .rows(
                "SELECT id, app, privilege, device, hash, created_at, revoked_at, functions FROM keys
                 WHERE app = coalesce($1, app) ORDER BY created_at, id",
                &[app.into()],
                row_to_key,
            )?
            .into_iter()
            .flatten()
            .collect())
    }

    /// One key by id.
    pub fn key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self
            .row(
                "SELECT id, app, privilege, device, hash, created_at, revoked_at, functions FROM keys WHERE id = $1",
                &[(&id.0).into()],
                row_to_key,
            )?
            .flatten())
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
        let changed = self.exec(
            "UPDATE keys SET functions = $2 WHERE id = $1",
            &[(&id.0).into(), text.as_ref().into()],
        )?;
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
        self.exec(
            "UPDATE keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            &[(&key.id.0).into(), at.into()],
        )?;
        Ok(KeyRecord {
            revoked_at: Some(at),
            ..key
        })
    }

    /// A number that changes whenever apps, keys or trust bundles change
    /// (in SQLite: whenever another connection, such as the CLI, commits;
    /// in PostgreSQL: whenever any node or the CLI changes them).
    pub fn data_version(&self) -> Result<i64, StoreError> {
        let sql = match &self.db {
            Database::Sqlite { .. } => "PRAGMA data_version",
            Database::Postgres(_) => "SELECT n FROM data_version",
        };
        self.row(sql, &[], |r| r.int(0))?
            .ok_or_else(|| StoreError::Unreadable("no data version".to_owned()))
    }

    /// A secret of 32 random bytes kept in the database under `name`,
    /// made on first use (backups and restores carry it along).
    pub fn secret(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let fresh: [u8; 32] = rand::random();
        self.exec(
            "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[name.into(), (&fresh[..]).into()],
        )?;
        self.row(
            "SELECT value FROM secrets WHERE name = $1",
            &[name.into()],
            |r| r.bytes(0),
        )?
        .ok_or_else(|| StoreError::Unreadable(format!("secret {name} vanished")))
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
        self.exec(
            "INSERT INTO trust_bundles (sequence, signer, bundle, published_at) VALUES ($1, $2, $3, $4)",
            &[sequence.into(), (&signer[..]).into(), bundle.into(), now_secs().into()],
        )?;
        Ok(offered)
    }

    /// The newest published trust bundle: its sequence and bytes.
    pub fn trust_bundle(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.row(
            "SELECT sequence, bundle FROM trust_bundles ORDER BY sequence DESC LIMIT 1",
            &[],
            |r| Ok((r.int(0)? as u64, r.bytes(1)?)),
        )
    }
}

/// A [`StoreError`] for a failed statement on the SQLite file at `path`
/// or the PostgreSQL database shown as `url`.
fn db_error(e: DbError, path: Option<&Path>, url: &str) -> StoreError {
    match e {
        DbError::Sqlite(source) => StoreError::Sqlite {
            path: path.map(Path::to_owned).unwrap_or_default(),
            source,
        },
        DbError::Postgres(source) if source.is_closed() => StoreError::Unavailable(format!(
            "lost the connection to PostgreSQL at {url}: {source}; it is made again on the next request"
        )),
        DbError::Postgres(source) => StoreError::Postgres {
            url: url.to_owned(),
            source,
        },
        DbError::Unavailable(m) => StoreError::Unavailable(m),
        DbError::Shape(m) => StoreError::Unreadable(m),
    }
}

fn row_to_app(r: &Row) -> Result<AppRecord, DbError> {
    Ok(AppRecord {
        name: r.text(0)?,
        created_at: r.int(1)?,
        anonymous_calls: r.flag(2)?,
        signup: r.flag(3)?,
        auto_columns: r.flag(4)?,
    })
}

fn row_to_key(r: &Row) -> Result<Option<KeyRecord>, DbError> {
    let privilege = r.text(2)?;
    let hash = r.bytes(4)?;
    let (Some(privilege), Ok(hash)) = (parse_privilege(&privilege), <[u8; 32]>::try_from(hash))
    else {
        // The schema's CHECK makes this unreachable for rows we wrote; skip
        // anything else rather than fail every listing.
        return Ok(None);
    };
    Ok(Some(KeyRecord {
        id: KeyId(r.text(0)?),
        app: r.text(1)?,
        privilege,
        device: r.opt_text(3)?,
        hash,
        created_at: r.int(5)?,
        revoked_at: r.opt_int(6)?,
        functions: r
            .opt_text(7)?
            .map(|list| list.lines().map(str::to_owned).collect()),
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Runs `check` on a fresh SQLite store, then on a fresh PostgreSQL
    /// database (a real server, started for the tests).
    pub(crate) fn on_both(check: impl Fn(&Store)) {
        let dir = tempfile::tempdir().unwrap();
        check(&Store::open(dir.path()).unwrap());
        let url = ferrolink_testkit::postgres::database();
        let pg = Store::open_database(dir.path(), Some(&url)).unwrap();
        assert!(pg.is_fresh());
        check(&pg);
    }

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
        on_both(|store| {
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
        });
    }

    #[test]
    fn keys_for_missing_apps_and_bad_names_are_refused() {
        on_both(|store| {
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
        });
    }

    #[test]
    fn apps_keys_bundles_and_secrets_round_trip() {
        on_both(|store| {
            let app = store.create_app_with("demo", true).unwrap();
            assert!(app.anonymous_calls && app.signup && !app.auto_columns);
            let changed = store.set_app("demo", Some(false), None).unwrap();
            assert!(!changed.anonymous_calls && changed.signup);
            assert!(store.set_auto_columns("demo", true).unwrap().auto_columns);
            assert!(matches!(
                store.set_app("ghost", None, None),
                Err(StoreError::NoSuchApp(_))
            ));
            assert_eq!(store.apps().unwrap(), vec![store.app("demo").unwrap()]);
            let (key, _) = store
                .create_key("demo", Privilege::Client, Some("pico"))
                .unwrap();
            let listed = store.keys(Some("demo")).unwrap();
            assert_eq!(listed, vec![key.clone()]);
            assert!(store.keys(Some("other")).unwrap().is_empty());
            assert_eq!(store.keys(None).unwrap().len(), 1);
            let limited = store
                .restrict_key(&key.id, Some(&["read_.*".to_owned(), "blink".to_owned()]))
                .unwrap();
            assert_eq!(
                limited.functions,
                Some(vec!["read_.*".to_owned(), "blink".to_owned()])
            );
            assert_eq!(store.key(&key.id).unwrap(), Some(limited));
            let secret = store.secret("s").unwrap();
            assert_eq!(secret.len(), 32);
            assert_eq!(store.secret("s").unwrap(), secret, "made once");
            assert_eq!(store.trust_bundle().unwrap(), None);
            store.ping().unwrap();
        });
    }

    #[test]
    fn nodes_sharing_a_postgres_database_see_each_others_changes() {
        let dir = tempfile::tempdir().unwrap();
        let url = ferrolink_testkit::postgres::database();
        // Two nodes open the fresh database at once: one migrates, the
        // other waits and finds it done.
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| Store::open_database(dir.path(), Some(&url)).unwrap());
            let b = s.spawn(|| Store::open_database(dir.path(), Some(&url)).unwrap());
            (a.join().unwrap(), b.join().unwrap())
        });
        assert!(
            a.is_fresh() != b.is_fresh(),
            "exactly one created the schema"
        );
        let before = b.data_version().unwrap();
        a.create_app("shared").unwrap();
        let (key, secret) = a.create_key("shared", Privilege::Server, None).unwrap();
        let seen = b.key(&key.id).unwrap().expect("node b sees node a's key");
        assert_eq!(seen.hash, secret.hash());
        let after_create = b.data_version().unwrap();
        assert_ne!(after_create, before, "b notices the change");
        b.revoke(&key.id.0).unwrap();
        assert!(a.key(&key.id).unwrap().unwrap().revoked_at.is_some());
        assert_ne!(a.data_version().unwrap(), after_create);
        // Sessions made on one node are valid on the other.
        let user = a.create_user("shared", "u@x.y", "h").unwrap();
        let token = crate::auth::token_hash("t");
        a.create_user_session(user, &token, now_secs() + 60)
            .unwrap();
        assert_eq!(
            b.user_session("shared", &token).unwrap().as_deref(),
            Some("u@x.y")
        );
    }

    #[test]
    fn an_unreachable_or_unknown_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://ferrolink:hunter2@127.0.0.1:{port}/x");
        let err = Store::open_database(dir.path(), Some(&url)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::Unavailable(_)), "{text}");
        assert!(text.contains("cannot connect to PostgreSQL"), "{text}");
        assert!(
            !text.contains("hunter2"),
            "the password is not shown: {text}"
        );
        let err = Store::open_database(dir.path(), Some("mysql://x")).unwrap_err();
        assert!(err.to_string().contains("postgres://"), "{err}");
    }

    #[test]
    fn postgres_over_tls_is_verified_against_the_authority_given() {
        use ferrolink_testkit::pki::Ca;
        let ca = Ca::root("database CA");
        let leaf = ca.leaf(&["127.0.0.1", "localhost"]);
        let pg =
            ferrolink_testkit::postgres::TestPostgres::private_tls(&leaf.chain_pem, &leaf.key_pem);
        let url = pg.database();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path.display().to_string()
        };
        let (right, wrong) = (
            write("ca.pem", &ca.pem),
            write("other.pem", &Ca::root("other").pem),
        );
        let open = |url: &str| Store::open_database(dir.path(), Some(url));
        // This server takes TLS only: a plain connection is turned away.
        let plain = open(&url).unwrap_err();
        assert!(
            plain.to_string().contains("cannot connect to PostgreSQL"),
            "{plain}"
        );
        // With the authority that signed its certificate: records and data
        // tables (their own pooled connections) both go over TLS.
        for verified in [
            format!("{url}?sslrootcert={right}"),
            format!("{url}?sslmode=verify-full&sslrootcert={right}"),
        ] {
            let store = open(&verified).unwrap();
            store.create_app("a").ok();
            store
                .create_table(
                    "a",
                    format!("t{}", verified.len()).as_str(),
                    &["x:number".parse().unwrap()],
                )
                .unwrap();
        }
        // Another authority: refused, and the message says why.
        let err = open(&format!("{url}?sslrootcert={wrong}")).unwrap_err();
        let text = format!("{err}");
        assert!(
            text.contains("cannot connect") && text.to_lowercase().contains("certificate"),
            "{text}"
        );
        // TLS asked for without an authority: refused before connecting.
        for unverified in [
            format!("{url}?sslmode=require"),
            format!("{url}?sslmode=verify-full"),
        ] {
            let err = open(&unverified).unwrap_err();
            assert!(err.to_string().contains("sslrootcert=PATH"), "{err}");
        }
        let err = open(&format!(
            "{url}?sslrootcert={}",
            dir.path().join("none.pem").display()
        ))
        .unwrap_err();
        assert!(err.to_string().contains("none.pem"), "{err}");
    }
}
