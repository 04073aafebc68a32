//! The `anvil.private.tables.v2.*` functions, one by one
//! (docs/tables-protocol.md §2).

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::storage::tables::{
    ClientAccess, Cmp, Column, ColumnMeta, ColumnType, Filter, MAX_PAGE, Query, Row, TableMeta,
    Tables,
};

use super::caps::{Perm, Scope, View};
use super::wire::{self, Objects, Slot, TableData, slot};
use super::{Answer, Failure, Job, Need, Service, Who, row_deleted, table_error};

/// Rows a search answers per page unless `page_size` says otherwise.
const DEFAULT_PAGE: usize = 100;

/// One parsed table call.
pub(crate) struct Request<'a> {
    svc: &'a Service,
    who: &'a Who,
    name: &'a str,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    objects: Objects,
    /// The bytes of media sent with the call, by media id.
    media: &'a std::collections::HashMap<String, Vec<u8>>,
}

fn arg_path(tail: &[Value]) -> Vec<Value> {
    let mut p = vec![Value::from("args")];
    p.extend_from_slice(tail);
    p
}

impl<'a> Request<'a> {
    pub(crate) fn parse(
        svc: &'a Service,
        who: &'a Who,
        name: &'a str,
        job: &'a Job,
    ) -> Result<Self, Failure> {
        let args: Vec<Value> = serde_json::from_str(&job.args)
            .map_err(|_| table_error("the call's arguments are not a list"))?;
        let kwargs: Map<String, Value> = serde_json::from_str(&job.kwargs)
            .map_err(|_| table_error("the call's keyword arguments are not an object"))?;
        Ok(Self {
            svc,
            who,
            name,
            args,
            kwargs,
            objects: Objects::parse(job.objects.as_deref())?,
            media: &job.media,
        })
    }

    /// Whether the call writes (and so runs in a write transaction).
    pub(crate) fn writes(&self) -> bool {
        matches!(
            self.name,
            "table.add_row"
                | "table.add_rows"
                | "table.delete_all_rows"
                | "search.delete_all"
                | "row.update"
                | "row.delete"
                | "row.batch_update"
                | "row.batch_delete_2"
        )
    }

    fn arg(&self, i: usize) -> &Value {
        self.args.get(i).unwrap_or(&Value::Null)
    }

    /// The verified capability at `path`.
    fn cap(&self, path: &[Value]) -> Result<Scope, Failure> {
        let found = self.objects.at(path);
        let entry = found
            .iter()
            .find(|e| e["type"].get(0).and_then(Value::as_str) == Some("Capability"))
            .ok_or_else(|| {
                table_error("this call needs a table, row or search handle and got none")
            })?;
        self.svc
            .caps
            .verify(&self.who.app, entry)
            .map_err(|_| Failure {
                ty: ferrolink_proto::error_type::PERMISSION_DENIED,
                message:
                    "a table, row or search handle was forged, changed, or made for another app"
                        .to_owned(),
            })
    }

    fn table(&self, t: &Tables<'_>, id: i64) -> Result<TableMeta, Failure> {
        t.table_by_id(id)?
            .ok_or_else(|| table_error("this table no longer exists"))
    }

    /// Refuses unless this caller may do `need` with `meta` through `view`:
    /// a view with a permission grants it whatever the table's client
    /// access; a whole table is checked against the caller's access.
    fn check_view(&self, meta: &TableMeta, view: &View, need: Need) -> Result<(), Failure> {
        match view.perm {
            None => self.who.check(meta, need),
            Some(Perm::Rw | Perm::Rwc) => Ok(()),
            Some(Perm::R) if need == Need::Read => Ok(()),
            Some(Perm::R) => Err(Failure {
                ty: ferrolink_proto::error_type::PERMISSION_DENIED,
                message: format!("this view of table \"{}\" is read-only", meta.name),
            }),
        }
    }

    /// `query` with the view's restriction AND-ed in.
    fn restricted(&self, view: &View, mut query: Query) -> Result<Query, Failure> {
        if let Some(r) = &view.restrict {
            let r: Query = serde_json::from_str(r).map_err(|_| {
                table_error("this view's restriction cannot be read; make the view again")
            })?;
            query.filters.push(Filter::All { of: r.filters });
        }
        Ok(query)
    }

    /// Refuses rows outside the view's restriction.
    fn in_view(
        &self,
        t: &Tables<'_>,
        meta: &TableMeta,
        view: &View,
        row: i64,
    ) -> Result<(), Failure> {
        if view.restrict.is_some()
            && !t.matches(meta, row, &self.restricted(view, Query::default())?)?
        {
            if t.get(meta, row)?.is_none() {
                return Err(row_deleted());
            }
            return Err(Failure {
                ty: ferrolink_proto::error_type::PERMISSION_DENIED,
                message: format!("row {row} is not in this view of table \"{}\"", meta.name),
            });
        }
        Ok(())
    }

    /// The table and view of the capability in argument `i`, checked for
    /// `need`.
    fn table_arg(
        &self,
        t: &Tables<'_>,
        i: usize,
        need: Need,
    ) -> Result<(TableMeta, View), Failure> {
        let scope = self.cap(&arg_path(&[i.into()]))?;
        let Scope::Table(view) = scope else {
            return Err(table_error("expected a table handle"));
        };
        let meta = self.table(t, view.table)?;
        self.check_view(&meta, &view, need)?;
        Ok((meta, view))
    }

