//! The ACME issuer (RFC 8555) on instant-acme: Let's Encrypt by default, any ACME CA by URL.
//!
//! One account per directory URL, created on the first order and stored atomically (0600) at
//! `<data_dir>/acme/<directory host>-<hash>/account.json`; every later start reuses it. An
//! order answers HTTP-01 (port 80) or TLS-ALPN-01 (the TLS listener, ALPN `acme-tls/1`) in the
//! configured order of preference, by publishing the response in `Challenges` for exactly as
//! long as the order is open. The certificate is served with the full chain the CA returned.
//!
//! This module only talks to the CA. Whether to order, how often and for which names is the
//! manager's and the limits' business; the issuer never retries on its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier,
    ChallengeType as AcmeChallenge, ExternalAccountKey, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls_pki_types::CertificateDer;
use tokio::sync::OnceCell;

use crate::certificate::CertifiedKey;
use crate::challenge::{ChallengeGuard, Challenges};
use crate::config::{AcmeConfig, ChallengeType, KeyType};
use crate::domain::Domain;
use crate::issuer::{IssueError, Issued, Issuer};
use crate::metrics::Metrics;
use crate::shared::SharedStore;
use crate::store::{create_private_dir, write_atomic};

pub struct AcmeIssuer {
    config: AcmeConfig,
    key_type: KeyType,
    account_file: PathBuf,
    account: OnceCell<Account>,
    /// The store shared by several hosts (one ACME account for all of them).
    shared: Option<Arc<SharedStore>>,
    challenges: Arc<Challenges>,
    metrics: Arc<Metrics>,
}

fn challenge_label(c: ChallengeType) -> &'static str {
    match c {
        ChallengeType::Http01 => "http-01",
        ChallengeType::TlsAlpn01 => "tls-alpn-01",
    }
}

fn acme_type(c: ChallengeType) -> AcmeChallenge {
    match c {
        ChallengeType::Http01 => AcmeChallenge::Http01,
        ChallengeType::TlsAlpn01 => AcmeChallenge::TlsAlpn01,
    }
}

/// Where the account for `directory` lives: one directory per CA, named so an operator can tell
/// them apart (`acme-v02.api.letsencrypt.org-1a2b3c4d`).
pub fn account_dir(data_dir: &Path, directory: &str) -> PathBuf {
    let host: String = directory
        .split("://")
        .nth(1)
        .unwrap_or(directory)
        .split(['/', '?'])
        .next()
        .unwrap_or("ca")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // FNV-1a: stable across builds (std's hasher is not), enough to separate two paths on one host.
    let hash = directory.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    data_dir
        .join("acme")
        .join(format!("{host}-{:08x}", hash as u32))
}

