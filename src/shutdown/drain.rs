//! The drain: how a server stops. Invariant: stop accepting first, then let open
//! connections finish within `shutdown_grace`, then close the rest, counted and
//! logged.

use std::time::Duration;

use tracing::{info, warn};

use crate::config::fmt_duration;
use crate::lifecycle::DrainPlan;
use crate::pool::CloseReason;
use crate::server::{stop_accepting, Server};

/// How long connections get to finish after being told to close at the end of the
/// grace period (they close at once; this only bounds a pathological case).
const HARD_STOP_WAIT: Duration = Duration::from_secs(5);
/// How often the drain logs how many connections are still open.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections open when accepting stopped.
    pub open_at_shutdown: usize,
    /// Connections the balancer closed because the grace period ran out: those
    /// it closed spread over the end of the grace (`close_rate`), and those
    /// still open at its end.
    pub closed_at_grace: usize,
}

/// Stop accepting, then drain: accept loops take what is queued and end, the
/// listening sockets close, probes stop; open connections get `shutdown_grace` to
/// finish (or until `close_now`), then the rest are told to close and counted.
///
/// The admin endpoint closes first, with the listeners: a process started to
/// replace this one can bind every port at once, and after an upgrade it answers
/// from the new process only. The drain's progress is in the log (every 5 s).
///
/// After an upgrade handed over, the same, except that the listening sockets stay
/// open in the new process (which accepts from the same queues).
pub async fn drain(mut server: Server) -> ShutdownReport {
    let handed_over = server.shared.handed_over_to.get().copied();
    if let Some(a) = server.admin.take() {
        a.stop().await;
    }
    for r in &server.listeners {
        r.stop.cancel();
    }
    for r in &mut server.listeners {
        stop_accepting(r.name(), r.local_addr, std::mem::take(&mut r.tasks)).await;
    }
    // Close the listening sockets now: new connects are refused from here on.
    server.listeners.clear();
    server.publish_listeners();
    server.probe_stop.cancel();
    for (_, p) in std::mem::take(&mut server.probers) {
        p.shutdown().await;
    }
    let tracker = server.tracker.clone();
    let hard_stop = server.hard_stop.clone();
    let close_now = server.close_now.clone();
    tracker.close();
    let open_at_shutdown = tracker.len();
    let grace = server.shared.config.load().shutdown_grace;
    // Each pool's lifecycle loop spreads its closes over the end of the grace
    // (close_rate), instead of all at its last instant.
    let closed_before = server.lifecycles.closed(CloseReason::Shutdown);
    server.lifecycles.begin_drain(DrainPlan {
        deadline: std::time::Instant::now() + grace,
        grace,
    });
    if open_at_shutdown > 0 {
        match handed_over {
            Some(pid) => info!(
                open = open_at_shutdown,
                grace = %fmt_duration(grace),
                new_pid = pid,
                "handed over to pid {pid}; draining open connections"
            ),
            None => info!(
                open = open_at_shutdown,
                grace = %fmt_duration(grace),
                "stopped accepting; draining open connections"
            ),
        }
    }
    let drained = tokio::time::timeout(grace, async {
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        progress.tick().await;
        loop {
            tokio::select! {
                biased;
                _ = close_now.cancelled() => return false,
                _ = tracker.wait() => return true,
                _ = progress.tick() => info!(open = tracker.len(), "draining: connections still open"),
            }
        }
    })
    .await
    .unwrap_or(false);
    // Closed by the lifecycle loops over the end of the grace (close_rate).
    let spread = server.lifecycles.closed(CloseReason::Shutdown) - closed_before;
    let mut closed_at_grace = spread as usize;
    if spread > 0 {
        info!(
            closed = spread,
            "closed connections spread over the end of the grace period (close_rate)"
        );
    }
    if !drained {
        let left = tracker.len();
        closed_at_grace += left;
        if left > 0 {
            if close_now.is_cancelled() {
                warn!(open = left, "closing open connections now");
            } else {
                warn!(
                    open = left,
                    "closing connections still open at the end of the grace period"
                );
            }
        }
        server.lifecycles.close_all_now(CloseReason::Shutdown);
        // Connections still connecting (not registered on a node yet).
        hard_stop.cancel();
        if tokio::time::timeout(HARD_STOP_WAIT, tracker.wait())
            .await
            .is_err()
        {
            warn!(open = tracker.len(), "connections did not close in time");
        }
    }
    std::mem::take(&mut server.lifecycles).shutdown().await;
    server.set_pid_file(None);
    info!(open_at_shutdown, closed_at_grace, "shutdown complete");
    ShutdownReport {
        open_at_shutdown,
        closed_at_grace,
    }
}
