//! The messages of a device session that a member-to-member session does not have: the two
//! handshakes, the upload and its answers. The download reuses the member session's flow
//! messages (`Entries`, `Ranges`, `Reply`, `Done`, `Ack`).
//!
//! Each is a flat CBOR array in field order, and every vector in them is bounded as it is
//! decoded. A device's handshake carries nothing per device and nothing per other member's
//! vector: a device session costs O(members) bytes (I9).

use crate::hlc::Hlc;
use crate::ids::{Dot, ReplicaId, Seq};
use crate::limits::{self, ENTRIES_PER_FRAME_MAX};
use crate::vector::VersionVector;
use serde::{Deserialize, Serialize};

/// A device's handshake, to a member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceHello(
    /// [`crate::session::PROTOCOL_VERSION`] of the device.
    pub u32,
    /// The device.
    pub ReplicaId,
    /// Its vector over members.
    #[serde(deserialize_with = "limits::bounded_vector")]
    pub VersionVector,
    /// Its acknowledgement: the vector capped at the base of its oldest queued write.
    #[serde(deserialize_with = "limits::bounded_vector")]
    pub VersionVector,
    /// Its horizon, if it bootstrapped fresh and the members have not collected past it yet:
    /// it takes entries only from a member whose vector covers it.
    #[serde(deserialize_with = "limits::bounded_optional_vector")]
    pub Option<VersionVector>,
    /// Whether it holds nothing (a fresh bootstrap: live entries only).
    pub bool,
    /// Whether it has writes to upload (they follow the member's handshake).
    pub bool,
    /// Its wall clock, in ms since the Unix epoch.
    pub u64,
    /// Whether it asks for anti-entropy: a reconciliation by fingerprints even when its vector
    /// covers the member's (run periodically, as between members).
    #[serde(default)]
    pub bool,
    /// Its signature over its acknowledgement and wall time ([`crate::sign::ack_message`] of
    /// the device, the acknowledgement and the wall time), at most
    /// [`crate::sign::SIGNATURE_BYTES_MAX`] bytes; empty: unsigned. The member relays it to the
    /// other members with the device's record, who count the acknowledgement only with it.
    #[serde(default, serialize_with = "serde_bytes::serialize", deserialize_with = "crate::sign::bounded_signature")]
    pub Vec<u8>,
    /// The member's own signature over the highest of its seqs this device was shown
    /// ([`MemberHello`]'s proof, kept by the device), for the member it expects: if that member
    /// was restored from an older copy, this is how it learns, from its own word, which of its
    /// dots it issued before (docs/design.md §10). Nothing else a device says of a member's
    /// writes counts.
    #[serde(default)]
    pub Option<SeqProof>,
    /// Keys whose own write a member answered "refused" or "known" and whose member entry the
    /// device has not taken since ([`crate::device::DeviceState::unsettled`]): the member sends
    /// its entry for each in the download, whatever the device's vector covers. At most
    /// [`crate::device::UNSETTLED_KEYS_MAX`], each at most [`crate::limits::KEY_BYTES_MAX`]
    /// bytes (checked by the member before it reads any).
    #[serde(default, deserialize_with = "limits::bounded_vec::<_, _, { crate::device::UNSETTLED_KEYS_MAX }>")]
    pub Vec<serde_bytes::ByteBuf>,
);

/// A member's signature over one seq of its own: `[seq, wall ms, signature]`, the signature
/// being [`crate::sign::ack_message`] of the member, the vector `{member: seq}` and the wall
/// time. It says the member issued every seq up to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqProof(
    /// The seq.
    pub Seq,
    /// The member's wall clock when it signed, in ms since the Unix epoch.
    pub u64,
    /// The signature (at most [`crate::sign::SIGNATURE_BYTES_MAX`] bytes; empty: unsigned).
    #[serde(serialize_with = "serde_bytes::serialize", deserialize_with = "crate::sign::bounded_signature")]
    pub Vec<u8>,
);

impl SeqProof {
    /// The proof as `member`'s signed acknowledgement of `{member: seq}`, to verify.
    #[must_use]
    pub fn as_signed(&self, member: ReplicaId) -> crate::sign::SignedAck {
        crate::sign::SignedAck {
            signer: member,
            vector: vec![(member, self.0)].into(),
            time_ms: self.1,
            signature: self.2.clone(),
        }
    }
}

impl DeviceHello {
    /// The device.
    #[must_use]
    pub fn device(&self) -> ReplicaId {
        self.1
    }
}

