//! ferrolink benchmarks. Run from the workspace root:
//!
//! ```text
//! cargo build --release -p ferrolink -p ferrolink-bench
//! target/release/ferrolink-bench
//! ```
//!
//! Starts `target/release/ferrolink serve` as a child process on a loopback
//! port, then measures, in one run and on the same machine:
//!
//! 1. a raw TCP echo round trip (the floor), at 1, 16 and 256 messages in flight;
//! 2. routed calls: a caller connection calls `echo` on a provider connection
//!    through the server, at 1, 16 and 256 calls in flight, with 64 B and
//!    4 KiB arguments (calls/s, p50, p99);
//! 3. server memory per idle authenticated uplink, from the server's RSS
//!    before and after opening N connections (default 10,000).
//!
//! With `--hostile` it measures the server under attack instead (see
//! `hostile.rs`); with `--tables` the data-table storage (`tables.rs`);
//! with `--cluster` calls between servers of a cluster (`cluster.rs`); with
//! `--storm` a reconnect storm after a server of a cluster dies
//! (`storm.rs`).
//!
//! The load generator runs on one thread of this process; the server runs
//! with its default runtime. Figures are printed as a Markdown report.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::MaybeTlsStream as MaybeTls;
use tokio_tungstenite::tungstenite::Message;

use ferrolink_proto::Message as Proto;
use ferrolink_proto::codec::{DecodeLimits, decode};
use ferrolink_proto::message::Outcome;

mod cluster;
mod hostile;
mod storm;
mod tables;

/// ferrolink benchmarks (see the crate docs for what is measured).
#[derive(Parser)]
struct Args {
    /// Seconds measured per configuration (after a warm-up of a fifth of it).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Runs per configuration; the report shows the median of each figure.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Idle uplink connections opened for the memory measurement.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Argument sizes in bytes (default: 64 and 4096).
    #[arg(long = "size", num_args = 1..)]
    sizes: Vec<usize>,
    /// Calls in flight (default: 1, 16 and 256).
    #[arg(long = "in-flight", num_args = 1..)]
    in_flight: Vec<usize>,
    /// Worker threads of the load generator (the caller loop runs on the
    /// main thread, the provider on a worker).
    #[arg(long, default_value_t = 1)]
    load_threads: usize,
    /// Skip the TLS handshake and memory measurements.
    #[arg(long)]
    no_tls: bool,
    /// Skip the ferrolink-client table.
    #[arg(long)]
    no_client: bool,
    /// Skip the raw TCP echo baseline.
    #[arg(long)]
    no_echo: bool,
    /// Skip the NATS request/reply baseline (it needs `nats-server` on the
    /// PATH: `apt-get install nats-server`).
    #[arg(long)]
    no_nats: bool,
    /// The server binary.
    #[arg(long, default_value = "target/release/ferrolink")]
    server: PathBuf,
    /// Measure the server under hostile load instead (a provider that stops
    /// reading, concurrent wrong passwords, wrong keys next to devices).
    #[arg(long)]
    hostile: bool,
    /// Measure calls routed between two servers of a cluster instead (one
    /// PostgreSQL database, started for the run, and Debian's
    /// nats-server): against one server and NATS request/reply alone.
    #[arg(long)]
    cluster: bool,
    /// Measure the data-table storage instead (inserts against plain
    /// SQLite, chart queries), with this many rows.
    #[arg(long, value_name = "ROWS", num_args = 0..=1, default_missing_value = "1000000")]
    tables: Option<usize>,
    /// Measure a reconnect storm instead: this many devices (each with a
    /// key of its own) on one server of a three-server cluster, that
    /// server killed, the time until all are back on the other two.
    #[arg(long, value_name = "DEVICES", num_args = 0..=1, default_missing_value = "10000")]
    storm: Option<usize>,
}

const IN_FLIGHT: [usize; 3] = [1, 16, 256];
const SIZES: [usize; 2] = [64, 4096];

