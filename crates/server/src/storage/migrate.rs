//! `ferrolink migrate`: a single server's SQLite database copied into an
//! empty PostgreSQL database, so that the server can join a cluster.
//!
//! Everything is copied with its ids (links between rows, users' sessions
//! and signed table handles keep working) in one PostgreSQL transaction:
//! the target ends with all of it or with nothing. The source is read in
//! one snapshot.

use std::cell::RefCell;
use std::path::Path;

use rusqlite::types::Value as Sql;

use super::table_sql::Conn;
use super::tables::ColumnType;
use super::{Store, StoreError};

/// The store's own tables, in an order that satisfies their references.
const RECORDS: &[&str] = &[
    "apps",
    "keys",
    "users",
    "user_sessions",
    "operators",
    "operator_sessions",
    "trust_bundles",
    "secrets",
    "data_tables",
    "data_columns",
];

/// Tables whose ids PostgreSQL generates, and their id column.
const GENERATED: &[(&str, &str)] = &[
    ("users", "id"),
    ("data_tables", "id"),
    ("data_columns", "id"),
];

/// What a migration copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// Rows copied per table of the store's own (apps, keys, users, ...),
    /// in copy order.
    pub records: Vec<(String, u64)>,
    /// Apps' data tables copied.
    pub data_tables: u64,
    /// Rows of apps' data tables copied.
    pub data_rows: u64,
}

fn fail(message: String) -> StoreError {
    StoreError::Unsupported(message)
}

