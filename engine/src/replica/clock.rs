//! Clock safety against this replica's own clock (DESIGN.md §10, "its own clock stepping").
//!
//! A remote stamp beyond `max_drift_ms` is rejected by every receiver (I8), so a replica whose
//! wall clock ran ahead (a step forward, a resume from suspend with a bad clock) would stamp
//! writes that no peer accepts, and a batch holding one of them is refused whole: the replica
//! cuts itself off. Two rules keep it in touch:
//!
//! - **Peers' wall times.** Every handshake carries the sender's wall time
//!   ([`Replica::note_peer_wall`]). Measured within [`PEER_CLOCK_FRESH_MS`], the peers give a
//!   reference time: the upper median of their wall times (one peer far off either way decides
//!   nothing once there are three). A local write whose stamp would lie
//!   more than `max_drift_ms` beyond it is refused with [`Error::ClockAheadOfPeers`]; no stamp
//!   from the future is issued once a peer has shown it to be one.
//! - **Entries a peer would refuse are held back from it** ([`HeldBack`]): a session leaves out
//!   every entry stamped beyond the peer's handshake wall time + `max_drift_ms`, and caps the
//!   vector it hands over below the first one left out (per writer), so the peer takes the rest
//!   as a complete transfer of what it covers and nothing is refused whole. Live pushes do the
//!   same with the peer's measured clock. What is held back goes once the peer's clock reaches it.
//! - **Writes already stamped in the future are re-stamped, if no peer can hold them.** An own
//!   entry stamped beyond the reference + `max_drift_ms` and above every own stamp ever handed to
//!   a peer ([`Replica::note_released`]) exists nowhere else, so [`Replica::settle_clock`]
//!   re-issues it: same key and payload, a fresh stamp from the corrected clock and a fresh dot;
//!   the old dot is then covered and absent, hence dead. The HLC is reset to the highest stamp
//!   still held (never below one), so the next stamps come from the wall clock again. Each
//!   re-issue is reported ([`Replica::take_reissued`]). An entry a peer may hold is never
//!   re-stamped lower (its old copy would beat the new one there): it is held back until the
//!   peers' clocks reach it, and local writes are refused meanwhile.
//!
//! Without a fresh peer measurement nothing is refused or re-stamped: a replica alone cannot tell
//! its clock from the truth, and the HLC keeps its stamps monotonic.

use crate::entry::{Entry, Payload, Value};
use crate::error::{Error, Result};
use crate::hlc::{Hlc, Stamp};
use crate::ids::ReplicaId;
use crate::ids::Seq;
use crate::replica::Replica;
use crate::storage::{Batch, KeyRange, Meta, Snapshot, Storage, encode_clock, encode_vector};
use crate::vector::VersionVector;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;

/// How long a peer's measured wall time counts: 2 minutes of this replica's wall clock (an
/// anti-entropy session measures again every minute by default).
pub const PEER_CLOCK_FRESH_MS: u64 = 120_000;
/// How many peers' wall times are remembered at most (the stalest goes first).
pub const PEER_CLOCKS_MAX: usize = 1024;
/// How many re-issued writes are kept for [`Replica::take_reissued`] at most (an embedder that
/// never takes them pays no more than this).
pub const REISSUED_KEPT_MAX: usize = 65_536;

/// One peer's wall clock as measured by a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeerClock {
    /// The peer's wall time minus this replica's, in ms, when measured.
    offset_ms: i64,
    /// This replica's wall time when measured.
    measured_at_ms: u64,
}

/// The peers' wall clocks as handshakes showed them.
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerClocks {
    peers: BTreeMap<ReplicaId, PeerClock>,
    /// The highest wall time this replica has read, to notice its own clock stepping back.
    wall_high_ms: u64,
}

impl PeerClocks {
    fn note(&mut self, peer: ReplicaId, peer_wall_ms: u64, wall_ms: u64) {
        let offset_ms = i64::try_from(i128::from(peer_wall_ms) - i128::from(wall_ms)).unwrap_or(i64::MAX);
        if self.peers.len() >= PEER_CLOCKS_MAX
            && !self.peers.contains_key(&peer)
            && let Some(stalest) = self.peers.iter().min_by_key(|(_, c)| c.measured_at_ms).map(|(r, _)| *r)
        {
            self.peers.remove(&stalest);
        }
        self.peers.insert(peer, PeerClock { offset_ms, measured_at_ms: wall_ms });
        self.wall_high_ms = self.wall_high_ms.max(wall_ms);
    }

