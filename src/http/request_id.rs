//! `X-Request-Id`: the id that ties the edge's access-log line to the app's log lines (Rails'
//! `ActionDispatch::RequestId` reads the same header). A trusted peer's id (a load balancer
//! or CDN in `forwarding.trusted_proxies`) is kept when it is sane; any other is replaced by
//! a new random one, so a client cannot choose the id of its own request.

use http::header::{HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest id kept from a trusted peer.
const MAX_LEN: usize = 200;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A request's id: the trusted peer's, or one the edge made.
#[derive(Debug, Clone)]
pub enum RequestId {
    /// A trusted peer's `X-Request-Id` (visible ASCII, at most `MAX_LEN` bytes).
    Kept(HeaderValue),
    /// 32 random hex digits. Kept as bytes: the access log reads them as they are, and the
    /// header upstream is made once, by `header_value`.
    New([u8; 32]),
}

impl RequestId {
    /// `incoming` when `trusted` and made of visible ASCII (at most 200 bytes), else 32
    /// random hex digits.
    pub fn new(incoming: Option<&HeaderValue>, trusted: bool) -> RequestId {
        if let Some(id) = incoming.filter(|_| trusted) {
            let b = id.as_bytes();
            if !b.is_empty() && b.len() <= MAX_LEN && b.iter().all(|b| b.is_ascii_graphic()) {
                return RequestId::Kept(id.clone());
            }
        }
        let random = rand::random::<u128>().to_be_bytes();
        let mut hex = [0u8; 32];
        for (pair, byte) in hex.chunks_exact_mut(2).zip(random) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
        RequestId::New(hex)
    }

    /// The id as the access log writes it.
    pub fn as_str(&self) -> &str {
        let bytes = match self {
            RequestId::Kept(v) => v.as_bytes(),
            RequestId::New(hex) => hex,
        };
        // Both are ASCII (checked, or hex digits): the fallback is never taken.
        std::str::from_utf8(bytes).unwrap_or("-")
    }

    /// The id as the header sent upstream.
    pub fn header_value(&self) -> HeaderValue {
        match self {
            RequestId::Kept(v) => v.clone(),
            // Hex digits are a valid header value: the fallback is never taken.
            RequestId::New(hex) => {
                HeaderValue::from_bytes(hex).unwrap_or_else(|_| HeaderValue::from_static("0"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(incoming: &[u8], trusted: bool) -> String {
        let incoming = HeaderValue::from_bytes(incoming).unwrap();
        let id = RequestId::new(Some(&incoming), trusted);
        // What the log writes is what goes upstream.
        assert_eq!(id.as_str().as_bytes(), id.header_value().as_bytes());
        id.as_str().to_owned()
    }

    #[test]
    fn trusted_ids_are_kept_and_others_replaced() {
        assert_eq!(id(b"lb-123", true), "lb-123");
        let generated = id(b"client-chosen", false);
        assert_ne!(generated, "client-chosen");
        assert_eq!(generated.len(), 32);
        assert!(generated.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(
            RequestId::new(None, false).as_str(),
            RequestId::new(None, false).as_str()
        );
        // Junk from a trusted peer is replaced too.
        assert_eq!(id(b"a b", true).len(), 32);
        assert_eq!(id(&[b'x'; 300], true).len(), 32);
        assert_eq!(id(b"", true).len(), 32);
    }

    #[test]
    fn generated_ids_use_every_hex_digit_position() {
        // 64 ids: each of the 32 positions takes more than one value (no digit stuck at 0).
        let ids: Vec<String> = (0..64)
            .map(|_| RequestId::new(None, false).as_str().to_owned())
            .collect();
        for pos in 0..32 {
            let first = ids[0].as_bytes()[pos];
            assert!(
                ids.iter().any(|i| i.as_bytes()[pos] != first),
                "digit {pos} never changes"
            );
        }
    }
}