    /// The table, row and view of the row capability at `path`, checked
    /// for `need` (and that the row is in the view).
    fn row_at(
        &self,
        t: &Tables<'_>,
        path: &[Value],
        need: Need,
    ) -> Result<(TableMeta, i64, View), Failure> {
        let Scope::Row(view, row) = self.cap(path)? else {
            return Err(table_error("expected a row"));
        };
        let meta = self.table(t, view.table).map_err(|_| row_deleted())?;
        self.check_view(&meta, &view, need)?;
        // A row that is gone answers RowDeleted here (when the view has a
        // restriction) or from the operation itself.
        self.in_view(t, &meta, &view, row)?;
        Ok((meta, row, view))
    }

    /// The search capability in argument 0: table, view, query (the view's
    /// restriction included), page size and where its page starts.
    fn search_arg(
        &self,
        t: &Tables<'_>,
        need: Need,
    ) -> Result<(TableMeta, View, Query, usize, usize), Failure> {
        let Scope::Search {
            view,
            query,
            page_size,
            offset,
        } = self.cap(&arg_path(&[0.into()]))?
        else {
            return Err(table_error("expected a search handle"));
        };
        let meta = self.table(t, view.table)?;
        self.check_view(&meta, &view, need)?;
        let query: Query = serde_json::from_str(&query)
            .map_err(|_| table_error("this search handle is from an older server; search again"))?;
        Ok((meta, view, query, page_size, offset.unwrap_or(0)))
    }

    pub(crate) fn run(&self, t: &Tables<'_>) -> Result<Answer, Failure> {
        let answer = match self.name {
            "get_app_tables" => self.get_app_tables(t),
            "get_table_by_id" => self.get_table_by_id(t),
            "table.add_row" => self.add_row(t),
            "table.add_rows" => self.add_rows(t),
            "table.get_row" => self.get_row(t),
            "table.get_row_by_id" => self.get_row_by_id(t),
            "table.has_row" => self.has_row(t),
            "table.list_columns" => self.list_columns(t),
            "table.search" => self.search(t),
            "table.delete_all_rows" => {
                let (meta, view) = self.table_arg(t, 0, Need::Write)?;
                t.delete_where(&meta, &self.restricted(&view, Query::default())?)?;
                Ok(Answer::plain(Value::Null))
            }
            "search.next_page" => self.next_page(t),
            "search.get_length" => {
                let (meta, _, query, _, _) = self.search_arg(t, Need::Read)?;
                Ok(Answer::plain(t.count(&meta, &query)?.into()))
            }
            "search.delete_all" => {
                let (meta, _, query, _, _) = self.search_arg(t, Need::Write)?;
                t.delete_where(&meta, &query)?;
                Ok(Answer::plain(Value::Null))
            }
            "row.fetch" => self.fetch(t),
            "row.update" => {
                self.update(
                    t,
                    &arg_path(&[0.into()]),
                    self.arg(1),
                    &arg_path(&[1.into()]),
                )?;
                Ok(Answer::plain(Value::Null))
            }
            "row.delete" => {
                let (meta, row, _) = self.row_at(t, &arg_path(&[0.into()]), Need::Write)?;
                if !t.delete_row(&meta, row)? {
                    return Err(row_deleted());
                }
                Ok(Answer::plain(Value::Null))
            }
            "row.batch_update" => {
                let n = self.arg(0).as_array().map_or(0, Vec::len);
                for i in 0..n {
                    let updates = &self.arg(0)[i][1];
                    self.update(
                        t,
                        &arg_path(&[0.into(), i.into(), 0.into()]),
                        updates,
                        &arg_path(&[0.into(), i.into(), 1.into()]),
                    )?;
                }
                Ok(Answer::plain(Value::Array(vec![Value::Null; n])))
            }
            "row.batch_delete_2" => {
                let n = self.arg(0).as_array().map_or(0, Vec::len);
                for i in 0..n {
                    let (meta, row, _) =
                        self.row_at(t, &arg_path(&[0.into(), i.into(), 0.into()]), Need::Write)?;
                    if !t.delete_row(&meta, row)? {
                        return Err(row_deleted());
                    }
                }
                Ok(Answer::plain(Value::Null))
            }
            "row.can_auto_create" => {
                Ok(Answer::plain((self.who.server && t.auto_columns()?).into()))
            }
            "table.to_csv" => {
                let (meta, view) = self.table_arg(t, 0, Need::Read)?;
                self.to_csv(t, &meta, &self.restricted(&view, Query::default())?)
            }
            "search.to_csv" => {
                let (meta, _, query, _, _) = self.search_arg(t, Need::Read)?;
                self.to_csv(t, &meta, &query)
            }
            "table.get_view" => self.get_view(t),
            other => Err(Failure {
                ty: ferrolink_proto::error_type::NO_SERVER_FUNCTION,
                message: format!(
                    "No server function matching \"anvil.private.tables.v2.{}\" has been registered",
                    other.chars().take(120).collect::<String>()
                ),
            }),
        }?;
        self.objects.all_used()?;
        Ok(answer)
    }

