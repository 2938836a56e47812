//! The `/status` document as types: [`Status`] and its parts (listeners, pools,
//! nodes, the last probe, workers, reloads), built from a [`Handle`] by
//! [`status`]. `/status` serializes it and the HTML page renders it, so both show
//! one set of facts. Only reads: the handle's snapshots and counters, and copies
//! of the last reload and each node's health (short locks); no I/O.
//!
//! The JSON form is a contract (tests, dashboards and scripts read it): every key,
//! its nesting and its value type stay as they are. Timestamps are RFC 3339 in
//! whole seconds, durations as in the config (`2s`, `1m30s`), addresses as text,
//! enums as their config words.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

use crate::config::{fmt_duration, AdminState, HealthKind, Keepalive, ProxyProtocol};
use crate::handle::{Handle, ListenerView, ReloadRecord};
use crate::health::ProbeRecord;
use crate::pool::{CloseReason, Node, Pool, PoolSnapshot};

pub use super::agent_status::{AgentCheckStatus, AgentSettingsStatus, AgentStatus};
use crate::workers::WorkerLoad;

/// The whole `/status` document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// The config file.
    #[serde(serialize_with = "display_path")]
    pub config: PathBuf,
    /// Config generation: 1 at start, +1 per applied reload.
    pub generation: u64,
    #[serde(serialize_with = "rfc3339")]
    pub started: SystemTime,
    /// This process: its pid, version, start, and the upgrade it came from.
    pub process: ProcessStatus,
    pub reloads: ReloadCounts,
    pub last_reload: Option<LastReload>,
    pub listeners: Vec<ListenerStatus>,
    pub pools: Vec<PoolStatus>,
    pub workers: Vec<WorkerStatus>,
    /// The charts' samples: on the page always, in `/status` only when asked
    /// (`?history=1`), so the document stays small for scrapers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<super::history::HistoryStatus>,
}

/// The process answering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessStatus {
    pub pid: u32,
    pub version: String,
    #[serde(serialize_with = "rfc3339")]
    pub started: SystemTime,
    pub started_unix: u64,
    /// The process this one took over from in a binary upgrade (`null`: started
    /// fresh).
    pub upgraded_from: Option<UpgradedFrom>,
    /// The process this one handed over to (it only drains now).
    pub handed_over_to: Option<u32>,
    /// Whether `GET /ready` answers 200.
    pub ready: bool,
    /// Why it does not (its 503 body), `null` when ready.
    pub not_ready_reason: Option<String>,
}

/// The predecessor of an upgraded process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpgradedFrom {
    pub pid: u32,
    /// When this process took over.
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    pub at_unix: u64,
    /// From this process's first word to the old one until it accepted.
    pub takeover_ms: u64,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reloads applied and refused since the start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadCounts {
    pub ok: u64,
    pub failed: u64,
}

/// The outcome of the last reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastReload {
    pub ok: bool,
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    /// Config generation after it.
    pub generation: u64,
    /// The change summary, or every problem found.
    pub message: String,
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerStatus {
    pub name: String,
    /// The configured address.
    pub listen: SocketAddr,
    /// The bound address (the real port when the config says `:0`).
    pub local_addr: SocketAddr,
    pub pool: String,
    pub max_connections: usize,
    /// In words (`off`, `on, the kernel's settings`, ...).
    pub tcp_keepalive: String,
    pub active_connections: usize,
}

/// One pool: its settings, health summary and nodes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolStatus {
    pub name: String,
    pub nodes_up: usize,
    pub nodes_total: usize,
    /// Every node is down and the pool uses them all (`when_all_down = "any"`).
    pub failing_open: bool,
    #[serde(serialize_with = "label")]
    pub proxy_protocol: ProxyProtocol,
    /// Bounded-load factor (e.g. 1.25), if set.
    pub balance_factor: Option<f64>,
    pub tcp_keepalive: String,
    /// The per-node connection bound a new connection sees now, if bounded.
    pub load_bound: Option<u64>,
    pub health: HealthStatus,
    /// Closes per second ringlb decides on (0: unpaced).
    pub close_rate: u32,
    /// `rehome` (`null`: off).
    pub rehome: Option<RehomeStatus>,
    /// Closes waiting for their turn under `close_rate`.
    pub closes_pending: usize,
    /// Connections the pool closed itself since start, per reason.
    pub closed: BTreeMap<&'static str, u64>,
    /// The pool's agent settings (`null`: no agent).
    pub agent: Option<AgentSettingsStatus>,
    /// DNS discovery (`null`: the pool lists its nodes).
    pub discover: Option<DiscoverStatus>,
    pub nodes: Vec<NodeStatus>,
}

