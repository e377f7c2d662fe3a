//! An invertible Bloom lookup table (IBLT) over the live items, kept current with every write, so
//! that an anti-entropy session can find a handful of differences in one message instead of a
//! descent through ⌈log16 n⌉ levels of range fingerprints.
//!
//! Each item `(key, stamp)` is added to one cell in each of [`SUBTABLES`] subtables, chosen from
//! bits of its hash (the same blake3 hash the range fingerprints sum). A cell holds the signed
//! count of its items and the XOR of their keys, key lengths, stamps and 32 check bits of their
//! hashes. Subtracting the peer's table from one's own cancels the items both hold; a cell left
//! with one item ("pure": count ±1 and the check bits match the hash of the key and stamp it
//! holds) yields that item, which is then removed from its other cells, and so on ("peeling").
//! When every cell ends empty and the items found account for the difference of the two whole-set
//! fingerprints, the difference is known exactly; otherwise the session falls back to ranges.
//!
//! The table is kept at [`CELLS_MAX`] cells per subtable and *folded* to any smaller power of
//! two for the wire (cell `p` of a subtable goes to `p mod size`), so a session sends a table
//! sized for the difference it expects, chosen from the two handshake vectors
//! ([`size_for`]). Invariant kept here: the maintained table is exactly the sum of the items
//! added minus those removed; [`LiveIndex`](crate::fingerprint::LiveIndex) adds and removes every
//! live item it holds.

use crate::fingerprint::Fingerprint;
use crate::hlc::{Hlc, Stamp};
use crate::ids::ReplicaId;
use crate::limits::KEY_BYTES_MAX;
use std::collections::BTreeSet;

/// Subtables: each item is in one cell of each.
pub const SUBTABLES: usize = 3;
/// Cells per subtable in the maintained table, the largest size a session can send.
pub const CELLS_MAX: usize = 1024;
/// Cells per subtable in the smallest table a session sends.
pub const CELLS_MIN: usize = 4;

/// One cell: the count and XOR sums of the items in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Cell {
    count: i64,
    check: u32,
    hlc: u64,
    replica: u64,
    len: u16,
    /// XOR of the keys, each padded with zeros to this length (never shrinks).
    key: Vec<u8>,
}

impl Cell {
    fn toggle(&mut self, sign: i64, key: &[u8], stamp: Stamp, check: u32) {
        self.count = self.count.wrapping_add(sign);
        self.check ^= check;
        self.hlc ^= stamp.hlc.0;
        self.replica ^= stamp.replica.0;
        self.len ^= key.len() as u16;
        if self.key.len() < key.len() {
            self.key.resize(key.len(), 0);
        }
        for (a, b) in self.key.iter_mut().zip(key) {
            *a ^= b;
        }
    }

    fn fold_in(&mut self, other: &Cell) {
        self.count = self.count.wrapping_add(other.count);
        self.check ^= other.check;
        self.hlc ^= other.hlc;
        self.replica ^= other.replica;
        self.len ^= other.len;
        if self.key.len() < other.key.len() {
            self.key.resize(other.key.len(), 0);
        }
        for (a, b) in self.key.iter_mut().zip(&other.key) {
            *a ^= b;
        }
    }

    /// The key bytes without trailing zeros (what the wire carries).
    fn key_trimmed(&self) -> &[u8] {
        let end = self.key.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        &self.key[..end]
    }

    fn is_empty(&self) -> bool {
        self.count == 0
            && self.check == 0
            && self.hlc == 0
            && self.replica == 0
            && self.len == 0
            && self.key_trimmed().is_empty()
    }
}

/// Where an item goes (one cell index below [`CELLS_MAX`] per subtable) and its check bits.
fn slots(hash: &Fingerprint) -> ([usize; SUBTABLES], u32) {
    let [_, positions, check, _] = hash.limbs();
    let mut out = [0; SUBTABLES];
    for (j, slot) in out.iter_mut().enumerate() {
        *slot = ((positions >> (16 * j)) as usize) % CELLS_MAX;
    }
    (out, check as u32)
}

/// The maintained table over a set of items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sketch {
    cells: Vec<Cell>,
}

