//! A pool: its nodes, their health and live counters, and the current ring snapshot.
//!
//! Connections load one immutable [`PoolSnapshot`] through `arc-swap` and never take
//! a lock. Health changes (probes, passive failures) go through [`Pool::probe_result`]
//! and [`Pool::connect_failed`]; when the set of nodes in service changes, a new ring
//! of those nodes is built and swapped in. Nothing here does network I/O.
//!
//! * `node`: one [`Node`], its admin state and counters.
//! * `agent`: what a node's agent reported ([`AgentState`]), kept apart from
//!   health and the operator's state, and how a report applies.
//! * `snapshot`: the hot path alone: [`PoolSnapshot`], [`Selection`] and the
//!   building of a new snapshot.
//! * `reconfigure`: a reload's node diff applied to the live pool ([`PoolChange`]).
//! * `settings`: [`PoolSettings`], what connections and probes read.
//! * `conns`: each node's registry of open connections ([`Live`], [`ConnCtl`]),
//!   the pool's close queue, and the scan that finds misplaced and expired
//!   connections ([`Pool::scan`]); the lifecycle loop decides when to close.
//! * `takeover`: node states handed to the next process in a binary upgrade
//!   ([`NodeRecord`], [`Pool::take_over`]).
//!
//! The pool depends on [`crate::health::state`] (the hysteresis it applies) and on
//! nothing else of `health`: the probes report into the pool, never the reverse.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tracing::{debug, error, info, warn};

use crate::config::{AdminState, OnNodeDown, PoolConfig, WhenAllDown};
use crate::health::state::ProbeOutcome;
use crate::metrics::PoolMetrics;

mod agent;
mod conns;
mod node;
mod reconfigure;
mod settings;
mod snapshot;
mod takeover;

pub use agent::{
    AgentAdmin, AgentCheck, AgentOper, AgentRecord, AgentReport, AgentResult, AgentState,
    AgentWeight,
};
pub use conns::{CloseReason, ConnCtl, Live, RehomeCandidate, Scan};
pub use node::{Node, Slot};
pub use reconfigure::PoolChange;
pub use settings::PoolSettings;
pub use snapshot::{PoolSnapshot, Selection};
pub use takeover::{NodeRecord, TakeOver};

use snapshot::build_snapshot;

/// A pool of nodes.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    snapshot: ArcSwap<PoolSnapshot>,
    /// Serialises state changes so rebuilds never publish out of order.
    rebuild: Mutex<()>,
    /// Clients refused because every node was at its `max_connections`.
    full: FullEpisode,
    /// Closes waiting for their turn (`close_rate`).
    closes: conns::CloseQueue,
    pub metrics: PoolMetrics,
    /// Connections closed by the pool itself, per [`CloseReason`] (in order).
    closed: [AtomicU64; CloseReason::ALL.len()],
    /// Nodes a reload removed while connections to them were still open.
    retired: Mutex<Vec<Arc<Node>>>,
}

/// An episode of clients refused because no node had room: logged with one WARN
/// when it starts and one INFO, with the count, when a client gets a place again.
#[derive(Debug, Default)]
struct FullEpisode {
    on: AtomicBool,
    refused: AtomicU64,
}

impl Pool {
    pub fn new(cfg: &PoolConfig) -> Pool {
        let nodes: Vec<Arc<Node>> = cfg
            .nodes
            .iter()
            .map(|n| Arc::new(Node::new(&cfg.name, n)))
            .collect();
        let settings = Arc::new(PoolSettings::from(cfg));
        let snapshot = ArcSwap::from_pointee(build_snapshot(settings, nodes, None));
        Pool {
            name: cfg.name.clone(),
            snapshot,
            rebuild: Mutex::new(()),
            full: FullEpisode::default(),
            closes: conns::CloseQueue::default(),
            closed: Default::default(),
            metrics: PoolMetrics::new(&cfg.name, &CloseReason::ALL.map(CloseReason::as_str)),
            retired: Mutex::new(Vec::new()),
        }
    }

    /// The current snapshot (cheap; no lock).
    pub fn snapshot(&self) -> Arc<PoolSnapshot> {
        self.snapshot.load_full()
    }

    /// The current settings (a reload may replace them).
    pub fn settings(&self) -> Arc<PoolSettings> {
        self.snapshot.load().settings.clone()
    }

