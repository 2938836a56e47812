//! Every metric name and label in one place. Handles are created once per listener
//! or node (never per connection) and are no-ops until a recorder is installed.

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const CONNECTIONS_ACCEPTED: &str = "ringlb_connections_accepted_total";
pub const CONNECTIONS_REJECTED: &str = "ringlb_connections_rejected_total";
pub const CONNECTIONS_ACTIVE: &str = "ringlb_connections_active";
pub const CONNECTION_DURATION: &str = "ringlb_connection_duration_seconds";
pub const ACCEPT_ERRORS: &str = "ringlb_accept_errors_total";
pub const NODE_CONNECTIONS_ACTIVE: &str = "ringlb_node_connections_active";
pub const NODE_MAX_CONNECTIONS: &str = "ringlb_node_max_connections";
pub const NODE_MISPLACED: &str = "ringlb_node_misplaced_connections";
pub const NODE_REHOMED: &str = "ringlb_node_rehomed_total";
pub const PACED_CLOSES: &str = "ringlb_paced_closes_total";
pub const CLOSES_PENDING: &str = "ringlb_closes_pending";
pub const DISCOVERY_RESOLUTIONS: &str = "ringlb_discovery_resolutions_total";
pub const DISCOVERY_NODES: &str = "ringlb_discovery_nodes";
pub const DISCOVERY_LAST: &str = "ringlb_discovery_last_resolution_timestamp_seconds";
pub const CONNECT_ATTEMPTS: &str = "ringlb_connect_attempts_total";
pub const CONNECT_FAILURES: &str = "ringlb_connect_failures_total";
pub const BYTES: &str = "ringlb_bytes_total";
pub const RING_POINTS: &str = "ringlb_ring_points";
pub const NODE_UP: &str = "ringlb_node_up";
pub const NODE_ADMIN_STATE: &str = "ringlb_node_admin_state";
pub const NODE_TRANSITIONS: &str = "ringlb_node_transitions_total";
pub const PROBES: &str = "ringlb_probes_total";
pub const NODE_AGENT_UP: &str = "ringlb_node_agent_up";
pub const NODE_AGENT_ADMIN_STATE: &str = "ringlb_node_agent_admin_state";
pub const NODE_AGENT_WEIGHT_PERCENT: &str = "ringlb_node_agent_weight_percent";
pub const AGENT_CHECKS: &str = "ringlb_agent_checks_total";
pub const PROBE_DURATION: &str = "ringlb_probe_duration_seconds";
pub const RELOADS: &str = "ringlb_reloads_total";
pub const CONFIG_GENERATION: &str = "ringlb_config_generation";
/// 1 while `/ready` answers 200, else 0 (read when `/metrics` or `/ready` is asked).
pub const READY: &str = "ringlb_ready";
/// When this process started (unix seconds).
pub const PROCESS_START_TIME: &str = "ringlb_process_start_time_seconds";
/// The pid this process took over from in a binary upgrade (0: started fresh).
pub const UPGRADE_PREDECESSOR_PID: &str = "ringlb_upgrade_predecessor_pid";
/// When this process took over from its predecessor (unix seconds; 0: started fresh).
pub const UPGRADE_TAKEOVER_TIMESTAMP: &str = "ringlb_upgrade_takeover_timestamp_seconds";
/// Binary upgrades this process started, by `result` (`ok`, `failed`).
pub const UPGRADES: &str = "ringlb_upgrades_total";
pub const ADMIN_UNAUTHORIZED: &str = "ringlb_admin_unauthorized_total";
pub const WORKER_CONNECTIONS_ACTIVE: &str = "ringlb_worker_connections_active";
pub const WORKER_CONNECTIONS_ACCEPTED: &str = "ringlb_worker_connections_accepted_total";

