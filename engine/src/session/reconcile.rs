//! Range-based set reconciliation over the live entries: pure functions over a [`LiveIndex`].
//!
//! The source describes a range as up to [`BRANCHING`] contiguous parts of about equal item
//! count, each by fingerprint, or by its item ids once it holds at most [`LEAF_ITEMS`]. The sink
//! compares each part with its own items: equal parts are done; differing parts are split again
//! (or sent whole when the sink holds nothing there); item lists show exactly which items differ.
//! Rounds ≈ ⌈log16 n⌉, bytes O(d log n).

use super::SyncError;
use super::message::{KeyBounds, PartContent, RangeGroup, RangePart, SketchMsg};
use crate::fingerprint::{Fingerprint, ItemId, LiveIndex};
use crate::hlc::Stamp;
use crate::ids::Dot;
use crate::sketch;
use crate::vector::VersionVector;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

/// Parts per split range.
pub const BRANCHING: u64 = 16;
/// A range the sink asks to split that holds at most this many items is answered with its item
/// list instead.
pub const LEAF_ITEMS: u64 = 32;
/// A part this small goes as item ids (4 bytes each), cheaper than a fingerprint (16 bytes).
const INLINE_ITEMS: u64 = 3;

fn lower(b: &Option<Vec<u8>>) -> Bound<&[u8]> {
    b.as_deref().map_or(Bound::Unbounded, Bound::Included)
}

fn upper(b: &Option<Vec<u8>>) -> Bound<&[u8]> {
    b.as_deref().map_or(Bound::Unbounded, Bound::Excluded)
}

/// The shortest key `s` with `a < s <= b` (for `a < b`): the part boundary sent on the wire.
fn separator(a: &[u8], b: &[u8]) -> Vec<u8> {
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    b[..(common + 1).min(b.len())].to_vec()
}

fn items(live: &LiveIndex, lo: Bound<&[u8]>, hi: Bound<&[u8]>, offered: &mut BTreeMap<ItemId, Vec<u8>>) -> PartContent {
    let mut ids = Vec::new();
    live.for_each_in(lo, hi, &mut |key, _, fp| {
        ids.push(fp.item_id());
        offered.insert(fp.item_id(), key.to_vec());
    });
    PartContent::Items(ids)
}

/// Source side: describes `bounds` as parts, recording the ids of listed items in `offered` so a
/// reply can name them.
pub fn describe(live: &LiveIndex, bounds: &KeyBounds, offered: &mut BTreeMap<ItemId, Vec<u8>>) -> RangeGroup {
    let (lo, hi) = (lower(&bounds.0), upper(&bounds.1));
    let count = live.fingerprint(lo, hi).count;
    if count <= LEAF_ITEMS {
        return RangeGroup(bounds.0.clone(), vec![RangePart(bounds.1.clone(), items(live, lo, hi, offered))]);
    }
    let start = live.rank_of(lo);
    let mut cuts = Vec::with_capacity(BRANCHING as usize);
    for i in 1..BRANCHING {
        let rank = start + count * i / BRANCHING;
        if let (Some(a), Some(b)) = (live.key_at_rank(rank - 1), live.key_at_rank(rank)) {
            cuts.push(Some(separator(a, b)));
        }
    }
    cuts.push(bounds.1.clone());
    let mut parts = Vec::with_capacity(cuts.len());
    let mut part_lower = bounds.0.clone();
    for cut in cuts {
        let (plo, phi) = (lower(&part_lower), upper(&cut));
        let fp = live.fingerprint(plo, phi);
        let content = if fp.count <= INLINE_ITEMS {
            items(live, plo, phi, offered)
        } else {
            PartContent::Fingerprint(fp.wire(), fp.count)
        };
        parts.push(RangePart(cut.clone(), content));
        part_lower = cut;
    }
    RangeGroup(bounds.0.clone(), parts)
}

/// The bounds of every part of `groups`: what a reply to them may ask to split or send.
#[must_use]
pub fn part_bounds(groups: &[RangeGroup]) -> BTreeSet<KeyBounds> {
    let mut out = BTreeSet::new();
    for RangeGroup(group_lower, parts) in groups {
        let mut lower = group_lower.clone();
        for RangePart(upper, _) in parts {
            out.insert(KeyBounds(lower, upper.clone()));
            lower = upper.clone();
        }
    }
    out
}

/// What a sink found comparing a source's ranges with its own items.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Parts whose fingerprints differ.
    pub split: Vec<KeyBounds>,
    /// Parts where the sink holds nothing.
    pub send: Vec<KeyBounds>,
    /// Source items the sink lacks.
    pub want: Vec<ItemId>,
    /// Sink items the source lacks though its vector covers them: dead, to drop.
    pub dead: Vec<(Vec<u8>, Dot)>,
}

