//! The connection data tables run on — the SQLite file's or a PostgreSQL
//! server's — and the few places their SQL differs.
//!
//! [`Tables`](super::tables::Tables) writes each statement once, with
//! `?1`-style parameters (PostgreSQL reads them as `$1`) and values as
//! SQLite's own [`Sql`] values; rows come back the same way. What is not
//! common SQL is asked of [`Conn`] by name: a column's type, a case-sensitive
//! pattern, "this JSON list holds that id".

use std::cell::RefCell;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::types::Value as Sql;

use super::StoreError;
use super::tables::{ColumnType, QUERY_TIME};

/// A connection inside the transaction a table operation runs in.
pub(crate) enum Conn<'c> {
    /// The SQLite file in the data directory.
    Sqlite {
        conn: &'c rusqlite::Connection,
        path: &'c Path,
    },
    /// A PostgreSQL database shared by the nodes of a cluster.
    Postgres {
        client: &'c RefCell<postgres::Client>,
        shown: &'c str,
    },
}

/// What a query that ran too long says.
pub(crate) fn too_long() -> StoreError {
    StoreError::BadTable(format!(
        "the query ran for over {} s and was stopped; narrow it (a range of an indexed number, date or datetime column, fewer conditions, a smaller page)",
        QUERY_TIME.as_secs()
    ))
}

/// Maps a failure inside a table operation on SQLite: a lost race with
/// another transaction is a [`StoreError::Conflict`], anything else names
/// the file.
pub(crate) fn sqlite_error(path: &Path, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Conflict
        }
        Some(rusqlite::ErrorCode::OperationInterrupted) => too_long(),
        _ => StoreError::Sqlite {
            path: path.to_owned(),
            source: e,
        },
    }
}

/// The same for PostgreSQL: serialization failures, deadlocks and lock
/// timeouts are lost races; a cancelled statement ran past
/// [`QUERY_TIME`]; a closed connection means the server is unreachable.
pub(crate) fn postgres_error(shown: &str, e: postgres::Error) -> StoreError {
    use postgres::error::SqlState;
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::LOCK_NOT_AVAILABLE =>
        {
            StoreError::Conflict
        }
        Some(c) if *c == SqlState::QUERY_CANCELED => too_long(),
        None if e.is_closed() || e.as_db_error().is_none() => StoreError::Unavailable(format!(
            "the data tables cannot reach PostgreSQL at {shown}: {e}; check that it runs"
        )),
        _ => StoreError::Postgres {
            url: shown.to_owned(),
            source: e,
        },
    }
}

/// `?1`-style parameters as PostgreSQL's `$1`.
fn postgres_sql(sql: &str) -> String {
    super::sql::renumber(sql, '?', '$')
}

/// A value as a PostgreSQL parameter of whatever type the statement wants
/// there (an integer may fill a float or a flag; text and bytes go as
/// they are).
#[derive(Debug)]
struct PgValue<'a>(&'a Sql);

