//! A node's peers: dialing with backoff, accepting, and per connection the sessions and live
//! pushes that keep two replicas in step.
//!
//! Per peer connection (dialed from `--peer`, or accepted from a trusted node):
//! - **sessions** (`Session`, engine): one at connect time from the dialer, one whenever a live
//!   stream reports a gap or a non-member peer has news, and an anti-entropy session every
//!   `anti_entropy_interval`. Each runs on its own QUIC stream;
//! - **live pushes** (`LiveSender`/`LiveReceiver`, engine): once the peer is a member and a
//!   session has finished, every commit wakes a pusher that sends what the peer lacks on one
//!   long-lived stream; the peer answers with its vector, which feeds the stable frontier;
//! - a malformed, oversized or refused frame closes that connection with a [`CloseCode`] and a
//!   reason; nothing of it is applied and every other connection goes on. A failure of this
//!   node's own store (a full disk) blames no peer: the stream ends, the connection stays.
//!
//! A dial loop backs off (doubling from [`BACKOFF_MIN`] up to `reconnect_max`) after every
//! connection on which no session finished, whatever ended it: an unreachable peer, a peer that
//! does not trust this node's key, a refused session. Only a connection that synced resets the
//! backoff. The reason is logged once, then at most once per [`REPEAT_LOG_INTERVAL`] with the
//! count of attempts in between; the accept loop logs refused handshakes the same way. Sessions
//! that fail on a live connection (this node's store failing, say) are retried with the same
//! doubling backoff, from 200 ms.

use crate::device_service::ConnectionKind;
use crate::metrics::SessionOutcome;
use crate::node::{Failure, Inner, PeerAddr, lock};
use lethe_engine::VersionVector;
use lethe_engine::live::{LivePoll, LiveReceiver, LiveSender, handle_ack};
use lethe_engine::session::{Message, Session, SessionStats};
use lethe_transport::endpoint::{Connection, FrameStream, SendStream};
use lethe_transport::{CloseCode, NodeId, PeerConnection};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::{Instrument, debug, info, info_span, warn};

/// The first frame of every stream between peers says what the stream is for.
const STREAM_SESSION: u8 = 0;
const STREAM_LIVE: u8 = 1;
/// How long a pusher waits after a commit for more before it sends (Kafka's `linger.ms`): a
/// burst of commits becomes one push, one receiving commit, one fsync at the peer.
const PUSH_LINGER: Duration = Duration::from_millis(5);
/// A connection to a peer: the node that dialed it, and when it was registered.
pub(crate) type OpenConnection = (Connection, NodeId, std::time::Instant);
/// Two connections to the same peer opened this close together are a simultaneous open.
const SIMULTANEOUS_OPEN: Duration = Duration::from_secs(5);
/// Connections one peer may hold open at once; registering another closes its oldest. (A
/// reconnecting peer briefly has its dead connection and its new one; more is a broken or
/// hostile peer, and each connection costs stream windows and three tasks.)
pub(crate) const CONNECTIONS_PER_PEER_MAX: usize = 4;
/// The first wait before redialing a peer after a connection that did not sync.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The first wait before a failed session is tried again on the same connection (it doubles up
/// to `reconnect_max` while sessions keep failing).
const SESSION_RETRY_MIN: Duration = Duration::from_millis(200);
/// The same complaint (a refused handshake, a dial that failed the same way) is logged at most
/// once per this interval; the others are counted and the count logged with the next one.
pub(crate) const REPEAT_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A complaint that may recur: said once, then at most once per [`REPEAT_LOG_INTERVAL`].
#[derive(Debug, Default)]
struct Repeated {
    /// When it was last logged, and how many times it happened since.
    last: Option<(Instant, u64)>,
}

impl Repeated {
    /// Whether to log it now; if so, how many were held back since the last line.
    fn log_now(&mut self) -> Option<u64> {
        let now = Instant::now();
        match &mut self.last {
            Some((at, held)) if now.duration_since(*at) < REPEAT_LOG_INTERVAL => {
                *held += 1;
                None
            }
            last => {
                let held = last.map_or(0, |(_, held)| held);
                *last = Some((now, 0));
                Some(held)
            }
        }
    }
}

