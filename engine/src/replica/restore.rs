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
//!    here. Or once every enrolled replica has completed a transfer since the recovery began
//!    (an anti-entropy session, for one whose vector this replica covers): whatever they hold of its writes is
//!    here, even when none holds them up to N any more (the one that showed N was itself
//!    restored since). The vector then covers the re-issued writes too, and writes resume.
//!
//! A session that was open when the recovery began ends without merging its sender's vector:
//! the sender computed what to send against the handshake's old vector
//! ([`Replica::restore_epoch`]).
//!
//! Limits (said where they bite): a restored replica that acknowledges more writes than it lost
//! before it hears from any peer reaches a counter no peer exceeds, and the reuse goes unseen
//! (the node takes its first writes only after its first handshakes, or a few seconds, to make
//! this unlikely); writes made by a run before a restart on the copy are not re-issued; with no
//! member enrolled, the recovery ends only when a peer holding the highest seq seen completes
//! a session with it.

use crate::error::{Error, Result, StorageError};
use crate::ids::{Dot, ReplicaId, Seq};
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
    /// The highest own seq any peer, member or device, was seen to hold: the re-issued writes
    /// lie above it. (0 in a recovery recorded before this field: the target is then used.)
    #[serde(default)]
    pub seen: Seq,
    /// Whether a device's evidence (its vector, with this replica's own signature over the
    /// seq: `Replica::notice_own_seq_from_device`) began or widened it. A device sends back
    /// nothing but its own writes, so no transfer may ever reach what it showed: the recovery
    /// then ends once the own component is back at `target` (what members showed) and every
    /// other member has been heard from since it began (with no other member, at once).
    #[serde(default)]
    pub by_device: bool,
}

impl Recovery {
    /// The highest own seq a peer was seen to hold.
    fn seen_max(&self) -> Seq {
        self.seen.max(self.target)
    }
}

/// At most this many ranges of lost own seqs are kept ([`Replica::lost_own`]; each restore
/// adds one). Past it the two oldest are joined into one range spanning both: devices then
/// re-upload more of their writes than were lost, and miss none.
pub const LOST_RANGES_MAX: usize = 16;

/// Adds `(from, to]` to `ranges` (sorted, disjoint), joining what overlaps or touches, and
/// keeps at most [`LOST_RANGES_MAX`] of them.
pub(crate) fn add_lost_range(ranges: &mut Vec<(Seq, Seq)>, from: Seq, to: Seq) {
    if to <= from {
        return;
    }
    ranges.push((from, to));
    ranges.sort();
    let mut joined: Vec<(Seq, Seq)> = Vec::with_capacity(ranges.len());
    for &(f, t) in ranges.iter() {
        match joined.last_mut() {
            Some(last) if f <= last.1 => last.1 = last.1.max(t),
            _ => joined.push((f, t)),
        }
    }
    while joined.len() > LOST_RANGES_MAX {
        let (f, _) = joined.remove(0);
        joined[0].0 = f;
    }
    *ranges = joined;
}

