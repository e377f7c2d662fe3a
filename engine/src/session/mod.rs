//! One sync session between two replicas, as a sans-IO state machine: frames in
//! ([`Session::handle`]), frames out ([`Session::poll_transmit`]). No sockets, no clock of its
//! own, no tasks; the transport carries the frames, the simulation shuffles them.
//!
//! Both sides send a [`Hello`] and then play two roles at once: **source** (sending what the
//! other lacks) and **sink** (receiving). Each source picks its mode from the sink's handshake
//! (docs/design.md §3):
//!
//! | sink's handshake | mode |
//! | --- | --- |
//! | either side asked for anti-entropy | **reconcile**, whatever the vectors say |
//! | vector covers the source's handshake vector | nothing (the sink knows it too, by the same rule) |
//! | empty vector, no values | **bootstrap**: tombstone records, then live entries in key order, chunked |
//! | a member whose vector covers the source's stable frontier | **delta**: entries beyond the sink's vector |
//! | anything else (evicted, unknown, interrupted) | **reconcile**: tombstone records beyond the sink's vector, then range fingerprints |
//!
//! Every mode ends with `Done(v)`: the source's vector when the flow began. The sink merges it
//! (a complete transfer) and answers `Ack` with its new vector, which the source records as that
//! member's acknowledgement (feeding the stable frontier). Tombstone records go first, read when
//! the flow begins, so a tombstone the source collects mid-session has already been sent.
//!
//! Invariants kept here: a frame that fails to decode, or a message that does not fit the
//! session's state, ends the session with a [`SyncError`] before anything is applied; a sink
//! merges the source's vector only on `Done`, after every entry of the flow; entries travel as
//! partial transfers, which the replica applies whole-batch-or-nothing.

pub mod batch;
pub mod message;
pub mod reconcile;
mod stream;

use crate::entry::{Entry, Payload};
use crate::error::Error;
use crate::fingerprint::ItemId;
use crate::hlc::{Hlc, Stamp};
use crate::ids::{Dot, ReplicaId};
use crate::limits::{ENTRIES_PER_FRAME_MAX, VECTOR_COMPONENTS_MAX};
use crate::replica::Replica;
use crate::storage::{KeyRange, Storage};
use crate::vector::VersionVector;
pub use message::{FRAME_BYTES_MAX, Hello, KeyBounds, Message, PROTOCOL_VERSION};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use stream::{EntryStream, HeldSnapshot};

/// Entries per `Entries` message are cut at about this many bytes.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {theirs}, this replica speaks {ours}; upgrade the older side")]
    Version {
        /// Ours.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
    /// The peer is not the replica this session was opened for (or is this replica itself).
    #[error("peer says it is replica {actual}, but this session is for {expected}")]
    WrongPeer {
        /// Who was expected.
        expected: String,
        /// Who answered.
        actual: ReplicaId,
    },
    /// A frame was longer than [`FRAME_BYTES_MAX`].
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame did not decode, or a message broke the protocol's rules.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A message could not be encoded (a bug: every message type encodes).
    #[error("could not encode a message: {0}")]
    Encode(String),
    /// A message arrived that the session's state does not allow.
    #[error("unexpected {got} while {state}; the peer is broken or out of step")]
    Unexpected {
        /// The message.
        got: &'static str,
        /// What the session was doing.
        state: &'static str,
    },
    /// A device that is not enrolled here (never, or removed) opened a device session.
    #[error(
        "device {0} is not enrolled at this member (never enrolled, or removed): enrol it with \
         `device add` at a member, or stop syncing it"
    )]
    NotEnrolled(ReplicaId),
    /// A reply named an item this side never offered.
    #[error("reply asks for item {0:?}, which was not offered")]
    UnknownItem(ItemId),
    /// The replica refused the data or its store failed.
    #[error(transparent)]
    Engine(#[from] Error),
}

/// How a source sent its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The sink had everything.
    Nothing,
    /// Entries beyond the sink's vector.
    Delta,
    /// Live entries in key order (plus uncollected tombstone records) to an empty sink.
    Bootstrap,
    /// Range fingerprints.
    Reconcile,
}

/// What a session cost, from this side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// How this side sent its data (once decided).
    pub mode: Option<Mode>,
    /// Frames sent.
    pub messages_sent: u64,
    /// Bytes sent (the CBOR frames).
    pub bytes_sent: u64,
    /// Frames received.
    pub messages_received: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Live values sent.
    pub live_sent: u64,
    /// Tombstones and expired records sent.
    pub tombstones_sent: u64,
    /// Live values received.
    pub live_received: u64,
    /// Tombstones and expired records received.
    pub tombstones_received: u64,
    /// Own entries dropped because the peer's vector showed them dead.
    pub dropped: u64,
    /// On the side that received the session's sketch: whether it decoded (else the session
    /// fell back to range fingerprints).
    pub sketch_decoded: Option<bool>,
    /// Whether either side asked for anti-entropy (known once the peer's handshake arrived).
    pub anti_entropy: bool,
    /// Entries held back from the peer because it would refuse their stamps for drift: this
    /// side's flow ends as a partial transfer (`Partial`) when more than zero.
    pub held_back: u64,
    /// Whether the peer's flow ended as a partial transfer (it held entries back).
    pub partial_received: bool,
    /// On a member's download to a device: nothing was sent because the device's horizon is
    /// not covered here (it can take nothing from this member yet; `Mode::Nothing` otherwise
    /// means the device had everything).
    pub withheld: bool,
}

