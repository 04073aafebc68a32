//! The two databases the store's records (apps, keys, accounts, trust
//! bundles) live in — SQLite in the data directory (the default) and
//! PostgreSQL (shared by the nodes of a cluster) — behind one small
//! interface: each statement is written once, with `$1`-style parameters
//! (SQLite reads them as `?1`), parameters are [`Param`]s and rows come
//! back as [`Row`]s of [`Value`]s. Only SQL both databases understand is
//! used (`ON CONFLICT`, `RETURNING`, `coalesce`); integers, flags and
//! times are 64-bit integers in both.
//!
//! The PostgreSQL client runs on a thread of its own and statements are
//! handed to it, so callers block for their statement as they do on the
//! SQLite connection's lock, and no async runtime is entered from another.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::mpsc;

/// A statement parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Param<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Bytes(&'a [u8]),
}

impl<'a> From<i64> for Param<'a> {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl<'a> From<bool> for Param<'a> {
    fn from(v: bool) -> Self {
        Self::Int(i64::from(v))
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Self::Text(v)
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(v: &'a String) -> Self {
        Self::Text(v)
    }
}

impl<'a> From<&'a [u8]> for Param<'a> {
    fn from(v: &'a [u8]) -> Self {
        Self::Bytes(v)
    }
}

impl<'a, T: Into<Self>> From<Option<T>> for Param<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

/// A value read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

impl Value {
    fn owned(p: Param<'_>) -> Self {
        match p {
            Param::Null => Self::Null,
            Param::Int(v) => Self::Int(v),
            Param::Text(v) => Self::Text(v.to_owned()),
            Param::Bytes(v) => Self::Bytes(v.to_vec()),
        }
    }
}

/// A row read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row(Vec<Value>);

/// A column of an unexpected type: the schema makes it unreachable for
/// rows the server wrote.
fn wrong_type(i: usize, v: &Value) -> DbError {
    DbError::Shape(format!("column {i} holds {v:?}"))
}

impl Row {
    fn get(&self, i: usize) -> Result<&Value, DbError> {
        self.0
            .get(i)
            .ok_or_else(|| DbError::Shape(format!("no column {i}")))
    }

    pub(crate) fn int(&self, i: usize) -> Result<i64, DbError> {
        match self.get(i)? {
            Value::Int(v) => Ok(*v),
            v => Err(wrong_type(i, v)),
        }
    }

    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>, DbError> {
        match self.get(i)? {
            Value::Null => Ok(None),
            _ => self.int(i).map(Some),
        }
    }

    pub(crate) fn flag(&self, i: usize) -> Result<bool, DbError> {
        self.int(i).map(|v| v != 0)
    }

    pub(crate) fn text(&self, i: usize) -> Result<String, DbError> {
        match self.get(i)? {
            Value::Text(v) => Ok(v.clone()),
            v => Err(wrong_type(i, v)),
        }
    }

    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>, DbError> {
        match self.get(i)? {
            Value::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }

    pub(crate) fn bytes(&self, i: usize) -> Result<Vec<u8>, DbError> {
        match self.get(i)? {
            Value::Bytes(v) => Ok(v.clone()),
            v => Err(wrong_type(i, v)),
        }
    }
}

/// A failed statement.
#[derive(Debug)]
pub(crate) enum DbError {
    Sqlite(rusqlite::Error),
    Postgres(postgres::Error),
    /// The PostgreSQL connection is gone and could not be made again.
    Unavailable(String),
    /// A row not shaped as the statement promised.
    Shape(String),
}

impl DbError {
    /// Whether a UNIQUE (or primary key) constraint refused the write.
    pub(crate) fn is_unique_violation(&self) -> bool {
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
                f.code == rusqlite::ErrorCode::ConstraintViolation
            }
            Self::Postgres(e) => e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION),
            _ => false,
        }
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> Self {
        Self::Postgres(e)
    }
}

/// `$1`, `$2`, … as SQLite's `?1`, `?2`, ….
fn sqlite_sql(sql: &str) -> String {
    renumber(sql, '$', '?')
}

/// `sql` with each parameter mark `from` (followed by a digit) written as
/// `to`: the two databases spell numbered parameters `?1` and `$1`.
pub(crate) fn renumber(sql: &str, from: char, to: char) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == from && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push(to);
        } else {
            out.push(c);
        }
    }
    out
}

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Self::Null => ValueRef::Null,
            Self::Int(v) => ValueRef::Integer(*v),
            Self::Text(v) => ValueRef::Text(v.as_bytes()),
            Self::Bytes(v) => ValueRef::Blob(v),
        }))
    }
}