/// What a refused handshake is, for rate-limiting its log line: a fixed set, so a flood of
/// strangers cannot grow the table.
fn refusal_kind(e: &lethe_transport::Error) -> &'static str {
    match e {
        lethe_transport::Error::HandshakeTimeout { .. } => "timeout",
        lethe_transport::Error::HandshakesFull { .. } => "full",
        lethe_transport::Error::Connection(_) => "connection",
        _ => "other",
    }
}

/// Accepts connections until the endpoint closes: the owner's go to [`crate::owner`], a peer's
/// to [`run_connection`]. Handshakes run concurrently in the endpoint (a stalled one delays no
/// other); a failed one (an untrusted key, a timeout) is logged, rate-limited, and skipped.
pub(crate) async fn accept_loop(inner: Arc<Inner>) {
    let mut refusals: BTreeMap<&'static str, Repeated> = BTreeMap::new();
    while let Some(incoming) = inner.endpoint.accept().await {
        match incoming {
            Ok(conn) if conn.peer == inner.id => {
                tokio::spawn(crate::owner::serve(inner.clone(), conn));
            }
            // A device serves no peers (docs/design.md §8): only its owner.
            Ok(conn) if inner.config.engine.role == lethe_engine::Role::Device => {
                debug!(peer = %conn.peer, "a device serves no peers; closing");
                conn.close(CloseCode::Refused, "this node is a device: it serves no peers");
            }
            // A device's key is served as a device while enrolled, refused otherwise, and never
            // as a member (I10): its sessions are device sessions (`device_stream.rs`).
            Ok(conn) => match crate::device_service::connection_kind(&inner, &conn.peer) {
                ConnectionKind::Device => {
                    tokio::spawn(crate::device_service::serve(inner.clone(), conn));
                }
                ConnectionKind::Refused(reason) => {
                    debug!(peer = %conn.peer, "refused a device's connection: {reason}");
                    conn.close(CloseCode::Refused, reason);
                }
                ConnectionKind::Member => {
                    let span = info_span!("peer", peer = %short(&conn.peer), dir = "in");
                    tokio::spawn(run_connection(inner.clone(), conn, false).instrument(span));
                }
            },
            Err(e) => match refusals.entry(refusal_kind(&e)).or_default().log_now() {
                Some(0) => warn!("refused a connection: {e}"),
                Some(held) => warn!("refused a connection: {e} (and {held} more like it since the last such line)"),
                None => debug!("refused a connection: {e}"),
            },
        }
    }
}

fn short(id: &NodeId) -> String {
    id.to_string()[..16].to_string()
}

