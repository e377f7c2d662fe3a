//! Signed acknowledgements (docs/design.md §9): what one replica says about a *third* replica's
//! acknowledged vector, and when that replica was heard, counts only if the third replica signed
//! it.
//!
//! The engine holds no key. Signing and verifying come in through [`AckSigner`], which the
//! embedder implements (the node signs with its Ed25519 identity and verifies with the keys of
//! the replicas it trusts) and sets with [`crate::Replica::set_signer`].
//!
//! Invariants kept here and where acknowledgements enter (`gc.rs`, `device/records.rs`):
//! - a replica signs only its own acknowledgement: `(signer, vector, time_ms)` under the domain
//!   [`ACK_DOMAIN`], encoded by [`ack_message`] (fixed-width, so one value has one encoding);
//! - a claim a peer makes about *itself* is authenticated by the connection and counts unsigned;
//!   a claim it relays about any other replica counts only if [`SignedAck::verify`] passes for
//!   that replica; one that does not changes nothing and is counted
//!   ([`crate::Replica::acks_unverified`]), the session goes on;
//! - a replica with no signer set ([`NoSigner`]) signs nothing and verifies nothing: then only
//!   what peers say about themselves counts, and a replica that hears of another member only
//!   through gossip does not hold collection back for it nor collects early because of it;
//! - a signature is at most [`SIGNATURE_BYTES_MAX`] bytes, checked as it is decoded.

use crate::hlc::Hlc;
use crate::ids::{ReplicaId, Seq};
use crate::vector::VersionVector;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The domain separation tag every signed acknowledgement begins with (version 1 of the
/// encoding of [`ack_message`]).
pub const ACK_DOMAIN: &[u8] = b"lethe-ack/1";

/// The domain separation tag of a member's signed cursor claim ([`cursor_message`]): distinct
/// from [`ACK_DOMAIN`], so neither signature can pass for the other.
pub const CURSOR_DOMAIN: &[u8] = b"lethe-cursor/1";

/// The longest signature accepted on the wire (Ed25519's are 64 bytes, the stand-in's 32).
pub const SIGNATURE_BYTES_MAX: usize = 128;

/// Signs this replica's acknowledgements and verifies other replicas'. Implemented by the
/// embedder: the engine never sees a key.
///
/// `sign` must produce what `verify` on another replica accepts for this replica's id, and
/// `verify` must return `false` for any replica whose key it does not know. Both are called on
/// the session path, once per handshake and acknowledgement and once per relayed record, so they
/// should cost microseconds.
pub trait AckSigner: Send + Sync + fmt::Debug {
    /// This replica's signature over `message` (an [`ack_message`]). Empty: unsigned.
    fn sign(&self, message: &[u8]) -> Vec<u8>;
    /// Whether `signature` is `signer`'s over `message`.
    fn verify(&self, signer: ReplicaId, message: &[u8], signature: &[u8]) -> bool;
}

/// The default signer: signs nothing and verifies nothing, so a replica without a signer counts
/// only what each peer says about itself (and relays nothing others would count).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoSigner;

impl AckSigner for NoSigner {
    fn sign(&self, _message: &[u8]) -> Vec<u8> {
        Vec::new()
    }

    fn verify(&self, _signer: ReplicaId, _message: &[u8], _signature: &[u8]) -> bool {
        false
    }
}

/// **A stand-in for tests and the simulation only: it authenticates nothing.**
///
/// The "signature" is a blake3 keyed hash under a key derived from the signer's public id, so
/// anyone can compute anyone's. What it does give a test is determinism and the shape of the
/// real thing: a claim altered after signing, or attributed to another replica, or with no
/// signature, fails to verify exactly as it would with Ed25519. Never use it where a peer may be
/// hostile; the node signs with its Ed25519 identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InsecureTestSigner {
    me: ReplicaId,
}

impl InsecureTestSigner {
    /// The stand-in signer of replica `me`.
    #[must_use]
    pub fn new(me: ReplicaId) -> InsecureTestSigner {
        InsecureTestSigner { me }
    }

    fn tag(replica: ReplicaId, message: &[u8]) -> [u8; 32] {
        let key = blake3::derive_key("lethe insecure test signer v1", &replica.0.to_be_bytes());
        *blake3::keyed_hash(&key, message).as_bytes()
    }
}

impl AckSigner for InsecureTestSigner {
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        Self::tag(self.me, message).to_vec()
    }

    fn verify(&self, signer: ReplicaId, message: &[u8], signature: &[u8]) -> bool {
        signature == Self::tag(signer, message).as_slice()
    }
}

