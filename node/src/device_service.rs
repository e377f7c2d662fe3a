//! A member's device side (docs/design.md §8): enrolling and removing devices while the node
//! runs, the trust list that follows them, sharing the device directory with the other members,
//! and serving a connected device's sessions.
//!
//! - **Enrol** ([`crate::Node::enrol_device`]): the node id and name go into the device
//!   directory (`device_directory.rs`, persisted in the data directory first), then the replica
//!   id into the engine (`Replica::enrol_device`, durable, and spread to the other members with
//!   the device records); the device is trusted at once.
//! - **Trust** ([`refresh_trust`]): a node id is trusted as a device exactly while the directory
//!   knows it and the engine has its replica id enrolled. It is recomputed after an enrolment or
//!   removal here, after every member session (which may have merged records: an enrolment or a
//!   removal made at another member), and after a member shared its directory. A device that
//!   is no longer trusted has its connections closed at once.
//! - **Remove** ([`crate::Node::remove_device`]): the engine removes the device (durable; it
//!   stops holding collection back and its sessions are refused), its trust and its open
//!   connections go at once, and the removal reaches the other members with the records, where
//!   the same refresh drops it.
//! - **Serve** ([`serve`]): one task per device connection; each stream is one device session
//!   ([`crate::device_stream`]; one at a time per connection, at most
//!   `NodeConfig::device_sessions_max` at once in all) or the device's news stream
//!   ([`crate::device_news`]: coalesced, and none while the device has what it would say).

use crate::device_directory::{DeviceDirectory, DirectoryError, STREAM_DIRECTORY};
use crate::device_news::{DeviceConnection, DeviceSessions, Serving, tell_news};
use crate::device_stream::{STREAM_DEVICE_NEWS, STREAM_DEVICE_SESSION, pump};
use crate::metrics::SessionOutcome;
use crate::node::{Failure, Inner, NodeError, lock};
use lethe_engine::device::DeviceService;
use lethe_engine::session::SyncError;
use lethe_transport::endpoint::{Connection, FrameStream, VarInt};
use lethe_transport::{CloseCode, NodeId, PeerConnection};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tracing::{Instrument, debug, info, info_span, warn};

/// One enrolled device as a member sees it ([`crate::Node::devices`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Its node id, if this member knows it (a device enrolled at another member whose
    /// directory has not reached this one shows `None`, and cannot connect here yet).
    pub node_id: Option<String>,
    /// Its replica id (the first 16 hex digits of its node id).
    pub replica: String,
    /// The name the operator gave it.
    pub name: Option<String>,
    /// When a member last heard from it, in Unix ms (0: never).
    pub last_seen_ms: u64,
    /// What it acknowledged (over members), once it counts.
    pub acked: Option<BTreeMap<String, u64>>,
    /// The highest upload seq applied for it (at any member).
    pub cursor: u64,
    /// Whether it holds collection back (it acknowledged, counts, and is within its lease).
    pub holds_collection_back: bool,
    /// Whether it is connected to this member now.
    pub connected: bool,
}

/// The member-side state of devices in a node.
#[derive(Debug, Default)]
pub(crate) struct DeviceTable {
    /// The directory of node ids and names.
    pub(crate) directory: Mutex<DeviceDirectory>,
    /// Open device connections, by device.
    pub(crate) connections: Mutex<BTreeMap<NodeId, Vec<Connection>>>,
    /// Node ids trusted for another reason (`--trust`, `--peer`, the owner): never dropped by a
    /// device refresh.
    pub(crate) fixed: BTreeSet<NodeId>,
    /// Bumped when the directory changed: members share it again.
    pub(crate) shared: tokio::sync::watch::Sender<u64>,
    /// Bumped when this member enrolled or removed a device: member sessions carry the records.
    pub(crate) records: tokio::sync::watch::Sender<u64>,
    /// The engine's device records clock at the last trust refresh.
    refreshed: std::sync::atomic::AtomicU64,
    /// The cap on device sessions running at once, and what they and the news cost.
    pub(crate) sessions: DeviceSessions,
}