/// What a metric is, for its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric: name, kind and the text of its `# HELP` line (see
/// [`describe_all`]). A metric name above that is missing here fails the unit
/// test below; one recorded without a description fails `tests/admin.rs`.
#[rustfmt::skip]
pub const DESCRIPTIONS: &[(&str, Kind, &str)] = &[
    (CONNECTIONS_ACCEPTED, Kind::Counter, "Client connections accepted, per listener."),
    (CONNECTIONS_REJECTED, Kind::Counter, "Client connections closed without being served, per listener and reason."),
    (CONNECTIONS_ACTIVE, Kind::Gauge, "Open client connections, per listener."),
    (CONNECTION_DURATION, Kind::Histogram, "How long served client connections lasted, in seconds, per listener."),
    (ACCEPT_ERRORS, Kind::Counter, "Failed accept calls, per listener."),
    (NODE_CONNECTIONS_ACTIVE, Kind::Gauge, "Open connections to a node (with those still connecting)."),
    (NODE_MAX_CONNECTIONS, Kind::Gauge, "A node's max_connections cap; 0 when it has none."),
    (NODE_MISPLACED, Kind::Gauge, "Open connections on a node whose client's home (its ring node now) is another node."),
    (NODE_REHOMED, Kind::Counter, "Connections of a node closed so that their client reconnects to its home node (rehome)."),
    (PACED_CLOSES, Kind::Counter, "Connections ringlb closed itself, per pool and reason (node_down, disabled, removed, rehome, lifetime, shutdown)."),
    (CLOSES_PENDING, Kind::Gauge, "Closes waiting for their turn under the pool's close_rate."),
    (DISCOVERY_RESOLUTIONS, Kind::Counter, "DNS resolutions of a pool's [discover] name, by outcome (ok, failed: the last good nodes stay)."),
    (DISCOVERY_NODES, Kind::Gauge, "Nodes a pool has from DNS discovery."),
    (DISCOVERY_LAST, Kind::Gauge, "Unix time of a pool's last DNS resolution (good or failed)."),
    (CONNECT_ATTEMPTS, Kind::Counter, "Connects to a node tried."),
    (CONNECT_FAILURES, Kind::Counter, "Connects to a node that failed, per reason."),
    (BYTES, Kind::Counter, "Bytes forwarded, per node and direction, counted as they move."),
    (RING_POINTS, Kind::Gauge, "Points a node has on the ring (0 while it is off the ring)."),
    (NODE_UP, Kind::Gauge, "1 while a node is healthy (in service), 0 while it is down."),
    (NODE_ADMIN_STATE, Kind::Gauge, "A node's operator state: 0 enabled, 1 drain, 2 disabled."),
    (NODE_TRANSITIONS, Kind::Counter, "Health state changes of a node, per direction (to up, to down)."),
    (PROBES, Kind::Counter, "Health probes of a node, per result."),
    (NODE_AGENT_UP, Kind::Gauge, "What a node's agent says of it: 1 up (or nothing said), 0 down, fail or stopped."),
    (NODE_AGENT_ADMIN_STATE, Kind::Gauge, "A node's state as its agent set it: 0 ready (or nothing said), 1 drain, 2 maint."),
    (NODE_AGENT_WEIGHT_PERCENT, Kind::Gauge, "A node's weight as its agent set it, in percent of the configured weight (100 when it gave none)."),
    (AGENT_CHECKS, Kind::Counter, "Checks of a node's agent, per result (ok, connect, timeout, io, invalid)."),
    (PROBE_DURATION, Kind::Histogram, "Health probe latency, in seconds, per node."),
    (RELOADS, Kind::Counter, "Config reloads, per result (ok: applied, failed: refused)."),
    (CONFIG_GENERATION, Kind::Gauge, "Config generation: 1 at start, +1 per applied reload."),
    (READY, Kind::Gauge, "1 while /ready answers 200 (serving, every pool has a node in service), 0 while withdrawing, draining or a pool has none."),
    (PROCESS_START_TIME, Kind::Gauge, "When this process started (unix seconds)."),
    (UPGRADE_PREDECESSOR_PID, Kind::Gauge, "The pid this process took over from in a binary upgrade; 0 when started fresh."),
    (UPGRADE_TAKEOVER_TIMESTAMP, Kind::Gauge, "When this process took over from its predecessor (unix seconds); 0 when started fresh."),
    (UPGRADES, Kind::Counter, "Binary upgrades this process started, by result (ok: the new process accepts; failed: this one keeps serving)."),
    (ADMIN_UNAUTHORIZED, Kind::Counter, "Admin requests refused for a missing or wrong bearer token."),
    (WORKER_CONNECTIONS_ACTIVE, Kind::Gauge, "Open client connections, per worker thread."),
    (WORKER_CONNECTIONS_ACCEPTED, Kind::Counter, "Client connections admitted, per worker thread."),
];

