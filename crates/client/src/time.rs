//! Trusted time from the network: Roughtime (signed, nonce-bound) or
//! several SNTP servers that must agree. `ferrolink_proto::roughtime` and
//! `ferrolink_proto::sntp` do the protocols; this module does the UDP.
//!
//! Prefer Roughtime: each answer is signed by the server's long-term key
//! (pinned here like a CA), and the signature covers our random nonce, so
//! an attacker on the network cannot forge or replay a time. SNTP answers
//! are unauthenticated; their agreement only makes a lie harder.

use std::net::SocketAddr;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use ferrolink_proto::{roughtime, sntp};

use crate::tls::{BUILD_FLOOR, TimeError, TimeSource};

/// A time learned from the network, then kept by the local monotonic clock.
#[derive(Debug, Clone)]
pub struct NetworkClock {
    anchor_unix_ms: u64,
    anchor: Instant,
    floor: u64,
}

/// How to ask SNTP servers.
#[derive(Debug, Clone)]
pub struct SntpQuery {
    /// Servers to ask (UDP, usually port 123).
    pub servers: Vec<SocketAddr>,
    /// How many must answer, all within `bound` of each other (default 2).
    pub need: usize,
    /// Largest allowed difference between answers (default 2 s).
    pub bound: Duration,
    /// How long to wait for answers (default 3 s).
    pub timeout: Duration,
}

impl SntpQuery {
    /// Ask `servers`, needing two that agree within 2 s, waiting up to 3 s.
    pub fn new(servers: Vec<SocketAddr>) -> Self {
        Self {
            servers,
            need: 2,
            bound: Duration::from_secs(2),
            timeout: Duration::from_secs(3),
        }
    }
}

/// A Roughtime server: where it is and its long-term public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoughtimeServer {
    /// UDP address (the IANA port is 5319; many servers use 2002).
    pub addr: SocketAddr,
    /// Its long-term Ed25519 public key, as published with its address.
    pub public_key: [u8; 32],
}

/// How to ask Roughtime servers.
#[derive(Debug, Clone)]
pub struct RoughtimeQuery {
    /// Servers to ask, with their pinned keys.
    pub servers: Vec<RoughtimeServer>,
    /// How many verified answers must overlap (default: 1 for one server,
    /// otherwise 2, so that one server lying with its own key is outvoted).
    pub need: usize,
    /// How long to wait for answers (default 3 s).
    pub timeout: Duration,
}

impl RoughtimeQuery {
    /// Ask `servers` (see [`RoughtimeQuery::need`] for the default), waiting up to 3 s.
    pub fn new(servers: Vec<RoughtimeServer>) -> Self {
        Self {
            need: servers.len().min(2),
            servers,
            timeout: Duration::from_secs(3),
        }
    }
}

/// One answer: who sent it, its bytes, and when (ms since the query began).
struct Reply {
    from: SocketAddr,
    bytes: Vec<u8>,
    sent: u64,
    received: u64,
}

/// Sends `requests` from one UDP socket and collects at most one reply per
/// server until all answered or `timeout` passed.
async fn exchange(
    requests: &[(SocketAddr, Vec<u8>)],
    timeout: Duration,
    start: Instant,
) -> Result<Vec<Reply>, TimeError> {
    let socket = tokio::net::UdpSocket::bind(("0.0.0.0", 0))
        .await
        .map_err(|e| TimeError::Untrusted(format!("cannot open a UDP socket: {e}")))?;
    let ms = || start.elapsed().as_millis() as u64;
    let mut pending: Vec<(SocketAddr, u64)> = Vec::new();
    for (server, packet) in requests {
        let sent = ms();
        if socket.send_to(packet, server).await.is_ok() {
            pending.push((*server, sent));
        }
    }
    let mut replies = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 2048];
    while !pending.is_empty() {
        let Ok(Ok((n, from))) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
        else {
            break;
        };
        let Some(i) = pending.iter().position(|(s, _)| *s == from) else {
            continue; // not a server we asked
        };
        let (_, sent) = pending.swap_remove(i);
        replies.push(Reply {
            from,
            bytes: buf[..n].to_vec(),
            sent,
            received: ms(),
        });
    }
    Ok(replies)
}

/// The reasons answers were refused, for an error message.
fn with_refusals(why: String, refused: &[String]) -> TimeError {
    if refused.is_empty() {
        return TimeError::Untrusted(why);
    }
    TimeError::Untrusted(format!("{why} (refused answers: {})", refused.join("; ")))
}

