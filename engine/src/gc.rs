//! Causal-stability garbage collection on a [`Replica`]: acknowledgements, membership gossip,
//! eviction, and the two-step collection of tombstones and expired records (docs/design.md §2).
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

use crate::entry::{Payload, Value};
use crate::error::Result;
use crate::ids::{Dot, ReplicaId};
use crate::membership::{Checkpoint, MemberInfo, Membership};
use crate::replica::Replica;
use crate::storage::{Batch, Meta, Snapshot, Storage, encode_cbor};
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
    /// Devices that stopped holding collection back (silent past the device lease).
    pub lapsed: Vec<ReplicaId>,
    /// Tombstones and expired records removed.
    pub collected: usize,
    /// Whether a checkpoint is now waiting for the frontier to cover its join.
    pub pending: bool,
}

impl<S: Storage> Replica<S> {
    /// The stable frontier: what every member (this replica included) has acknowledged.
    #[must_use]
    pub fn frontier(&self) -> VersionVector {
        self.devices.frontier(self.membership.frontier(self.vector()))
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
        let now_ms = self.now_ms();
        self.acknowledge_at(peer, vector, now_ms)
    }

    /// [`Replica::acknowledge`] heard at `heard_ms`. A newcomer must also cover the pending
    /// checkpoint's frontier, and its vector joins that checkpoint's J₀ (see `membership.rs`).
    fn acknowledge_at(&mut self, peer: ReplicaId, vector: &VersionVector, heard_ms: u64) -> bool {
        if peer == self.id() {
            return false;
        }
        let was_member = self.membership.contains(peer);
        let pending = self.checkpoint.as_ref().map(|c| &c.frontier);
        let member = self.membership.acknowledge(peer, vector, heard_ms, pending);
        if member
            && !was_member
            && let Some(checkpoint) = self.checkpoint.as_mut()
        {
            checkpoint.join.merge(vector);
        }
        member
    }

    /// This replica's membership as gossip for a handshake: its own acknowledgement (its
    /// vector, now, signed), then each member's latest signed one (`sign.rs`).
    #[must_use]
    pub fn gossip(&self) -> Vec<MemberInfo> {
        self.membership.gossip(self.sign_ack(self.vector().clone()))
    }

    /// Merges gossip from `peer` under the admission rule of [`Replica::acknowledge`].
    ///
    /// What `peer` says about itself counts as the connection's word (and is kept to relay if
    /// signed); what it says about any other replica counts only if that replica signed it
    /// (docs/design.md §9): otherwise it changes nothing here and is counted in
    /// [`Replica::acks_unverified`]. A member's record only grows; this replica is never a
    /// member of itself; a record about a replica that is not enrolled here is ignored (gossip
    /// never creates a member); a signed time past this replica's clock plus the drift bounds
    /// does not verify ([`crate::SignedAck::verify_by`]), and one within them counts as now, so
    /// a peer cannot keep a member from being evicted by claiming to hear from it in the future.
    pub fn merge_gossip(&mut self, peer: ReplicaId, gossip: &[MemberInfo]) {
        let now_ms = self.now_ms();
        for g in gossip {
            // The cheap checks first: nothing about a replica not enrolled here is verified.
            if g.replica == self.id() || !self.membership.is_enrolled(g.replica) {
                continue;
            }
            let signed = g.as_signed();
            let verified = if g.replica == peer {
                signed.verify_by(self.signer.as_ref(), self.signed_time_limit_ms())
            } else if self.membership.evicted_after(g.replica, g.last_heard_ms) {
                // An acknowledgement signed before the replica's eviction here does not undo it.
                continue;
            } else {
                // Only claims that could count are checked (and counted when they fail).
                self.verify_relayed(&signed)
            };
            if g.replica != peer && !verified {
                continue;
            }
            self.acknowledge_at(g.replica, &g.acked, g.last_heard_ms.min(now_ms));
            if verified {
                self.membership.note_signed(signed);
            }
        }
    }

