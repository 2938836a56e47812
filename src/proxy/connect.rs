//! Reaching a node for one client: pick the node for the client IP on the pool's
//! current snapshot, open a socket to it with `connect_timeout` (falling back to
//! the next distinct nodes along the ring, up to `connect_attempts`, skipping full
//! or over-bound ones without using an attempt), and send the PROXY header when
//! the pool asks for one. The node's place ([`Slot`]) is taken before the connect
//! and given back if it fails. Reports successes and failures to the pool
//! (passive health); never forwards.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{proxy_protocol, LOCAL_SHORTAGE_LOG};
use crate::admission::ListenerState;
use crate::config::{Keepalive, ProxyProtocol};
use crate::error::is_resource_exhaustion;
use crate::metrics::{ConnectFailure, RejectReason};
use crate::pool::{PoolSnapshot, Slot};
use crate::ring::canonical_ip;

/// Open a connection to `addr`: a non-blocking socket with `TCP_NODELAY`,
/// `connect`, then wait until it is writable. Whether it worked is read off the
/// readiness event: an error or hang-up means the connect failed, and only then
/// is `SO_ERROR` read for the reason. (tokio's `TcpStream::connect` reads
/// `SO_ERROR` after every connect: one syscall per connection, about 5% of a
/// short proxied connection's.)
async fn open(addr: SocketAddr, keepalive: Option<&Keepalive>) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_nodelay(true)?;
    if keepalive.is_some() {
        crate::keepalive::apply(SockRef::from(&socket), keepalive, false)?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    let ready = stream.ready(Interest::WRITABLE | Interest::ERROR).await?;
    if ready.is_error() || ready.is_write_closed() {
        return Err(stream.take_error()?.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed while connecting",
            )
        }));
    }
    Ok(stream)
}

/// Connect to the client's node, or the next ones along the ring. `None` when no
/// node could be reached or none had room (logged and counted here).
async fn connect(
    snapshot: &PoolSnapshot,
    peer: SocketAddr,
    ctx: &ListenerState,
    hard_stop: &CancellationToken,
) -> Option<(Slot, TcpStream, String)> {
    let mut failures = String::new();
    let listener = &ctx.config.name;
    let mut selection = snapshot.candidates(canonical_ip(peer.ip()));
    // Each slot is the node's place for this client; one dropped at the end of
    // an iteration (a failed connect) is given back at once.
    for slot in selection.by_ref() {
        let node = slot.node();
        node.metrics.attempts.increment(1);
        // Bounded by connect_timeout, so it is not raced against the shutdown
        // token (that would register a waiter on one shared token per connection);
        // the token is checked when the attempt ends.
        let result = tokio::time::timeout(
            snapshot.settings.connect_timeout,
            open(node.addr, snapshot.settings.tcp_keepalive.as_ref()),
        )
        .await;
        if hard_stop.is_cancelled() {
            info!(client = %peer, listener = %listener, reason = "shutdown", "connection closed before a node was reached");
            return None;
        }
        let failure = match result {
            Ok(Ok(stream)) => return Some((slot, stream, failures)),
            Ok(Err(e)) if is_resource_exhaustion(&e) => {
                // Our own shortage, not the node's fault: other nodes would fail the
                // same way, and passive health must not take healthy nodes down.
                ctx.metrics
                    .rejected(RejectReason::LocalResources)
                    .increment(1);
                if LOCAL_SHORTAGE_LOG.allow() {
                    warn!(error = %e, "cannot open connections to nodes: out of local resources; closing client connections (logged at most every 10s)");
                } else {
                    debug!(error = %e, "out of local resources; closed");
                }
                return None;
            }
            Ok(Err(e)) => (ConnectFailure::classify(&e), e.to_string()),
            Err(_) => (
                ConnectFailure::Timeout,
                format!(
                    "timeout after {}",
                    crate::config::fmt_duration(snapshot.settings.connect_timeout)
                ),
            ),
        };
        node.connect_failures.fetch_add(1, Ordering::Relaxed);
        node.metrics.failure(failure.0).increment(1);
        ctx.pool.connect_failed(node, &failure.1);
        debug!(node = %node.name, addr = %node.addr, reason = %failure.1, "connect failed");
        let _ = write!(
            failures,
            "{}{} ({}): {}",
            if failures.is_empty() { "" } else { "; " },
            node.name,
            node.addr,
            failure.1
        );
    }
    if failures.is_empty() && selection.saw_full() {
        // No node was tried: every one in service is at its max_connections.
        ctx.metrics.rejected(RejectReason::NodesFull).increment(1);
        ctx.pool.refused_full(listener, peer);
        return None;
    }
    ctx.metrics.rejected(RejectReason::NoNode).increment(1);
    warn!(client = %peer, listener = %listener, pool = %ctx.pool.name, tried = %failures,
        skipped_full_nodes = selection.saw_full(), "no node could be reached; closing client connection");
    None
}

