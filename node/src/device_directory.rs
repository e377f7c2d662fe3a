//! The node ids of the devices a member knows, with the names the operator gave them: the part
//! of a device's identity the engine does not keep.
//!
//! The engine names a device by its replica id (8 bytes of its node id), and its device records
//! travel between members with that id alone. A member can only let a device connect if it
//! knows the device's whole node id (the hash of its key, which TLS checks), so the node keeps
//! this directory beside the store (`DIR/devices.redb`, `directory_file.rs`: each change
//! written alone, durably) and members share it: on each member connection, a stream whose first
//! frame is [`STREAM_DIRECTORY`] carries the directory in chunks of at most
//! [`DIRECTORY_ENTRIES_PER_FRAME`] entries, sent at connect and again whenever it changes.
//!
//! Invariants kept here:
//! - a node id is **trusted as a device only while the engine has its replica id enrolled**
//!   (`device_service::refresh_trust`): the directory says who a device is, the engine's records
//!   (enrolments and removals, which win by epoch) say whether it may connect; so a directory
//!   entry from a member can make no replica a device, and a removal at any member revokes;
//! - one node id per replica id: an entry enrolled here is never replaced by a shared one, and a
//!   shared entry whose replica id is taken is ignored;
//! - a shared entry is kept only for a replica id the engine has enrolled as a device (one for
//!   another is held, at most [`SHARED_PENDING_MAX`], untrusted and unshared, until the records
//!   enrol it), and an entry whose device the engine revoked is dropped: a member's directory
//!   can name no replica a device, nor fill the directory with others;
//! - at most [`DEVICES_MAX`] entries and names of at most [`DEVICE_NAME_BYTES_MAX`] bytes,
//!   checked where an entry enters (an operator's call or a member's frame) before it is kept;
//!   a frame is at most the transport's frame limit, and more entries than
//!   [`DIRECTORY_ENTRIES_PER_FRAME`] in one refuse it whole.

use crate::directory_file::DirectoryFile;
use lethe_engine::ReplicaId;
use lethe_engine::device::DEVICES_MAX;
use lethe_transport::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The first frame of a stream between members that carries the device directory.
pub(crate) const STREAM_DIRECTORY: u8 = 2;
/// Directory entries per frame, at most.
pub const DIRECTORY_ENTRIES_PER_FRAME: usize = 1024;
/// The longest device name, in bytes (UTF-8).
pub const DEVICE_NAME_BYTES_MAX: usize = 128;

/// One device as the directory keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DirectoryEntry {
    /// Its node id.
    #[serde(with = "serde_bytes")]
    pub(crate) node: [u8; 32],
    /// The name the operator gave it, if any.
    pub(crate) name: Option<String>,
    /// Whether it was enrolled at this member (not learned from another).
    #[serde(default)]
    pub(crate) here: bool,
    /// The directory's version when it last changed (in memory: 0 after a load, so a
    /// connection's first share sends everything).
    #[serde(skip)]
    pub(crate) changed: u64,
}

/// A directory entry as it travels between members: node id and name (bounded as it decodes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct EntryWire(#[serde(with = "serde_bytes")] [u8; 32], #[serde(deserialize_with = "bounded_name")] Option<String>);

/// One frame of a shared directory: entries (at most [`DIRECTORY_ENTRIES_PER_FRAME`], counted
/// as they decode), and whether it is the last frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct DirectoryFrame(#[serde(deserialize_with = "bounded_entries")] Vec<EntryWire>, bool);

/// Decodes at most [`DIRECTORY_ENTRIES_PER_FRAME`] entries, refusing the list at the first one
/// past it; what it reserves is bounded by the limit, not by the length a peer declares.
fn bounded_entries<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<EntryWire>, D::Error> {
    struct Bounded;
    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = Vec<EntryWire>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a list of at most {DIRECTORY_ENTRIES_PER_FRAME} device entries")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(DIRECTORY_ENTRIES_PER_FRAME));
            while let Some(e) = seq.next_element()? {
                if out.len() == DIRECTORY_ENTRIES_PER_FRAME {
                    return Err(serde::de::Error::custom(format!(
                        "more than {DIRECTORY_ENTRIES_PER_FRAME} device entries in one frame"
                    )));
                }
                out.push(e);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded)
}

