//! `ferrolink.tables.*`: the data tables in plain JSON, for the Rust
//! client, the browser client and devices that cannot take `objects` (the
//! Pico W library). Values are in the store's JSON form (docs/tables.md:
//! datetimes as RFC 3339 strings, dates as `YYYY-MM-DD`, links as row ids);
//! rows are `{"id": N, "values": {...}}`; a query is
//! `{"filters": [...], "order": [[column, ascending], ...]}` with the
//! filters of `storage::tables::Filter`. No handles: every call names its
//! table and is checked against the caller's access to it, so paging is by
//! offset and the client keeps its query.

use serde_json::{Map, Value, json};

use crate::storage::tables::{MAX_PAGE, Query, Row, Series, Tables};

use super::{Answer, Failure, Job, Need, Who, row_deleted, table_error};

/// The functions' common prefix.
pub(crate) const PREFIX: &str = "ferrolink.tables.";

/// One parsed call.
pub(crate) struct Request<'a> {
    who: &'a Who,
    name: &'a str,
    args: Vec<Value>,
}

fn row_json((id, values): Row) -> Value {
    json!({ "id": id, "values": values })
}

impl<'a> Request<'a> {
    pub(crate) fn parse(who: &'a Who, name: &'a str, job: &Job) -> Result<Self, Failure> {
        let args: Vec<Value> = serde_json::from_str(&job.args)
            .map_err(|_| table_error("the call's arguments are not a list"))?;
        Ok(Self { who, name, args })
    }

    /// Whether the call writes.
    pub(crate) fn writes(&self) -> bool {
        matches!(self.name, "add_rows" | "update" | "delete")
    }

    fn arg(&self, i: usize) -> &Value {
        self.args.get(i).unwrap_or(&Value::Null)
    }

    fn str_arg(&self, i: usize, what: &str) -> Result<&str, Failure> {
        self.arg(i).as_str().ok_or_else(|| {
            table_error(&format!(
                "{PREFIX}{}: argument {} must be {what}",
                self.name,
                i + 1
            ))
        })
    }

    fn id_arg(&self, i: usize) -> Result<i64, Failure> {
        self.arg(i).as_i64().ok_or_else(|| {
            table_error(&format!(
                "{PREFIX}{}: argument {} must be a row id (an integer)",
                self.name,
                i + 1
            ))
        })
    }

    fn query_arg(&self, i: usize) -> Result<Query, Failure> {
        match self.arg(i) {
            Value::Null => Ok(Query::default()),
            q => serde_json::from_value(q.clone()).map_err(|e| {
                table_error(&format!(
                    "{PREFIX}{}: the query is not {{\"filters\": [...], \"order\": [[column, ascending], ...]}}: {e}",
                    self.name
                ))
            }),
        }
    }

    fn values_arg(&self, v: &Value) -> Result<Map<String, Value>, Failure> {
        v.as_object()
            .cloned()
            .ok_or_else(|| table_error("row values must be an object of column values"))
    }

    pub(crate) fn run(&self, t: &Tables<'_>) -> Result<Answer, Failure> {
        let table = |need| -> Result<_, Failure> {
            let meta = t.table(self.str_arg(0, "a table name")?)?;
            self.who.check(&meta, need)?;
            Ok(meta)
        };
        let response = match self.name {
            "list" => {
                let mut out = Vec::new();
                for meta in t.all()? {
                    let access = self.who.access(&meta);
                    if access == crate::storage::tables::ClientAccess::None {
                        continue;
                    }
                    let columns: Vec<Value> = meta
                        .columns
                        .iter()
                        .map(|c| json!({"name": c.column.name, "type": c.column.kind.to_string()}))
                        .collect();
                    out.push(
                        json!({"name": meta.name, "columns": columns, "access": access.as_str()}),
                    );
                }
                Value::Array(out)
            }
            "add_rows" => {
                let meta = table(Need::Add)?;
                let rows = self
                    .arg(1)
                    .as_array()
                    .ok_or_else(|| {
                        table_error("add_rows(table, rows): rows must be a list of objects")
                    })?
                    .iter()
                    .map(|r| self.values_arg(r))
                    .collect::<Result<Vec<_>, _>>()?;
                json!(t.add_rows(&meta, &rows)?)
            }
            "get" => {
                let meta = table(Need::Read)?;
                t.get(&meta, self.id_arg(1)?)?.map_or(Value::Null, row_json)
            }
            "search" => {
                let meta = table(Need::Read)?;
                let query = self.query_arg(1)?;
                let offset = self.arg(2).as_u64().unwrap_or(0) as usize;
                let limit = self
                    .arg(3)
                    .as_u64()
                    .map_or(100, |l| l as usize)
                    .clamp(1, MAX_PAGE);
                let mut rows = t.search(&meta, &query, offset, limit + 1)?;
                let more = rows.len() > limit;
                rows.truncate(limit);
                json!({"rows": rows.into_iter().map(row_json).collect::<Vec<_>>(), "more": more})
            }
            "count" => {
                let meta = table(Need::Read)?;
                json!(t.count(&meta, &self.query_arg(1)?)?)
            }
            "update" => {
                let meta = table(Need::Write)?;
                let values = self.values_arg(self.arg(2))?;
                if !t.update_row(&meta, self.id_arg(1)?, &values)? {
                    return Err(row_deleted());
                }
                Value::Null
            }
            "delete" => {
                let meta = table(Need::Write)?;
                json!(t.delete_row(&meta, self.id_arg(1)?)?)
            }
            "media" => {
                let meta = table(Need::Read)?;
                let column = self.str_arg(2, "a media column's name")?;
                match t.media(&meta, self.id_arg(1)?, column)? {
                    None => Value::Null,
                    Some((description, bytes)) => {
                        use base64::Engine as _;
                        json!({
                            "mime": description["mime"],
                            "name": description["name"],
                            "base64": base64::engine::general_purpose::STANDARD.encode(bytes),
                        })
                    }
                }
            }
            "chart" => {
                let meta = table(Need::Read)?;
                let series = Series {
                    table: &meta.name,
                    time: self.str_arg(1, "the datetime column")?,
                    value: self.str_arg(2, "the number column")?,
                    from: self.str_arg(3, "the start (RFC 3339)")?,
                    to: self.str_arg(4, "the end (RFC 3339)")?,
                    buckets: self.arg(5).as_u64().unwrap_or(100) as usize,
                };
                let buckets: Vec<Value> = t
                    .downsample(&series)?
                    .into_iter()
                    .map(|b| json!({"start": b.start, "min": b.min, "max": b.max, "mean": b.mean, "count": b.count}))
                    .collect();
                Value::Array(buckets)
            }
            other => {
                return Err(Failure {
                    ty: ferrolink_proto::error_type::NO_SERVER_FUNCTION,
                    message: format!(
                        "No server function matching \"{PREFIX}{}\" has been registered; see docs/tables.md",
                        other.chars().take(120).collect::<String>()
                    ),
                });
            }
        };
        Ok(Answer::plain(response))
    }
}
