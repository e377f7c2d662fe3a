//! The redb backend: one file, ACID transactions, MVCC snapshots. The embedded default.
//!
//! Tables: `entries` (key → entry record, see `codec.rs`), `dots` ((replica, seq) → key) and
//! `meta` (name → bytes). One [`Batch`] is one write transaction committed with
//! `Durability::Immediate`, so `commit` returns only once the batch is on disk, and a crash leaves
//! each batch wholly present or wholly absent. A [`Snapshot`] is one read transaction.

use super::codec::{decode_dot, decode_entry, encode_entry};
use super::{Batch, KeyRange, Meta, Op, Snapshot, Storage};
use crate::entry::Entry;
use crate::error::StorageError;
use crate::ids::{Dot, ReplicaId, Seq};
use redb::{
    Builder, Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, StorageBackend,
    TableDefinition,
};
use std::ops::ControlFlow;
use std::path::Path;

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
const DOTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("dots");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const DEVICES: TableDefinition<u64, &[u8]> = TableDefinition::new("devices");

/// Opens the database again: at [`RedbStore::open`] and at every [`Storage::reopen`].
type Opener = Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send>;

/// A store in one redb file.
pub struct RedbStore {
    /// `None` once closed after a failure, until a reopen succeeds.
    db: Option<Database>,
    open: Opener,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("open", &self.db.is_some()).finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating the file and its tables if they do not exist.
    ///
    /// Fails if another process has the file open (redb locks it), or if it is not a redb file.
    pub fn open(path: impl AsRef<Path>) -> Result<RedbStore, StorageError> {
        let path = path.as_ref().to_path_buf();
        RedbStore::open_with(Box::new(move || Database::create(&path)))
    }

    /// Opens a store on a redb storage backend made by `backend`, which is called again at
    /// every [`Storage::reopen`] (so it must open the same storage each time): for storage
    /// other than a plain file, or a test's backend that fails on demand.
    pub fn open_on_backend<B: StorageBackend>(
        backend: impl Fn() -> std::io::Result<B> + Send + 'static,
    ) -> Result<RedbStore, StorageError> {
        RedbStore::open_with(Box::new(move || Builder::new().create_with_backend(backend()?)))
    }

    fn open_with(open: Opener) -> Result<RedbStore, StorageError> {
        let db = open().map_err(|e| StorageError::backend("opening the store file", e))?;
        let txn = db.begin_write().map_err(|e| StorageError::backend("creating tables", e))?;
        {
            txn.open_table(ENTRIES).map_err(|e| StorageError::backend("creating tables", e))?;
            txn.open_table(DOTS).map_err(|e| StorageError::backend("creating tables", e))?;
            txn.open_table(META).map_err(|e| StorageError::backend("creating tables", e))?;
            txn.open_table(DEVICES).map_err(|e| StorageError::backend("creating tables", e))?;
        }
        txn.commit().map_err(|e| StorageError::backend("creating tables", e))?;
        Ok(RedbStore { db: Some(db), open, scratch: Vec::new() })
    }

    fn db(&self) -> Result<&Database, StorageError> {
        self.db.as_ref().ok_or_else(|| StorageError::Unavailable {
            cause: "the store file was closed after a failure and could not be reopened yet".into(),
        })
    }
}

fn dot_key(dot: Dot) -> (u64, u64) {
    (dot.replica.0, dot.seq.0)
}

fn write_err(e: impl std::error::Error + Send + Sync + 'static) -> StorageError {
    StorageError::backend("committing a batch", e)
}

fn read_err(e: impl std::error::Error + Send + Sync + 'static) -> StorageError {
    StorageError::backend("reading a snapshot", e)
}

impl Storage for RedbStore {
    type Snapshot = RedbSnapshot;

    fn snapshot(&self) -> Result<RedbSnapshot, StorageError> {
        Ok(RedbSnapshot { txn: self.db()?.begin_read().map_err(read_err)? })
    }