/// Decodes a name of at most [`DEVICE_NAME_BYTES_MAX`] bytes, checked before it is copied.
fn bounded_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Name;
    impl<'de> serde::de::Visitor<'de> for Name {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a device name of at most {DEVICE_NAME_BYTES_MAX} bytes, or null")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: serde::Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_str(Name)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            match check_name(Some(v)) {
                Ok(()) => Ok(Some(v.to_owned())),
                Err(e) => Err(E::custom(e)),
            }
        }
    }
    d.deserialize_option(Name)
}

/// Why the directory could not be read, written or grown.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The file could not be read or written.
    #[error("device directory {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file's database failed (opening, reading or committing).
    #[error("device directory {path}: {what} failed ({reason}); check the disk (room, permissions) and retry")]
    Store {
        /// The file.
        path: String,
        /// What was being done.
        what: &'static str,
        /// What the database said.
        reason: String,
    },
    /// The file does not decode.
    #[error(
        "device directory {path} is damaged ({reason}); restore it from a backup or remove it and enrol the devices again"
    )]
    Damaged {
        /// The file.
        path: String,
        /// What the decoder said.
        reason: String,
    },
    /// A name over [`DEVICE_NAME_BYTES_MAX`].
    #[error("a device name of {len} bytes is longer than the {max} allowed")]
    NameTooLong {
        /// Its length.
        len: usize,
        /// [`DEVICE_NAME_BYTES_MAX`].
        max: usize,
    },
    /// [`DEVICES_MAX`] devices are known already.
    #[error("{max} devices are known already, the most a member keeps; remove devices that are gone first")]
    Full {
        /// [`DEVICES_MAX`].
        max: usize,
    },
    /// Another node id holds this replica id (8 bytes of a node id) here.
    #[error("device {node} has the replica id of device {other}, enrolled already; one of them must get a new key")]
    ReplicaTaken {
        /// The node id to be enrolled.
        node: NodeId,
        /// The one enrolled.
        other: NodeId,
    },
}

/// Entries a member shared for replica ids the engine does not have enrolled yet (the records
/// that enrol them may come after the directory), kept at most this many, the oldest dropped
/// first; never trusted, shared on or persisted until the engine enrols them.
pub const SHARED_PENDING_MAX: usize = 8 * DIRECTORY_ENTRIES_PER_FRAME;

/// One entry of a member's shared directory, decoded and bounded: node id and name.
pub(crate) type SharedEntry = (NodeId, Option<String>);

/// One entry as it was before a change ([`DeviceDirectory::undo`]).
#[derive(Debug)]
struct UndoPoint {
    replica: ReplicaId,
    entry: Option<DirectoryEntry>,
    removed: bool,
    version: u64,
}

/// The devices a member knows by node id, by replica id.
///
/// Changes are made in memory and written by [`Self::save`]: the entries changed after the
/// version last saved and the replica ids removed since. Clones share the file (a change made
/// in a copy and swapped in once saved leaves the original as the file is if the save fails).
/// One made with `Default` (tests) has no file and saves nothing.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeviceDirectory {
    entries: BTreeMap<ReplicaId, DirectoryEntry>,
    /// The file, shared by clones; `None`: in memory only.
    file: Option<Arc<Mutex<DirectoryFile>>>,
    /// The version whose entries are all on disk.
    saved: u64,
    /// Replica ids removed since the last save.
    removed: BTreeSet<ReplicaId>,
    /// Shared entries waiting for the engine to enrol their replica id, oldest first (at most
    /// [`SHARED_PENDING_MAX`]).
    pending: std::collections::VecDeque<SharedEntry>,
    /// Bumped on every change (what sharing waits on).
    pub(crate) version: u64,
}