struct Server {
    child: Child,
    url: String,
    server_key: String,
    client_key: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(bin: &PathBuf) -> Result<Server> {
    start_server_with(bin, &[])
}

fn start_server_with(bin: &PathBuf, extra: &[&str]) -> Result<Server> {
    let pending: &[&str] = if extra.contains(&"--max-pending-calls") {
        &[]
    } else {
        &["--max-pending-calls", "4096"]
    };
    let mut args = vec![
        // The idle-memory measurement opens 10,000 uplinks with one key
        // from one address.
        "--max-connections-per-address",
        "100000",
        "--max-connections-per-key",
        "100000",
    ];
    args.extend_from_slice(pending);
    args.extend_from_slice(extra);
    start_server_plain(bin, &args)
}

/// `ferrolink serve` on a loopback port with the dashboard off and `extra`
/// arguments (the default limits otherwise).
fn start_server_plain(bin: &PathBuf, extra: &[&str]) -> Result<Server> {
    use std::io::{BufRead as _, BufReader};
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(bin)
        .arg("--data")
        .arg(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (build it with cargo build --release)",
                bin.display()
            )
        })?;
    let stdout = child.stdout.take().context("stdout")?;
    let (mut url, mut sk, mut ck) = (None, None, None);
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line?;
        if let Some(v) = line.strip_prefix("server key: ") {
            sk = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("client key: ") {
            ck = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("uplink: ") {
            url = Some(v.to_owned());
            break;
        }
    }
    // Keep reading what the server prints later, so its stdout stays open.
    std::thread::spawn(move || lines.for_each(drop));
    Ok(Server {
        child,
        url: url.context("no uplink line")?,
        // A server on a database another one created prints no keys.
        server_key: sk.unwrap_or_default(),
        client_key: ck.unwrap_or_default(),
        _dir: dir,
    })
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

#[derive(Clone)]
struct Figures {
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU time of the routing side per call (NaN where not measured).
    cpu_us: f64,
}

/// Median of each figure separately.
fn median(runs: &[Figures]) -> Figures {
    let pick = |f: fn(&Figures) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    Figures {
        per_sec: pick(|f| f.per_sec),
        p50_us: pick(|f| f.p50_us),
        p99_us: pick(|f| f.p99_us),
        cpu_us: pick(|f| f.cpu_us),
    }
}

fn figures(count: u64, elapsed: Duration, h: &Histogram<u64>) -> Figures {
    Figures {
        per_sec: count as f64 / elapsed.as_secs_f64(),
        p50_us: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: h.value_at_quantile(0.99) as f64 / 1000.0,
        cpu_us: f64::NAN,
    }
}

/// Raw TCP echo: fixed-size messages, echoed byte for byte, `in_flight` at once.
async fn tcp_echo(size: usize, in_flight: usize, secs: f64) -> Result<Figures> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // The echo server runs on its own thread, as the ferrolink server runs in
    // its own process.
    let echo = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener.into_std()?)?;
            let (mut s, _) = listener.accept().await?;
            s.set_nodelay(true)?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                s.write_all(&buf[..n]).await?;
            }
        })
    });
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let msg = vec![b'x'; size];
    let mut sent: VecDeque<Instant> = VecDeque::new();
    let mut h = Histogram::<u64>::new(3)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending_bytes = 0usize;
    let warmup = Duration::from_secs_f64(secs / 5.0);
    let start = Instant::now();
    let mut measure_from = None;
    let mut count = 0u64;
    for _ in 0..in_flight {
        wr.write_all(&msg).await?;
        sent.push_back(Instant::now());
    }
    loop {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            bail!("echo server closed");
        }
        pending_bytes += n;
        let mut done = 0;
        while pending_bytes >= size {
            pending_bytes -= size;
            let t = sent.pop_front().context("reply without request")?;
            let now = Instant::now();
            if measure_from.is_some() {
                h.record(now.duration_since(t).as_nanos() as u64)?;
                count += 1;
            }
            done += 1;
        }
        let now = Instant::now();
        if measure_from.is_none() && now.duration_since(start) >= warmup {
            measure_from = Some(now);
        }
        if let Some(from) = measure_from
            && now.duration_since(from).as_secs_f64() >= secs
        {
            drop(wr);
            let _ = echo.join();
            return Ok(figures(count, now.duration_since(from), &h));
        }
        let batch: Vec<u8> = msg.repeat(done);
        wr.write_all(&batch).await?;
        let t = Instant::now();
        for _ in 0..done {
            sent.push_back(t);
        }
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// tungstenite zero-fills the free part of its read buffer before each read,
/// so its 128 KiB default costs a large memset per read; every websocket in
/// this benchmark (load generator and minimal forwarder) uses 16 KiB.
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(16 * 1024)
}

