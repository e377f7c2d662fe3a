//! A device's side of its writes (docs/design.md §8): the upload queue, the base vector of each
//! queued write, the acknowledgement it caps, and the horizon of a fresh bootstrap.
//!
//! A device numbers its own writes 1, 2, 3, … as members do, but those numbers are **upload
//! seqs**, never dots that leave the device: the write is stored under the dot (device, upload
//! seq) until a member admits it and answers with a dot of its own, which replaces it. So the
//! queue needs no table of its own: it is the device's entries still under its own dots, above
//! the last upload seq a member answered, in the dot index's order. A write that something newer
//! replaced is no longer stored, so it is never uploaded (I11).
//!
//! Invariants kept here:
//! - the device's acknowledgement never passes the **base** (its vector over members when the
//!   write was made) of its oldest write still queued: a delete it had not seen then is
//!   concurrent with that write, and must not become stable before the write is admitted;
//! - what a device sends about its vector never names the device itself (vectors have one
//!   component per member);
//! - the horizon H (the vector of a fresh bootstrap, which carried no dead record) is forgotten
//!   only once the members' `collected` covers it.

use crate::device::message::{Admission, SeqProof};
use crate::entry::Entry;
use crate::error::{Result, StorageError};
use crate::hlc::Hlc;
use crate::ids::{Dot, ReplicaId, Seq};
use crate::replica::Replica;
use crate::storage::{Batch, Meta, Snapshot, Storage, decode_cbor, encode_cbor};
use crate::vector::VersionVector;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::ControlFlow;

/// The durable state of a device's uploads ([`Meta::Device`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Every own write up to this upload seq was answered by a member.
    pub answered: Seq,
    /// `(first upload seq, base)`: the device's vector over members when the writes from that
    /// upload seq on (up to the next entry's) were made. Entries wholly answered are dropped.
    pub bases: Vec<(Seq, VersionVector)>,
    /// The vector of a fresh bootstrap: dead records under it may be missing here.
    pub horizon: Option<VersionVector>,
    /// The members' `collected`, as the last member handshake showed it: a device collects the
    /// dead records it covers, and only those (docs/design.md §8), never by a frontier of its
    /// own (its vector covers its own upload seqs: its queued deletes would go before upload).
    #[serde(default)]
    pub collected: VersionVector,
    /// For each member this device synced with, the member's own signature over the highest
    /// seq of its own it showed ([`SeqProof`]): shown to that member again in each handshake,
    /// so that, restored from an older copy, it learns which of its dots it issued already.
    /// At most one per member a handshake came from (`MEMBER_PROOFS_MAX`).
    #[serde(default)]
    pub proofs: BTreeMap<ReplicaId, SeqProof>,
    /// What the run that made the writes still unsent knew when it opened the store (its
    /// counter and clock), kept from its first local write until its first member handshake:
    /// a restart before that handshake opens with the same point, so a device restored from
    /// a backup that writes and restarts still tells its writes from the copy's
    /// (`Replica::renumber_uploads_past`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened: Option<OpenPoint>,
    /// Keys whose own write a member answered "refused" or "known", so this device dropped it,
    /// and whose member entry it has not taken yet from a member covering its vector (R3-4,
    /// R3-5): its vector may cover that entry's dot, so no delta would send it again. Shown in
    /// each handshake (the member sends its entry for each, whatever the vector covers, at most
    /// once per anti-entropy interval, and says whether it did), and forgotten at the end of a
    /// complete download that carried it from a member whose vector covers this device's. At
    /// most [`UNSETTLED_KEYS_MAX`]; past it, the key waits for an anti-entropy session.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsettled: Vec<serde_bytes::ByteBuf>,
}

/// A device remembers at most this many keys it dropped on a member's "refused" or "known"
/// answer and has not settled since ([`DeviceState::unsettled`]); a handshake carries them all
/// (at most 256 KiB of keys, [`crate::limits::KEY_BYTES_MAX`] each; none in the usual case).
pub const UNSETTLED_KEYS_MAX: usize = 256;

/// What a device run knew when it opened its store ([`DeviceState::opened`]): own writes above
/// its counter, stamped above its clock, are the run's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenPoint {
    /// The device's upload counter at open.
    pub seq: Seq,
    /// Its clock at open.
    pub clock: Hlc,
}

/// A device keeps at most this many members' proofs (one per member: members are at most
/// [`crate::membership::MEMBERS_MAX`]); past it, the one with the lowest member id goes.
pub const MEMBER_PROOFS_MAX: usize = crate::membership::MEMBERS_MAX;

