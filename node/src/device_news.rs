//! A member's news to a connected device (docs/design.md §8), and the cap on the device
//! sessions it runs at once.
//!
//! Each news frame makes the device run a session, so news is what a member's commits cost its
//! devices. It is kept to what a device needs, per device connection ([`DeviceConnection`]):
//! - **Coalesced**: at most one news is pending; after one is sent the next waits for
//!   `NodeConfig::device_news_interval` (default [`crate::node::DEVICE_NEWS_INTERVAL`], 1 s),
//!   and every commit meanwhile is in it. The first after a quiet spell waits only
//!   [`NEWS_LINGER`]. A burst of commits costs each device about one session per interval.
//! - **Only when the device lacks something**: news waits for the device's sessions on the
//!   connection to end, and none is sent while the download of its last complete session
//!   started at a vector that covers the member's vector now (`Inner::vector_now`). So the
//!   device that uploaded a write is not told of it: its own session already brought it
//!   (with whatever else was committed before the download began). A download withheld for
//!   the device's horizon (`SessionStats::withheld`) counts for nothing: the horizon may not
//!   have been covered at the handshake and be by now. Once a session brought the device
//!   something, the stream checks for news as it starts, so a commit before it was accepted is
//!   news too.
//!
//! The device sessions a member runs at once are capped ([`DeviceSessions`],
//! `NodeConfig::device_sessions_max`): a session beyond the cap waits for a permit, it is not
//! refused (its device's stall timeout runs meanwhile).

use crate::device_stream::{DeviceFlow, NEWS_LINGER, news_frame};
use crate::node::{Inner, lock};
use lethe_engine::device::{DeviceService, DeviceStats};
use lethe_engine::session::SyncError;
use lethe_engine::{RedbStore, Replica, VersionVector};
use lethe_transport::PeerConnection;
use lethe_transport::endpoint::SendStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::debug;

/// The device sessions of a member: the cap, and how many run.
#[derive(Debug)]
pub(crate) struct DeviceSessions {
    /// One permit per session allowed to run at once.
    permits: Arc<Semaphore>,
    /// Sessions running now (holding a permit).
    running: Arc<AtomicU64>,
    /// The most that ran at once.
    peak: Arc<AtomicU64>,
    /// News frames sent to devices.
    pub(crate) news_sent: AtomicU64,
}

impl Default for DeviceSessions {
    fn default() -> DeviceSessions {
        DeviceSessions::new(crate::node::DEVICE_SESSIONS_MAX)
    }
}

/// A device session's permit to run; counted as running while it lives.
pub(crate) struct Running {
    _permit: OwnedSemaphorePermit,
    running: Arc<AtomicU64>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::Relaxed);
    }
}

impl DeviceSessions {
    /// At most `max` sessions at once (0 is taken as 1: a member that runs none would leave
    /// every device waiting for ever).
    pub(crate) fn new(max: usize) -> DeviceSessions {
        DeviceSessions {
            permits: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
            running: Arc::default(),
            peak: Arc::default(),
            news_sent: AtomicU64::new(0),
        }
    }

    /// Waits for a session's turn to run; `None` only if the cap was closed (it never is),
    /// which ends the session as a stopping node would.
    pub(crate) async fn run(&self) -> Option<Running> {
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        let now = self.running.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        Some(Running { _permit: permit, running: self.running.clone() })
    }

    /// Sessions running now, and the most that ran at once.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.running.load(Ordering::Relaxed), self.peak.load(Ordering::Relaxed))
    }
}

/// What a member knows of one device connection, shared by its sessions and its news stream.
#[derive(Debug)]
pub(crate) struct DeviceConnection {
    /// Session streams accepted on it and not ended (waiting their turn or running).
    sessions: watch::Sender<usize>,
    /// The member's vector when the download of the last complete session on it began: the
    /// device has everything up to it (or, while its horizon is not covered here, can take
    /// nothing more from this member until this member's vector moves).
    served: Mutex<Option<VersionVector>>,
}

