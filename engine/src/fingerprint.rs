//! Range fingerprints over the live entries, for range-based set reconciliation.
//!
//! An item is one live entry, identified by `blake3(key, stamp)`. A range's [`Fingerprint`] is the
//! sum of its items' hashes mod 2^256 (additive, not XOR: XOR cancels pairs, so two copies of a
//! difference would vanish) and their count. [`LiveIndex`] keeps every live entry in a treap
//! ordered by key whose nodes carry the sum and count of their subtree, so any key range's
//! fingerprint, the key at any rank and the items of a small range come out in O(log n + k).
//!
//! Invariant kept here: each node's `sum` and `count` are exactly those of its subtree. The treap
//! priority is taken from the key's hash, so the shape, and every output, depends only on the set
//! of items, never on the order they were inserted.

use crate::hlc::Stamp;
use crate::ids::Dot;
use crate::sketch::Sketch;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::ops::Bound;

/// A 256-bit sum of item hashes with the number of items summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    /// The sum, as four little-endian 64-bit limbs.
    sum: [u64; 4],
    /// How many items.
    pub count: u64,
}

impl Fingerprint {
    /// The fingerprint of one item.
    #[must_use]
    pub fn of_item(key: &[u8], stamp: Stamp) -> Fingerprint {
        let mut h = blake3::Hasher::new();
        h.update(&(key.len() as u64).to_le_bytes());
        h.update(key);
        h.update(&stamp.hlc.0.to_le_bytes());
        h.update(&stamp.replica.0.to_le_bytes());
        let bytes = h.finalize();
        let b = bytes.as_bytes();
        let limb = |i: usize| {
            let mut w = [0; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        Fingerprint { sum: [limb(0), limb(1), limb(2), limb(3)], count: 1 }
    }
}

/// The fingerprint of the union of two disjoint sets.
impl std::ops::Add for Fingerprint {
    type Output = Fingerprint;

    fn add(self, other: Fingerprint) -> Fingerprint {
        let mut sum = [0; 4];
        let mut carry = false;
        for (i, out) in sum.iter_mut().enumerate() {
            let (s1, c1) = self.sum[i].overflowing_add(other.sum[i]);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            *out = s2;
            carry = c1 || c2;
        }
        Fingerprint { sum, count: self.count.wrapping_add(other.count) }
    }
}

/// The fingerprint of a set without one of its subsets.
impl std::ops::Sub for Fingerprint {
    type Output = Fingerprint;

    fn sub(self, other: Fingerprint) -> Fingerprint {
        let mut sum = [0; 4];
        let mut borrow = false;
        for (i, out) in sum.iter_mut().enumerate() {
            let (s1, b1) = self.sum[i].overflowing_sub(other.sum[i]);
            let (s2, b2) = s1.overflowing_sub(u64::from(borrow));
            *out = s2;
            borrow = b1 || b2;
        }
        Fingerprint { sum, count: self.count.wrapping_sub(other.count) }
    }
}

impl Fingerprint {
    /// The first 16 bytes of the sum, as sent on the wire (a false match needs a 2^-128 accident).
    #[must_use]
    pub fn wire(&self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.sum[0].to_le_bytes());
        out[8..].copy_from_slice(&self.sum[1].to_le_bytes());
        out
    }

    /// The sum's four 64-bit limbs (for one item: its hash), least significant first.
    pub(crate) fn limbs(&self) -> [u64; 4] {
        self.sum
    }

    /// A short id for one item (the first 4 bytes of its hash), used in item lists. Lists hold
    /// at most a few dozen items, so a collision inside one needs a 2^-25 accident, and costs
    /// only a missed difference until the next anti-entropy round changes the fingerprints.
    #[must_use]
    pub fn item_id(&self) -> ItemId {
        ItemId(self.sum[0] as u32)
    }
}

/// The short id of one item in a reconciliation item list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ItemId(pub u32);

/// What the index knows of one live entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveItem {
    /// The entry's stamp.
    pub stamp: Stamp,
    /// The entry's dot.
    pub dot: Dot,
    /// When it expires, if it has a TTL.
    pub expires_at_ms: Option<u64>,
}

impl LiveItem {
    /// The entry's dot.
    #[must_use]
    pub fn dot(&self) -> Dot {
        self.dot
    }
}

struct Node {
    key: Box<[u8]>,
    item: LiveItem,
    hash: Fingerprint,
    priority: u64,
    total: Fingerprint,
    left: Link,
    right: Link,
}

type Link = Option<Box<Node>>;

