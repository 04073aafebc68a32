//! Data tables through the official `anvil-uplink==0.7.0` client, and the
//! refusals a hostile caller meets.

use std::time::Duration;

use ferrolink::storage::Store;
use ferrolink_testkit::TestServer;
use ferrolink_testkit::python::PyProcess;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

/// The tables the Python scenarios expect (see python/tables.py), in the
/// SQLite database of data directory `data`.
fn make_tables(data: &std::path::Path) {
    make_tables_in(&Store::open(data).unwrap());
}

/// The same tables in `store`.
pub(crate) fn make_tables_in(store: &Store) {
    let cols = |c: &[&str]| c.iter().map(|c| c.parse().unwrap()).collect::<Vec<_>>();
    store
        .create_table(
            "demo",
            "devices",
            &cols(&["name:text", "active:bool", "tags:simpleObject"]),
        )
        .unwrap();
    store
        .create_table(
            "demo",
            "readings",
            &cols(&[
                "t:datetime",
                "celsius:number",
                "device:link:devices",
                "note:text",
                "day:date",
            ]),
        )
        .unwrap();
    store
        .create_table(
            "demo",
            "groups",
            &cols(&["name:text", "members:links:devices"]),
        )
        .unwrap();
    store
        .create_table("demo", "counters", &cols(&["name:text", "n:number"]))
        .unwrap();
    store
        .create_table("demo", "photos", &cols(&["name:text", "image:media"]))
        .unwrap();
    store
        .create_table("demo", "notes", &cols(&["owner:text", "text:text"]))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_client_uses_app_tables() {
    let server = TestServer::start().await;
    make_tables(server.data_dir());
    official_client_scenario(&server).await;
}

/// The same scenario with the tables in PostgreSQL.
#[tokio::test(flavor = "multi_thread")]
async fn the_official_client_uses_app_tables_in_postgres() {
    let url = ferrolink_testkit::postgres::database();
    let database = url.clone();
    let server = TestServer::start_with(move |c| c.database = Some(database)).await;
    let dir = server.data_dir().to_owned();
    tokio::task::spawn_blocking(move || {
        make_tables_in(&Store::open_database(&dir, Some(&url)).unwrap());
    })
    .await
    .unwrap();
    official_client_scenario(&server).await;
}

/// Every table operation of the official client, checked.
async fn official_client_scenario(server: &TestServer) {
    let mut py = PyProcess::spawn("tables.py", &[&server.url(), &server.server_key, "all"]);
    let r = py.result(WAIT);
    let ok = |k: &str| r[k]["ok"].clone();
    assert_eq!(r["dev1_name"], "pico-1", "{r}");
    assert_eq!(r["dev2_tags_before"], json!(null), "{r}");
    // Paging past the first page (100 rows), by the default size and by 7.
    assert_eq!(ok("len_all"), 250, "{r}");
    assert_eq!(ok("iterate_all"), 250, "{r}");
    assert_eq!(ok("small_pages"), 250, "{r}");
    // Links are followed to the linked row.
    assert_eq!(ok("by_link"), json!(["pico-1"]), "{r}");
    assert_eq!(ok("by_link_count"), 125, "{r}");
    // Query operators.
    assert_eq!(ok("greater_than"), 49, "{r}");
    assert_eq!(ok("less_than_or_equal"), 5, "{r}");
    assert_eq!(ok("between_datetimes"), 10, "{r}");
    assert_eq!(ok("like"), 111, "{r}");
    assert_eq!(ok("like_is_case_sensitive"), 0, "{r}");
    assert_eq!(ok("ilike"), 111, "{r}");
    assert_eq!(ok("full_text"), 49, "{r}");
    assert_eq!(ok("any_of_values"), 2, "{r}");
    assert_eq!(ok("any_of_positional"), 126, "{r}");
    assert_eq!(ok("all_of_positional"), 5, "{r}");
    assert_eq!(ok("not_"), 125, "{r}");
    assert_eq!(ok("none_of"), 248, "{r}");
    assert_eq!(ok("order_by_desc"), json!([22.49, 22.48, 22.47]), "{r}");
    assert_eq!(ok("order_two_columns"), json!([22.48, 22.46]), "{r}");
    assert_eq!(ok("slice"), json!([21.2, 21.21, 21.22]), "{r}");
    // Dates and datetimes both ways.
    assert_eq!(ok("datetime_round_trip"), true, "{r}");
    assert_eq!(ok("datetime_value"), "2026-12-02T14:00:00+00:00", "{r}");
    assert_eq!(ok("date_round_trip"), true, "{r}");
    // get, get_by_id, has_row.
    assert_eq!(ok("get"), true, "{r}");
    assert_eq!(ok("get_none"), json!(null), "{r}");
    assert_eq!(r["get_two"]["error"], "TableError", "{r}");
    assert_eq!(ok("get_by_id"), "pico-1", "{r}");
    assert_eq!(ok("get_by_id_missing"), json!(null), "{r}");
    assert_eq!(ok("has_row"), true, "{r}");
    assert_eq!(
        ok("simple_object"),
        json!({"room": "greenhouse", "n": [1, 2]}),
        "{r}"
    );
    // Update and delete.
    assert_eq!(
        ok("update"),
        json!(["pico-2b", true, {"fixed": true}]),
        "{r}"
    );
    assert_eq!(ok("delete"), json!([null, "RowDeleted"]), "{r}");
    // Multiple links.
    assert_eq!(
        ok("links"),
        json!([1, ["pico-1", "pico-2b"], ["pico-1", "pico-2b"]]),
        "{r}"
    );
    assert_eq!(
        ok("list_columns"),
        json!([
            ["t", "datetime"],
            ["celsius", "number"],
            ["device", "link_single"],
            ["note", "string"],
            ["day", "date"]
        ]),
        "{r}"
    );
    // Bad input: a clear error, and nothing written.
    assert_eq!(r["wrong_type"]["error"], "TableError", "{r}");
    assert!(
        r["wrong_type"]["message"]
            .as_str()
            .unwrap()
            .contains("column \"celsius\" is number"),
        "{r}"
    );
    assert_eq!(r["unknown_column"]["error"], "NoSuchColumnError", "{r}");
    assert_eq!(r["link_to_wrong_table"]["error"], "TableError", "{r}");
    assert_eq!(r["oversized"]["error"], "TableError", "{r}");
    assert_eq!(r["no_such_table"]["error"], "AttributeError", "{r}");
    assert_eq!(ok("rows_unchanged"), 0, "{r}");
    // Transactions: every increment lands, through conflicts and retries.
    assert_eq!(ok("counter"), 20.0, "{r}");
    assert!(
        r["attempts"].as_u64().unwrap() > 20,
        "no conflict was provoked: {r}"
    );
    assert_eq!(r["rolled_back"]["error"], "ValueError", "{r}");
    assert_eq!(ok("rolled_back_rows"), 0, "{r}");
    assert_eq!(r["nested_transaction"]["error"], "TableError", "{r}");
    assert_eq!(ok("delete_all_rows"), 0, "{r}");
    // `with batch_update` / `with batch_delete`: one call each.
    assert_eq!(ok("batches"), json!([[10.0, 20.0], 0]), "{r}");
    // CSV, of a table and of a search, as media.
    assert_eq!(
        ok("to_csv"),
        "name,active,tags\r\npico-1,true,\"{\"\"n\"\":[1,2],\"\"room\"\":\"\"greenhouse\"\"}\"\r\npico-2b,true,\"{\"\"fixed\"\":true}\"\r\n",
        "{r}"
    );
    assert_eq!(ok("csv_content_type"), "text/csv", "{r}");
    assert_eq!(
        ok("search_to_csv"),
        "t,celsius,device,note,day\r\n2026-12-02T14:00:00.000000Z,20.0,1,reading 0 cold,2026-12-02\r\n2026-12-02T14:00:01.000000Z,20.01,2,reading 1 cold,2026-12-02\r\n",
        "{r}"
    );
    assert_eq!(ok("search_delete_all"), 250 - 49, "{r}");
    // Media: sent in chunks, read back lazily, copied from row to row.
    assert_eq!(
        ok("media"),
        json!(["image/png", "p.png", 300_004, true]),
        "{r}"
    );
    assert_eq!(ok("media_copy"), json!([true, "p.png"]), "{r}");
    assert_eq!(ok("media_cleared"), json!(null), "{r}");
    assert_eq!(r["media_too_big"]["error"], "QuotaExceededError", "{r}");
    assert_eq!(ok("media_rows"), 2, "{r}");
    assert_eq!(r["media_in_text_column"]["error"], "TableError", "{r}");
}

/// Calls `command` with `args` and `objects` on a raw connection and
/// answers the reply.
async fn call(
    c: &mut ferrolink_testkit::RawClient,
    command: &str,
    args: serde_json::Value,
    objects: serde_json::Value,
) -> serde_json::Value {
    c.send_json(&json!({
        "type": "CALL", "id": "t1", "command": format!("anvil.private.tables.v2.{command}"),
        "args": args, "kwargs": {}, "objects": objects,
    }))
    .await;
    let reply = c.recv_json().await;
    assert_eq!(reply["id"], "t1", "{reply}");
    reply
}

/// The capability entry of table `name` from `get_app_tables`, re-pathed
/// to argument 0.
async fn table_cap(c: &mut ferrolink_testkit::RawClient, name: &str) -> serde_json::Value {
    let reply = call(c, "get_app_tables", json!([]), json!([])).await;
    let mut cap = reply["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["path"][1] == name)
        .unwrap_or_else(|| panic!("no table {name} in {reply}"))
        .clone();
    cap["path"] = json!(["args", 0]);
    cap
}

fn error_type(reply: &serde_json::Value) -> &str {
    reply["error"]["type"].as_str().unwrap_or("none")
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_widened_or_foreign_handles_and_hostile_names_change_nothing() {
    let server = TestServer::start().await;
    make_tables(server.data_dir());
    let store = Store::open(server.data_dir()).unwrap();
    store.create_app("other").unwrap();
    store
        .create_table("other", "secrets", &["value:text".parse().unwrap()])
        .unwrap();
    let (_, other_key) = store
        .create_key("other", ferrolink_proto::message::Privilege::Server, None)
        .unwrap();
    let (mut c, _) =
        ferrolink_testkit::RawClient::authenticated(&server.url(), &server.server_key).await;
    let devices = table_cap(&mut c, "devices").await;
    let added = call(
        &mut c,
        "table.add_row",
        json!([null, {"name": "pico-1"}, null, null]),
        json!([devices]),
    )
    .await;
    assert_eq!(added["response"][0], 1, "{added}");
    let mut row = added["objects"][0].clone();
    row["path"] = json!(["args", 0]);

    // Another row with the same MAC: refused, and row 1 is unchanged.
    let mut widened = row.clone();
    widened["scope"][3]["r"] = 2.into();
    let r = call(
        &mut c,
        "row.update",
        json!([null, {"name": "x"}, null]),
        json!([widened]),
    )
    .await;
    assert_eq!(error_type(&r), "anvil.server.PermissionDenied", "{r}");
    // A row handle cut down to its table, and a made-up MAC.
    let mut cut = row.clone();
    cut["scope"].as_array_mut().unwrap().pop();
    let r = call(
        &mut c,
        "table.add_row",
        json!([null, {"name": "y"}, null, null]),
        json!([cut]),
    )
    .await;
    assert_eq!(error_type(&r), "anvil.server.PermissionDenied", "{r}");
    let mut made_up = devices.clone();
    made_up["mac"] = "00".repeat(32).into();
    let r = call(
        &mut c,
        "table.add_row",
        json!([null, {"name": "z"}, null, null]),
        json!([made_up]),
    )
    .await;
    assert_eq!(error_type(&r), "anvil.server.PermissionDenied", "{r}");
    // A handle minted for another app's connection.
    let (mut o, _) =
        ferrolink_testkit::RawClient::authenticated(&server.url(), other_key.expose()).await;
    let foreign = table_cap(&mut o, "secrets").await;
    let r = call(
        &mut c,
        "table.search",
        json!([null, [], {}]),
        json!([foreign]),
    )
    .await;
    assert_eq!(error_type(&r), "anvil.server.PermissionDenied", "{r}");
    // No handle at all.
    let r = call(
        &mut c,
        "table.add_row",
        json!([null, {"name": "w"}, null, null]),
        json!([]),
    )
    .await;
    assert_eq!(error_type(&r), "anvil.tables.TableError", "{r}");

    // Hostile column names are names, never SQL.
    for evil in [
        "name\" = 1; DROP TABLE tbl_1; --",
        "_id",
        "c_1",
        "name) VALUES (1); --",
    ] {
        let r = call(
            &mut c,
            "table.add_row",
            json!([null, {evil: "v"}, null, null]),
            json!([devices]),
        )
        .await;
        assert_eq!(
            error_type(&r),
            "anvil.tables.NoSuchColumnError",
            "{evil}: {r}"
        );
        let mut order = devices.clone();
        order["path"] = json!(["args", 0]);
        let r = call(
            &mut c,
            "table.search",
            json!([null, [{"column_name": evil, "ascending": true}], {}]),
            json!([order, {"type": ["ValueType"], "path": ["args", 1, 0], "typeName": "anvil.tables.order_by"}]),
        )
        .await;
        assert_eq!(
            error_type(&r),
            "anvil.tables.NoSuchColumnError",
            "{evil}: {r}"
        );
    }
    // A value the tables cannot hold, nested in a simple object: the call
    // waits for its media's chunk, then is refused.
    let mut tags = devices.clone();
    tags["path"] = json!(["args", 0]);
    c.send_json(&json!({
        "type": "CALL", "id": "t1", "command": "anvil.private.tables.v2.table.add_row",
        "args": [null, {"name": "m", "tags": {"photo": null}}, null, null], "kwargs": {},
        "objects": [tags, {"type": ["DataMedia"], "path": ["args", 1, "tags", "photo"], "id": "x", "mime-type": "image/png"}],
    }))
    .await;
    c.send_json(&json!({"type": "CHUNK_HEADER", "requestId": "t1", "mediaId": "x", "chunkIndex": 0, "lastChunk": true}))
        .await;
    c.send_binary(b"not really a png".to_vec()).await;
    let r = c.recv_json().await;
    assert_eq!(error_type(&r), "anvil.tables.TableError", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("DataMedia"),
        "{r}"
    );
    // A chunk for no call, and one for a call that is not waiting, are dropped.
    c.send_json(&json!({"type": "CHUNK_HEADER", "requestId": "nobody", "mediaId": "x", "chunkIndex": 0, "lastChunk": true}))
        .await;
    c.send_binary(vec![0; 1000]).await;

    // A media handle naming another cell, with a made-up MAC.
    c.send_json(&json!({
        "type": "CALL", "id": "t3", "command": "anvil.private.fetch_lazy_media",
        "args": [{"type": ["LazyMedia"], "manager": "ferrolink.tables", "key": "[5,1,\"image\"]", "id": "00".repeat(32)}],
        "kwargs": {},
    }))
    .await;
    let r = c.recv_json().await;
    assert_eq!(error_type(&r), "anvil.server.PermissionDenied", "{r}");

    // Nothing of the above was written.
    assert_eq!(store.count_rows("demo", "devices").unwrap(), 1);
    let (_, row1) = store.get_row("demo", "devices", 1).unwrap().unwrap();
    assert_eq!(row1["name"], "pico-1");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_keys_get_what_each_table_allows() {
    use ferrolink::storage::tables::ClientAccess;
    let server = TestServer::start().await;
    make_tables(server.data_dir());
    let store = Store::open(server.data_dir()).unwrap();
    let (mut s, _) =
        ferrolink_testkit::RawClient::authenticated(&server.url(), &server.server_key).await;
    let readings = table_cap(&mut s, "readings").await;
    let (mut c, _) =
        ferrolink_testkit::RawClient::authenticated(&server.url(), &server.client_key).await;

    // By default a client key sees no table, and a handle it got
    // elsewhere does not help.
    let r = call(&mut c, "get_app_tables", json!([]), json!([])).await;
    assert_eq!(r["response"], json!({}), "{r}");
    let r = call(
        &mut c,
        "table.add_row",
        json!([null, {"celsius": 1.0}, null, null]),
        json!([readings]),
    )
    .await;
    assert_eq!(error_type(&r), "anvil.server.PermissionDenied", "{r}");

    // `add`: a logging device may add rows and nothing else.
    store
        .set_client_access("demo", "readings", ClientAccess::Add, false)
        .unwrap();
    let cap = table_cap(&mut c, "readings").await;
    let r = call(
        &mut c,
        "table.add_row",
        json!([null, {"celsius": 2.0}, null, null]),
        json!([cap]),
    )
    .await;
    assert_eq!(r["response"][0], 1, "{r}");
    let r = call(&mut c, "table.search", json!([null, [], {}]), json!([cap])).await;
    assert_eq!(error_type(&r), "anvil.server.PermissionDenied", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("table set --client"),
        "{r}"
    );

    // `read`: search, but no writes.
    store
        .set_client_access("demo", "readings", ClientAccess::Read, false)
        .unwrap();
    let r = call(&mut c, "table.search", json!([null, [], {}]), json!([cap])).await;
    assert_eq!(r["response"][0], json!([1]), "{r}");
    let r = call(
        &mut c,
        "table.add_row",
        json!([null, {"celsius": 3.0}, null, null]),
        json!([cap]),
    )
    .await;
    assert_eq!(error_type(&r), "anvil.server.PermissionDenied", "{r}");
    // `read` for logged-in users only: a client key is not one.
    store
        .set_client_access("demo", "readings", ClientAccess::Read, true)
        .unwrap();
    let r = call(&mut c, "table.search", json!([null, [], {}]), json!([cap])).await;
    assert_eq!(error_type(&r), "anvil.server.PermissionDenied", "{r}");
    // Transactions are for server code only.
    c.send_json(&json!({"type": "CALL", "id": "t2", "command": "anvil.private.tables.open_transaction", "args": [], "kwargs": {}}))
        .await;
    let r = c.recv_json().await;
    assert_eq!(error_type(&r), "anvil.server.PermissionDenied", "{r}");
    assert_eq!(store.count_rows("demo", "readings").unwrap(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_acknowledged_to_the_client_survive_kill_9_of_the_server() {
    use crate::cli::{field, spawn_serve};
    let dir = tempfile::tempdir().unwrap();
    let key = {
        let store = Store::open(dir.path()).unwrap();
        store.create_app("demo").unwrap();
        make_tables(dir.path());
        let (_, key) = store
            .create_key("demo", ferrolink_proto::message::Privilege::Server, None)
            .unwrap();
        key.expose().to_owned()
    };
    let (mut serve, lines) = spawn_serve(dir.path(), &[], "uplink: ");
    let url = field(&lines, "uplink: ");
    let mut py = PyProcess::spawn("tables.py", &[&url, &key, "log", "100000"]);
    // Let rows stream in, then kill the server mid-stream, without warning.
    py.expect_line("ACK 300", WAIT);
    serve.0.kill().unwrap();
    serve.0.wait().unwrap();
    // Every row the client saw acknowledged (its last ACK line) is stored.
    let mut acked = 300;
    while let Some(line) = py.next_line(Duration::from_secs(2)) {
        if let Some(n) = line.strip_prefix("ACK ") {
            acked = n.parse().unwrap();
        }
    }
    drop(py);
    let (_serve, lines) = spawn_serve(dir.path(), &[], "uplink: ");
    let url = field(&lines, "uplink: ");
    let mut counter = PyProcess::spawn("tables.py", &[&url, &key, "count"]);
    let r = counter.result(WAIT);
    let count = r["count"].as_u64().unwrap();
    assert!(
        count >= acked,
        "{acked} rows were acknowledged but {count} survived"
    );
    // At most the row in flight at the kill was stored unacknowledged.
    assert!(count <= acked + 1, "{count} rows for {acked} acknowledged");
}

/// Views: the app's server code hands a client key a read-only or a
/// writable view of a table restricted to some rows; the client key gets
/// exactly that, though the table's own client access is `none`.
#[tokio::test(flavor = "multi_thread")]
async fn views_handed_out_by_server_code_grant_only_their_rows() {
    let server = TestServer::start().await;
    make_tables(server.data_dir());
    let mut app = PyProcess::spawn(
        "tables.py",
        &[&server.url(), &server.server_key, "serve_views"],
    );
    app.expect_line("READY", WAIT);
    let mut client = PyProcess::spawn(
        "tables.py",
        &[&server.url(), &server.client_key, "use_views"],
    );
    let r = client.result(WAIT);
    let ok = |k: &str| r[k]["ok"].clone();
    assert_eq!(r["direct"]["error"], "AttributeError", "{r}");
    assert_eq!(ok("ro_search"), json!(["one", "two"]), "{r}");
    assert_eq!(ok("ro_len"), 2, "{r}");
    assert_eq!(ok("ro_get_other"), json!(null), "{r}");
    assert_eq!(r["ro_add"]["error"], "PermissionDenied", "{r}");
    assert_eq!(r["ro_update"]["error"], "PermissionDenied", "{r}");
    assert_eq!(ok("rw_add"), "three", "{r}");
    assert_eq!(r["rw_add_outside"]["error"], "PermissionDenied", "{r}");
    assert_eq!(r["rw_move_outside"]["error"], "PermissionDenied", "{r}");
    assert_eq!(ok("rw_after"), json!(["one", "three", "two"]), "{r}");
    assert_eq!(ok("rw_delete"), "deleted", "{r}");
    assert_eq!(ok("rw_final"), json!(["one", "two"]), "{r}");
    // Nothing outside the views changed.
    let store = Store::open(server.data_dir()).unwrap();
    let eve = store
        .search(
            "demo",
            "notes",
            &json!({"owner": "eve"}).as_object().unwrap().clone(),
            &ferrolink::storage::tables::Page {
                order_by: None,
                offset: 0,
                limit: 10,
            },
        )
        .unwrap();
    assert_eq!(eve.len(), 1);
    assert_eq!(eve[0].1["text"], "secret");
    server.shutdown().await;
}

/// With the app's auto-columns on, the app's server code creates columns
/// by adding rows, typed from their values.
#[tokio::test(flavor = "multi_thread")]
async fn auto_columns_are_typed_from_the_first_values() {
    let server = TestServer::start().await;
    make_tables(server.data_dir());
    Store::open(server.data_dir())
        .unwrap()
        .set_auto_columns("demo", true)
        .unwrap();
    let mut py = PyProcess::spawn("tables.py", &[&server.url(), &server.server_key, "auto"]);
    let r = py.result(WAIT);
    // A row cached before a column appeared reads it (as None) after
    // asking whether columns may appear.
    assert_eq!(r["can_auto_create"]["ok"], json!(null), "{r}");
    assert_eq!(r["add"]["ok"], "1.2", "{r}");
    assert_eq!(
        r["columns"]["ok"],
        json!([
            ["active", "bool"],
            ["extra", "simpleObject"],
            ["firmware", "string"],
            ["group", "link_multiple"],
            ["name", "string"],
            ["ok", "bool"],
            ["parent", "link_single"],
            ["seen", "datetime"],
            ["tags", "simpleObject"],
            ["uptime", "number"]
        ]),
        "{r}"
    );
    assert_eq!(r["update"]["ok"], 3.7, "{r}");
    // A client key never creates columns.
    let (mut c, _) =
        ferrolink_testkit::RawClient::authenticated(&server.url(), &server.client_key).await;
    let store = Store::open(server.data_dir()).unwrap();
    store
        .set_client_access(
            "demo",
            "devices",
            ferrolink::storage::tables::ClientAccess::Write,
            false,
        )
        .unwrap();
    let devices = table_cap(&mut c, "devices").await;
    let r = call(
        &mut c,
        "table.add_row",
        json!([null, {"sneaky": 1}, null, null]),
        json!([devices]),
    )
    .await;
    assert_eq!(error_type(&r), "anvil.tables.NoSuchColumnError", "{r}");
    server.shutdown().await;
}
