//! Size limits, checked once where data enters the engine (a local write or a remote batch), so
//! everything past that boundary can trust what it holds.

use crate::entry::{Entry, Payload};
use crate::error::Error;

/// The largest key the model allows (docs/design.md §1): 1 KiB.
pub const KEY_BYTES_MAX: usize = 1024;
/// The default value limit: 1 MiB.
pub const VALUE_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// The default metadata limit: 4 KiB.
pub const METADATA_BYTES_MAX_DEFAULT: usize = 4 << 10;

/// Configurable size limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest key accepted (at most [`KEY_BYTES_MAX`]).
    pub key_bytes_max: usize,
    /// Longest value accepted.
    pub value_bytes_max: usize,
    /// Longest metadata accepted.
    pub metadata_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: KEY_BYTES_MAX,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            metadata_bytes_max: METADATA_BYTES_MAX_DEFAULT,
        }
    }
}

impl Limits {
    /// Checks a key.
    pub fn check_key(&self, key: &[u8]) -> Result<(), Error> {
        let max = self.key_bytes_max.min(KEY_BYTES_MAX);
        if key.is_empty() {
            return Err(Error::KeyEmpty { max });
        }
        if key.len() > max {
            return Err(Error::KeyTooLarge { len: key.len(), max });
        }
        Ok(())
    }

    /// Checks a value and its metadata.
    pub fn check_value(&self, bytes: &[u8], metadata: Option<&[u8]>) -> Result<(), Error> {
        if bytes.len() > self.value_bytes_max {
            return Err(Error::ValueTooLarge { len: bytes.len(), max: self.value_bytes_max });
        }
        if let Some(m) = metadata.filter(|m| m.len() > self.metadata_bytes_max) {
            return Err(Error::MetadataTooLarge { len: m.len(), max: self.metadata_bytes_max });
        }
        Ok(())
    }

    /// Checks every size in an entry.
    pub fn check_entry(&self, entry: &Entry) -> Result<(), Error> {
        self.check_key(&entry.key)?;
        if let Payload::Value(v) = &entry.payload {
            self.check_value(&v.bytes, v.metadata.as_deref())?;
        }
        Ok(())
    }
}

/// How far a relayed cursor claim of one member may reach beyond the highest claim a receiving
/// member held, as the message began, of any *other* member (its own included): 2^40 upload
/// seqs; and beyond the highest upload seq a device numbered, the cursor a member's handshake
/// shows it. Further is no device's history: refused and counted at a member
/// ([`crate::Replica::claims_implausible`]); ignored at a device (it does not re-number its
/// queue past it, and goes on with the session). A member's own claims never move its own
/// bound, so no single member ratchets a cursor up claim by claim (R3-2).
pub const CURSOR_GAP_MAX: u64 = 1 << 40;
/// The highest upload seq, cursor claim or shown cursor taken anywhere (2^62): an upload seq
/// beyond it is refused whole at a member, a claim beyond it refused and counted, a member's
/// handshake showing a cursor beyond it refused by the device before it changes anything.
/// Arithmetic on seqs up to it never overflows. An upload seq far beyond the cursor a member
/// holds is taken (the device's own numbering: it may have re-numbered past another member's
/// cursor, R3-6).
pub const CURSOR_MAX: u64 = 1 << 62;
/// How far beyond the epoch a member holds for a device a relayed record's epoch may reach
/// (2^16 enrolments): further is refused and counted ([`crate::Replica::claims_implausible`]),
/// so no relay can bring an epoch near `u64::MAX`.
pub const DEVICE_EPOCH_GAP_MAX: u64 = 1 << 16;

