//! Per-app data tables in the embedded database.
//!
//! Each app table is a real SQLite table, `tbl_<id>`, with an integer row
//! id and one typed column per app column, `c_<id>`: the names apps and
//! users choose never appear in SQL (no quoting to get wrong, no
//! injection), and a numeric or time column is a plain SQLite column that
//! can be indexed and scanned without parsing JSON. The catalogue
//! (`data_tables`, `data_columns`) maps names to ids.
//!
//! Values cross this layer as JSON: text as strings, numbers, booleans,
//! dates as `YYYY-MM-DD`, datetimes as RFC 3339, simple objects as any
//! JSON, links as the row id of the linked table (a list of ids for
//! `links:TABLE`). Every value is checked against its column's type before
//! anything is written; a row is written in one statement, so a bad value
//! leaves nothing behind.

use std::fmt;
use std::str::FromStr;

use std::cell::RefCell;

use rusqlite::types::Value as Sql;
use serde_json::{Map, Value};

use super::table_sql::{Conn, sqlite_error};
use super::{Store, StoreError};

/// Longest text or simple-object value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Largest media value accepted, in bytes.
pub const MAX_MEDIA_BYTES: usize = 4 * 1024 * 1024;
/// Most columns one table may have.
pub const MAX_COLUMNS: usize = 256;
/// Most rows one search answers at once (page through the rest).
pub const MAX_PAGE: usize = 10_000;

/// A column's type, as `table create --column NAME:TYPE` spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    /// A string.
    Text,
    /// A number (64-bit float).
    Number,
    /// `true` or `false`.
    Bool,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// A point in time, RFC 3339 (`2026-12-02T14:30:00Z`).
    DateTime,
    /// Any JSON value.
    SimpleObject,
    /// A file: bytes with a content type and a name (at most
    /// [`MAX_MEDIA_BYTES`]). As JSON, `{"mime", "name", "base64"}` going in;
    /// rows answer `{"mime", "name", "length"}` and the bytes come from
    /// [`Tables::media`].
    Media,
    /// A link to one row of another table of the same app.
    Link(String),
    /// Links to rows of another table of the same app.
    Links(String),
}

impl ColumnType {
    /// The table a link column points to.
    pub fn linked(&self) -> Option<&str> {
        match self {
            Self::Link(t) | Self::Links(t) => Some(t),
            _ => None,
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text => f.write_str("text"),
            Self::Number => f.write_str("number"),
            Self::Bool => f.write_str("bool"),
            Self::Date => f.write_str("date"),
            Self::DateTime => f.write_str("datetime"),
            Self::SimpleObject => f.write_str("simpleObject"),
            Self::Media => f.write_str("media"),
            Self::Link(t) => write!(f, "link:{t}"),
            Self::Links(t) => write!(f, "links:{t}"),
        }
    }
}

impl FromStr for ColumnType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "text" | "string" => Self::Text,
            "number" => Self::Number,
            "bool" => Self::Bool,
            "date" => Self::Date,
            "datetime" => Self::DateTime,
            "simpleObject" => Self::SimpleObject,
            "media" => Self::Media,
            _ => match s.split_once(':') {
                Some(("link", t)) => Self::Link(t.to_owned()),
                Some(("links", t)) => Self::Links(t.to_owned()),
                _ => {
                    return Err(format!(
                        "unknown column type \"{s}\"; use text, number, bool, date, datetime, simpleObject, media, link:TABLE or links:TABLE"
                    ));
                }
            },
        })
    }
}

/// A column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type.
    pub kind: ColumnType,
}

impl FromStr for Column {
    type Err = String;

    /// `NAME:TYPE`, e.g. `t:datetime` or `device:link:devices`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, kind) = s.split_once(':').ok_or_else(|| {
            format!("a column is NAME:TYPE (e.g. temperature:number), not \"{s}\"")
        })?;
        Ok(Self {
            name: name.to_owned(),
            kind: kind.parse()?,
        })
    }
}

/// A table and its columns.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// The table's name.
    pub name: String,
    /// Its columns, in creation order.
    pub columns: Vec<Column>,
    /// How many rows it holds.
    pub rows: u64,
    /// What client keys and browser pages may do with it.
    pub client_access: ClientAccess,
    /// Whether browser pages need a logged-in user for that access.
    pub client_login: bool,
}

/// One row: its id and its values by column name (`null` where unset).
pub type Row = (i64, Map<String, Value>);

/// How a search is ordered and paged.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Column to order by (row id when `None`), and whether ascending.
    pub order_by: Option<(String, bool)>,
    /// Rows to skip.
    pub offset: usize,
    /// Most rows to answer (at most [`MAX_PAGE`]).
    pub limit: usize,
}

/// What [`Store::downsample`] charts: `value` over `time` in `table`,
/// from `from` to `to` (RFC 3339, `to` excluded), in at most `buckets`.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    /// The table.
    pub table: &'a str,
    /// Its datetime column.
    pub time: &'a str,
    /// Its number column.
    pub value: &'a str,
    /// Start of the range.
    pub from: &'a str,
    /// End of the range (excluded).
    pub to: &'a str,
    /// Most buckets (1 to 10,000).
    pub buckets: usize,
}

/// One bucket of a downsampled series.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// The bucket's start, seconds since the Unix epoch.
    pub start: f64,
    /// Smallest value in it.
    pub min: f64,
    /// Largest value in it.
    pub max: f64,
    /// Mean of its values.
    pub mean: f64,
    /// How many rows it holds.
    pub count: u64,
}

/// Table names: what Python accepts after `app_tables.`.
pub fn validate_table_name(name: &str) -> Result<(), StoreError> {
    let mut bytes = name.bytes();
    let ok = name.len() <= 64
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadTable(format!(
            "invalid table name \"{}\": use 1-64 letters, digits and '_', not starting with a digit",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// Column names: 1-64 characters, none of them control characters (they
/// are data, never SQL).
pub fn validate_column_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(StoreError::BadTable(format!(
            "invalid column name \"{}\": use 1-64 characters, no control characters",
            name.chars()
                .filter(|c| !c.is_control())
                .take(80)
                .collect::<String>()
        )));
    }
    Ok(())
}

fn bad(message: String) -> StoreError {
    StoreError::BadTable(message)
}
/// A column of a stored table, as the queries need it.
#[derive(Debug, Clone)]
pub struct ColumnMeta {
    /// The column's id (its SQL column is `c_<id>`).
    pub id: i64,
    /// Its name and type.
    pub column: Column,
    /// The id of the table a link column points to (`None` if that table
    /// is gone, or for other columns).
    pub linked: Option<i64>,
}

/// What client keys and browser pages may do with a table (server keys may
/// do everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClientAccess {
    /// Nothing: the table is not even listed.
    None,
    /// Add rows, nothing else (what a logging device needs).
    Add,
    /// Search and read rows.
    Read,
    /// Read, add, change and delete rows.
    Write,
}

impl ClientAccess {
    /// As `table set --client` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Add => "add",
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

impl FromStr for ClientAccess {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "none" => Self::None,
            "add" => Self::Add,
            "read" => Self::Read,
            "write" => Self::Write,
            _ => {
                return Err(format!(
                    "unknown client access \"{s}\"; use none, add, read or write"
                ));
            }
        })
    }
}

/// A table's catalogue entry.
#[derive(Debug, Clone)]
pub struct TableMeta {
    /// The table's id (its SQL table is `tbl_<id>`; the id the wire uses).
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Its columns, in creation order.
    pub columns: Vec<ColumnMeta>,
    /// What client keys and browser pages may do with it.
    pub client_access: ClientAccess,
    /// Whether browser pages need a logged-in user for that access.
    pub client_login: bool,
}

impl TableMeta {
    /// Each of `values` checked against its column and converted: the
    /// column's id and what SQLite stores.
    fn convert(
        &self,
        conn: &Conn<'_>,
        values: &Map<String, Value>,
    ) -> Result<Vec<(String, Sql)>, StoreError> {
        let mut out = Vec::with_capacity(values.len());
        for (name, value) in values {
            let c = self.column(name)?;
            if c.column.kind == ColumnType::Media {
                let (meta, bytes) = media_sql(&c.column, value)?;
                out.push((format!("c_{}", c.id), meta));
                out.push((format!("d_{}", c.id), bytes));
            } else {
                out.push((
                    format!("c_{}", c.id),
                    to_sql(conn, &c.column, c.linked, value)?,
                ));
            }
        }
        Ok(out)
    }

    /// The column called `name`, or an error that lists the columns there are.
    pub fn column(&self, name: &str) -> Result<&ColumnMeta, StoreError> {
        self.columns
            .iter()
            .find(|c| c.column.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.columns.iter().map(|c| c.column.name.as_str()).collect();
                StoreError::NoSuchColumn(format!(
                    "table \"{}\" has no column \"{}\" (its columns: {}); add it with `ferrolink table add-column`",
                    self.name,
                    name.chars().take(80).collect::<String>(),
                    known.join(", ")
                ))
            })
    }
}

/// How a column is compared with a value, in [`Filter::Compare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cmp {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

/// A condition on rows. Values are in this layer's JSON form (see the
/// module docs).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Filter {
    /// The column equals the value (`null`: is unset). For a `links`
    /// column, the value is a list of row ids the column must all contain.
    Eq {
        /// The column.
        column: String,
        /// The value.
        value: Value,
    },
    /// The column compares so with the value (text, number, date and
    /// datetime columns).
    Compare {
        /// The column.
        column: String,
        /// How.
        cmp: Cmp,
        /// The value.
        value: Value,
    },
    /// The text column matches an SQL `LIKE` pattern (`%` any run, `_` one
    /// character).
    Like {
        /// The column.
        column: String,
        /// The pattern.
        pattern: String,
        /// Whether case is ignored (ASCII letters).
        ignore_case: bool,
    },
    /// The text column contains every word of the query, ignoring case.
    Words {
        /// The column.
        column: String,
        /// The words, separated by white space.
        query: String,
    },
    /// Every one of the conditions holds (true when empty).
    All {
        /// The conditions.
        of: Vec<Self>,
    },
    /// At least one of the conditions holds (false when empty).
    Any {
        /// The conditions.
        of: Vec<Self>,
    },
    /// None of the conditions holds.
    NoneOf {
        /// The conditions.
        of: Vec<Self>,
    },
}

/// A search: conditions that must all hold, and an order.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Query {
    /// Conditions, all of which must hold.
    pub filters: Vec<Filter>,
    /// Columns to order by, each ascending or not; the row id breaks ties.
    pub order: Vec<(String, bool)>,
}

/// Most conditions one query may hold, nested ones included.
pub const MAX_CONDITIONS: usize = 1000;

