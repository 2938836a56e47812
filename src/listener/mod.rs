//! Listening sockets (socket2: SO_REUSEADDR, SO_REUSEPORT groups, backlog, explicit
//! IPV6_V6ONLY, keepalive inherited by accepted sockets), and in [`accept`] the
//! accept loop; in [`inherited`] the sockets a previous process handed over in an
//! upgrade. Who may connect is [`admission`](crate::admission)'s decision;
//! what a connection does is the handler's (the proxy): this module names neither
//! the pool nor the proxy.

pub mod accept;
pub mod inherited;

pub use accept::{AcceptErrors, AcceptLoop};
pub use inherited::{adopt, Inherited, InheritedListener};

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::ListenerConfig;
use crate::error::Error;

/// A listener's bound, listening sockets: one per worker (see `workers.rs`),
/// non-blocking, not yet registered with any event loop (each accept loop
/// registers its own).
#[derive(Debug)]
pub struct BoundListener {
    pub config: ListenerConfig,
    pub local_addr: SocketAddr,
    pub sockets: Vec<std::net::TcpListener>,
}

/// Create, configure and bind a listener's sockets: `sockets` of them (one per
/// worker, at least one).
///
/// With more than one, they form an `SO_REUSEPORT` group on the same address,
/// and the kernel spreads new connections over them by a hash of the
/// connection's addresses and ports (nginx's `reuseport`, HAProxy's shards,
/// Envoy's default): every worker accepts from its own queue, so none waits on
/// another, and the connections of a busy listener split about evenly. A group
/// would also let another process of the same user join the port silently, so
/// the address is first bound once without `SO_REUSEPORT`: if anything already
/// listens there, binding fails with "address in use" as it does with one socket.
pub fn bind(config: &ListenerConfig, sockets: usize) -> Result<BoundListener, Error> {
    let addr = config.listen;
    let err = |source| Error::Bind {
        listener: config.name.clone(),
        addr,
        source,
    };
    let group = sockets > 1;
    if group && addr.port() != 0 {
        // Bound, never listening (so no client can be queued on it), closed at
        // once; the group's first socket takes its place.
        drop(socket_on(config, addr, false).map_err(err)?);
    }
    let first = listening_socket(config, addr, group).map_err(err)?;
    let local_addr = first.local_addr().map_err(err)?;
    let mut all = Vec::with_capacity(sockets.max(1));
    all.push(first);
    for _ in 1..sockets {
        // Port 0 was resolved by the first socket: the others join its port.
        all.push(listening_socket(config, local_addr, true).map_err(err)?);
    }
    Ok(BoundListener {
        config: config.clone(),
        local_addr,
        sockets: all,
    })
}

/// A bound (not yet listening) socket with the listener's options.
fn socket_on(config: &ListenerConfig, addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(config.ipv6_only)?;
    }
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

fn listening_socket(
    config: &ListenerConfig,
    addr: SocketAddr,
    reuse_port: bool,
) -> io::Result<std::net::TcpListener> {
    let socket = socket_on(config, addr, reuse_port)?;
    // Accepted sockets inherit it (see `keepalive.rs`).
    crate::keepalive::apply(
        socket2::SockRef::from(&socket),
        config.tcp_keepalive.as_ref(),
        false,
    )?;
    socket.listen(config.backlog as i32)?;
    Ok(socket.into())
}

/// Set a new accept queue length on a listening socket (Linux applies a second
/// `listen()` call to the queue of the same socket).
pub fn set_backlog(listener: &std::net::TcpListener, backlog: u32) -> io::Result<()> {
    socket2::SockRef::from(listener).listen(backlog as i32)
}