/// Keeps a connection to `peer`: dials, serves it until it closes, waits, dials again. The wait
/// doubles from [`BACKOFF_MIN`] up to `reconnect_max` after every connection on which no session
/// finished (unreachable, refused by the peer, a refused session), and is reset only by one
/// that synced; so a peer that refuses this node is not redialed in a tight loop.
pub(crate) async fn dial_loop(inner: Arc<Inner>, peer: PeerAddr) {
    let mut stop = inner.shutdown.subscribe();
    let mut backoff = BACKOFF_MIN;
    let mut complaint: Option<(String, Repeated)> = None;
    let span = info_span!("peer", peer = %short(&peer.id), dir = "out");
    loop {
        if inner.shutting_down() {
            return;
        }
        // The peer dialed us and that connection stands: one is enough.
        if lock(&inner.connected).contains_key(&peer.id) {
            tokio::select! {
                _ = tokio::time::sleep(inner.config.reconnect_max) => continue,
                _ = stop.changed() => return,
            }
        }
        let failed = match inner.endpoint.connect(peer.addr, peer.id).instrument(span.clone()).await {
            Ok(conn) => run_connection(inner.clone(), conn, true).instrument(span.clone()).await,
            Err(e) => Some(format!("could not connect to {}: {e}", peer.addr)),
        };
        match failed {
            None => {
                backoff = BACKOFF_MIN;
                complaint = None;
            }
            Some(why) => {
                // The same reason again is counted, and said again once per interval.
                let repeated = match &mut complaint {
                    Some((said, repeated)) if *said == why => repeated,
                    other => &mut other.insert((why.clone(), Repeated::default())).1,
                };
                let retry = backoff.as_secs_f64();
                match repeated.log_now() {
                    Some(0) => {
                        warn!(parent: &span, "{why}; retrying in {retry:.1} s, backing off up to {:?}", inner.config.reconnect_max)
                    }
                    Some(held) => {
                        warn!(parent: &span, "{why} (still, after {held} more attempts); retrying in {retry:.1} s")
                    }
                    None => debug!(parent: &span, "{why}; retrying in {retry:.1} s"),
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(inner.config.reconnect_max);
    }
}

/// Records a connection. When two nodes name each other with `--peer` and dial at the same time,
/// two connections open; both nodes keep the one dialed by the smaller node id and close the
/// other (the same rule on both sides, so they close the same one), and a dial loop does not
/// redial while a connection to its peer stands. Only connections opened within
/// [`SIMULTANEOUS_OPEN`] of each other count: an older one may be dead without knowing it yet (a
/// peer killed and restarted), and must not win over the fresh one.
fn register(inner: &Inner, conn: &PeerConnection, dialer: NodeId) {
    let now = std::time::Instant::now();
    let mut connected = lock(&inner.connected);
    let conns = connected.entry(conn.peer).or_default();
    conns.push((conn.conn.clone(), dialer, now));
    let recent: Vec<_> = conns.iter().filter(|(.., since)| now.duration_since(*since) < SIMULTANEOUS_OPEN).collect();
    if recent.len() > 1 {
        let keep = recent.iter().map(|(_, d, _)| *d).min();
        for (c, d, _) in recent {
            if Some(*d) != keep {
                c.close(lethe_transport::endpoint::VarInt::from_u32(CloseCode::Done as u32), b"duplicate connection");
            }
        }
    }
    // At most CONNECTIONS_PER_PEER_MAX open: the oldest go (they are the likeliest dead).
    let mut open: Vec<_> = conns.iter().filter(|(c, ..)| c.close_reason().is_none()).collect();
    if open.len() > CONNECTIONS_PER_PEER_MAX {
        open.sort_by_key(|(.., since)| *since);
        let excess = open.len() - CONNECTIONS_PER_PEER_MAX;
        for (c, ..) in &open[..excess] {
            c.close(
                lethe_transport::endpoint::VarInt::from_u32(CloseCode::Refused as u32),
                format!("more than {CONNECTIONS_PER_PEER_MAX} connections from one peer; closing the oldest")
                    .as_bytes(),
            );
        }
        warn!("{} holds more than {CONNECTIONS_PER_PEER_MAX} connections; closed the {excess} oldest", conn.peer);
    }
}

/// Serves one peer connection until it closes. `None` if a session finished on it; otherwise
/// why it ended, for the dial loop to back off and say (once).
async fn run_connection(inner: Arc<Inner>, conn: PeerConnection, dialer: bool) -> Option<String> {
    debug!(
        "connected to {} at {} (frames {})",
        conn.peer,
        conn.conn.remote_address(),
        if conn.compressed() { "compressed" } else { "raw" }
    );
    register(&inner, &conn, if dialer { inner.id } else { conn.peer });
    lock(&inner.known).insert(conn.peer.replica_id(), conn.peer);
    let link = Arc::new(Link::default());
    if dialer {
        link.ask_session();
    }
    let tasks = [
        tokio::spawn(accept_streams(inner.clone(), conn.clone(), link.clone()).in_current_span()),
        tokio::spawn(initiate_sessions(inner.clone(), conn.clone(), link.clone(), dialer).in_current_span()),
        tokio::spawn(push_loop(inner.clone(), conn.clone(), link.clone()).in_current_span()),
        tokio::spawn(crate::device_service::share_directory(inner.clone(), conn.clone()).in_current_span()),
    ];
    let mut stop = inner.shutdown.subscribe();
    let ended = tokio::select! {
        reason = conn.conn.closed() => reason.to_string(),
        _ = stop.changed() => { conn.close(CloseCode::Done, "node shutting down"); "node shutting down".to_string() }
    };
    for task in tasks {
        task.abort();
    }
    let synced = link.synced_sessions.load(Ordering::Relaxed) > 0;
    if synced {
        info!("disconnected: {ended}");
    } else {
        debug!("disconnected before any session finished: {ended}");
    }
    let mut connected = lock(&inner.connected);
    if let Some(conns) = connected.get_mut(&conn.peer) {
        conns.retain(|(c, ..)| c.stable_id() != conn.conn.stable_id());
        if conns.is_empty() {
            connected.remove(&conn.peer);
        }
    }
    (!synced).then(|| format!("{} ended the connection before any session finished: {ended}", conn.peer))
}

/// What the tasks of one connection share.
#[derive(Debug, Default)]
struct Link {
    want_session: Notify,
    /// Sessions running on this connection, started by either side.
    running: AtomicUsize,
    /// Sessions ended on this connection, however they ended.
    finished: AtomicU64,
    /// Sessions that ran to the end on this connection.
    synced_sessions: AtomicU64,
    /// This replica's vector when the last session on this connection finished.
    synced: Mutex<Option<VersionVector>>,
}

/// Counts a session as running until dropped.
struct Running<'a>(&'a Link);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

impl Link {
    fn ask_session(&self) {
        self.want_session.notify_one();
    }

    /// Asks for a session for a peer that is not (yet) a member, unless one is running or none
    /// has run yet: the dialer starts one at connect time, and a second would send the same
    /// bootstrap twice.
    fn ask_session_if_idle(&self) {
        if self.quiet() {
            self.ask_session();
        }
    }

    /// Whether a session has finished on this connection and none is running.
    fn quiet(&self) -> bool {
        self.finished.load(Ordering::Relaxed) > 0 && self.running.load(Ordering::Relaxed) == 0
    }

    fn session_started(&self) -> Running<'_> {
        self.running.fetch_add(1, Ordering::Relaxed);
        Running(self)
    }
}

/// Ends the connection if `failure` means the peer broke the protocol.
fn close_on(conn: &PeerConnection, what: &str, failure: &Failure) {
    if failure.is_drift() {
        crate::metrics::remote_drift_rejected();
    }
    match failure.close_code() {
        Some(code) => {
            warn!("{what} failed, closing the connection ({code:?}): {failure}");
            conn.close(code, &failure.to_string());
        }
        // The node logs its store's failure itself, once per failed commit.
        None if failure.is_local() => {
            debug!("{what} stopped by this node's own store failure, not the peer's doing: {failure}");
        }
        None => debug!("{what} ended: {failure}"),
    }
}

async fn accept_streams(inner: Arc<Inner>, conn: PeerConnection, link: Arc<Link>) {
    while let Ok((w, mut r)) = conn.accept().await {
        let kind = match r.next().await {
            Ok(Some(kind)) => kind,
            Ok(None) => continue,
            Err(e) => {
                close_on(&conn, "reading a stream", &Failure::Transport(e));
                continue;
            }
        };
        let (inner, conn, link) = (inner.clone(), conn.clone(), link.clone());
        tokio::spawn(
            async move {
                let result = match kind.as_slice() {
                    [STREAM_SESSION] => {
                        run_session(&inner, &link, conn.peer, (w, r), false).await.map(|_| ()).inspect_err(|_| {
                            inner.sessions_failed.fetch_add(1, Ordering::Relaxed);
                        })
                    }
                    [STREAM_LIVE] => receive_pushes(&inner, conn.peer, (w, r), &link).await,
                    [crate::device_directory::STREAM_DIRECTORY] => {
                        crate::device_service::receive_directory(&inner, conn.peer, r).await
                    }
                    _ => Err(Failure::StreamKind(kind)),
                };
                if let Err(failure) = result {
                    // What the peer pushed was not stored, and its sender counts it as sent: a
                    // session from this side fetches it, retried until the store is back.
                    if failure.is_local() {
                        link.ask_session();
                    }
                    close_on(&conn, "stream", &failure);
                }
            }
            .in_current_span(),
        );
    }
}

async fn initiate_sessions(inner: Arc<Inner>, conn: PeerConnection, link: Arc<Link>, dialer: bool) {
    // After a failed session, the next waits this long (doubling up to `reconnect_max`; back to
    // the start after one that completes): a store that keeps failing, or a peer that keeps
    // refusing, costs a session per backoff, not five a second.
    let mut retry = SESSION_RETRY_MIN;
    // A device enrolled or removed here: a session carries the records to the peer.
    let mut records = inner.devices.records.subscribe();
    loop {
        let anti_entropy = tokio::select! {
            _ = link.want_session.notified() => false,
            Ok(()) = records.changed() => false,
            _ = tokio::time::sleep(inner.config.anti_entropy_interval), if dialer => true,
        };
        let result = async {
            let (mut w, r) = conn.open().await?;
            w.send(&[STREAM_SESSION]).await?;
            run_session(&inner, &link, conn.peer, (w, r), anti_entropy).await
        }
        .await;
        match result {
            Ok(_) => retry = SESSION_RETRY_MIN,
            Err(failure) => {
                inner.sessions_failed.fetch_add(1, Ordering::Relaxed);
                if !survive(&conn, "session", &failure) {
                    return;
                }
                // The session did not finish: try again after the backoff.
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(inner.config.reconnect_max.max(SESSION_RETRY_MIN));
                link.ask_session();
            }
        }
    }
}

/// `step` unless the peer keeps it waiting longer than `stall` ([`Failure::Stalled`]).
async fn stalls<T>(stall: Duration, step: impl Future<Output = T>) -> Result<T, Failure> {
    tokio::time::timeout(stall, step).await.map_err(|_| Failure::Stalled(stall))
}

/// Logs `failure` of one stream; closes the connection if the peer broke the protocol. Whether
/// the connection is still usable.
fn survive(conn: &PeerConnection, what: &str, failure: &Failure) -> bool {
    close_on(conn, what, failure);
    failure.close_code().is_none() && conn.conn.close_reason().is_none()
}

/// Decoded frames a session reads ahead of the one being applied.
const READ_AHEAD_FRAMES: usize = 2;

/// Aborts a task when dropped: a session's frame reader ends with the session, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one engine session over a stream, both roles at once, and counts how it ended.
async fn run_session(
    inner: &Inner,
    link: &Link,
    peer: NodeId,
    stream: FrameStream,
    anti_entropy: bool,
) -> Result<SessionStats, Failure> {
    let mut seen = SessionStats::default();
    let result = drive_session(inner, link, peer, stream, anti_entropy, &mut seen).await;
    // The session may have merged device records (an enrolment or removal at that member),
    // whether it then finished or failed: trust follows them on every exit.
    crate::device_service::refresh_trust_if_changed(inner);
    match &result {
        Ok(stats) => crate::metrics::session_ended(stats, SessionOutcome::of_finished(stats)),
        Err(failure) if failure.close_code().is_some() => crate::metrics::session_ended(&seen, SessionOutcome::Refused),
        Err(_) => crate::metrics::session_ended(&seen, SessionOutcome::Failed),
    }
    result
}

/// [`run_session`]'s body; `seen` is the session's stats as of the last message handled.
async fn drive_session(
    inner: &Inner,
    link: &Link,
    peer: NodeId,
    (mut w, mut r): FrameStream,
    anti_entropy: bool,
    seen: &mut SessionStats,
) -> Result<SessionStats, Failure> {
    let _running = link.session_started();
    let stall = inner.config.session_stall_timeout;
    let expected = Some(peer.replica_id());
    let mut session = inner.with_replica(|rep| {
        if anti_entropy { Session::anti_entropy(rep, expected) } else { Session::new(rep, expected) }
    })?;
    let started = std::time::Instant::now();
    // Frames are read and decoded ahead on a task of their own, so the next chunk decodes while
    // the replica applies this one.
    // Each with its decoded length and the bytes it took on the stream.
    let (frames, mut incoming) =
        tokio::sync::mpsc::channel::<Result<(Message, usize, u64), Failure>>(READ_AHEAD_FRAMES);
    let reader = AbortOnDrop(tokio::spawn(async move {
        loop {
            let before = r.wire_bytes();
            let next = match r.next().await {
                Ok(Some(frame)) => {
                    let wire = r.wire_bytes() - before;
                    Message::decode(&frame).map(|m| (m, frame.len(), wire)).map_err(Failure::from)
                }
                Ok(None) => Err(Failure::ClosedEarly),
                Err(e) => Err(Failure::from(e)),
            };
            let last = next.is_err();
            if frames.send(next).await.is_err() || last {
                return;
            }
        }
    }));
    // A round trip: frames went out, then this side waited for the peer's answer.
    let mut sent = false;
    let mut wire_received = 0;
    loop {
        // Frames are read from the replica one at a time, so a bootstrap streams chunk by chunk.
        while let Some(frame) = inner.with_replica(|rep| {
            let frame = session.poll_transmit(rep);
            if let Ok(Some(f)) = &frame {
                inner.count_sent(f.len());
            }
            frame
        })? {
            let before = w.wire_bytes();
            // What the peer sends meanwhile is handled while this frame waits for room: two
            // sides that each stream more than the windows hold would otherwise each wait for
            // the other to read, for ever.
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
                            handle_incoming(inner, &mut session, seen, &mut wire_received, next, 0)?;
                        }
                    }
                }
            }
            inner.count_wire(w.wire_bytes() - before, 0);
            sent = true;
        }
        stalls(stall, w.flush()).await??;
        if session.is_finished() {
            break;
        }
        let next = stalls(stall, incoming.recv()).await?.ok_or(Failure::ClosedEarly)??;
        let round_trip = u64::from(std::mem::take(&mut sent));
        handle_incoming(inner, &mut session, seen, &mut wire_received, next, round_trip)?;
    }
    drop(reader);
    *lock(&link.synced) = Some(inner.with_replica(|rep| rep.vector().clone()));
    let wire_sent = w.wire_bytes();
    let mut send = w.into_inner().await?;
    // The stream may already be reset by a peer that finished first; its data is delivered.
    let _ = send.finish();
    let stats = session.stats().clone();
    inner.sessions_finished.fetch_add(1, Ordering::Relaxed);
    if link.synced_sessions.fetch_add(1, Ordering::Relaxed) == 0 {
        inner.synced.send_replace(true);
        info!("connected to {peer}: first session finished");
    }
    inner.anti_entropy_sessions.fetch_add(u64::from(stats.anti_entropy), Ordering::Relaxed);
    let level_info = stats.live_received + stats.tombstones_received + stats.live_sent + stats.tombstones_sent > 0;
    if level_info {
        info!(
            mode = ?stats.mode,
            sent_bytes = stats.bytes_sent,
            received_bytes = stats.bytes_received,
            sent_wire_bytes = wire_sent,
            received_wire_bytes = wire_received,
            live_received = stats.live_received,
            tombstones_received = stats.tombstones_received,
            secs = started.elapsed().as_secs_f64(),
            "session finished"
        );
    } else {
        debug!(mode = ?stats.mode, "session finished with nothing to exchange");
    }
    Ok(stats)
}