async fn connect(url: &str, key: &str) -> Result<Ws> {
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true).await?;
    ws.send(Message::text(format!(r#"{{"key":"{key}","v":8}}"#)))
        .await?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("\"auth\":\"OK\"") => {
            if let MaybeTls::Plain(tcp) = ws.get_ref() {
                tcp.set_nodelay(true)?;
            }
            Ok(ws)
        }
        other => bail!("authentication failed: {other:?}"),
    }
}

/// A provider that answers every `echo` call with its first argument.
async fn provide(mut ws: Ws) -> Result<()> {
    let limits = DecodeLimits::default();
    loop {
        let Some(msg) = ws.next().await else {
            return Ok(());
        };
        let handle = |msg: Message| -> Result<Option<String>> {
            let Message::Text(text) = msg else {
                return Ok(None);
            };
            let Ok(Proto::Call(call)) = decode(&text, &limits) else {
                return Ok(None);
            };
            let args: Vec<&serde_json::value::RawValue> = serde_json::from_str(call.args.get())?;
            let first = args.first().map_or("null", |a| a.get());
            let mut out = String::with_capacity(first.len() + 40);
            ferrolink_proto::encode::reply_response(&mut out, call.id.literal(), first, None);
            Ok(Some(out))
        };
        if let Some(reply) = handle(msg?)? {
            ws.feed(Message::text(reply)).await?;
        }
        while let Some(Some(msg)) = ws.next().now_or_never() {
            if let Some(reply) = handle(msg?)? {
                ws.feed(Message::text(reply)).await?;
            }
        }
        ws.flush().await?;
    }
}

/// Where routed calls go: the ferrolink server, or the minimal forwarder.
struct Endpoint {
    /// Where the caller connects.
    url: String,
    /// Where the provider connects (another server of a cluster), if not
    /// `url`.
    provider_url: Option<String>,
    server_key: String,
    client_key: String,
    /// Where the routing side's CPU time is read.
    cpu: Cpu,
}

/// CPU time of the routing side of a measurement, from `/proc`.
#[derive(Clone, Copy)]
enum Cpu {
    /// A whole process (the ferrolink server).
    Process(u32),
    /// Two whole processes (two servers of a cluster).
    Processes(u32, u32),
    /// The threads of this process whose name starts with `forwarder`.
    ForwarderThreads,
}

/// User + system CPU seconds used so far.
fn cpu_seconds(cpu: Cpu) -> Result<f64> {
    // Fields 14 and 15 of /proc/.../stat are utime and stime in clock ticks
    // (100 per second on Linux); the name in field 2 may hold spaces, so
    // count from the closing parenthesis.
    fn ticks(stat: &str) -> Result<u64> {
        let rest = &stat[stat.rfind(')').context("stat format")? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
    }
    let total = match cpu {
        Cpu::Process(pid) => ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)?,
        Cpu::Processes(a, b) => {
            ticks(&std::fs::read_to_string(format!("/proc/{a}/stat"))?)?
                + ticks(&std::fs::read_to_string(format!("/proc/{b}/stat"))?)?
        }
        Cpu::ForwarderThreads => {
            let mut sum = 0;
            for task in std::fs::read_dir("/proc/self/task")? {
                let path = task?.path();
                let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
                if comm.starts_with("forwarder") {
                    sum += ticks(&std::fs::read_to_string(path.join("stat"))?)?;
                }
            }
            sum
        }
    };
    Ok(total as f64 / 100.0)
}

/// The floor for this load shape: a minimal tokio-tungstenite forwarder on
/// its own runtime that answers the key message, then copies caller frames
/// to the provider and provider frames to the caller verbatim (no parsing,
/// no routing table, no deadlines).
async fn minimal_forwarder() -> Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("ws://{}/", listener.local_addr()?);
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("forwarder-main".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("forwarder")
                .enable_all()
                .build()
                .expect("forwarder runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("listener");
                loop {
                    // Each measurement opens a provider, then a caller.
                    let Ok(provider) = accept_one(&listener, true).await else {
                        return;
                    };
                    let Ok(caller) = accept_one(&listener, false).await else {
                        return;
                    };
                    let (p_tx, p_rx) = provider.split();
                    let (c_tx, c_rx) = caller.split();
                    tokio::spawn(pump(c_rx, p_tx));
                    tokio::spawn(pump(p_rx, c_tx));
                }
            });
        })?;
    Ok(url)
}

