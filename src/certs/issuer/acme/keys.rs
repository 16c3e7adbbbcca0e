//! Keys, CSRs and the TLS-ALPN-01 challenge certificate.

use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};

use crate::certs::certificate::CertifiedKey;
use crate::certs::issuer::{IssueError, KeyType};
use crate::domain::Domain;

/// A fresh key of `key_type` and a CSR for exactly `name` (DER).
pub fn key_and_csr(name: &Domain, key_type: KeyType) -> Result<(KeyPair, Vec<u8>), IssueError> {
    let key =
        KeyPair::generate_for(key_type.algorithm()).map_err(|e| IssueError::Key(e.to_string()))?;
    let mut params = CertificateParams::new(vec![name.to_string()])
        .map_err(|e| IssueError::Sign(e.to_string()))?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| IssueError::Sign(e.to_string()))?;
    Ok((key, csr.der().to_vec()))
}

/// The RFC 8737 §3 challenge certificate: self-signed, SAN = `name`, critical `acmeIdentifier`
/// extension holding SHA-256(key authorization).
pub fn tls_alpn01_certificate(name: &Domain, digest: &[u8]) -> Result<CertifiedKey, IssueError> {
    let bundle = tls_alpn01_bundle(name, digest)?;
    CertifiedKey::from_bundle(&bundle, Some(name)).map_err(|e| IssueError::Sign(e.to_string()))
}

/// `tls_alpn01_certificate` as a PEM bundle (key + certificate), as shared between hosts.
pub fn tls_alpn01_bundle(name: &Domain, digest: &[u8]) -> Result<Vec<u8>, IssueError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| IssueError::Key(e.to_string()))?;
    let mut params = CertificateParams::new(vec![name.to_string()])
        .map_err(|e| IssueError::Sign(e.to_string()))?;
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params
        .self_signed(&key)
        .map_err(|e| IssueError::Sign(e.to_string()))?;
    Ok(format!("{}{}", key.serialize_pem(), cert.pem()).into_bytes())
}
