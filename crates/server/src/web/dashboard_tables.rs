//! The dashboard's data tables: list, create, add columns, set client
//! access, browse with filters and paging, chart, CSV export and import
//! (`/_/admin/api/tables/*`, used by `admin.js`). Reads need an operator
//! session; changes also the dashboard's origin and CSRF token, like every
//! other change in the dashboard.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Query as UrlQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::state::ServerState;
use crate::storage::tables::{self, ClientAccess, Column, MAX_PAGE, Query, Series};
use crate::web::dashboard::{require, require_change};
use crate::web::http::{ApiError, blocking};

/// Largest CSV file an import takes.
pub(crate) const IMPORT_BYTES: usize = 16 << 20;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

#[derive(Deserialize)]
pub(crate) struct AppArg {
    app: String,
}

/// `GET /_/admin/api/tables?app=A`: the app's tables, columns, row counts
/// and client access.
pub(crate) async fn list(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    UrlQuery(a): UrlQuery<AppArg>,
) -> Result<Json<Value>, ApiError> {
    require(&state, &headers).await?;
    let tables = blocking(&state, move |s| s.tables(&a.app)).await?;
    Ok(Json(Value::Array(
        tables
            .into_iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "rows": t.rows,
                    "client_access": t.client_access.as_str(),
                    "client_login": t.client_login,
                    "columns": t.columns.iter().map(|c| json!({"name": c.name, "type": c.kind.to_string()})).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )))
}

#[derive(Deserialize)]
pub(crate) struct NewTable {
    app: String,
    name: String,
    /// `NAME:TYPE` each.
    #[serde(default)]
    columns: Vec<String>,
}

fn columns(specs: &[String]) -> Result<Vec<Column>, ApiError> {
    specs
        .iter()
        .filter(|c| !c.trim().is_empty())
        .map(|c| c.trim().parse::<Column>().map_err(bad))
        .collect()
}

