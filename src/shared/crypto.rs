//! Private keys at rest: AES-256-GCM with a key every host shares, and the one decoder for
//! that key (`store.shared.encryption_key_env`: 64 hex digits or base64 of 32 bytes).

use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};

use crate::shared::store::{SharedError, SharedStore};

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Parse an encryption key: 64 hex digits, or standard base64 of 32 bytes
/// (`openssl rand -hex 32` or `openssl rand -base64 32`).
pub fn parse_key(text: &str) -> Result<[u8; 32], SharedError> {
    let text = text.trim();
    let bad = || {
        SharedError::Misconfigured(
            "the shared store key must be 32 bytes as 64 hex digits or base64 (openssl rand -hex 32)"
                .into(),
        )
    };
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad()))
            .collect::<Result<Vec<u8>, _>>()?
    } else {
        openssl::base64::decode_block(text).map_err(|_| bad())?
    };
    bytes.try_into().map_err(|_| bad())
}

impl SharedStore {
    /// `(value, nonce)` to store: the ciphertext and tag with a fresh nonce when a key is set,
    /// else the plaintext and no nonce.
    pub(super) fn encrypt(
        &self,
        what: &'static str,
        id: &str,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), SharedError> {
        let Some(key) = &self.key else {
            return Ok((plaintext.to_vec(), None));
        };
        let failed = |e: openssl::error::ErrorStack| SharedError::Crypto {
            what,
            id: id.to_string(),
            message: e.to_string(),
        };
        let mut nonce = [0u8; NONCE_LEN];
        openssl::rand::rand_bytes(&mut nonce).map_err(failed)?;
        let mut tag = [0u8; TAG_LEN];
        let mut value = encrypt_aead(
            Cipher::aes_256_gcm(),
            key,
            Some(&nonce),
            id.as_bytes(),
            plaintext,
            &mut tag,
        )
        .map_err(failed)?;
        value.extend_from_slice(&tag);
        Ok((value, Some(nonce.to_vec())))
    }

    pub(super) fn decrypt(
        &self,
        what: &'static str,
        id: &str,
        value: Vec<u8>,
        nonce: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, SharedError> {
        let Some(nonce) = nonce else {
            // With a key, a plaintext row is refused: whoever can write the table could
            // otherwise plant a certificate and key (`migrate` encrypts the rows written
            // before the key was set).
            if self.key.is_some() {
                return Err(SharedError::Plaintext {
                    what,
                    id: id.to_string(),
                    key_env: self.key_env.clone(),
                });
            }
            return Ok(value);
        };
        let Some(key) = &self.key else {
            return Err(SharedError::KeyMissing {
                what,
                id: id.to_string(),
                key_env: self.key_env.clone(),
            });
        };
        if nonce.len() != NONCE_LEN || value.len() < TAG_LEN {
            return Err(SharedError::Corrupt {
                what,
                id: id.to_string(),
                message: format!(
                    "a {}-byte nonce and {} bytes of ciphertext (expected a {NONCE_LEN}-byte nonce and at least {TAG_LEN} bytes)",
                    nonce.len(),
                    value.len()
                ),
            });
        }
        let (ciphertext, tag) = value.split_at(value.len() - TAG_LEN);
        decrypt_aead(
            Cipher::aes_256_gcm(),
            key,
            Some(&nonce),
            id.as_bytes(),
            ciphertext,
            tag,
        )
        .map_err(|_| SharedError::WrongKey {
            what,
            id: id.to_string(),
            key_env: self.key_env.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::store::KEY_ENV;
    use std::time::Duration;

    #[test]
    fn keys_parse_from_hex_or_base64() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let key = parse_key(hex).unwrap();
        assert_eq!(key[1], 0x11);
        let b64 = openssl::base64::encode_block(&key);
        assert_eq!(parse_key(&b64).unwrap(), key);
        for bad in ["", "abcd", &hex[..62], "not base64 at all!"] {
            assert_eq!(parse_key(bad).unwrap_err().kind(), "misconfigured", "{bad}");
        }
    }

    #[test]
    fn encryption_roundtrips_and_binds_the_row() {
        let timeout = Duration::from_secs(1);
        let store = SharedStore::new("postgres://u@h/d", Some([7; 32]), timeout).unwrap();
        let (value, nonce) = store.encrypt("certificate", "a.test", b"secret").unwrap();
        assert_eq!(nonce.as_ref().map(Vec::len), Some(NONCE_LEN));
        assert!(!value.windows(6).any(|w| w == b"secret"));
        let back = store
            .decrypt("certificate", "a.test", value.clone(), nonce.clone())
            .unwrap();
        assert_eq!(back, b"secret");
        // The same bytes under another row's name do not decrypt.
        let err = store
            .decrypt("certificate", "b.test", value.clone(), nonce.clone())
            .unwrap_err();
        assert_eq!(err.kind(), "wrong_key");
        assert!(err.to_string().contains(KEY_ENV), "{err}");
        // No key: an encrypted row is an error, a plaintext row is read as is.
        let plain = SharedStore::new("postgres://u@h/d", None, timeout)
            .unwrap()
            .with_key_env("MY_KEY");
        let err = plain
            .decrypt("certificate", "a.test", value, nonce)
            .unwrap_err();
        assert_eq!(err.kind(), "key_missing");
        assert!(err.to_string().contains("MY_KEY"), "{err}");
        // With a key, a plaintext row is refused (it could have been planted).
        let err = store
            .decrypt("certificate", "a.test", b"pem".to_vec(), None)
            .unwrap_err();
        assert_eq!(err.kind(), "plaintext");
        assert!(err.to_string().contains("tenant-edge migrate"), "{err}");
    }
}
