//! TCP keepalive on client and node sockets (`tcp_keepalive` of a listener or
//! a pool): HAProxy's `option clitcpka` / `srvtcpka`, nginx's `so_keepalive`.
//!
//! On a listener it is set on the listening sockets: Linux copies
//! `SO_KEEPALIVE` and the three times to every socket accepted from them, so a
//! client connection costs no extra syscall. A reload sets the listening
//! sockets again (new connections follow, open ones keep theirs). On a pool it
//! is set on each node socket before its connect.

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

use crate::config::Keepalive;

/// The kernel's settings for the ones a config leaves out
/// (`net.ipv4.tcp_keepalive_time`, `_intvl`, `_probes` of this network
/// namespace); `None` where they cannot be read.
pub fn kernel_defaults() -> Keepalive {
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Keepalive {
        idle: read("tcp_keepalive_time").map(Duration::from_secs),
        interval: read("tcp_keepalive_intvl").map(Duration::from_secs),
        count: read("tcp_keepalive_probes").and_then(|c| u32::try_from(c).ok()),
    }
}

/// Turn keepalive on with `k`'s settings (left-out ones: the kernel's
/// defaults), or off for `None`.
///
/// `reset`: a socket that may hold explicit times from an earlier setting (a
/// listening socket at a reload) gets the kernel's current values written for
/// the left-out ones; a fresh socket leaves them unset (same effect, fewer
/// syscalls).
pub fn apply(socket: SockRef<'_>, k: Option<&Keepalive>, reset: bool) -> io::Result<()> {
    apply_with(socket, k, reset.then(kernel_defaults).as_ref())
}

/// [`apply`] with the kernel's defaults given (`None`: no reset).
fn apply_with(
    socket: SockRef<'_>,
    k: Option<&Keepalive>,
    reset: Option<&Keepalive>,
) -> io::Result<()> {
    let Some(k) = k else {
        return socket.set_keepalive(false);
    };
    let fill = if let Some(kernel) = reset {
        for (left_out, known, name) in [
            (
                k.idle.is_none(),
                kernel.idle.is_some(),
                "tcp_keepalive_time",
            ),
            (
                k.interval.is_none(),
                kernel.interval.is_some(),
                "tcp_keepalive_intvl",
            ),
            (
                k.count.is_none(),
                kernel.count.is_some(),
                "tcp_keepalive_probes",
            ),
        ] {
            if left_out && !known {
                // The socket would keep its earlier explicit value while the
                // config says "the kernel's": refuse rather than pretend.
                return Err(io::Error::other(format!(
                    "cannot read the kernel's default from /proc/sys/net/ipv4/{name}; give the value in the config"
                )));
            }
        }
        *kernel
    } else {
        Keepalive::default()
    };
    let mut ka = TcpKeepalive::new();
    if let Some(idle) = k.idle.or(fill.idle) {
        ka = ka.with_time(idle);
    }
    if let Some(interval) = k.interval.or(fill.interval) {
        ka = ka.with_interval(interval);
    }
    if let Some(count) = k.count.or(fill.count) {
        ka = ka.with_retries(count);
    }
    socket.set_tcp_keepalive(&ka)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(s: &socket2::Socket) -> (bool, Duration, Duration, u32) {
        (
            s.keepalive().unwrap(),
            s.keepalive_time().unwrap(),
            s.keepalive_interval().unwrap(),
            s.keepalive_retries().unwrap(),
        )
    }

    fn socket() -> socket2::Socket {
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap()
    }

    #[test]
    fn sets_every_given_setting_and_turns_off() {
        let s = socket();
        let k = Keepalive {
            idle: Some(Duration::from_secs(7)),
            interval: Some(Duration::from_secs(3)),
            count: Some(4),
        };
        apply(SockRef::from(&s), Some(&k), false).unwrap();
        assert_eq!(
            get(&s),
            (true, Duration::from_secs(7), Duration::from_secs(3), 4)
        );
        apply(SockRef::from(&s), None, false).unwrap();
        assert!(!s.keepalive().unwrap());
    }

    #[test]
    fn left_out_settings_are_the_kernels_and_reset_restores_them() {
        let kernel = kernel_defaults();
        let (Some(idle), Some(interval), Some(count)) =
            (kernel.idle, kernel.interval, kernel.count)
        else {
            eprintln!("skipped: /proc/sys/net/ipv4/tcp_keepalive_* not readable");
            return;
        };
        // A fresh socket with keepalive on and nothing given reports the
        // kernel's defaults.
        let s = socket();
        apply(SockRef::from(&s), Some(&Keepalive::default()), false).unwrap();
        assert_eq!(get(&s), (true, idle, interval, count));
        // Explicit times, then a setting that leaves them out with reset: the
        // kernel's values are back.
        let k = Keepalive {
            idle: Some(Duration::from_secs(5)),
            interval: Some(Duration::from_secs(2)),
            count: Some(2),
        };
        apply(SockRef::from(&s), Some(&k), true).unwrap();
        let only_idle = Keepalive {
            idle: Some(Duration::from_secs(9)),
            ..Keepalive::default()
        };
        apply(SockRef::from(&s), Some(&only_idle), true).unwrap();
        assert_eq!(get(&s), (true, Duration::from_secs(9), interval, count));
    }

    #[test]
    fn a_reset_without_the_kernels_values_is_refused_and_changes_nothing() {
        let s = socket();
        let k = Keepalive {
            idle: Some(Duration::from_secs(5)),
            interval: Some(Duration::from_secs(2)),
            count: Some(2),
        };
        apply(SockRef::from(&s), Some(&k), false).unwrap();
        // /proc/sys unreadable (a masked container): the left-out interval
        // cannot be reset, so nothing is changed and the caller is told.
        let unreadable = Keepalive::default();
        let only_idle = Keepalive {
            idle: Some(Duration::from_secs(9)),
            ..Keepalive::default()
        };
        let e = apply_with(SockRef::from(&s), Some(&only_idle), Some(&unreadable)).unwrap_err();
        assert!(e.to_string().contains("tcp_keepalive_intvl"), "{e}");
        assert_eq!(
            get(&s),
            (true, Duration::from_secs(5), Duration::from_secs(2), 2)
        );
        // Every key given: nothing to read, so it works.
        apply_with(SockRef::from(&s), Some(&k), Some(&unreadable)).unwrap();
    }
}