impl AcmeIssuer {
    pub fn new(
        config: AcmeConfig,
        key_type: KeyType,
        data_dir: &Path,
        challenges: Arc<Challenges>,
        shared: Option<Arc<SharedStore>>,
        metrics: Arc<Metrics>,
    ) -> AcmeIssuer {
        let account_file = account_dir(data_dir, &config.directory).join("account.json");
        AcmeIssuer {
            config,
            key_type,
            account_file,
            account: OnceCell::new(),
            shared,
            challenges,
            metrics,
        }
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder, IssueError> {
        let client = http_client(self.config.trusted_root.as_deref())?;
        Ok(Account::builder_with_http(client))
    }

    /// The account, loaded from disk or created once (and then stored).
    pub async fn account(&self) -> Result<&Account, IssueError> {
        self.account
            .get_or_try_init(|| self.load_or_create_account())
            .await
    }

    async fn load_or_create_account(&self) -> Result<Account, IssueError> {
        // Several hosts use one account: the shared copy wins over this host's file.
        if let Some(shared) = &self.shared {
            match shared.load_account(&self.config.directory).await {
                Ok(Some(bytes)) => {
                    if let Some(dir) = self.account_file.parent() {
                        let _ = create_private_dir(dir);
                    }
                    if let Err(e) = write_atomic(&self.account_file, &bytes, 0o600) {
                        log::warn!("could not keep a local copy of the shared ACME account: {e}");
                    }
                }
                Ok(None) => {
                    // A host that ran alone before brings its account along.
                    if let Ok(local) = std::fs::read(&self.account_file) {
                        if let Err(e) = shared.insert_account(&self.config.directory, &local).await {
                            log::warn!("could not share the ACME account: {e}");
                        }
                    }
                }
                Err(e) => log::warn!("the shared store has no answer about the ACME account ({e}); using this host's"),
            }
        }
        if let Ok(bytes) = std::fs::read(&self.account_file) {
            let credentials: AccountCredentials = serde_json::from_slice(&bytes).map_err(|e| {
                IssueError::Refused(format!(
                    "{} is not a valid ACME account file ({e}); move it away to create a new account",
                    self.account_file.display()
                ))
            })?;
            return self
                .builder()?
                .from_credentials(credentials)
                .await
                .map_err(|e| IssueError::Unreachable(format!("{}: {e}", self.config.directory)));
        }
        let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
        let eab = self
            .config
            .eab
            .as_ref()
            .map(|e| ExternalAccountKey::new(e.key_id.clone(), &e.hmac_key));
        let (account, credentials) = self
            .builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.config.directory.clone(),
                eab.as_ref(),
            )
            .await
            .map_err(|e| classify(&self.config.directory, e))?;
        let mut json = serde_json::to_vec_pretty(&credentials)
            .map_err(|e| IssueError::Refused(format!("cannot serialize the account: {e}")))?;
        let mut account = account;
        if let Some(shared) = &self.shared {
            // Two hosts may create accounts at once: the first stored wins, the other is unused.
            match shared.insert_account(&self.config.directory, &json).await {
                Ok(winner) if winner != json => {
                    let credentials: AccountCredentials =
                        serde_json::from_slice(&winner).map_err(|e| {
                            IssueError::Refused(format!(
                                "the shared ACME account is not valid: {e}"
                            ))
                        })?;
                    account = self
                        .builder()?
                        .from_credentials(credentials)
                        .await
                        .map_err(|e| {
                            IssueError::Unreachable(format!("{}: {e}", self.config.directory))
                        })?;
                    json = winner;
                }
                Ok(_) => {}
                Err(e) => log::warn!("could not share the new ACME account: {e}"),
            }
        }
        if let Some(dir) = self.account_file.parent() {
            create_private_dir(dir).map_err(|e| IssueError::Refused(e.to_string()))?;
        }
        write_atomic(&self.account_file, &json, 0o600)
            .map_err(|e| IssueError::Refused(e.to_string()))?;
        log::info!(
            "created ACME account {} at {}",
            account.id(),
            self.config.directory
        );
        Ok(account)
    }

    /// Fetch the directory (and load or create the account): what `tenant-edge check` probes.
    pub async fn probe(&self) -> Result<String, IssueError> {
        let account = self.account().await?;
        Ok(account.id().to_string())
    }

