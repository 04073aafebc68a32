//! Pending calls with deadlines: the bookkeeping that makes sure no call
//! waits forever. Used by the server for calls it forwarded to a provider and
//! by clients for calls they made.

use alloc::collections::{BinaryHeap, VecDeque};
use core::cmp::Reverse;

use hashbrown::HashMap;

use crate::time::Instant;

/// Identifies a call within one [`CallTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(pub u64);

/// The table is at its capacity; the call was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{capacity} calls are already in flight on this connection; wait for some to finish")]
pub struct TableFull {
    /// The table's capacity.
    pub capacity: usize,
}

/// Calls in flight, each with a deadline. Bounded: inserting into a full
/// table fails instead of growing.
///
/// Sans-IO contract: call [`CallTable::poll_timeout`] after every change to
/// learn when to wake up, and [`CallTable::expire`] when that time comes,
/// until it returns `None`.
#[derive(Debug)]
pub struct CallTable<V> {
    entries: HashMap<CallId, (Instant, V)>,
    /// Deadlines that arrived in order — the common case, when every call
    /// gets the same timeout — kept in a queue (O(1) both ends).
    in_order: VecDeque<(Instant, CallId)>,
    /// Deadlines that arrived out of order.
    deadlines: BinaryHeap<Reverse<(Instant, CallId)>>,
    capacity: usize,
}

impl<V> CallTable<V> {
    /// An empty table holding at most `capacity` calls.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            in_order: VecDeque::new(),
            deadlines: BinaryHeap::new(),
            capacity,
        }
    }

    /// Adds a call. Fails without adding when the table is full or the id
    /// is already in use (the value is handed back in both cases).
    pub fn insert(
        &mut self,
        id: CallId,
        deadline: Instant,
        value: V,
    ) -> Result<(), (TableFull, V)> {
        if self.entries.len() >= self.capacity || self.entries.contains_key(&id) {
            return Err((
                TableFull {
                    capacity: self.capacity,
                },
                value,
            ));
        }
        self.entries.insert(id, (deadline, value));
        if self
            .in_order
            .back()
            .is_none_or(|(last, _)| *last <= deadline)
        {
            self.in_order.push_back((deadline, id));
        } else {
            self.deadlines.push(Reverse((deadline, id)));
        }
        Ok(())
    }

    /// Removes a finished call, returning its value if it was pending.
    pub fn remove(&mut self, id: CallId) -> Option<V> {
        let (_, value) = self.entries.remove(&id)?;
        // Finished calls leave their deadlines behind, skipped lazily;
        // rebuild when they outnumber the live ones.
        if self.in_order.len() + self.deadlines.len() > 2 * self.entries.len() + 64 {
            let mut live: alloc::vec::Vec<(Instant, CallId)> = self
                .entries
                .iter()
                .map(|(id, (deadline, _))| (*deadline, *id))
                .collect();
            live.sort_unstable();
            self.in_order = live.into();
            self.deadlines.clear();
        }
        Some(value)
    }

    fn is_live(&self, deadline: Instant, id: CallId) -> bool {
        self.entries.get(&id).is_some_and(|(d, _)| *d == deadline)
    }

    /// The value of a pending call.
    pub fn get(&self, id: CallId) -> Option<&V> {
        self.entries.get(&id).map(|(_, v)| v)
    }

    /// Number of pending calls.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no call is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The earliest deadline of a pending call.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(&(deadline, id)) = self.in_order.front() {
            if self.is_live(deadline, id) {
                break;
            }
            self.in_order.pop_front();
        }
        while let Some(Reverse((deadline, id))) = self.deadlines.peek().copied() {
            if self.is_live(deadline, id) {
                break;
            }
            self.deadlines.pop();
        }
        let queued = self.in_order.front().map(|(d, _)| *d);
        let heaped = self.deadlines.peek().map(|Reverse((d, _))| *d);
        match (queued, heaped) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes and returns one call whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant) -> Option<(CallId, V)> {
        let deadline = self.poll_timeout()?;
        if deadline > now {
            return None;
        }
        let id = if self.in_order.front().is_some_and(|(d, _)| *d == deadline) {
            self.in_order.pop_front()?.1
        } else {
            self.deadlines.pop()?.0.1
        };
        self.entries.remove(&id).map(|(_, v)| (id, v))
    }

    /// Removes every pending call (the connection closed).
    pub fn drain(&mut self) -> impl Iterator<Item = (CallId, V)> + '_ {
        self.in_order.clear();
        self.deadlines.clear();
        let mut entries: alloc::vec::Vec<_> =
            self.entries.drain().map(|(id, (_, v))| (id, v)).collect();
        entries.sort_unstable_by_key(|(id, _)| *id);
        entries.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn calls_expire_in_deadline_order_and_only_when_due() {
        let mut table = CallTable::new(8);
        table.insert(CallId(1), t(300), "late").unwrap();
        table.insert(CallId(2), t(100), "early").unwrap();
        assert_eq!(table.poll_timeout(), Some(t(100)));
        assert!(table.expire(t(99)).is_none());
        assert_eq!(table.expire(t(100)), Some((CallId(2), "early")));
        assert_eq!(table.poll_timeout(), Some(t(300)));
    }

    #[test]
    fn finished_calls_never_expire() {
        let mut table = CallTable::new(8);
        table.insert(CallId(1), t(100), ()).unwrap();
        assert_eq!(table.remove(CallId(1)), Some(()));
        assert_eq!(table.poll_timeout(), None);
        assert!(table.expire(t(1_000)).is_none());
    }

    #[test]
    fn a_full_table_refuses_instead_of_growing() {
        let mut table = CallTable::new(2);
        table.insert(CallId(1), t(1), ()).unwrap();
        table.insert(CallId(2), t(1), ()).unwrap();
        let (err, ()) = table.insert(CallId(3), t(1), ()).unwrap_err();
        assert_eq!(err.capacity, 2);
        assert!(table.insert(CallId(1), t(1), ()).is_err(), "duplicate id");
    }

    #[test]
    fn deadline_heap_stays_bounded_under_churn() {
        let mut table = CallTable::new(4);
        for i in 0..100_000 {
            table.insert(CallId(i), t(1_000_000), ()).unwrap();
            table.remove(CallId(i));
        }
        assert!(table.in_order.len() <= 64 + 2, "{}", table.in_order.len());
    }

    #[test]
    fn out_of_order_deadlines_still_expire_in_order() {
        let mut table = CallTable::new(8);
        table.insert(CallId(1), t(500), "a").unwrap();
        table.insert(CallId(2), t(100), "b").unwrap();
        table.insert(CallId(3), t(900), "c").unwrap();
        table.insert(CallId(4), t(300), "d").unwrap();
        let mut order = alloc::vec::Vec::new();
        while let Some((_, v)) = table.expire(t(10_000)) {
            order.push(v);
        }
        assert_eq!(order, ["b", "d", "a", "c"]);
    }
}
