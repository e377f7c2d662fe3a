//! Membership and causal stability: which replicas' acknowledgements count, what each has
//! acknowledged, and the two-step checkpoint that decides when tombstones may be collected.
//!
//! Invariants kept here (docs/design.md §2):
//! - an acknowledged vector only grows (gossip joins, never replaces);
//! - the stable frontier F is the meet of this replica's vector and every member's acknowledged
//!   vector; J is their join;
//! - a tombstone is collected only after a checkpoint (F₀, J₀) was noted with its dot under F₀ and
//!   a later F covers J₀, so every write concurrent with it has been seen by every member;
//! - a member silent for longer than the lease is evicted and no longer holds collection back;
//!   the eviction's time is kept, and an acknowledgement it signed no later than that does not
//!   bring it back when another member relays it (its own word, later, does);
//! - **only an enrolled replica can be a member** (docs/design.md §2.4): the operator enrols at most
//!   [`MEMBERS_MAX`] replicas (this one included); gossip and acknowledgements about any other
//!   replica are ignored, so a peer can neither create a member nor grow this table;
//! - **a replica becomes a member only when its acknowledged vector covers `collected`**, the join
//!   of every frontier under which tombstones were collected here, **and the frontier F₀ of the
//!   pending checkpoint**, if any. The newcomer has then seen each collected tombstone and each
//!   tombstone that may be collected next (or something newer), holds none of the versions they
//!   deleted, and writes nothing concurrent with them from then on. Without this rule, an evicted
//!   replica re-added by gossip would drag the frontier down to its old vector, look up to date
//!   for delta sync, and keep what was deleted while it was away. (Requiring the current stable
//!   frontier instead would be safe but could starve: a replica that keeps writing moves its
//!   frontier faster than a peer can catch up; F₀ stays put until the next collection.)
//! - **on admission, the newcomer's acknowledged vector joins J₀** of the pending checkpoint: its
//!   writes from before it saw the pending tombstones may be concurrent with them, and the second
//!   step must wait until every member has seen those too (found by the simulation: a stale
//!   session frame carried such a write to a replica that had just collected the tombstone).

use crate::ids::ReplicaId;
use crate::vector::VersionVector;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The default lease: a member silent for 30 days stops counting.
pub const LEASE_MS_DEFAULT: u64 = 30 * 24 * 3600 * 1000;

/// The most members a replica counts, itself included (docs/design.md §2.4): it enrols at most
/// `MEMBERS_MAX - 1` others, and a handshake gossips at most this many records.
pub const MEMBERS_MAX: usize = 64;

/// Enrolling one more replica would exceed [`MEMBERS_MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot enrol replica {replica}: {enrolled} replicas are enrolled besides this one, and a replica \
     counts at most {max} members including itself; remove a member first, or let the others sync as \
     non-members"
)]
pub struct TooManyMembers {
    /// The replica that was to be enrolled.
    pub replica: ReplicaId,
    /// How many others are enrolled.
    pub enrolled: usize,
    /// [`MEMBERS_MAX`].
    pub max: usize,
}

/// What this replica knows of one other member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The newest vector the member is known to have made durable.
    pub acked: VersionVector,
    /// When it was last heard from (directly or through gossip), in wall-clock ms.
    pub last_heard_ms: u64,
    /// The latest acknowledgement it signed (`sign.rs`), heard from it or relayed with a valid
    /// signature: what this replica relays about it, since a merged record is no one's claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<crate::sign::SignedAck>,
}

/// One member as gossiped in a handshake.
///
/// About the sender itself, the claim is the connection's and counts as it is; about any other
/// replica, it counts only if `signature` is that replica's over (`replica`, `acked`,
/// `last_heard_ms`): then it is an acknowledgement that replica signed, at its own wall time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member.
    pub replica: ReplicaId,
    /// Its acknowledged vector.
    pub acked: VersionVector,
    /// When it was last heard from (for a signed claim: when it signed).
    pub last_heard_ms: u64,
    /// The member's signature over the claim ([`crate::sign::ack_message`]); empty: unsigned.
    pub signature: Vec<u8>,
}

impl MemberInfo {
    /// The claim as a signed acknowledgement, to verify.
    #[must_use]
    pub fn as_signed(&self) -> crate::sign::SignedAck {
        crate::sign::SignedAck {
            signer: self.replica,
            vector: self.acked.clone(),
            time_ms: self.last_heard_ms,
            signature: self.signature.clone(),
        }
    }
}

impl From<crate::sign::SignedAck> for MemberInfo {
    fn from(a: crate::sign::SignedAck) -> Self {
        MemberInfo { replica: a.signer, acked: a.vector, last_heard_ms: a.time_ms, signature: a.signature }
    }
}

