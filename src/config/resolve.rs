//! The one network lookup of config loading: node addresses written as
//! `host:port` are resolved here, once, at load time, through the system
//! resolver (`IP:port` needs no lookup). Also refuses addresses that cannot be a
//! backend (port 0, unspecified, multicast, broadcast). Opens no sockets.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// Resolve `IP:port` or `host:port` to one address (the first the resolver returns).
pub(super) fn resolve(text: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return check_node_addr(a, text);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} is not IP:port or host:port"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("{text:?} is not IP:port or host:port"));
    }
    // Only a plausible host name goes to the resolver: letters, digits, '-', '.',
    // '_' (an IPv6 address needs brackets: [2001:db8::1]:80).
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(format!(
            "{text:?} is not IP:port or host:port (IPv6 addresses are written [addr]:port)"
        ));
    }
    match text.to_socket_addrs() {
        Ok(mut it) => match it.next() {
            Some(a) => check_node_addr(a, text),
            None => Err(format!("{host:?} resolved to no address")),
        },
        Err(e) => Err(format!("cannot resolve {host:?}: {e}")),
    }
}

/// Fold `[::ffff:a.b.c.d]:p` to IPv4 and refuse what cannot be a backend.
fn check_node_addr(a: SocketAddr, text: &str) -> Result<SocketAddr, String> {
    // `[::ffff:a.b.c.d]:p` is the IPv4 node a.b.c.d:p.
    let a = SocketAddr::new(crate::ring::canonical_ip(a.ip()), a.port());
    if a.port() == 0 {
        return Err(format!("{text:?}: port 0 is not a valid backend port"));
    }
    if a.ip().is_unspecified() {
        return Err(format!(
            "{text:?}: {} is the unspecified address, not a backend",
            a.ip()
        ));
    }
    let unicast = match a.ip() {
        IpAddr::V4(v4) => !(v4.is_broadcast() || v4.is_multicast()),
        IpAddr::V6(v6) => !v6.is_multicast(),
    };
    if !unicast {
        return Err(format!("{text:?}: not a unicast address"));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use crate::config::tests::MIN;
    use crate::config::Config;

    #[test]
    fn ipv6_and_hostnames() {
        let text = MIN
            .replace("127.0.0.1:0", "[::1]:0")
            .replace("127.0.0.1:9001", "localhost:9001");
        let c = Config::parse(&text, "v6.toml").unwrap();
        assert!(c.listeners[0].listen.is_ipv6());
        assert_eq!(c.pools["web"].nodes[0].addr.port(), 9001);
        assert_eq!(c.pools["web"].nodes[0].name, "localhost:9001");
    }
}