impl Default for Sketch {
    fn default() -> Sketch {
        Sketch { cells: vec![Cell::default(); SUBTABLES * CELLS_MAX] }
    }
}

impl Sketch {
    /// Adds (`sign` = 1) or removes (`sign` = -1) the item `(key, stamp)` whose hash is `hash`
    /// (`Fingerprint::of_item(key, stamp)`).
    pub fn toggle(&mut self, sign: i64, key: &[u8], stamp: Stamp, hash: &Fingerprint) {
        let (slots, check) = slots(hash);
        for (j, p) in slots.into_iter().enumerate() {
            self.cells[j * CELLS_MAX + p].toggle(sign, key, stamp, check);
        }
    }

    /// The table folded to `size` cells per subtable (a power of two from [`CELLS_MIN`] to
    /// [`CELLS_MAX`]).
    fn folded(&self, size: usize) -> Vec<Cell> {
        let mut out = vec![Cell::default(); SUBTABLES * size];
        for j in 0..SUBTABLES {
            for p in 0..CELLS_MAX {
                out[j * size + p % size].fold_in(&self.cells[j * CELLS_MAX + p]);
            }
        }
        out
    }

    /// The table folded to `size` cells per subtable, in wire form: per cell, the count's low
    /// byte, the check bits (4 bytes), the stamp's HLC and writer XORs (8 each), the key length
    /// XOR (2) and the key XOR's length (2, trailing zeros cut), then the key XOR; little-endian.
    #[must_use]
    pub fn encode(&self, size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in self.folded(size) {
            let key = c.key_trimmed();
            out.push(c.count as u8);
            out.extend_from_slice(&c.check.to_le_bytes());
            out.extend_from_slice(&c.hlc.to_le_bytes());
            out.extend_from_slice(&c.replica.to_le_bytes());
            out.extend_from_slice(&c.len.to_le_bytes());
            out.extend_from_slice(&(key.len() as u16).to_le_bytes());
            out.extend_from_slice(key);
        }
        out
    }

    /// Subtracts the peer's table (`theirs`, `size` cells per subtable, from [`Sketch::encode`])
    /// from this one and peels the difference. `Ok(None)` when it does not decode (too many
    /// differences for the size); an error when `theirs` is malformed.
    pub fn difference(&self, size: usize, theirs: &[u8]) -> Result<Option<Difference>, String> {
        if !size.is_power_of_two() || !(CELLS_MIN..=CELLS_MAX).contains(&size) {
            return Err(format!("sketch size {size} is not a power of two from {CELLS_MIN} to {CELLS_MAX}"));
        }
        let mut cells = self.folded(size);
        let mut rest = theirs;
        for cell in &mut cells {
            let (c, tail) = decode_cell(rest)?;
            rest = tail;
            // Counts travel mod 256: only the difference's low byte is known, which is all
            // peeling needs (a pure cell differs by one). The XOR sums subtract by folding in.
            let count = i64::from((cell.count as u8).wrapping_sub(c.count as u8) as i8);
            cell.fold_in(&c);
            cell.count = count;
        }
        if !rest.is_empty() {
            return Err(format!("{} bytes after the sketch's {} cells", rest.len(), cells.len()));
        }
        Ok(peel(cells, size))
    }
}

/// Reads one wire cell.
fn decode_cell(b: &[u8]) -> Result<(Cell, &[u8]), String> {
    const FIXED: usize = 1 + 4 + 8 + 8 + 2 + 2;
    if b.len() < FIXED {
        return Err("sketch cells cut short".into());
    }
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u64_at = |i: usize| {
        let mut w = [0; 8];
        w.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(w)
    };
    let key_len = usize::from(u16_at(23));
    if key_len > KEY_BYTES_MAX || b.len() < FIXED + key_len {
        return Err(format!("sketch cell key of {key_len} bytes (at most {KEY_BYTES_MAX}, or cut short)"));
    }
    let cell = Cell {
        count: i64::from(b[0]),
        check: u32::from_le_bytes([b[1], b[2], b[3], b[4]]),
        hlc: u64_at(5),
        replica: u64_at(13),
        len: u16_at(21),
        key: b[FIXED..FIXED + key_len].to_vec(),
    };
    Ok((cell, &b[FIXED + key_len..]))
}

