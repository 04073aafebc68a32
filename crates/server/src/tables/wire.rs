//! Values as the official client sends and receives them: plain JSON with
//! an `objects` side list (dates, row references, query objects), and the
//! table-data answer format (`TD`, docs/tables-protocol.md §3).

use std::cell::Cell;
use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::storage::tables::{ColumnType, Row, TableMeta};

use super::caps::{Caps, Scope, View};
use super::{Failure, table_error};

/// The `objects` entries of a call, looked up by path; each remembers
/// whether it was used, so that a value the handlers did not understand is
/// refused rather than silently stored as `null`.
pub(crate) struct Objects {
    entries: Vec<(Value, Cell<bool>)>,
    /// Entry indexes by the JSON text of their path: a call adding a
    /// thousand rows carries thousands of entries.
    by_path: std::collections::HashMap<String, Vec<usize>>,
}

impl Objects {
    pub(crate) fn parse(raw: Option<&str>) -> Result<Self, Failure> {
        let entries: Vec<Value> = match raw {
            None => Vec::new(),
            Some(r) => serde_json::from_str(r)
                .map_err(|_| table_error("the call's objects list is not a list of objects"))?,
        };
        let mut by_path: std::collections::HashMap<String, Vec<usize>> = Default::default();
        for (i, e) in entries.iter().enumerate() {
            if let Some(p) = e.get("path").filter(|p| p.is_array()) {
                by_path.entry(p.to_string()).or_default().push(i);
            }
        }
        Ok(Self {
            entries: entries.into_iter().map(|e| (e, Cell::new(false))).collect(),
            by_path,
        })
    }

    /// Entries at exactly `path`, marked used.
    pub(crate) fn at(&self, path: &[Value]) -> Vec<&Value> {
        let key = Value::Array(path.to_vec()).to_string();
        self.by_path
            .get(&key)
            .into_iter()
            .flatten()
            .map(|&i| {
                let (e, used) = &self.entries[i];
                used.set(true);
                e
            })
            .collect()
    }

    /// Refuses the call if an entry was not understood.
    pub(crate) fn all_used(&self) -> Result<(), Failure> {
        match self.entries.iter().find(|(_, used)| !used.get()) {
            None => Ok(()),
            Some((e, _)) => Err(table_error(&format!(
                "cannot use a {} value at {}: data tables hold text, numbers, booleans, dates, datetimes, simple objects (plain JSON) and rows",
                kind(e),
                e.get("path").map_or_else(String::new, Value::to_string)
            ))),
        }
    }
}

/// An entry's type, for messages.
fn kind(e: &Value) -> String {
    match e.get("typeName").and_then(Value::as_str) {
        Some(n) => n.to_owned(),
        None => e
            .get("type")
            .and_then(|t| t.get(0))
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned(),
    }
}

