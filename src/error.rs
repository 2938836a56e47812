//! Typed errors of the library. `anyhow` lives only in `main.rs`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// One problem found while validating a config: the key path and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `pools.web.nodes[2].weight`.
    pub key: String,
    /// What is wrong with it, in words an operator can act on.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config file: {error}")]
    Io { path: PathBuf, error: io::Error },
    /// TOML syntax error, or a value of the wrong type / an unknown key.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// The file parsed but its values do not make a usable config.
    #[error("{path}: {n} problem{s}:\n{list}", n = problems.len(),
        s = if problems.len() == 1 { "" } else { "s" },
        list = problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// Every individual message, one per line, each naming the file.
    pub fn messages(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { path, problems } => problems
                .iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

/// Errors of the running balancer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("listener {listener}: cannot listen on {addr}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// Switching to the configured `user`/`group` failed: the process must not serve.
    #[error("cannot drop privileges: {what}")]
    Privilege { what: String },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// Errors that mean "this process or host is out of something" (descriptors,
/// buffers, memory), not that a peer misbehaved: back off, and never blame a node.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