/// A pool's DNS discovery: its settings, the last resolution and the nodes it
/// gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiscoverStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub port: Option<u16>,
    #[serde(serialize_with = "duration")]
    pub interval: Duration,
    /// `IP:port`, or `null`: the system's resolver.
    pub resolver: Option<SocketAddr>,
    #[serde(serialize_with = "duration")]
    pub remove_after: Duration,
    /// `null`: none yet.
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_resolution_at: Option<SystemTime>,
    /// `ok`, `pending`, or `failed: why` (the last good nodes stay).
    pub outcome: String,
    pub nodes: Vec<String>,
    pub resolutions_ok: u64,
    pub resolutions_failed: u64,
}

impl From<crate::discovery::DiscoveryStatus> for DiscoverStatus {
    fn from(d: crate::discovery::DiscoveryStatus) -> Self {
        let c = d.config;
        DiscoverStatus {
            name: c.name,
            kind: c.kind.as_str(),
            port: c.port,
            interval: c.interval,
            resolver: c.resolver,
            remove_after: c.remove_after,
            last_resolution_at: d.last_resolution_at,
            outcome: d.outcome,
            nodes: d.nodes,
            resolutions_ok: d.resolutions_ok,
            resolutions_failed: d.resolutions_failed,
        }
    }
}

/// A pool's `rehome` setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RehomeStatus {
    #[serde(serialize_with = "duration")]
    pub after: Duration,
    pub rate: u32,
}

/// A pool's health-check settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthStatus {
    #[serde(serialize_with = "label")]
    pub kind: HealthKind,
    #[serde(serialize_with = "duration")]
    pub interval: Duration,
    #[serde(serialize_with = "duration")]
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// Health as probes and passive failures see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Up,
    Down,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
        }
    }
}

/// One node: health, operator state, place on the ring, counters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: NodeState,
    #[serde(serialize_with = "label")]
    pub admin_state: AdminState,
    /// On the ring for new connections.
    pub in_service: bool,
    /// When it entered its current health state.
    #[serde(serialize_with = "rfc3339")]
    pub since: SystemTime,
    /// Why it entered its current health state (empty at start).
    pub reason: String,
    pub last_probe: Option<ProbeStatus>,
    pub probes: u64,
    pub transitions: u64,
    /// Open connections, with those still connecting (a place is taken when a
    /// connection picks the node).
    pub active_connections: u64,
    /// The node's cap now (`null`: none): the agent's `maxconn` while it has
    /// one, else the configured one.
    pub max_connections: Option<u64>,
    /// Open connections whose client's home (its ring node now) is another
    /// node (recounted a few times a second).
    pub misplaced: u64,
    /// Connections closed so their client reconnects home (rehome).
    pub rehomed: u64,
    /// The configured cap (`null`: none).
    pub configured_max_connections: Option<u64>,
    pub total_connections: u64,
    pub connect_failures: u64,
    pub bytes_to_node: u64,
    pub bytes_to_client: u64,
    /// Points on the ring (0 when off it).
    pub ring_points: u32,
    /// Share of the hash space in percent, two decimals (0.0 when off the ring).
    pub ring_share_pct: f64,
    /// What its agent reported (`null`: the pool has no agent).
    pub agent: Option<AgentStatus>,
}

/// A node's last probe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeStatus {
    pub ok: bool,
    /// What was seen: `http 200`, `connect refused`, ...
    pub detail: String,
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    /// Milliseconds, three decimals.
    pub latency_ms: f64,
}

