//! Where a member keeps its device directory (`device_directory.rs`) on disk:
//! `DIR/devices.redb`, one redb table (replica id → the entry, CBOR). Each change is one write
//! transaction of the entries it touched, committed durably, so an enrolment or a removal costs
//! the same few page writes with 10 devices as with 10,000 (the `devices.cbor` this replaces
//! was written whole on every change).
//!
//! Invariants kept here:
//! - [`DirectoryFile::apply`] returns `Ok` only once the change is on disk; on an error
//!   nothing of it landed. redb refuses every commit after one I/O error until the file is
//!   opened again, so after a failure the file is closed and the next change reopens it (a
//!   full disk that has room again needs no restart);
//! - the file is created 0600 (it names every device a member serves);
//! - what is read back is checked as what a member shares is: at most
//!   [`lethe_engine::device::DEVICES_MAX`] entries, names within
//!   [`crate::device_directory::DEVICE_NAME_BYTES_MAX`], each under the replica id of its node
//!   id; anything else is [`DirectoryError::Damaged`];
//! - a `devices.cbor` left by an older version is read once, its entries written into the file
//!   in one transaction, and then removed: a crash in between leaves both, and the next start
//!   does the same again (the same entries, so nothing changes twice).

use crate::device_directory::{DirectoryEntry, DirectoryError, check_name};
use lethe_engine::ReplicaId;
use lethe_engine::device::DEVICES_MAX;
use lethe_transport::NodeId;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::{Path, PathBuf};

/// The rows read (replica id, CBOR), or how many there are if too many to read.
type Rows = Result<Vec<(u64, Vec<u8>)>, u64>;

/// Replica id → the CBOR of its [`DirectoryEntry`].
const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("devices");

/// The directory's file, open, or closed after a failure until the next change reopens it.
#[derive(Debug)]
pub(crate) struct DirectoryFile {
    path: PathBuf,
    db: Option<Database>,
}

/// The file in the data directory at `dir`.
pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join("devices.redb")
}

/// The whole-file directory of older versions, in the data directory at `dir`.
fn legacy_path(dir: &Path) -> PathBuf {
    dir.join("devices.cbor")
}

impl DirectoryFile {
    /// Opens (creating it, 0600, if need be) the directory file of the data directory at `dir`,
    /// takes in a `devices.cbor` of an older version, and returns the file with every entry it
    /// holds, checked.
    pub(crate) fn open(dir: &Path) -> Result<(DirectoryFile, Vec<DirectoryEntry>), DirectoryError> {
        let mut file = DirectoryFile { path: path(dir), db: None };
        let legacy = read_legacy(&legacy_path(dir))?;
        if !legacy.is_empty() {
            let puts: Vec<&DirectoryEntry> = legacy.iter().collect();
            file.apply(&puts, &[])?;
        }
        match std::fs::remove_file(legacy_path(dir)) {
            Ok(()) => {
                // Durable, so a power loss cannot bring the old file back over later changes.
                sync_parent(&legacy_path(dir))?;
                tracing::info!(entries = legacy.len(), "moved the device directory into {}", file.path.display());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(DirectoryError::Io { path: legacy_path(dir).display().to_string(), source }),
        }
        let entries = file.read_all()?;
        Ok((file, entries))
    }

    /// Writes `puts` (each under its node id's replica id) and removes `removes`, in one durable
    /// transaction; on an error nothing of it landed.
    pub(crate) fn apply(&mut self, puts: &[&DirectoryEntry], removes: &[ReplicaId]) -> Result<(), DirectoryError> {
        let result = self.try_apply(puts, removes);
        if result.is_err()
            && let Some(db) = self.db.take()
        {
            // After an I/O error redb cannot close cleanly; the next open recovers the last
            // durable commit.
            let _ = db.close();
        }
        result
    }

    fn try_apply(&mut self, puts: &[&DirectoryEntry], removes: &[ReplicaId]) -> Result<(), DirectoryError> {
        let failed = self.failure("writing");
        let db = self.db()?;
        let write = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(ENTRIES)?;
                for replica in removes {
                    table.remove(replica.0)?;
                }
                let mut bytes = Vec::new();
                for e in puts {
                    bytes.clear();
                    // Encoding plain fields into a Vec cannot fail.
                    let _ = ciborium::into_writer(e, &mut bytes);
                    table.insert(NodeId(e.node).replica_id().0, bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        };
        write().map_err(failed)
    }

    /// Every entry the file holds, checked (see the module docs).
    pub(crate) fn read_all(&mut self) -> Result<Vec<DirectoryEntry>, DirectoryError> {
        let failed = self.failure("reading");
        let damaged = self.damaged();
        let db = self.db()?;
        let read = || -> Result<Rows, redb::Error> {
            let txn = db.begin_read()?;
            let table = match txn.open_table(ENTRIES) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Ok(Vec::new())),
                Err(e) => return Err(e.into()),
            };
            let count = table.len()?;
            if count > DEVICES_MAX as u64 {
                return Ok(Err(count));
            }
            let mut rows = Vec::new();
            for row in table.iter()? {
                let (replica, bytes) = row?;
                rows.push((replica.value(), bytes.value().to_vec()));
            }
            Ok(Ok(rows))
        };
        let rows = read()
            .map_err(|e| match e {
                redb::Error::Corrupted(reason) => damaged(reason),
                e => failed(e),
            })?
            .map_err(|count| damaged(format!("{count} entries, more than {DEVICES_MAX}")))?;
        let mut out = Vec::with_capacity(rows.len());
        for (replica, bytes) in rows {
            let e: DirectoryEntry = ciborium::from_reader(bytes.as_slice()).map_err(|e| damaged(e.to_string()))?;
            check_name(e.name.as_deref()).map_err(|e| damaged(e.to_string()))?;
            if NodeId(e.node).replica_id().0 != replica {
                return Err(damaged(format!("an entry under replica id {replica:016x} is not that device's")));
            }
            out.push(e);
        }
        Ok(out)
    }

