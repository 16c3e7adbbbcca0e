//! A pure ClientHello parser: the SNI of the first bytes of a TLS connection, read as strictly
//! as OpenSSL reads it where that matters. No I/O, no allocation on the usual path, never
//! panics on any input (tested on truncated, corrupted and random bytes).

use std::borrow::Cow;

// RFC 8446 §4.1.2, RFC 5246 §7.4.1.2, RFC 6066 §3.

pub const RECORD_HEADER: usize = 5;
/// TLSPlaintext.length must not exceed 2^14 (RFC 8446 §5.1).
const MAX_RECORD: usize = 16_384;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;
/// A ClientHello larger than this is not worth reassembling.
const MAX_HANDSHAKE: usize = 64 * 1024;

/// What the first bytes of a connection say about its SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello<'a> {
    /// More bytes are needed: at least `need` in total.
    Incomplete { need: usize },
    /// Not a TLS handshake record (HTTP, SSLv2, noise): OpenSSL fails it before any callback.
    NotTls,
    /// A TLS handshake this parser cannot read: malformed, not a ClientHello, or oddly split.
    Malformed,
    /// A whole ClientHello without a `server_name` extension.
    NoSni,
    /// The first `host_name` of the `server_name` extension, bytes as sent (the same entry
    /// OpenSSL reports). Borrowed unless the ClientHello was split across records.
    Sni(Cow<'a, [u8]>),
}

/// Find the SNI in the first bytes of a TLS connection. Never panics, never reads past `buf`.
pub fn parse_client_hello(buf: &[u8]) -> Hello<'_> {
    let Some(header) = buf.get(..RECORD_HEADER) else {
        // Reject non-TLS as early as its first bytes allow.
        return match buf {
            [t, ..] if *t != CONTENT_HANDSHAKE => Hello::NotTls,
            [_, major, ..] if *major != 3 => Hello::NotTls,
            _ => Hello::Incomplete {
                need: RECORD_HEADER,
            },
        };
    };
    let record_len = match handshake_record(header) {
        Ok(len) => len,
        Err(not_ours) => return not_ours,
    };
    let Some(fragment) = buf.get(RECORD_HEADER..RECORD_HEADER + record_len) else {
        return Hello::Incomplete {
            need: RECORD_HEADER + record_len,
        };
    };
    if let [msg_type, a, b, c, body @ ..] = fragment {
        if *msg_type != HANDSHAKE_CLIENT_HELLO {
            return Hello::Malformed;
        }
        let body_len = be24(*a, *b, *c);
        if let Some(body) = body.get(..body_len) {
            return match client_hello_body(body) {
                Body::Sni(name) => Hello::Sni(Cow::Borrowed(name)),
                Body::NoSni => Hello::NoSni,
                Body::Malformed => Hello::Malformed,
            };
        }
    }
    reassemble(buf)
}

/// The rare path: a ClientHello split over several handshake records (legal; OpenSSL
/// reassembles it, so we must too, or splitting would get around the gate).
fn reassemble(buf: &[u8]) -> Hello<'static> {
    let mut message: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    loop {
        let Some(header) = buf.get(pos..pos + RECORD_HEADER) else {
            return Hello::Incomplete {
                need: pos + RECORD_HEADER,
            };
        };
        // A record of another type in the middle of the ClientHello is a protocol error.
        let Ok(record_len) = handshake_record(header) else {
            return Hello::Malformed;
        };
        let start = pos + RECORD_HEADER;
        let Some(fragment) = buf.get(start..start + record_len) else {
            return Hello::Incomplete {
                need: start + record_len,
            };
        };
        message.extend_from_slice(fragment);
        pos = start + record_len;
        if let [msg_type, a, b, c, body @ ..] = message.as_slice() {
            if *msg_type != HANDSHAKE_CLIENT_HELLO {
                return Hello::Malformed;
            }
            let body_len = be24(*a, *b, *c);
            if body_len > MAX_HANDSHAKE {
                return Hello::Malformed;
            }
            if let Some(body) = body.get(..body_len) {
                return match client_hello_body(body) {
                    Body::Sni(name) => Hello::Sni(Cow::Owned(name.to_vec())),
                    Body::NoSni => Hello::NoSni,
                    Body::Malformed => Hello::Malformed,
                };
            }
        }
    }
}

/// The length of a handshake record from its 5-byte header; `Err` with the verdict otherwise.
fn handshake_record(header: &[u8]) -> Result<usize, Hello<'static>> {
    let [kind, major, _minor, a, b] = header else {
        return Err(Hello::Malformed);
    };
    if *kind != CONTENT_HANDSHAKE || *major != 3 {
        return Err(Hello::NotTls);
    }
    let len = be16(*a, *b);
    if len == 0 || len > MAX_RECORD {
        return Err(Hello::Malformed);
    }
    Ok(len)
}

enum Body<'a> {
    Sni(&'a [u8]),
    NoSni,
    Malformed,
}

/// The ClientHello body after its 4-byte handshake header, checked as strictly as OpenSSL's
/// `tls_process_client_hello` where it matters for the SNI.
fn client_hello_body(body: &[u8]) -> Body<'_> {
    fn parse(body: &[u8]) -> Option<Body<'_>> {
        let mut r = Reader(body);
        r.take(2)?; // legacy_version
        r.take(32)?; // random
        let session_id = r.u8()?;
        if session_id > 32 {
            return None;
        }
        r.take(usize::from(session_id))?;
        let suites = r.u16()?;
        if suites < 2 || suites % 2 != 0 {
            return None;
        }
        r.take(suites)?;
        let compression = r.u8()?;
        if compression == 0 {
            return None;
        }
        r.take(usize::from(compression))?;
        if r.0.is_empty() {
            // No extensions at all (an old TLS 1.0-style client).
            return Some(Body::NoSni);
        }
        let len = r.u16()?;
        let mut extensions = Reader(r.take(len)?);
        if !r.0.is_empty() {
            return None;
        }
        let mut sni = None;
        while !extensions.0.is_empty() {
            let kind = extensions.u16()?;
            let len = extensions.u16()?;
            let data = extensions.take(len)?;
            if kind == usize::from(EXT_SERVER_NAME) {
                if sni.is_some() {
                    // Duplicate extensions are a decode error for OpenSSL.
                    return None;
                }
                sni = Some(server_name(data)?);
            }
        }
        Some(match sni {
            Some(name) => Body::Sni(name),
            None => Body::NoSni,
        })
    }
    parse(body).unwrap_or(Body::Malformed)
}

/// `ServerNameList`: OpenSSL takes the first entry, which must be a `host_name`.
fn server_name(data: &[u8]) -> Option<&[u8]> {
    let mut r = Reader(data);
    let list_len = r.u16()?;
    let mut list = Reader(r.take(list_len)?);
    if !r.0.is_empty() || list.0.is_empty() {
        return None;
    }
    if list.u8()? != NAME_TYPE_HOST_NAME {
        return None;
    }
    let len = list.u16()?;
    list.take(len)
}

/// A cursor over a byte slice whose reads fail instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        match self.take(1)? {
            [a] => Some(*a),
            _ => None,
        }
    }
    fn u16(&mut self) -> Option<usize> {
        match self.take(2)? {
            [a, b] => Some(be16(*a, *b)),
            _ => None,
        }
    }
}

fn be16(a: u8, b: u8) -> usize {
    usize::from(u16::from_be_bytes([a, b]))
}

fn be24(a: u8, b: u8, c: u8) -> usize {
    (usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c)
}

#[cfg(test)]
pub(crate) mod tests;