pub(crate) fn check_name(name: Option<&str>) -> Result<(), DirectoryError> {
    match name {
        Some(n) if n.len() > DEVICE_NAME_BYTES_MAX => {
            Err(DirectoryError::NameTooLong { len: n.len(), max: DEVICE_NAME_BYTES_MAX })
        }
        _ => Ok(()),
    }
}

impl DeviceDirectory {
    /// Opens the directory of the data directory at `dir` (empty if it has none yet; a
    /// `devices.cbor` of an older version is moved into it, `directory_file.rs`).
    pub(crate) fn load(dir: &Path) -> Result<DeviceDirectory, DirectoryError> {
        let (file, list) = DirectoryFile::open(dir)?;
        let entries = list.into_iter().map(|e| (NodeId(e.node).replica_id(), e)).collect();
        Ok(DeviceDirectory { entries, file: Some(Arc::new(Mutex::new(file))), ..DeviceDirectory::default() })
    }

    /// Writes what changed since the last save (entries changed after it, entries removed
    /// since) in one durable transaction, so a crash leaves the one before or the one after.
    /// On an error nothing was written and what is unsaved stays so (the next save writes it).
    pub(crate) fn save(&mut self) -> Result<(), DirectoryError> {
        let puts: Vec<&DirectoryEntry> = self.entries.values().filter(|e| e.changed > self.saved).collect();
        let removes: Vec<ReplicaId> = self.removed.iter().copied().filter(|r| !self.entries.contains_key(r)).collect();
        if let Some(file) = &self.file
            && !(puts.is_empty() && removes.is_empty())
        {
            file.lock().unwrap_or_else(std::sync::PoisonError::into_inner).apply(&puts, &removes)?;
        }
        self.saved = self.version;
        self.removed.clear();
        Ok(())
    }

    /// The node ids the file holds now (read through the file this directory writes).
    #[cfg(test)]
    pub(crate) fn stored_nodes(&self) -> Vec<NodeId> {
        let file = self.file.as_ref().map(|f| f.lock().unwrap_or_else(std::sync::PoisonError::into_inner).read_all());
        file.map_or_else(Vec::new, |r| r.unwrap().iter().map(|e| NodeId(e.node)).collect())
    }

    /// The node id and name of the device with replica id `replica`, if known.
    pub(crate) fn get(&self, replica: ReplicaId) -> Option<&DirectoryEntry> {
        self.entries.get(&replica)
    }

