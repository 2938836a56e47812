//! One client connection: pick the node for the client IP on the current ring,
//! connect with `connect_timeout` (falling back to the next distinct nodes along the
//! ring, up to `connect_attempts`), then forward until done. Ends with one INFO event.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use tokio::io::AsyncWriteExt;

use crate::config::{Keepalive, ProxyProtocol};
use crate::error::is_resource_exhaustion;
use crate::forward::{self, End, Meters};
use crate::listener::{Admission, ListenerState};
use crate::metrics::{ConnectFailure, RejectReason};
use crate::pool::{Node, PoolSnapshot};
use crate::ring::canonical_ip;

static LOCAL_SHORTAGE_LOG: RateLimit = RateLimit::new(10);
static PROXY_HEADER_LOG: RateLimit = RateLimit::new(10);

/// Allows one event per period (seconds), process-wide, without a lock.
struct RateLimit {
    period_secs: u64,
    last: AtomicU64,
}

impl RateLimit {
    const fn new(period_secs: u64) -> Self {
        RateLimit {
            period_secs,
            last: AtomicU64::new(0),
        }
    }

    fn allow(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now >= last + self.period_secs)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Decrements a counter when dropped, whatever way the task ends.
struct ActiveGuard<'a> {
    count: &'a AtomicU64,
    gauge: &'a metrics::Gauge,
}

impl<'a> ActiveGuard<'a> {
    fn new(count: &'a AtomicU64, gauge: &'a metrics::Gauge) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        gauge.increment(1.0);
        ActiveGuard { count, gauge }
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.gauge.decrement(1.0);
    }
}

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
/// node could be reached (logged and counted here).
async fn connect(
    snapshot: &PoolSnapshot,
    peer: SocketAddr,
    ctx: &ListenerState,
    hard_stop: &CancellationToken,
) -> Option<(Arc<Node>, TcpStream, String)> {
    let mut failures = String::new();
    let listener = &ctx.config.name;
    for node in snapshot.candidates(canonical_ip(peer.ip())) {
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
            info!(client = %peer, listener = %listener, reason = "cancelled", "connection closed before a node was reached");
            return None;
        }
        let failure = match result {
            Ok(Ok(stream)) => return Some((node.clone(), stream, failures)),
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
    ctx.metrics.rejected(RejectReason::NoNode).increment(1);
    warn!(client = %peer, listener = %listener, pool = %ctx.pool.name, tried = %failures, "no node could be reached; closing client connection");
    None
}

/// A trusted proxy's connection: read its PROXY header, then judge the client it
/// names by the listener's access rules. Returns the client and the address it
/// connected to (`None`: the header carried none, the proxy's own connection).
async fn proxy_header(
    client: &TcpStream,
    peer: SocketAddr,
    admission: &mut Admission,
) -> Option<(SocketAddr, Option<SocketAddr>)> {
    let ctx = admission.state();
    let within = ctx.config.proxy_header_timeout;
    let listener = ctx.config.name.clone();
    match crate::proxy_protocol::read_header(client, within).await {
        Ok(Some((src, dst))) => {
            if let Err(reason) = admission.admit_client(src.ip()) {
                debug!(client = %src, proxy = %peer, listener = %listener, reason = reason.as_str(), "client refused");
                return None;
            }
            Some((src, Some(dst)))
        }
        Ok(None) => Some((peer, None)),
        Err(e) => {
            ctx.metrics.rejected(RejectReason::ProxyHeader).increment(1);
            if PROXY_HEADER_LOG.allow() {
                warn!(proxy = %peer, listener = %listener, error = %e, "refusing a connection from a trusted proxy: no valid PROXY header (logged at most every 10s; counted as reason=\"proxy_header\")");
            } else {
                debug!(proxy = %peer, listener = %listener, error = %e, "no valid PROXY header");
            }
            None
        }
    }
}

/// Pick the client's nodes on the current ring and connect to the first that
/// answers (sending the pool's PROXY header first, if it has one). Returns the
/// node, the connection and the pool's idle timeout.
async fn select_and_connect(
    client: &TcpStream,
    peer: SocketAddr,
    dst: Option<SocketAddr>,
    ctx: &ListenerState,
    hard_stop: &CancellationToken,
) -> Option<(Arc<Node>, TcpStream, std::time::Duration)> {
    let snapshot = ctx.pool.snapshot();
    if snapshot.members.is_empty() {
        // Every node is down and the pool says reject: logged once per transition
        // by the pool, counted here.
        ctx.metrics.rejected(RejectReason::AllDown).increment(1);
        debug!("all nodes down; closed");
        return None;
    }
    let (node, mut upstream, failures) = connect(&snapshot, peer, ctx, hard_stop).await?;
    ctx.pool.connect_succeeded(&node);
    let version = snapshot.settings.proxy_protocol;
    if version != ProxyProtocol::Off {
        let dst = match dst {
            Some(d) => d,
            None => client.local_addr().unwrap_or(peer),
        };
        let header = crate::proxy_protocol::encode(version, peer, dst);
        if let Err(e) = upstream.write_all(&header).await {
            warn!(client = %peer, node = %node.name, error = %e, "could not send the PROXY header to the node; closing");
            return None;
        }
    }
    if !failures.is_empty() {
        info!(client = %peer, listener = %ctx.config.name, node = %node.name, tried = %failures, "connected to a fallback node");
    }
    Some((node, upstream, snapshot.settings.idle_timeout))
}

/// Serve one accepted client connection. Runs inside the connection's span.
pub async fn handle(client: TcpStream, peer: SocketAddr, mut admission: Admission) {
    let start = Instant::now();
    let (peer, dst) = if admission.expects_proxy_header() {
        match Box::pin(proxy_header(&client, peer, &mut admission)).await {
            Some(x) => x,
            None => return,
        }
    } else {
        (peer, None)
    };
    let ctx = admission.state();
    let hard_stop = admission.hard_stop();
    // Everything before forwarding runs boxed and is freed when it ends, so the
    // state a long-lived connection keeps is only what forwarding needs.
    let Some((node, upstream, idle_timeout)) =
        Box::pin(select_and_connect(&client, peer, dst, ctx, hard_stop)).await
    else {
        return;
    };
    node.total.fetch_add(1, Ordering::Relaxed);
    let _node_active = ActiveGuard::new(&node.active, &node.metrics.active);

    let node_down = node.close_token();
    let out = forward::forward(
        &client,
        &upstream,
        idle_timeout,
        forward::Stop {
            close: &node_down,
            shutdown: hard_stop,
        },
        Meters {
            to_node: (&node.metrics.bytes_to_node, &node.bytes_to_node),
            to_client: (&node.metrics.bytes_to_client, &node.bytes_to_client),
        },
    )
    .await;
    let duration = start.elapsed();
    ctx.metrics.duration.record(duration.as_secs_f64());
    let error = match &out.end {
        End::ClientError(e) | End::NodeError(e) => Some(e.to_string()),
        _ => None,
    };
    info!(
        client = %peer,
        listener = %ctx.config.name,
        node = %node.name,
        node_addr = %node.addr,
        bytes_to_node = out.to_node,
        bytes_to_client = out.to_client,
        duration_ms = duration.as_millis() as u64,
        reason = out.end.as_str(),
        error = error.as_deref(),
        "connection closed"
    );
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
