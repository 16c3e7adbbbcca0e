//! The internal CA: the embedded default: a local CA created on first start under
//! `<data_dir>/ca/` (`root.pem` is the certificate clients trust, `root.key` its key, 0600).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use crate::certs::issuer::{IssueError, Issued, Issuer, IssuerKind, KeyType};
use crate::domain::Domain;
use crate::util::fs::{create_private_dir, write_atomic, FileError};

/// `issuer.internal`.
#[derive(Debug, Clone)]
pub struct InternalSettings {
    /// Lifetime of the leaf certificates it signs.
    pub lifetime: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The embedded CA: signs short-lived ECDSA P-256 (or RSA-2048) leaves for allowed names.
pub struct InternalCa {
    issuer: rcgen::Issuer<'static, KeyPair>,
    root_pem: String,
    lifetime: Duration,
    key_type: KeyType,
}

/// CA files, relative to the data directory.
pub const CA_CERT: &str = "ca/root.pem";
pub const CA_KEY: &str = "ca/root.key";

impl InternalCa {
    /// Load the CA from `<data_dir>/ca`, creating it on first use.
    pub fn load_or_create(
        data_dir: &Path,
        lifetime: Duration,
        key_type: KeyType,
    ) -> Result<Arc<InternalCa>, CaError> {
        let cert_path = data_dir.join(CA_CERT);
        let key_path = data_dir.join(CA_KEY);
        let invalid = |path: &Path, message: String| CaError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let (root_pem, key) = if key_path.exists() || cert_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path)
                .map_err(|e| invalid(&key_path, format!("cannot read the CA key: {e}")))?;
            let root_pem = std::fs::read_to_string(&cert_path)
                .map_err(|e| invalid(&cert_path, format!("cannot read the CA certificate: {e}")))?;
            let key = KeyPair::from_pem(&key_pem)
                .map_err(|e| invalid(&key_path, format!("not a usable private key: {e}")))?;
            (root_pem, key)
        } else {
            create_private_dir(&data_dir.join("ca"))?;
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| invalid(&key_path, format!("key generation failed: {e}")))?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "tenant-edge internal CA");
            dn.push(DnType::OrganizationName, "tenant-edge");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + time::Duration::days(3650);
            params.serial_number = Some(random_serial());
            let cert = params
                .self_signed(&key)
                .map_err(|e| invalid(&cert_path, format!("self-signing failed: {e}")))?;
            // Key first: a crash between the two writes leaves a key without a certificate,
            // which is reported at the next start instead of silently replaced.
            write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
            log::info!(
                "created the internal CA; clients trust {}",
                cert_path.display()
            );
            (cert.pem(), key)
        };
        let issuer = rcgen::Issuer::from_ca_cert_pem(&root_pem, key)
            .map_err(|e| invalid(&cert_path, format!("not a usable CA certificate: {e}")))?;
        Ok(Arc::new(InternalCa {
            issuer,
            root_pem,
            lifetime,
            key_type,
        }))
    }

    /// The root certificate (PEM) that clients must trust.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Sign a leaf for `name` (synchronous; key generation is the slow part for RSA).
    pub fn sign(&self, name: &Domain) -> Result<Issued, IssueError> {
        let key = KeyPair::generate_for(self.key_type.algorithm())
            .map_err(|e| IssueError::Key(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.as_str());
        params.distinguished_name = dn;
        let dns = name
            .as_str()
            .try_into()
            .map_err(|e: rcgen::Error| IssueError::Sign(e.to_string()))?;
        params.subject_alt_names = vec![SanType::DnsName(dns)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = match self.key_type {
            // An ECDSA key cannot encipher: with ECDHE suites only its signature is used.
            KeyType::EcdsaP256 => vec![KeyUsagePurpose::DigitalSignature],
            KeyType::Rsa2048 => vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ],
        };
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        // Backdated a minute for clients whose clocks run slightly behind.
        params.not_before = now - time::Duration::minutes(1);
        params.not_after =
            now + time::Duration::try_from(self.lifetime).unwrap_or(time::Duration::days(30));
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| IssueError::Sign(e.to_string()))?;
        let mut bundle = key.serialize_pem();
        // The root is the client's trust anchor; it is not sent in the handshake.
        bundle.push_str(&cert.pem());
        Ok(Issued {
            bundle: bundle.into_bytes(),
        })
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

#[async_trait]
impl Issuer for InternalCa {
    fn kind(&self) -> IssuerKind {
        IssuerKind::Internal
    }

    async fn issue(&self, name: &Domain) -> Result<Issued, IssueError> {
        self.sign(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::certificate::CertifiedKey;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::{X509StoreContext, X509};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ca_is_created_once_and_leaves_verify_against_it() {
        let dir = tempfile::tempdir().unwrap();
        let ca =
            InternalCa::load_or_create(dir.path(), Duration::from_secs(3600), KeyType::EcdsaP256)
                .unwrap();
        let key_mode = std::fs::metadata(dir.path().join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let again =
            InternalCa::load_or_create(dir.path(), Duration::from_secs(3600), KeyType::EcdsaP256)
                .unwrap();
        assert_eq!(
            ca.root_pem(),
            again.root_pem(),
            "a restart must reuse the CA"
        );

        let name = Domain::parse("shop.localhost").unwrap();
        // Signed by the reloaded CA: proves the reloaded issuer chains to the same root.
        let issued = again.sign(&name).unwrap();
        let ck = CertifiedKey::from_bundle(&issued.bundle, Some(&name)).unwrap();
        assert_eq!(ck.names, vec!["shop.localhost"]);
        let usage = ck.leaf().to_text().unwrap();
        let usage = String::from_utf8_lossy(&usage);
        assert!(usage.contains("Digital Signature"), "{usage}");
        assert!(
            !usage.contains("Key Encipherment"),
            "ECDSA leaves only sign: {usage}"
        );
        let lifetime = ck.not_after - ck.not_before;
        assert!(
            (3600..3600 + 120).contains(&lifetime),
            "lifetime {lifetime}"
        );

        let root = X509::from_pem(ca.root_pem().as_bytes()).unwrap();
        let mut store = X509StoreBuilder::new().unwrap();
        store.add_cert(root).unwrap();
        let store = store.build();
        let chain = openssl::stack::Stack::new().unwrap();
        let mut ctx = X509StoreContext::new().unwrap();
        let ok = ctx
            .init(&store, ck.leaf(), &chain, |c| c.verify_cert())
            .unwrap();
        assert!(ok, "leaf does not verify against the internal root");
    }

    #[test]
    fn rsa_leaves_are_rsa() {
        let dir = tempfile::tempdir().unwrap();
        let ca =
            InternalCa::load_or_create(dir.path(), Duration::from_secs(3600), KeyType::Rsa2048)
                .unwrap();
        let issued = ca.sign(&Domain::parse("rsa.localhost").unwrap()).unwrap();
        let ck = CertifiedKey::from_bundle(&issued.bundle, None).unwrap();
        assert_eq!(ck.key.bits(), 2048);
    }

    #[test]
    fn a_missing_ca_certificate_is_an_error_not_a_new_ca() {
        let dir = tempfile::tempdir().unwrap();
        InternalCa::load_or_create(dir.path(), Duration::from_secs(3600), KeyType::EcdsaP256)
            .unwrap();
        std::fs::remove_file(dir.path().join(CA_CERT)).unwrap();
        let err =
            InternalCa::load_or_create(dir.path(), Duration::from_secs(3600), KeyType::EcdsaP256)
                .err()
                .expect("must fail");
        assert!(err.to_string().contains("root.pem"), "{err}");
    }
}