/// The other members (this replica is implicitly one), and the replicas enrolled as members.
///
/// Invariant: every member is enrolled, and at most `MEMBERS_MAX - 1` replicas are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "MembershipWire", into = "MembershipWire")]
pub struct Membership {
    members: BTreeMap<ReplicaId, Member>,
    /// The join of every frontier under which tombstones were collected here.
    collected: VersionVector,
    /// The replicas the operator enrolled (besides this one): only they can become members.
    enrolled: BTreeSet<ReplicaId>,
    /// When each enrolled replica was last evicted here (this replica's clock, ms).
    evicted: BTreeMap<ReplicaId, u64>,
}

/// The stored form. A store written before enrolment existed has no `enrolled` list: its
/// members are taken as enrolled, so an upgrade drops no member from the frontier, unless they
/// are too many to be real (gossip could once create members): then none is, and the node's
/// enrolment at start brings the real ones back.
#[derive(Serialize, Deserialize)]
struct MembershipWire {
    members: BTreeMap<ReplicaId, Member>,
    collected: VersionVector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enrolled: Option<BTreeSet<ReplicaId>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    evicted: BTreeMap<ReplicaId, u64>,
}

impl From<Membership> for MembershipWire {
    fn from(m: Membership) -> Self {
        MembershipWire { members: m.members, collected: m.collected, enrolled: Some(m.enrolled), evicted: m.evicted }
    }
}

impl From<MembershipWire> for Membership {
    fn from(w: MembershipWire) -> Self {
        let enrolled = w.enrolled.unwrap_or_else(|| {
            if w.members.len() < MEMBERS_MAX { w.members.keys().copied().collect() } else { BTreeSet::new() }
        });
        let mut members = w.members;
        members.retain(|r, _| enrolled.contains(r));
        let mut evicted = w.evicted;
        evicted.retain(|r, _| enrolled.contains(r));
        Membership { members, collected: w.collected, enrolled, evicted }
    }
}

/// A noted stable frontier and the join of acknowledged vectors at that moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// F₀: what every member had acknowledged.
    pub frontier: VersionVector,
    /// J₀: what any member had acknowledged; covers every write concurrent with what F₀ covers.
    pub join: VersionVector,
}

impl Membership {
    /// Whether `replica` counts.
    #[must_use]
    pub fn contains(&self, replica: ReplicaId) -> bool {
        self.members.contains_key(&replica)
    }

    /// Whether `replica` is enrolled (it may be a member, or become one).
    #[must_use]
    pub fn is_enrolled(&self, replica: ReplicaId) -> bool {
        self.enrolled.contains(&replica)
    }

    /// The enrolled replicas (besides this one), in id order.
    pub fn enrolled(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.enrolled.iter().copied()
    }

    /// Enrols `replica`, so that its acknowledgements may make it a member (under the admission
    /// rule). Returns whether it was new. Fails when [`MEMBERS_MAX`] would be exceeded.
    pub fn enrol(&mut self, replica: ReplicaId) -> Result<bool, TooManyMembers> {
        if self.enrolled.contains(&replica) {
            return Ok(false);
        }
        if self.enrolled.len() + 1 >= MEMBERS_MAX {
            return Err(TooManyMembers { replica, enrolled: self.enrolled.len(), max: MEMBERS_MAX });
        }
        self.enrolled.insert(replica);
        Ok(true)
    }

    /// Removes `replica` from the enrolled set and from the members (an operator's removal).
    /// Returns whether it was enrolled.
    pub fn unenrol(&mut self, replica: ReplicaId) -> bool {
        self.members.remove(&replica);
        self.evicted.remove(&replica);
        self.enrolled.remove(&replica)
    }

    /// The members and what is known of them.
    pub fn iter(&self) -> impl Iterator<Item = (ReplicaId, &Member)> {
        self.members.iter().map(|(r, m)| (*r, m))
    }

    /// Number of other members.
    #[must_use]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no other members.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The stable frontier: the meet of `own` and every member's acknowledged vector.
    #[must_use]
    pub fn frontier(&self, own: &VersionVector) -> VersionVector {
        self.members.values().fold(own.clone(), |f, m| f.meet(&m.acked))
    }

    /// The join of `own` and every member's acknowledged vector.
    #[must_use]
    pub fn join(&self, own: &VersionVector) -> VersionVector {
        self.members.values().fold(own.clone(), |mut j, m| {
            j.merge(&m.acked);
            j
        })
    }

    /// The member `replica`, if it is one.
    #[must_use]
    pub fn get(&self, replica: ReplicaId) -> Option<&Member> {
        self.members.get(&replica)
    }

