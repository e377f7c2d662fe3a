//! The device session (docs/design.md §8), one sans-IO state machine per side: frames in
//! (`handle`), frames out (`poll_transmit`), as [`crate::session::Session`].
//!
//! ```text
//! device                                   member
//!   DeviceHello(vector, ack, horizon) ──►    checks enrolment, records ack and last seen
//!                                     ◄──  MemberHello(vector, collected, cursor)
//!   Upload(writes…, last)             ──►    admits each under its own dot (admit.rs)
//!                                     ◄──  Admitted(answers)
//!                                     ◄──  download: Entries…, Done(v)   (or Ranges/Reply…)
//!   Ack(capped vector)                ──►    records the device's acknowledgement
//! ```
//!
//! Rules kept here: the device speaks first and only to a member; the member answers only an
//! enrolled device whose handshake names the authenticated peer; the device takes a download
//! only from a member whose vector covers its horizon (the member applies the same rule and
//! sends nothing then); a member showing a cursor beyond the device's upload counter means the
//! device's store is an older copy, and its queued writes are re-numbered above the cursor
//! before any is uploaded; at most [`UPLOADS_IN_FLIGHT`] uploads await their answers.

use crate::device::message::{Admission, DeviceHello, MemberHello};
use crate::entry::Entry;
use crate::error::Error;
use crate::ids::{Dot, ReplicaId, Seq};
use crate::replica::Replica;
use crate::session::{Message, PROTOCOL_VERSION, Session, SessionStats, SyncError, approx_bytes, chunk_full};
use crate::storage::Storage;
use crate::vector::VersionVector;
use std::collections::{BTreeSet, VecDeque};

/// By default, a member grants a device an anti-entropy session at most once in this many ms
/// (60 s; `Config::device_anti_entropy_min_ms`).
pub const DEVICE_ANTI_ENTROPY_MIN_MS: u64 = 60_000;

/// Uploads sent and not yet answered, at most.
pub const UPLOADS_IN_FLIGHT: usize = 2;
/// Writes uploaded in one session, at most: a device with more queued uploads the rest in its
/// next session, and a member refuses more (it keeps the dots it admitted in a session).
pub const UPLOADS_PER_SESSION_MAX: u64 = 65_536;
/// Writes per upload, at most (and about [`crate::session::CHUNK_BYTES`]).
pub const UPLOAD_ENTRIES_MAX: usize = 1024;

/// What a device session cost and did, from one side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Frames and bytes of the whole session, both ways, and the download's figures.
    pub download: SessionStats,
    /// Frames sent outside the download (handshake, uploads or answers).
    pub messages_sent: u64,
    /// Bytes of them.
    pub bytes_sent: u64,
    /// Frames received outside the download.
    pub messages_received: u64,
    /// Bytes of them.
    pub bytes_received: u64,
    /// Writes uploaded (device) or received for admission (member).
    pub uploaded: u64,
    /// Of them, admitted under a member's dot.
    pub admitted: u64,
    /// Of them, superseded by something newer at the member.
    pub superseded: u64,
    /// Of them, at or below the cursor (applied before).
    pub known: u64,
    /// Of them, applied at another member this one has not heard from since: uploaded again
    /// later.
    pub pending: u64,
    /// Of them, refused by the member (over its size limits) and dropped at the device.
    pub refused: u64,
    /// On the device: its queued writes were re-numbered above the member's cursor (its store
    /// was an older copy).
    pub renumbered: bool,
    /// On the device: the member showed a cursor implausibly far beyond anything the device
    /// numbered ([`crate::limits::CURSOR_GAP_MAX`]), and the device did not re-number past it.
    pub cursor_ignored: bool,
    /// On the device: how many of its writes it queued again because the member lost the dots
    /// they were admitted under (restored from an older copy).
    pub requeued: u64,
}

impl DeviceStats {
    /// Counts a frame received outside the download.
    fn received(&mut self, frame: &[u8]) {
        self.messages_received += 1;
        self.bytes_received += frame.len() as u64;
    }