    fn table_triple(&self, meta: &TableMeta, path: Vec<Value>, objects: &mut Vec<Value>) -> Value {
        objects.push(self.svc.caps.entry(
            &self.who.app,
            &Scope::Table(View::table(meta.id)),
            Value::Array(path),
        ));
        json!([null, wire::view_key(meta.id), meta.id])
    }

    fn get_app_tables(&self, t: &Tables<'_>) -> Result<Answer, Failure> {
        let mut out = Map::new();
        let mut objects = Vec::new();
        for meta in t.all()? {
            if self.who.access(&meta) == ClientAccess::None {
                continue;
            }
            let path = vec!["response".into(), meta.name.clone().into(), 0.into()];
            out.insert(
                meta.name.clone(),
                self.table_triple(&meta, path, &mut objects),
            );
        }
        Ok(Answer::new(Value::Object(out), objects))
    }

    fn get_table_by_id(&self, t: &Tables<'_>) -> Result<Answer, Failure> {
        let id = match self.arg(0) {
            Value::String(s) => s.parse().ok(),
            v => v.as_i64(),
        };
        let meta = match id {
            Some(id) => t.table_by_id(id)?,
            None => None,
        };
        let mut objects = Vec::new();
        let response = match meta {
            Some(m) if self.who.access(&m) != ClientAccess::None => {
                self.table_triple(&m, vec!["response".into(), 0.into()], &mut objects)
            }
            _ => Value::Null,
        };
        Ok(Answer::new(response, objects))
    }