/// One data-plane worker's connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerStatus {
    pub worker: usize,
    /// Open now.
    pub active: usize,
    /// Admitted since the start.
    pub accepted: u64,
}

/// The `/status` document of a running balancer, read from its handle.
pub fn status(handle: &Handle) -> Status {
    let config = handle.config();
    let (ok, failed) = handle.reload_counts();
    let readiness = handle.readiness();
    Status {
        config: config.source.clone(),
        generation: handle.generation(),
        started: handle.started(),
        process: ProcessStatus {
            pid: handle.pid(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started: handle.started(),
            started_unix: unix_secs(handle.started()),
            upgraded_from: handle.upgraded_from().map(|p| UpgradedFrom {
                pid: p.pid,
                at: p.at,
                at_unix: unix_secs(p.at),
                takeover_ms: p.takeover_ms,
            }),
            handed_over_to: handle.handed_over_to(),
            ready: readiness.is_ok(),
            not_ready_reason: readiness.err(),
        },
        reloads: ReloadCounts { ok, failed },
        last_reload: handle.last_reload().map(LastReload::from),
        listeners: handle.listeners().iter().map(ListenerStatus::of).collect(),
        pools: handle
            .pools()
            .iter()
            .map(|(name, pool)| {
                PoolStatus::of(name, pool, handle.discovery(name).map(DiscoverStatus::from))
            })
            .collect(),
        workers: handle
            .workers()
            .iter()
            .map(|w| WorkerStatus::of(w))
            .collect(),
        history: None,
    }
}

impl From<ReloadRecord> for LastReload {
    fn from(r: ReloadRecord) -> LastReload {
        LastReload {
            ok: r.ok,
            at: r.at,
            generation: r.generation,
            message: r.message,
        }
    }
}

impl ListenerStatus {
    fn of(l: &ListenerView) -> ListenerStatus {
        let st = l.shared.state.load();
        ListenerStatus {
            name: st.config.name.clone(),
            listen: st.config.listen,
            local_addr: l.local_addr,
            pool: st.config.pool.clone(),
            max_connections: st.config.max_connections,
            tcp_keepalive: Keepalive::describe(st.config.tcp_keepalive.as_ref()),
            active_connections: l.shared.active.load(Ordering::Relaxed),
        }
    }
}

impl PoolStatus {
    fn of(name: &str, pool: &Pool, discover: Option<DiscoverStatus>) -> PoolStatus {
        let snap = &pool.snapshot();
        let s = &snap.settings;
        let h = &s.health;
        PoolStatus {
            name: name.to_string(),
            nodes_up: snap.nodes.iter().filter(|n| n.is_up()).count(),
            nodes_total: snap.nodes.len(),
            failing_open: snap.failing_open,
            proxy_protocol: s.proxy_protocol,
            balance_factor: s.balance_factor_permille.map(|p| f64::from(p) / 1000.0),
            tcp_keepalive: Keepalive::describe(s.tcp_keepalive.as_ref()),
            load_bound: s.balance_factor_permille.map(|p| snap.load_bound(p)),
            health: HealthStatus {
                kind: h.kind,
                interval: h.interval,
                timeout: h.timeout,
                rise: h.rise,
                fall: h.fall,
            },
            close_rate: s.close_rate,
            rehome: s.rehome.map(|r| RehomeStatus {
                after: r.after,
                rate: r.rate,
            }),
            closes_pending: pool.closes_pending(),
            closed: CloseReason::ALL
                .iter()
                .map(|&r| (r.as_str(), pool.closed(r)))
                .collect(),
            agent: s.agent.as_ref().map(AgentSettingsStatus::from),
            discover,
            nodes: snap.nodes.iter().map(|n| NodeStatus::of(snap, n)).collect(),
        }
    }
}

impl NodeStatus {
    fn of(snap: &PoolSnapshot, n: &Arc<Node>) -> NodeStatus {
        let health = n.health();
        let on_ring = snap.members.iter().position(|m| Arc::ptr_eq(m, n));
        let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        NodeStatus {
            name: n.name.clone(),
            addr: n.addr,
            weight: n.weight(),
            state: if n.is_up() {
                NodeState::Up
            } else {
                NodeState::Down
            },
            admin_state: n.admin_state(),
            in_service: on_ring.is_some(),
            since: health.since,
            reason: health.reason,
            last_probe: health.last.as_ref().map(ProbeStatus::from),
            probes: health.probes,
            transitions: health.transitions,
            active_connections: count(&n.active),
            max_connections: n.max_connections(),
            misplaced: count(&n.misplaced),
            rehomed: count(&n.rehomed),
            configured_max_connections: n.config_max_connections(),
            total_connections: count(&n.total),
            connect_failures: count(&n.connect_failures),
            bytes_to_node: count(&n.bytes_to_node),
            bytes_to_client: count(&n.bytes_to_client),
            ring_points: on_ring.map_or(0, |i| snap.ring.points_of(i)),
            ring_share_pct: on_ring
                .map_or(0.0, |i| (snap.ring.share_of(i) * 10_000.0).round() / 100.0),
            agent: snap
                .settings
                .agent
                .as_ref()
                .map(|_| AgentStatus::of(&n.agent(), n.weight())),
        }
    }
}

impl From<&ProbeRecord> for ProbeStatus {
    fn from(p: &ProbeRecord) -> ProbeStatus {
        ProbeStatus {
            ok: p.ok,
            detail: p.detail.clone(),
            at: p.at,
            latency_ms: (p.latency.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        }
    }
}

impl WorkerStatus {
    fn of(w: &WorkerLoad) -> WorkerStatus {
        WorkerStatus {
            worker: w.index,
            active: w.active(),
            accepted: w.accepted(),
        }
    }
}

/// RFC 3339 in whole seconds, UTC (`2024-05-01T12:00:00Z`), as `/status` and the
/// page show times.
pub(super) fn fmt_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(super) fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt_time(*t))
}

