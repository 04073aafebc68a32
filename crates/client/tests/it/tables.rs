//! `client.table(..)` against the real server, and the same rows seen by
//! the official Python client's `app_tables`.

use std::time::Duration;

use ferrolink_client::tables::Query;
use ferrolink_client::{CallErrorKind, Client};
use ferrolink_testkit::TestServer;
use ferrolink_testkit::python::PyProcess;
use futures_util::StreamExt as _;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_client_adds_searches_pages_and_charts_rows() {
    let server = TestServer::start().await;
    let store = server.store();
    let cols = |c: &[&str]| c.iter().map(|c| c.parse().unwrap()).collect::<Vec<_>>();
    store
        .create_table("demo", "devices", &cols(&["name:text"]))
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
    let app = Client::builder(server.url(), &server.server_key)
        .connect()
        .await
        .unwrap();
    let devices = app.table("devices");
    let pico = devices.add_row(json!({"name": "pico-1"})).await.unwrap();
    let readings = app.table("readings");
    let rows: Vec<_> = (0..250)
        .map(|i| {
            json!({
                "t": format!("2026-12-02T14:{:02}:{:02}Z", i / 60, i % 60),
                "celsius": 20.0 + f64::from(i) / 100.0,
                "device": pico,
                "note": format!("reading {i}"),
            })
        })
        .collect();
    let ids = readings.add_rows(&rows).await.unwrap();
    assert_eq!(ids.len(), 250);

    // Paging as a stream, past the first page of 100.
    let all: Vec<_> = readings.search(Query::new()).collect().await;
    assert_eq!(all.len(), 250);
    assert!(all.iter().all(Result::is_ok));
    let first = all[0].as_ref().unwrap();
    assert_eq!(first.values["t"], "2026-12-02T14:00:00.000000Z");
    assert_eq!(first.values["device"], pico);
    // Filters and order.
    let warm: Vec<f64> = readings
        .search(Query::new().gt("celsius", 22.4).order_by("celsius", false))
        .map(|r| r.unwrap().values["celsius"].as_f64().unwrap())
        .collect()
        .await;
    assert_eq!(
        warm,
        vec![
            22.49, 22.48, 22.47, 22.46, 22.45, 22.44, 22.43, 22.42, 22.41
        ]
    );
    let q = Query::new()
        .ge("t", "2026-12-02T14:01:00Z")
        .lt("t", "2026-12-02T14:02:00Z")
        .like("note", "reading 6%");
    assert_eq!(readings.count(&q).await.unwrap(), 10);
    let either = Query::new().any_of([
        Query::new().eq("celsius", 20.0),
        Query::new().eq("note", "reading 249"),
    ]);
    assert_eq!(readings.count(&either).await.unwrap(), 2);
    assert_eq!(
        readings
            .count(&Query::new().not(Query::new().lt("celsius", 22.0)))
            .await
            .unwrap(),
        50
    );
    // A chart of the range: four one-minute buckets and a partial one.
    let buckets = readings
        .chart(
            "t",
            "celsius",
            "2026-12-02T14:00:00Z",
            "2026-12-02T14:05:00Z",
            5,
        )
        .await
        .unwrap();
    assert_eq!(
        buckets.iter().map(|b| b.count).collect::<Vec<_>>(),
        vec![60, 60, 60, 60, 10]
    );
    assert!((buckets[0].mean - 20.295).abs() < 1e-9, "{buckets:?}");
    // get, update, delete.
    let id = ids[0];
    readings
        .update(id, json!({"note": "first", "day": "2026-12-02"}))
        .await
        .unwrap();
    let row = readings.get(id).await.unwrap().unwrap();
    assert_eq!(
        (row.values["note"].clone(), row.values["day"].clone()),
        (json!("first"), json!("2026-12-02"))
    );
    assert!(readings.delete(id).await.unwrap());
    assert_eq!(readings.get(id).await.unwrap(), None);
    let gone = readings.update(id, json!({"note": "x"})).await.unwrap_err();
    assert!(gone.to_string().contains("deleted"), "{gone}");
    // Bad input: a clear error, nothing written.
    let err = readings
        .add_rows(&[json!({"celsius": 1.0}), json!({"celsius": "hot"})])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("column \"celsius\" is number"),
        "{err}"
    );
    let err = readings
        .count(&Query::new().eq("kelvin", 1))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("has no column \"kelvin\""),
        "{err}"
    );
    assert_eq!(readings.count(&Query::new()).await.unwrap(), 249);

    // The official client sees what the Rust client wrote.
    let mut py = PyProcess::spawn("tables.py", &[&server.url(), &server.server_key, "count"]);
    let r = py.result(Duration::from_secs(60));
    assert_eq!(r["count"], 249, "{r}");

    // A client key: only what the table allows.
    let device = Client::builder(server.url(), &server.client_key)
        .connect()
        .await
        .unwrap();
    let err = device
        .table("readings")
        .add_row(json!({"celsius": 1.0}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), CallErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("table set --client"), "{err}");
    store
        .set_client_access(
            "demo",
            "readings",
            ferrolink::storage::tables::ClientAccess::Add,
            false,
        )
        .unwrap();
    device
        .table("readings")
        .add_row(json!({"celsius": 1.0}))
        .await
        .unwrap();
    let err = device
        .table("readings")
        .count(&Query::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("may not read"), "{err}");
    server.shutdown().await;
}