impl Node {
    fn new(key: &[u8], item: LiveItem) -> Box<Node> {
        let hash = Fingerprint::of_item(key, item.stamp);
        let priority = priority_of(key);
        Box::new(Node { key: key.into(), item, hash, priority, total: hash, left: None, right: None })
    }

    fn update(&mut self) {
        let mut total = self.hash;
        if let Some(l) = &self.left {
            total = total + l.total;
        }
        if let Some(r) = &self.right {
            total = total + r.total;
        }
        self.total = total;
    }
}

fn total(link: &Link) -> Fingerprint {
    link.as_ref().map(|n| n.total).unwrap_or_default()
}

/// Splits `t` into keys `< key` and keys `>= key`.
fn split(t: Link, key: &[u8]) -> (Link, Link) {
    match t {
        None => (None, None),
        Some(mut n) => {
            if &*n.key < key {
                let (l, r) = split(n.right.take(), key);
                n.right = l;
                n.update();
                (Some(n), r)
            } else {
                let (l, r) = split(n.left.take(), key);
                n.left = r;
                n.update();
                (l, Some(n))
            }
        }
    }
}

/// A key's treap priority: FNV-1a with a SplitMix64 finish. It only shapes the tree (every output
/// is a function of the item set), so it needs to be cheap and well spread, not cryptographic; it
/// must depend on the key alone, which `upsert` relies on.
fn priority_of(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Joins two treaps where every key of `a` is below every key of `b`.
fn join(a: Link, b: Link) -> Link {
    match (a, b) {
        (None, b) => b,
        (a, None) => a,
        (Some(mut a), Some(mut b)) => {
            if a.priority >= b.priority {
                a.right = join(a.right.take(), Some(b));
                a.update();
                Some(a)
            } else {
                b.left = join(Some(a), b.left.take());
                b.update();
                Some(b)
            }
        }
    }
}

/// Removes `key` from `t`, returning its item and the item's hash.
fn remove(t: &mut Link, key: &[u8]) -> Option<(LiveItem, Fingerprint)> {
    let n = t.as_mut()?;
    let removed = match key.cmp(&n.key) {
        Ordering::Less => remove(&mut n.left, key),
        Ordering::Greater => remove(&mut n.right, key),
        Ordering::Equal => {
            let mut node = t.take()?;
            *t = join(node.left.take(), node.right.take());
            return Some((node.item, node.hash));
        }
    };
    if removed.is_some()
        && let Some(n) = t.as_mut()
    {
        n.update();
    }
    removed
}

/// Inserts `node`, or replaces the item of the node with its key, in one walk down; returns the
/// item replaced and its hash. A key's priority is a function of the key, so a node that outranks
/// `n` cannot have its key below `n`: splitting there is safe.
fn upsert(t: Link, mut node: Box<Node>) -> (Link, Option<(LiveItem, Fingerprint)>) {
    match t {
        None => (Some(node), None),
        Some(mut n) => {
            let old = match node.key.cmp(&n.key) {
                Ordering::Equal => {
                    let hash = std::mem::replace(&mut n.hash, node.hash);
                    Some((std::mem::replace(&mut n.item, node.item), hash))
                }
                _ if node.priority > n.priority => {
                    let (l, r) = split(Some(n), &node.key);
                    node.left = l;
                    node.right = r;
                    node.update();
                    return (Some(node), None);
                }
                Ordering::Less => {
                    let (l, old) = upsert(n.left.take(), node);
                    n.left = l;
                    old
                }
                Ordering::Greater => {
                    let (r, old) = upsert(n.right.take(), node);
                    n.right = r;
                    old
                }
            };
            n.update();
            (Some(n), old)
        }
    }
}

fn below(b: Bound<&[u8]>, key: &[u8]) -> bool {
    // Whether `key` lies before the lower bound `b`.
    match b {
        Bound::Included(x) => key < x,
        Bound::Excluded(x) => key <= x,
        Bound::Unbounded => false,
    }
}

fn above(b: Bound<&[u8]>, key: &[u8]) -> bool {
    // Whether `key` lies after the upper bound `b`.
    match b {
        Bound::Included(x) => key > x,
        Bound::Excluded(x) => key >= x,
        Bound::Unbounded => false,
    }
}

/// Every live entry, ordered by key, with subtree fingerprints, and the same items in an
/// invertible Bloom lookup table ([`Sketch`]).
#[derive(Default)]
pub struct LiveIndex {
    root: Link,
    sketch: Sketch,
}

impl std::fmt::Debug for LiveIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveIndex").field("count", &self.len()).finish()
    }
}

