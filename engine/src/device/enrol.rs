//! A member's devices, as a [`Replica`] keeps them: enrolment and removal by the operator, each
//! device's acknowledgement, and the part devices play in the stable frontier (docs/design.md
//! §8). Removal takes effect at once: the record is marked revoked (and kept, so the removal
//! travels to the other members and wins there), collection no longer waits for the device, and
//! its sessions are refused from then on.

use crate::device::records::Devices;
use crate::device::records::RecordWire;
use crate::error::Result;
use crate::ids::ReplicaId;
use crate::replica::Replica;
use crate::session::Message;
use crate::session::message::RECORDS_PER_MESSAGE_MAX;
use crate::sign::CursorClaim;
use crate::storage::{Batch, Meta, Storage, encode_cbor};
use crate::vector::VersionVector;

/// How a member checks what another member relays about a device (docs/design.md §9).
struct RelayCheck<'a> {
    signer: &'a dyn crate::sign::AckSigner,
    latest_ms: u64,
    /// What some member holds: a relayed acknowledgement is capped at it, as a direct one is
    /// (`cap_device_ack`), so it names members only and none of this member's writes beyond
    /// what it issued.
    cap: VersionVector,
    membership: &'a crate::membership::Membership,
    me: ReplicaId,
    from: ReplicaId,
    unverified: u64,
    implausible: u64,
}

impl crate::device::records::ClaimCheck for RelayCheck<'_> {
    /// A device's acknowledgement counts here only as the device signed it, no later than this
    /// member's clock allows.
    fn ack(&mut self, claim: &crate::sign::SignedAck) -> Option<VersionVector> {
        if claim.verify_by(self.signer, self.latest_ms) {
            Some(claim.vector.meet(&self.cap))
        } else {
            self.unverified += 1;
            None
        }
    }

    /// A cursor claim counts only about an enrolled member other than this one, and only as
    /// the sender's own word or signed by the member it names: no member can make this one
    /// answer "known" to a device's upload on a third member's behalf.
    fn implausible(&mut self) {
        self.implausible += 1;
    }

    fn cursor(&mut self, device: ReplicaId, claim: &CursorClaim) -> bool {
        let member = claim.member();
        if member == self.me {
            return false;
        }
        let ok = self.membership.is_enrolled(member) && (member == self.from || claim.verify(self.signer, device));
        if !ok {
            self.unverified += 1;
        }
        ok
    }
}

impl<S: Storage> Replica<S> {
    /// Whether this replica is a device.
    #[must_use]
    pub fn is_device(&self) -> bool {
        self.config().role == crate::device::Role::Device
    }

    /// The enrolled devices (on a member).
    #[must_use]
    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    pub(crate) fn devices_mut(&mut self) -> &mut Devices {
        &mut self.devices
    }

    /// Enrols `device` (an operator's act), durable when this returns. Returns whether it was
    /// new. Fails past [`crate::device::DEVICES_MAX`], or if the device's epochs are exhausted
    /// ([`crate::device::EnrolError`]).
    pub fn enrol_device(&mut self, device: ReplicaId) -> Result<bool> {
        if device == self.id() {
            return Ok(false);
        }
        if !self.devices.enrol(device).map_err(crate::Error::from)? {
            return Ok(false);
        }
        self.persist_devices()?;
        Ok(true)
    }

    /// Removes `device` at once (an operator's act), durable when this returns: it stops
    /// holding collection back and its sessions are refused. Returns whether it was enrolled.
    pub fn remove_device(&mut self, device: ReplicaId) -> Result<bool> {
        let now_ms = self.now_ms();
        if !self.devices.remove(device, now_ms) {
            return Ok(false);
        }
        self.persist_devices()?;
        Ok(true)
    }