/// Rows as CSV (RFC 4180): a header of the column names, then one line
/// per row. Text as is, numbers and booleans as JSON writes them, dates and
/// datetimes as stored, simple objects and links as JSON, unset as empty.
/// With `escape_for_excel`, a text cell that a spreadsheet would run as a
/// formula (starting with `=`, `+`, `-` or `@`) gets a leading `'`.
pub fn csv(columns: &[Column], rows: &[Row], escape_for_excel: bool) -> String {
    let mut w = ::csv::WriterBuilder::new()
        .terminator(::csv::Terminator::CRLF)
        .from_writer(Vec::new());
    // Writing to memory cannot fail.
    let _ = w.write_record(columns.iter().map(|c| c.name.as_str()));
    for (_, values) in rows {
        let record = columns.iter().map(|c| match values.get(&c.name) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) if escape_for_excel && s.starts_with(['=', '+', '-', '@']) => {
                format!("'{s}")
            }
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        });
        let _ = w.write_record(record);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// Rows from CSV: a header naming columns of `columns` (in any order, not
/// necessarily all of them), then one line per row, cells in the form
/// [`csv()`] writes (an empty cell is unset). Every cell is checked; the
/// first bad one is an error naming its line and column.
pub fn parse_csv(columns: &[Column], text: &str) -> Result<Vec<Map<String, Value>>, StoreError> {
    let mut r = ::csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let header: Vec<&Column> = r
        .headers()
        .map_err(|e| bad(format!("the CSV's header cannot be read: {e}")))?
        .iter()
        .map(|name| {
            columns.iter().find(|c| c.name == name).ok_or_else(|| {
                StoreError::NoSuchColumn(format!(
                    "the CSV's header names \"{}\", which the table does not have (its columns: {})",
                    name.chars().take(80).collect::<String>(),
                    columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    let mut rows = Vec::new();
    for (n, record) in r.records().enumerate() {
        let line = n + 2;
        let record = record.map_err(|e| bad(format!("CSV line {line}: {e}")))?;
        let mut values = Map::new();
        for (column, cell) in header.iter().zip(record.iter()) {
            let wrong = |what: &str| {
                bad(format!(
                    "CSV line {line}, column \"{}\" ({}): {what}, not \"{}\"",
                    column.name,
                    column.kind,
                    cell.chars().take(40).collect::<String>()
                ))
            };
            let value = if cell.is_empty() {
                Value::Null
            } else {
                match &column.kind {
                    ColumnType::Text | ColumnType::Date | ColumnType::DateTime => cell.into(),
                    ColumnType::Number => cell
                        .parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map(Value::Number)
                        .ok_or_else(|| wrong("a number"))?,
                    ColumnType::Bool => match cell {
                        "true" | "True" | "TRUE" | "1" => true.into(),
                        "false" | "False" | "FALSE" | "0" => false.into(),
                        _ => return Err(wrong("true or false")),
                    },
                    ColumnType::Link(_) => cell
                        .parse::<i64>()
                        .map(Value::from)
                        .map_err(|_| wrong("a row id"))?,
                    ColumnType::SimpleObject | ColumnType::Links(_) => {
                        serde_json::from_str(cell).map_err(|_| wrong("JSON"))?
                    }
                    ColumnType::Media => {
                        return Err(wrong(
                            "media cannot come from a CSV file (leave the cell empty)",
                        ));
                    }
                }
            };
            values.insert(column.name.clone(), value);
        }
        rows.push(values);
    }
    Ok(rows)
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
fn like_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// An SQL `LIKE` pattern as a `GLOB` pattern, which is case-sensitive.
fn like_to_glob(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        match c {
            '%' => out.push('*'),
            '_' => out.push('?'),
            '*' => out.push_str("[*]"),
            '?' => out.push_str("[?]"),
            '[' => out.push_str("[[]"),
            c => out.push(c),
        }
    }
    out
}

/// A media value (`{"mime", "name", "base64"}`, or `null`) as what SQLite
/// stores: its description (`{"mime", "name", "length"}`) and its bytes.
fn media_sql(column: &Column, value: &Value) -> Result<(Sql, Sql), StoreError> {
    use base64::Engine as _;
    if value.is_null() {
        return Ok((Sql::Null, Sql::Null));
    }
    let wrong = || {
        bad(format!(
            "column \"{}\" is media: give {{\"mime\": \"image/png\", \"name\": \"photo.png\", \"base64\": \"...\"}}, not {}",
            column.name,
            type_name(value)
        ))
    };
    let mime = value
        .get("mime")
        .and_then(Value::as_str)
        .ok_or_else(wrong)?;
    let name = value.get("name").and_then(Value::as_str);
    let data = value
        .get("base64")
        .and_then(Value::as_str)
        .ok_or_else(wrong)?;
    if data.len() > MAX_MEDIA_BYTES / 3 * 4 + 4 {
        return Err(bad(format!(
            "the media for \"{}\" is over {} MiB, the most a media value holds",
            column.name,
            MAX_MEDIA_BYTES >> 20
        )));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| {
            bad(format!(
                "the media for \"{}\" is not valid base64",
                column.name
            ))
        })?;
    if mime.len() > 255 || name.is_some_and(|n| n.len() > 255) {
        return Err(bad(format!(
            "the media for \"{}\": its mime type and name are at most 255 bytes",
            column.name
        )));
    }
    let meta = serde_json::json!({"mime": mime, "name": name, "length": bytes.len()});
    Ok((Sql::Text(meta.to_string()), Sql::Blob(bytes)))
}

/// Checks `value` against `kind` and converts it to what SQLite stores.
fn to_sql(
    conn: &Conn<'_>,
    column: &Column,
    linked: Option<i64>,
    value: &Value,
) -> Result<Sql, StoreError> {
    let wrong = |what: &str| {
        bad(format!(
            "column \"{}\" is {}: {what}, not {}",
            column.name,
            column.kind,
            type_name(value)
        ))
    };
    if value.is_null() {
        return Ok(Sql::Null);
    }
    let text_ok = |s: &str| -> Result<(), StoreError> {
        if s.len() > MAX_VALUE_BYTES {
            return Err(bad(format!(
                "the value for \"{}\" is {} bytes; at most {MAX_VALUE_BYTES} are stored",
                column.name,
                s.len()
            )));
        }
        Ok(())
    };
    Ok(match &column.kind {
        ColumnType::Text => {
            let s = value.as_str().ok_or_else(|| wrong("a string"))?;
            text_ok(s)?;
            Sql::Text(s.to_owned())
        }
        ColumnType::Number => Sql::Real(value.as_f64().ok_or_else(|| wrong("a number"))?),
        ColumnType::Bool => Sql::Integer(i64::from(
            value.as_bool().ok_or_else(|| wrong("true or false"))?,
        )),
        ColumnType::Date => {
            let s = value
                .as_str()
                .ok_or_else(|| wrong("a date string YYYY-MM-DD"))?;
            let format = time::macros::format_description!("[year]-[month]-[day]");
            time::Date::parse(s, format).map_err(|_| wrong("a date string YYYY-MM-DD"))?;
            Sql::Text(s.to_owned())
        }
        ColumnType::DateTime => {
            let s = value
                .as_str()
                .ok_or_else(|| wrong("an RFC 3339 datetime string"))?;
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| wrong("an RFC 3339 datetime string (e.g. 2026-12-02T14:30:00Z)"))?;
            // Stored as seconds since the epoch: ordered, indexed, and
            // bucketed by arithmetic alone.
            Sql::Real(t.unix_timestamp_nanos() as f64 / 1e9)
        }
        ColumnType::SimpleObject => {
            let s = value.to_string();
            text_ok(&s)?;
            Sql::Text(s)
        }
        ColumnType::Media => return Err(wrong("searched only for None (unset)")),
        ColumnType::Link(target) => {
            let id = value.as_i64().ok_or_else(|| wrong("the id of a row"))?;
            check_row(conn, target, linked, id)?;
            Sql::Integer(id)
        }
        ColumnType::Links(target) => {
            let ids: Vec<i64> = value
                .as_array()
                .ok_or_else(|| wrong("a list of row ids"))?
                .iter()
                .map(|v| v.as_i64().ok_or_else(|| wrong("a list of row ids")))
                .collect::<Result<_, _>>()?;
            for &id in &ids {
                check_row(conn, target, linked, id)?;
            }
            Sql::Text(serde_json::to_string(&ids).map_err(|e| bad(e.to_string()))?)
        }
    })
}

/// The id of table `name` of `app`, if it exists.
fn table_id(conn: &Conn<'_>, app: &str, name: &str) -> Result<Option<i64>, StoreError> {
    conn.int(
        "SELECT id FROM data_tables WHERE app = ?1 AND name = ?2",
        &[text(app), text(name)],
    )
}

/// A text parameter.
fn text(s: &str) -> Sql {
    Sql::Text(s.to_owned())
}

fn check_row(
    conn: &Conn<'_>,
    target: &str,
    linked: Option<i64>,
    id: i64,
) -> Result<(), StoreError> {
    let table = linked.ok_or_else(|| bad(format!("the linked table \"{target}\" is gone")))?;
    let found = conn.int(
        &format!("SELECT _id FROM tbl_{table} WHERE _id = ?1"),
        &[Sql::Integer(id)],
    )?;
    found
        .map(|_| ())
        .ok_or_else(|| bad(format!("table \"{target}\" has no row {id}")))
}

/// Seconds since the epoch as RFC 3339 in UTC, to the microsecond.
fn datetime_text(secs: f64) -> Value {
    let micros = (secs * 1e6).round() as i128;
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(micros * 1000)
        .ok()
        .and_then(|t| t.format(format).ok())
        .map_or(Value::Null, Value::String)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A stored value back as JSON.
fn from_sql(kind: &ColumnType, v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match (kind, v) {
        (_, ValueRef::Null) => Value::Null,
        (ColumnType::Bool, ValueRef::Integer(i)) => Value::Bool(i != 0),
        (ColumnType::Number, ValueRef::Real(f)) => {
            serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
        }
        (ColumnType::Number, ValueRef::Integer(i)) => Value::from(i),
        (ColumnType::DateTime, ValueRef::Real(secs)) => datetime_text(secs),
        (ColumnType::Link(_), ValueRef::Integer(i)) => Value::from(i),
        (
            ColumnType::SimpleObject | ColumnType::Links(_) | ColumnType::Media,
            ValueRef::Text(t),
        ) => serde_json::from_slice(t).unwrap_or(Value::Null),
        (_, ValueRef::Text(t)) => Value::String(String::from_utf8_lossy(t).into_owned()),
        _ => Value::Null,
    }
}
/// Read-only connections kept for table reads.
const READERS: usize = 8;

/// How long one table operation may run before the database is told to
/// stop it: a slow query must not hold a connection (on SQLite, the one
/// every login needs) for long.
pub const QUERY_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `f` on the tables of `app` on SQLite connection `conn` (of the
/// file at `path`), with SQLite interrupting any statement still running
/// [`QUERY_TIME`] after the start.
fn on_sqlite<T>(
    conn: &rusqlite::Connection,
    path: &std::path::Path,
    app: &str,
    f: impl FnOnce(&Tables<'_>) -> T,
) -> T {
    bounded_for(conn, QUERY_TIME, || {
        f(&Tables {
            conn: Conn::Sqlite { conn, path },
            app,
        })
    })
}

fn bounded_for<T>(
    conn: &rusqlite::Connection,
    limit: std::time::Duration,
    f: impl FnOnce() -> T,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    conn.progress_handler(10_000, Some(move || std::time::Instant::now() > deadline));
    let out = f();
    conn.progress_handler(0, None::<fn() -> bool>);
    out
}

/// PostgreSQL's own bound on each statement of a transaction
/// ([`QUERY_TIME`]), and how long a row lock is waited for before the
/// transaction counts as having lost a race.
fn pg_limits() -> String {
    format!(
        "SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = 2000;",
        QUERY_TIME.as_millis()
    )
}

/// Table operations of one app on one connection, inside a transaction the
/// caller opened ([`Store::read`], [`Store::write`], [`TableTransaction::run`]).
pub struct Tables<'c> {
    conn: Conn<'c>,
    app: &'c str,
}

/// A transaction that spans several calls (Anvil's `in_transaction`), on a
/// connection of its own. It sees one snapshot of the database; a write
/// that finds the data changed under it, or (on SQLite) the write lock
/// taken, fails at once with [`StoreError::Conflict`] (the caller retries
/// the whole transaction). On PostgreSQL it is `SERIALIZABLE`. Dropping it
/// rolls it back.
pub struct TableTransaction(Held);

impl Drop for TableTransaction {
    fn drop(&mut self) {
        if let Held::Postgres { client, .. } = std::mem::replace(&mut self.0, Held::Dropped) {
            // Closing the connection rolls back whatever is uncommitted.
            super::table_sql::close(client.into_inner());
        }
    }
}

enum Held {
    Sqlite {
        conn: rusqlite::Connection,
        path: std::path::PathBuf,
    },
    Postgres {
        client: RefCell<postgres::Client>,
        shown: String,
    },
    /// What is left while it is dropped.
    Dropped,
}

impl TableTransaction {
    /// Runs `f` within the transaction: if it fails, what it wrote is undone
    /// and the transaction goes on.
    pub fn run<T, E: From<StoreError>>(
        &mut self,
        app: &str,
        f: impl FnOnce(&Tables<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        match &mut self.0 {
            Held::Sqlite { conn, path } => {
                let sp = conn
                    .savepoint()
                    .map_err(|e| E::from(sqlite_error(path, e)))?;
                let out = on_sqlite(&sp, path, app, f)?;
                sp.commit().map_err(|e| E::from(sqlite_error(path, e)))?;
                Ok(out)
            }
            Held::Postgres { client, shown } => {
                let t = Tables {
                    conn: Conn::Postgres { client, shown },
                    app,
                };
                t.conn.batch("SAVEPOINT op").map_err(E::from)?;
                match f(&t) {
                    Ok(out) => {
                        t.conn.batch("RELEASE SAVEPOINT op").map_err(E::from)?;
                        Ok(out)
                    }
                    Err(e) => {
                        t.conn
                            .batch("ROLLBACK TO SAVEPOINT op; RELEASE SAVEPOINT op")
                            .map_err(E::from)?;
                        Err(e)
                    }
                }
            }
            Held::Dropped => unreachable!("a transaction used while dropped"),
        }
    }

    /// Commits; [`StoreError::Conflict`] if another writer got in first.
    pub fn commit(self) -> Result<(), StoreError> {
        match &self.0 {
            Held::Sqlite { conn, path } => conn
                .execute_batch("COMMIT")
                .map_err(|e| sqlite_error(path, e)),
            Held::Postgres { client, shown } => Conn::Postgres { client, shown }.batch("COMMIT"),
            Held::Dropped => unreachable!("a transaction used while dropped"),
        }
    }
}

impl Store {
    /// Runs `f` on the tables of `app`, reading only, in one snapshot.
    pub fn read<T, E: From<StoreError>>(
        &self,
        app: &str,
        f: impl FnOnce(&Tables<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        if let Some(pool) = &self.pg_tables {
            return self.on_postgres(
                pool,
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                app,
                f,
            );
        }
        let (_, path) = self.sqlite().map_err(E::from)?;
        // A reader from the pool, or a new one; it goes back afterwards
        // (there are at most as many as reads run at once).
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = rusqlite::Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|e| E::from(sqlite_error(path, e)))?;
                c.busy_timeout(std::time::Duration::from_secs(10))
                    .map_err(|e| E::from(sqlite_error(path, e)))?;
                c
            }
        };
        // One snapshot for the whole read.
        let out = conn
            .execute_batch("BEGIN")
            .map_err(|e| E::from(sqlite_error(path, e)))
            .and_then(|()| on_sqlite(&conn, path, app, f));
        let ended = conn.execute_batch("ROLLBACK").is_ok();
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if ended && readers.len() < READERS {
            readers.push(conn);
        }
        out
    }

    /// Runs `f` on the tables of `app` in one write transaction: committed
    /// if `f` succeeds, and nothing written if it fails.
    pub fn write<T, E: From<StoreError>>(
        &self,
        app: &str,
        f: impl FnOnce(&Tables<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        if let Some(pool) = &self.pg_tables {
            return self.on_postgres(pool, "BEGIN", app, f);
        }
        let (conn, path) = self.sqlite().map_err(E::from)?;
        let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| E::from(sqlite_error(path, e)))?;
        let out = on_sqlite(&tx, path, app, f)?;
        tx.commit().map_err(|e| E::from(sqlite_error(path, e)))?;
        Ok(out)
    }

    /// Runs `f` in a transaction `begin` opens on a pooled PostgreSQL
    /// connection: committed if `f` succeeds, rolled back if not.
    fn on_postgres<T, E: From<StoreError>>(
        &self,
        pool: &super::table_sql::PgPool,
        begin: &str,
        app: &str,
        f: impl FnOnce(&Tables<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let client = RefCell::new(pool.take().map_err(E::from)?);
        let t = Tables {
            conn: Conn::Postgres {
                client: &client,
                shown: &pool.shown,
            },
            app,
        };
        t.conn
            .batch(&format!("{begin}; {}", pg_limits()))
            .map_err(E::from)?;
        let out = f(&t);
        let ended = match &out {
            Ok(_) => t.conn.batch("COMMIT"),
            Err(_) => t.conn.batch("ROLLBACK"),
        };
        if ended.is_ok() {
            pool.give(client.into_inner());
        }
        let out = out?;
        ended.map_err(E::from)?;
        Ok(out)
    }

    /// Opens a transaction that spans several calls, on its own
    /// connection (see [`TableTransaction`]).
    pub fn begin(&self) -> Result<TableTransaction, StoreError> {
        if let Some(pool) = &self.pg_tables {
            let client = RefCell::new(pool.take()?);
            Conn::Postgres {
                client: &client,
                shown: &pool.shown,
            }
            .batch(&format!(
                "BEGIN ISOLATION LEVEL SERIALIZABLE; {}",
                pg_limits()
            ))?;
            return Ok(TableTransaction(Held::Postgres {
                client,
                shown: pool.shown.clone(),
            }));
        }
        let path = self.sqlite()?.1.to_owned();
        let conn = rusqlite::Connection::open(&path).map_err(|e| sqlite_error(&path, e))?;
        // No waiting for the write lock: a transaction that finds it taken
        // has lost the race, and its caller retries.
        conn.busy_timeout(std::time::Duration::ZERO)
            .map_err(|e| sqlite_error(&path, e))?;
        conn.execute_batch("PRAGMA foreign_keys = ON; BEGIN DEFERRED")
            .map_err(|e| sqlite_error(&path, e))?;
        Ok(TableTransaction(Held::Sqlite { conn, path }))
    }

    /// Sets what client keys and browser pages may do with a table, and
    /// whether browser pages need a logged-in user for it.
    pub fn set_client_access(
        &self,
        app: &str,
        table: &str,
        access: ClientAccess,
        login: bool,
    ) -> Result<(), StoreError> {
        self.write(app, |t| {
            let meta = t.table(table)?;
            t.conn.exec(
                "UPDATE data_tables SET client_access = ?1, client_login = ?2 WHERE id = ?3",
                &[
                    text(access.as_str()),
                    Sql::Integer(login.into()),
                    Sql::Integer(meta.id),
                ],
            )?;
            Ok(())
        })
    }

    /// Creates table `name` in `app` with `columns`. Linked tables must
    /// exist (or be this table).
    pub fn create_table(
        &self,
        app: &str,
        name: &str,
        columns: &[Column],
    ) -> Result<(), StoreError> {
        validate_table_name(name)?;
        if columns.len() > MAX_COLUMNS {
            return Err(bad(format!("at most {MAX_COLUMNS} columns per table")));
        }
        for (i, c) in columns.iter().enumerate() {
            validate_column_name(&c.name)?;
            if columns[..i].iter().any(|o| o.name == c.name) {
                return Err(bad(format!("column \"{}\" is named twice", c.name)));
            }
            if let Some(t) = c.kind.linked() {
                validate_table_name(t)?;
            }
        }
        self.app(app)?;
        self.write(app, |t| {
            t.lock_catalogue(0)?;
            let tx = &t.conn;
            if table_id(tx, app, name)?.is_some() {
                return Err(bad(format!("app \"{app}\" already has a table \"{name}\"")));
            }
            for c in columns {
                if let Some(linked) = c.kind.linked()
                    && linked != name
                    && table_id(tx, app, linked)?.is_none()
                {
                    return Err(bad(format!(
                        "column \"{}\" links to table \"{linked}\", which app \"{app}\" does not have; create it first",
                        c.name
                    )));
                }
            }
            let id = tx
                .int(
                    "INSERT INTO data_tables (app, name, created_at) VALUES (?1, ?2, ?3) RETURNING id",
                    &[text(app), text(name), Sql::Integer(super::now_secs())],
                )?
                .ok_or_else(|| bad("the new table has no id".to_owned()))?;
            tx.batch(&format!("CREATE TABLE tbl_{id} ({})", tx.row_id()))?;
            for c in columns {
                Self::insert_column(tx, id, c)?;
            }
            Ok(())
        })
    }

    fn insert_column(tx: &Conn<'_>, table: i64, c: &Column) -> Result<(), StoreError> {
        let cid = tx
            .int(
                "INSERT INTO data_columns (table_id, name, kind, linked) VALUES (?1, ?2, ?3, ?4) RETURNING id",
                &[
                    Sql::Integer(table),
                    text(&c.name),
                    Sql::Text(c.kind.to_string()),
                    c.kind.linked().map_or(Sql::Null, text),
                ],
            )?
            .ok_or_else(|| bad("the new column has no id".to_owned()))?;
        Self::add_sql_column(tx, table, cid, &c.kind)
    }

    /// Adds the SQL column(s) and index of app column `cid` of kind `kind`
    /// to `tbl_<table>`.
    pub(super) fn add_sql_column(
        tx: &Conn<'_>,
        table: i64,
        cid: i64,
        kind: &ColumnType,
    ) -> Result<(), StoreError> {
        tx.batch(&format!(
            "ALTER TABLE tbl_{table} ADD COLUMN c_{cid} {}",
            tx.column_type(kind)
        ))?;
        // A media column keeps its bytes beside its description, so rows
        // are read without them.
        if *kind == ColumnType::Media {
            tx.batch(&format!(
                "ALTER TABLE tbl_{table} ADD COLUMN d_{cid} {}",
                tx.bytes_type()
            ))?;
        }
        // Time and number columns are what series are searched and ordered by.
        if matches!(
            kind,
            ColumnType::DateTime | ColumnType::Date | ColumnType::Number
        ) {
            tx.batch(&format!(
                "CREATE INDEX tbl_{table}_c_{cid} ON tbl_{table}(c_{cid})"
            ))?;
        }
        Ok(())
    }

    /// Renames column `from` of `table` to `to` (its values stay).
    pub fn rename_column(
        &self,
        app: &str,
        table: &str,
        from: &str,
        to: &str,
    ) -> Result<(), StoreError> {
        validate_column_name(to)?;
        self.write(app, |t| {
            let meta = t.table(table)?;
            let c = meta.column(from)?;
            if meta.columns.iter().any(|o| o.column.name == to) {
                return Err(bad(format!(
                    "table \"{table}\" already has a column \"{to}\""
                )));
            }
            t.conn.exec(
                "UPDATE data_columns SET name = ?1 WHERE id = ?2",
                &[text(to), Sql::Integer(c.id)],
            )?;
            Ok(())
        })
    }

    /// Deletes column `column` of `table` and every value in it.
    pub fn drop_column(&self, app: &str, table: &str, column: &str) -> Result<(), StoreError> {
        self.write(app, |t| {
            let meta = t.table(table)?;
            let c = meta.column(column)?;
            let (tid, cid) = (meta.id, c.id);
            let mut sql = format!(
                "DROP INDEX IF EXISTS tbl_{tid}_c_{cid}; ALTER TABLE tbl_{tid} DROP COLUMN c_{cid};"
            );
            if c.column.kind == ColumnType::Media {
                sql.push_str(&format!("ALTER TABLE tbl_{tid} DROP COLUMN d_{cid};"));
            }
            t.conn.batch(&sql)?;
            t.conn.exec(
                "DELETE FROM data_columns WHERE id = ?1",
                &[Sql::Integer(cid)],
            )?;
            Ok(())
        })
    }

    /// The columns of other tables of `app` that link to `table`, as
    /// `table.column`.
    fn links_to(t: &Tables<'_>, table: &TableMeta) -> Result<Vec<String>, StoreError> {
        let rows = t.conn.rows(
            "SELECT d.name, c.name FROM data_columns c JOIN data_tables d ON d.id = c.table_id
             WHERE d.app = ?1 AND c.linked = ?2 AND d.id != ?3 ORDER BY d.name, c.name",
            &[text(t.app), text(&table.name), Sql::Integer(table.id)],
        )?;
        Ok(rows
            .iter()
            .map(|r| match r.as_slice() {
                [Sql::Text(table), Sql::Text(column)] => format!("{table}.{column}"),
                other => format!("{other:?}"),
            })
            .collect())
    }

    /// Renames table `from` of `app` to `to`; link columns follow.
    pub fn rename_table(&self, app: &str, from: &str, to: &str) -> Result<(), StoreError> {
        validate_table_name(to)?;
        self.write(app, |t| {
            let meta = t.table(from)?;
            if t.lookup("name", text(to))?.is_some() {
                return Err(bad(format!("app \"{app}\" already has a table \"{to}\"")));
            }
            t.conn.exec(
                "UPDATE data_tables SET name = ?1 WHERE id = ?2",
                &[text(to), Sql::Integer(meta.id)],
            )?;
            // Link columns name the table they point to (and spell it in
            // their type): both follow the new name.
            t.conn.exec(
                "UPDATE data_columns SET linked = ?1,
                    kind = CASE WHEN kind LIKE 'links:%' THEN 'links:' || CAST(?1 AS TEXT)
                                ELSE 'link:' || CAST(?1 AS TEXT) END
                 WHERE linked = ?2 AND table_id IN (SELECT id FROM data_tables WHERE app = ?3)",
                &[text(to), text(from), text(app)],
            )?;
            Ok(())
        })
    }

    /// Deletes table `table` of `app` and all its rows. Refused while
    /// columns of other tables link to it.
    pub fn drop_table(&self, app: &str, table: &str) -> Result<(), StoreError> {
        self.write(app, |t| {
            let meta = t.table(table)?;
            let links = Self::links_to(t, &meta)?;
            if !links.is_empty() {
                return Err(bad(format!(
                    "table \"{table}\" is linked from {}; delete those columns first",
                    links.join(", ")
                )));
            }
            t.conn.batch(&format!("DROP TABLE tbl_{}", meta.id))?;
            t.conn.exec(
                "DELETE FROM data_columns WHERE table_id = ?1",
                &[Sql::Integer(meta.id)],
            )?;
            t.conn.exec(
                "DELETE FROM data_tables WHERE id = ?1",
                &[Sql::Integer(meta.id)],
            )?;
            Ok(())
        })
    }
    /// Adds a column to a table.
    pub fn add_column(&self, app: &str, table: &str, column: &Column) -> Result<(), StoreError> {
        self.write(app, |t| t.add_column(&t.table(table)?, column).map(drop))
    }

    /// The tables of `app`, with their columns and row counts.
    pub fn tables(&self, app: &str) -> Result<Vec<TableInfo>, StoreError> {
        self.app(app)?;
        self.read(app, |t| {
            t.all()?
                .into_iter()
                .map(|meta| {
                    let rows = t.count(&meta, &Query::default())?;
                    Ok(TableInfo {
                        name: meta.name,
                        columns: meta.columns.into_iter().map(|c| c.column).collect(),
                        rows,
                        client_access: meta.client_access,
                        client_login: meta.client_login,
                    })
                })
                .collect()
        })
    }

    /// Adds rows to a table in one transaction: all of them or none.
    /// Answers their ids.
    pub fn add_rows(
        &self,
        app: &str,
        table: &str,
        rows: &[Map<String, Value>],
    ) -> Result<Vec<i64>, StoreError> {
        self.write(app, |t| t.add_rows(&t.table(table)?, rows))
    }

    /// Changes some values of row `id`.
    pub fn update_row(
        &self,
        app: &str,
        table: &str,
        id: i64,
        values: &Map<String, Value>,
    ) -> Result<(), StoreError> {
        self.write(app, |t| {
            if t.update_row(&t.table(table)?, id, values)? {
                Ok(())
            } else {
                Err(bad(format!("table \"{table}\" has no row {id}")))
            }
        })
    }

    /// Deletes row `id`; answers whether it existed.
    pub fn delete_row(&self, app: &str, table: &str, id: i64) -> Result<bool, StoreError> {
        self.write(app, |t| t.delete_row(&t.table(table)?, id))
    }

    /// Rows whose columns equal `filters` (all of them), ordered and paged.
    pub fn search(
        &self,
        app: &str,
        table: &str,
        filters: &Map<String, Value>,
        page: &Page,
    ) -> Result<Vec<Row>, StoreError> {
        let query = Query {
            filters: filters
                .iter()
                .map(|(column, value)| Filter::Eq {
                    column: column.clone(),
                    value: value.clone(),
                })
                .collect(),
            order: page.order_by.iter().cloned().collect(),
        };
        self.read(app, |t| {
            t.search(&t.table(table)?, &query, page.offset, page.limit)
        })
    }

    /// Row `id`, if it exists.
    pub fn get_row(&self, app: &str, table: &str, id: i64) -> Result<Option<Row>, StoreError> {
        self.read(app, |t| t.get(&t.table(table)?, id))
    }

    /// Rows in a table.
    pub fn count_rows(&self, app: &str, table: &str) -> Result<u64, StoreError> {
        self.read(app, |t| t.count(&t.table(table)?, &Query::default()))
    }

    /// A numeric column over a datetime column, downsampled (see
    /// [`Tables::downsample`]).
    pub fn downsample(&self, app: &str, series: &Series<'_>) -> Result<Vec<Bucket>, StoreError> {
        self.read(app, |t| t.downsample(series))
    }
}

impl Tables<'_> {
    /// A numeric column over a datetime column between `from` and `to`
    /// (RFC 3339, `to` excluded), in at most `buckets` equal time buckets:
    /// min, max, mean and count of each non-empty one — what a chart of
    /// any range needs, whatever the number of rows. Uses the time
    /// column's index for the range.
    pub fn downsample(&self, series: &Series<'_>) -> Result<Vec<Bucket>, StoreError> {
        let Series {
            table,
            time: time_column,
            value: value_column,
            from,
            to,
            buckets,
        } = *series;
        let parse = |what: &str, s: &str| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| bad(format!("{what} must be an RFC 3339 datetime, not \"{s}\"")))
        };
        let (start, end) = (parse("from", from)?, parse("to", to)?);
        if end <= start {
            return Err(bad(
                "the range is empty: `to` must come after `from`".to_owned()
            ));
        }
        let buckets = buckets.clamp(1, 10_000);
        let t = self;
        let c = &t.conn;
        {
            {
                let cat = t.table(table)?;
                let (tid, tcol) = {
                    let m = cat.column(time_column)?;
                    (m.id, &m.column)
                };
                let (vid, vcol) = {
                    let m = cat.column(value_column)?;
                    (m.id, &m.column)
                };
                if tcol.kind != ColumnType::DateTime {
                    return Err(bad(format!(
                        "column \"{time_column}\" is {}, not datetime",
                        tcol.kind
                    )));
                }
                if vcol.kind != ColumnType::Number {
                    return Err(bad(format!(
                        "column \"{value_column}\" is {}, not number",
                        vcol.kind
                    )));
                }
                let column = Column {
                    name: time_column.to_owned(),
                    kind: ColumnType::DateTime,
                };
                let (Sql::Real(lo), Sql::Real(hi)) = (
                    to_sql(c, &column, None, &Value::from(from))?,
                    to_sql(c, &column, None, &Value::from(to))?,
                ) else {
                    return Err(bad("datetimes are stored as seconds".to_owned()));
                };
                let origin = start.unix_timestamp_nanos() as f64 / 1e9;
                let width = (end.unix_timestamp_nanos() - start.unix_timestamp_nanos()) as f64
                    / 1e9
                    / buckets as f64;
                // The rows stream in time order from the time column's index and
                // are folded into buckets here: no sort, no temporary table.
                let sql = format!(
                    "SELECT c_{tid}, c_{vid} FROM tbl_{}{}
                     WHERE c_{tid} >= ?1 AND c_{tid} < ?2 ORDER BY c_{tid}",
                    cat.id,
                    c.indexed_by(&format!("tbl_{}_c_{tid}", cat.id))
                );
                let mut out: Vec<Bucket> = Vec::new();
                let mut sum = 0.0;
                c.each(&sql, &[Sql::Real(lo), Sql::Real(hi)], |r| {
                    let real = |v: &Sql| match *v {
                        Sql::Real(f) => Some(f),
                        Sql::Integer(i) => Some(i as f64),
                        _ => None,
                    };
                    let (Some(t), Some(v)) = (real(&r[0]), real(&r[1])) else {
                        return Ok(());
                    };
                    let b = (((t - origin) / width) as usize).min(buckets - 1);
                    let start = origin + b as f64 * width;
                    match out.last_mut() {
                        Some(last) if last.start == start => {
                            last.min = last.min.min(v);
                            last.max = last.max.max(v);
                            last.count += 1;
                            sum += v;
                        }
                        _ => {
                            if let Some(last) = out.last_mut() {
                                last.mean = sum / last.count as f64;
                            }
                            sum = v;
                            out.push(Bucket {
                                start,
                                min: v,
                                max: v,
                                mean: v,
                                count: 1,
                            });
                        }
                    }
                    Ok(())
                })?;
                if let Some(last) = out.last_mut() {
                    last.mean = sum / last.count as f64;
                }
                Ok(out)
            }
        }
    }

    fn meta(&self, found: Option<Vec<Sql>>) -> Result<Option<TableMeta>, StoreError> {
        let Some(found) = found else {
            return Ok(None);
        };
        let [
            Sql::Integer(id),
            Sql::Text(name),
            Sql::Text(access),
            Sql::Integer(login),
        ] = <[Sql; 4]>::try_from(found).map_err(|r| bad(format!("a catalogue row: {r:?}")))?
        else {
            return Err(bad("a catalogue row of unexpected types".to_owned()));
        };
        let columns = self
            .conn
            .rows(
                "SELECT c.id, c.name, c.kind, t.id FROM data_columns c
                 LEFT JOIN data_tables t ON t.app = ?2 AND t.name = c.linked
                 WHERE c.table_id = ?1 ORDER BY c.id",
                &[Sql::Integer(id), text(self.app)],
            )?
            .into_iter()
            .map(|r| match <[Sql; 4]>::try_from(r) {
                Ok([Sql::Integer(id), Sql::Text(name), Sql::Text(kind), linked]) => {
                    Ok(ColumnMeta {
                        id,
                        column: Column {
                            name,
                            kind: kind.parse::<ColumnType>().map_err(bad)?,
                        },
                        linked: match linked {
                            Sql::Integer(l) => Some(l),
                            _ => None,
                        },
                    })
                }
                other => Err(bad(format!("a column row: {other:?}"))),
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Some(TableMeta {
            id,
            name,
            columns,
            client_access: access.parse().unwrap_or(ClientAccess::None),
            client_login: login != 0,
        }))
    }

    fn lookup(&self, by: &str, key: Sql) -> Result<Option<TableMeta>, StoreError> {
        let found = self.conn.first(
            &format!(
                "SELECT id, name, client_access, client_login FROM data_tables WHERE app = ?1 AND {by} = ?2"
            ),
            &[text(self.app), key],
        )?;
        self.meta(found)
    }

    /// Table `name` of the app, or an error that says how to create it.
    pub fn table(&self, name: &str) -> Result<TableMeta, StoreError> {
        self.lookup("name", text(name))?.ok_or_else(|| {
            bad(format!(
                "app \"{app}\" has no table \"{}\"; create it with `ferrolink table create --app {app} NAME --column NAME:TYPE ...`",
                name.chars().take(80).collect::<String>(),
                app = self.app,
            ))
        })
    }

    /// The app's table with id `id`, if it has one.
    pub fn table_by_id(&self, id: i64) -> Result<Option<TableMeta>, StoreError> {
        self.lookup("id", Sql::Integer(id))
    }

    /// All the app's tables, by name.
    pub fn all(&self) -> Result<Vec<TableMeta>, StoreError> {
        let names = self.conn.rows(
            "SELECT name FROM data_tables WHERE app = ?1 ORDER BY name",
            &[text(self.app)],
        )?;
        names
            .iter()
            .filter_map(|r| match r.first() {
                Some(Sql::Text(n)) => Some(self.table(n)),
                _ => None,
            })
            .collect()
    }

    /// Adds rows: all of them or none. Answers their ids.
    pub fn add_rows(
        &self,
        meta: &TableMeta,
        rows: &[Map<String, Value>],
    ) -> Result<Vec<i64>, StoreError> {
        let mut ids = Vec::with_capacity(rows.len());
        for values in rows {
            let (cols, vals): (Vec<String>, Vec<Sql>) =
                meta.convert(&self.conn, values)?.into_iter().unzip();
            let sql = if cols.is_empty() {
                format!("INSERT INTO tbl_{} DEFAULT VALUES RETURNING _id", meta.id)
            } else {
                let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
                format!(
                    "INSERT INTO tbl_{} ({}) VALUES ({}) RETURNING _id",
                    meta.id,
                    cols.join(", "),
                    marks.join(", ")
                )
            };
            let id = self
                .conn
                .int(&sql, &vals)?
                .ok_or_else(|| bad("the new row has no id".to_owned()))?;
            ids.push(id);
        }
        Ok(ids)
    }

    /// Changes some values of row `id`; answers whether the row exists.
    pub fn update_row(
        &self,
        meta: &TableMeta,
        id: i64,
        values: &Map<String, Value>,
    ) -> Result<bool, StoreError> {
        let (sets, mut vals): (Vec<String>, Vec<Sql>) = meta
            .convert(&self.conn, values)?
            .into_iter()
            .enumerate()
            .map(|(i, (col, v))| (format!("{col} = ?{}", i + 1), v))
            .unzip();
        if sets.is_empty() {
            return Ok(self.get(meta, id)?.is_some());
        }
        vals.push(Sql::Integer(id));
        let changed = self.conn.exec(
            &format!(
                "UPDATE tbl_{} SET {} WHERE _id = ?{}",
                meta.id,
                sets.join(", "),
                vals.len()
            ),
            &vals,
        )?;
        Ok(changed > 0)
    }

    /// The media in column `column` of row `id`: its description
    /// (`{"mime", "name", "length"}`) and bytes; `None` if the row is gone
    /// or the cell unset.
    pub fn media(
        &self,
        meta: &TableMeta,
        id: i64,
        column: &str,
    ) -> Result<Option<(Value, Vec<u8>)>, StoreError> {
        let c = meta.column(column)?;
        if c.column.kind != ColumnType::Media {
            return Err(bad(format!(
                "column \"{column}\" is {}, not media",
                c.column.kind
            )));
        }
        let found = self.conn.first(
            &format!(
                "SELECT c_{0}, d_{0} FROM tbl_{1} WHERE _id = ?1",
                c.id, meta.id
            ),
            &[Sql::Integer(id)],
        )?;
        Ok(match found.as_deref() {
            Some([Sql::Text(description), Sql::Blob(bytes)]) => Some((
                serde_json::from_str(description).unwrap_or(Value::Null),
                bytes.clone(),
            )),
            _ => None,
        })
    }

    /// Deletes row `id`; answers whether it existed.
    pub fn delete_row(&self, meta: &TableMeta, id: i64) -> Result<bool, StoreError> {
        self.conn
            .exec(
                &format!("DELETE FROM tbl_{} WHERE _id = ?1", meta.id),
                &[Sql::Integer(id)],
            )
            .map(|n| n > 0)
    }

    /// Deletes the rows `query` finds; answers how many.
    pub fn delete_where(&self, meta: &TableMeta, query: &Query) -> Result<u64, StoreError> {
        let mut vals = Vec::new();
        let cond = self.conditions(meta, &query.filters, &mut vals)?;
        self.conn
            .exec(&format!("DELETE FROM tbl_{} WHERE {cond}", meta.id), &vals)
    }

    /// How many rows `query` finds.
    pub fn count(&self, meta: &TableMeta, query: &Query) -> Result<u64, StoreError> {
        self.count_where(meta, None, query)
    }

    /// Rows matching `query` (and being row `id`, if given).
    fn count_where(
        &self,
        meta: &TableMeta,
        id: Option<i64>,
        query: &Query,
    ) -> Result<u64, StoreError> {
        let mut vals: Vec<Sql> = id.map(Sql::Integer).into_iter().collect();
        let cond = self.conditions(meta, &query.filters, &mut vals)?;
        let only = if id.is_some() { "_id = ?1 AND " } else { "" };
        self.conn
            .int(
                &format!("SELECT count(*) FROM tbl_{} WHERE {only}{cond}", meta.id),
                &vals,
            )
            .map(|n| n.unwrap_or(0) as u64)
    }

    /// Whether the app lets its server code create columns by adding rows.
    pub fn auto_columns(&self) -> Result<bool, StoreError> {
        self.conn
            .int(
                "SELECT auto_columns FROM apps WHERE name = ?1",
                &[text(self.app)],
            )
            .map(|on| on.unwrap_or(0) != 0)
    }

    /// Adds `column` to `meta`'s table inside the caller's transaction and
    /// answers the table as it now is.
    pub fn add_column(&self, meta: &TableMeta, column: &Column) -> Result<TableMeta, StoreError> {
        validate_column_name(&column.name)?;
        if meta.columns.iter().any(|c| c.column.name == column.name) {
            return Err(bad(format!(
                "table \"{}\" already has a column \"{}\"",
                meta.name, column.name
            )));
        }
        // Other servers on the same PostgreSQL database change the
        // catalogue concurrently (two devices on two servers adding rows
        // with the same new field): decide under the table's lock on the
        // catalogue as it is now. SQLite's one writer needs none of it.
        let fresh;
        let meta = if self.conn.is_postgres() {
            self.lock_catalogue(meta.id)?;
            fresh = self.table(&meta.name)?;
            if let Some(c) = fresh.columns.iter().find(|c| c.column.name == column.name) {
                return if c.column.kind == column.kind {
                    Ok(fresh)
                } else {
                    Err(bad(format!(
                        "table \"{}\" already has a column \"{}\" ({}): another server added it just now",
                        meta.name, column.name, c.column.kind
                    )))
                };
            }
            &fresh
        } else {
            meta
        };
        if meta.columns.len() >= MAX_COLUMNS {
            return Err(bad(format!("at most {MAX_COLUMNS} columns per table")));
        }
        if let Some(linked) = column.kind.linked() {
            self.table(linked)?;
        }
        Store::insert_column(&self.conn, meta.id, column)?;
        self.table(&meta.name)
    }

    /// On PostgreSQL, waits for (and holds until the transaction ends) the
    /// lock on catalogue entry `key` (a table's id; 0 for the app's list of
    /// tables), so that servers sharing the database change it one at a
    /// time. Nothing on SQLite, whose writes are one at a time anyway.
    fn lock_catalogue(&self, key: i64) -> Result<(), StoreError> {
        if self.conn.is_postgres() {
            self.conn.batch(&format!(
                "SELECT pg_advisory_xact_lock(727384502, {})",
                key.rem_euclid(i64::from(i32::MAX))
            ))?;
        }
        Ok(())
    }

    /// Whether row `id` exists and matches `query`'s conditions.
    pub fn matches(&self, meta: &TableMeta, id: i64, query: &Query) -> Result<bool, StoreError> {
        Ok(self.count_where(meta, Some(id), query)? > 0)
    }

    /// Row `id`, if it exists.
    pub fn get(&self, meta: &TableMeta, id: i64) -> Result<Option<Row>, StoreError> {
        Ok(self
            .select(meta, &format!("_id = {id}"), &[], "_id", 1, 0)?
            .into_iter()
            .next())
    }

    /// The rows `query` finds, in its order, skipping `offset` and
    /// answering at most `limit` (and at most [`MAX_PAGE`]).
    pub fn search(
        &self,
        meta: &TableMeta,
        query: &Query,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let mut vals = Vec::new();
        let cond = self.conditions(meta, &query.filters, &mut vals)?;
        let mut order = String::new();
        for (name, ascending) in &query.order {
            let c = meta.column(name)?;
            // Unset values first going up, as SQLite sorts them; PostgreSQL
            // is told so.
            order.push_str(&format!(
                "c_{} {}, ",
                c.id,
                if *ascending {
                    "ASC NULLS FIRST"
                } else {
                    "DESC NULLS LAST"
                }
            ));
        }
        order.push_str("_id");
        self.select(meta, &cond, &vals, &order, limit.min(MAX_PAGE), offset)
    }

    fn select(
        &self,
        meta: &TableMeta,
        cond: &str,
        vals: &[Sql],
        order: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let mut selected = String::from("_id");
        for c in &meta.columns {
            selected.push_str(&format!(", c_{}", c.id));
        }
        let sql = format!(
            "SELECT {selected} FROM tbl_{} WHERE {cond} ORDER BY {order} LIMIT {limit} OFFSET {offset}",
            meta.id
        );
        let mut out = Vec::new();
        self.conn.each(&sql, vals, |r| {
            let Some(&Sql::Integer(id)) = r.first() else {
                return Err(bad(format!("a row without an id: {:?}", r.first())));
            };
            let mut values = Map::new();
            for (c, v) in meta.columns.iter().zip(&r[1..]) {
                values.insert(c.column.name.clone(), from_sql(&c.column.kind, v.into()));
            }
            out.push((id, values));
            Ok(())
        })?;
        Ok(out)
    }

    /// `filters` as one SQL condition (`1` when empty), their values
    /// pushed onto `vals`.
    fn conditions(
        &self,
        meta: &TableMeta,
        filters: &[Filter],
        vals: &mut Vec<Sql>,
    ) -> Result<String, StoreError> {
        let mut budget = MAX_CONDITIONS;
        self.join(meta, filters, " AND ", "TRUE", vals, &mut budget)
    }

    fn join(
        &self,
        meta: &TableMeta,
        filters: &[Filter],
        sep: &str,
        empty: &str,
        vals: &mut Vec<Sql>,
        budget: &mut usize,
    ) -> Result<String, StoreError> {
        if filters.is_empty() {
            return Ok(empty.to_owned());
        }
        let parts = filters
            .iter()
            .map(|f| self.condition(meta, f, vals, budget))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(format!("({})", parts.join(sep)))
    }

    fn condition(
        &self,
        meta: &TableMeta,
        filter: &Filter,
        vals: &mut Vec<Sql>,
        budget: &mut usize,
    ) -> Result<String, StoreError> {
        *budget = budget.checked_sub(1).ok_or_else(|| {
            bad(format!(
                "a query may hold at most {MAX_CONDITIONS} conditions; split it"
            ))
        })?;
        let push = |vals: &mut Vec<Sql>, v: Sql| {
            vals.push(v);
            format!("?{}", vals.len())
        };
        let wrong = |c: &ColumnMeta, what: &str| {
            bad(format!(
                "column \"{}\" is {}: {what}",
                c.column.name, c.column.kind
            ))
        };
        Ok(match filter {
            Filter::Eq { column, value } => {
                let c = meta.column(column)?;
                if value.is_null() {
                    return Ok(format!("c_{} IS NULL", c.id));
                }
                match &c.column.kind {
                    ColumnType::Links(_) => {
                        let ids = match value {
                            Value::Array(a) => a.clone(),
                            v => vec![v.clone()],
                        };
                        let mut parts = vec![format!("c_{} IS NOT NULL", c.id)];
                        for id in ids {
                            let id = id.as_i64().ok_or_else(|| {
                                wrong(c, "search it with rows of the linked table")
                            })?;
                            let mark = push(vals, Sql::Integer(id));
                            parts.push(self.conn.list_holds(&format!("c_{}", c.id), &mark));
                        }
                        format!("({})", parts.join(" AND "))
                    }
                    ColumnType::Link(_) => {
                        let id = value
                            .as_i64()
                            .ok_or_else(|| wrong(c, "search it with a row of the linked table"))?;
                        format!("c_{} = {}", c.id, push(vals, Sql::Integer(id)))
                    }
                    _ => {
                        let v = to_sql(&self.conn, &c.column, c.linked, value)?;
                        format!("c_{} = {}", c.id, push(vals, v))
                    }
                }
            }
            Filter::Compare { column, cmp, value } => {
                let c = meta.column(column)?;
                if !matches!(
                    c.column.kind,
                    ColumnType::Text | ColumnType::Number | ColumnType::Date | ColumnType::DateTime
                ) {
                    return Err(wrong(
                        c,
                        "only text, number, date and datetime columns are compared",
                    ));
                }
                if value.is_null() {
                    return Err(wrong(c, "compare it with a value, not None"));
                }
                let v = to_sql(&self.conn, &c.column, c.linked, value)?;
                let op = match cmp {
                    Cmp::Gt => ">",
                    Cmp::Ge => ">=",
                    Cmp::Lt => "<",
                    Cmp::Le => "<=",
                };
                format!("c_{} {op} {}", c.id, push(vals, v))
            }
            Filter::Like {
                column,
                pattern,
                ignore_case,
            } => {
                let c = meta.column(column)?;
                if c.column.kind != ColumnType::Text {
                    return Err(wrong(c, "only text columns match patterns"));
                }
                if pattern.len() > 1024 || pattern.matches(['%', '_']).count() > 32 {
                    return Err(bad(
                        "a like() pattern is at most 1024 bytes with at most 32 wildcards"
                            .to_owned(),
                    ));
                }
                let pattern = if *ignore_case || self.conn.is_postgres() {
                    pattern.clone()
                } else {
                    like_to_glob(pattern)
                };
                let mark = push(vals, Sql::Text(pattern));
                self.conn.like(&format!("c_{}", c.id), &mark, *ignore_case)
            }
            Filter::Words { column, query } => {
                let c = meta.column(column)?;
                if c.column.kind != ColumnType::Text {
                    return Err(wrong(c, "only text columns are searched for words"));
                }
                if query.len() > 1024 || query.split_whitespace().count() > 32 {
                    return Err(bad(
                        "a full-text query is at most 1024 bytes and 32 words".to_owned()
                    ));
                }
                let parts: Vec<String> = query
                    .split_whitespace()
                    .map(|w| {
                        let mark = push(vals, Sql::Text(format!("%{}%", like_literal(w))));
                        self.conn.contains(&format!("c_{}", c.id), &mark)
                    })
                    .collect();
                if parts.is_empty() {
                    "TRUE".to_owned()
                } else {
                    format!("({})", parts.join(" AND "))
                }
            }
            Filter::All { of } => self.join(meta, of, " AND ", "TRUE", vals, budget)?,
            Filter::Any { of } => self.join(meta, of, " OR ", "FALSE", vals, budget)?,
            Filter::NoneOf { of } => {
                format!(
                    "NOT {}",
                    self.join(meta, of, " OR ", "(FALSE)", vals, budget)?
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Runs `check` on a store with the greenhouse tables, first in SQLite
    /// and then in PostgreSQL.
    fn both(check: impl Fn(&Store)) {
        super::super::tests::on_both(|s| {
            greenhouse(s);
            check(s);
        });
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        greenhouse(&store);
        (dir, store)
    }

    fn greenhouse(store: &Store) {
        store.create_app("greenhouse").unwrap();
        store
            .create_table(
                "greenhouse",
                "devices",
                &["name:text".parse().unwrap(), "active:bool".parse().unwrap()],
            )
            .unwrap();
        store
            .create_table(
                "greenhouse",
                "readings",
                &[
                    "t:datetime".parse().unwrap(),
                    "celsius:number".parse().unwrap(),
                    "device:link:devices".parse().unwrap(),
                    "extra:simpleObject".parse().unwrap(),
                    "day:date".parse().unwrap(),
                ],
            )
            .unwrap();
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn all() -> Page {
        Page {
            order_by: None,
            offset: 0,
            limit: 1000,
        }
    }

    #[test]
    fn tables_and_columns_are_renamed_and_dropped() {
        both(|s| {
            let dev = s
                .add_rows("greenhouse", "devices", &[obj(json!({"name": "pico-1"}))])
                .unwrap()[0];
            s.add_rows(
                "greenhouse",
                "readings",
                &[obj(
                    json!({"celsius": 21.5, "device": dev, "t": "2026-12-02T10:00:00Z"}),
                )],
            )
            .unwrap();
            // A table others link to cannot go; renaming it carries the links.
            let e = s.drop_table("greenhouse", "devices").unwrap_err();
            assert!(e.to_string().contains("linked from readings.device"), "{e}");
            s.rename_table("greenhouse", "devices", "sensors").unwrap();
            let readings = s
                .tables("greenhouse")
                .unwrap()
                .into_iter()
                .find(|t| t.name == "readings")
                .unwrap();
            assert!(
                readings
                    .columns
                    .iter()
                    .any(|c| c.kind.to_string() == "link:sensors")
            );
            let (_, row) = s.get_row("greenhouse", "readings", 1).unwrap().unwrap();
            assert_eq!(row["device"], dev);
            // Columns: renamed with their values, dropped with them (an
            // indexed number column, and the link).
            s.rename_column("greenhouse", "readings", "celsius", "temperature")
                .unwrap();
            let (_, row) = s.get_row("greenhouse", "readings", 1).unwrap().unwrap();
            assert_eq!(row["temperature"], 21.5);
            let e = s
                .rename_column("greenhouse", "readings", "t", "temperature")
                .unwrap_err();
            assert!(e.to_string().contains("already has"), "{e}");
            s.drop_column("greenhouse", "readings", "temperature")
                .unwrap();
            s.drop_column("greenhouse", "readings", "device").unwrap();
            let (_, row) = s.get_row("greenhouse", "readings", 1).unwrap().unwrap();
            assert!(!row.contains_key("temperature") && !row.contains_key("device"));
            s.drop_table("greenhouse", "sensors").unwrap();
            let e = s.count_rows("greenhouse", "sensors").unwrap_err();
            assert!(e.to_string().contains("has no table \"sensors\""), "{e}");
            // Hostile new names are refused like hostile first names.
            assert!(s.rename_table("greenhouse", "readings", "x; DROP").is_err());
        });
    }

    #[test]
    fn transactions_that_race_lose_with_a_conflict_and_keep_nothing() {
        both(|s| {
            let count = |t: &Tables<'_>| t.count(&t.table("devices")?, &Query::default());
            let add = |t: &Tables<'_>, name: &str| {
                t.add_rows(&t.table("devices")?, &[obj(json!({"name": name}))])
            };
            let mut first = s.begin().unwrap();
            let mut second = s.begin().unwrap();
            // Both read, then both write what they read decided.
            assert_eq!(first.run("greenhouse", count).unwrap(), 0);
            assert_eq!(second.run("greenhouse", count).unwrap(), 0);
            first.run("greenhouse", |t| add(t, "one")).unwrap();
            let second_wrote = second.run("greenhouse", |t| add(t, "two"));
            first.commit().unwrap();
            let lost = match second_wrote {
                Err(e) => e,
                Ok(_) => second
                    .commit()
                    .expect_err("the second commit loses the race"),
            };
            assert!(matches!(lost, StoreError::Conflict), "{lost}");
            let names: Vec<Value> = s
                .search("greenhouse", "devices", &Map::new(), &all())
                .unwrap()
                .into_iter()
                .map(|(_, r)| r["name"].clone())
                .collect();
            assert_eq!(names, vec![json!("one")]);
            // A failed step inside a transaction is undone and the
            // transaction goes on.
            let mut third = s.begin().unwrap();
            let refused = third.run("greenhouse", |t| {
                add(t, "three")?;
                add(t, "four")?;
                t.add_rows(&t.table("devices")?, &[obj(json!({"name": 5}))])
            });
            assert!(refused.is_err());
            third.run("greenhouse", |t| add(t, "five")).unwrap();
            third.commit().unwrap();
            assert_eq!(s.count_rows("greenhouse", "devices").unwrap(), 2);
        });
    }

    #[test]
    fn nodes_sharing_a_postgres_database_share_their_tables() {
        let dir = tempfile::tempdir().unwrap();
        let url = ferrolink_testkit::postgres::database();
        let a = Store::open_database(dir.path(), Some(&url)).unwrap();
        let b = Store::open_database(dir.path(), Some(&url)).unwrap();
        greenhouse(&a);
        let ids = a
            .add_rows("greenhouse", "devices", &[obj(json!({"name": "on a"}))])
            .unwrap();
        b.add_rows("greenhouse", "devices", &[obj(json!({"name": "on b"}))])
            .unwrap();
        assert_eq!(a.count_rows("greenhouse", "devices").unwrap(), 2);
        assert_eq!(
            b.get_row("greenhouse", "devices", ids[0])
                .unwrap()
                .unwrap()
                .1["name"],
            json!("on a")
        );
        b.add_column("greenhouse", "devices", &"room:text".parse().unwrap())
            .unwrap();
        let tables = a.tables("greenhouse").unwrap();
        let devices = tables.iter().find(|t| t.name == "devices").unwrap();
        assert!(devices.columns.iter().any(|c| c.name == "room"));
    }

    #[test]
    fn servers_adding_the_same_column_or_table_at_once_both_succeed_or_are_told_why() {
        let dir = tempfile::tempdir().unwrap();
        let url = ferrolink_testkit::postgres::database();
        let a = Store::open_database(dir.path(), Some(&url)).unwrap();
        greenhouse(&a);
        let b = Store::open_database(dir.path(), Some(&url)).unwrap();
        // Both read the table without the column, then both add it.
        let ready = std::sync::Barrier::new(2);
        let add = |store: &Store, kind: &str| {
            store.write("greenhouse", |t| {
                let meta = t.table("devices")?;
                ready.wait();
                t.add_column(&meta, &format!("room:{kind}").parse().unwrap())
                    .map(|m| m.columns.len())
            })
        };
        let (one, two) = std::thread::scope(|s| {
            let one = s.spawn(|| add(&a, "text"));
            let two = s.spawn(|| add(&b, "text"));
            (one.join().unwrap(), two.join().unwrap())
        });
        assert_eq!((one.unwrap(), two.unwrap()), (3, 3));
        // The same name with another type: the loser is told what is there.
        let (one, two) = std::thread::scope(|s| {
            let one = s.spawn(|| {
                a.write("greenhouse", |t| {
                    let meta = t.table("devices")?;
                    ready.wait();
                    t.add_column(&meta, &"floor:number".parse().unwrap())
                        .map(drop)
                })
            });
            let two = s.spawn(|| {
                b.write("greenhouse", |t| {
                    let meta = t.table("devices")?;
                    ready.wait();
                    t.add_column(&meta, &"floor:text".parse().unwrap())
                        .map(drop)
                })
            });
            (one.join().unwrap(), two.join().unwrap())
        });
        let lost = one.err().or(two.err()).expect("one of them loses");
        assert!(
            lost.to_string().contains("another server added it"),
            "{lost}"
        );
        // Two servers creating one table: one creates it, the other is told.
        let made: Vec<_> = std::thread::scope(|s| {
            [&a, &b]
                .map(|store| s.spawn(move || store.create_table("greenhouse", "valves", &[])))
                .map(|h| h.join().unwrap())
                .into_iter()
                .collect()
        });
        assert_eq!(made.iter().filter(|r| r.is_ok()).count(), 1, "{made:?}");
        let refused = made.into_iter().find_map(Result::err).unwrap();
        assert!(
            refused.to_string().contains("already has a table"),
            "{refused}"
        );
    }

    #[test]
    fn a_postgres_statement_past_its_time_is_a_clear_error() {
        let url = ferrolink_testkit::postgres::database();
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let e = client
            .batch_execute("SET statement_timeout = 50; SELECT pg_sleep(5)")
            .unwrap_err();
        let e = super::super::table_sql::postgres_error("pg", e);
        assert!(e.to_string().contains("was stopped; narrow it"), "{e}");
        // A transaction that loses a race is a conflict, not a failure.
        let mut a = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        a.batch_execute("CREATE TABLE t (n BIGINT); INSERT INTO t VALUES (1)")
            .unwrap();
        client
            .batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT * FROM t")
            .unwrap();
        a.batch_execute("UPDATE t SET n = 2").unwrap();
        let e = client.batch_execute("UPDATE t SET n = 3").unwrap_err();
        let e = super::super::table_sql::postgres_error("pg", e);
        assert!(matches!(e, StoreError::Conflict), "{e}");
    }

    #[test]
    fn table_reads_do_not_wait_for_the_main_connection() {
        let (_d, s) = store();
        s.add_rows("greenhouse", "devices", &[obj(json!({"name": "pico-1"}))])
            .unwrap();
        // Someone holds the connection logins and writes use.
        let held = s.sqlite().unwrap().0.lock().unwrap();
        let rows = s
            .read("greenhouse", |t| {
                t.count(&t.table("devices")?, &Query::default())
            })
            .unwrap();
        assert_eq!(rows, 1);
        drop(held);
        // Readers go back to the pool and see later commits.
        s.add_rows("greenhouse", "devices", &[obj(json!({"name": "pico-2"}))])
            .unwrap();
        assert_eq!(s.count_rows("greenhouse", "devices").unwrap(), 2);
        assert_eq!(s.readers.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_query_past_its_time_is_stopped_with_a_clear_error() {
        let (dir, _s) = store();
        let conn = rusqlite::Connection::open(dir.path().join(super::super::DB_FILE)).unwrap();
        let slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100000000) SELECT count(*) FROM c";
        let started = std::time::Instant::now();
        let e = bounded_for(&conn, std::time::Duration::from_millis(50), || {
            conn.query_row(slow, [], |r| r.get::<_, i64>(0))
        })
        .unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let e = sqlite_error(dir.path(), e);
        assert!(e.to_string().contains("was stopped; narrow it"), "{e}");
        // The handler is gone afterwards: the connection runs queries again.
        assert_eq!(
            conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            1
        );
    }

    #[test]
    fn media_is_kept_beside_its_description_and_csv_round_trips() {
        both(|s| {
            s.create_table(
                "greenhouse",
                "photos",
                &["name:text".parse().unwrap(), "image:media".parse().unwrap()],
            )
            .unwrap();
            let png = json!({"mime": "image/png", "name": "p.png", "base64": "iVBORw0KGgo="});
            let id = s
                .add_rows(
                    "greenhouse",
                    "photos",
                    &[obj(json!({"name": "a", "image": png}))],
                )
                .unwrap()[0];
            let (_, row) = s.get_row("greenhouse", "photos", id).unwrap().unwrap();
            assert_eq!(
                row["image"],
                json!({"mime": "image/png", "name": "p.png", "length": 8})
            );
            let (description, bytes) = s
                .read("greenhouse", |t| t.media(&t.table("photos")?, id, "image"))
                .unwrap()
                .unwrap();
            assert_eq!(description["length"], 8);
            assert_eq!(bytes, b"\x89PNG\r\n\x1a\n");
            for bad in [
                json!({"mime": "image/png"}),
                json!({"mime": "image/png", "base64": "not base64!"}),
                json!("a string"),
            ] {
                let e = s
                    .add_rows("greenhouse", "photos", &[obj(json!({"image": bad}))])
                    .unwrap_err();
                assert!(e.to_string().contains("image"), "{e}");
            }
            // Searching media: only for unset.
            let e = s
                .search("greenhouse", "photos", &obj(json!({"image": png})), &all())
                .unwrap_err();
            assert!(e.to_string().contains("searched only for None"), "{e}");
            s.update_row("greenhouse", "photos", id, &obj(json!({"image": null})))
                .unwrap();
            assert!(
                s.read("greenhouse", |t| t.media(&t.table("photos")?, id, "image"))
                    .unwrap()
                    .is_none()
            );

            // CSV: what `csv` writes, `parse_csv` reads back.
            let columns: Vec<Column> = ["title:text", "n:number", "ok:bool", "extra:simpleObject"]
                .iter()
                .map(|c| c.parse().unwrap())
                .collect();
            let rows = vec![
                (
                    1,
                    obj(
                        json!({"title": "a, \"quoted\"\nline", "n": 1.5, "ok": true, "extra": {"k": [1]}}),
                    ),
                ),
                (
                    2,
                    obj(json!({"title": "=1+1", "n": null, "ok": false, "extra": null})),
                ),
            ];
            let text = csv(&columns, &rows, false);
            let back = parse_csv(&columns, &text).unwrap();
            assert_eq!(
                back,
                rows.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>()
            );
            assert!(csv(&columns, &rows, true).contains("'=1+1"));
            let e = parse_csv(&columns, "title,kelvin\r\nx,1\r\n").unwrap_err();
            assert!(e.to_string().contains("\"kelvin\""), "{e}");
            let e = parse_csv(&columns, "title,n\r\nx,1\r\ny,lots\r\n").unwrap_err();
            assert!(e.to_string().contains("CSV line 3, column \"n\""), "{e}");
        });
    }

    #[test]
    fn rows_round_trip_with_their_types() {
        both(|s| {
            let dev = s
                .add_rows(
                    "greenhouse",
                    "devices",
                    &[obj(json!({"name": "pico-1", "active": true}))],
                )
                .unwrap()[0];
            let id = s
                .add_rows(
                    "greenhouse",
                    "readings",
                    &[obj(json!({
                        "t": "2026-12-02T15:30:00+01:00",
                        "celsius": 21.5,
                        "device": dev,
                        "extra": {"battery": [3.7, "ok"]},
                        "day": "2026-12-02"
                    }))],
                )
                .unwrap()[0];
            let (rid, row) = s.get_row("greenhouse", "readings", id).unwrap().unwrap();
            assert_eq!(rid, id);
            // Datetimes are kept in UTC, fixed width, so text order is time order.
            assert_eq!(row["t"], "2026-12-02T14:30:00.000000Z");
            assert_eq!(row["celsius"], 21.5);
            assert_eq!(row["device"], dev);
            assert_eq!(row["extra"], json!({"battery": [3.7, "ok"]}));
            assert_eq!(row["day"], "2026-12-02");
            let found = s
                .search(
                    "greenhouse",
                    "devices",
                    &obj(json!({"active": true})),
                    &all(),
                )
                .unwrap();
            assert_eq!(found.len(), 1);
            assert_eq!(found[0].1["name"], "pico-1");
            assert!(
                s.get_row("greenhouse", "readings", id + 100)
                    .unwrap()
                    .is_none()
            );
        });
    }

    #[test]
    fn bad_values_are_refused_and_nothing_of_the_batch_is_written() {
        both(|s| {
            for (values, says) in [
                (json!({"celsius": "warm"}), "column \"celsius\" is number"),
                (json!({"t": "yesterday"}), "RFC 3339"),
                (json!({"day": "2026-13-45"}), "YYYY-MM-DD"),
                (json!({"device": 99}), "has no row 99"),
                (json!({"humidity": 40}), "has no column \"humidity\""),
                (
                    json!({"extra": "x".repeat(MAX_VALUE_BYTES + 10)}),
                    "at most",
                ),
            ] {
                // A good row first: the bad one must take it down with it.
                let batch = [obj(json!({"celsius": 20.0})), obj(values.clone())];
                let err = s
                    .add_rows("greenhouse", "readings", &batch)
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(says), "{values}: {err}");
            }
            assert_eq!(s.count_rows("greenhouse", "readings").unwrap(), 0);
        });
    }

    #[test]
    fn hostile_names_are_data_never_sql() {
        both(|s| {
            for name in [
                "x; DROP TABLE apps",
                "readings--",
                "1abc",
                "",
                "a\"b",
                &"n".repeat(65),
            ] {
                assert!(s.create_table("greenhouse", name, &[]).is_err(), "{name}");
            }
            // Column names may hold quotes and SQL: they are never in a query.
            let evil: Column = "x\"); DROP TABLE data_tables; --:text".parse().unwrap();
            s.add_column("greenhouse", "devices", &evil).unwrap();
            let id = s
                .add_rows(
                    "greenhouse",
                    "devices",
                    &[obj(
                        json!({"x\"); DROP TABLE data_tables; --": "still data"}),
                    )],
                )
                .unwrap()[0];
            let (_, row) = s.get_row("greenhouse", "devices", id).unwrap().unwrap();
            assert_eq!(row["x\"); DROP TABLE data_tables; --"], "still data");
            assert_eq!(s.tables("greenhouse").unwrap().len(), 2);
            assert!(
                s.search("greenhouse", "devices'--", &Map::new(), &all())
                    .is_err()
            );
            // Nothing crosses apps.
            s.create_app("other").unwrap();
            let err = s
                .search("other", "devices", &Map::new(), &all())
                .unwrap_err();
            assert!(err.to_string().contains("no table \"devices\""), "{err}");
        });
    }

    #[test]
    fn searches_order_and_page() {
        both(|s| {
            let rows: Vec<Map<String, Value>> = (0..25)
                .map(|i| obj(json!({"celsius": f64::from((i * 7) % 25), "t": format!("2026-12-02T10:{i:02}:00Z")})))
                .collect();
            s.add_rows("greenhouse", "readings", &rows).unwrap();
            let page = |offset, asc| Page {
                order_by: Some(("celsius".to_owned(), asc)),
                offset,
                limit: 10,
            };
            let first = s
                .search("greenhouse", "readings", &Map::new(), &page(0, true))
                .unwrap();
            let third = s
                .search("greenhouse", "readings", &Map::new(), &page(20, true))
                .unwrap();
            assert_eq!(first.len(), 10);
            assert_eq!(third.len(), 5);
            assert_eq!(first[0].1["celsius"], 0.0);
            assert_eq!(third[4].1["celsius"], 24.0);
            let desc = s
                .search("greenhouse", "readings", &Map::new(), &page(0, false))
                .unwrap();
            assert_eq!(desc[0].1["celsius"], 24.0);
            assert_eq!(s.count_rows("greenhouse", "readings").unwrap(), 25);
        });
    }

    #[test]
    fn rows_update_and_delete() {
        both(|s| {
            let id = s
                .add_rows("greenhouse", "devices", &[obj(json!({"name": "pico-1"}))])
                .unwrap()[0];
            s.update_row("greenhouse", "devices", id, &obj(json!({"active": false})))
                .unwrap();
            let (_, row) = s.get_row("greenhouse", "devices", id).unwrap().unwrap();
            assert_eq!(row["active"], false);
            assert_eq!(row["name"], "pico-1");
            assert!(
                s.update_row("greenhouse", "devices", id, &obj(json!({"active": "no"})))
                    .is_err()
            );
            assert!(s.delete_row("greenhouse", "devices", id).unwrap());
            assert!(!s.delete_row("greenhouse", "devices", id).unwrap());
            assert!(
                s.update_row("greenhouse", "devices", id, &obj(json!({"name": "x"})))
                    .is_err()
            );
        });
    }

    #[test]
    fn a_series_is_downsampled_into_buckets() {
        both(|s| {
            // One reading a minute for 100 minutes, celsius = minute.
            let rows: Vec<Map<String, Value>> = (0..100)
                .map(|m| obj(json!({"t": format!("2026-12-02T{:02}:{:02}:00Z", 10 + m / 60, m % 60), "celsius": f64::from(m)})))
                .collect();
            s.add_rows("greenhouse", "readings", &rows).unwrap();
            let b = s
                .downsample(
                    "greenhouse",
                    &Series {
                        table: "readings",
                        time: "t",
                        value: "celsius",
                        from: "2026-12-02T10:00:00Z",
                        to: "2026-12-02T11:40:00Z",
                        buckets: 10,
                    },
                )
                .unwrap();
            assert_eq!(b.len(), 10);
            assert_eq!(
                (b[0].min, b[0].max, b[0].mean, b[0].count),
                (0.0, 9.0, 4.5, 10)
            );
            assert_eq!((b[9].min, b[9].max, b[9].count), (90.0, 99.0, 10));
            assert_eq!(b[1].start - b[0].start, 600.0);
            // A narrower range only scans its rows.
            let b = s
                .downsample(
                    "greenhouse",
                    &Series {
                        table: "readings",
                        time: "t",
                        value: "celsius",
                        from: "2026-12-02T10:30:00Z",
                        to: "2026-12-02T10:40:00Z",
                        buckets: 2,
                    },
                )
                .unwrap();
            assert_eq!(b.iter().map(|x| x.count).sum::<u64>(), 10);
            assert_eq!(b[0].min, 30.0);
            assert!(
                s.downsample(
                    "greenhouse",
                    &Series {
                        table: "readings",
                        time: "celsius",
                        value: "t",
                        from: "2026-12-02T10:00:00Z",
                        to: "2026-12-02T11:00:00Z",
                        buckets: 5
                    }
                )
                .is_err()
            );
        });
    }

    #[test]
    fn links_must_name_an_existing_table_of_the_app() {
        both(|s| {
            let err = s
                .create_table(
                    "greenhouse",
                    "alerts",
                    &["reading:link:nowhere".parse().unwrap()],
                )
                .unwrap_err();
            assert!(err.to_string().contains("create it first"), "{err}");
            assert!("x:blob".parse::<Column>().is_err());
            assert!("nocolon".parse::<Column>().is_err());
        });
    }
}