impl Drop for LiveIndex {
    fn drop(&mut self) {
        // Drop iteratively: a deep tree would otherwise recurse once per level.
        let mut stack: Vec<Box<Node>> = self.root.take().into_iter().collect();
        while let Some(mut n) = stack.pop() {
            stack.extend(n.left.take());
            stack.extend(n.right.take());
        }
    }
}

impl LiveIndex {
    /// An empty index.
    #[must_use]
    pub fn new() -> LiveIndex {
        LiveIndex::default()
    }

    /// Number of items.
    #[must_use]
    pub fn len(&self) -> u64 {
        total(&self.root).count
    }

    /// Whether there are no items.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.root.is_none()
    }

    /// Sets `key`'s item, replacing any other; returns the one replaced.
    pub fn insert(&mut self, key: &[u8], item: LiveItem) -> Option<LiveItem> {
        let node = Node::new(key, item);
        self.sketch.toggle(1, key, item.stamp, &node.hash);
        let (root, old) = upsert(self.root.take(), node);
        self.root = root;
        let (old, hash) = old?;
        self.sketch.toggle(-1, key, old.stamp, &hash);
        Some(old)
    }

    /// Removes `key`'s item, returning it.
    pub fn remove(&mut self, key: &[u8]) -> Option<LiveItem> {
        let (old, hash) = remove(&mut self.root, key)?;
        self.sketch.toggle(-1, key, old.stamp, &hash);
        Some(old)
    }

    /// The items as an invertible Bloom lookup table.
    #[must_use]
    pub fn sketch(&self) -> &Sketch {
        &self.sketch
    }

    /// `key`'s item.
    #[must_use]
    pub fn get(&self, key: &[u8]) -> Option<&LiveItem> {
        let mut link = &self.root;
        while let Some(n) = link {
            link = match key.cmp(&n.key) {
                Ordering::Less => &n.left,
                Ordering::Greater => &n.right,
                Ordering::Equal => return Some(&n.item),
            };
        }
        None
    }

    /// The fingerprint of all items with keys before the lower bound `b` (that is, not in
    /// `(b, ..)`). O(depth).
    fn before(&self, b: Bound<&[u8]>) -> Fingerprint {
        let mut acc = Fingerprint::default();
        let mut link = &self.root;
        while let Some(n) = link {
            if below(b, &n.key) {
                acc = acc + total(&n.left) + n.hash;
                link = &n.right;
            } else {
                link = &n.left;
            }
        }
        acc
    }

    /// The fingerprint of all items with keys up to the upper bound `b` (in `(.., b)`).
    fn up_to(&self, b: Bound<&[u8]>) -> Fingerprint {
        let mut acc = Fingerprint::default();
        let mut link = &self.root;
        while let Some(n) = link {
            if above(b, &n.key) {
                link = &n.left;
            } else {
                acc = acc + total(&n.left) + n.hash;
                link = &n.right;
            }
        }
        acc
    }

    /// The fingerprint of the items with keys in `(lower, upper)`. O(log n).
    #[must_use]
    pub fn fingerprint(&self, lower: Bound<&[u8]>, upper: Bound<&[u8]>) -> Fingerprint {
        let upto = self.up_to(upper);
        let before = self.before(lower);
        if upto.count <= before.count {
            return Fingerprint::default();
        }
        upto - before
    }

    /// The key of the item at `rank` (0-based, in key order).
    #[must_use]
    pub fn key_at_rank(&self, mut rank: u64) -> Option<&[u8]> {
        let mut link = &self.root;
        while let Some(n) = link {
            let left = total(&n.left).count;
            match rank.cmp(&left) {
                Ordering::Less => link = &n.left,
                Ordering::Equal => return Some(&n.key),
                Ordering::Greater => {
                    rank -= left + 1;
                    link = &n.right;
                }
            }
        }
        None
    }

    /// How many items have keys before the lower bound `b`.
    #[must_use]
    pub fn rank_of(&self, b: Bound<&[u8]>) -> u64 {
        self.before(b).count
    }

    /// Visits the items with keys in `(lower, upper)` in key order, with their item fingerprints.
    pub fn for_each_in(
        &self,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &LiveItem, Fingerprint),
    ) {
        // In-order walk that skips subtrees wholly outside the range.
        let mut stack: Vec<&Node> = Vec::new();
        let mut link = self.root.as_deref();
        loop {
            while let Some(n) = link {
                if below(lower, &n.key) {
                    link = n.right.as_deref();
                } else {
                    stack.push(n);
                    link = n.left.as_deref();
                }
            }
            let Some(n) = stack.pop() else { return };
            if above(upper, &n.key) {
                return;
            }
            visit(&n.key, &n.item, n.hash);
            link = n.right.as_deref();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::ids::ReplicaId;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn item(w: u64) -> LiveItem {
        let dot = Dot { replica: ReplicaId(1), seq: crate::ids::Seq(w + 1) };
        LiveItem { stamp: Stamp { hlc: Hlc::new(w, 0), replica: ReplicaId(1) }, dot, expires_at_ms: None }
    }

    fn naive(model: &BTreeMap<Vec<u8>, LiveItem>, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Fingerprint {
        model
            .range::<[u8], _>((lo, hi))
            .fold(Fingerprint::default(), |acc, (k, i)| acc + Fingerprint::of_item(k, i.stamp))
    }

    fn bound(kind: u8, key: &[u8]) -> Bound<&[u8]> {
        match kind % 3 {
            0 => Bound::Included(key),
            1 => Bound::Excluded(key),
            _ => Bound::Unbounded,
        }
    }

    proptest! {
        #[test]
        fn range_fingerprints_match_a_naive_sum(
            ops in proptest::collection::vec((any::<bool>(), 0u8..40, 0u64..5), 0..200),
            queries in proptest::collection::vec((0u8..3, 0u8..42, 0u8..3, 0u8..42), 1..20),
        ) {
            let mut index = LiveIndex::new();
            let mut model = BTreeMap::new();
            for (put, k, w) in ops {
                let key = vec![b'k', k];
                if put {
                    prop_assert_eq!(index.insert(&key, item(w)), model.insert(key, item(w)));
                } else {
                    prop_assert_eq!(index.remove(&key), model.remove(&key));
                }
            }
            prop_assert_eq!(index.len(), model.len() as u64);
            // The sketch kept through the inserts and removals is the sketch of what is left.
            let mut fresh = crate::sketch::Sketch::default();
            for (k, it) in &model {
                fresh.toggle(1, k, it.stamp, &Fingerprint::of_item(k, it.stamp));
            }
            let size = crate::sketch::CELLS_MAX;
            prop_assert_eq!(index.sketch().encode(size), fresh.encode(size));
            for (lk, l, uk, u) in queries {
                let (lkey, ukey) = (vec![b'k', l], vec![b'k', u]);
                let (lo, hi) = (bound(lk, &lkey), bound(uk, &ukey));
                let valid = match (lo, hi) {
                    (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => a < b,
                    _ => true,
                };
                if !valid { continue; }
                prop_assert_eq!(index.fingerprint(lo, hi), naive(&model, lo, hi));
                let mut listed = Vec::new();
                index.for_each_in(lo, hi, &mut |k, _, _| listed.push(k.to_vec()));
                let expected: Vec<_> = model.range::<[u8], _>((lo, hi)).map(|(k, _)| k.clone()).collect();
                prop_assert_eq!(listed, expected);
                prop_assert_eq!(index.rank_of(lo), model.range::<[u8], _>((Bound::Unbounded, match lo {
                    Bound::Included(x) => Bound::Excluded(x),
                    Bound::Excluded(x) => Bound::Included(x),
                    Bound::Unbounded => Bound::Excluded(&[][..]),
                })).count() as u64);
            }
            for (rank, key) in model.keys().enumerate() {
                prop_assert_eq!(index.key_at_rank(rank as u64), Some(key.as_slice()));
            }
        }

        #[test]
        fn the_fingerprint_of_a_union_is_the_sum_of_the_parts(
            a in proptest::collection::btree_set(0u16..500, 0..50),
            b in proptest::collection::btree_set(500u16..1000, 0..50),
        ) {
            let fp = |set: &std::collections::BTreeSet<u16>| set.iter().fold(Fingerprint::default(), |acc, k| {
                acc + Fingerprint::of_item(&k.to_be_bytes(), item(0).stamp)
            });
            let union: std::collections::BTreeSet<u16> = a.union(&b).copied().collect();
            prop_assert_eq!(fp(&a) + fp(&b), fp(&union));
            prop_assert_eq!(fp(&union) - fp(&b), fp(&a));
        }
    }

    #[test]
    fn shape_and_fingerprints_do_not_depend_on_insertion_order() {
        let keys: Vec<Vec<u8>> = (0..300u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let mut a = LiveIndex::new();
        let mut b = LiveIndex::new();
        for k in &keys {
            a.insert(k, item(1));
        }
        for k in keys.iter().rev() {
            b.insert(k, item(1));
        }
        assert_eq!(
            a.fingerprint(Bound::Unbounded, Bound::Unbounded),
            b.fingerprint(Bound::Unbounded, Bound::Unbounded)
        );
        assert_eq!(a.key_at_rank(150), b.key_at_rank(150));
    }
}