    /// Counts a member's answers to an upload.
    fn count(&mut self, answers: &[Admission]) {
        for a in answers {
            match a {
                Admission::Admitted(_) => self.admitted += 1,
                Admission::Superseded => self.superseded += 1,
                Admission::Known => self.known += 1,
                Admission::Pending => self.pending += 1,
                Admission::Refused => self.refused += 1,
            }
        }
    }

    /// These figures with the download's.
    fn with_download(&self, download: Option<&Session>) -> DeviceStats {
        let mut s = self.clone();
        if let Some(d) = download {
            s.download = d.stats().clone();
        }
        s
    }

    /// Bytes sent, download included.
    #[must_use]
    pub fn total_sent(&self) -> u64 {
        self.bytes_sent + self.download.bytes_sent
    }

    /// Bytes received, download included.
    #[must_use]
    pub fn total_received(&self) -> u64 {
        self.bytes_received + self.download.bytes_received
    }
}

/// The device's side of a device session.
#[derive(Debug)]
pub struct DeviceSession {
    member: Option<ReplicaId>,
    peer: Option<ReplicaId>,
    fresh: bool,
    has_uploads: bool,
    anti_entropy: bool,
    outbox: VecDeque<Message>,
    /// The download, once the member's handshake arrived.
    download: Option<Session>,
    /// Uploads sent and awaiting their answers, oldest first.
    in_flight: VecDeque<Vec<Entry>>,
    /// The next upload seq to read from the queue; `None` once the last upload went.
    next_upload: Option<Seq>,
    stats: DeviceStats,
}

impl DeviceSession {
    /// Opens a session of this device with a member (`member`, if it must be that one).
    pub fn new<S: Storage>(replica: &mut Replica<S>, member: Option<ReplicaId>) -> Result<DeviceSession, SyncError> {
        DeviceSession::open(replica, member, false)
    }

    /// Opens an anti-entropy session: the download reconciles by fingerprints even when this
    /// device's vector covers the member's. Run it periodically (docs/design.md §8): it settles
    /// what deltas cannot, such as a write that won at one member by the documented exception
    /// while another still held the delete.
    pub fn anti_entropy<S: Storage>(
        replica: &mut Replica<S>,
        member: Option<ReplicaId>,
    ) -> Result<DeviceSession, SyncError> {
        DeviceSession::open(replica, member, true)
    }

    fn open<S: Storage>(
        replica: &mut Replica<S>,
        member: Option<ReplicaId>,
        anti_entropy: bool,
    ) -> Result<DeviceSession, SyncError> {
        if !replica.is_device() {
            return Err(SyncError::Unexpected { got: "a device session", state: "on a member" });
        }
        replica.purge_expired()?;
        let vector = replica.members_vector();
        let fresh = vector.is_empty() && replica.index.live.is_empty();
        let has_uploads = replica.pending_uploads()? > 0;
        let ack = replica.sign_ack(replica.device_ack()?);
        let hello = DeviceHello(
            PROTOCOL_VERSION,
            replica.id(),
            vector,
            ack.vector,
            replica.horizon().cloned(),
            fresh,
            has_uploads,
            ack.time_ms,
            anti_entropy && !fresh,
            ack.signature,
            member.and_then(|m| replica.device_state().proofs.get(&m).cloned()),
            replica.device_state().unsettled.clone(),
        );
        Ok(DeviceSession {
            member,
            peer: None,
            fresh,
            has_uploads,
            anti_entropy: anti_entropy && !fresh,
            outbox: VecDeque::from([Message::DeviceHello(hello)]),
            download: None,
            in_flight: VecDeque::new(),
            next_upload: has_uploads.then_some(Seq(1)),
            stats: DeviceStats::default(),
        })
    }

    /// The member, once its handshake arrived.
    #[must_use]
    pub fn peer(&self) -> Option<ReplicaId> {
        self.peer
    }

    /// What the session has cost so far.
    #[must_use]
    pub fn stats(&self) -> DeviceStats {
        self.stats.with_download(self.download.as_ref())
    }

