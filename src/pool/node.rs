//! One backend node: its identity, weight, health (the hysteresis state from
//! [`crate::health::state`]), the operator's admin state, what its agent
//! reported ([`AgentState`], kept apart from both), and its live counters.
//!
//! Everything here is an atomic, a `Mutex` only probes and state changes take, or
//! an `ArcSwap`: a connection reads a node without a lock. A connection holds a
//! [`Slot`], its place in the node's `active` count, from the moment it picks the
//! node (before the connect) until it ends; a node with `max_connections` gives
//! out places with a compare-and-swap, so two racing connections never both take
//! its last one. A node never decides
//! whether it is on the ring; the [`Pool`](super::Pool) does, and publishes a new
//! snapshot. No I/O.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::agent::{AgentState, AgentWeight};
use crate::config::{AdminState, NodeConfig};
use crate::health::state::NodeHealth;
use crate::metrics::NodeMetrics;

/// One backend node, its health and its live counters.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
    /// Ring weight (a reload may change it).
    pub(super) weight: AtomicU32,
    /// Healthy (probes, passive failures). Nodes start up.
    pub(super) up: AtomicBool,
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
    pub(super) passive_failures: AtomicU32,
    /// Its open connections, so ringlb can close chosen ones (`conns.rs`).
    pub(super) conns: super::conns::Registry,
    /// When the node last entered service with its current ring points, in ms
    /// after [`epoch`] plus 1; 0 while it is not in service (rehome's `after`).
    service_since: AtomicU64,
    /// Its ring points when `service_since` was set.
    service_points: AtomicU32,
    /// Connections holding a [`Slot`] of this node: open ones, and those still
    /// connecting to it.
    pub active: AtomicU64,
    /// The effective `max_connections` ([`NO_CAP`] when none): the agent's
    /// `maxconn:N` while it has one, else the configured one. The one the hot
    /// path reads.
    max_connections: AtomicU64,
    /// The configured `max_connections` ([`NO_CAP`] when unset); a reload may
    /// change it.
    config_max_connections: AtomicU64,
    /// What the node's agent has set (only the agent, or a reload that removes
    /// `[agent]`, changes it); only agent reports, status and rebuilds lock it.
    agent: Mutex<AgentState>,
    /// The agent lets the node take new clients (it has not said `down`,
    /// `drain`, `maint` or a zero weight): the agent's part of
    /// [`Node::in_service`], kept beside the state so that reads need no lock.
    agent_serving: AtomicBool,
    /// Open connections on this node whose client's home (the ring's first node
    /// for its key) is another node now; kept by the pool's lifecycle loop.
    pub misplaced: AtomicU64,
    /// Connections of this node closed so that their client reconnects home
    /// (rehome).
    pub rehomed: AtomicU64,
    pub total: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Bytes forwarded, live: the one counter per direction the data path
    /// touches. `ringlb_bytes_total` catches up from these when metrics are
    /// scraped ([`Node::sync_byte_metrics`]) and when the node is dropped.
    pub bytes_to_node: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// How much of each of the two counts `ringlb_bytes_total` has been given.
    bytes_synced: [AtomicU64; 2],
    pub metrics: NodeMetrics,
}

/// The bytes of its last connections reach the metrics even when no scrape
/// comes between them and the node's removal.
impl Drop for Node {
    fn drop(&mut self) {
        self.sync_byte_metrics();
    }
}

impl Node {
    pub(super) fn new(pool: &str, cfg: &NodeConfig) -> Node {
        let metrics = NodeMetrics::new(pool, &cfg.name);
        metrics.up.set(1.0);
        metrics.admin_state.set(f64::from(cfg.state as u8));
        metrics
            .max_connections
            .set(cfg.max_connections.map_or(0.0, f64::from));
        metrics.agent_up.set(1.0);
        metrics.agent_weight_percent.set(100.0);
        let cap = cfg.max_connections.map_or(NO_CAP, u64::from);
        Node {
            name: cfg.name.clone(),
            addr: cfg.addr,
            weight: AtomicU32::new(cfg.weight),
            up: AtomicBool::new(true),
            admin: AtomicU8::new(cfg.state as u8),
            config_state: AtomicU8::new(cfg.state as u8),
            health: Mutex::new(NodeHealth::new(SystemTime::now())),
            passive_failures: AtomicU32::new(0),
            conns: super::conns::Registry::default(),
            service_since: AtomicU64::new(0),
            service_points: AtomicU32::new(0),
            active: AtomicU64::new(0),
            max_connections: AtomicU64::new(cap),
            config_max_connections: AtomicU64::new(cap),
            agent: Mutex::new(AgentState::default()),
            agent_serving: AtomicBool::new(true),
            misplaced: AtomicU64::new(0),
            rehomed: AtomicU64::new(0),
            total: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            bytes_to_node: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            bytes_synced: [AtomicU64::new(0), AtomicU64::new(0)],
            metrics,
        }
    }