async fn accept_one(listener: &TcpListener, provider: bool) -> Result<Ws> {
    let (tcp, _) = listener.accept().await?;
    tcp.set_nodelay(true)?;
    let mut ws = tokio_tungstenite::accept_async_with_config(
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
        Some(ws_config()),
    )
    .await?;
    ws.next().await.context("no key")??;
    ws.send(Message::text(r#"{"auth":"OK"}"#)).await?;
    if provider {
        ws.next().await.context("no REGISTER")??;
    }
    Ok(ws)
}

async fn pump(
    mut from: futures_util::stream::SplitStream<Ws>,
    mut to: futures_util::stream::SplitSink<Ws, Message>,
) -> Result<()> {
    while let Some(msg) = from.next().await {
        to.feed(msg?).await?;
        while let Some(Some(msg)) = from.next().now_or_never() {
            to.feed(msg?).await?;
        }
        to.flush().await?;
    }
    Ok(())
}

/// Calls `echo` with a `size`-byte string, keeping `in_flight` calls open.
async fn routed(server: &Endpoint, size: usize, in_flight: usize, secs: f64) -> Result<Figures> {
    let provider_url = server.provider_url.as_deref().unwrap_or(&server.url);
    let mut provider = connect(provider_url, &server.server_key).await?;
    provider
        .send(Message::text(r#"{"type":"REGISTER","name":"echo"}"#))
        .await?;
    let provider = tokio::spawn(provide(provider));
    let mut caller = connect(&server.url, &server.client_key).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let payload = "x".repeat(size);
    let call = |id: u64| {
        format!(
            r#"{{"type":"CALL","id":"{id}","command":"echo","args":["{payload}"],"kwargs":{{}}}}"#
        )
    };
    let slots = (in_flight * 4).next_power_of_two();
    let mut sent_at = vec![Instant::now(); slots];
    let mut next_id = 0u64;
    for _ in 0..in_flight {
        sent_at[next_id as usize % slots] = Instant::now();
        caller.feed(Message::text(call(next_id))).await?;
        next_id += 1;
    }
    caller.flush().await?;
    let limits = DecodeLimits::default();
    let mut h = Histogram::<u64>::new(3)?;
    let warmup = Duration::from_secs_f64(secs / 5.0);
    let start = Instant::now();
    let mut measure_from: Option<Instant> = None;
    let mut cpu_from = 0.0;
    let mut count = 0u64;
    loop {
        let mut done = 0;
        let mut msg = caller.next().await.context("server closed")??;
        loop {
            if let Message::Text(text) = &msg {
                match decode(text, &limits) {
                    Ok(Proto::Reply(r)) => {
                        if let Outcome::Error(e) = r.outcome {
                            bail!("call failed: {}", e.get());
                        }
                        let id: u64 = r.id.value().parse()?;
                        if measure_from.is_some() {
                            let t = sent_at[id as usize % slots];
                            h.record(t.elapsed().as_nanos() as u64)?;
                            count += 1;
                        }
                        done += 1;
                    }
                    other => bail!("unexpected frame: {other:?}"),
                }
            }
            match caller.next().now_or_never() {
                Some(Some(m)) => msg = m?,
                _ => break,
            }
        }
        let now = Instant::now();
        if measure_from.is_none() && now.duration_since(start) >= warmup {
            measure_from = Some(now);
            cpu_from = cpu_seconds(server.cpu)?;
        }
        if let Some(from) = measure_from
            && now.duration_since(from).as_secs_f64() >= secs
        {
            let mut result = figures(count, now.duration_since(from), &h);
            result.cpu_us = (cpu_seconds(server.cpu)? - cpu_from) * 1e6 / count as f64;
            drop(caller);
            provider.abort();
            return Ok(result);
        }
        for _ in 0..done {
            sent_at[next_id as usize % slots] = Instant::now();
            caller.feed(Message::text(call(next_id))).await?;
            next_id += 1;
        }
        caller.flush().await?;
    }
}

/// The same measurement with `ferrolink-client` on both ends: the provider
/// registers `echo`, the caller keeps `in_flight` calls open from as many
/// tasks.
async fn routed_rust_client(
    server: &Endpoint,
    size: usize,
    in_flight: usize,
    secs: f64,
) -> Result<Figures> {
    use ferrolink_client::{Client, HandlerError};
    let provider = Client::builder(&server.url, &server.server_key)
        .register(
            "echo",
            |(s,): (String,)| async move { Ok::<_, HandlerError>(s) },
        )
        .connect()
        .await?;
    let caller = Client::builder(&server.url, &server.client_key)
        .connect()
        .await?;
    let payload = "x".repeat(size);
    let warmup = Duration::from_secs_f64(secs / 5.0);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + Duration::from_secs_f64(secs);
    let workers = (0..in_flight).map(|_| {
        let caller = caller.clone();
        let payload = payload.clone();
        tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            loop {
                let t = Instant::now();
                if t >= end {
                    return Ok::<_, anyhow::Error>(h);
                }
                let back: String = caller.call("echo", (&payload,)).await?;
                anyhow::ensure!(back.len() == payload.len(), "echo changed the payload");
                if t >= measure_from {
                    h.record(t.elapsed().as_nanos() as u64)?;
                }
            }
        })
    });
    let mut total = Histogram::<u64>::new(3)?;
    for w in futures_util::future::join_all(workers).await {
        total.add(w??)?;
    }
    caller.disconnect().await;
    provider.disconnect().await;
    Ok(figures(total.len(), Duration::from_secs_f64(secs), &total))
}

/// Connect + TLS (when `tls` is given) + websocket upgrade + key + auth
/// reply, then close; `workers` at once, for `secs`. Returns completed
/// authentications per second.
async fn handshakes(
    server: &Server,
    tls: Option<Arc<rustls::ClientConfig>>,
    workers: usize,
    secs: f64,
) -> Result<f64> {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let tasks = (0..workers).map(|_| {
        let tls = tls.clone();
        let url = server.url.clone();
        let key = server.client_key.clone();
        tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < end {
                let ws = open_uplink(&url, &key, tls.clone()).await?;
                drop(ws);
                done += 1;
            }
            Ok::<_, anyhow::Error>(done)
        })
    });
    let mut total = 0;
    for t in futures_util::future::join_all(tasks).await {
        total += t??;
    }
    Ok(total as f64 / secs)
}