impl postgres::types::ToSql for PgValue<'_> {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::Type;
        match self.0 {
            Sql::Null => Ok(postgres::types::IsNull::Yes),
            Sql::Integer(v) if *ty == Type::FLOAT8 => (*v as f64).to_sql(ty, out),
            Sql::Integer(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Sql::Integer(v) if *ty == Type::BOOL => (*v != 0).to_sql(ty, out),
            Sql::Integer(v) => v.to_sql(ty, out),
            Sql::Real(v) => v.to_sql(ty, out),
            Sql::Text(v) => v.to_sql(ty, out),
            Sql::Blob(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// Column `i` of a PostgreSQL row as an SQLite value.
fn pg_value(r: &postgres::Row, i: usize) -> Result<Sql, postgres::Error> {
    use postgres::types::Type;
    let ty = r.columns()[i].type_();
    Ok(if *ty == Type::INT8 {
        r.try_get::<_, Option<i64>>(i)?
            .map_or(Sql::Null, Sql::Integer)
    } else if *ty == Type::INT4 {
        r.try_get::<_, Option<i32>>(i)?
            .map_or(Sql::Null, |v| Sql::Integer(v.into()))
    } else if *ty == Type::BOOL {
        r.try_get::<_, Option<bool>>(i)?
            .map_or(Sql::Null, |v| Sql::Integer(v.into()))
    } else if *ty == Type::FLOAT8 {
        r.try_get::<_, Option<f64>>(i)?.map_or(Sql::Null, Sql::Real)
    } else if *ty == Type::BYTEA {
        r.try_get::<_, Option<Vec<u8>>>(i)?
            .map_or(Sql::Null, Sql::Blob)
    } else {
        r.try_get::<_, Option<String>>(i)?
            .map_or(Sql::Null, Sql::Text)
    })
}

impl Conn<'_> {
    /// Whether this is PostgreSQL.
    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres { .. })
    }

    /// Runs one statement; the number of rows it changed.
    pub(crate) fn exec(&self, sql: &str, vals: &[Sql]) -> Result<u64, StoreError> {
        match self {
            Self::Sqlite { conn, path } => conn
                .prepare_cached(sql)
                .and_then(|mut s| s.execute(rusqlite::params_from_iter(vals.iter())))
                .map(|n| n as u64)
                .map_err(|e| sqlite_error(path, e)),
            Self::Postgres { client, shown } => {
                let params: Vec<PgValue<'_>> = vals.iter().map(PgValue).collect();
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    params.iter().map(|p| p as _).collect();
                client
                    .borrow_mut()
                    .execute(postgres_sql(sql).as_str(), &refs)
                    .map_err(|e| postgres_error(shown, e))
            }
        }
    }

    /// Runs statements without parameters (schema changes).
    pub(crate) fn batch(&self, sql: &str) -> Result<(), StoreError> {
        match self {
            Self::Sqlite { conn, path } => {
                conn.execute_batch(sql).map_err(|e| sqlite_error(path, e))
            }
            Self::Postgres { client, shown } => client
                .borrow_mut()
                .batch_execute(sql)
                .map_err(|e| postgres_error(shown, e)),
        }
    }

    /// Runs a query and hands each row to `f` as it comes (nothing is
    /// collected here).
    pub(crate) fn each(
        &self,
        sql: &str,
        vals: &[Sql],
        mut f: impl FnMut(&[Sql]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut row = Vec::new();
        match self {
            Self::Sqlite { conn, path } => {
                let err = |e| sqlite_error(path, e);
                let mut stmt = conn.prepare_cached(sql).map_err(err)?;
                let width = stmt.column_count();
                let mut rows = stmt
                    .query(rusqlite::params_from_iter(vals.iter()))
                    .map_err(err)?;
                while let Some(r) = rows.next().map_err(err)? {
                    row.clear();
                    for i in 0..width {
                        row.push(Sql::from(r.get_ref(i).map_err(err)?));
                    }
                    f(&row)?;
                }
                Ok(())
            }
            Self::Postgres { client, shown } => {
                use postgres::fallible_iterator::FallibleIterator as _;
                let err = |e| postgres_error(shown, e);
                let params: Vec<PgValue<'_>> = vals.iter().map(PgValue).collect();
                let mut client = client.borrow_mut();
                let mut rows = client
                    .query_raw(postgres_sql(sql).as_str(), params.iter())
                    .map_err(err)?;
                while let Some(r) = rows.next().map_err(err)? {
                    row.clear();
                    for i in 0..r.len() {
                        row.push(pg_value(&r, i).map_err(err)?);
                    }
                    f(&row)?;
                }
                Ok(())
            }
        }
    }

    /// All the rows a query answers.
    pub(crate) fn rows(&self, sql: &str, vals: &[Sql]) -> Result<Vec<Vec<Sql>>, StoreError> {
        let mut out = Vec::new();
        self.each(sql, vals, |r| {
            out.push(r.to_vec());
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row a query answers, if any.
    pub(crate) fn first(&self, sql: &str, vals: &[Sql]) -> Result<Option<Vec<Sql>>, StoreError> {
        Ok(self.rows(sql, vals)?.into_iter().next())
    }

    /// The integer a query answers in its first column of its first row.
    pub(crate) fn int(&self, sql: &str, vals: &[Sql]) -> Result<Option<i64>, StoreError> {
        Ok(match self.first(sql, vals)?.as_deref() {
            Some([Sql::Integer(v), ..]) => Some(*v),
            _ => None,
        })
    }

    /// The SQL type of a column of `kind` (text compares byte by byte on
    /// both, as SQLite does).
    pub(crate) fn column_type(&self, kind: &ColumnType) -> &'static str {
        let postgres = self.is_postgres();
        match kind {
            ColumnType::Text
            | ColumnType::Date
            | ColumnType::SimpleObject
            | ColumnType::Links(_)
            | ColumnType::Media => {
                if postgres {
                    "TEXT COLLATE \"C\""
                } else {
                    "TEXT"
                }
            }
            ColumnType::Number | ColumnType::DateTime => {
                if postgres {
                    "DOUBLE PRECISION"
                } else {
                    "REAL"
                }
            }
            ColumnType::Bool | ColumnType::Link(_) => {
                if postgres {
                    "BIGINT"
                } else {
                    "INTEGER"
                }
            }
        }
    }

    /// The SQL type of a media column's bytes.
    pub(crate) fn bytes_type(&self) -> &'static str {
        if self.is_postgres() { "BYTEA" } else { "BLOB" }
    }

    /// The row id column of a new table.
    pub(crate) fn row_id(&self) -> &'static str {
        if self.is_postgres() {
            "_id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
        } else {
            "_id INTEGER PRIMARY KEY AUTOINCREMENT"
        }
    }

    /// `column` matches the `LIKE` pattern in parameter `mark`, case
    /// sensitively or not. SQLite's `LIKE` ignores case and its `GLOB` does
    /// not (`glob` is the pattern rewritten for it); PostgreSQL has `ILIKE`.
    pub(crate) fn like(&self, column: &str, mark: &str, ignore_case: bool) -> String {
        match (self.is_postgres(), ignore_case) {
            (false, true) => format!("{column} LIKE {mark}"),
            (false, false) => format!("{column} GLOB {mark}"),
            (true, true) => format!("{column} ILIKE {mark}"),
            (true, false) => format!("{column} LIKE {mark}"),
        }
    }

    /// `column` contains `words`' pattern in parameter `mark` (with `\` as
    /// its escape), ignoring case.
    pub(crate) fn contains(&self, column: &str, mark: &str) -> String {
        let op = if self.is_postgres() { "ILIKE" } else { "LIKE" };
        format!("{column} {op} {mark} ESCAPE '\\'")
    }

    /// The JSON list of ids in `column` holds the id in parameter `mark`.
    pub(crate) fn list_holds(&self, column: &str, mark: &str) -> String {
        if self.is_postgres() {
            format!("{column}::jsonb @> to_jsonb(CAST({mark} AS BIGINT))")
        } else {
            format!("EXISTS (SELECT 1 FROM json_each({column}) WHERE value = {mark})")
        }
    }

    /// An index hint for a range scan over `index` (SQLite only; PostgreSQL
    /// plans its own).
    pub(crate) fn indexed_by(&self, index: &str) -> String {
        if self.is_postgres() {
            String::new()
        } else {
            format!(" INDEXED BY {index}")
        }
    }
}

/// Connections to PostgreSQL kept for data table operations (each runs in
/// a transaction of its own, off the thread the store's other statements
/// use, so a long search does not hold logins up).
pub(crate) struct PgPool {
    /// Read once from the URL (and the authority's file).
    target: super::sql::PgTarget,
    pub(crate) shown: String,
    idle: Mutex<Vec<postgres::Client>>,
}

impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPool").field("at", &self.shown).finish()
    }
}

