//! A source flow read chunk by chunk from one store snapshot: a bootstrap (every live entry), or
//! what a reconciliation reply asked for (named keys and whole ranges the sink has not seen).
//! [`Session::poll_transmit`](super::Session::poll_transmit) reads the next chunk only once the
//! last one has gone, so a flow of any size holds about one chunk ([`super::CHUNK_BYTES`]) in
//! memory, whatever the peer asked for.

use super::{approx_bytes, chunk_full};
use crate::entry::{Entry, Payload};
use crate::error::Error;
use crate::storage::{KeyRange, Snapshot};
use crate::vector::VersionVector;
use std::collections::VecDeque;
use std::ops::{Bound, ControlFlow};

/// The snapshot a flow reads every chunk from, taken when the flow began, so it is one
/// consistent view whatever the store commits meanwhile.
pub(super) struct HeldSnapshot(pub(super) Box<dyn Snapshot + Send>);

impl std::fmt::Debug for HeldSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldSnapshot")
    }
}

/// What a flow still has to read and send.
#[derive(Debug)]
pub(super) struct EntryStream {
    snapshot: HeldSnapshot,
    /// Keys whose current entry goes whatever `seen` says, read before everything else: the
    /// keys of a device's writes a member answered `Refused` or `Known`, which the device
    /// dropped while its vector covers what the member holds (finding 8).
    forced: VecDeque<Vec<u8>>,
    /// Keys named one by one (a reply's items), read first: their current entry, settled (an
    /// expired value goes as its record).
    keys: VecDeque<Vec<u8>>,
    /// Key ranges still to read, the first from `cursor` on: their live entries.
    ranges: VecDeque<KeyRange>,
    cursor: Option<Bound<Vec<u8>>>,
    /// Entries this vector covers are left out (the sink has seen them; if it lacks one, it is
    /// dead there). `None`: a bootstrap, every live entry goes.
    seen: Option<VersionVector>,
}

impl EntryStream {
    /// Every live entry of `snapshot`.
    pub(super) fn bootstrap(snapshot: HeldSnapshot) -> EntryStream {
        EntryStream {
            snapshot,
            forced: VecDeque::new(),
            keys: VecDeque::new(),
            ranges: VecDeque::from([KeyRange::all()]),
            cursor: None,
            seen: None,
        }
    }

    /// `keys`' entries and `ranges`' live entries that `seen` does not cover.
    pub(super) fn reply(
        snapshot: HeldSnapshot,
        keys: Vec<Vec<u8>>,
        ranges: Vec<KeyRange>,
        seen: VersionVector,
    ) -> EntryStream {
        EntryStream {
            snapshot,
            forced: VecDeque::new(),
            keys: keys.into(),
            ranges: ranges.into(),
            cursor: None,
            seen: Some(seen),
        }
    }

    /// This stream with `forced`'s current entries sent first, whatever `seen` covers.
    pub(super) fn with_forced(mut self, forced: Vec<Vec<u8>>) -> EntryStream {
        self.forced = forced.into();
        self
    }

    /// The next chunk (about [`super::CHUNK_BYTES`], at most
    /// [`crate::limits::ENTRIES_PER_FRAME_MAX`] entries), and whether that was the last.
    pub(super) fn next_chunk(&mut self, now_ms: u64) -> Result<(Vec<Entry>, bool), Error> {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        let unseen = |seen: &Option<VersionVector>, e: &Entry| seen.as_ref().is_none_or(|v| !v.covers(e.dot()));
        while !chunk_full(bytes, chunk.len()) {
            let Some(key) = self.forced.pop_front() else { break };
            if let Some(e) = self.snapshot.0.entry(&key)? {
                bytes += approx_bytes(&e);
                chunk.push(e.settled_at(now_ms));
            }
        }
        while !chunk_full(bytes, chunk.len()) {
            let Some(key) = self.keys.pop_front() else { break };
            if let Some(e) = self.snapshot.0.entry(&key)?
                && unseen(&self.seen, &e)
            {
                bytes += approx_bytes(&e);
                chunk.push(e.settled_at(now_ms));
            }
        }
        while !chunk_full(bytes, chunk.len()) {
            let Some(range) = self.ranges.front() else { break };
            let from =
                KeyRange { start: self.cursor.take().unwrap_or_else(|| range.start.clone()), end: range.end.clone() };
            let mut last = None;
            let reply = self.seen.is_some();
            self.snapshot.0.scan_keys(&from, &mut |e| {
                last = Some(e.key.clone());
                // A value that expired since the flow began goes to a reconciling sink as its
                // expiry record: left out, the sink's older version of the key would outlive
                // it once the flow's vector covers its dot.
                let expired_meanwhile = reply && matches!(e.payload, Payload::Value(_)) && !e.is_live_at(now_ms);
                if (e.is_live_at(now_ms) || expired_meanwhile) && unseen(&self.seen, &e) {
                    bytes += approx_bytes(&e);
                    chunk.push(e.settled_at(now_ms));
                }
                if chunk_full(bytes, chunk.len()) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            })?;
            match last {
                // Stopped inside the range: go on after the last key read.
                Some(key) if chunk_full(bytes, chunk.len()) => self.cursor = Some(Bound::Excluded(key)),
                _ => {
                    self.ranges.pop_front();
                }
            }
        }
        let last = self.forced.is_empty() && self.keys.is_empty() && self.ranges.is_empty();
        Ok((chunk, last))
    }
}