/// A client TLS setup trusting the server's development CA.
fn dev_ca_config(server: &Server) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    let pem = std::fs::read(server._dir.path().join("tls/dev-ca.pem"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// An authenticated uplink over plain TCP or TLS.
async fn open_uplink(
    url: &str,
    key: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<tokio_tungstenite::WebSocketStream<Box<dyn Io>>> {
    let hostport = url
        .split("//")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .context("url")?;
    let port: u16 = hostport.rsplit(':').next().context("port")?.parse()?;
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let io: Box<dyn Io> = match tls {
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            Box::new(
                tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?,
            )
        }
        None => Box::new(tcp),
    };
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, io, Some(ws_config())).await?;
    ws.send(Message::text(format!(r#"{{"key":"{key}","v":8}}"#)))
        .await?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("\"auth\":\"OK\"") => Ok(ws),
        other => bail!("authentication failed: {other:?}"),
    }
}

/// Debian's `nats-server` on a loopback port, as a child process.
pub(crate) struct Nats {
    child: Child,
    url: String,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) async fn start_nats() -> Result<Nats> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start nats-server (apt-get install nats-server, or pass --no-nats)")?;
    let nats = Nats {
        child,
        url: format!("nats://127.0.0.1:{port}"),
    };
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(nats);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nats-server did not listen on port {port}")
}

/// NATS request/reply with `async-nats`: a responder subscribed to `echo`
/// publishes each request's payload to its reply subject; the requester
/// keeps `in_flight` requests open. The payload is the `size` bytes alone
/// (NATS carries no JSON envelope).
async fn nats_routed(nats: &Nats, size: usize, in_flight: usize, secs: f64) -> Result<Figures> {
    let responder = async_nats::connect(&nats.url).await?;
    let mut requests = responder.subscribe("echo").await?;
    responder.flush().await?;
    let answer = responder.clone();
    let serving = tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            if let Some(reply) = m.reply {
                answer.publish(reply, m.payload).await?;
            }
        }
        anyhow::Ok(())
    });
    let caller = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(10)))
        .connect(&nats.url)
        .await?;
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let request = || {
        let (caller, payload) = (caller.clone(), payload.clone());
        async move {
            let t = Instant::now();
            caller.request("echo", payload).await.map(|_| t)
        }
    };
    let mut open = futures_util::stream::FuturesUnordered::new();
    for _ in 0..in_flight {
        open.push(request());
    }
    let cpu = Cpu::Process(nats.child.id());
    let mut h = Histogram::<u64>::new(3)?;
    let warmup = Duration::from_secs_f64(secs / 5.0);
    let start = Instant::now();
    let (mut measure_from, mut cpu_from, mut count) = (None::<Instant>, 0.0, 0u64);
    while let Some(done) = open.next().await {
        let sent = done?;
        let now = Instant::now();
        if measure_from.is_some() {
            h.record(now.duration_since(sent).as_nanos() as u64)?;
            count += 1;
        } else if now.duration_since(start) >= warmup {
            measure_from = Some(now);
            cpu_from = cpu_seconds(cpu)?;
        }
        if let Some(from) = measure_from
            && now.duration_since(from).as_secs_f64() >= secs
        {
            let mut result = figures(count, now.duration_since(from), &h);
            result.cpu_us = (cpu_seconds(cpu)? - cpu_from) * 1e6 / count as f64;
            serving.abort();
            return Ok(result);
        }
        open.push(request());
    }
    bail!("NATS requests stopped")
}

