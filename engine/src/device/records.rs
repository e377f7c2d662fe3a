//! A member's table of enrolled devices (docs/design.md §8): one record per device, with what it
//! acknowledged, the highest upload seq applied for it (its cursor) and when it was last seen.
//!
//! Invariants kept here:
//! - **only an enrolled device has a record**, and only the operator enrols or removes one
//!   ([`Devices::enrol`], [`Devices::remove`]); a removed device is remembered as revoked, so
//!   nothing (a later session, a record from elsewhere) brings it back until it is enrolled again;
//! - at most [`DEVICES_MAX`] devices are enrolled;
//! - a record's acknowledged vector only grows, and has at most
//!   [`VECTOR_COMPONENTS_MAX`](crate::limits::VECTOR_COMPONENTS_MAX) components (devices
//!   acknowledge vectors over members, never over devices);
//! - **an acknowledgement counts** (holds collection back) only once it covers `collected` and
//!   the pending checkpoint's frontier, the rule members are admitted by (`membership.rs`); a
//!   device silent for longer than the device lease stops counting, and is handled like a
//!   rejoining replica when it comes back;
//! - the cursor only grows.

use crate::ids::{ReplicaId, Seq};
use crate::vector::VersionVector;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The most devices a member enrols.
pub const DEVICES_MAX: usize = 100_000;

/// The default device lease: a device silent for 30 days stops holding collection back.
pub const DEVICE_LEASE_MS_DEFAULT: u64 = 30 * 24 * 3600 * 1000;

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

/// What a member knows of one enrolled device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The newest vector (over members) the device acknowledged, once it counts: `None` for a
    /// device that has not yet acknowledged everything collected here (new, or back after its
    /// lease).
    pub acked: Option<VersionVector>,
    /// The highest upload seq applied for the device, here or at another member.
    pub cursor: Seq,
    /// When the device was last heard from (wall-clock ms; 0: never).
    pub last_seen_ms: u64,
}

impl DeviceRecord {
    /// Whether the record holds collection back.
    #[must_use]
    pub fn counts(&self) -> bool {
        self.acked.is_some()
    }
}

/// The enrolled devices and their records, and the devices removed since.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Devices {
    records: BTreeMap<ReplicaId, DeviceRecord>,
    revoked: BTreeSet<ReplicaId>,
    /// Records changed since they were last persisted.
    dirty: BTreeSet<ReplicaId>,
}

impl Devices {
    /// The table from its persisted records and revocations.
    pub(crate) fn load(records: BTreeMap<ReplicaId, DeviceRecord>, revoked: BTreeSet<ReplicaId>) -> Devices {
        Devices { records, revoked, dirty: BTreeSet::new() }
    }

    /// Whether `device` is enrolled.
    #[must_use]
    pub fn is_enrolled(&self, device: ReplicaId) -> bool {
        self.records.contains_key(&device)
    }

    /// Whether `device` was removed (and not enrolled again since).
    #[must_use]
    pub fn is_revoked(&self, device: ReplicaId) -> bool {
        self.revoked.contains(&device)
    }

    /// The record of `device`, if enrolled.
    #[must_use]
    pub fn get(&self, device: ReplicaId) -> Option<&DeviceRecord> {
        self.records.get(&device)
    }

    /// Every enrolled device and its record, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (ReplicaId, &DeviceRecord)> {
        self.records.iter().map(|(d, r)| (*d, r))
    }

    /// How many devices are enrolled.
    #[must_use]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no device is enrolled.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The revoked devices, in id order.
    pub fn revoked(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.revoked.iter().copied()
    }

    /// Enrols `device` (an operator's act). Returns whether it was new.
    pub fn enrol(&mut self, device: ReplicaId) -> Result<bool, TooManyDevices> {
        if self.records.contains_key(&device) {
            return Ok(false);
        }
        if self.records.len() >= DEVICES_MAX {
            return Err(TooManyDevices { device, enrolled: self.records.len(), max: DEVICES_MAX });
        }
        self.revoked.remove(&device);
        self.records.insert(device, DeviceRecord::default());
        self.dirty.insert(device);
        Ok(true)
    }

    /// Removes `device` at once (an operator's act): its record goes, so it no longer holds
    /// collection back, and it is revoked. Returns whether it was enrolled.
    pub fn remove(&mut self, device: ReplicaId) -> bool {
        let was = self.records.remove(&device).is_some();
        if was {
            self.revoked.insert(device);
            self.dirty.insert(device);
        }
        was
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
        let Some(record) = self.records.get_mut(&device) else { return (false, false) };
        record.last_seen_ms = record.last_seen_ms.max(now_ms);
        self.dirty.insert(device);
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

    /// The cursor of `device` (0 if unknown).
    #[must_use]
    pub fn cursor(&self, device: ReplicaId) -> Seq {
        self.records.get(&device).map_or(Seq(0), |r| r.cursor)
    }

    /// The record of `device` with its cursor advanced to `seq` (for the batch that admits the
    /// uploads up to it), if enrolled.
    pub(crate) fn advanced_record(&self, device: ReplicaId, seq: Seq) -> Option<DeviceRecord> {
        self.records.get(&device).map(|r| DeviceRecord { cursor: r.cursor.max(seq), ..r.clone() })
    }

    /// Advances the cursor of `device` to `seq` (never back).
    pub(crate) fn advance_cursor(&mut self, device: ReplicaId, seq: Seq) {
        if let Some(r) = self.records.get_mut(&device)
            && seq > r.cursor
        {
            r.cursor = seq;
            self.dirty.insert(device);
        }
    }

    /// Folds every counting acknowledgement into `f` by `meet` and returns it.
    #[must_use]
    pub fn frontier(&self, f: VersionVector) -> VersionVector {
        self.records.values().filter_map(|r| r.acked.as_ref()).fold(f, |f, a| f.meet(a))
    }

    /// Folds every counting acknowledgement into `j` by `merge` and returns it.
    #[must_use]
    pub fn join(&self, mut j: VersionVector) -> VersionVector {
        for a in self.records.values().filter_map(|r| r.acked.as_ref()) {
            j.merge(a);
        }
        j
    }

    /// Stops counting devices not heard from since `now_ms - lease_ms` (their records stay, with
    /// their cursors: they are still enrolled); returns them.
    pub(crate) fn lapse_silent(&mut self, now_ms: u64, lease_ms: u64) -> Vec<ReplicaId> {
        let cutoff = now_ms.saturating_sub(lease_ms);
        let mut lapsed = Vec::new();
        for (d, r) in &mut self.records {
            if r.acked.is_some() && r.last_seen_ms < cutoff {
                r.acked = None;
                lapsed.push(*d);
            }
        }
        self.dirty.extend(lapsed.iter().copied());
        lapsed
    }

    /// The records changed since the last call (with `None` for a removed device), to persist.
    pub(crate) fn take_dirty(&mut self) -> Vec<(ReplicaId, Option<DeviceRecord>)> {
        std::mem::take(&mut self.dirty).into_iter().map(|d| (d, self.records.get(&d).cloned())).collect()
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
        assert!(d.remove(ReplicaId(7)));
        assert!(d.is_revoked(ReplicaId(7)) && !d.is_enrolled(ReplicaId(7)));
        assert_eq!(d.acknowledge(ReplicaId(7), &vv(&[(1, 3)]), 40, &vv(&[]), None), (false, false));
        d.advance_cursor(ReplicaId(7), Seq(4));
        assert_eq!(d.cursor(ReplicaId(7)), Seq(0));
    }
}
