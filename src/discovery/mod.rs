//! Nodes from DNS: one task per pool with `[pools.NAME.discover]` that resolves
//! its name (A, AAAA, both, or SRV), builds the node list and applies it through
//! the same path as a reload that adds and removes nodes
//! ([`Pool::reconfigure_with`]), so removed nodes' open connections follow
//! `on_node_down` (paced by `close_rate`) and added nodes start down until
//! their probes pass.
//!
//! - Identity: an A/AAAA node is named by its address text (`10.0.0.5:80`,
//!   `[2001:db8::5]:80`), an SRV node by `target:port`, so the order of the
//!   answers never matters and every instance builds the same ring.
//! - SRV: only the lowest priority present; weights are relative: divided by
//!   their greatest common divisor, and scaled down so the largest is at most 256
//!   ([`crate::config::srv_weights`]).
//! - A failure (timeout, NXDOMAIN, empty answer, unreachable resolver) keeps the
//!   last good set; one WARN per episode and one INFO when it ends, counted in
//!   `ringlb_discovery_resolutions_total{outcome="failed"}`.
//! - A node leaves only after it has been missing for `remove_after`.
//! - Resolution runs again after min(TTL, interval) (at least 1 s when the TTL
//!   is shorter than that, never longer than `interval`).
//!
//! It never picks nodes or changes a node's health; [`track`] (pure) decides the
//! node set, [`resolve`] does the lookups.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{DiscoverConfig, NodeConfig, PoolConfig};
use crate::metrics::DiscoveryMetrics;
use crate::pool::Pool;

pub mod resolve;
pub mod track;

pub use resolve::{resolve, resolve_blocking, Answer};
pub use track::Tracker;

/// What `/status`, the page and metrics show of one pool's discovery.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryStatus {
    pub config: DiscoverConfig,
    /// When the last resolution finished (`None`: none yet).
    pub last_resolution_at: Option<SystemTime>,
    /// `"ok"`, or what went wrong (`"failed: ..."`); `"pending"` before the first.
    pub outcome: String,
    /// The nodes the pool has from DNS now, by name (sorted).
    pub nodes: Vec<String>,
    pub resolutions_ok: u64,
    pub resolutions_failed: u64,
}

/// The state a discovery task shares with status readers and with the task
/// that replaces it on a reload.
#[derive(Debug)]
pub struct Shared {
    status: Mutex<DiscoveryStatus>,
    tracker: Mutex<Tracker>,
}