    /// A value for column `c` from the call, at `path`, in the store's form.
    fn value(
        &self,
        t: &Tables<'_>,
        c: &ColumnMeta,
        v: &Value,
        path: &[Value],
    ) -> Result<Value, Failure> {
        let wrong = |what: &str| {
            table_error(&format!(
                "column \"{}\" is {}: {what}",
                c.column.name, c.column.kind
            ))
        };
        let row_ref = |entry: &Value| -> Result<Value, Failure> {
            let scope = self
                .svc
                .caps
                .verify(&self.who.app, entry)
                .map_err(|_| Failure {
                    ty: ferrolink_proto::error_type::PERMISSION_DENIED,
                    message: "a row handle was forged, changed, or made for another app".to_owned(),
                })?;
            match (scope, c.linked) {
                (Scope::Row(v, r), Some(linked)) if v.table == linked => Ok(r.into()),
                _ => Err(wrong("pass a row of the linked table")),
            }
        };
        Ok(match (&c.column.kind, slot(&self.objects, path)) {
            (ColumnType::Link(_) | ColumnType::Links(_), Slot::RowRef(e)) => row_ref(e)?,
            (ColumnType::Links(_), Slot::Plain) if v.is_array() => {
                let items = v.as_array().map_or(&[][..], Vec::as_slice);
                let mut ids = Vec::with_capacity(items.len());
                for i in 0..items.len() {
                    let mut p = path.to_vec();
                    p.push(i.into());
                    match slot(&self.objects, &p) {
                        Slot::RowRef(e) => ids.push(row_ref(e)?),
                        _ => return Err(wrong("pass a list of rows of the linked table")),
                    }
                }
                Value::Array(ids)
            }
            (ColumnType::Link(_) | ColumnType::Links(_), Slot::Plain) if v.is_null() => Value::Null,
            (ColumnType::Link(_) | ColumnType::Links(_), _) => {
                return Err(wrong("pass rows of the linked table"));
            }
            (ColumnType::Media, Slot::DataMedia(e)) => {
                let bytes = e["id"]
                    .as_str()
                    .and_then(|id| self.media.get(id))
                    .ok_or_else(|| wrong("its media's bytes did not arrive"))?;
                json!({
                    "mime": e["mime-type"].as_str().unwrap_or("application/octet-stream"),
                    "name": e["name"],
                    "base64": base64::engine::general_purpose::STANDARD.encode(bytes),
                })
            }
            (ColumnType::Media, Slot::LazyMedia(e)) => {
                let (description, bytes) = self.lazy_media(t, e)?;
                json!({
                    "mime": description["mime"],
                    "name": description["name"],
                    "base64": base64::engine::general_purpose::STANDARD.encode(bytes),
                })
            }
            (ColumnType::Media, Slot::Plain) if v.is_null() => Value::Null,
            (ColumnType::Media, _) => {
                return Err(wrong("pass a Media object (e.g. anvil.BlobMedia)"));
            }
            (_, Slot::DataMedia(_) | Slot::LazyMedia(_)) => {
                return Err(wrong("media goes only into a media column"));
            }
            (_, Slot::Plain) => v.clone(),
            (_, Slot::Date(d)) => d.into(),
            (_, Slot::DateTime(d)) => wire::datetime_from_wire(&d)?.into(),
            (_, Slot::Long(n)) => n
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| wrong("a number"))?,
            (_, Slot::RowRef(_)) => return Err(wrong("a row goes only into a link column")),
            (_, Slot::Portable(name)) => {
                return Err(wrong(&format!("cannot store a {name} object")));
            }
            (_, Slot::Other(name)) => return Err(wrong(&format!("cannot store a {name} value"))),
        })
    }

    /// The description and bytes of the table cell a `LazyMedia` entry names
    /// (one this server handed out), if the caller may read it.
    fn lazy_media(&self, t: &Tables<'_>, entry: &Value) -> Result<(Value, Vec<u8>), Failure> {
        let (table, row, column) =
            self.svc
                .caps
                .verify_media(&self.who.app, entry)
                .map_err(|_| Failure {
                    ty: ferrolink_proto::error_type::PERMISSION_DENIED,
                    message: "a media handle was forged, changed, or made for another app"
                        .to_owned(),
                })?;
        let meta = self.table(t, table).map_err(|_| row_deleted())?;
        self.who.check(&meta, Need::Read)?;
        t.media(&meta, row, &column)?.ok_or_else(|| Failure {
            ty: super::ROW_DELETED,
            message: format!(
                "the media of column \"{column}\" is gone (its row was deleted or the cell changed)"
            ),
        })
    }

    /// With the app's auto-columns on and the app's server code calling:
    /// adds the columns the dicts (each with its path) name that `meta`
    /// lacks, typed from their first value that says (a value of `None`
    /// says nothing). Answers the table as it now is.
    fn auto_columns(
        &self,
        t: &Tables<'_>,
        mut meta: TableMeta,
        dicts: &[(&Value, Vec<Value>)],
    ) -> Result<TableMeta, Failure> {
        if !self.who.server {
            return Ok(meta);
        }
        let mut checked = false;
        for (dict, path) in dicts {
            let Some(dict) = dict.as_object() else {
                continue;
            };
            for (name, value) in dict {
                if meta.columns.iter().any(|c| c.column.name == *name) {
                    continue;
                }
                if !checked {
                    if !t.auto_columns()? {
                        return Ok(meta);
                    }
                    checked = true;
                }
                let mut p = path.clone();
                p.push(name.clone().into());
                if let Some(kind) = self.infer(t, value, &p)? {
                    meta = t.add_column(
                        &meta,
                        &Column {
                            name: name.clone(),
                            kind,
                        },
                    )?;
                }
            }
        }
        Ok(meta)
    }

    /// The column type a value calls for, if it says.
    fn infer(
        &self,
        t: &Tables<'_>,
        v: &Value,
        path: &[Value],
    ) -> Result<Option<ColumnType>, Failure> {
        let linked = |entry: &Value| -> Result<Option<String>, Failure> {
            match self.svc.caps.verify(&self.who.app, entry) {
                Ok(Scope::Row(view, _)) => Ok(t.table_by_id(view.table)?.map(|m| m.name)),
                _ => Ok(None),
            }
        };
        Ok(match slot(&self.objects, path) {
            Slot::DateTime(_) => Some(ColumnType::DateTime),
            Slot::Date(_) => Some(ColumnType::Date),
            Slot::Long(_) => Some(ColumnType::Number),
            Slot::DataMedia(_) | Slot::LazyMedia(_) => Some(ColumnType::Media),
            Slot::RowRef(e) => linked(e)?.map(ColumnType::Link),
            Slot::Plain => match v {
                Value::Null => None,
                Value::String(_) => Some(ColumnType::Text),
                Value::Number(_) => Some(ColumnType::Number),
                Value::Bool(_) => Some(ColumnType::Bool),
                Value::Array(items) if !items.is_empty() => {
                    // A list of rows of one table links to it; any other
                    // list is a simple object.
                    let mut table: Option<String> = None;
                    let mut rows = true;
                    for i in 0..items.len() {
                        let mut p = path.to_vec();
                        p.push(i.into());
                        match slot(&self.objects, &p) {
                            Slot::RowRef(e) => {
                                let name = linked(e)?;
                                if name.is_none() || (table.is_some() && table != name) {
                                    rows = false;
                                }
                                table = name;
                            }
                            _ => rows = false,
                        }
                    }
                    match (rows, table) {
                        (true, Some(name)) => Some(ColumnType::Links(name)),
                        _ => Some(ColumnType::SimpleObject),
                    }
                }
                Value::Array(_) | Value::Object(_) => Some(ColumnType::SimpleObject),
            },
            Slot::Portable(_) | Slot::Other(_) => None,
        })
    }

    /// A dict of column values from the call (at `path`), in the store's form.
    fn values(
        &self,
        t: &Tables<'_>,
        meta: &TableMeta,
        v: &Value,
        path: &[Value],
    ) -> Result<Map<String, Value>, Failure> {
        let dict = match v {
            Value::Object(d) => d,
            Value::Null => return Ok(Map::new()),
            _ => return Err(table_error("row values must be given by column name")),
        };
        let mut out = Map::new();
        // Whether auto-columns apply, looked up at most once.
        let mut auto = None;
        for (name, value) in dict {
            // With auto-columns, `None` for a column that does not exist
            // (its type unknown) is no value at all.
            if value.is_null() && !meta.columns.iter().any(|c| c.column.name == *name) {
                let on = match auto {
                    Some(on) => on,
                    None => *auto.insert(self.who.server && t.auto_columns()?),
                };
                if on {
                    continue;
                }
            }
            let c = meta.column(name)?;
            let mut p = path.to_vec();
            p.push(name.clone().into());
            out.insert(name.clone(), self.value(t, c, value, &p)?);
        }
        Ok(out)
    }

    fn add_row(&self, t: &Tables<'_>) -> Result<Answer, Failure> {
        let (meta, view) = self.table_arg(t, 0, Need::Add)?;
        let meta = self.auto_columns(t, meta, &[(self.arg(1), arg_path(&[1.into()]))])?;
        let values = self.values(t, &meta, self.arg(1), &arg_path(&[1.into()]))?;
        let id = t.add_rows(&meta, std::slice::from_ref(&values))?[0];
        // A row added through a restricted view must be in it (else the
        // whole call, the row included, is undone).
        self.in_view(t, &meta, &view, id)?;
        let cap = self
            .svc
            .caps
            .entry(&self.who.app, &Scope::Row(view, id), json!(["response", 1]));
        Ok(Answer::new(
            json!([id, null, wire::spec(&meta, false)]),
            vec![cap],
        ))
    }

    fn add_rows(&self, t: &Tables<'_>) -> Result<Answer, Failure> {
        let (meta, view) = self.table_arg(t, 0, Need::Add)?;
        let rows = self.arg(1).as_array().map_or(&[][..], Vec::as_slice);
        let dicts: Vec<(&Value, Vec<Value>)> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r, arg_path(&[1.into(), i.into()])))
            .collect();
        let meta = self.auto_columns(t, meta, &dicts)?;
        let mut all = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            all.push(self.values(t, &meta, r, &arg_path(&[1.into(), i.into()]))?);
        }
        let ids = t.add_rows(&meta, &all)?;
        let mut objects = Vec::with_capacity(ids.len());
        let mut pairs = Vec::with_capacity(ids.len());
        for (i, id) in ids.into_iter().enumerate() {
            self.in_view(t, &meta, &view, id)?;
            objects.push(self.svc.caps.entry(
                &self.who.app,
                &Scope::Row(view.clone(), id),
                json!(["response", 0, i, 1]),
            ));
            pairs.push(json!([id, null]));
        }
        Ok(Answer::new(
            json!([pairs, wire::spec(&meta, false)]),
            objects,
        ))
    }

    fn update(
        &self,
        t: &Tables<'_>,
        cap_path: &[Value],
        updates: &Value,
        path: &[Value],
    ) -> Result<(), Failure> {
        let (meta, row, view) = self.row_at(t, cap_path, Need::Write)?;
        let meta = self.auto_columns(t, meta, &[(updates, path.to_vec())])?;
        let values = self.values(t, &meta, updates, path)?;
        if !t.update_row(&meta, row, &values)? {
            return Err(row_deleted());
        }
        // A row changed through a restricted view stays in it.
        self.in_view(t, &meta, &view, row)
    }

    /// A condition on column `c` from the call: a plain value (equality),
    /// a row, or a query object, at `path`.
    fn column_filter(
        &self,
        t: &Tables<'_>,
        c: &ColumnMeta,
        v: &Value,
        path: &[Value],
    ) -> Result<Filter, Failure> {
        let column = c.column.name.clone();
        let inner = |key: &str| {
            let mut p = path.to_vec();
            p.push(key.into());
            p
        };
        let Slot::Portable(name) = slot(&self.objects, path) else {
            // Not a query object: equality. `slot` is looked up again by
            // `value`, which finds the same entries.
            return Ok(Filter::Eq {
                column,
                value: self.value(t, c, v, path)?,
            });
        };
        let op = name.strip_prefix("anvil.tables.query.").unwrap_or(name);
        let cmp = match op {
            "greater_than" => Some(Cmp::Gt),
            "greater_than_or_equal_to" => Some(Cmp::Ge),
            "less_than" => Some(Cmp::Lt),
            "less_than_or_equal_to" => Some(Cmp::Le),
            _ => None,
        };
        if let Some(cmp) = cmp {
            return Ok(Filter::Compare {
                column,
                cmp,
                value: self.value(t, c, &v["value"], &inner("value"))?,
            });
        }
        Ok(match op {
            "like" | "ilike" => Filter::Like {
                column,
                pattern: v["pattern"]
                    .as_str()
                    .ok_or_else(|| table_error("like() takes a string pattern"))?
                    .to_owned(),
                ignore_case: op == "ilike",
            },
            "full_text_match" => Filter::Words {
                column,
                query: v["query"]
                    .as_str()
                    .ok_or_else(|| table_error("full_text_match() takes a string"))?
                    .to_owned(),
            },
            "all_of" | "any_of" | "none_of" => {
                if v["kwargs"].as_object().is_some_and(|k| !k.is_empty()) {
                    return Err(table_error(&format!(
                        "{op}() on a column takes values, not keyword arguments"
                    )));
                }
                let args = v["args"].as_array().map_or(&[][..], Vec::as_slice);
                let mut of = Vec::with_capacity(args.len());
                for (j, a) in args.iter().enumerate() {
                    let mut p = inner("args");
                    p.push(j.into());
                    of.push(self.column_filter(t, c, a, &p)?);
                }
                combine(op, of)
            }
            _ => {
                return Err(table_error(&format!("cannot search with a {name} object")));
            }
        })
    }

    /// `all_of`/`any_of`/`none_of` given positionally: nested query
    /// objects and column conditions.
    fn combined(
        &self,
        t: &Tables<'_>,
        meta: &TableMeta,
        op: &str,
        v: &Value,
        path: &[Value],
    ) -> Result<Filter, Failure> {
        let mut of = Vec::new();
        let args = v["args"].as_array().map_or(&[][..], Vec::as_slice);
        for (j, a) in args.iter().enumerate() {
            let mut p = path.to_vec();
            p.extend(["args".into(), j.into()]);
            match slot(&self.objects, &p) {
                Slot::Portable(n) => {
                    let inner = n.strip_prefix("anvil.tables.query.").unwrap_or(n);
                    if !matches!(inner, "all_of" | "any_of" | "none_of") {
                        return Err(table_error(&format!(
                            "{inner}() needs a column: write column={inner}(...)"
                        )));
                    }
                    of.push(self.combined(t, meta, inner, a, &p)?);
                }
                _ => {
                    return Err(table_error(&format!(
                        "{op}() takes query objects or column=value"
                    )));
                }
            }
        }
        if let Some(kw) = v["kwargs"].as_object() {
            for (name, value) in kw {
                let mut p = path.to_vec();
                p.extend(["kwargs".into(), name.clone().into()]);
                of.push(self.column_filter(t, meta.column(name)?, value, &p)?);
            }
        }
        Ok(combine(op, of))
    }

    /// The query of a search or get: positional arguments in argument 1,
    /// column conditions in argument 2. Answers the query and the page size.
    fn query(
        &self,
        t: &Tables<'_>,
        meta: &TableMeta,
        options_allowed: bool,
    ) -> Result<(Query, usize), Failure> {
        self.query_at(t, meta, options_allowed, (1, 2))
    }

    /// Like [`Request::query`], with the positional arguments and keyword
    /// conditions at other argument positions.
    fn query_at(
        &self,
        t: &Tables<'_>,
        meta: &TableMeta,
        options_allowed: bool,
        (at_args, at_kws): (usize, usize),
    ) -> Result<(Query, usize), Failure> {
        let mut query = Query::default();
        let mut page = DEFAULT_PAGE;
        let positional = self.arg(at_args).as_array().map_or(&[][..], Vec::as_slice);
        for (i, v) in positional.iter().enumerate() {
            let p = arg_path(&[at_args.into(), i.into()]);
            let Slot::Portable(name) = slot(&self.objects, &p) else {
                return Err(table_error(
                    "search() takes query objects positionally and column=value by keyword",
                ));
            };
            match name {
                "anvil.tables.order_by" | "anvil.tables.query.page_size" if !options_allowed => {
                    return Err(table_error("get() takes no order_by or page_size"));
                }
                "anvil.tables.order_by" => {
                    let column = v["column_name"]
                        .as_str()
                        .ok_or_else(|| table_error("order_by() takes a column name"))?;
                    meta.column(column)?;
                    query
                        .order
                        .push((column.to_owned(), v["ascending"].as_bool().unwrap_or(true)));
                }
                "anvil.tables.query.page_size" => {
                    page = v["rows"]
                        .as_u64()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| table_error("page_size() takes a number of rows above 0"))?
                        .min(MAX_PAGE as u64) as usize;
                }
                // Every column is always sent.
                "anvil.tables.fetch_only" => {}
                n => {
                    let op = n.strip_prefix("anvil.tables.query.").unwrap_or(n);
                    if !matches!(op, "all_of" | "any_of" | "none_of") {
                        return Err(table_error(&format!(
                            "{op}() needs a column: write column={op}(...)"
                        )));
                    }
                    query.filters.push(self.combined(t, meta, op, v, &p)?);
                }
            }
        }
        if let Some(kw) = self.arg(at_kws).as_object() {
            for (name, value) in kw {
                let p = arg_path(&[at_kws.into(), name.clone().into()]);
                query
                    .filters
                    .push(self.column_filter(t, meta.column(name)?, value, &p)?);
            }
        }
        Ok((query, page))
    }

    /// A TD of `rows` of `meta` at `base`, with stubs for the rows they link to.
    fn table_data(
        &self,
        t: &Tables<'_>,
        (meta, view): (&TableMeta, &View),
        rows: &[Row],
        base: Vec<Value>,
    ) -> Result<(Value, Vec<Value>), Failure> {
        let mut td = TableData::new(&self.svc.caps, &self.who.app, base);
        td.rows(meta, view, rows);
        let mut metas: Vec<TableMeta> = Vec::new();
        for (table, row) in td.missing_links() {
            if !metas.iter().any(|m| m.id == table) {
                if let Some(m) = t.table_by_id(table)? {
                    metas.push(m);
                } else {
                    continue;
                }
            }
            let m = metas.iter().find(|m| m.id == table).expect("pushed above");
            td.stub(m, row);
        }
        Ok(td.finish())
    }

    /// A page of a search: the row ids, the next page's capability, the TD.
    fn page(
        &self,
        t: &Tables<'_>,
        (meta, view): (&TableMeta, &View),
        query: &Query,
        (size, offset): (usize, usize),
        (next_at, td_at): (Vec<Value>, Vec<Value>),
        objects: &mut Vec<Value>,
    ) -> Result<(Value, Value, Value), Failure> {
        let mut rows = t.search(meta, query, offset, size + 1)?;
        let more = rows.len() > size;
        rows.truncate(size);
        if more {
            objects.push(self.svc.caps.entry(
                &self.who.app,
                &Scope::Search {
                    view: view.clone(),
                    query: serde_json::to_string(query).expect("a query serialises"),
                    page_size: size,
                    offset: Some(offset + size),
                },
                Value::Array(next_at),
            ));
        }
        let ids: Vec<Value> = rows.iter().map(|(id, _)| (*id).into()).collect();
        let (td, more_objects) = self.table_data(t, (meta, view), &rows, td_at)?;
        objects.extend(more_objects);
        Ok((Value::Array(ids), Value::Null, td))
    }

    fn search(&self, t: &Tables<'_>) -> Result<Answer, Failure> {
        let (meta, view) = self.table_arg(t, 0, Need::Read)?;
        let (query, size) = self.query(t, &meta, true)?;
        let query = self.restricted(&view, query)?;
        let mut objects = vec![self.svc.caps.entry(
            &self.who.app,
            &Scope::Search {
                view: view.clone(),
                query: serde_json::to_string(&query).expect("a query serialises"),
                page_size: size,
                offset: None,
            },
            json!(["response", 1]),
        )];
        let (ids, next, td) = self.page(
            t,
            (&meta, &view),
            &query,
            (size, 0),
            (
                vec!["response".into(), 2.into()],
                vec!["response".into(), 3.into()],
            ),
            &mut objects,
        )?;
        Ok(Answer::new(json!([ids, null, next, td]), objects))
    }

    fn next_page(&self, t: &Tables<'_>) -> Result<Answer, Failure> {
        let (meta, view, query, size, offset) = self.search_arg(t, Need::Read)?;
        let mut objects = Vec::new();
        let (ids, next, td) = self.page(
            t,
            (&meta, &view),
            &query,
            (size, offset),
            (
                vec!["response".into(), 1.into()],
                vec!["response".into(), 2.into()],
            ),
            &mut objects,
        )?;
        Ok(Answer::new(json!([ids, next, td]), objects))
    }

    fn get_row(&self, t: &Tables<'_>) -> Result<Answer, Failure> {
        let (meta, view) = self.table_arg(t, 0, Need::Read)?;
        let (query, _) = self.query(t, &meta, false)?;
        let query = self.restricted(&view, query)?;
        let rows = t.search(&meta, &query, 0, 2)?;
        match rows.len() {
            0 => Ok(Answer::plain(Value::Null)),
            1 => {
                let (td, objects) =
                    self.table_data(t, (&meta, &view), &rows, vec!["response".into(), 1.into()])?;
                Ok(Answer::new(json!([rows[0].0, td]), objects))
            }
            _ => Err(table_error(
                "More than one row matched this query; use search() to see them all",
            )),
        }
    }

    /// A row id as the client sends it: `5`, `"5"` or `"[table,5]"`.
    fn row_id(&self, meta: &TableMeta) -> Option<i64> {
        match self.arg(1) {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => match s.parse() {
                Ok(id) => Some(id),
                Err(_) => {
                    let (t, r) = s.strip_prefix('[')?.strip_suffix(']')?.split_once(',')?;
                    (t.trim().parse::<i64>().ok()? == meta.id).then_some(())?;
                    r.trim().parse().ok()
                }
            },
            _ => None,
        }
    }

    /// Row `id` of `meta`, if it exists and is in `view`.
    fn visible_row(
        &self,
        t: &Tables<'_>,
        meta: &TableMeta,
        view: &View,
        id: i64,
    ) -> Result<Option<Row>, Failure> {
        let Some(row) = t.get(meta, id)? else {
            return Ok(None);
        };
        Ok(self.in_view(t, meta, view, id).is_ok().then_some(row))
    }

    fn get_row_by_id(&self, t: &Tables<'_>) -> Result<Answer, Failure> {
        let (meta, view) = self.table_arg(t, 0, Need::Read)?;
        let Some(row) = self
            .row_id(&meta)
            .map(|id| self.visible_row(t, &meta, &view, id))
            .transpose()?
            .flatten()
        else {
            return Ok(Answer::plain(Value::Null));
        };
        let id = row.0;
        let (td, objects) =
            self.table_data(t, (&meta, &view), &[row], vec!["response".into(), 1.into()])?;
        Ok(Answer::new(json!([id, td]), objects))
    }

    fn has_row(&self, t: &Tables<'_>) -> Result<Answer, Failure> {
        let (meta, view) = self.table_arg(t, 0, Need::Read)?;
        let found = match self.row_id(&meta) {
            Some(id) => self.visible_row(t, &meta, &view, id)?.is_some(),
            None => false,
        };
        Ok(Answer::plain(found.into()))
    }

    /// `table.get_view(cap, perm, _, args, kws)`: a view of the table with
    /// `perm` ("r", "rw", "rwc") and a restriction (the query of `args` and
    /// `kws`, AND-ed to any the handle already has). For the app's server
    /// code, to hand to client keys and pages; others may not make views.
    fn get_view(&self, t: &Tables<'_>) -> Result<Answer, Failure> {
        if !self.who.server {
            return Err(Failure {
                ty: ferrolink_proto::error_type::PERMISSION_DENIED,
                message: "only the app's server code (a server key) may make views of a table"
                    .to_owned(),
            });
        }
        let (meta, base) = self.table_arg(t, 0, Need::Read)?;
        let perm =
            self.arg(1).as_str().and_then(Perm::parse).ok_or_else(|| {
                table_error("get_view takes a permission: \"r\", \"rw\" or \"rwc\"")
            })?;
        let (query, _) = self.query_at(t, &meta, false, (3, 4))?;
        let query = self.restricted(&base, query)?;
        let view = View {
            table: meta.id,
            perm: Some(perm),
            restrict: (!query.filters.is_empty()).then(|| {
                serde_json::to_string(&Query {
                    filters: query.filters,
                    order: Vec::new(),
                })
                .expect("a query serialises")
            }),
        };
        let key = view.key();
        let cap = self
            .svc
            .caps
            .entry(&self.who.app, &Scope::Table(view), json!(["response", 0]));
        Ok(Answer::new(json!([null, key]), vec![cap]))
    }

    fn list_columns(&self, t: &Tables<'_>) -> Result<Answer, Failure> {
        let (meta, _) = self.table_arg(t, 0, Need::Read)?;
        let cols: Vec<Value> = meta
            .columns
            .iter()
            .map(|c| {
                let mut col =
                    json!({ "name": c.column.name, "type": wire::type_name(&c.column.kind) });
                if let Some(linked) = c.linked {
                    col["table_id"] = linked.into();
                }
                col
            })
            .collect();
        Ok(Answer::plain(Value::Array(cols)))
    }

    fn fetch(&self, t: &Tables<'_>) -> Result<Answer, Failure> {
        let (meta, row, view) = self.row_at(t, &arg_path(&[0.into()]), Need::Read)?;
        let row = t.get(&meta, row)?.ok_or_else(row_deleted)?;
        let (td, objects) = self.table_data(t, (&meta, &view), &[row], vec!["response".into()])?;
        Ok(Answer::new(td, objects))
    }
}