    /// Bring the node's `ringlb_bytes_total` counters up to its live byte
    /// counts. Safe to run from several places at once: each byte is added
    /// exactly once (the synced mark only moves forward).
    pub fn sync_byte_metrics(&self) {
        let pairs = [
            (&self.bytes_to_node, &self.metrics.bytes_to_node),
            (&self.bytes_to_client, &self.metrics.bytes_to_client),
        ];
        for ((live, counter), synced) in pairs.into_iter().zip(&self.bytes_synced) {
            let now = live.load(Ordering::Relaxed);
            let before = synced.fetch_max(now, Ordering::Relaxed);
            if now > before {
                counter.increment(now - before);
            }
        }
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// The node's `max_connections`, if it has one.
    pub fn max_connections(&self) -> Option<u64> {
        let cap = self.max_connections.load(Ordering::Relaxed);
        (cap != NO_CAP).then_some(cap)
    }

    /// At its cap: no new connection gets a place (status and tools; the hot
    /// path asks [`Node::reserve`], which decides atomically).
    pub fn is_full(&self) -> bool {
        self.active.load(Ordering::Relaxed) >= self.max_connections.load(Ordering::Relaxed)
    }

    /// A (re)load gave this cap; returns the configured one before. Open
    /// connections stay even when they are more than a lowered cap: only new
    /// ones wait for room. An agent's `maxconn:N` still wins while it has one.
    pub(super) fn set_max_connections(&self, cap: Option<u32>) -> Option<u64> {
        let new = cap.map_or(NO_CAP, u64::from);
        let old = self.config_max_connections.swap(new, Ordering::Relaxed);
        let agent = self.lock_agent().set.maxconn;
        self.refresh_cap(agent);
        (old != NO_CAP).then_some(old)
    }

    /// The configured `max_connections`, whatever the agent says.
    pub fn config_max_connections(&self) -> Option<u64> {
        let cap = self.config_max_connections.load(Ordering::Relaxed);
        (cap != NO_CAP).then_some(cap)
    }

    /// Make the effective cap the agent's `maxconn` (`Some(0)`: no cap, as in
    /// HAProxy) or, without one, the configured cap. The metric follows.
    pub(super) fn refresh_cap(&self, agent_maxconn: Option<u64>) {
        let configured = self.config_max_connections.load(Ordering::Relaxed);
        let cap = match agent_maxconn {
            Some(0) => NO_CAP,
            Some(n) => n,
            None => configured,
        };
        if self.max_connections.swap(cap, Ordering::Relaxed) != cap {
            self.metrics
                .max_connections
                .set(if cap == NO_CAP { 0.0 } else { cap as f64 });
        }
    }

    /// A copy of what the agent has set and the last checks (status output).
    pub fn agent(&self) -> AgentState {
        self.lock_agent().clone()
    }

    pub(super) fn lock_agent(&self) -> MutexGuard<'_, AgentState> {
        self.agent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep [`Node::in_service`]'s agent part in step with `state`; true if it
    /// changed.
    pub(super) fn set_agent_serving(&self, state: &AgentState) -> bool {
        let serving = state.serving();
        self.agent_serving.swap(serving, Ordering::AcqRel) != serving
    }

    /// The agent lets the node take new clients.
    pub fn agent_serving(&self) -> bool {
        self.agent_serving.load(Ordering::Acquire)
    }

    /// Points on the ring at `points_per_weight`: weight x points_per_weight,
    /// scaled by the agent's weight (`NN%` of the configured weight, capped at
    /// weight 256 as in HAProxy; or an absolute `weight:N`). Points, not
    /// weights, are scaled, so 50% of weight 1 is half its points; a weight
    /// above 0% keeps at least one point.
    pub fn ring_points(&self, points_per_weight: u32) -> u32 {
        let base = u64::from(self.weight()) * u64::from(points_per_weight);
        let max = 256 * u64::from(points_per_weight);
        let points = match self.lock_agent().set.weight {
            None => base,
            Some(AgentWeight::Percent(0) | AgentWeight::Absolute(0)) => 0,
            Some(AgentWeight::Percent(p)) => (base * u64::from(p.min(25_600)) / 100).clamp(1, max),
            Some(AgentWeight::Absolute(w)) => u64::from(w.min(256)) * u64::from(points_per_weight),
        };
        u32::try_from(points).unwrap_or(u32::MAX)
    }

    /// Take a place for one new connection, or `None` when the node is at its
    /// cap. Without a cap this is one `fetch_add`, as the count always was; with
    /// one, a compare-and-swap below the cap, so the cap holds under any race.
    #[inline]
    pub(super) fn reserve(self: &Arc<Self>) -> Option<Slot> {
        let cap = self.max_connections.load(Ordering::Relaxed);
        if cap == NO_CAP {
            self.active.fetch_add(1, Ordering::Relaxed);
        } else {
            self.active
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < cap).then_some(n + 1)
                })
                .ok()?;
        }
        self.metrics.active.increment(1.0);
        Some(Slot(self.clone()))
    }

    /// Healthy, as far as probes and passive failures know.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The operator's state: enabled, drain or disabled.
    pub fn admin_state(&self) -> AdminState {
        state_from_u8(self.admin.load(Ordering::Acquire))
    }

    /// On the ring for new connections: healthy (probes), enabled (operator)
    /// and serving (agent). The one place membership is derived from the three.
    pub fn in_service(&self) -> bool {
        self.is_up() && self.admin_state() == AdminState::Enabled && self.agent_serving()
    }

    /// A copy of the health state (for status output).
    pub fn health(&self) -> NodeHealth {
        self.lock_health().clone()
    }

    pub(super) fn lock_health(&self) -> MutexGuard<'_, NodeHealth> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open connections that reached this node (connecting ones are not counted
    /// here; they are in `active`).
    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }

    /// A new snapshot put the node on the ring with `points` points (`None`:
    /// not on it). Entering service, or a change of its points while in
    /// service, restarts the clock rehome's `after` waits on.
    pub(super) fn mark_service(&self, points: Option<u32>, now: Instant) {
        match points {
            None => self.service_since.store(0, Ordering::Relaxed),
            Some(p) => {
                let was = self.service_points.swap(p, Ordering::Relaxed);
                if was != p || self.service_since.load(Ordering::Relaxed) == 0 {
                    let ms = now.saturating_duration_since(epoch()).as_millis() as u64;
                    self.service_since.store(ms + 1, Ordering::Relaxed);
                }
            }
        }
    }

    /// How long the node has been in service, without a break and with its
    /// current ring points (`None`: not in service).
    pub fn in_service_for(&self, now: Instant) -> Option<Duration> {
        let since = self.service_since.load(Ordering::Relaxed);
        if since == 0 {
            return None;
        }
        let at = epoch() + Duration::from_millis(since - 1);
        Some(now.saturating_duration_since(at))
    }

    /// Set the operator's state; returns the one before. The metric follows.
    pub(super) fn swap_admin_state(&self, state: AdminState) -> AdminState {
        let before = state_from_u8(self.admin.swap(state as u8, Ordering::AcqRel));
        if before != state {
            self.metrics.admin_state.set(f64::from(state as u8));
        }
        before
    }

    /// The state the config file gave this node at the last load or reload.
    pub fn config_state(&self) -> AdminState {
        state_from_u8(self.config_state.load(Ordering::Acquire))
    }

    /// A (re)load gave `state` for this node: it applies only if the file's state
    /// changed since the last load, so a state set through the admin endpoint
    /// survives unrelated reloads. Returns true if the operator's state changed.
    pub(super) fn apply_config_state(&self, state: AdminState) -> bool {
        let was = self.config_state.swap(state as u8, Ordering::AcqRel);
        was != state as u8 && self.swap_admin_state(state) != state
    }
}

