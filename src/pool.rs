//! A pool: its nodes, their health and live counters, and the current ring snapshot.
//!
//! Connections load one immutable [`PoolSnapshot`] through `arc-swap` and never take
//! a lock. Health changes (probes, passive failures) go through [`Pool::probe_result`]
//! and [`Pool::connect_failed`]; when the set of nodes in service changes, a new ring
//! of those nodes is built and swapped in. Nothing here does network I/O.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{
    AdminState, HealthConfig, Keepalive, NodeConfig, OnNodeDown, PoolConfig, ProxyProtocol,
    WhenAllDown,
};
use crate::health::{NodeHealth, ProbeOutcome};
use crate::metrics::NodeMetrics;
use crate::ring::{Key, Ring, RingNode};

/// One backend node, its health and its live counters.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
    /// Ring weight (a reload may change it).
    weight: AtomicU32,
    /// Healthy (probes, passive failures). Nodes start up.
    up: AtomicBool,
    /// What the operator wants ([`AdminState`] as u8): only enabled nodes that
    /// are up are on the ring.
    admin: AtomicU8,
    /// The state the config file gave at the last load or reload: a reload
    /// applies the file's state only when it changed there, so a drain done
    /// through the admin endpoint survives unrelated reloads.
    config_state: AtomicU8,
    /// Hysteresis state and the last probe; only probes and state changes lock it.
    health: Mutex<NodeHealth>,
    /// Consecutive connect failures seen by real traffic.
    passive_failures: AtomicU32,
    /// Cancelled (and replaced) when the node goes down with `on_node_down = "close"`.
    close_token: ArcSwap<CancellationToken>,
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub connect_failures: AtomicU64,
    pub bytes_to_node: AtomicU64,
    pub bytes_to_client: AtomicU64,
    pub metrics: NodeMetrics,
}

impl Node {
    fn new(pool: &str, cfg: &NodeConfig, stop: &CancellationToken) -> Node {
        let metrics = NodeMetrics::new(pool, &cfg.name);
        metrics.up.set(1.0);
        metrics.admin_state.set(f64::from(cfg.state as u8));
        Node {
            name: cfg.name.clone(),
            addr: cfg.addr,
            weight: AtomicU32::new(cfg.weight),
            up: AtomicBool::new(true),
            admin: AtomicU8::new(cfg.state as u8),
            config_state: AtomicU8::new(cfg.state as u8),
            health: Mutex::new(NodeHealth::new(SystemTime::now())),
            passive_failures: AtomicU32::new(0),
            close_token: ArcSwap::from_pointee(stop.child_token()),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            bytes_to_node: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            metrics,
        }
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Healthy, as far as probes and passive failures know.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The operator's state: enabled, drain or disabled.
    pub fn admin_state(&self) -> AdminState {
        state_from_u8(self.admin.load(Ordering::Acquire))
    }

    /// On the ring for new connections: up and enabled.
    pub fn in_service(&self) -> bool {
        self.is_up() && self.admin_state() == AdminState::Enabled
    }

    /// A copy of the health state (for status output).
    pub fn health(&self) -> NodeHealth {
        self.lock_health().clone()
    }

    fn lock_health(&self) -> MutexGuard<'_, NodeHealth> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Token a new connection to this node watches: cancelled if the node goes
    /// down (or is removed) while the pool says `on_node_down = "close"`, and when
    /// the pool's stop token is cancelled (end of the shutdown grace): one token,
    /// so a connection waits on one thing.
    pub fn close_token(&self) -> Arc<CancellationToken> {
        self.close_token.load_full()
    }
}

/// Settings a connection or a probe needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub connect_attempts: u32,
    pub key_prefix_v4: u8,
    pub key_prefix_v6: u8,
    pub points_per_weight: u32,
    pub on_node_down: OnNodeDown,
    pub when_all_down: WhenAllDown,
    pub passive_failures: u32,
    pub proxy_protocol: ProxyProtocol,
    pub balance_factor_permille: Option<u32>,
    pub tcp_keepalive: Option<Keepalive>,
    pub health: HealthConfig,
}

impl From<&PoolConfig> for PoolSettings {
    fn from(c: &PoolConfig) -> Self {
        PoolSettings {
            connect_timeout: c.connect_timeout,
            idle_timeout: c.idle_timeout,
            connect_attempts: c.connect_attempts,
            key_prefix_v4: c.key_prefix_v4,
            key_prefix_v6: c.key_prefix_v6,
            points_per_weight: c.points_per_weight,
            on_node_down: c.on_node_down,
            when_all_down: c.when_all_down,
            passive_failures: c.passive_failures,
            proxy_protocol: c.proxy_protocol,
            balance_factor_permille: c.balance_factor_permille,
            tcp_keepalive: c.tcp_keepalive,
            health: c.health.clone(),
        }
    }
}

