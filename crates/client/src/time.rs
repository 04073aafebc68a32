//! Trusted time from several SNTP servers that must agree
//! (`ferrolink_proto::sntp` does the protocol; this module does the UDP).

use std::net::SocketAddr;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use ferrolink_proto::sntp;

use crate::tls::{BUILD_FLOOR, TimeError, TimeSource};

/// A time learned from SNTP servers that agreed, then kept by the local
/// monotonic clock.
#[derive(Debug, Clone)]
pub struct SntpClock {
    anchor_unix_ms: u64,
    anchor: Instant,
    floor: u64,
}

/// How to ask.
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

impl SntpClock {
    /// Asks every server once and accepts the time only if enough answers
    /// agree. Answers that do not echo our random nonce are ignored.
    pub async fn query(q: &SntpQuery) -> Result<Self, TimeError> {
        let untrusted = |why: String| TimeError::Untrusted(why);
        let socket = tokio::net::UdpSocket::bind(("0.0.0.0", 0))
            .await
            .map_err(|e| untrusted(format!("cannot open a UDP socket: {e}")))?;
        let start = Instant::now();
        let ms = || start.elapsed().as_millis() as u64;
        let mut pending: Vec<(SocketAddr, u64, u64)> = Vec::new();
        for &server in &q.servers {
            let nonce: u64 = rand::random();
            let sent = ms();
            if socket.send_to(&sntp::request(nonce), server).await.is_ok() {
                pending.push((server, nonce, sent));
            }
        }
        let mut samples = Vec::new();
        let mut rejected = Vec::new();
        let deadline = tokio::time::Instant::now() + q.timeout;
        let mut buf = [0u8; 512];
        while !pending.is_empty() {
            let Ok(Ok((n, from))) =
                tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
            else {
                break;
            };
            let Some(i) = pending.iter().position(|(s, _, _)| *s == from) else {
                continue; // not a server we asked
            };
            let (_, nonce, sent) = pending[i];
            let received = ms();
            match sntp::parse(&buf[..n], nonce, sent, received) {
                Ok(mut s) => {
                    pending.swap_remove(i);
                    // Express every answer as "Unix time at local moment 0".
                    s.unix_ms = s.unix_ms.saturating_sub(received);
                    samples.push(s);
                }
                Err(e) => rejected.push(format!("{from}: {e}")),
            }
        }
        let at_zero =
            sntp::agree(&mut samples, q.need, q.bound.as_millis() as u64).map_err(|e| {
                let mut why = e.to_string();
                if !rejected.is_empty() {
                    why.push_str(&format!(" (refused answers: {})", rejected.join("; ")));
                }
                untrusted(why)
            })?;
        let clock = Self {
            anchor_unix_ms: at_zero + ms(),
            anchor: Instant::now(),
            floor: BUILD_FLOOR,
        };
        clock.now()?;
        Ok(clock)
    }
}

impl TimeSource for SntpClock {
    fn now(&self) -> Result<u64, TimeError> {
        let now = (self.anchor_unix_ms + self.anchor.elapsed().as_millis() as u64) / 1000;
        if now < self.floor {
            return Err(TimeError::BeforeFloor {
                now,
                floor: self.floor,
            });
        }
        Ok(now)
    }
}

/// A time source that refuses until it is given a trusted time: connections
/// made before [`TrustedTime::set`] are refused without sending the key.
#[derive(Debug, Default)]
pub struct TrustedTime {
    clock: RwLock<Option<SntpClock>>,
}

impl TrustedTime {
    /// Installs a trusted time.
    pub fn set(&self, clock: SntpClock) {
        *self.clock.write().unwrap_or_else(|p| p.into_inner()) = Some(clock);
    }
}

impl TimeSource for TrustedTime {
    fn now(&self) -> Result<u64, TimeError> {
        match &*self.clock.read().unwrap_or_else(|p| p.into_inner()) {
            Some(c) => c.now(),
            None => Err(TimeError::Untrusted(
                "the time has not been obtained from agreeing time servers yet".to_owned(),
            )),
        }
    }
}