    /// Every known device.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (NodeId, &DirectoryEntry)> {
        self.entries.values().map(|e| (NodeId(e.node), e))
    }

    /// Enrols `node` here with `name` (replacing the name of one known already). Returns
    /// whether anything changed.
    pub(crate) fn enrol(&mut self, node: NodeId, name: Option<String>) -> Result<bool, DirectoryError> {
        check_name(name.as_deref())?;
        let replica = node.replica_id();
        match self.entries.get(&replica) {
            // One learned from a member gives way; one enrolled here does not.
            Some(e) if e.node != node.0 && e.here => Err(DirectoryError::ReplicaTaken { node, other: NodeId(e.node) }),
            Some(e) if e.node == node.0 && e.name == name && e.here => Ok(false),
            None if self.entries.len() >= DEVICES_MAX => Err(DirectoryError::Full { max: DEVICES_MAX }),
            _ => {
                self.version += 1;
                self.entries.insert(replica, DirectoryEntry { node: node.0, name, here: true, changed: self.version });
                Ok(true)
            }
        }
    }

    /// Forgets the device with replica id `replica`. Returns whether it was known.
    pub(crate) fn remove(&mut self, replica: ReplicaId) -> bool {
        let removed = self.entries.remove(&replica).is_some();
        if removed {
            self.version += 1;
            self.removed.insert(replica);
        }
        removed
    }

    /// [`Self::enrol`], then [`Self::save`] if anything changed. If the save fails, memory is
    /// as before the call (so a retry saves again).
    pub(crate) fn enrol_saved(&mut self, node: NodeId, name: Option<String>) -> Result<bool, DirectoryError> {
        let before = self.undo_point(node.replica_id());
        if !self.enrol(node, name)? {
            return Ok(false);
        }
        self.save().inspect_err(|_| self.undo(before))?;
        Ok(true)
    }

    /// [`Self::remove`], then [`Self::save`] if it was known. If the save fails, memory is as
    /// before the call (so a retry removes and saves again).
    pub(crate) fn remove_saved(&mut self, replica: ReplicaId) -> Result<bool, DirectoryError> {
        let before = self.undo_point(replica);
        if !self.remove(replica) {
            return Ok(false);
        }
        self.save().inspect_err(|_| self.undo(before))?;
        Ok(true)
    }

    /// What [`Self::undo`] needs to put the entry of `replica` back as it is now.
    fn undo_point(&self, replica: ReplicaId) -> UndoPoint {
        UndoPoint {
            replica,
            entry: self.entries.get(&replica).cloned(),
            removed: self.removed.contains(&replica),
            version: self.version,
        }
    }

    /// Puts the entry of `replica` and the version back as they were at `point`.
    fn undo(&mut self, point: UndoPoint) {
        match point.entry {
            Some(e) => self.entries.insert(point.replica, e),
            None => self.entries.remove(&point.replica),
        };
        if !point.removed {
            self.removed.remove(&point.replica);
        }
        self.version = point.version;
    }

    /// The frames that share this directory with a member: every entry (`after` `None`) or
    /// those changed after version `after`, the last frame marked; none if there are none.
    /// With the version they bring the member up to.
    pub(crate) fn frames_since(&self, after: Option<u64>) -> (Vec<Vec<u8>>, u64) {
        let wire: Vec<EntryWire> = self
            .entries
            .values()
            .filter(|e| after.is_none_or(|a| e.changed > a))
            .map(|e| EntryWire(e.node, e.name.clone()))
            .collect();
        let chunks: Vec<&[EntryWire]> = wire.chunks(DIRECTORY_ENTRIES_PER_FRAME).collect();
        let last = chunks.len().saturating_sub(1);
        let frames = chunks
            .into_iter()
            .enumerate()
            .map(|(i, chunk)| {
                let mut bytes = Vec::new();
                // Encoding into a Vec cannot fail for these plain types.
                let _ = ciborium::into_writer(&DirectoryFrame(chunk.to_vec(), i == last), &mut bytes);
                bytes
            })
            .collect();
        (frames, self.version)
    }

    /// Takes every entry of a member's frame that is new here ([`Self::decode_frame`], then
    /// [`Self::adopt`] each). Returns how many were added and whether the frame was the last.
    #[cfg(test)]
    pub(crate) fn merge_frame(&mut self, frame: &[u8]) -> Result<(usize, bool), String> {
        let (entries, last) = Self::decode_frame(frame)?;
        let added = entries.into_iter().filter(|(node, name)| self.adopt(*node, name.clone())).count();
        Ok((added, last))
    }

    /// Keeps a shared entry: a replica id not known yet (the replica id is the first 8 bytes of
    /// the node id, [`NodeId::replica_id`], so an entry names no other device than its key's),
    /// within [`DEVICES_MAX`]. Whether it was added. The caller checks that the engine has the
    /// replica id enrolled as a device.
    pub(crate) fn adopt(&mut self, node: NodeId, name: Option<String>) -> bool {
        let replica = node.replica_id();
        if self.entries.len() >= DEVICES_MAX || self.entries.contains_key(&replica) {
            return false;
        }
        self.version += 1;
        self.entries.insert(replica, DirectoryEntry { node: node.0, name, here: false, changed: self.version });
        true
    }

    /// Holds a shared entry whose replica id the engine does not have enrolled (yet), dropping
    /// the oldest held past [`SHARED_PENDING_MAX`]; [`Self::adopt_pending`] takes it once the
    /// engine enrols it.
    pub(crate) fn hold(&mut self, node: NodeId, name: Option<String>) {
        if self.entries.contains_key(&node.replica_id()) {
            return;
        }
        self.pending.retain(|(n, _)| n.replica_id() != node.replica_id());
        if self.pending.len() >= SHARED_PENDING_MAX {
            self.pending.pop_front();
        }
        self.pending.push_back((node, name));
    }

    /// The replica ids of every entry and every held entry (what [`Self::settle`] asks the
    /// engine about).
    pub(crate) fn replica_ids(&self) -> Vec<ReplicaId> {
        self.entries.keys().copied().chain(self.pending.iter().map(|(n, _)| n.replica_id())).collect()
    }

    /// Whether [`Self::settle`] would change the entries.
    pub(crate) fn unsettled(&self, enrolled: impl Fn(ReplicaId) -> bool, revoked: impl Fn(ReplicaId) -> bool) -> bool {
        self.entries.keys().any(|r| revoked(*r))
            || self.pending.iter().any(|(n, _)| enrolled(n.replica_id()) && !self.entries.contains_key(&n.replica_id()))
    }

    /// Brings the directory in line with the engine: held entries whose replica id is now
    /// `enrolled` are adopted; entries whose device the engine `revoked` are dropped. Returns
    /// whether the entries changed.
    pub(crate) fn settle(&mut self, enrolled: impl Fn(ReplicaId) -> bool, revoked: impl Fn(ReplicaId) -> bool) -> bool {
        let gone: Vec<ReplicaId> = self.entries.keys().copied().filter(|r| revoked(*r)).collect();
        for r in &gone {
            self.entries.remove(r);
            self.removed.insert(*r);
        }
        let mut changed = !gone.is_empty();
        for (node, name) in std::mem::take(&mut self.pending) {
            if enrolled(node.replica_id()) {
                changed |= self.adopt(node, name);
            } else {
                self.pending.push_back((node, name));
            }
        }
        self.version += u64::from(changed);
        changed
    }

    /// Decodes a frame of a member's shared directory: its entries and whether it is the last
    /// frame. A frame that does not decode, holds more than [`DIRECTORY_ENTRIES_PER_FRAME`]
    /// entries or a name too long is refused whole.
    pub(crate) fn decode_frame(frame: &[u8]) -> Result<(Vec<SharedEntry>, bool), String> {
        let DirectoryFrame(entries, last) =
            ciborium::from_reader(frame).map_err(|e| format!("a device directory frame does not decode: {e}"))?;
        if entries.len() > DIRECTORY_ENTRIES_PER_FRAME {
            return Err(format!(
                "a device directory frame of {} entries (at most {DIRECTORY_ENTRIES_PER_FRAME})",
                entries.len()
            ));
        }
        if let Some(e) = entries.iter().find_map(|EntryWire(_, name)| check_name(name.as_deref()).err()) {
            return Err(e.to_string());
        }
        Ok((entries.into_iter().map(|EntryWire(node, name)| (NodeId(node), name)).collect(), last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    #[test]
    fn a_shared_entry_never_replaces_one_enrolled_here_and_is_kept_across_a_save() {
        let tmp = tempfile::tempdir().unwrap();
        let mut here = DeviceDirectory::load(tmp.path()).unwrap();
        assert!(here.enrol(node(1), Some("phone".into())).unwrap());
        let mut other = DeviceDirectory::default();
        other.enrol(node(2), None).unwrap();
        // Same replica id as node(1), another key: ignored.
        let mut forged = [1u8; 32];
        forged[31] = 9;
        other
            .entries
            .insert(NodeId(forged).replica_id(), DirectoryEntry { node: forged, name: None, here: true, changed: 9 });
        for f in other.frames_since(None).0 {
            here.merge_frame(&f).unwrap();
        }
        assert_eq!(here.get(node(1).replica_id()).unwrap().node, node(1).0);
        assert!(!here.get(node(2).replica_id()).unwrap().here);
        here.save().unwrap();
        let names = |d: &DeviceDirectory| d.iter().map(|(n, e)| (n, e.name.clone(), e.here)).collect::<Vec<_>>();
        let saved = names(&here);
        let file = here.file.take();
        drop(file);
        let back = DeviceDirectory::load(tmp.path()).unwrap();
        assert_eq!(names(&back), saved);
        // After a share, only what changed goes.
        let (_, upto) = here.frames_since(None);
        here.enrol(node(5), None).unwrap();
        let (frames, _) = here.frames_since(Some(upto));
        let mut fresh = DeviceDirectory::default();
        for f in frames {
            fresh.merge_frame(&f).unwrap();
        }
        assert_eq!(fresh.iter().map(|(n, _)| n).collect::<Vec<_>>(), vec![node(5)]);
    }

    #[test]
    fn a_frame_over_the_bounds_is_refused_whole() {
        let mut d = DeviceDirectory::default();
        let many: Vec<EntryWire> = (0..=DIRECTORY_ENTRIES_PER_FRAME as u32)
            .map(|i| {
                let mut n = [0u8; 32];
                n[..4].copy_from_slice(&i.to_be_bytes());
                EntryWire(n, None)
            })
            .collect();
        let mut bytes = Vec::new();
        ciborium::into_writer(&DirectoryFrame(many, true), &mut bytes).unwrap();
        assert!(d.merge_frame(&bytes).is_err());
        let mut bytes = Vec::new();
        ciborium::into_writer(&DirectoryFrame(vec![EntryWire([3; 32], Some("x".repeat(200)))], true), &mut bytes)
            .unwrap();
        assert!(d.merge_frame(&bytes).is_err());
        assert!(d.entries.is_empty());
        assert!(d.enrol(node(4), Some("y".repeat(DEVICE_NAME_BYTES_MAX + 1))).is_err());
    }

    /// Every entry and name as the file holds them, read by a fresh load.
    fn reloaded(dir: &Path) -> Vec<(NodeId, Option<String>, bool)> {
        DeviceDirectory::load(dir).unwrap().iter().map(|(n, e)| (n, e.name.clone(), e.here)).collect()
    }

    #[test]
    fn each_change_is_written_alone_and_survives_a_reload() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut d = DeviceDirectory::load(tmp.path()).unwrap();
            for b in 1..=3 {
                assert!(d.enrol_saved(node(b), Some(format!("d{b}"))).unwrap());
            }
            assert!(d.remove_saved(node(2).replica_id()).unwrap());
            assert!(d.enrol_saved(node(3), Some("renamed".into())).unwrap());
            // A shared entry, adopted and saved; then one revoked by the engine, settled.
            assert!(d.adopt(node(4), None));
            d.save().unwrap();
            assert!(d.settle(|_| true, |r| r == node(1).replica_id()));
            d.save().unwrap();
        }
        assert_eq!(
            reloaded(tmp.path()),
            vec![(node(3), Some("renamed".into()), true), (node(4), None, false)],
            "the file holds what memory held"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(crate::directory_file::path(tmp.path())).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the directory names every device: owner only");
        }
    }

    #[test]
    fn a_devices_cbor_of_an_older_version_is_moved_into_the_file_once() {
        let tmp = tempfile::tempdir().unwrap();
        let old = vec![
            DirectoryEntry { node: node(7).0, name: Some("old phone".into()), here: true, changed: 0 },
            DirectoryEntry { node: node(8).0, name: None, here: false, changed: 0 },
        ];
        let mut bytes = Vec::new();
        ciborium::into_writer(&old, &mut bytes).unwrap();
        let legacy = tmp.path().join("devices.cbor");
        std::fs::write(&legacy, &bytes).unwrap();
        let want = vec![(node(7), Some("old phone".into()), true), (node(8), None, false)];
        assert_eq!(reloaded(tmp.path()), want);
        assert!(!legacy.exists(), "moved, not kept beside the file");
        assert_eq!(reloaded(tmp.path()), want, "and still there at the next start");
        // A crash after the move's commit and before the removal: the same again, nothing twice.
        std::fs::write(&legacy, &bytes).unwrap();
        assert_eq!(reloaded(tmp.path()), want);
        // A damaged one is refused, saying where.
        std::fs::write(&legacy, b"not cbor").unwrap();
        let err = DeviceDirectory::load(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("devices.cbor") && err.contains("damaged"), "{err}");
    }
}
