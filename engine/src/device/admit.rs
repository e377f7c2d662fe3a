//! A member admitting a device's uploads (docs/design.md §8, I10, I11).
//!
//! Rules, checked for the whole upload before anything is applied:
//! - every write is the device's own: its stamp's writer and its dot's replica are the
//!   authenticated device (a device can change nothing but its own writes);
//! - upload seqs rise strictly within one upload; stamps pass the drift check of any remote
//!   entry (`max_drift`);
//! - a write over this member's size limits is answered `Refused`, alone: the cursor passes
//!   it and the rest of the upload goes on;
//! - a write at or below the device's cursor was applied before (here or at another member),
//!   and is never applied again here: it is answered with the dot this member holds it under
//!   if it holds that very write; as superseded if it holds something newer; as known if it
//!   holds nothing for the key (an older entry shows it never saw the write applied) but
//!   handled that write itself (its own cursor claim reaches it: the write's seq and stamp
//!   are at or below the claim's, which rise to the highest upload seq and stamp it handled,
//!   also below the cursor, its counter only with an upload that applied something; a write
//!   stamped above a claim is none that claim handled, R3-1) or has seen every admission that
//!   may have applied it (the record's `cursor_at` over the members whose claim reaches the
//!   write, at least one, its own included, unless its
//!   own component is a dot this member lost to a restore: the write was replaced, or
//!   collected, since); and otherwise (another member admitted it, and this one has not
//!   seen that, and may never: that member removed or restored) it is admitted here too, as
//!   below. `Pending` is no longer answered (a device still understands it from an older
//!   member). A queued write holds back every delete it raced (the device's acknowledgement is
//!   capped at its base), so from then on this member holds it or what beat it, and admits it
//!   at most once;
//! - the very write this member holds already (same stamp and payload: a device that lost the
//!   answer, or queued it again after a restore) is answered with its dot, unless that dot is
//!   one this member lost to a restore: then it is numbered afresh (the higher seq of the same
//!   write wins the tie);
//! - the very write held under a dot that any member lost to a restore is replaced by a fresh
//!   copy under a dot of this member, whatever the LWW dot tie between the two copies (a
//!   lower member id would otherwise keep it under the lost dot, and the device would take
//!   "superseded" and drop it);
//! - any other write is applied under a fresh dot of this member if it wins over what the key
//!   holds, and answered as superseded if not; either way the cursor passes it.
//!
//! The writes, the vector, the clock and the device's record (its cursor) are committed in one
//! batch before the answer goes, so an answered upload is durable (I11).

use crate::device::message::Admission;
use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::hlc::Hlc;
use crate::ids::{Dot, ReplicaId, Seq};
use crate::replica::{Replica, in_lost_ranges};
use crate::session::SyncError;
use crate::storage::{Batch, Meta, Snapshot, Storage, encode_clock, encode_vector};
use std::collections::BTreeMap;

