//! A replica restored from an older copy of its store (a backup, a VM snapshot, a copied data
//! directory; docs/design.md §10): it must never issue a dot twice, and lose none of its writes.
//!
//! The copy's counter is behind writes this replica made before it was restored, which peers
//! hold; the writes it acknowledged since then reused those seqs. Seen at a peer, such a write is
//! "covered and absent" (the peer holds another write under that dot) and is dropped; seen here,
//! the peer's write under the same dot is dropped too. So, the moment a peer shows one of this
//! replica's own seqs beyond its counter ([`Replica::notice_own_seq`], from a handshake, its
//! gossip or an acknowledgement):
//!
//! 1. **Stop taking writes** ([`Error::Restored`]) until the recovery ends.
//! 2. **Re-issue** every own entry above K, the highest own seq a member had acknowledged in the
//!    restored copy (below it, the peers hold the same writes), that was written since this
//!    replica was opened (stamped above the clock it opened with: older ones are the copy's,
//!    which peers hold, or beat), under fresh dots above N, the highest own seq any peer was
//!    seen to hold: same key, stamp and payload, so each keeps its place in LWW order, and the
//!    higher seq wins the tie with any copy under the old dot. A peer later showing more than N
//!    (while the recovery runs) starts it again above that.
//! 3. **Uncover the lost range**: this replica's vector goes back to K for its own component, so
//!    peers send it their copies of its writes in (K, N], which it no longer holds, and nothing
//!    it receives in that range is taken for dead. The counter (the last seq issued) is kept
//!    apart ([`Meta::Restore`]) until the recovery ends.
//! 4. **End** once a complete transfer from a peer has brought the own component back to N: that
//!    peer had seen every write this replica made up to N, so whatever of them is still live is
//!    here. The vector then covers the re-issued writes too, and writes resume.
//!
//! A session that was open when the recovery began ends without merging its sender's vector:
//! the sender computed what to send against the handshake's old vector
//! ([`Replica::restore_epoch`]).
//!
//! Limits (said where they bite): a restored replica that acknowledges more writes than it lost
//! before it hears from any peer reaches a counter no peer exceeds, and the reuse goes unseen
//! (the node takes its first writes only after its first handshakes, or a few seconds, to make
//! this unlikely); writes made by a run before a restart on the copy are not re-issued; the
//! recovery ends only when a peer holding the highest seq seen completes a session with it.

use crate::error::{Error, Result, StorageError};
use crate::ids::{Dot, Seq};
use crate::membership::MemberInfo;
use crate::replica::Replica;
use crate::storage::{Batch, Meta, Snapshot, Storage, decode_cbor, encode_cbor, encode_vector};
use crate::vector::VersionVector;
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;

/// The furthest beyond its own counter a peer may claim this replica's writes go (2^40 seqs,
/// far more than any store falls behind between a backup and its restore). A larger claim is a
/// lie (or a broken peer) and is refused: believed, it would block local writes until a vector
/// came back to it, and push seqs toward overflow.
pub const RESTORE_SEQ_GAP_MAX: u64 = 1 << 40;

/// A recovery in progress, persisted as [`Meta::Restore`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    /// The last own seq issued (the re-issued writes end here).
    pub counter: Seq,
    /// The own seq a complete transfer must bring the vector back to: the highest any peer was
    /// seen to hold when the recovery began.
    pub target: Seq,
    /// How many writes were re-issued.
    pub reissued: u64,
}

impl<S: Storage> Replica<S> {
    /// The last seq this replica issued: its own vector component, or, while it recovers from a
    /// restore, the recovery's counter.
    #[must_use]
    pub fn own_counter(&self) -> Seq {
        let own = self.vector().get(self.id());
        self.recovery.map_or(own, |r| r.counter.max(own))
    }

    /// The recovery from a restore in progress, if any (see the module docs).
    #[must_use]
    pub fn recovery(&self) -> Option<Recovery> {
        self.recovery
    }

    /// Bumped each time a recovery begins: a session opened before must not merge its sender's
    /// vector.
    #[must_use]
    pub fn restore_epoch(&self) -> u64 {
        self.restore_epoch
    }