    /// Records that `replica` has made `acked` durable, heard at `now_ms`. A member's record
    /// grows; an enrolled non-member is admitted only if `acked` covers every collected
    /// tombstone; a replica not enrolled is ignored. Returns whether `replica` is a member
    /// afterwards.
    ///
    /// `pending` is the frontier F₀ of the pending checkpoint, if any: a newcomer must cover it too.
    pub fn acknowledge(
        &mut self,
        replica: ReplicaId,
        acked: &VersionVector,
        now_ms: u64,
        pending: Option<&VersionVector>,
    ) -> bool {
        if let Some(m) = self.members.get_mut(&replica) {
            // A record that would grow past the bound a peer's decoder enforces would make every
            // later handshake of this replica refused: keep it as it was.
            if crate::limits::merged_components(&m.acked, acked) > crate::limits::VECTOR_COMPONENTS_MAX {
                return true;
            }
            m.acked.merge(acked);
            m.last_heard_ms = m.last_heard_ms.max(now_ms);
            return true;
        }
        if !self.enrolled.contains(&replica) {
            return false;
        }
        if !acked.dominates(&self.collected) || pending.is_some_and(|f| !acked.dominates(f)) {
            return false;
        }
        self.members.insert(replica, Member { acked: acked.clone(), last_heard_ms: now_ms, signed: None });
        true
    }

    /// Keeps `ack` as the latest signed acknowledgement of its signer, if that is a member and
    /// `ack` is newer than the one kept (the caller has verified it).
    pub fn note_signed(&mut self, ack: crate::sign::SignedAck) {
        if let Some(m) = self.members.get_mut(&ack.signer)
            && ack.is_newer_than(m.signed.as_ref())
        {
            m.signed = Some(ack);
        }
    }

    /// Notes that tombstones under `frontier` were collected.
    pub fn collected_under(&mut self, frontier: &VersionVector) {
        self.collected.merge(frontier);
    }

    /// The join of every frontier under which tombstones were collected.
    #[must_use]
    pub fn collected(&self) -> &VersionVector {
        &self.collected
    }

    /// This membership as gossip, after this replica's own signed acknowledgement `own`: for
    /// each member its latest signed acknowledgement, or, lacking one, its record unsigned (which
    /// a receiver counts for nothing: neither its frontier nor the restore check of
    /// `replica/restore.rs`, which reads only records whose signature verifies).
    #[must_use]
    pub fn gossip(&self, own: crate::sign::SignedAck) -> Vec<MemberInfo> {
        let mut out = vec![MemberInfo::from(own)];
        out.extend(self.members.iter().map(|(r, m)| match &m.signed {
            Some(signed) => MemberInfo::from(signed.clone()),
            None => MemberInfo {
                replica: *r,
                acked: m.acked.clone(),
                last_heard_ms: m.last_heard_ms,
                signature: Vec::new(),
            },
        }));
        out
    }

    /// Removes members not heard from since `now_ms - lease_ms`; returns them.
    pub fn evict_silent(&mut self, now_ms: u64, lease_ms: u64) -> Vec<ReplicaId> {
        let cutoff = now_ms.saturating_sub(lease_ms);
        let evicted: Vec<_> = self.members.iter().filter(|(_, m)| m.last_heard_ms < cutoff).map(|(r, _)| *r).collect();
        for r in &evicted {
            self.members.remove(r);
            self.evicted.insert(*r, now_ms);
        }
        evicted
    }

    /// Forgets `replica` (eviction by an operator) at `now_ms`.
    pub fn remove(&mut self, replica: ReplicaId, now_ms: u64) -> bool {
        let was = self.members.remove(&replica).is_some();
        if was {
            self.evicted.insert(replica, now_ms);
        }
        was
    }

