//! `tenant_edge_certificates`: every host's certificates (key and chain in one row, replaced in
//! one statement so a reader sees old or new), the private key encrypted at rest with a key.

use async_trait::async_trait;

use crate::certs::store::{CertMeta, Store, StoreError, StoredCert};
use crate::domain::Domain;
use crate::shared::store::{store_error, SharedError, SharedStore};

impl SharedStore {
    async fn load_cert(&self, name: &Domain) -> Result<Option<StoredCert>, SharedError> {
        const OP: &str = "loading a certificate";
        self.bounded(OP, async {
            let Some(row) = self
                .query_opt(
                    OP,
                    "SELECT bundle, key_nonce, meta::text FROM tenant_edge_certificates WHERE name = $1",
                    &[&name.as_str()],
                )
                .await?
            else {
                return Ok(None);
            };
            let bundle: Vec<u8> = self.column(OP, &row, 0)?;
            let nonce: Option<Vec<u8>> = self.column(OP, &row, 1)?;
            let meta: Option<String> = self.column(OP, &row, 2)?;
            let bundle = self.decrypt("certificate", name.as_str(), bundle, nonce)?;
            // Informational: an unreadable meta never hides a certificate.
            let meta = meta.and_then(|m| match serde_json::from_str::<CertMeta>(&m) {
                Ok(meta) => Some(meta),
                Err(e) => {
                    log::warn!("the certificate metadata for {name} in PostgreSQL does not parse ({e}); ignored");
                    None
                }
            });
            Ok(Some(StoredCert { bundle, meta }))
        })
        .await
    }

    async fn save_cert(&self, name: &Domain, cert: &StoredCert) -> Result<(), SharedError> {
        const OP: &str = "saving a certificate";
        self.bounded(OP, async {
            let (bundle, nonce) = self.encrypt("certificate", name.as_str(), &cert.bundle)?;
            let meta = cert
                .meta
                .as_ref()
                .and_then(|m| serde_json::to_string(m).ok());
            // One statement replaces key, chain and meta together: a reader sees old or new.
            self.execute(
                OP,
                "INSERT INTO tenant_edge_certificates (name, bundle, key_nonce, meta, updated_at)
                 VALUES ($1, $2, $3, $4::text::jsonb, now())
                 ON CONFLICT (name) DO UPDATE
                     SET bundle = EXCLUDED.bundle, key_nonce = EXCLUDED.key_nonce,
                         meta = EXCLUDED.meta, updated_at = EXCLUDED.updated_at",
                &[&name.as_str(), &bundle, &nonce, &meta],
            )
            .await
            .map(drop)
        })
        .await
    }

    async fn remove_cert(&self, name: &Domain) -> Result<bool, SharedError> {
        const OP: &str = "removing a certificate";
        self.bounded(OP, async {
            let n = self
                .execute(
                    OP,
                    "DELETE FROM tenant_edge_certificates WHERE name = $1",
                    &[&name.as_str()],
                )
                .await?;
            Ok(n > 0)
        })
        .await
    }

    async fn list_certs(&self) -> Result<Vec<Domain>, SharedError> {
        const OP: &str = "listing certificates";
        self.bounded(OP, async {
            let rows = self
                .query(
                    OP,
                    "SELECT name FROM tenant_edge_certificates ORDER BY name",
                    &[],
                )
                .await?;
            let mut names = Vec::with_capacity(rows.len());
            for row in &rows {
                let raw: String = self.column(OP, row, 0)?;
                match Domain::parse(&raw) {
                    Ok(name) => names.push(name),
                    Err(e) => log::warn!(
                        "tenant_edge_certificates has a row for {raw:?}, which is not a usable name ({e}); skipped"
                    ),
                }
            }
            names.sort();
            names.dedup();
            Ok(names)
        })
        .await
    }
}

/// Certificates in `tenant_edge_certificates`. Errors are `StoreError::Io` whose source is the
/// `SharedError` (see [`SharedError::in_store_error`]).
#[async_trait]
impl Store for SharedStore {
    async fn load(&self, name: &Domain) -> Result<Option<StoredCert>, StoreError> {
        self.load_cert(name)
            .await
            .map_err(|e| store_error("load", Some(name), e))
    }

    async fn save(&self, name: &Domain, cert: &StoredCert) -> Result<(), StoreError> {
        self.save_cert(name, cert)
            .await
            .map_err(|e| store_error("save", Some(name), e))
    }

    async fn remove(&self, name: &Domain) -> Result<bool, StoreError> {
        self.remove_cert(name)
            .await
            .map_err(|e| store_error("remove", Some(name), e))
    }

    async fn list(&self) -> Result<Vec<Domain>, StoreError> {
        self.list_certs()
            .await
            .map_err(|e| store_error("list", None, e))
    }
}