/// Describe every metric of [`DESCRIPTIONS`] to the installed recorder, so the
/// exporter prints a `# HELP` line for each. Called once, by
/// [`install_prometheus`].
fn describe_all() {
    for &(name, kind, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => {
                metrics::describe_histogram!(name, metrics::Unit::Seconds, help)
            }
        }
    }
}

/// Count one admin request refused for a missing or wrong bearer token.
pub fn admin_unauthorized() {
    counter!(ADMIN_UNAUTHORIZED).increment(1);
}

/// Whether `/ready` answers 200.
pub fn set_ready(ready: bool) {
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

pub const L_LISTENER: &str = "listener";
pub const L_POOL: &str = "pool";
pub const L_NODE: &str = "node";
pub const L_REASON: &str = "reason";
pub const L_DIRECTION: &str = "direction";
pub const L_RESULT: &str = "result";
pub const L_TO: &str = "to";
pub const L_WORKER: &str = "worker";

/// Reasons a connection is closed at accept, before any backend is contacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// `max_connections` reached.
    MaxConnections,
    /// No node could be connected (all attempts failed).
    NoNode,
    /// Every node of the pool is down and `when_all_down = "reject"`.
    AllDown,
    /// ringlb itself is out of descriptors or memory for the node connection.
    LocalResources,
    /// The client address matched the listener's `deny` list.
    Denied,
    /// The listener has an `allow` list and the client address is not on it.
    NotAllowed,
    /// The client address already holds `max_connections_per_ip` connections.
    PerIpConnections,
    /// The client address opened more than `new_connections_per_ip_per_sec`.
    PerIpRate,
    /// A trusted proxy sent no valid PROXY header in time.
    ProxyHeader,
    /// Every node in service is at its `max_connections` (none was tried).
    NodesFull,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MaxConnections => "max_connections",
            RejectReason::NoNode => "no_node",
            RejectReason::AllDown => "all_down",
            RejectReason::LocalResources => "local_resources",
            RejectReason::Denied => "denied",
            RejectReason::NotAllowed => "not_allowed",
            RejectReason::PerIpConnections => "max_connections_per_ip",
            RejectReason::PerIpRate => "new_connections_per_ip",
            RejectReason::ProxyHeader => "proxy_header",
            RejectReason::NodesFull => "nodes_full",
        }
    }
}

/// Handles of one listener.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    pub accepted: Counter,
    pub active: Gauge,
    pub rejected_max: Counter,
    pub rejected_no_node: Counter,
    pub rejected_all_down: Counter,
    pub rejected_local: Counter,
    pub rejected_denied: Counter,
    pub rejected_not_allowed: Counter,
    pub rejected_per_ip: Counter,
    pub rejected_per_ip_rate: Counter,
    pub rejected_proxy_header: Counter,
    pub rejected_nodes_full: Counter,
    pub accept_errors: Counter,
    pub duration: Histogram,
}

