//! One sync of a device without a running node ([`sync_once`]): a phone's background sync, or
//! `lethe sync`. Opens the data directory's store as a device, dials the first server that
//! answers, runs one device session (upload the queue, download, acknowledge) and closes.

use crate::data_dir::{DataDir, DataDirError};
use crate::device_link::{DeviceFailure, refusal, run_session, wrong_server};
use crate::node::{NodeClock, PeerAddr, SESSION_STALL_TIMEOUT};
use lethe_engine::{Config, RedbStore, Replica, Role};
use lethe_transport::{CloseCode, Endpoint, TrustList};
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

/// What one [`sync_once`] did and cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncReport {
    /// The member it synced with (node id).
    pub server: String,
    /// Queued writes uploaded.
    pub uploaded: u64,
    /// Of them, admitted under a member's dot.
    pub admitted: u64,
    /// Live values received.
    pub live_received: u64,
    /// Dead records (tombstones, expired records) received.
    pub tombstones_received: u64,
    /// Bytes of the session's frames on the wire, both ways (length prefixes and bodies,
    /// compressed or not; QUIC and TLS overhead not counted).
    pub wire_bytes: u64,
    /// Round trips of the session, as this side saw them.
    pub round_trips: u64,
    /// Seconds from dialing to the end of the session.
    pub seconds: f64,
    /// Writes still queued afterwards (more than one session uploads, say).
    pub pending_uploads: u64,
}

/// Why [`sync_once`] did not sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncOnceError {
    /// The data directory.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The store could not be opened (a running `lethe serve` on it, say).
    #[error("could not open the store {path}: {source} (is a node running on this data directory?)")]
    Store {
        /// The file.
        path: String,
        /// Why.
        source: lethe_engine::StorageError,
    },
    /// The engine.
    #[error(transparent)]
    Engine(#[from] lethe_engine::Error),
    /// The transport (binding a socket).
    #[error(transparent)]
    Transport(#[from] lethe_transport::Error),
    /// No server was given.
    #[error("no server to sync with; name one as NODEID@ADDR")]
    NoServer,
    /// Every server refused this device (the first named here): it says why (not enrolled,
    /// removed), and the others' reasons after it.
    #[error("member {server} refused this device: {reason}")]
    Refused {
        /// The member's node id.
        server: String,
        /// Its reason.
        reason: String,
    },
    /// No server could be reached or a session failed with each.
    #[error("could not sync with any server: {0}")]
    Unreachable(String),
    /// Not on tokio's multi-thread runtime.
    #[error("sync_once needs tokio's multi-thread runtime")]
    Runtime,
}

/// Syncs the device of `data` once with the first of `servers` that answers: opens its store as
/// a device (`Role::Device`), uploads its queue, downloads, acknowledges, closes. A refusal
/// (this device not enrolled there, or removed), an unreachable server, a server whose key is
/// not the one named (a wrong NODEID) or a failed session moves on to the next; if every server
/// refused, [`SyncOnceError::Refused`] with the members' reasons, else
/// [`SyncOnceError::Unreachable`] saying what happened with each. Needs tokio's multi-thread runtime; the store must not be open
/// elsewhere (no `lethe serve` on the same directory).
pub async fn sync_once(data: &DataDir, servers: &[PeerAddr], clock: NodeClock) -> Result<SyncReport, SyncOnceError> {
    sync_once_with_progress(data, servers, clock, &mut |_| {}).await
}

/// [`sync_once`], calling `progress` with the session's figures so far (live entries and bytes
/// received: `DeviceStats::download`) as frames arrive, for a progress bar.
pub async fn sync_once_with_progress(
    data: &DataDir,
    servers: &[PeerAddr],
    clock: NodeClock,
    progress: &mut (dyn FnMut(&lethe_engine::device::DeviceStats) + Send),
) -> Result<SyncReport, SyncOnceError> {
    if tokio::runtime::Handle::current().runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return Err(SyncOnceError::Runtime);
    }
    let first = servers.first().ok_or(SyncOnceError::NoServer)?;
    let identity = data.identity()?;
    data.secure()?;
    let store = RedbStore::open(data.store_path())
        .map_err(|e| SyncOnceError::Store { path: data.store_path().display().to_string(), source: e })?;
    let config = Config { role: Role::Device, ..Config::default() };
    let mut replica = Replica::open(store, identity.id().replica_id(), config, clock.0.clone())?;
    let own = TrustList::new([identity.id()]);
    replica.set_signer(Arc::new(lethe_transport::Ed25519AckSigner::new(&identity, own.clone())?));
    let cell = Mutex::new(replica);
    let any: SocketAddr = match first.addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let endpoint = Endpoint::bind(any, identity, own)?;
    let mut failures = Vec::new();
    // The members that refused this device, with their reasons: a refusal only if every server
    // refused; otherwise the next server is tried.
    let mut refused: Vec<(String, String)> = Vec::new();
    for server in servers {
        let started = std::time::Instant::now();
        let conn = match endpoint.connect(server.addr, server.id).await {
            Ok(conn) => conn,
            Err(e) => {
                if let lethe_transport::Error::Connection(c) = &e
                    && let Some(reason) = refusal(c)
                {
                    refused.push((server.id.to_string(), reason));
                } else if let Some(wrong) = wrong_server(server, &e) {
                    failures.push(wrong);
                } else {
                    failures.push(format!("{}: {e}", server.addr));
                }
                continue;
            }
        };
        match run_session(&cell, &conn, false, SESSION_STALL_TIMEOUT, progress).await {
            Ok(done) => {
                conn.close(CloseCode::Done, "synced");
                let s = &done.stats;
                let pending = crate::node::lock(&cell).pending_uploads()?;
                let report = SyncReport {
                    server: server.id.to_string(),
                    uploaded: s.uploaded,
                    admitted: s.admitted,
                    live_received: s.download.live_received,
                    tombstones_received: s.download.tombstones_received,
                    wire_bytes: done.wire_sent + done.wire_received,
                    round_trips: done.round_trips,
                    seconds: started.elapsed().as_secs_f64(),
                    pending_uploads: pending,
                };
                endpoint.close();
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
                return Ok(report);
            }
            Err(DeviceFailure::Refused(reason)) => refused.push((server.id.to_string(), reason)),
            Err(DeviceFailure::Other(failure)) => {
                conn.close(failure.close_code().unwrap_or(CloseCode::Done), &failure.to_string());
                failures.push(format!("{}: {failure}", server.addr));
            }
        }
    }
    if failures.is_empty()
        && let Some((server, reason)) = refused.first()
    {
        let mut reason = reason.clone();
        for (other, why) in &refused[1..] {
            use std::fmt::Write as _;
            let _ = write!(reason, "; member {other} refused it too: {why}");
        }
        return Err(SyncOnceError::Refused { server: server.clone(), reason });
    }
    failures
        .extend(refused.into_iter().map(|(server, reason)| format!("member {server} refused this device: {reason}")));
    Err(SyncOnceError::Unreachable(failures.join("; ")))
}