    /// The open database, opening it (again) if need be. A file that is not there is made
    /// whole beside it and renamed in, so an empty or partial `devices.redb` is never this
    /// node's own doing: found, it is refused as damaged, not taken for an empty directory
    /// (every device would be refused while the engine has them enrolled).
    fn db(&mut self) -> Result<&Database, DirectoryError> {
        let db = match self.db.take() {
            Some(db) => db,
            None => {
                match std::fs::metadata(&self.path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.create()?,
                    Err(source) => return Err(DirectoryError::Io { path: self.path.display().to_string(), source }),
                    Ok(m) if m.len() == 0 => {
                        return Err(self.damaged()("the file is empty (truncated?)".to_string()));
                    }
                    Ok(_) => {}
                }
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&self.path)
                    .map_err(|source| DirectoryError::Io { path: self.path.display().to_string(), source })?;
                self.open_on(file)?
            }
        };
        Ok(self.db.insert(db))
    }

    /// A database on `file`; one that is not a redb database, or is corrupted, is damaged.
    fn open_on(&self, file: std::fs::File) -> Result<Database, DirectoryError> {
        let backend = redb::backends::FileBackend::new(file).map_err(self.failure("opening"))?;
        redb::Builder::new().create_with_backend(backend).map_err(|e| match e {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)) => self.damaged()(reason),
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if io.kind() == std::io::ErrorKind::InvalidData =>
            {
                self.damaged()(io.to_string())
            }
            e => self.failure("opening")(e),
        })
    }

    /// Makes an empty directory file: built as `devices.redb.new` (0600, its table committed),
    /// then renamed into place and the rename made durable.
    fn create(&self) -> Result<(), DirectoryError> {
        let tmp = self.path.with_extension("redb.new");
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| DirectoryError::Io { path: p, source }
        };
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&tmp)(e)),
            _ => {}
        }
        let db = self.open_on(create_private(&tmp)?)?;
        let init = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(ENTRIES)?;
            txn.commit()?;
            Ok(())
        };
        init().map_err(self.failure("creating"))?;
        drop(db);
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        sync_parent(&self.path)
    }

    fn failure<E: std::fmt::Display>(&self, what: &'static str) -> impl Fn(E) -> DirectoryError + use<E> {
        let path = self.path.display().to_string();
        move |e| DirectoryError::Store { path: path.clone(), what, reason: e.to_string() }
    }

    fn damaged(&self) -> impl Fn(String) -> DirectoryError + use<> {
        let path = self.path.display().to_string();
        move |reason| DirectoryError::Damaged { path: path.clone(), reason }
    }
}

/// Makes a rename or removal in the directory holding `path` durable.
fn sync_parent(path: &Path) -> Result<(), DirectoryError> {
    let Some(dir) = path.parent() else { return Ok(()) };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| DirectoryError::Io { path: dir.display().to_string(), source })
}

/// Opens `path` for reading and writing, creating it 0600 if it does not exist.
fn create_private(path: &Path) -> Result<std::fs::File, DirectoryError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|source| DirectoryError::Io { path: path.display().to_string(), source })
}

/// The entries of an older version's `devices.cbor` at `path` (none if there is none), checked.
fn read_legacy(path: &Path) -> Result<Vec<DirectoryEntry>, DirectoryError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(DirectoryError::Io { path: path.display().to_string(), source }),
    };
    let damaged = |reason: String| DirectoryError::Damaged { path: path.display().to_string(), reason };
    let list: Vec<DirectoryEntry> = ciborium::from_reader(bytes.as_slice()).map_err(|e| damaged(e.to_string()))?;
    if list.len() > DEVICES_MAX {
        return Err(damaged(format!("{} entries, more than {DEVICES_MAX}", list.len())));
    }
    for e in &list {
        check_name(e.name.as_deref()).map_err(|e| damaged(e.to_string()))?;
    }
    Ok(list)
}