/// What one device session's answers settle once its download is complete
/// ([`Replica::settle_download`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Settle {
    /// The writes answered as superseded or known, under the device's own dots.
    pub(crate) writes: Vec<(Vec<u8>, Dot)>,
    /// The highest upload seq answered.
    pub(crate) answered: Seq,
    /// The lowest upload seq answered as pending, if any: the queue stays there.
    pub(crate) pending_from: Option<Seq>,
    /// The keys of the writes answered known or refused in this session: the member sends its
    /// entry for each in this download.
    pub(crate) unheld: Vec<Vec<u8>>,
    /// Whether the member sends its entry for every unsettled key the handshake named
    /// ([`crate::device::MemberHello`]).
    pub(crate) named_sent: bool,
}

impl DeviceState {
    /// Loads it from a snapshot (empty when absent).
    pub(crate) fn load(snap: &impl Snapshot) -> Result<DeviceState> {
        Ok(snap.meta(Meta::Device)?.map(|b| decode_cbor("device state", &b)).transpose()?.unwrap_or_default())
    }

    /// The base of the write with upload seq `seq`.
    fn base_of(&self, seq: Seq) -> Option<&VersionVector> {
        self.bases.iter().rev().find(|(first, _)| *first <= seq).map(|(_, v)| v)
    }
}

impl<S: Storage> Replica<S> {
    /// This replica's vector over members: without its own component when it is a device (its
    /// upload seqs are not dots anyone else holds).
    #[must_use]
    pub fn members_vector(&self) -> VersionVector {
        if !self.is_device() {
            return self.vector().clone();
        }
        let me = self.id();
        self.vector().iter().filter(|(r, _)| *r != me).collect::<Vec<_>>().into()
    }

    /// The upload seq of the oldest write still queued, if any.
    pub(crate) fn oldest_queued(&self, snap: &impl Snapshot) -> Result<Option<Seq>> {
        let me = self.id();
        let mut first = None;
        let from = Dot { replica: me, seq: self.device.answered.next() };
        snap.scan_dots(from, Dot { replica: me, seq: Seq(u64::MAX) }, &mut |dot, _| {
            first = Some(dot.seq);
            ControlFlow::Break(())
        })?;
        Ok(first)
    }

    /// How many writes wait in the upload queue (a device; 0 on a member).
    pub fn pending_uploads(&self) -> Result<u64> {
        if !self.is_device() {
            return Ok(0);
        }
        let me = self.id();
        let mut n = 0;
        let from = Dot { replica: me, seq: self.device.answered.next() };
        self.store().snapshot()?.scan_dots(from, Dot { replica: me, seq: Seq(u64::MAX) }, &mut |_, _| {
            n += 1;
            ControlFlow::Continue(())
        })?;
        Ok(n)
    }

    /// What this device acknowledges to a member: its vector over members, capped at the base
    /// of its oldest queued write.
    pub fn device_ack(&self) -> Result<VersionVector> {
        let vector = self.members_vector();
        let snap = self.store().snapshot()?;
        Ok(match self.oldest_queued(&snap)?.and_then(|s| self.device.base_of(s)) {
            Some(base) => base.meet(&vector),
            None => vector,
        })
    }

    /// This device's upload state.
    pub(crate) fn device_state(&self) -> &DeviceState {
        &self.device
    }

    /// The horizon of this device's fresh bootstrap, while it is remembered.
    #[must_use]
    pub fn horizon(&self) -> Option<&VersionVector> {
        self.device.horizon.as_ref()
    }

    /// Up to `max` queued writes from upload seq `from` on, in upload-seq order, as `snap`
    /// holds them.
    pub(crate) fn queued_from(&self, snap: &impl Snapshot, from: Seq, max: usize) -> Result<Vec<Entry>> {
        let me = self.id();
        let mut keys = Vec::new();
        snap.scan_dots(
            Dot { replica: me, seq: from.max(self.device.answered.next()) },
            Dot { replica: me, seq: Seq(u64::MAX) },
            &mut |_, key| {
                keys.push(key.to_vec());
                if keys.len() >= max { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            },
        )?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let entry = snap.entry(&key)?.ok_or_else(|| StorageError::Corrupt {
                what: "dot index",
                detail: format!("names key {key:?}, which has no entry"),
            })?;
            out.push(entry.settled_at(self.now_ms()));
        }
        Ok(out)
    }

