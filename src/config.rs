//! Configuration: serde types for the TOML file (`deny_unknown_fields` everywhere),
//! parsing with file/line/column on syntax errors, and `validate()` that turns the
//! raw file into a [`Config`] or a list of every problem, each naming its key path.
//!
//! This module never opens sockets. Node addresses given as `host:port` are resolved
//! here, once, at load time.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{ConfigError, Problem};

/// Default path used by `ringlb run` when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config/ringlb.toml";

/// Limits on values; anything outside is refused with a reason.
pub mod limits {
    use std::time::Duration;
    pub const WEIGHT: std::ops::RangeInclusive<u32> = 1..=256;
    pub const POINTS_PER_WEIGHT: std::ops::RangeInclusive<u32> = 1..=10_000;
    pub const CONNECT_ATTEMPTS: std::ops::RangeInclusive<u32> = 1..=16;
    pub const MAX_CONNECTIONS: std::ops::RangeInclusive<usize> = 1..=1_000_000;
    pub const BACKLOG: std::ops::RangeInclusive<u32> = 1..=65_535;
    pub const KEY_PREFIX_V4: std::ops::RangeInclusive<u8> = 1..=32;
    pub const KEY_PREFIX_V6: std::ops::RangeInclusive<u8> = 1..=128;
    /// Total ring points of one pool (memory and build time stay small).
    pub const MAX_POOL_POINTS: u64 = 2_000_000;
    pub const MAX_NODES_PER_POOL: usize = 4_096;
    pub const CONNECT_TIMEOUT: (Duration, Duration) =
        (Duration::from_millis(1), Duration::from_secs(300));
    pub const IDLE_TIMEOUT: (Duration, Duration) = (
        Duration::from_millis(100),
        Duration::from_secs(30 * 24 * 3600),
    );
    pub const SHUTDOWN_GRACE: (Duration, Duration) =
        (Duration::ZERO, Duration::from_secs(24 * 3600));
    pub const HEALTH_INTERVAL: (Duration, Duration) =
        (Duration::from_millis(10), Duration::from_secs(3600));
    pub const HEALTH_TIMEOUT: (Duration, Duration) =
        (Duration::from_millis(1), Duration::from_secs(600));
    pub const RISE_FALL: std::ops::RangeInclusive<u32> = 1..=100;
    pub const PASSIVE_FAILURES: std::ops::RangeInclusive<u32> = 0..=1000;
    pub const HEALTH_PORT: std::ops::RangeInclusive<u16> = 1..=65535;
    pub const WORKERS: std::ops::RangeInclusive<usize> = 1..=1024;
    /// Longest `expect_body` (the probe reads at most 64 KiB of body).
    pub const EXPECT_BODY_LEN: usize = 1024;
    pub const MAX_CONNECTIONS_PER_IP: std::ops::RangeInclusive<u32> = 1..=1_000_000;
    pub const NEW_CONNECTIONS_PER_IP_PER_SEC: std::ops::RangeInclusive<u32> = 1..=1_000_000;
    /// Entries of one `allow` or `deny` list.
    pub const ACCESS_LIST_LEN: usize = 10_000;
    /// Shortest admin token (a bearer secret guessable in fewer tries is no secret).
    pub const ADMIN_TOKEN_MIN_LEN: usize = 16;
    pub const ADMIN_TOKEN_MAX_LEN: usize = 4096;
    pub const PROXY_HEADER_TIMEOUT: (Duration, Duration) =
        (Duration::from_millis(10), Duration::from_secs(60));
    /// `balance_factor`: 1.0 (every node at most one above the average) to 100.
    pub const BALANCE_FACTOR: (f64, f64) = (1.0, 100.0);
    /// `tcp_keepalive.idle` and `.interval`: whole seconds, as the kernel takes
    /// them (`TCP_KEEPIDLE`, `TCP_KEEPINTVL`: 1 to 32767).
    pub const KEEPALIVE_TIME: (Duration, Duration) =
        (Duration::from_secs(1), Duration::from_secs(32_767));
    /// `tcp_keepalive.count` (`TCP_KEEPCNT`: 1 to 127).
    pub const KEEPALIVE_COUNT: std::ops::RangeInclusive<u32> = 1..=127;
}

/// Defaults, in one place; `config/ringlb.toml` documents the same values.
pub mod defaults {
    use std::time::Duration;
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
    pub const MAX_CONNECTIONS: usize = 50_000;
    pub const BACKLOG: u32 = 4_096;
    pub const IPV6_ONLY: bool = true;
    pub const POINTS_PER_WEIGHT: u32 = 160;
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
    pub const CONNECT_ATTEMPTS: u32 = 3;
    pub const KEY_PREFIX_V4: u8 = 32;
    pub const KEY_PREFIX_V6: u8 = 64;
    pub const WEIGHT: u32 = 1;
    pub const ON_NODE_DOWN: super::OnNodeDown = super::OnNodeDown::Keep;
    pub const WHEN_ALL_DOWN: super::WhenAllDown = super::WhenAllDown::Reject;
    /// With active health checks; 0 when `health.kind = "none"`.
    pub const PASSIVE_FAILURES: u32 = 3;
    pub const HEALTH_KIND: super::HealthKind = super::HealthKind::Tcp;
    pub const HEALTH_PATH: &str = "/";
    pub const EXPECT_STATUS: &str = "200-399";
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
    pub const RISE: u32 = 2;
    pub const FALL: u32 = 3;
    pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(3);
}

// ---------------------------------------------------------------------------
// The file as written (serde).
// ---------------------------------------------------------------------------

/// The TOML file as written. Use [`Config::from_file`] / [`Config::from_str`] to get
/// a validated [`Config`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default, with = "humantime_serde::option")]
    pub shutdown_grace: Option<Duration>,
    pub pid_file: Option<PathBuf>,
    pub workers: Option<usize>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub pools: BTreeMap<String, RawPool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: String,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub listen: String,
    pub pool: String,
    pub max_connections: Option<usize>,
    pub backlog: Option<u32>,
    pub ipv6_only: Option<bool>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub max_connections_per_ip: Option<u32>,
    pub new_connections_per_ip_per_sec: Option<u32>,
    pub new_connections_per_ip_burst: Option<u32>,
    pub accept_proxy_protocol: Option<bool>,
    pub trusted_proxies: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde::option")]
    pub proxy_header_timeout: Option<Duration>,
    pub tcp_keepalive: Option<RawKeepalive>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub points_per_weight: Option<u32>,
    #[serde(default, with = "humantime_serde::option")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub idle_timeout: Option<Duration>,
    pub connect_attempts: Option<u32>,
    pub key_prefix_v4: Option<u8>,
    pub key_prefix_v6: Option<u8>,
    pub on_node_down: Option<OnNodeDown>,
    pub when_all_down: Option<WhenAllDown>,
    pub passive_failures: Option<u32>,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub balance_factor: Option<f64>,
    pub tcp_keepalive: Option<RawKeepalive>,
    pub health: Option<RawHealth>,
    #[serde(default)]
    pub nodes: Vec<RawNode>,
}