impl<S: Storage> Replica<S> {
    /// Admits `device`'s uploaded writes (see the module docs); one answer per write, in order.
    pub fn admit_uploads(&mut self, device: ReplicaId, entries: Vec<Entry>) -> Result<Vec<Admission>, SyncError> {
        if self.is_device() {
            return Err(SyncError::Unexpected { got: "Upload", state: "on a device (devices admit no uploads)" });
        }
        if !self.devices().is_enrolled(device) {
            return Err(SyncError::NotEnrolled(device));
        }
        let wall_ms = self.now_ms();
        let mut previous = Seq(0);
        for e in &entries {
            if e.stamp.replica != device || e.dot.replica != device {
                return Err(SyncError::Malformed(format!(
                    "device {device} uploaded a write stamped by {} under dot {}: a device uploads only its own writes",
                    e.stamp.replica, e.dot
                )));
            }
            if e.dot.seq <= previous {
                return Err(SyncError::Malformed(format!(
                    "upload seq {} after {previous}: an upload's seqs must rise",
                    e.dot.seq
                )));
            }
            previous = e.dot.seq;
            // Not bound to this member's cursor: the device may have re-numbered its queue past
            // a cursor another member showed it (R3-6: refused here, it could never upload
            // to a member behind that cursor). Only bounded, so that no cursor nears `u64::MAX`.
            if e.dot.seq.0 > crate::limits::CURSOR_MAX {
                return Err(SyncError::Malformed(format!(
                    "upload seq {} is beyond the highest a device numbers ({})",
                    e.dot.seq,
                    crate::limits::CURSOR_MAX
                )));
            }
        }
        if let Some(err) = entries.iter().find_map(|e| self.clock_check(e.stamp.hlc, wall_ms).err()) {
            return Err(err.into());
        }
        // Over this member's size limits: refused alone (the device's own limits may differ);
        // the cursor passes it, so it is never applied here later.
        let limits = self.config().limits;
        let oversized: std::collections::BTreeSet<Seq> =
            entries.iter().filter(|e| limits.check_entry(e).is_err()).map(|e| e.dot.seq).collect();
        self.check_not_recovering()?;
        let me = self.id();
        let mut cursor = self.devices().cursor(device);
        // Whether this member has seen every admission up to the cursor. Not if one of them was
        // its own under a dot it lost to a restore from an older copy (`replica/restore.rs`), or
        // beyond what it knows it issued (restored, and no peer has shown it yet).
        let own_admission_lost = self.devices().get(device).is_some_and(|r| {
            r.cursor_at.get(me) > self.own_counter()
                || r.cursor_at.iter().any(|(m, at)| in_lost_ranges(self.lost_of(m), at))
        });
        // Whether it has seen every admission that may have applied upload `seq`: only members
        // whose claim reaches `seq` may have (its own claim among them, seen by itself), so an
        // unseen admission of an earlier seq by another member does not make it apply again a
        // write it applied itself (seed 13085).
        // And wherever its own claim reaches, it handled the seq itself (admitted it, or found
        // it superseded or known): it answers from what it holds, never applying it again
        // (finding 2: admitted here on the not-seen path, the write came back after its delete
        // was collected).
        // Either way only for a write stamped at or below the claim's stamp: one stamped later
        // is none the claim handled (a restored device's new write under a reused seq, R3-1).
        let (own_claim, own_claim_at, own_stamp) = self.devices().claim_at(device, me);
        let seen_all = |seq: Seq, stamp: Hlc| {
            !own_admission_lost
                && ((seq <= own_claim && stamp <= own_stamp)
                    || self.devices().covers_admission(device, seq, stamp, self.vector()))
        };
        // The highest upload seq this upload handles, and the highest stamp: this member's
        // claim rises to them.
        let handled = entries.last().map_or(Seq(0), |e| e.dot.seq);
        let handled_stamp = entries.iter().map(|e| e.stamp.hlc).max().unwrap_or(Hlc(0));
        let snap = self.store().snapshot().map_err(Error::from)?;
        let mut clock = self.hybrid_clock();
        let counter_before = self.own_counter();
        let mut seq = counter_before;
        let mut winners: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
        let mut answers = Vec::with_capacity(entries.len());
        for entry in entries {
            let upload_seq = entry.dot.seq;
            if oversized.contains(&upload_seq) {
                cursor = cursor.max(upload_seq);
                answers.push(Admission::Refused);
                continue;
            }
            let current = match winners.get(&entry.key) {
                Some(e) => Some(e.clone()),
                None => snap.entry(&entry.key).map_err(Error::from)?,
            };
            // Held under a dot this member lost to a restore (`replica/restore.rs`): its peers
            // may hold another write under it, so it is numbered afresh (the higher seq of the
            // same write wins the tie), wherever the cursor is.
            let lost_dot = current.as_ref().is_some_and(|cur| {
                cur.stamp == entry.stamp && in_lost_ranges(self.lost_of(cur.dot.replica), cur.dot.seq)
            });
            if upload_seq <= cursor && !lost_dot {
                let answer = match &current {
                    // The very write (stamp and content, its TTL passed or not): its dot. A
                    // write under the same stamp with other content is another write (a
                    // restored device's clock re-issued a lost write's stamp, R4-4): given this
                    // dot, one dot would name two writes, and the two would never converge.
                    Some(cur) if cur.stamp == entry.stamp && cur.payload.is_copy_of(&entry.payload) => {
                        Some(Admission::Admitted(cur.dot))
                    }
                    Some(cur) if cur.wins_over(&entry) => Some(Admission::Superseded),
                    // Known only when it holds nothing for the key: had it seen the write
                    // applied, it would hold the write, what beat it, or nothing (collected
                    // since); an older entry shows it never saw the write applied (seed 11865:
                    // the only member that handled the seq found it superseded, and this one,
                    // answering known, left the device with its older value).
                    None if seen_all(upload_seq, entry.stamp.hlc) => Some(Admission::Known),
                    // Admitted by a member whose admission this one has not seen, and may never
                    // see (that member removed, or restored from an older copy): admitted here
                    // too, under a dot of this member, rather than left pending for ever.
                    // Once: from now on this member holds it or what beat it, since a delete it
                    // raced cannot be collected while it waits in the device's queue (its base
                    // caps the device's acknowledgement). The two dots of one write settle by
                    // the LWW tie rule.
                    _ => None,
                };
                if let Some(answer) = answer {
                    answers.push(answer);
                    continue;
                }
            }
            cursor = cursor.max(upload_seq);
            // The very write, held already (uploaded again by a device that lost its answer,
            // or queued again after a restore): answered with its dot, never applied twice.
            let same_write =
                current.as_ref().is_some_and(|cur| cur.stamp == entry.stamp && cur.payload.is_copy_of(&entry.payload));
            if let Some(cur) = current.as_ref().filter(|_| same_write && !lost_dot) {
                answers.push(Admission::Admitted(cur.dot));
                continue;
            }
            clock.observe(entry.stamp.hlc, wall_ms)?;
            let candidate = Entry { dot: Dot { replica: me, seq: seq.next() }, ..entry.settled_at(wall_ms) };
            // The very write under a lost dot is replaced by the fresh copy whatever the dot
            // tie: the old copy's dot may name another write at its member now, and a lower
            // member id there would win the tie and leave the write under it (finding 4).
            let replaces_lost = same_write && lost_dot;
            if !replaces_lost && current.as_ref().is_some_and(|cur| !candidate.wins_over(cur)) {
                answers.push(Admission::Superseded);
                continue;
            }
            seq = seq.next();
            answers.push(Admission::Admitted(candidate.dot));
            winners.insert(candidate.key.clone(), candidate);
        }
        drop(snap);
        let mut batch = Batch::new();
        let mut vector = self.vector().clone();
        vector.advance(me, seq);
        for e in winners.into_values() {
            batch.put(e);
        }
        batch.set_meta(Meta::Vector, encode_vector(&vector));
        batch.set_meta(Meta::Clock, encode_clock(clock.last()));
        debug_assert!(cursor >= handled, "every handled seq is at or below the cursor");
        // The claim's counter bounds every dot this member applied the claimed seqs under: it
        // moves only if this upload applied something. An upload it applied nothing for
        // (superseded, known, held already) raises the claim's seq alone: a counter raised
        // then would name writes that are no admission of the device's (R3-9: a third member
        // not covering them took the write for one it had not seen applied, and applied it
        // again after its delete was collected).
        let counter = if seq > counter_before { seq.max(own_claim_at) } else { own_claim_at };
        // A claim of its own from before claims carried a stamp (`Hlc::UNKNOWN`) becomes a
        // stamped one now (R4-3: kept, it would reach every stamp for ever): the writes it
        // handled before have lower upload seqs than this upload's, so lower stamps. Not a
        // bound from the clock (R5-4: a stamp ahead of every write reaches a restored
        // device's new one, which is then answered known and lost).
        let claim_stamp = if own_stamp == Hlc::UNKNOWN { handled_stamp } else { own_stamp.max(handled_stamp) };
        let claim = (own_claim.max(handled), counter, claim_stamp);
        let record = self.devices().advanced_record(device, me, claim);
        if let Some(record) = &record {
            batch.set_device(device.0, crate::storage::encode_cbor(record));
        }
        self.commit(&batch)?;
        self.devices_mut().advance_cursor(device, me, claim);
        self.set_vector(vector);
        self.set_hybrid_clock(clock);
        Ok(answers)
    }
}
