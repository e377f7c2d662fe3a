//! The in-memory backend, for tests, simulation and embedding without a disk.
//!
//! Built on persistent ordered maps (`imbl`), so a snapshot is an O(1) clone that later commits
//! never disturb, and a commit builds the new version beside the old and swaps it in, so a batch is
//! all there or all absent. "Durable" here means: visible to every later snapshot and kept when a
//! [`Replica`](crate::Replica) is dropped and reopened on the same store, which is what the
//! simulation's crash-and-restart uses.

use super::{Batch, KeyRange, Meta, Op, Snapshot, Storage};
use crate::entry::Entry;
use crate::error::StorageError;
use crate::ids::Dot;
use imbl::OrdMap;
use std::ops::ControlFlow;

#[derive(Clone, Debug, Default)]
struct Tables {
    entries: OrdMap<Vec<u8>, Entry>,
    dots: OrdMap<Dot, Vec<u8>>,
    meta: OrdMap<Meta, Vec<u8>>,
    devices: OrdMap<u64, Vec<u8>>,
}

/// A store held in memory. Cloning it is O(1) and gives an independent copy.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    tables: Tables,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

/// A point-in-time view of a [`MemoryStore`].
#[derive(Clone, Debug)]
pub struct MemorySnapshot {
    tables: Tables,
}

impl Storage for MemoryStore {
    type Snapshot = MemorySnapshot;

    fn snapshot(&self) -> Result<MemorySnapshot, StorageError> {
        Ok(MemorySnapshot { tables: self.tables.clone() })
    }

    fn commit(&mut self, batch: &Batch) -> Result<(), StorageError> {
        let mut next = self.tables.clone();
        for op in &batch.ops {
            match op {
                Op::Put(entry) | Op::PutDeferred(entry) => {
                    let dot = entry.dot();
                    if let Some(old) = next.entries.insert(entry.key.clone(), entry.clone())
                        && old.dot() != dot
                    {
                        next.dots.remove(&old.dot());
                    }
                    if matches!(op, Op::Put(_)) {
                        next.dots.insert(dot, entry.key.clone());
                    }
                }
                Op::IndexDot(dot, key) => {
                    next.dots.insert(*dot, key.clone());
                }
                Op::Remove(key) => {
                    if let Some(old) = next.entries.remove(key.as_slice()) {
                        next.dots.remove(&old.dot());
                    }
                }
                Op::SetMeta(meta, value) => {
                    next.meta.insert(*meta, value.clone());
                }
                Op::SetDevice(id, record) => {
                    next.devices.insert(*id, record.clone());
                }
                Op::RemoveDevice(id) => {
                    next.devices.remove(id);
                }
            }
        }
        self.tables = next;
        Ok(())
    }
}

impl Snapshot for MemorySnapshot {
    fn entry(&self, key: &[u8]) -> Result<Option<Entry>, StorageError> {
        Ok(self.tables.entries.get(key).cloned())
    }

    fn key_at(&self, dot: Dot) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.tables.dots.get(&dot).cloned())
    }

    fn scan_keys(&self, range: &KeyRange, visit: &mut dyn FnMut(Entry) -> ControlFlow<()>) -> Result<(), StorageError> {
        for (_, entry) in self.tables.entries.range::<_, [u8]>(range.as_slices()) {
            if visit(entry.clone()).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn scan_dots(
        &self,
        from: Dot,
        to: Dot,
        visit: &mut dyn FnMut(Dot, &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        for (dot, key) in self.tables.dots.range(from..=to) {
            if visit(*dot, key).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn meta(&self, meta: Meta) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.tables.meta.get(&meta).cloned())
    }

    fn scan_devices(&self, visit: &mut dyn FnMut(u64, &[u8]) -> ControlFlow<()>) -> Result<(), StorageError> {
        for (id, record) in &self.tables.devices {
            if visit(*id, record).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn entry_count(&self) -> Result<u64, StorageError> {
        Ok(self.tables.entries.len() as u64)
    }
}