/// Applies one message of the peer's to the session, under the replica's lock, and counts it.
fn handle_incoming(
    inner: &Inner,
    session: &mut Session,
    seen: &mut SessionStats,
    wire_received: &mut u64,
    (msg, frame_len, wire_len): (Message, usize, u64),
    round_trip: u64,
) -> Result<(), Failure> {
    inner.with_replica(|rep| {
        inner.round_trips.fetch_add(round_trip, Ordering::Relaxed);
        let before = session.stats().clone();
        let handled = session.handle_message(rep, msg, frame_len);
        // Counted under the replica's lock, as `status` reads them: a status that shows the data
        // also counts it.
        let now = session.stats();
        inner.count_received(
            now.live_received - before.live_received,
            now.tombstones_received - before.tombstones_received,
            now.bytes_received - before.bytes_received,
        );
        seen.clone_from(now);
        inner.count_wire(0, wire_len);
        *wire_received += wire_len;
        handled
    })?;
    Ok(())
}

async fn receive_pushes(inner: &Inner, peer: NodeId, (mut w, mut r): FrameStream, link: &Link) -> Result<(), Failure> {
    let mut rx = LiveReceiver::new(peer.replica_id());
    loop {
        let wire_before = r.wire_bytes();
        let Some(frame) = r.next().await? else { break };
        let wire_len = r.wire_bytes() - wire_before;
        let got = inner.with_replica(|rep| {
            let got = rx.handle(rep, &frame);
            if let Ok(got) = &got {
                inner.count_received(got.live, got.tombstones, frame.len() as u64);
                crate::metrics::push_received(got.gap);
                inner.count_wire(0, wire_len);
            }
            got
        })?;
        if let Some(reply) = got.reply {
            inner.count_sent(reply.len());
            let before = w.wire_bytes();
            w.send(&reply).await?;
            inner.count_wire(w.wire_bytes() - before, 0);
            w.flush().await?;
        }
        if got.gap {
            debug!("live stream has a gap; asking for a session");
            link.ask_session();
        }
    }
    Ok(())
}

