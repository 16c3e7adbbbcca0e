//! The HTTPS client that talks to the CA, and how its errors are read.

use std::path::Path;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

use crate::certs::issuer::IssueError;

/// The HTTPS client for the CA. instant-acme's default client leaves Nagle's algorithm on, and
/// each JWS POST goes out as two writes (headers, then body): the body then waits for the
/// server's delayed ACK, about 40 ms per request and 7 requests per order. With `TCP_NODELAY` a
/// Pebble order takes ~20 ms instead of ~330 ms (measured with scripts/bench-issuance.sh).
pub fn http_client(
    trusted_root: Option<&Path>,
) -> Result<Box<dyn instant_acme::HttpClient>, IssueError> {
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use rustls_pki_types::pem::PemObject;

    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match trusted_root {
        Some(root) => {
            let fail = |e: String| {
                IssueError::Unreachable(format!("issuer.acme.trusted_root {}: {e}", root.display()))
            };
            let der = CertificateDer::from_pem_file(root).map_err(|e| fail(e.to_string()))?;
            let mut roots = rustls::RootCertStore::empty();
            roots.add(der).map_err(|e| fail(e.to_string()))?;
            builder.with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        }
        None => builder
            .try_with_platform_verifier()
            .map_err(|e| IssueError::Unreachable(format!("the system's root certificates: {e}")))?,
    };
    let https = builder
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let client: Client<_, instant_acme::BodyWrapper<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build(https);
    Ok(Box::new(client))
}

/// Turn an instant-acme error into "unreachable" (retry later) or "refused" (what the CA said).
pub fn classify(directory: &str, e: instant_acme::Error) -> IssueError {
    match e {
        instant_acme::Error::Api(problem) => IssueError::Refused(problem.to_string()),
        instant_acme::Error::Timeout(_) => {
            IssueError::Unreachable(format!("{directory}: the order did not complete in time"))
        }
        other => IssueError::Unreachable(format!("{directory}: {other}")),
    }
}