/// The bytes a replica signs for an acknowledgement: [`ACK_DOMAIN`], then the signer's id, the
/// vector's component count and each `(replica, seq)` in id order, and the time, all as
/// big-endian u64. Fixed-width and in the vector's own order, so one acknowledgement has exactly
/// one encoding (a general-purpose encoder would leave that to its settings).
#[must_use]
pub fn ack_message(signer: ReplicaId, vector: &VersionVector, time_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(ACK_DOMAIN.len() + 24 + 16 * vector.len());
    out.extend_from_slice(ACK_DOMAIN);
    out.extend_from_slice(&signer.0.to_be_bytes());
    out.extend_from_slice(&(vector.len() as u64).to_be_bytes());
    for (replica, seq) in vector.iter() {
        out.extend_from_slice(&replica.0.to_be_bytes());
        out.extend_from_slice(&seq.0.to_be_bytes());
    }
    out.extend_from_slice(&time_ms.to_be_bytes());
    out
}

/// The bytes a member signs for a cursor claim: [`CURSOR_DOMAIN`], then the member's id, the
/// device's id, the upload seq it handled the device's writes up to, its own counter once it
/// had and (unless it is [`Hlc::UNKNOWN`], as in claims made before stamps were claimed) the
/// highest stamp among those writes, all as big-endian u64.
#[must_use]
pub fn cursor_message(member: ReplicaId, device: ReplicaId, seq: Seq, counter: Seq, stamp: Hlc) -> Vec<u8> {
    let mut out = Vec::with_capacity(CURSOR_DOMAIN.len() + 40);
    out.extend_from_slice(CURSOR_DOMAIN);
    for n in [member.0, device.0, seq.0, counter.0] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    if stamp != Hlc::UNKNOWN {
        out.extend_from_slice(&stamp.0.to_be_bytes());
    }
    out
}

/// The domain separation tag of a member's signed statement of its own lost seqs
/// ([`lost_message`]).
pub const LOST_DOMAIN: &[u8] = b"lethe-lost/1";

/// The message a member signs to say which of its own seqs it lost to restores
/// (`replica/lost.rs`): [`LOST_DOMAIN`], then the member's id, the number of ranges as a u32
/// and each range's `from` and `to`, all big-endian.
#[must_use]
pub fn lost_message(member: ReplicaId, ranges: &[(Seq, Seq)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(LOST_DOMAIN.len() + 12 + 16 * ranges.len());
    out.extend_from_slice(LOST_DOMAIN);
    out.extend_from_slice(&member.0.to_be_bytes());
    out.extend_from_slice(&u32::try_from(ranges.len()).unwrap_or(u32::MAX).to_be_bytes());
    for (from, to) in ranges {
        out.extend_from_slice(&from.0.to_be_bytes());
        out.extend_from_slice(&to.0.to_be_bytes());
    }
    out
}

/// One member's word that it admitted a device's uploads up to upload seq `seq`, when its own
/// counter was `counter` (so a member whose vector covers `counter` at that member has seen
/// every one of those admissions), signed by that member over [`cursor_message`]. Members keep
/// the latest claim of each member per device (`DeviceRecord::cursors`) and relay them; a
/// receiver counts a claim about a member other than the sender only if that member's
/// signature verifies, so no member can make another answer "known" to an upload on a third
/// member's behalf (docs/design.md §9).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorClaim(
    /// The member that admitted.
    pub ReplicaId,
    /// The upload seq it admitted up to.
    pub Seq,
    /// Its own counter once it had.
    pub Seq,
    /// Its signature over [`cursor_message`] (empty: unsigned, the sender's own word only).
    #[serde(serialize_with = "serde_bytes::serialize", deserialize_with = "bounded_signature")]
    pub Vec<u8>,
    /// The highest stamp (the device's hybrid time) among the writes it handled up to that
    /// seq: a write stamped later is none of them (a device's stamps rise with its upload
    /// seqs, so one a restored copy made after the claimed writes, under a reused seq, is
    /// stamped later; R3-1). [`Hlc::UNKNOWN`] in a claim from before stamps were claimed: it
    /// reaches every stamp.
    #[serde(default = "Hlc::unknown")]
    pub Hlc,
);

impl CursorClaim {
    /// The member that made the claim.
    #[must_use]
    pub fn member(&self) -> ReplicaId {
        self.0
    }

