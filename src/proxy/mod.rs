//! One client connection, from admission to close: read the PROXY header of a
//! trusted proxy (then admit the client it names), reach a node ([`connect`]),
//! then forward bytes both ways until done ([`forward`], with [`splice`] for bulk
//! transfers). Ends with one INFO event. Takes an
//! [`crate::admission::Admission`] from whoever accepted the socket and
//! names no listener type.

pub mod connect;
pub mod forward;
pub mod proxy_protocol;
pub mod splice;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::admission::Admission;
use crate::config::Lifetime;
use crate::metrics::RejectReason;
use crate::ring::canonical_ip;
use connect::select_and_connect;
use forward::{End, Meters};

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
    match proxy_protocol::read_header(client, within).await {
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

/// When a connection opened now reaches the listener's
/// `max_connection_duration`: the duration plus a uniform random share of the
/// jitter, so connections opened together do not expire together.
fn lifetime_deadline(l: &Lifetime) -> Option<std::time::Instant> {
    let max = l.max?;
    let jitter_ms = l.jitter.as_millis() as u64;
    let extra = if jitter_ms == 0 {
        0
    } else {
        fastrand::u64(0..=jitter_ms)
    };
    Some(std::time::Instant::now() + max + std::time::Duration::from_millis(extra))
}

/// Serve one accepted client connection. Runs inside the connection's span.
///
/// A plain function returning an `async move` block rather than an `async fn`:
/// an `async fn` keeps its arguments twice in the task (as captured and as
/// moved-in locals), 112 bytes per open connection; the block uses the
/// captured ones in place.
#[allow(clippy::manual_async_fn)]
pub fn handle(
    client: TcpStream,
    mut peer: SocketAddr,
    mut admission: Admission,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        let start = Instant::now();
        let mut dst = None;
        if admission.expects_proxy_header() {
            match Box::pin(proxy_header(&client, peer, &mut admission)).await {
                Some((src, to)) => (peer, dst) = (src, to),
                None => return,
            }
        }
        let ctx = admission.state();
        let hard_stop = admission.hard_stop();
        // Everything before forwarding runs boxed and is freed when it ends, so the
        // state a long-lived connection keeps is only what forwarding needs.
        // The slot is the connection's place in the node's count (taken before the
        // connect), given back when this task ends, whatever way.
        let Some((slot, upstream, idle_timeout)) =
            Box::pin(select_and_connect(&client, peer, dst, ctx, hard_stop)).await
        else {
            return;
        };
        // Registered on its node from here on, so the balancer can close it
        // (paced): the node's closes, rehome, lifetime, end of the shutdown grace.
        let live = slot.open(
            canonical_ip(peer.ip()),
            lifetime_deadline(&ctx.config.lifetime),
        );
        let node = live.node();
        node.total.fetch_add(1, Ordering::Relaxed);

        let log_open = |to_node: u64, to_client: u64| {
            info!(
                client = %peer,
                listener = %ctx.config.name,
                node = %node.name,
                node_addr = %node.addr,
                bytes_to_node = to_node,
                bytes_to_client = to_client,
                duration_ms = start.elapsed().as_millis() as u64,
                "connection open"
            );
        };
        let out = forward::forward(
            &client,
            &upstream,
            idle_timeout,
            forward::Watch {
                close: live.ctl(),
                log: ctx
                    .config
                    .access_log_interval
                    .map(|every| (every, &log_open as &(dyn Fn(u64, u64) + Sync))),
            },
            Meters {
                to_node: &node.bytes_to_node,
                to_client: &node.bytes_to_client,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an open connection's task holds for its whole life (tokio rounds
    /// the task up to a multiple of 128 bytes: the release build's 600 bytes
    /// of future make a 768-byte task, where 712 made 896; a debug build's is
    /// a little larger).
    #[test]
    fn the_connection_future_stays_small() {
        fn future_size<A, B, C, R>(_: fn(A, B, C) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        let size = future_size(handle);
        eprintln!("connection future: {size} bytes");
        assert!(size <= 640, "the connection future is {size} bytes");
    }
}
