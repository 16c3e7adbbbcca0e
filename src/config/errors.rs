//! What is wrong with a configuration file: every problem, each with its key path and value.

use std::fmt;

/// One problem in the file: where, what was there, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub value: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(top level)"
        } else {
            &self.path
        };
        match &self.value {
            Some(v) => write!(f, "{path}: {} (got {v})", self.message),
            None => write!(f, "{path}: {}", self.message),
        }
    }
}

/// Every problem found in a file, in document order.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error(s) in {}:", self.errors.len(), self.file)?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// True when some error is about `path` (exactly).
    pub fn mentions(&self, path: &str) -> bool {
        self.errors.iter().any(|e| e.path == path)
    }
}