    /// Whether everything is uploaded and answered, the download is complete and nothing is
    /// left to send.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.outbox.is_empty()
            && self.in_flight.is_empty()
            && self.next_upload.is_none()
            && self.download.as_ref().is_some_and(Session::is_finished)
    }

    /// The next frame to send, if any.
    pub fn poll_transmit<S: Storage>(&mut self, replica: &Replica<S>) -> Result<Option<Vec<u8>>, SyncError> {
        if self.outbox.is_empty() && self.download.is_some() && self.in_flight.len() < UPLOADS_IN_FLIGHT {
            self.queue_upload(replica)?;
        }
        next_frame(&mut self.outbox, self.download.as_mut(), &mut self.stats, replica)
    }

    /// Reads the next upload from the queue, if one is due.
    fn queue_upload<S: Storage>(&mut self, replica: &Replica<S>) -> Result<(), SyncError> {
        let Some(from) = self.next_upload else { return Ok(()) };
        let snap = replica.store().snapshot().map_err(Error::from)?;
        let room = UPLOADS_PER_SESSION_MAX.saturating_sub(self.stats.uploaded) as usize;
        let mut writes = replica.queued_from(&snap, from, UPLOAD_ENTRIES_MAX.min(room) + 1)?;
        let mut bytes = 0;
        let mut cut = writes.len();
        for (i, e) in writes.iter().enumerate() {
            bytes += approx_bytes(e);
            if chunk_full(bytes, i + 1) || i + 1 >= UPLOAD_ENTRIES_MAX.min(room) {
                cut = i + 1;
                break;
            }
        }
        let last = cut >= writes.len() || cut >= room;
        writes.truncate(cut);
        self.next_upload = if last { None } else { writes.last().and_then(|e| e.dot.seq.checked_next()) };
        self.stats.uploaded += writes.len() as u64;
        self.in_flight.push_back(writes.clone());
        self.outbox.push_back(Message::Upload { entries: writes, last });
        Ok(())
    }

    /// Handles one frame from the member. An error ends the session; nothing of the failing
    /// message was applied.
    pub fn handle<S: Storage>(&mut self, replica: &mut Replica<S>, frame: &[u8]) -> Result<(), SyncError> {
        let msg = Message::decode(frame)?;
        match msg {
            Message::MemberHello(hello) => {
                self.stats.received(frame);
                self.on_hello(replica, hello)
            }
            Message::Admitted(answers) => {
                self.stats.received(frame);
                let Some(uploaded) = self.in_flight.pop_front() else {
                    return Err(SyncError::Unexpected { got: "Admitted", state: "with no upload awaiting an answer" });
                };
                if answers.len() != uploaded.len() {
                    return Err(SyncError::Malformed(format!(
                        "{} answers to an upload of {} writes",
                        answers.len(),
                        uploaded.len()
                    )));
                }
                self.stats.count(&answers);
                let Some(settle) = self.download.as_mut().and_then(Session::settle_mut) else {
                    return Err(SyncError::Unexpected { got: "Admitted", state: "awaiting the member's handshake" });
                };
                replica.settle_uploads(&uploaded, &answers, settle)?;
                Ok(())
            }
            Message::MemberProof(proof) => {
                self.stats.received(frame);
                let (Some(download), Some(member)) = (self.download.as_mut(), self.peer) else {
                    return Err(SyncError::Unexpected { got: "MemberProof", state: "awaiting the member's handshake" });
                };
                download.raise_member_signed(proof.0);
                replica.keep_member_proof(member, Some(proof))?;
                Ok(())
            }
            Message::DeviceHello(_) | Message::Upload { .. } | Message::Hello(_) | Message::Push(_) => {
                Err(SyncError::Unexpected { got: msg.name(), state: "on a device, from a member" })
            }
            other => match &mut self.download {
                Some(d) => d.handle_message(replica, other, frame.len()),
                None => Err(SyncError::Unexpected { got: other.name(), state: "awaiting the member's handshake" }),
            },
        }
    }

    fn on_hello<S: Storage>(&mut self, replica: &mut Replica<S>, hello: MemberHello) -> Result<(), SyncError> {
        if self.download.is_some() {
            return Err(SyncError::Unexpected { got: "MemberHello", state: "after the member's handshake" });
        }
        let MemberHello(version, member, mut vector, collected, cursor, wall_ms, proof, lost, cursor_stamp, named_sent) =
            hello;
        if version != PROTOCOL_VERSION {
            return Err(SyncError::Version { ours: PROTOCOL_VERSION, theirs: version });
        }
        if member == replica.id() || self.member.is_some_and(|m| m != member) {
            let expected = self.member.map_or_else(|| "any member".to_string(), |m| m.to_string());
            return Err(SyncError::WrongPeer { expected, actual: member });
        }
        crate::session::check_vector_growth(replica.vector(), &vector)?;
        // A cursor beyond what any member takes: refused before anything changes (finding 5:
        // re-numbering past `u64::MAX` failed).
        if cursor.0 > crate::limits::CURSOR_MAX {
            return Err(SyncError::Malformed(format!(
                "member {member} shows this device's cursor at {cursor}, beyond any a member takes ({}): refused",
                crate::limits::CURSOR_MAX
            )));
        }
        // A cursor far beyond every upload seq this device numbered is no history of it (an
        // older copy of this store is never that far behind): a compromised member's claim,
        // which an honest member may hold. Not re-numbered past, and the session goes on:
        // refused, the device could never sync with that member again (the cursor only grows).
        let numbered = replica.vector().get(replica.id());
        let cursor = if cursor.0 > numbered.0.saturating_add(crate::limits::CURSOR_GAP_MAX) {
            self.stats.cursor_ignored = true;
            Seq(0)
        } else {
            cursor
        };
        self.peer = Some(member);
        replica.note_peer_wall(member, wall_ms);
        // What this device may later show of the member's own writes is what the member
        // signed: a download's vector is capped there (`Download::OnDevice`), and the proof is
        // kept to show again (a member restored from an older copy learns from it).
        let proof_seq = proof.as_ref().map(|p| p.0);
        if let Some(p) = proof_seq {
            vector = capped_at(&vector, member, p);
        }
        replica.keep_member_proof(member, proof)?;
        let take_covered =
            vector.dominates(&replica.members_vector()) && collected.dominates(&replica.device_state().collected);
        // Only the writes queued when the handshake went (the member expects uploads only then).
        self.stats.renumbered = replica.renumber_uploads_past(cursor, cursor_stamp)?;
        // Lost ranges the member tells of itself, or of another member who signed them.
        let lost = replica.verified_lost(member, &lost);
        // The member lost writes it had numbered (restored from an older copy): this device's
        // own writes under those dots are queued again, to be admitted afresh.
        self.stats.requeued = replica.requeue_lost(&lost, &vector)?;
        replica.note_uploads_sent()?;
        replica.settle_horizon(&collected)?;
        // Before the download: a dead record the member collected must not beat what it sends
        // (a write that won there once the delete was gone, by the documented exception).
        replica.collect_garbage()?;
        let receive =
            (self.has_uploads || self.anti_entropy || named_sent || !replica.members_vector().dominates(&vector))
                && replica.horizon().is_none_or(|h| vector.dominates(h));
        let mut download = Session::on_device(replica, member, &vector, receive, self.fresh, take_covered, proof_seq)?;
        if let Some(settle) = download.settle_mut() {
            settle.named_sent = named_sent;
        }
        self.download = Some(download);
        Ok(())
    }
}

