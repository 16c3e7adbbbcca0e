//! `certs import-caddy DIR`: import certificates and keys from a Caddy data directory
//! (`DIR/certificates/<issuer>/<name>/<name>.crt|.key`), so that moving from Caddy places no
//! new orders.

use std::path::Path;

use openssl::pkey::PKey;
use openssl::x509::X509;

use crate::certs::certificate::{BundleError, CertifiedKey};
use crate::certs::store::{CertMeta, Store, StoredCert};
use crate::cli::certs::ctx::{CertsError, Ctx, Outcome};
use crate::cli::certs::inspect::{date, datetime, inspect};
use crate::cli::certs::x509::sans;
use crate::domain::Domain;
use crate::util::time::unix_now;

/// The `issuer` written into `meta.json` for imported certificates.
pub const CADDY_IMPORT_ISSUER: &str = "caddy-import";

/// What happened to one Caddy entry.
pub enum Import {
    Imported {
        not_after: i64,
        /// What the import replaced, when something was stored before.
        replaced: Option<&'static str>,
    },
    Skipped(String),
}

pub async fn import_caddy(ctx: &Ctx, dir: &Path) -> Result<Outcome, CertsError> {
    let root = dir.join("certificates");
    let issuers = sorted_dirs(&root).map_err(|source| CertsError::Io {
        op: "read the Caddy certificates directory",
        path: root.clone(),
        source,
    })?;
    let (mut imported, mut skipped, mut io_errors) = (0usize, 0usize, 0usize);
    for issuer in issuers {
        let issuer_dir = root.join(&issuer);
        let entries = match sorted_dirs(&issuer_dir) {
            Ok(entries) => entries,
            Err(e) => {
                println!("error    {}: {e}", issuer_dir.display());
                io_errors += 1;
                continue;
            }
        };
        for entry in entries {
            match import_one(ctx, &root, &issuer, &entry).await {
                Ok(Import::Imported {
                    not_after,
                    replaced,
                }) => {
                    imported += 1;
                    println!(
                        "imported {entry} (expires {}, from {issuer}{})",
                        date(not_after),
                        replaced.unwrap_or_default()
                    );
                }
                Ok(Import::Skipped(why)) => {
                    skipped += 1;
                    println!("skipped  {entry}: {why}");
                }
                Err(e) => {
                    io_errors += 1;
                    println!("error    {entry}: {e}");
                }
            }
        }
    }
    println!(
        "import-caddy: {imported} imported, {skipped} skipped, {io_errors} error(s) (from {})",
        root.display()
    );
    if imported > 0 {
        println!("a running edge serves imported certificates for names it has not cached yet; restart it to replace certificates it already holds in memory");
    }
    Ok(if io_errors == 0 {
        Outcome::Done
    } else {
        Outcome::Refused
    })
}

/// Names of the subdirectories of `dir`, sorted (files are ignored).
pub fn sorted_dirs(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// Read a file; absent is `Ok(None)`, other I/O errors are errors naming the file.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, CertsError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CertsError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub async fn import_one(
    ctx: &Ctx,
    root: &Path,
    issuer: &str,
    entry: &str,
) -> Result<Import, CertsError> {
    let skip = |why: String| Ok(Import::Skipped(why));
    if let Some(base) = entry.strip_prefix("wildcard_.") {
        return skip(format!(
            "wildcard certificate (*.{base}): the edge holds one certificate per name and issues each name on demand"
        ));
    }
    let name = match Domain::parse(entry) {
        Ok(name) => name,
        Err(e) => return skip(format!("{entry:?} is not a name the edge can serve: {e}")),
    };
    let relative = |file: &str| format!("{issuer}/{entry}/{file}");
    let (crt_file, key_file) = (format!("{entry}.crt"), format!("{entry}.key"));
    let dir = root.join(issuer).join(entry);
    let Some(crt) = read_optional(&dir.join(&crt_file))? else {
        return skip(format!("unparsable: {} is missing", relative(&crt_file)));
    };
    let Some(key) = read_optional(&dir.join(&key_file))? else {
        return skip(format!("unparsable: {} is missing", relative(&key_file)));
    };
    let chain = match X509::stack_from_pem(&crt) {
        Ok(chain) if !chain.is_empty() => chain,
        Ok(_) => {
            return skip(format!(
                "unparsable: {} holds no PEM certificate",
                relative(&crt_file)
            ))
        }
        Err(e) => return skip(format!("unparsable: {}: {e}", relative(&crt_file))),
    };
    let key = match PKey::private_key_from_pem(&key) {
        Ok(key) => key,
        Err(e) => return skip(format!("unparsable: {}: {e}", relative(&key_file))),
    };
    // The stored form: the key (PKCS#8), then the chain as Caddy ordered it (leaf first).
    let mut bundle = match key.private_key_to_pem_pkcs8() {
        Ok(pem) => pem,
        Err(e) => return skip(format!("unparsable: {}: {e}", relative(&key_file))),
    };
    for cert in &chain {
        match cert.to_pem() {
            Ok(pem) => bundle.extend_from_slice(&pem),
            Err(e) => return skip(format!("unparsable: {}: {e}", relative(&crt_file))),
        }
    }
    let ck = match CertifiedKey::from_bundle(&bundle, Some(&name)) {
        Ok(ck) => ck,
        Err(BundleError::KeyMismatch) => {
            return skip(format!(
                "key does not match the certificate ({} does not belong to {})",
                relative(&key_file),
                relative(&crt_file)
            ))
        }
        Err(BundleError::NameMismatch(_)) => {
            let names = chain.first().map(|leaf| sans(leaf)).unwrap_or_default();
            return skip(format!(
                "name mismatch: {} names {}, not {name}",
                relative(&crt_file),
                if names.is_empty() {
                    "no DNS name".to_string()
                } else {
                    names.join(", ")
                }
            ));
        }
        Err(e) => return skip(format!("unparsable: {}: {e}", relative(&crt_file))),
    };
    let now = unix_now();
    if ck.not_after <= now {
        return skip(format!("expired on {}", date(ck.not_after)));
    }
    if ck.not_before > now {
        return skip(format!("not valid before {}", datetime(ck.not_before)));
    }
    let mut replaced = None;
    if let Some(existing) = inspect(&ctx.store, &name).await? {
        if let Ok(current) = &existing.cert {
            if current.leaf().to_der().ok() == ck.leaf().to_der().ok() {
                return skip("already imported (the stored certificate is this one)".into());
            }
            if current.not_after >= ck.not_after {
                return skip(format!(
                    "already have a newer certificate (expires {}, this one {})",
                    date(current.not_after),
                    date(ck.not_after)
                ));
            }
            replaced = Some(", replaces a stored certificate that expires sooner");
        } else {
            // Unusable as stored: the edge would ignore it and order a new one.
            replaced = Some(", replaces an unreadable stored bundle");
        }
    }
    let stored = StoredCert {
        bundle,
        meta: Some(CertMeta {
            issuer: CADDY_IMPORT_ISSUER.to_string(),
            issued_at: now,
            not_before: ck.not_before,
            not_after: ck.not_after,
        }),
    };
    ctx.store.save(&name, &stored).await?;
    Ok(Import::Imported {
        not_after: ck.not_after,
        replaced,
    })
}
