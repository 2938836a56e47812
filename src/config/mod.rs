//! Configuration: the validated types the rest of the crate uses, and the entry
//! points that read, parse and validate a TOML file into a [`Config`] (or a list of
//! every problem, each naming its file, key path and, for syntax and type errors,
//! line and column).
//!
//! The pipeline, one file each: [`raw`] (serde types as written, durations in
//! the syntax of [`duration`]) → `source.rs`
//! (line and column of syntax and type errors) → `validate.rs` (one function per
//! table, collecting into `problems.rs`) with [`limits`] and [`defaults`] →
//! [`Config`]. The one network lookup, host names of node addresses, lives in
//! `resolve.rs` and runs once, at load time.
//!
//! Besides that lookup it reads only the config file and `admin.token_file` and
//! looks up `user`/`group`; it binds and connects nothing. It imports nothing of
//! the runtime (pool, server, listener, health, keepalive): only `error`,
//! `privilege` (user and group lookups) and `ring` (canonical node addresses).
//! The `ringlb check` summary is in [`crate::cli::check`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

mod access;
mod agent;
pub mod defaults;
mod discover;
pub mod duration;
mod lifecycle;
pub mod limits;
mod problems;
pub mod raw;
pub mod resolve;
mod source;
mod validate;

pub use discover::{srv_weights, DiscoverConfig, DiscoverType};
use source::syntax_error;

pub use raw::{
    RawAdmin, RawAgent, RawConfig, RawDiscover, RawHealth, RawKeepalive, RawKeepaliveParams,
    RawListener, RawNode, RawPool,
};

/// The working directory's config: the third step of the search order in
/// `cli::config_path` (after `--config` and `$RINGLB_CONFIG`).
pub const DEFAULT_CONFIG_PATH: &str = "config/ringlb.toml";

// ---------------------------------------------------------------------------
// Values that are the same as written and validated (serde enums).
// ---------------------------------------------------------------------------

/// How nodes are probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// TCP connect only.
    Tcp,
    /// HTTP/1.1 GET, status (and optionally body) checked.
    Http,
    /// No active probes: nodes are always in service.
    None,
}

impl HealthKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthKind::Tcp => "tcp",
            HealthKind::Http => "http",
            HealthKind::None => "none",
        }
    }
}

impl OnNodeDown {
    pub fn as_str(self) -> &'static str {
        match self {
            OnNodeDown::Keep => "keep",
            OnNodeDown::Close => "close",
        }
    }
}

impl WhenAllDown {
    pub fn as_str(self) -> &'static str {
        match self {
            WhenAllDown::Reject => "reject",
            WhenAllDown::Any => "any",
        }
    }
}

/// What happens to a node's open connections when it goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNodeDown {
    Keep,
    Close,
}

/// What new connections do when every node of the pool is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenAllDown {
    /// Close them at once.
    Reject,
    /// Ignore health: use the ring of every node (fail open).
    Any,
}

/// The PROXY protocol header ringlb sends to a pool's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// Nothing: the node sees ringlb's address.
    Off,
    /// Text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// Binary header.
    V2,
}

impl ProxyProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::Off => "off",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }
}