impl ListenerMetrics {
    pub fn new(listener: &str) -> Self {
        let l = listener.to_string();
        let rejected = |r: RejectReason| counter!(CONNECTIONS_REJECTED, L_LISTENER => l.clone(), L_REASON => r.as_str());
        ListenerMetrics {
            accepted: counter!(CONNECTIONS_ACCEPTED, L_LISTENER => l.clone()),
            active: gauge!(CONNECTIONS_ACTIVE, L_LISTENER => l.clone()),
            rejected_max: rejected(RejectReason::MaxConnections),
            rejected_no_node: rejected(RejectReason::NoNode),
            rejected_all_down: rejected(RejectReason::AllDown),
            rejected_local: rejected(RejectReason::LocalResources),
            rejected_denied: rejected(RejectReason::Denied),
            rejected_not_allowed: rejected(RejectReason::NotAllowed),
            rejected_per_ip: rejected(RejectReason::PerIpConnections),
            rejected_per_ip_rate: rejected(RejectReason::PerIpRate),
            rejected_proxy_header: rejected(RejectReason::ProxyHeader),
            rejected_nodes_full: rejected(RejectReason::NodesFull),
            accept_errors: counter!(ACCEPT_ERRORS, L_LISTENER => l.clone()),
            duration: histogram!(CONNECTION_DURATION, L_LISTENER => l),
        }
    }

    pub fn rejected(&self, r: RejectReason) -> &Counter {
        match r {
            RejectReason::MaxConnections => &self.rejected_max,
            RejectReason::NoNode => &self.rejected_no_node,
            RejectReason::AllDown => &self.rejected_all_down,
            RejectReason::LocalResources => &self.rejected_local,
            RejectReason::Denied => &self.rejected_denied,
            RejectReason::NotAllowed => &self.rejected_not_allowed,
            RejectReason::PerIpConnections => &self.rejected_per_ip,
            RejectReason::PerIpRate => &self.rejected_per_ip_rate,
            RejectReason::ProxyHeader => &self.rejected_proxy_header,
            RejectReason::NodesFull => &self.rejected_nodes_full,
        }
    }
}

/// Why a connect to a node failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    Refused,
    Timeout,
    Unreachable,
    Other,
}

impl ConnectFailure {
    pub const ALL: [ConnectFailure; 4] = [
        ConnectFailure::Refused,
        ConnectFailure::Timeout,
        ConnectFailure::Unreachable,
        ConnectFailure::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "refused",
            ConnectFailure::Timeout => "timeout",
            ConnectFailure::Unreachable => "unreachable",
            ConnectFailure::Other => "other",
        }
    }

    pub fn classify(e: &std::io::Error) -> ConnectFailure {
        use std::io::ErrorKind::*;
        match e.kind() {
            ConnectionRefused => ConnectFailure::Refused,
            TimedOut => ConnectFailure::Timeout,
            HostUnreachable | NetworkUnreachable | AddrNotAvailable => ConnectFailure::Unreachable,
            _ => ConnectFailure::Other,
        }
    }
}

/// Handles of one node in one pool.
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    pub active: Gauge,
    /// The node's cap (0: none).
    pub max_connections: Gauge,
    pub attempts: Counter,
    failures: [Counter; 4],
    pub bytes_to_node: Counter,
    pub bytes_to_client: Counter,
    pub ring_points: Gauge,
    pub misplaced: Gauge,
    pub rehomed: Counter,
    /// 1 while the node is in service, 0 while down.
    pub up: Gauge,
    /// 0 enabled, 1 drain, 2 disabled.
    pub admin_state: Gauge,
    pub went_up: Counter,
    pub went_down: Counter,
    pub probes_ok: Counter,
    pub probes_failed: Counter,
    pub probe_duration: Histogram,
    /// The agent's word: 1 up, 0 down.
    pub agent_up: Gauge,
    /// 0 ready, 1 drain, 2 maint.
    pub agent_admin_state: Gauge,
    pub agent_weight_percent: Gauge,
    agent_checks: [Counter; 5],
}

