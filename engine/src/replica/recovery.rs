//! A replica whose store failed (a full disk, an I/O error): it acknowledges nothing that is not
//! durable, says what failed, and is reopened from its store without a restart.
//!
//! A commit that fails records a [`StoreFailure`] and changes nothing in memory (the vector,
//! clock and index move only after the store's commit returns `Ok`). redb refuses every
//! commit after one I/O error until it is reopened, so from then on commits are refused at
//! once with [`StorageError::Unavailable`] until [`Replica::reopen_store`] reopens the store and
//! reloads the replica's state from it, exactly as opening it would. The failure stays until a
//! commit goes through ([`Replica::check_store`] makes one that changes nothing), which proves the
//! store writable again.

use super::{Durable, Replica};
use crate::error::{Result, StorageError};
use crate::hlc::HybridClock;
use crate::storage::{Batch, Meta, Storage, encode_replica};

/// The replica's store failed and no commit has gone through since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreFailure {
    /// The last failure, as the store reported it.
    pub error: String,
    /// When the first failure happened, in wall-clock ms.
    pub since_ms: u64,
    /// Commits that failed since then (the first one included).
    pub failed_commits: u64,
    /// Whether the store must be reopened before it is used again: from a failed commit until
    /// [`Replica::reopen_store`] succeeds. Meanwhile commits are refused without touching it.
    pub needs_reopen: bool,
}

impl<S: Storage> Replica<S> {
    /// The store's failure, if a commit failed and none has gone through since.
    #[must_use]
    pub fn store_failure(&self) -> Option<&StoreFailure> {
        self.store_failure.as_ref()
    }

    /// Commits `batch` to the store, keeping the failure record: refused while the store awaits
    /// a reopen; a failure recorded; a success clears it.
    pub(super) fn commit_to_store(&mut self, batch: &Batch) -> Result<()> {
        if let Some(failure) = self.store_failure.as_ref().filter(|f| f.needs_reopen) {
            return Err(StorageError::Unavailable { cause: failure.error.clone() }.into());
        }
        match self.store.commit(batch) {
            Ok(()) => {
                self.store_failure = None;
                Ok(())
            }
            Err(e) => {
                let now_ms = self.now_ms();
                let failure = self.store_failure.get_or_insert(StoreFailure {
                    error: String::new(),
                    since_ms: now_ms,
                    failed_commits: 0,
                    needs_reopen: true,
                });
                failure.error = e.to_string();
                failure.failed_commits += 1;
                failure.needs_reopen = true;
                Err(e.into())
            }
        }
    }

    /// Reopens the store after a failure and reloads from it everything the replica keeps in
    /// memory (vector, clock, membership, checkpoint, key index), as [`Replica::open`] does: what
    /// the replica holds afterwards is exactly what is durable, whatever the failed commit left.
    /// Costs a scan of the store. The failure stays recorded until a commit goes through.
    pub fn reopen_store(&mut self) -> Result<()> {
        let reloaded = self.store.reopen().map_err(Into::into).and_then(|()| {
            let snap = self.store.snapshot()?;
            Durable::read(&snap, self.id)
        });
        let durable = match reloaded {
            Ok(durable) => durable,
            Err(e) => {
                if let Some(failure) = self.store_failure.as_mut() {
                    failure.error = e.to_string();
                }
                return Err(e);
            }
        };
        self.vector = durable.vector;
        self.clock = HybridClock::resume(durable.clock, self.config.max_drift_ms);
        self.membership = durable.membership;
        self.checkpoint = durable.checkpoint;
        self.unindexed = durable.unindexed;
        self.unindexed_rows = None;
        self.index = durable.index;
        self.recovery = durable.recovery;
        self.lost_own = durable.lost_own;
        self.lost_others_union = durable.lost_others.iter().map(|(&m, v)| (m, super::lost::union_of(v))).collect();
        self.lost_others = durable.lost_others;
        self.device = durable.device;
        self.devices = durable.devices;
        self.records_seen = durable.records_seen;
        if let Some(failure) = self.store_failure.as_mut() {
            failure.needs_reopen = false;
        }
        Ok(())
    }

    /// Commits a batch that changes nothing (the replica id record, rewritten as it is), to
    /// learn whether the store takes commits again; clears the failure if it does. Nothing to
    /// do when no failure is recorded.
    pub fn check_store(&mut self) -> Result<()> {
        if self.store_failure.is_none() {
            return Ok(());
        }
        let mut probe = Batch::new();
        probe.set_meta(Meta::ReplicaId, encode_replica(self.id));
        self.commit(&probe)
    }
}
