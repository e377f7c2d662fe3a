//! The node's [`AckSigner`] (docs/design.md §9): it signs this node's acknowledgements with its
//! Ed25519 identity and verifies other replicas' against the node ids it trusts.
//!
//! A [`NodeId`] is the blake3 hash of a key, not the key, so a signature travels with the
//! signer's public key: 32 bytes of key, then the 64-byte Ed25519 signature
//! ([`ACK_SIGNATURE_BYTES`]). A verifier accepts it only if that key hashes (as the certificate's
//! SubjectPublicKeyInfo) to the node id it trusts for the claimed replica, so a member can relay
//! a third replica's acknowledgement it could not have made, and can forge none.

use crate::error::Error;
use crate::identity::{Identity, NodeId};
use crate::tls::TrustList;
use lethe_engine::ReplicaId;
use lethe_engine::sign::AckSigner;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use std::fmt;

/// Bytes of one signature on the wire: the signer's public key (32) and the signature (64).
pub const ACK_SIGNATURE_BYTES: usize = 32 + 64;

/// The DER SubjectPublicKeyInfo of an Ed25519 key, before its 32 bytes (RFC 8410).
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// The node id of an Ed25519 public key, as [`NodeId::from_cert`] computes it.
fn node_id_of(public_key: &[u8]) -> NodeId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&ED25519_SPKI_PREFIX);
    hasher.update(public_key);
    NodeId(*hasher.finalize().as_bytes())
}

/// Signs with a node's Ed25519 key; verifies against a trust list (the one the endpoint
/// authenticates connections by, so a node trusted later is verified from then on).
pub struct Ed25519AckSigner {
    key: Ed25519KeyPair,
    id: NodeId,
    trusted: TrustList,
}

impl fmt::Debug for Ed25519AckSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519AckSigner").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Ed25519AckSigner {
    /// The signer of `identity`, verifying the replicas whose node ids `trusted` holds (a
    /// replica's id is [`NodeId::replica_id`]). Fails if the identity's key is not an Ed25519
    /// key ring reads.
    pub fn new(identity: &Identity, trusted: TrustList) -> Result<Ed25519AckSigner, Error> {
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(identity.pkcs8())
            .map_err(|e| Error::Identity(format!("the node's key does not sign acknowledgements: {e}")))?;
        let id = node_id_of(key.public_key().as_ref());
        if id != identity.id() {
            return Err(Error::Identity("the node's key does not match its certificate".into()));
        }
        Ok(Ed25519AckSigner { key, id, trusted })
    }
}

impl AckSigner for Ed25519AckSigner {
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ACK_SIGNATURE_BYTES);
        out.extend_from_slice(self.key.public_key().as_ref());
        out.extend_from_slice(self.key.sign(message).as_ref());
        out
    }

    fn verify(&self, signer: ReplicaId, message: &[u8], signature: &[u8]) -> bool {
        if signature.len() != ACK_SIGNATURE_BYTES {
            return false;
        }
        let (public_key, signature) = signature.split_at(32);
        let node = node_id_of(public_key);
        node.replica_id() == signer
            && self.trusted.contains(&node)
            && UnparsedPublicKey::new(&ED25519, public_key).verify(message, signature).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lethe_engine::sign::SignedAck;
    use lethe_engine::{Seq, VersionVector};

    #[test]
    fn a_node_verifies_a_trusted_replicas_ack_and_nothing_forged() {
        let (a, b, c) = (Identity::generate().unwrap(), Identity::generate().unwrap(), Identity::generate().unwrap());
        let at_a = Ed25519AckSigner::new(&a, TrustList::new([a.id(), b.id(), c.id()])).unwrap();
        let at_b = Ed25519AckSigner::new(&b, TrustList::new([a.id(), b.id(), c.id()])).unwrap();
        let c_trusts = TrustList::new([b.id(), c.id()]);
        let at_c = Ed25519AckSigner::new(&c, c_trusts.clone()).unwrap();
        let vector: VersionVector = vec![(a.id().replica_id(), Seq(5))].into();
        let ack = SignedAck::sign(&at_a, a.id().replica_id(), vector.clone(), 1_000);
        assert_eq!(ack.signature.len(), ACK_SIGNATURE_BYTES);
        assert!(ack.signature.len() <= lethe_engine::sign::SIGNATURE_BYTES_MAX);
        assert!(ack.verify(&at_b), "relayed to b, a's key hashes to the id b trusts for a");
        assert!(!ack.verify(&at_c), "c does not trust a");
        c_trusts.add(a.id());
        assert!(ack.verify(&at_c), "once it does");
        let mut more = ack.clone();
        more.vector = vec![(a.id().replica_id(), Seq(9))].into();
        assert!(!more.verify(&at_b), "an altered vector");
        // b claims a acknowledged more: signed with b's own key, it does not hash to a's id.
        let forged = SignedAck::sign(&at_b, a.id().replica_id(), more.vector.clone(), 1_000);
        assert!(!forged.verify(&at_a) && !forged.verify(&at_b));
        let mut truncated = ack.clone();
        truncated.signature.pop();
        assert!(!truncated.verify(&at_b));
    }

    #[test]
    fn the_signers_key_hashes_to_the_node_id() {
        let a = Identity::generate().unwrap();
        let again = Identity::from_pkcs8(a.pkcs8()).unwrap();
        let signer = Ed25519AckSigner::new(&again, TrustList::new([])).unwrap();
        assert_eq!(signer.id, a.id());
    }
}
