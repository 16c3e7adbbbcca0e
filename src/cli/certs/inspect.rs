//! A stored entry, read as the edge would read it, and dates as operators read them.

use crate::certs::certificate::{BundleError, CertifiedKey};
use crate::certs::disk::DiskStore;
use crate::certs::store::{Store, StoreError, StoredCert};
use crate::domain::Domain;
use crate::util::time::unix_now;

/// The state of a stored certificate at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertStatus {
    Valid,
    /// Less than a third of the lifetime left: the edge renews it.
    Expiring,
    Expired,
    NotYetValid,
    Unreadable(String),
}

impl CertStatus {
    pub fn of(ck: &CertifiedKey, now: i64) -> CertStatus {
        if now < ck.not_before {
            CertStatus::NotYetValid
        } else if now >= ck.not_after {
            CertStatus::Expired
        } else if (ck.not_after - now) * 3 < ck.not_after - ck.not_before {
            CertStatus::Expiring
        } else {
            CertStatus::Valid
        }
    }

    /// The edge serves it as it is.
    pub fn is_usable(&self) -> bool {
        matches!(self, CertStatus::Valid | CertStatus::Expiring)
    }
}

impl std::fmt::Display for CertStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertStatus::Valid => f.write_str("valid"),
            CertStatus::Expiring => f.write_str("expiring"),
            CertStatus::Expired => f.write_str("expired"),
            CertStatus::NotYetValid => f.write_str("not yet valid"),
            CertStatus::Unreadable(why) => write!(f, "unreadable: {why}"),
        }
    }
}

/// A stored entry, parsed as the edge would parse it.
pub struct Inspected {
    pub stored: StoredCert,
    pub cert: Result<CertifiedKey, BundleError>,
    pub status: CertStatus,
}

pub async fn inspect(store: &DiskStore, name: &Domain) -> Result<Option<Inspected>, StoreError> {
    let Some(stored) = store.load(name).await? else {
        return Ok(None);
    };
    let cert = CertifiedKey::from_bundle(&stored.bundle, Some(name));
    let status = match &cert {
        Ok(ck) => CertStatus::of(ck, unix_now()),
        Err(e) => CertStatus::Unreadable(e.to_string()),
    };
    Ok(Some(Inspected {
        stored,
        cert,
        status,
    }))
}

/// The stored certificate of `name` when the edge would serve it now (store errors count as
/// "none": the caller then asks the edge, which reports the store problem itself).
pub async fn usable(store: &DiskStore, name: &Domain) -> Option<CertifiedKey> {
    match inspect(store, name).await {
        Ok(Some(Inspected {
            cert: Ok(ck),
            status,
            ..
        })) if status.is_usable() => Some(ck),
        _ => None,
    }
}

/// `2025-01-31 12:00` (UTC).
pub fn datetime(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => format!("@{unix}"),
    }
}

/// `2025-01-31` (UTC).
pub fn date(unix: i64) -> String {
    let full = datetime(unix);
    full.split_once(' ')
        .map_or(full.clone(), |(d, _)| d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ck(not_before: i64, not_after: i64) -> CertifiedKey {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut bundle = key.serialize_pem().into_bytes();
        bundle.extend_from_slice(cert.pem().as_bytes());
        let mut ck = CertifiedKey::from_bundle(&bundle, None).unwrap();
        ck.not_before = not_before;
        ck.not_after = not_after;
        ck
    }

    #[test]
    fn status_follows_the_lifetime() {
        let c = ck(0, 90);
        assert_eq!(CertStatus::of(&c, -1), CertStatus::NotYetValid);
        assert_eq!(CertStatus::of(&c, 0), CertStatus::Valid);
        assert_eq!(CertStatus::of(&c, 60), CertStatus::Valid);
        assert_eq!(CertStatus::of(&c, 61), CertStatus::Expiring);
        assert_eq!(CertStatus::of(&c, 90), CertStatus::Expired);
        assert!(CertStatus::Expiring.is_usable());
        assert!(!CertStatus::Unreadable("x".into()).is_usable());
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(datetime(0), "1970-01-01 00:00");
        assert_eq!(date(1_735_689_600), "2025-01-01");
    }
}
