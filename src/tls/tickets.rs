//! Session-ticket keys: ours instead of OpenSSL's (one random key per listener, never rotated),
//! rotated every `tls.ticket_key_rotation`, shared by every listener of the process and, with
//! `store.shared`, by every host, so a client resumes its session on any host.
//!
//! Time is cut into periods of `rotation`; the key of period `p` encrypts new tickets during
//! `p`, and the keys of `p - 1` and `p + 1` still decrypt (a ticket from the previous period,
//! a host whose clock is a little ahead). A ticket lives at most one period
//! (`SSL_CTX_set_timeout`), so a key is forgotten one period after it stopped encrypting:
//! that is the forward secrecy of resumed sessions (for the keys in memory; with the shared
//! store, a key is also in PostgreSQL — encrypted with `store.shared.encryption_key_env` when
//! set — and in its backups until they expire). Keys come from a [`TicketKeyStore`]: this
//! process's memory, or the shared store.
//!
//! The only unsafe code is the OpenSSL callback: the openssl crate exposes no ticket-key API.

use std::ffi::{c_char, c_int, c_long, c_uchar, c_void};
use std::ptr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use foreign_types::ForeignTypeRef;
use openssl::ex_data::Index;
use pingora::listeners::tls::TlsSettings;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::tls::ssl::{SslContext, SslRef};
use pingora::tls::ssl_sys as ffi;

use crate::util::error::RemoteError;
use crate::util::time::unix_now;

/// Key material of one period: name (16 bytes), HMAC key (32), AES key (32).
pub const KEY_LEN: usize = 80;

/// One ticket key.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketKey {
    name: [u8; 16],
    hmac: [u8; 32],
    aes: [u8; 32],
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKey").finish_non_exhaustive()
    }
}

impl TicketKey {
    /// From 80 bytes of material (name | HMAC key | AES key); `None` for any other length.
    pub fn from_material(m: &[u8]) -> Option<TicketKey> {
        let (name, rest) = m.split_first_chunk::<16>()?;
        let (hmac, rest) = rest.split_first_chunk::<32>()?;
        let aes: [u8; 32] = rest.try_into().ok()?;
        Some(TicketKey {
            name: *name,
            hmac: *hmac,
            aes,
        })
    }

    /// Fresh random material for a new key.
    pub fn random_material() -> Result<Vec<u8>, openssl::error::ErrorStack> {
        let mut m = vec![0u8; KEY_LEN];
        openssl::rand::rand_bytes(&mut m)?;
        Ok(m)
    }
}

/// The keys in use: one encrypts, the others only decrypt.
struct KeySet {
    encrypt: TicketKey,
    decrypt: Vec<TicketKey>,
}

/// Where the keys of each period come from.
#[async_trait]
pub trait TicketKeyStore: Send + Sync {
    /// The material of each period in `periods` that exists, creating those in `create` first
    /// when they are missing (the first host to ask creates a period's key; everyone gets that
    /// one). Periods before the first of `periods` may be forgotten.
    async fn period_keys(
        &self,
        periods: &[i64],
        create: &[i64],
    ) -> Result<Vec<(i64, Vec<u8>)>, RemoteError>;
}

/// Keys kept in this process only (one host): random per period, forgotten with the process.
#[derive(Default)]
pub struct LocalKeys {
    keys: Mutex<Vec<(i64, Vec<u8>)>>,
}

#[async_trait]
impl TicketKeyStore for LocalKeys {
    async fn period_keys(
        &self,
        periods: &[i64],
        create: &[i64],
    ) -> Result<Vec<(i64, Vec<u8>)>, RemoteError> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = periods.iter().copied().min().unwrap_or(i64::MIN);
        keys.retain(|(p, _)| *p >= oldest);
        for p in create {
            if !keys.iter().any(|(q, _)| q == p) {
                keys.push((*p, TicketKey::random_material()?));
            }
        }
        Ok(keys
            .iter()
            .filter(|(p, _)| periods.contains(p))
            .cloned()
            .collect())
    }
}

/// The ticket keys of the process, shared by every listener's OpenSSL context.
pub struct TicketKeys {
    current: ArcSwap<KeySet>,
    rotation: Duration,
}

impl TicketKeys {
    /// Keys rotated every `rotation`, starting with a random one (tickets work from the first
    /// handshake; the rotation service installs the store's keys as soon as it runs).
    pub fn new(rotation: Duration) -> Result<Arc<TicketKeys>, openssl::error::ErrorStack> {
        let material = TicketKey::random_material()?;
        let encrypt =
            TicketKey::from_material(&material).ok_or_else(openssl::error::ErrorStack::get)?;
        Ok(Arc::new(TicketKeys {
            current: ArcSwap::from_pointee(KeySet {
                encrypt,
                decrypt: Vec::new(),
            }),
            rotation,
        }))
    }