    /// The ARI identifier of a certificate (authority key id + serial), if it has one.
    fn ari_id(old: &CertifiedKey) -> Option<CertificateIdentifier<'static>> {
        let der = CertificateDer::from(old.leaf().to_der().ok()?);
        CertificateIdentifier::try_from(&der)
            .ok()
            .map(CertificateIdentifier::into_owned)
    }

    async fn order(
        &self,
        name: &Domain,
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<(Issued, ChallengeType), IssueError> {
        let account = self.account().await?;
        let ids = [Identifier::Dns(name.to_string())];
        let mut new_order = NewOrder::new(&ids);
        if let Some(profile) = &self.config.profile {
            new_order = new_order.profile(profile);
        }
        if let Some(id) = replaces {
            new_order = new_order.replaces(id);
        }
        let dir = &self.config.directory;
        let mut order = account
            .new_order(&new_order)
            .await
            .map_err(|e| classify(dir, e))?;

        // Publish a response for every pending authorization; the guards unpublish them when
        // this function returns, whatever the outcome.
        let mut guards: Vec<ChallengeGuard> = Vec::new();
        let mut used = self.config.challenges[0];
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| classify(dir, e))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(IssueError::Refused(format!(
                        "the authorization for {name} is {other:?}"
                    )))
                }
            }
            let offered: Vec<AcmeChallenge> =
                authz.challenges.iter().map(|c| c.r#type.clone()).collect();
            let Some(kind) = self
                .config
                .challenges
                .iter()
                .copied()
                .find(|c| offered.contains(&acme_type(*c)))
            else {
                return Err(IssueError::Refused(format!(
                    "the CA offers none of the configured challenges for {name} (offered: {offered:?})"
                )));
            };
            used = kind;
            let mut challenge = authz.challenge(acme_type(kind)).ok_or_else(|| {
                IssueError::Refused(format!("{} challenge vanished", challenge_label(kind)))
            })?;
            let key_authorization = challenge.key_authorization();
            let guard = match kind {
                ChallengeType::Http01 => {
                    self.challenges
                        .publish_http01_everywhere(
                            &challenge.token,
                            key_authorization.as_str().to_string(),
                        )
                        .await
                }
                ChallengeType::TlsAlpn01 => {
                    let bundle = tls_alpn01_bundle(name, key_authorization.digest().as_ref())?;
                    self.challenges
                        .publish_tls_alpn01_everywhere(name, &bundle)
                        .await
                        .map_err(|e| IssueError::Sign(e.to_string()))?
                }
            };
            guards.push(guard);
            challenge.set_ready().await.map_err(|e| classify(dir, e))?;
        }

        let patience = RetryPolicy::new()
            .initial_delay(Duration::from_millis(5))
            .backoff(1.5)
            .timeout(self.config.order_timeout);
        let status = order
            .poll_ready(&patience)
            .await
            .map_err(|e| classify(dir, e))?;
        if status != OrderStatus::Ready {
            // Say what the CA answered: the challenge errors of the failed authorizations.
            let mut problems = Vec::new();
            let mut authorizations = order.authorizations();
            while let Some(Ok(authz)) = authorizations.next().await {
                problems.extend(
                    authz
                        .challenges
                        .iter()
                        .filter_map(|c| c.error.as_ref().map(|p| p.to_string())),
                );
            }
            let detail = if problems.is_empty() {
                format!("order is {status:?}")
            } else {
                problems.join("; ")
            };
            return Err(IssueError::Refused(format!(
                "{} validation failed: {detail}",
                challenge_label(used)
            )));
        }
        drop(guards);

        let (key, csr) = key_and_csr(name, self.key_type)?;
        order
            .finalize_csr(&csr)
            .await
            .map_err(|e| classify(dir, e))?;
        let chain = order
            .poll_certificate(&patience)
            .await
            .map_err(|e| classify(dir, e))?;
        let mut bundle = key.serialize_pem();
        bundle.push_str(&chain);
        Ok((
            Issued {
                bundle: bundle.into_bytes(),
            },
            used,
        ))
    }
}

/// The HTTPS client for the CA. instant-acme's default client leaves Nagle's algorithm on, and
/// each JWS POST goes out as two writes (headers, then body): the body then waits for the
/// server's delayed ACK, about 40 ms per request and 7 requests per order. With `TCP_NODELAY` a
/// Pebble order takes ~20 ms instead of ~330 ms (measured with scripts/bench-issuance.sh).
fn http_client(
    trusted_root: Option<&Path>,
) -> Result<Box<dyn instant_acme::HttpClient>, IssueError> {
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use rustls_pki_types::pem::PemObject;

    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match trusted_root {
        Some(root) => {
            let fail = |e: String| {
                IssueError::Unreachable(format!("issuer.acme.trusted_root {}: {e}", root.display()))
            };
            let der = CertificateDer::from_pem_file(root).map_err(|e| fail(e.to_string()))?;
            let mut roots = rustls::RootCertStore::empty();
            roots.add(der).map_err(|e| fail(e.to_string()))?;
            builder.with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        }
        None => builder
            .try_with_platform_verifier()
            .map_err(|e| IssueError::Unreachable(format!("the system's root certificates: {e}")))?,
    };
    let https = builder
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let client: Client<_, instant_acme::BodyWrapper<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build(https);
    Ok(Box::new(client))
}

/// Turn an instant-acme error into "unreachable" (retry later) or "refused" (what the CA said).
fn classify(directory: &str, e: instant_acme::Error) -> IssueError {
    match e {
        instant_acme::Error::Api(problem) => IssueError::Refused(problem.to_string()),
        instant_acme::Error::Timeout(_) => {
            IssueError::Unreachable(format!("{directory}: the order did not complete in time"))
        }
        other => IssueError::Unreachable(format!("{directory}: {other}")),
    }
}