impl DeviceTable {
    /// The table of the data directory at `dir`, with `fixed` trusted anyway, running at most
    /// `sessions_max` device sessions at once.
    pub(crate) fn load(
        dir: &std::path::Path,
        fixed: BTreeSet<NodeId>,
        sessions_max: usize,
    ) -> Result<DeviceTable, DirectoryError> {
        Ok(DeviceTable {
            directory: Mutex::new(DeviceDirectory::load(dir)?),
            connections: Mutex::default(),
            fixed,
            shared: tokio::sync::watch::channel(0).0,
            records: tokio::sync::watch::channel(0).0,
            refreshed: std::sync::atomic::AtomicU64::new(u64::MAX),
            sessions: DeviceSessions::new(sessions_max),
        })
    }

    /// How many devices have a connection open now.
    pub(crate) fn connected_count(&self) -> usize {
        lock(&self.connections).values().filter(|c| c.iter().any(|c| c.close_reason().is_none())).count()
    }

    /// Whether `node` is a device connected now.
    pub(crate) fn is_connected(&self, node: &NodeId) -> bool {
        lock(&self.connections).get(node).is_some_and(|c| c.iter().any(|c| c.close_reason().is_none()))
    }
}

fn refuse(conn: &Connection, reason: &str) {
    conn.close(VarInt::from_u32(CloseCode::Refused as u32), reason.as_bytes());
}

/// Brings the trust list in line with the directory and the engine's device records: trusts
/// every known device the engine has enrolled, and drops (closing its connections) every
/// device it no longer has enrolled, unless trusted for another reason. A member connection
/// whose key is now a device's (enrolled or removed, not in `fixed`) is closed too: a device's
/// key is never served as a member.
pub(crate) fn refresh_trust(inner: &Inner) {
    let table = &inner.devices;
    settle_directory(inner);
    let known: BTreeSet<NodeId> = lock(&table.directory).iter().map(|(n, _)| n).collect();
    let trust = inner.endpoint.trust();
    let members: Vec<NodeId> = lock(&inner.connected).keys().copied().collect();
    let candidates: BTreeSet<NodeId> = trust.ids().into_iter().chain(members.iter().copied()).collect();
    let (enrolled, engine_devices): (BTreeSet<NodeId>, BTreeSet<NodeId>) = inner.with_replica(|r| {
        if r.is_device() {
            return Default::default();
        }
        let d = r.devices();
        let enrolled = known.iter().copied().filter(|n| d.is_enrolled(n.replica_id())).collect();
        let devices = candidates
            .iter()
            .copied()
            .filter(|n| d.is_enrolled(n.replica_id()) || d.is_revoked(n.replica_id()))
            .collect();
        (enrolled, devices)
    });
    let is_device_key = |n: &NodeId| !table.fixed.contains(n) && (known.contains(n) || engine_devices.contains(n));
    for n in &enrolled {
        if !trust.contains(n) {
            debug!(device = %n, "trusting enrolled device");
            trust.add(*n);
        }
    }
    for n in trust.ids() {
        if !enrolled.contains(&n) && is_device_key(&n) {
            trust.remove(&n);
            info!(device = %n, "device no longer enrolled: refused from now on");
        }
    }
    // A device's key on a member connection (accepted before the engine knew it as a device):
    // closed, whatever it was doing.
    for n in members.iter().filter(|n| is_device_key(n)) {
        if let Some(list) = lock(&inner.connected).get(n) {
            for (c, ..) in list {
                refuse(c, "this node's key is a device's here, never a member's");
            }
            warn!(device = %n, "closed a member connection from a device's key");
        }
    }
    // A device whose enrolment ended (here or at another member) is cut off at once.
    let mut conns = lock(&table.connections);
    conns.retain(|n, list| {
        if enrolled.contains(n) {
            list.retain(|c| c.close_reason().is_none());
            return !list.is_empty();
        }
        for c in list.iter() {
            refuse(c, "this device was removed (or is not enrolled) at this member");
        }
        false
    });
}