/// `anvil.private.fetch_lazy_media(media)`: the bytes of a media cell the
/// client got as `LazyMedia`, answered as media.
pub(crate) fn fetch_media(
    svc: &Service,
    state: &crate::state::ServerState,
    who: &Who,
    job: &Job,
) -> Result<Answer, Failure> {
    let call = Request::parse(svc, who, "fetch_lazy_media", job)?;
    let is_lazy = |e: &Value| e["type"].get(0).and_then(Value::as_str) == Some("LazyMedia");
    // The official client passes the media's description as a plain dict;
    // a LazyMedia object in `objects` means the same.
    let found = call.objects.at(&arg_path(&[0.into()]));
    let entry = found
        .into_iter()
        .find(|e| is_lazy(e))
        .or_else(|| Some(call.arg(0)).filter(|a| is_lazy(a)))
        .ok_or_else(|| table_error("fetch_lazy_media takes the description of a LazyMedia"))?;
    let (description, bytes) = state.store.read(&who.app, |t| call.lazy_media(t, entry))?;
    call.objects.all_used()?;
    Ok(Answer {
        response: Value::Null,
        objects: Vec::new(),
        media: Some(super::Media {
            name: description["name"].as_str().unwrap_or("").to_owned(),
            mime: description["mime"]
                .as_str()
                .unwrap_or("application/octet-stream")
                .to_owned(),
            bytes,
        }),
    })
}