    /// Adds to `batch` what a device's local write of upload seqs from `first` on changes in its
    /// state: a new base when its vector moved since the last one.
    pub(crate) fn note_device_writes(&mut self, first: Seq, batch: &mut Batch) -> Option<DeviceState> {
        if !self.is_device() {
            return None;
        }
        let vector = self.members_vector();
        let new_base = self.device.bases.last().is_none_or(|(_, v)| *v != vector);
        // Until this run's first handshake: a restart before one keeps the run's open point.
        // Not for a run that opened a store with no own write: such a point would make every
        // write of a copy of this store taken before its first session look like a restored
        // run's, and re-numbered, a write the members processed since (deleted, collected)
        // would come back; with none, the copy's counter covers them.
        let keep_open_point = !self.handshake_sent && self.device.opened.is_none() && self.opened_seq > Seq(0);
        if !new_base && !keep_open_point {
            return None;
        }
        let mut state = self.device.clone();
        if new_base {
            state.bases.push((first, vector));
        }
        if keep_open_point {
            state.opened = Some(OpenPoint { seq: self.opened_seq, clock: self.opened_clock });
        }
        batch.set_meta(Meta::Device, encode_cbor(&state));
        Some(state)
    }

    /// Takes a member's answers to one of this device's uploads, durable when this returns: an
    /// admitted write takes the member's dot, and a known or refused one is dropped (if it is
    /// still the key's entry here) and its key kept as unsettled in the same commit; superseded
    /// and pending ones are noted in `settle`, for the end of the download
    /// ([`Replica::settle_download`]).
    pub(crate) fn settle_uploads(
        &mut self,
        uploaded: &[Entry],
        answers: &[Admission],
        settle: &mut Settle,
    ) -> Result<()> {
        let snap = self.store().snapshot()?;
        let mut batch = Batch::new();
        let mut state = self.device.clone();
        for (entry, answer) in uploaded.iter().zip(answers) {
            match answer {
                Admission::Admitted(dot) => {
                    if let Some(current) = snap.entry(&entry.key)?
                        && current.dot == entry.dot
                    {
                        batch.put(Entry { dot: *dot, ..current });
                    }
                }
                // Replaced and collected since: nothing will come for it, so it goes now (a
                // download cut short, or none at all, must not keep it queued).
                // Refused by the member (over its limits): no member will hold it, so it goes
                // too, and the queue moves past it. Either way the member sends its own entry
                // for the key in this session's download (`Session::to_device`), which this
                // device's vector may cover: taken as covered entries are, so only from a member
                // covering this device's vector. Until one such download completes, the key is
                // unsettled: each handshake names it, and the member sends its entry again
                // (a download cut short, or one from a member behind this device, R3-4/R3-5).
                Admission::Known | Admission::Refused => {
                    settle.unheld.push(entry.key.clone());
                    if self.index.dot_of(&entry.key) == Some(entry.dot) {
                        batch.remove(entry.key.clone());
                        let key = serde_bytes::ByteBuf::from(entry.key.clone());
                        if !state.unsettled.contains(&key) && state.unsettled.len() < UNSETTLED_KEYS_MAX {
                            state.unsettled.push(key);
                        }
                    }
                }
                Admission::Superseded => settle.writes.push((entry.key.clone(), entry.dot)),
                Admission::Pending => {
                    settle.pending_from = Some(settle.pending_from.map_or(entry.dot.seq, |p| p.min(entry.dot.seq)));
                }
            }
            settle.answered = settle.answered.max(entry.dot.seq);
        }
        drop(snap);
        if state != self.device {
            batch.set_meta(Meta::Device, encode_cbor(&state));
        }
        if !batch.ops.is_empty() {
            self.commit(&batch)?;
            self.device = state;
        }
        Ok(())
    }

    /// At the end of a complete download from the member that answered this session's
    /// uploads: every write it answered as superseded and still this device's entry for its
    /// key is dropped (the member holds something newer, which this download brought), and the
    /// queue moves past every answered write but the first pending one. From a member whose
    /// vector covered this device's (`covering`), the unsettled keys the download carried the
    /// member's entry for are settled (this device took it): those answered known or refused
    /// in this session, and all of them if the member sent the named ones. Durable when this
    /// returns.
    pub(crate) fn settle_download(&mut self, settle: &Settle, covering: bool) -> Result<()> {
        let upto = match settle.pending_from {
            Some(p) => Seq(p.0.saturating_sub(1)).min(settle.answered),
            None => settle.answered,
        };
        let settled = |k: &serde_bytes::ByteBuf| covering && (settle.named_sent || settle.unheld.contains(k));
        let settles_keys = self.device.unsettled.iter().any(settled);
        if settle.writes.is_empty() && upto <= self.device.answered && !settles_keys {
            return Ok(());
        }
        let mut batch = Batch::new();
        for (key, dot) in &settle.writes {
            if self.index.dot_of(key) == Some(*dot) {
                batch.remove(key.clone());
            }
        }
        let mut state = self.device.clone();
        state.unsettled.retain(|k| !settled(k));
        state.answered = state.answered.max(upto);
        let first = state.answered.next();
        if let Some(i) = state.bases.iter().rposition(|(f, _)| *f <= first) {
            state.bases.drain(..i);
        }
        batch.set_meta(Meta::Device, encode_cbor(&state));
        self.commit(&batch)?;
        self.device = state;
        Ok(())
    }

