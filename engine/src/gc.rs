//! Causal-stability garbage collection on a [`Replica`]: acknowledgements, membership gossip,
//! eviction, and the two-step collection of tombstones and expired records (DESIGN.md §2).
//!
//! One GC step ([`Replica::collect_garbage`]):
//! 1. purge values whose TTL passed (they become expired records);
//! 2. evict members silent for longer than the lease;
//! 3. compute the stable frontier F (meet of acknowledged vectors) and their join J;
//! 4. if a checkpoint (F₀, J₀) is pending and F covers J₀, remove every tombstone and expired
//!    record whose dot F₀ covers, then note (F, J) as the new checkpoint; with none pending, note
//!    (F, J).
//!
//! Membership and the checkpoint are persisted with the step's batch. Acknowledgements between
//! steps live in memory: losing them in a crash only delays collection.

use crate::error::Result;
use crate::ids::{Dot, ReplicaId};
use crate::membership::{Checkpoint, MemberInfo, Membership};
use crate::replica::Replica;
use crate::storage::{Batch, Meta, Storage, encode_cbor};
use crate::vector::VersionVector;

/// How many removals one GC commit holds at most.
const GC_BATCH_ENTRIES: usize = 4096;

/// What one GC step did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Values purged because their TTL passed.
    pub purged: usize,
    /// Members evicted for silence.
    pub evicted: Vec<ReplicaId>,
    /// Tombstones and expired records removed.
    pub collected: usize,
    /// Whether a checkpoint is now waiting for the frontier to cover its join.
    pub pending: bool,
}

impl<S: Storage> Replica<S> {
    /// The stable frontier: what every member (this replica included) has acknowledged.
    #[must_use]
    pub fn frontier(&self) -> VersionVector {
        self.membership.frontier(self.vector())
    }

    /// The members whose acknowledgements count (besides this replica).
    #[must_use]
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The pending GC checkpoint, if any.
    #[must_use]
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoint.as_ref()
    }

    /// The fingerprint of every unpurged value: equal on replicas that hold the same live
    /// entries (once both have purged what expired). O(1).
    #[must_use]
    pub fn digest(&self) -> crate::fingerprint::Fingerprint {
        self.index.live.fingerprint(std::ops::Bound::Unbounded, std::ops::Bound::Unbounded)
    }

    /// Tombstones and expired records currently held (not yet collected).
    #[must_use]
    pub fn tombstone_count(&self) -> usize {
        self.index.dead_count()
    }

    /// Records that `peer` has made `vector` durable (a handshake or an acknowledgement). A
    /// member's record grows; a non-member is admitted only if `vector` covers every tombstone
    /// collected here. Returns whether `peer` is a member afterwards.
    pub fn acknowledge(&mut self, peer: ReplicaId, vector: &VersionVector) -> bool {
        if peer == self.id() {
            return false;
        }
        let now_ms = self.now_ms();
        self.membership.acknowledge(peer, vector, now_ms)
    }

    /// This replica's membership as gossip for a handshake (itself included).
    #[must_use]
    pub fn gossip(&self) -> Vec<MemberInfo> {
        self.membership.gossip(self.id(), self.vector(), self.now_ms())
    }

    /// Merges a peer's gossip under the admission rule of [`Replica::acknowledge`].
    pub fn merge_gossip(&mut self, gossip: &[MemberInfo]) {
        self.membership.merge_gossip(gossip, self.id());
    }

    /// Stops counting `replica` (an operator's eviction). It rejoins by reconciliation.
    pub fn evict(&mut self, replica: ReplicaId) -> bool {
        self.membership.remove(replica)
    }

    /// One GC step (see the module docs).
    pub fn collect_garbage(&mut self) -> Result<GcReport> {
        let mut report = GcReport { purged: self.purge_expired()?, ..GcReport::default() };
        let now_ms = self.now_ms();
        report.evicted = self.membership.evict_silent(now_ms, self.config().lease_ms);
        let frontier = self.frontier();
        let join = self.membership.join(self.vector());
        let collect_under = match &self.checkpoint {
            Some(cp) if frontier.dominates(&cp.join) => Some(cp.frontier.clone()),
            Some(_) => None,
            None => Some(VersionVector::new()),
        };
        let mut batch = Batch::new();
        if let Some(f0) = collect_under {
            let keys = self.index.dead_covered_by(&f0);
            report.collected = keys.len();
            for chunk in keys.chunks(GC_BATCH_ENTRIES) {
                let mut removals = Batch::new();
                for key in chunk {
                    removals.remove(key.clone());
                }
                self.commit(&removals)?;
            }
            self.membership.collected_under(&f0);
            self.checkpoint = Some(Checkpoint { frontier, join });
        }
        report.pending = self.checkpoint.is_some();
        batch.set_meta(Meta::Members, encode_cbor(&self.membership));
        batch.set_meta(Meta::Checkpoint, encode_cbor(&self.checkpoint));
        self.commit(&batch)?;
        Ok(report)
    }

    /// Removes entries that a peer's vector shows dead ("covered and absent" there), if they are
    /// still the stored version of their key. Issues no tombstone. Returns how many went.
    pub fn drop_dead(&mut self, dead: &[(Vec<u8>, Dot)]) -> Result<usize> {
        let mut batch = Batch::new();
        for (key, dot) in dead {
            if self.index.dot_of(key) == Some(*dot) {
                batch.remove(key.clone());
            }
        }
        let dropped = batch.ops.len();
        if dropped > 0 {
            self.commit(&batch)?;
        }
        Ok(dropped)
    }
}
