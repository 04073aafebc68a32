//! A reconnect storm (`--storm N`): N devices, each with a key of its own
//! and spread over 100 loopback source addresses, connected to server A of
//! a three-server cluster (one PostgreSQL database, started for the run,
//! and Debian's `nats-server`). A is killed with SIGKILL; each device
//! reconnects the way `ferrolink-client` does — full-jitter backoff,
//! 0–0.5 s doubling up to 30 s (`ferrolink_proto::backoff`) — to the next
//! server of its list (B or C, as a DNS name with several addresses gives).
//! Measured: the time until every device is authenticated again, its
//! spread, and every refusal. The servers run with their default limits
//! (1,000 connections per address, 100 per key).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::{start_server_plain, ws_config};

/// Source addresses the devices are spread over.
const ADDRESSES: usize = 100;
/// How long the storm may take before the run gives up.
const LIMIT: Duration = Duration::from_secs(180);

/// What the devices report.
#[derive(Default)]
struct Tally {
    /// Devices authenticated now.
    connected: AtomicUsize,
    /// Devices authenticated on each server (A, B, C).
    on: [AtomicUsize; 3],
    /// Connection attempts, and the refusals among them, by reason.
    attempts: AtomicUsize,
    refused: Mutex<std::collections::BTreeMap<String, usize>>,
    /// Per device: time from the kill until it was authenticated again.
    back: Mutex<Vec<Duration>>,
}

impl Tally {
    fn refuse(&self, why: String) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(why)
            .or_default() += 1;
    }
}

fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, 0, (i % ADDRESSES) as u8 + 1))
}

