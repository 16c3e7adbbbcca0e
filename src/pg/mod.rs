//! PostgreSQL plumbing shared by the allow-list source (`allow::database`) and the multi-host
//! store (`shared`): the connection pool, LISTEN, and the rules for talking about a server
//! (which errors are configuration errors, how a target is named without its password).
//!
//! No policy and no SQL of the features' own here. Every connection is hardened (`harden`) and
//! speaks TLS as its URL's `sslmode` asks (`connect_settings`).

pub mod listen;
pub mod pool;

use std::path::Path;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::config::SslMode;

/// Make a connection fail fast instead of hanging: TCP keepalive (a silently dead peer is
/// noticed within about a minute instead of never), `TCP_USER_TIMEOUT` (unacknowledged data),
/// and a server-side `statement_timeout` of `statement_timeout` (a query the client gave up on
/// does not keep running). Options already in the URL are kept.
pub fn harden(config: &mut tokio_postgres::Config, statement_timeout: Duration) {
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(30))
        .connect_timeout(statement_timeout.max(Duration::from_secs(1)));
    let ms = statement_timeout.as_millis().max(1);
    let options = match config.get_options() {
        Some(existing) if !existing.is_empty() => {
            format!("{existing} -c statement_timeout={ms}")
        }
        _ => format!("-c statement_timeout={ms}"),
    };
    config.options(options);
}

/// How much of the server's certificate is checked, from the URL's `sslmode` (libpq's
/// meanings): `disable` (no TLS), `allow`/`prefer` (the default: TLS when the server offers
/// it, unverified), `require` (TLS, unverified), `verify-ca` (TLS, chain verified),
/// `verify-full` (TLS, chain and host name verified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    Nothing,
    Chain,
    Full,
}

/// A parsed PostgreSQL URL and the TLS connector its `sslmode` asks for. `sslmode` and
/// `sslrootcert` are read here (tokio-postgres knows neither `verify-ca`/`verify-full` nor
/// `sslrootcert`); `root` (the config's `tls_root`) takes precedence over `sslrootcert`.
pub fn connect_settings(
    url: &str,
    root: Option<&Path>,
) -> Result<(tokio_postgres::Config, MakeTlsConnector), String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let mut mode = None;
    let mut url_root = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => mode = Some(v.to_string()),
            Some(("sslrootcert", v)) => url_root = Some(std::path::PathBuf::from(v)),
            _ => kept.push(pair),
        }
    }
    let (ssl_mode, verify) = match mode.as_deref() {
        None | Some("prefer") | Some("allow") => (SslMode::Prefer, Verify::Nothing),
        Some("disable") => (SslMode::Disable, Verify::Nothing),
        Some("require") => (SslMode::Require, Verify::Nothing),
        Some("verify-ca") => (SslMode::Require, Verify::Chain),
        Some("verify-full") => (SslMode::Require, Verify::Full),
        Some(other) => {
            return Err(format!(
            "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
        ))
        }
    };
    let rebuilt = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config: tokio_postgres::Config =
        rebuilt.parse().map_err(|e: tokio_postgres::Error| {
            format!(
            "not a PostgreSQL URL ({}); expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE",
            crate::util::error::chain(&e)
        )
        })?;
    if mode.is_some() {
        config.ssl_mode(ssl_mode);
    }
    let root = root.map(Path::to_path_buf).or(url_root);
    Ok((config, tls(verify, root.as_deref())?))
}

/// The TLS connector for `verify`, trusting `root` (PEM) or the system's roots.
fn tls(verify: Verify, root: Option<&Path>) -> Result<MakeTlsConnector, String> {
    let mut builder = SslConnector::builder(SslMethod::tls_client())
        .map_err(|e| format!("cannot set up TLS: {e}"))?;
    if let Some(root) = root {
        builder
            .set_ca_file(root)
            .map_err(|e| format!("cannot read {} as PEM certificates: {e}", root.display()))?;
    }
    if verify == Verify::Nothing {
        builder.set_verify(SslVerifyMode::NONE);
    }
    let mut connector = MakeTlsConnector::new(builder.build());
    if verify != Verify::Full {
        connector.set_callback(|config, _| {
            config.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(connector)
}

/// `host:port, user U, database D` from a parsed config (the password is never shown).
pub fn describe_target(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(h) => format!("{h}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}", path.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_string()
    } else {
        hosts.join(",")
    };
    let user = config.get_user().unwrap_or("(default user)");
    let dbname = config.get_dbname().unwrap_or(user);
    format!("{hosts} (user {user}, database {dbname})")
}

/// Errors that retrying will not fix: authentication (SQLSTATE class 28), a missing database
/// (3D), a query that does not fit the schema or lacks privileges (42), bad data (22). Anything
/// else (the server starting up or shutting down, too many connections, I/O) is an outage.
pub fn is_config_error(e: &tokio_postgres::Error) -> bool {
    e.code()
        .and_then(|code| code.code().get(..2))
        .is_some_and(|class| matches!(class, "28" | "3D" | "42" | "22"))
}

/// A URL that does not parse has no parsed password to redact: hide whatever sits between
/// `user:` and `@` in case the parser quoted it.
pub fn redact_url(url: &str, message: String) -> String {
    let secret = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|p| !p.is_empty());
    match secret {
        Some(secret) => message.replace(secret, "***"),
        None => message,
    }
}

/// `message` with every occurrence of the connection's password (if it has one) masked: driver
/// errors can quote the connection string.
pub fn redact_password(password: Option<&str>, message: String) -> String {
    match password {
        Some(password) if !password.is_empty() => message.replace(password, "***"),
        _ => message,
    }
}

/// The password of a parsed config, if it has a non-empty one (to redact it from messages).
pub fn password_of(config: &tokio_postgres::Config) -> Option<String> {
    config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            redact_password(Some("s3cret"), "auth failed for s3cret at s3cret@db".into()),
            "auth failed for *** at ***@db"
        );
        assert_eq!(redact_password(None, "as is".into()), "as is");
        assert_eq!(redact_password(Some(""), "as is".into()), "as is");
    }
}