/// `tcp_keepalive` as written: `true`, `false`, or a table of the three
/// settings (any of them may be left out).
#[derive(Debug, Clone, PartialEq)]
pub enum RawKeepalive {
    Flag(bool),
    Params(RawKeepaliveParams),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeepaliveParams {
    #[serde(default, with = "humantime_serde::option")]
    pub idle: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub interval: Option<Duration>,
    pub count: Option<u32>,
}

impl<'de> Deserialize<'de> for RawKeepalive {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawKeepalive;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false, or a table such as { idle = \"60s\", interval = \"10s\", count = 6 }")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RawKeepalive, E> {
                Ok(RawKeepalive::Flag(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawKeepalive, A::Error> {
                RawKeepaliveParams::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawKeepalive::Params)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub kind: Option<HealthKind>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub expect_status: Option<String>,
    pub expect_body: Option<String>,
    pub port: Option<u16>,
    #[serde(default, with = "humantime_serde::option")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub name: Option<String>,
    pub addr: String,
    pub weight: Option<u32>,
    pub state: Option<AdminState>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
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

fn syntax_error(text: &str, path: &Path, key: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column) = match e.span() {
        Some(span) => line_col(text, span.start),
        None => (1, 1),
    };
    // The toml message is one line ("unknown field `x`, expected one of ...");
    // show the offending line under it so the operator sees the spot.
    let src_line = text.lines().nth(line.saturating_sub(1)).unwrap_or("");
    // `key` is the dotted path serde was at (`.` when the error is at the top or is
    // a syntax error); name it so type errors say which key they are about.
    let prefix = if key.is_empty() || key == "." {
        String::new()
    } else {
        format!("{key}: ")
    };
    let mut text_msg = e.message().trim_end().to_string();
    if text_msg.contains("expected a duration") {
        text_msg.push_str(" such as \"500ms\", \"2s\", \"5m\", \"1h\" or \"1d\"");
    }
    let message = format!(
        "{prefix}{}\n    | {}\n    | {}^",
        text_msg,
        src_line,
        " ".repeat(column.saturating_sub(1))
    );
    ConfigError::Syntax {
        path: path.to_path_buf(),
        line,
        column,
        message,
    }
}

/// 1-based line and column (in chars) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Collects problems while validating.
struct Problems(Vec<Problem>);

/// Parse one `allow`/`deny` entry: `ADDR/PREFIX`, or a bare address (one host).
fn parse_net(text: &str) -> Result<ipnet::IpNet, String> {
    let t = text.trim();
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    let net: ipnet::IpNet = t.parse().map_err(|_| {
        format!("{text:?} is not a network (ADDR/PREFIX such as \"10.0.0.0/8\" or \"2001:db8::/32\") or an address")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "{text:?} has bits set after the /{} prefix; write {} (or the single address without a prefix)",
            net.prefix_len(),
            net.trunc()
        ));
    }
    if let ipnet::IpNet::V6(n) = net {
        if n.addr().to_ipv4_mapped().is_some() && n.prefix_len() >= 96 {
            return Err(format!(
                "{text:?} is an IPv4-mapped IPv6 network; write the IPv4 network (clients of dual-stack listeners are matched as IPv4)"
            ));
        }
    }
    Ok(net)
}

fn access_list(p: &mut Problems, key: &str, entries: Option<&Vec<String>>) -> Vec<ipnet::IpNet> {
    let Some(entries) = entries else {
        return Vec::new();
    };
    if entries.len() > limits::ACCESS_LIST_LEN {
        p.push(
            key,
            format!(
                "{} entries is more than the limit of {}",
                entries.len(),
                limits::ACCESS_LIST_LEN
            ),
        );
        return Vec::new();
    }
    let mut nets = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        match parse_net(e) {
            Ok(n) => nets.push(n),
            Err(reason) => p.push(format!("{key}[{i}]"), reason),
        }
    }
    nets
}

fn access_config(p: &mut Problems, key: &str, l: &RawListener) -> AccessConfig {
    let allow = access_list(p, &format!("{key}.allow"), l.allow.as_ref());
    let deny = access_list(p, &format!("{key}.deny"), l.deny.as_ref());
    if l.allow.as_ref().is_some_and(|a| a.is_empty()) {
        p.push(
            format!("{key}.allow"),
            "an empty list would refuse every client; leave allow out to accept every client not denied",
        );
    }
    let max_connections_per_ip = l.max_connections_per_ip.map(|v| {
        p.range(
            format!("{key}.max_connections_per_ip"),
            Some(v),
            v,
            limits::MAX_CONNECTIONS_PER_IP,
        )
    });
    let new_connections_per_ip = match (
        l.new_connections_per_ip_per_sec,
        l.new_connections_per_ip_burst,
    ) {
        (Some(rate), burst) => {
            let per_sec = p.range(
                format!("{key}.new_connections_per_ip_per_sec"),
                Some(rate),
                rate,
                limits::NEW_CONNECTIONS_PER_IP_PER_SEC,
            );
            let burst = p.range(
                format!("{key}.new_connections_per_ip_burst"),
                burst,
                per_sec.max(1),
                limits::NEW_CONNECTIONS_PER_IP_PER_SEC,
            );
            Some(RateLimit { per_sec, burst })
        }
        (None, Some(_)) => {
            p.push(
                format!("{key}.new_connections_per_ip_burst"),
                "needs new_connections_per_ip_per_sec",
            );
            None
        }
        (None, None) => None,
    };
    AccessConfig {
        allow,
        deny,
        max_connections_per_ip,
        new_connections_per_ip,
    }
}

fn admin_token(p: &mut Problems, a: &RawAdmin, source: &Path) -> Option<AdminToken> {
    let (key, token) = match (&a.token, &a.token_file) {
        (Some(_), Some(_)) => {
            p.push(
                "admin.token",
                "set admin.token or admin.token_file, not both",
            );
            return None;
        }
        (Some(t), None) => ("admin.token", t.clone()),
        (None, Some(f)) => {
            // A relative path is relative to the config file, like an include.
            let path = if f.is_relative() {
                source.parent().unwrap_or(Path::new(".")).join(f)
            } else {
                f.clone()
            };
            match std::fs::read_to_string(&path) {
                Ok(t) => (
                    "admin.token_file",
                    t.trim_end_matches(['\r', '\n']).to_string(),
                ),
                Err(e) => {
                    p.push(
                        "admin.token_file",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    return None;
                }
            }
        }
        (None, None) => return None,
    };
    let len = token.chars().count();
    if len < limits::ADMIN_TOKEN_MIN_LEN {
        p.push(
            key,
            format!(
                "the token is {len} characters long; use at least {} (for example the output of `openssl rand -hex 32`)",
                limits::ADMIN_TOKEN_MIN_LEN
            ),
        );
        return None;
    }
    if token.len() > limits::ADMIN_TOKEN_MAX_LEN {
        p.push(
            key,
            format!(
                "the token is longer than {} bytes",
                limits::ADMIN_TOKEN_MAX_LEN
            ),
        );
        return None;
    }
    if token.chars().any(|c| !c.is_ascii_graphic()) {
        p.push(
            key,
            "the token may contain only printable ASCII without spaces (it travels in an HTTP header)",
        );
        return None;
    }
    Some(AdminToken(token))
}

/// `user` and `group` must name an existing user and group of this host.
fn privilege_config(p: &mut Problems, user: Option<&str>, group: Option<&str>) {
    if let Some(u) = user {
        if u.is_empty() {
            p.push("user", "must not be empty");
        } else {
            match crate::privilege::lookup_user(u) {
                Ok(_) => {}
                Err(reason) => p.push("user", reason),
            }
        }
    }
    if let Some(g) = group {
        if user.is_none() {
            p.push(
                "group",
                "needs user: ringlb drops to a user and a group together",
            );
        }
        if g.is_empty() {
            p.push("group", "must not be empty");
        } else if let Err(reason) = crate::privilege::lookup_group(g) {
            p.push("group", reason);
        }
    }
}

/// For `check`: how long a vanished peer can go unnoticed with `k` (the
/// kernel's values, read from this host, standing in for keys left out).
fn detection(k: &Keepalive) -> String {
    k.detection_time(&crate::keepalive::kernel_defaults())
        .map(|d| {
            format!(
                " (a vanished peer is closed after {} of silence)",
                humantime::format_duration(d)
            )
        })
        .unwrap_or_default()
}

/// `tcp_keepalive` of a listener or pool (`key` is its table).
fn keepalive(p: &mut Problems, key: &str, raw: Option<&RawKeepalive>) -> Option<Keepalive> {
    let params = match raw? {
        RawKeepalive::Flag(false) => return None,
        RawKeepalive::Flag(true) => return Some(Keepalive::default()),
        RawKeepalive::Params(params) => params,
    };
    let mut time = |field: &str, v: Option<Duration>| {
        let v = v?;
        let key = format!("{key}.tcp_keepalive.{field}");
        let (min, max) = limits::KEEPALIVE_TIME;
        if v.subsec_nanos() != 0 {
            p.push(
                key,
                format!(
                    "{} is not a whole number of seconds (the kernel counts keepalive times in seconds)",
                    humantime::format_duration(v)
                ),
            );
        } else if v < min || v > max {
            p.push(
                key,
                format!(
                    "{} is out of range {}..={}",
                    fmt_duration(v),
                    fmt_duration(min),
                    fmt_duration(max)
                ),
            );
        }
        Some(v)
    };
    let idle = time("idle", params.idle);
    let interval = time("interval", params.interval);
    let count = params.count.map(|c| {
        p.range(
            format!("{key}.tcp_keepalive.count"),
            Some(c),
            c,
            limits::KEEPALIVE_COUNT,
        )
    });
    Some(Keepalive {
        idle,
        interval,
        count,
    })
}

fn balance_factor(p: &mut Problems, key: &str, v: Option<f64>) -> Option<u32> {
    let v = v?;
    let (lo, hi) = limits::BALANCE_FACTOR;
    if !v.is_finite() || v < lo || v > hi {
        p.push(
            format!("{key}.balance_factor"),
            format!("{v} is out of range {lo:.1}..={hi:.1} (1.25 lets a node take 25% more than the average before its new clients go to the next node)"),
        );
        return None;
    }
    Some((v * 1000.0).round() as u32)
}

impl Problems {
    fn has(&self, key: &str) -> bool {
        self.0.iter().any(|p| p.key == key)
    }

    fn has_prefix(&self, key: &str) -> bool {
        self.0.iter().any(|p| p.key.starts_with(key))
    }

    fn push(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            reason: reason.into(),
        });
    }

