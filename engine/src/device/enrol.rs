//! A member's devices, as a [`Replica`] keeps them: enrolment and removal by the operator, each
//! device's acknowledgement, and the part devices play in the stable frontier (docs/design.md
//! §8). Removal takes effect at once: the record goes, collection no longer waits for the
//! device, and its sessions are refused from then on.

use crate::device::records::Devices;
use crate::error::Result;
use crate::ids::ReplicaId;
use crate::replica::Replica;
use crate::storage::{Batch, Meta, Storage, encode_cbor};
use crate::vector::VersionVector;

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
    /// new. Fails past [`crate::device::DEVICES_MAX`].
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
        if !self.devices.remove(device) {
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

    /// Commits the device records changed in memory (and the revoked set). If the commit
    /// fails, the table is read back from the store, so memory holds what is durable.
    fn persist_devices(&mut self) -> Result<()> {
        let mut batch = Batch::new();
        Self::add_device_changes(&mut self.devices, &mut batch);
        if let Err(e) = self.commit(&batch) {
            if let Ok(snap) = self.store().snapshot()
                && let Ok(devices) = crate::replica::load_devices(&snap)
            {
                self.devices = devices;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Adds to `batch` the records changed in `devices` since they were last persisted, and the
    /// revoked set if a device was removed.
    pub(crate) fn add_device_changes(devices: &mut Devices, batch: &mut Batch) {
        let mut removed = false;
        for (id, record) in devices.take_dirty() {
            match record {
                Some(r) => batch.set_device(id.0, encode_cbor(&r)),
                None => {
                    removed = true;
                    batch.remove_device(id.0)
                }
            };
        }
        if removed {
            let revoked: std::collections::BTreeSet<ReplicaId> = devices.revoked().collect();
            batch.set_meta(Meta::Revoked, encode_cbor(&revoked));
        }
    }
}