    /// The peers' wall time now (their upper median), by measurements taken within
    /// [`PEER_CLOCK_FRESH_MS`] of `wall_ms`. A wall clock that stepped back past the measurements
    /// voids them (their offsets were taken against the old time).
    fn reference_ms(&mut self, wall_ms: u64) -> Option<u64> {
        if wall_ms < self.wall_high_ms && self.peers.values().any(|c| c.measured_at_ms > wall_ms) {
            self.peers.clear();
        }
        self.wall_high_ms = self.wall_high_ms.max(wall_ms);
        let mut walls: Vec<u64> = self
            .peers
            .values()
            .filter(|c| wall_ms.saturating_sub(c.measured_at_ms) <= PEER_CLOCK_FRESH_MS && c.measured_at_ms <= wall_ms)
            .map(|c| wall_ms.saturating_add_signed(c.offset_ms))
            .collect();
        walls.sort_unstable();
        // The upper median: one peer whose clock is far off, either way, decides nothing once
        // there are three; with one or two, the one further ahead counts (fewer refusals).
        walls.get(walls.len() / 2).copied()
    }
}

/// What a sender left out for a peer that would refuse it for drift: the first seq held back
/// per writer. The vector handed over is capped below it, so the peer's merge claims only what
/// it received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HeldBack {
    first: BTreeMap<ReplicaId, Seq>,
}

impl HeldBack {
    /// Keeps the entries stamped at or below `limit_ms` (the peer's wall time plus the drift it
    /// tolerates; `None`: unknown, keep all) and notes the rest.
    pub(crate) fn filter(&mut self, entries: Vec<Entry>, limit_ms: Option<u64>) -> Vec<Entry> {
        let Some(limit_ms) = limit_ms else { return entries };
        let (kept, held): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| e.stamp.hlc.wall_ms() <= limit_ms);
        for e in held {
            let first = self.first.entry(e.stamp.replica).or_insert(e.seq);
            *first = (*first).min(e.seq);
        }
        kept
    }

    /// Whether anything was held back.
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_empty()
    }

    /// `vector` with each writer that had an entry held back capped below the first one.
    pub(crate) fn cap(&self, vector: &VersionVector) -> VersionVector {
        if self.first.is_empty() {
            return vector.clone();
        }
        let mut capped = VersionVector::new();
        for (r, s) in vector.iter() {
            let cap = self.first.get(&r).map_or(s, |first| s.min(Seq(first.0.saturating_sub(1))));
            capped.advance(r, cap);
        }
        capped
    }

    /// `clock`, no later than `limit_ms` when something was held back (the peer would refuse a
    /// later one, and nothing it is handed is stamped later).
    pub(crate) fn clock(&self, clock: Hlc, limit_ms: Option<u64>) -> Hlc {
        match limit_ms {
            Some(limit_ms) if !self.is_empty() => clock.min(Hlc::new(limit_ms, 0)),
            _ => clock,
        }
    }
}

/// An own write issued again under a fresh stamp and dot because its stamp lay in the future of
/// every peer ([`Replica::settle_clock`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reissue {
    /// The entry as it was stored (its dot is now covered and absent here, hence dead).
    pub old: Entry,
    /// The entry now stored in its place.
    pub new: Entry,
}

impl<S: Storage> Replica<S> {
    /// Records a peer's wall time from its handshake (`peer_wall_ms`, read when it sent it).
    pub fn note_peer_wall(&mut self, peer: ReplicaId, peer_wall_ms: u64) {
        if peer == self.id() {
            return;
        }
        let wall_ms = self.now_ms();
        self.peer_clocks.note(peer, peer_wall_ms, wall_ms);
    }

    /// The latest wall time `peer` may accept a stamp at: its clock as last measured, plus
    /// `max_drift_ms`. `None` if it was not measured lately.
    #[must_use]
    pub fn peer_stamp_limit_ms(&self, peer: ReplicaId) -> Option<u64> {
        let wall_ms = self.now_ms();
        let c = self.peer_clocks.peers.get(&peer)?;
        let fresh = c.measured_at_ms <= wall_ms && wall_ms - c.measured_at_ms <= PEER_CLOCK_FRESH_MS;
        fresh.then(|| wall_ms.saturating_add_signed(c.offset_ms).saturating_add(self.config().max_drift_ms))
    }

    /// Records that `entries` were handed to a peer: an own entry among them may be held there,
    /// so it is never re-stamped lower.
    pub fn note_released(&self, entries: &[Entry]) {
        let me = self.id();
        if let Some(top) = entries.iter().filter(|e| e.stamp.replica == me).map(|e| e.stamp.hlc.0).max() {
            self.released.fetch_max(top, Ordering::Relaxed);
        }
    }

