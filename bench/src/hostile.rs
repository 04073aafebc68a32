//! `ferrolink-bench --hostile`: the server under attack, measured on a
//! release build in its own process (so its memory is its own). Each
//! scenario starts a fresh server; figures are printed as Markdown.
//!
//! 1. A provider that stops reading while 10,000 calls for it are sent:
//!    when each caller is answered, relative to its deadline, and the
//!    server's peak memory.
//! 2. 1,000 concurrent wrong-password logins — against one account from one
//!    address, and against 1,000 unknown accounts from 1,000 addresses —
//!    while a user logs in correctly from elsewhere: what the guesses got,
//!    how long the correct login took, the server's peak memory.
//! 3. Wrong keys at 100/s from one address while 100 devices behind the
//!    same address reconnect with their correct keys.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::{Server, connect, rss_kib, start_server_with};

/// Peak resident memory of a process so far (`VmHWM`), in KiB.
fn peak_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmHWM")
}

/// The server's `host:port` from its uplink URL.
fn address(server: &Server) -> Result<SocketAddr> {
    let rest = server
        .url
        .strip_prefix("ws://")
        .context("a plain ws server")?;
    Ok(rest.split('/').next().unwrap_or(rest).parse()?)
}

/// Runs every scenario and prints the report.
pub(crate) async fn run(bin: &Path) -> Result<()> {
    println!("# ferrolink under hostile load\n");
    println!(
        "machine: {} cores; server: `{}` (separate process, fresh for each scenario)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        bin.display()
    );
    stalled_provider(bin).await?;
    wrong_passwords(bin).await?;
    wrong_keys(bin).await?;
    Ok(())
}

