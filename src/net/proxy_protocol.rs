//! The PROXY protocol header (versions 1 and 2) that a TCP load balancer (AWS NLB, HAProxy,
//! a cloud load balancer) writes before the client's first byte, carrying the client's
//! address. Parsed from the first bytes of a connection, strictly: the header must be whole
//! and well formed, or the connection is refused by the caller.
//!
//! - v1: `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n`, or `PROXY UNKNOWN ...\r\n`; at most
//!   107 bytes.
//! - v2: a 12-byte signature, version/command, family, a 16-bit length, the addresses, TLVs
//!   (ignored). `LOCAL` (health checks of the balancer itself) and `UNSPEC` keep the TCP
//!   addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included.
const V1_MAX: usize = 107;
/// v2 headers larger than this (TLVs included) are refused: a balancer's TLVs are small.
pub const V2_MAX: usize = 16 + 1024;

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed: at least `need` in total.
    Incomplete { need: usize },
    /// A whole header of `len` bytes; `addresses` is `None` for `LOCAL`/`UNKNOWN`/`UNSPEC`.
    /// `local`: a v2 `LOCAL` command (the balancer's own connection, a health check), as
    /// opposed to a client's connection whose address the balancer did not know.
    Header {
        len: usize,
        addresses: Option<(SocketAddr, SocketAddr)>,
        local: bool,
    },
    /// Not a PROXY header, or a malformed one.
    Invalid(&'static str),
}

/// Parse a PROXY header at the start of `buf`. Never panics, never reads past `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Incomplete { need: 1 };
    }
    if buf[0] == b'P' {
        return parse_v1(buf);
    }
    if buf[0] == b'\r' {
        return parse_v2(buf);
    }
    Parsed::Invalid("the connection does not start with a PROXY protocol header")
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let prefix = b"PROXY ";
    let n = buf.len().min(prefix.len());
    if buf[..n] != prefix[..n] {
        return Parsed::Invalid("the connection does not start with a PROXY protocol header");
    }
    let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Parsed::Invalid("a PROXY v1 line longer than 107 bytes")
        } else {
            Parsed::Incomplete {
                need: buf.len() + 1,
            }
        };
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Parsed::Invalid("a PROXY v1 line that does not end in CRLF");
    }
    let Ok(line) = std::str::from_utf8(&buf[prefix.len()..end - 1]) else {
        return Parsed::Invalid("a PROXY v1 line that is not ASCII");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    let len = end + 1;
    match fields.as_slice() {
        ["UNKNOWN", ..] => Parsed::Header {
            len,
            addresses: None,
            local: false,
        },
        [family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v4 = *family == "TCP4";
            let ip = |s: &str| -> Option<IpAddr> {
                let ip: IpAddr = s.parse().ok()?;
                (ip.is_ipv4() == v4).then_some(ip)
            };
            // Ports are decimal without leading zeros (a leading zero is not in the spec).
            let port = |s: &str| -> Option<u16> {
                (!s.is_empty() && (s == "0" || !s.starts_with('0')))
                    .then(|| s.parse().ok())
                    .flatten()
            };
            match (ip(src), ip(dst), port(sport), port(dport)) {
                (Some(s), Some(d), Some(sp), Some(dp)) => Parsed::Header {
                    len,
                    addresses: Some((SocketAddr::new(s, sp), SocketAddr::new(d, dp))),
                    local: false,
                },
                _ => Parsed::Invalid("a PROXY v1 line with malformed addresses or ports"),
            }
        }
        _ => Parsed::Invalid("a PROXY v1 line with an unknown protocol or missing fields"),
    }
}