    /// How far this replica's next stamp would lie beyond the peers' reference time plus
    /// `max_drift_ms`, if it would (see the module docs); `None` when it is fine or no peer was
    /// measured lately.
    #[must_use]
    pub fn clock_ahead_ms(&mut self) -> Option<u64> {
        let wall_ms = self.now_ms();
        let reference_ms = self.peer_clocks.reference_ms(wall_ms)?;
        let mut clock = self.clock;
        let next = clock.now(wall_ms).wall_ms();
        let limit = reference_ms.saturating_add(self.config().max_drift_ms);
        (next > limit).then(|| next - reference_ms)
    }

    /// Re-issues own entries stamped beyond the peers' reference time plus `max_drift_ms` and
    /// resets the clock (see the module docs). Does nothing without a fresh peer measurement, or
    /// while this replica's own wall clock is the one ahead (its fresh stamps would be no better).
    /// Returns how many entries were re-issued. Run before writes, sessions and GC steps.
    pub fn settle_clock(&mut self) -> Result<usize> {
        // A recovery from a restore holds the own vector component below its counter: a re-stamp
        // now would issue seqs in the range it lowered (`replica/restore.rs`). It waits.
        if self.recovery.is_some() {
            return Ok(0);
        }
        let wall_ms = self.now_ms();
        let Some(reference_ms) = self.peer_clocks.reference_ms(wall_ms) else { return Ok(0) };
        let max_drift_ms = self.config().max_drift_ms;
        let limit_ms = reference_ms.saturating_add(max_drift_ms);
        if self.clock.last().wall_ms() <= limit_ms || wall_ms > limit_ms {
            return Ok(0);
        }
        let me = self.id();
        let released = Hlc(self.released.load(Ordering::Relaxed));
        // Without a scan of the store: nothing unreleased is left to re-stamp, or the clock could
        // not be set back far enough anyway. (This runs before every write while the clock is
        // ahead; the scan is for the moment it can do something.)
        let blocked = released.max(self.clock.remote_high()).wall_ms() > limit_ms;
        if released >= self.clock.last() || blocked {
            return Ok(0);
        }
        let mut future = Vec::new();
        let mut floor = Hlc(0);
        let snap = self.store().snapshot()?;
        snap.scan_keys(&KeyRange::all(), &mut |entry| {
            if entry.stamp.replica == me && entry.stamp.hlc.wall_ms() > limit_ms && entry.stamp.hlc > released {
                future.push(entry);
            } else {
                floor = floor.max(entry.stamp.hlc);
            }
            ControlFlow::Continue(())
        })?;
        drop(snap);
        // Never below a stamp a peer may hold for any of these keys: every remote stamp absorbed
        // and every own stamp handed out.
        let mut clock = self.clock.reset_to(floor.max(released));
        if clock.last().wall_ms() > limit_ms {
            // Fresh stamps would be in the peers' future too: the entries wait, held back.
            return Ok(0);
        }
        let mut seq = self.vector().get(me);
        let mut batch = Batch::new();
        let mut reissued = Vec::with_capacity(future.len());
        for old in future {
            let stamp = Stamp { hlc: clock.now(wall_ms), replica: me };
            seq = seq.next();
            let payload = match &old.payload {
                // The TTL keeps its length from the new stamp.
                Payload::Value(v) => Payload::Value(Value {
                    expires_at_ms: v
                        .expires_at_ms
                        .map(|t| stamp.hlc.wall_ms().saturating_add(t.saturating_sub(old.stamp.hlc.wall_ms()))),
                    ..v.clone()
                }),
                other => other.clone(),
            };
            let new = Entry { key: old.key.clone(), stamp, seq, payload };
            batch.put(new.clone());
            reissued.push(Reissue { old, new });
        }
        let mut vector = self.vector().clone();
        vector.advance(me, seq);
        batch.set_meta(Meta::Vector, encode_vector(&vector));
        batch.set_meta(Meta::Clock, encode_clock(clock.last()));
        self.commit(&batch)?;
        self.vector = vector;
        self.clock = clock;
        let count = reissued.len();
        let room = REISSUED_KEPT_MAX.saturating_sub(self.reissued.len());
        self.reissued.extend(reissued.into_iter().take(room));
        Ok(count)
    }

    /// Refuses a local write whose stamp would lie in the peers' future (after re-stamping what
    /// can be): the check [`Replica::write`] makes first.
    pub(crate) fn check_local_clock(&mut self) -> Result<()> {
        self.settle_clock()?;
        match self.clock_ahead_ms() {
            Some(ahead_ms) => Err(Error::ClockAheadOfPeers { ahead_ms, max_drift_ms: self.config().max_drift_ms }),
            None => Ok(()),
        }
    }

    /// The writes re-issued since the last call (see [`Reissue`]), oldest first; at most
    /// [`REISSUED_KEPT_MAX`] are kept between calls.
    pub fn take_reissued(&mut self) -> Vec<Reissue> {
        std::mem::take(&mut self.reissued)
    }
}