/// A fresh key of `key_type` and a CSR for exactly `name` (DER).
fn key_and_csr(name: &Domain, key_type: KeyType) -> Result<(KeyPair, Vec<u8>), IssueError> {
    let alg = match key_type {
        KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
    };
    let key = KeyPair::generate_for(alg).map_err(|e| IssueError::Key(e.to_string()))?;
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

#[async_trait]
impl Issuer for AcmeIssuer {
    fn kind(&self) -> &'static str {
        "acme"
    }

    async fn issue(&self, name: &Domain) -> Result<Issued, IssueError> {
        self.issue_replacing(name, None).await
    }

    async fn renewal_window(&self, old: &CertifiedKey) -> Option<(i64, i64)> {
        let id = Self::ari_id(old)?;
        let account = self.account().await.ok()?;
        match account.renewal_info(&id).await {
            Ok((info, _retry_after)) => Some((
                info.suggested_window.start.unix_timestamp(),
                info.suggested_window.end.unix_timestamp(),
            )),
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(e) => {
                log::debug!("renewal information unavailable: {e}");
                None
            }
        }
    }

    async fn renew(&self, name: &Domain, old: &CertifiedKey) -> Result<Issued, IssueError> {
        // Name the replaced certificate only where the CA offers ARI: instant-acme refuses
        // `replaces` otherwise, and such renewals are exempt from Let's Encrypt's limits.
        let replaces = match self.renewal_window(old).await {
            Some(_) => Self::ari_id(old),
            None => None,
        };
        self.issue_replacing(name, replaces).await
    }
}

impl AcmeIssuer {
    async fn issue_replacing(
        &self,
        name: &Domain,
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<Issued, IssueError> {
        let started = Instant::now();
        // The whole order is bounded, not only its polling: one stuck request must not hold a
        // concurrency slot (and the name's fill task) forever.
        let result =
            match tokio::time::timeout(self.config.order_timeout, self.order(name, replaces)).await
            {
                Ok(result) => result,
                Err(_) => Err(IssueError::Unreachable(format!(
                    "{}: the order did not complete within issuer.acme.order_timeout ({:?})",
                    self.config.directory, self.config.order_timeout
                ))),
            };
        let (challenge, outcome) = match &result {
            Ok((_, used)) => (challenge_label(*used), "valid"),
            Err(IssueError::Refused(_)) => (challenge_label(self.config.challenges[0]), "invalid"),
            Err(_) => (challenge_label(self.config.challenges[0]), "error"),
        };
        self.metrics
            .acme_orders
            .with_label_values(&[challenge, outcome])
            .inc();
        self.metrics
            .acme_order_duration
            .with_label_values(&[challenge])
            .observe(started.elapsed().as_secs_f64());
        result.map(|(issued, _)| issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_dirs_are_per_directory_and_readable() {
        let a = account_dir(
            Path::new("/d"),
            "https://acme-v02.api.letsencrypt.org/directory",
        );
        let b = account_dir(
            Path::new("/d"),
            "https://acme-staging-v02.api.letsencrypt.org/directory",
        );
        let c = account_dir(Path::new("/d"), "https://127.0.0.1:14000/dir");
        assert!(
            a.to_string_lossy()
                .starts_with("/d/acme/acme-v02.api.letsencrypt.org-"),
            "{a:?}"
        );
        assert_ne!(a, b);
        assert!(
            c.to_string_lossy().starts_with("/d/acme/127.0.0.1_14000-"),
            "{c:?}"
        );
        assert_eq!(
            a,
            account_dir(
                Path::new("/d"),
                "https://acme-v02.api.letsencrypt.org/directory"
            )
        );
    }

    #[test]
    fn tls_alpn01_certificate_carries_the_digest_and_the_name() {
        let name = Domain::parse("shop.tenant.test").unwrap();
        let digest = [7u8; 32];
        let ck = tls_alpn01_certificate(&name, &digest).unwrap();
        assert_eq!(ck.names, vec!["shop.tenant.test"]);
        let der = ck.leaf().to_der().unwrap();
        // id-pe-acmeIdentifier 1.3.6.1.5.5.7.1.31, critical, OCTET STRING (32 bytes of 7).
        let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
        let at = der
            .windows(oid.len())
            .position(|w| w == oid)
            .expect("acmeIdentifier present");
        let rest = &der[at + oid.len()..];
        assert_eq!(&rest[..3], &[0x01, 0x01, 0xff], "critical");
        assert!(rest.windows(32).any(|w| w == digest), "digest present");
    }
}