async fn stalled_provider(bin: &Path) -> Result<()> {
    const CALLS: usize = 10_000;
    const TIMEOUT: Duration = Duration::from_secs(5);
    let server = start_server_with(
        &bin.to_path_buf(),
        &["--call-timeout-ms", "5000", "--max-pending-calls", "16384"],
    )?;
    let pid = server.child.id();
    let mut provider = connect(&server.url, &server.server_key).await?;
    provider
        .send(Message::text(r#"{"type":"REGISTER","name":"stuck"}"#))
        .await?;
    let mut caller = connect(&server.url, &server.client_key).await?;
    // The registration is in once a call for it is routed; the provider
    // then never reads again (a device that lost its Wi-Fi without closing).
    caller
        .send(Message::text(
            r#"{"type":"CALL","id":"probe","command":"stuck","args":[],"kwargs":{}}"#,
        ))
        .await?;
    match tokio::time::timeout(Duration::from_secs(5), provider.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.contains(r#""command":"stuck""#) => {}
        other => bail!("the provider did not get the probe call: {other:?}"),
    }
    let rss_before = rss_kib(pid)?;
    let arg = "x".repeat(1024);
    let mut sent = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        caller
            .feed(Message::text(format!(
                r#"{{"type":"CALL","id":"c{i}","command":"stuck","args":["{arg}"],"kwargs":{{}}}}"#
            )))
            .await?;
        sent.push(Instant::now());
    }
    caller.flush().await?;
    let (mut early, mut late) = (Duration::MAX, Duration::ZERO);
    let mut outcomes = BTreeMap::<String, usize>::new();
    let mut answered = 0;
    let mut probe_answered = false;
    let give_up = Instant::now() + TIMEOUT + Duration::from_secs(30);
    while answered < CALLS {
        let left = give_up.saturating_duration_since(Instant::now());
        let Ok(Some(msg)) = tokio::time::timeout(left, caller.next()).await else {
            break;
        };
        let Message::Text(text) = msg? else { continue };
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let Some(id) = v["id"].as_str() else { continue };
        if id == "probe" {
            probe_answered = true;
            continue;
        }
        let i: usize = id.trim_start_matches('c').parse()?;
        let took = sent[i].elapsed();
        early = early.min(took);
        late = late.max(took);
        let kind = v["error"]["type"]
            .as_str()
            .unwrap_or("a response")
            .to_owned();
        *outcomes.entry(kind).or_default() += 1;
        answered += 1;
    }
    let peak = peak_kib(pid)?;
    let rss_after = rss_kib(pid)?;
    println!("## A provider that stops reading\n");
    println!(
        "{CALLS} calls of 1 KiB for a provider that registered and then never read again; call deadline {} s.\n",
        TIMEOUT.as_secs()
    );
    println!("| figure | value |\n|---|---|");
    println!("| calls answered | {answered} of {CALLS} |");
    for (kind, n) in &outcomes {
        println!("| answered with `{kind}` | {n} |");
    }
    println!(
        "| earliest answer after its send (deadline {} s) | {:.2} s |",
        TIMEOUT.as_secs(),
        early.as_secs_f64()
    );
    println!(
        "| latest answer after its send | {:.2} s |",
        late.as_secs_f64()
    );
    println!("| server RSS before / peak / after | {rss_before} / {peak} / {rss_after} KiB |");
    println!(
        "| the probe call (taken, never answered) timed out too | {} |\n",
        if probe_answered { "yes" } else { "no" }
    );
    drop(provider);
    Ok(())
}

/// One HTTP/1.1 POST from `from`, answered with its status.
async fn post_from(from: IpAddr, to: SocketAddr, path: &str, body: &str) -> Result<u16> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let mut tcp = socket.connect(to).await?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {to}\r\nOrigin: http://{to}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await?;
    let head = String::from_utf8_lossy(&answer[..answer.len().min(16)]).into_owned();
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status in {head:?}"))
}

fn login(email: &str, password: &str) -> String {
    format!(r#"{{"email":"{email}","password":"{password}"}}"#)
}

async fn wrong_passwords(bin: &Path) -> Result<()> {
    const GUESSES: u32 = 1000;
    println!("## 1,000 concurrent wrong passwords\n");
    println!(
        "All 1,000 sent at once, then (200 ms later) a correct login to another account from another address. Argon2id costs 19 MiB and tens of milliseconds per hash.\n"
    );
    println!(
        "| attack | guesses answered 401 (hashed) / 429 (throttled) / 503 (hash gate full) / other | correct login: status, time | server RSS before / peak KiB |"
    );
    println!("|---|---|---|---|");
    for spread in [false, true] {
        let server = start_server_with(&bin.to_path_buf(), &[])?;
        let pid = server.child.id();
        let to = address(&server)?;
        let bob = IpAddr::from([127, 0, 0, 9]);
        let status = post_from(
            bob,
            to,
            "/_/auth/signup?app=demo",
            &login("bob@example.com", "correct horse battery"),
        )
        .await?;
        if status != 200 {
            bail!("sign-up failed with {status}");
        }
        if !spread {
            let ada = IpAddr::from([127, 0, 0, 8]);
            post_from(
                ada,
                to,
                "/_/auth/signup?app=demo",
                &login("ada@example.com", "correct horse battery"),
            )
            .await?;
        }
        let rss_before = rss_kib(pid)?;
        let mut guesses = Vec::new();
        for i in 0..GUESSES {
            let (from, email) = if spread {
                // 1,000 addresses, 1,000 accounts that do not exist (which
                // cost a hash like a wrong password does).
                (
                    IpAddr::from([127, 1, (i / 250) as u8, (i % 250 + 1) as u8]),
                    format!("nobody{i}@example.com"),
                )
            } else {
                (IpAddr::from([127, 0, 0, 6]), "ada@example.com".to_owned())
            };
            guesses.push(tokio::spawn(async move {
                post_from(
                    from,
                    to,
                    "/_/auth/login?app=demo",
                    &login(&email, &format!("guess number {i}")),
                )
                .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let ok = post_from(
            IpAddr::from([127, 0, 0, 7]),
            to,
            "/_/auth/login?app=demo",
            &login("bob@example.com", "correct horse battery"),
        )
        .await?;
        let took = started.elapsed();
        let mut statuses = BTreeMap::<u16, usize>::new();
        for g in guesses {
            *statuses.entry(g.await?.unwrap_or(0)).or_default() += 1;
        }
        let peak = peak_kib(pid)?;
        let count = |s: u16| statuses.get(&s).copied().unwrap_or(0);
        let other = GUESSES as usize - count(401) - count(429) - count(503);
        println!(
            "| {} | {} / {} / {} / {} | {ok}, {:.0} ms | {rss_before} / {peak} |",
            if spread {
                "1,000 unknown accounts from 1,000 addresses"
            } else {
                "one account, from one address"
            },
            count(401),
            count(429),
            count(503),
            other,
            took.as_secs_f64() * 1000.0
        );
    }
    println!();
    Ok(())
}

async fn wrong_keys(bin: &Path) -> Result<()> {
    const DEVICES: usize = 100;
    let server = start_server_with(&bin.to_path_buf(), &[])?;
    let url = server.url.clone();
    let started = Instant::now();
    // The neighbour: 100 wrong keys a second for 3 s, each waiting for its
    // (ever slower) refusal.
    let guesser = {
        let url = url.clone();
        tokio::spawn(async move {
            let mut attempts = Vec::new();
            for i in 0..300 {
                let url = url.clone();
                attempts.push(tokio::spawn(async move {
                    let wrong = format!("flk_aaaaaaaaaa_{i:0>43}");
                    connect(&url, &wrong).await.is_err()
                }));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut refused = 0;
            for a in attempts {
                refused += usize::from(a.await.unwrap_or(false));
            }
            refused
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Meanwhile 100 devices behind the same address (re)connect.
    let mut devices = Vec::new();
    for _ in 0..DEVICES {
        let (url, key) = (url.clone(), server.server_key.clone());
        devices.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(30), connect(&url, &key)).await;
            (matches!(r, Ok(Ok(_))), t.elapsed())
        }));
    }
    let (mut accepted, mut slowest) = (0, Duration::ZERO);
    for d in devices {
        let (ok, took) = d.await?;
        accepted += usize::from(ok);
        slowest = slowest.max(took);
    }
    let refused = guesser.await?;
    println!("## Wrong keys next to honest devices\n");
    println!(
        "300 wrong keys at 100/s from 127.0.0.1, and during them {DEVICES} devices connecting from 127.0.0.1 with the correct key.\n"
    );
    println!("| figure | value |\n|---|---|");
    println!("| devices accepted | {accepted} of {DEVICES} |");
    println!(
        "| slowest device's connect + authentication | {:.0} ms |",
        slowest.as_secs_f64() * 1000.0
    );
    println!("| wrong keys refused | {refused} of 300 |");
    println!(
        "| all refusals answered within | {:.1} s of the first guess |\n",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
