//! A member's table of enrolled devices (docs/design.md §8): one record per device, with what it
//! acknowledged, the highest upload seq applied for it (its cursor) and when it was last seen.
//!
//! Invariants kept here:
//! - **only an enrolled device has a record**: the operator enrols or removes one at a member
//!   ([`Devices::enrol`], [`Devices::remove`]), and the records travel between members
//!   (`Message::Records`, only those changed since the peer last merged); a removed device is
//!   remembered as revoked, and within an enrolment epoch a removal wins over any record, so
//!   nothing (a later session, an older record from elsewhere) brings it back until it is
//!   enrolled again, in a new epoch;
//! - at most [`DEVICES_MAX`] records (enrolled or removed) are kept;
//! - a record's acknowledged vector only grows, and has at most
//!   [`VECTOR_COMPONENTS_MAX`](crate::limits::VECTOR_COMPONENTS_MAX) components (devices
//!   acknowledge vectors over members, never over devices);
//! - **an acknowledgement counts** (holds collection back) only once it covers `collected` and
//!   the pending checkpoint's frontier, the rule members are admitted by (`membership.rs`); a
//!   device silent for longer than the device lease stops counting, and is handled like a
//!   rejoining replica when it comes back;
//! - the cursor only grows, and is never more than some member's claim accounts for: it is the
//!   highest upload seq of the members' cursor claims ([`crate::sign::CursorClaim`]), each with
//!   that member's counter in `cursor_at`; a relayed claim about a member other than the sender
//!   counts only if that member signed it, so no relay makes a member answer "known" to an
//!   upload on another member's word;
//! - a relayed cursor claim more than [`CURSOR_GAP_MAX`](crate::limits::CURSOR_GAP_MAX) beyond
//!   the highest claim held, as the message began, of any other member (this one's own
//!   included: a member's own claims never move its bound, R3-2) or beyond
//!   [`CURSOR_MAX`](crate::limits::CURSOR_MAX), or a relayed epoch more than
//!   [`DEVICE_EPOCH_GAP_MAX`](crate::limits::DEVICE_EPOCH_GAP_MAX) beyond the epoch held, is
//!   refused and counted ([`crate::Replica::claims_implausible`]), so no peer's word brings a
//!   cursor or an epoch near `u64::MAX`; this member's own claim rises to the highest upload
//!   seq it handled, even below the cursor, its counter only with an upload that applied
//!   something (`admit.rs`);
//! - a relayed last-seen time is never later than the device's signed time, the relaying
//!   member's own last sight of the device, or this member's clock;
//! - a lapsed or removed record relays no signed acknowledgement, and an acknowledgement the
//!   device signed at or before the lapse or removal (`floor_ms`) never counts again here;
//! - **a removal is final** at a member once it learns it: a relayed higher epoch does not
//!   re-enrol the device there; only the operator's [`Devices::enrol`] at that member does.

use crate::hlc::Hlc;
use crate::ids::{ReplicaId, Seq};
use crate::sign::{CursorClaim, SignedAck};
use crate::vector::VersionVector;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The most devices a member enrols.
pub const DEVICES_MAX: usize = 100_000;

/// The default device lease: a device silent for 30 days stops holding collection back.
pub const DEVICE_LEASE_MS_DEFAULT: u64 = 30 * 24 * 3600 * 1000;

/// How far past a peer's claim to have merged this member's records beyond its records clock
/// the clock jumps (2^32 changes, far more than a store falls behind between a backup and its
/// restore, or one peer merged beyond another): a member restored from an older copy jumps past
/// every claim of its peers (`Devices::jump_clock_past`).
pub const RECORDS_CLOCK_GAP_MAX: u64 = 1 << 32;

/// The furthest beyond this member's own records clock a peer may say it merged this member's
/// records (16 jumps: [`RECORDS_CLOCK_GAP_MAX`] × 16): a store restored again from the same old
/// copy, or after a crash that already made its clock jump, meets claims a jump or more beyond
/// its clock (R3-3). A larger one is refused and counted, not believed (it would push the clock
/// toward overflow).
pub const RECORDS_CLOCK_CLAIM_MAX: u64 = RECORDS_CLOCK_GAP_MAX * 16;

/// Enrolling one more device would exceed [`DEVICES_MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot enrol device {device}: {enrolled} devices are enrolled, the most a member keeps is {max}; \
     remove devices that are gone first"
)]
pub struct TooManyDevices {
    /// The device that was to be enrolled.
    pub device: ReplicaId,
    /// How many are enrolled.
    pub enrolled: usize,
    /// [`DEVICES_MAX`].
    pub max: usize,
}

/// Why a device could not be enrolled ([`Devices::enrol`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnrolError {
    /// One more device would exceed [`DEVICES_MAX`].
    #[error(transparent)]
    TooManyDevices(#[from] TooManyDevices),
    /// The device was removed at the last epoch there is: it cannot be enrolled again (no
    /// relay brings an epoch there, [`crate::limits::DEVICE_EPOCH_GAP_MAX`], so only about
    /// 2^64 enrolments could).
    #[error("cannot enrol device {device} again: it was removed at epoch {epoch}, the last there is")]
    EpochsExhausted {
        /// The device.
        device: ReplicaId,
        /// Its epoch.
        epoch: u64,
    },
}

