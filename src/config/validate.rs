//! Validation: turns a [`RawConfig`] into a [`Config`], or into every problem
//! found, each naming its key path (`listener[0].listen`,
//! `pools.web.nodes[1].weight`). One function per table: [`listeners`] /
//! [`listener`] (with [`access_config`] and [`trusted_proxies`]), [`pool`],
//! [`nodes`] / [`node`], [`health`], [`keepalive`] (of a listener or a pool),
//! [`admin`] and [`process_settings`] (workers, user and group, pid file).
//!
//! Problems come in a fixed order, which tests and fixtures pin: `shutdown_grace`
//! and the missing tables, the listeners, the pools (each with its nodes and
//! health), admin, the process settings.
//!
//! No sockets. The only lookups: node host names through [`resolve`](super::resolve),
//! `user`/`group` in the host's user database, and `admin.token_file` is read.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::problems::Problems;
use super::raw::{RawAdmin, RawConfig, RawHealth, RawKeepalive, RawListener, RawNode, RawPool};
use super::resolve::resolve;
use super::{
    defaults, fmt_duration, limits, AccessConfig, AdminConfig, AdminToken, Config, HealthConfig,
    HealthKind, Keepalive, ListenerConfig, NodeConfig, PoolConfig, ProxyProtocol, StatusSet,
};
use crate::error::ConfigError;

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
        let upgrade_timeout = p.duration(
            "upgrade_timeout",
            self.upgrade_timeout,
            defaults::UPGRADE_TIMEOUT,
            limits::UPGRADE_TIMEOUT,
        );
        let withdraw_delay = p.duration(
            "withdraw_delay",
            self.withdraw_delay,
            defaults::WITHDRAW_DELAY,
            limits::WITHDRAW_DELAY,
        );
        if self.listener.is_empty() {
            p.push("listener", "at least one [[listener]] is required");
        }
        if self.pools.is_empty() {
            p.push("pools", "at least one [pools.NAME] table is required");
        }
        let listeners = listeners(&mut p, &self.listener, &self.pools);
        let mut pools = BTreeMap::new();
        for (name, rp) in &self.pools {
            pools.insert(name.clone(), pool(&mut p, name, rp));
        }
        let admin = self
            .admin
            .as_ref()
            .and_then(|a| admin(&mut p, a, &listeners, source));
        process_settings(&mut p, &self);

        if p.0.is_empty() {
            Ok(Config {
                source: source.to_path_buf(),
                shutdown_grace,
                upgrade_timeout,
                withdraw_delay,
                pid_file: self.pid_file,
                workers: self.workers,
                user: self.user,
                group: self.group,
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

/// Every `[[listener]]`, then the pairs of them that cannot both bind. A listener
/// whose address is unusable is left out of the result (its problem is reported).
fn listeners(
    p: &mut Problems,
    raw: &[RawListener],
    pools: &BTreeMap<String, RawPool>,
) -> Vec<ListenerConfig> {
    let mut listeners = Vec::with_capacity(raw.len());
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
    for (i, l) in raw.iter().enumerate() {
        if let Some(l) = listener(p, i, l, pools, &mut names, &mut addrs) {
            listeners.push(l);
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
    listeners
}

/// `listener[i]`; `names` and `addrs` hold those taken by the listeners before it.
fn listener<'a>(
    p: &mut Problems,
    i: usize,
    l: &'a RawListener,
    pools: &BTreeMap<String, RawPool>,
    names: &mut HashMap<&'a str, usize>,
    addrs: &mut HashMap<SocketAddr, usize>,
) -> Option<ListenerConfig> {
    let key = format!("listener[{i}]");
    if l.name.trim().is_empty() {
        p.push(format!("{key}.name"), "must not be empty");
    } else if let Some(first) = names.insert(&l.name, i) {
        p.push(
            format!("{key}.name"),
            format!(
                "duplicate listener name {:?} (also listener[{first}])",
                l.name
            ),
        );
    }
    let listen = listen_addr(p, i, &key, &l.listen, addrs);
    if !pools.is_empty() && !pools.contains_key(&l.pool) {
        let known: Vec<&str> = pools.keys().map(String::as_str).collect();
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
    let access = super::access::access_config(p, &key, l);
    let trusted_proxies = trusted_proxies(p, &key, l);
    let proxy_header_timeout = p.duration(
        format!("{key}.proxy_header_timeout"),
        l.proxy_header_timeout,
        defaults::PROXY_HEADER_TIMEOUT,
        limits::PROXY_HEADER_TIMEOUT,
    );
    let tcp_keepalive = keepalive(p, &key, l.tcp_keepalive.as_ref());
    let listen = listen?;
    Some(ListenerConfig {
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
        lifetime: super::lifecycle::lifetime(p, &key, l),
        access_log_interval: super::lifecycle::access_log_interval(p, &key, l),
    })
}

/// `listener[i].listen` (`key` is the listener's): an IP:port no listener before
/// it uses (port 0 never collides: the kernel picks a free port per listener).
fn listen_addr(
    p: &mut Problems,
    i: usize,
    key: &str,
    text: &str,
    addrs: &mut HashMap<SocketAddr, usize>,
) -> Option<SocketAddr> {
    match text.parse::<SocketAddr>() {
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
            } else if let Some(first) = addrs.insert(a, i) {
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
                format!("{text:?} is not an IP:port address (IPv6 as [addr]:port)"),
            );
            None
        }
    }
}

/// A listener's `accept_proxy_protocol`, `trusted_proxies` and
/// `proxy_header_timeout` (`key` is the listener's): the networks that must send
/// a PROXY header, empty when off.
fn trusted_proxies(p: &mut Problems, key: &str, l: &RawListener) -> Vec<ipnet::IpNet> {
    match l.accept_proxy_protocol {
        Some(true) => {
            let nets = super::access::access_list(
                p,
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
    }
}

/// `[pools.NAME]` with its nodes and health check.
fn pool(p: &mut Problems, pname: &str, rp: &RawPool) -> PoolConfig {
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
    let discover = super::discover::discover(p, &key, rp.discover.as_ref(), rp.nodes.is_some());
    let nodes = match (&rp.nodes, &rp.discover) {
        // Discovered at run time; a static list with discover is refused above.
        (_, Some(_)) => Vec::new(),
        (raw, None) => nodes(
            p,
            &key,
            raw.as_deref().unwrap_or_default(),
            points_per_weight,
        ),
    };
    let health = health(p, &key, rp.health.as_ref());
    let passive_failures = passive_failures(p, &key, rp.passive_failures, health.kind);
    PoolConfig {
        name: pname.to_string(),
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
        balance_factor_permille: balance_factor(p, &key, rp.balance_factor),
        tcp_keepalive: keepalive(p, &key, rp.tcp_keepalive.as_ref()),
        agent: super::agent::agent(p, &key, rp.agent.as_ref()),
        health,
        close_rate: super::lifecycle::close_rate(p, &key, rp.close_rate),
        rehome: super::lifecycle::rehome(p, &key, rp.rehome.as_ref()),
        discover,
        nodes,
    }
}

/// `[[pools.NAME.nodes]]` (`key` is the pool's): at least one, at most the limit,
/// unique names and addresses, and not more ring points than the limit. A node
/// whose address does not resolve is left out (its problem is reported).
fn nodes(p: &mut Problems, key: &str, raw: &[RawNode], points_per_weight: u32) -> Vec<NodeConfig> {
    if raw.is_empty() {
        p.push(
            format!("{key}.nodes"),
            "a pool needs at least one node ([[pools.NAME.nodes]] with addr) or a [pools.NAME.discover] table",
        );
    }
    if raw.len() > limits::MAX_NODES_PER_POOL {
        p.push(
            format!("{key}.nodes"),
            format!(
                "{} nodes is more than the limit of {}",
                raw.len(),
                limits::MAX_NODES_PER_POOL
            ),
        );
    }
    let mut nodes = Vec::with_capacity(raw.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
    let mut total_points: u64 = 0;
    for (i, n) in raw.iter().enumerate() {
        let (weight, node) = node(p, i, key, n, &mut names, &mut addrs);
        total_points = total_points
            .saturating_add(u64::from(weight).saturating_mul(u64::from(points_per_weight)));
        nodes.extend(node);
    }
    if total_points > limits::MAX_POOL_POINTS {
        p.push(
            format!("{key}.points_per_weight"),
            format!(
                "the pool would have {total_points} ring points (weights x points_per_weight); the limit is {}. An even ring needs about 16,000 points per node, not per unit of weight: with weights in the tens, lower points_per_weight (e.g. 1638 for weights around 10)",
                limits::MAX_POOL_POINTS
            ),
        );
    }
    nodes
}

/// `nodes[i]` of the pool at `pool_key`; `names` and `addrs` hold those taken
/// by the nodes before it. Returns its weight (for the pool's ring points) and
/// the node, `None` when its address does not resolve.
fn node(
    p: &mut Problems,
    i: usize,
    pool_key: &str,
    n: &RawNode,
    names: &mut HashMap<String, usize>,
    addrs: &mut HashMap<SocketAddr, usize>,
) -> (u32, Option<NodeConfig>) {
    let key = format!("{pool_key}.nodes[{i}]");
    let name = n.name.clone().unwrap_or_else(|| n.addr.clone());
    if name.trim().is_empty() {
        p.push(format!("{key}.name"), "must not be empty");
    } else if let Some(first) = names.insert(name.clone(), i) {
        p.push(
            format!("{key}.name"),
            format!("duplicate node name {name:?} (also nodes[{first}]); names are ring identities and must be unique"),
        );
    }
    let weight = p.range(
        format!("{key}.weight"),
        n.weight,
        defaults::WEIGHT,
        limits::WEIGHT,
    );
    let max_connections = n.max_connections.map(|v| {
        p.range(
            format!("{key}.max_connections"),
            Some(v),
            v,
            limits::NODE_MAX_CONNECTIONS,
        )
    });
    let node = match resolve(&n.addr) {
        Ok(addr) => {
            if let Some(first) = addrs.insert(addr, i) {
                p.push(
                    format!("{key}.addr"),
                    format!("duplicate address {addr} (also nodes[{first}])"),
                );
            }
            Some(NodeConfig {
                name,
                addr_text: n.addr.clone(),
                addr,
                weight,
                state: n.state.unwrap_or_default(),
                max_connections,
            })
        }
        Err(reason) => {
            p.push(format!("{key}.addr"), reason);
            None
        }
    };
    (weight, node)
}

/// A pool's `passive_failures` (`key` is the pool's): on by default with active
/// health checks, off (and refused) without them.
fn passive_failures(p: &mut Problems, key: &str, raw: Option<u32>, kind: HealthKind) -> u32 {
    let passive_default = if kind == HealthKind::None {
        0
    } else {
        defaults::PASSIVE_FAILURES
    };
    let passive_failures = p.range(
        format!("{key}.passive_failures"),
        raw,
        passive_default,
        limits::PASSIVE_FAILURES,
    );
    if kind == HealthKind::None && passive_failures > 0 {
        p.push(
            format!("{key}.passive_failures"),
            "needs active health checks to bring a node back: with health.kind = \"none\" set it to 0 (the default then)",
        );
    }
    passive_failures
}

/// `[admin]`: an IP:port no listener takes, and a token unless on loopback.
fn admin(
    p: &mut Problems,
    a: &RawAdmin,
    listeners: &[ListenerConfig],
    source: &Path,
) -> Option<AdminConfig> {
    let Ok(addr) = a.listen.parse::<SocketAddr>() else {
        p.push(
            "admin.listen",
            format!("{:?} is not an IP:port address", a.listen),
        );
        return None;
    };
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
        lifetime: Default::default(),
        access_log_interval: None,
    };
    for l in listeners {
        if (l.listen == addr && addr.port() != 0) || overlaps(l, &as_listener) {
            p.push(
                "admin.listen",
                format!("{addr} is also taken by listener {:?}", l.name),
            );
        }
    }
    let token = admin_token(p, a, source);
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

/// The top-level keys of how the process runs: `workers`, `user` and `group`,
/// `pid_file`.
fn process_settings(p: &mut Problems, raw: &RawConfig) {
    if let Some(w) = raw.workers {
        p.range("workers", Some(w), 1, limits::WORKERS);
    }
    privilege_config(p, raw.user.as_deref(), raw.group.as_deref());
    if let Some(pid) = &raw.pid_file {
        if pid.as_os_str().is_empty() {
            p.push("pid_file", "must not be empty");
        }
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
    Some(AdminToken::new(token))
}

/// `user` and `group` must name an existing user and group of this host.
fn privilege_config(p: &mut Problems, user: Option<&str>, group: Option<&str>) {
    if let Some(u) = user {
        if u.is_empty() {
            p.push("user", "must not be empty");
        } else {
            match crate::sys::privilege::lookup_user(u) {
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
        } else if let Err(reason) = crate::sys::privilege::lookup_group(g) {
            p.push("group", reason);
        }
    }
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

/// Validate `[pools.NAME.health]` (absent: TCP probes with the defaults).
fn health(p: &mut Problems, pool_key: &str, raw: Option<&RawHealth>) -> HealthConfig {
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
    p.timeout_below_interval(format!("{key}.timeout"), timeout, interval, "probes");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{with_keepalive, MIN};

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MIN, "min.toml").unwrap();
        assert_eq!(c.shutdown_grace, defaults::SHUTDOWN_GRACE);
        let l = &c.listeners[0];
        assert_eq!(l.max_connections, defaults::MAX_CONNECTIONS);
        assert_eq!(l.backlog, defaults::BACKLOG);
        let p = &c.pools["web"];
        assert_eq!(p.points_per_weight, defaults::POINTS_PER_WEIGHT);
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

        let c = Config::parse(&with_keepalive(), "k.toml").unwrap();
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
    fn withdraw_delay_defaults_to_zero_and_is_bounded() {
        assert_eq!(
            Config::parse(MIN, "w.toml").unwrap().withdraw_delay,
            Duration::ZERO
        );
        let set = |v: &str| Config::parse(&format!("withdraw_delay = \"{v}\"\n{MIN}"), "w.toml");
        assert_eq!(set("15s").unwrap().withdraw_delay, Duration::from_secs(15));
        assert_eq!(set("1h").unwrap().withdraw_delay, Duration::from_secs(3600));
        let e = set("1h1s").unwrap_err().to_string();
        assert!(
            e.contains("withdraw_delay: 3601s is too long (maximum 1h)"),
            "{e}"
        );
        assert!(set("-1s").is_err() && set("5").is_err());
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
shutdown_grace = "2d"
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
max_connections = 0
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
            "pools.web.nodes[1].max_connections: 0 is out of range 1..=1000000",
            "pools.empty.nodes: a pool needs at least one node",
        ] {
            assert!(msgs.contains(want), "missing {want:?} in:\n{msgs}");
        }
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
    fn node_max_connections_is_optional_bounded_and_typed() {
        let with = |v: &str| {
            MIN.replace(
                "addr = \"127.0.0.1:9001\"",
                &format!("addr = \"127.0.0.1:9001\"\nmax_connections = {v}"),
            )
        };
        let c = Config::parse(MIN, "t.toml").unwrap();
        assert_eq!(
            c.pools["web"].nodes[0].max_connections, None,
            "no cap by default"
        );
        let c = Config::parse(&with("1"), "t.toml").unwrap();
        assert_eq!(c.pools["web"].nodes[0].max_connections, Some(1));
        let c = Config::parse(&with("1000000"), "t.toml").unwrap();
        assert_eq!(c.pools["web"].nodes[0].max_connections, Some(1_000_000));
        let e = Config::parse(&with("1000001"), "t.toml")
            .unwrap_err()
            .messages()
            .join("\n");
        assert!(
            e.contains(
                "t.toml: pools.web.nodes[0].max_connections: 1000001 is out of range 1..=1000000"
            ),
            "{e}"
        );
        // Not a count at all: a type error with its line and column.
        for bad in ["-1", "\"5\"", "2.5"] {
            let e = Config::parse(&with(bad), "t.toml").unwrap_err().to_string();
            assert!(
                e.starts_with("t.toml:") && e.contains("max_connections"),
                "{bad}: {e}"
            );
        }
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
        // Below a millisecond, or a unit the syntax does not have: refused
        // where it is written, with the reason and the syntax.
        let text = MIN.replace("[pools.web]", "[pools.web]\nconnect_timeout = \"500us\"");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            e.contains("t.toml:8:19: pools.web.connect_timeout: \"500us\" is not a duration: unknown unit \"us\"; write whole numbers"),
            "{e}"
        );
        let text = MIN.replace("[pools.web]", "[pools.web]\nconnect_timeout = \"2S\"");
        let e = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            e.contains(
                "unknown unit \"S\"; write whole numbers, each with a unit (ms, s, m, h or d)"
            ),
            "{e}"
        );
    }
}
