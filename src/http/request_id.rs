//! `X-Request-Id`: the id that ties the edge's access-log line to the app's log lines (Rails'
//! `ActionDispatch::RequestId` reads the same header). A trusted peer's id (a load balancer
//! or CDN in `forwarding.trusted_proxies`) is kept when it is sane; any other is replaced by
//! a new random one, so a client cannot choose the id of its own request.

use http::header::HeaderName;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest id kept from a trusted peer.
const MAX_LEN: usize = 200;

/// The request's id: `incoming` when `trusted` and made of visible ASCII (at most 200 bytes),
/// else 32 random hex digits.
pub fn request_id(incoming: Option<&[u8]>, trusted: bool) -> String {
    if let Some(id) = incoming.filter(|_| trusted) {
        if !id.is_empty() && id.len() <= MAX_LEN && id.iter().all(|b| b.is_ascii_graphic()) {
            // Visible ASCII is UTF-8.
            return String::from_utf8_lossy(id).into_owned();
        }
    }
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_ids_are_kept_and_others_replaced() {
        assert_eq!(request_id(Some(b"lb-123"), true), "lb-123");
        let generated = request_id(Some(b"client-chosen"), false);
        assert_ne!(generated, "client-chosen");
        assert_eq!(generated.len(), 32);
        assert!(generated.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(request_id(None, false), request_id(None, false));
        // Junk from a trusted peer is replaced too.
        assert_eq!(request_id(Some(b"a b"), true).len(), 32);
        assert_eq!(request_id(Some(&[b'x'; 300]), true).len(), 32);
        assert_eq!(request_id(Some(b""), true).len(), 32);
    }
}