impl NetworkClock {
    fn anchored(unix_ms_at: u64, at: Instant) -> Result<Self, TimeError> {
        let clock = Self {
            anchor_unix_ms: unix_ms_at,
            anchor: at,
            floor: BUILD_FLOOR,
        };
        clock.now()?;
        Ok(clock)
    }

    /// Asks every Roughtime server once with a fresh random nonce, verifies
    /// each answer against the server's pinned key, and accepts the time
    /// only where enough verified answers overlap.
    pub async fn roughtime(q: &RoughtimeQuery) -> Result<Self, TimeError> {
        let start = Instant::now();
        let mut requests = Vec::new();
        let mut pending = Vec::new();
        for server in &q.servers {
            let mut packet = [0u8; roughtime::REQUEST_LEN];
            let nonce: [u8; 32] = rand::random();
            pending.push(roughtime::request(&nonce, &server.public_key, &mut packet));
            requests.push((server.addr, packet.to_vec()));
        }
        let replies = exchange(&requests, q.timeout, start).await?;
        let mut samples = Vec::new();
        let mut refused = Vec::new();
        for reply in &replies {
            let Some(i) = q.servers.iter().position(|s| s.addr == reply.from) else {
                continue;
            };
            match pending[i].verify(&reply.bytes, &q.servers[i].public_key) {
                Ok(answer) => samples.push(roughtime::Sample::new(
                    &answer,
                    ferrolink_proto::Instant::from_millis(reply.sent),
                    ferrolink_proto::Instant::from_millis(reply.received),
                )),
                Err(e) => refused.push(format!("{}: {e}", reply.from)),
            }
        }
        let now = Instant::now();
        let now_ms =
            ferrolink_proto::Instant::from_millis(now.duration_since(start).as_millis() as u64);
        let unix_ms = roughtime::agree(&samples, q.need, now_ms)
            .map_err(|e| with_refusals(e.to_string(), &refused))?;
        Self::anchored(unix_ms, now)
    }

    /// Asks every SNTP server once and accepts the time only if enough
    /// answers agree. Answers that do not echo our random nonce are ignored.
    pub async fn sntp(q: &SntpQuery) -> Result<Self, TimeError> {
        let start = Instant::now();
        let nonces: Vec<u64> = q.servers.iter().map(|_| rand::random()).collect();
        let requests: Vec<_> = q
            .servers
            .iter()
            .zip(&nonces)
            .map(|(s, n)| (*s, sntp::request(*n).to_vec()))
            .collect();
        let replies = exchange(&requests, q.timeout, start).await?;
        let mut samples = Vec::new();
        let mut refused = Vec::new();
        for reply in &replies {
            let Some(i) = q.servers.iter().position(|s| *s == reply.from) else {
                continue;
            };
            match sntp::parse(&reply.bytes, nonces[i], reply.sent, reply.received) {
                Ok(mut s) => {
                    // Express every answer as "Unix time at local moment 0".
                    s.unix_ms = s.unix_ms.saturating_sub(reply.received);
                    samples.push(s);
                }
                Err(e) => refused.push(format!("{}: {e}", reply.from)),
            }
        }
        let at_zero = sntp::agree(&mut samples, q.need, q.bound.as_millis() as u64)
            .map_err(|e| with_refusals(e.to_string(), &refused))?;
        Self::anchored(at_zero, start)
    }
}

impl TimeSource for NetworkClock {
    fn now(&self) -> Result<u64, TimeError> {
        let now = (self.anchor_unix_ms + self.anchor.elapsed().as_millis() as u64) / 1000;
        ferrolink_proto::check_floor(now, self.floor).map_err(TimeError::BeforeFloor)
    }
}

/// A time source that refuses until it is given a trusted time: connections
/// made before [`TrustedTime::set`] are refused without sending the key.
#[derive(Debug, Default)]
pub struct TrustedTime {
    clock: RwLock<Option<NetworkClock>>,
}

impl TrustedTime {
    /// Installs a trusted time.
    pub fn set(&self, clock: NetworkClock) {
        *self.clock.write().unwrap_or_else(|p| p.into_inner()) = Some(clock);
    }
}

impl TimeSource for TrustedTime {
    fn now(&self) -> Result<u64, TimeError> {
        match &*self.clock.read().unwrap_or_else(|p| p.into_inner()) {
            Some(c) => c.now(),
            None => Err(TimeError::Untrusted(
                "the time has not been obtained from the network yet (NetworkClock::roughtime or ::sntp)"
                    .to_owned(),
            )),
        }
    }
}