impl Request<'_> {
    /// The rows `query` finds as a CSV file.
    fn to_csv(&self, t: &Tables<'_>, meta: &TableMeta, query: &Query) -> Result<Answer, Failure> {
        let rows = t.count(meta, query)?;
        if rows > CSV_ROWS {
            return Err(table_error(&format!(
                "to_csv() answers at most {CSV_ROWS} rows and this finds {rows}; narrow the search, or export with `ferrolink table rows --csv`"
            )));
        }
        let rows = t.search(meta, query, 0, usize::MAX)?;
        let columns: Vec<_> = meta.columns.iter().map(|c| c.column.clone()).collect();
        let escape = self
            .kwargs
            .get("escape_for_excel")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let text = crate::storage::tables::csv(&columns, &rows, escape);
        if text.len() > CSV_BYTES {
            return Err(table_error(&format!(
                "the CSV would be over {} MiB; narrow the search, or export with `ferrolink table rows --csv`",
                CSV_BYTES >> 20
            )));
        }
        Ok(Answer {
            response: Value::Null,
            objects: Vec::new(),
            media: Some(super::Media {
                name: format!("{}.csv", meta.name),
                mime: "text/csv".to_owned(),
                bytes: text.into_bytes(),
            }),
        })
    }
}

/// Most rows and bytes `to_csv()` answers (the answer is sent whole).
const CSV_ROWS: u64 = 10 * MAX_PAGE as u64;
const CSV_BYTES: usize = 8 << 20;

fn combine(op: &str, of: Vec<Filter>) -> Filter {
    match op {
        "all_of" => Filter::All { of },
        "any_of" => Filter::Any { of },
        _ => Filter::NoneOf { of },
    }
}
