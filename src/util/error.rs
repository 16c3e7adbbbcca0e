//! Error messages an operator can read.

/// An error and its causes, `outer: inner: innermost`. Drivers such as tokio-postgres and
/// reqwest put the useful part (the server's message, the refused address) in the source
/// chain; a cause whose text is already in the message is not repeated.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// An error of a remote backend (the shared PostgreSQL store), as the traits its users declare
/// see it: something to log with its message; the backend's own error type stays in the
/// backend.
pub type RemoteError = Box<dyn std::error::Error + Send + Sync + 'static>;