/// What the operator wants of a node, independent of its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// In service when healthy.
    #[default]
    Enabled,
    /// No new connections; open connections continue.
    Drain,
    /// No new connections, and open connections are closed.
    Disabled,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Enabled => "enabled",
            AdminState::Drain => "drain",
            AdminState::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<AdminState> {
        match s {
            "enabled" | "enable" => Some(AdminState::Enabled),
            "drain" => Some(AdminState::Drain),
            "disabled" | "disable" => Some(AdminState::Disabled),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// The validated config.
// ---------------------------------------------------------------------------

/// A validated configuration: every value in range, every reference resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it was read from (`<inline>` for strings).
    pub source: PathBuf,
    pub shutdown_grace: Duration,
    /// How long the new process of a binary upgrade gets to be ready.
    pub upgrade_timeout: Duration,
    /// On a stop signal, how long `/ready` answers 503 while the balancer still
    /// accepts and serves, before it stops accepting and drains (0: at once).
    pub withdraw_delay: Duration,
    /// Write the process id here while running (for `ringlb reload`).
    pub pid_file: Option<PathBuf>,
    /// Runtime worker threads (`None`: one per core). `RINGLB_WORKERS` overrides.
    pub workers: Option<usize>,
    /// Drop root privileges to this user (and `group`, else the user's primary
    /// group) once the listeners are bound.
    pub user: Option<String>,
    pub group: Option<String>,
    /// The admin HTTP endpoint (`/metrics`, `/status`, `/`); off when absent.
    pub admin: Option<AdminConfig>,
    pub listeners: Vec<ListenerConfig>,
    /// Pools by name (sorted, so output and iteration are deterministic).
    pub pools: BTreeMap<String, PoolConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token every request must carry (`Authorization: Bearer TOKEN`).
    /// Required when `listen` is not a loopback address.
    pub token: Option<AdminToken>,
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn new(token: impl Into<String>) -> AdminToken {
        AdminToken(token.into())
    }

    /// The secret itself (to send it; never log it).
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Compare with a presented token in time that does not depend on where
    /// the two differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let want = self.0.as_bytes();
        let mut diff = (want.len() != presented.len()) as u8;
        for (i, &b) in want.iter().enumerate() {
            diff |= b ^ presented.get(i).copied().unwrap_or(!b);
        }
        diff == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub pool: String,
    pub max_connections: usize,
    pub backlog: u32,
    pub ipv6_only: bool,
    /// Who may connect, and per-client limits.
    pub access: AccessConfig,
    /// Clients from these networks must start with a PROXY protocol header
    /// (v1 or v2), whose source address then stands for the client. Empty: off.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Time a trusted proxy gets to send its header.
    pub proxy_header_timeout: Duration,
    /// TCP keepalive on client connections (set on the listening sockets; the
    /// accepted ones inherit it). `None`: off.
    pub tcp_keepalive: Option<Keepalive>,
    /// `max_connection_duration` and its jitter.
    pub lifetime: Lifetime,
    /// An open connection logs one INFO line with its bytes so far per
    /// interval. `None`: only the close line.
    pub access_log_interval: Option<Duration>,
}

/// A listener's connection lifetime (after Envoy's
/// `max_downstream_connection_duration`): a connection is closed, through its
/// pool's `close_rate`, once it is `max` plus a random share of `jitter` old.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifetime {
    /// `None`: connections live as long as they like.
    pub max: Option<Duration>,
    /// Each connection adds a uniform random [0, jitter] to `max`.
    pub jitter: Duration,
}

/// `rehome`: misplaced connections are closed, so their clients reconnect to
/// their home node, once the home has been in service for `after`, at up to
/// `rate` per second (within the pool's `close_rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rehome {
    pub after: Duration,
    pub rate: u32,
}

/// TCP keepalive (`SO_KEEPALIVE`): after `idle` without any segment, the kernel
/// sends a probe every `interval`; after `count` unanswered probes the
/// connection fails with "timed out" and the balancer closes both sides. A
/// setting left out keeps the kernel's (`net.ipv4.tcp_keepalive_time`,
/// `_intvl`, `_probes`: 2 h, 75 s, 9 unless changed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Option<Duration>,
    pub interval: Option<Duration>,
    pub count: Option<u32>,
}

impl Keepalive {
    /// Longest time a dead peer can go unnoticed, with `kernel` standing in for
    /// the settings left out.
    pub fn detection_time(&self, kernel: &Keepalive) -> Option<Duration> {
        let idle = self.idle.or(kernel.idle)?;
        let interval = self.interval.or(kernel.interval)?;
        let count = self.count.or(kernel.count)?;
        Some(idle + interval * count)
    }