/// What a member knows of one device it enrolled (or that another member enrolled).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The newest vector (over members) the device acknowledged, once it counts: `None` for a
    /// device that has not yet acknowledged everything collected here (new, or back after its
    /// lease).
    pub acked: Option<VersionVector>,
    /// The highest upload seq applied for the device, here or at another member.
    pub cursor: Seq,
    /// For each member that admitted uploads of the device, its own counter once it had: a
    /// member whose vector covers it has seen every admission up to the cursor (and what
    /// replaced them). Only grows.
    #[serde(default)]
    pub cursor_at: VersionVector,
    /// When the device was last heard from (wall-clock ms; 0: never).
    pub last_seen_ms: u64,
    /// Bumped each time the device is enrolled again after a removal: the record of a higher
    /// epoch replaces one of a lower.
    #[serde(default)]
    pub epoch: u64,
    /// Whether the device was removed (in this epoch).
    #[serde(default)]
    pub revoked: bool,
    /// This member's records clock when the record last changed here (`Devices::clock`): what
    /// a peer that has merged up to a clock value still lacks.
    #[serde(default)]
    pub changed: u64,
    /// The member whose record made the last change here, if it came from one: it has the
    /// record as it is, so it is not sent back (not kept across restarts: then it is, once).
    #[serde(skip)]
    pub from: Option<ReplicaId>,
    /// The latest acknowledgement the device signed (`sign.rs`), heard from it or relayed with
    /// a valid signature: what travels to other members as its acknowledgement and last-seen
    /// time (a member's own view of them is no one else's evidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<SignedAck>,
    /// Per member, its latest claim to have admitted the device's uploads (the sender's own
    /// word, or signed by that member): what `cursor` and `cursor_at` are made of, and what
    /// travels as the cursor. This member's own claim is kept unsigned and signed as it goes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cursors: BTreeMap<ReplicaId, CursorClaim>,
    /// An acknowledgement the device signed at or before this time (ms) never counts here: the
    /// record lapsed or was removed then (0: never).
    #[serde(default)]
    pub floor_ms: u64,
}

impl DeviceRecord {
    /// Whether the record holds collection back.
    #[must_use]
    pub fn counts(&self) -> bool {
        self.acked.is_some() && !self.revoked
    }
}

/// A device record as it travels between members (`Message::Records`): its epoch and removal
/// as members know them, the members' cursor claims, the device's latest signed acknowledgement
/// (vector and time, with the device's signature) and when the sender last saw the device. The
/// receiver takes the acknowledgement only if the signature is the device's, a cursor claim
/// about a member other than the sender only if that member signed it (docs/design.md §9).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordWire(
    /// The device.
    pub ReplicaId,
    /// Its epoch.
    pub u64,
    /// Whether it was removed.
    pub bool,
    /// The vector it acknowledged and signed, if any (and it is not removed or lapsed).
    #[serde(deserialize_with = "crate::limits::bounded_optional_vector")]
    pub Option<VersionVector>,
    /// The members' cursor claims, at most one per member
    /// ([`MEMBERS_MAX`](crate::membership::MEMBERS_MAX) in all).
    #[serde(deserialize_with = "bounded_claims")]
    pub Vec<CursorClaim>,
    /// When it signed that acknowledgement (its wall clock), or 0.
    pub u64,
    /// When the sender last saw the device (the sender's clock), or 0.
    pub u64,
    /// The device's signature over its acknowledgement ([`crate::sign::ack_message`] of the
    /// device, the vector and the time); empty: unsigned, and then neither counts.
    #[serde(serialize_with = "serde_bytes::serialize", deserialize_with = "crate::sign::bounded_signature")]
    pub Vec<u8>,
);

fn bounded_claims<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<CursorClaim>, D::Error> {
    crate::limits::bounded_vec::<_, CursorClaim, { crate::membership::MEMBERS_MAX }>(d)
}

impl DeviceRecord {
    /// At most how many bytes its [`RecordWire`] takes in CBOR: 80 for the fixed fields and
    /// headers, 19 per vector component (a pair of u64) and the signature, and 32 per cursor
    /// claim (three integers and headers) with its signature.
    fn wire_bytes_max(&self) -> usize {
        let signed = self.signed.as_ref().map_or(0, |s| s.vector.len() * 19 + s.signature.len());
        let claims: usize = self.cursors.values().map(|c| 32 + c.3.len()).sum();
        80 + signed + claims
    }
}

impl RecordWire {
    /// The acknowledgement this record relays, as its device signed it, if it carries one.
    #[must_use]
    pub fn claim(&self) -> Option<SignedAck> {
        self.3.as_ref().map(|vector| SignedAck {
            signer: self.0,
            vector: vector.clone(),
            time_ms: self.5,
            signature: self.7.clone(),
        })
    }
}

