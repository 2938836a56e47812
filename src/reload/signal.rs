//! `ringlb reload`: ask a running ringlb to reload, by sending SIGHUP to the
//! process its pid file names. The result is in that process's log, `/status`
//! and `ringlb_reloads_total`, not here.

use std::path::{Path, PathBuf};

/// Why the reload request could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("reading pid file {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {text:?} is not a process id", path.display())]
    NotAPid { path: PathBuf, text: String },
    #[error("sending SIGHUP to pid {pid} (from {})", path.display())]
    Kill {
        pid: i32,
        path: PathBuf,
        source: nix::Error,
    },
}

/// The pid in `pid_file` (a positive number, whitespace around it allowed).
pub fn read_pid(pid_file: &Path) -> Result<i32, SignalError> {
    let text = std::fs::read_to_string(pid_file).map_err(|source| SignalError::Read {
        path: pid_file.to_path_buf(),
        source,
    })?;
    let pid: i32 =
        text.trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| SignalError::NotAPid {
                path: pid_file.to_path_buf(),
                text: text.trim().to_string(),
            })?;
    Ok(pid)
}

/// Send SIGHUP to the process named in `pid_file`; returns its pid.
pub fn send_reload(pid_file: &Path) -> Result<i32, SignalError> {
    let pid = read_pid(pid_file)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|source| SignalError::Kill {
        pid,
        path: pid_file.to_path_buf(),
        source,
    })?;
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_without_a_pid_is_refused_with_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ringlb.pid");
        for bad in ["", "abc\n", "-1\n", "0\n"] {
            std::fs::write(&p, bad).unwrap();
            let e = send_reload(&p).unwrap_err();
            assert!(matches!(e, SignalError::NotAPid { .. }), "{bad:?}: {e}");
            assert!(e.to_string().contains("is not a process id"), "{e}");
        }
        let e = send_reload(&dir.path().join("missing.pid")).unwrap_err();
        assert!(e.to_string().starts_with("reading pid file "), "{e}");
    }
}