/// Adopts the shared entries held for devices the engine has enrolled since, and drops the
/// entries of devices the engine revoked (here or at another member); writes the directory if
/// that changed it.
fn settle_directory(inner: &Inner) {
    let ids = lock(&inner.devices.directory).replica_ids();
    let (enrolled, revoked): (BTreeSet<_>, BTreeSet<_>) = inner.with_replica(|r| {
        if r.is_device() {
            return Default::default();
        }
        let d = r.devices();
        (
            ids.iter().copied().filter(|id| d.is_enrolled(*id)).collect(),
            ids.iter().copied().filter(|id| d.is_revoked(*id)).collect(),
        )
    });
    let (enrolled, revoked) = (|id| enrolled.contains(&id), |id| revoked.contains(&id));
    let mut dir = lock(&inner.devices.directory);
    if !dir.unsettled(enrolled, revoked) {
        return;
    }
    // Changed in a copy, swapped in once written: after a failed save memory is as the file
    // (the next refresh tries again), so an operator's retry of a removal still finds its entry.
    let mut next = dir.clone();
    next.settle(enrolled, revoked);
    match next.save() {
        Ok(()) => *dir = next,
        Err(e) => warn!("could not write the device directory: {e}"),
    }
}

/// [`refresh_trust`] if the engine's device records changed since the last refresh.
pub(crate) fn refresh_trust_if_changed(inner: &Inner) {
    let clock = inner.with_replica(|r| r.devices().clock());
    if inner.devices.refreshed.swap(clock, Ordering::Relaxed) != clock {
        refresh_trust(inner);
    }
}

/// What an accepted connection is, by its key ([`connection_kind`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ConnectionKind {
    /// A member peer (or a node trusted by `--peer`/`--trust`): `run_connection`.
    Member,
    /// A device the directory knows and the engine has enrolled: [`serve`].
    Device,
    /// A device's key that may not connect now (removed, or not known here yet): refused with
    /// this reason, never served as a member.
    Refused(&'static str),
}

/// What an accepted connection from `peer` is. A key in `fixed` (the `--peer`/`--trust` ids and
/// the owner) is a member's; any other key that the directory knows, or whose replica id the
/// engine has as a device (enrolled or removed), is a device's: served as one only while both
/// the directory and the engine say it is enrolled, refused otherwise.
pub(crate) fn connection_kind(inner: &Inner, peer: &NodeId) -> ConnectionKind {
    if inner.devices.fixed.contains(peer) {
        return ConnectionKind::Member;
    }
    let entry = lock(&inner.devices.directory).get(peer.replica_id()).map(|e| e.node == peer.0);
    let (enrolled, revoked) = inner.with_replica(|r| {
        if r.is_device() {
            return (false, false);
        }
        let d = r.devices();
        (d.is_enrolled(peer.replica_id()), d.is_revoked(peer.replica_id()))
    });
    match entry {
        Some(true) if enrolled => ConnectionKind::Device,
        _ if revoked => ConnectionKind::Refused("this device was removed (at this member or another)"),
        Some(false) => ConnectionKind::Refused("another key holds this replica id as a device here"),
        None if enrolled => {
            ConnectionKind::Refused("this device is enrolled but its node id has not reached this member yet")
        }
        Some(true) => ConnectionKind::Refused("this device is not enrolled at this member"),
        None => ConnectionKind::Member,
    }
}

impl Inner {
    /// Enrols a device at this member: directory, engine, trust (see the module docs).
    pub(crate) fn enrol_device(&self, device: NodeId, name: Option<String>) -> Result<bool, NodeError> {
        if self.with_replica(|r| r.is_device()) {
            return Err(NodeError::NotAMember);
        }
        if device == self.id || self.devices.fixed.contains(&device) {
            return Err(NodeError::NotADevice(device));
        }
        // Another member's entry for this replica id gives way to the operator's here. Memory
        // changes only once the file is written: a failed save leaves both as before, and a
        // retry writes it.
        let directory_changed = lock(&self.devices.directory).enrol_saved(device, name)?;
        let enrolled = self.with_replica(|r| r.enrol_device(device.replica_id()))?;
        if directory_changed {
            self.devices.shared.send_modify(|n| *n += 1);
        }
        if enrolled {
            self.devices.records.send_modify(|n| *n += 1);
            info!(%device, "device enrolled");
        }
        refresh_trust(self);
        Ok(enrolled || directory_changed)
    }

