//! An app's data tables, from Rust: `client.table("readings")`.
//!
//! Calls go to the server's `ferrolink.tables.*` functions in plain JSON
//! (docs/tables.md): values as the server stores them — text, numbers,
//! booleans, datetimes as RFC 3339 strings, dates as `YYYY-MM-DD`, simple
//! objects as any JSON, links as row ids. A server-key client may do
//! everything in its app; a client key what each table's client access
//! allows (`ferrolink table set --client`).
//!
//! ```no_run
//! # async fn demo(client: ferrolink_client::Client) -> Result<(), ferrolink_client::CallError> {
//! use ferrolink_client::tables::Query;
//! use futures_util::StreamExt as _;
//! let readings = client.table("readings");
//! readings
//!     .add_row(serde_json::json!({"t": "2026-12-02T14:00:00Z", "celsius": 21.5}))
//!     .await?;
//! let mut warm = readings.search(Query::new().gt("celsius", 30).order_by("t", false));
//! while let Some(row) = warm.next().await {
//!     let row = row?;
//!     println!("{} {}", row.values["t"], row.values["celsius"]);
//! }
//! # Ok(()) }
//! ```

use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::{CallError, Client};

/// Rows a [`Table::search`] stream fetches per call.
pub const PAGE: usize = 100;

/// One row: its id and its values by column name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Row {
    /// The row's id in its table.
    pub id: i64,
    /// Its values (`null` where unset).
    pub values: Map<String, Value>,
}

/// A page of a search.
#[derive(Debug, Clone, Deserialize)]
pub struct Page {
    /// The rows.
    pub rows: Vec<Row>,
    /// Whether more rows follow.
    pub more: bool,
}

/// One bucket of a downsampled series ([`Table::chart`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Bucket {
    /// Its start, seconds since the Unix epoch.
    pub start: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Mean value.
    pub mean: f64,
    /// Rows in it.
    pub count: u64,
}

/// Which rows, in which order: conditions that must all hold, and columns
/// to order by (the row id breaks ties).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Query {
    filters: Vec<Value>,
    order: Vec<(String, bool)>,
}

impl Query {
    /// Every row, by id.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(mut self, filter: Value) -> Self {
        self.filters.push(filter);
        self
    }

    fn compare(self, column: &str, cmp: &str, value: impl Serialize) -> Self {
        self.push(json!({"op": "compare", "column": column, "cmp": cmp, "value": to_json(value)}))
    }

    /// `column` equals `value` (`null`: is unset; for a `links` column, a
    /// list of row ids it must all contain).
    pub fn eq(self, column: &str, value: impl Serialize) -> Self {
        self.push(json!({"op": "eq", "column": column, "value": to_json(value)}))
    }

    /// `column > value` (text, number, date and datetime columns).
    pub fn gt(self, column: &str, value: impl Serialize) -> Self {
        self.compare(column, "gt", value)
    }

    /// `column >= value`.
    pub fn ge(self, column: &str, value: impl Serialize) -> Self {
        self.compare(column, "ge", value)
    }

    /// `column < value`.
    pub fn lt(self, column: &str, value: impl Serialize) -> Self {
        self.compare(column, "lt", value)
    }

    /// `column <= value`.
    pub fn le(self, column: &str, value: impl Serialize) -> Self {
        self.compare(column, "le", value)
    }

    /// The text column matches an SQL `LIKE` pattern (`%`, `_`), case
    /// and all.
    pub fn like(self, column: &str, pattern: &str) -> Self {
        self.push(json!({"op": "like", "column": column, "pattern": pattern, "ignore_case": false}))
    }

    /// Like [`Query::like`], ignoring the case of ASCII letters.
    pub fn ilike(self, column: &str, pattern: &str) -> Self {
        self.push(json!({"op": "like", "column": column, "pattern": pattern, "ignore_case": true}))
    }

    /// At least one of `queries`' conditions holds (each query's own
    /// conditions all holding).
    pub fn any_of(self, queries: impl IntoIterator<Item = Self>) -> Self {
        let of: Vec<Value> = queries
            .into_iter()
            .map(|q| json!({"op": "all", "of": q.filters}))
            .collect();
        self.push(json!({"op": "any", "of": of}))
    }

    /// None of `query`'s conditions all hold.
    pub fn not(self, query: Self) -> Self {
        self.push(json!({"op": "none_of", "of": [{"op": "all", "of": query.filters}]}))
    }

    /// Orders by `column`, after any earlier order.
    pub fn order_by(mut self, column: &str, ascending: bool) -> Self {
        self.order.push((column.to_owned(), ascending));
        self
    }
}