/// The instant `service_since` counts from (the first use in the process).
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// `max_connections` of a node without a cap.
const NO_CAP: u64 = u64::MAX;

/// One connection's place in a node's `active` count (see [`Node::reserve`]),
/// given back when dropped: when the connect fails, or when the connection ends,
/// whatever way its task ends.
#[derive(Debug)]
pub struct Slot(Arc<Node>);

impl Slot {
    /// The node this place is on.
    pub fn node(&self) -> &Arc<Node> {
        &self.0
    }
}

impl std::ops::Deref for Slot {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.active.decrement(1.0);
    }
}

fn state_from_u8(v: u8) -> AdminState {
    match v {
        1 => AdminState::Drain,
        2 => AdminState::Disabled,
        _ => AdminState::Enabled,
    }
}

#[cfg(test)]
mod byte_metrics {
    use super::*;
    use crate::config::{AdminState, NodeConfig};

    /// `ringlb_bytes_total` follows the live counts at each sync, adds each
    /// byte once however often it runs, and gets the last bytes when the node
    /// is dropped.
    #[test]
    fn the_byte_metrics_catch_up_at_sync_and_at_drop() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let value = |direction: &str| -> Option<u64> {
            let text = handle.render();
            let key =
                format!("ringlb_bytes_total{{pool=\"p\",node=\"a\",direction=\"{direction}\"}} ");
            let line = text.lines().find(|l| l.starts_with(&key))?;
            line[key.len()..].trim().parse().ok()
        };
        metrics::with_local_recorder(&recorder, || {
            let cfg = NodeConfig {
                name: "a".into(),
                addr_text: "127.0.0.1:1".into(),
                addr: "127.0.0.1:1".parse().unwrap(),
                weight: 1,
                state: AdminState::Enabled,
                max_connections: None,
            };
            let node = Node::new("p", &cfg);
            node.bytes_to_node.fetch_add(100, Ordering::Relaxed);
            node.bytes_to_client.fetch_add(7, Ordering::Relaxed);
            assert_eq!(value("to_node"), Some(0), "nothing before a sync");
            node.sync_byte_metrics();
            node.sync_byte_metrics();
            assert_eq!(value("to_node"), Some(100));
            assert_eq!(value("to_client"), Some(7));
            node.bytes_to_node.fetch_add(23, Ordering::Relaxed);
            drop(node);
            assert_eq!(value("to_node"), Some(123), "the last bytes at drop");
            assert_eq!(value("to_client"), Some(7));
        });
    }
}
