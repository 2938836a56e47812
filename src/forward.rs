//! Moving bytes between client and node: both directions at once, half-close
//! propagated (an EOF becomes a write shutdown on the other side, not a teardown),
//! an idle timeout over both directions, live byte counts.
//!
//! Buffers are allocated on the first byte in each direction, so an idle connection
//! holds no buffer memory.

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::Counter;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::splice;

/// Per-direction buffer size.
pub const BUFFER_SIZE: usize = 32 * 1024;

/// How a forwarding session ended.
#[derive(Debug)]
pub enum End {
    /// Both sides sent EOF and every byte was delivered.
    Closed,
    /// No byte moved either way for the idle timeout.
    IdleTimeout,
    /// Reading from or writing to the client failed (reset, broken pipe...).
    ClientError(io::Error),
    /// Reading from or writing to the node failed.
    NodeError(io::Error),
    /// Closed by the balancer: the shutdown grace ran out.
    Cancelled,
    /// Closed by the balancer: the node went down and `on_node_down = "close"`.
    NodeDown,
}

impl End {
    /// Short, stable label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::IdleTimeout => "idle_timeout",
            End::ClientError(_) => "client_error",
            End::NodeError(_) => "node_error",
            End::Cancelled => "cancelled",
            End::NodeDown => "node_down",
        }
    }
}

/// Bytes moved and how it ended.
#[derive(Debug)]
pub struct Outcome {
    pub to_node: u64,
    pub to_client: u64,
    pub end: End,
}

/// Counters fed while bytes move (for long-lived connections, not only at the end):
/// a metrics counter and a plain total for status output, per direction.
#[derive(Debug, Clone, Copy)]
pub struct Meters<'a> {
    pub to_node: (&'a Counter, &'a AtomicU64),
    pub to_client: (&'a Counter, &'a AtomicU64),
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Client,
    Node,
}

struct DirError {
    side: Side,
    error: io::Error,
}

/// Forward until both directions are finished, the idle timeout fires, an error
/// occurs, or `stop` completes (its value says why the balancer closed it).
pub async fn forward(
    client: &TcpStream,
    node: &TcpStream,
    idle_timeout: Duration,
    stop: impl Future<Output = End>,
    meters: Meters<'_>,
) -> Outcome {
    let start = Instant::now();
    // Milliseconds since `start` of the last byte moved, either way.
    let last_activity = AtomicU64::new(0);
    let to_node = AtomicU64::new(0);
    let to_client = AtomicU64::new(0);

    let up = pipe(
        client,
        Side::Client,
        node,
        Side::Node,
        start,
        &last_activity,
        &to_node,
        meters.to_node,
    );
    let down = pipe(
        node,
        Side::Node,
        client,
        Side::Client,
        start,
        &last_activity,
        &to_client,
        meters.to_client,
    );
    let idle = async {
        loop {
            let last = Duration::from_millis(last_activity.load(Ordering::Relaxed));
            let deadline = start + last + idle_timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };

    let end = tokio::select! {
        r = async { tokio::try_join!(up, down) } => match r {
            Ok(_) => End::Closed,
            Err(DirError { side: Side::Client, error }) => End::ClientError(error),
            Err(DirError { side: Side::Node, error }) => End::NodeError(error),
        },
        _ = idle => End::IdleTimeout,
        why = stop => why,
    };
    Outcome {
        to_node: to_node.load(Ordering::Relaxed),
        to_client: to_client.load(Ordering::Relaxed),
        end,
    }
}

/// One direction: read from `from`, write everything to `to`; on EOF shut down the
/// write side of `to` and finish.
///
/// Small messages are copied through a buffer that exists only while bytes are
/// flowing (it is freed as soon as `from` has nothing more to read, so an idle
/// connection holds none). Once a read fills the whole buffer the direction is
/// carrying bulk data and switches to `splice(2)` through a pooled pipe (Linux),
/// falling back to the copy whenever no pipe is free.
#[allow(clippy::too_many_arguments)]
async fn pipe(
    from: &TcpStream,
    from_side: Side,
    to: &TcpStream,
    to_side: Side,
    start: Instant,
    last_activity: &AtomicU64,
    bytes: &AtomicU64,
    meter: (&Counter, &AtomicU64),
) -> Result<(), DirError> {
    let rerr = |error| DirError {
        side: from_side,
        error,
    };
    let werr = |error| DirError {
        side: to_side,
        error,
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut bulk = false;
    let mut pipe: Option<splice::Pipe> = None;
    let result = loop {
        // Read what is there, by splice or by copy.
        let spliced = if bulk && splice::enabled() {
            if pipe.is_none() {
                pipe = splice::acquire();
            }
            pipe.as_ref().map(|p| splice::fill(from, p))
        } else {
            None
        };
        let used_splice = spliced.is_some();
        let read = match spliced {
            Some(r) => r,
            None => {
                if buf.is_empty() {
                    buf = vec![0u8; BUFFER_SIZE];
                }
                from.try_read(&mut buf)
            }
        };
        let n = match read {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Nothing to read now: hold no buffer and no pipe while waiting.
                buf = Vec::new();
                if let Some(p) = pipe.take() {
                    splice::release(p);
                }
                if let Err(e) = from.readable().await {
                    break Err(rerr(e));
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if used_splice && splice::is_unsupported(&e) => {
                splice::disable(&e);
                if let Some(p) = pipe.take() {
                    splice::discard(p);
                }
                continue;
            }
            Err(e) => break Err(rerr(e)),
        };
        // Write all of it.
        let written = if used_splice {
            let p = pipe.as_ref().expect("spliced from a pipe");
            let mut left = n;
            loop {
                if left == 0 {
                    break Ok(());
                }
                match splice::drain(p, to, left) {
                    Ok(k) => left -= k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if let Err(e) = to.writable().await {
                            break Err(e);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            }
        } else {
            let mut off = 0;
            loop {
                if off == n {
                    break Ok(());
                }
                match to.try_write(&buf[off..n]) {
                    Ok(k) => off += k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if let Err(e) = to.writable().await {
                            break Err(e);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            }
        };
        if let Err(e) = written {
            if let Some(p) = pipe.take() {
                splice::discard(p);
            }
            break Err(werr(e));
        }
        if !used_splice && n == buf.len() {
            bulk = true;
        }
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        meter.0.increment(n as u64);
        meter.1.fetch_add(n as u64, Ordering::Relaxed);
        last_activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    };
    // A pipe left here is empty (every fill is drained before the next read).
    if let Some(p) = pipe.take() {
        splice::release(p);
    }
    result?;
    // EOF: half-close towards the other side and keep the other direction running.
    match socket2::SockRef::from(to).shutdown(Shutdown::Write) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        Err(e) => Err(werr(e)),
    }
}