    /// Records `device`'s acknowledgement (its vector over members, capped at its oldest queued
    /// write), heard now. Counts toward the stable frontier once it covers everything collected
    /// here and the pending checkpoint's frontier; then it also joins that checkpoint's J₀, as
    /// a member's first acknowledgement does. Returns whether it counts.
    pub fn acknowledge_device(&mut self, device: ReplicaId, ack: &VersionVector) -> bool {
        let now_ms = self.now_ms();
        let pending = self.checkpoint.as_ref().map(|c| c.frontier.clone());
        let collected = self.membership.collected().clone();
        let (counts, started) = self.devices.acknowledge(device, ack, now_ms, &collected, pending.as_ref());
        if started && let Some(checkpoint) = self.checkpoint.as_mut() {
            checkpoint.join.merge(ack);
        }
        counts
    }

    /// Whether `device` may have the anti-entropy session it asks for: not if it had one here
    /// within `Config::device_anti_entropy_min_ms` (it then gets what it would get without
    /// asking). Each one walks this member's whole index, so a device must not be able
    /// to ask for it at every session.
    pub(crate) fn grant_device_anti_entropy(&mut self, device: ReplicaId) -> bool {
        let now_ms = self.now_ms();
        let min = self.config().device_anti_entropy_min_ms;
        match self.device_anti_entropy.get(&device) {
            Some(&last) if now_ms.saturating_sub(last) < min && last <= now_ms => false,
            _ => {
                self.device_anti_entropy.insert(device, now_ms);
                true
            }
        }
    }

    /// Keeps `device`'s acknowledgement of `vector` (as it sent it, before any cap), if `proof`
    /// is its valid signature over it: what this member relays to the others as the device's
    /// acknowledgement and last-seen time. An unsigned or badly signed one still counted here
    /// (the session is authenticated) but is not relayed.
    pub(crate) fn note_device_signed(
        &mut self,
        device: ReplicaId,
        vector: VersionVector,
        proof: Option<&crate::sign::AckProof>,
    ) {
        let Some(crate::sign::AckProof(time_ms, signature)) = proof else { return };
        let signed = crate::sign::SignedAck { signer: device, vector, time_ms: *time_ms, signature: signature.clone() };
        if signed.verify_by(self.signer.as_ref(), self.signed_time_limit_ms()) {
            self.devices.note_signed(signed);
        }
    }

    /// The records clock of `peer`'s device records up to which they were merged here.
    #[must_use]
    pub fn records_seen(&self, peer: ReplicaId) -> u64 {
        self.records_seen.seen.get(&peer).copied().unwrap_or(0)
    }

    /// How far `peer` said it merged this replica's device records (its last handshake).
    #[must_use]
    pub fn records_acked(&self, peer: ReplicaId) -> u64 {
        self.records_seen.acked.get(&peer).copied().unwrap_or(0)
    }

    /// Takes what member `peer`'s handshake said of how far it merged this replica's device
    /// records. Beyond this replica's records clock, this store is an older copy (restored from
    /// a backup): the clock jumps past it and the whole table goes again
    /// ([`Devices::jump_clock_past`]), or the peer would take the changes made here since the
    /// restore (a removal) for ones it merged already. A claim more than
    /// [`RECORDS_CLOCK_CLAIM_MAX`](crate::device::records::RECORDS_CLOCK_CLAIM_MAX) beyond it is
    /// refused and counted ([`Replica::records_clock_claims_refused`]). Durable when this
    /// returns.
    pub(crate) fn note_records_claimed(&mut self, peer: ReplicaId, seen: u64) -> Result<()> {
        if self.is_device() || !self.membership.is_enrolled(peer) || seen <= self.devices.clock() {
            return Ok(());
        }
        if !self.devices.jump_clock_past(seen) {
            self.records_clock_claims_refused += 1;
            return Ok(());
        }
        self.persist_devices()
    }

    /// How many member handshakes claimed to have merged this replica's device records beyond
    /// [`RECORDS_CLOCK_CLAIM_MAX`](crate::device::records::RECORDS_CLOCK_CLAIM_MAX) past its records
    /// clock (refused, not believed).
    #[must_use]
    pub fn records_clock_claims_refused(&self) -> u64 {
        self.records_clock_claims_refused
    }

