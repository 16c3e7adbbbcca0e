//! Why an edge could not be built from its config.

use crate::certs::issuer::internal::CaError;
use crate::http::upstream::UpstreamError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{key}: {message}")]
    Source { key: &'static str, message: String },
    #[error("data_dir {path}: {message}")]
    DataDir { path: String, message: String },
    #[error("the internal CA: {0}")]
    Ca(#[from] CaError),
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("listener {addr}: {message}")]
    Listener { addr: String, message: String },
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}