/// The most member records a handshake may carry: the sender and the replicas it enrolled
/// ([`crate::membership::MEMBERS_MAX`]). Checked while the handshake decodes, before the list is
/// allocated.
pub const HELLO_MEMBERS_MAX: usize = crate::membership::MEMBERS_MAX;
/// The most components a version vector from a peer may have, and the most a vector here may
/// grow to by merging a peer's. One component per writer: members (at most 64) and, until
/// devices write under members' dots (docs/design.md §8), every other replica that writes. Checked
/// while a handshake, `Done`, `Ack` or push decodes, and before a merge.
pub const VECTOR_COMPONENTS_MAX: usize = 1024;
/// The most range groups plus parts one `Ranges` message may carry, and the most ranges a
/// `Reply` may ask to split or send. A source never sends more: it describes only ranges the
/// sink asked to split (16 parts each), and a message that large would already exceed
/// [`crate::session::FRAME_BYTES_MAX`] at differences of about 100,000 among 1,000,000.
pub const RANGE_PARTS_MAX: usize = 1 << 16;
/// The most item ids a `Reply` may name: every part of a `Ranges` listed in full.
pub const REPLY_ITEMS_MAX: usize = RANGE_PARTS_MAX * crate::session::reconcile::LEAF_ITEMS as usize;
/// The most entries one `Entries` or `Push` frame may carry. A sender cuts its chunks at
/// [`crate::session::CHUNK_BYTES`] or at this count, whichever comes first.
pub const ENTRIES_PER_FRAME_MAX: usize = 1 << 15;
/// The most memory the entries of one frame may take once decoded: each entry's in-memory size
/// (`size_of::<Entry>()`) plus its key, value and metadata bytes. A full chunk of the smallest
/// entries takes about 4 MiB; of the largest, about 2 MiB.
pub const ENTRIES_DECODED_BYTES_MAX: usize = 16 << 20;
/// The most `Records` messages one member session may carry: enough for every record of a full
/// table ([`crate::device::DEVICES_MAX`] in chunks of
/// [`crate::session::message::RECORDS_PER_MESSAGE_MAX`]) and the closing one. A peer that sends
/// more is closing no chunk: the session ends, naming this bound, before the frame changes
/// anything.
pub const RECORDS_MESSAGES_PER_SESSION_MAX: usize =
    crate::device::DEVICES_MAX.div_ceil(crate::session::message::RECORDS_PER_MESSAGE_MAX) + 1;
/// The most signed claims one member session may offer for checking: acknowledgements of
/// members (its handshake) and of devices, and members' cursor claims (its `Records`), each
/// counted as it arrives whether or not a cheap check then spares its signature. Verifying a
/// signature costs tens of microseconds (Ed25519), so this bounds what one session can make a
/// member spend to some seconds; it is more than one `Records` frame can offer
/// (`RECORDS_PER_MESSAGE_MAX` records of one acknowledgement and one claim per member each, with
/// a handshake), so an honest session always gets a frame through and the next one resumes
/// after it. Past it the
/// session ends, naming this bound, before the frame changes anything.
pub const SIGNED_CLAIMS_PER_SESSION_MAX: usize = 1 << 19;

/// Deserializes a sequence of at most `MAX` elements, refusing a longer one before allocating
/// for it (a definite length is checked before the first element; an indefinite one at the
/// element past the limit). For `#[serde(deserialize_with = "bounded_vec::<_, _, MAX>")]`.
pub(crate) fn bounded_vec<'de, D, T, const MAX: usize>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct Bounded<T, const MAX: usize>(std::marker::PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>, const MAX: usize> serde::de::Visitor<'de> for Bounded<T, MAX> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a list of at most {MAX} elements")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let too_long = |len: String| serde::de::Error::custom(format!("a list of {len} elements, more than {MAX}"));
            if let Some(n) = seq.size_hint().filter(|n| *n > MAX) {
                return Err(too_long(n.to_string()));
            }
            // Grow as elements arrive: a short frame may claim a long list.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX).min(1024));
            while let Some(x) = seq.next_element()? {
                if out.len() == MAX {
                    return Err(too_long("more".into()));
                }
                out.push(x);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded::<T, MAX>(std::marker::PhantomData))
}

/// Deserializes a version vector from a peer, of at most [`VECTOR_COMPONENTS_MAX`] components.
pub(crate) fn bounded_vector<'de, D: serde::Deserializer<'de>>(d: D) -> Result<crate::VersionVector, D::Error> {
    bounded_vec::<_, (crate::ReplicaId, crate::Seq), VECTOR_COMPONENTS_MAX>(d).map(Into::into)
}

/// [`bounded_vector`] for an optional vector (a device's horizon).
pub(crate) fn bounded_optional_vector<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<crate::VersionVector>, D::Error> {
    #[derive(serde::Deserialize)]
    struct One(#[serde(deserialize_with = "bounded_vector")] crate::VersionVector);
    let one: Option<One> = serde::Deserialize::deserialize(d)?;
    Ok(one.map(|One(v)| v))
}

/// [`bounded_vector`] for an optional vector and a clock (a push's).
pub(crate) fn bounded_vector_and_clock<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<(crate::VersionVector, crate::Hlc)>, D::Error> {
    #[derive(serde::Deserialize)]
    struct Pair(#[serde(deserialize_with = "bounded_vector")] crate::VersionVector, crate::Hlc);
    let pair: Option<Pair> = serde::Deserialize::deserialize(d)?;
    Ok(pair.map(|Pair(v, c)| (v, c)))
}

/// How many components `a` merged with `b` would have.
pub(crate) fn merged_components(a: &crate::VersionVector, b: &crate::VersionVector) -> usize {
    a.len() + b.iter().filter(|(r, _)| a.get(*r) == crate::Seq(0)).count()
}