/// The member's side of a device session.
#[derive(Debug)]
pub struct DeviceService {
    device: Option<ReplicaId>,
    peer: Option<ReplicaId>,
    outbox: VecDeque<Message>,
    download: Option<Session>,
    /// The device's handshake, until the download starts (after its uploads, if any).
    hello: Option<DeviceHello>,
    uploads_open: bool,
    /// The dots this session admitted the device's writes under: not sent back.
    admitted: BTreeSet<Dot>,
    /// The keys of the writes this session answered `Refused` or `Known`, and those the
    /// device's handshake named as unsettled: the device dropped its write for each, so the
    /// download sends this member's entry for each whatever the device's vector covers
    /// (finding 8, R3-4, R3-5). At most [`UPLOADS_PER_SESSION_MAX`] +
    /// [`crate::device::UNSETTLED_KEYS_MAX`] keys.
    unheld: BTreeSet<Vec<u8>>,
    /// Whether the handshake was granted what it asked for (anti-entropy, the entries of its
    /// named unsettled keys): once per `Config::device_anti_entropy_min_ms`.
    granted: bool,
    /// This member's vector when it answered the handshake.
    hello_vector: VersionVector,
    /// The own seq its handshake's proof signed.
    hello_signed: Seq,
    stats: DeviceStats,
}