    fn range<T>(
        &mut self,
        key: impl Into<String>,
        v: Option<T>,
        default: T,
        r: std::ops::RangeInclusive<T>,
    ) -> T
    where
        T: PartialOrd + Copy + std::fmt::Display,
    {
        let v = v.unwrap_or(default);
        if !r.contains(&v) {
            self.push(
                key,
                format!("{v} is out of range {}..={}", r.start(), r.end()),
            );
        }
        v
    }

    fn duration(
        &mut self,
        key: impl Into<String>,
        v: Option<Duration>,
        default: Duration,
        (min, max): (Duration, Duration),
    ) -> Duration {
        let v = v.unwrap_or(default);
        let key = key.into();
        if v.subsec_nanos() % 1_000_000 != 0 {
            self.push(
                key,
                format!(
                    "{} is not a whole number of milliseconds",
                    humantime::format_duration(v)
                ),
            );
        } else if v.is_zero() && !min.is_zero() {
            self.push(key, "must be greater than zero");
        } else if v < min {
            self.push(
                key,
                format!(
                    "{} is too short (minimum {})",
                    fmt_duration(v),
                    fmt_duration(min)
                ),
            );
        } else if v > max {
            self.push(
                key,
                format!(
                    "{} is too long (maximum {})",
                    fmt_duration(v),
                    fmt_duration(max)
                ),
            );
        }
        v
    }
}

impl RawConfig {
    /// Check every value and reference; resolve node addresses.
    pub fn validate(self, source: &Path) -> Result<Config, ConfigError> {
        let mut p = Problems(Vec::new());

        let shutdown_grace = p.duration(
            "shutdown_grace",
            self.shutdown_grace,
            defaults::SHUTDOWN_GRACE,
            limits::SHUTDOWN_GRACE,
        );

        if self.listener.is_empty() {
            p.push("listener", "at least one [[listener]] is required");
        }
        if self.pools.is_empty() {
            p.push("pools", "at least one [pools.NAME] table is required");
        }

        let mut listeners = Vec::with_capacity(self.listener.len());
        let mut listener_names: HashMap<&str, usize> = HashMap::new();
        let mut listen_addrs: HashMap<SocketAddr, usize> = HashMap::new();
        for (i, l) in self.listener.iter().enumerate() {
            let key = format!("listener[{i}]");
            if l.name.trim().is_empty() {
                p.push(format!("{key}.name"), "must not be empty");
            } else if let Some(first) = listener_names.insert(&l.name, i) {
                p.push(
                    format!("{key}.name"),
                    format!(
                        "duplicate listener name {:?} (also listener[{first}])",
                        l.name
                    ),
                );
            }
            let listen = match l.listen.parse::<SocketAddr>() {
                Ok(SocketAddr::V6(a)) if a.ip().to_ipv4_mapped().is_some() => {
                    p.push(
                        format!("{key}.listen"),
                        format!(
                            "{a} is an IPv4-mapped IPv6 address, which cannot be bound; write {}:{} instead",
                            a.ip().to_ipv4_mapped().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                            a.port()
                        ),
                    );
                    None
                }
                Ok(a) => {
                    if a.port() == 0 {
                        // Port 0: the kernel picks a free port per listener.
                    } else if let Some(first) = listen_addrs.insert(a, i) {
                        p.push(
                            format!("{key}.listen"),
                            format!("address {a} is already used by listener[{first}]"),
                        );
                    }
                    Some(a)
                }
                Err(_) => {
                    p.push(
                        format!("{key}.listen"),
                        format!(
                            "{:?} is not an IP:port address (IPv6 as [addr]:port)",
                            l.listen
                        ),
                    );
                    None
                }
            };
            if !self.pools.is_empty() && !self.pools.contains_key(&l.pool) {
                let known: Vec<&str> = self.pools.keys().map(String::as_str).collect();
                p.push(
                    format!("{key}.pool"),
                    format!("no pool named {:?} (defined: {})", l.pool, known.join(", ")),
                );
            }
            let max_connections = p.range(
                format!("{key}.max_connections"),
                l.max_connections,
                defaults::MAX_CONNECTIONS,
                limits::MAX_CONNECTIONS,
            );
            let backlog = p.range(
                format!("{key}.backlog"),
                l.backlog,
                defaults::BACKLOG,
                limits::BACKLOG,
            );
            let access = access_config(&mut p, &key, l);
            let trusted_proxies = match l.accept_proxy_protocol {
                Some(true) => {
                    let nets = access_list(
                        &mut p,
                        &format!("{key}.trusted_proxies"),
                        l.trusted_proxies.as_ref(),
                    );
                    if nets.is_empty() && !p.has_prefix(&format!("{key}.trusted_proxies")) {
                        p.push(
                            format!("{key}.trusted_proxies"),
                            "accept_proxy_protocol needs the networks of the proxies allowed to send the header (a header from anyone else would let any client pick its own address)",
                        );
                    }
                    nets
                }
                _ => {
                    if l.trusted_proxies.is_some() || l.proxy_header_timeout.is_some() {
                        p.push(
                            format!("{key}.trusted_proxies"),
                            "trusted_proxies and proxy_header_timeout need accept_proxy_protocol = true",
                        );
                    }
                    Vec::new()
                }
            };
            let proxy_header_timeout = p.duration(
                format!("{key}.proxy_header_timeout"),
                l.proxy_header_timeout,
                defaults::PROXY_HEADER_TIMEOUT,
                limits::PROXY_HEADER_TIMEOUT,
            );
            let tcp_keepalive = keepalive(&mut p, &key, l.tcp_keepalive.as_ref());
            if let Some(listen) = listen {
                listeners.push(ListenerConfig {
                    name: l.name.clone(),
                    listen,
                    pool: l.pool.clone(),
                    max_connections,
                    backlog,
                    ipv6_only: l.ipv6_only.unwrap_or(defaults::IPV6_ONLY),
                    access,
                    trusted_proxies,
                    proxy_header_timeout,
                    tcp_keepalive,
                });
            }
        }

        for (j, b) in listeners.iter().enumerate() {
            for a in &listeners[..j] {
                if overlaps(a, b) {
                    p.push(
                        format!("listener[{j}].listen"),
                        format!(
                            "{} overlaps {} of listener {:?} (a wildcard address takes the port on every address of its family{})",
                            b.listen,
                            a.listen,
                            a.name,
                            if a.listen.is_ipv6() != b.listen.is_ipv6() { "; set ipv6_only = true to split IPv4 and IPv6" } else { "" }
                        ),
                    );
                }
            }
        }

        let mut pools = BTreeMap::new();
        for (pname, rp) in &self.pools {
            let key = format!("pools.{pname}");
            if pname.is_empty()
                || !pname
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                p.push(
                    format!("pools.{pname:?}"),
                    "pool names use only letters, digits, '_' and '-'",
                );
            }
            let points_per_weight = p.range(
                format!("{key}.points_per_weight"),
                rp.points_per_weight,
                defaults::POINTS_PER_WEIGHT,
                limits::POINTS_PER_WEIGHT,
            );
            let connect_timeout = p.duration(
                format!("{key}.connect_timeout"),
                rp.connect_timeout,
                defaults::CONNECT_TIMEOUT,
                limits::CONNECT_TIMEOUT,
            );
            let idle_timeout = p.duration(
                format!("{key}.idle_timeout"),
                rp.idle_timeout,
                defaults::IDLE_TIMEOUT,
                limits::IDLE_TIMEOUT,
            );
            let connect_attempts = p.range(
                format!("{key}.connect_attempts"),
                rp.connect_attempts,
                defaults::CONNECT_ATTEMPTS,
                limits::CONNECT_ATTEMPTS,
            );
            let key_prefix_v4 = p.range(
                format!("{key}.key_prefix_v4"),
                rp.key_prefix_v4,
                defaults::KEY_PREFIX_V4,
                limits::KEY_PREFIX_V4,
            );
            let key_prefix_v6 = p.range(
                format!("{key}.key_prefix_v6"),
                rp.key_prefix_v6,
                defaults::KEY_PREFIX_V6,
                limits::KEY_PREFIX_V6,
            );
            if rp.nodes.is_empty() {
                p.push(
                    format!("{key}.nodes"),
                    "a pool needs at least one node ([[pools.NAME.nodes]] with addr)",
                );
            }
            if rp.nodes.len() > limits::MAX_NODES_PER_POOL {
                p.push(
                    format!("{key}.nodes"),
                    format!(
                        "{} nodes is more than the limit of {}",
                        rp.nodes.len(),
                        limits::MAX_NODES_PER_POOL
                    ),
                );
            }
            let mut nodes = Vec::with_capacity(rp.nodes.len());
            let mut names: HashMap<String, usize> = HashMap::new();
            let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
            let mut total_points: u64 = 0;
            for (i, n) in rp.nodes.iter().enumerate() {
                let nkey = format!("{key}.nodes[{i}]");
                let name = n.name.clone().unwrap_or_else(|| n.addr.clone());
                if name.trim().is_empty() {
                    p.push(format!("{nkey}.name"), "must not be empty");
                } else if let Some(first) = names.insert(name.clone(), i) {
                    p.push(
                        format!("{nkey}.name"),
                        format!("duplicate node name {name:?} (also nodes[{first}]); names are ring identities and must be unique"),
                    );
                }
                let weight = p.range(
                    format!("{nkey}.weight"),
                    n.weight,
                    defaults::WEIGHT,
                    limits::WEIGHT,
                );
                total_points = total_points
                    .saturating_add(u64::from(weight).saturating_mul(u64::from(points_per_weight)));
                match resolve(&n.addr) {
                    Ok(addr) => {
                        if let Some(first) = addrs.insert(addr, i) {
                            p.push(
                                format!("{nkey}.addr"),
                                format!("duplicate address {addr} (also nodes[{first}])"),
                            );
                        }
                        nodes.push(NodeConfig {
                            name,
                            addr_text: n.addr.clone(),
                            addr,
                            weight,
                            state: n.state.unwrap_or_default(),
                        });
                    }
                    Err(reason) => p.push(format!("{nkey}.addr"), reason),
                }
            }
            if total_points > limits::MAX_POOL_POINTS {
                p.push(
                    format!("{key}.points_per_weight"),
                    format!(
                        "the pool would have {total_points} ring points (weights x points_per_weight); the limit is {}",
                        limits::MAX_POOL_POINTS
                    ),
                );
            }
            let health = validate_health(&mut p, &key, rp.health.as_ref());
            let passive_default = if health.kind == HealthKind::None {
                0
            } else {
                defaults::PASSIVE_FAILURES
            };
            let passive_failures = p.range(
                format!("{key}.passive_failures"),
                rp.passive_failures,
                passive_default,
                limits::PASSIVE_FAILURES,
            );
            if health.kind == HealthKind::None && passive_failures > 0 {
                p.push(
                    format!("{key}.passive_failures"),
                    "needs active health checks to bring a node back: with health.kind = \"none\" set it to 0 (the default then)",
                );
            }
            pools.insert(
                pname.clone(),
                PoolConfig {
                    name: pname.clone(),
                    points_per_weight,
                    connect_timeout,
                    idle_timeout,
                    connect_attempts,
                    key_prefix_v4,
                    key_prefix_v6,
                    on_node_down: rp.on_node_down.unwrap_or(defaults::ON_NODE_DOWN),
                    when_all_down: rp.when_all_down.unwrap_or(defaults::WHEN_ALL_DOWN),
                    passive_failures,
                    proxy_protocol: rp.proxy_protocol.unwrap_or(ProxyProtocol::Off),
                    balance_factor_permille: balance_factor(&mut p, &key, rp.balance_factor),
                    tcp_keepalive: keepalive(&mut p, &key, rp.tcp_keepalive.as_ref()),
                    health,
                    nodes,
                },
            );
        }