/// A member's handshake, to a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberHello(
    /// [`crate::session::PROTOCOL_VERSION`] of the member.
    pub u32,
    /// The member.
    pub ReplicaId,
    /// Its vector.
    #[serde(deserialize_with = "limits::bounded_vector")]
    pub VersionVector,
    /// The join of every frontier under which it collected: a device's horizon it covers can
    /// be forgotten.
    #[serde(deserialize_with = "limits::bounded_vector")]
    pub VersionVector,
    /// The device's cursor: the highest upload seq of it that members applied.
    pub Seq,
    /// Its wall clock, in ms since the Unix epoch.
    pub u64,
    /// Its signature over its own counter ([`SeqProof`]): the device keeps the latest and
    /// shows it again in its handshake.
    #[serde(default)]
    pub Option<SeqProof>,
    /// Members' statements of their seqs lost to restores from older copies: the member's
    /// own, signed, and those it kept of other members, as they signed them (at most
    /// [`crate::replica::HELLO_LOST_STATEMENTS_MAX`]; `replica/lost.rs`): the device uploads
    /// again its own writes it holds under those dots, taking a statement about another member
    /// only if that member's signature verifies.
    #[serde(default, deserialize_with = "limits::bounded_vec::<_, _, { crate::replica::HELLO_LOST_STATEMENTS_MAX }>")]
    pub Vec<crate::replica::LostStatement>,
    /// The highest stamp among the device's writes the members' cursor claims handled
    /// ([`crate::sign::CursorClaim`]; [`Hlc::UNKNOWN`]: not known, from a member of an older
    /// version or a claim of one): a device restored from an older copy re-numbers only its
    /// writes stamped above it, the others are ones members processed (finding 7).
    #[serde(default = "Hlc::unknown")]
    pub Hlc,
    /// Whether this download carries the member's entry for every unsettled key the device's
    /// handshake named: granted as an anti-entropy session is, at most once per
    /// `Config::device_anti_entropy_min_ms` (R5-3: on the device's word alone, a device could
    /// make a member send the same values in every session). Not granted, the device keeps
    /// the keys and names them again.
    #[serde(default)]
    pub bool,
);

/// A member's answer to one uploaded write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "AdmissionWire", try_from = "AdmissionWire")]
pub enum Admission {
    /// Applied under this dot of the member's.
    Admitted(Dot),
    /// Not applied: something newer holds the key (the device will receive it).
    Superseded,
    /// At or below the device's cursor: applied before, and no longer this member's entry for
    /// the key, though this member has seen every admission up to the cursor (so it was
    /// replaced, or collected, since).
    Known,
    /// At or below the device's cursor, applied by another member whose admission this member
    /// has not seen yet: the device keeps the write queued and uploads it again later. Members
    /// of this version no longer answer it (they admit such a write themselves, `admit.rs`:
    /// the admitting member may never be seen again); a device still takes it from an older
    /// one.
    Pending,
    /// Refused by this member on its own: over its size limits. Never admitted by it; the
    /// device drops it (kept, it would stay under the device's own upload seq for ever and cap
    /// its acknowledgement), and the rest of the upload goes on. The same session's download
    /// carries the member's entry for the key, if it holds one (as it does for `Known`).
    Refused,
}

impl Admission {
    /// Whether the write is settled: the device need not upload it again.
    #[must_use]
    pub fn is_settled(self) -> bool {
        !matches!(self, Admission::Pending)
    }
}

/// `[kind, replica, seq]`: 0 admitted (with its dot), 1 superseded, 2 known, 3 pending, 4 refused
/// (zeros).
#[derive(Serialize, Deserialize)]
struct AdmissionWire(u8, u64, u64);

impl From<Admission> for AdmissionWire {
    fn from(a: Admission) -> Self {
        match a {
            Admission::Admitted(d) => AdmissionWire(0, d.replica.0, d.seq.0),
            Admission::Superseded => AdmissionWire(1, 0, 0),
            Admission::Known => AdmissionWire(2, 0, 0),
            Admission::Pending => AdmissionWire(3, 0, 0),
            Admission::Refused => AdmissionWire(4, 0, 0),
        }
    }
}

impl TryFrom<AdmissionWire> for Admission {
    type Error = String;

    fn try_from(w: AdmissionWire) -> Result<Self, String> {
        match w {
            AdmissionWire(0, r, s) if s > 0 => Ok(Admission::Admitted(Dot { replica: ReplicaId(r), seq: Seq(s) })),
            AdmissionWire(1, 0, 0) => Ok(Admission::Superseded),
            AdmissionWire(2, 0, 0) => Ok(Admission::Known),
            AdmissionWire(3, 0, 0) => Ok(Admission::Pending),
            AdmissionWire(4, 0, 0) => Ok(Admission::Refused),
            AdmissionWire(kind, ..) => Err(format!("an admission of kind {kind} with fields that do not fit it")),
        }
    }
}

/// Decodes a list of admissions, refusing more than an upload can hold.
pub(crate) fn bounded_admissions<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Admission>, D::Error> {
    limits::bounded_vec::<_, _, ENTRIES_PER_FRAME_MAX>(d)
}
