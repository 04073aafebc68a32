//! Connection counting: every TCP connection holds a [`Slot`] from accept
//! to close (handed on to the connection's driver after a websocket
//! upgrade), counted in all and per source address. IPv6 addresses count
//! per /64, the block one customer usually gets, so an attacker cannot
//! step around the limit by changing the low bits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::config::ConnectionLimits;
use crate::logs;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The server holds its most connections.
    Total,
    /// The address (or /64) holds its most connections.
    PerAddress,
}

impl Refusal {
    /// The text sent to the refused client (and logged).
    pub(crate) fn text(self, limits: &ConnectionLimits) -> String {
        match self {
            Self::Total => format!(
                "the server is at its limit of {} connections; try again later (operators: --max-connections)",
                limits.total
            ),
            Self::PerAddress => format!(
                "too many connections from your address (the limit is {}); close some and try again (operators: --max-connections-per-address)",
                limits.per_address
            ),
        }
    }
}

/// The counts, shared by every connection.
#[derive(Debug)]
pub(crate) struct Counter {
    limits: ConnectionLimits,
    inner: Mutex<Counts>,
    log: logs::Shared,
    /// Websocket connections not yet finished (closing handshake
    /// included), so a shutdown can wait for their close frames.
    websockets: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// One counted connection; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct Slot {
    counter: Arc<Counter>,
    /// The counted address; `None` when only the total counts (a trusted
    /// proxy, whose clients are counted on their own).
    address: Option<IpAddr>,
    total: bool,
}

/// The address a limit counts: itself for IPv4 (and IPv4-mapped IPv6),
/// its /64 for IPv6.
pub(crate) fn block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

impl Counter {
    pub(crate) fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            inner: Mutex::default(),
            log: logs::Shared::default(),
            websockets: Arc::default(),
        })
    }

    /// Counts a websocket connection until the returned guard is dropped.
    pub(crate) fn websocket(&self) -> Socket {
        self.websockets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Socket(self.websockets.clone())
    }

    /// Websocket connections still running.
    pub(crate) fn websockets(&self) -> usize {
        self.websockets.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Counts a new TCP connection from `ip` (only in the total when
    /// `per_address` is false: a trusted proxy).
    pub(crate) fn accept(
        self: &Arc<Self>,
        ip: IpAddr,
        per_address: bool,
        now: ferrolink_proto::Instant,
    ) -> Result<Slot, Refusal> {
        self.take(Some(ip).filter(|_| per_address), true, now)
    }

    /// Counts a websocket from `ip`, a client behind a trusted proxy (the
    /// proxy's TCP connection is in the total already).
    pub(crate) fn forwarded(
        self: &Arc<Self>,
        ip: IpAddr,
        now: ferrolink_proto::Instant,
    ) -> Result<Slot, Refusal> {
        self.take(Some(ip), false, now)
    }

    fn take(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        total: bool,
        now: ferrolink_proto::Instant,
    ) -> Result<Slot, Refusal> {
        let address = ip.map(block);
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let refused = if total && c.total >= self.limits.total {
            Some(Refusal::Total)
        } else if address
            .is_some_and(|a| c.per_address.get(&a).copied().unwrap_or(0) >= self.limits.per_address)
        {
            Some(Refusal::PerAddress)
        } else {
            None
        };
        if let Some(refusal) = refused {
            drop(c);
            if let Some(left_out) = self.log.allow(now) {
                tracing::warn!(
                    address = %address.map_or_else(|| "-".to_owned(), |a| a.to_string()),
                    left_out,
                    "refusing connections: {}",
                    refusal.text(&self.limits)
                );
            }
            return Err(refusal);
        }
        if total {
            c.total += 1;
        }
        if let Some(a) = address {
            *c.per_address.entry(a).or_default() += 1;
        }
        Ok(Slot {
            counter: self.clone(),
            address,
            total,
        })
    }

    /// Connections counted now (in all).
    pub(crate) fn open(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counter.inner.lock().unwrap_or_else(|p| p.into_inner());
        if self.total {
            c.total -= 1;
        }
        if let Some(a) = self.address
            && let Some(n) = c.per_address.get_mut(&a)
        {
            *n -= 1;
            if *n == 0 {
                c.per_address.remove(&a);
            }
        }
    }
}

/// Counts by a name (a browser session), each up to a limit.
#[derive(Debug, Default)]
pub(crate) struct Named {
    counts: Mutex<HashMap<String, usize>>,
}

/// One counted place under a name; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct NamedSlot {
    named: Arc<Named>,
    name: String,
}

