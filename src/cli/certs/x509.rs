//! Printing certificates: chain, names, key types, files.

use std::net::IpAddr;

use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{HasPublic, Id, PKeyRef};
use openssl::x509::{X509NameRef, X509Ref, X509};

use crate::certs::disk::DiskStore;
use crate::cli::certs::inspect::{datetime, Inspected};
use crate::domain::Domain;
use crate::util::time::unix_now;

pub fn print_details(store: &DiskStore, name: &Domain, entry: &Inspected) {
    let now = unix_now();
    println!("name:      {name}");
    match &entry.cert {
        Ok(ck) => println!(
            "status:    {} ({} days left, until {} UTC)",
            entry.status,
            (ck.not_after - now).div_euclid(86_400),
            datetime(ck.not_after)
        ),
        Err(_) => println!("status:    {}", entry.status),
    }
    // Parse the chain on its own: a bundle with a bad key still has a chain worth showing.
    let chain = X509::stack_from_pem(&entry.stored.bundle).unwrap_or_default();
    match chain.first() {
        Some(leaf) => {
            println!("SANs:      {}", sans(leaf).join(", "));
            let key = leaf
                .public_key()
                .map_or_else(|e| format!("unreadable ({e})"), |k| key_type(&k));
            println!("key:       {key}");
        }
        None => println!("SANs:      (no certificate in the bundle)"),
    }
    println!("chain:");
    for (i, cert) in chain.iter().enumerate() {
        print_cert(i, cert);
    }
    println!("files:");
    let dir = store.dir_for(name);
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            let mut files: Vec<(String, String)> = entries
                .filter_map(|e| e.ok())
                .map(|e| {
                    let path = e.path();
                    let detail = match e.metadata() {
                        Ok(m) => {
                            use std::os::unix::fs::PermissionsExt;
                            format!("{:04o}  {} bytes", m.permissions().mode() & 0o7777, m.len())
                        }
                        Err(err) => format!("unreadable: {err}"),
                    };
                    (path.display().to_string(), detail)
                })
                .collect();
            files.sort();
            for (path, detail) in files {
                println!("  {path}  {detail}");
            }
        }
        Err(e) => println!("  {}: {e}", dir.display()),
    }
    match std::fs::read_to_string(dir.join("meta.json")) {
        Ok(text) => {
            println!("meta.json:");
            for line in text.lines() {
                println!("  {line}");
            }
        }
        Err(e) => println!("meta.json: {e}"),
    }
}

pub fn print_cert(index: usize, cert: &X509Ref) {
    let serial = cert
        .serial_number()
        .to_bn()
        .and_then(|bn| bn.to_hex_str().map(|s| s.to_string()))
        .unwrap_or_else(|e| format!("unreadable ({e})"));
    let fingerprint = cert
        .digest(MessageDigest::sha256())
        .map(|d| {
            d.iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":")
        })
        .unwrap_or_else(|e| format!("unreadable ({e})"));
    println!("  [{index}] subject:     {}", dn(cert.subject_name()));
    println!("      issuer:      {}", dn(cert.issuer_name()));
    println!("      serial:      {serial}");
    println!("      not before:  {}", cert.not_before());
    println!("      not after:   {}", cert.not_after());
    println!("      sha256:      {fingerprint}");
}

/// `CN=example.com, O=Org`.
pub fn dn(name: &X509NameRef) -> String {
    let parts: Vec<String> = name
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_else(|_| "?".into());
            format!("{key}={value}")
        })
        .collect();
    if parts.is_empty() {
        "(empty)".into()
    } else {
        parts.join(", ")
    }
}

/// DNS names and IP addresses in the subjectAltName.
pub fn sans(cert: &X509Ref) -> Vec<String> {
    cert.subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|g| {
                    g.dnsname().map(str::to_string).or_else(|| {
                        g.ipaddress().and_then(|b| match b.len() {
                            4 => <[u8; 4]>::try_from(b)
                                .ok()
                                .map(|a| IpAddr::from(a).to_string()),
                            16 => <[u8; 16]>::try_from(b)
                                .ok()
                                .map(|a| IpAddr::from(a).to_string()),
                            _ => None,
                        })
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `ECDSA P-256`, `RSA-2048`, `Ed25519`.
pub fn key_type<T: HasPublic>(key: &PKeyRef<T>) -> String {
    match key.id() {
        Id::EC => {
            let curve = key.ec_key().ok().and_then(|ec| ec.group().curve_name());
            match curve {
                Some(Nid::X9_62_PRIME256V1) => "ECDSA P-256".into(),
                Some(Nid::SECP384R1) => "ECDSA P-384".into(),
                Some(Nid::SECP521R1) => "ECDSA P-521".into(),
                Some(other) => format!("ECDSA {}", other.short_name().unwrap_or("?")),
                None => "ECDSA (unknown curve)".into(),
            }
        }
        Id::RSA => format!("RSA-{}", key.bits()),
        Id::ED25519 => "Ed25519".into(),
        other => format!("{other:?} ({} bits)", key.bits()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::pkey::PKey;

    #[test]
    fn key_types_are_named() {
        let ec = openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap();
        assert_eq!(key_type(&PKey::from_ec_key(ec).unwrap()), "ECDSA P-256");
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        assert_eq!(key_type(&PKey::from_rsa(rsa).unwrap()), "RSA-2048");
    }
}
