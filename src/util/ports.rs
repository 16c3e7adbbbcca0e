//! Who holds a TCP port: the listening socket in `/proc/net/tcp{,6}`, then the process whose
//! file descriptors include it. Reading other users' descriptors needs their privileges; when
//! they cannot be read, the owner is unknown.

use std::net::{IpAddr, SocketAddr};

/// A process listening on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// `/proc/<pid>/comm`.
    pub name: String,
    /// `/proc/<pid>/cmdline`, arguments joined by spaces (bounded).
    pub command: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {}: {})", self.name, self.pid, self.command)
    }
}

/// The inodes of sockets listening on `addr`'s port (on its address or a wildcard).
fn listening_inodes(addr: SocketAddr) -> Vec<u64> {
    let mut inodes = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if *state != "0A" {
                continue; // not LISTEN
            }
            let Some((ip_hex, port_hex)) = local.split_once(':') else {
                continue;
            };
            if u16::from_str_radix(port_hex, 16).ok() != Some(addr.port()) {
                continue;
            }
            let ip = parse_proc_ip(ip_hex, v6);
            let matches = match ip {
                Some(ip) => ip.is_unspecified() || ip == addr.ip() || addr.ip().is_unspecified(),
                None => true,
            };
            if let (true, Ok(inode)) = (matches, inode.parse::<u64>()) {
                inodes.push(inode);
            }
        }
    }
    inodes
}

/// `/proc/net/tcp` addresses are printed as native-endian 32-bit words of the address bytes.
fn parse_proc_ip(hex: &str, v6: bool) -> Option<IpAddr> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    if !v6 {
        return Some(IpAddr::from(word(hex.get(..8)?)?));
    }
    let mut bytes = [0u8; 16];
    for i in 0..4 {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&word(hex.get(i * 8..i * 8 + 8)?)?);
    }
    Some(IpAddr::from(bytes))
}

/// The process listening on `addr`, if it can be found.
pub fn holder(addr: SocketAddr) -> Option<Holder> {
    let inodes = listening_inodes(addr);
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|t| t.to_str().map(|t| wanted.iter().any(|w| w == t)))
                .unwrap_or(false)
        });
        if holds {
            let read = |f: &str| std::fs::read(entry.path().join(f)).unwrap_or_default();
            let name = String::from_utf8_lossy(&read("comm")).trim().to_string();
            let mut command: String = read("cmdline")
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ");
            command.truncate(200);
            return Some(Holder { pid, name, command });
        }
    }
    None
}

/// What holds `addr`, and what to do about it.
pub fn taken_port_message(addr: SocketAddr) -> String {
    match holder(addr) {
        Some(h) => {
            let advice = match h.name.as_str() {
                "kamal-proxy" => {
                    "run kamal-proxy on 127.0.0.1:8080 with `ssl: false` behind tenant-edge"
                }
                "caddy" => {
                    "stop Caddy (tenant-edge replaces it); see README.md, \"From Caddy in Kamal 2\""
                }
                "tenant-edge" => "another tenant-edge runs already (`run -u` upgrades it in place)",
                "node_exporter" | "prometheus-node-exporter" => {
                    "node_exporter owns this port: give listen.metrics another port"
                }
                _ => "stop it, or listen on another address",
            };
            format!("already in use by {h}; {advice}")
        }
        None => {
            "already in use by another process (not visible to this user: `sudo ss -ltnp` shows it)"
                .to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_addresses_decode() {
        assert_eq!(
            parse_proc_ip("0100007F", false),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            parse_proc_ip("00000000", false),
            Some("0.0.0.0".parse().unwrap())
        );
        assert_eq!(
            parse_proc_ip("00000000000000000000000001000000", true),
            Some("::1".parse().unwrap())
        );
    }

    #[test]
    fn this_process_is_found_holding_its_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let found = holder(addr).expect("the test's own listener");
        assert_eq!(found.pid, std::process::id());
    }
}