    /// Records `peer`'s acknowledgement of `vector` from an `Ack`, and keeps it to relay if
    /// `proof` is its valid signature.
    pub(crate) fn acknowledge_signed(
        &mut self,
        peer: ReplicaId,
        vector: &VersionVector,
        proof: Option<&crate::sign::AckProof>,
    ) -> bool {
        let member = self.acknowledge(peer, vector);
        if let Some(crate::sign::AckProof(time_ms, signature)) = proof {
            let signed = crate::sign::SignedAck {
                signer: peer,
                vector: vector.clone(),
                time_ms: *time_ms,
                signature: signature.clone(),
            };
            if signed.verify_by(self.signer.as_ref(), self.signed_time_limit_ms()) {
                self.membership.note_signed(signed);
            }
        }
        member
    }

    /// Stops counting `replica` (an operator's eviction). It stays enrolled and rejoins by
    /// reconciliation, then counts again once the admission rule lets it. The eviction's time
    /// is kept: an acknowledgement the replica signed no later than that, relayed by another
    /// member, does not re-admit it (its own handshake, or a later signed one, does).
    pub fn evict(&mut self, replica: ReplicaId) -> bool {
        let now_ms = self.now_ms();
        self.membership.remove(replica, now_ms)
    }

    /// Enrols `replica` as a member (an operator's act: docs/design.md §2.4): its acknowledgements
    /// and gossip about it count from now on, and it becomes a member once the admission rule
    /// lets it. Durable when this returns. Returns whether it was new; enrolling this replica
    /// itself does nothing. Fails with [`crate::Error::TooManyMembers`] past
    /// [`crate::membership::MEMBERS_MAX`].
    pub fn enrol_member(&mut self, replica: ReplicaId) -> Result<bool> {
        if replica == self.id() {
            return Ok(false);
        }
        let mut membership = self.membership.clone();
        if !membership.enrol(replica)? {
            return Ok(false);
        }
        self.persist_membership(membership)?;
        Ok(true)
    }

    /// Removes `replica` from the members and the enrolled set at once (an operator's removal):
    /// it no longer holds collection back, and nothing about it is taken from gossip. Durable
    /// when this returns. Returns whether it was enrolled.
    pub fn remove_member(&mut self, replica: ReplicaId) -> Result<bool> {
        let mut membership = self.membership.clone();
        if !membership.unenrol(replica) {
            return Ok(false);
        }
        self.persist_membership(membership)?;
        Ok(true)
    }

    fn persist_membership(&mut self, membership: Membership) -> Result<()> {
        let mut batch = Batch::new();
        batch.set_meta(Meta::Members, encode_cbor(&membership));
        self.commit(&batch)?;
        self.membership = membership;
        Ok(())
    }

    /// One GC step (see the module docs).
    pub fn collect_garbage(&mut self) -> Result<GcReport> {
        let mut report = GcReport { purged: self.purge_expired()?, ..GcReport::default() };
        let now_ms = self.now_ms();
        report.evicted = self.membership.evict_silent(now_ms, self.config().lease_ms);
        report.lapsed = self.devices.lapse_silent(now_ms, self.config().device_lease_ms);
        let frontier = self.frontier();
        let join = self.devices.join(self.membership.join(self.vector()));
        let collect_under = match &self.checkpoint {
            // A device collects what the members collected, nothing else (`device/queue.rs`),
            // and of that only what its own vector covers: a member's F₀ is under its vector,
            // so a collected delete stays known there ("covered and absent"); a device may hold
            // a dead record its vector does not cover (from a download cut before its end), and
            // dropping it would leave the delete known nowhere on the device, so an older copy
            // from a member that never saw the delete would come back (`lethe-sim` seed 4107,
            // `engine/tests/device_collection.rs`).
            _ if self.is_device() => Some(self.device.collected.meet(&self.members_vector())),
            Some(cp) if frontier.dominates(&cp.join) => Some(cp.frontier.clone()),
            Some(_) => None,
            None => Some(VersionVector::new()),
        };
        let mut batch = Batch::new();
        if let Some(f0) = &collect_under {
            let keys = self.index.dead_covered_by(f0);
            report.collected = keys.len();
            for chunk in keys.chunks(GC_BATCH_ENTRIES) {
                let mut removals = Batch::new();
                for key in chunk {
                    removals.remove(key.clone());
                }
                self.commit(&removals)?;
            }
        }
        // The next membership and checkpoint go into memory only once they are durable: a failed
        // commit leaves the replica as its store is.
        let mut membership = self.membership.clone();
        let mut checkpoint = self.checkpoint.clone();
        if let Some(f0) = &collect_under {
            membership.collected_under(f0);
            checkpoint = Some(Checkpoint { frontier, join });
        }
        report.pending = checkpoint.is_some();
        // Only what changed: an idle node's GC step then writes (and fsyncs) nothing.
        Self::add_device_changes(&mut self.devices, &mut batch);
        let snap = self.store().snapshot()?;
        for (meta, value) in [(Meta::Members, encode_cbor(&membership)), (Meta::Checkpoint, encode_cbor(&checkpoint))] {
            if snap.meta(meta)?.as_deref() != Some(value.as_slice()) {
                batch.set_meta(meta, value);
            }
        }
        drop(snap);
        if !batch.is_empty() {
            self.commit(&batch)?;
        }
        self.membership = membership;
        self.checkpoint = checkpoint;
        Ok(report)
    }