/// Pushes every commit to the peer while it is a member; asks for a session while it is not (a
/// session's acknowledgement is what admits it).
async fn push_loop(inner: Arc<Inner>, conn: PeerConnection, link: Arc<Link>) {
    let mut committed = inner.committed.subscribe();
    let mut live: Option<LiveStream> = None;
    loop {
        match push_once(&inner, &conn, &link, &mut live).await {
            Ok(false) => {}
            Ok(true) => {
                debug!("peer not eligible for pushes; asking for a session");
                link.ask_session_if_idle();
                live = None;
            }
            Err(failure) => {
                if !survive(&conn, "live push", &failure) {
                    return;
                }
                live = None;
            }
        }
        tokio::select! {
            changed = committed.changed() => {
                if changed.is_err() {
                    return;
                }
                // Linger a moment so a burst of commits goes out as one push.
                tokio::time::sleep(PUSH_LINGER).await;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

type LiveStream = (lethe_transport::FrameWriter<SendStream>, LiveSender);

/// Sends what the peer lacks on the live stream (opened once the peer is a member). Whether a
/// session is needed instead: the peer is not a member and this replica has news since the last
/// session, or the sender found the peer behind the stable frontier.
async fn push_once(
    inner: &Arc<Inner>,
    conn: &PeerConnection,
    link: &Link,
    live: &mut Option<LiveStream>,
) -> Result<bool, Failure> {
    let peer = conn.peer.replica_id();
    let (w, sender) = match live {
        Some(stream) => stream,
        None => {
            // A session running (or about to run, at connect) brings the peer up to date; a live
            // stream opened meanwhile would send the same entries again from an older base.
            if !link.quiet() {
                return Ok(false);
            }
            let (member, vector) =
                inner.with_replica(|r| (r.membership().get(peer).map(|m| m.acked.clone()), r.vector().clone()));
            let Some(acked) = member else { return Ok(lock(&link.synced).as_ref() != Some(&vector)) };
            live.insert((open_live(inner, conn).await?, LiveSender::new(peer, acked)))
        }
    };
    match inner.with_replica(|r| sender.poll(r))? {
        LivePoll::Idle => Ok(false),
        LivePoll::Frames(frames) => {
            crate::metrics::pushes_sent(frames.len() as u64);
            for f in &frames {
                inner.count_sent(f.len());
                let before = w.wire_bytes();
                w.send(f).await?;
                inner.count_wire(w.wire_bytes() - before, 0);
            }
            w.flush().await?;
            Ok(false)
        }
        LivePoll::NeedSession => Ok(true),
    }
}

async fn open_live(
    inner: &Arc<Inner>,
    conn: &PeerConnection,
) -> Result<lethe_transport::FrameWriter<SendStream>, Failure> {
    let (mut w, mut r) = conn.open().await?;
    w.send(&[STREAM_LIVE]).await?;
    w.flush().await?;
    // Acknowledgements come back on the same stream; read them on their own task.
    let (inner, conn) = (inner.clone(), conn.clone());
    tokio::spawn(
        async move {
            let peer = conn.peer.replica_id();
            loop {
                match r.next().await {
                    Ok(Some(frame)) => {
                        if let Err(e) = inner.with_replica(|rep| handle_ack(rep, peer, &frame)) {
                            return close_on(&conn, "live acknowledgement", &Failure::Sync(e));
                        }
                    }
                    Ok(None) => return,
                    Err(e) => return close_on(&conn, "live acknowledgement", &Failure::Transport(e)),
                }
            }
        }
        .in_current_span(),
    );
    Ok(w)
}
