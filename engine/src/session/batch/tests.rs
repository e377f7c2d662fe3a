use super::*;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Wrapped(#[serde(with = "super")] Vec<Entry>);

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        (
            proptest::collection::vec(any::<u8>(), 0..8),
            any::<Option<u64>>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..4))
        )
            .prop_map(|(bytes, expires_at_ms, metadata)| Payload::Value(Value {
                bytes,
                expires_at_ms,
                metadata
            })),
        any::<u64>().prop_map(|expires_at_ms| Payload::Expired { expires_at_ms }),
        Just(Payload::Tombstone),
    ]
}

/// Entries of a few writers; some stamped by another replica than numbered them (a device's
/// write admitted by a member).
fn entry() -> impl Strategy<Value = Entry> {
    let numbered_by = proptest::option::of(0u64..3);
    (proptest::collection::vec(any::<u8>(), 1..6), any::<u64>(), 0u64..4, numbered_by, any::<u64>(), payload())
        .prop_map(|(key, hlc, replica, numbered_by, seq, payload)| Entry {
            key,
            stamp: Stamp { hlc: Hlc(hlc), replica: ReplicaId(u64::MAX - replica) },
            dot: Dot { replica: ReplicaId(u64::MAX - numbered_by.unwrap_or(replica)), seq: Seq(seq) },
            payload,
        })
}

fn normalized(mut entries: Vec<Entry>) -> Vec<Entry> {
    entries.sort_by(|a, b| (a.dot, a.stamp.replica, &a.key).cmp(&(b.dot, b.stamp.replica, &b.key)));
    entries
}

fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut bytes = Vec::new();
    ciborium::into_writer(&Wrapped(entries.to_vec()), &mut bytes).unwrap();
    bytes
}

fn decode_columns(c: &Columns) -> Result<Vec<Entry>, String> {
    let mut bytes = Vec::new();
    ciborium::into_writer(c, &mut bytes).unwrap();
    ciborium::from_reader::<Wrapped, _>(bytes.as_slice()).map(|w| w.0).map_err(|e| e.to_string())
}

proptest! {
    #[test]
    fn batches_round_trip(entries in proptest::collection::vec(entry(), 0..12)) {
        let back: Wrapped = ciborium::from_reader(encode(&entries).as_slice()).unwrap();
        prop_assert_eq!(normalized(back.0), normalized(entries));
    }

    /// A stamp writer other than the dot's travels in its own column and comes back as sent,
    /// whatever the mix (a device's write admitted under a member's dot).
    #[test]
    fn a_stamp_writer_apart_from_the_dot_writer_round_trips(
        entries in proptest::collection::vec(entry(), 0..12),
    ) {
        let refs: Vec<ItemRef<'_>> = entries.iter().map(ItemRef::from).collect();
        let columns = Columns::encode(refs.iter().copied());
        let foreign = refs.iter().filter(|i| i.dot_writer != i.entry.stamp.replica).count();
        prop_assert_eq!(columns.0[STAMP_WRITERS].len(), 8 * foreign);
        let mut back: Vec<(ReplicaId, Entry)> =
            columns.decode().unwrap().into_iter().map(|i| (i.dot_writer, i.entry)).collect();
        let mut sent: Vec<(ReplicaId, Entry)> = refs.iter().map(|i| (i.dot_writer, i.entry.clone())).collect();
        let order = |x: &(ReplicaId, Entry)| (x.0, x.1.dot.seq, x.1.key.clone(), x.1.stamp);
        back.sort_by_key(order);
        sent.sort_by_key(order);
        prop_assert_eq!(back, sent);
    }

    /// Whatever the columns hold, decoding returns entries or an error, never a panic.
    #[test]
    fn arbitrary_columns_never_panic(
        columns in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), COLUMNS),
        flags in proptest::collection::vec(0u8..32, 0..6),
    ) {
        let mut c = Columns(std::array::from_fn(|i| columns[i].clone()));
        if c.0[GROUPS].len() >= 9 {
            // Give some inputs a plausible shape: one group counting the flags given.
            c.0[GROUPS].truncate(8);
            put_varint(&mut c.0[GROUPS], flags.len() as u128);
            c.0[FLAGS] = flags;
        }
        let _ = c.decode();
    }
}