    /// Removes entries that a peer's vector shows dead ("covered and absent" there), if they are
    /// still the stored version of their key. Issues no tombstone. Returns how many went.
    ///
    /// A value with a TTL is not removed but settled as an expired record under its stamp: the
    /// peer may have left it out only because its clock already passed the expiry (clocks differ
    /// within the drift bound), and then it still holds the write as an expired record that beats
    /// older versions of the key. Removing it here would let such an older version back in.
    /// Settling it is right in the other case too (the peer holds something newer): an expired
    /// record hides nothing and is collected like a tombstone.
    pub fn drop_dead(&mut self, dead: &[(Vec<u8>, Dot)]) -> Result<usize> {
        let mut batch = Batch::new();
        let snap = self.store().snapshot()?;
        for (key, dot) in dead {
            if self.index.dot_of(key) != Some(*dot) {
                continue;
            }
            let Some(mut e) = snap.entry(key)? else { continue };
            match e.payload {
                Payload::Value(Value { expires_at_ms: Some(t), .. }) => {
                    e.payload = Payload::Expired { expires_at_ms: t };
                    batch.put(e);
                }
                Payload::Value(_) => {
                    batch.remove(key.clone());
                }
                // Already dead here: nothing to hide.
                Payload::Expired { .. } | Payload::Tombstone => {}
            }
        }
        drop(snap);
        let dropped = batch.ops.len();
        if dropped > 0 {
            self.commit(&batch)?;
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use crate::hlc::ManualClock;
    use crate::replica::{Config, PutOptions};
    use crate::storage::MemoryStore;
    use crate::{Entry, Payload, Replica, ReplicaId, Seq, Stamp, Value};
    use std::sync::Arc;

    #[test]
    fn a_ttl_value_shown_dead_is_settled_as_expired_and_still_beats_older_versions() {
        let clock = ManualClock::new(1_700_000_000_000);
        let mut r =
            Replica::open(MemoryStore::new(), ReplicaId(1), Config::default(), Arc::new(clock.clone())).unwrap();
        let older = Entry {
            key: b"k".to_vec(),
            stamp: Stamp { hlc: crate::Hlc((1_600_000_000_000 << 16) + 1), replica: ReplicaId(9) },
            dot: crate::Dot { replica: ReplicaId(9), seq: Seq(1) },
            payload: Payload::Value(Value { bytes: b"old".to_vec(), expires_at_ms: None, metadata: None }),
        };
        let w = r.put("k", "v", PutOptions { ttl_ms: Some(60_000), metadata: None }).unwrap();
        r.put("plain", "v", PutOptions::default()).unwrap();
        let plain = r.get(b"plain").unwrap().unwrap().dot;
        assert_eq!(r.drop_dead(&[(b"k".to_vec(), w.dot), (b"plain".to_vec(), plain)]).unwrap(), 2);
        assert_eq!(r.get(b"k").unwrap(), None, "hidden at once");
        assert_eq!(r.tombstone_count(), 1, "kept as an expired record");
        assert_eq!(r.get(b"plain").unwrap(), None);
        // An older version of the key from a writer this replica never heard of still loses.
        r.apply_remote(vec![older], None).unwrap();
        assert_eq!(r.get(b"k").unwrap(), None);
    }
}