impl Named {
    /// A place under `name`, unless it holds `limit` already.
    pub(crate) fn take(self: &Arc<Self>, name: String, limit: usize) -> Option<NamedSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(name.clone()).or_default();
        if *n >= limit {
            if *n == 0 {
                counts.remove(&name);
            }
            return None;
        }
        *n += 1;
        Some(NamedSlot {
            named: self.clone(),
            name,
        })
    }
}

impl Drop for NamedSlot {
    fn drop(&mut self) {
        let mut counts = self.named.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.name);
            }
        }
    }
}

/// A running websocket connection, counted until dropped.
#[derive(Debug)]
pub(crate) struct Socket(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Socket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Everything a connection holds against the limits, kept by its driver
/// for as long as it runs.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// The TCP connection's place.
    pub(crate) tcp: Option<Arc<Slot>>,
    /// The client's place behind a trusted proxy.
    /// (Boxed, as is the browser's place: few connections have them, and
    /// every idle connection's task carries this struct.)
    pub(crate) forwarded: Option<Box<Slot>>,
    /// The browser session's place.
    #[expect(dead_code, reason = "held for its Drop, which gives the place back")]
    pub(crate) browser: Option<Box<NamedSlot>>,
    /// The count of running websockets (held for its Drop).
    pub(crate) socket: Option<Socket>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_address: usize) -> ConnectionLimits {
        ConnectionLimits {
            total,
            per_address,
            ..ConnectionLimits::default()
        }
    }

    const NOW: ferrolink_proto::Instant = ferrolink_proto::Instant::ZERO;

    #[test]
    fn per_address_and_total_limits_hold_and_free_on_drop() {
        let c = Counter::new(limits(3, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = c.accept(a, true, NOW).unwrap();
        let _a2 = c.accept(a, true, NOW).unwrap();
        assert_eq!(c.accept(a, true, NOW).unwrap_err(), Refusal::PerAddress);
        let _b1 = c.accept(b, true, NOW).unwrap();
        assert_eq!(c.accept(b, true, NOW).unwrap_err(), Refusal::Total);
        drop(a1);
        assert_eq!(c.open(), 2);
        let _a3 = c.accept(a, true, NOW).unwrap();
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let c = Counter::new(limits(100, 1));
        let _x = c
            .accept("2001:db8:1:2::1".parse().unwrap(), true, NOW)
            .unwrap();
        let same_64 = c.accept("2001:db8:1:2:ffff::9".parse().unwrap(), true, NOW);
        assert_eq!(same_64.unwrap_err(), Refusal::PerAddress);
        let _other_64 = c
            .accept("2001:db8:1:3::1".parse().unwrap(), true, NOW)
            .unwrap();
        let _v4 = c.accept("192.0.2.7".parse().unwrap(), true, NOW).unwrap();
        let mapped = c.accept("::ffff:192.0.2.7".parse().unwrap(), true, NOW);
        assert_eq!(mapped.unwrap_err(), Refusal::PerAddress);
    }

    #[test]
    fn a_trusted_proxy_counts_in_all_and_its_clients_per_address() {
        let c = Counter::new(limits(10, 1));
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let _p1 = c.accept(proxy, false, NOW).unwrap();
        let _p2 = c.accept(proxy, false, NOW).unwrap();
        let client: IpAddr = "198.51.100.4".parse().unwrap();
        let _w = c.forwarded(client, NOW).unwrap();
        assert_eq!(c.forwarded(client, NOW).unwrap_err(), Refusal::PerAddress);
        assert_eq!(
            c.open(),
            2,
            "forwarded websockets ride on the proxy's connections"
        );
    }

    #[test]
    fn named_places_are_bounded_per_name() {
        let named = Arc::new(Named::default());
        let a1 = named.take("a".into(), 2).unwrap();
        let _a2 = named.take("a".into(), 2).unwrap();
        assert!(named.take("a".into(), 2).is_none());
        let _b = named.take("b".into(), 2).unwrap();
        drop(a1);
        assert!(named.take("a".into(), 2).is_some());
    }
}
