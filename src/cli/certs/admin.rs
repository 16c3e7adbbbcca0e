//! Talking to the running edge over its admin socket (`server::admin`): one command, one answer.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::server::admin::SOCKET;

/// Why the edge could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no edge answers on {0} (is it running with this data_dir?)")]
    NotRunning(String),
    #[error("the edge did not answer on {path}: {message}")]
    Io { path: String, message: String },
}

/// Send `command` to the edge whose data directory is `data_dir`; its answer line, which
/// starts with `ok ` or `error `.
pub fn ask(data_dir: &Path, command: &str, timeout: Duration) -> Result<String, AdminError> {
    let path = data_dir.join(SOCKET);
    let shown = path.display().to_string();
    let mut stream =
        UnixStream::connect(&path).map_err(|_| AdminError::NotRunning(shown.clone()))?;
    let io = |e: std::io::Error| AdminError::Io {
        path: shown.clone(),
        message: e.to_string(),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    Ok(answer.trim().to_string())
}
