//! What the dashboard watches: a bounded log of recent calls and events, and
//! a broadcast of changes (calls finishing, events raised, connections
//! coming and going) for live views.
//!
//! Recording a call costs one small allocation and an uncontended lock; the
//! broadcast is skipped entirely while nobody watches.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::clock::{Clock, unix_ms};

/// Calls kept for the dashboard.
const CALLS_KEPT: usize = 500;
/// Events kept for the dashboard.
const EVENTS_KEPT: usize = 200;
/// Longest event payload kept (it is shown, not replayed).
const PAYLOAD_KEPT: usize = 1024;
/// Calls recorded per second at most: the log is for people, so under
/// heavy load it keeps a sample (and counts the rest) instead of taking a
/// lock and an allocation for every one of thousands of calls a second.
const CALLS_PER_SECOND: u64 = 200;

/// A finished call.
#[derive(Debug, Serialize)]
pub(crate) struct CallEntry {
    /// When it finished, ms since the Unix epoch.
    pub(crate) at_ms: u64,
    pub(crate) app: Arc<str>,
    /// Who called: a device name, `key <id>`, or a browser session.
    pub(crate) caller: Arc<str>,
    pub(crate) function: String,
    pub(crate) duration_ms: u64,
    /// `"ok"` or the error type.
    pub(crate) outcome: String,
}

/// An event raised by a device.
#[derive(Debug, Serialize)]
pub(crate) struct EventEntry {
    pub(crate) at_ms: u64,
    pub(crate) app: Arc<str>,
    pub(crate) from: Arc<str>,
    pub(crate) name: String,
    /// The payload's JSON text, cut at 1 KiB.
    pub(crate) payload: String,
    /// How many browser sessions it was sent to.
    pub(crate) delivered: usize,
}

/// A change the dashboard should show.
#[derive(Debug, Clone)]
pub(crate) enum Activity {
    Call(Arc<CallEntry>),
    Event(Arc<EventEntry>),
    /// Connections, registrations or keys changed: refresh those views.
    Changed,
}

/// The live uplinks of this server as the dashboard lists them (and as
/// this server answers other servers of its cluster that ask).
pub(crate) fn uplinks(state: &crate::state::ServerState) -> Vec<serde_json::Value> {
    let node = state.cluster.get().map(|c| c.node().to_owned());
    state
        .live_uplinks()
        .iter()
        .map(|c| {
            serde_json::json!({
                "conn": c.id,
                "app": &*c.app,
                "key": c.key_id.0,
                "device": c.device.as_deref(),
                "privilege": c.privilege.frame_type(),
                "library": c.library.as_deref(),
                "address": &*c.ip,
                "protocol_version": c.protocol_version,
                "connected_at_ms": c.connected_at_ms,
                "last_seen_ms": state.clock.to_unix_ms(ferrolink_proto::Instant::from_millis(
                    c.last_seen.load(Ordering::Relaxed),
                )),
                "functions": c.registered().iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "node": node,
            })
        })
        .collect()
}

/// The server's activity log, which every connection reports to.
pub(crate) struct Monitor {
    clock: Clock,
    /// The second (of the protocol clock) `in_window` counts.
    window: AtomicU64,
    in_window: AtomicU64,
    /// Calls finished but not recorded since start.
    unrecorded: AtomicU64,
    calls: Mutex<VecDeque<Arc<CallEntry>>>,
    events: Mutex<VecDeque<Arc<EventEntry>>>,
    tx: broadcast::Sender<Activity>,
    /// How many times this server's connections, registrations or keys
    /// changed (other servers of a cluster watch it to refresh their
    /// dashboards).
    changes: AtomicU64,
}

fn push<T>(ring: &Mutex<VecDeque<T>>, item: T, cap: usize) {
    let mut ring = ring.lock().unwrap_or_else(|p| p.into_inner());
    if ring.len() == cap {
        ring.pop_front();
    }
    ring.push_back(item);
}