    /// For `check` output, logs and status: `off`, or each setting (`(kernel)`
    /// for the ones left out).
    pub fn describe(k: Option<&Keepalive>) -> String {
        match k {
            None => "off".to_string(),
            Some(k) if *k == Keepalive::default() => "on, the kernel's settings".to_string(),
            Some(k) => format!(
                "idle {}, interval {}, count {}",
                k.idle.map_or("(kernel)".to_string(), fmt_duration),
                k.interval.map_or("(kernel)".to_string(), fmt_duration),
                k.count.map_or("(kernel)".to_string(), |c| c.to_string()),
            ),
        }
    }
}

/// A listener's access rules, checked on accept before any node is contacted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessConfig {
    /// When not empty, only clients in one of these networks are served.
    pub allow: Vec<ipnet::IpNet>,
    /// Clients in one of these networks are refused (checked before `allow`).
    pub deny: Vec<ipnet::IpNet>,
    /// Open connections one client address may hold (IPv6: one /64).
    pub max_connections_per_ip: Option<u32>,
    /// New connections per second one client address may open, with a burst.
    pub new_connections_per_ip: Option<RateLimit>,
}

impl AccessConfig {
    /// Whether per-client state is kept at all.
    pub fn per_ip(&self) -> bool {
        self.max_connections_per_ip.is_some() || self.new_connections_per_ip.is_some()
    }
}

/// A token bucket: `per_sec` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_sec: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub name: String,
    pub points_per_weight: u32,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub connect_attempts: u32,
    pub key_prefix_v4: u8,
    pub key_prefix_v6: u8,
    pub on_node_down: OnNodeDown,
    pub when_all_down: WhenAllDown,
    /// Consecutive connect failures from real traffic that take a node down at once
    /// (0 = off).
    pub passive_failures: u32,
    /// Header sent to nodes before any client byte.
    pub proxy_protocol: ProxyProtocol,
    /// Bounded load, in thousandths: a node with more open connections than
    /// factor x (average + 1) gets no new ones. `None`: off.
    pub balance_factor_permille: Option<u32>,
    /// TCP keepalive on node connections. `None`: off.
    pub tcp_keepalive: Option<Keepalive>,
    pub health: HealthConfig,
    /// Closes per second ringlb itself decides on in this pool (node down with
    /// `close`, disable, removal, rehome, lifetime, end of the shutdown grace).
    /// 0: unpaced, all at once.
    pub close_rate: u32,
    /// `None`: misplaced connections stay (the default).
    pub rehome: Option<Rehome>,
    /// Capacity reports from an agent on each node (`None`: no agent).
    pub agent: Option<AgentConfig>,
    /// Nodes from DNS (`nodes` is then empty: the `discovery` module fills the
    /// pool at run time).
    pub discover: Option<DiscoverConfig>,
    /// In file order (the ring does not depend on it).
    pub nodes: Vec<NodeConfig>,
}

/// Active health checking of a pool's nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub kind: HealthKind,
    /// HTTP: request path (starts with `/`).
    pub path: String,
    /// HTTP: Host header; default: the node's address host part.
    pub host: Option<String>,
    /// HTTP: accepted status codes.
    pub expect_status: StatusSet,
    /// HTTP: substring the body must contain (empty: not checked).
    pub expect_body: String,
    /// Probe this port instead of the node's traffic port.
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            kind: defaults::HEALTH_KIND,
            path: defaults::HEALTH_PATH.to_string(),
            host: None,
            expect_status: StatusSet::parse(defaults::EXPECT_STATUS).unwrap_or_default(),
            expect_body: String::new(),
            port: None,
            interval: defaults::HEALTH_INTERVAL,
            timeout: defaults::HEALTH_TIMEOUT,
            rise: defaults::RISE,
            fall: defaults::FALL,
        }
    }
}