/// Pick the client's nodes on the current ring and connect to the first that
/// answers (sending the pool's PROXY header first, if it has one). Returns the
/// node, the connection and the pool's idle timeout.
pub(super) async fn select_and_connect(
    client: &TcpStream,
    peer: SocketAddr,
    dst: Option<SocketAddr>,
    ctx: &ListenerState,
    hard_stop: &CancellationToken,
) -> Option<(Slot, TcpStream, std::time::Duration)> {
    let snapshot = ctx.pool.snapshot();
    if snapshot.members.is_empty() {
        // Every node is down and the pool says reject: logged once per transition
        // by the pool, counted here.
        ctx.metrics.rejected(RejectReason::AllDown).increment(1);
        debug!("all nodes down; closed");
        return None;
    }
    let (slot, mut upstream, failures) = connect(&snapshot, peer, ctx, hard_stop).await?;
    let node = slot.node();
    ctx.pool.connect_succeeded(node);
    ctx.pool.placed();
    let version = snapshot.settings.proxy_protocol;
    if version != ProxyProtocol::Off {
        let dst = match dst {
            Some(d) => d,
            None => client.local_addr().unwrap_or(peer),
        };
        let header = proxy_protocol::encode(version, peer, dst);
        if let Err(e) = upstream.write_all(&header).await {
            warn!(client = %peer, node = %node.name, error = %e, "could not send the PROXY header to the node; closing");
            return None;
        }
    }
    if !failures.is_empty() {
        info!(client = %peer, listener = %ctx.config.name, node = %node.name, tried = %failures, "connected to a fallback node");
    }
    Some((slot, upstream, snapshot.settings.idle_timeout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn open_connects_with_nodelay_and_bytes_flow() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (stream, accepted) = tokio::join!(open(addr, None), l.accept());
        let mut stream = stream.unwrap();
        let (mut peer, _) = accepted.unwrap();
        assert!(stream.nodelay().unwrap());
        assert!(!SockRef::from(&stream).keepalive().unwrap());
        assert_eq!(stream.peer_addr().unwrap(), addr);
        stream.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn open_reports_a_refused_connect_with_its_reason() {
        // A port that was just free: nothing listens there.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let e = open(addr, None).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        assert_eq!(ConnectFailure::classify(&e), ConnectFailure::Refused);
    }

    /// A listener state over one pool of one node at `addr`, with
    /// `max_connections = 1`.
    fn one_slot(addr: SocketAddr, attempts: u32) -> ListenerState {
        let cfg = crate::Config::parse(
            &format!(
                "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
                 [pools.p]\nconnect_attempts = {attempts}\nconnect_timeout = \"2s\"\n\
                 [pools.p.health]\nkind = \"none\"\n\
                 [[pools.p.nodes]]\nname = \"capped\"\naddr = \"{addr}\"\nmax_connections = 1\n"
            ),
            "c.toml",
        )
        .unwrap();
        let pool = std::sync::Arc::new(crate::pool::Pool::new(&cfg.pools["p"]));
        ListenerState::new(cfg.listeners[0].clone(), pool)
    }

    fn closed_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn a_failed_connect_gives_its_place_back() {
        let dead = closed_port();
        let ctx = one_slot(dead, 1);
        let node = ctx.pool.node("capped").unwrap();
        let stop = CancellationToken::new();
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        for _ in 0..3 {
            // Refused: the place taken for the attempt is free again, so the
            // next client tries the node again instead of finding it full.
            assert!(connect(&ctx.pool.snapshot(), peer, &ctx, &stop)
                .await
                .is_none());
            assert_eq!(node.active.load(Ordering::Relaxed), 0);
            assert!(!node.is_full());
        }
        assert_eq!(node.connect_failures.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_node_at_its_cap_is_not_tried_and_a_freed_place_is_taken() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ctx = one_slot(l.local_addr().unwrap(), 2);
        let node = ctx.pool.node("capped").unwrap();
        let stop = CancellationToken::new();
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let (slot, _stream, tried) = connect(&ctx.pool.snapshot(), peer, &ctx, &stop)
            .await
            .expect("the node has room");
        assert!(tried.is_empty());
        assert_eq!(slot.name, "capped");
        assert_eq!(node.active.load(Ordering::Relaxed), 1);
        // Full: refused without a connect (the attempt counter would say).
        assert!(connect(&ctx.pool.snapshot(), peer, &ctx, &stop)
            .await
            .is_none());
        assert_eq!(node.active.load(Ordering::Relaxed), 1);
        assert_eq!(node.connect_failures.load(Ordering::Relaxed), 0);
        drop(slot);
        assert_eq!(node.active.load(Ordering::Relaxed), 0);
        let again = connect(&ctx.pool.snapshot(), peer, &ctx, &stop).await;
        assert_eq!(
            again.map(|(s, _, _)| s.name.clone()).as_deref(),
            Some("capped")
        );
    }

    #[tokio::test]
    async fn open_sets_the_pools_keepalive() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let k = Keepalive {
            idle: Some(std::time::Duration::from_secs(11)),
            interval: Some(std::time::Duration::from_secs(4)),
            count: Some(3),
        };
        let (stream, accepted) = tokio::join!(open(addr, Some(&k)), l.accept());
        let (stream, _peer) = (stream.unwrap(), accepted.unwrap());
        let s = SockRef::from(&stream);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.keepalive_time().unwrap().as_secs(), 11);
        assert_eq!(s.keepalive_interval().unwrap().as_secs(), 4);
        assert_eq!(s.keepalive_retries().unwrap(), 3);
    }
}