    /// Removes a device at this member: engine, trust, connections, directory.
    pub(crate) fn remove_device(&self, device: NodeId) -> Result<bool, NodeError> {
        if self.with_replica(|r| r.is_device()) {
            return Err(NodeError::NotAMember);
        }
        let removed = self.with_replica(|r| r.remove_device(device.replica_id()))?;
        if removed {
            self.devices.records.send_modify(|n| *n += 1);
            info!(%device, "device removed");
        }
        // The entry leaves memory only once the file is written: after a failed save, a retry
        // (the engine has it removed already) removes and writes it.
        let forgotten = lock(&self.devices.directory).remove_saved(device.replica_id());
        // The engine no longer has it enrolled: trust and connections go now, whatever the save.
        refresh_trust(self);
        if self.devices.fixed.contains(&device) {
            warn!(%device, "removed device is also trusted by --trust or --peer; it can still connect as a peer");
        } else if self.endpoint.trust().remove(&device) {
            debug!(%device, "dropped from the trust list");
        }
        if let Some(list) = lock(&self.devices.connections).remove(&device) {
            for c in list {
                refuse(&c, "this device was removed at this member");
            }
        }
        let forgotten = forgotten?;
        Ok(removed || forgotten)
    }

    /// The enrolled devices whose replica id (as [`DeviceInfo::replica`] writes it) comes after
    /// `after`, at most `limit` of them in replica id order, as [`crate::Node::devices`] shows
    /// them: a page of `device list` builds only its own. The engine's records are walked from
    /// the start to the cursor (comparing ids, nothing built), then `limit` taken.
    pub(crate) fn device_infos(&self, after: Option<&str>, limit: usize) -> Vec<DeviceInfo> {
        // The ids print as 16 lowercase hex digits, so their text sorts as they do: a cursor in
        // that form compares as an id; any other text compares as text.
        let cursor = after.map(|a| match u64::from_str_radix(a, 16) {
            Ok(id) if a.len() == 16 && !a.bytes().any(|b| b.is_ascii_uppercase()) => Ok(id),
            _ => Err(a),
        });
        let past = |id: lethe_engine::ReplicaId| match &cursor {
            None => true,
            Some(Ok(a)) => id.0 > *a,
            Some(Err(a)) => id.to_string().as_str() > *a,
        };
        let now_ms = self.config.clock.0.now_ms();
        let records: Vec<_> = self.with_replica(|r| {
            r.devices()
                .iter()
                .skip_while(|(id, _)| !past(*id))
                .take(limit)
                .map(|(id, rec)| {
                    (
                        id,
                        rec.last_seen_ms,
                        rec.acked.as_ref().map(crate::node::vector_map),
                        rec.cursor.0,
                        rec.counts() && now_ms.saturating_sub(rec.last_seen_ms) <= r.config().device_lease_ms,
                    )
                })
                .collect()
        });
        let dir = lock(&self.devices.directory);
        records
            .into_iter()
            .map(|(id, last_seen_ms, acked, cursor, holds)| {
                let entry = dir.get(id);
                let node = entry.map(|e| NodeId(e.node));
                DeviceInfo {
                    node_id: node.map(|n| n.to_string()),
                    replica: id.to_string(),
                    name: entry.and_then(|e| e.name.clone()),
                    last_seen_ms,
                    acked,
                    cursor,
                    holds_collection_back: holds,
                    connected: node.is_some_and(|n| self.devices.is_connected(&n)),
                }
            })
            .collect()
    }
}