pub(crate) fn sqlite_exec(
    c: &rusqlite::Connection,
    sql: &str,
    params: &[Param<'_>],
) -> Result<u64, DbError> {
    let mut stmt = c.prepare_cached(&sqlite_sql(sql))?;
    Ok(stmt.execute(rusqlite::params_from_iter(params.iter()))? as u64)
}

pub(crate) fn sqlite_rows(
    c: &rusqlite::Connection,
    sql: &str,
    params: &[Param<'_>],
) -> Result<Vec<Row>, DbError> {
    use rusqlite::types::ValueRef;
    let mut stmt = c.prepare_cached(&sqlite_sql(sql))?;
    let width = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut row = Vec::with_capacity(width);
        for i in 0..width {
            row.push(match r.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Int(v),
                // No column of these tables holds a float.
                ValueRef::Real(v) => Value::Int(v as i64),
                ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
                ValueRef::Blob(v) => Value::Bytes(v.to_vec()),
            });
        }
        out.push(Row(row));
    }
    Ok(out)
}

impl postgres::types::ToSql for Value {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::Type;
        match self {
            Self::Null => Ok(postgres::types::IsNull::Yes),
            Self::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Self::Int(v) if *ty == Type::BOOL => (*v != 0).to_sql(ty, out),
            Self::Int(v) => v.to_sql(ty, out),
            Self::Text(v) => v.to_sql(ty, out),
            Self::Bytes(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

fn pg_row(r: &postgres::Row) -> Result<Row, postgres::Error> {
    use postgres::types::Type;
    let mut row = Vec::with_capacity(r.len());
    for (i, column) in r.columns().iter().enumerate() {
        let ty = column.type_();
        row.push(if *ty == Type::INT8 {
            r.try_get::<_, Option<i64>>(i)?
                .map_or(Value::Null, Value::Int)
        } else if *ty == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)?
                .map_or(Value::Null, |v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)?
                .map_or(Value::Null, |v| Value::Int(v.into()))
        } else if *ty == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i)?
                .map_or(Value::Null, Value::Bytes)
        } else {
            r.try_get::<_, Option<String>>(i)?
                .map_or(Value::Null, Value::Text)
        });
    }
    Ok(Row(row))
}

/// Parameters copied for the PostgreSQL thread.
fn owned(params: &[Param<'_>]) -> Vec<Value> {
    params.iter().map(|p| Value::owned(*p)).collect()
}

/// `params` as the postgres crate takes them.
fn refs(params: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    params.iter().map(|p| p as _).collect()
}

type PgJob = Box<dyn FnOnce(&mut Option<postgres::Client>) + Send>;

/// A PostgreSQL connection on a thread of its own, made again when it is
/// lost.
#[derive(Debug)]
pub(crate) struct Postgres {
    jobs: mpsc::Sender<PgJob>,
    /// The URL without its password, for messages.
    pub(crate) shown: String,
}

/// The URL with any password replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // `host=… password=…` form.
        return url
            .split_whitespace()
            .map(|part| match part.split_once('=') {
                Some(("password", _)) => "password=***",
                _ => part,
            })
            .collect::<Vec<_>>()
            .join(" ");
    };
    let Some((auth, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Where and how to connect to PostgreSQL (see [`pg_target`]).
pub(crate) type PgTarget = (postgres::Config, tokio_postgres_rustls::MakeRustlsConnect);

/// The PostgreSQL client configuration `url` asks for, named
/// `application`, and its TLS: with `sslrootcert=PEM` in the URL (libpq's
/// name) the connection must be TLS and the server's certificate must
/// chain to an authority in that file and name the host (libpq's
/// `verify-full`; `sslmode=verify-full` or `verify-ca` may say so too).
/// Without it the connection is plain, and `sslmode=require` is refused
/// (it would encrypt without knowing whom to).
pub(crate) fn pg_target(url: &str, application: &str) -> Result<PgTarget, String> {
    use postgres::config::SslMode;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let shown = redact(url);
    let (url, root, verify) = take_tls_params(url);
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| format!("--database {shown}: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(5));
    }
    config.application_name(application);
    let mut roots = rustls::RootCertStore::empty();
    match root {
        Some(path) => {
            let pem = std::fs::read(&path)
                .map_err(|e| format!("--database {shown}: sslrootcert {path}: {e}"))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("sslrootcert {path}: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "sslrootcert {path} holds no PEM certificate; give the authority PostgreSQL's certificate is signed by"
                ));
            }
            config.ssl_mode(SslMode::Require);
        }
        None if verify || config.get_ssl_mode() == SslMode::Require => {
            return Err(format!(
                "--database {shown}: TLS needs sslrootcert=PATH in the URL (the PEM file of the authority PostgreSQL's certificate is signed by), so that the server is verified"
            ));
        }
        None => {
            config.ssl_mode(SslMode::Disable);
        }
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((config, tokio_postgres_rustls::MakeRustlsConnect::new(tls)))
}

/// `e` and the errors under it, as one line (the `postgres` crate's own
/// text leaves out why, e.g. which certificate check failed).
pub(crate) fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = cause.source();
    }
    text
}