/// The items two sets do not share, as found by [`Sketch::difference`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Difference {
    /// Items this side holds and the peer does not.
    pub mine: Vec<(Vec<u8>, Stamp)>,
    /// Items the peer holds and this side does not.
    pub theirs: Vec<(Vec<u8>, Stamp)>,
}

fn peel(mut cells: Vec<Cell>, size: usize) -> Option<Difference> {
    let mut found: BTreeSet<(bool, Vec<u8>, u64, u64)> = BTreeSet::new();
    let mut out = Difference::default();
    let mut queue: Vec<usize> = (0..cells.len()).collect();
    while let Some(i) = queue.pop() {
        let c = &cells[i];
        if c.count != 1 && c.count != -1 {
            continue;
        }
        let len = usize::from(c.len);
        if len == 0 || len < c.key_trimmed().len() || len > KEY_BYTES_MAX {
            continue;
        }
        let mut key = c.key.clone();
        key.resize(len, 0);
        let stamp = Stamp { hlc: Hlc(c.hlc), replica: ReplicaId(c.replica) };
        let hash = Fingerprint::of_item(&key, stamp);
        let (slots, check) = slots(&hash);
        let at: Vec<usize> = slots.iter().enumerate().map(|(j, p)| j * size + p % size).collect();
        if check != c.check || !at.contains(&i) {
            continue;
        }
        let sign = c.count;
        // An item found twice, or more items than cells, means the cells are inconsistent (a
        // garbage table): give up rather than peel forever.
        if !found.insert((sign > 0, key.clone(), c.hlc, c.replica)) || found.len() > cells.len() {
            return None;
        }
        for &k in &at {
            cells[k].toggle(-sign, &key, stamp, check);
            queue.push(k);
        }
        if sign > 0 { out.mine.push((key, stamp)) } else { out.theirs.push((key, stamp)) }
    }
    cells.iter().all(Cell::is_empty).then_some(out)
}

