//! `ferrolink-bench --tables`: the data-table storage against SQLite used
//! directly, in the same run, on a real database file in a temporary
//! directory (WAL, as the server runs it):
//!
//! 1. rows/s of a device's readings (`t` datetime, `celsius` number,
//!    `device` text) added one per transaction and in batches of 1,000,
//!    through `Store::add_rows` (type checks, catalogue lookup) and through
//!    a prepared `INSERT` on a plain table (the floor);
//! 2. the time to downsample 1,000,000 rows into 500 buckets (min, max,
//!    mean per bucket) over the whole range and over a tenth of it;
//! 3. rows/s added through uplink calls to a running server
//!    (`anvil.private.tables.v2.table.add_row` / `add_rows`, the calls the
//!    official client makes, with the datetime as the client sends it), one
//!    call at a time, 64 in flight, and 1,000 rows per call, against the
//!    plain-SQLite floors of (1).

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Map, Value, json};

use ferrolink::storage::Store;
use ferrolink::storage::tables::{Column, Series};

const BATCH: usize = 1000;

fn reading(i: usize) -> Map<String, Value> {
    // One reading every 80 ms from the start of the day (a million fit
    // in one day; a device logging 10 a second makes 864,000).
    let ms = (i * 80) % 86_400_000;
    let t = format!(
        "2026-12-02T{:02}:{:02}:{:02}.{:03}Z",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    );
    let Value::Object(m) =
        json!({"t": t, "celsius": 20.0 + (i % 100) as f64 / 10.0, "device": "pico-1"})
    else {
        unreachable!()
    };
    m
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

/// Plain SQLite's rows/s, one row per transaction and in batches.
pub(crate) struct Floors {
    single: f64,
    batched: f64,
}

/// Runs the table benchmark with `rows` rows and prints the report.
pub(crate) fn run(rows: usize) -> Result<Floors> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    store.create_app("bench")?;
    let columns: Vec<Column> = ["t:datetime", "celsius:number", "device:text"]
        .iter()
        .map(|c| c.parse().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    store.create_table("bench", "readings", &columns)?;
    store.create_table("bench", "single", &columns)?;

    // The floor: the same rows into a plain SQLite table, prepared
    // statement, same file settings.
    let raw = rusqlite::Connection::open(dir.path().join("raw.db"))?;
    raw.pragma_update(None, "journal_mode", "WAL")?;
    raw.execute_batch(
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, t TEXT, celsius REAL, device TEXT);
         CREATE INDEX readings_t ON readings(t); CREATE INDEX readings_c ON readings(celsius);",
    )?;
    let raw_insert = |from: usize, n: usize| -> Result<()> {
        let tx = raw.unchecked_transaction()?;
        {
            let mut stmt =
                tx.prepare_cached("INSERT INTO readings (t, celsius, device) VALUES (?1, ?2, ?3)")?;
            for i in from..from + n {
                let r = reading(i);
                stmt.execute(rusqlite::params![
                    r["t"].as_str(),
                    r["celsius"].as_f64(),
                    r["device"].as_str()
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    };

    println!("# ferrolink data tables\n");
    println!(
        "Rows of (t datetime, celsius number, device text), a real SQLite file in WAL mode; the floor is a prepared INSERT into a plain table with the same columns and indexes, in the same run.\n"
    );
    println!("| insert | ferrolink `Store::add_rows` rows/s | plain SQLite rows/s | ÷ plain |");
    println!("|---|---|---|---|");
    let singles = 2_000;
    let started = Instant::now();
    for i in 0..singles {
        store.add_rows("bench", "single", &[reading(i)])?;
    }
    let ours = rate(singles, started.elapsed());
    let started = Instant::now();
    for i in 0..singles {
        raw_insert(rows + i, 1)?;
    }
    let floor = rate(singles, started.elapsed());
    let single_floor = floor;
    println!(
        "| one row per transaction ({singles} rows) | {ours:.0} | {floor:.0} | {:.2} |",
        ours / floor
    );
    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    for start in (0..rows).step_by(BATCH) {
        batch.clear();
        batch.extend((start..(start + BATCH).min(rows)).map(reading));
        store.add_rows("bench", "readings", &batch)?;
    }
    let ours = rate(rows, started.elapsed());
    let started = Instant::now();
    for start in (0..rows).step_by(BATCH) {
        raw_insert(start, BATCH.min(rows - start))?;
    }
    let floor = rate(rows, started.elapsed());
    println!(
        "| batches of {BATCH} ({rows} rows) | {ours:.0} | {floor:.0} | {:.2} |",
        ours / floor
    );

    println!("\n| chart query over {rows} rows | buckets | rows in range | median of 5 |");
    println!("|---|---|---|---|");
    let last = reading(rows - 1)["t"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let tenth = reading(rows / 10)["t"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for (label, to) in [
        ("the whole day so far", last.as_str()),
        ("its first tenth", tenth.as_str()),
    ] {
        let series = Series {
            table: "readings",
            time: "t",
            value: "celsius",
            from: "2026-12-02T00:00:00Z",
            to,
            buckets: 500,
        };
        let mut times = Vec::new();
        let mut counted = 0;
        for _ in 0..5 {
            let started = Instant::now();
            let buckets = store.downsample("bench", &series)?;
            times.push(started.elapsed());
            counted = buckets.iter().map(|b| b.count).sum::<u64>();
        }
        times.sort();
        println!(
            "| {label} | 500 | {counted} | {:.1} ms |",
            times[2].as_secs_f64() * 1000.0
        );
    }
    Ok(Floors {
        single: single_floor,
        batched: floor,
    })
}

/// A reading as the official client sends it to `add_row`: the values at
/// `["args", 1]`, the datetime as an object entry.
fn wire_row(i: usize, path: &[Value]) -> (Value, Value) {
    let r = reading(i);
    let t = r["t"].as_str().unwrap_or_default();
    // `2026-12-02T00:00:00.080Z` -> `2026-12-02 00:00:00.080000+0000`
    let t = format!("{} {}000+0000", &t[..10], &t[11..23]);
    let mut p = path.to_vec();
    p.push("t".into());
    (
        json!({"t": null, "celsius": r["celsius"], "device": r["device"]}),
        json!({"type": ["DateTime"], "path": p, "value": t}),
    )
}

/// Rows/s through uplink calls to the server at `url` (its `demo` app has
/// the table `readings`), against the plain-SQLite `floors`.
pub(crate) async fn uplink(url: &str, key: &str, floors: &Floors) -> Result<()> {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let mut ws = crate::connect(url, key).await?;
    let mut next = 0u64;
    let mut send = |ws_frames: &mut Vec<String>,
                    command: &str,
                    args: Value,
                    objects: Vec<Value>| {
        next += 1;
        ws_frames.push(
            json!({"type": "CALL", "id": format!("c{next}"), "command": format!("anvil.private.tables.v2.{command}"),
                   "args": args, "kwargs": {}, "objects": objects})
            .to_string(),
        );
    };
    // The table's capability.
    let mut frames = Vec::new();
    send(&mut frames, "get_app_tables", json!([]), vec![]);
    ws.send(Message::text(frames.remove(0))).await?;
    let reply: Value = match ws.next().await {
        Some(Ok(Message::Text(t))) => serde_json::from_str(&t)?,
        other => anyhow::bail!("no answer to get_app_tables: {other:?}"),
    };
    let mut cap = reply["objects"]
        .as_array()
        .and_then(|o| o.iter().find(|e| e["path"][1] == "readings"))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no readings table: {reply}"))?;
    cap["path"] = json!(["args", 0]);

    // Sends `frames` keeping at most `window` unanswered; answers the time.
    async fn pump(ws: &mut crate::Ws, frames: Vec<String>, window: usize) -> Result<Duration> {
        let started = Instant::now();
        let total = frames.len();
        let mut frames = frames.into_iter();
        let (mut sent, mut answered) = (0, 0);
        while answered < total {
            while sent < total && sent - answered < window {
                ws.feed(Message::text(frames.next().unwrap_or_default()))
                    .await?;
                sent += 1;
            }
            ws.flush().await?;
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    anyhow::ensure!(!t.contains("\"error\""), "a table call failed: {t}");
                    answered += 1;
                }
                Some(Ok(_)) => {}
                other => anyhow::bail!("connection lost: {other:?}"),
            }
        }
        Ok(started.elapsed())
    }

    println!(
        "\n| insert through uplink calls | rows | rows/s | ÷ plain SQLite (same transactions) |"
    );
    println!("|---|---|---|---|");
    let mut i = 0;
    for (label, calls, window) in [
        ("`add_row`, one call at a time", 2_000, 1),
        ("`add_row`, 64 calls in flight", 10_000, 64),
    ] {
        let mut frames = Vec::with_capacity(calls);
        for _ in 0..calls {
            let (row, t) = wire_row(i, &["args".into(), 1.into()]);
            i += 1;
            send(
                &mut frames,
                "table.add_row",
                json!([null, row, null, null]),
                vec![cap.clone(), t],
            );
        }
        let took = pump(&mut ws, frames, window).await?;
        let r = rate(calls, took);
        println!("| {label} | {calls} | {r:.0} | {:.2} |", r / floors.single);
    }
    let batches = 50;
    let mut frames = Vec::with_capacity(batches);
    for _ in 0..batches {
        let mut rows = Vec::with_capacity(BATCH);
        let mut objects = vec![cap.clone()];
        for j in 0..BATCH {
            let (row, t) = wire_row(i, &["args".into(), 1.into(), j.into()]);
            i += 1;
            rows.push(row);
            objects.push(t);
        }
        send(
            &mut frames,
            "table.add_rows",
            json!([null, rows, null, null]),
            objects,
        );
    }
    let took = pump(&mut ws, frames, 1).await?;
    let r = rate(batches * BATCH, took);
    println!(
        "| `add_rows`, {BATCH} rows per call, one call at a time | {} | {r:.0} | {:.2} |",
        batches * BATCH,
        r / floors.batched
    );
    Ok(())
}