    fn commit(&mut self, batch: &Batch) -> Result<(), StorageError> {
        // Dropping the transaction on an early return aborts it: nothing of the batch lands.
        let txn = self.db()?.begin_write().map_err(write_err)?;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(write_err)?;
            let mut dots = txn.open_table(DOTS).map_err(write_err)?;
            let mut meta = txn.open_table(META).map_err(write_err)?;
            let mut devices = txn.open_table(DEVICES).map_err(write_err)?;
            for op in &batch.ops {
                match op {
                    Op::Put(entry) | Op::PutDeferred(entry) => {
                        let dot = entry.dot();
                        self.scratch.clear();
                        encode_entry(entry, &mut self.scratch);
                        let old_dot =
                            match entries.insert(entry.key.as_slice(), self.scratch.as_slice()).map_err(write_err)? {
                                Some(old) => Some(decode_dot(old.value())?),
                                None => None,
                            };
                        if let Some(old_dot) = old_dot.filter(|d| *d != dot) {
                            dots.remove(dot_key(old_dot)).map_err(write_err)?;
                        }
                        if matches!(op, Op::Put(_)) {
                            dots.insert(dot_key(dot), entry.key.as_slice()).map_err(write_err)?;
                        }
                    }
                    Op::IndexDot(dot, key) => {
                        dots.insert(dot_key(*dot), key.as_slice()).map_err(write_err)?;
                    }
                    Op::Remove(key) => {
                        let old_dot = match entries.remove(key.as_slice()).map_err(write_err)? {
                            Some(old) => Some(decode_dot(old.value())?),
                            None => None,
                        };
                        if let Some(old_dot) = old_dot {
                            dots.remove(dot_key(old_dot)).map_err(write_err)?;
                        }
                    }
                    Op::SetMeta(name, value) => {
                        meta.insert(name.name(), value.as_slice()).map_err(write_err)?;
                    }
                    Op::SetDevice(id, record) => {
                        devices.insert(*id, record.as_slice()).map_err(write_err)?;
                    }
                    Op::RemoveDevice(id) => {
                        devices.remove(*id).map_err(write_err)?;
                    }
                }
            }
        }
        txn.commit().map_err(write_err)
    }

    fn reopen(&mut self) -> Result<(), StorageError> {
        if let Some(db) = self.db.take() {
            // Closing releases the file and its lock at once, even while old snapshots live
            // (their reads fail from now on). After an I/O error redb cannot finish a clean
            // close; the next open checks the file and recovers the last durable commit.
            let _ = db.close();
        }
        let db = (self.open)().map_err(|e| StorageError::backend("reopening the store file", e))?;
        self.db = Some(db);
        Ok(())
    }
}

/// A read transaction on a [`RedbStore`].
pub struct RedbSnapshot {
    txn: ReadTransaction,
}

impl Snapshot for RedbSnapshot {
    fn entry(&self, key: &[u8]) -> Result<Option<Entry>, StorageError> {
        let table = self.txn.open_table(ENTRIES).map_err(read_err)?;
        match ReadableTable::get(&table, key).map_err(read_err)? {
            Some(record) => Ok(Some(decode_entry(key, record.value())?)),
            None => Ok(None),
        }
    }

    fn key_at(&self, dot: Dot) -> Result<Option<Vec<u8>>, StorageError> {
        let table = self.txn.open_table(DOTS).map_err(read_err)?;
        Ok(ReadableTable::get(&table, dot_key(dot)).map_err(read_err)?.map(|k| k.value().to_vec()))
    }

    fn scan_keys(&self, range: &KeyRange, visit: &mut dyn FnMut(Entry) -> ControlFlow<()>) -> Result<(), StorageError> {
        let table = self.txn.open_table(ENTRIES).map_err(read_err)?;
        for row in ReadableTable::range::<&[u8]>(&table, range.as_slices()).map_err(read_err)? {
            let (key, record) = row.map_err(read_err)?;
            if visit(decode_entry(key.value(), record.value())?).is_break() {
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
        let table = self.txn.open_table(DOTS).map_err(read_err)?;
        for row in ReadableTable::range(&table, dot_key(from)..=dot_key(to)).map_err(read_err)? {
            let (dot, key) = row.map_err(read_err)?;
            let (replica, seq) = dot.value();
            if visit(Dot { replica: ReplicaId(replica), seq: Seq(seq) }, key.value()).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn meta(&self, meta: Meta) -> Result<Option<Vec<u8>>, StorageError> {
        let table = self.txn.open_table(META).map_err(read_err)?;
        Ok(ReadableTable::get(&table, meta.name()).map_err(read_err)?.map(|v| v.value().to_vec()))
    }

    fn scan_devices(&self, visit: &mut dyn FnMut(u64, &[u8]) -> ControlFlow<()>) -> Result<(), StorageError> {
        let table = self.txn.open_table(DEVICES).map_err(read_err)?;
        for row in ReadableTable::iter(&table).map_err(read_err)? {
            let (id, record) = row.map_err(read_err)?;
            if visit(id.value(), record.value()).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn entry_count(&self) -> Result<u64, StorageError> {
        let table = self.txn.open_table(ENTRIES).map_err(read_err)?;
        table.len().map_err(read_err)
    }
}