    /// Whether the claim is its member's for `device`, signed (never for an empty or oversized
    /// signature).
    #[must_use]
    pub fn verify(&self, with: &dyn AckSigner, device: ReplicaId) -> bool {
        !self.3.is_empty()
            && self.3.len() <= SIGNATURE_BYTES_MAX
            && with.verify(self.0, &cursor_message(self.0, device, self.1, self.2, self.4), &self.3)
    }
}

/// One replica's acknowledgement as it signed it: the vector it had made durable, at its own
/// wall time `time_ms`. Kept per member (`membership.rs`) and per device (`device/records.rs`),
/// the latest one of each, and relayed instead of an unsigned claim.
///
/// Stored as a flat array `[signer, vector, time_ms, signature]`; the vector and the signature
/// are bounded as they decode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "SignedAckWire", from = "SignedAckWire")]
pub struct SignedAck {
    /// The replica that acknowledged, and signed.
    pub signer: ReplicaId,
    /// What it acknowledged.
    pub vector: VersionVector,
    /// Its wall clock when it signed, in ms since the Unix epoch.
    pub time_ms: u64,
    /// Its signature over [`ack_message`] (empty: unsigned).
    pub signature: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct SignedAckWire(
    ReplicaId,
    #[serde(deserialize_with = "crate::limits::bounded_vector")] VersionVector,
    u64,
    #[serde(serialize_with = "serde_bytes::serialize", deserialize_with = "bounded_signature")] Vec<u8>,
);

impl From<SignedAck> for SignedAckWire {
    fn from(a: SignedAck) -> Self {
        SignedAckWire(a.signer, a.vector, a.time_ms, a.signature)
    }
}

impl From<SignedAckWire> for SignedAck {
    fn from(SignedAckWire(signer, vector, time_ms, signature): SignedAckWire) -> Self {
        SignedAck { signer, vector, time_ms, signature }
    }
}

impl SignedAck {
    /// `signer`'s acknowledgement of `vector` at `time_ms`, signed with `with`.
    #[must_use]
    pub fn sign(with: &dyn AckSigner, signer: ReplicaId, vector: VersionVector, time_ms: u64) -> SignedAck {
        let signature = with.sign(&ack_message(signer, &vector, time_ms));
        SignedAck { signer, vector, time_ms, signature }
    }

    /// Whether the signature is the signer's (never for an empty or oversized one).
    #[must_use]
    pub fn verify(&self, with: &dyn AckSigner) -> bool {
        !self.signature.is_empty()
            && self.signature.len() <= SIGNATURE_BYTES_MAX
            && with.verify(self.signer, &ack_message(self.signer, &self.vector, self.time_ms), &self.signature)
    }

    /// [`SignedAck::verify`], and signed no later than `latest_ms`: a signed time from the future
    /// would count as "heard now" wherever it is relayed and, being the latest, would never be
    /// replaced by the signer's honest later acknowledgements.
    #[must_use]
    pub fn verify_by(&self, with: &dyn AckSigner, latest_ms: u64) -> bool {
        self.time_ms <= latest_ms && self.verify(with)
    }

    /// Whether this acknowledgement replaces `kept` as the latest of its signer: signed later,
    /// or at the same time with a vector that covers more.
    #[must_use]
    pub fn is_newer_than(&self, kept: Option<&SignedAck>) -> bool {
        kept.is_none_or(|k| {
            self.time_ms > k.time_ms
                || (self.time_ms == k.time_ms && self.vector != k.vector && self.vector.dominates(&k.vector))
        })
    }
}

/// The proof an `Ack` carries (`Message::Ack`): the acknowledging replica's wall time and its
/// signature over ([`ack_message`]) its id, the acknowledged vector and that time. The id is the
/// authenticated peer's, so it is not repeated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckProof(
    /// The signer's wall time, in ms since the Unix epoch.
    pub u64,
    /// The signature.
    #[serde(serialize_with = "serde_bytes::serialize", deserialize_with = "bounded_signature")]
    pub Vec<u8>,
);

impl<S: crate::storage::Storage> crate::Replica<S> {
    /// The latest signed time this replica accepts: its clock plus the drift bound and the
    /// peers' clock slack, as for stamps.
    pub(crate) fn signed_time_limit_ms(&self) -> u64 {
        self.now_ms().saturating_add(self.config().max_drift_ms).saturating_add(self.config().peer_clock_slack_ms)
    }