/// An immutable view used by connections: the ring over the nodes in service.
#[derive(Debug)]
pub struct PoolSnapshot {
    pub settings: Arc<PoolSettings>,
    /// Every configured node, in service or not, in file order.
    pub nodes: Vec<Arc<Node>>,
    /// Nodes on the ring; ring indexes refer to this list. Empty when every node
    /// is down and `when_all_down = "reject"`.
    pub members: Vec<Arc<Node>>,
    pub ring: Ring,
    /// Every node is down and the ring holds all of them (`when_all_down = "any"`).
    pub failing_open: bool,
}

impl PoolSnapshot {
    /// The hashing key of a client address under this pool's prefixes.
    pub fn key(&self, ip: IpAddr) -> Key {
        Key::from_ip(ip, self.settings.key_prefix_v4, self.settings.key_prefix_v6)
    }

    /// Nodes to try for a client, in order: the owner, then the next distinct nodes,
    /// at most `connect_attempts`.
    pub fn select(&self, ip: IpAddr) -> impl Iterator<Item = &Arc<Node>> + '_ {
        let key = self.key(ip);
        self.ring
            .candidates(&key, self.settings.connect_attempts as usize)
            .map(move |i| &self.members[i])
    }

    /// Nodes to try for a client's new connection. Without `balance_factor` this
    /// is [`select`](Self::select). With it, nodes whose open connections have
    /// reached their bound, ceil(factor x (open connections of the members + 1)
    /// / members), are skipped: the client goes to the next node along the ring
    /// (consistent hashing with bounded loads). A node below its bound keeps its
    /// clients.
    pub fn candidates(&self, ip: IpAddr) -> Selection<'_> {
        let key = self.key(ip);
        let attempts = self.settings.connect_attempts as usize;
        match self.settings.balance_factor_permille {
            None => Selection {
                snap: self,
                inner: self.ring.candidates(&key, attempts),
                bound: None,
                left: attempts,
                yielded: false,
                key,
            },
            Some(permille) => Selection {
                snap: self,
                // Walk the whole ring order; `left` stops after `attempts`.
                inner: self.ring.candidates(&key, usize::MAX),
                bound: Some(self.load_bound(permille)),
                left: attempts,
                yielded: false,
                key,
            },
        }
    }

    /// Open connections a member may have before it is skipped for new clients.
    pub fn load_bound(&self, permille: u32) -> u64 {
        let n = self.members.len().max(1) as u64;
        let total: u64 = self
            .members
            .iter()
            .map(|m| m.active.load(Ordering::Relaxed))
            .sum();
        // ceil(permille * (total + 1) / (1000 * n)), at least 1.
        ((u64::from(permille) * (total + 1)).div_ceil(1000 * n)).max(1)
    }

    /// The full order for a client: owner first, then every other member once.
    pub fn order(&self, ip: IpAddr) -> Vec<Arc<Node>> {
        self.ring
            .order(&self.key(ip))
            .into_iter()
            .map(|i| self.members[i].clone())
            .collect()
    }

    /// Share of the hash space (0..=1) the named node owns in this snapshot.
    pub fn share_of(&self, name: &str) -> f64 {
        self.members
            .iter()
            .position(|n| n.name == name)
            .map_or(0.0, |i| self.ring.share_of(i))
    }
}

/// The nodes a new connection tries, in order (see [`PoolSnapshot::candidates`]).
/// Lazy: nothing is collected per connection.
#[derive(Debug)]
pub struct Selection<'a> {
    snap: &'a PoolSnapshot,
    inner: crate::ring::Candidates<'a>,
    /// Skip members with this many open connections or more.
    bound: Option<u64>,
    left: usize,
    yielded: bool,
    key: Key,
}

impl<'a> Iterator for Selection<'a> {
    type Item = &'a Arc<Node>;

    fn next(&mut self) -> Option<&'a Arc<Node>> {
        if self.left == 0 {
            return None;
        }
        loop {
            let Some(i) = self.inner.next() else {
                if self.bound.is_some() && !self.yielded {
                    // Every member at its bound (only when connections race):
                    // the plain order.
                    self.bound = None;
                    self.inner = self.snap.ring.candidates(&self.key, self.left);
                    continue;
                }
                return None;
            };
            let node = &self.snap.members[i];
            if self
                .bound
                .is_some_and(|b| node.active.load(Ordering::Relaxed) >= b)
            {
                continue;
            }
            self.left -= 1;
            self.yielded = true;
            return Some(node);
        }
    }
}