impl Monitor {
    pub(crate) fn new(clock: Clock) -> Self {
        Self {
            clock,
            window: AtomicU64::new(0),
            in_window: AtomicU64::new(0),
            unrecorded: AtomicU64::new(0),
            calls: Mutex::new(VecDeque::with_capacity(CALLS_KEPT)),
            events: Mutex::new(VecDeque::with_capacity(EVENTS_KEPT)),
            tx: broadcast::channel(1024).0,
            changes: AtomicU64::new(0),
        }
    }

    fn announce(&self, activity: Activity) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(activity);
        }
    }

    /// Records a finished call (up to [`CALLS_PER_SECOND`]; the rest are
    /// counted).
    pub(crate) fn call(
        &self,
        app: &Arc<str>,
        caller: &Arc<str>,
        function: &str,
        duration_ms: u64,
        outcome: &str,
    ) {
        let second = self.clock.now().as_millis() / 1000;
        if self.window.load(Ordering::Relaxed) != second {
            // Racing threads may both reset: the count is approximate.
            self.window.store(second, Ordering::Relaxed);
            self.in_window.store(0, Ordering::Relaxed);
        }
        if self.in_window.fetch_add(1, Ordering::Relaxed) >= CALLS_PER_SECOND {
            self.unrecorded.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let function = crate::calls::shown(function).to_string();
        let outcome = crate::calls::shown(outcome).to_string();
        let entry = Arc::new(CallEntry {
            at_ms: unix_ms(),
            app: app.clone(),
            caller: caller.clone(),
            function,
            duration_ms,
            outcome,
        });
        push(&self.calls, entry.clone(), CALLS_KEPT);
        self.announce(Activity::Call(entry));
    }

    /// Records an event.
    pub(crate) fn event(
        &self,
        app: &Arc<str>,
        from: &Arc<str>,
        name: &str,
        payload: &str,
        delivered: usize,
    ) {
        let mut end = payload.len().min(PAYLOAD_KEPT);
        while !payload.is_char_boundary(end) {
            end -= 1;
        }
        let mut kept = payload[..end].to_owned();
        if end < payload.len() {
            kept.push('…');
        }
        let entry = Arc::new(EventEntry {
            at_ms: unix_ms(),
            app: app.clone(),
            from: from.clone(),
            name: name.to_owned(),
            payload: kept,
            delivered,
        });
        push(&self.events, entry.clone(), EVENTS_KEPT);
        self.announce(Activity::Event(entry));
    }

    /// Connections, registrations or keys changed.
    pub(crate) fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
        self.announce(Activity::Changed);
    }

    /// How many changes [`Monitor::changed`] has seen.
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Something changed on another server of the cluster: live views
    /// refresh (this server's own count stays).
    pub(crate) fn changed_elsewhere(&self) {
        self.announce(Activity::Changed);
    }

    /// Calls finished but not in the log (over the per-second sample).
    pub(crate) fn unrecorded_calls(&self) -> u64 {
        self.unrecorded.load(Ordering::Relaxed)
    }

    /// Recent calls, oldest first.
    pub(crate) fn recent_calls(&self) -> Vec<Arc<CallEntry>> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Recent events, oldest first.
    pub(crate) fn recent_events(&self) -> Vec<Arc<EventEntry>> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Live changes from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Activity> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_bounded_and_payloads_cut() {
        let m = Monitor::new(Clock::start());
        let app: Arc<str> = "a".into();
        for i in 0..(CALLS_KEPT + 10) {
            m.call(&app, &app, &format!("f{i}"), 1, "ok");
        }
        // Within one second only a sample is recorded, and the rest counted.
        let calls = m.recent_calls();
        assert_eq!(
            calls.len() as u64 + m.unrecorded_calls(),
            CALLS_KEPT as u64 + 10
        );
        assert!(calls.len() as u64 >= CALLS_PER_SECOND.min(CALLS_KEPT as u64) - 1);
        assert_eq!(calls[0].function, "f0");
        m.call(&app, &app, &"x".repeat(1000), 1, "ok");
        m.event(&app, &app, "e", &"é".repeat(2000), 0);
        let e = &m.recent_events()[0];
        assert!(e.payload.len() <= PAYLOAD_KEPT + 3 && e.payload.ends_with('…'));
    }
}
