//! `forwarding:`: the headers that tell the app who the client is, in a form it can trust.
//!
//! The edge is the first hop by default: whatever a client sent in `X-Forwarded-For`,
//! `Forwarded`, `X-Real-IP`, `X-Forwarded-Proto`/`-Host`/`-Port`/`-Ssl`/`-Scheme`,
//! `True-Client-IP`, `Client-IP` and their kin is removed (Rack reads `Forwarded` first and
//! Rails reads `Client-IP`: a client could otherwise choose its own `request.ip` and scheme),
//! then the edge sets `X-Forwarded-For` to the client's address, `X-Forwarded-Proto: https`
//! and `X-Forwarded-Host`. A peer in `trusted_proxies` (a load balancer or CDN in front of the
//! edge) keeps what it sent, and the edge appends to its `X-Forwarded-For`. The client's address
//! is the PROXY protocol's where a trusted balancer sent one (`tls::accept`).

use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;

use crate::net::cidr::Cidr;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardingSettings {
    /// Peers whose forwarding headers (and PROXY protocol headers) are believed. Default: none.
    pub trusted_proxies: Vec<Cidr>,
}

impl ForwardingSettings {
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The names the edge sets, spelt as they go on the wire. Pingora's `insert_header` keeps a
/// header's case: given a `HeaderName` it builds the title-case spelling again (an allocation
/// and a pass over the name) on every call; given a static string it takes it as it is.
const XFF_WIRE: &str = "X-Forwarded-For";
const XFP_WIRE: &str = "X-Forwarded-Proto";
const XFH_WIRE: &str = "X-Forwarded-Host";

/// Headers through which a client could claim an address, scheme, host or port.
const FROM_CLIENT: [&str; 15] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-real-ip",
    "true-client-ip",
    "client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "cf-connecting-ip",
];

/// Whether `name` (lowercase, as `http` keeps names) is one of `FROM_CLIENT`, also when spelt
/// with underscores (`X_Forwarded_For`): Rack maps both spellings to one variable, and some
/// app servers let the underscore one win.
fn from_client(name: &str) -> bool {
    // Every name of the list is 9 to 24 bytes and starts with one of these: most request
    // headers (accept, user-agent, cookie, ...) are told apart without a comparison.
    let first = name.as_bytes().first().copied();
    if !(9..=24).contains(&name.len()) || !matches!(first, Some(b'f' | b'x' | b't' | b'c')) {
        return false;
    }
    if name.contains('_') {
        let dashed = name.replace('_', "-");
        FROM_CLIENT.contains(&dashed.as_str())
    } else {
        FROM_CLIENT.contains(&name)
    }
}

/// Rewrite the forwarding headers of a request about to go upstream. `client` is the peer
/// (after PROXY protocol) as X-Forwarded-For carries it, `trusted` whether it is a trusted
/// proxy, `host` the request's host as the client sent it.
pub fn rewrite(
    req: &mut RequestHeader,
    client: Option<&HeaderValue>,
    trusted: bool,
    host: Option<HeaderValue>,
) -> pingora::Result<()> {
    if trusted {
        let mut xff = req
            .headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(ip) = client.and_then(|c| c.to_str().ok()) {
            if !xff.is_empty() {
                xff.push_str(", ");
            }
            xff.push_str(ip);
        }
        if !xff.is_empty() {
            req.insert_header(XFF_WIRE, xff)?;
        }
        if !req.headers.contains_key(&X_FORWARDED_PROTO) {
            req.insert_header(XFP_WIRE, HeaderValue::from_static("https"))?;
        }
        if let (Some(host), false) = (host, req.headers.contains_key(&X_FORWARDED_HOST)) {
            req.insert_header(XFH_WIRE, host)?;
        }
        return Ok(());
    }
    // Typically none: only then is a list of names collected.
    if req.headers.keys().any(|k| from_client(k.as_str())) {
        let claimed: Vec<HeaderName> = req
            .headers
            .keys()
            .filter(|k| from_client(k.as_str()))
            .cloned()
            .collect();
        for name in &claimed {
            req.remove_header(name);
        }
    }
    if let Some(ip) = client {
        req.insert_header(XFF_WIRE, ip.clone())?;
    }
    req.insert_header(XFP_WIRE, HeaderValue::from_static("https"))?;
    if let Some(host) = host {
        req.insert_header(XFH_WIRE, host)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    fn all(req: &RequestHeader, name: &str) -> Vec<String> {
        req.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    const SPOOFED: &[(&str, &str)] = &[
        ("X-Forwarded-For", "1.2.3.4"),
        ("Forwarded", "for=1.2.3.4;proto=http"),
        ("X-Real-IP", "1.2.3.4"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Port", "80"),
        ("X-Forwarded-Ssl", "off"),
        ("X-Forwarded-Scheme", "http"),
        ("True-Client-IP", "1.2.3.4"),
        ("Client-IP", "1.2.3.4"),
        ("X_Forwarded_For", "1.2.3.4"),
        ("Client_IP", "1.2.3.4"),
    ];

    #[test]
    fn an_untrusted_client_cannot_choose_its_address_or_scheme() {
        let mut req = request(SPOOFED);
        let ip = HeaderValue::from_static("203.0.113.7");
        let host = HeaderValue::from_static("shop.tenant.test");
        rewrite(&mut req, Some(&ip), false, Some(host)).unwrap();
        assert_eq!(all(&req, "x-forwarded-for"), ["203.0.113.7"]);
        assert_eq!(all(&req, "x-forwarded-proto"), ["https"]);
        assert_eq!(all(&req, "x-forwarded-host"), ["shop.tenant.test"]);
        for gone in [
            "forwarded",
            "x-real-ip",
            "x-forwarded-port",
            "x-forwarded-ssl",
            "x-forwarded-scheme",
            "true-client-ip",
            "client-ip",
            "x_forwarded_for",
            "client_ip",
        ] {
            assert!(all(&req, gone).is_empty(), "{gone} passed through");
        }
    }

    #[test]
    fn a_trusted_proxy_keeps_its_headers_and_gets_appended_to() {
        let mut req = request(&[
            ("X-Forwarded-For", "198.51.100.1"),
            ("X-Forwarded-For", "10.0.0.9"),
            ("X-Forwarded-Proto", "https"),
            ("Forwarded", "for=198.51.100.1"),
        ]);
        let ip = HeaderValue::from_static("10.0.0.2");
        rewrite(
            &mut req,
            Some(&ip),
            true,
            Some(HeaderValue::from_static("a.test")),
        )
        .unwrap();
        assert_eq!(
            all(&req, "x-forwarded-for"),
            ["198.51.100.1, 10.0.0.9, 10.0.0.2"]
        );
        assert_eq!(all(&req, "forwarded"), ["for=198.51.100.1"]);
        assert_eq!(all(&req, "x-forwarded-host"), ["a.test"]);
    }

    #[test]
    fn the_quick_filter_keeps_every_listed_name() {
        for name in FROM_CLIENT {
            assert!(from_client(name), "{name}");
            assert!(
                from_client(&name.replace('-', "_")),
                "{name} with underscores"
            );
        }
        for name in [
            "accept",
            "user-agent",
            "cookie",
            "x-request-id",
            "content-type",
        ] {
            assert!(!from_client(name), "{name}");
        }
    }

    #[test]
    fn trust_is_by_range() {
        let f = ForwardingSettings {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
        };
        assert!(f.trusts("10.1.1.1".parse().unwrap()));
        assert!(!f.trusts("11.1.1.1".parse().unwrap()));
        assert!(!ForwardingSettings::default().trusts("10.1.1.1".parse().unwrap()));
    }
}
