//! TLS 1.3 with pinned keys: each side presents its self-signed certificate, and each checks the
//! other's by the [`NodeId`] of its public key alone, never by address, name or CA. Handshake
//! signatures are verified with the key in the certificate, so presenting someone else's
//! certificate without their private key fails.

use crate::error::Error;
use crate::identity::{Identity, NodeId};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError, RwLock};

/// The node ids allowed to connect, shared and changeable while the node runs.
#[derive(Clone, Debug, Default)]
pub struct TrustList(Arc<RwLock<BTreeSet<NodeId>>>);

impl TrustList {
    /// A trust list holding `ids`.
    pub fn new(ids: impl IntoIterator<Item = NodeId>) -> TrustList {
        TrustList(Arc::new(RwLock::new(ids.into_iter().collect())))
    }

    /// Trusts `id` from now on.
    pub fn add(&self, id: NodeId) {
        self.0.write().unwrap_or_else(PoisonError::into_inner).insert(id);
    }

    /// Stops trusting `id` (connections already open are the caller's to close). Returns
    /// whether it was trusted.
    pub fn remove(&self, id: &NodeId) -> bool {
        self.0.write().unwrap_or_else(PoisonError::into_inner).remove(id)
    }

    /// Whether `id` is trusted.
    #[must_use]
    pub fn contains(&self, id: &NodeId) -> bool {
        self.0.read().unwrap_or_else(PoisonError::into_inner).contains(id)
    }

    /// Every trusted id.
    #[must_use]
    pub fn ids(&self) -> Vec<NodeId> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).iter().copied().collect()
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn untrusted(id: NodeId) -> rustls::Error {
    rustls::Error::General(format!("node {id} is not trusted"))
}

fn id_of(cert: &CertificateDer<'_>) -> Result<NodeId, rustls::Error> {
    NodeId::from_cert(cert).map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))
}

/// Client side: accepts exactly the server whose id the dialer expects; another's id is kept in
/// `found`, so the dialer can say the server is not the one named.
#[derive(Debug)]
struct ExpectServer {
    expected: NodeId,
    found: Arc<std::sync::Mutex<Option<NodeId>>>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ExpectServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = id_of(end_entity)?;
        if id == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            if let Ok(mut found) = self.found.lock() {
                *found = Some(id);
            }
            Err(untrusted(id))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Server side: accepts any client on the trust list.
#[derive(Debug)]
struct TrustedClients {
    trust: TrustList,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for TrustedClients {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = id_of(end_entity)?;
        if self.trust.contains(&id) {
            Ok(ClientCertVerified::assertion())
        } else {
            // The handshake fails with `Error::Untrusted`, which the accept loop logs (once, then
            // rate-limited): a line here would be one per attempt.
            tracing::debug!(peer = %id, "refused a connection from an untrusted node");
            Err(untrusted(id))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The server half: our certificate, clients checked against `trust`.
/// `compression`: whether to accept `lethe/6z` (preferred) beside `lethe/6`.
pub(crate) fn server_config(
    identity: &Identity,
    trust: TrustList,
    compression: bool,
) -> Result<rustls::ServerConfig, Error> {
    let provider = provider();
    let algs = provider.signature_verification_algorithms;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(TrustedClients { trust, algs }))
        .with_single_cert(vec![identity.cert()], identity.key())
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = crate::alpn_protocols(compression);
    Ok(config)
}

/// The client half for dialing `expected`: our certificate as client authentication.
/// `compression`: whether to offer `lethe/6z` beside `lethe/6`.
/// The client's TLS configuration for dialing `expected`; if another node answers, its id is
/// put in `found`.
pub(crate) fn client_config(
    identity: &Identity,
    expected: NodeId,
    found: Arc<std::sync::Mutex<Option<NodeId>>>,
    compression: bool,
) -> Result<rustls::ClientConfig, Error> {
    let provider = provider();
    let algs = provider.signature_verification_algorithms;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpectServer { expected, found, algs }))
        .with_client_auth_cert(vec![identity.cert()], identity.key())
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = crate::alpn_protocols(compression);
    Ok(config)
}