#[derive(Debug)]
enum Source {
    AwaitHello,
    Nothing,
    /// Entries still to be read, chunk by chunk, and sent: a bootstrap's, or what a
    /// reconciliation reply asked for. Then `then` (the next `Ranges` and the state awaiting its
    /// reply), or `Done`.
    Streaming {
        v0: VersionVector,
        stream: EntryStream,
        then: Option<Box<(Message, Source)>>,
    },
    /// Reconcile: waiting for the sink's reply to the last `Ranges`. `sink_vector` is the sink's
    /// handshake vector: an entry it covers is one the sink has seen, so if it lacks it, it is
    /// dead there and is not sent.
    /// `offered` are the ids of the items listed in the last `Ranges` (a reply may name each
    /// once) and `ranges` its parts (a reply may ask to split or send each once); after a
    /// sketch, no items and the whole key range.
    Reconciling {
        v0: VersionVector,
        sink_vector: VersionVector,
        offered: BTreeMap<ItemId, Vec<u8>>,
        ranges: BTreeSet<KeyBounds>,
    },
    /// Anti-entropy with few differences expected, and the peer sends the session's one sketch:
    /// this side's flow starts from what decoding it finds. `sink_vector` as above.
    AwaitSketch {
        sink_vector: VersionVector,
    },
    AwaitAck,
    Finished,
}

#[derive(Debug)]
enum Sink {
    AwaitHello,
    Nothing,
    /// Receiving a flow. Items the source's vector shows dead are dropped only at `Done`, once
    /// every entry of the flow is in: dropping earlier would leave the key empty while its newer
    /// version is still on the way, and let an older one from elsewhere in meanwhile.
    Receiving {
        source_vector: VersionVector,
        /// By key: a peer that shows the same item dead many times costs one record.
        dead: BTreeMap<Vec<u8>, Dot>,
        /// The source bootstraps this replica: entries go in by the bulk path.
        bulk: bool,
    },
    Finished,
}

/// One sync session with one peer. See the module docs.
#[derive(Debug)]
pub struct Session {
    hello_vector: VersionVector,
    hello_values: u64,
    anti_entropy: bool,
    expected_peer: Option<ReplicaId>,
    peer: Option<ReplicaId>,
    outbox: VecDeque<Message>,
    source: Source,
    sink: Sink,
    stats: SessionStats,
    /// [`Replica::restore_epoch`] when the session opened.
    restore_epoch: u64,
    /// The latest wall time the peer accepts a stamp at (its handshake's wall time plus the
    /// drift), once its handshake arrived.
    peer_limit_ms: Option<u64>,
    /// What was left out because the peer would refuse it (`replica/clock.rs`).
    held: crate::replica::HeldBack,
    /// The ranges the next `Ranges` from the peer must describe, in order: the whole key space
    /// until this side asks for others.
    ranges_asked: Vec<KeyBounds>,
    /// Whether this is the download of a device session, and on which side
    /// (`device/session.rs`): it changes what an acknowledgement is, and nothing else.
    download: Option<Download>,
    /// Whether the peer's device records (`Records`, `last`) are still to come.
    records_pending: bool,
    /// Whether this side's device records wait for the peer's handshake.
    records_deferred: bool,
    /// `Records` messages received (at most [`crate::limits::RECORDS_MESSAGES_PER_SESSION_MAX`]).
    records_received: usize,
    /// Signed claims the peer offered (handshake members, device acknowledgements, cursor
    /// claims; at most [`crate::limits::SIGNED_CLAIMS_PER_SESSION_MAX`]).
    claims_offered: usize,
}

/// The side of a device session's download a [`Session`] plays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Download {
    /// On the member: the source. The device's `Ack` is its acknowledgement as a device.
    ToDevice,
    /// On the device: the sink. Its `Ack` is capped at its oldest queued write's base, and a
    /// bootstrap's vector becomes its horizon.
    OnDevice {
        /// The flow is a fresh bootstrap.
        fresh: bool,
        /// What the member's answers to the uploads settle once the download is complete.
        settle: crate::device::Settle,
        /// Whether entries this device's vector covers are taken by LWW alone: only from a
        /// member not behind it (its vector and `collected` cover the device's), so a lagging
        /// or restored member cannot bring back what the device collected.
        take_covered: bool,
        /// The member's own seq it signed in its handshake (`SeqProof`): the vector its
        /// `Done` brings is capped there for its own component, so this device never shows
        /// more of the member's writes than the member signed (a restored member believes it).
        member_signed: Option<crate::ids::Seq>,
    },
}

impl Session {
    /// Opens a session on `replica`, optionally only with `expected_peer`. Purges expired values
    /// first (so fingerprints leave them out) and queues the handshake.
    pub fn new<S: Storage>(replica: &mut Replica<S>, expected_peer: Option<ReplicaId>) -> Result<Session, SyncError> {
        Session::open(replica, expected_peer, false)
    }

    /// Opens an anti-entropy session: both sides reconcile by fingerprints even when their
    /// vectors are equal. Run it periodically (docs/design.md §3).
    pub fn anti_entropy<S: Storage>(
        replica: &mut Replica<S>,
        expected_peer: Option<ReplicaId>,
    ) -> Result<Session, SyncError> {
        Session::open(replica, expected_peer, true)
    }