/// A session stream counted on its connection while it lives.
pub(crate) struct Counted(Arc<DeviceConnection>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.sessions.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl DeviceConnection {
    pub(crate) fn new() -> Arc<DeviceConnection> {
        Arc::new(DeviceConnection { sessions: watch::channel(0).0, served: Mutex::new(None) })
    }

    /// Counts a session stream from its accept until the returned guard drops: news waits for
    /// it to end.
    pub(crate) fn session(self: &Arc<Self>) -> Counted {
        self.sessions.send_modify(|n| *n += 1);
        Counted(self.clone())
    }

    /// A session ran to its end with every entry, its download begun at `vector`.
    pub(crate) fn served(&self, vector: VersionVector) {
        *lock(&self.served) = Some(vector);
    }

    /// Whether a session on this connection ran to its end with every entry.
    fn has_served(&self) -> bool {
        lock(&self.served).is_some()
    }

    /// Whether the last complete session already brought the device `now`.
    fn covers(&self, now: &VersionVector) -> bool {
        lock(&self.served).as_ref().is_some_and(|s| s.dominates(now))
    }
}

/// The member's side of a device session, noting the member's vector as its download began.
pub(crate) struct Serving {
    pub(crate) service: DeviceService,
    /// The member's vector when the download began (once it has, and if it sends anything).
    pub(crate) download_from: Option<VersionVector>,
    /// Whether the download began.
    pub(crate) started: bool,
}

impl DeviceFlow for Serving {
    fn poll(&mut self, r: &Replica<RedbStore>) -> Result<Option<Vec<u8>>, SyncError> {
        self.service.poll(r)
    }
    fn handle(&mut self, r: &mut Replica<RedbStore>, frame: &[u8]) -> Result<(), SyncError> {
        DeviceFlow::handle(&mut self.service, r, frame)?;
        // The download begins inside the `handle` that took the handshake (or the last
        // upload), under the same hold of the replica as this: its vector is this one. A
        // download of nothing is not counted: the device may have everything, or may be unable
        // to take anything here (its horizon not covered at the handshake, though perhaps by
        // now), and news must reach it once this member's vector moves on (a device that had
        // everything was brought this member's vector, as by any download).
        let download = DeviceFlow::stats(&self.service).download;
        if !self.started && download.mode.is_some() {
            self.download_from = (!download.withheld).then(|| r.vector().clone());
            self.started = true;
        }
        Ok(())
    }
    fn finished(&self) -> bool {
        self.service.finished()
    }
    fn stats(&self) -> DeviceStats {
        DeviceFlow::stats(&self.service)
    }
}

/// Tells the device at once how many live entries this member holds (what a bootstrap would
/// send: the device's estimate of a download's total), then again as news whenever the
/// member's vector moved past what the device's last complete session covered: coalesced, at
/// most one per `device_news_interval`, and only once the device's sessions on `conn` have
/// ended (see the module docs). Until the stream or the connection ends or the node stops.
pub(crate) async fn tell_news(
    inner: &Arc<Inner>,
    conn: &PeerConnection,
    state: &DeviceConnection,
    mut w: lethe_transport::FrameWriter<SendStream>,
) {
    let mut vector = inner.vector_now.subscribe();
    // What moved before this stream was accepted counts too, once a session on the connection
    // brought the device something to compare with (a commit between its download's start and
    // this stream's accept would otherwise wait for the next commit). Before any, the device's
    // first session brings it all.
    if state.has_served() {
        vector.mark_changed();
    }
    let mut stop = inner.shutdown.subscribe();
    let interval = inner.config.device_news_interval;
    let mut last_news: Option<tokio::time::Instant> = None;
    let send = async |w: &mut lethe_transport::FrameWriter<SendStream>| {
        let live = inner.with_replica(|r| r.counts().live);
        w.send(&news_frame(live)).await.is_ok() && w.flush().await.is_ok()
    };
    if !send(&mut w).await {
        return;
    }
    loop {
        tokio::select! {
            changed = vector.changed() => if changed.is_err() { return },
            _ = conn.conn.closed() => return,
            _ = stop.changed() => return,
        }
        let ready = async {
            tokio::time::sleep(NEWS_LINGER).await;
            if let Some(last) = last_news {
                tokio::time::sleep_until(last + interval).await;
            }
            // A session running now may bring what moved the vector (the device's own
            // uploads do); whether the device still lacks anything is known once it ends.
            let mut sessions = state.sessions.subscribe();
            let _ = sessions.wait_for(|n| *n == 0).await;
        };
        tokio::select! {
            () = ready => {}
            _ = conn.conn.closed() => return,
            _ = stop.changed() => return,
        }
        // Seen from here: a later move wakes this loop again.
        let now = vector.borrow_and_update().clone();
        if state.covers(&now) {
            continue;
        }
        if !send(&mut w).await {
            return;
        }
        last_news = Some(tokio::time::Instant::now());
        inner.devices.sessions.news_sent.fetch_add(1, Ordering::Relaxed);
        crate::metrics::device_news_sent();
        debug!("told the device of news");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lethe_engine::{ReplicaId, Seq};

    fn vector(seqs: &[(u64, u64)]) -> VersionVector {
        seqs.iter().map(|&(r, s)| (ReplicaId(r), Seq(s))).collect::<Vec<_>>().into()
    }

    #[tokio::test]
    async fn sessions_beyond_the_cap_wait_and_the_peak_counts_those_that_ran_at_once() {
        let sessions = DeviceSessions::new(2);
        let (a, b) = (sessions.run().await, sessions.run().await);
        assert_eq!(sessions.counts(), (2, 2));
        let third = tokio::spawn({
            let permits = sessions.permits.clone();
            async move { permits.acquire_owned().await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished(), "a third session waits while two run");
        drop(a);
        assert!(matches!(third.await, Ok(Ok(()))), "it runs once one ended");
        drop(b);
        assert_eq!(sessions.counts(), (0, 2), "none runs now; the peak stays");
        let none = DeviceSessions::new(0);
        assert!(none.run().await.is_some(), "a cap of 0 is taken as 1");
    }

    #[test]
    fn news_is_due_until_a_complete_session_covered_the_vector_and_again_once_it_moved() {
        let conn = DeviceConnection::new();
        let now = vector(&[(1, 5), (2, 3)]);
        assert!(!conn.covers(&now), "no session yet: news is due");
        conn.served(vector(&[(1, 5), (2, 3)]));
        assert!(conn.covers(&now));
        assert!(!conn.covers(&vector(&[(1, 6), (2, 3)])), "the member's vector moved past it");
        assert!(!conn.covers(&vector(&[(1, 5), (2, 3), (3, 1)])), "a new member's write");
        // A later session's vector replaces the earlier one (sessions on a connection run one
        // at a time, so the last to end began last).
        conn.served(vector(&[(1, 6), (2, 3)]));
        assert!(conn.covers(&vector(&[(1, 6), (2, 3)])));
    }

    #[test]
    fn a_session_stream_is_counted_until_its_guard_drops() {
        let conn = DeviceConnection::new();
        let sessions = conn.sessions.subscribe();
        let (a, b) = (conn.session(), conn.session());
        assert_eq!(*sessions.borrow(), 2);
        drop(a);
        drop(b);
        assert_eq!(*sessions.borrow(), 0);
    }
}