    /// Bring `ringlb_bytes_total` up to the live byte counts of every node,
    /// including removed ones whose connections are still open (before a
    /// scrape).
    pub fn sync_byte_metrics(&self) {
        for node in self.all_nodes() {
            node.sync_byte_metrics();
        }
    }

    /// Every configured node, in service or not, in file order.
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.snapshot.load().nodes.clone()
    }

    /// Set a node's operator state: `Drain` takes it off the ring for new
    /// connections (open ones continue), `Disabled` also closes its open
    /// connections, `Enabled` puts it back (if healthy). Returns the previous
    /// state, or `None` if there is no such node.
    pub fn set_admin_state(&self, name: &str, state: AdminState, by: &str) -> Option<AdminState> {
        let node = self.node(name)?;
        let _guard = self.lock_rebuild();
        let before = node.swap_admin_state(state);
        if before == state {
            return Some(before);
        }
        let old = self.snapshot();
        self.snapshot.store(Arc::new(build_snapshot(
            old.settings.clone(),
            old.nodes.clone(),
            Some(&old),
        )));
        let open = node.active.load(Ordering::Relaxed);
        match state {
            AdminState::Enabled => {
                info!(pool = %self.name, node = %node.name, by, up = node.is_up(),
                "node ENABLED: back on the ring when healthy; its clients return to it")
            }
            AdminState::Drain => {
                warn!(pool = %self.name, node = %node.name, by, open_connections = open,
                "node DRAIN: off the ring for new connections; its clients move to their next node; open connections continue")
            }
            AdminState::Disabled => {
                warn!(pool = %self.name, node = %node.name, by, open_connections = open,
                    "node DISABLED: off the ring; closing its open connections");
                self.close_node(&node, CloseReason::Disabled);
            }
        }
        Some(before)
    }

    pub fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.snapshot
            .load()
            .nodes
            .iter()
            .find(|n| n.name == name)
            .cloned()
    }

    /// Nodes in service.
    pub fn up_count(&self) -> usize {
        self.snapshot
            .load()
            .nodes
            .iter()
            .filter(|n| n.is_up())
            .count()
    }

    /// Record an active probe result; applies rise/fall and changes the node's
    /// state when a threshold is crossed.
    pub fn probe_result(&self, node: &Arc<Node>, outcome: ProbeOutcome) {
        let settings = self.settings();
        let h = &settings.health;
        if outcome.ok {
            node.metrics.probes_ok.increment(1);
        } else {
            node.metrics.probes_failed.increment(1);
        }
        node.metrics
            .probe_duration
            .record(outcome.latency.as_secs_f64());
        let _guard = self.lock_rebuild();
        let mut health = node.lock_health();
        let change = health.observe(&outcome, h.rise, h.fall);
        let streak = if outcome.ok {
            health.ok_streak
        } else {
            health.fail_streak
        };
        drop(health);
        if let Some(up) = change {
            let why = format!(
                "{} ({streak} consecutive {})",
                outcome.detail,
                if up { "successes" } else { "failures" }
            );
            self.apply(node, up, &why);
        }
    }

    /// A client was refused because every node in service was at its
    /// `max_connections` (the caller counts it as `reason="nodes_full"`). The
    /// first refusal of an episode is logged at WARN, the others at DEBUG.
    pub fn refused_full(&self, listener: &str, client: SocketAddr) {
        self.full.refused.fetch_add(1, Ordering::Relaxed);
        if !self.full.on.swap(true, Ordering::Relaxed) {
            warn!(pool = %self.name, listener, client = %client,
                "every node in service is at its max_connections; closing new clients at once until one has room (counted as reason=\"nodes_full\")");
        } else {
            debug!(pool = %self.name, listener, client = %client, "every node full; closed");
        }
    }

    /// A client got a node: ends an episode of [`Pool::refused_full`] with one
    /// INFO line and the number refused. One relaxed load when there is none.
    #[inline]
    pub fn placed(&self) {
        if self.full.on.load(Ordering::Relaxed) && self.full.on.swap(false, Ordering::Relaxed) {
            let refused = self.full.refused.swap(0, Ordering::Relaxed);
            info!(pool = %self.name, refused,
                "a node has room again: clients are placed again after every node was at its max_connections");
        }
    }

    /// A connect from real traffic succeeded: reset the passive failure streak.
    pub fn connect_succeeded(&self, node: &Node) {
        if node.passive_failures.load(Ordering::Relaxed) != 0 {
            node.passive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A connect from real traffic failed. After `passive_failures` in a row the
    /// node is taken down at once (the probes bring it back).
    pub fn connect_failed(&self, node: &Arc<Node>, reason: &str) {
        let limit = self.snapshot.load().settings.passive_failures;
        if limit == 0 {
            return;
        }
        let streak = node.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if streak < limit || !node.is_up() {
            return;
        }
        let _guard = self.lock_rebuild();
        if !node.is_up() {
            return;
        }
        node.lock_health().force_down(SystemTime::now());
        let why = format!("{streak} consecutive connect failures from traffic (last: {reason})");
        self.apply(node, false, &why);
    }

    /// Put a node in or out of service by hand (tests, tools). Returns true if its
    /// state changed.
    pub fn set_up(&self, name: &str, up: bool, why: &str) -> bool {
        let Some(node) = self.node(name) else {
            return false;
        };
        let _guard = self.lock_rebuild();
        if node.is_up() == up {
            return false;
        }
        node.lock_health().force(up, SystemTime::now());
        self.apply(&node, up, why);
        true
    }

    fn lock_rebuild(&self) -> MutexGuard<'_, ()> {
        self.rebuild.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_retired(&self) -> MutexGuard<'_, Vec<Arc<Node>>> {
        self.retired.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Change a node's state, publish the new ring, then log (so whoever reads the
    /// log line already finds the new ring). Caller holds `rebuild`.
    fn apply(&self, node: &Arc<Node>, up: bool, why: &str) {
        let old = self.snapshot();
        if !old.nodes.iter().any(|n| Arc::ptr_eq(n, node)) {
            // Removed by a reload meanwhile: nothing to publish.
            node.up.store(up, Ordering::Release);
            return;
        }
        let before = self.up_count();
        if node.up.swap(up, Ordering::AcqRel) == up {
            return;
        }
        let settings = old.settings.clone();
        self.snapshot.store(Arc::new(build_snapshot(
            settings.clone(),
            old.nodes.clone(),
            Some(&old),
        )));
        let after = self.up_count();
        let total = old.nodes.len();
        node.lock_health().reason = why.to_string();
        node.metrics.up.set(if up { 1.0 } else { 0.0 });
        if up {
            node.passive_failures.store(0, Ordering::Relaxed);
            node.metrics.went_up.increment(1);
            info!(pool = %self.name, node = %node.name, addr = %node.addr, reason = %why,
                up = after, total, "node UP: back on the ring; its clients return to it");
        } else {
            node.metrics.went_down.increment(1);
            let open = node.active.load(Ordering::Relaxed);
            let action = match settings.on_node_down {
                OnNodeDown::Keep => "its open connections are kept",
                OnNodeDown::Close => "closing its open connections",
            };
            warn!(pool = %self.name, node = %node.name, addr = %node.addr, reason = %why,
                up = after, total, open_connections = open,
                "node DOWN: off the ring; its clients move to their next node; {action}");
            if settings.on_node_down == OnNodeDown::Close {
                self.close_node(node, CloseReason::NodeDown);
            }
        }
        if after == 0 {
            match settings.when_all_down {
                WhenAllDown::Reject => error!(pool = %self.name, total,
                    "all nodes DOWN: new connections are closed at once (when_all_down = \"reject\")"),
                WhenAllDown::Any => error!(pool = %self.name, total,
                    "all nodes DOWN: failing open, new connections use the ring of every node (when_all_down = \"any\")"),
            }
        } else if before == 0 {
            info!(pool = %self.name, up = after, total, "pool has a node in service again");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Duration;

    use super::*;
    use crate::config::Config;

    pub(super) fn pool_with(extra: &str) -> Pool {
        let cfg = Config::parse(
            &format!(
                r#"
[[listener]]
name = "l"
listen = "127.0.0.1:0"
pool = "p"
[pools.p]
connect_attempts = 2
{extra}
[[pools.p.nodes]]
name = "a"
addr = "127.0.0.1:1001"
[[pools.p.nodes]]
name = "b"
addr = "127.0.0.1:1002"
[[pools.p.nodes]]
name = "c"
addr = "127.0.0.1:1003"
"#
            ),
            "t.toml",
        )
        .unwrap();
        Pool::new(&cfg.pools["p"])
    }

    pub(super) fn pool() -> Pool {
        pool_with("")
    }

    /// Clients 0..n connected through `p` (registered on their nodes).
    pub(super) fn open_n(p: &Pool, n: u32) -> Vec<Live> {
        (0..n)
            .map(|i| {
                p.snapshot()
                    .candidates(ip(i))
                    .next()
                    .unwrap()
                    .open(ip(i), None)
            })
            .collect()
    }

    pub(super) fn ip(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i * 7919))
    }

    fn outcome(ok: bool) -> ProbeOutcome {
        ProbeOutcome {
            ok,
            detail: if ok { "ok".into() } else { "http 503".into() },
            latency: Duration::from_millis(1),
        }
    }

    #[test]
    fn taking_a_node_out_moves_only_its_clients_and_back_restores() {
        let p = pool();
        let before: Vec<String> = (0..2000)
            .map(|i| p.snapshot().select(ip(i)).next().unwrap().name.clone())
            .collect();
        assert!(p.set_up("b", false, "test"));
        assert!(!p.set_up("b", false, "test"), "no change, no rebuild");
        let s = p.snapshot();
        assert_eq!(s.members.len(), 2);
        for (i, was) in before.iter().enumerate() {
            let now = &s.select(ip(i as u32)).next().unwrap().name;
            if was != "b" {
                assert_eq!(now, was);
            } else {
                assert_ne!(now, "b");
            }
        }
        assert!(p.set_up("b", true, "test"));
        let s = p.snapshot();
        for (i, was) in before.iter().enumerate() {
            assert_eq!(&s.select(ip(i as u32)).next().unwrap().name, was);
        }
        assert!(!p.set_up("nope", false, "test"));
    }

    #[test]
    fn probes_apply_fall_and_rise() {
        let p = pool_with("[pools.p.health]\nrise = 2\nfall = 3");
        let b = p.node("b").unwrap().clone();
        p.probe_result(&b, outcome(false));
        p.probe_result(&b, outcome(false));
        assert!(b.is_up(), "2 failures < fall 3");
        p.probe_result(&b, outcome(true));
        p.probe_result(&b, outcome(false));
        p.probe_result(&b, outcome(false));
        assert!(b.is_up(), "a success resets the failure streak");
        p.probe_result(&b, outcome(false));
        assert!(!b.is_up());
        assert_eq!(p.snapshot().members.len(), 2);
        p.probe_result(&b, outcome(true));
        assert!(!b.is_up(), "1 success < rise 2");
        p.probe_result(&b, outcome(true));
        assert!(b.is_up());
        assert_eq!(p.snapshot().members.len(), 3);
        let h = b.health();
        assert_eq!(h.transitions, 2);
        assert_eq!(h.last.unwrap().detail, "ok");
    }

    #[test]
    fn passive_failures_take_a_node_down_and_a_success_resets_the_streak() {
        let p = pool_with("passive_failures = 2");
        let a = p.node("a").unwrap().clone();
        p.connect_failed(&a, "refused");
        p.connect_succeeded(&a);
        p.connect_failed(&a, "refused");
        assert!(a.is_up());
        p.connect_failed(&a, "refused");
        assert!(!a.is_up());
        // The probes bring it back, after `rise` successes.
        p.probe_result(&a, outcome(true));
        p.probe_result(&a, outcome(true));
        assert!(a.is_up());
    }

    pub(super) fn cfg_with(nodes: &str, extra: &str) -> PoolConfig {
        let text = format!(
            "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\n{extra}\n{nodes}"
        );
        Config::parse(&text, "t.toml").unwrap().pools["p"].clone()
    }

    pub(super) fn node_toml(name: &str, port: u16, weight: u32) -> String {
        format!("[[pools.p.nodes]]\nname = \"{name}\"\naddr = \"127.0.0.1:{port}\"\nweight = {weight}\n")
    }

    #[test]
    fn close_on_down_queues_the_nodes_connections_and_keep_does_not() {
        for (extra, queued) in [("on_node_down = \"close\"", true), ("", false)] {
            let p = pool_with(extra);
            let lives = open_n(&p, 60);
            let on_a = lives.iter().filter(|l| l.node().name == "a").count();
            p.set_up("a", false, "test");
            assert_eq!(p.closes_pending(), if queued { on_a } else { 0 }, "{extra}");
        }
    }
}