        let admin = self
            .admin
            .as_ref()
            .and_then(|a| match a.listen.parse::<SocketAddr>() {
                Ok(addr) => {
                    let as_listener = ListenerConfig {
                        name: "admin".into(),
                        listen: addr,
                        pool: String::new(),
                        max_connections: 1,
                        backlog: 1,
                        ipv6_only: true,
                        access: AccessConfig::default(),
                        trusted_proxies: Vec::new(),
                        proxy_header_timeout: defaults::PROXY_HEADER_TIMEOUT,
                        tcp_keepalive: None,
                    };
                    for l in &listeners {
                        if (l.listen == addr && addr.port() != 0) || overlaps(l, &as_listener) {
                            p.push(
                                "admin.listen",
                                format!("{addr} is also taken by listener {:?}", l.name),
                            );
                        }
                    }
                    let token = admin_token(&mut p, a, source);
                    if token.is_none() && !addr.ip().is_loopback() && !p.has("admin.token") {
                        p.push(
                            "admin.listen",
                            format!("{addr} is not a loopback address: set admin.token (or admin.token_file) so that only holders of the token can read and change the balancer's state"),
                        );
                    }
                    Some(AdminConfig {
                        listen: addr,
                        token,
                    })
                }
                Err(_) => {
                    p.push(
                        "admin.listen",
                        format!("{:?} is not an IP:port address", a.listen),
                    );
                    None
                }
            });
        if let Some(w) = self.workers {
            p.range("workers", Some(w), 1, limits::WORKERS);
        }
        let workers = self.workers;
        privilege_config(&mut p, self.user.as_deref(), self.group.as_deref());
        if let Some(pid) = &self.pid_file {
            if pid.as_os_str().is_empty() {
                p.push("pid_file", "must not be empty");
            }
        }