/// Entries as a bootstrap sends them: one writer, 24-byte keys, 100-byte values.
fn bootstrap_like(n: u64) -> Vec<Entry> {
    (0..n)
        .map(|i| Entry {
            key: format!("key:{i:020}").into_bytes(),
            stamp: Stamp { hlc: Hlc((1_700_000_000_000 << 16) + 3 * i), replica: ReplicaId(0xdead_beef_0000_0001) },
            dot: Dot { replica: ReplicaId(0xdead_beef_0000_0001), seq: Seq(70_000 + 2 * i) },
            payload: Payload::Value(Value { bytes: vec![7; 100], expires_at_ms: None, metadata: None }),
        })
        .collect()
}

#[test]
fn a_value_item_costs_far_less_than_a_lone_entry() {
    let entries = bootstrap_like(100);
    let compact = encode(&entries);
    let mut plain = Vec::new();
    ciborium::into_writer(&entries, &mut plain).unwrap();
    let per_item = |bytes: usize| bytes as f64 / 100.0 - 124.0;
    assert!(per_item(compact.len()) < 6.0, "{} bytes of framing per item", per_item(compact.len()));
    assert!(per_item(plain.len()) > 25.0);
}

#[test]
fn keys_and_values_travel_in_runs_of_their_own() {
    let entries = bootstrap_like(50);
    let bytes = encode(&entries);
    let keys: Vec<u8> = entries.iter().flat_map(|e| e.key.clone()).collect();
    let values: Vec<u8> = vec![7; 50 * 100];
    let find = |needle: &[u8]| bytes.windows(needle.len()).position(|w| w == needle);
    let (k, v) = (find(&keys).expect("the keys, back to back"), find(&values).expect("the values, back to back"));
    assert!(k + keys.len() <= v, "the values after the keys");
    let columns: Columns = ciborium::from_reader(bytes.as_slice()).unwrap();
    assert!(columns.0[STAMP_WRITERS].is_empty(), "no stamp writers when every stamp is its dot's");
    assert_eq!(columns.0[FLAGS], vec![KIND_VALUE; 50]);
    assert_eq!(columns.0[SEQS][3..], vec![2; 49][..], "seq differences after the first (70,000: three bytes)");
}

/// The columns of one tombstone of writer 9 with key `k`, seq 1, HLC 5.
fn one_tombstone() -> Columns {
    let e = Entry {
        key: b"k".to_vec(),
        stamp: Stamp { hlc: Hlc(5), replica: ReplicaId(9) },
        dot: Dot { replica: ReplicaId(9), seq: Seq(1) },
        payload: Payload::Tombstone,
    };
    Columns::encode([ItemRef::from(&e)])
}