    /// Sets what signs this replica's acknowledgements and verifies other replicas'
    /// ([`AckSigner`]). Until it is called, [`NoSigner`]: only what a peer says about itself
    /// counts. Set it right after opening, before any session.
    pub fn set_signer(&mut self, signer: std::sync::Arc<dyn AckSigner>) {
        self.signer = signer;
    }

    /// What signs and verifies acknowledgements here.
    #[must_use]
    pub fn signer(&self) -> &dyn AckSigner {
        self.signer.as_ref()
    }

    /// How many relayed acknowledgements about a third replica were ignored since opening,
    /// because they were unsigned or their signature did not verify for that replica.
    #[must_use]
    pub fn acks_unverified(&self) -> u64 {
        self.acks_unverified
    }

    /// How many relayed device claims were refused since opening as implausible: a cursor
    /// claim more than [`crate::limits::CURSOR_GAP_MAX`] beyond the other members' claims held
    /// (or beyond [`crate::limits::CURSOR_MAX`]), or an epoch
    /// more than [`crate::limits::DEVICE_EPOCH_GAP_MAX`] beyond the epoch held.
    #[must_use]
    pub fn claims_implausible(&self) -> u64 {
        self.claims_implausible
    }

    /// This replica's own acknowledgement of `vector`, now, signed.
    #[must_use]
    pub fn sign_ack(&self, vector: VersionVector) -> SignedAck {
        SignedAck::sign(self.signer.as_ref(), self.id(), vector, self.now_ms())
    }

    /// An `Ack` of `vector` with this replica's signature (`Message::Ack`).
    ///
    /// A device signs it at the later of its own clock and the members' as their handshakes
    /// showed it (`replica/clock.rs`): members take a device's signed time as when it was last
    /// seen, so a device whose clock lags would otherwise look silent (past its lease, even) to
    /// every member but the one it talks to. A member signs at its own clock.
    #[must_use]
    pub fn ack_frame(&self, vector: VersionVector) -> crate::session::Message {
        let time_ms = match self.peers_now_ms() {
            Some(peers_ms) if self.is_device() => self.now_ms().max(peers_ms),
            _ => self.now_ms(),
        };
        let signed = SignedAck::sign(self.signer.as_ref(), self.id(), vector, time_ms);
        crate::session::Message::Ack(signed.vector, Some(AckProof(signed.time_ms, signed.signature)))
    }

    /// This member's signed claim that it handled `device`'s uploads up to `seq`, stamped up to
    /// `stamp`, when its own counter was `counter` ([`CursorClaim`]).
    #[must_use]
    pub(crate) fn sign_cursor(&self, device: ReplicaId, seq: Seq, counter: Seq, stamp: Hlc) -> CursorClaim {
        let signature = self.signer.sign(&cursor_message(self.id(), device, seq, counter, stamp));
        CursorClaim(self.id(), seq, counter, signature, stamp)
    }

    /// Whether a relayed claim verifies for its signer; one that does not is counted.
    pub(crate) fn verify_relayed(&mut self, claim: &SignedAck) -> bool {
        let ok = claim.verify_by(self.signer.as_ref(), self.signed_time_limit_ms());
        if !ok {
            self.acks_unverified += 1;
        }
        ok
    }
}