/// Whether `seq` lies in one of `ranges` (each `(from, to]`).
#[must_use]
pub fn in_lost_ranges(ranges: &[(Seq, Seq)], seq: Seq) -> bool {
    ranges.iter().any(|&(from, to)| from < seq && seq <= to)
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
        // While recovering, the re-issued writes sit above what peers were seen to hold: a
        // member holding more than the target holds writes this replica must get back.
        let threshold = self.recovery.map_or(self.own_counter(), |r| r.target);
        if seen <= threshold {
            return Ok(false);
        }
        self.check_own_seq_gap(seen)?;
        self.begin_recovery(seen, true)?;
        Ok(true)
    }

    /// [`Replica::notice_own_seq`] for what a device showed: the own component of its vector,
    /// already checked against this replica's own signature over it (a device is no witness
    /// of its own accord, docs/design.md §9; only what this replica itself signed counts).
    /// Beyond the counter (or, while recovering, beyond what peers were seen to hold), this
    /// store is an older copy: recovery begins, re-issuing above `seen`, and records the lost
    /// range so that devices re-upload their writes in it ([`Replica::lost_own`]). The
    /// recovery ends as [`Recovery::by_device`] says. Returns whether it began or widened.
    pub(crate) fn notice_own_seq_from_device(&mut self, seen: Seq) -> Result<bool> {
        if !self.device_claim_is_news(seen) {
            return Ok(false);
        }
        self.check_own_seq_gap(seen)?;
        self.begin_recovery(seen, false)?;
        self.end_recovery_if_done()?;
        Ok(true)
    }

    /// Whether a device showing own seq `seen` tells this replica something it must act on:
    /// beyond its counter (or, while recovering, beyond what peers were seen to hold).
    pub(crate) fn device_claim_is_news(&self, seen: Seq) -> bool {
        seen > self.recovery.map_or(self.own_counter(), |r| r.seen_max())
    }

    /// [`Replica::notice_own_seq`] for own writes a member holds beyond its vector (entries of
    /// a partial transfer): no complete transfer may ever bring the own component back to
    /// them, so the recovery ends as one a device began ([`Recovery::by_device`]).
    ///
    /// Unlike a device's, it does not end at once when no other member is to be heard: the
    /// entries that showed it are the originals, and are applied under the lowered vector.
    pub(crate) fn notice_own_seq_held(&mut self, seen: Seq) -> Result<bool> {
        if !self.device_claim_is_news(seen) {
            return Ok(false);
        }
        self.check_own_seq_gap(seen)?;
        self.begin_recovery(seen, false)?;
        Ok(true)
    }

    fn check_own_seq_gap(&self, seen: Seq) -> Result<()> {
        let counter = self.own_counter();
        if seen.0.saturating_sub(counter.0) > RESTORE_SEQ_GAP_MAX {
            return Err(Error::OwnSeqImplausible {
                replica: self.id(),
                seen,
                own: counter,
                max_gap: RESTORE_SEQ_GAP_MAX,
            });
        }
        Ok(())
    }

    /// Whether `proof` is this replica's own signature over a seq of its own at or beyond
    /// `seen`, signed no later than this replica's clock allows: what a device shows of this
    /// replica's writes counts only with it.
    pub(crate) fn own_seq_proof_verifies(&self, seen: Seq, proof: Option<&crate::device::SeqProof>) -> bool {
        proof.is_some_and(|p| {
            p.0 >= seen && p.as_signed(self.id()).verify_by(self.signer.as_ref(), self.signed_time_limit_ms())
        })
    }

    /// This replica's signature over its own counter, for a device to keep and show it again
    /// if this replica is ever restored from an older copy.
    pub(crate) fn own_seq_proof(&self) -> crate::device::SeqProof {
        let seq = self.own_counter();
        let signed = self.sign_ack(vec![(self.id(), seq)].into());
        crate::device::SeqProof(seq, signed.time_ms, signed.signature)
    }

    /// The ranges `(from, to]` of this replica's own seqs it lost to restores from older
    /// copies (at most [`LOST_RANGES_MAX`]): writes peers hold under those dots may be missing
    /// here. A device re-uploads its own writes it holds under them (`MemberHello`).
    #[must_use]
    pub fn lost_own(&self) -> &[(Seq, Seq)] {
        &self.lost_own
    }

    /// The seqs of `member` lost to restores: this replica's own, or what handshakes told of
    /// another member's (the union of its statements kept, `replica/lost.rs`).
    #[must_use]
    pub fn lost_of(&self, member: ReplicaId) -> &[(Seq, Seq)] {
        if member == self.id() {
            &self.lost_own
        } else {
            self.lost_others_union.get(&member).map_or(&[], Vec::as_slice)
        }
    }

    /// Notes, while a recovery begun by a device runs, that member `peer`'s handshake was
    /// heard (what it holds of this replica's writes was checked by [`Replica::notice_own_seqs`]
    /// first), and ends the recovery if that was the last one it waited for.
    pub(crate) fn note_recovery_heard(&mut self, peer: ReplicaId) -> Result<()> {
        if self.recovery.is_some_and(|r| r.by_device) && self.membership.contains(peer) {
            self.recovery_heard.insert(peer);
            self.end_recovery_if_done()?;
        }
        Ok(())
    }

    /// Notes that member `peer` completed a transfer to this replica (its `Done` merged) while
    /// a recovery runs, and ends the recovery once every other enrolled replica has since it
    /// began (a peer whose vector this one covers transfers only in an anti-entropy session,
    /// which reconciles whatever the vectors say: it may hold entries beyond its vector, from
    /// a transfer cut short, `lethe-sim --restores` seed 566):
    /// whatever any member still holds of this replica's writes is then here, even when no
    /// member holds them up to the target any more (the member that showed it was itself
    /// restored from an older copy since; `lethe-sim --restores`, seed 910, waited for ever).
    pub(crate) fn note_recovery_transfer(&mut self, peer: ReplicaId) -> Result<()> {
        let Some(recovery) = self.recovery else { return Ok(()) };
        // Every enrolled replica, admitted as a member or not (R6-1: one enrolled and not yet
        // admitted in the copy may hold the writes; R6-4: admissions persist only at a GC
        // step, enrolments at once). With none enrolled, no set of peers is known to be all
        // of them: the target decides alone.
        if !self.membership.is_enrolled(peer) {
            return Ok(());
        }
        self.recovery_transferred.insert(peer);
        if !self.membership.enrolled().all(|r| r == self.id() || self.recovery_transferred.contains(&r)) {
            return Ok(());
        }
        self.end_recovery(recovery)
    }

    /// Ends `recovery` now: the own component moves to its counter (covering the re-issued
    /// writes), and writes resume. Durable when this returns.
    fn end_recovery(&mut self, recovery: Recovery) -> Result<()> {
        let me = self.id();
        let mut vector = self.vector().clone();
        vector.advance(me, recovery.counter);
        let mut batch = Batch::new();
        batch.set_meta(Meta::Vector, encode_vector(&vector));
        batch.set_meta(Meta::Restore, encode_cbor(&None::<Recovery>));
        self.commit(&batch)?;
        self.vector = vector;
        self.recovery = None;
        self.recovery_heard.clear();
        self.recovery_transferred.clear();
        Ok(())
    }

    /// Whether a recovery begun by a device has heard from every other member since it began.
    fn heard_every_member(&self) -> bool {
        self.membership.iter().all(|(r, _)| self.recovery_heard.contains(&r))
    }

    /// Ends a recovery begun by a device once nothing is left to wait for: the own component
    /// is back at what members showed, and every other member has been heard from.
    fn end_recovery_if_done(&mut self) -> Result<()> {
        let Some(recovery) = self.recovery.filter(|r| r.by_device) else { return Ok(()) };
        if self.vector().get(self.id()) < recovery.target || !self.heard_every_member() {
            return Ok(());
        }
        self.end_recovery(recovery)
    }

    /// [`Replica::notice_own_seq`] for everything a handshake shows: the sender's vector and
    /// the acknowledged vectors of its members that they signed (docs/design.md §9: a sender's
    /// word about a third replica is no evidence, and a recovery refuses local writes).
    pub fn notice_own_seqs(&mut self, vector: &VersionVector, gossip: &[MemberInfo]) -> Result<bool> {
        let me = self.id();
        // A member's gossiped record of this replica is this replica's own past report (it may
        // name writes no peer ever received); the others' records are what they hold.
        let limit_ms = self.signed_time_limit_ms();
        let seen = gossip
            .iter()
            .filter(|g| g.replica != me && g.as_signed().verify_by(self.signer.as_ref(), limit_ms))
            .map(|g| g.acked.get(me))
            .fold(vector.get(me), Seq::max);
        // This replica's own record as a member keeps it, signed by this replica: its counter
        // then, which no peer may hold writes up to, but which members' checkpoints may name
        // (collection would wait until the counter passes it again). Its own word, so it
        // counts, as a device's kept proof does: a recovery that waits for no transfer.
        let own_record = gossip
            .iter()
            .filter(|g| g.replica == me && g.as_signed().verify_by(self.signer.as_ref(), limit_ms))
            .map(|g| g.acked.get(me))
            .fold(Seq(0), Seq::max);
        let began = self.notice_own_seq(seen)?;
        Ok(self.notice_own_seq_held(own_record)? || began)
    }

    /// Begins (or widens) a recovery: `seen` is the highest own seq a peer showed, a member
    /// (`from_member`: a transfer must bring the own component back to it) or a device.
    fn begin_recovery(&mut self, seen: Seq, from_member: bool) -> Result<()> {
        let me = self.id();
        let own = self.vector().get(me);
        let acknowledged = self.membership.iter().map(|(_, m)| m.acked.get(me)).fold(Seq(0), Seq::max);
        let floor = acknowledged.min(own);
        let previous = self.recovery;
        let target = match previous {
            _ if from_member => seen.max(previous.map_or(Seq(0), |r| r.target)),
            Some(r) => r.target,
            // Only a device showed it: no member is known to hold anything to send back.
            None => floor,
        };
        let seen_max = seen.max(previous.map_or(Seq(0), |r| r.seen_max()));
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
        let mut seq = seen_max.max(self.own_counter());
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
        let recovery = Recovery {
            counter: seq,
            target,
            reissued: previous.map_or(0, |r| r.reissued) + reissued,
            seen: seen_max,
            by_device: previous.is_some_and(|r| r.by_device) || !from_member,
        };
        // What peers may hold under own dots this store lacks: everything issued since the copy
        // (the copy's counter is what this run opened with), up to what a peer showed. Not from
        // the own component: a recovery already running lowered it below the copy's counter,
        // and a range from there would name dots the copy holds (a device would upload again a
        // write a member holds under one of them, and the member would apply it twice). A
        // recovery already running recorded the range up to what was seen then (a run opened
        // on it opened with its counter, above that): the new one joins it.
        let from = previous.map_or(self.opened_seq.min(own), |r| self.opened_seq.min(r.seen_max()));
        let mut lost = self.lost_own.clone();
        add_lost_range(&mut lost, from, seen_max);
        batch.set_meta(Meta::Vector, encode_vector(&vector));
        batch.set_meta(Meta::Restore, encode_cbor(&Some(recovery)));
        batch.set_meta(Meta::Lost, encode_cbor(&lost));
        self.commit(&batch)?;
        self.vector = vector;
        self.recovery = Some(recovery);
        self.lost_own = lost;
        self.recovery_heard.clear();
        self.recovery_transferred.clear();
        self.restore_epoch += 1;
        Ok(())
    }

    /// Ends the recovery once `vector` (about to be committed) has its own component back at the
    /// target: it then covers the re-issued writes too. Returns the recovery metadata to write.
    /// A recovery begun by a device also waits for every other member to be heard from.
    pub(crate) fn settle_recovery(&self, vector: &mut VersionVector) -> Option<Vec<u8>> {
        let recovery = self.recovery?;
        let me = self.id();
        if vector.get(me) < recovery.target || (recovery.by_device && !self.heard_every_member()) {
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

/// The own seqs lost to restores, as a store records them ([`Meta::Lost`]).
pub(crate) fn load_lost(snap: &impl Snapshot) -> Result<Vec<(Seq, Seq)>> {
    Ok(snap.meta(Meta::Lost)?.map(|b| decode_cbor("lost own seqs", &b)).transpose()?.unwrap_or_default())
}

/// The recovery recorded in a store, if one was running when it closed.
pub(crate) fn load_recovery(snap: &impl Snapshot) -> Result<Option<Recovery>> {
    Ok(snap.meta(Meta::Restore)?.map(|b| decode_cbor::<Option<Recovery>>("restore", &b)).transpose()?.flatten())
}