    /// Checks what a peer showed of this replica's own writes (`seen`: the highest own seq in its
    /// vector, gossip or acknowledgement). Beyond the counter, this replica's store is older than
    /// writes it made: recovery begins (see the module docs). Returns whether it did.
    ///
    /// Fails with [`Error::OwnSeqImplausible`] (changing nothing) for a claim more than
    /// [`RESTORE_SEQ_GAP_MAX`] beyond the counter.
    pub fn notice_own_seq(&mut self, seen: Seq) -> Result<bool> {
        let counter = self.own_counter();
        // While recovering, the re-issued writes sit in (target, counter]: a peer holding more
        // than the target holds originals there too, and they must move again.
        let threshold = self.recovery.map_or(counter, |r| r.target);
        if seen <= threshold {
            return Ok(false);
        }
        if seen.0.saturating_sub(counter.0) > RESTORE_SEQ_GAP_MAX {
            return Err(Error::OwnSeqImplausible {
                replica: self.id(),
                seen,
                own: counter,
                max_gap: RESTORE_SEQ_GAP_MAX,
            });
        }
        self.begin_recovery(seen)?;
        Ok(true)
    }

    /// [`Replica::notice_own_seq`] for everything a handshake shows: the sender's vector and
    /// the acknowledged vectors of its members that they signed (docs/design.md §9: a sender's
    /// word about a third replica is no evidence, and a recovery refuses local writes).
    pub fn notice_own_seqs(&mut self, vector: &VersionVector, gossip: &[MemberInfo]) -> Result<bool> {
        let me = self.id();
        // A member's gossiped record of this replica is this replica's own past report (it may
        // name writes no peer ever received); the others' records are what they hold.
        let seen = gossip
            .iter()
            .filter(|g| g.replica != me && g.as_signed().verify_by(self.signer.as_ref(), self.signed_time_limit_ms()))
            .map(|g| g.acked.get(me))
            .fold(vector.get(me), Seq::max);
        self.notice_own_seq(seen)
    }

    fn begin_recovery(&mut self, seen: Seq) -> Result<()> {
        let me = self.id();
        let own = self.vector().get(me);
        let acknowledged = self.membership.iter().map(|(_, m)| m.acked.get(me)).fold(Seq(0), Seq::max);
        let floor = acknowledged.min(own);
        let target = seen.max(self.recovery.map_or(Seq(0), |r| r.target));
        let snap = self.store().snapshot()?;
        let mut keys = Vec::new();
        snap.scan_dots(
            Dot { replica: me, seq: floor.next() },
            Dot { replica: me, seq: Seq(u64::MAX) },
            &mut |_, key| {
                keys.push(key.to_vec());
                ControlFlow::Continue(())
            },
        )?;
        let mut batch = Batch::new();
        let mut seq = target.max(self.own_counter());
        let mut reissued = 0;
        for key in keys {
            let entry = snap.entry(&key)?.ok_or_else(|| StorageError::Corrupt {
                what: "dot index",
                detail: format!("names key {key:?}, which has no entry"),
            })?;
            // Written before this replica was opened on the copy: peers hold the same write (or
            // what beat it, a collected delete maybe). Re-issued, it could come back; left under
            // its dot, the lowered vector lets "covered and absent" settle it.
            if entry.stamp.hlc <= self.opened_clock {
                continue;
            }
            seq = seq.next();
            batch.put(crate::entry::Entry { dot: Dot { replica: me, seq }, ..entry });
            reissued += 1;
        }
        drop(snap);
        let mut vector = VersionVector::new();
        for (r, s) in self.vector().iter() {
            vector.advance(r, if r == me { floor } else { s });
        }
        let recovery = Recovery { counter: seq, target, reissued: self.recovery.map_or(0, |r| r.reissued) + reissued };
        batch.set_meta(Meta::Vector, encode_vector(&vector));
        batch.set_meta(Meta::Restore, encode_cbor(&Some(recovery)));
        self.commit(&batch)?;
        self.vector = vector;
        self.recovery = Some(recovery);
        self.restore_epoch += 1;
        Ok(())
    }

    /// Ends the recovery once `vector` (about to be committed) has its own component back at the
    /// target: it then covers the re-issued writes too. Returns the recovery metadata to write.
    pub(crate) fn settle_recovery(&self, vector: &mut VersionVector) -> Option<Vec<u8>> {
        let recovery = self.recovery?;
        let me = self.id();
        if vector.get(me) < recovery.target {
            return None;
        }
        vector.advance(me, recovery.counter);
        Some(encode_cbor(&None::<Recovery>))
    }

    /// Refuses local writes while a recovery runs.
    pub(crate) fn check_not_recovering(&self) -> Result<()> {
        match self.recovery {
            Some(r) => Err(Error::Restored {
                replica: self.id(),
                target: r.target,
                own: self.vector().get(self.id()),
                reissued: r.reissued,
            }),
            None => Ok(()),
        }
    }
}

/// The recovery recorded in a store, if one was running when it closed.
pub(crate) fn load_recovery(snap: &impl Snapshot) -> Result<Option<Recovery>> {
    Ok(snap.meta(Meta::Restore)?.map(|b| decode_cbor::<Option<Recovery>>("restore", &b)).transpose()?.flatten())
}
