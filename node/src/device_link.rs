//! A device node's link to its members (docs/design.md §8; `NodeConfig::with_server`): it keeps
//! one connection to a server, trying them in turn with backoff, and runs device sessions on
//! it ([`crate::device_stream`]): upload the queue, download, acknowledge.
//!
//! When a session runs:
//! - at connect;
//! - soon after a local commit that left writes queued (lingering [`LOCAL_LINGER`], so a burst
//!   is one upload): a local write is uploaded soon;
//! - when the member says it has news (its news stream): a member's new writes reach a
//!   connected device soon;
//! - every `device_anti_entropy_interval` (an hour by default), an anti-entropy session (the member grants one at most
//!   once a minute, else answers as to a plain one).
//!
//! Offline, writes stay queued: they are durable in the engine's upload queue and go at the
//! next session. A member that refuses the device (not enrolled there, or removed) closes the
//! connection with [`CloseCode::Refused`] and its reason, or refuses its key in the TLS
//! handshake; the node says so ([`SyncEvent::Refused`]) and backs off, as from an unreachable
//! server.

use crate::device_stream::{ReplicaCell, STREAM_DEVICE_NEWS, STREAM_DEVICE_SESSION, pump, read_news};
use crate::node::{Failure, Inner, PeerAddr, lock};
use crate::sync_events::{LastSync, SyncEvent};
use lethe_engine::device::{DeviceSession, DeviceStats};
use lethe_transport::endpoint::ConnectionError;
use lethe_transport::{CloseCode, PeerConnection};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{Instrument, debug, info, info_span, warn};

/// How long after a local commit the device waits before uploading (a burst is one session).
pub const LOCAL_LINGER: Duration = Duration::from_millis(20);
/// The first wait before dialing again after a connection on which no session finished.
const BACKOFF_MIN: Duration = Duration::from_millis(100);

/// Why a device session did not run to its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeviceFailure {
    /// The member refused this device, saying why.
    #[error("refused by the member: {0}")]
    Refused(String),
    /// Anything else (the member went away, a broken frame, this node's store).
    #[error(transparent)]
    Other(#[from] Failure),
}

/// The member's reason, if `error` says it refused this device: a close with
/// [`CloseCode::Refused`], or its key refused in the TLS handshake (a close the member sent, so
/// never this side's own check of the member's key, which the transport reports as
/// [`lethe_transport::Error::WrongServer`], see [`wrong_server`]).
pub(crate) fn refusal(error: &ConnectionError) -> Option<String> {
    match error {
        ConnectionError::ApplicationClosed(close) if close.error_code.into_inner() == CloseCode::Refused as u64 => {
            Some(String::from_utf8_lossy(&close.reason).into_owned())
        }
        // Closed by the member in the handshake; its TLS layer says why in the reason.
        ConnectionError::ConnectionClosed(close) if String::from_utf8_lossy(&close.reason).contains("not trusted") => {
            Some(format!("{error} (this device is not enrolled at that member, or was removed)"))
        }
        _ => None,
    }
}

/// What to tell the operator when the node at `server`'s address is not `server.id` (the
/// transport's [`lethe_transport::Error::WrongServer`]), if `error` is that.
pub(crate) fn wrong_server(server: &PeerAddr, error: &lethe_transport::Error) -> Option<String> {
    match error {
        lethe_transport::Error::WrongServer { found, .. } => Some(format!(
            "server at {} is not {}: check the --server id (the node there is {found})",
            server.addr, server.id
        )),
        _ => None,
    }
}

/// Runs one device session with the member at the end of `conn`. `progress` sees the figures
/// after each frame.
pub(crate) async fn run_session<C: ReplicaCell>(
    cell: &C,
    conn: &PeerConnection,
    anti_entropy: bool,
    stall: Duration,
    progress: &mut (dyn FnMut(&DeviceStats) + Send),
) -> Result<crate::device_stream::Pumped, DeviceFailure> {
    let member = Some(conn.peer.replica_id());
    let result = async {
        let mut session = cell.with(|r| {
            if anti_entropy { DeviceSession::anti_entropy(r, member) } else { DeviceSession::new(r, member) }
        })?;
        let (mut w, r) = conn.open().await?;
        w.send(&[STREAM_DEVICE_SESSION]).await?;
        pump(cell, &mut session, (w, r), stall, progress).await
    }
    .await;
    result.map_err(|failure| {
        // A refusal closes the connection; its reason is the member's word.
        match conn.conn.close_reason().as_ref().and_then(refusal) {
            Some(reason) => DeviceFailure::Refused(reason),
            None => DeviceFailure::Other(failure),
        }
    })
}

