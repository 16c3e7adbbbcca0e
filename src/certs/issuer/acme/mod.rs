//! The ACME issuer (RFC 8555) on instant-acme: Let's Encrypt by default, any ACME CA by URL.
//!
//! One account per directory URL (`account`). An order answers HTTP-01 (port 80) or TLS-ALPN-01 (the TLS listener, ALPN `acme-tls/1`) in the
//! configured order of preference, by publishing the response in `Challenges` for exactly as
//! long as the order is open. The certificate is served with the full chain the CA returned.
//!
//! This module only talks to the CA. Whether to order, how often and for which names is the
//! manager's and the limits' business; the issuer never retries on its own.

pub mod account;
pub mod client;
pub mod keys;
pub mod settings;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use instant_acme::{
    AuthorizationStatus, CertificateIdentifier, ChallengeType as AcmeChallenge, Identifier,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls_pki_types::CertificateDer;

use crate::certs::certificate::CertifiedKey;
use crate::certs::challenge::{ChallengeGuard, Challenges};
use crate::certs::issuer::acme::account::{is_dead_account, AccountStore, Accounts};
use crate::certs::issuer::acme::client::classify;
use crate::certs::issuer::acme::keys::{key_and_csr, tls_alpn01_bundle};
use crate::certs::issuer::acme::settings::{AcmeSettings, ChallengeType, OrderOutcome};
use crate::certs::issuer::{IssueError, Issued, Issuer, IssuerKind, KeyType};
use crate::domain::Domain;
use crate::metrics::Metrics;

pub struct AcmeIssuer {
    config: AcmeSettings,
    key_type: KeyType,
    accounts: Accounts,
    challenges: Arc<Challenges>,
    metrics: Arc<Metrics>,
}

fn acme_type(c: ChallengeType) -> AcmeChallenge {
    match c {
        ChallengeType::Http01 => AcmeChallenge::Http01,
        ChallengeType::TlsAlpn01 => AcmeChallenge::TlsAlpn01,
    }
}

impl AcmeIssuer {
    pub fn new(
        config: AcmeSettings,
        key_type: KeyType,
        data_dir: &Path,
        challenges: Arc<Challenges>,
        shared: Option<Arc<dyn AccountStore>>,
        metrics: Arc<Metrics>,
    ) -> AcmeIssuer {
        AcmeIssuer {
            accounts: Accounts::new(&config, data_dir, shared),
            config,
            key_type,
            challenges,
            metrics,
        }
    }

    /// Fetch the directory (and load or create the account).
    pub async fn probe(&self) -> Result<String, IssueError> {
        let account = self.accounts.account().await?;
        Ok(account.id().to_string())
    }

    /// Whether the stored account still exists at the CA, creating nothing (what
    /// `tenant-edge check` asks): `Ok(None)` when there is no account yet.
    pub async fn verify_account(&self) -> Result<Option<String>, IssueError> {
        self.accounts.verify_existing().await
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
        let account = self.accounts.account().await?;
        let ids = [Identifier::Dns(name.to_string())];
        let mut new_order = NewOrder::new(&ids);
        if let Some(profile) = &self.config.profile {
            new_order = new_order.profile(profile);
        }
        if let Some(id) = replaces {
            new_order = new_order.replaces(id);
        }
        let dir = &self.config.directory;
        let mut order = match account.new_order(&new_order).await {
            Ok(order) => order,
            // The CA forgot the account: register a new one (once) and order again.
            Err(e) if is_dead_account(&e) => {
                self.metrics.acme_accounts_replaced.inc();
                let account = self.accounts.replace_dead(&account).await?;
                account
                    .new_order(&new_order)
                    .await
                    .map_err(|e| classify(dir, e))?
            }
            Err(e) => return Err(classify(dir, e)),
        };

        // Publish a response for every pending authorization; the guards unpublish them when
        // this function returns, whatever the outcome.
        let mut guards: Vec<ChallengeGuard> = Vec::new();
        let mut used = self.config.preferred_challenge();
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
                IssueError::Refused(format!("{} challenge vanished", kind.label()))
            })?;
            guards.push(self.publish(name, kind, &challenge).await?);
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
            return Err(validation_failure(&mut order, status, used).await);
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

    /// Publish the response to `challenge` (of type `kind`) until the guard is dropped.
    async fn publish(
        &self,
        name: &Domain,
        kind: ChallengeType,
        challenge: &instant_acme::ChallengeHandle<'_>,
    ) -> Result<ChallengeGuard, IssueError> {
        let key_authorization = challenge.key_authorization();
        Ok(match kind {
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
        })
    }
}

/// What the CA answered for an order that did not become ready: the challenge errors of its
/// failed authorizations.
async fn validation_failure(
    order: &mut instant_acme::Order,
    status: OrderStatus,
    used: ChallengeType,
) -> IssueError {
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
    IssueError::Refused(format!("{} validation failed: {detail}", used.label()))
}

#[async_trait]
impl Issuer for AcmeIssuer {
    fn kind(&self) -> IssuerKind {
        IssuerKind::Acme
    }

    async fn issue(&self, name: &Domain) -> Result<Issued, IssueError> {
        self.issue_replacing(name, None).await
    }

    async fn renewal_window(&self, old: &CertifiedKey) -> Option<(i64, i64)> {
        let id = Self::ari_id(old)?;
        let account = self.accounts.account().await.ok()?;
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
            Ok((_, used)) => (*used, OrderOutcome::Valid),
            Err(IssueError::Refused(_)) => {
                (self.config.preferred_challenge(), OrderOutcome::Invalid)
            }
            Err(_) => (self.config.preferred_challenge(), OrderOutcome::Error),
        };
        self.metrics
            .acme_orders
            .with_label_values(&[challenge.label(), outcome.label()])
            .inc();
        self.metrics
            .acme_order_duration
            .with_label_values(&[challenge.label()])
            .observe(started.elapsed().as_secs_f64());
        result.map(|(issued, _)| issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::issuer::acme::account::account_dir;
    use crate::certs::issuer::acme::keys::tls_alpn01_certificate;

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
