//! The running balancer: binds every listener, builds every pool, runs the accept
//! loops and the health probes, and on shutdown stops accepting, then drains open connections for
//! `shutdown_grace` before closing the rest.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::Error;
use crate::health;
use crate::listener::{self, BoundListener};
use crate::metrics::ListenerMetrics;
use crate::pool::Pool;
use crate::proxy::ListenerContext;

/// How long connections get to finish after being told to close at the end of the
/// grace period (they close at once; this only bounds a pathological case).
const HARD_STOP_WAIT: Duration = Duration::from_secs(5);

/// A bound balancer, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    config: Config,
    listeners: Vec<BoundListener>,
    pools: BTreeMap<String, Arc<Pool>>,
    hard_stop: CancellationToken,
}

/// What shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections open when accepting stopped.
    pub open_at_shutdown: usize,
    /// Connections still open when the grace period ran out (closed by force).
    pub closed_at_grace: usize,
}

impl Server {
    /// Build pools and bind every listener. Must run inside a tokio runtime. Nothing
    /// is accepted until [`run`](Server::run).
    pub fn bind(config: Config) -> Result<Server, Error> {
        let pools: BTreeMap<String, Arc<Pool>> = config
            .pools
            .iter()
            .map(|(name, p)| (name.clone(), Arc::new(Pool::new(p))))
            .collect();
        let listeners = config
            .listeners
            .iter()
            .map(listener::bind)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Server {
            config,
            listeners,
            pools,
            hard_stop: CancellationToken::new(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The bound address of a listener (useful with port 0).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.config.name == listener)
            .map(|l| l.local_addr)
    }

    /// Every listener's name and bound address.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .map(|l| (l.config.name.clone(), l.local_addr))
            .collect()
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    /// Cancelling this token closes open connections at once (as when the grace
    /// period runs out). Use it for a second Ctrl-C.
    pub fn hard_stop(&self) -> CancellationToken {
        self.hard_stop.clone()
    }

    /// Serve until `shutdown` is cancelled, then stop accepting and drain.
    pub async fn run(self, shutdown: CancellationToken) -> ShutdownReport {
        let Server {
            config,
            listeners,
            pools,
            hard_stop,
        } = self;
        let tracker = TaskTracker::new();
        let mut acceptors = JoinSet::new();
        for bound in listeners {
            let ctx = Arc::new(ListenerContext {
                name: bound.config.name.clone(),
                pool: pools[&bound.config.pool].clone(),
                metrics: ListenerMetrics::new(&bound.config.name),
                hard_stop: hard_stop.clone(),
            });
            acceptors.spawn(listener::accept_loop(
                bound,
                ctx,
                tracker.clone(),
                shutdown.clone(),
            ));
        }

        let mut probes = JoinSet::new();
        for pool in pools.values() {
            health::spawn(pool, &shutdown, &mut probes);
        }

        shutdown.cancelled().await;
        while acceptors.join_next().await.is_some() {}
        while probes.join_next().await.is_some() {}
        tracker.close();
        let open_at_shutdown = tracker.len();
        let grace = config.shutdown_grace;
        if open_at_shutdown > 0 {
            info!(
                open = open_at_shutdown,
                grace = %crate::config::fmt_duration(grace),
                "stopped accepting; draining open connections"
            );
        }
        let drained = tokio::time::timeout(grace, async {
            tokio::select! {
                _ = tracker.wait() => true,
                _ = hard_stop.cancelled() => false,
            }
        })
        .await
        .unwrap_or(false);
        let mut closed_at_grace = 0;
        if !drained {
            closed_at_grace = tracker.len();
            if closed_at_grace > 0 {
                if hard_stop.is_cancelled() {
                    warn!(open = closed_at_grace, "closing open connections now");
                } else {
                    warn!(
                        open = closed_at_grace,
                        "closing connections still open at the end of the grace period"
                    );
                }
            }
            hard_stop.cancel();
            if tokio::time::timeout(HARD_STOP_WAIT, tracker.wait())
                .await
                .is_err()
            {
                warn!(open = tracker.len(), "connections did not close in time");
            }
        }
        info!(open_at_shutdown, closed_at_grace, "shutdown complete");
        ShutdownReport {
            open_at_shutdown,
            closed_at_grace,
        }
    }
}
