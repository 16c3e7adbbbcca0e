//! Address ranges (`10.0.0.0/8`, `2001:db8::/32`, or one address) and the key a client is
//! counted under (its IPv4 address, or its IPv6 address masked to a prefix: one subscriber
//! usually gets a whole /64).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address range. IPv4 ranges also match IPv4-mapped IPv6 addresses (a dual-stack socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a string is not a range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("not an IP address or range such as 10.0.0.0/8 or 2001:db8::/32")]
    Syntax,
    #[error("the prefix length is over {0} for this address family")]
    Prefix(u8),
    #[error("the address has bits set below the prefix (did you mean {0}?)")]
    HostBits(String),
}

impl Cidr {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_v4(u32::from(ip), self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_v6(u128::from(ip), self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                let addr: IpAddr = a.parse().map_err(|_| CidrError::Syntax)?;
                let prefix: u8 = p.parse().map_err(|_| CidrError::Syntax)?;
                (addr, Some(prefix))
            }
            None => (s.parse().map_err(|_| CidrError::Syntax)?, None),
        };
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(CidrError::Prefix(max));
        }
        let masked = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(mask_v4(u32::from(a), prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(mask_v6(u128::from(a), prefix))),
        };
        if masked != addr {
            return Err(CidrError::HostBits(format!("{masked}/{prefix}")));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) as the IPv4 address they carry.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The key a client is counted under: the IPv4 address (IPv4-mapped IPv6 included), or the
/// IPv6 address masked to `v6_prefix` bits.
pub fn client_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(mask_v6(u128::from(v6), v6_prefix))),
        v4 => v4,
    }
}

/// `client_key` in the form operators read in logs: `203.0.113.7`, `2001:db8:1:2::/64`.
pub fn describe_client(ip: IpAddr, v6_prefix: u8) -> String {
    let key = client_key(ip, v6_prefix);
    match key {
        IpAddr::V6(_) if v6_prefix < 128 => format!("{key}/{v6_prefix}"),
        _ => key.to_string(),
    }
}

fn mask_v4(ip: u32, prefix: u8) -> u32 {
    let shift = 32u32.saturating_sub(u32::from(prefix.min(32)));
    ip & u32::MAX.checked_shl(shift).unwrap_or(0)
}

fn mask_v6(ip: u128, prefix: u8) -> u128 {
    let shift = 128u32.saturating_sub(u32::from(prefix.min(128)));
    ip & u128::MAX.checked_shl(shift).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_and_match() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("10.1.2.3")));
        assert!(net.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        assert!(!net.contains(ip("11.0.0.1")));
        assert!(!net.contains(ip("2001:db8::1")));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.1")));
        assert_eq!(v6.to_string(), "2001:db8::/32");
    }

    #[test]
    fn bad_ranges_say_why() {
        assert_eq!(
            "10.0.0.1/8".parse::<Cidr>(),
            Err(CidrError::HostBits("10.0.0.0/8".into()))
        );
        assert_eq!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::Prefix(32)));
        assert_eq!("nope".parse::<Cidr>(), Err(CidrError::Syntax));
        assert_eq!("10.0.0.0/x".parse::<Cidr>(), Err(CidrError::Syntax));
    }

    #[test]
    fn clients_are_keyed_by_address_or_v6_prefix() {
        assert_eq!(client_key(ip("::ffff:192.0.2.1"), 64), ip("192.0.2.1"));
        assert_eq!(client_key(ip("2001:db8:1:2::9"), 64), ip("2001:db8:1:2::"));
        assert_eq!(
            client_key(ip("2001:db8:1:2::9"), 128),
            ip("2001:db8:1:2::9")
        );
        assert_eq!(client_key(ip("2001:db8:1:2::9"), 0), ip("::"));
        assert_eq!(
            describe_client(ip("2001:db8:1:2::9"), 64),
            "2001:db8:1:2::/64"
        );
        assert_eq!(describe_client(ip("192.0.2.1"), 64), "192.0.2.1");
    }
}