pub(super) fn rfc3339_opt<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&fmt_time(*t)),
        None => s.serialize_none(),
    }
}

pub(super) fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt_duration(*d))
}

fn display_path<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&p.display())
}

/// The config word of an enum the config module keeps serde-free on output.
trait Label: Copy {
    fn label(self) -> &'static str;
}

impl Label for AdminState {
    fn label(self) -> &'static str {
        self.as_str()
    }
}

impl Label for HealthKind {
    fn label(self) -> &'static str {
        self.as_str()
    }
}

impl Label for ProxyProtocol {
    fn label(self) -> &'static str {
        self.as_str()
    }
}

fn label<T: Label, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.label())
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::AtomicU64;
    use std::sync::Mutex;

    use arc_swap::ArcSwap;
    use serde_json::Value;
    use tokio::sync::Notify;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::admission::{ListenerShared, ListenerState};
    use crate::config::Config;
    use crate::handle::Shared;
    use crate::health::ProbeOutcome;
    use crate::metrics::ServerMetrics;
    use crate::pool::Pool;

    const CONFIG: &str = r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "0.0.0.0:8080"
pool = "web"
max_connections = 100
tcp_keepalive = { idle = "60s", interval = "10s", count = 6 }

[[listener]]
name = "db & <co>"
listen = "[::]:5432"
pool = "db"

[pools.web]
balance_factor = 1.25
rehome = { after = "30s", rate = 20 }
proxy_protocol = "v2"
tcp_keepalive = { idle = "30s" }

[pools.web.health]
kind = "http"
interval = "1500ms"
timeout = "1s"
rise = 2
fall = 3

[[pools.web.nodes]]
name = "a"
addr = "10.0.0.1:80"
weight = 2
max_connections = 50

[[pools.web.nodes]]
name = "b <&\"x\">"
addr = "10.0.0.2:80"
state = "drain"

[[pools.web.nodes]]
addr = "[2001:db8::1]:80"
state = "disabled"

[pools.db]
when_all_down = "any"

[pools.db.health]
kind = "tcp"
fall = 1

