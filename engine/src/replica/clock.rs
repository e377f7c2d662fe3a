//! Clock safety against this replica's own clock (docs/design.md §10, "its own clock stepping").
//!
//! A remote stamp beyond `max_drift_ms` is rejected by every receiver (I8), so a replica whose
//! wall clock ran ahead (a step forward, a resume from suspend with a bad clock) would stamp
//! writes that no peer accepts, and a batch holding one of them is refused whole: the replica
//! cuts itself off. Two rules keep it in touch:
//!
//! - **Peers' wall times.** Every handshake carries the sender's wall time
//!   ([`Replica::note_peer_wall`]). Measured within [`PEER_CLOCK_FRESH_MS`], the peers give a
//!   reference time: the upper median of their wall times (one peer far off either way decides
//!   nothing once there are three). A local write whose stamp would lie more than
//!   `max_drift_ms` (+ [`PEER_CLOCK_SLACK_MS`] for transit) beyond it is refused with
//!   [`Error::ClockAheadOfPeers`]; no stamp from the future is issued once a peer has shown it to
//!   be one. A peer's clock is taken to have moved, since it was measured, as much as this
//!   replica's monotonic clock ([`crate::WallClock::monotonic_ms`]), not its wall clock: a step
//!   of this replica's wall clock is seen at its next write, not at the next handshake. (The
//!   system's monotonic clock does not count a suspend: after a resume the replica may take
//!   itself for ahead until its next handshake measures again.)
//! - **Entries a peer would refuse are held back from it** ([`HeldBack`]): a session leaves out
//!   every entry stamped beyond the peer's handshake wall time + `max_drift_ms` (+ the slack) and ends as a
//!   partial transfer (`Message::Partial`: the peer applies the rest, merges no vector, drops
//!   nothing), so nothing is refused whole. Live pushes do the same with the peer's measured
//!   clock (a push without a vector). What is held back goes once the peer's clock reaches it.
//!   (A vector capped below the first entry held back was tried and lost writes in the
//!   simulation: entries of that writer above the cap went, were left uncovered, and an older
//!   version came back after a newer one was dropped as dead.)
//! - **Writes already stamped in the future are reported and wait**: the clock is not set back
//!   (an entry a peer may hold would then beat the later one), so such a write goes to each
//!   peer once its clock reaches it, and local writes are refused until then (the HLC is ahead
//!   of the peers by as much). `status` shows by how much (`clock_ahead_ms`). (Re-stamping
//!   entries no peer was handed was tried; the simulation found an older version coming back
//!   after it, seed 28050 of a 30,000-seed run, and it was taken out.)
//!
//! Without a fresh peer measurement nothing is refused or held back: a replica alone cannot tell
//! its clock from the truth, and the HLC keeps its stamps monotonic.

use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::ids::ReplicaId;
use crate::replica::Replica;
use crate::storage::Storage;
use std::collections::BTreeMap;

/// How long a peer's measured wall time counts: 2 minutes (an anti-entropy session measures
/// again every minute by default).
pub const PEER_CLOCK_FRESH_MS: u64 = 120_000;
/// What a peer's measured wall time may lag its real one: a handshake's wall time is read when
/// it is sent, and the receiver's when it arrives, so the transit (seconds on a loaded machine)
/// makes every peer look behind. A replica counts as ahead of its peers, and an entry as one a
/// peer would refuse, only beyond `max_drift_ms` plus this: 5 s. A clock ahead by less is left
/// to the receivers' drift check (their refusals last at most this long). The default of
/// [`crate::Config::peer_clock_slack_ms`].
pub const PEER_CLOCK_SLACK_MS: u64 = 5_000;
/// How many peers' wall times are remembered at most (the stalest goes first).
pub const PEER_CLOCKS_MAX: usize = 1024;

/// One peer's wall clock as measured by a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeerClock {
    /// The peer's wall time, as its handshake said.
    wall_ms: u64,
    /// This replica's monotonic time ([`crate::WallClock::monotonic_ms`]) when measured: the
    /// peer's clock is taken to have moved as much since, whatever this replica's wall clock did
    /// meanwhile, so a step of its own is seen at once.
    measured_at_ms: u64,
}

impl PeerClock {
    /// The peer's wall time at monotonic time `mono_ms`, if measured within
    /// [`PEER_CLOCK_FRESH_MS`] before it.
    fn now_ms(&self, mono_ms: u64) -> Option<u64> {
        let elapsed_ms = mono_ms.checked_sub(self.measured_at_ms)?;
        (elapsed_ms <= PEER_CLOCK_FRESH_MS).then(|| self.wall_ms.saturating_add(elapsed_ms))
    }
}

