//! A redb storage backend on a real file that fails on demand as a full disk does (every write,
//! resize and sync fails with ENOSPC while the switch is on; reads go on): for tests of what a
//! replica and a node do when their store fails, without mounting a small filesystem.

use lethe_engine::{RedbStore, StorageError};
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// `ENOSPC` on Linux.
const NO_SPACE_ERRNO: i32 = 28;

/// How the disk behaves now. Clones share the switch.
#[derive(Clone, Debug, Default)]
pub struct DiskSwitch {
    full: Arc<AtomicBool>,
    syncs_fail: Arc<AtomicBool>,
}

impl DiskSwitch {
    /// From now on every write, resize and sync fails.
    pub fn fill(&self) {
        self.full.store(true, Ordering::SeqCst);
    }

    /// From now on writes land (in the page cache) but every sync fails, as when the kernel
    /// cannot write them back: a commit fails after its pages, header included, were written.
    pub fn fail_syncs(&self) {
        self.syncs_fail.store(true, Ordering::SeqCst);
    }

    /// From now on everything succeeds again.
    pub fn free(&self) {
        self.full.store(false, Ordering::SeqCst);
        self.syncs_fail.store(false, Ordering::SeqCst);
    }

    fn check(&self, flag: &AtomicBool) -> std::io::Result<()> {
        if flag.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(NO_SPACE_ERRNO));
        }
        Ok(())
    }
}

/// redb's own file backend, with writes that fail while the disk is full.
#[derive(Debug)]
struct FailingFile {
    file: FileBackend,
    disk: DiskSwitch,
}

impl StorageBackend for FailingFile {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.disk.check(&self.disk.full)?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.disk.check(&self.disk.full)?;
        self.disk.check(&self.disk.syncs_fail)?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.disk.check(&self.disk.full)?;
        self.file.write(offset, data)
    }

    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

/// Opens (creating it if need be) the redb store at `path` on a disk that fails while `disk`
/// is full; every reopen opens the file again on the same switch.
pub fn open_store(path: &Path, disk: &DiskSwitch) -> Result<RedbStore, StorageError> {
    let (path, disk) = (path.to_path_buf(), disk.clone());
    RedbStore::open_on_backend(move || {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let file = FileBackend::new(file).map_err(std::io::Error::other)?;
        Ok(FailingFile { file, disk: disk.clone() })
    })
}