/// A pool of nodes.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    /// Parent of every node's close token.
    stop: CancellationToken,
    snapshot: ArcSwap<PoolSnapshot>,
    /// Serialises state changes so rebuilds never publish out of order.
    rebuild: Mutex<()>,
}

impl Pool {
    pub fn new(cfg: &PoolConfig) -> Pool {
        Self::with_stop(cfg, &CancellationToken::new())
    }

    /// A pool whose connections are also closed when `stop` is cancelled.
    pub fn with_stop(cfg: &PoolConfig, stop: &CancellationToken) -> Pool {
        let stop = stop.child_token();
        let nodes: Vec<Arc<Node>> = cfg
            .nodes
            .iter()
            .map(|n| Arc::new(Node::new(&cfg.name, n, &stop)))
            .collect();
        let settings = Arc::new(PoolSettings::from(cfg));
        let snapshot = ArcSwap::from_pointee(build_snapshot(settings, nodes));
        Pool {
            name: cfg.name.clone(),
            stop,
            snapshot,
            rebuild: Mutex::new(()),
        }
    }

    /// Apply a new config of this pool (reload). Nodes with the same name and
    /// address stay (with their health state and counters; a new weight applies);
    /// others are added (starting up) or removed (no new connections; their open
    /// connections continue, or close with `on_node_down = "close"`). Settings,
    /// health included, apply from now on. One new ring is published.
    pub fn reconfigure(&self, cfg: &PoolConfig) -> PoolChange {
        let _guard = self.lock_rebuild();
        let old = self.snapshot();
        let mut change = PoolChange::default();
        let mut nodes = Vec::with_capacity(cfg.nodes.len());
        let close_on_disable = |n: &Arc<Node>| {
            let old = n.close_token.swap(Arc::new(self.stop.child_token()));
            old.cancel();
        };
        for nc in &cfg.nodes {
            match old
                .nodes
                .iter()
                .find(|n| n.name == nc.name && n.addr == nc.addr)
            {
                Some(n) => {
                    let w = n.weight.swap(nc.weight, Ordering::Relaxed);
                    if w != nc.weight {
                        change
                            .reweighted
                            .push(format!("{} {w}->{}", n.name, nc.weight));
                    }
                    let was = n.config_state.swap(nc.state as u8, Ordering::AcqRel);
                    if was != nc.state as u8 {
                        let before = n.admin.swap(nc.state as u8, Ordering::AcqRel);
                        if before != nc.state as u8 {
                            change
                                .state_changed
                                .push(format!("{} {}", n.name, nc.state.as_str()));
                            n.metrics.admin_state.set(f64::from(nc.state as u8));
                            if nc.state == AdminState::Disabled {
                                close_on_disable(n);
                            }
                        }
                    }
                    nodes.push(n.clone());
                }
                None => {
                    change.added.push(nc.name.clone());
                    nodes.push(Arc::new(Node::new(&cfg.name, nc, &self.stop)));
                }
            }
        }
        let settings = Arc::new(PoolSettings::from(cfg));
        let close = settings.on_node_down == OnNodeDown::Close;
        for n in &old.nodes {
            if !nodes.iter().any(|m| Arc::ptr_eq(m, n)) {
                change.removed.push(n.name.clone());
                n.metrics.ring_points.set(0.0);
                n.metrics.up.set(0.0);
                if close {
                    n.close_token.load().cancel();
                }
            }
        }
        change.settings_changed = *old.settings != *settings;
        self.snapshot
            .store(Arc::new(build_snapshot(settings, nodes)));
        change
    }

    /// The current snapshot (cheap; no lock).
    pub fn snapshot(&self) -> Arc<PoolSnapshot> {
        self.snapshot.load_full()
    }