/// What decides, for [`Devices::merge`], whether a relayed claim counts: the device's
/// signature on its acknowledgement, a member's on its cursor claim. Called only for claims
/// that would change something, after the cheap checks.
pub(crate) trait ClaimCheck {
    /// What to count of the device's acknowledgement `claim` (its vector, capped), if it
    /// verifies.
    fn ack(&mut self, claim: &SignedAck) -> Option<VersionVector>;
    /// Whether `claim` about `device`'s cursor counts.
    fn cursor(&mut self, device: ReplicaId, claim: &CursorClaim) -> bool;
    /// Counts a claim refused as implausible (a cursor or epoch too far ahead).
    fn implausible(&mut self);
}

/// How far device records were merged between this member and each other one
/// ([`crate::storage::Meta::RecordsSeen`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordsSeen {
    /// Per member: its records clock up to which its records were merged here.
    pub seen: BTreeMap<ReplicaId, u64>,
    /// Per member: this member's records clock up to which it said it merged (its handshake).
    pub acked: BTreeMap<ReplicaId, u64>,
}

/// The devices this member knows (enrolled here or at another member) and those removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Devices {
    records: BTreeMap<ReplicaId, DeviceRecord>,
    /// Ticks once per change to a record (persisted as the records' `changed`).
    clock: u64,
    /// Records changed since they were last persisted.
    dirty: BTreeSet<ReplicaId>,
}

impl Devices {
    /// The table from its persisted records.
    pub(crate) fn load(records: BTreeMap<ReplicaId, DeviceRecord>) -> Devices {
        let clock = records.values().map(|r| r.changed).max().unwrap_or(0);
        Devices { records, clock, dirty: BTreeSet::new() }
    }

    /// The records clock: every record changed here carries a value up to it.
    #[must_use]
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// Moves the records clock past `seen` (what a peer said it merged of this member's
    /// records, beyond this clock: this store is an older copy) and marks every record changed
    /// after it, so the whole table goes again to every member, once, and changes made here
    /// since the restore are not taken for ones a peer merged already. The clock jumps to
    /// [`RECORDS_CLOCK_GAP_MAX`] past `seen`, not just to it: another member may have merged
    /// more of the lost changes than this one, and would take re-sent records numbered just
    /// past `seen` for merged (a claim further still makes it jump again). Past `seen`, not
    /// past the clock: a store restored from the same copy again, or from an older one after a
    /// crash already made its clock jump, meets claims beyond a jump from its clock (R3-3).
    /// Returns whether it jumped: not for a `seen` within the clock, more than
    /// [`RECORDS_CLOCK_CLAIM_MAX`] beyond it, or so near `u64::MAX` that the records would not
    /// fit above the jump. Persist with [`Devices::take_dirty`].
    pub(crate) fn jump_clock_past(&mut self, seen: u64) -> bool {
        let room = u64::try_from(self.records.len()).unwrap_or(u64::MAX);
        if seen <= self.clock || seen - self.clock > RECORDS_CLOCK_CLAIM_MAX {
            return false;
        }
        let Some(jumped) = seen.checked_add(RECORDS_CLOCK_GAP_MAX) else { return false };
        if jumped.checked_add(room).is_none() {
            return false;
        }
        self.clock = jumped;
        let devices: Vec<ReplicaId> = self.records.keys().copied().collect();
        for device in devices {
            self.touch(device);
        }
        true
    }

    fn touch(&mut self, device: ReplicaId) {
        self.touch_from(device, None);
    }

    fn touch_from(&mut self, device: ReplicaId, from: Option<ReplicaId>) {
        self.clock += 1;
        if let Some(r) = self.records.get_mut(&device) {
            r.changed = self.clock;
            r.from = from;
        }
        self.dirty.insert(device);
    }

    /// Whether `device` is enrolled (and not removed).
    #[must_use]
    pub fn is_enrolled(&self, device: ReplicaId) -> bool {
        self.records.get(&device).is_some_and(|r| !r.revoked)
    }

    /// Whether `device` was removed (and not enrolled again since).
    #[must_use]
    pub fn is_revoked(&self, device: ReplicaId) -> bool {
        self.records.get(&device).is_some_and(|r| r.revoked)
    }

    /// The record of `device`, if enrolled.
    #[must_use]
    pub fn get(&self, device: ReplicaId) -> Option<&DeviceRecord> {
        self.records.get(&device).filter(|r| !r.revoked)
    }

    /// The record of `device`, enrolled or removed.
    #[must_use]
    pub fn record(&self, device: ReplicaId) -> Option<&DeviceRecord> {
        self.records.get(&device)
    }

