//! A node's identity: an Ed25519 key pair, a self-signed certificate carrying it, and the
//! [`NodeId`] derived from the public key.

use crate::error::Error;
use lethe_engine::ReplicaId;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::fmt;
use std::str::FromStr;

/// A node's id: blake3 of its public key (DER SubjectPublicKeyInfo). Written as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The id of the key in a DER certificate.
    pub fn from_cert(cert: &CertificateDer<'_>) -> Result<NodeId, Error> {
        let parsed = webpki::EndEntityCert::try_from(cert)
            .map_err(|e| Error::Identity(format!("certificate does not parse: {e:?}")))?;
        Ok(NodeId(*blake3::hash(parsed.subject_public_key_info().as_ref()).as_bytes()))
    }

    /// The engine replica id of this node: the first 8 bytes of the id. A replica's id is thus
    /// bound to its key; a peer cannot write under another's replica id.
    #[must_use]
    pub fn replica_id(&self) -> ReplicaId {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        ReplicaId(u64::from_be_bytes(first))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = Error;

    fn from_str(s: &str) -> Result<NodeId, Error> {
        let bad = || Error::Identity(format!("`{s}` is not a node id (64 hex digits, as `lethe init` prints)"));
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut id = [0u8; 32];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(NodeId(id))
    }
}

/// A node's key pair and certificate.
pub struct Identity {
    key_pkcs8: Vec<u8>,
    cert: CertificateDer<'static>,
    id: NodeId,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Identity {
    /// A new random Ed25519 identity.
    pub fn generate() -> Result<Identity, Error> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(|e| Error::Identity(e.to_string()))?;
        Identity::from_key(key)
    }

    /// The identity stored as a PKCS#8 DER private key (as [`Identity::pkcs8`] gives it).
    pub fn from_pkcs8(der: &[u8]) -> Result<Identity, Error> {
        let key = rcgen::KeyPair::try_from(der).map_err(|e| Error::Identity(format!("private key: {e}")))?;
        Identity::from_key(key)
    }

    fn from_key(key: rcgen::KeyPair) -> Result<Identity, Error> {
        let params =
            rcgen::CertificateParams::new(vec!["lethe".to_string()]).map_err(|e| Error::Identity(e.to_string()))?;
        let cert = params.self_signed(&key).map_err(|e| Error::Identity(e.to_string()))?;
        let cert = cert.der().clone();
        let id = NodeId::from_cert(&cert)?;
        Ok(Identity { key_pkcs8: key.serialize_der(), cert, id })
    }

    /// The private key, PKCS#8 DER: what to store (and keep secret).
    #[must_use]
    pub fn pkcs8(&self) -> &[u8] {
        &self.key_pkcs8
    }

    /// The node id.
    #[must_use]
    pub fn id(&self) -> NodeId {
        self.id
    }

    pub(crate) fn cert(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_follows_the_key_and_round_trips_as_text() {
        let a = Identity::generate().unwrap();
        let again = Identity::from_pkcs8(a.pkcs8()).unwrap();
        assert_eq!(a.id(), again.id(), "a new certificate for the same key keeps the id");
        assert_ne!(a.id(), Identity::generate().unwrap().id());
        assert_eq!(a.id().to_string().parse::<NodeId>().unwrap(), a.id());
        assert!("xyz".parse::<NodeId>().is_err());
        assert!("é".repeat(32).parse::<NodeId>().is_err());
        assert!(Identity::from_pkcs8(b"not a key").is_err());
    }
}