/// Server memory per idle authenticated uplink: RSS growth after opening
/// `n` connections (over TLS when `tls` is given), divided by `n`.
async fn idle_memory(
    server: &Server,
    n: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(f64, u64, u64)> {
    let pid = server.child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
    let mut conns = Vec::with_capacity(n);
    let mut tasks = futures_util::stream::iter(0..n)
        .map(|_| open_uplink(&server.url, &server.client_key, tls.clone()))
        .buffer_unordered(64);
    while let Some(c) = tasks.next().await {
        conns.push(c?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    drop(conns);
    Ok((
        (after.saturating_sub(before)) as f64 * 1024.0 / n as f64,
        before,
        after,
    ))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.load_threads)
        .enable_all()
        .build()?;
    if let Some(rows) = args.tables {
        let floors = tables::run(rows.max(1000))?;
        let server = start_server(&args.server)?;
        let made = Command::new(&args.server)
            .arg("--data")
            .arg(server._dir.path())
            .args(["table", "create", "--app", "demo", "readings"])
            .args([
                "--column",
                "t:datetime",
                "--column",
                "celsius:number",
                "--column",
                "device:text",
            ])
            .output()?;
        anyhow::ensure!(
            made.status.success(),
            "table create: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        return rt.block_on(tables::uplink(&server.url, &server.server_key, &floors));
    }
    rt.block_on(async move {
        if args.hostile {
            return hostile::run(&args.server).await;
        }
        if args.cluster {
            return cluster::run(&args).await;
        }
        if let Some(devices) = args.storm {
            return storm::run(&args.server, devices).await;
        }
        let server = start_server(&args.server)?;
        println!("# ferrolink benchmark\n");
        println!(
            "machine: {} cores; load generator: {} worker thread(s) + main thread; server: `{}` (separate process); {} s per run, median of {} runs\n",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            args.load_threads,
            args.server.display(),
            args.seconds,
            args.repeat.max(1)
        );
        let ferrolink = Endpoint {
            url: server.url.clone(),
            provider_url: None,
            server_key: server.server_key.clone(),
            client_key: server.client_key.clone(),
            cpu: Cpu::Process(server.child.id()),
        };
        let forwarder = Endpoint {
            url: minimal_forwarder().await?,
            provider_url: None,
            server_key: "provider".into(),
            client_key: "caller".into(),
            cpu: Cpu::ForwarderThreads,
        };
        let nats = if args.no_nats { None } else { Some(start_nats().await?) };
        println!("| arg size | in flight | TCP echo /s | echo p50 µs | minimal forwarder /s | fwd p50 µs | NATS req/reply /s | NATS p50 µs | ferrolink calls/s | p50 µs | p99 µs | calls/s ÷ forwarder | calls/s ÷ NATS | p50 ÷ fwd p50 | CPU µs/call: fwd | NATS | ferrolink |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        let sizes = if args.sizes.is_empty() { SIZES.to_vec() } else { args.sizes.clone() };
        let in_flight = if args.in_flight.is_empty() { IN_FLIGHT.to_vec() } else { args.in_flight.clone() };
        for &size in &sizes {
            for &n in &in_flight {
                let (mut echos, mut fwds, mut natss, mut calls) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                // Interleaved, so slow phases of a noisy machine hit all of them.
                for _ in 0..args.repeat.max(1) {
                    if !args.no_echo {
                        echos.push(tcp_echo(size, n, args.seconds).await?);
                    }
                    fwds.push(routed(&forwarder, size, n, args.seconds).await?);
                    if let Some(nats) = &nats {
                        natss.push(nats_routed(nats, size, n, args.seconds).await?);
                    }
                    calls.push(routed(&ferrolink, size, n, args.seconds).await?);
                }
                let (echo, fwd, nats, call) = (median(&echos), median(&fwds), median(&natss), median(&calls));
                println!(
                    "| {size} B | {n} | {:.0} | {:.1} | {:.0} | {:.1} | {:.0} | {:.1} | {:.0} | {:.1} | {:.1} | **{:.2}** | **{:.2}** | {:.2} | {:.2} | {:.2} | {:.2} |",
                    echo.per_sec,
                    echo.p50_us,
                    fwd.per_sec,
                    fwd.p50_us,
                    nats.per_sec,
                    nats.p50_us,
                    call.per_sec,
                    call.p50_us,
                    call.p99_us,
                    call.per_sec / fwd.per_sec,
                    call.per_sec / nats.per_sec,
                    call.p50_us / fwd.p50_us,
                    fwd.cpu_us,
                    nats.cpu_us,
                    call.cpu_us,
                );
            }
        }
        if !args.no_client {
            println!("\n## ferrolink-client as caller and provider\n");
            println!("| arg size | in flight | raw load generator calls/s | ferrolink-client calls/s | p50 µs | p99 µs | client ÷ raw |");
            println!("|---|---|---|---|---|---|---|");
            for &size in &sizes {
                for &n in &in_flight {
                    let (mut raws, mut clients) = (Vec::new(), Vec::new());
                    for _ in 0..args.repeat.max(1) {
                        raws.push(routed(&ferrolink, size, n, args.seconds).await?);
                        clients.push(routed_rust_client(&ferrolink, size, n, args.seconds).await?);
                    }
                    let raw = median(&raws);
                    let client = median(&clients);
                    println!(
                        "| {size} B | {n} | {:.0} | {:.0} | {:.1} | {:.1} | {:.2} |",
                        raw.per_sec,
                        client.per_sec,
                        client.p50_us,
                        client.p99_us,
                        client.per_sec / raw.per_sec
                    );
                }
            }
        }
        if !args.no_tls {
            let tls_server = start_server_with(&args.server, &["--dev-tls"])?;
            let config = dev_ca_config(&tls_server)?;
            println!("\n## Connections: TCP + (TLS +) websocket upgrade + key + auth reply, then close\n");
            println!("| transport | concurrent clients | authenticated connections/s | ÷ plain |");
            println!("|---|---|---|---|");
            for workers in [1, 16] {
                let (mut plain, mut tls) = (Vec::new(), Vec::new());
                for _ in 0..args.repeat.max(1) {
                    plain.push(handshakes(&server, None, workers, args.seconds).await?);
                    tls.push(handshakes(&tls_server, Some(config.clone()), workers, args.seconds).await?);
                }
                plain.sort_by(f64::total_cmp);
                tls.sort_by(f64::total_cmp);
                let (p, t) = (plain[plain.len() / 2], tls[tls.len() / 2]);
                println!("| plain ws | {workers} | {p:.0} | 1.00 |");
                println!("| TLS 1.3 (ECDSA P-256, ring) | {workers} | {t:.0} | {:.2} |", t / p);
            }
            drop(tls_server);
            if args.idle_connections > 0 {
                // A fresh process: a server that just ran load holds freed
                // memory that new connections reuse, which would flatter the
                // figure.
                let fresh = start_server_with(&args.server, &["--dev-tls"])?;
                let config = dev_ca_config(&fresh)?;
                let (per_conn, before, after) = idle_memory(&fresh, args.idle_connections, Some(config)).await?;
                println!(
                    "\nidle TLS uplinks: {} authenticated connections; server RSS {} KiB -> {} KiB; **{:.0} bytes per idle TLS uplink** ({:.2} KiB)",
                    args.idle_connections,
                    before,
                    after,
                    per_conn,
                    per_conn / 1024.0
                );
            }
        }
        drop(server);
        if args.idle_connections > 0 {
            let fresh = start_server(&args.server)?;
            let (per_conn, before, after) = idle_memory(&fresh, args.idle_connections, None).await?;
            println!(
                "\nidle uplinks: {} authenticated connections; server RSS {} KiB -> {} KiB; **{:.0} bytes per idle uplink** ({:.2} KiB)",
                args.idle_connections,
                before,
                after,
                per_conn,
                per_conn / 1024.0
            );
        }
        Ok(())
    })
}