    /// The period `unix` falls in.
    pub fn period_of(&self, unix: i64) -> i64 {
        unix.div_euclid(self.rotation.as_secs().max(1) as i64)
    }

    /// Use the key of `period` to encrypt and every other key of `keys` to decrypt. Returns
    /// `false` (and changes nothing) when `keys` has no key for `period`.
    pub fn install(&self, period: i64, keys: &[(i64, Vec<u8>)]) -> bool {
        let mut encrypt = None;
        let mut decrypt = Vec::new();
        for (p, material) in keys {
            let Some(key) = TicketKey::from_material(material) else {
                log::warn!(
                    "ignoring a session-ticket key of {} bytes (expected {KEY_LEN})",
                    material.len()
                );
                continue;
            };
            if *p == period {
                encrypt = Some(key);
            } else {
                decrypt.push(key);
            }
        }
        match encrypt {
            Some(encrypt) => {
                self.current.store(Arc::new(KeySet { encrypt, decrypt }));
                true
            }
            None => false,
        }
    }

    /// Ask `store` for the keys around now and install them; `Err` leaves the keys in use.
    pub async fn refresh(&self, store: &dyn TicketKeyStore) -> Result<(), RemoteError> {
        let p = self.period_of(unix_now());
        let keys = store.period_keys(&[p - 1, p, p + 1], &[p, p + 1]).await?;
        if self.install(p, &keys) {
            Ok(())
        } else {
            Err(format!("the key store returned no key for period {p}").into())
        }
    }

    /// Install the ticket-key callback and the session lifetime (one rotation period) on a
    /// listener's TLS settings.
    pub fn enable(
        self: &Arc<Self>,
        tls: &mut TlsSettings,
    ) -> Result<(), openssl::error::ErrorStack> {
        let index = keys_index()?;
        tls.set_ex_data(index, self.clone());
        let ctx = tls.as_ptr();
        let lifetime = self.rotation.as_secs().clamp(1, i32::MAX as u64) as c_long;
        // SAFETY: `ctx` is the live SSL_CTX of these settings; both calls only store values in
        // it. The callback reads the keys through the context's ex-data set just above.
        unsafe {
            SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, Some(ticket_key_cb));
            SSL_CTX_set_timeout(ctx, lifetime);
        }
        Ok(())
    }
}

/// A Pingora background service that rotates the keys on schedule.
pub struct TicketRotation {
    pub keys: Arc<TicketKeys>,
    pub store: Arc<dyn TicketKeyStore>,
}