/// `url` without the TLS parameters the `postgres` crate does not read:
/// `sslrootcert=PATH` (answered apart) and `sslmode=verify-full` /
/// `verify-ca` (answered as whether verification was asked for). Both the
/// URL form (`…?a=b&c=d`) and the `key=value` form are read.
fn take_tls_params(url: &str) -> (String, Option<String>, bool) {
    let (mut root, mut verify) = (None, false);
    let mut keep = |pair: &str| -> bool {
        match pair.split_once('=') {
            Some(("sslrootcert", v)) => {
                root = Some(v.to_owned());
                false
            }
            Some(("sslmode", "verify-full" | "verify-ca")) => {
                verify = true;
                false
            }
            _ => true,
        }
    };
    let rest = if url.contains("://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query.split('&').filter(|p| keep(p)).collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_owned(),
        }
    } else {
        url.split_whitespace()
            .filter(|p| keep(p))
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, root, verify)
}

impl Postgres {
    /// Connects to `url` (failing now if it cannot) and keeps the
    /// connection on its own thread.
    pub(crate) fn connect(url: &str) -> Result<Self, DbError> {
        let (jobs, queue) = mpsc::channel::<PgJob>();
        let (connected, first) = mpsc::sync_channel(1);
        let shown = redact(url);
        // Read once (the URL and the authority's file): reconnections use it.
        let (config, tls) = pg_target(url, "ferrolink").map_err(DbError::Unavailable)?;
        let connect = move || config.connect(tls.clone()).map_err(DbError::from);
        // The client is made on its own thread too: it runs an async
        // runtime inside, which may not start on a runtime's thread.
        std::thread::Builder::new()
            .name("ferrolink-postgres".into())
            .spawn(move || {
                let mut client = match connect() {
                    Ok(c) => {
                        let _ = connected.send(Ok(()));
                        Some(c)
                    }
                    Err(e) => {
                        let _ = connected.send(Err::<(), DbError>(e));
                        return;
                    }
                };
                for job in queue {
                    if client.as_ref().is_none_or(postgres::Client::is_closed) {
                        client = connect().ok();
                    }
                    job(&mut client);
                }
            })
            .map_err(|e| DbError::Unavailable(e.to_string()))?;
        first
            .recv()
            .map_err(|_| DbError::Unavailable("the PostgreSQL thread stopped".into()))??;
        Ok(Self { jobs, shown })
    }

    /// Runs `f` on the connection and waits for its answer.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: PgJob = Box::new(move |client| {
            let result = match client {
                Some(c) => f(c),
                None => Err(DbError::Unavailable(
                    "cannot reach PostgreSQL; is it running, and does --database name it?".into(),
                )),
            };
            let _ = tx.send(result);
        });
        self.jobs
            .send(job)
            .map_err(|_| DbError::Unavailable("the PostgreSQL thread stopped".into()))?;
        rx.recv()
            .map_err(|_| DbError::Unavailable("the PostgreSQL thread stopped".into()))?
    }

    pub(crate) fn exec(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, DbError> {
        let sql = sql.to_owned();
        let params = owned(params);
        self.run(move |c| Ok(c.execute(sql.as_str(), &refs(&params))?))
    }

    pub(crate) fn rows(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError> {
        let sql = sql.to_owned();
        let params = owned(params);
        self.run(move |c| {
            let rows = c.query(sql.as_str(), &refs(&params))?;
            rows.iter()
                .map(|r| pg_row(r).map_err(DbError::from))
                .collect()
        })
    }
}

/// Where the store's records are.
#[derive(Debug)]
pub(crate) enum Database {
    /// SQLite: the file's one read-write connection.
    Sqlite {
        conn: Mutex<rusqlite::Connection>,
        path: PathBuf,
    },
    /// PostgreSQL.
    Postgres(Postgres),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_passwords() {
        assert_eq!(
            sqlite_sql("SELECT $1, '$' || $12 FROM t WHERE a = $2"),
            "SELECT ?1, '$' || ?12 FROM t WHERE a = ?2"
        );
        assert_eq!(
            redact("postgres://ferro:s3cret@db.example:5432/ferrolink"),
            "postgres://ferro:***@db.example:5432/ferrolink"
        );
        assert_eq!(
            redact("postgres://ferro@localhost/x"),
            "postgres://ferro@localhost/x"
        );
    }
}
