//! The request's host: where it comes from (`:authority` or `Host`) and its port stripped.

use pingora::http::RequestHeader;

/// The request's authority: `:authority` (HTTP/2, or an absolute-form HTTP/1.1 target), else
/// the Host header.
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    req.uri.authority().map(|a| a.as_str()).or_else(|| {
        req.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// `Host` without its port (`shop.example:8443` → `shop.example`, `[::1]:443` → `[::1]`).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("shop.example:8443"), "shop.example");
        assert_eq!(strip_port("shop.example"), "shop.example");
        assert_eq!(strip_port("[::1]:443"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("shop.example:"), "shop.example");
    }

    #[test]
    fn host_comes_from_authority_then_header() {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        req.insert_header("Host", "a.example:8443").unwrap();
        assert_eq!(request_host(&req), Some("a.example:8443"));
        // HTTP/2 requests carry :authority in the URI, as `http::Request` parses it.
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        req.set_uri(http::Uri::from_static("https://b.example/x"));
        req.insert_header("Host", "ignored.example").unwrap();
        assert_eq!(request_host(&req), Some("b.example"));
    }
}
