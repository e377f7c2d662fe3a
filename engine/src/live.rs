//! Live replication between connected members: once a session has brought two replicas in step,
//! each pushes what it commits as it commits, without another handshake.
//!
//! A push is a delta (docs/design.md §3) computed against `base`, the vector the sender believes the
//! receiver has. The receiver merges the push's vector only if its own vector covers `base`;
//! otherwise (a push lost or reordered, or one that failed to apply) it keeps the entries as a
//! partial transfer and reports a gap, and the node runs a session to close it. So pushes are
//! safe on any transport; on an ordered stream the gap never happens.
//!
//! Pushes go only to a member whose vector covers this replica's stable frontier, the same rule
//! as for a delta session: anything older may hold keys whose tombstones were collected here.

use crate::entry::Entry;
use crate::hlc::Hlc;
use crate::ids::ReplicaId;
use crate::replica::{ApplyReport, Replica};
use crate::session::{Message, SyncError, approx_bytes, check_vector_growth, chunk_full, count_kinds};
use crate::storage::Storage;
use crate::vector::VersionVector;
use serde::{Deserialize, Serialize};

/// One push: entries beyond `base`, and, on the last push of a delta, the sender's vector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    /// What the sender assumed the receiver holds.
    #[serde(deserialize_with = "crate::limits::bounded_vector")]
    pub base: VersionVector,
    /// Entries whose dots `base` does not cover.
    #[serde(with = "crate::session::batch")]
    pub entries: Vec<Entry>,
    /// On the last push of a delta: the sender's vector, to merge once everything since `base`
    /// is in, and its clock, to observe then (see [`crate::Delta::clock`]).
    #[serde(deserialize_with = "crate::limits::bounded_vector_and_clock")]
    pub vector: Option<(VersionVector, Hlc)>,
}

/// What [`LiveSender::poll`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum LivePoll {
    /// Nothing new for the peer.
    Idle,
    /// Frames to send, in order.
    Frames(Vec<Vec<u8>>),
    /// The peer is not (or no longer) eligible for pushes: run a session with it.
    NeedSession,
}

/// The sending half of a live stream to one peer.
#[derive(Debug)]
pub struct LiveSender {
    peer: ReplicaId,
    /// What the peer holds once every push sent so far is applied.
    sent: VersionVector,
}

impl LiveSender {
    /// A live stream to `peer`, whose vector is known to be `peer_vector` (from a session's `Ack`).
    #[must_use]
    pub fn new(peer: ReplicaId, peer_vector: VersionVector) -> LiveSender {
        LiveSender { peer, sent: peer_vector }
    }

    /// The peer.
    #[must_use]
    pub fn peer(&self) -> ReplicaId {
        self.peer
    }

    /// Frames carrying everything the replica holds beyond what was sent, cut into pushes of
    /// about [`crate::session::CHUNK_BYTES`] each.
    pub fn poll<S: Storage>(&mut self, replica: &Replica<S>) -> std::result::Result<LivePoll, SyncError> {
        // What the peer acknowledged (to us or, by gossip, to others) it holds already: never
        // push it, and never count it as missing.
        let member = replica.membership().get(self.peer);
        if let Some(m) = member {
            self.sent.merge(&m.acked);
        }
        if self.sent.dominates(replica.vector()) {
            return Ok(LivePoll::Idle);
        }
        if member.is_none() || !self.sent.dominates(&replica.frontier()) {
            return Ok(LivePoll::NeedSession);
        }
        let delta = replica.delta_for(&self.sent)?;
        // Entries the peer would refuse for drift wait (`replica/clock.rs`): the push then carries
        // no vector (a partial transfer), so they go with a later one.
        let mut held = crate::replica::HeldBack::default();
        let limit_ms = replica.peer_stamp_limit_ms(self.peer);
        let entries = held.filter(delta.entries, limit_ms);
        // Held back: a partial push (no vector), and the same entries go again with the next.
        let vector = held.is_empty().then(|| (delta.vector.clone(), delta.clock));
        if entries.is_empty() && vector.is_none() {
            return Ok(LivePoll::Idle);
        }
        let mut frames = Vec::new();
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for entry in entries {
            bytes += approx_bytes(&entry);
            chunk.push(entry);
            if chunk_full(bytes, chunk.len()) {
                let push = Push { base: self.sent.clone(), entries: std::mem::take(&mut chunk), vector: None };
                frames.push(Message::Push(push).encode()?);
                bytes = 0;
            }
        }
        let push = Push { base: self.sent.clone(), entries: chunk, vector: vector.clone() };
        frames.push(Message::Push(push).encode()?);
        if let Some((vector, _)) = &vector {
            self.sent.merge(vector);
        }
        Ok(LivePoll::Frames(frames))
    }

    /// Handles the receiver's `Ack` (see [`handle_ack`]).
    pub fn handle<S: Storage>(&mut self, replica: &mut Replica<S>, frame: &[u8]) -> std::result::Result<(), SyncError> {
        handle_ack(replica, self.peer, frame)
    }
}