impl DeviceService {
    /// Opens the member's side of a session with a device (`device`: the authenticated peer,
    /// when the transport knows it). The device speaks first.
    pub fn new<S: Storage>(replica: &mut Replica<S>, device: Option<ReplicaId>) -> Result<DeviceService, SyncError> {
        if replica.is_device() {
            return Err(SyncError::Unexpected { got: "a device session", state: "on a device (devices serve no one)" });
        }
        Ok(DeviceService {
            device,
            peer: None,
            outbox: VecDeque::new(),
            download: None,
            hello: None,
            uploads_open: false,
            admitted: BTreeSet::new(),
            unheld: BTreeSet::new(),
            granted: false,
            hello_vector: VersionVector::new(),
            hello_signed: Seq(0),
            stats: DeviceStats::default(),
        })
    }

    /// The device, once its handshake arrived.
    #[must_use]
    pub fn peer(&self) -> Option<ReplicaId> {
        self.peer
    }

    /// What the session has cost so far.
    #[must_use]
    pub fn stats(&self) -> DeviceStats {
        self.stats.with_download(self.download.as_ref())
    }

    /// Whether the device's uploads are all answered, the download is acknowledged and nothing
    /// is left to send.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.outbox.is_empty() && !self.uploads_open && self.download.as_ref().is_some_and(Session::is_finished)
    }

    /// The next frame to send, if any.
    pub fn poll_transmit<S: Storage>(&mut self, replica: &Replica<S>) -> Result<Option<Vec<u8>>, SyncError> {
        next_frame(&mut self.outbox, self.download.as_mut(), &mut self.stats, replica)
    }

    /// Handles one frame from the device. An error ends the session; nothing of the failing
    /// message was applied.
    pub fn handle<S: Storage>(&mut self, replica: &mut Replica<S>, frame: &[u8]) -> Result<(), SyncError> {
        let msg = Message::decode(frame)?;
        match msg {
            Message::DeviceHello(hello) => {
                self.stats.received(frame);
                self.on_hello(replica, hello)
            }
            Message::Upload { entries, last } => {
                self.stats.received(frame);
                if !self.uploads_open {
                    return Err(SyncError::Unexpected {
                        got: "Upload",
                        state: "with no uploads announced or after the last",
                    });
                }
                let Some(device) = self.peer else {
                    return Err(SyncError::Unexpected { got: "Upload", state: "awaiting the device's handshake" });
                };
                // The device keeps at most `UPLOADS_IN_FLIGHT` unanswered: more answers waiting
                // here mean it sends without reading them.
                if self.outbox.len() > UPLOADS_IN_FLIGHT {
                    return Err(SyncError::Malformed(format!(
                        "device {device} sent an upload with {} answers unread (at most {UPLOADS_IN_FLIGHT} uploads may \
                         await their answers)",
                        self.outbox.len()
                    )));
                }
                if self.stats.uploaded + entries.len() as u64 > UPLOADS_PER_SESSION_MAX {
                    return Err(SyncError::Malformed(format!(
                        "device {device} uploaded more than {UPLOADS_PER_SESSION_MAX} writes in one session"
                    )));
                }
                self.stats.uploaded += entries.len() as u64;
                let keys: Vec<Vec<u8>> = entries.iter().map(|e| e.key.clone()).collect();
                let answers = replica.admit_uploads(device, entries)?;
                self.stats.count(&answers);
                self.unheld.extend(
                    keys.into_iter()
                        .zip(&answers)
                        .filter(|(_, a)| matches!(a, Admission::Refused | Admission::Known))
                        .map(|(k, _)| k),
                );
                self.admitted.extend(answers.iter().filter_map(|a| match a {
                    Admission::Admitted(dot) => Some(*dot),
                    _ => None,
                }));
                self.outbox.push_back(Message::Admitted(answers));
                self.uploads_open = !last;
                if last {
                    self.start_download(replica, true)?;
                }
                Ok(())
            }
            Message::Hello(_)
            | Message::MemberHello(_)
            | Message::Admitted(_)
            | Message::Push(_)
            | Message::MemberProof(_) => {
                Err(SyncError::Unexpected { got: msg.name(), state: "on a member, from a device" })
            }
            other => match &mut self.download {
                Some(d) => d.handle_message(replica, other, frame.len()),
                None => Err(SyncError::Unexpected { got: other.name(), state: "awaiting the device's handshake" }),
            },
        }
    }

    fn on_hello<S: Storage>(&mut self, replica: &mut Replica<S>, hello: DeviceHello) -> Result<(), SyncError> {
        if self.peer.is_some() {
            return Err(SyncError::Unexpected { got: "DeviceHello", state: "after the device's handshake" });
        }
        let DeviceHello(
            version,
            device,
            vector,
            ack,
            horizon,
            fresh,
            uploads,
            wall_ms,
            anti_entropy,
            signature,
            proof,
            unsettled,
        ) = hello;
        if version != PROTOCOL_VERSION {
            return Err(SyncError::Version { ours: PROTOCOL_VERSION, theirs: version });
        }
        if device == replica.id() || self.device.is_some_and(|d| d != device) {
            let expected = self.device.map_or_else(|| "an enrolled device".to_string(), |d| d.to_string());
            return Err(SyncError::WrongPeer { expected, actual: device });
        }
        if !replica.devices().is_enrolled(device) {
            return Err(SyncError::NotEnrolled(device));
        }
        if !vector.dominates(&ack) {
            return Err(SyncError::Malformed(format!("device {device} acknowledges more than its vector holds")));
        }
        // Components of replicas this member knows no writes of (a member removed since, whose
        // writes only the device holds) are left out, not refused (R5-9: refused, the device
        // could never sync again, its queued writes never uploaded).
        // Its signature covers the acknowledgement as sent: relayed only if nothing was left out.
        let (vector, known_ack) = (known_names(replica, &vector), known_names(replica, &ack));
        let relayable = known_ack == ack;
        let ack = known_ack;
        if let Some(key) = unsettled.iter().find(|k| k.len() > crate::limits::KEY_BYTES_MAX) {
            return Err(SyncError::Malformed(format!(
                "device {device} names an unsettled key of {} bytes, more than any key ({} bytes): handshake refused (a device names only keys it wrote)",
                key.len(),
                crate::limits::KEY_BYTES_MAX
            )));
        }
        // This member's own writes beyond what it knows it issued: evidence of a restore from
        // an older copy, but only with its own signature over them (docs/design.md §9, §10).
        // The proof itself first: the device may hold writes of this member up to the seq it
        // signed without its vector covering them (a download cut short, ended `Partial`).
        if let Some(signed) = proof.as_ref().map(|p| p.0)
            && replica.device_claim_is_news(signed)
            && replica.own_seq_proof_verifies(signed, proof.as_ref())
        {
            replica.notice_own_seq_from_device(signed)?;
        }
        let claimed = vector.get(replica.id());
        if replica.device_claim_is_news(claimed) {
            if !replica.own_seq_proof_verifies(claimed, proof.as_ref()) {
                return Err(SyncError::Malformed(format!(
                    "device {device} claims write {claimed} of this member, which issued only {}, without this \
                     member's own signature over it: refused (a device is no witness of a restore)",
                    replica.own_counter()
                )));
            }
            replica.notice_own_seq_from_device(claimed)?;
        }
        check_device_vector(replica, device, &vector)?;
        self.peer = Some(device);
        // A device's wall time bounds what this session sends it (`to_device`), but is not
        // taken as a peer clock: devices' clocks must not decide whether this member may write.
        let capped = cap_device_ack(replica, &ack);
        replica.acknowledge_device(device, &capped);
        let proof = crate::sign::AckProof(wall_ms, signature);
        replica.note_device_signed(device, ack, relayable.then_some(&proof));
        let ack = capped;
        let cursor = replica.devices().cursor(device);
        // The keys the device names as unsettled are its word: their entries go at most as
        // often as an anti-entropy session would (R5-3), and under the same grant, taken once
        // for both (R6-2: taken for the keys first, the anti-entropy asked for was never
        // granted again).
        self.granted = (anti_entropy || !unsettled.is_empty()) && replica.grant_device_anti_entropy(device);
        let named_sent = !unsettled.is_empty() && self.granted;
        if named_sent {
            self.unheld.extend(unsettled.into_iter().map(serde_bytes::ByteBuf::into_vec));
        }
        let proof = replica.own_seq_proof();
        self.hello_signed = proof.0;
        let member_hello = MemberHello(
            PROTOCOL_VERSION,
            replica.id(),
            replica.vector().clone(),
            replica.membership().collected().clone(),
            cursor,
            replica.now_ms(),
            Some(proof),
            replica.lost_gossip(),
            replica.devices().cursor_stamp(device),
            named_sent,
        );
        self.hello = Some(DeviceHello(
            version,
            device,
            vector,
            ack,
            horizon,
            fresh,
            uploads,
            wall_ms,
            anti_entropy,
            Vec::new(),
            None,
            Vec::new(),
        ));

        self.hello_vector = replica.vector().clone();
        self.outbox.push_back(Message::MemberHello(member_hello));
        self.uploads_open = uploads;
        if !uploads {
            self.start_download(replica, false)?;
        }
        Ok(())
    }

    /// Starts the download, once the device's uploads (if any) are admitted.
    fn start_download<S: Storage>(&mut self, replica: &mut Replica<S>, uploaded: bool) -> Result<(), SyncError> {
        let Some(hello) = self.hello.take() else { return Ok(()) };
        let admitted = uploaded.then_some(&self.admitted);
        self.download =
            Some(Session::to_device(replica, &hello, &self.hello_vector, admitted, &self.unheld, self.granted)?);
        // The download's vector may name own writes issued since the handshake's proof (this
        // session's admissions, or writes made meanwhile): the device caps what it takes of
        // them at what this member signed, so it signs again.
        if replica.own_counter() > self.hello_signed {
            self.outbox.push_back(Message::MemberProof(replica.own_seq_proof()));
        }
        Ok(())
    }
}