    fn open<S: Storage>(
        replica: &mut Replica<S>,
        expected_peer: Option<ReplicaId>,
        anti_entropy: bool,
    ) -> Result<Session, SyncError> {
        replica.purge_expired()?;
        let hello = Hello {
            version: PROTOCOL_VERSION,
            replica: replica.id(),
            vector: replica.vector().clone(),
            members: replica.gossip(),
            values: replica.index.live.len(),
            anti_entropy,
            wall_ms: replica.now_ms(),
            records_seen: expected_peer.map_or(0, |p| replica.records_seen(p)),
            lost: replica.lost_gossip(),
        };
        let records_unchanged = expected_peer.is_some_and(|p| replica.devices().clock() <= replica.records_acked(p));
        Ok(Session {
            download: None,
            records_pending: true,
            restore_epoch: replica.restore_epoch(),
            peer_limit_ms: None,
            held: crate::replica::HeldBack::default(),
            ranges_asked: vec![KeyBounds(None, None)],
            hello_vector: hello.vector.clone(),
            hello_values: hello.values,
            anti_entropy,
            expected_peer,
            peer: None,
            // Device records: with nothing changed since the peer last said it merged (its
            // previous handshake), an empty `Records` goes with the handshake, so an idle
            // session stays one flight each way; otherwise they go once the peer's handshake
            // says how far it merged (`on_hello`).
            outbox: std::iter::once(Message::Hello(hello))
                .chain(records_unchanged.then(|| Message::Records(replica.devices().clock(), true, Vec::new())))
                .collect(),
            records_deferred: !records_unchanged,
            records_received: 0,
            claims_offered: 0,
            source: Source::AwaitHello,
            sink: Sink::AwaitHello,
            stats: SessionStats::default(),
        })
    }

    /// The download of a device session, on the member (`device/session.rs`): no handshake
    /// of its own (the device session's took its place), a source flow chosen for the device's
    /// vector, nothing received but the device's replies and acknowledgement.
    ///
    /// It starts once the device's uploads are admitted, so its vector covers them, and the
    /// writes admitted in this session (`admitted`) are not sent back. The current entry of
    /// every key this session answered `Refused` or `Known` (`unheld`) goes in a delta whatever
    /// the device's vector covers: the device dropped its write there, and may lack what this
    /// member holds for the key though its vector covers it (a bootstrap sends every live
    /// entry, a reconciliation what the device lacks, anyway).
    ///
    /// | device | flow |
    /// | --- | --- |
    /// | uploaded nothing, asked for no anti-entropy and its vector covers this member's, or has a horizon this member's handshake vector did not cover | nothing |
    /// | fresh (empty, holds nothing) | **bootstrap, live entries only**: no dead record at all (I12) |
    /// | vector covers `collected` here, no anti-entropy granted (asked for within `Config::device_anti_entropy_min_ms` of the last one) | **delta** |
    /// | anything else (anti-entropy, back after its lease, restored) | **reconcile** |
    pub(crate) fn to_device<S: Storage>(
        replica: &mut Replica<S>,
        hello: &crate::device::DeviceHello,
        hello_vector: &VersionVector,
        admitted: Option<&BTreeSet<Dot>>,
        unheld: &BTreeSet<Vec<u8>>,
        granted: bool,
    ) -> Result<Session, SyncError> {
        let crate::device::DeviceHello(_, device, vector, _, horizon, fresh, _, peer_wall_ms, anti_entropy, ..) = hello;
        let (device, fresh, horizon) = (*device, *fresh, horizon.as_ref());
        replica.purge_expired()?;
        let mut s = Session::open(replica, Some(device), false)?;
        s.outbox.clear();
        s.records_pending = false;
        s.records_deferred = false;
        s.download = Some(Download::ToDevice);
        s.peer = Some(device);
        s.sink = Sink::Nothing;
        let slack_ms = replica.config().max_drift_ms + replica.config().peer_clock_slack_ms;
        s.peer_limit_ms = Some(peer_wall_ms.saturating_add(slack_ms));
        let v0 = replica.vector().clone();
        // Asked for, the device expects a download even if it is not granted: then a delta.
        let asked = *anti_entropy;
        let anti_entropy = asked && granted;
        let idle = admitted.is_none() && !asked && unheld.is_empty() && vector.dominates(&v0);
        let withheld = horizon.is_some_and(|h| !hello_vector.dominates(h));
        if idle || withheld {
            s.source = Source::Nothing;
            s.stats.mode = Some(Mode::Nothing);
            s.stats.withheld = withheld && !idle;
        } else if fresh {
            s.stats.mode = Some(Mode::Bootstrap);
            let snapshot = HeldSnapshot(Box::new(replica.store().snapshot().map_err(Error::from)?));
            s.source = Source::Streaming { v0, stream: EntryStream::bootstrap(snapshot), then: None };
        } else if !anti_entropy && vector.dominates(replica.membership().collected()) {
            s.stats.mode = Some(Mode::Delta);
            let snapshot = replica.store().snapshot().map_err(Error::from)?;
            let mut keys = replica.delta_keys(&snapshot, vector)?;
            if let Some(admitted) = admitted {
                keys.retain(|k| replica.index.dot_of(k).is_none_or(|d| !admitted.contains(&d)));
            }
            keys.retain(|k| !unheld.contains(k));
            let stream = EntryStream::reply(HeldSnapshot(Box::new(snapshot)), keys, Vec::new(), vector.clone())
                .with_forced(unheld.iter().cloned().collect());
            s.source = Source::Streaming { v0, stream, then: None };
        } else {
            s.stats.mode = Some(Mode::Reconcile);
            s.start_ranges(replica, vector.clone())?;
        }
        Ok(s)
    }

    /// The download of a device session, on the device: the sink of what `member` (whose
    /// handshake vector is `vector`) sends, or nothing when `receive` is false (the member's
    /// rule in [`Session::to_device`], seen from here).
    pub(crate) fn on_device<S: Storage>(
        replica: &mut Replica<S>,
        member: ReplicaId,
        vector: &VersionVector,
        receive: bool,
        fresh: bool,
        take_covered: bool,
        member_signed: Option<crate::ids::Seq>,
    ) -> Result<Session, SyncError> {
        let mut s = Session::open(replica, Some(member), false)?;
        s.outbox.clear();
        s.records_pending = false;
        s.records_deferred = false;
        s.download =
            Some(Download::OnDevice { fresh, settle: crate::device::Settle::default(), take_covered, member_signed });
        s.peer = Some(member);
        s.source = Source::Nothing;
        s.sink = if receive {
            Sink::Receiving { source_vector: vector.clone(), dead: BTreeMap::new(), bulk: fresh }
        } else {
            Sink::Nothing
        };
        Ok(s)
    }

