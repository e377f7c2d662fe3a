//! Watchers of the node's changes ([`crate::Node::subscribe`]): each has a queue of its own,
//! holding only the changes under its prefix, bounded in changes and in bytes.
//!
//! Invariants: a queue never holds more than [`WATCH_QUEUE_CHANGES_MAX`] changes, nor more than
//! [`WATCH_QUEUE_BYTES_MAX`] bytes of them (or one change, however large); a watcher that would
//! go beyond has its queue emptied and is told next how many changes it lost
//! ([`SubscriptionError::Lagged`]), then goes on with the changes committed after. The replica
//! records changes ([`lethe_engine::Replica::record_changes`]) exactly while a watcher is
//! registered: `Inner::with_replica` sets it from `Watchers::any` before each call, so an
//! embedder that stops watching pays nothing from its next call on.
//!
//! Cost: a publish takes one lock and, per watcher, a prefix comparison per change and a clone
//! of each change under its prefix (key and value copied once per watcher).

use lethe_engine::Change;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Changes a watcher's queue holds at most; one more and it has lagged.
pub const WATCH_QUEUE_CHANGES_MAX: usize = 4096;
/// Bytes of changes (keys, values, metadata and each change's fixed size) a watcher's queue holds
/// at most; a change that would go beyond makes it lag. 16 MiB: more than ten of the largest
/// values at the default limits (1 MiB value, 1 KiB key, 4 KiB metadata), so that a watcher
/// reading as fast as writes come does not lag for a burst of large ones. A queue always takes
/// one change, however large, so a value above the limit still reaches a watcher that keeps up.
pub const WATCH_QUEUE_BYTES_MAX: usize = 16 << 20;

/// A subscriber fell behind or the node stopped.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    /// The subscriber fell behind by more than its queue holds ([`WATCH_QUEUE_CHANGES_MAX`]
    /// changes or [`WATCH_QUEUE_BYTES_MAX`] bytes): this many changes under its prefix were
    /// dropped. Read the prefix again ([`crate::Node::scan`]) to resync; the changes that follow
    /// were committed after the drop.
    #[error("lagged: {0} changes dropped because the subscriber fell behind; re-list the prefix to resync")]
    Lagged(u64),
    /// The node stopped.
    #[error("the node stopped")]
    Closed,
}

/// What a change takes in a queue: its bytes on the heap and its own size.
fn change_bytes(change: &Change) -> usize {
    let heap = match change {
        Change::Put(item) => item.key.len() + item.value.len() + item.metadata.as_ref().map_or(0, Vec::len),
        Change::Delete { key, .. } | Change::Expired { key, .. } => key.len(),
    };
    heap + std::mem::size_of::<Change>()
}

/// One watcher's queue.
#[derive(Debug)]
struct Queue {
    prefix: Vec<u8>,
    changes: VecDeque<Change>,
    /// Bytes of `changes`, as [`change_bytes`] counts them.
    bytes: usize,
    /// Changes dropped since the watcher was last told.
    dropped: u64,
    /// Woken when a change, a drop or the close is there to read.
    wake: Arc<Notify>,
}

impl Queue {
    /// Queues `change`, or, if it would not fit, empties the queue and counts the loss.
    fn push(&mut self, change: &Change) {
        let bytes = change_bytes(change);
        let full = self.changes.len() >= WATCH_QUEUE_CHANGES_MAX
            || (!self.changes.is_empty() && self.bytes + bytes > WATCH_QUEUE_BYTES_MAX);
        if full {
            // What is queued is useless to a watcher that has to re-list anyway: free it now.
            self.dropped += self.changes.len() as u64 + 1;
            self.changes.clear();
            self.bytes = 0;
        } else {
            self.changes.push_back(change.clone());
            self.bytes += bytes;
        }
        debug_assert!(self.changes.len() <= WATCH_QUEUE_CHANGES_MAX);
        debug_assert!(self.changes.len() <= 1 || self.bytes <= WATCH_QUEUE_BYTES_MAX);
    }
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    queues: BTreeMap<u64, Queue>,
    closed: bool,
}

/// Every watcher of one node, and its queue.
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    table: Mutex<Table>,
}

impl Watchers {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        crate::node::lock(&self.table)
    }

    /// Whether any watcher is registered (the replica records changes only then).
    pub(crate) fn any(&self) -> bool {
        !self.table().queues.is_empty()
    }

    /// Registers a watcher of `prefix`.
    pub(crate) fn register(self: &Arc<Self>, prefix: Vec<u8>) -> Subscription {
        let mut table = self.table();
        let id = table.next_id;
        table.next_id += 1;
        let wake = Arc::new(Notify::new());
        table.queues.insert(id, Queue { prefix, changes: VecDeque::new(), bytes: 0, dropped: 0, wake: wake.clone() });
        Subscription { watchers: self.clone(), id, wake }
    }

    /// Queues `changes`, in commit order, for each watcher whose prefix they are under.
    pub(crate) fn publish(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let mut table = self.table();
        for queue in table.queues.values_mut() {
            let before = (queue.changes.len(), queue.dropped);
            for change in changes {
                if change.key().starts_with(&queue.prefix) {
                    queue.push(change);
                }
            }
            if (queue.changes.len(), queue.dropped) != before {
                queue.wake.notify_one();
            }
        }
    }

    /// The node stopped: each watcher reads what is queued, then [`SubscriptionError::Closed`].
    pub(crate) fn close(&self) {
        let mut table = self.table();
        table.closed = true;
        for queue in table.queues.values() {
            queue.wake.notify_one();
        }
    }

    /// The queued changes and bytes of watcher `id`, for tests.
    #[cfg(test)]
    fn queued(&self, id: u64) -> Option<(usize, usize)> {
        self.table().queues.get(&id).map(|q| (q.changes.len(), q.bytes))
    }
}