    /// Notes how far `peer` merged this replica's device records (never past this replica's
    /// records clock: a larger claim would only keep records from the peer). In memory until
    /// the next merge persists it: lost, records are sent again, which changes nothing.
    pub(crate) fn note_records_acked(&mut self, peer: ReplicaId, upto: u64) {
        let upto = upto.min(self.devices.clock());
        let acked = self.records_seen.acked.entry(peer).or_default();
        if upto > *acked {
            *acked = upto;
            self.records_seen_durable = false;
        }
    }

    /// The `Records` messages for a member that merged this replica's records up to `seen`:
    /// those changed since, in chunks; at least one (the last says so). This member's own
    /// cursor claims are signed as they go (`sign.rs` `CursorClaim`).
    pub(crate) fn device_records_for(&self, peer: Option<ReplicaId>, seen: u64) -> Vec<Message> {
        let mut out = Vec::new();
        let mut after = seen;
        loop {
            let (mut records, upto) = self.devices.changed_since(after, RECORDS_PER_MESSAGE_MAX, peer);
            for record in &mut records {
                for claim in record.4.iter_mut().filter(|c| c.0 == self.id()) {
                    *claim = self.sign_cursor(record.0, claim.1, claim.2, claim.4);
                }
            }
            let last = upto == after || upto >= self.devices.clock();
            out.push(Message::Records(if last { self.devices.clock().max(upto) } else { upto }, last, records));
            if last {
                return out;
            }
            after = upto;
        }
    }

    /// Merges device records from `peer` (`Message::Records`), if it is an enrolled member:
    /// enrolments and removals made there, cursors, last-seen times and acknowledgements.
    /// Durable when this returns, with how far `peer`'s records were merged.
    pub(crate) fn merge_device_records(&mut self, peer: ReplicaId, upto: u64, records: Vec<RecordWire>) -> Result<()> {
        if self.is_device() || !self.membership.is_enrolled(peer) {
            return Ok(());
        }
        let now_ms = self.now_ms();
        let collected = self.membership.collected().clone();
        let pending = self.checkpoint.as_ref().map(|c| c.frontier.clone());
        let lease_ms = self.config().device_lease_ms;
        let mut check = RelayCheck {
            signer: self.signer.as_ref(),
            latest_ms: self.signed_time_limit_ms(),
            cap: self.membership.join(self.vector()),
            membership: &self.membership,
            me: self.id(),
            from: peer,
            unverified: 0,
            implausible: 0,
        };
        let changed = self.devices.merge(peer, records, now_ms, lease_ms, &collected, pending.as_ref(), &mut check);
        self.acks_unverified += check.unverified;
        self.claims_implausible += check.implausible;
        let mut seen = self.records_seen.clone();
        let entry = seen.seen.entry(peer).or_default();
        *entry = (*entry).max(upto);
        if changed == 0 && seen == self.records_seen && self.records_seen_durable {
            return Ok(());
        }
        let mut batch = Batch::new();
        Self::add_device_changes(&mut self.devices, &mut batch);
        batch.set_meta(Meta::RecordsSeen, encode_cbor(&seen));
        if let Err(e) = self.commit(&batch) {
            self.reload_devices();
            return Err(e);
        }
        self.records_seen = seen;
        self.records_seen_durable = true;
        Ok(())
    }

    /// Reads the device table back from the store (after a failed commit), so memory holds
    /// what is durable.
    fn reload_devices(&mut self) {
        if let Ok(snap) = self.store().snapshot()
            && let Ok(devices) = crate::replica::load_devices(&snap)
        {
            self.devices = devices;
        }
    }

    /// Commits the device records changed in memory (and the revoked set). If the commit
    /// fails, the table is read back from the store, so memory holds what is durable.
    fn persist_devices(&mut self) -> Result<()> {
        let mut batch = Batch::new();
        Self::add_device_changes(&mut self.devices, &mut batch);
        if let Err(e) = self.commit(&batch) {
            self.reload_devices();
            return Err(e);
        }
        Ok(())
    }

    /// Adds to `batch` the records changed in `devices` since they were last persisted.
    pub(crate) fn add_device_changes(devices: &mut Devices, batch: &mut Batch) {
        for (id, record) in devices.take_dirty() {
            batch.set_device(id.0, encode_cbor(&record));
        }
    }
}