/// Keeps this device connected to one of `servers` until shutdown (see the module docs).
pub(crate) async fn run(inner: Arc<Inner>, servers: Vec<PeerAddr>) {
    if servers.is_empty() {
        return;
    }
    let mut stop = inner.shutdown.subscribe();
    let mut backoff = BACKOFF_MIN;
    let mut next = 0;
    let mut said_wrong = vec![false; servers.len()];
    loop {
        if inner.shutting_down() {
            return;
        }
        let index = next % servers.len();
        let server = servers[index];
        next += 1;
        let span = info_span!("server", server = %server.id.to_string()[..16].to_string());
        let synced = match inner.endpoint.connect(server.addr, server.id).instrument(span.clone()).await {
            Ok(conn) => serve(&inner, &conn).instrument(span.clone()).await,
            Err(e) => {
                let reason = match &e {
                    lethe_transport::Error::Connection(c) => refusal(c),
                    _ => None,
                };
                match (reason, wrong_server(&server, &e)) {
                    (Some(reason), _) => inner.refused(server, reason),
                    // Said once per server: the next server is tried meanwhile.
                    (None, Some(wrong)) if !std::mem::replace(&mut said_wrong[index], true) => {
                        warn!(parent: &span, "{wrong}")
                    }
                    (None, _) => debug!(parent: &span, "could not connect to {}: {e}", server.addr),
                }
                false
            }
        };
        if synced {
            backoff = BACKOFF_MIN;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        if !synced {
            backoff = (backoff * 2).min(inner.config.reconnect_max);
        }
    }
}

/// Serves one connection to a member until it ends. Whether a session finished on it.
async fn serve(inner: &Arc<Inner>, conn: &PeerConnection) -> bool {
    let server = conn.peer.to_string();
    let news = Arc::new(Notify::new());
    // The member's live count, from its news (u64::MAX: not heard yet).
    let total = Arc::new(AtomicU64::new(u64::MAX));
    // The member's news stream: each frame after the first asks for a session.
    let listener = {
        let (conn, news, total) = (conn.clone(), news.clone(), total.clone());
        tokio::spawn(
            async move {
                let Ok((mut w, mut r)) = conn.open().await else { return };
                if w.send(&[STREAM_DEVICE_NEWS]).await.is_err() || w.flush().await.is_err() {
                    return;
                }
                let mut first = true;
                while let Ok(Some(frame)) = r.next().await {
                    let Some(live) = read_news(&frame) else {
                        conn.close(CloseCode::Malformed, "a news frame is not 8 bytes");
                        return;
                    };
                    total.store(live, Ordering::Relaxed);
                    if !std::mem::take(&mut first) {
                        news.notify_one();
                    }
                }
            }
            .in_current_span(),
        )
    };
    let _listener = AbortOnDrop(listener);
    let _current = Current::set(inner, conn.peer);
    let mut committed = inner.committed.subscribe();
    let mut stop = inner.shutdown.subscribe();
    let mut finished_any = false;
    // Said once the member first answered (TLS 1.3 lets a refused client think it connected).
    let announced = AtomicBool::new(false);
    let announce = || {
        if !announced.swap(true, Ordering::Relaxed) {
            info!("connected to member {server}");
            inner.event(SyncEvent::Connected { server: server.clone() });
        }
    };
    let mut anti_entropy = false;
    let mut retry = BACKOFF_MIN;
    let mut next_anti_entropy = tokio::time::Instant::now() + inner.config.device_anti_entropy_interval;
    loop {
        let stall = inner.config.session_stall_timeout;
        let mut progress = |s: &DeviceStats| {
            announce();
            let d = &s.download;
            if d.live_received > 0 {
                let total = total.load(Ordering::Relaxed);
                let total_entries = (total != u64::MAX).then_some(total.max(d.live_received));
                inner.event(SyncEvent::Progress { entries: d.live_received, bytes: d.bytes_received, total_entries });
            }
        };
        match run_session(&**inner, conn, anti_entropy, stall, &mut progress).await {
            Ok(done) => {
                announce();
                finished_any = true;
                inner.device_session_finished(&server, &done);
            }
            Err(DeviceFailure::Refused(reason)) => {
                inner.refused(PeerAddr { id: conn.peer, addr: conn.conn.remote_address() }, reason);
                return finished_any;
            }
            Err(DeviceFailure::Other(failure)) => {
                inner.sessions_failed.fetch_add(1, Ordering::Relaxed);
                if let Some(code) = failure.close_code() {
                    warn!("session with member {server} failed, closing the connection ({code:?}): {failure}");
                    conn.close(code, &failure.to_string());
                }
                if conn.conn.close_reason().is_some() {
                    break;
                }
                // The connection stands (this node's store failed, say): try again after a
                // doubling wait rather than wait for news.
                debug!("session with member {server} failed: {failure}; retrying in {retry:?}");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(inner.config.reconnect_max.max(BACKOFF_MIN));
                continue;
            }
        }
        retry = BACKOFF_MIN;
        // Wait for a reason to run the next session.
        anti_entropy = loop {
            tokio::select! {
                () = news.notified() => break false,
                changed = committed.changed() => {
                    if changed.is_err() { return finished_any; }
                    tokio::time::sleep(LOCAL_LINGER).await;
                    committed.borrow_and_update();
                    if inner.with_replica(|r| r.pending_uploads().unwrap_or(0)) > 0 {
                        break false;
                    }
                }
                () = tokio::time::sleep_until(next_anti_entropy) => {
                    next_anti_entropy = tokio::time::Instant::now() + inner.config.device_anti_entropy_interval;
                    break true;
                }
                reason = conn.conn.closed() => {
                    let reason = refusal(&reason).unwrap_or_else(|| reason.to_string());
                    if announced.load(Ordering::Relaxed) {
                        info!("disconnected from member {server}: {reason}");
                        inner.event(SyncEvent::Disconnected { server: server.clone(), reason });
                    }
                    return finished_any;
                }
                _ = stop.changed() => {
                    conn.close(CloseCode::Done, "node shutting down");
                    return finished_any;
                }
            }
        };
    }
    if announced.load(Ordering::Relaxed) {
        let reason = conn.conn.close_reason().map_or_else(|| "closed".to_string(), |r| r.to_string());
        inner.event(SyncEvent::Disconnected { server: server.clone(), reason });
    }
    finished_any
}

/// The member a device is connected to, for `status`, while this lives.
struct Current<'a>(&'a Inner);

