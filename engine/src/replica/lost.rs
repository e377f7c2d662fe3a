//! Lost ranges as they travel (docs/design.md §9, §10): a member restored from an older copy
//! lost the writes it had numbered in `(from, to]` of its own seqs (`replica/restore.rs`); it
//! tells its peers and devices, so that devices upload their own writes under those dots again
//! and no member answers "known" on an admission that may be gone.
//!
//! Such a statement is a claim about one member, and another member's word for it does not
//! count (believed, one member could make every other take a third member's admissions as lost,
//! and every device upload again everything it holds under that member's dots). So:
//! - a member tells its own lost ranges as a [`LostStatement`] signed over
//!   [`crate::sign::lost_message`]; the statement is the whole list (lost ranges only grow, so
//!   a later statement covers an earlier one);
//! - a receiver takes a statement from the member it is about (the connection authenticates
//!   it) or, relayed, only if that member's signature verifies; one that does not changes
//!   nothing and is counted ([`Replica::lost_unverified`]), and the session goes on;
//! - a receiver keeps, per member, the statements not covered by another, at most
//!   [`LOST_STATEMENTS_MAX`] (the oldest dropped), and relays them as they were signed; what it
//!   acts on ([`Replica::lost_of`]) is their union;
//! - what it keeps of other members is durable ([`Meta::LostOthers`]), read back bounded, so a
//!   restart forgets none of it.

use crate::error::Result;
use crate::ids::{ReplicaId, Seq};
use crate::replica::Replica;
use crate::replica::restore::{LOST_RANGES_MAX, add_lost_range};
use crate::sign::{SIGNATURE_BYTES_MAX, bounded_signature, lost_message};
use crate::storage::{Batch, Meta, Snapshot, Storage, decode_cbor, encode_cbor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The most statements of one member kept (and relayed): more than one only when a member was
/// restored from a copy older than one of its earlier restores, whose lost ranges it forgot.
pub const LOST_STATEMENTS_MAX: usize = 4;

/// The most statements a handshake may carry: [`LOST_STATEMENTS_MAX`] for each of
/// [`crate::limits::HELLO_MEMBERS_MAX`] members.
pub const HELLO_LOST_STATEMENTS_MAX: usize = crate::limits::HELLO_MEMBERS_MAX * LOST_STATEMENTS_MAX;

/// A member's word of the ranges `(from, to]` of its own seqs it lost to restores, as it signed
/// it. On the wire a flat array `[member, ranges, signature]`; the ranges (at most
/// [`LOST_RANGES_MAX`], each non-empty) and the signature are bounded as they decode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostStatement(
    /// The member the ranges are of, and that signed them.
    pub ReplicaId,
    /// Its lost ranges `(from, to]`, ascending and disjoint.
    #[serde(deserialize_with = "bounded_ranges")]
    pub Vec<(Seq, Seq)>,
    /// Its signature over [`lost_message`] (empty: unsigned, counted only from that member).
    #[serde(serialize_with = "serde_bytes::serialize", deserialize_with = "bounded_signature")]
    pub Vec<u8>,
);

/// Decodes at most [`LOST_RANGES_MAX`] ranges, each `(from, to]` with `from < to`, ascending
/// and disjoint (as a member keeps them), refusing anything else.
fn bounded_ranges<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<(Seq, Seq)>, D::Error> {
    let ranges: Vec<(Seq, Seq)> = crate::limits::bounded_vec::<_, _, LOST_RANGES_MAX>(d)?;
    let ordered = ranges.iter().all(|(f, t)| f < t) && ranges.windows(2).all(|w| w[0].1 < w[1].0);
    if !ordered {
        return Err(serde::de::Error::custom("lost ranges must be (from, to] with from < to, ascending and disjoint"));
    }
    Ok(ranges)
}

impl LostStatement {
    /// Whether every range of `other` lies inside one of this statement's.
    fn covers(&self, other: &LostStatement) -> bool {
        other.1.iter().all(|&(f, t)| self.1.iter().any(|&(sf, st)| sf <= f && t <= st))
    }

    /// Whether it is signed by its member (never for an empty or oversized signature).
    fn verify(&self, with: &dyn crate::sign::AckSigner) -> bool {
        !self.2.is_empty()
            && self.2.len() <= SIGNATURE_BYTES_MAX
            && with.verify(self.0, &lost_message(self.0, &self.1), &self.2)
    }
}

/// Other members' statements as a store keeps them ([`Meta::LostOthers`]).
pub(crate) type LostOthers = BTreeMap<ReplicaId, Vec<LostStatement>>;

