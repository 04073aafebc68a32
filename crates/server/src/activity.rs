//! What the dashboard watches: a bounded log of recent calls and events, and
//! a broadcast of changes (calls finishing, events raised, connections
//! coming and going) for live views.
//!
//! Recording a call costs one small allocation and an uncontended lock; the
//! broadcast is skipped entirely while nobody watches.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use ferrolink_proto::Instant;
use serde::Serialize;
use tokio::sync::broadcast;

/// Calls kept for the dashboard.
const CALLS_KEPT: usize = 500;
/// Events kept for the dashboard.
const EVENTS_KEPT: usize = 200;
/// Longest event payload kept (it is shown, not replayed).
const PAYLOAD_KEPT: usize = 1024;

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

/// The server's clock and activity log, which every connection reports to.
pub(crate) struct Monitor {
    epoch: tokio::time::Instant,
    calls: Mutex<VecDeque<Arc<CallEntry>>>,
    events: Mutex<VecDeque<Arc<EventEntry>>>,
    tx: broadcast::Sender<Activity>,
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn push<T>(ring: &Mutex<VecDeque<T>>, item: T, cap: usize) {
    let mut ring = ring.lock().unwrap_or_else(|p| p.into_inner());
    if ring.len() == cap {
        ring.pop_front();
    }
    ring.push_back(item);
}

impl Monitor {
    pub(crate) fn new() -> Self {
        Self {
            epoch: tokio::time::Instant::now(),
            calls: Mutex::new(VecDeque::with_capacity(CALLS_KEPT)),
            events: Mutex::new(VecDeque::with_capacity(EVENTS_KEPT)),
            tx: broadcast::channel(1024).0,
        }
    }

    /// Now, on the protocol core's clock.
    pub(crate) fn now(&self) -> Instant {
        Instant::from_millis(self.epoch.elapsed().as_millis() as u64)
    }

    /// The tokio instant of a protocol instant.
    pub(crate) fn to_tokio(&self, t: Instant) -> tokio::time::Instant {
        self.epoch + std::time::Duration::from_millis(t.as_millis())
    }

    /// The wall-clock time (ms since the Unix epoch) of a protocol instant.
    pub(crate) fn to_unix_ms(&self, t: Instant) -> u64 {
        let ago = self.now().as_millis().saturating_sub(t.as_millis());
        unix_ms().saturating_sub(ago)
    }

    fn announce(&self, activity: Activity) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(activity);
        }
    }

    /// Records a finished call.
    pub(crate) fn call(
        &self,
        app: &Arc<str>,
        caller: &Arc<str>,
        function: &str,
        duration_ms: u64,
        outcome: &str,
    ) {
        let entry = Arc::new(CallEntry {
            at_ms: unix_ms(),
            app: app.clone(),
            caller: caller.clone(),
            function: function.to_owned(),
            duration_ms,
            outcome: outcome.to_owned(),
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
        self.announce(Activity::Changed);
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
        let m = Monitor::new();
        let app: Arc<str> = "a".into();
        for i in 0..(CALLS_KEPT + 10) {
            m.call(&app, &app, &format!("f{i}"), 1, "ok");
        }
        let calls = m.recent_calls();
        assert_eq!(calls.len(), CALLS_KEPT);
        assert_eq!(calls[0].function, "f10");
        m.event(&app, &app, "e", &"é".repeat(2000), 0);
        let e = &m.recent_events()[0];
        assert!(e.payload.len() <= PAYLOAD_KEPT + 3 && e.payload.ends_with('…'));
    }
}
