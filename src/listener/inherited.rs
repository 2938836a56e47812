//! Listening sockets a previous ringlb process handed over in a binary upgrade
//! (see [`upgrade`](crate::upgrade)): kept open, never rebound, so the kernel's
//! accept queues (and every SYN in them) carry over. [`Inherited::take`] matches
//! them to the new config's listeners, [`adopt`] applies the listener's options to
//! them. No I/O beyond socket options.

use std::net::SocketAddr;

use socket2::SockRef;

use super::BoundListener;
use crate::config::ListenerConfig;
use crate::error::Error;

/// One listener of the previous process: its name and configured `listen`
/// address (port 0 stays 0 here), and every socket of it (one per worker there).
#[derive(Debug)]
pub struct InheritedListener {
    pub name: String,
    pub listen: SocketAddr,
    pub sockets: Vec<std::net::TcpListener>,
}

/// Every socket handed over, before the new config has claimed them.
#[derive(Debug, Default)]
pub struct Inherited {
    pub listeners: Vec<InheritedListener>,
    /// The admin socket and its configured `listen` address.
    pub admin: Option<(SocketAddr, std::net::TcpListener)>,
}

impl Inherited {
    /// The sockets of the old listener that `config` continues: the one with the
    /// same name and `listen` address, else (a renamed listener) the one with the
    /// same `listen` address when that address has a fixed port.
    pub fn take(&mut self, config: &ListenerConfig) -> Option<Vec<std::net::TcpListener>> {
        let same = |l: &InheritedListener| l.listen == config.listen;
        let i = self
            .listeners
            .iter()
            .position(|l| same(l) && l.name == config.name)
            .or_else(|| {
                (config.listen.port() != 0)
                    .then(|| self.listeners.iter().position(same))
                    .flatten()
            })?;
        Some(self.listeners.swap_remove(i).sockets)
    }

    /// The old admin socket, if the new config's admin `listen` is the same.
    pub fn take_admin(&mut self, listen: SocketAddr) -> Option<std::net::TcpListener> {
        match &self.admin {
            Some((l, _)) if *l == listen => self.admin.take().map(|(_, s)| s),
            _ => None,
        }
    }

    /// The names of old listeners the new config does not continue (their sockets
    /// close when both processes have let go of them).
    pub fn unclaimed(&self) -> Vec<String> {
        self.listeners.iter().map(|l| l.name.clone()).collect()
    }
}

/// Make handed-over sockets the listener `config` describes: non-blocking, the
/// configured backlog and keepalive (options a bound socket can still change).
/// `ipv6_only` cannot change on a bound socket; a change needs a restart (warned).
pub fn adopt(
    config: &ListenerConfig,
    sockets: Vec<std::net::TcpListener>,
) -> Result<BoundListener, Error> {
    let err = |source| Error::Bind {
        listener: config.name.clone(),
        addr: config.listen,
        source,
    };
    let Some(first) = sockets.first() else {
        return Err(err(std::io::Error::other(
            "the previous process handed over no socket for this listener",
        )));
    };
    let local_addr = first.local_addr().map_err(err)?;
    for s in &sockets {
        s.set_nonblocking(true).map_err(err)?;
        let r = SockRef::from(s);
        crate::keepalive::apply(SockRef::from(s), config.tcp_keepalive.as_ref(), true)
            .map_err(err)?;
        super::set_backlog(s, config.backlog).map_err(err)?;
        if local_addr.is_ipv6() && r.only_v6().map_err(err)? != config.ipv6_only {
            tracing::warn!(listener = %config.name, addr = %local_addr,
                "ipv6_only changed: a socket taken over from the previous process keeps its old setting until a restart");
        }
    }
    Ok(BoundListener {
        config: config.clone(),
        local_addr,
        sockets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn listeners(text: &str) -> Vec<ListenerConfig> {
        let base = r#"
[pools.p]
nodes = [{ name = "a", addr = "127.0.0.1:1" }]
"#;
        Config::parse(&format!("{text}{base}"), "t.toml")
            .unwrap()
            .listeners
    }

    fn socket() -> std::net::TcpListener {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap()
    }

    #[test]
    fn listeners_match_by_name_and_address_then_by_fixed_address() {
        let mut inh = Inherited {
            listeners: vec![
                InheritedListener {
                    name: "zero".into(),
                    listen: "127.0.0.1:0".parse().unwrap(),
                    sockets: vec![socket(), socket()],
                },
                InheritedListener {
                    name: "old-name".into(),
                    listen: "127.0.0.1:7".parse().unwrap(),
                    sockets: vec![socket()],
                },
                InheritedListener {
                    name: "gone".into(),
                    listen: "127.0.0.1:8".parse().unwrap(),
                    sockets: vec![socket()],
                },
            ],
            admin: None,
        };
        let cfg = listeners(
            r#"
[[listener]]
name = "other-zero"
listen = "127.0.0.1:0"
pool = "p"
[[listener]]
name = "zero"
listen = "127.0.0.1:0"
pool = "p"
[[listener]]
name = "renamed"
listen = "127.0.0.1:7"
pool = "p"
"#,
        );
        // Port 0 only matches by name too: another :0 listener gets a new socket.
        assert!(inh.take(&cfg[0]).is_none());
        assert_eq!(inh.take(&cfg[1]).unwrap().len(), 2);
        assert_eq!(inh.take(&cfg[2]).unwrap().len(), 1);
        assert_eq!(inh.unclaimed(), vec!["gone".to_string()]);
    }

    #[test]
    fn adopt_keeps_the_socket_and_its_address() {
        let cfg = listeners(
            r#"
[[listener]]
name = "l"
listen = "127.0.0.1:0"
pool = "p"
backlog = 64
"#,
        );
        let s = socket();
        let addr = s.local_addr().unwrap();
        let b = adopt(&cfg[0], vec![s]).unwrap();
        assert_eq!(b.local_addr, addr);
        // Still listening: a client connects.
        std::net::TcpStream::connect(addr).unwrap();
        assert!(adopt(&cfg[0], Vec::new()).is_err());
    }
}