/// The table size (cells per subtable) a session sends when it expects about `items` items in
/// the symmetric difference, or `None` when that many are better found by range fingerprints.
/// At least 1.5 cells per item in all (rounded up to a power of two per subtable, so 1.5 to 3):
/// an IBLT with three subtables peels with high probability from about 1.23 cells per item on,
/// and small tables need the margin (two items in 3 × 4 cells fail to peel 1 time in 64, and the
/// session then falls back to ranges).
#[must_use]
pub fn size_for(items: u64) -> Option<usize> {
    let per_subtable = items.saturating_mul(3).div_ceil(2).div_ceil(SUBTABLES as u64);
    if per_subtable > CELLS_MAX as u64 {
        return None;
    }
    Some((per_subtable as usize).next_power_of_two().clamp(CELLS_MIN, CELLS_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ReplicaId;

    fn item(i: u64) -> (Vec<u8>, Stamp) {
        (
            format!("key:{i:06}").into_bytes(),
            Stamp { hlc: Hlc::new(1_700_000_000_000 + i, 0), replica: ReplicaId(1 + i % 3) },
        )
    }

    fn sketch_of(items: impl IntoIterator<Item = (Vec<u8>, Stamp)>) -> Sketch {
        let mut s = Sketch::default();
        for (k, st) in items {
            s.toggle(1, &k, st, &Fingerprint::of_item(&k, st));
        }
        s
    }

    #[test]
    fn equal_sets_have_an_empty_difference() {
        let a = sketch_of((0..1000).map(item));
        let b = sketch_of((0..1000).rev().map(item));
        assert_eq!(a.encode(CELLS_MAX), b.encode(CELLS_MAX), "the table depends on the set, not the order");
        assert_eq!(a.difference(4, &b.encode(4)).unwrap(), Some(Difference::default()));
    }

    #[test]
    fn a_few_differences_come_out_exactly_on_both_sides() {
        let base: Vec<_> = (0..5000).map(item).collect();
        let mut a = sketch_of(base.clone());
        let b = sketch_of(base);
        // a updates one key (a new version replaces the old) and adds another.
        let (k, old) = item(17);
        let new = Stamp { hlc: Hlc::new(1_800_000_000_000, 0), replica: ReplicaId(9) };
        a.toggle(-1, &k, old, &Fingerprint::of_item(&k, old));
        a.toggle(1, &k, new, &Fingerprint::of_item(&k, new));
        let extra = item(99_999);
        a.toggle(1, &extra.0, extra.1, &Fingerprint::of_item(&extra.0, extra.1));
        let size = size_for(3).unwrap();
        let d = a.difference(size, &b.encode(size)).unwrap().unwrap();
        let mut mine = d.mine.clone();
        mine.sort();
        let mut want = vec![(k.clone(), new), extra];
        want.sort();
        assert_eq!(mine, want);
        assert_eq!(d.theirs, vec![(k.clone(), old)]);
        // And from the other side, the same difference mirrored.
        let d = b.difference(size, &a.encode(size)).unwrap().unwrap();
        assert_eq!(d.mine, vec![(k, old)]);
        assert_eq!(d.theirs.len(), 2);
    }

    #[test]
    fn too_many_differences_do_not_decode_rather_than_decode_wrong() {
        let a = sketch_of((0..2000).map(item));
        let b = sketch_of((1000..3000).map(item));
        assert_eq!(a.difference(CELLS_MIN, &b.encode(CELLS_MIN)).unwrap(), None);
    }

    #[test]
    fn long_and_short_keys_mix() {
        let k1 = vec![b'x'; KEY_BYTES_MAX];
        let k2 = b"a\0\0".to_vec();
        let st = Stamp { hlc: Hlc::new(5, 0), replica: ReplicaId(2) };
        let a = sketch_of([(k1.clone(), st), (k2.clone(), st)]);
        let b = sketch_of([]);
        let d = a.difference(8, &b.encode(8)).unwrap().unwrap();
        let mut mine = d.mine;
        mine.sort();
        assert_eq!(mine, vec![(k2, st), (k1, st)]);
    }

    #[test]
    fn malformed_tables_are_errors() {
        let a = sketch_of((0..10).map(item));
        let wire = a.encode(4);
        assert!(a.difference(4, &wire[..wire.len() - 1]).is_err());
        assert!(a.difference(4, &[wire.clone(), vec![0]].concat()).is_err());
        assert!(a.difference(5, &wire).is_err());
        assert!(a.difference(2 * CELLS_MAX, &wire).is_err());
        let mut huge_key = wire.clone();
        huge_key[23] = 0xff;
        huge_key[24] = 0xff;
        assert!(a.difference(4, &huge_key).is_err());
    }

    proptest::proptest! {
        /// Any bytes a peer sends as a sketch give an error or an answer, never a panic; and
        /// flipping bytes of a real sketch never makes it decode to items that are not there.
        #[test]
        fn garbage_sketches_never_panic_or_invent_items(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000),
            flips in proptest::collection::vec((0usize..600, 1u8..=255), 0..4),
            size_pow in 0u32..9,
        ) {
            let a = sketch_of((0..50).map(item));
            let _ = a.difference(1 << size_pow, &bytes);
            let mut wire = sketch_of((0..52).map(item)).encode(4);
            let len = wire.len();
            for (at, x) in flips {
                wire[at % len] ^= x;
            }
            if let Ok(Some(d)) = a.difference(4, &wire) {
                // Anything decoded passed its 32 check bits, so it is one of the real items (a
                // false one needs a 2^-32 accident, which the session's whole-set fingerprint
                // check would catch).
                for (k, st) in d.theirs.iter().chain(&d.mine) {
                    proptest::prop_assert!((0..52).map(item).any(|(k2, s2)| &k2 == k && s2 == *st), "{k:?}");
                }
            }
        }
    }

    #[test]
    fn sizes_grow_with_the_expected_difference_and_stop_where_ranges_win() {
        assert_eq!(size_for(0), Some(CELLS_MIN));
        assert_eq!(size_for(2), Some(4));
        assert_eq!(size_for(20), Some(16));
        assert_eq!(size_for(200), Some(128));
        assert_eq!(size_for(257), Some(256));
        assert_eq!(size_for(2048), Some(1024));
        assert_eq!(size_for(2049), None);
    }
}