/// The next frame of either side: its own messages first, then the download's.
fn next_frame<S: Storage>(
    outbox: &mut VecDeque<Message>,
    download: Option<&mut Session>,
    stats: &mut DeviceStats,
    replica: &Replica<S>,
) -> Result<Option<Vec<u8>>, SyncError> {
    if let Some(msg) = outbox.pop_front() {
        let frame = msg.encode()?;
        stats.messages_sent += 1;
        stats.bytes_sent += frame.len() as u64;
        return Ok(Some(frame));
    }
    match download {
        Some(d) => d.poll_transmit(replica),
        None => Ok(None),
    }
}

/// Checks a vector a device sends (its handshake's, its `Ack`): it names none of this member's
/// writes beyond what it issued. A device is no witness of a restore
/// (docs/design.md §9: it can change nothing but its own writes), so such a claim is refused,
/// never acted on.
pub(crate) fn check_device_vector<S: Storage>(
    replica: &Replica<S>,
    device: ReplicaId,
    vector: &VersionVector,
) -> Result<(), SyncError> {
    let me = replica.id();
    if vector.get(me) > replica.own_counter() {
        return Err(SyncError::Malformed(format!(
            "device {device} claims write {} of this member, which issued only {}: refused (a device is no witness \
             of a restore; if this member was restored from a backup, let a member sync with it first)",
            vector.get(me),
            replica.own_counter()
        )));
    }
    Ok(())
}