/// Sink side: compares the source's `groups` with `live`. `source_vector` is the source's
/// handshake vector, used to tell a sink item the source never saw from one it saw and dropped.
pub fn compare(
    live: &LiveIndex,
    groups: &[RangeGroup],
    source_vector: &VersionVector,
) -> Result<Comparison, SyncError> {
    let mut out = Comparison::default();
    for RangeGroup(group_lower, parts) in groups {
        let mut part_lower = group_lower.clone();
        for RangePart(part_upper, content) in parts {
            if let (Some(l), Some(u)) = (&part_lower, part_upper)
                && l >= u
            {
                return Err(SyncError::Malformed(format!("range part [{l:?}, {u:?}) is empty or reversed")));
            }
            let (lo, hi) = (lower(&part_lower), upper(part_upper));
            let bounds = KeyBounds(part_lower.clone(), part_upper.clone());
            match content {
                PartContent::Fingerprint(fp, count) => {
                    let mine = live.fingerprint(lo, hi);
                    if mine.count == 0 {
                        out.send.push(bounds);
                    } else if mine.count != *count || mine.wire()[..] != fp[..] {
                        out.split.push(bounds);
                    }
                }
                PartContent::Items(ids) => {
                    let theirs: BTreeSet<ItemId> = ids.iter().copied().collect();
                    let mut mine = BTreeSet::new();
                    live.for_each_in(lo, hi, &mut |key, item, fp| {
                        let id = fp.item_id();
                        mine.insert(id);
                        if !theirs.contains(&id) && source_vector.covers(item.dot()) {
                            out.dead.push((key.to_vec(), item.dot()));
                        }
                    });
                    out.want.extend(theirs.difference(&mine));
                }
            }
            part_lower = part_upper.clone();
        }
    }
    Ok(out)
}

/// The expected size of the symmetric difference of two replicas' live sets, from their
/// vectors: each write one has and the other lacks changes at most two items (its own, and the
/// version it replaced). Both sides compute the same number from the two handshakes.
#[must_use]
pub fn expected_difference(a: &VersionVector, b: &VersionVector) -> u64 {
    let mut writes = 0u64;
    for (r, s) in a.iter() {
        writes = writes.saturating_add(s.0.saturating_sub(b.get(r).0));
    }
    for (r, s) in b.iter() {
        writes = writes.saturating_add(s.0.saturating_sub(a.get(r).0));
    }
    writes.saturating_mul(2)
}

/// The source side's sketch of its live items, `size` cells per subtable.
#[must_use]
pub fn sketch_of(live: &LiveIndex, size: usize) -> SketchMsg {
    let all = live.fingerprint(Bound::Unbounded, Bound::Unbounded);
    SketchMsg(size as u32, all.wire(), all.count, live.sketch().encode(size))
}

/// What the sink found in a source's sketch.
#[derive(Debug, Default)]
pub struct SketchFound {
    /// Source items the sink lacks (the source sends them, or drops them if the sink saw them).
    pub want: Vec<(Vec<u8>, Stamp)>,
    /// Keys whose sink version the source lacks and never saw: the sink sends them.
    pub send: Vec<Vec<u8>>,
    /// Sink items the source lacks though its vector covers them: dead, to drop.
    pub dead: Vec<(Vec<u8>, Dot)>,
}

/// Sink side: subtracts the source's sketch from `live`'s and peels the difference. `Ok(None)`
/// when it does not decode, or the items found do not account for the difference between the
/// two whole-set fingerprints (then the session reconciles by ranges); an error when the sketch
/// is malformed. `source_vector` is the source's handshake vector, read with its sketch.
pub fn compare_sketch(
    live: &LiveIndex,
    msg: &SketchMsg,
    source_vector: &VersionVector,
) -> Result<Option<SketchFound>, SyncError> {
    let SketchMsg(size, fingerprint, count, cells) = msg;
    let size = usize::try_from(*size).map_err(|e| SyncError::Malformed(e.to_string()))?;
    let Some(diff) = live.sketch().difference(size, cells).map_err(SyncError::Malformed)? else {
        return Ok(None);
    };
    let mut theirs = live.fingerprint(Bound::Unbounded, Bound::Unbounded);
    let mut out = SketchFound::default();
    for (key, stamp) in &diff.mine {
        let Some(item) = live.get(key).filter(|i| i.stamp == *stamp) else { return Ok(None) };
        theirs = theirs - Fingerprint::of_item(key, *stamp);
        if source_vector.covers(item.dot()) {
            out.dead.push((key.clone(), item.dot()));
        } else {
            out.send.push(key.clone());
        }
    }
    for (key, stamp) in &diff.theirs {
        theirs = theirs + Fingerprint::of_item(key, *stamp);
        out.want.push((key.clone(), *stamp));
    }
    if theirs.wire() != *fingerprint || theirs.count != *count {
        return Ok(None);
    }
    Ok(Some(out))
}

/// The most keys a reply to a sketch can name: as many items as its cells could yield.
pub const SKETCH_KEYS_MAX: usize = sketch::SUBTABLES * sketch::CELLS_MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_fall_between_their_keys_and_are_short() {
        for (a, b, s) in [
            (&b"apple"[..], &b"apricot"[..], &b"apr"[..]),
            (b"a", b"ab", b"ab"),
            (b"user:0001", b"user:0002", b"user:0002"),
            (b"k", b"z", b"z"),
        ] {
            let sep = separator(a, b);
            assert_eq!(sep, s);
            assert!(a < &sep[..] && &sep[..] <= b);
        }
    }
}