/// Handles a frame a live stream's receiver sent back to `peer`'s sender: its `Ack` vector is an
/// acknowledgement (feeding the stable frontier). Any other message is refused. A free function
/// so that the task reading acknowledgements need not share the sender.
pub fn handle_ack<S: Storage>(
    replica: &mut Replica<S>,
    peer: ReplicaId,
    frame: &[u8],
) -> std::result::Result<(), SyncError> {
    match Message::decode(frame)? {
        Message::Ack(vector, proof) => {
            replica.notice_own_seq(vector.get(replica.id()))?;
            replica.acknowledge_signed(peer, &vector, proof.as_ref());
            Ok(())
        }
        other => Err(SyncError::Unexpected { got: other.name(), state: "sending live pushes" }),
    }
}

/// What the receiving side of a live stream did with one frame.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// What the replica did with the entries.
    pub report: ApplyReport,
    /// The push ended a delta but this replica's vector did not cover its base: the entries are
    /// kept, the vector is not merged; run a session with the sender.
    pub gap: bool,
    /// The frame to answer with (an `Ack` after the last push of a delta).
    pub reply: Option<Vec<u8>>,
    /// Live values the push carried.
    pub live: u64,
    /// Tombstones and expired records the push carried.
    pub tombstones: u64,
}

/// The receiving half of a live stream from one peer.
#[derive(Debug)]
pub struct LiveReceiver {
    peer: ReplicaId,
}

impl LiveReceiver {
    /// A live stream from `peer`.
    #[must_use]
    pub fn new(peer: ReplicaId) -> LiveReceiver {
        LiveReceiver { peer }
    }