impl Shared {
    pub fn status(&self) -> DiscoveryStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock_tracker(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The discovered nodes the pool has now (for a reload of its settings).
    pub fn nodes(&self) -> Vec<NodeConfig> {
        self.lock_tracker().nodes()
    }
}

/// One pool's discovery task.
#[derive(Debug)]
pub struct Discovery {
    pub pool_config: PoolConfig,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Discovery {
    /// Start resolving for `pool` (whose config has `discover`). `seed`: the
    /// nodes the pool has now, kept until the first good answer. With `keep`
    /// (the same name, type and port as before) they are the last answer and
    /// follow `remove_after`; otherwise the first good answer replaces them.
    /// `changed` is notified after each change of nodes (probers follow).
    pub fn start(
        pool: Arc<Pool>,
        pool_config: PoolConfig,
        seed: Vec<NodeConfig>,
        keep: bool,
        changed: Arc<Notify>,
        stop: &CancellationToken,
    ) -> Option<Discovery> {
        let cfg = pool_config.discover.clone()?;
        // Nodes of a first answer that replaces the whole set start up, as the
        // nodes of a new config do (else nothing might be in service); nodes
        // that join a kept set start down until their probes pass.
        let first = seed.is_empty() || !keep;
        let shared = Arc::new(Shared {
            status: Mutex::new(DiscoveryStatus {
                config: cfg.clone(),
                last_resolution_at: None,
                outcome: "pending".to_string(),
                nodes: seed.iter().map(|n| n.name.clone()).collect(),
                resolutions_ok: 0,
                resolutions_failed: 0,
            }),
            tracker: Mutex::new(Tracker::seeded(seed, keep, Instant::now().into_std())),
        });
        let stop = stop.child_token();
        let task = tokio::spawn(run(
            pool,
            pool_config.clone(),
            shared.clone(),
            first,
            changed,
            stop.clone(),
        ));
        Some(Discovery {
            pool_config,
            shared,
            stop,
            task,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stop the task and wait for it (so it applies nothing after this).
    pub async fn shutdown(self) -> Arc<Shared> {
        self.stop.cancel();
        let _ = self.task.await;
        self.shared
    }
}

/// The nodes `pool` has now, as configs (to seed a discovery that replaces a
/// `nodes` list or another discovery).
pub fn node_configs(pool: &Pool) -> Vec<NodeConfig> {
    pool.nodes()
        .iter()
        .map(|n| NodeConfig {
            name: n.name.clone(),
            addr_text: n.addr.to_string(),
            addr: n.addr,
            weight: n.weight(),
            state: n.config_state(),
            max_connections: n
                .config_max_connections()
                .and_then(|c| u32::try_from(c).ok()),
        })
        .collect()
}

/// How long until the next resolution: min(TTL, interval), at least 1 s when
/// the TTL is shorter than that (a TTL of 0 must not spin), at most `interval`.
pub fn next_delay(ttl: Option<Duration>, interval: Duration) -> Duration {
    match ttl {
        None => interval,
        Some(t) => t.max(Duration::from_secs(1)).min(interval),
    }
}

async fn run(
    pool: Arc<Pool>,
    pc: PoolConfig,
    shared: Arc<Shared>,
    mut first: bool,
    changed: Arc<Notify>,
    stop: CancellationToken,
) {
    let Some(cfg) = pc.discover.clone() else {
        return;
    };
    let metrics = DiscoveryMetrics::new(&pc.name);
    let mut failing = false;
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = resolve(&cfg) => r,
        };
        let now = SystemTime::now();
        metrics.last_resolution.set(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        let delay = match result {
            Ok(answer) => {
                metrics.ok.increment(1);
                if std::mem::replace(&mut failing, false) {
                    info!(pool = %pc.name, name = %cfg.name, nodes = answer.nodes.len(),
                        "DNS discovery answers again");
                }
                // Hold the tracker while applying, so a reload that reads the
                // nodes sees either the old or the new set applied.
                let mut tracker = shared.lock_tracker();
                let before = tracker.nodes();
                tracker.update(&answer.nodes, cfg.remove_after, Instant::now().into_std());
                let nodes = tracker.nodes();
                if nodes != before || first {
                    let mut next = pc.clone();
                    next.nodes = nodes.clone();
                    let change = pool.reconfigure_with(&next, !first);
                    if !change.added.is_empty() || !change.removed.is_empty() || first {
                        info!(pool = %pc.name, name = %cfg.name, added = ?change.added,
                            removed = ?change.removed, nodes = nodes.len(),
                            "DNS discovery changed the pool's nodes");
                    }
                    changed.notify_one();
                }
                first = false;
                drop(tracker);
                metrics.nodes.set(nodes.len() as f64);
                let mut st = shared.status.lock().unwrap_or_else(|e| e.into_inner());
                st.last_resolution_at = Some(now);
                st.outcome = "ok".to_string();
                st.nodes = nodes.iter().map(|n| n.name.clone()).collect();
                st.resolutions_ok += 1;
                next_delay(answer.ttl, cfg.interval)
            }
            Err(why) => {
                metrics.failed.increment(1);
                if !std::mem::replace(&mut failing, true) {
                    warn!(pool = %pc.name, name = %cfg.name, error = %why,
                        "DNS discovery failed; the pool keeps its last good nodes and tries again");
                } else {
                    debug!(pool = %pc.name, name = %cfg.name, error = %why, "DNS discovery still failing");
                }
                let mut st = shared.status.lock().unwrap_or_else(|e| e.into_inner());
                st.last_resolution_at = Some(now);
                st.outcome = format!("failed: {why}");
                st.resolutions_failed += 1;
                cfg.interval
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::next_delay;
    use std::time::Duration;

    #[test]
    fn the_ttl_shortens_the_interval_but_never_spins() {
        let s = Duration::from_secs;
        assert_eq!(next_delay(Some(s(3)), s(5)), s(3));
        assert_eq!(next_delay(Some(s(300)), s(5)), s(5));
        assert_eq!(next_delay(Some(s(0)), s(5)), s(1));
        assert_eq!(
            next_delay(Some(s(0)), Duration::from_millis(200)),
            Duration::from_millis(200)
        );
        assert_eq!(next_delay(None, s(5)), s(5));
    }
}