/// A vector a device sends, with only the replicas this member knows as writers of dots:
/// this member, its enrolled members, and any replica its own vector names (a member removed
/// since, whose writes stay under its dots and whose component this member sent the device
/// itself). So what a member keeps of a device's vector stays within what members' vectors
/// hold (I9), and a component of a member removed here (whose writes only the device holds)
/// does not cut the device off.
pub(crate) fn known_names<S: Storage>(replica: &Replica<S>, vector: &VersionVector) -> VersionVector {
    let me = replica.id();
    let known = |r: ReplicaId| r == me || replica.membership().is_enrolled(r) || replica.vector().get(r) > Seq(0);
    vector.iter().filter(|(r, _)| known(*r)).collect::<Vec<_>>().into()
}

/// `vector` with `replica`'s component at most `max`.
pub(crate) fn capped_at(vector: &VersionVector, replica: ReplicaId, max: Seq) -> VersionVector {
    vector.iter().map(|(r, s)| (r, if r == replica { s.min(max) } else { s })).collect::<Vec<_>>().into()
}

/// A device's acknowledgement, capped at what some member holds: beyond it, it could never be
/// covered by the frontier and would hold collection back for good.
pub(crate) fn cap_device_ack<S: Storage>(replica: &Replica<S>, ack: &VersionVector) -> VersionVector {
    ack.meet(&replica.membership().join(replica.vector()))
}

