//! What the ClientHello says, read once per connection in OpenSSL's ClientHello callback and
//! kept in the connection's ex-data: the SNI the connection is served under and whether it is
//! a TLS-ALPN-01 validation (ALPN `acme-tls/1`). Every later step reads it from there, never
//! from OpenSSL's own idea of the server name (which, on a resumed TLS 1.2 session, is the
//! session's name, and after a HelloRetryRequest is the second ClientHello's).
//!
//! - A second ClientHello (after a TLS 1.3 HelloRetryRequest) must repeat the first
//!   (RFC 8446 §4.1.2): another SNI or ALPN offer is refused with `illegal_parameter`, so the
//!   name the gate, the allow-list and the certificate saw is the name the connection gets.
//! - Sessions are bound to the name (the session ID context is a hash of the SNI): a session
//!   made for one name never resumes under another; such a client gets a full handshake, and
//!   the certificate callback decides again.
//! - Names refused without any lookup (no SNI and no default, an invalid name, a cached "no")
//!   get the `unrecognized_name` alert (112) from the servername callback; names refused after a
//!   lookup get what OpenSSL sends when no certificate is set (40).

use std::ffi::{c_int, c_uint};
use std::sync::OnceLock;

use foreign_types::ForeignTypeRef;
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use pingora::tls::ssl::{Ssl, SslAlert, SslRef};
use pingora::tls::ssl_sys as ffi;

/// ALPN protocol id of TLS-ALPN-01 validation handshakes, length-prefixed (wire format).
pub const ACME_TLS_1: &[u8] = b"\x0aacme-tls/1";
const EXT_SERVER_NAME: c_uint = 0;
const EXT_ALPN: c_uint = 16;

/// What the first ClientHello of a connection said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The first `host_name` of the server_name extension, as sent.
    pub sni: Option<Box<[u8]>>,
    /// ALPN offered `acme-tls/1`: a CA validating TLS-ALPN-01.
    pub acme: bool,
}

impl Hello {
    /// The SNI as text (`None` when absent or not UTF-8, which no valid name is).
    pub fn sni_str(&self) -> Option<&str> {
        self.sni
            .as_deref()
            .and_then(|s| std::str::from_utf8(s).ok())
    }
}

fn hello_index() -> Option<Index<Ssl, Hello>> {
    static INDEX: OnceLock<Option<Index<Ssl, Hello>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index::<Hello>().ok())
}

/// The connection's ClientHello, once the ClientHello callback ran.
pub fn hello(ssl: &SslRef) -> Option<&Hello> {
    ssl.ex_data(hello_index()?)
}

/// A raw extension of the ClientHello being processed (valid in the ClientHello and
/// servername callbacks).
fn extension(ssl: &SslRef, kind: c_uint) -> Option<&[u8]> {
    let mut data = std::ptr::null();
    let mut len = 0usize;
    // SAFETY: SSL_client_hello_get0_ext is valid during the ClientHello callback; on success
    // `data` points at `len` bytes owned by `ssl`'s ClientHello, which outlives this borrow.
    let found = unsafe { ffi::SSL_client_hello_get0_ext(ssl.as_ptr(), kind, &mut data, &mut len) };
    if found != 1 || data.is_null() {
        return None;
    }
    // SAFETY: OpenSSL returned `len` readable bytes at `data`.
    Some(unsafe { std::slice::from_raw_parts(data, len) })
}

/// `ServerNameList` → its first `host_name` (the entry OpenSSL uses).
fn first_host_name(ext: &[u8]) -> Option<&[u8]> {
    let (&[_, _, kind, hi, lo], rest) = ext.split_first_chunk::<5>()?;
    if kind != 0 {
        return None;
    }
    rest.get(..usize::from(u16::from_be_bytes([hi, lo])))
}

/// Whether a wire-format ALPN list contains `acme-tls/1`.
pub fn offers_acme_tls(list: &[u8]) -> bool {
    let mut rest = list;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        let Some(proto) = tail.get(..len) else {
            return false;
        };
        if proto == &ACME_TLS_1[1..] {
            return true;
        }
        rest = &tail[len..];
    }
    false
}

extern "C" {
    fn SSL_set_session_id_context(ssl: *mut ffi::SSL, sid_ctx: *const u8, len: c_uint) -> c_int;
}

/// Sessions resume only under the name they were made for.
fn bind_sessions_to_name(ssl: &mut SslRef, sni: Option<&[u8]>) -> Result<(), ErrorStack> {
    let mut h = openssl::sha::Sha256::new();
    h.update(b"tenant-edge session\0");
    if let Some(name) = sni {
        let name = name.strip_suffix(b".").unwrap_or(name);
        h.update(&name.to_ascii_lowercase());
    }
    let ctx = h.finish();
    // SAFETY: a setter on the live SSL, called before the session lookup; `ctx` is 32 bytes
    // (SSL_MAX_SID_CTX_LENGTH).
    match unsafe { SSL_set_session_id_context(ssl.as_ptr(), ctx.as_ptr(), ctx.len() as c_uint) } {
        1 => Ok(()),
        _ => Err(ErrorStack::get()),
    }
}

/// The ClientHello callback: record the first ClientHello, refuse a second one that differs,
/// bind sessions to the name. `Err` fails the handshake with `*alert`.
pub fn on_client_hello(ssl: &mut SslRef, alert: &mut SslAlert) -> Result<(), ErrorStack> {
    let sni: Option<Box<[u8]>> = extension(ssl, EXT_SERVER_NAME)
        .and_then(first_host_name)
        .map(Box::from);
    let acme = extension(ssl, EXT_ALPN)
        .and_then(|e| e.get(2..))
        .is_some_and(offers_acme_tls);
    let Some(index) = hello_index() else {
        return Ok(());
    };
    let this = Hello { sni, acme };
    if let Some(first) = ssl.ex_data(index) {
        // A second ClientHello: only after a HelloRetryRequest (OpenSSL refuses client
        // renegotiation), and it must repeat the first.
        if *first != this {
            *alert = SslAlert::ILLEGAL_PARAMETER;
            return Err(ErrorStack::get());
        }
        return Ok(());
    }
    bind_sessions_to_name(ssl, this.sni.as_deref())?;
    ssl.set_ex_data(index, this);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_lists_are_parsed_safely() {
        assert!(offers_acme_tls(b"\x0aacme-tls/1"));
        assert!(offers_acme_tls(b"\x02h2\x0aacme-tls/1"));
        assert!(!offers_acme_tls(b"\x02h2\x08http/1.1"));
        assert!(!offers_acme_tls(b"\x0bacme-tls/1x"));
        assert!(!offers_acme_tls(b"\x0aacme-tls")); // truncated
        assert!(!offers_acme_tls(b"\xff"));
        assert!(!offers_acme_tls(b""));
    }

    #[test]
    fn the_first_host_name_is_taken() {
        assert_eq!(
            first_host_name(b"\x00\x0a\x00\x00\x07a.b.com"),
            Some(&b"a.b.com"[..])
        );
        assert_eq!(first_host_name(b"\x00\x0a\x01\x00\x07a.b.com"), None);
        assert_eq!(first_host_name(b"\x00\x0a\x00\x00\x09a.b"), None);
        assert_eq!(first_host_name(b"\x00"), None);
    }
}
