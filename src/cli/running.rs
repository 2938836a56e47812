//! What `ringlb check` says about a running instance of the config it checked:
//! the pid in the config's `pid_file`, and, through the admin endpoint's
//! `/status` (when the config has one), when that process started and which
//! process it took over from in an upgrade. One short request, one second at
//! most; a missing pid file says nothing.

use std::time::Duration;

use serde::Deserialize;

use crate::admin::client::{reach, request};
use crate::config::Config;

#[derive(Debug, Deserialize)]
struct Doc {
    process: Process,
}

#[derive(Debug, Deserialize)]
struct Process {
    pid: u32,
    version: String,
    started: String,
    upgraded_from: Option<Upgraded>,
}

#[derive(Debug, Deserialize)]
struct Upgraded {
    pid: u32,
    at: String,
    takeover_ms: u64,
}

/// One line about the instance the config's pid file names, or `None` when the
/// config has no pid file or the file does not exist.
pub fn running_instance(cfg: &Config) -> Option<String> {
    use crate::reload::signal::{read_pid, SignalError};
    let path = cfg.pid_file.as_ref()?;
    let pid = match read_pid(path) {
        Ok(pid) => pid,
        Err(SignalError::Read { .. }) => return None,
        Err(e) => return Some(format!("  {e}")),
    };
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
        == Err(nix::errno::Errno::ESRCH)
    {
        return Some(format!(
            "  pid file {} names pid {pid}, which is not running (stale file)",
            path.display()
        ));
    }
    let Some(admin) = &cfg.admin else {
        return Some(format!(
            "  running: pid {pid} (from {}); no [admin] endpoint to ask when it started",
            path.display()
        ));
    };
    let asked = request(
        reach(admin.listen),
        "GET",
        "/status",
        admin.token.as_ref(),
        Duration::from_secs(1),
    );
    let doc = match asked {
        Ok((200, body)) => serde_json::from_str::<Doc>(&body).map_err(|e| e.to_string()),
        Ok((code, _)) => Err(format!("/status answered {code}")),
        Err(e) => Err(e.to_string()),
    };
    Some(match doc {
        Ok(d) => describe(pid, &d.process),
        Err(why) => format!(
            "  running: pid {pid} (from {}); its admin endpoint {} did not answer: {why}",
            path.display(),
            admin.listen
        ),
    })
}

fn describe(pid: i32, p: &Process) -> String {
    let mut s = format!(
        "  running: pid {} (version {}), started {}",
        p.pid, p.version, p.started
    );
    match &p.upgraded_from {
        Some(u) => s.push_str(&format!(
            "; took over from pid {} at {} in {} ms",
            u.pid, u.at, u.takeover_ms
        )),
        None => s.push_str("; started fresh (no upgrade)"),
    }
    if i64::from(p.pid) != i64::from(pid) {
        s.push_str(&format!(" [the pid file names pid {pid}]"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_the_process_and_its_predecessor() {
        let p = Process {
            pid: 12,
            version: "0.1.0".into(),
            started: "2026-12-02T00:00:00Z".into(),
            upgraded_from: Some(Upgraded {
                pid: 11,
                at: "2026-12-02T00:00:01Z".into(),
                takeover_ms: 7,
            }),
        };
        assert_eq!(
            describe(12, &p),
            "  running: pid 12 (version 0.1.0), started 2026-12-02T00:00:00Z; took over from pid 11 at 2026-12-02T00:00:01Z in 7 ms"
        );
        let fresh = Process {
            upgraded_from: None,
            ..p
        };
        assert!(describe(13, &fresh)
            .ends_with("; started fresh (no upgrade) [the pid file names pid 13]"));
    }
}