        if p.0.is_empty() {
            Ok(Config {
                source: source.to_path_buf(),
                shutdown_grace,
                pid_file: self.pid_file.clone(),
                workers,
                user: self.user.clone(),
                group: self.group.clone(),
                admin,
                listeners,
                pools,
            })
        } else {
            Err(ConfigError::Invalid {
                path: source.to_path_buf(),
                problems: p.0,
            })
        }
    }
}

/// Validate `[pools.NAME.health]` (absent: TCP probes with the defaults).
fn validate_health(p: &mut Problems, pool_key: &str, raw: Option<&RawHealth>) -> HealthConfig {
    let d = HealthConfig::default();
    let Some(h) = raw else {
        return d;
    };
    let key = format!("{pool_key}.health");
    let kind = h.kind.unwrap_or(d.kind);
    let interval = p.duration(
        format!("{key}.interval"),
        h.interval,
        d.interval,
        limits::HEALTH_INTERVAL,
    );
    let timeout = p.duration(
        format!("{key}.timeout"),
        h.timeout,
        d.timeout,
        limits::HEALTH_TIMEOUT,
    );
    if !timeout.is_zero() && timeout >= interval {
        p.push(
            format!("{key}.timeout"),
            format!(
                "{} must be shorter than interval ({}) so probes of one node never overlap",
                fmt_duration(timeout),
                fmt_duration(interval)
            ),
        );
    }
    let rise = p.range(format!("{key}.rise"), h.rise, d.rise, limits::RISE_FALL);
    let fall = p.range(format!("{key}.fall"), h.fall, d.fall, limits::RISE_FALL);
    if let Some(port) = h.port {
        p.range(format!("{key}.port"), Some(port), 1, limits::HEALTH_PORT);
    }
    let path = h.path.clone().unwrap_or(d.path);
    if !path.starts_with('/') || path.chars().any(|c| c.is_control() || c == ' ') {
        p.push(
            format!("{key}.path"),
            format!("{path:?} must start with '/' and contain no spaces or control characters"),
        );
    }
    if let Some(host) = &h.host {
        if host.is_empty() || host.chars().any(|c| c.is_control() || c == ' ') {
            p.push(
                format!("{key}.host"),
                format!("{host:?} is not a valid Host header value"),
            );
        }
    }
    let expect_status = match h.expect_status.as_deref() {
        None => d.expect_status,
        Some(t) => StatusSet::parse(t).unwrap_or_else(|reason| {
            p.push(format!("{key}.expect_status"), reason);
            StatusSet::default()
        }),
    };
    let expect_body = h.expect_body.clone().unwrap_or_default();
    if expect_body.len() > limits::EXPECT_BODY_LEN {
        p.push(
            format!("{key}.expect_body"),
            format!("longer than {} bytes", limits::EXPECT_BODY_LEN),
        );
    }
    if kind != HealthKind::Http {
        for (set, name) in [
            (h.path.is_some(), "path"),
            (h.host.is_some(), "host"),
            (h.expect_status.is_some(), "expect_status"),
            (h.expect_body.is_some(), "expect_body"),
        ] {
            if set {
                p.push(
                    format!("{key}.{name}"),
                    format!(
                        "only used with kind = \"http\" (kind is \"{}\")",
                        kind.as_str()
                    ),
                );
            }
        }
    }
    HealthConfig {
        kind,
        path,
        host: h.host.clone(),
        expect_status,
        expect_body,
        port: h.port,
        interval,
        timeout,
        rise,
        fall,
    }
}

