//! `issuer:`: the internal CA or an ACME CA.

use crate::certs::issuer::acme::settings::{
    AcmeSettings, ChallengeType, EabSettings, LETS_ENCRYPT_DIRECTORY,
};
use crate::certs::issuer::internal::InternalSettings;
use crate::config::raw;
use crate::config::values::{base64url_decode, opt_duration, secs, Errors};
use crate::domain::Domain;

/// Where new certificates come from: exactly one issuer.
#[derive(Debug, Clone)]
pub enum IssuerConfig {
    Internal(InternalSettings),
    Acme(AcmeSettings),
}

pub fn build(raw: &raw::Issuer, errs: &mut Errors<'_>) -> Option<IssuerConfig> {
    match (&raw.internal, &raw.acme) {
        (Some(_), Some(_)) => {
            errs.push(
                "issuer",
                None,
                "set exactly one of issuer.internal and issuer.acme",
            );
            None
        }
        (None, Some(acme)) => build_acme(acme, errs).map(IssuerConfig::Acme),
        (None, None) => {
            // Never a silent default: the internal CA in production means browsers refuse
            // every certificate.
            errs.push(
                "issuer",
                None,
                "is required: `issuer: {acme: {directory: ..., contact: [...]}}` for a public CA such as Let's Encrypt, or `issuer: {internal: {}}` for a local CA (development, private networks)",
            );
            None
        }
        (internal, None) => {
            let lifetime = internal
                .as_ref()
                .and_then(|i| i.lifetime.as_ref())
                .map_or(Some(secs(30 * 86400)), |v| {
                    errs.duration("issuer.internal.lifetime", v)
                });
            if let Some(l) = lifetime {
                if l < secs(120) {
                    errs.push(
                        "issuer.internal.lifetime",
                        None,
                        format!(
                            "must be at least 2m (got {})",
                            humantime::format_duration(l)
                        ),
                    );
                }
            }
            lifetime.map(|lifetime| IssuerConfig::Internal(InternalSettings { lifetime }))
        }
    }
}

fn build_acme(acme: &raw::Acme, errs: &mut Errors<'_>) -> Option<AcmeSettings> {
    let directory = acme
        .directory
        .as_ref()
        .map_or(Some(LETS_ENCRYPT_DIRECTORY.into()), |v| {
            errs.url("issuer.acme.directory", v, &["https", "http"])
        });
    let contact: Vec<String> = acme
        .contact
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, v)| {
            let path = format!("issuer.acme.contact[{i}]");
            let s = errs.string(&path, v)?;
            let addr = s.strip_prefix("mailto:").unwrap_or(&s);
            let valid = addr
                .split_once('@')
                .is_some_and(|(user, host)| !user.is_empty() && Domain::parse(host).is_ok());
            if !valid {
                errs.push(&path, Some(v), "expected an e-mail address");
                return None;
            }
            Some(format!("mailto:{addr}"))
        })
        .collect();
    let trusted_root = acme
        .trusted_root
        .as_ref()
        .and_then(|v| errs.path("issuer.acme.trusted_root", v));
    let challenges: Vec<ChallengeType> = match &acme.challenges {
        None => vec![ChallengeType::TlsAlpn01, ChallengeType::Http01],
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                errs.choice(
                    &format!("issuer.acme.challenges[{i}]"),
                    v,
                    &[
                        ("http-01", ChallengeType::Http01),
                        ("tls-alpn-01", ChallengeType::TlsAlpn01),
                    ],
                )
            })
            .collect(),
    };
    if challenges.is_empty() {
        errs.push(
            "issuer.acme.challenges",
            None,
            "must list at least one of http-01, tls-alpn-01",
        );
    }
    let profile = acme
        .profile
        .as_ref()
        .and_then(|v| errs.string("issuer.acme.profile", v));
    let eab = acme.eab.as_ref().and_then(|e| {
        let key_id = match &e.key_id {
            Some(v) => errs.string("issuer.acme.eab.key_id", v),
            None => {
                errs.push(
                    "issuer.acme.eab.key_id",
                    None,
                    "is required (the CA's key identifier)",
                );
                None
            }
        };
        let hmac_key = match &e.hmac_key {
            Some(v) => errs.string("issuer.acme.eab.hmac_key", v).and_then(|k| {
                match base64url_decode(&k) {
                    Some(bytes) if !bytes.is_empty() => Some(bytes),
                    _ => {
                        // Never echo a secret.
                        errs.push(
                            "issuer.acme.eab.hmac_key",
                            None,
                            "expected the base64url MAC key the CA gave you",
                        );
                        None
                    }
                }
            }),
            None => {
                errs.push(
                    "issuer.acme.eab.hmac_key",
                    None,
                    "is required, for example ${ACME_EAB_HMAC_KEY}",
                );
                None
            }
        };
        Some(EabSettings {
            key_id: key_id?,
            hmac_key: hmac_key?,
        })
    });
    let order_timeout = opt_duration(
        errs,
        "issuer.acme.order_timeout",
        &acme.order_timeout,
        secs(90),
    );
    Some(AcmeSettings {
        directory: directory?,
        contact,
        trusted_root,
        challenges,
        profile,
        eab,
        order_timeout: order_timeout?,
    })
}