impl<'a> Current<'a> {
    fn set(inner: &'a Inner, server: lethe_transport::NodeId) -> Current<'a> {
        *lock(&inner.server) = Some(server);
        Current(inner)
    }
}

impl Drop for Current<'_> {
    fn drop(&mut self) {
        *lock(&self.0.server) = None;
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Inner {
    /// Sends a sync event to whoever listens (nobody, often).
    pub(crate) fn event(&self, event: SyncEvent) {
        let _ = self.events.send(event);
    }

    /// A member refused this device.
    fn refused(&self, server: PeerAddr, reason: String) {
        warn!(server = %server.id, "the member refused this device: {reason}");
        self.event(SyncEvent::Refused { server: server.id.to_string(), reason });
    }

    /// Counts a finished device session, notes it as the last sync, and tells the listeners.
    fn device_session_finished(&self, server: &str, done: &crate::device_stream::Pumped) {
        let s = &done.stats;
        self.count_received(s.download.live_received, s.download.tombstones_received, s.total_received());
        self.count_sent_total(s.total_sent());
        self.count_wire(done.wire_sent, done.wire_received);
        self.round_trips.fetch_add(done.round_trips, Ordering::Relaxed);
        self.sessions_finished.fetch_add(1, Ordering::Relaxed);
        let now_ms = self.config.clock.0.now_ms();
        let pending = self.with_replica(|r| r.pending_uploads().unwrap_or(u64::MAX));
        *lock(&self.last_sync) = Some(LastSync {
            at_ms: now_ms,
            bytes: done.wire_sent + done.wire_received,
            tombstones_received: s.download.tombstones_received,
            server: server.to_string(),
        });
        if s.uploaded > 0 {
            self.event(SyncEvent::Uploaded { count: s.uploaded, admitted: s.admitted });
        }
        if pending == 0 {
            self.event(SyncEvent::InSync { server: server.to_string() });
        }
        self.synced.send_replace(true);
    }
}