/// Two listeners that cannot both bind: same port and one of them a wildcard covering
/// the other's address (exact duplicates are reported separately).
fn overlaps(a: &ListenerConfig, b: &ListenerConfig) -> bool {
    let (x, y) = (a.listen, b.listen);
    if x.port() != y.port() || x.port() == 0 || x == y {
        return false;
    }
    let covers = |w: &ListenerConfig, o: &ListenerConfig| {
        if !w.listen.ip().is_unspecified() {
            return false;
        }
        match (w.listen.is_ipv6(), o.listen.is_ipv6()) {
            (false, false) | (true, true) => true,
            // [::]:p without IPV6_V6ONLY also takes IPv4 port p.
            (true, false) => !w.ipv6_only,
            (false, true) => !o.ipv6_only && o.listen.ip().is_unspecified(),
        }
    };
    covers(a, b) || covers(b, a)
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

/// Resolve `IP:port` or `host:port` to one address (the first the resolver returns).
fn resolve(text: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return check_node_addr(a, text);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} is not IP:port or host:port"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("{text:?} is not IP:port or host:port"));
    }
    // Only a plausible host name goes to the resolver: letters, digits, '-', '.',
    // '_' (an IPv6 address needs brackets: [2001:db8::1]:80).
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(format!(
            "{text:?} is not IP:port or host:port (IPv6 addresses are written [addr]:port)"
        ));
    }
    match text.to_socket_addrs() {
        Ok(mut it) => match it.next() {
            Some(a) => check_node_addr(a, text),
            None => Err(format!("{host:?} resolved to no address")),
        },
        Err(e) => Err(format!("cannot resolve {host:?}: {e}")),
    }
}

fn check_node_addr(a: SocketAddr, text: &str) -> Result<SocketAddr, String> {
    // `[::ffff:a.b.c.d]:p` is the IPv4 node a.b.c.d:p.
    let a = SocketAddr::new(crate::ring::canonical_ip(a.ip()), a.port());
    if a.port() == 0 {
        return Err(format!("{text:?}: port 0 is not a valid backend port"));
    }
    if a.ip().is_unspecified() {
        return Err(format!(
            "{text:?}: {} is the unspecified address, not a backend",
            a.ip()
        ));
    }
    let unicast = match a.ip() {
        IpAddr::V4(v4) => !(v4.is_broadcast() || v4.is_multicast()),
        IpAddr::V6(v6) => !v6.is_multicast(),
    };
    if !unicast {
        return Err(format!("{text:?}: not a unicast address"));
    }
    Ok(a)
}

/// A short human summary, as printed by `ringlb check`.
pub fn summary(cfg: &Config) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: OK: {} listener{}, {} pool{}, {} node{}; shutdown_grace {}",
        cfg.source.display(),
        cfg.listeners.len(),
        plural(cfg.listeners.len()),
        cfg.pools.len(),
        plural(cfg.pools.len()),
        cfg.node_count(),
        plural(cfg.node_count()),
        fmt_duration(cfg.shutdown_grace)
    );
    if let Some(a) = &cfg.admin {
        let _ = writeln!(
            s,
            "  admin on {} (/metrics, /status, /){}",
            a.listen,
            if a.token.is_some() {
                ", bearer token required"
            } else {
                ""
            }
        );
    }
    if let Some(u) = &cfg.user {
        let _ = writeln!(
            s,
            "  runs as user {u}{} after binding",
            cfg.group
                .as_ref()
                .map(|g| format!(", group {g}"))
                .unwrap_or_default()
        );
    }
    if let Some(w) = cfg.workers {
        let _ = writeln!(s, "  workers {w}");
    }
    if let Some(p) = &cfg.pid_file {
        let _ = writeln!(s, "  pid_file {}", p.display());
    }
    for l in &cfg.listeners {
        let _ = writeln!(
            s,
            "  listener {:<12} {:<22} -> pool {} (max_connections {}, backlog {}{})",
            l.name,
            l.listen,
            l.pool,
            l.max_connections,
            l.backlog,
            if l.listen.is_ipv6() {
                format!(", ipv6_only {}", l.ipv6_only)
            } else {
                String::new()
            }
        );
        let a = &l.access;
        let mut rules = Vec::new();
        if !a.allow.is_empty() {
            rules.push(format!(
                "allow {} network{}",
                a.allow.len(),
                plural(a.allow.len())
            ));
        }
        if !a.deny.is_empty() {
            rules.push(format!(
                "deny {} network{}",
                a.deny.len(),
                plural(a.deny.len())
            ));
        }
        if let Some(m) = a.max_connections_per_ip {
            rules.push(format!("max_connections_per_ip {m}"));
        }
        if let Some(r) = a.new_connections_per_ip {
            rules.push(format!(
                "new_connections_per_ip {}/s burst {}",
                r.per_sec, r.burst
            ));
        }
        if !l.trusted_proxies.is_empty() {
            rules.push(format!(
                "PROXY header required from {} network{} (timeout {})",
                l.trusted_proxies.len(),
                plural(l.trusted_proxies.len()),
                fmt_duration(l.proxy_header_timeout)
            ));
        }
        if let Some(k) = &l.tcp_keepalive {
            let _ = writeln!(
                s,
                "    tcp_keepalive to clients: {}{}",
                Keepalive::describe(Some(k)),
                detection(k)
            );
        }
        if !rules.is_empty() {
            let _ = writeln!(s, "    access: {}", rules.join(", "));
        }
    }
    for pool in cfg.pools.values() {
        let _ = writeln!(
            s,
            "  pool {:<16} {} node{}, points_per_weight {}, connect_timeout {}, idle_timeout {}, {} attempt{}, key /{} v4 /{} v6",
            pool.name,
            pool.nodes.len(),
            plural(pool.nodes.len()),
            pool.points_per_weight,
            fmt_duration(pool.connect_timeout),
            fmt_duration(pool.idle_timeout),
            pool.connect_attempts,
            if pool.connect_attempts as usize > pool.nodes.len() {
                format!("s ({} effective: one per node)", pool.nodes.len())
            } else {
                plural(pool.connect_attempts as usize).to_string()
            },
            pool.key_prefix_v4,
            pool.key_prefix_v6
        );
        let h = &pool.health;
        let health = match h.kind {
            HealthKind::None => "health none (nodes always in service)".to_string(),
            HealthKind::Tcp => format!(
                "health tcp{} every {} (timeout {}, rise {}, fall {})",
                h.port.map(|p| format!(" port {p}")).unwrap_or_default(),
                fmt_duration(h.interval),
                fmt_duration(h.timeout),
                h.rise,
                h.fall
            ),
            HealthKind::Http => format!(
                "health http GET {}{} expect {}{} every {} (timeout {}, rise {}, fall {})",
                h.path,
                h.port.map(|p| format!(" port {p}")).unwrap_or_default(),
                h.expect_status,
                if h.expect_body.is_empty() {
                    String::new()
                } else {
                    format!(" body ~ {:?}", h.expect_body)
                },
                fmt_duration(h.interval),
                fmt_duration(h.timeout),
                h.rise,
                h.fall
            ),
        };
        let _ = writeln!(
            s,
            "    {health}; passive_failures {}, on_node_down {}, when_all_down {}",
            pool.passive_failures,
            pool.on_node_down.as_str(),
            pool.when_all_down.as_str()
        );
        let mut extra = Vec::new();
        if pool.proxy_protocol != ProxyProtocol::Off {
            extra.push(format!("proxy_protocol {}", pool.proxy_protocol.as_str()));
        }
        if let Some(p) = pool.balance_factor_permille {
            extra.push(format!("balance_factor {}", f64::from(p) / 1000.0));
        }
        if let Some(k) = &pool.tcp_keepalive {
            extra.push(format!(
                "tcp_keepalive to nodes: {}{}",
                Keepalive::describe(Some(k)),
                detection(k)
            ));
        }
        if !extra.is_empty() {
            let _ = writeln!(s, "    {}", extra.join(", "));
        }
        for n in &pool.nodes {
            let _ = writeln!(
                s,
                "    node {:<14} {:<22} weight {}{}",
                n.name,
                n.addr,
                n.weight,
                if n.state == AdminState::Enabled {
                    String::new()
                } else {
                    format!(", state {}", n.state.as_str())
                }
            );
        }
    }
    s
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[[listener]]
name = "ws"
listen = "127.0.0.1:0"
pool = "web"