/// One attempt: TCP from `from`, the websocket handshake, the key.
async fn attempt(url: &str, from: IpAddr, key: &str) -> Result<crate::Ws, String> {
    let port: u16 = url
        .split("//")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|h| h.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .ok_or("bad url")?;
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(from, 0))
        .map_err(|e| format!("bind: {e}"))?;
    let tcp = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = tcp.set_nodelay(true);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        url,
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
        Some(ws_config()),
    )
    .await
    .map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => format!(
            "HTTP {}: {}",
            r.status(),
            String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).trim()
        ),
        e => format!("handshake: {e}"),
    })?;
    ws.send(Message::text(format!(r#"{{"key":"{key}","v":8}}"#)))
        .await
        .map_err(|e| format!("send: {e}"))?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("\"auth\":\"OK\"") => Ok(ws),
        Some(Ok(Message::Text(t))) => Err(format!("auth refused: {t}")),
        other => Err(format!("auth: {other:?}")),
    }
}

/// A device: connects to `servers[first]`, holds the connection until it
/// ends, then reconnects under the client's backoff to the other servers in
/// turn, starting at `then`.
async fn device(
    i: usize,
    key: String,
    servers: Arc<[String; 3]>,
    tally: Arc<Tally>,
    killed: Arc<Mutex<Option<Instant>>>,
) {
    let from = source(i);
    let mut rng = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut random = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng as u32
    };
    let mut backoff =
        ferrolink_proto::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    // Servers to try, in order: A first, then B and C alternately (half
    // the fleet starts with each).
    let order = if i.is_multiple_of(2) {
        [0, 1, 2]
    } else {
        [0, 2, 1]
    };
    let mut next = 0;
    let mut first = true;
    loop {
        if !first {
            tokio::time::sleep(backoff.next_delay(random())).await;
        }
        first = false;
        let server = order[next];
        tally.attempts.fetch_add(1, Ordering::Relaxed);
        match attempt(&servers[server], from, &key).await {
            Ok(mut ws) => {
                // Attempt 0 of the next sequence waits 0–0.5 s, as the
                // client's does.
                backoff.reset();
                if let Some(at) = *killed.lock().unwrap_or_else(|p| p.into_inner()) {
                    tally
                        .back
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(at.elapsed());
                }
                tally.connected.fetch_add(1, Ordering::Relaxed);
                tally.on[server].fetch_add(1, Ordering::Relaxed);
                // Held until it ends (the server dies).
                while let Some(Ok(_)) = ws.next().await {}
                tally.connected.fetch_sub(1, Ordering::Relaxed);
                tally.on[server].fetch_sub(1, Ordering::Relaxed);
                // The server it was on is gone: on to the next.
                next = (next + 1) % 3;
                if order[next] == 0 {
                    next = 1;
                }
            }
            Err(why) => {
                // A dead server refuses the TCP connection: not a refusal
                // for load, just the next address to try.
                if !why.starts_with("connect: ConnectionRefused") {
                    tally.refuse(why);
                }
                if server != 0 {
                    next = if next == 1 { 2 } else { 1 };
                }
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64()
}

async fn until(tally: &Tally, n: usize, what: &str) -> Result<Duration> {
    let start = Instant::now();
    while tally.connected.load(Ordering::Relaxed) < n {
        anyhow::ensure!(
            start.elapsed() < LIMIT,
            "{what}: only {} of {n} devices connected after {} s",
            tally.connected.load(Ordering::Relaxed),
            LIMIT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(start.elapsed())
}

pub(crate) async fn run(bin: &PathBuf, n: usize) -> Result<()> {
    let cluster = crate::cluster::Shared::start().await?;
    let shared = cluster.args();
    let mut a = start_server_plain(bin, &shared)?;
    let b = start_server_plain(bin, &shared)?;
    let c = start_server_plain(bin, &shared)?;
    println!("# ferrolink benchmark: a reconnect storm\n");
    println!(
        "machine: {} cores; three servers (default limits), PostgreSQL, nats-server and {n} devices on it\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let made = Instant::now();
    let keys: Vec<String> = tokio::task::spawn_blocking({
        let database = cluster.database().to_owned();
        move || -> Result<Vec<String>> {
            let dir = tempfile::tempdir()?;
            let store = ferrolink::storage::Store::open_database(dir.path(), Some(&database))?;
            (0..n)
                .map(|i| {
                    let (_, secret) = store.create_key(
                        "demo",
                        ferrolink_proto::message::Privilege::Server,
                        Some(&format!("pico-{i:05}")),
                    )?;
                    Ok(secret.expose().to_owned())
                })
                .collect()
        }
    })
    .await??;
    println!(
        "{n} device keys created in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    // Each server reloads its key list when the database changes.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let servers = Arc::new([a.url.clone(), b.url.clone(), c.url.clone()]);
    let tally = Arc::new(Tally::default());
    let killed = Arc::new(Mutex::new(None));
    let mut fleet = tokio::task::JoinSet::new();
    for (i, key) in keys.into_iter().enumerate() {
        fleet.spawn(device(
            i,
            key,
            servers.clone(),
            tally.clone(),
            killed.clone(),
        ));
    }
    let all_on_a = until(&tally, n, "connecting to A").await?;
    let attempts = tally.attempts.load(Ordering::Relaxed);
    let refused_first: usize = tally
        .refused
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .sum();
    println!(
        "\nall {n} devices connected to A at once: **{:.2} s** ({attempts} attempts, {refused_first} refused)",
        all_on_a.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The storm: A dies.
    a.child.kill().context("kill A")?;
    *killed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    let _ = a.child.wait();
    let all_back = until(&tally, n, "reconnecting to B and C").await?;
    let mut back = tally.back.lock().unwrap_or_else(|p| p.into_inner()).clone();
    back.sort();
    let attempts = tally.attempts.load(Ordering::Relaxed) - attempts;
    let refused = tally
        .refused
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let refused_after: usize = refused.values().sum::<usize>() - refused_first;
    println!(
        "\nA killed (SIGKILL) with {n} devices on it: all {n} authenticated again on B and C after **{:.2} s**",
        all_back.as_secs_f64()
    );
    println!(
        "\n| devices | all back s | p50 s | p90 s | p99 s | on B | on C | attempts | refused |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {n} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {attempts} | {refused_after} |",
        all_back.as_secs_f64(),
        percentile(&back, 0.5),
        percentile(&back, 0.9),
        percentile(&back, 0.99),
        tally.on[1].load(Ordering::Relaxed),
        tally.on[2].load(Ordering::Relaxed),
    );
    if !refused.is_empty() {
        println!("\nrefusals by reason:");
        for (why, count) in &refused {
            println!("- {count} × {why}");
        }
    }
    println!(
        "\nthe client's first backoff is 0–0.5 s: a device that is refused nothing is back within 0.5 s plus its handshake"
    );
    fleet.abort_all();
    drop((b, c, cluster));
    Ok(())
}