/// `POST /_/admin/api/tables`: creates a table.
pub(crate) async fn create(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Json(t): Json<NewTable>,
) -> Result<Json<Value>, ApiError> {
    let op = require_change(&state, &headers).await?;
    let cols = columns(&t.columns)?;
    tracing::info!(operator = %op.name, app = %t.app, table = %t.name, "table created");
    blocking(&state, move |s| s.create_table(&t.app, &t.name, &cols)).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(crate) struct NewColumn {
    app: String,
    table: String,
    column: String,
}

/// `POST /_/admin/api/tables/columns`: adds a column.
pub(crate) async fn add_column(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Json(c): Json<NewColumn>,
) -> Result<Json<Value>, ApiError> {
    require_change(&state, &headers).await?;
    let column = columns(std::slice::from_ref(&c.column))?
        .pop()
        .ok_or_else(|| bad("a column is NAME:TYPE"))?;
    blocking(&state, move |s| s.add_column(&c.app, &c.table, &column)).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(crate) struct SchemaChange {
    app: String,
    table: String,
    /// The column, for column changes.
    column: Option<String>,
    /// The new name, for renames.
    to: Option<String>,
}

/// `POST /_/admin/api/tables/rename`: renames a table, or one of its
/// columns when `column` is given.
pub(crate) async fn rename(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Json(c): Json<SchemaChange>,
) -> Result<Json<Value>, ApiError> {
    let op = require_change(&state, &headers).await?;
    let to =
        c.to.clone()
            .ok_or_else(|| bad("give the new name as \"to\""))?;
    tracing::info!(operator = %op.name, app = %c.app, table = %c.table, column = ?c.column, to = %to, "renamed");
    blocking(&state, move |s| match &c.column {
        Some(column) => s.rename_column(&c.app, &c.table, column, &to),
        None => s.rename_table(&c.app, &c.table, &to),
    })
    .await?;
    Ok(Json(json!({})))
}

/// `POST /_/admin/api/tables/drop`: deletes a table with its rows, or one
/// of its columns with its values when `column` is given.
pub(crate) async fn drop(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Json(c): Json<SchemaChange>,
) -> Result<Json<Value>, ApiError> {
    let op = require_change(&state, &headers).await?;
    tracing::info!(operator = %op.name, app = %c.app, table = %c.table, column = ?c.column, "deleted");
    blocking(&state, move |s| match &c.column {
        Some(column) => s.drop_column(&c.app, &c.table, column),
        None => s.drop_table(&c.app, &c.table),
    })
    .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(crate) struct Access {
    app: String,
    table: String,
    client: String,
    #[serde(default)]
    logged_in: bool,
}

/// `POST /_/admin/api/tables/access`: what client keys and pages may do.
pub(crate) async fn access(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Json(a): Json<Access>,
) -> Result<Json<Value>, ApiError> {
    let op = require_change(&state, &headers).await?;
    let access: ClientAccess = a.client.parse().map_err(bad)?;
    tracing::info!(operator = %op.name, app = %a.app, table = %a.table, access = access.as_str(), "table client access set");
    blocking(&state, move |s| {
        s.set_client_access(&a.app, &a.table, access, a.logged_in)
    })
    .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(crate) struct Browse {
    app: String,
    table: String,
    #[serde(default)]
    query: Query,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// `POST /_/admin/api/tables/rows`: a page of rows, `{rows, more, total}`.
pub(crate) async fn rows(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Json(b): Json<Browse>,
) -> Result<Json<Value>, ApiError> {
    require_change(&state, &headers).await?;
    let limit = b.limit.unwrap_or(50).clamp(1, 1000);
    let (rows, total) = blocking(&state, move |s| {
        s.read(&b.app, |t| {
            let meta = t.table(&b.table)?;
            Ok((
                t.search(&meta, &b.query, b.offset, limit + 1)?,
                t.count(&meta, &b.query)?,
            ))
        })
    })
    .await?;
    let more = rows.len() > limit;
    let rows: Vec<Value> = rows
        .into_iter()
        .take(limit)
        .map(|(id, values)| json!({"id": id, "values": values}))
        .collect();
    Ok(Json(json!({"rows": rows, "more": more, "total": total})))
}

#[derive(Deserialize)]
pub(crate) struct Chart {
    app: String,
    table: String,
    time: String,
    value: String,
    from: String,
    to: String,
    #[serde(default = "default_buckets")]
    buckets: usize,
}

fn default_buckets() -> usize {
    200
}

/// `POST /_/admin/api/tables/chart`: a downsampled series.
pub(crate) async fn chart(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    Json(c): Json<Chart>,
) -> Result<Json<Value>, ApiError> {
    require_change(&state, &headers).await?;
    let buckets = blocking(&state, move |s| {
        s.downsample(
            &c.app,
            &Series {
                table: &c.table,
                time: &c.time,
                value: &c.value,
                from: &c.from,
                to: &c.to,
                buckets: c.buckets,
            },
        )
    })
    .await?;
    Ok(Json(Value::Array(
        buckets
            .into_iter()
            .map(|b| json!({"start": b.start, "min": b.min, "max": b.max, "mean": b.mean, "count": b.count}))
            .collect(),
    )))
}

#[derive(Deserialize)]
pub(crate) struct TableArg {
    app: String,
    table: String,
}

/// `GET /_/admin/api/tables/csv?app=A&table=T`: the whole table as CSV,
/// streamed page by page (memory stays bounded whatever the size).
pub(crate) async fn export(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    UrlQuery(a): UrlQuery<TableArg>,
) -> Result<Response, ApiError> {
    require(&state, &headers).await?;
    let (app, table) = (a.app, a.table);
    let meta = {
        let (app, table) = (app.clone(), table.clone());
        blocking(&state, move |s| s.read(&app, |t| t.table(&table))).await?
    };
    let columns: Arc<Vec<Column>> =
        Arc::new(meta.columns.iter().map(|c| c.column.clone()).collect());
    let header = tables::csv(&columns, &[], false);
    let pages = futures_util::stream::unfold(Some(0usize), move |offset| {
        let (state, app, table, columns) =
            (state.clone(), app.clone(), table.clone(), columns.clone());
        async move {
            let offset = offset?;
            let page = tokio::task::spawn_blocking(move || {
                state.store.read(&app, |t| {
                    let meta = t.table(&table)?;
                    t.search(&meta, &Query::default(), offset, MAX_PAGE)
                })
            })
            .await;
            match page {
                Ok(Ok(rows)) if rows.is_empty() => None,
                Ok(Ok(rows)) => {
                    let text = tables::csv(&columns, &rows, false);
                    let body = text.split_once("\r\n").map_or("", |(_, r)| r).to_owned();
                    let next = (rows.len() == MAX_PAGE).then_some(offset + MAX_PAGE);
                    Some((Ok::<_, std::io::Error>(Bytes::from(body)), next))
                }
                _ => Some((
                    Err(std::io::Error::other("the table could not be read")),
                    None,
                )),
            }
        }
    });
    let body = futures_util::StreamExt::chain(
        futures_util::stream::once(async move { Ok(Bytes::from(header)) }),
        pages,
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.csv\"", meta.name),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// `POST /_/admin/api/tables/import?app=A&table=T` with a CSV body (header
/// row of column names): adds every row in one transaction, or none.
pub(crate) async fn import(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    UrlQuery(a): UrlQuery<TableArg>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let op = require_change(&state, &headers).await?;
    if body.len() > IMPORT_BYTES {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a CSV import takes at most {} MiB; split the file",
                IMPORT_BYTES >> 20
            ),
        ));
    }
    let text = String::from_utf8(body.to_vec()).map_err(|_| bad("the CSV is not UTF-8 text"))?;
    let added = blocking(&state, move |s| {
        s.write(&a.app, |t| {
            let meta = t.table(&a.table)?;
            let columns: Vec<Column> = meta.columns.iter().map(|c| c.column.clone()).collect();
            let rows = tables::parse_csv(&columns, &text)?;
            Ok(t.add_rows(&meta, &rows)?.len())
        })
    })
    .await?;
    tracing::info!(operator = %op.name, rows = added, "CSV imported");
    Ok(Json(json!({ "added": added })))
}