[pools.web]
[[pools.web.nodes]]
addr = "127.0.0.1:9001"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MIN, "min.toml").unwrap();
        assert_eq!(c.shutdown_grace, defaults::SHUTDOWN_GRACE);
        let l = &c.listeners[0];
        assert_eq!(l.max_connections, defaults::MAX_CONNECTIONS);
        assert_eq!(l.backlog, defaults::BACKLOG);
        let p = &c.pools["web"];
        assert_eq!(p.points_per_weight, 160);
        assert_eq!(p.connect_timeout, Duration::from_secs(2));
        assert_eq!(p.idle_timeout, Duration::from_secs(3600));
        assert_eq!(p.connect_attempts, 3);
        assert_eq!((p.key_prefix_v4, p.key_prefix_v6), (32, 64));
        assert_eq!(p.nodes[0].name, "127.0.0.1:9001");
        assert_eq!(p.nodes[0].weight, 1);
    }

    #[test]
    fn tcp_keepalive_is_off_by_default_and_takes_a_flag_or_a_table() {
        let c = Config::parse(MIN, "min.toml").unwrap();
        assert_eq!(c.listeners[0].tcp_keepalive, None);
        assert_eq!(c.pools["web"].tcp_keepalive, None);

        let text = MIN
            .replace(
                "pool = \"web\"",
                "pool = \"web\"\ntcp_keepalive = { idle = \"60s\", interval = \"10s\", count = 6 }",
            )
            .replace("[pools.web]", "[pools.web]\ntcp_keepalive = true");
        let c = Config::parse(&text, "k.toml").unwrap();
        let k = c.listeners[0].tcp_keepalive.unwrap();
        assert_eq!(
            (k.idle, k.interval, k.count),
            (
                Some(Duration::from_secs(60)),
                Some(Duration::from_secs(10)),
                Some(6)
            )
        );
        assert_eq!(
            k.detection_time(&Keepalive::default()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(c.pools["web"].tcp_keepalive, Some(Keepalive::default()));
        let summary = summary(&c);
        assert!(
            summary.contains("tcp_keepalive to clients: idle 1m, interval 10s, count 6 (a vanished peer is closed after 2m of silence)"),
            "{summary}"
        );
        assert!(
            summary.contains("tcp_keepalive to nodes: on, the kernel's settings"),
            "{summary}"
        );

        let off = MIN.replace("[pools.web]", "[pools.web]\ntcp_keepalive = false");
        assert_eq!(
            Config::parse(&off, "k.toml").unwrap().pools["web"].tcp_keepalive,
            None
        );
        let partial = MIN.replace(
            "[pools.web]",
            "[pools.web]\ntcp_keepalive = { idle = \"5m\" }",
        );
        let k = Config::parse(&partial, "k.toml").unwrap().pools["web"]
            .tcp_keepalive
            .unwrap();
        assert_eq!(
            (k.idle, k.interval, k.count),
            (Some(Duration::from_secs(300)), None, None)
        );
    }

    #[test]
    fn tcp_keepalive_errors_name_the_field_and_the_reason() {
        let bad = |value: &str| {
            let text = MIN.replace(
                "[pools.web]",
                &format!("[pools.web]\ntcp_keepalive = {value}"),
            );
            Config::parse(&text, "k.toml").unwrap_err().to_string()
        };
        for (value, wants) in [
            (
                "{ idle = \"1500ms\" }",
                &["pools.web.tcp_keepalive.idle: 1s 500ms is not a whole number of seconds"][..],
            ),
            (
                "{ interval = \"0s\" }",
                &["pools.web.tcp_keepalive.interval: 0s is out of range 1s..=32767s"],
            ),
            (
                "{ idle = \"10h\" }",
                &["pools.web.tcp_keepalive.idle: 10h is out of range"],
            ),
            (
                "{ count = 0 }",
                &["pools.web.tcp_keepalive.count: 0 is out of range 1..=127"],
            ),
            (
                "{ count = 128 }",
                &["pools.web.tcp_keepalive.count: 128 is out of range 1..=127"],
            ),
            (
                "{ idel = \"60s\" }",
                &["pools.web.tcp_keepalive", "unknown field `idel`"],
            ),
            (
                "\"yes\"",
                &[
                    "pools.web.tcp_keepalive",
                    "expected true, false, or a table",
                ],
            ),
            ("{ idle = \"soon\" }", &["pools.web.tcp_keepalive.idle"]),
        ] {
            let e = bad(value);
            for want in wants {
                assert!(e.contains(want), "{value}: {e}");
            }
        }
        // A listener's, too.
        let text = MIN.replace(
            "pool = \"web\"",
            "pool = \"web\"\ntcp_keepalive = { count = 200 }",
        );
        let e = Config::parse(&text, "k.toml").unwrap_err().to_string();
        assert!(
            e.contains("listener[0].tcp_keepalive.count: 200 is out of range"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_column() {
        let text = MIN.replace("pool = \"web\"", "pool = \"web\"\npoool = 1");
        let e = Config::parse(&text, "x.toml").unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("x.toml:6:1: listener[0].poool: unknown field `poool`"),
            "{s}"
        );
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let e = Config::parse("[[listener]\nname=1", "bad.toml").unwrap_err();
        match e {
            ConfigError::Syntax { line, column, .. } => assert_eq!((line, column), (1, 11)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
shutdown_grace = "2days"
[[listener]]
name = "a"
listen = "nope"
pool = "missing"
[[listener]]
name = "a"
listen = "127.0.0.1:1"
pool = "web"
max_connections = 0
[pools.web]
connect_timeout = "0s"
idle_timeout = "1ms"
points_per_weight = 0
[[pools.web.nodes]]
name = "n"
addr = "127.0.0.1:1"
weight = 300
[[pools.web.nodes]]
name = "n"
addr = "127.0.0.1:1"
[pools.empty]
"#;
        let e = Config::parse(text, "p.toml").unwrap_err();
        let msgs = e.messages().join("\n");
        for want in [
            "p.toml: shutdown_grace: 2d is too long (maximum 1d)",
            "listener[0].listen: \"nope\" is not an IP:port",
            "listener[0].pool: no pool named \"missing\"",
            "listener[1].name: duplicate listener name \"a\"",
            "listener[1].max_connections: 0 is out of range",
            "pools.web.connect_timeout: must be greater than zero",
            "pools.web.idle_timeout: 1ms is too short",
            "pools.web.points_per_weight: 0 is out of range",
            "pools.web.nodes[0].weight: 300 is out of range 1..=256",
            "pools.web.nodes[1].name: duplicate node name \"n\"",
            "pools.web.nodes[1].addr: duplicate address 127.0.0.1:1",
            "pools.empty.nodes: a pool needs at least one node",
        ] {
            assert!(msgs.contains(want), "missing {want:?} in:\n{msgs}");
        }
    }

    #[test]
    fn ipv6_and_hostnames() {
        let text = MIN
            .replace("127.0.0.1:0", "[::1]:0")
            .replace("127.0.0.1:9001", "localhost:9001");
        let c = Config::parse(&text, "v6.toml").unwrap();
        assert!(c.listeners[0].listen.is_ipv6());
        assert_eq!(c.pools["web"].nodes[0].addr.port(), 9001);
        assert_eq!(c.pools["web"].nodes[0].name, "localhost:9001");
    }

    #[test]
    fn type_errors_name_the_key_path() {
        let text = MIN.replace(
            "addr = \"127.0.0.1:9001\"",
            "addr = \"127.0.0.1:9001\"\nweight = -1",
        );
        let s = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            s.starts_with("t.toml:10:10: pools.web.nodes[0].weight: "),
            "{s}"
        );
        let text = MIN.replace("[pools.web]", "[pools.web]\nidle_timeout = \"2 parsecs\"");
        let s = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(s.contains("pools.web.idle_timeout: "), "{s}");
    }

    #[test]
    fn huge_weights_do_not_overflow() {
        let text = MIN
            .replace("[pools.web]", "[pools.web]\npoints_per_weight = 4294967295")
            .replace(
                "addr = \"127.0.0.1:9001\"",
                "addr = \"127.0.0.1:9001\"\nweight = 4294967295",
            );
        let msgs = Config::parse(&text, "t.toml")
            .unwrap_err()
            .messages()
            .join("\n");
        assert!(
            msgs.contains("pools.web.nodes[0].weight: 4294967295 is out of range"),
            "{msgs}"
        );
        assert!(msgs.contains("ring points"), "{msgs}");
    }

    #[test]
    fn overlapping_listeners_are_refused_and_port_zero_is_not_a_duplicate() {
        let two = |a: &str, b: &str, v6only: bool| {
            format!(
                "[[listener]]\nname = \"a\"\nlisten = \"{a}\"\npool = \"p\"\nipv6_only = {v6only}\n\
                 [[listener]]\nname = \"b\"\nlisten = \"{b}\"\npool = \"p\"\n\
                 [pools.p]\n[[pools.p.nodes]]\naddr = \"127.0.0.1:9\"\n"
            )
        };
        let bad = [
            ("0.0.0.0:8080", "127.0.0.1:8080", true),
            ("127.0.0.1:8080", "0.0.0.0:8080", true),
            ("[::]:8080", "127.0.0.1:8080", false),
            ("[::]:8080", "[::1]:8080", true),
        ];
        for (a, b, v6only) in bad {
            let e = Config::parse(&two(a, b, v6only), "o.toml")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("listener[1].listen") && e.contains("overlaps"),
                "{a} {b}: {e}"
            );
        }
        let good = [
            ("[::]:8080", "0.0.0.0:8080", true),
            ("127.0.0.1:0", "127.0.0.1:0", true),
            ("127.0.0.1:8080", "127.0.0.2:8080", true),
            ("0.0.0.0:8080", "0.0.0.0:8081", true),
        ];
        for (a, b, v6only) in good {
            Config::parse(&two(a, b, v6only), "o.toml").unwrap_or_else(|e| panic!("{a} {b}: {e}"));
        }
    }

    #[test]
    fn pool_names_and_multicast_nodes() {
        let text = MIN
            .replace("pools.web", "pools.\"a.b\"")
            .replace("pool = \"web\"", "pool = \"a.b\"");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("pools.\"a.b\": pool names use only"), "{e}");
        let text = MIN.replace("127.0.0.1:9001", "[ff02::1]:9001");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("not a unicast address"), "{e}");
    }

    #[test]
    fn mapped_listen_refused_mapped_node_folded_sub_ms_refused() {
        let text = MIN.replace("127.0.0.1:0", "[::ffff:127.0.0.1]:9300");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("write 127.0.0.1:9300 instead"), "{e}");
        let text = MIN.replace(
            "addr = \"127.0.0.1:9001\"",
            "addr = \"127.0.0.1:9001\"\n[[pools.web.nodes]]\naddr = \"[::ffff:127.0.0.1]:9001\"",
        );
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("duplicate address 127.0.0.1:9001"), "{e}");
        let text = MIN.replace("[pools.web]", "[pools.web]\nconnect_timeout = \"500us\"");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            e.contains("connect_timeout: 500us is not a whole number of milliseconds"),
            "{e}"
        );
        let text = MIN.replace("[pools.web]", "[pools.web]\nconnect_timeout = \"2S\"");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("expected a duration such as \"500ms\""), "{e}");
    }

    #[test]
    fn durations_print_in_exact_units() {
        assert_eq!(fmt_duration(Duration::from_secs(31 * 86_400)), "31d");
        assert_eq!(fmt_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(fmt_duration(Duration::from_secs(90)), "90s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(fmt_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 3), (2, 1));
    }
}
