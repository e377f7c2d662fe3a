//! One device session over one QUIC stream (docs/design.md §8), for either side: the engine's
//! [`DeviceSession`] on a device, its [`DeviceService`] on a member.
//!
//! **The connection kind.** A connection is a device connection when the key that
//! authenticated it is an enrolled device's (a member decides at accept time, from its device
//! directory and the engine's records: `device_service.rs`); a device dials only members. On a
//! device connection every stream starts with one frame naming its kind, as between members
//! (where `[0]` is a session, `[1]` live pushes and `[2]` the device directory):
//! - [`STREAM_DEVICE_SESSION`] (`[3]`, opened by the device): one device session, the device's
//!   frames and the member's on the same transport framing as a member session;
//! - [`STREAM_DEVICE_NEWS`] (`[4]`, opened by the device, written by the member): at once, and
//!   as news once the member's vector moved past what the device's last complete session
//!   brought it (lingering [`NEWS_LINGER`], then at most one per
//!   `NodeConfig::device_news_interval`, after the device's sessions on the connection end:
//!   `device_news.rs`), a frame of [`NEWS_FRAME_BYTES`]: the member's live entry count,
//!   big-endian (the device's estimate of a bootstrap's total). After each but the first the
//!   device runs a session: that is how a member's writes reach a connected device soon.
//!
//! The pump sends what the session has while reading what the peer sends (two sides that each
//! stream more than the QUIC windows hold would otherwise wait for each other for ever: the
//! device's uploads and the member's download run at once), and ends a session whose peer keeps
//! it waiting longer than the stall timeout.

use crate::node::{Failure, Inner};
use lethe_engine::device::{DeviceService, DeviceSession, DeviceStats};
use lethe_engine::session::SyncError;
use lethe_engine::{RedbStore, Replica};
use lethe_transport::endpoint::FrameStream;
use std::sync::Mutex;
use std::time::Duration;

/// The first frame of a stream that carries one device session.
pub(crate) const STREAM_DEVICE_SESSION: u8 = 3;
/// The first frame of the stream on which a member tells a device it has news.
pub(crate) const STREAM_DEVICE_NEWS: u8 = 4;
/// The size of a news frame: a `u64`.
pub(crate) const NEWS_FRAME_BYTES: usize = 8;

/// A news frame saying the member holds `live` live entries.
pub(crate) fn news_frame(live: u64) -> [u8; NEWS_FRAME_BYTES] {
    live.to_be_bytes()
}

/// The live count a news frame carries; `None` if it is not one.
pub(crate) fn read_news(frame: &[u8]) -> Option<u64> {
    <[u8; NEWS_FRAME_BYTES]>::try_from(frame).ok().map(u64::from_be_bytes)
}

/// How long a member waits after the first commit of a quiet spell before it tells a device
/// (the commits right behind it go in the same news); later ones wait for
/// `NodeConfig::device_news_interval` since the last news.
pub(crate) const NEWS_LINGER: Duration = Duration::from_millis(20);

/// Where a pump finds the replica: a running node's, or one opened for a one-shot sync.
pub(crate) trait ReplicaCell: Sync {
    /// Runs `f` on the replica under its lock.
    fn with<T>(&self, f: impl FnOnce(&mut Replica<RedbStore>) -> T) -> T;
}

impl ReplicaCell for Inner {
    fn with<T>(&self, f: impl FnOnce(&mut Replica<RedbStore>) -> T) -> T {
        self.with_replica(f)
    }
}

impl ReplicaCell for Mutex<Replica<RedbStore>> {
    fn with<T>(&self, f: impl FnOnce(&mut Replica<RedbStore>) -> T) -> T {
        tokio::task::block_in_place(|| f(&mut crate::node::lock(self)))
    }
}

/// Either side of a device session, as the pump drives it.
pub(crate) trait DeviceFlow: Send {
    /// The next frame to send.
    fn poll(&mut self, r: &Replica<RedbStore>) -> Result<Option<Vec<u8>>, SyncError>;
    /// One frame from the peer.
    fn handle(&mut self, r: &mut Replica<RedbStore>, frame: &[u8]) -> Result<(), SyncError>;
    /// Whether this side is done.
    fn finished(&self) -> bool;
    /// What it cost so far.
    fn stats(&self) -> DeviceStats;
}

impl DeviceFlow for DeviceSession {
    fn poll(&mut self, r: &Replica<RedbStore>) -> Result<Option<Vec<u8>>, SyncError> {
        self.poll_transmit(r)
    }
    fn handle(&mut self, r: &mut Replica<RedbStore>, frame: &[u8]) -> Result<(), SyncError> {
        DeviceSession::handle(self, r, frame)
    }
    fn finished(&self) -> bool {
        self.is_finished()
    }
    fn stats(&self) -> DeviceStats {
        DeviceSession::stats(self)
    }
}

