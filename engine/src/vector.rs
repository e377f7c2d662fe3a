//! Version vectors: for each replica, the highest sequence number up to which this replica has
//! seen (or knows to be dead) every one of that replica's writes.
//!
//! Invariant kept here: a vector only moves forward ([`VersionVector::merge`] is a component-wise
//! maximum), so "my vector covers dot d" is a fact that, once true, stays true.

use crate::ids::{Dot, ReplicaId, Seq};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// How two version vectors relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causality {
    /// Both have seen exactly the same writes.
    Equal,
    /// The left has seen a strict subset of what the right has seen.
    Before,
    /// The left has seen a strict superset.
    After,
    /// Each has seen something the other has not.
    Concurrent,
}

/// Replica id → highest contiguous seq seen. Absent replicas are at `Seq(0)`.
///
/// Serialized as a sorted list of `(replica, seq)` pairs (CBOR: two small integers each).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "Vec<(ReplicaId, Seq)>", into = "Vec<(ReplicaId, Seq)>")]
pub struct VersionVector(BTreeMap<ReplicaId, Seq>);

impl From<Vec<(ReplicaId, Seq)>> for VersionVector {
    fn from(pairs: Vec<(ReplicaId, Seq)>) -> Self {
        let mut v = VersionVector::default();
        for (r, s) in pairs {
            v.advance(r, s);
        }
        v
    }
}

impl From<VersionVector> for Vec<(ReplicaId, Seq)> {
    fn from(v: VersionVector) -> Self {
        v.0.into_iter().collect()
    }
}

impl VersionVector {
    /// The empty vector: has seen nothing.
    #[must_use]
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// The seq seen for `replica` (0 if none).
    #[must_use]
    pub fn get(&self, replica: ReplicaId) -> Seq {
        self.0.get(&replica).copied().unwrap_or_default()
    }

    /// Whether the write `dot` is known here (seen, or superseded by something seen).
    #[must_use]
    pub fn covers(&self, dot: Dot) -> bool {
        self.get(dot.replica) >= dot.seq
    }

    /// Whether every write `other` knows is known here.
    #[must_use]
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(r, s)| self.get(*r) >= *s)
    }

    /// Raises `replica`'s entry to `seq` if it is lower; never lowers it.
    pub fn advance(&mut self, replica: ReplicaId, seq: Seq) {
        if seq == Seq(0) {
            return;
        }
        let slot = self.0.entry(replica).or_default();
        *slot = (*slot).max(seq);
    }

    /// Component-wise maximum: afterwards this vector covers everything either covered.
    pub fn merge(&mut self, other: &VersionVector) {
        for (r, s) in &other.0 {
            self.advance(*r, *s);
        }
    }

    /// Component-wise minimum: what both have seen.
    #[must_use]
    pub fn meet(&self, other: &VersionVector) -> VersionVector {
        VersionVector(self.0.iter().map(|(r, s)| (*r, (*s).min(other.get(*r)))).filter(|(_, s)| *s > Seq(0)).collect())
    }

    /// How this vector relates to `other`.
    #[must_use]
    pub fn compare(&self, other: &VersionVector) -> Causality {
        match (self.dominates(other), other.dominates(self)) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::After,
            (false, true) => Causality::Before,
            (false, false) => Causality::Concurrent,
        }
    }

    /// The replicas with a non-zero entry and their seqs, in replica order.
    pub fn iter(&self) -> impl Iterator<Item = (ReplicaId, Seq)> + '_ {
        self.0.iter().map(|(r, s)| (*r, *s))
    }

    /// Number of replicas with a non-zero entry.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether this vector has seen nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (r, s)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}:{s}")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv(pairs: &[(u64, u64)]) -> VersionVector {
        pairs.iter().map(|&(r, s)| (ReplicaId(r), Seq(s))).collect::<Vec<_>>().into()
    }

    fn arb_vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((0u64..4, 0u64..5), 0..4)
            .prop_map(|p| p.into_iter().map(|(r, s)| (ReplicaId(r), Seq(s))).collect::<Vec<_>>().into())
    }

    #[test]
    fn covers_and_compare() {
        let a = vv(&[(1, 3), (2, 1)]);
        assert!(a.covers(Dot { replica: ReplicaId(1), seq: Seq(3) }));
        assert!(!a.covers(Dot { replica: ReplicaId(1), seq: Seq(4) }));
        assert!(!a.covers(Dot { replica: ReplicaId(9), seq: Seq(1) }));
        assert_eq!(a.compare(&a), Causality::Equal);
        assert_eq!(vv(&[(1, 2)]).compare(&a), Causality::Before);
        assert_eq!(a.compare(&vv(&[(1, 2)])), Causality::After);
        assert_eq!(vv(&[(1, 4)]).compare(&a), Causality::Concurrent);
        assert_eq!(VersionVector::new().compare(&vv(&[(1, 0)])), Causality::Equal);
    }

    #[test]
    fn encodes_compactly_as_cbor_pairs() {
        let a = vv(&[(1, 3), (2, 70_000)]);
        let mut buf = Vec::new();
        ciborium::into_writer(&a, &mut buf).unwrap();
        // array(2) of [array(2) 1 3] [array(2) 2 uint32]: 1 + 3 + 7 bytes.
        assert_eq!(buf.len(), 11);
        let back: VersionVector = ciborium::from_reader(buf.as_slice()).unwrap();
        assert_eq!(back, a);
    }

    proptest! {
        #[test]
        fn merge_is_a_join(a in arb_vv(), b in arb_vv(), c in arb_vv()) {
            let mut ab = a.clone(); ab.merge(&b);
            let mut ba = b.clone(); ba.merge(&a);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone(); ab_c.merge(&c);
            let mut bc = b.clone(); bc.merge(&c);
            let mut a_bc = a.clone(); a_bc.merge(&bc);
            prop_assert_eq!(ab_c, a_bc);
            let mut aa = a.clone(); aa.merge(&a);
            prop_assert_eq!(&aa, &a);
            prop_assert!(ab.dominates(&a) && ab.dominates(&b));
            let m = a.meet(&b);
            prop_assert!(a.dominates(&m) && b.dominates(&m));
        }
    }
}