fn to_json(v: impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// A table of the client's app.
#[derive(Clone)]
pub struct Table {
    client: Client,
    name: String,
}

impl Client {
    /// The table `name` of this client's app.
    pub fn table(&self, name: &str) -> Table {
        Table {
            client: self.clone(),
            name: name.to_owned(),
        }
    }
}

impl Table {
    async fn call<R: serde::de::DeserializeOwned>(
        &self,
        function: &str,
        args: Value,
    ) -> Result<R, CallError> {
        self.client
            .call(&format!("ferrolink.tables.{function}"), args)
            .await
    }

    /// Adds a row (an object of column values); answers its id.
    pub async fn add_row(&self, values: impl Serialize) -> Result<i64, CallError> {
        let ids: Vec<i64> = self
            .call("add_rows", json!([self.name, [to_json(values)]]))
            .await?;
        Ok(ids.first().copied().unwrap_or_default())
    }

    /// Adds rows in one transaction, all or none; answers their ids.
    pub async fn add_rows<T: Serialize>(&self, rows: &[T]) -> Result<Vec<i64>, CallError> {
        let rows: Vec<Value> = rows.iter().map(to_json).collect();
        self.call("add_rows", json!([self.name, rows])).await
    }

    /// Row `id`, if it exists.
    pub async fn get(&self, id: i64) -> Result<Option<Row>, CallError> {
        self.call("get", json!([self.name, id])).await
    }

    /// Changes some values of row `id` (a `RowDeleted` error if it is gone).
    pub async fn update(&self, id: i64, values: impl Serialize) -> Result<(), CallError> {
        let _: Value = self
            .call("update", json!([self.name, id, to_json(values)]))
            .await?;
        Ok(())
    }

    /// Deletes row `id`; answers whether it existed.
    pub async fn delete(&self, id: i64) -> Result<bool, CallError> {
        self.call("delete", json!([self.name, id])).await
    }

    /// How many rows `query` finds.
    pub async fn count(&self, query: &Query) -> Result<u64, CallError> {
        self.call("count", json!([self.name, query])).await
    }

    /// One page of the rows `query` finds: `limit` rows (at most 10,000)
    /// after skipping `offset`.
    pub async fn page(
        &self,
        query: &Query,
        offset: usize,
        limit: usize,
    ) -> Result<Page, CallError> {
        self.call("search", json!([self.name, query, offset, limit]))
            .await
    }

    /// Every row `query` finds, fetched [`PAGE`] rows at a time as the
    /// stream is read. An error ends the stream.
    pub fn search(&self, query: Query) -> BoxStream<'static, Result<Row, CallError>> {
        let table = self.clone();
        futures_util::stream::unfold(
            (table, query, 0usize, Vec::<Row>::new().into_iter(), true),
            |(table, query, offset, mut rows, more)| async move {
                if let Some(row) = rows.next() {
                    return Some((Ok(row), (table, query, offset, rows, more)));
                }
                if !more {
                    return None;
                }
                match table.page(&query, offset, PAGE).await {
                    Err(e) => Some((
                        Err(e),
                        (table, query, offset, Vec::new().into_iter(), false),
                    )),
                    Ok(page) => {
                        let next = offset + page.rows.len();
                        let more = page.more && !page.rows.is_empty();
                        let mut rows = page.rows.into_iter();
                        let first = rows.next()?;
                        Some((Ok(first), (table, query, next, rows, more)))
                    }
                }
            },
        )
        .boxed()
    }

    /// A number column over a datetime column from `from` to `to` (RFC
    /// 3339, `to` excluded) in at most `buckets` time buckets: min, max,
    /// mean and count of each non-empty one — a chart of any range.
    pub async fn chart(
        &self,
        time: &str,
        value: &str,
        from: &str,
        to: &str,
        buckets: usize,
    ) -> Result<Vec<Bucket>, CallError> {
        self.call("chart", json!([self.name, time, value, from, to, buckets]))
            .await
    }
}