    /// On a device's download: raises the member's signed seq its `Done` is capped at.
    pub(crate) fn raise_member_signed(&mut self, seq: crate::ids::Seq) {
        if let Some(Download::OnDevice { member_signed, .. }) = &mut self.download {
            *member_signed = Some(member_signed.map_or(seq, |s| s.max(seq)));
        }
    }

    /// On a device's download: what the member's answers settle at its end.
    pub(crate) fn settle_mut(&mut self) -> Option<&mut crate::device::Settle> {
        match &mut self.download {
            Some(Download::OnDevice { settle, .. }) => Some(settle),
            _ => None,
        }
    }

    /// The peer, once its handshake arrived.
    #[must_use]
    pub fn peer(&self) -> Option<ReplicaId> {
        self.peer
    }

    /// What the session has cost so far.
    #[must_use]
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Whether both flows are complete and nothing is left to send.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.outbox.is_empty()
            && !self.records_pending
            && matches!(self.source, Source::Nothing | Source::Finished)
            && matches!(self.sink, Sink::Nothing | Sink::Finished)
    }

    /// The next frame to send, if any. Bootstrap chunks are read from the replica here, one at a
    /// time, so a large bootstrap never sits in memory whole.
    pub fn poll_transmit<S: Storage>(&mut self, replica: &Replica<S>) -> Result<Option<Vec<u8>>, SyncError> {
        if self.outbox.is_empty() {
            self.stream_next_chunk(replica)?;
        }
        let Some(msg) = self.outbox.pop_front() else { return Ok(None) };
        let frame = msg.encode()?;
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += frame.len() as u64;
        Ok(Some(frame))
    }

    /// Handles one frame from the peer. An error ends the session; nothing of the failing
    /// message was applied.
    pub fn handle<S: Storage>(&mut self, replica: &mut Replica<S>, frame: &[u8]) -> Result<(), SyncError> {
        let msg = Message::decode(frame)?;
        self.handle_message(replica, msg, frame.len())
    }

    /// [`Session::handle`] for a frame already decoded with [`Message::decode`] (`frame_len`
    /// bytes long): a transport can decode the next frame while the replica applies this one.
    pub fn handle_message<S: Storage>(
        &mut self,
        replica: &mut Replica<S>,
        msg: Message,
        frame_len: usize,
    ) -> Result<(), SyncError> {
        self.stats.messages_received += 1;
        self.stats.bytes_received += frame_len as u64;
        let msg_name = msg.name();
        match msg {
            Message::Hello(hello) => self.on_hello(replica, hello),
            Message::Entries(entries) => {
                let bulk = matches!(self.sink, Sink::Receiving { bulk: true, .. });
                self.receiving("Entries")?;
                let (live, dead) = count_kinds(&entries);
                if bulk {
                    replica.apply_bootstrap_chunk(entries)?;
                } else if let Some(Download::OnDevice { take_covered: true, .. }) = &self.download {
                    replica.apply_from_member(entries)?;
                } else {
                    replica.apply_remote(entries, None)?;
                }
                self.stats.live_received += live;
                self.stats.tombstones_received += dead;
                Ok(())
            }
            Message::Ranges(groups) => {
                self.receiving("Ranges")?;
                // Only the ranges this side asked for, each once: the whole key space first, then
                // what its last `Reply` asked to split. Anything else would make it walk its index
                // once per group a peer cares to send (docs/design.md §9).
                let asked = std::mem::take(&mut self.ranges_asked);
                let answers = groups.len() == asked.len()
                    && groups.iter().zip(&asked).all(|(g, a)| g.0 == a.0 && g.1.last().map(|p| &p.0) == Some(&a.1));
                if !answers {
                    return Err(SyncError::Malformed(format!(
                        "Ranges with {} groups that are not the {} ranges this side asked for",
                        groups.len(),
                        asked.len()
                    )));
                }
                let Sink::Receiving { source_vector, dead, .. } = &mut self.sink else { return Ok(()) };
                let cmp = reconcile::compare(&replica.index.live, &groups, source_vector)?;
                dead.extend(cmp.dead);
                self.ranges_asked.clone_from(&cmp.split);
                self.outbox.push_back(Message::Reply {
                    split: cmp.split,
                    send: cmp.send,
                    want: cmp.want,
                    keys: Vec::new(),
                });
                Ok(())
            }
            Message::Sketch(sketch) => self.on_sketch(replica, &sketch),
            Message::Done(vector, clock) => {
                self.receiving("Done")?;
                check_vector_growth(replica.vector(), &vector)?;
                let Sink::Receiving { dead, .. } = std::mem::replace(&mut self.sink, Sink::Finished) else {
                    return Ok(());
                };
                // Drop first: a crash before the merge leaves the vector behind, which is safe.
                let dead: Vec<_> = dead.into_iter().collect();
                self.stats.dropped += replica.drop_dead(&dead)? as u64;
                // A recovery from a restore that began since this session opened: the source sent
                // against the handshake's old vector, so this transfer is not complete.
                let complete = replica.restore_epoch() == self.restore_epoch;
                let vector = match (&self.download, self.peer) {
                    (Some(Download::OnDevice { member_signed: Some(max), .. }), Some(member)) => {
                        crate::device::capped_at(&vector, member, *max)
                    }
                    _ => vector,
                };
                replica.apply_remote(Vec::new(), complete.then_some((&vector, clock)))?;
                if complete
                    && self.download.is_none()
                    && let Some(peer) = self.peer
                {
                    replica.note_recovery_transfer(peer)?;
                }
                let ack = match &self.download {
                    Some(Download::OnDevice { fresh, settle, take_covered, .. }) => {
                        if complete {
                            replica.settle_download(settle, *take_covered)?;
                            if *fresh {
                                replica.set_horizon(vector)?;
                            }
                        }
                        replica.device_ack()?
                    }
                    _ => replica.vector().clone(),
                };
                self.outbox.push_back(replica.ack_frame(ack));
                Ok(())
            }
            Message::Partial => {
                self.receiving("Partial")?;
                self.stats.partial_received = true;
                self.sink = Sink::Finished;
                let ack = if self.download.is_some() { replica.device_ack()? } else { replica.vector().clone() };
                self.outbox.push_back(replica.ack_frame(ack));
                Ok(())
            }
            Message::Reply { split, send, want, keys } => self.on_reply(replica, split, send, want, keys),
            Message::Push(_) => Err(SyncError::Unexpected { got: "Push", state: "in a session" }),
            Message::Records(upto, last, records) => {
                if !self.records_pending {
                    return Err(SyncError::Unexpected { got: "Records", state: "after the peer's last records" });
                }
                // Bounded before anything of the frame is merged (docs/design.md §9).
                self.records_received += 1;
                if self.records_received > crate::limits::RECORDS_MESSAGES_PER_SESSION_MAX {
                    return Err(SyncError::Malformed(format!(
                        "more than RECORDS_MESSAGES_PER_SESSION_MAX ({}) Records messages in one session",
                        crate::limits::RECORDS_MESSAGES_PER_SESSION_MAX
                    )));
                }
                let claims: usize = records.iter().map(|r| usize::from(r.3.is_some()) + r.4.len()).sum();
                self.claims_offered = self.claims_offered.saturating_add(claims);
                if self.claims_offered > crate::limits::SIGNED_CLAIMS_PER_SESSION_MAX {
                    return Err(SyncError::Malformed(format!(
                        "more than SIGNED_CLAIMS_PER_SESSION_MAX ({}) signed claims offered in one session",
                        crate::limits::SIGNED_CLAIMS_PER_SESSION_MAX
                    )));
                }
                if let Some(peer) = self.peer {
                    replica.merge_device_records(peer, upto, records)?;
                }
                self.records_pending = !last;
                Ok(())
            }
            Message::DeviceHello(_)
            | Message::MemberHello(_)
            | Message::Upload { .. }
            | Message::Admitted(_)
            | Message::MemberProof(_) => {
                Err(SyncError::Unexpected { got: msg_name, state: "in a member session's flow" })
            }
            Message::Ack(vector, proof) => {
                if !matches!(self.source, Source::AwaitAck) {
                    return Err(SyncError::Unexpected { got: "Ack", state: self.source_state() });
                }
                if let Some(peer) = self.peer {
                    if self.download == Some(Download::ToDevice) {
                        // Checked and capped as the device's handshake was: a device is no
                        // witness of a restore, and acknowledges nothing no member holds.
                        // Components of replicas it knows no writes of left out (R5-9), and
                        // then the signature, which covers what was sent, not relayed.
                        crate::device::check_device_vector(replica, peer, &vector)?;
                        let known = crate::device::known_names(replica, &vector);
                        let ack = crate::device::cap_device_ack(replica, &known);
                        replica.acknowledge_device(peer, &ack);
                        let proof = proof.filter(|_| known == vector);
                        replica.note_device_signed(peer, known, proof.as_ref());
                    } else {
                        replica.notice_own_seq(vector.get(replica.id()))?;
                        replica.acknowledge_signed(peer, &vector, proof.as_ref());
                    }
                }
                self.source = Source::Finished;
                Ok(())
            }
        }
    }

    fn receiving(&self, got: &'static str) -> Result<(), SyncError> {
        match &self.sink {
            Sink::Receiving { .. } => Ok(()),
            Sink::AwaitHello => Err(SyncError::Unexpected { got, state: "awaiting the handshake" }),
            Sink::Nothing => Err(SyncError::Unexpected { got, state: "expecting nothing (peer had nothing new)" }),
            Sink::Finished => Err(SyncError::Unexpected { got, state: "finished receiving" }),
        }
    }

    fn source_state(&self) -> &'static str {
        match self.source {
            Source::AwaitHello => "awaiting the handshake",
            Source::Nothing => "sending nothing",
            Source::Streaming { .. } => "streaming entries",
            Source::Reconciling { .. } => "awaiting a reconciliation reply",
            Source::AwaitSketch { .. } => "awaiting the peer's sketch",
            Source::AwaitAck => "awaiting the acknowledgement",
            Source::Finished => "finished sending",
        }
    }

    fn on_hello<S: Storage>(&mut self, replica: &mut Replica<S>, hello: Hello) -> Result<(), SyncError> {
        if !matches!(self.source, Source::AwaitHello) {
            return Err(SyncError::Unexpected { got: "Hello", state: self.source_state() });
        }
        if hello.version != PROTOCOL_VERSION {
            return Err(SyncError::Version { ours: PROTOCOL_VERSION, theirs: hello.version });
        }
        if hello.replica == replica.id() || self.expected_peer.is_some_and(|p| p != hello.replica) {
            let expected = self.expected_peer.map_or_else(|| "any other replica".to_string(), |p| p.to_string());
            return Err(SyncError::WrongPeer { expected, actual: hello.replica });
        }
        let peer = hello.replica;
        self.peer = Some(peer);
        replica.note_peer_wall(peer, hello.wall_ms);
        let slack_ms = replica.config().max_drift_ms + replica.config().peer_clock_slack_ms;
        self.peer_limit_ms = Some(hello.wall_ms.saturating_add(slack_ms));
        // Before the peer's vector counts as an acknowledgement: the restored copy's own record
        // of what members acknowledged decides what is re-issued (`replica/restore.rs`).
        replica.notice_own_seqs(&hello.vector, &hello.members)?;
        replica.note_recovery_heard(peer)?;
        replica.merge_lost_gossip(peer, &hello.lost)?;
        // The handshake vector is durable state of the peer: an acknowledgement.
        replica.acknowledge(peer, &hello.vector);
        self.claims_offered = self.claims_offered.saturating_add(hello.members.len());
        replica.merge_gossip(peer, &hello.members);
        // Beyond this replica's records clock: it is an older copy, and jumps past (`enrol.rs`).
        replica.note_records_claimed(peer, hello.records_seen)?;
        replica.note_records_acked(peer, hello.records_seen);
        if std::mem::take(&mut self.records_deferred) {
            self.outbox.extend(replica.device_records_for(Some(peer), hello.records_seen));
        }

        let anti_entropy = self.anti_entropy || hello.anti_entropy;
        self.stats.anti_entropy = anti_entropy;
        self.sink = if self.hello_vector.dominates(&hello.vector) && !anti_entropy {
            Sink::Nothing
        } else {
            // The source's rule for bootstrapping this replica, seen from here.
            let bulk = self.hello_vector.is_empty() && self.hello_values == 0 && !anti_entropy;
            Sink::Receiving { source_vector: hello.vector.clone(), dead: BTreeMap::new(), bulk }
        };
        if hello.vector.dominates(&self.hello_vector) && !anti_entropy {
            self.source = Source::Nothing;
            self.stats.mode = Some(Mode::Nothing);
            return Ok(());
        }
        let v0 = replica.vector().clone();
        if hello.vector.is_empty() && hello.values == 0 && !anti_entropy {
            self.stats.mode = Some(Mode::Bootstrap);
            self.queue_entries(replica.dead_entries_beyond(&hello.vector)?);
            let snapshot = HeldSnapshot(Box::new(replica.store().snapshot().map_err(Error::from)?));
            self.source = Source::Streaming { v0, stream: EntryStream::bootstrap(snapshot), then: None };
        } else if !anti_entropy && replica.membership().contains(peer) && hello.vector.dominates(&replica.frontier()) {
            self.stats.mode = Some(Mode::Delta);
            // Keys now, their entries chunk by chunk as they go (a member back from weeks away
            // may lack much).
            let snapshot = replica.store().snapshot().map_err(Error::from)?;
            let keys = replica.delta_keys(&snapshot, &hello.vector)?;
            let stream = EntryStream::reply(HeldSnapshot(Box::new(snapshot)), keys, Vec::new(), hello.vector);
            self.source = Source::Streaming { v0, stream, then: None };
        } else {
            self.stats.mode = Some(Mode::Reconcile);
            // Anti-entropy expecting few differences: one side sends a sketch, by replica id (both
            // sides reach the same size and the same choice from the two handshakes).
            let expected = reconcile::expected_difference(&self.hello_vector, &hello.vector);
            match crate::sketch::size_for(expected).filter(|_| anti_entropy) {
                Some(size) if replica.id() < peer => {
                    self.queue_entries(replica.dead_entries_beyond(&hello.vector)?);
                    self.outbox.push_back(Message::Sketch(reconcile::sketch_of(&replica.index.live, size)));
                    self.source = Source::Reconciling {
                        v0,
                        sink_vector: hello.vector,
                        offered: BTreeMap::new(),
                        ranges: BTreeSet::from([KeyBounds(None, None)]),
                    };
                }
                Some(_) => self.source = Source::AwaitSketch { sink_vector: hello.vector },
                None => self.start_ranges(replica, hello.vector)?,
            }
        }
        Ok(())
    }

    /// Starts a range reconciliation flow: tombstone records beyond the sink's vector, then the
    /// whole key range described by fingerprints.
    fn start_ranges<S: Storage>(&mut self, replica: &Replica<S>, sink_vector: VersionVector) -> Result<(), SyncError> {
        let v0 = replica.vector().clone();
        self.queue_entries(replica.dead_entries_beyond(&sink_vector)?);
        let mut offered = BTreeMap::new();
        let group = reconcile::describe(&replica.index.live, &KeyBounds(None, None), &mut offered);
        let ranges = reconcile::part_bounds(std::slice::from_ref(&group));
        self.outbox.push_back(Message::Ranges(vec![group]));
        self.source = Source::Reconciling { v0, sink_vector, offered, ranges };
        Ok(())
    }

    /// Sink side of a sketch, which also starts this side's flow: the keys this side lacks go
    /// back in a `Reply`, and the items the peer lacks go to it, with tombstone records, then
    /// `Done`. When the sketch does not decode, both flows fall back to ranges.
    fn on_sketch<S: Storage>(
        &mut self,
        replica: &mut Replica<S>,
        sketch: &message::SketchMsg,
    ) -> Result<(), SyncError> {
        self.receiving("Sketch")?;
        let Source::AwaitSketch { sink_vector } = &self.source else {
            return Err(SyncError::Unexpected { got: "Sketch", state: self.source_state() });
        };
        let sink_vector = sink_vector.clone();
        let Sink::Receiving { source_vector, dead, .. } = &mut self.sink else { return Ok(()) };
        let found = reconcile::compare_sketch(&replica.index.live, sketch, source_vector)?;
        self.stats.sketch_decoded = Some(found.is_some());
        let Some(found) = found else {
            let whole = vec![KeyBounds(None, None)];
            self.ranges_asked.clone_from(&whole);
            self.outbox.push_back(Message::Reply {
                split: whole,
                send: Vec::new(),
                want: Vec::new(),
                keys: Vec::new(),
            });
            return self.start_ranges(replica, sink_vector);
        };
        dead.extend(found.dead);
        self.ranges_asked.clear();
        let keys = found.want.into_iter().map(|(key, s)| message::WantedItem(key, s.hlc.0, s.replica.0)).collect();
        self.outbox.push_back(Message::Reply { split: Vec::new(), send: Vec::new(), want: Vec::new(), keys });
        let v0 = replica.vector().clone();
        self.queue_entries(replica.dead_entries_beyond(&sink_vector)?);
        let snapshot = HeldSnapshot(Box::new(replica.store().snapshot().map_err(Error::from)?));
        let stream = EntryStream::reply(snapshot, found.send, Vec::new(), sink_vector);
        self.source = Source::Streaming { v0, stream, then: None };
        Ok(())
    }

    fn on_reply<S: Storage>(
        &mut self,
        replica: &Replica<S>,
        split: Vec<KeyBounds>,
        send: Vec<KeyBounds>,
        want: Vec<ItemId>,
        keys: Vec<message::WantedItem>,
    ) -> Result<(), SyncError> {
        let Source::Reconciling { offered, sink_vector, ranges, .. } = &self.source else {
            return Err(SyncError::Unexpected { got: "Reply", state: self.source_state() });
        };
        // What a reply may name (docs/design.md §9): each part of the last `Ranges` once, to split or
        // to send; items listed there, each once (a repeated id is answered once: two listed
        // items may share an id); sketch items, each once. Checked before anything is read.
        let mut named = BTreeSet::new();
        for bounds in split.iter().chain(&send) {
            if !ranges.contains(bounds) {
                return Err(SyncError::Malformed(format!("reply names range {bounds:?}, which was not offered")));
            }
            if !named.insert(bounds) {
                return Err(SyncError::Malformed(format!("reply names range {bounds:?} twice")));
            }
        }
        if keys.len() > reconcile::SKETCH_KEYS_MAX {
            return Err(SyncError::Malformed(format!(
                "reply names {} sketch items, more than a sketch can yield ({})",
                keys.len(),
                reconcile::SKETCH_KEYS_MAX
            )));
        }
        let mut keys_named = BTreeSet::new();
        if let Some(message::WantedItem(key, ..)) = keys.iter().find(|k| !keys_named.insert(&k.0)) {
            return Err(SyncError::Malformed(format!("reply names sketch item {key:?} twice")));
        }
        let want: BTreeSet<ItemId> = want.into_iter().collect();
        let mut wanted = Vec::with_capacity(want.len());
        for id in &want {
            wanted.push(offered.get(id).ok_or(SyncError::UnknownItem(*id))?.clone());
        }
        // A sketch item the sink lacks though its vector covers it, and that this side still
        // holds as it was: the sink saw it and dropped it, so it is dead; it goes at the sink's
        // `Done`, like the items a range comparison shows dead.
        let mut dead_here = Vec::new();
        let to_device = self.download == Some(Download::ToDevice);
        for message::WantedItem(key, hlc, writer) in keys {
            match replica.index.live.get(&key) {
                Some(item) if sink_vector.covers(item.dot()) && !to_device => {
                    if item.stamp == (Stamp { hlc: Hlc(hlc), replica: ReplicaId(writer) }) {
                        dead_here.push((key, item.dot()));
                    }
                }
                _ => wanted.push(key),
            }
        }
        if let Sink::Receiving { dead, .. } = &mut self.sink {
            dead.extend(dead_here);
        }
        // What was asked for is read chunk by chunk as it goes (`stream.rs`), not all at once.
        let send = send
            .into_iter()
            .map(|KeyBounds(lo, hi)| KeyRange {
                start: lo.map_or(Bound::Unbounded, Bound::Included),
                end: hi.map_or(Bound::Unbounded, Bound::Excluded),
            })
            .collect();
        let snapshot = HeldSnapshot(Box::new(replica.store().snapshot().map_err(Error::from)?));
        let Source::Reconciling { v0, sink_vector, .. } = std::mem::replace(&mut self.source, Source::AwaitAck) else {
            return Ok(());
        };
        // To a device, what it lacks goes even if its vector covers it: a device cannot make a
        // member drop anything (I10), so it converges to what the member holds, such as a write
        // that won here by the documented exception after the device had collected the delete.
        let seen = if to_device { VersionVector::new() } else { sink_vector.clone() };
        let stream = EntryStream::reply(snapshot, wanted, send, seen);
        let then = (!split.is_empty()).then(|| {
            let mut offered = BTreeMap::new();
            let groups: Vec<_> =
                split.iter().map(|b| reconcile::describe(&replica.index.live, b, &mut offered)).collect();
            let ranges = reconcile::part_bounds(&groups);
            let next = Source::Reconciling { v0: v0.clone(), sink_vector, offered, ranges };
            Box::new((Message::Ranges(groups), next))
        });
        self.source = Source::Streaming { v0, stream, then };
        Ok(())
    }

    /// Queues `entries` as `Entries` messages of about [`CHUNK_BYTES`] each.
    /// Entries the peer would refuse for drift are held back (see [`Session::done`]).
    fn queue_entries(&mut self, entries: Vec<Entry>) {
        let entries = self.held.filter(entries, self.peer_limit_ms);
        self.stats.held_back = self.held.count();
        let (live, dead) = count_kinds(&entries);
        self.stats.live_sent += live;
        self.stats.tombstones_sent += dead;
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for e in entries {
            bytes += approx_bytes(&e);
            chunk.push(e);
            if chunk_full(bytes, chunk.len()) {
                self.outbox.push_back(Message::Entries(std::mem::take(&mut chunk)));
                bytes = 0;
            }
        }
        if !chunk.is_empty() {
            self.outbox.push_back(Message::Entries(chunk));
        }
    }

    /// The message that ends this side's flow: `Done`, or `Partial` when something was held back
    /// (a capped vector would not do: entries of a writer above the cap that did go would be
    /// applied and left uncovered, and an older version could then come back).
    fn done(&self, vector: &VersionVector, clock: crate::hlc::Hlc) -> Message {
        if self.held.is_empty() { Message::Done(vector.clone(), clock) } else { Message::Partial }
    }

    /// Bootstrap: reads the next chunk of live entries after the cursor from the held snapshot,
    /// or ends the flow.
    /// Reads and queues the next chunk of a streaming flow, and when it was the last, what
    /// follows it. Loops while everything read was held back, so a flow never stalls with
    /// nothing queued.
    fn stream_next_chunk<S: Storage>(&mut self, replica: &Replica<S>) -> Result<(), SyncError> {
        while self.outbox.is_empty() {
            let Source::Streaming { stream, .. } = &mut self.source else { return Ok(()) };
            let (chunk, last) = stream.next_chunk(replica.now_ms())?;
            self.queue_entries(chunk);
            if last {
                let Source::Streaming { v0, then, .. } = std::mem::replace(&mut self.source, Source::AwaitAck) else {
                    return Ok(());
                };
                match then.map(|next| *next) {
                    Some((msg, next)) => {
                        self.outbox.push_back(msg);
                        self.source = next;
                    }
                    None => self.outbox.push_back(self.done(&v0, replica.clock())),
                }
            }
        }
        Ok(())
    }
}