    /// Records `vector` (a fresh bootstrap's, which carried no dead record) as the horizon.
    pub(crate) fn set_horizon(&mut self, vector: VersionVector) -> Result<()> {
        self.update_device(|s| s.horizon = Some(vector))
    }

    /// Forgets the horizon once `collected` (a member's) covers it: every dead record the
    /// bootstrap left out is then collected everywhere. Records `collected` for this device's
    /// GC steps.
    pub(crate) fn settle_horizon(&mut self, collected: &VersionVector) -> Result<()> {
        let forget = self.device.horizon.as_ref().is_some_and(|h| collected.dominates(h));
        if forget || !self.device.collected.dominates(collected) {
            self.update_device(|s| {
                if forget {
                    s.horizon = None;
                }
                s.collected.merge(collected);
            })?;
        }
        Ok(())
    }

    /// Moves this device's upload counter past `cursor` (a member applied uploads up to it, so
    /// this store is an older copy: restored from a backup; docs/design.md §10), re-numbering
    /// above it the queued writes this run made: they reused upload seqs the members already
    /// took for other writes. The copy's own queued writes keep their upload seqs: at or below
    /// the cursor, members processed them already, and answer them as such (admitted, known,
    /// superseded or pending: `admit.rs`), so none is applied twice or brought back after a
    /// delete. Returns whether anything moved.
    ///
    /// The evidence: `cursor` beyond every upload seq this run found or may have sent (its
    /// counter at open, and every write queued when a session's handshake went). A cursor
    /// beyond the counter alone would miss a restored device that wrote up to the cursor again.
    /// "At open" is the open point kept in [`DeviceState::opened`] when a run wrote and
    /// restarted before its first handshake.
    ///
    /// Of the writes found in the store when this process opened it, only those stamped above
    /// `cursor_stamp` (the highest stamp the members' claims handled, [`Hlc::UNKNOWN`] when
    /// not known) move: one stamped at or below it is a write the members processed, made by
    /// a run the copy holds the open point of (a backup taken before that run's first session,
    /// finding 7); re-numbered, it would be admitted afresh and come back after its delete was
    /// collected. The writes this process made always move, whatever their stamps: no member
    /// handled them, and a restored hybrid clock that ran ahead of wall time re-issues the
    /// stamps of the writes the copy lost (R4-1), so a stamp does not tell them apart.
    pub(crate) fn renumber_uploads_past(&mut self, cursor: Seq, cursor_stamp: Hlc) -> Result<bool> {
        let me = self.id();
        if cursor <= self.opened_seq.max(self.uploads_sent_max) {
            return Ok(false);
        }
        let snap = self.store().snapshot()?;
        let queued = self.queued_from(&snap, Seq(1), usize::MAX)?;
        drop(snap);
        let mut batch = Batch::new();
        let mut seq = cursor.max(self.vector().get(me));
        let mut state = self.device.clone();
        let mut first_base = None;
        let made_since = |e: &Entry| {
            e.stamp.hlc > self.opened_clock
                && (e.stamp.hlc > self.run_clock || cursor_stamp == Hlc::UNKNOWN || e.stamp.hlc > cursor_stamp)
        };
        for entry in queued.into_iter().filter(made_since) {
            first_base = first_base.or_else(|| self.device.base_of(entry.dot.seq).cloned());
            seq = seq.checked_next().ok_or_else(|| StorageError::Corrupt {
                what: "upload queue",
                detail: format!("re-numbering above cursor {cursor} runs past the last upload seq"),
            })?;
            batch.put(Entry { dot: Dot { replica: me, seq }, ..entry });
        }
        // The re-numbered writes keep the base of the first of them: the most cautious cap.
        if let Some(base) = first_base {
            state.bases.retain(|(first, _)| *first <= cursor);
            state.bases.push((cursor.saturating_next(), base));
        }
        let mut vector = self.vector().clone();
        vector.advance(me, seq);
        batch.set_meta(Meta::Device, encode_cbor(&state));
        batch.set_meta(Meta::Vector, crate::storage::encode_vector(&vector));
        self.commit(&batch)?;
        self.device = state;
        self.set_vector(vector);
        Ok(true)
    }