#[async_trait]
impl BackgroundService for TicketRotation {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let period = self.keys.rotation.max(Duration::from_secs(1));
        // Look often enough to switch within a tenth of a period (at most every minute).
        let every = (period / 10).clamp(Duration::from_millis(200), Duration::from_secs(60));
        let mut failing = false;
        loop {
            match self.keys.refresh(self.store.as_ref()).await {
                Ok(()) if failing => {
                    log::info!("session-ticket keys are loaded again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) => {
                    if !failing {
                        log::warn!("cannot load session-ticket keys ({e}); the keys in use stay (resumption on other hosts may fail)");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

fn keys_index() -> Result<Index<SslContext, Arc<TicketKeys>>, openssl::error::ErrorStack> {
    static INDEX: OnceLock<Option<Index<SslContext, Arc<TicketKeys>>>> = OnceLock::new();
    INDEX
        .get_or_init(|| SslContext::new_ex_index::<Arc<TicketKeys>>().ok())
        .ok_or_else(openssl::error::ErrorStack::get)
}

extern "C" {
    fn SSL_CTX_set_tlsext_ticket_key_evp_cb(
        ctx: *mut ffi::SSL_CTX,
        cb: Option<
            unsafe extern "C" fn(
                *mut ffi::SSL,
                *mut c_uchar,
                *mut c_uchar,
                *mut ffi::EVP_CIPHER_CTX,
                *mut ffi::EVP_MAC_CTX,
                c_int,
            ) -> c_int,
        >,
    ) -> c_int;
    fn OSSL_PARAM_construct_utf8_string(
        key: *const c_char,
        buf: *mut c_char,
        bsize: usize,
    ) -> ffi::OSSL_PARAM;
    fn SSL_CTX_set_timeout(ctx: *mut ffi::SSL_CTX, t: c_long) -> c_long;
}

/// OpenSSL's ticket-key callback (`SSL_CTX_set_tlsext_ticket_key_evp_cb`). `enc == 1`: write
/// the key name and a random IV for a new ticket and set up its cipher and MAC; return 1, or
/// 0 for no ticket. `enc == 0`: find the key named by the ticket; return 0 for an unknown key
/// (a full handshake), 1 to accept, 2 to accept and issue a fresh ticket. Negative is fatal.
/// Must not panic or block: no allocation, no lock.
unsafe extern "C" fn ticket_key_cb(
    ssl: *mut ffi::SSL,
    name: *mut c_uchar,
    iv: *mut c_uchar,
    cipher: *mut ffi::EVP_CIPHER_CTX,
    mac: *mut ffi::EVP_MAC_CTX,
    enc: c_int,
) -> c_int {
    let Ok(index) = keys_index() else { return 0 };
    // SAFETY: OpenSSL passes the live SSL of the handshake in progress.
    let ssl_ref = unsafe { SslRef::from_ptr(ssl) };
    let Some(keys) = ssl_ref.ssl_context().ex_data(index) else {
        return 0;
    };
    let set = keys.current.load();
    let (key, result) = if enc == 1 {
        let key = &set.encrypt;
        // SAFETY: `name` has 16 writable bytes and `iv` 16 (EVP_MAX_IV_LENGTH is larger); the
        // cipher context is OpenSSL's, initialised here with a 32-byte key and 16-byte IV.
        unsafe {
            ptr::copy_nonoverlapping(key.name.as_ptr(), name, 16);
            if ffi::RAND_bytes(iv, 16) != 1
                || ffi::EVP_EncryptInit_ex(
                    cipher,
                    ffi::EVP_aes_256_cbc(),
                    ptr::null_mut(),
                    key.aes.as_ptr(),
                    iv,
                ) != 1
            {
                return -1;
            }
        }
        (key, 1)
    } else {
        // SAFETY: `name` points at the 16-byte key name of the client's ticket.
        let wanted = unsafe { std::slice::from_raw_parts(name, 16) };
        let (key, current) = if set.encrypt.name == wanted {
            (&set.encrypt, true)
        } else if let Some(key) = set.decrypt.iter().find(|k| k.name == wanted) {
            (key, false)
        } else {
            return 0;
        };
        // SAFETY: as above; `iv` holds the ticket's 16-byte IV.
        if unsafe {
            ffi::EVP_DecryptInit_ex(
                cipher,
                ffi::EVP_aes_256_cbc(),
                ptr::null_mut(),
                key.aes.as_ptr(),
                iv,
            )
        } != 1
        {
            return -1;
        }
        // TLS 1.3 sends a new ticket after a resumption only when asked (2); TLS 1.2 when the
        // key is no longer the current one.
        // SAFETY: plain getter on the live SSL.
        let tls13 = unsafe { ffi::SSL_version(ssl) } == ffi::TLS1_3_VERSION;
        (key, if current && !tls13 { 1 } else { 2 })
    };
    let mut digest = *b"SHA256\0";
    // SAFETY: the parameters point at `key.hmac` (32 bytes, alive for the call) and a
    // NUL-terminated digest name; OpenSSL copies what it needs in EVP_MAC_CTX_set_params.
    let params = unsafe {
        [
            ffi::OSSL_PARAM_construct_octet_string(
                c"key".as_ptr(),
                key.hmac.as_ptr() as *mut c_void,
                32,
            ),
            OSSL_PARAM_construct_utf8_string(c"digest".as_ptr(), digest.as_mut_ptr().cast(), 0),
            ffi::OSSL_PARAM_construct_end(),
        ]
    };
    // SAFETY: `mac` is OpenSSL's MAC context for this ticket; `params` is END-terminated.
    if unsafe { ffi::EVP_MAC_CTX_set_params(mac, params.as_ptr()) } != 1 {
        return -1;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn material_has_one_layout() {
        let m = TicketKey::random_material().unwrap();
        let k = TicketKey::from_material(&m).unwrap();
        assert_eq!(&k.name[..], &m[..16]);
        assert_eq!(&k.aes[..], &m[48..]);
        assert!(TicketKey::from_material(&m[..79]).is_none());
        assert!(!format!("{k:?}").contains(&format!("{:?}", &m[..4])));
    }

    #[tokio::test]
    async fn local_keys_rotate_by_period_and_forget_old_ones() {
        let store = LocalKeys::default();
        let keys = TicketKeys::new(Duration::from_secs(10)).unwrap();
        let first = store.period_keys(&[9, 10, 11], &[10, 11]).await.unwrap();
        assert_eq!(first.len(), 2, "period 9 is never created");
        assert!(keys.install(10, &first));
        let again = store.period_keys(&[10, 11, 12], &[11, 12]).await.unwrap();
        assert_eq!(again.len(), 3);
        assert_eq!(
            again.iter().find(|(p, _)| *p == 11),
            first.iter().find(|(p, _)| *p == 11),
            "a period keeps its key"
        );
        let later = store.period_keys(&[12, 13, 14], &[13, 14]).await.unwrap();
        assert!(
            later.iter().all(|(p, _)| *p >= 12),
            "old periods are forgotten"
        );
        assert!(
            !keys.install(20, &later),
            "no key for the period: nothing changes"
        );
        assert_eq!(keys.period_of(105), 10);
    }
}