#[test]
fn bad_counts_lengths_flags_and_sums_are_refused() {
    assert!(decode_columns(&one_tombstone()).is_ok());
    let refused = |f: &dyn Fn(&mut Columns), what: &str| {
        let mut c = one_tombstone();
        f(&mut c);
        let err = decode_columns(&c).unwrap_err();
        assert!(err.contains(what), "{err} (expected {what:?})");
    };
    refused(&|c| c.0[FLAGS][0] = 3, "flags 0x03");
    refused(&|c| c.0[FLAGS][0] = KIND_TOMBSTONE | FLAG_EXPIRY, "flags 0x06");
    refused(&|c| c.0[FLAGS][0] = 0x40, "flags 0x40");
    refused(&|c| c.0[FLAGS][0] = KIND_VALUE, "value_lens column ends early");
    refused(&|c| c.0[FLAGS].push(KIND_TOMBSTONE), "the groups count 1 items, the flags column 2");
    refused(&|c| c.0[KEYS].push(b'x'), "keys column has 1 bytes left over");
    refused(&|c| c.0[KEYS].clear(), "keys column ends early");
    refused(&|c| c.0[GROUPS].truncate(5), "groups column ends early");
    refused(&|c| c.0[STAMPS] = vec![zigzag(-6) as u8], "stamp in the batch is out of range");
    refused(&|c| c.0[STAMPS] = vec![0xff; 20], "does not fit its type");
    refused(
        &|c| {
            c.0[SEQS].clear();
            put_varint(&mut c.0[SEQS], u128::from(u64::MAX) + 1);
        },
        "does not fit its type",
    );
    refused(
        &|c| {
            c.0[KEY_LENS].clear();
            put_varint(&mut c.0[KEY_LENS], 1025);
        },
        "key of 1025 bytes, more than 1024",
    );

    // Two tombstones whose seqs sum past u64::MAX.
    let mut c = one_tombstone();
    c.0[GROUPS].truncate(8);
    put_varint(&mut c.0[GROUPS], 2);
    c.0[FLAGS].push(KIND_TOMBSTONE);
    c.0[SEQS] = Vec::new();
    put_varint(&mut c.0[SEQS], u128::from(u64::MAX));
    put_varint(&mut c.0[SEQS], 1);
    // The first's HLC 5: its difference (5) less its seq difference (u64::MAX).
    c.0[STAMPS] = Vec::new();
    put_varint(&mut c.0[STAMPS], zigzag(5 - i128::from(u64::MAX)));
    c.0[STAMPS].push(0);
    c.0[KEY_LENS].push(1);
    c.0[KEYS].push(b'j');
    let err = decode_columns(&c).unwrap_err();
    assert!(err.contains("seq in the batch overflows"), "{err}");

    // A batch of eleven or thirteen columns.
    let c = one_tombstone();
    let mut short = Vec::new();
    ciborium::into_writer(
        &c.0[..COLUMNS - 1].iter().map(|b| serde_bytes::ByteBuf::from(b.clone())).collect::<Vec<_>>(),
        &mut short,
    )
    .unwrap();
    assert!(ciborium::from_reader::<Wrapped, _>(short.as_slice()).is_err());
    let mut long = Vec::new();
    let mut more: Vec<serde_bytes::ByteBuf> = c.0.iter().map(|b| serde_bytes::ByteBuf::from(b.clone())).collect();
    more.push(serde_bytes::ByteBuf::new());
    ciborium::into_writer(&more, &mut long).unwrap();
    assert!(ciborium::from_reader::<Wrapped, _>(long.as_slice()).is_err());
}

#[test]
fn counts_and_decoded_bytes_are_bounded_before_allocating() {
    // A group claiming more entries than a frame may carry, in a few bytes.
    let mut c = Columns::default();
    c.0[GROUPS].extend_from_slice(&9u64.to_be_bytes());
    put_varint(&mut c.0[GROUPS], (ENTRIES_PER_FRAME_MAX + 1) as u128);
    assert!(decode_columns(&c).unwrap_err().contains("more than 32768 entries"));
    // Counts that overflow when summed.
    let mut c = Columns::default();
    for _ in 0..2 {
        c.0[GROUPS].extend_from_slice(&9u64.to_be_bytes());
        put_varint(&mut c.0[GROUPS], u128::from(u64::MAX));
    }
    assert!(decode_columns(&c).unwrap_err().contains("more than 32768 entries"));
    // A claim the flags column does not back.
    let mut c = Columns::default();
    c.0[GROUPS].extend_from_slice(&9u64.to_be_bytes());
    put_varint(&mut c.0[GROUPS], ENTRIES_PER_FRAME_MAX as u128);
    assert!(decode_columns(&c).unwrap_err().contains("the flags column 0"));

    // Values that together take more than the decoded budget.
    let value = vec![0u8; 1 << 20];
    let entries: Vec<Entry> = (0..17u64)
        .map(|i| Entry {
            key: i.to_be_bytes().to_vec(),
            stamp: Stamp { hlc: Hlc(i), replica: ReplicaId(1) },
            dot: Dot { replica: ReplicaId(1), seq: Seq(i + 1) },
            payload: Payload::Value(Value { bytes: value.clone(), expires_at_ms: None, metadata: None }),
        })
        .collect();
    let err = ciborium::from_reader::<Wrapped, _>(encode(&entries).as_slice()).unwrap_err().to_string();
    assert!(err.contains("more than 16777216 bytes decoded"), "{err}");
    assert!(ciborium::from_reader::<Wrapped, _>(encode(&entries[..15]).as_slice()).is_ok());
}