/// Changes to keys under a prefix, local and replicated, in commit order, from when it was made
/// ([`crate::Node::subscribe`]). Dropping it unregisters it.
#[derive(Debug)]
pub struct Subscription {
    watchers: Arc<Watchers>,
    id: u64,
    wake: Arc<Notify>,
}

impl Subscription {
    /// The next change under the prefix; [`SubscriptionError::Lagged`] once after changes were
    /// dropped for this subscriber falling behind, then the changes after.
    pub async fn next(&mut self) -> Result<Change, SubscriptionError> {
        loop {
            {
                let mut table = self.watchers.table();
                let closed = table.closed;
                let Some(queue) = table.queues.get_mut(&self.id) else { return Err(SubscriptionError::Closed) };
                if queue.dropped > 0 {
                    return Err(SubscriptionError::Lagged(std::mem::take(&mut queue.dropped)));
                }
                if let Some(change) = queue.changes.pop_front() {
                    queue.bytes -= change_bytes(&change);
                    return Ok(change);
                }
                if closed {
                    return Err(SubscriptionError::Closed);
                }
            }
            // A wake that came while the lock was held left a permit: no change is missed.
            self.wake.notified().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.watchers.table().queues.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lethe_engine::{Dot, Hlc, Item, ReplicaId, Seq, Stamp};

    fn put(key: &str, value_bytes: usize) -> Change {
        let replica = ReplicaId(1);
        Change::Put(Item {
            key: key.as_bytes().to_vec(),
            value: vec![0; value_bytes],
            metadata: None,
            expires_at_ms: None,
            stamp: Stamp { hlc: Hlc(1), replica },
            dot: Dot { replica, seq: Seq(1) },
        })
    }

    /// Reads what is ready without waiting: the keys of the changes, a lag as `lagged N`.
    async fn ready(sub: &mut Subscription) -> Vec<String> {
        let mut got = Vec::new();
        while let Ok(next) = tokio::time::timeout(std::time::Duration::from_millis(1), sub.next()).await {
            got.push(match next {
                Ok(change) => String::from_utf8_lossy(change.key()).into_owned(),
                Err(SubscriptionError::Lagged(n)) => format!("lagged {n}"),
                Err(SubscriptionError::Closed) => {
                    got.push("closed".to_string());
                    break;
                }
            });
        }
        got
    }

    #[tokio::test]
    async fn a_queue_stays_within_its_bytes_and_a_lag_is_told_once_before_what_came_after() {
        let watchers = Arc::new(Watchers::default());
        let mut sub = watchers.register(b"k".to_vec());
        let value_bytes = WATCH_QUEUE_BYTES_MAX / 4;
        for i in 0..4 {
            watchers.publish(&[put(&format!("k{i}"), value_bytes)]);
            let (_, bytes) = watchers.queued(sub.id).unwrap();
            assert!(bytes <= WATCH_QUEUE_BYTES_MAX, "{bytes} bytes queued");
        }
        // The fourth did not fit (each change takes a little more than its value): all four
        // were dropped, and the memory with them.
        assert_eq!(watchers.queued(sub.id), Some((0, 0)));
        watchers.publish(&[put("k4", 1)]);
        assert_eq!(ready(&mut sub).await, ["lagged 4", "k4"]);
    }

    #[tokio::test]
    async fn a_queue_stays_within_its_count() {
        let watchers = Arc::new(Watchers::default());
        let mut sub = watchers.register(Vec::new());
        let changes: Vec<Change> = (0..=WATCH_QUEUE_CHANGES_MAX).map(|i| put(&format!("k{i}"), 0)).collect();
        watchers.publish(&changes[..WATCH_QUEUE_CHANGES_MAX]);
        assert_eq!(watchers.queued(sub.id).map(|q| q.0), Some(WATCH_QUEUE_CHANGES_MAX));
        watchers.publish(&changes[WATCH_QUEUE_CHANGES_MAX..]);
        assert_eq!(watchers.queued(sub.id).map(|q| q.0), Some(0));
        assert_eq!(ready(&mut sub).await, [format!("lagged {}", WATCH_QUEUE_CHANGES_MAX + 1)]);
    }

    #[tokio::test]
    async fn one_change_larger_than_the_bytes_limit_still_reaches_a_watcher_that_keeps_up() {
        let watchers = Arc::new(Watchers::default());
        let mut sub = watchers.register(Vec::new());
        watchers.publish(&[put("huge", WATCH_QUEUE_BYTES_MAX + 1)]);
        assert_eq!(ready(&mut sub).await, ["huge"]);
    }

    #[tokio::test]
    async fn each_watcher_queues_its_prefix_only_and_leaves_on_drop() {
        let watchers = Arc::new(Watchers::default());
        let mut users = watchers.register(b"user:".to_vec());
        let mut all = watchers.register(Vec::new());
        watchers.publish(&[put("user:a", 1), put("other", 1), put("user:b", 1)]);
        assert_eq!(ready(&mut users).await, ["user:a", "user:b"]);
        assert_eq!(ready(&mut all).await, ["user:a", "other", "user:b"]);
        drop(users);
        assert!(watchers.any());
        drop(all);
        assert!(!watchers.any(), "dropped subscriptions are still registered");
    }

    #[tokio::test]
    async fn a_closed_node_hands_over_what_is_queued_then_says_it_stopped() {
        let watchers = Arc::new(Watchers::default());
        let mut sub = watchers.register(Vec::new());
        watchers.publish(&[put("k", 1)]);
        watchers.close();
        assert_eq!(ready(&mut sub).await, ["k", "closed"]);
    }
}