    /// Notes that every write queued now may be uploaded by this run (a session's handshake
    /// went): a member's cursor up to them is no evidence of a restore.
    pub(crate) fn note_uploads_sent(&mut self) -> Result<()> {
        let me = self.id();
        let mut last = None;
        let from = Dot { replica: me, seq: self.device.answered.next() };
        self.store().snapshot()?.scan_dots(from, Dot { replica: me, seq: Seq(u64::MAX) }, &mut |dot, _| {
            last = Some(dot.seq);
            ControlFlow::Continue(())
        })?;
        self.uploads_sent_max = self.uploads_sent_max.max(last.unwrap_or(Seq(0)));
        self.handshake_sent = true;
        // From now on a member's cursor up to them is no evidence, in this run or after a
        // restart (whose counter then covers them): the open point has done its work.
        if self.device.opened.is_some() {
            self.update_device(|s| s.opened = None)?;
        }
        Ok(())
    }

    /// Keeps `member`'s proof of its own counter if it shows more than the one kept.
    pub(crate) fn keep_member_proof(&mut self, member: ReplicaId, proof: Option<SeqProof>) -> Result<()> {
        let Some(proof) = proof else { return Ok(()) };
        if self.device.proofs.get(&member).is_some_and(|kept| kept.0 >= proof.0) {
            return Ok(());
        }
        self.update_device(|s| {
            s.proofs.insert(member, proof);
            while s.proofs.len() > MEMBER_PROOFS_MAX {
                s.proofs.pop_first();
            }
        })
    }

    /// Queues again, under fresh upload seqs, this device's own writes it holds under dots of
    /// `member` in `lost` (ranges `(from, to]` the member lost to a restore from an older copy):
    /// the member may not hold them any more, and no one but this device can give them back
    /// (I11: an acknowledged upload is never lost). Admitted again, each takes a fresh dot; a
    /// member that holds the very write answers with its dot (`admit.rs`). Other writers' writes
    /// under those dots stay as they are: their writers upload their own, and a reconciliation
    /// with the member settles the rest. The queued writes' base is `member_vector` met with
    /// this device's vector. Returns how many were queued.
    pub(crate) fn requeue_lost(
        &mut self,
        lost: &[(ReplicaId, Seq, Seq)],
        member_vector: &VersionVector,
    ) -> Result<u64> {
        if lost.is_empty() || !self.is_device() {
            return Ok(0);
        }
        let me = self.id();
        let snap = self.store().snapshot()?;
        let mut keys = Vec::new();
        for &(member, from, to) in lost.iter().filter(|(m, ..)| *m != me) {
            snap.scan_dots(
                Dot { replica: member, seq: from.saturating_next() },
                Dot { replica: member, seq: to },
                &mut |_, key| {
                    keys.push(key.to_vec());
                    ControlFlow::Continue(())
                },
            )?;
        }
        keys.sort();
        keys.dedup();
        let mut own = Vec::new();
        for key in keys {
            if let Some(entry) = snap.entry(&key)?
                && entry.stamp.replica == me
                && entry.dot.replica != me
                && lost.iter().any(|&(m, f, t)| m == entry.dot.replica && f < entry.dot.seq && entry.dot.seq <= t)
            {
                own.push(entry);
            }
        }
        drop(snap);
        if own.is_empty() {
            return Ok(0);
        }
        let mut seq = self.vector().get(me).max(self.device.answered);
        let first = seq.next();
        let mut batch = Batch::new();
        for entry in &own {
            seq = seq.checked_next().ok_or_else(|| StorageError::Corrupt {
                what: "upload queue",
                detail: "queueing again runs past the last upload seq".into(),
            })?;
            batch.put(Entry { dot: Dot { replica: me, seq }, ..entry.clone() });
        }
        let mut state = self.device.clone();
        state.bases.push((first, self.members_vector().meet(member_vector)));
        let mut vector = self.vector().clone();
        vector.advance(me, seq);
        batch.set_meta(Meta::Device, encode_cbor(&state));
        batch.set_meta(Meta::Vector, crate::storage::encode_vector(&vector));
        self.commit(&batch)?;
        self.device = state;
        self.set_vector(vector);
        Ok(own.len() as u64)
    }

    fn update_device(&mut self, change: impl FnOnce(&mut DeviceState)) -> Result<()> {
        let mut state = self.device.clone();
        change(&mut state);
        let mut batch = Batch::new();
        batch.set_meta(Meta::Device, encode_cbor(&state));
        self.commit(&batch)?;
        self.device = state;
        Ok(())
    }
}