    /// Applies one push. A frame that is not a valid push, or whose entries the replica refuses,
    /// is an error and changes nothing; the stream should then be closed.
    pub fn handle<S: Storage>(
        &mut self,
        replica: &mut Replica<S>,
        frame: &[u8],
    ) -> std::result::Result<Received, SyncError> {
        let push = match Message::decode(frame)? {
            Message::Push(push) => push,
            other => return Err(SyncError::Unexpected { got: other.name(), state: "receiving live pushes" }),
        };
        // A peer holding own writes beyond the counter: recovery begins, and the push is then a
        // gap (the vector no longer covers its base), so a session follows.
        if let Some((vector, _)) = &push.vector {
            check_vector_growth(replica.vector(), vector)?;
            replica.notice_own_seq(vector.get(replica.id()))?;
        }
        let in_step = replica.vector().dominates(&push.base);
        let (live, tombstones) = count_kinds(&push.entries);
        let sender = push.vector.as_ref().filter(|_| in_step).map(|(v, clock)| (v, *clock));
        let report = replica.apply_remote(push.entries, sender)?;
        let Some((sender_vector, _)) = push.vector else {
            return Ok(Received { report, gap: false, reply: None, live, tombstones });
        };
        // The sender's vector is its durable state: an acknowledgement, as a handshake's is.
        replica.acknowledge(self.peer, &sender_vector);
        let reply = replica.ack_frame(replica.vector().clone()).encode()?;
        Ok(Received { report, gap: !in_step, reply: Some(reply), live, tombstones })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::ManualClock;
    use crate::replica::{Change, Config, PutOptions};
    use crate::session::sync_in_process;
    use crate::storage::{KeyRange, MemoryStore};
    use std::sync::Arc;

    fn pair() -> (Replica<MemoryStore>, Replica<MemoryStore>) {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let mut a = Replica::open(MemoryStore::new(), ReplicaId(1), Config::default(), clock.clone()).unwrap();
        let mut b = Replica::open(MemoryStore::new(), ReplicaId(2), Config::default(), clock).unwrap();
        a.enrol_member(ReplicaId(2)).unwrap();
        b.enrol_member(ReplicaId(1)).unwrap();
        (a, b)
    }

    fn frames(poll: LivePoll) -> Vec<Vec<u8>> {
        match poll {
            LivePoll::Frames(f) => f,
            other => panic!("expected frames, got {other:?}"),
        }
    }

    fn live(r: &Replica<MemoryStore>) -> Vec<(Vec<u8>, Vec<u8>)> {
        r.scan(&KeyRange::all(), usize::MAX).unwrap().into_iter().map(|i| (i.key, i.value)).collect()
    }

    #[test]
    fn pushes_after_a_session_keep_the_peer_in_step_and_acknowledge() {
        let (mut a, mut b) = pair();
        a.put("x", "1", PutOptions::default()).unwrap();
        sync_in_process(&mut a, &mut b, false).unwrap();
        let mut tx = LiveSender::new(ReplicaId(2), b.vector().clone());
        let mut rx = LiveReceiver::new(ReplicaId(1));
        assert_eq!(tx.poll(&a).unwrap(), LivePoll::Idle);
        a.put("y", "2", PutOptions::default()).unwrap();
        a.delete("x").unwrap();
        let out = frames(tx.poll(&a).unwrap());
        assert_eq!(tx.poll(&a).unwrap(), LivePoll::Idle, "nothing is sent twice");
        let mut acks = Vec::new();
        for f in &out {
            let got = rx.handle(&mut b, f).unwrap();
            assert!(!got.gap);
            acks.extend(got.reply);
        }
        assert_eq!(live(&a), live(&b));
        assert_eq!(a.vector(), b.vector());
        for ack in &acks {
            tx.handle(&mut a, ack).unwrap();
        }
        assert_eq!(a.membership().iter().find(|(r, _)| *r == ReplicaId(2)).unwrap().1.acked, *b.vector());
    }

    #[test]
    fn a_lost_push_leaves_a_gap_that_does_not_merge_the_vector() {
        let (mut a, mut b) = pair();
        a.put("x", "1", PutOptions::default()).unwrap();
        sync_in_process(&mut a, &mut b, false).unwrap();
        let mut tx = LiveSender::new(ReplicaId(2), b.vector().clone());
        let mut rx = LiveReceiver::new(ReplicaId(1));
        a.put("lost", "1", PutOptions::default()).unwrap();
        let _lost = frames(tx.poll(&a).unwrap());
        a.put("later", "2", PutOptions::default()).unwrap();
        let got = rx.handle(&mut b, &frames(tx.poll(&a).unwrap())[0]).unwrap();
        assert!(got.gap, "b's vector does not cover the second push's base");
        assert!(!got.report.vector_merged);
        assert_eq!(b.get(b"later").unwrap().unwrap().value, b"2".to_vec());
        assert!(!b.vector().covers(a.get(b"lost").unwrap().unwrap().dot), "the lost write is not claimed");
        // A session closes the gap.
        sync_in_process(&mut a, &mut b, false).unwrap();
        assert_eq!(live(&a), live(&b));
    }

    #[test]
    fn what_the_peer_received_from_us_is_not_echoed_back() {
        let (mut a, mut b) = pair();
        sync_in_process(&mut a, &mut b, false).unwrap();
        let mut a_to_b = LiveSender::new(ReplicaId(2), b.vector().clone());
        let mut b_to_a = LiveSender::new(ReplicaId(1), a.vector().clone());
        let mut b_rx = LiveReceiver::new(ReplicaId(1));
        a.put("x", "1", PutOptions::default()).unwrap();
        for f in frames(a_to_b.poll(&a).unwrap()) {
            b_rx.handle(&mut b, &f).unwrap();
        }
        // b now holds a's write and knows (from the push's vector) that a holds it.
        assert_eq!(b_to_a.poll(&b).unwrap(), LivePoll::Idle);
    }

    #[test]
    fn a_peer_that_is_not_a_member_gets_a_session_not_pushes() {
        let (mut a, _b) = pair();
        let mut tx = LiveSender::new(ReplicaId(2), VersionVector::new());
        a.put("x", "1", PutOptions::default()).unwrap();
        assert_eq!(tx.poll(&a).unwrap(), LivePoll::NeedSession);
    }

    #[test]
    fn a_frame_that_is_not_a_push_is_refused_and_changes_nothing() {
        let (mut a, mut b) = pair();
        let mut rx = LiveReceiver::new(ReplicaId(1));
        a.put("x", "1", PutOptions::default()).unwrap();
        let done = Message::Done(a.vector().clone(), a.clock()).encode().unwrap();
        assert!(matches!(rx.handle(&mut b, &done), Err(SyncError::Unexpected { got: "Done", .. })));
        assert!(rx.handle(&mut b, &[0x9f, 0x01]).is_err());
        assert!(b.vector().is_empty() && live(&b).is_empty());
    }

    #[test]
    fn changes_are_recorded_for_local_and_received_writes() {
        let (mut a, mut b) = pair();
        b.record_changes(true);
        a.put("x", "1", PutOptions::default()).unwrap();
        a.put("gone", "1", PutOptions::default()).unwrap();
        sync_in_process(&mut a, &mut b, false).unwrap();
        a.delete("gone").unwrap();
        sync_in_process(&mut a, &mut b, false).unwrap();
        b.put("mine", "2", PutOptions::default()).unwrap();
        let seen: Vec<_> = b
            .take_changes()
            .into_iter()
            .map(|c| match c {
                Change::Put(item) => (item.key, Some(item.value)),
                Change::Delete { key, .. } | Change::Expired { key, .. } => (key, None),
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (b"gone".to_vec(), Some(b"1".to_vec())),
                (b"x".to_vec(), Some(b"1".to_vec())),
                (b"gone".to_vec(), None),
                (b"mine".to_vec(), Some(b"2".to_vec())),
            ]
        );
        assert!(b.take_changes().is_empty());
        assert!(a.take_changes().is_empty(), "not recording");
    }
}