/// Serves one device's connection until it closes: its sessions and its news stream.
pub(crate) async fn serve(inner: Arc<Inner>, conn: PeerConnection) {
    let span = info_span!("device", device = %conn.peer.to_string()[..16].to_string());
    async move {
        {
            // At most CONNECTIONS_PER_PEER_MAX open per device: a new one closes the oldest (a
            // reconnecting device briefly has its dead connection and its new one).
            let mut conns = lock(&inner.devices.connections);
            let list = conns.entry(conn.peer).or_default();
            list.retain(|c| c.close_reason().is_none());
            while list.len() >= crate::peer::CONNECTIONS_PER_PEER_MAX {
                let oldest = list.remove(0);
                refuse(&oldest, "too many connections from this device; closing the oldest");
            }
            list.push(conn.conn.clone());
        }
        debug!("device connected from {}", conn.conn.remote_address());
        let mut stop = inner.shutdown.subscribe();
        // One session at a time per connection: a device that opens more waits its turn (each
        // session holds a store snapshot; QUIC bounds the streams waiting).
        let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
        let state = DeviceConnection::new();
        loop {
            let stream = tokio::select! {
                s = conn.accept() => s,
                _ = stop.changed() => { conn.close(CloseCode::Done, "node shutting down"); break; }
            };
            let Ok((w, mut r)) = stream else { break };
            let (inner, conn, turn, state) = (inner.clone(), conn.clone(), one_at_a_time.clone(), state.clone());
            tokio::spawn(
                async move {
                    // The stream's first frame says what it is. Read here, not in the accept
                    // loop, so a stream whose first frame never comes holds up no other; it is
                    // dropped after the stall timeout (QUIC bounds how many may be open).
                    let stall = inner.config.session_stall_timeout;
                    let kind = match tokio::time::timeout(stall, r.next()).await {
                        Ok(Ok(Some(kind))) => kind,
                        Ok(Ok(None)) => return,
                        Ok(Err(e)) if e.is_peer_frame_error() => {
                            return conn.close(CloseCode::for_error(&e), &format!("device stream's first frame: {e}"));
                        }
                        Ok(Err(e)) => return debug!("device stream's first frame: {e}"),
                        Err(_) => return debug!("device stream sent no first frame in {stall:?}; dropped"),
                    };
                    match kind.as_slice() {
                        [STREAM_DEVICE_SESSION] => {
                            // Counted from here: news waits for it, and it may bring what the
                            // news would have said.
                            let _counted = state.session();
                            let _turn = turn.lock().await;
                            // Beyond the member's cap the session waits here, not refused.
                            let Some(_running) = inner.devices.sessions.run().await else { return };
                            serve_session(&inner, &conn, &state, (w, r)).await;
                        }
                        [STREAM_DEVICE_NEWS] => tell_news(&inner, &conn, &state, w).await,
                        _ => conn.close(CloseCode::Malformed, &format!("unknown device stream kind {kind:?}")),
                    }
                }
                .in_current_span(),
            );
        }
        debug!("device disconnected: {:?}", conn.conn.close_reason());
        let mut conns = lock(&inner.devices.connections);
        if let Some(list) = conns.get_mut(&conn.peer) {
            list.retain(|c| c.stable_id() != conn.conn.stable_id());
            if list.is_empty() {
                conns.remove(&conn.peer);
            }
        }
    }
    .instrument(span)
    .await;
}

/// Runs one device session on a stream the device opened; a complete one notes on `state`
/// what it brought the device.
async fn serve_session(inner: &Arc<Inner>, conn: &PeerConnection, state: &DeviceConnection, stream: FrameStream) {
    let device = conn.peer.replica_id();
    let service = inner.with_replica(|r| DeviceService::new(r, Some(device)));
    let result = match service {
        Ok(service) => {
            let stall = inner.config.session_stall_timeout;
            let mut flow = Serving { service, download_from: None, started: false };
            let limit = inner.config.device_session_timeout;
            match tokio::time::timeout(limit, pump(&**inner, &mut flow, stream, stall, &mut |_| {})).await {
                Ok(result) => result.map(|done| (done, flow.download_from)),
                Err(_) => Err(Failure::Overran(limit)),
            }
        }
        Err(e) => Err(Failure::Sync(e)),
    };
    match result {
        Ok((done, download_from)) => {
            let s = &done.stats;
            if let Some(from) = download_from
                && SessionOutcome::of_finished(&s.download) == SessionOutcome::Complete
            {
                state.served(from);
            }
            inner.count_received(s.download.live_received, s.download.tombstones_received, s.total_received());
            inner.count_sent_total(s.total_sent());
            inner.count_wire(done.wire_sent, done.wire_received);
            inner.round_trips.fetch_add(done.round_trips, Ordering::Relaxed);
            inner.sessions_finished.fetch_add(1, Ordering::Relaxed);
            crate::metrics::session_ended(&s.download, SessionOutcome::of_finished(&s.download));
            if s.uploaded > 0 || s.download.live_sent + s.download.tombstones_sent > 0 {
                info!(
                    uploaded = s.uploaded,
                    admitted = s.admitted,
                    live_sent = s.download.live_sent,
                    tombstones_sent = s.download.tombstones_sent,
                    "device session finished"
                );
            }
        }
        Err(failure) => {
            inner.sessions_failed.fetch_add(1, Ordering::Relaxed);
            let outcome = if failure.close_code().is_some() { SessionOutcome::Refused } else { SessionOutcome::Failed };
            crate::metrics::session_ended(&lethe_engine::session::SessionStats::default(), outcome);
            match &failure {
                Failure::Sync(SyncError::NotEnrolled(_)) => {
                    refuse(&conn.conn, &format!("refused: {failure}"));
                    refresh_trust(inner);
                }
                f if f.is_local() => debug!("device session stopped by this node's own store: {f}"),
                f => match f.close_code() {
                    Some(code) => {
                        warn!("device session failed, closing the connection ({code:?}): {f}");
                        conn.close(code, &f.to_string());
                    }
                    None => debug!("device session ended: {f}"),
                },
            }
        }
    }
}

