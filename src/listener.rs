//! Listening sockets (socket2: SO_REUSEADDR, backlog, explicit IPV6_V6ONLY) and the
//! accept loop: connection limit, accept-error backoff, one span per connection,
//! each connection spawned into the server's task tracker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use crate::config::ListenerConfig;
use crate::error::{is_resource_exhaustion, Error};
use crate::metrics::RejectReason;
use crate::proxy::{self, ListenerContext};

/// Shortest and longest pause after an accept error such as EMFILE.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Time without an accept error after which an out-of-resources episode is over.
const EPISODE_QUIET: Duration = Duration::from_secs(1);

struct Episode {
    errors: u64,
    last_error: Instant,
}

/// A bound, listening socket.
#[derive(Debug)]
pub struct BoundListener {
    pub config: ListenerConfig,
    pub local_addr: SocketAddr,
    listener: TcpListener,
}

/// Create, configure and bind the listening socket. Must run inside a tokio runtime.
pub fn bind(config: &ListenerConfig) -> Result<BoundListener, Error> {
    let addr = config.listen;
    let err = |source| Error::Bind {
        listener: config.name.clone(),
        addr,
        source,
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(config.ipv6_only).map_err(err)?;
    }
    socket.set_nodelay(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(config.backlog as i32).map_err(err)?;
    let std_listener: std::net::TcpListener = socket.into();
    let listener = TcpListener::from_std(std_listener).map_err(err)?;
    let local_addr = listener.local_addr().map_err(err)?;
    Ok(BoundListener {
        config: config.clone(),
        local_addr,
        listener,
    })
}

/// Accept until `shutdown` is cancelled, then drop the socket (new connects are
/// refused from then on).
pub async fn accept_loop(
    bound: BoundListener,
    ctx: Arc<ListenerContext>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let BoundListener {
        config,
        local_addr,
        listener,
    } = bound;
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    // An episode of resource errors: one WARN when it starts, one INFO when accept
    // has worked again with no error for EPISODE_QUIET (so a flapping shortage is
    // one episode, not a log line per connection).
    let mut episode: Option<Episode> = None;
    let mut at_limit = false;
    let mut conn_id: u64 = 0;
    info!(listener = %config.name, addr = %local_addr, pool = %config.pool, "listening");
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) if is_resource_exhaustion(&e) => {
                ctx.metrics.accept_errors.increment(1);
                match episode.as_mut() {
                    Some(ep) => {
                        ep.errors += 1;
                        ep.last_error = Instant::now();
                    }
                    None => {
                        warn!(listener = %config.name, error = %e, "accept failed: out of resources; backing off until it recovers");
                        episode = Some(Episode {
                            errors: 1,
                            last_error: Instant::now(),
                        });
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
            Err(e) => {
                // ECONNABORTED and friends: the peer went away before we got to it.
                ctx.metrics.accept_errors.increment(1);
                tracing::debug!(listener = %config.name, error = %e, "accept error");
                continue;
            }
        };
        if let Some(ep) = &episode {
            if ep.last_error.elapsed() >= EPISODE_QUIET {
                info!(listener = %config.name, failed_accepts = ep.errors, "accept recovered");
                episode = None;
            }
        }
        backoff = ACCEPT_BACKOFF_MIN;
        ctx.metrics.accepted.increment(1);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            ctx.metrics
                .rejected(RejectReason::MaxConnections)
                .increment(1);
            if !at_limit {
                warn!(listener = %config.name, limit = config.max_connections, "max_connections reached; closing new connections at once until some end");
                at_limit = true;
            }
            tracing::debug!(listener = %config.name, client = %peer, "over max_connections; closed");
            drop(stream);
            continue;
        };
        if at_limit {
            info!(listener = %config.name, "below max_connections again");
            at_limit = false;
        }
        let _ = stream.set_nodelay(true);
        conn_id += 1;
        let span = info_span!("conn", id = conn_id, listener = %config.name, client = %peer);
        let ctx = ctx.clone();
        tracker.spawn(
            async move {
                ctx.metrics.active.increment(1.0);
                proxy::handle(stream, peer, ctx.clone()).await;
                ctx.metrics.active.decrement(1.0);
                drop(permit);
            }
            .instrument(span),
        );
    }
    info!(listener = %config.name, addr = %local_addr, "stopped accepting");
}