/// Idle PostgreSQL connections kept for table operations.
const IDLE: usize = 8;

impl PgPool {
    pub(crate) fn new(url: &str, shown: &str) -> Result<Self, StoreError> {
        Ok(Self {
            target: super::sql::pg_target(url, "ferrolink-tables")
                .map_err(StoreError::Unavailable)?,
            shown: shown.to_owned(),
            idle: Mutex::default(),
        })
    }

    /// An open connection: an idle one, or a new one. Must be called off
    /// the async runtime's threads (the client runs a runtime inside).
    pub(crate) fn take(&self) -> Result<postgres::Client, StoreError> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match idle {
                Some(c) if !c.is_closed() => return Ok(c),
                Some(_) => {}
                None => break,
            }
        }
        let (config, tls) = &self.target;
        config.connect(tls.clone()).map_err(|e| {
            StoreError::Unavailable(format!(
                "the data tables cannot reach PostgreSQL at {}: {}; check that it runs",
                self.shown,
                super::sql::causes(&e)
            ))
        })
    }

    /// Hands a connection back once its transaction has ended.
    pub(crate) fn give(&self, client: postgres::Client) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE && !client.is_closed() {
            idle.push(client);
        }
    }
}

impl Drop for PgPool {
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(|p| p.into_inner()));
        close(idle);
    }
}

/// Closes PostgreSQL connections: closing one waits for the server, on a
/// runtime of the client's own, which may not start on an async runtime's
/// thread — so from one, it is done on a thread of its own.
pub(crate) fn close<T: Send + 'static>(clients: T) {
    if tokio::runtime::Handle::try_current().is_ok() {
        let _ = std::thread::Builder::new()
            .name("ferrolink-pg-close".into())
            .spawn(move || drop(clients));
    } else {
        drop(clients);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_renumbered_for_postgres() {
        assert_eq!(
            postgres_sql("SELECT ?1 WHERE a = ?12 AND b = '?'"),
            "SELECT $1 WHERE a = $12 AND b = '?'"
        );
    }
}