    /// Every enrolled device and its record, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (ReplicaId, &DeviceRecord)> {
        self.records.iter().filter(|(_, r)| !r.revoked).map(|(d, r)| (*d, r))
    }

    /// How many devices are enrolled.
    #[must_use]
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether no device is enrolled.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// Enrols `device` (an operator's act; a removed one again, in a new epoch). Returns
    /// whether it was new.
    pub fn enrol(&mut self, device: ReplicaId) -> Result<bool, EnrolError> {
        let kept = self.records.len();
        match self.records.get_mut(&device) {
            Some(r) if !r.revoked => return Ok(false),
            Some(r) => {
                let epoch = r.epoch.checked_add(1).ok_or(EnrolError::EpochsExhausted { device, epoch: r.epoch })?;
                *r = DeviceRecord { epoch, ..r.carried() };
            }
            None if kept >= DEVICES_MAX => {
                return Err(TooManyDevices { device, enrolled: kept, max: DEVICES_MAX }.into());
            }
            None => {
                self.records.insert(device, DeviceRecord::default());
            }
        }
        self.touch(device);
        Ok(true)
    }

    /// Removes `device` at once (an operator's act): it no longer holds collection back and
    /// is refused; the removal travels to the other members and nothing undoes it but a new
    /// enrolment here (a relayed higher epoch does not undo it). An acknowledgement the device
    /// signed up to `now_ms` never counts again. Returns whether it was enrolled.
    pub fn remove(&mut self, device: ReplicaId, now_ms: u64) -> bool {
        match self.records.get_mut(&device) {
            Some(r) if !r.revoked => {
                r.revoke(now_ms);
                self.touch(device);
                true
            }
            _ => false,
        }
    }

    /// Records that `device` acknowledged `acked` (over members), heard at `now_ms`. The record
    /// grows; a record that does not count yet starts counting only if `acked` covers
    /// `collected` and `pending` (the pending checkpoint's frontier). Returns whether it counts
    /// afterwards and whether it started counting now.
    pub(crate) fn acknowledge(
        &mut self,
        device: ReplicaId,
        acked: &VersionVector,
        now_ms: u64,
        collected: &VersionVector,
        pending: Option<&VersionVector>,
    ) -> (bool, bool) {
        let Some(record) = self.records.get_mut(&device).filter(|r| !r.revoked) else { return (false, false) };
        let outcome = grow(record, acked, collected, pending);
        record.last_seen_ms = record.last_seen_ms.max(now_ms);
        self.touch(device);
        outcome
    }

    /// Keeps `ack` as the latest signed acknowledgement of its device, if enrolled and `ack` is
    /// newer than the one kept (the caller has verified it).
    pub(crate) fn note_signed(&mut self, ack: SignedAck) {
        let device = ack.signer;
        if let Some(r) = self.records.get_mut(&device).filter(|r| !r.revoked)
            && ack.time_ms > r.floor_ms
            && ack.is_newer_than(r.signed.as_ref())
        {
            r.signed = Some(ack);
            self.touch(device);
        }
    }

    /// The cursor of `device` (0 if unknown).
    #[must_use]
    pub fn cursor(&self, device: ReplicaId) -> Seq {
        self.records.get(&device).map_or(Seq(0), |r| r.cursor)
    }

    /// Whether a member with vector `vector` has seen every admission of `device`'s uploads up
    /// to its cursor.
    #[must_use]
    pub fn covers_cursor(&self, device: ReplicaId, vector: &VersionVector) -> bool {
        self.records.get(&device).is_none_or(|r| vector.dominates(&r.cursor_at))
    }

    /// Whether a member with vector `vector` has seen every admission that may have applied
    /// `device`'s upload `seq`, stamped `stamp`: some member's claim reaches it, and
    /// [`Devices::covers_cursor`] holds over the members whose claim reaches it. A claim reaches
    /// a write if its seq and its stamp are at or above the write's: a member whose claim is
    /// below `seq` never applied it (a claim is the highest upload seq that member handled, and
    /// only grows; its counter bounds the dots of what it applied, and moves only when it
    /// applies something), nor one whose claimed stamp is below `stamp` (the write is not one
    /// it handled: a restored device's, under a reused seq, R3-1). A counter in `cursor_at`
    /// with no claim kept beside it counts as reaching every write; with no claim reaching the
    /// write, no member handled it, and this is false.
    #[must_use]
    pub fn covers_admission(&self, device: ReplicaId, seq: Seq, stamp: Hlc, vector: &VersionVector) -> bool {
        self.records.get(&device).is_none_or(|r| {
            let reaches = |m: ReplicaId| r.cursors.get(&m).is_none_or(|c| c.1 >= seq && c.4 >= stamp);
            r.cursor_at.iter().any(|(m, _)| reaches(m))
                && r.cursor_at.iter().all(|(m, at)| !reaches(m) || vector.get(m) >= at)
        })
    }

    /// The highest stamp among `device`'s writes that the members' cursor claims handled
    /// (0: none; [`Hlc::UNKNOWN`] if the cursor came with no claim, or if a claim from before
    /// claims carried a stamp reaches beyond every stamped one). A legacy claim below a
    /// stamped one is left out (R4-3: kept for ever, it would make every member show
    /// `UNKNOWN`): a device's stamps rise with its upload seqs, so the writes it handled are
    /// stamped below the writes above them that the stamped claim handled.
    #[must_use]
    pub fn cursor_stamp(&self, device: ReplicaId) -> Hlc {
        let Some(r) = self.records.get(&device) else { return Hlc(0) };
        let stamped = r.cursors.values().filter(|c| c.4 != Hlc::UNKNOWN);
        let (seq, stamp) = stamped.fold((Seq(0), Hlc(0)), |(s, h), c| (s.max(c.1), h.max(c.4)));
        let legacy_beyond = r.cursors.values().any(|c| c.4 == Hlc::UNKNOWN && c.1 > seq);
        if legacy_beyond || (r.cursors.is_empty() && r.cursor > Seq(0)) { Hlc::UNKNOWN } else { stamp }
    }

    /// The highest upload seq of `device` that member `by` claims to have handled (0: none).
    #[must_use]
    pub fn claim_of(&self, device: ReplicaId, by: ReplicaId) -> Seq {
        self.claim_at(device, by).0
    }

    /// Member `by`'s cursor claim for `device`: the highest upload seq it handled, its counter
    /// bounding every dot it applied them under, and the highest stamp among them (`(0, 0,
    /// 0)`: none).
    #[must_use]
    pub fn claim_at(&self, device: ReplicaId, by: ReplicaId) -> (Seq, Seq, Hlc) {
        self.records.get(&device).and_then(|r| r.cursors.get(&by)).map_or((Seq(0), Seq(0), Hlc(0)), |c| (c.1, c.2, c.4))
    }

    /// The record of `device` with member `by`'s cursor claim raised to `seq` (the highest
    /// upload seq it handled) and `counter` (its counter once it had applied every write it
    /// applied for those seqs, not raised for an upload it applied nothing for), for the batch
    /// that admits the uploads up to it (memory follows with [`Devices::advance_cursor`] once
    /// it is durable), if enrolled and the claim moves. The cursor follows when the claim
    /// passes it; a claim raised below the cursor still records that `by` handled those seqs
    /// itself (finding 2: it answers them from what it holds from then on, never applying them
    /// again).
    pub(crate) fn advanced_record(&self, device: ReplicaId, by: ReplicaId, claim: Claim) -> Option<DeviceRecord> {
        self.get(device).filter(|r| raises(r, by, claim)).map(|r| {
            let mut record = DeviceRecord { changed: self.clock + 1, ..r.clone() };
            record.take_cursor(CursorClaim(by, claim.0, claim.1, Vec::new(), claim.2));
            record
        })
    }

    /// Raises member `by`'s cursor claim for `device` to `claim` (never back); the cursor
    /// follows.
    pub(crate) fn advance_cursor(&mut self, device: ReplicaId, by: ReplicaId, claim: Claim) {
        if let Some(r) = self.records.get_mut(&device).filter(|r| !r.revoked && raises(r, by, claim)) {
            r.take_cursor(CursorClaim(by, claim.0, claim.1, Vec::new(), claim.2));
            self.touch(device);
        }
    }

    /// Folds every counting acknowledgement into `f` by `meet` and returns it.
    #[must_use]
    pub fn frontier(&self, f: VersionVector) -> VersionVector {
        self.counting().fold(f, |f, a| f.meet(a))
    }

    /// Folds every counting acknowledgement into `j` by `merge` and returns it.
    #[must_use]
    pub fn join(&self, mut j: VersionVector) -> VersionVector {
        for a in self.counting() {
            j.merge(a);
        }
        j
    }

    fn counting(&self) -> impl Iterator<Item = &VersionVector> {
        self.records.values().filter(|r| !r.revoked).filter_map(|r| r.acked.as_ref())
    }

    /// Stops counting devices not heard from since `now_ms - lease_ms` (their records stay, with
    /// their cursors: they are still enrolled); returns them. Their signed acknowledgements are
    /// dropped, not relayed, and none signed up to `now_ms` counts again.
    pub(crate) fn lapse_silent(&mut self, now_ms: u64, lease_ms: u64) -> Vec<ReplicaId> {
        let cutoff = now_ms.saturating_sub(lease_ms);
        let lapsed: Vec<ReplicaId> =
            self.records.iter().filter(|(_, r)| r.counts() && r.last_seen_ms < cutoff).map(|(d, _)| *d).collect();
        for d in &lapsed {
            if let Some(r) = self.records.get_mut(d) {
                r.acked = None;
                r.raise_floor(now_ms);
            }
            self.touch(*d);
        }
        lapsed
    }

    /// The records changed here after clock value `after`, in the order they changed, at most
    /// `max` of them, as they travel to member `to` (leaving out those `to` itself made as they
    /// are); and the clock value the last one considered carries.
    #[must_use]
    pub fn changed_since(&self, after: u64, max: usize, to: Option<ReplicaId>) -> (Vec<RecordWire>, u64) {
        let mut changed: Vec<(&ReplicaId, &DeviceRecord)> =
            self.records.iter().filter(|(_, r)| r.changed > after).collect();
        changed.sort_by_key(|(_, r)| r.changed);
        changed.truncate(max);
        // And by bytes, so that a `Records` frame always fits the frame limit.
        let mut bytes = 0;
        if let Some(cut) = changed.iter().position(|(_, r)| {
            bytes += if to.is_none() || r.from != to { r.wire_bytes_max() } else { 0 };
            bytes > crate::session::message::RECORDS_BYTES_PER_MESSAGE_MAX
        }) {
            changed.truncate(cut.max(1));
        }
        let upto = changed.last().map_or(after, |(_, r)| r.changed);
        let wire = changed
            .into_iter()
            .filter(|(_, r)| to.is_none() || r.from != to)
            .map(|(d, r)| {
                let (acked, time_ms, signature) = match r.signed.as_ref().filter(|_| !r.revoked) {
                    Some(s) => (Some(s.vector.clone()), s.time_ms, s.signature.clone()),
                    None => (None, 0, Vec::new()),
                };
                let cursors = r.cursors.values().cloned().collect();
                RecordWire(*d, r.epoch, r.revoked, acked, cursors, time_ms, r.last_seen_ms, signature)
            })
            .collect();
        (wire, upto)
    }

    /// Merges records from member `from` (`Message::Records`). Cheap checks come first, and
    /// `check` is asked only about claims that would change something:
    /// - a higher epoch replaces the record, unless the device was removed here (a removal is
    ///   final here); a removal wins within an epoch;
    /// - a cursor claim counts if `check` passes it (the sender's own, or signed by its member)
    ///   and it is later than the one kept of that member; the cursor is the highest claim;
    /// - the device's acknowledgement, in the record's epoch and not removed, signed after the
    ///   record's floor and newer than the one kept, counts if `check` passes it: then the
    ///   last-seen time takes the maximum with the earliest of its signed time, the sender's
    ///   last sight of the device and `now_ms`; the acknowledgement grows the record under the
    ///   rule of [`Devices::acknowledge`] unless that leaves the device last seen longer than
    ///   `lease_ms` ago; and it is kept to relay.
    ///
    /// A record the table has no room for is left out. Returns how many records changed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn merge(
        &mut self,
        from: ReplicaId,
        records: Vec<RecordWire>,
        now_ms: u64,
        lease_ms: u64,
        collected: &VersionVector,
        pending: Option<&VersionVector>,
        check: &mut dyn ClaimCheck,
    ) -> usize {
        let mut changed = 0;
        // Per device, the claims held as this message began: what bounds its cursor claims.
        let mut held: BTreeMap<ReplicaId, BTreeMap<ReplicaId, Seq>> = BTreeMap::new();
        for wire in records {
            let RecordWire(device, epoch, revoked, acked, cursors, time_ms, seen_ms, signature) = wire;
            let before = self.records.get(&device).cloned();
            let held = held.entry(device).or_insert_with(|| {
                before.as_ref().map(|r| r.cursors.iter().map(|(m, c)| (*m, c.1)).collect()).unwrap_or_default()
            });
            if before.is_none() && self.records.len() >= DEVICES_MAX {
                continue;
            }
            // No relay moves an epoch far past what is held here: so enrolling again never
            // runs out of epochs on a peer's word (finding 9).
            let held_epoch = before.as_ref().map_or(0, |r| r.epoch);
            if epoch > held_epoch.saturating_add(crate::limits::DEVICE_EPOCH_GAP_MAX) {
                check.implausible();
                continue;
            }
            let record =
                self.records.entry(device).or_insert_with(|| DeviceRecord { epoch, ..DeviceRecord::default() });
            if epoch > record.epoch && !record.revoked {
                *record = DeviceRecord { epoch, ..record.carried() };
            }
            for claim in cursors {
                // Far beyond what any other member claimed: no device numbered that many
                // writes since (finding 5: a cursor of `u64::MAX` shown to the device broke its
                // sync). Bound by the other members' claims as the message began, never by the
                // claimant's own nor by what this message raised: each claim taken would
                // otherwise move the bound for the next (R3-2: 2^40, then 2^41, …).
                let others = held.iter().filter(|(m, _)| **m != claim.0).map(|(_, s)| s.0).max().unwrap_or(0);
                if claim.1.0 > others.saturating_add(crate::limits::CURSOR_GAP_MAX).min(crate::limits::CURSOR_MAX) {
                    check.implausible();
                    continue;
                }
                let kept = record.cursors.get(&claim.0).map(|k| (k.1, k.2, k.4));
                if kept.is_some_and(|k| k >= (claim.1, claim.2, claim.4)) || !check.cursor(device, &claim) {
                    continue;
                }
                record.take_cursor(claim);
            }
            if epoch == record.epoch {
                if revoked && !record.revoked {
                    record.revoke(now_ms);
                }
                if let Some(vector) = acked.filter(|_| !record.revoked && time_ms > record.floor_ms) {
                    let claim = SignedAck { signer: device, vector, time_ms, signature };
                    if claim.is_newer_than(record.signed.as_ref())
                        && let Some(counted) = check.ack(&claim)
                    {
                        record.last_seen_ms = record.last_seen_ms.max(time_ms.min(seen_ms).min(now_ms));
                        if record.last_seen_ms >= now_ms.saturating_sub(lease_ms) {
                            grow(record, &counted, collected, pending);
                        }
                        record.signed = Some(claim);
                    }
                }
            }
            let after = self.records.get(&device).cloned();
            if after != before {
                changed += 1;
                self.touch_from(device, Some(from));
            }
        }
        changed
    }

    /// The records changed since the last call, to persist.
    pub(crate) fn take_dirty(&mut self) -> Vec<(ReplicaId, DeviceRecord)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|d| self.records.get(&d).map(|r| (d, r.clone())))
            .collect()
    }
}