/// Decodes a signature, refusing one longer than [`SIGNATURE_BYTES_MAX`] before copying it.
pub(crate) fn bounded_signature<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct Bounded;
    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a signature of at most {SIGNATURE_BYTES_MAX} bytes")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            if v.len() > SIGNATURE_BYTES_MAX {
                return Err(E::custom(format!("a signature of {} bytes, more than {SIGNATURE_BYTES_MAX}", v.len())));
            }
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            self.visit_bytes(&v)
        }
    }
    d.deserialize_bytes(Bounded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(pairs: &[(u64, u64)]) -> VersionVector {
        pairs.iter().map(|&(r, s)| (ReplicaId(r), Seq(s))).collect::<Vec<_>>().into()
    }

    #[test]
    fn a_signed_ack_verifies_only_as_signed_and_by_its_signer() {
        let a = InsecureTestSigner::new(ReplicaId(1));
        let ack = SignedAck::sign(&a, ReplicaId(1), vv(&[(1, 5), (2, 3)]), 1000);
        let b = InsecureTestSigner::new(ReplicaId(2));
        assert!(ack.verify(&b), "anyone holding the verifier checks it");
        assert!(!ack.verify(&NoSigner), "no signer verifies nothing");
        let mut more = ack.clone();
        more.vector = vv(&[(1, 9), (2, 3)]);
        assert!(!more.verify(&b), "an altered vector");
        let mut later = ack.clone();
        later.time_ms += 1;
        assert!(!later.verify(&b), "an altered time");
        let mut other = ack.clone();
        other.signer = ReplicaId(3);
        assert!(!other.verify(&b), "attributed to another replica");
        let mut unsigned = ack.clone();
        unsigned.signature.clear();
        assert!(!unsigned.verify(&b));
        assert!(SignedAck::sign(&NoSigner, ReplicaId(1), vv(&[]), 1).signature.is_empty());
    }

    #[test]
    fn one_acknowledgement_has_one_encoding_under_the_domain() {
        let m = ack_message(ReplicaId(1), &vv(&[(2, 3), (1, 5)]), 7);
        assert!(m.starts_with(ACK_DOMAIN));
        assert_eq!(m, ack_message(ReplicaId(1), &vv(&[(1, 5), (2, 3)]), 7));
        assert_eq!(m.len(), ACK_DOMAIN.len() + 8 + 8 + 2 * 16 + 8);
        assert_ne!(m, ack_message(ReplicaId(1), &vv(&[(1, 5), (2, 3)]), 8));
    }

    #[test]
    fn the_latest_ack_is_the_later_or_the_larger() {
        let s = InsecureTestSigner::new(ReplicaId(1));
        let old = SignedAck::sign(&s, ReplicaId(1), vv(&[(1, 5)]), 10);
        let same_time_more = SignedAck::sign(&s, ReplicaId(1), vv(&[(1, 6)]), 10);
        let later_less = SignedAck::sign(&s, ReplicaId(1), vv(&[(1, 4)]), 11);
        assert!(old.is_newer_than(None));
        assert!(same_time_more.is_newer_than(Some(&old)) && !old.is_newer_than(Some(&same_time_more)));
        assert!(later_less.is_newer_than(Some(&same_time_more)));
        assert!(!old.is_newer_than(Some(&old)));
    }

    #[test]
    fn a_signature_longer_than_the_bound_is_refused_as_it_decodes() {
        let s = InsecureTestSigner::new(ReplicaId(1));
        let mut ack = SignedAck::sign(&s, ReplicaId(1), vv(&[(1, 5)]), 10);
        let mut bytes = Vec::new();
        ciborium::into_writer(&ack, &mut bytes).unwrap();
        assert_eq!(ciborium::from_reader::<SignedAck, _>(bytes.as_slice()).unwrap(), ack);
        ack.signature = vec![0; SIGNATURE_BYTES_MAX + 1];
        let mut bytes = Vec::new();
        ciborium::into_writer(&ack, &mut bytes).unwrap();
        let err = ciborium::from_reader::<SignedAck, _>(bytes.as_slice()).unwrap_err();
        assert!(err.to_string().contains("signature of 129 bytes"), "{err}");
        let proof = AckProof(5, vec![1; SIGNATURE_BYTES_MAX + 1]);
        let mut bytes = Vec::new();
        ciborium::into_writer(&proof, &mut bytes).unwrap();
        assert!(ciborium::from_reader::<AckProof, _>(bytes.as_slice()).is_err());
    }

    #[test]
    fn a_cursor_claim_verifies_only_with_its_stamp_and_an_unstamped_one_decodes_as_reaching_every_stamp() {
        let signer = InsecureTestSigner::new(ReplicaId(1));
        let (member, device) = (ReplicaId(1), ReplicaId(100));
        let sign = |stamp: Hlc| {
            let signature = signer.sign(&cursor_message(member, device, Seq(4), Seq(9), stamp));
            CursorClaim(member, Seq(4), Seq(9), signature, stamp)
        };
        let claim = sign(Hlc(77));
        assert!(claim.verify(&signer, device));
        let mut lowered = claim.clone();
        lowered.4 = Hlc(76);
        assert!(!lowered.verify(&signer, device), "a relay lowered the stamp");
        assert!(sign(Hlc::UNKNOWN).verify(&signer, device), "a claim from before stamps were claimed");
        // A claim stored or sent before it carried a stamp: four fields.
        let mut old = Vec::new();
        ciborium::into_writer(&(member, Seq(4), Seq(9), serde_bytes::Bytes::new(&[1, 2])), &mut old).unwrap();
        let decoded: CursorClaim = ciborium::from_reader(old.as_slice()).unwrap();
        assert_eq!(decoded.4, Hlc::UNKNOWN);
    }
}