fn parse_v2(buf: &[u8]) -> Parsed {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Parsed::Invalid("the connection does not start with a PROXY protocol header");
    }
    let Some(&[ver_cmd, family, hi, lo]) =
        buf.get(12..16).and_then(|s| <&[u8; 4]>::try_from(s).ok())
    else {
        return Parsed::Incomplete { need: 16 };
    };
    if ver_cmd >> 4 != 2 {
        return Parsed::Invalid("a PROXY v2 header with another version");
    }
    let body = usize::from(u16::from_be_bytes([hi, lo]));
    let len = 16 + body;
    if len > V2_MAX {
        return Parsed::Invalid("a PROXY v2 header larger than 1 KiB of addresses and TLVs");
    }
    let Some(addr) = buf.get(16..len) else {
        return Parsed::Incomplete { need: len };
    };
    match ver_cmd & 0x0f {
        0 => {
            return Parsed::Header {
                len,
                addresses: None,
                local: true,
            }
        }
        1 => {}
        _ => return Parsed::Invalid("a PROXY v2 header with an unknown command"),
    }
    let addresses = match family {
        // TCP over IPv4 / IPv6 (UDP is not for us).
        0x11 => match addr.get(..12) {
            Some(a) => {
                let src = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                let dst = Ipv4Addr::new(a[4], a[5], a[6], a[7]);
                Some((
                    SocketAddr::new(src.into(), u16::from_be_bytes([a[8], a[9]])),
                    SocketAddr::new(dst.into(), u16::from_be_bytes([a[10], a[11]])),
                ))
            }
            None => return Parsed::Invalid("a PROXY v2 TCP4 header too short for its addresses"),
        },
        0x21 => match addr.get(..36) {
            Some(a) => {
                let mut s = [0u8; 16];
                let mut d = [0u8; 16];
                s.copy_from_slice(&a[..16]);
                d.copy_from_slice(&a[16..32]);
                Some((
                    SocketAddr::new(Ipv6Addr::from(s).into(), u16::from_be_bytes([a[32], a[33]])),
                    SocketAddr::new(Ipv6Addr::from(d).into(), u16::from_be_bytes([a[34], a[35]])),
                ))
            }
            None => return Parsed::Invalid("a PROXY v2 TCP6 header too short for its addresses"),
        },
        // UNSPEC: keep the connection's own addresses.
        0x00 => None,
        _ => return Parsed::Invalid("a PROXY v2 header for another transport than TCP"),
    };
    Parsed::Header {
        len,
        addresses,
        local: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A v2 header for `src` → `dst` (TCP), with `tlv` appended.
    fn v2(src: SocketAddr, dst: SocketAddr, tlv: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        let mut body = Vec::new();
        match (src, dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                out.extend_from_slice(&[0x21, 0x11]);
                body.extend_from_slice(&s.ip().octets());
                body.extend_from_slice(&d.ip().octets());
                body.extend_from_slice(&s.port().to_be_bytes());
                body.extend_from_slice(&d.port().to_be_bytes());
            }
            (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                out.extend_from_slice(&[0x21, 0x21]);
                body.extend_from_slice(&s.ip().octets());
                body.extend_from_slice(&d.ip().octets());
                body.extend_from_slice(&s.port().to_be_bytes());
                body.extend_from_slice(&d.port().to_be_bytes());
            }
            _ => unreachable!("one family"),
        }
        body.extend_from_slice(tlv);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn v1_lines() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.5 51234 443\r\nTLS...";
        assert_eq!(
            parse(line),
            Parsed::Header {
                len: 43,
                addresses: Some((sa("203.0.113.7:51234"), sa("10.0.0.5:443"))),
                local: false,
            }
        );
        let v6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 443\r\n";
        assert!(matches!(
            parse(v6),
            Parsed::Header {
                addresses: Some(_),
                ..
            }
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                addresses: None,
                local: false,
            }
        );
        for bad in [
            &b"PROXY TCP4 203.0.113.7 10.0.0.5 51234\r\n"[..],
            b"PROXY TCP4 2001:db8::1 10.0.0.5 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"GET / HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00",
        ] {
            assert!(matches!(parse(bad), Parsed::Invalid(_)), "{bad:?}");
        }
        assert!(matches!(parse(&[b'P'; 200]), Parsed::Invalid(_)));
        assert_eq!(parse(b"PROXY TCP4 1.2"), Parsed::Incomplete { need: 15 });
        assert_eq!(parse(b"PRO"), Parsed::Incomplete { need: 4 });
    }

    #[test]
    fn v2_headers() {
        let h = v2(
            sa("198.51.100.9:40000"),
            sa("10.0.0.5:443"),
            &[0x04, 0, 1, 7],
        );
        let mut stream = h.clone();
        stream.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            parse(&stream),
            Parsed::Header {
                len: h.len(),
                addresses: Some((sa("198.51.100.9:40000"), sa("10.0.0.5:443"))),
                local: false,
            }
        );
        let h6 = v2(sa("[2001:db8::9]:1"), sa("[2001:db8::5]:443"), &[]);
        assert!(matches!(
            parse(&h6),
            Parsed::Header {
                addresses: Some(_),
                ..
            }
        ));
        // Every truncation asks for more, never misreads.
        for cut in 0..h.len() {
            assert!(
                matches!(parse(&h[..cut]), Parsed::Incomplete { .. }),
                "cut {cut}"
            );
        }
        // LOCAL: the balancer's own health check.
        let mut local = h.clone();
        local[12] = 0x20;
        assert!(matches!(
            parse(&local),
            Parsed::Header {
                addresses: None,
                ..
            }
        ));
        let mut bad_version = h.clone();
        bad_version[12] = 0x11;
        assert!(matches!(parse(&bad_version), Parsed::Invalid(_)));
        let mut udp = h.clone();
        udp[13] = 0x12;
        assert!(matches!(parse(&udp), Parsed::Invalid(_)));
        let mut huge = h.clone();
        huge[14] = 0xff;
        assert!(matches!(parse(&huge), Parsed::Invalid(_)));
        let mut short = h[..16].to_vec();
        short[15] = 4;
        short.extend_from_slice(&[1, 2, 3, 4]);
        assert!(matches!(parse(&short), Parsed::Invalid(_)));
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::RngCore;
        let mut rng = rand::rng();
        for _ in 0..5000 {
            let mut b = vec![0u8; (rng.next_u32() % 80) as usize];
            rng.fill_bytes(&mut b);
            if !b.is_empty() && rng.next_u32() % 2 == 0 {
                let n = b.len().min(12);
                b[..n].copy_from_slice(&V2_SIGNATURE[..n]);
            }
            let _ = parse(&b);
        }
    }
}