impl DeviceRecord {
    /// What a new epoch of this record keeps: the cursor (uploads admitted stay admitted) and
    /// the floor (acknowledgements signed before a removal never count again).
    fn carried(&mut self) -> DeviceRecord {
        DeviceRecord {
            cursor: self.cursor,
            cursor_at: std::mem::take(&mut self.cursor_at),
            cursors: std::mem::take(&mut self.cursors),
            floor_ms: self.floor_ms,
            ..DeviceRecord::default()
        }
    }

    /// Marks the record removed at `now_ms`.
    fn revoke(&mut self, now_ms: u64) {
        self.revoked = true;
        self.acked = None;
        self.raise_floor(now_ms);
    }

    /// Drops the signed acknowledgement and raises the floor to `now_ms` (or the dropped
    /// acknowledgement's time, if later): no acknowledgement signed up to then counts again.
    fn raise_floor(&mut self, now_ms: u64) {
        let signed_ms = self.signed.take().map_or(0, |s| s.time_ms);
        self.floor_ms = self.floor_ms.max(now_ms).max(signed_ms);
    }

    /// Takes a member's cursor claim (checked by the caller): the cursor is the highest claim,
    /// and `cursor_at` holds each claiming member's counter.
    fn take_cursor(&mut self, claim: CursorClaim) {
        self.cursor = self.cursor.max(claim.1);
        self.cursor_at.advance(claim.0, claim.2);
        self.cursors.insert(claim.0, claim);
    }
}

