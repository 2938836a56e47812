//! The process's open-file limit (RLIMIT_NOFILE): read it, and raise the soft
//! limit to the hard one. Shared by `ringlb` (a balancer needs two descriptors per
//! proxied connection) and `ringlb-bench`. Process-wide side effect only: no
//! sockets, no logging; callers decide how to report a failure.

use std::io;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// `(soft, hard)` RLIMIT_NOFILE of this process.
pub fn nofile_limits() -> io::Result<(u64, u64)> {
    getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)
}

/// Raise the soft descriptor limit to the hard one (a balancer needs two per
/// proxied connection). Returns (before, after).
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = nofile_limits()?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    Ok((soft, hard.max(soft)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nofile_limit_is_raised() {
        let (_, soft) = raise_nofile_limit().expect("raise");
        let (now, hard) = nofile_limits().expect("limits");
        assert_eq!(soft, now);
        assert_eq!(now, hard);
    }
}
