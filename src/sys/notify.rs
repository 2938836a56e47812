//! The service manager's notify protocol (`sd_notify(3)`): one datagram of
//! `KEY=value` lines to the unix socket named by `NOTIFY_SOCKET` (a path, or an
//! abstract name written `@name`). A few lines over a std `UnixDatagram`, so the
//! tests can aim it at a socket of their own without touching the environment.
//! Without that variable (not started by systemd with `Type=notify`) every call is
//! a no-op. A send that fails (the socket went away) is logged once and never
//! stops the balancer.
//!
//! What ringlb sends and when: [`ready`] once every listener accepts (and again
//! after each reload), [`reloading`] when a reload starts, [`stopping`] when a
//! stop starts, [`main_pid`] from the old process when an upgrade hands over to the
//! new one, and [`status`] lines for the operator's `systemctl status`.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{debug, warn};

/// The socket the service manager listens on, if any.
fn socket() -> Option<OsString> {
    std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty())
}

/// Whether the service manager listens (`NOTIFY_SOCKET` is set).
pub fn enabled() -> bool {
    socket().is_some()
}

/// Send `message` (newline-separated `KEY=value` lines) as one datagram to `target`.
pub fn send_to(target: &OsStr, message: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = target.as_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(message.as_bytes(), &addr)?
    } else {
        sock.send_to(message.as_bytes(), target)?
    };
    if sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notify datagram cut short",
        ));
    }
    Ok(())
}

fn send(message: String) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let Some(target) = socket() else {
        return;
    };
    match send_to(&target, &message) {
        Ok(()) => {
            debug!(message = %message.trim_end().replace('\n', " "), "notified the service manager")
        }
        Err(e) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                warn!(error = %e, socket = ?target,
                    "cannot notify the service manager (NOTIFY_SOCKET); going on without it (logged once)");
            }
        }
    }
}

/// A `STATUS=` line: one line, whatever the caller passed.
fn status_line(s: &str) -> String {
    format!("STATUS={}\n", s.replace('\n', " "))
}

/// The message [`ready`] sends.
pub fn ready_message(status: &str) -> String {
    format!("READY=1\n{}", status_line(status))
}

/// The message [`reloading`] sends (systemd wants `MONOTONIC_USEC` beside
/// `RELOADING=1`, to tell this reload from an older one).
pub fn reloading_message(status: &str) -> String {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    format!(
        "RELOADING=1\nMONOTONIC_USEC={usec}\n{}",
        status_line(status)
    )
}

/// `READY=1` and a status line: the balancer accepts connections.
pub fn ready(status: &str) {
    send(ready_message(status));
}

/// `RELOADING=1` and a status line: a reload has begun ([`ready`] follows).
pub fn reloading(status: &str) {
    send(reloading_message(status));
}

/// `STOPPING=1` and a status line: the drain has begun.
pub fn stopping(status: &str) {
    send(format!("STOPPING=1\n{}", status_line(status)));
}

/// `MAINPID=` of the process that took over, and a status line.
pub fn main_pid(pid: u32, status: &str) {
    send(format!("MAINPID={pid}\n{}", status_line(status)));
}

/// A `STATUS=` line only.
pub fn status(status: &str) {
    send(status_line(status));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 1024];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn messages_reach_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        send_to(path.as_os_str(), &ready_message("serving\n1 listener")).unwrap();
        assert_eq!(recv(&sock), "READY=1\nSTATUS=serving 1 listener\n");
        let r = reloading_message("reloading");
        send_to(path.as_os_str(), &r).unwrap();
        let got = recv(&sock);
        assert!(got.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{got}");
        assert!(got.ends_with("\nSTATUS=reloading\n"), "{got}");

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("ringlb-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abs = UnixDatagram::bind_addr(&addr).unwrap();
        abs.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        send_to(OsStr::new(&format!("@{name}")), "STOPPING=1\n").unwrap();
        assert_eq!(recv(&abs), "STOPPING=1\n");

        // A socket that went away: an error for the caller, never a panic.
        drop(sock);
        std::fs::remove_file(&path).unwrap();
        assert!(send_to(path.as_os_str(), "READY=1\n").is_err());
    }
}
