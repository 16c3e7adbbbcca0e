//! PostgreSQL plumbing shared by the allow-list source (`allow::database`) and the multi-host
//! store (`shared`): the connection pool, LISTEN, and the rules for talking about a server
//! (which errors are configuration errors, how a target is named without its password).
//!
//! No policy and no SQL of the features' own here.

pub mod listen;
pub mod pool;

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