fn first_type(e: &Value) -> &str {
    e.get("type")
        .and_then(|t| t.get(0))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// What sits at one path: a plain value, a portable object (its type
/// name), or a row reference.
pub(crate) enum Slot<'a> {
    Plain,
    Date(String),
    DateTime(String),
    Long(String),
    RowRef(&'a Value),
    /// Media whose bytes came with the call.
    DataMedia(&'a Value),
    /// Media the server handed out (a table cell).
    LazyMedia(&'a Value),
    Portable(&'a str),
    Other(String),
}

pub(crate) fn slot<'a>(objects: &'a Objects, path: &[Value]) -> Slot<'a> {
    let found = objects.at(path);
    let cap = found.iter().find(|e| first_type(e) == "Capability");
    let portable = found
        .iter()
        .find(|e| first_type(e) == "ValueType")
        .and_then(|e| e.get("typeName").and_then(Value::as_str));
    let value = |e: &Value| {
        e.get("value")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    match (cap, portable) {
        (Some(c), None | Some("anvil.tables.v2._RowRef")) => Slot::RowRef(c),
        (None, Some(name)) => Slot::Portable(name),
        (Some(_), Some(name)) => Slot::Other(name.to_owned()),
        (None, None) => match found.first() {
            None => Slot::Plain,
            Some(e) => match first_type(e) {
                "Date" => Slot::Date(value(e)),
                "DateTime" => Slot::DateTime(value(e)),
                "Long" => Slot::Long(value(e)),
                "DataMedia" => Slot::DataMedia(e),
                "LazyMedia" => Slot::LazyMedia(e),
                _ => Slot::Other(kind(e)),
            },
        },
    }
}

/// `YYYY-MM-DD HH:MM:SS.ffffff+HHMM` (the client's form) as RFC 3339.
pub(crate) fn datetime_from_wire(s: &str) -> Result<String, Failure> {
    let bad = || {
        table_error(&format!(
            "\"{}\" is not a datetime",
            s.chars().take(40).collect::<String>()
        ))
    };
    let (date, rest) = s.split_once([' ', 'T']).ok_or_else(bad)?;
    let (clock, offset) = match rest.find(['+', '-', 'Z']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let offset = match offset {
        "" | "Z" => "Z".to_owned(),
        o if o.len() == 5 => format!("{}:{}", &o[..3], &o[3..]),
        o if o.len() == 6 && o.as_bytes()[3] == b':' => o.to_owned(),
        _ => return Err(bad()),
    };
    let out = format!("{date}T{clock}{offset}");
    time::OffsetDateTime::parse(&out, &time::format_description::well_known::Rfc3339)
        .map_err(|_| bad())?;
    Ok(out)
}

/// A stored RFC 3339 datetime in the client's form.
pub(crate) fn datetime_to_wire(s: &str) -> String {
    // Stored values are `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    format!("{}+0000", s.trim_end_matches('Z').replacen('T', " ", 1))
}

/// The wire's name of a column type.
pub(crate) fn type_name(kind: &ColumnType) -> &'static str {
    match kind {
        ColumnType::Text => "string",
        ColumnType::Number => "number",
        ColumnType::Bool => "bool",
        ColumnType::Date => "date",
        ColumnType::DateTime => "datetime",
        ColumnType::SimpleObject => "simpleObject",
        ColumnType::Media => "media",
        ColumnType::Link(_) => "link_single",
        ColumnType::Links(_) => "link_multiple",
    }
}

/// A whole table's view key (`{"id":T}`).
pub(crate) fn view_key(table: i64) -> String {
    View::table(table).key()
}

/// A table's spec: its columns in order, with `cache` flags.
pub(crate) fn spec(meta: &TableMeta, cached: bool) -> Value {
    let cols: Vec<Value> = meta
        .columns
        .iter()
        .map(|c| {
            let mut col = json!({ "name": c.column.name, "type": type_name(&c.column.kind) });
            if let (Some(_), Some(t)) = (c.column.kind.linked(), c.linked) {
                col["table_id"] = t.into();
                col["view_key"] = view_key(t).into();
            }
            col
        })
        .collect();
    let cache = vec![u8::from(cached); cols.len()];
    json!({ "cols": cols, "cache": cache })
}

/// Builds a `TD` answer: rows of several tables, with their capabilities
/// and date objects in `objects`.
pub(crate) struct TableData<'a> {
    caps: &'a Caps,
    app: &'a str,
    /// Where the TD sits in the response, e.g. `["response", 3]`.
    base: Vec<Value>,
    /// By view key: the spec and the rows.
    tables: BTreeMap<String, (Value, Map<String, Value>)>,
    pub(crate) objects: Vec<Value>,
    /// Linked rows seen, to add as stubs: (table, row).
    linked: Vec<(i64, i64)>,
}

impl<'a> TableData<'a> {
    pub(crate) fn new(caps: &'a Caps, app: &'a str, base: Vec<Value>) -> Self {
        Self {
            caps,
            app,
            base,
            tables: BTreeMap::new(),
            objects: Vec::new(),
            linked: Vec::new(),
        }
    }

    fn path(&self, key: &str, row: i64, tail: Value) -> Value {
        let mut p = self.base.clone();
        p.extend([key.into(), "rows".into(), row.to_string().into(), tail]);
        Value::Array(p)
    }

    /// Adds full rows of `meta`, seen through `view`.
    pub(crate) fn rows(&mut self, meta: &TableMeta, view: &View, rows: &[Row]) {
        let key = view.key();
        let entry = self
            .tables
            .entry(key.clone())
            .or_insert_with(|| (spec(meta, true), Map::new()));
        // A table first seen through a link has a stub spec; a full row
        // needs the cached one.
        entry.0 = spec(meta, true);
        let mut out = Vec::with_capacity(rows.len());
        for (id, values) in rows {
            let mut data = Vec::with_capacity(meta.columns.len() + 1);
            for (i, c) in meta.columns.iter().enumerate() {
                let v = values.get(&c.column.name).cloned().unwrap_or(Value::Null);
                let v = match (&c.column.kind, v) {
                    (_, Value::Null) => Value::Null,
                    (ColumnType::DateTime, Value::String(s)) => {
                        let p = self.path(&key, *id, i.into());
                        self.objects.push(
                            json!({"type": ["DateTime"], "path": p, "value": datetime_to_wire(&s)}),
                        );
                        Value::Null
                    }
                    (ColumnType::Media, description @ Value::Object(_)) => {
                        let p = self.path(&key, *id, i.into());
                        self.objects.push(self.caps.media_entry(
                            self.app,
                            (meta.id, *id, &c.column.name),
                            &description,
                            p,
                        ));
                        Value::Null
                    }
                    (ColumnType::Date, Value::String(s)) => {
                        let p = self.path(&key, *id, i.into());
                        self.objects
                            .push(json!({"type": ["Date"], "path": p, "value": s}));
                        Value::Null
                    }
                    (ColumnType::Link(_), v) => {
                        if let (Some(t), Some(r)) = (c.linked, v.as_i64()) {
                            self.linked.push((t, r));
                        }
                        v
                    }
                    (ColumnType::Links(_), v) => {
                        if let Some(t) = c.linked {
                            for r in v.as_array().into_iter().flatten().filter_map(Value::as_i64) {
                                self.linked.push((t, r));
                            }
                        }
                        v
                    }
                    (_, v) => v,
                };
                data.push(v);
            }
            data.push(Value::Null);
            let p = self.path(&key, *id, meta.columns.len().into());
            self.objects
                .push(self.caps.entry(self.app, &Scope::Row(view.clone(), *id), p));
            out.push((id.to_string(), Value::Array(data)));
        }
        let entry = self.tables.get_mut(&key).expect("inserted above");
        entry.1.extend(out);
    }

    /// The linked rows still missing, as (table, row).
    pub(crate) fn missing_links(&self) -> Vec<(i64, i64)> {
        self.linked
            .iter()
            .filter(|(t, r)| {
                self.tables
                    .get(&view_key(*t))
                    .is_none_or(|(_, rows)| !rows.contains_key(&r.to_string()))
            })
            .copied()
            .collect()
    }

    /// Adds a linked row as a stub: only its capability, so that reading
    /// it fetches it.
    pub(crate) fn stub(&mut self, meta: &TableMeta, row: i64) {
        let key = view_key(meta.id);
        let entry = self
            .tables
            .entry(key.clone())
            .or_insert_with(|| (spec(meta, false), Map::new()));
        if entry.1.contains_key(&row.to_string()) {
            return;
        }
        entry.1.insert(row.to_string(), json!({ "c": null }));
        let p = self.path(&key, row, "c".into());
        self.objects.push(
            self.caps
                .entry(self.app, &Scope::Row(View::table(meta.id), row), p),
        );
    }

    /// The TD value.
    pub(crate) fn finish(self) -> (Value, Vec<Value>) {
        let td: Map<String, Value> = self
            .tables
            .into_iter()
            .map(|(key, (spec, rows))| (key, json!({ "spec": spec, "rows": rows })))
            .collect();
        (Value::Object(td), self.objects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_cross_between_the_client_and_the_store() {
        assert_eq!(
            datetime_from_wire("2026-12-02 15:30:00.250000+0100").unwrap(),
            "2026-12-02T15:30:00.250000+01:00"
        );
        assert_eq!(
            datetime_from_wire("2026-12-02 15:30:00.250000Z").unwrap(),
            "2026-12-02T15:30:00.250000Z"
        );
        assert_eq!(
            datetime_from_wire("2026-12-02 15:30:00-0530").unwrap(),
            "2026-12-02T15:30:00-05:30"
        );
        for bad in [
            "",
            "2026-12-02",
            "2026-13-02 10:00:00+0000",
            "now",
            "2026-12-02 10:00:00+01",
        ] {
            assert!(datetime_from_wire(bad).is_err(), "{bad}");
        }
        assert_eq!(
            datetime_to_wire("2026-12-02T14:30:00.000000Z"),
            "2026-12-02 14:30:00.000000+0000"
        );
    }
}
