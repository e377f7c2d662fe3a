//! What a device node tells its app about syncing ([`crate::Node::sync_events`]), and what its
//! status says about the last sync: the sync status an app shows (at_client's sync progress
//! listener, PowerSync's `SyncStatus`, Couchbase Lite's replicator status).
//!
//! Events go out on a tokio broadcast channel of [`SYNC_EVENTS_QUEUED_MAX`]: a receiver that
//! falls further behind loses the oldest and is told how many (`RecvError::Lagged`); the
//! node never waits for one.

use serde::{Deserialize, Serialize};

/// Events a receiver may fall behind by before it loses the oldest.
pub const SYNC_EVENTS_QUEUED_MAX: usize = 1024;

/// One thing that happened to a device's sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SyncEvent {
    /// A connection to a member (`server`: its node id) is up.
    Connected {
        /// The member's node id.
        server: String,
    },
    /// That connection ended; the node tries again (the next server, with backoff).
    Disconnected {
        /// The member's node id.
        server: String,
        /// Why, as the transport said it.
        reason: String,
    },
    /// A download in progress: what arrived so far in this session, and the estimated total.
    Progress {
        /// Live entries received so far.
        entries: u64,
        /// Bytes received so far (decoded frames).
        bytes: u64,
        /// The member's live entry count, as its news stream last said it (what a bootstrap
        /// sends; a delta sends fewer): `None` until it has. No estimate of bytes is given.
        total_entries: Option<u64>,
    },
    /// Queued writes a member answered in one session.
    Uploaded {
        /// How many were uploaded.
        count: u64,
        /// Of them, admitted under a member's dot.
        admitted: u64,
    },
    /// A session ended with nothing left queued: this device holds what the member held.
    InSync {
        /// The member's node id.
        server: String,
    },
    /// A member refused this device (not enrolled, or removed): it says why.
    Refused {
        /// The member's node id.
        server: String,
        /// The member's reason.
        reason: String,
    },
}

/// The last device session that finished, as `status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSync {
    /// When it ended, in Unix ms.
    pub at_ms: u64,
    /// Bytes it took on the wire, both ways.
    pub bytes: u64,
    /// Dead records (tombstones, expired records) it received.
    pub tombstones_received: u64,
    /// The member's node id.
    pub server: String,
}