impl NodeMetrics {
    pub fn new(pool: &str, node: &str) -> Self {
        let (p, n) = (pool.to_string(), node.to_string());
        let failure = |f: ConnectFailure| counter!(CONNECT_FAILURES, L_POOL => p.clone(), L_NODE => n.clone(), L_REASON => f.as_str());
        NodeMetrics {
            active: gauge!(NODE_CONNECTIONS_ACTIVE, L_POOL => p.clone(), L_NODE => n.clone()),
            max_connections: gauge!(NODE_MAX_CONNECTIONS, L_POOL => p.clone(), L_NODE => n.clone()),
            attempts: counter!(CONNECT_ATTEMPTS, L_POOL => p.clone(), L_NODE => n.clone()),
            failures: ConnectFailure::ALL.map(failure),
            bytes_to_node: counter!(BYTES, L_POOL => p.clone(), L_NODE => n.clone(), L_DIRECTION => "to_node"),
            bytes_to_client: counter!(BYTES, L_POOL => p.clone(), L_NODE => n.clone(), L_DIRECTION => "to_client"),
            ring_points: gauge!(RING_POINTS, L_POOL => p.clone(), L_NODE => n.clone()),
            misplaced: gauge!(NODE_MISPLACED, L_POOL => p.clone(), L_NODE => n.clone()),
            rehomed: counter!(NODE_REHOMED, L_POOL => p.clone(), L_NODE => n.clone()),
            up: gauge!(NODE_UP, L_POOL => p.clone(), L_NODE => n.clone()),
            admin_state: gauge!(NODE_ADMIN_STATE, L_POOL => p.clone(), L_NODE => n.clone()),
            went_up: counter!(NODE_TRANSITIONS, L_POOL => p.clone(), L_NODE => n.clone(), L_TO => "up"),
            went_down: counter!(NODE_TRANSITIONS, L_POOL => p.clone(), L_NODE => n.clone(), L_TO => "down"),
            probes_ok: counter!(PROBES, L_POOL => p.clone(), L_NODE => n.clone(), L_RESULT => "ok"),
            probes_failed: counter!(PROBES, L_POOL => p.clone(), L_NODE => n.clone(), L_RESULT => "fail"),
            probe_duration: histogram!(PROBE_DURATION, L_POOL => p.clone(), L_NODE => n.clone()),
            agent_up: gauge!(NODE_AGENT_UP, L_POOL => p.clone(), L_NODE => n.clone()),
            agent_admin_state: gauge!(NODE_AGENT_ADMIN_STATE, L_POOL => p.clone(), L_NODE => n.clone()),
            agent_weight_percent: gauge!(NODE_AGENT_WEIGHT_PERCENT, L_POOL => p.clone(), L_NODE => n.clone()),
            agent_checks: AGENT_RESULTS.map(
                |r| counter!(AGENT_CHECKS, L_POOL => p.clone(), L_NODE => n.clone(), L_RESULT => r),
            ),
        }
    }

    pub fn failure(&self, f: ConnectFailure) -> &Counter {
        &self.failures[f as usize]
    }

    /// The counter of agent checks of this node that ended with `result`
    /// (the `result` labels are [`AGENT_RESULTS`], in that order).
    pub fn agent_check(&self, result: impl Into<usize>) -> &Counter {
        let i: usize = result.into();
        &self.agent_checks[i.min(AGENT_RESULTS.len() - 1)]
    }
}

/// A pool's handles: the closes ringlb decided on, per reason, and the queue.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    closes: Vec<(&'static str, Counter)>,
    pub closes_pending: Gauge,
}

impl PoolMetrics {
    /// `reasons`: every value of the `reason` label.
    pub fn new(pool: &str, reasons: &[&'static str]) -> Self {
        PoolMetrics {
            closes: reasons
                .iter()
                .map(|&r| {
                    (
                        r,
                        counter!(PACED_CLOSES, L_POOL => pool.to_string(), L_REASON => r),
                    )
                })
                .collect(),
            closes_pending: gauge!(CLOSES_PENDING, L_POOL => pool.to_string()),
        }
    }

    /// The counter of closes for `reason` (one of those given to `new`).
    pub fn closed(&self, reason: &str) -> Option<&Counter> {
        self.closes
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, c)| c)
    }
}
/// A pool's DNS discovery handles.
#[derive(Debug, Clone)]
pub struct DiscoveryMetrics {
    pub ok: Counter,
    pub failed: Counter,
    pub nodes: Gauge,
    pub last_resolution: Gauge,
}

