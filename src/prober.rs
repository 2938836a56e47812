//! The probe tasks of a pool: one loop per node that runs [`probe`] every
//! `interval` ± 10% and reports each outcome to the [`Pool`], which applies the
//! hysteresis and owns the ring. It sits above both `health` (the probes and the
//! hysteresis state) and `pool`, so neither of them names the other's runtime:
//! the pool depends only on `health::state`. It never picks nodes and never
//! changes a node's state itself.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HealthKind;
use crate::health::{probe, probe_addr};
use crate::pool::{Node, Pool};

/// A small deterministic-per-node jitter source (no global RNG needed).
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new(name: &str) -> Jitter {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut x = t ^ 0x9E37_79B9_7F4A_7C15;
        for b in name.bytes() {
            x = (x ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
        }
        Jitter(x | 1)
    }

    /// A factor in [lo, hi).
    pub(crate) fn factor(&mut self, lo: f64, hi: f64) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + (hi - lo) * ((self.0 >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// One task per node of a pool, each with its own token, under one stop token
/// and one tracker: what the prober and the [`agent`](crate::agent) keep.
#[derive(Debug)]
pub(crate) struct NodeTasks {
    tasks: Vec<(Arc<Node>, CancellationToken)>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl NodeTasks {
    pub(crate) fn new(stop: &CancellationToken) -> NodeTasks {
        NodeTasks {
            tasks: Vec::new(),
            stop: stop.child_token(),
            tracker: TaskTracker::new(),
        }
    }

    /// One task per node of `nodes`: stop those of the nodes not in it, start
    /// `spawn(node, its token)` for the new ones.
    pub(crate) fn sync<F, Fut>(&mut self, nodes: Vec<Arc<Node>>, mut spawn: F)
    where
        F: FnMut(Arc<Node>, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.retain(|(n, tok)| {
            let keep = nodes.iter().any(|m| Arc::ptr_eq(m, n));
            if !keep {
                tok.cancel();
            }
            keep
        });
        for n in nodes {
            if !self.tasks.iter().any(|(m, _)| Arc::ptr_eq(m, &n)) {
                let tok = self.stop.child_token();
                self.tracker.spawn(spawn(n.clone(), tok.clone()));
                self.tasks.push((n, tok));
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Stop every task without waiting for them.
    pub(crate) fn cancel(self) {
        self.stop.cancel();
        self.tracker.close();
    }

    /// Stop every task and wait for them.
    pub(crate) async fn shutdown(self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// The probe tasks of one pool: one per node (none when `health.kind = "none"`),
/// kept in step with the pool's nodes by [`Prober::sync`] after a reload.
#[derive(Debug)]
pub struct Prober {
    pool: Arc<Pool>,
    tasks: NodeTasks,
}

impl Prober {
    /// Start probing every node of `pool`; everything stops when `stop` is cancelled.
    pub fn start(pool: Arc<Pool>, stop: &CancellationToken) -> Prober {
        let mut p = Prober {
            pool,
            tasks: NodeTasks::new(stop),
        };
        p.sync();
        p
    }

    /// Start tasks for new nodes, stop those of removed nodes (or all of them when
    /// health checks were turned off). Settings changes need no restart: every
    /// probe reads the pool's current settings.
    pub fn sync(&mut self) {
        let nodes = if self.pool.settings().health.kind == HealthKind::None {
            Vec::new()
        } else {
            self.pool.nodes()
        };
        let pool = &self.pool;
        self.tasks
            .sync(nodes, |n, tok| probe_loop(pool.clone(), n, tok));
    }

    /// Number of running probe tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stop every probe and wait for them.
    pub async fn shutdown(self) {
        self.tasks.shutdown().await;
    }
}

/// Probe one node forever: never two probes at once for one node; starts spaced
/// by `interval` ± 10%. The first probe comes within the first 10% of an interval.
async fn probe_loop(pool: Arc<Pool>, node: Arc<Node>, stop: CancellationToken) {
    let mut jitter = Jitter::new(&node.name);
    let mut delay = pool
        .settings()
        .health
        .interval
        .mul_f64(jitter.factor(0.0, 0.1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        let settings = pool.settings();
        let h = &settings.health;
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            o = probe(probe_addr(node.addr, h), h) => o,
        };
        pool.probe_result(&node, outcome);
        delay = h
            .interval
            .mul_f64(jitter.factor(0.9, 1.1))
            .saturating_sub(started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range() {
        let mut j = Jitter::new("x");
        for _ in 0..10_000 {
            let f = j.factor(0.9, 1.1);
            assert!((0.9..1.1).contains(&f));
        }
    }
}