/// `[pools.NAME.agent]`: an agent on each node's IP that reports, in
/// HAProxy's `agent-check` words, the node's state, weight and cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The agent's TCP port, on each node's IP.
    pub port: u16,
    /// Time from one check of a node's agent to the next.
    pub interval: Duration,
    /// Time one check gets: connect, send, and the reply line.
    pub timeout: Duration,
    /// Written to the agent first (verbatim, as HAProxy's `agent-send`).
    pub send: Option<String>,
}

/// A set of HTTP status codes, written as ranges and lists: `"200-399"`,
/// `"200,204,301-302"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusSet(Vec<(u16, u16)>);

impl StatusSet {
    pub fn parse(text: &str) -> Result<StatusSet, String> {
        let mut ranges = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!("{text:?}: empty item in the list"));
            }
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let code = |t: &str| -> Result<u16, String> {
                match t.parse::<u16>() {
                    Ok(c) if (100..=599).contains(&c) => Ok(c),
                    _ => Err(format!(
                        "{text:?}: {t:?} is not an HTTP status code (100 to 599)"
                    )),
                }
            };
            let (lo, hi) = (code(lo)?, code(hi)?);
            if lo > hi {
                return Err(format!("{text:?}: range {lo}-{hi} is backwards"));
            }
            ranges.push((lo, hi));
        }
        Ok(StatusSet(ranges))
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

impl std::fmt::Display for StatusSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Stable identity on the ring.
    pub name: String,
    /// The address as written in the file.
    pub addr_text: String,
    /// The address resolved at load.
    pub addr: SocketAddr,
    pub weight: u32,
    /// Operator state at load (`enabled`, `drain`, `disabled`).
    pub state: AdminState,
    /// Most connections the node takes at once (`None`: no cap). A node at its
    /// cap gets no new client: the client goes to its next node with room.
    pub max_connections: Option<u32>,
}

impl NodeConfig {
    /// Whether this is the node known as `name` at `addr`: a reload keeps a
    /// node (its health, counters and connections) only when both stay.
    pub fn is(&self, name: &str, addr: SocketAddr) -> bool {
        self.name == name && self.addr == addr
    }
}

impl Config {
    /// Worker threads to run with: `RINGLB_WORKERS` if set (and valid), else the
    /// `workers` key, else one per core.
    pub fn effective_workers(&self) -> usize {
        std::env::var("RINGLB_WORKERS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|w| limits::WORKERS.contains(w))
            .or(self.workers)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Read, parse and validate a config file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// Parse and validate config text; `source` names it in error messages.
    pub fn parse(text: &str, source: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let source = source.as_ref();
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            syntax_error(text, source, &path, e.inner())
        })?;
        raw.validate(source)
    }

    /// Every node across pools.
    pub fn node_count(&self) -> usize {
        self.pools.values().map(|p| p.nodes.len()).sum()
    }
}

/// A duration in the largest unit that divides it exactly (`90s` → `90s`,
/// `86400s` → `1d`, `1500ms` → `1500ms`), readable and valid config syntax.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return humantime::format_duration(d).to_string();
    }
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The smallest valid config (one listener, one pool, one node), for the
    /// tests of every config file and of `check`.
    pub(crate) const MIN: &str = r#"
[[listener]]
name = "ws"
listen = "127.0.0.1:0"
pool = "web"

[pools.web]
[[pools.web.nodes]]
addr = "127.0.0.1:9001"
"#;

    /// [`MIN`] with `tcp_keepalive` on the listener (all three settings) and on
    /// the pool (`true`: the kernel's settings).
    pub(crate) fn with_keepalive() -> String {
        MIN.replace(
            "pool = \"web\"",
            "pool = \"web\"\ntcp_keepalive = { idle = \"60s\", interval = \"10s\", count = 6 }",
        )
        .replace("[pools.web]", "[pools.web]\ntcp_keepalive = true")
    }

    #[test]
    fn durations_print_in_exact_units() {
        assert_eq!(fmt_duration(Duration::from_secs(31 * 86_400)), "31d");
        assert_eq!(fmt_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(fmt_duration(Duration::from_secs(90)), "90s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(fmt_duration(Duration::ZERO), "0s");
    }
}