impl DeviceFlow for DeviceService {
    fn poll(&mut self, r: &Replica<RedbStore>) -> Result<Option<Vec<u8>>, SyncError> {
        self.poll_transmit(r)
    }
    fn handle(&mut self, r: &mut Replica<RedbStore>, frame: &[u8]) -> Result<(), SyncError> {
        DeviceService::handle(self, r, frame)
    }
    fn finished(&self) -> bool {
        self.is_finished()
    }
    fn stats(&self) -> DeviceStats {
        DeviceService::stats(self)
    }
}

/// What one pumped session cost on the stream.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pumped {
    /// The engine's figures (frames, CBOR bytes, entries each way, uploads).
    pub(crate) stats: DeviceStats,
    /// Round trips: frames went out, then this side waited for the peer's answer.
    pub(crate) round_trips: u64,
    /// Bytes the frames took on the stream each way (prefixes, compressed bodies).
    pub(crate) wire_sent: u64,
    pub(crate) wire_received: u64,
}

/// How long a finished side waits for its peer to end the stream too.
const PEER_END_WAIT: Duration = Duration::from_secs(5);

/// Frames read ahead of the one being handled.
const READ_AHEAD_FRAMES: usize = 2;

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `step` unless the peer keeps it waiting longer than `stall`.
async fn stalls<T>(stall: Duration, step: impl Future<Output = T>) -> Result<T, Failure> {
    tokio::time::timeout(stall, step).await.map_err(|_| Failure::Stalled(stall))
}

/// Runs `flow` over `stream` to its end. `progress` is called after each frame handled, with
/// the figures so far (what a sync status stream reports).
pub(crate) async fn pump<C: ReplicaCell, F: DeviceFlow>(
    cell: &C,
    flow: &mut F,
    (mut w, mut r): FrameStream,
    stall: Duration,
    progress: &mut (dyn FnMut(&DeviceStats) + Send),
) -> Result<Pumped, Failure> {
    let (frames, mut incoming) = tokio::sync::mpsc::channel::<Result<(Vec<u8>, u64), Failure>>(READ_AHEAD_FRAMES);
    let reader = AbortOnDrop(tokio::spawn(async move {
        loop {
            let before = r.wire_bytes();
            let next = match r.next().await {
                Ok(Some(frame)) => Ok((frame, r.wire_bytes() - before)),
                Ok(None) => Err(Failure::ClosedEarly),
                Err(e) => Err(Failure::from(e)),
            };
            let last = next.is_err();
            if frames.send(next).await.is_err() || last {
                return;
            }
        }
    }));
    let mut out = Pumped::default();
    let mut sent = false;
    let mut handle = |flow: &mut F, out: &mut Pumped, (frame, wire): (Vec<u8>, u64)| -> Result<(), Failure> {
        out.wire_received += wire;
        let stats = cell.with(|rep| flow.handle(rep, &frame).map(|()| flow.stats()))?;
        progress(&stats);
        Ok(())
    };
    loop {
        while let Some(frame) = cell.with(|rep| flow.poll(rep))? {
            let before = w.wire_bytes();
            {
                let send = stalls(stall, w.send(&frame));
                tokio::pin!(send);
                loop {
                    tokio::select! {
                        biased;
                        done = &mut send => {
                            done??;
                            break;
                        }
                        next = incoming.recv() => {
                            let next = next.ok_or(Failure::ClosedEarly)??;
                            handle(flow, &mut out, next)?;
                        }
                    }
                }
            }
            out.wire_sent += w.wire_bytes() - before;
            sent = true;
        }
        stalls(stall, w.flush()).await??;
        if flow.finished() {
            break;
        }
        let next = stalls(stall, incoming.recv()).await?.ok_or(Failure::ClosedEarly)??;
        out.round_trips += u64::from(std::mem::take(&mut sent));
        handle(flow, &mut out, next)?;
    }
    let mut send = w.into_inner().await?;
    // The peer may have finished first and reset the stream; what was sent is delivered.
    let _ = send.finish();
    // Then wait (a little) for the peer to end its side: it does once it has handled this
    // side's last frame (the device's `Ack`), so a caller that closes the connection next (a
    // one-shot sync) does not cut that frame off in flight and leave the member holding an
    // older acknowledgement (found by the tombstone-collection test in node/tests/devices.rs).
    let _ = tokio::time::timeout(stall.min(PEER_END_WAIT), incoming.recv()).await;
    drop(reader);
    out.stats = flow.stats();
    Ok(out)
}