/// What [`sync_in_process`] measured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PairOutcome {
    /// The first replica's session.
    pub a: SessionStats,
    /// The second replica's session.
    pub b: SessionStats,
    /// One-way trips: each delivers everything both sides had queued. Round trips = ⌈trips / 2⌉.
    pub trips: u32,
}

impl PairOutcome {
    /// Round trips the session took.
    #[must_use]
    pub fn round_trips(&self) -> u32 {
        self.trips.div_ceil(2)
    }
}

/// Runs one complete session between two replicas in the same process (no transport): both
/// state machines pumped against each other until both finish. For embedding several replicas
/// in one program, for tests and for the demo.
pub fn sync_in_process<S: Storage, T: Storage>(
    a: &mut Replica<S>,
    b: &mut Replica<T>,
    anti_entropy: bool,
) -> Result<PairOutcome, SyncError> {
    let (ida, idb) = (a.id(), b.id());
    let open = |r: &mut Replica<S>| {
        if anti_entropy { Session::anti_entropy(r, Some(idb)) } else { Session::new(r, Some(idb)) }
    };
    let mut sa = open(a)?;
    let mut sb = if anti_entropy { Session::anti_entropy(b, Some(ida))? } else { Session::new(b, Some(ida))? };
    let mut trips = 0;
    loop {
        let mut to_b = Vec::new();
        while let Some(f) = sa.poll_transmit(a)? {
            to_b.push(f);
        }
        let mut to_a = Vec::new();
        while let Some(f) = sb.poll_transmit(b)? {
            to_a.push(f);
        }
        if to_a.is_empty() && to_b.is_empty() {
            break;
        }
        trips += 1;
        for f in &to_b {
            sb.handle(b, f)?;
        }
        for f in &to_a {
            sa.handle(a, f)?;
        }
    }
    if !(sa.is_finished() && sb.is_finished()) {
        return Err(SyncError::Malformed("session stalled with nothing to send".into()));
    }
    Ok(PairOutcome { a: sa.stats().clone(), b: sb.stats().clone(), trips })
}