/// What [`sync_device_in_process`] measured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceOutcome {
    /// The device's side.
    pub device: DeviceStats,
    /// The member's side.
    pub member: DeviceStats,
    /// One-way trips.
    pub trips: u32,
}

/// Runs one complete device session between a device and a member in one process (for tests,
/// the simulation, benchmarks and embedding).
pub fn sync_device_in_process<S: Storage, T: Storage>(
    device: &mut Replica<S>,
    member: &mut Replica<T>,
) -> Result<DeviceOutcome, SyncError> {
    let d = DeviceSession::new(device, Some(member.id()))?;
    run_in_process(d, device, member)
}

/// As [`sync_device_in_process`], an anti-entropy session ([`DeviceSession::anti_entropy`]).
pub fn anti_entropy_device_in_process<S: Storage, T: Storage>(
    device: &mut Replica<S>,
    member: &mut Replica<T>,
) -> Result<DeviceOutcome, SyncError> {
    let d = DeviceSession::anti_entropy(device, Some(member.id()))?;
    run_in_process(d, device, member)
}

fn run_in_process<S: Storage, T: Storage>(
    mut d: DeviceSession,
    device: &mut Replica<S>,
    member: &mut Replica<T>,
) -> Result<DeviceOutcome, SyncError> {
    let mut m = DeviceService::new(member, Some(device.id()))?;
    let mut trips = 0;
    loop {
        let mut to_m = Vec::new();
        while let Some(f) = d.poll_transmit(device)? {
            to_m.push(f);
        }
        let mut to_d = Vec::new();
        while let Some(f) = m.poll_transmit(member)? {
            to_d.push(f);
        }
        if to_m.is_empty() && to_d.is_empty() {
            break;
        }
        trips += 1;
        for f in &to_m {
            m.handle(member, f)?;
        }
        for f in &to_d {
            d.handle(device, f)?;
        }
    }
    if !(d.is_finished() && m.is_finished()) {
        return Err(SyncError::Malformed("device session stalled with nothing to send".into()));
    }
    Ok(DeviceOutcome { device: d.stats(), member: m.stats(), trips })
}