/// Shares this member's device directory with a member peer: whole at connect, then, after
/// every change, the entries changed since what was sent (each time on a stream of its own),
/// until the connection ends. So enrolling n devices one by one sends each entry about once per
/// member, not the directory n times.
pub(crate) async fn share_directory(inner: Arc<Inner>, conn: PeerConnection) {
    let mut changed = inner.devices.shared.subscribe();
    let mut sent_upto = None;
    loop {
        // Only an enrolled member hears the directory (node ids and names of every device); a
        // peer not one yet is asked again in a moment.
        if !inner.with_replica(|r| r.membership().is_enrolled(conn.peer.replica_id())) {
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                _ = conn.conn.closed() => return,
            }
        }
        let (frames, upto) = lock(&inner.devices.directory).frames_since(sent_upto);
        // Nothing to say: no stream (a mesh without devices sees no new stream kind).
        let sent = async {
            if frames.is_empty() {
                return Ok(());
            }
            let (mut w, _r) = conn.open().await?;
            w.send(&[STREAM_DIRECTORY]).await?;
            for f in &frames {
                w.send(f).await?;
            }
            w.flush().await?;
            let mut send = w.into_inner().await?;
            let _ = send.finish();
            Ok::<_, lethe_transport::Error>(())
        }
        .await;
        match sent {
            Ok(()) => sent_upto = Some(upto),
            Err(e) => {
                debug!("sharing the device directory failed: {e}");
                if conn.conn.close_reason().is_some() {
                    return;
                }
            }
        }
        tokio::select! {
            c = changed.changed() => if c.is_err() { return },
            _ = conn.conn.closed() => return,
        }
    }
}

/// Takes a member's shared directory (a stream whose first frame was [`STREAM_DIRECTORY`]), if
/// the peer is an enrolled member; then refreshes the trust list.
pub(crate) async fn receive_directory(
    inner: &Inner,
    peer: NodeId,
    mut r: lethe_transport::FrameReader<lethe_transport::endpoint::RecvStream>,
) -> Result<(), Failure> {
    if !inner.with_replica(|rep| rep.membership().is_enrolled(peer.replica_id())) {
        debug!("ignoring a device directory from {peer}, not a member here");
        return Ok(());
    }
    let mut added = 0;
    while let Some(frame) = r.next().await? {
        let (n, last) = take_shared_frame(inner, &frame).map_err(|e| Failure::Sync(SyncError::Malformed(e)))?;
        added += n;
        if last {
            break;
        }
    }
    if added > 0 {
        debug!(added, "learned devices from {peer}");
        refresh_trust(inner);
    }
    Ok(())
}

/// Takes one frame of a member's shared directory; how many entries it added, and whether it
/// was the last frame.
pub(crate) fn take_shared_frame(inner: &Inner, frame: &[u8]) -> Result<(usize, bool), String> {
    let (entries, last) = DeviceDirectory::decode_frame(frame)?;
    // Only an entry for a device the engine has enrolled is kept; the others wait for the
    // records that enrol them.
    let enrolled: Vec<bool> = inner.with_replica(|r| {
        entries.iter().map(|(n, _)| !r.is_device() && r.devices().is_enrolled(n.replica_id())).collect()
    });
    let added = {
        let mut dir = lock(&inner.devices.directory);
        let mut added = 0;
        for ((node, name), enrolled) in entries.into_iter().zip(enrolled) {
            if enrolled {
                added += usize::from(dir.adopt(node, name));
            } else {
                dir.hold(node, name);
            }
        }
        added
    };
    if added > 0 {
        // This node's own disk: nothing the peer did. The entries are kept in memory (and
        // written with the next change); a restart before then learns them again.
        if let Err(e) = lock(&inner.devices.directory).save() {
            warn!("could not write the device directory: {e}");
        }
    }
    Ok((added, last))
}