/// A member's own cursor claim as it grows: the highest upload seq it handled, its counter
/// bounding the dots it applied them under, and the highest stamp among them
/// ([`CursorClaim`] unsigned).
pub(crate) type Claim = (Seq, Seq, Hlc);

/// Whether `claim` for member `by` moves its claim in `record` (no part goes back: the caller
/// passes the maximum of each).
fn raises(record: &DeviceRecord, by: ReplicaId, claim: Claim) -> bool {
    claim > record.cursors.get(&by).map_or((Seq(0), Seq(0), Hlc(0)), |c| (c.1, c.2, c.4))
}

/// Grows `record`'s acknowledgement by `acked` under the counting rule; returns whether it
/// counts afterwards and whether it started counting now.
fn grow(
    record: &mut DeviceRecord,
    acked: &VersionVector,
    collected: &VersionVector,
    pending: Option<&VersionVector>,
) -> (bool, bool) {
    let empty = VersionVector::new();
    let merged = crate::limits::merged_components(record.acked.as_ref().unwrap_or(&empty), acked);
    if merged > crate::limits::VECTOR_COMPONENTS_MAX {
        return (record.counts(), false);
    }
    match &mut record.acked {
        Some(v) => {
            v.merge(acked);
            (true, false)
        }
        None if acked.dominates(collected) && pending.is_none_or(|f| acked.dominates(f)) => {
            record.acked = Some(acked.clone());
            (true, true)
        }
        None => (false, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(pairs: &[(u64, u64)]) -> VersionVector {
        pairs.iter().map(|&(r, s)| (ReplicaId(r), Seq(s))).collect::<Vec<_>>().into()
    }

    #[test]
    fn a_device_counts_once_it_covers_what_was_collected_and_removal_is_final() {
        let mut d = Devices::default();
        assert!(d.enrol(ReplicaId(7)).unwrap());
        assert_eq!(d.acknowledge(ReplicaId(8), &vv(&[(1, 5)]), 10, &vv(&[]), None), (false, false), "not enrolled");
        assert_eq!(d.acknowledge(ReplicaId(7), &vv(&[(1, 2)]), 10, &vv(&[(1, 3)]), None), (false, false));
        assert_eq!(d.acknowledge(ReplicaId(7), &vv(&[(1, 3)]), 20, &vv(&[(1, 3)]), None), (true, true));
        assert_eq!(d.acknowledge(ReplicaId(7), &vv(&[(1, 1)]), 30, &vv(&[(1, 3)]), None), (true, false));
        assert_eq!(d.get(ReplicaId(7)).unwrap().acked, Some(vv(&[(1, 3)])), "only grows");
        assert_eq!(d.frontier(vv(&[(1, 9)])), vv(&[(1, 3)]));
        assert_eq!(d.lapse_silent(30 + 100, 50), vec![ReplicaId(7)]);
        assert_eq!(d.frontier(vv(&[(1, 9)])), vv(&[(1, 9)]), "a lapsed device holds nothing back");
        assert!(d.remove(ReplicaId(7), 140));
        assert!(d.is_revoked(ReplicaId(7)) && !d.is_enrolled(ReplicaId(7)));
        assert_eq!(d.acknowledge(ReplicaId(7), &vv(&[(1, 3)]), 40, &vv(&[]), None), (false, false));
        assert_eq!(
            d.advanced_record(ReplicaId(7), ReplicaId(1), (Seq(4), Seq(1), Hlc(3))),
            None,
            "a removed device's cursor stays"
        );
        d.advance_cursor(ReplicaId(7), ReplicaId(1), (Seq(4), Seq(1), Hlc(3)));
        assert_eq!(d.cursor(ReplicaId(7)), Seq(0));
        assert!(d.enrol(ReplicaId(7)).unwrap(), "enrolled again, in a new epoch");
        assert_eq!(d.get(ReplicaId(7)).unwrap().epoch, 1);
    }

    #[test]
    fn a_device_removed_at_the_last_epoch_is_not_enrolled_again() {
        let last = DeviceRecord { epoch: u64::MAX, revoked: true, ..DeviceRecord::default() };
        let mut d = Devices::load(BTreeMap::from([(ReplicaId(7), last)]));
        assert_eq!(d.enrol(ReplicaId(7)), Err(EnrolError::EpochsExhausted { device: ReplicaId(7), epoch: u64::MAX }));
        assert!(d.is_revoked(ReplicaId(7)), "nothing changed");
    }

    /// Passes every claim (what a failed signature does is in `engine/tests/signed_acks.rs` and
    /// `engine/tests/devices_hostile.rs`).
    struct PassAll;

    impl ClaimCheck for PassAll {
        fn ack(&mut self, claim: &SignedAck) -> Option<VersionVector> {
            Some(claim.vector.clone())
        }

        fn cursor(&mut self, _device: ReplicaId, _claim: &CursorClaim) -> bool {
            true
        }

        fn implausible(&mut self) {}
    }

    #[test]
    fn records_merge_by_epoch_removal_wins_and_only_what_changed_travels() {
        let mut a = Devices::default();
        let mut b = Devices::default();
        a.enrol(ReplicaId(7)).unwrap();
        a.enrol(ReplicaId(8)).unwrap();
        let (wire, upto) = a.changed_since(0, 100, None);
        assert_eq!((wire.len(), upto), (2, 2));
        assert_eq!(b.merge(ReplicaId(1), wire, 100, 1000, &vv(&[]), None, &mut PassAll), 2);
        assert!(b.is_enrolled(ReplicaId(7)) && b.is_enrolled(ReplicaId(8)));
        assert_eq!(a.changed_since(upto, 100, None).0, vec![], "nothing changed since");
        // A removal at b travels to a and is not undone by a's older record.
        b.remove(ReplicaId(7), 100);
        let (wire, _) = b.changed_since(0, 100, None);
        a.merge(ReplicaId(2), wire, 100, 1000, &vv(&[]), None, &mut PassAll);
        assert!(a.is_revoked(ReplicaId(7)));
        let claim = CursorClaim(ReplicaId(1), Seq(9), Seq(4), vec![1], Hlc(7));
        let stale = RecordWire(ReplicaId(7), 0, false, Some(vv(&[(1, 1)])), vec![claim], 150, 150, vec![1]);
        a.merge(ReplicaId(2), vec![stale.clone()], 200, 1000, &vv(&[]), None, &mut PassAll);
        assert!(a.is_revoked(ReplicaId(7)), "same epoch: the removal wins");
        assert_eq!(a.cursor(ReplicaId(7)), Seq(9), "cursors only grow");
        assert!(!a.covers_cursor(ReplicaId(7), &vv(&[(1, 3)])) && a.covers_cursor(ReplicaId(7), &vv(&[(1, 4)])));
        // Nor by a higher epoch from a peer: only an enrolment here does.
        let mut higher = stale;
        higher.1 = 1;
        a.merge(ReplicaId(2), vec![higher], 200, 1000, &vv(&[]), None, &mut PassAll);
        assert!(a.is_revoked(ReplicaId(7)), "a relayed epoch does not undo a removal");
        // A time from a peer is never later than the receiver's clock, nor than the sender's
        // own sight of the device.
        let future = RecordWire(ReplicaId(8), 0, false, Some(vv(&[(1, 1)])), vec![], u64::MAX, 90, vec![1]);
        a.merge(ReplicaId(2), vec![future], 100, 1000, &vv(&[]), None, &mut PassAll);
        assert_eq!(a.get(ReplicaId(8)).unwrap().last_seen_ms, 90);
    }
}