/// The peers' wall clocks as handshakes showed them.
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerClocks {
    peers: BTreeMap<ReplicaId, PeerClock>,
}

impl PeerClocks {
    fn note(&mut self, peer: ReplicaId, peer_wall_ms: u64, mono_ms: u64) {
        if self.peers.len() >= PEER_CLOCKS_MAX
            && !self.peers.contains_key(&peer)
            && let Some(stalest) = self.peers.iter().min_by_key(|(_, c)| c.measured_at_ms).map(|(r, _)| *r)
        {
            self.peers.remove(&stalest);
        }
        self.peers.insert(peer, PeerClock { wall_ms: peer_wall_ms, measured_at_ms: mono_ms });
    }

    /// The peers' wall time at monotonic time `mono_ms` (their upper median), by measurements
    /// taken within [`PEER_CLOCK_FRESH_MS`] before it.
    fn reference_ms(&self, mono_ms: u64) -> Option<u64> {
        let mut walls: Vec<u64> = self.peers.values().filter_map(|c| c.now_ms(mono_ms)).collect();
        walls.sort_unstable();
        // The upper median: one peer whose clock is far off, either way, decides nothing once
        // there are three; with one or two, the one further ahead counts (fewer refusals).
        walls.get(walls.len() / 2).copied()
    }
}

/// What a sender left out for a peer that would refuse it for drift. A flow that held anything
/// back ends as a partial transfer (`Message::Partial`, a push without a vector): the peer keeps
/// what it got, merges no vector and drops nothing as dead.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HeldBack {
    held: usize,
}

impl HeldBack {
    /// Keeps the entries stamped at or below `limit_ms` (the peer's wall time plus the drift it
    /// tolerates; `None`: unknown, keep all) and counts the rest.
    pub(crate) fn filter(&mut self, entries: Vec<Entry>, limit_ms: Option<u64>) -> Vec<Entry> {
        let Some(limit_ms) = limit_ms else { return entries };
        let before = entries.len();
        let kept: Vec<_> = entries.into_iter().filter(|e| e.stamp.hlc.wall_ms() <= limit_ms).collect();
        self.held += before - kept.len();
        kept
    }

    /// Whether anything was held back.
    pub(crate) fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// How many entries were held back.
    pub(crate) fn count(&self) -> u64 {
        self.held as u64
    }
}

impl<S: Storage> Replica<S> {
    /// Records a peer's wall time from its handshake (`peer_wall_ms`, read when it sent it).
    pub fn note_peer_wall(&mut self, peer: ReplicaId, peer_wall_ms: u64) {
        if peer == self.id() {
            return;
        }
        let mono_ms = self.monotonic_ms();
        self.peer_clocks.note(peer, peer_wall_ms, mono_ms);
    }

    /// The peers' wall time now (the upper median of those measured within
    /// [`PEER_CLOCK_FRESH_MS`]), if any was measured lately.
    pub(crate) fn peers_now_ms(&self) -> Option<u64> {
        self.peer_clocks.reference_ms(self.monotonic_ms())
    }

    /// The latest wall time `peer` may accept a stamp at: its clock as last measured, plus
    /// `max_drift_ms` and [`PEER_CLOCK_SLACK_MS`]. `None` if it was not measured lately.
    #[must_use]
    pub fn peer_stamp_limit_ms(&self, peer: ReplicaId) -> Option<u64> {
        let peer_now_ms = self.peer_clocks.peers.get(&peer)?.now_ms(self.monotonic_ms())?;
        Some(peer_now_ms.saturating_add(self.config().max_drift_ms + self.config().peer_clock_slack_ms))
    }

    /// How far this replica's next stamp would lie beyond the peers' reference time plus
    /// `max_drift_ms`, if it would (see the module docs); `None` when it is fine or no peer was
    /// measured lately.
    #[must_use]
    pub fn clock_ahead_ms(&self) -> Option<u64> {
        let reference_ms = self.peer_clocks.reference_ms(self.monotonic_ms())?;
        let mut clock = self.clock;
        let next = clock.now(self.now_ms()).wall_ms();
        let limit = reference_ms.saturating_add(self.config().max_drift_ms + self.config().peer_clock_slack_ms);
        (next > limit).then(|| next - reference_ms)
    }

    /// Refuses a local write whose stamp would lie in the peers' future: the check
    /// [`Replica::write`] makes first.
    pub(crate) fn check_local_clock(&mut self) -> Result<()> {
        match self.clock_ahead_ms() {
            Some(ahead_ms) => Err(Error::ClockAheadOfPeers { ahead_ms, max_drift_ms: self.config().max_drift_ms }),
            None => Ok(()),
        }
    }
}