/// Refuses a peer's vector whose merge would grow `own` past [`VECTOR_COMPONENTS_MAX`]: every
/// later handshake of this replica would then be refused by its peers.
pub(crate) fn check_vector_growth(own: &VersionVector, theirs: &VersionVector) -> Result<(), SyncError> {
    let merged = crate::limits::merged_components(own, theirs);
    if merged > VECTOR_COMPONENTS_MAX {
        return Err(SyncError::Malformed(format!(
            "merging the peer's vector would give this replica's vector {merged} components, more than \
             {VECTOR_COMPONENTS_MAX}"
        )));
    }
    Ok(())
}

/// Whether a chunk of `len` entries and about `bytes` bytes is full: a receiver refuses more
/// than [`ENTRIES_PER_FRAME_MAX`] entries in one frame.
pub(crate) fn chunk_full(bytes: usize, len: usize) -> bool {
    bytes >= CHUNK_BYTES || len >= ENTRIES_PER_FRAME_MAX
}

/// About how many bytes an entry takes in a frame, for cutting chunks.
pub(crate) fn approx_bytes(e: &Entry) -> usize {
    let value = match &e.payload {
        Payload::Value(v) => v.bytes.len() + v.metadata.as_ref().map_or(0, Vec::len),
        _ => 0,
    };
    e.key.len() + value + 32
}

/// Live values and dead records (tombstones, expired records) among `entries`.
pub(crate) fn count_kinds(entries: &[Entry]) -> (u64, u64) {
    let live = entries.iter().filter(|e| matches!(e.payload, Payload::Value(_))).count() as u64;
    (live, entries.len() as u64 - live)
}

#[cfg(test)]
mod tests;