[[pools.db.nodes]]
name = "db1"
addr = "10.0.1.1:5432"
"#;

    /// A handle on a balancer that never ran: two listeners, a bounded pool with
    /// probes, drained and disabled nodes, a pool failing open, two workers, a
    /// refused reload, and counters that exercise every byte unit.
    pub(in crate::admin) fn sample() -> Handle {
        let config = Config::parse(CONFIG, "/etc/ringlb/ringlb <test>.toml").unwrap();
        let pools: BTreeMap<String, Arc<Pool>> = config
            .pools
            .iter()
            .map(|(name, cfg)| (name.clone(), Arc::new(Pool::new(cfg))))
            .collect();
        let listeners = config
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| ListenerView {
                local_addr: SocketAddr::from(([127, 0, 0, 1], 40_000 + i as u16)),
                shared: Arc::new(ListenerShared::new(
                    ListenerState::new(l.clone(), pools[&l.pool].clone()),
                    CancellationToken::new(),
                )),
            })
            .collect::<Vec<_>>();
        listeners[0].shared.active.store(7, Ordering::Relaxed);
        let web = &pools["web"];
        let a = web.node("a").unwrap();
        let probe = |ok, detail: &str, us| ProbeOutcome {
            ok,
            detail: detail.into(),
            latency: Duration::from_micros(us),
        };
        web.probe_result(&a, probe(true, "http 200", 1_234));
        web.probe_result(&a, probe(true, "http 200", 2_000));
        let b = web.node("b <&\"x\">").unwrap();
        web.probe_result(&b, probe(false, "http 503 <oops>", 999_999));
        for (n, v) in [(&a, 1u64), (&b, 3)] {
            n.active.store(v, Ordering::Relaxed);
            n.total.store(v * 10, Ordering::Relaxed);
            n.connect_failures.store(v, Ordering::Relaxed);
        }
        a.bytes_to_node.store(1023, Ordering::Relaxed);
        a.bytes_to_client.store(1536, Ordering::Relaxed);
        b.bytes_to_node.store(5 << 30, Ordering::Relaxed);
        b.bytes_to_client.store(u64::MAX, Ordering::Relaxed);
        let db = &pools["db"];
        let db1 = db.node("db1").unwrap();
        db.probe_result(&db1, probe(false, "connect refused", 50));
        let workers: Vec<_> = (0..2).map(|i| Arc::new(WorkerLoad::new(i))).collect();
        for _ in 0..3 {
            workers[1].opened();
        }
        workers[1].closed();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Handle {
            shared: Arc::new(Shared {
                config: ArcSwap::from_pointee(config),
                pools: ArcSwap::from_pointee(pools),
                listeners: ArcSwap::from_pointee(listeners),
                generation: AtomicU64::new(3),
                reloads_ok: AtomicU64::new(2),
                reloads_failed: AtomicU64::new(1),
                last_reload: Mutex::new(Some(ReloadRecord {
                    ok: false,
                    at,
                    message: "pools.web.nodes[1].weight: 0 is <out> of \"range\" & more".into(),
                    generation: 3,
                })),
                reload_requested: Notify::new(),
                nodes_changed: Default::default(),
                discovery: Default::default(),
                started: at - Duration::from_secs(3600),
                pid: 4242,
                upgraded_from: std::sync::OnceLock::from(crate::handle::Predecessor {
                    pid: 4200,
                    at: at - Duration::from_secs(3600),
                    takeover_ms: 12,
                }),
                handed_over_to: std::sync::OnceLock::new(),
                upgrades: tokio::sync::mpsc::unbounded_channel().0,
                workers,
                metrics: ServerMetrics::new(),
                stopping: Mutex::new(Default::default()),
                skip_withdrawal: Default::default(),
            }),
        }
    }

    /// A node's agent status as `/status` shows it.
    pub(in crate::admin) fn agent_status_of(n: &Node) -> AgentStatus {
        AgentStatus::of(&n.agent(), n.weight())
    }

    /// Every key of a JSON value as a dotted path (`[]` for array items), with
    /// the JSON types its values have.
    fn shape(v: &Value, path: &str, out: &mut BTreeMap<String, BTreeSet<&'static str>>) {
        let kind = match v {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(n) if n.is_f64() => "float",
            Value::Number(_) => "integer",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        out.entry(path.to_string()).or_default().insert(kind);
        match v {
            Value::Array(items) => {
                for item in items {
                    shape(item, &format!("{path}[]"), out);
                }
            }
            Value::Object(map) => {
                for (k, v) in map {
                    shape(v, &format!("{path}.{k}"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn a_pool_with_an_agent_shows_health_operator_and_agent_state_apart() {
        let text = format!(
            "{}\n[pools.web.agent]\nport = 9\n",
            crate::config::tests::MIN
        );
        let cfg = Config::parse(&text, "a.toml").unwrap();
        let pool = Pool::new(&cfg.pools["web"]);
        let n = pool.nodes()[0].clone();
        let line = "drain 50% maxconn:3 bogus # disk";
        pool.agent_report(&n, line, &crate::agent::reply::parse(line.as_bytes()));
        let v = serde_json::to_value(PoolStatus::of("web", &pool, None)).unwrap();
        assert_eq!(v["agent"]["port"], 9);
        assert_eq!(v["agent"]["interval"], "2s");
        let node = &v["nodes"][0];
        assert_eq!(node["state"], "up");
        assert_eq!(node["admin_state"], "enabled");
        assert_eq!(node["in_service"], false);
        assert_eq!(node["max_connections"], 3);
        assert!(node["configured_max_connections"].is_null());
        let a = &node["agent"];
        assert_eq!(a["state"], "up");
        assert_eq!(a["admin_state"], "drain");
        assert_eq!(a["weight_percent"], 50.0);
        assert_eq!(a["weight"], "50%");
        assert_eq!(a["maxconn"], 3);
        assert_eq!(a["serving"], false);
        assert_eq!(a["checks"], 1);
        assert_eq!(a["last_check"]["result"], "ok");
        assert_eq!(a["last_check"]["detail"], line);
        assert!(a["last_error"]["detail"]
            .as_str()
            .unwrap()
            .contains("unknown word \"bogus\""));
        assert!(a["since"].is_string());
    }

    #[test]
    fn the_status_document_keeps_its_keys_nesting_and_value_types() {
        let v = serde_json::to_value(status(&sample())).unwrap();
        let mut got = BTreeMap::new();
        shape(&v, "", &mut got);
        // The sample has a bounded and an unbounded pool, and probed and
        // unprobed nodes, so the nullable keys show both of their types.
        let want = [
            ("", "object"),
            (".config", "string"),
            (".generation", "integer"),
            (".started", "string"),
            (".process", "object"),
            (".process.pid", "integer"),
            (".process.version", "string"),
            (".process.started", "string"),
            (".process.started_unix", "integer"),
            (".process.upgraded_from", "object"),
            (".process.upgraded_from.pid", "integer"),
            (".process.upgraded_from.at", "string"),
            (".process.upgraded_from.at_unix", "integer"),
            (".process.upgraded_from.takeover_ms", "integer"),
            (".process.handed_over_to", "null"),
            (".process.ready", "bool"),
            (".process.not_ready_reason", "string"),
            (".reloads", "object"),
            (".reloads.ok", "integer"),
            (".reloads.failed", "integer"),
            (".last_reload", "object"),
            (".last_reload.ok", "bool"),
            (".last_reload.at", "string"),
            (".last_reload.generation", "integer"),
            (".last_reload.message", "string"),
            (".listeners", "array"),
            (".listeners[]", "object"),
            (".listeners[].name", "string"),
            (".listeners[].listen", "string"),
            (".listeners[].local_addr", "string"),
            (".listeners[].pool", "string"),
            (".listeners[].max_connections", "integer"),
            (".listeners[].tcp_keepalive", "string"),
            (".listeners[].active_connections", "integer"),
            (".pools", "array"),
            (".pools[]", "object"),
            (".pools[].name", "string"),
            (".pools[].nodes_up", "integer"),
            (".pools[].nodes_total", "integer"),
            (".pools[].failing_open", "bool"),
            (".pools[].proxy_protocol", "string"),
            (".pools[].balance_factor", "float|null"),
            (".pools[].close_rate", "integer"),
            (".pools[].rehome", "null|object"),
            (".pools[].rehome.after", "string"),
            (".pools[].rehome.rate", "integer"),
            (".pools[].closes_pending", "integer"),
            (".pools[].closed", "object"),
            (".pools[].closed.node_down", "integer"),
            (".pools[].closed.disabled", "integer"),
            (".pools[].closed.removed", "integer"),
            (".pools[].closed.rehome", "integer"),
            (".pools[].closed.lifetime", "integer"),
            (".pools[].closed.shutdown", "integer"),
            (".pools[].tcp_keepalive", "string"),
            (".pools[].load_bound", "integer|null"),
            (".pools[].health", "object"),
            (".pools[].health.kind", "string"),
            (".pools[].health.interval", "string"),
            (".pools[].health.timeout", "string"),
            (".pools[].health.rise", "integer"),
            (".pools[].health.fall", "integer"),
            (".pools[].agent", "null"),
            (".pools[].nodes", "array"),
            (".pools[].nodes[]", "object"),
            (".pools[].nodes[].name", "string"),
            (".pools[].nodes[].addr", "string"),
            (".pools[].nodes[].weight", "integer"),
            (".pools[].nodes[].state", "string"),
            (".pools[].nodes[].admin_state", "string"),
            (".pools[].nodes[].in_service", "bool"),
            (".pools[].nodes[].since", "string"),
            (".pools[].nodes[].reason", "string"),
            (".pools[].nodes[].last_probe", "null|object"),
            (".pools[].nodes[].last_probe.ok", "bool"),
            (".pools[].nodes[].last_probe.detail", "string"),
            (".pools[].nodes[].last_probe.at", "string"),
            (".pools[].nodes[].last_probe.latency_ms", "float"),
            (".pools[].nodes[].probes", "integer"),
            (".pools[].nodes[].transitions", "integer"),
            (".pools[].nodes[].active_connections", "integer"),
            (".pools[].nodes[].max_connections", "integer|null"),
            (".pools[].nodes[].misplaced", "integer"),
            (".pools[].nodes[].rehomed", "integer"),
            (
                ".pools[].nodes[].configured_max_connections",
                "integer|null",
            ),
            (".pools[].nodes[].total_connections", "integer"),
            (".pools[].nodes[].connect_failures", "integer"),
            (".pools[].nodes[].bytes_to_node", "integer"),
            (".pools[].nodes[].bytes_to_client", "integer"),
            (".pools[].nodes[].ring_points", "integer"),
            (".pools[].nodes[].ring_share_pct", "float"),
            (".pools[].nodes[].agent", "null"),
            (".pools[].discover", "null"),
            (".workers", "array"),
            (".workers[]", "object"),
            (".workers[].worker", "integer"),
            (".workers[].active", "integer"),
            (".workers[].accepted", "integer"),
        ];
        let want: BTreeMap<String, String> = want
            .into_iter()
            .map(|(k, t)| (k.to_string(), t.to_string()))
            .collect();
        let got: BTreeMap<String, String> = got
            .into_iter()
            .map(|(k, t)| (k, t.into_iter().collect::<Vec<_>>().join("|")))
            .collect();
        assert_eq!(got, want);
        // Whole numbers stay floats where they are floats (`100.0`, not `100`).
        assert_eq!(
            v["pools"][0]["nodes"][0]["ring_share_pct"].to_string(),
            "100.0"
        );
        assert_eq!(v["pools"][1]["balance_factor"], 1.25);
        // Sorted keys, as the `/status` body has always had them.
        let body = String::from_utf8(super::super::serve::status_json(&status(&sample()))).unwrap();
        assert!(body.starts_with("{\n  \"config\": \"/etc/ringlb/ringlb <test>.toml\",\n  \"generation\": 3,\n  \"last_reload\": {\n    \"at\""), "{body}");
    }
}