    /// Whether an acknowledgement `replica` signed at `time_ms` is from before its last eviction
    /// here, so that, relayed by another member, it must not bring it back: the eviction would
    /// otherwise be undone by any replay of a genuine older acknowledgement.
    #[must_use]
    pub fn evicted_after(&self, replica: ReplicaId, time_ms: u64) -> bool {
        !self.members.contains_key(&replica) && self.evicted.get(&replica).is_some_and(|&at| time_ms <= at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Seq;

    fn enrolled(ids: &[u64]) -> Membership {
        let mut m = Membership::default();
        for id in ids {
            m.enrol(ReplicaId(*id)).unwrap();
        }
        m
    }

    #[test]
    fn a_replica_not_enrolled_never_becomes_a_member_and_enrolment_is_bounded() {
        let mut m = enrolled(&[2]);
        assert!(!m.acknowledge(ReplicaId(9), &vv(&[(9, 1)]), 10, None));
        assert!(!m.contains(ReplicaId(9)) && m.is_empty());
        for id in 3..(MEMBERS_MAX as u64 + 1) {
            m.enrol(ReplicaId(id)).unwrap();
        }
        let err = m.enrol(ReplicaId(1000)).unwrap_err();
        assert_eq!((err.enrolled, err.max), (MEMBERS_MAX - 1, MEMBERS_MAX));
        assert!(m.acknowledge(ReplicaId(2), &vv(&[(2, 1)]), 10, None));
        assert!(m.unenrol(ReplicaId(2)));
        assert!(!m.contains(ReplicaId(2)) && !m.is_enrolled(ReplicaId(2)));
    }

    #[test]
    fn a_store_from_before_enrolment_keeps_its_members_unless_they_are_too_many() {
        let wire = |n: u64| {
            let members: BTreeMap<ReplicaId, Member> = (1..=n)
                .map(|i| (ReplicaId(i), Member { acked: vv(&[(i, 1)]), last_heard_ms: 5, signed: None }))
                .collect();
            #[derive(Serialize)]
            struct Old {
                members: BTreeMap<ReplicaId, Member>,
                collected: VersionVector,
            }
            let mut old = Vec::new();
            ciborium::into_writer(&Old { members, collected: VersionVector::new() }, &mut old).unwrap();
            ciborium::from_reader::<Membership, _>(old.as_slice()).unwrap()
        };
        let few = wire(3);
        assert_eq!((few.len(), few.enrolled().count()), (3, 3));
        let poisoned = wire(MEMBERS_MAX as u64);
        assert_eq!((poisoned.len(), poisoned.enrolled().count()), (0, 0));
        let mut bytes = Vec::new();
        ciborium::into_writer(&few, &mut bytes).unwrap();
        assert_eq!(ciborium::from_reader::<Membership, _>(bytes.as_slice()).unwrap(), few);
    }

    fn vv(pairs: &[(u64, u64)]) -> VersionVector {
        pairs.iter().map(|&(r, s)| (ReplicaId(r), Seq(s))).collect::<Vec<_>>().into()
    }

    #[test]
    fn frontier_is_the_meet_and_join_the_join() {
        let mut m = enrolled(&[2, 3]);
        assert!(m.acknowledge(ReplicaId(2), &vv(&[(1, 5), (2, 3)]), 10, None));
        assert!(m.acknowledge(ReplicaId(3), &vv(&[(1, 2), (2, 9)]), 10, None));
        let own = vv(&[(1, 7), (2, 4)]);
        assert_eq!(m.frontier(&own), vv(&[(1, 2), (2, 3)]));
        assert_eq!(m.join(&own), vv(&[(1, 7), (2, 9)]));
    }

    #[test]
    fn a_replica_that_missed_collected_tombstones_is_not_admitted() {
        let mut m = enrolled(&[2, 3]);
        // Before anything is collected, anyone is admitted.
        assert!(m.acknowledge(ReplicaId(2), &vv(&[(1, 1)]), 10, None));
        m.collected_under(&vv(&[(1, 6)]));
        // Tombstones up to {1:6} are gone: a replica that has seen only {1:4} stays out.
        assert!(!m.acknowledge(ReplicaId(3), &vv(&[(1, 4)]), 10, None));
        assert!(!m.contains(ReplicaId(3)));
        // Nor one that has not seen the pending checkpoint's frontier.
        assert!(!m.acknowledge(ReplicaId(3), &vv(&[(1, 6), (3, 1)]), 10, Some(&vv(&[(1, 8)]))));
        assert!(m.acknowledge(ReplicaId(3), &vv(&[(1, 6), (3, 1)]), 10, None));
        // A member's own record grows whatever it reports.
        assert!(m.acknowledge(ReplicaId(2), &vv(&[(1, 3)]), 20, None));
    }

    #[test]
    fn a_members_record_only_grows_and_eviction_follows_the_lease() {
        let mut m = enrolled(&[2, 3]);
        m.acknowledge(ReplicaId(2), &vv(&[(1, 5)]), 100, None);
        m.acknowledge(ReplicaId(2), &vv(&[(1, 3)]), 50, None);
        m.acknowledge(ReplicaId(3), &vv(&[(3, 1)]), 900, None);
        assert_eq!(m.iter().find(|(r, _)| *r == ReplicaId(2)).unwrap().1.acked, vv(&[(1, 5)]));
        assert!(m.contains(ReplicaId(3)));
        assert_eq!(m.evict_silent(1000, 500), vec![ReplicaId(2)]);
        assert!(m.contains(ReplicaId(3)) && !m.contains(ReplicaId(2)));
    }
}