impl Store {
    /// Copies the SQLite database `source` (a `ferrolink.db`, migrated to
    /// this version's schema first) into this store, which must be an
    /// empty PostgreSQL database. No server may be running on `source`
    /// (the caller holds its data directory's lock).
    pub fn migrate_from_sqlite(&self, source: &Path) -> Result<Migrated, StoreError> {
        let Some(pool) = &self.pg_tables else {
            return Err(fail(
                "migrate copies into PostgreSQL: give --to postgres://…".to_owned(),
            ));
        };
        let Some(dir) = source.parent() else {
            return Err(fail(format!("{} is not a database file", source.display())));
        };
        if !source.is_file() {
            return Err(fail(format!(
                "there is no SQLite database at {}; give the data directory of the server to migrate (--from sqlite:DIR)",
                source.display()
            )));
        }
        // Brings the source to this version's schema.
        drop(Self::open(dir)?);
        let sqlite_err = |e| super::table_sql::sqlite_error(source, e);
        let src = rusqlite::Connection::open_with_flags(
            source,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .map_err(sqlite_err)?;
        src.execute_batch("BEGIN").map_err(sqlite_err)?;
        let from = Conn::Sqlite {
            conn: &src,
            path: source,
        };
        let client = RefCell::new(pool.take()?);
        let to = Conn::Postgres {
            client: &client,
            shown: &pool.shown,
        };
        to.batch("BEGIN")?;
        let mut held = Vec::new();
        for table in ["apps", "operators", "trust_bundles", "data_tables"] {
            if let Some(n) = to.int(&format!("SELECT count(*) FROM {table}"), &[])?
                && n > 0
            {
                held.push(format!("{n} {}", table.replace('_', " ")));
            }
        }
        if !held.is_empty() {
            return Err(fail(format!(
                "the database at {} already holds data ({}); migrate into an empty database (createdb a new one) and start the cluster's servers on it afterwards",
                pool.shown,
                held.join(", ")
            )));
        }
        let mut out = Migrated::default();
        for table in RECORDS {
            let columns: Vec<String> = to
                .rows(
                    "SELECT column_name FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name = ?1
                     ORDER BY ordinal_position",
                    &[Sql::Text((*table).to_owned())],
                )?
                .into_iter()
                .filter_map(|r| match r.into_iter().next() {
                    Some(Sql::Text(c)) => Some(c),
                    _ => None,
                })
                .collect();
            let n = copy_rows(&from, &to, table, &columns.join(", "))?;
            out.records.push(((*table).to_owned(), n));
        }
        // The apps' tables, made as the catalogue says, then filled.
        let catalogue = from.rows("SELECT id FROM data_tables ORDER BY id", &[])?;
        for row in catalogue {
            let Some(&Sql::Integer(id)) = row.first() else {
                continue;
            };
            to.batch(&format!("CREATE TABLE tbl_{id} ({})", to.row_id()))?;
            let mut columns = vec!["_id".to_owned()];
            for c in from.rows(
                "SELECT id, kind FROM data_columns WHERE table_id = ?1 ORDER BY id",
                &[Sql::Integer(id)],
            )? {
                let [Sql::Integer(cid), Sql::Text(kind)] = c.as_slice() else {
                    return Err(fail(format!("table {id} has a column row {c:?}")));
                };
                let kind: ColumnType = kind.parse().map_err(fail)?;
                Self::add_sql_column(&to, id, *cid, &kind)?;
                columns.push(format!("c_{cid}"));
                if kind == ColumnType::Media {
                    columns.push(format!("d_{cid}"));
                }
            }
            out.data_rows += copy_rows(&from, &to, &format!("tbl_{id}"), &columns.join(", "))?;
            out.data_tables += 1;
            to.batch(&restart(&format!("tbl_{id}"), "_id"))?;
        }
        for (table, id) in GENERATED {
            to.batch(&restart(table, id))?;
        }
        to.batch("COMMIT")?;
        pool.give(client.into_inner());
        Ok(out)
    }
}

/// Makes the generated ids of `table` go on after the largest copied.
fn restart(table: &str, id: &str) -> String {
    format!(
        "SELECT setval(pg_get_serial_sequence('{table}', '{id}'), coalesce(max({id}), 0) + 1, false) FROM {table}"
    )
}

/// Rows sent to PostgreSQL in one statement at most (one round trip for
/// many rows), and the bytes of values held for one statement at most.
const BATCH_ROWS: usize = 500;
const BATCH_BYTES: usize = 8 << 20;

/// Copies every row of `table` (its `columns`, a list) from `from` into
/// `to`, many rows per statement; answers how many.
fn copy_rows(
    from: &Conn<'_>,
    to: &Conn<'_>,
    table: &str,
    columns: &str,
) -> Result<u64, StoreError> {
    let width = columns.split(", ").count();
    // PostgreSQL takes at most 65,535 parameters in a statement.
    let per_statement = BATCH_ROWS.min(60_000 / width.max(1)).max(1);
    let insert = |rows: usize| {
        let tuples: Vec<String> = (0..rows)
            .map(|r| {
                let marks: Vec<String> =
                    (1..=width).map(|c| format!("?{}", r * width + c)).collect();
                format!("({})", marks.join(", "))
            })
            .collect();
        format!(
            "INSERT INTO {table} ({columns}) VALUES {}",
            tuples.join(", ")
        )
    };
    let full = insert(per_statement);
    let (mut values, mut bytes, mut n) = (Vec::new(), 0, 0u64);
    let flush = |values: &mut Vec<Sql>| -> Result<(), StoreError> {
        let rows = values.len() / width;
        if rows > 0 {
            if rows == per_statement {
                to.exec(&full, values)?;
            } else {
                to.exec(&insert(rows), values)?;
            }
            values.clear();
        }
        Ok(())
    };
    from.each(&format!("SELECT {columns} FROM {table}"), &[], |row| {
        bytes += row
            .iter()
            .map(|v| match v {
                Sql::Text(t) => t.len(),
                Sql::Blob(b) => b.len(),
                _ => 8,
            })
            .sum::<usize>();
        values.extend_from_slice(row);
        n += 1;
        if values.len() / width >= per_statement || bytes >= BATCH_BYTES {
            flush(&mut values)?;
            bytes = 0;
        }
        Ok(())
    })?;
    flush(&mut values)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use ferrolink_proto::message::Privilege;

    #[test]
    fn a_single_server_moves_into_postgres_whole_and_only_into_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let old = Store::open(dir.path()).unwrap();
        old.create_app("greenhouse").unwrap();
        let (key, secret) = old
            .create_key("greenhouse", Privilege::Server, Some("pico-1"))
            .unwrap();
        let revoked = old
            .create_key("greenhouse", Privilege::Client, None)
            .unwrap()
            .0;
        old.revoke(&revoked.id.0).unwrap();
        old.create_table(
            "greenhouse",
            "devices",
            &["name:text".parse().unwrap(), "photo:media".parse().unwrap()],
        )
        .unwrap();
        old.create_table(
            "greenhouse",
            "readings",
            &[
                "t:datetime".parse().unwrap(),
                "celsius:number".parse().unwrap(),
                "device:link:devices".parse().unwrap(),
            ],
        )
        .unwrap();
        let dev = old
            .add_rows(
                "greenhouse",
                "devices",
                &[json!({"name": "pico-1", "photo": {"mime": "image/png", "name": "p.png", "base64": "AAEC"}})
                    .as_object()
                    .unwrap()
                    .clone()],
            )
            .unwrap()[0];
        let rows: Vec<_> = (0..50)
            .map(|i| {
                json!({"t": format!("2026-12-02T14:00:{i:02}Z"), "celsius": 20.0 + f64::from(i), "device": dev})
                    .as_object()
                    .unwrap()
                    .clone()
            })
            .collect();
        old.add_rows("greenhouse", "readings", &rows).unwrap();
        let signing = old.secret("tables").unwrap();
        drop(old);

        let url = ferrolink_testkit::postgres::database();
        let new = Store::open_database(dir.path(), Some(&url)).unwrap();
        let moved = new
            .migrate_from_sqlite(&dir.path().join(super::super::DB_FILE))
            .unwrap();
        assert_eq!(moved.data_tables, 2);
        assert_eq!(moved.data_rows, 51);
        assert!(moved.records.contains(&("keys".to_owned(), 2)), "{moved:?}");

        // Keys authenticate as before, the revoked one stays revoked.
        let found = new.key(&secret.id().unwrap()).unwrap().unwrap();
        assert_eq!(found.device.as_deref(), Some("pico-1"));
        assert_eq!(found.id, key.id);
        assert!(new.key(&revoked.id).unwrap().unwrap().revoked_at.is_some());
        assert_eq!(new.secret("tables").unwrap(), signing);
        // Rows, links and media are there, and new rows and tables get
        // fresh ids.
        assert_eq!(new.count_rows("greenhouse", "readings").unwrap(), 50);
        let found = new
            .search(
                "greenhouse",
                "readings",
                json!({"device": dev}).as_object().unwrap(),
                &super::super::tables::Page {
                    order_by: Some(("celsius".to_owned(), false)),
                    offset: 0,
                    limit: 1,
                },
            )
            .unwrap();
        assert_eq!(found[0].1["celsius"], json!(69.0));
        assert_eq!(found[0].1["t"], json!("2026-12-02T14:00:49.000000Z"));
        let media = new
            .read("greenhouse", |t| {
                t.media(&t.table("devices")?, dev, "photo")
            })
            .unwrap()
            .unwrap();
        assert_eq!(media.1, vec![0, 1, 2]);
        let next = new
            .add_rows(
                "greenhouse",
                "devices",
                &[json!({"name": "pico-2"}).as_object().unwrap().clone()],
            )
            .unwrap()[0];
        assert!(next > dev);
        new.create_table("greenhouse", "more", &["x:number".parse().unwrap()])
            .unwrap();
        new.add_column("greenhouse", "more", &"y:text".parse().unwrap())
            .unwrap();

        // Into a database that holds data: refused, nothing changed.
        let err = new
            .migrate_from_sqlite(&dir.path().join(super::super::DB_FILE))
            .unwrap_err();
        assert!(
            err.to_string().contains("already holds data (1 apps"),
            "{err}"
        );
        assert_eq!(new.count_rows("greenhouse", "devices").unwrap(), 2);
        // From nowhere: says what to give.
        let empty =
            Store::open_database(dir.path(), Some(&ferrolink_testkit::postgres::database()))
                .unwrap();
        let err = empty
            .migrate_from_sqlite(&dir.path().join("nothing").join(super::super::DB_FILE))
            .unwrap_err();
        assert!(err.to_string().contains("--from sqlite:DIR"), "{err}");
    }
}
