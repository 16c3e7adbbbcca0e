//! Pebble (Let's Encrypt's test CA, Debian's `pebble` package) and pebble-challtestsrv as its
//! DNS, on free loopback ports, pointed at one edge's HTTP and TLS ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_for_port, Proc};

pub struct Pebble {
    pub dir: PathBuf,
    /// The ACME directory URL.
    pub directory: String,
    /// The CA that signed Pebble's own HTTPS listener certificate (`issuer.acme.trusted_root`).
    pub listener_root: PathBuf,
    pub listen: SocketAddr,
    pub management: SocketAddr,
    pub dns: SocketAddr,
    config: PathBuf,
    pebble: Option<Proc>,
    va_sleep: Option<u32>,
    _dns: Proc,
    log: PathBuf,
}

/// A CA and a leaf for 127.0.0.1/localhost, written as PEM files in `dir`.
fn listener_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "pebble listener test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let (root, cert_path, key_path) = (
        dir.join("listener-ca.pem"),
        dir.join("listener.pem"),
        dir.join("listener.key"),
    );
    std::fs::write(&root, ca_cert.pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (root, cert_path, key_path)
}

impl Pebble {
    /// Start challtestsrv (DNS answering 127.0.0.1 for every name) and Pebble validating
    /// HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`.
    pub fn start(dir: &Path, http_port: u16, tls_port: u16) -> Pebble {
        Pebble::start_with_validity(dir, http_port, tls_port, None)
    }

    /// `start`, issuing certificates valid for `validity` seconds (Pebble's
    /// `certificateValidityPeriod`) instead of five years.
    pub fn start_with_validity(
        dir: &Path,
        http_port: u16,
        tls_port: u16,
        validity: Option<u64>,
    ) -> Pebble {
        Pebble::start_opts(dir, http_port, tls_port, validity, "127.0.0.1", None)
    }

    /// Full control: `resolve_to` is the address challtestsrv answers for every name (the host
    /// the CA validates against); `va_sleep` makes Pebble wait up to that many seconds before
    /// each validation (instead of `PEBBLE_VA_NOSLEEP`).
    pub fn start_opts(
        dir: &Path,
        http_port: u16,
        tls_port: u16,
        validity: Option<u64>,
        resolve_to: &str,
        va_sleep: Option<u32>,
    ) -> Pebble {
        let dir = dir.join("pebble");
        std::fs::create_dir_all(&dir).unwrap();
        let (listener_root, cert, key) = listener_certs(&dir);
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let management: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dns: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dns_mgmt = free_port();
        let dns_log = dir.join("challtestsrv.log");
        let child = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &dns.to_string(),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args([
                "-management",
                &format!("127.0.0.1:{dns_mgmt}"),
                "-defaultIPv6",
                "",
                "-defaultIPv4",
                resolve_to,
            ])
            .stdout(std::fs::File::create(&dns_log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (apt-get install pebble)");
        let dns_proc = Proc {
            child,
            log: dns_log,
        };
        wait_for_port(
            format!("127.0.0.1:{dns_mgmt}").parse().unwrap(),
            Duration::from_secs(10),
        );
        let config = dir.join("pebble.json");
        let json = format!(
            r#"{{"pebble": {{"listenAddress": "{listen}", "managementListenAddress": "{management}",
              "certificate": "{cert}", "privateKey": "{key}", "httpPort": {http_port}, "tlsPort": {tls_port},
              "ocspResponderURL": "", "externalAccountBindingRequired": false{validity}}}}}"#,
            validity = validity
                .map(|v| format!(", \"certificateValidityPeriod\": {v}"))
                .unwrap_or_default(),
            cert = cert.display(),
            key = key.display(),
        );
        std::fs::write(&config, json).unwrap();
        let mut p = Pebble {
            directory: format!("https://{listen}/dir"),
            dir: dir.clone(),
            listener_root,
            listen,
            management,
            dns,
            config,
            pebble: None,
            va_sleep,
            _dns: dns_proc,
            log: dir.join("pebble.log"),
        };
        p.resume();
        p
    }

    /// (Re)start the Pebble process (its state is in memory: a restart forgets accounts).
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new("pebble");
        match self.va_sleep {
            None => command.env("PEBBLE_VA_NOSLEEP", "1"),
            Some(secs) => command.env("PEBBLE_VA_SLEEPTIME", secs.to_string()),
        };
        let child = command
            .args([
                "-config",
                self.config.to_str().unwrap(),
                "-dnsserver",
                &self.dns.to_string(),
            ])
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble (apt-get install pebble)");
        self.pebble = Some(Proc {
            child,
            log: self.log.clone(),
        });
        wait_for_port(self.listen, Duration::from_secs(10));
        wait_for_port(self.management, Duration::from_secs(10));
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.pebble.take() {
            p.kill();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// New orders Pebble received (its request log), since it was first started.
    pub fn orders(&self) -> usize {
        self.log_text().matches("POST /order-plz").count()
    }

    /// New accounts Pebble received.
    pub fn accounts(&self) -> usize {
        self.log_text().matches("POST /sign-me-up").count()
    }

    /// Pebble's current issuing root (changes when Pebble restarts).
    pub fn issuing_root(&self) -> openssl::x509::X509 {
        let out = Command::new("curl")
            .args(["-sS", "--cacert", self.listener_root.to_str().unwrap()])
            .arg(format!("https://{}/roots/0", self.management))
            .output()
            .expect("curl");
        openssl::x509::X509::from_pem(&out.stdout).expect("Pebble root")
    }

    /// YAML for `issuer:` using this Pebble with the given challenge preference.
    pub fn issuer_yaml(&self, challenges: &[&str]) -> String {
        format!(
            "issuer:\n  acme:\n    directory: {}\n    trusted_root: {}\n    contact: [\"ops@tenant.test\"]\n    challenges: [{}]\n    order_timeout: 20s\n",
            self.directory,
            self.listener_root.display(),
            challenges.join(", ")
        )
    }
}