    /// The current settings (a reload may replace them).
    pub fn settings(&self) -> Arc<PoolSettings> {
        self.snapshot.load().settings.clone()
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
        let before = state_from_u8(node.admin.swap(state as u8, Ordering::AcqRel));
        if before == state {
            return Some(before);
        }
        node.metrics.admin_state.set(f64::from(state as u8));
        let old = self.snapshot();
        self.snapshot.store(Arc::new(build_snapshot(
            old.settings.clone(),
            old.nodes.clone(),
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
                let old = node.close_token.swap(Arc::new(self.stop.child_token()));
                old.cancel();
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
                let old = node.close_token.swap(Arc::new(self.stop.child_token()));
                old.cancel();
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

fn state_from_u8(v: u8) -> AdminState {
    match v {
        1 => AdminState::Drain,
        2 => AdminState::Disabled,
        _ => AdminState::Enabled,
    }
}

fn build_snapshot(settings: Arc<PoolSettings>, nodes: Vec<Arc<Node>>) -> PoolSnapshot {
    let mut members: Vec<Arc<Node>> = nodes.iter().filter(|n| n.in_service()).cloned().collect();
    let mut failing_open = false;
    if members.is_empty() && settings.when_all_down == WhenAllDown::Any {
        // Fail open over the nodes the operator left enabled (health ignored).
        members = nodes
            .iter()
            .filter(|n| n.admin_state() == AdminState::Enabled)
            .cloned()
            .collect();
        failing_open = !members.is_empty();
    }
    let ring_nodes: Vec<RingNode> = members
        .iter()
        .map(|n| RingNode {
            name: &n.name,
            weight: n.weight(),
        })
        .collect();
    let ring = Ring::new(&ring_nodes, settings.points_per_weight);
    for n in &nodes {
        n.metrics.ring_points.set(0.0);
    }
    for (i, n) in members.iter().enumerate() {
        n.metrics.ring_points.set(f64::from(ring.points_of(i)));
    }
    PoolSnapshot {
        settings,
        nodes,
        members,
        ring,
        failing_open,
    }
}

/// What [`Pool::reconfigure`] changed, for the reload summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// `"name old->new"`.
    pub reweighted: Vec<String>,
    /// `"name state"` for nodes whose `state` the reload changed.
    pub state_changed: Vec<String>,
    pub settings_changed: bool,
}

impl PoolChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.reweighted.is_empty()
            && self.state_changed.is_empty()
            && !self.settings_changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn pool_with(extra: &str) -> Pool {
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

    fn pool() -> Pool {
        pool_with("")
    }

    fn ip(i: u32) -> IpAddr {
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
    fn select_is_bounded_by_connect_attempts() {
        let p = pool();
        let s = p.snapshot();
        for i in 0..200 {
            let names: Vec<&str> = s.select(ip(i)).map(|n| n.name.as_str()).collect();
            assert_eq!(names.len(), 2);
            assert_ne!(names[0], names[1]);
            assert_eq!(s.order(ip(i)).len(), 3);
        }
    }

    #[test]
    fn bounded_candidates_skip_nodes_at_their_bound_and_fall_back_when_all_are() {
        let plain = pool();
        let p = pool_with("balance_factor = 1.0");
        for i in 0..100 {
            let s = plain.snapshot();
            let a: Vec<&str> = s.candidates(ip(i)).map(|n| n.name.as_str()).collect();
            let b: Vec<&str> = s.select(ip(i)).map(|n| n.name.as_str()).collect();
            assert_eq!(a, b, "without balance_factor: the plain order");
        }
        let s = p.snapshot();
        let order: Vec<String> = s.order(ip(7)).iter().map(|n| n.name.clone()).collect();
        // The client's own node holds 2, the others 0: bound ceil(1.0 x 3 / 3) = 1.
        p.node(&order[0])
            .unwrap()
            .active
            .store(2, Ordering::Relaxed);
        let got: Vec<&str> = s.candidates(ip(7)).map(|n| n.name.as_str()).collect();
        assert_eq!(got, vec![order[1].as_str(), order[2].as_str()]);
        // Every member at or past the bound (a race): the plain order, bounded by
        // connect_attempts.
        for n in &s.members {
            n.active.store(5, Ordering::Relaxed);
        }
        let got: Vec<&str> = s.candidates(ip(7)).map(|n| n.name.as_str()).collect();
        assert_eq!(got, vec![order[0].as_str(), order[1].as_str()]);
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

    #[test]
    fn all_down_rejects_or_fails_open() {
        let p = pool();
        for n in ["a", "b", "c"] {
            p.set_up(n, false, "test");
        }
        let s = p.snapshot();
        assert!(s.members.is_empty() && !s.failing_open);
        assert_eq!(s.select(ip(1)).count(), 0);

        let p = pool_with("when_all_down = \"any\"");
        let full: Vec<String> = (0..100)
            .map(|i| p.snapshot().select(ip(i)).next().unwrap().name.clone())
            .collect();
        for n in ["a", "b", "c"] {
            p.set_up(n, false, "test");
        }
        let s = p.snapshot();
        assert!(s.failing_open);
        for (i, was) in full.iter().enumerate() {
            assert_eq!(&s.select(ip(i as u32)).next().unwrap().name, was);
        }
    }

    fn cfg_with(nodes: &str, extra: &str) -> PoolConfig {
        let text = format!(
            "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\n{extra}\n{nodes}"
        );
        Config::parse(&text, "t.toml").unwrap().pools["p"].clone()
    }

    fn node_toml(name: &str, port: u16, weight: u32) -> String {
        format!("[[pools.p.nodes]]\nname = \"{name}\"\naddr = \"127.0.0.1:{port}\"\nweight = {weight}\n")
    }

    #[test]
    fn reconfigure_keeps_stayed_nodes_adds_removes_and_reweights() {
        let abc = [
            node_toml("a", 1001, 1),
            node_toml("b", 1002, 1),
            node_toml("c", 1003, 1),
        ]
        .concat();
        let p = Pool::new(&cfg_with(&abc, ""));
        let a = p.node("a").unwrap();
        a.total.store(7, Ordering::Relaxed);
        p.set_up("b", false, "test");
        let before: Vec<String> = (0..3000)
            .map(|i| p.snapshot().select(ip(i)).next().unwrap().name.clone())
            .collect();
        // b stays (still down), c removed, d added, a weight 2.
        let next = [
            node_toml("a", 1001, 2),
            node_toml("b", 1002, 1),
            node_toml("d", 1004, 1),
        ]
        .concat();
        let change = p.reconfigure(&cfg_with(&next, "on_node_down = \"close\""));
        assert_eq!(change.added, vec!["d"]);
        assert_eq!(change.removed, vec!["c"]);
        assert_eq!(change.reweighted, vec!["a 1->2"]);
        assert!(change.settings_changed);
        let a2 = p.node("a").unwrap();
        assert!(Arc::ptr_eq(&a, &a2), "a stayed: same node, same counters");
        assert_eq!(a2.total.load(Ordering::Relaxed), 7);
        assert!(!p.node("b").unwrap().is_up(), "b keeps its health state");
        assert!(p.node("d").unwrap().is_up(), "added nodes start up");
        assert!(p.node("c").is_none());
        let s = p.snapshot();
        let names: Vec<&str> = s.members.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, vec!["a", "d"]);
        // Clients of a stay on a (its old points remain) unless the new node d
        // took them; nobody goes to c.
        for (i, was) in before.iter().enumerate() {
            let now = &s.select(ip(i as u32)).next().unwrap().name;
            assert_ne!(now, "c");
            if was == "a" {
                assert!(now == "a" || now == "d", "{now}");
            }
        }
        // An address change under the same name is a new node (fresh state).
        let moved = [
            node_toml("a", 2001, 2),
            node_toml("b", 1002, 1),
            node_toml("d", 1004, 1),
        ]
        .concat();
        let change = p.reconfigure(&cfg_with(&moved, ""));
        assert_eq!(
            (change.added.clone(), change.removed.clone()),
            (vec!["a".to_string()], vec!["a".to_string()])
        );
        assert_eq!(p.node("a").unwrap().total.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn removing_a_node_with_close_cancels_its_connections_token() {
        let ab = [node_toml("a", 1001, 1), node_toml("b", 1002, 1)].concat();
        let p = Pool::new(&cfg_with(&ab, "on_node_down = \"close\""));
        let tok_b = p.node("b").unwrap().close_token();
        let tok_a = p.node("a").unwrap().close_token();
        p.reconfigure(&cfg_with(
            &node_toml("a", 1001, 1),
            "on_node_down = \"close\"",
        ));
        assert!(tok_b.is_cancelled());
        assert!(!tok_a.is_cancelled());
        let p = Pool::new(&cfg_with(&ab, ""));
        let tok_b = p.node("b").unwrap().close_token();
        p.reconfigure(&cfg_with(&node_toml("a", 1001, 1), ""));
        assert!(
            !tok_b.is_cancelled(),
            "keep: removed node's connections continue"
        );
    }

    #[test]
    fn close_on_down_cancels_the_nodes_token_and_replaces_it() {
        let p = pool_with("on_node_down = \"close\"");
        let a = p.node("a").unwrap().clone();
        let tok = a.close_token();
        p.set_up("a", false, "test");
        assert!(tok.is_cancelled());
        assert!(!a.close_token().is_cancelled());

        let p = pool();
        let a = p.node("a").unwrap().clone();
        let tok = a.close_token();
        p.set_up("a", false, "test");
        assert!(!tok.is_cancelled(), "keep is the default");
    }
}