/// The statements a store kept of other members, bounded as they decode (at most
/// [`HELLO_LOST_STATEMENTS_MAX`] in all, each as on the wire).
pub(crate) fn load_lost_others(snap: &impl Snapshot) -> Result<LostOthers> {
    #[derive(Deserialize)]
    struct Stored(
        #[serde(deserialize_with = "crate::limits::bounded_vec::<_, _, HELLO_LOST_STATEMENTS_MAX>")] Vec<LostStatement>,
    );
    let Some(bytes) = snap.meta(Meta::LostOthers)? else { return Ok(LostOthers::new()) };
    let Stored(list) = decode_cbor("other members' lost ranges", &bytes)?;
    let mut out = LostOthers::new();
    for st in list {
        let kept = out.entry(st.0).or_default();
        if kept.len() < LOST_STATEMENTS_MAX {
            kept.push(st);
        }
    }
    Ok(out)
}

/// The union of `statements`' ranges (at most [`LOST_RANGES_MAX`], as [`add_lost_range`] keeps).
pub(crate) fn union_of(statements: &[LostStatement]) -> Vec<(Seq, Seq)> {
    let mut out = Vec::new();
    for (f, t) in statements.iter().flat_map(|s| s.1.iter().copied()) {
        add_lost_range(&mut out, f, t);
    }
    out
}

impl<S: Storage> Replica<S> {
    /// This replica's own lost ranges as a statement signed by it, if it lost any.
    pub(crate) fn own_lost_statement(&self) -> Option<LostStatement> {
        let ranges = self.lost_own().to_vec();
        (!ranges.is_empty()).then(|| {
            let signature = self.signer.sign(&lost_message(self.id(), &ranges));
            LostStatement(self.id(), ranges, signature)
        })
    }

    /// Every lost range statement this replica knows: its own, signed now, and what it kept of
    /// other members, as they were signed. What handshakes carry.
    #[must_use]
    pub fn lost_gossip(&self) -> Vec<LostStatement> {
        let others = self.lost_others.values().flatten().cloned();
        self.own_lost_statement().into_iter().chain(others).collect()
    }

    /// How many lost range statements about a third member, relayed unsigned or with a
    /// signature that does not verify, were not taken (memory only).
    #[must_use]
    pub fn lost_unverified(&self) -> u64 {
        self.lost_unverified
    }

    /// The ranges `(member, from, to]` of `statements` that a device takes from member `peer`:
    /// those of `peer` itself and those signed by the member they are of; the rest are counted
    /// ([`Replica::lost_unverified`]).
    pub(crate) fn verified_lost(
        &mut self,
        peer: ReplicaId,
        statements: &[LostStatement],
    ) -> Vec<(ReplicaId, Seq, Seq)> {
        let mut out = Vec::new();
        for st in statements {
            if st.0 == peer || st.verify(self.signer.as_ref()) {
                out.extend(st.1.iter().map(|&(f, t)| (st.0, f, t)));
            } else {
                self.lost_unverified = self.lost_unverified.saturating_add(1);
            }
        }
        out
    }

    /// Takes the lost range statements `peer`'s handshake told (see the module docs): of
    /// enrolled members other than this one, from `peer` itself or signed by the member they
    /// are of. What changed is made durable before it counts.
    pub(crate) fn merge_lost_gossip(&mut self, peer: ReplicaId, statements: &[LostStatement]) -> Result<()> {
        let me = self.id();
        let mut next = self.lost_others.clone();
        let mut changed = false;
        for st in statements {
            if st.0 == me || !self.membership.is_enrolled(st.0) || st.1.is_empty() {
                continue;
            }
            if st.0 != peer && !st.verify(self.signer.as_ref()) {
                self.lost_unverified = self.lost_unverified.saturating_add(1);
                continue;
            }
            let kept = next.entry(st.0).or_default();
            if kept.iter().any(|k| k.covers(st)) {
                continue;
            }
            kept.retain(|k| !st.covers(k));
            if kept.len() == LOST_STATEMENTS_MAX {
                kept.remove(0);
            }
            kept.push(st.clone());
            changed = true;
        }
        if !changed {
            return Ok(());
        }
        let all: Vec<&LostStatement> = next.values().flatten().collect();
        let mut batch = Batch::new();
        batch.set_meta(Meta::LostOthers, encode_cbor(&all));
        self.commit(&batch)?;
        self.lost_others_union = next.iter().map(|(&m, v)| (m, union_of(v))).collect();
        self.lost_others = next;
        Ok(())
    }
}