impl DiscoveryMetrics {
    pub fn new(pool: &str) -> Self {
        let p = || pool.to_string();
        DiscoveryMetrics {
            ok: counter!(DISCOVERY_RESOLUTIONS, L_POOL => p(), "outcome" => "ok"),
            failed: counter!(DISCOVERY_RESOLUTIONS, L_POOL => p(), "outcome" => "failed"),
            nodes: gauge!(DISCOVERY_NODES, L_POOL => p()),
            last_resolution: gauge!(DISCOVERY_LAST, L_POOL => p()),
        }
    }
}

/// The `result` labels of [`AGENT_CHECKS`], in the order of
/// `pool::AgentResult` (metrics names no runtime type).
pub const AGENT_RESULTS: [&str; 5] = ["ok", "connect", "timeout", "io", "invalid"];

/// Process-wide handles of the reload machinery.
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    pub reloads_ok: Counter,
    pub reloads_failed: Counter,
    pub generation: Gauge,
    pub process_start_time: Gauge,
    pub predecessor_pid: Gauge,
    pub takeover_timestamp: Gauge,
    pub upgrades_ok: Counter,
    pub upgrades_failed: Counter,
}

impl ServerMetrics {
    pub fn new() -> Self {
        ServerMetrics {
            reloads_ok: counter!(RELOADS, L_RESULT => "ok"),
            reloads_failed: counter!(RELOADS, L_RESULT => "failed"),
            generation: gauge!(CONFIG_GENERATION),
            process_start_time: gauge!(PROCESS_START_TIME),
            predecessor_pid: gauge!(UPGRADE_PREDECESSOR_PID),
            takeover_timestamp: gauge!(UPGRADE_TAKEOVER_TIMESTAMP),
            upgrades_ok: counter!(UPGRADES, L_RESULT => "ok"),
            upgrades_failed: counter!(UPGRADES, L_RESULT => "failed"),
        }
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the Prometheus recorder for this process (once; later calls return the
/// same handle). Handles created before this call stay no-ops, so call it before
/// building pools and listeners. `None` if another recorder was installed first.
pub fn install_prometheus() -> Option<PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let seconds_buckets = [
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0,
                14400.0, 86400.0,
            ];
            let probe_buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(CONNECTION_DURATION.to_string()),
                    &seconds_buckets,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(PROBE_DURATION.to_string()),
                        &probe_buckets,
                    )
                })
                .ok()?
                .install_recorder()
                .ok()
                .inspect(|_| describe_all())
        })
        .clone()
}

/// The installed Prometheus handle, if any.
pub fn prometheus() -> Option<PrometheusHandle> {
    PROMETHEUS.get().cloned().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `ringlb_` name constant in this file has a description, once.
    #[test]
    fn every_metric_name_is_described_once() {
        let src = include_str!("metrics.rs");
        let names: Vec<&str> = src
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter_map(|l| l.split_once(": &str = \""))
            .map(|(_, v)| v.trim_end_matches("\";"))
            .filter(|v| v.starts_with("ringlb_"))
            .collect();
        assert!(names.len() >= 20, "{names:?}");
        for n in &names {
            let count = DESCRIPTIONS.iter().filter(|(d, _, _)| d == n).count();
            assert_eq!(count, 1, "{n} is described {count} times");
        }
        assert_eq!(DESCRIPTIONS.len(), names.len());
        for (n, _, help) in DESCRIPTIONS {
            assert!(!help.is_empty() && !help.contains('\n'), "{n}: {help:?}");
        }
    }
}
