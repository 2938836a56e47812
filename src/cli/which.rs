//! `ringlb which`: the node each client IP maps to, and its fallback order, computed
//! from the config exactly as the running balancer computes it (same ring code).
//! The order is split where the balancer stops: the first `connect_attempts`
//! nodes are the ones a new connection tries, the rest are listed as not tried.
//! A node's `max_connections` is named in the pool's header: whether it is full
//! depends on live connections, which are not known offline.
//!
//! With `--spread N`, N pseudo-random IPv4 addresses go through each pool's ring
//! the same way, and the answer is per node: its weight-fair share, its exact
//! share of the hash space, the IPs it got, and max/mean ([`spread`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use crate::config::{fmt_duration, AdminState, Config, HealthKind};
use crate::health::{self, ProbeOutcome};
use crate::pool::{Pool, PoolSnapshot};
use crate::ring::canonical_ip;

/// Most addresses `--spread` maps (10 million: 4.7 s in a debug build, 3 nodes of 160 points).
pub const MAX_SPREAD: u32 = 10_000_000;
/// The `--seed` of `--spread` when none is given, so that two runs agree.
pub const DEFAULT_SEED: u64 = 1;

/// Probe results by pool, then node name.
pub type Probed = HashMap<String, HashMap<String, ProbeOutcome>>;

/// Why `which` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum WhichError {
    #[error("{0:?} is not an IP address")]
    BadIp(String),
    #[error("no pool named {0:?} in the config")]
    NoPool(String),
    #[error("no listener named {0:?} in the config")]
    NoListener(String),
    #[error("--spread {0}: the number of IPs must be 1 to {MAX_SPREAD}")]
    SpreadRange(u64),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

/// `--spread N --seed S`: how many pseudo-random IPv4 addresses, from which seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpreadOpts {
    pub ips: u32,
    pub seed: u64,
}

/// `ringlb which` as a whole: the answer for `args` (IPs; `-` reads more,
/// whitespace-separated, from `stdin`) in the pools of `pool` or `listener` (all
/// by default), probing every node once first when `probe` is set, and with
/// `spread` the spread of that many pseudo-random IPv4 addresses. Returns the
/// text to print.
pub fn command(
    cfg: &Config,
    pool: Option<&str>,
    listener: Option<&str>,
    probe: bool,
    spread_opts: Option<SpreadOpts>,
    args: &[String],
    mut stdin: impl std::io::Read,
) -> Result<String, WhichError> {
    if let Some(o) = spread_opts {
        check_spread(o.ips)?;
    }
    let mut all = Vec::new();
    for a in args {
        if a == "-" {
            let mut s = String::new();
            stdin
                .read_to_string(&mut s)
                .map_err(|source| WhichError::Io {
                    what: "reading IPs from stdin",
                    source,
                })?;
            all.extend(s.split_whitespace().map(str::to_string));
        } else {
            all.push(a.clone());
        }
    }
    let ips = parse_ips(&all)?;
    let pools = pools_for(cfg, pool, listener)?;
    // Pools with `[discover]` get their nodes from one resolution now.
    let mut resolved = cfg.clone();
    let notes = crate::cli::check::resolve_discovered(&mut resolved);
    let cfg = &resolved;
    let probed = if probe {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| WhichError::Io {
                what: "starting the tokio runtime",
                source,
            })?;
        Some(rt.block_on(probe_once(cfg, &pools)))
    } else {
        None
    };
    let mappings = map(cfg, &pools, &ips, probed.as_ref());
    let spreads = match spread_opts {
        Some(o) => spread(cfg, &pools, o, probed.as_ref())?,
        None => Vec::new(),
    };
    let mut out = String::new();
    for n in notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out.push_str(&render(cfg, &pools, &mappings, &spreads, probed.as_ref()));
    Ok(out)
}

fn check_spread(n: u32) -> Result<(), WhichError> {
    if (1..=MAX_SPREAD).contains(&n) {
        Ok(())
    } else {
        Err(WhichError::SpreadRange(u64::from(n)))
    }
}

/// One answer: pool, client, node and the rest of the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub pool: String,
    pub ip: IpAddr,
    pub node: String,
    /// The nodes tried after `node`, in order: with `node`, the first
    /// `connect_attempts` of the order.
    pub fallback: Vec<String>,
    /// The rest of the order: never tried by a new connection (beyond
    /// `connect_attempts`).
    pub not_tried: Vec<String>,
    /// The node on the ring of every node, when it differs from `node` because
    /// nodes are down.
    pub if_all_up: Option<String>,
}

/// Parse IP arguments (IPv4, IPv6, IPv4-mapped IPv6).
pub fn parse_ips<S: AsRef<str>>(args: &[S]) -> Result<Vec<IpAddr>, WhichError> {
    args.iter()
        .map(|a| {
            let a = a.as_ref().trim();
            a.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .map_err(|_| WhichError::BadIp(a.to_string()))
        })
        .collect()
}

/// The pools to answer for: `--pool`, or the pool of `--listener`, or all of them.
pub fn pools_for<'a>(
    cfg: &'a Config,
    pool: Option<&str>,
    listener: Option<&str>,
) -> Result<Vec<&'a str>, WhichError> {
    if let Some(p) = pool {
        return cfg
            .pools
            .get_key_value(p)
            .map(|(k, _)| vec![k.as_str()])
            .ok_or_else(|| WhichError::NoPool(p.to_string()));
    }
    if let Some(l) = listener {
        return cfg
            .listeners
            .iter()
            .find(|x| x.name == l)
            .map(|x| vec![x.pool.as_str()])
            .ok_or_else(|| WhichError::NoListener(l.to_string()));
    }
    Ok(cfg.pools.keys().map(String::as_str).collect())
}

/// Probe every node of the selected pools once, concurrently, in the foreground.
/// Pools with `health.kind = "none"` are not probed.
pub async fn probe_once(cfg: &Config, pools: &[&str]) -> Probed {
    let mut tasks = tokio::task::JoinSet::new();
    for &name in pools {
        let pool = &cfg.pools[name];
        if pool.health.kind == HealthKind::None {
            continue;
        }
        for node in &pool.nodes {
            let (p, n, h, addr) = (
                name.to_string(),
                node.name.clone(),
                pool.health.clone(),
                health::probe_addr(node.addr, &pool.health),
            );
            tasks.spawn(async move { (p, n, health::probe(addr, &h).await) });
        }
    }
    let mut out = Probed::new();
    while let Some(Ok((p, n, o))) = tasks.join_next().await {
        out.entry(p).or_default().insert(n, o);
    }
    out
}

/// A pool's snapshots as the balancer builds them from the config: with every
/// node up, and with the nodes whose probe failed taken off the ring (one probe
/// decides here, not rise/fall).
fn snapshots(
    cfg: &Config,
    name: &str,
    probed: Option<&Probed>,
) -> (Arc<PoolSnapshot>, Arc<PoolSnapshot>) {
    let pool = Pool::new(&cfg.pools[name]);
    let full = pool.snapshot();
    if let Some(results) = probed.and_then(|p| p.get(name)) {
        for (node, o) in results {
            if !o.ok {
                pool.set_up(node, false, &o.detail);
            }
        }
    }
    (full, pool.snapshot())
}

/// Map every IP on every selected pool. With probe results, nodes whose probe
/// failed are taken off the ring first.
pub fn map(cfg: &Config, pools: &[&str], ips: &[IpAddr], probed: Option<&Probed>) -> Vec<Mapping> {
    let mut out = Vec::with_capacity(pools.len() * ips.len());
    if ips.is_empty() {
        return out;
    }
    for &name in pools {
        let (full, snap) = snapshots(cfg, name, probed);
        let attempts = cfg.pools[name].connect_attempts as usize;
        for &ip in ips {
            let order = snap.order(ip);
            let mut names = order.iter().map(|n| n.name.clone());
            let node = names.next().unwrap_or_default();
            let fallback: Vec<String> = names.by_ref().take(attempts.saturating_sub(1)).collect();
            let all_up = full.order(ip).first().map(|n| n.name.clone());
            out.push(Mapping {
                pool: name.to_string(),
                ip: canonical_ip(ip),
                if_all_up: all_up.filter(|n| *n != node),
                node,
                fallback,
                not_tried: names.collect(),
            });
        }
    }
    out
}

/// Human output, per selected pool: a header (with node states when probed),
/// then one line per IP: `IP -> node (addr)  then: next, next` (the nodes a new
/// connection tries, `-` for none), then `  [not tried (beyond connect_attempts
/// = N): rest]` when the order goes on, then `  [node is down]` when the
/// client's node on the ring of every node is down. Fields are separated by two
/// spaces; names by ", ". Then the pool's spread, if there is one
/// ([`render_spread`]).
pub fn render(
    cfg: &Config,
    pools: &[&str],
    mappings: &[Mapping],
    spreads: &[Spread],
    probed: Option<&Probed>,
) -> String {
    let width = mappings
        .iter()
        .map(|m| m.ip.to_string().len())
        .max()
        .unwrap_or(0);
    let mut s = String::new();
    for &name in pools {
        header(&mut s, cfg, name, probed);
        for m in mappings.iter().filter(|m| m.pool == name) {
            line(&mut s, cfg, m, width);
        }
        if let Some(sp) = spreads.iter().find(|sp| sp.pool == name) {
            s.push_str(&render_spread(cfg, sp));
        }
    }
    s
}

/// A pool's header: its key, attempts, caps, node states in the file, health.
fn header(s: &mut String, cfg: &Config, name: &str, probed: Option<&Probed>) {
    let pool = &cfg.pools[name];
    let _ = writeln!(
        s,
        "pool {} ({} nodes, key /{} IPv4, /{} IPv6, connect_attempts {}):",
        name,
        pool.nodes.len(),
        pool.key_prefix_v4,
        pool.key_prefix_v6,
        (pool.connect_attempts as usize).min(pool.nodes.len())
    );
    if let Some(permille) = pool.balance_factor_permille {
        let _ = writeln!(
            s,
            "  balance_factor {}: a node at its connection bound is skipped without using an attempt, so one listed as not tried may be (open connections are not known here)",
            f64::from(permille) / 1000.0
        );
    }
    for n in &pool.nodes {
        if let Some(m) = n.max_connections {
            let _ = writeln!(
                s,
                "  node {}: max_connections {m}: once it holds {m} connections it is skipped without using an attempt, so a node listed as not tried may be tried (open connections are not known here)",
                n.name
            );
        }
    }
    for n in pool.nodes.iter().filter(|n| n.state != AdminState::Enabled) {
        let _ = writeln!(
            s,
            "  node {}: state = \"{}\" in the config (off the ring; a running instance may differ: see /status)",
            n.name,
            n.state.as_str()
        );
    }
    let h = &pool.health;
    match (h.kind, probed.and_then(|p| p.get(name))) {
        (HealthKind::None, _) => {
            let _ = writeln!(s, "  health: none (every node is always in service)");
        }
        (_, None) => {
            let _ = writeln!(
                s,
                "  health: {} every {}; node states are not known here (--probe probes each node once now)",
                h.kind.as_str(),
                fmt_duration(h.interval)
            );
        }
        (_, Some(results)) => {
            for n in &pool.nodes {
                if let Some(o) = results.get(&n.name) {
                    let _ = writeln!(
                        s,
                        "  node {:<12} {:<4} {} ({} ms)",
                        n.name,
                        if o.ok { "UP" } else { "DOWN" },
                        o.detail,
                        o.latency.as_millis()
                    );
                }
            }
        }
    }
}

/// One IP's answer line.
fn line(s: &mut String, cfg: &Config, m: &Mapping, width: usize) {
    let pool = &cfg.pools[&m.pool];
    if m.node.is_empty() {
        let _ = writeln!(
            s,
            "  {:<width$} -> none: every node is down (when_all_down = \"reject\")",
            m.ip.to_string()
        );
        return;
    }
    let addr = pool
        .nodes
        .iter()
        .find(|n| n.name == m.node)
        .map(|n| n.addr.to_string())
        .unwrap_or_default();
    let not_tried = if m.not_tried.is_empty() {
        String::new()
    } else {
        format!(
            "  [not tried (beyond connect_attempts = {}): {}]",
            pool.connect_attempts,
            m.not_tried.join(", ")
        )
    };
    let _ = writeln!(
        s,
        "  {:<width$} -> {} ({})  then: {}{not_tried}{}",
        m.ip.to_string(),
        m.node,
        addr,
        if m.fallback.is_empty() {
            "-".to_string()
        } else {
            m.fallback.join(", ")
        },
        m.if_all_up
            .as_ref()
            .map(|n| format!("  [{n} is down]"))
            .unwrap_or_default()
    );
}

/// `n` distinct pseudo-random IPv4 addresses, the same ones for the same
/// `seed`: the i-th is a seeded bijection of i over the 32-bit space (two
/// rounds of xor with a key and the `lowbias32` mixer), so none repeats.
pub fn spread_ips(n: u32, seed: u64) -> impl Iterator<Item = Ipv4Addr> {
    let k = splitmix64(seed);
    let (k1, k2) = (k as u32, (k >> 32) as u32);
    (0..n).map(move |i| Ipv4Addr::from(mix32(mix32(i ^ k1) ^ k2)))
}

/// SplitMix64's output function (Steele, Lea, Flood 2014).
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Chris Wellons' `lowbias32`: each step (xorshift right, multiply by an odd
/// constant) is invertible, so the whole is a bijection of u32.
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// One node in a pool's spread.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpread {
    pub name: String,
    pub weight: u32,
    /// Why the node is off the ring (`None` while on it).
    pub off: Option<String>,
    /// Its points on the ring (0 off it).
    pub points: u32,
    /// Weight-fair share: weight / the sum of the weights on the ring (0 off it).
    pub fair: f64,
    /// Exact share of the hash space on the ring (0 off it).
    pub ring: f64,
    /// How many of the addresses map to it.
    pub ips: u64,
}

/// How `ips` pseudo-random IPv4 addresses spread over one pool's ring.
#[derive(Debug, Clone, PartialEq)]
pub struct Spread {
    pub pool: String,
    pub opts: SpreadOpts,
    /// Every configured node, in file order.
    pub nodes: Vec<NodeSpread>,
    /// Addresses that got a node: all of them, or 0 when no node is on the ring.
    pub mapped: u64,
    /// Every node is down and on the ring anyway (`when_all_down = "any"`).
    pub failing_open: bool,
}

impl Spread {
    /// A node's IPs over its fair count (mapped x fair share); `None` off the ring.
    pub fn ratio(&self, n: &NodeSpread) -> Option<f64> {
        let fair = self.mapped as f64 * n.fair;
        (n.off.is_none() && fair > 0.0).then(|| n.ips as f64 / fair)
    }

    /// Nodes on the ring.
    pub fn on_ring(&self) -> usize {
        self.nodes.iter().filter(|n| n.off.is_none()).count()
    }

    /// The largest [`ratio`](Self::ratio): max/mean of the weight-fair counts.
    pub fn max_over_mean(&self) -> Option<f64> {
        self.nodes
            .iter()
            .filter_map(|n| self.ratio(n))
            .reduce(f64::max)
    }

    /// The same for the exact ring shares: what infinitely many addresses give.
    pub fn ring_max_over_mean(&self) -> Option<f64> {
        self.nodes
            .iter()
            .filter(|n| n.off.is_none() && n.fair > 0.0)
            .map(|n| n.ring / n.fair)
            .reduce(f64::max)
    }
}

/// Map [`spread_ips`] through every selected pool's ring as the balancer does
/// (the pool's key prefixes, the ring over the nodes in service, the client's
/// node on it) and count per node.
pub fn spread(
    cfg: &Config,
    pools: &[&str],
    opts: SpreadOpts,
    probed: Option<&Probed>,
) -> Result<Vec<Spread>, WhichError> {
    check_spread(opts.ips)?;
    let mut out = Vec::with_capacity(pools.len());
    for &name in pools {
        let (_, snap) = snapshots(cfg, name, probed);
        let mut counts = vec![0u64; snap.members.len()];
        if !snap.ring.is_empty() {
            for ip in spread_ips(opts.ips, opts.seed) {
                if let Some(i) = snap.ring.primary(&snap.key(IpAddr::V4(ip))) {
                    counts[i] += 1;
                }
            }
        }
        let weights: u64 = snap.members.iter().map(|m| u64::from(m.weight())).sum();
        let detail = |node: &str| {
            probed
                .and_then(|p| p.get(name))
                .and_then(|r| r.get(node))
                .map(|o| o.detail.clone())
                .unwrap_or_default()
        };
        let nodes = snap
            .nodes
            .iter()
            .map(|n| {
                let name = n.name.to_string();
                match snap.members.iter().position(|m| Arc::ptr_eq(m, n)) {
                    Some(i) => NodeSpread {
                        weight: n.weight(),
                        off: None,
                        points: snap.ring.points_of(i),
                        fair: if weights == 0 {
                            0.0
                        } else {
                            f64::from(n.weight()) / weights as f64
                        },
                        ring: snap.ring.share_of(i),
                        ips: counts[i],
                        name,
                    },
                    None => NodeSpread {
                        weight: n.weight(),
                        off: Some(if n.admin_state() != AdminState::Enabled {
                            format!("state = \"{}\" in the config", n.admin_state().as_str())
                        } else {
                            format!("down ({})", detail(&name))
                        }),
                        points: 0,
                        fair: 0.0,
                        ring: 0.0,
                        ips: 0,
                        name,
                    },
                }
            })
            .collect();
        out.push(Spread {
            pool: name.to_string(),
            opts,
            nodes,
            mapped: counts.iter().sum(),
            failing_open: snap.failing_open,
        });
    }
    Ok(out)
}

/// A pool's spread: a table of every node (`off the ring: why` for the ones
/// off it), then `max/mean R over K nodes (N IPs), ring max/mean R (exact)`.
/// Shares are percentages; `IPs/fair` is a node's IPs over its weight-fair
/// count, and max/mean is the largest of them.
pub fn render_spread(cfg: &Config, sp: &Spread) -> String {
    let mut s = String::new();
    let pool = &cfg.pools[&sp.pool];
    let _ = writeln!(
        s,
        "  spread of {} pseudo-random IPv4 addresses (--seed {}), each to its node on the ring:",
        sp.opts.ips, sp.opts.seed
    );
    if pool.balance_factor_permille.is_some()
        || pool.nodes.iter().any(|n| n.max_connections.is_some())
    {
        let _ = writeln!(
            s,
            "  (each address's node on the ring; a running instance also passes over nodes at balance_factor's bound or at their max_connections)"
        );
    }
    if sp.failing_open {
        let _ = writeln!(
            s,
            "  every node is down: the ring holds all of them (when_all_down = \"any\")"
        );
    }
    let w = sp
        .nodes
        .iter()
        .map(|n| n.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let iw = sp.opts.ips.to_string().len().max(3);
    let pw = sp
        .nodes
        .iter()
        .map(|n| n.points.to_string().len())
        .max()
        .unwrap_or(0)
        .max(6);
    let _ = writeln!(
        s,
        "    {:<w$}  weight  {:>pw$}     fair     ring  {:>iw$}    share  IPs/fair",
        "node", "points", "IPs"
    );
    for n in &sp.nodes {
        match (&n.off, sp.ratio(n)) {
            (Some(why), _) => {
                let _ = writeln!(
                    s,
                    "    {:<w$}  {:>6}  off the ring: {why}",
                    n.name, n.weight
                );
            }
            (None, ratio) => {
                let share = if sp.mapped == 0 {
                    0.0
                } else {
                    n.ips as f64 / sp.mapped as f64
                };
                let _ = writeln!(
                    s,
                    "    {:<w$}  {:>6}  {:>pw$}  {:>7}  {:>7}  {:>iw$}  {:>7}  {:>8}",
                    n.name,
                    n.weight,
                    n.points,
                    pct(n.fair),
                    pct(n.ring),
                    n.ips,
                    pct(share),
                    ratio.map_or("-".to_string(), |r| format!("{r:.3}"))
                );
            }
        }
    }
    match (sp.max_over_mean(), sp.ring_max_over_mean()) {
        (Some(m), Some(r)) => {
            let _ = writeln!(
                s,
                "  max/mean {m:.3} over {} node{} ({} IPs), ring max/mean {r:.3} (exact)",
                sp.on_ring(),
                if sp.on_ring() == 1 { "" } else { "s" },
                sp.mapped
            );
        }
        _ => {
            let _ = writeln!(
                s,
                "  no node is on the ring: none of the {} addresses has a node",
                sp.opts.ips
            );
        }
    }
    s
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_cap_is_named_and_live_counts_are_said_to_be_unknown() {
        let cfg = Config::parse(
            "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\n\
             [pools.p.health]\nkind = \"none\"\n\
             [[pools.p.nodes]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\nmax_connections = 5\n\
             [[pools.p.nodes]]\nname = \"b\"\naddr = \"127.0.0.1:2\"\n",
            "w.toml",
        )
        .unwrap();
        let ips = parse_ips(&["10.0.0.1"]).unwrap();
        let out = render(&cfg, &["p"], &map(&cfg, &["p"], &ips, None), &[], None);
        assert!(
            out.contains("  node a: max_connections 5: once it holds 5 connections it is skipped without using an attempt, so a node listed as not tried may be tried (open connections are not known here)\n"),
            "{out}"
        );
        assert!(!out.contains("node b: max_connections"), "{out}");
    }

    /// Four nodes: weights 1, 2, 1, and one disabled (weight 5), key /24.
    fn weighted() -> Config {
        Config::parse(
            "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
             [pools.p]\nkey_prefix_v4 = 24\n[pools.p.health]\nkind = \"tcp\"\n\
             [[pools.p.nodes]]\nname = \"one\"\naddr = \"127.0.0.1:1\"\n\
             [[pools.p.nodes]]\nname = \"two\"\naddr = \"127.0.0.1:2\"\nweight = 2\n\
             [[pools.p.nodes]]\nname = \"three\"\naddr = \"127.0.0.1:3\"\n\
             [[pools.p.nodes]]\nname = \"off\"\naddr = \"127.0.0.1:4\"\nweight = 5\nstate = \"disabled\"\n",
            "w.toml",
        )
        .unwrap()
    }

    const OPTS: SpreadOpts = SpreadOpts {
        ips: 20_000,
        seed: DEFAULT_SEED,
    };

    #[test]
    fn the_spread_adds_up_and_a_weight_2_node_has_twice_the_fair_share() {
        let cfg = weighted();
        let sp = spread(&cfg, &["p"], OPTS, None).unwrap().remove(0);
        let names: Vec<&str> = sp.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["one", "two", "three", "off"]);
        assert_eq!(sp.mapped, 20_000);
        assert_eq!(sp.nodes.iter().map(|n| n.ips).sum::<u64>(), 20_000);
        let [one, two, three, off] = &sp.nodes[..] else {
            panic!("{sp:?}")
        };
        assert_eq!((one.fair, two.fair, three.fair), (0.25, 0.5, 0.25));
        assert_eq!(two.points, 2 * one.points);
        // The disabled node is listed, off the ring, and not in any share.
        assert_eq!(
            off.off.as_deref(),
            Some("state = \"disabled\" in the config")
        );
        assert_eq!((off.fair, off.ring, off.ips, off.points), (0.0, 0.0, 0, 0));
        assert_eq!(sp.on_ring(), 3);
        let ring: f64 = sp.nodes.iter().map(|n| n.ring).sum();
        assert!((ring - 1.0).abs() < 1e-9, "{ring}");
        // The fair-weighted mean of the ratios is 1, so the largest is >= 1.
        let mean: f64 = sp
            .nodes
            .iter()
            .filter_map(|n| Some(n.fair * sp.ratio(n)?))
            .sum();
        assert!((mean - 1.0).abs() < 1e-9, "{mean}");
        let max = sp.max_over_mean().unwrap();
        let expect = sp
            .nodes
            .iter()
            .filter_map(|n| sp.ratio(n))
            .fold(0.0, f64::max);
        assert!(max >= 1.0 && max == expect, "{max} {expect}");
        assert_eq!(
            sp.ring_max_over_mean().unwrap(),
            [one, two, three]
                .iter()
                .map(|n| n.ring / n.fair)
                .fold(0.0, f64::max)
        );
        assert!(two.ips > one.ips && two.ips > three.ips, "{sp:?}");
        // The count of each node is how far its ring share predicts (20,000
        // draws: 4 standard deviations of a share of 0.5 are 1.4%).
        for n in [one, two, three] {
            let got = n.ips as f64 / 20_000.0;
            assert!((got - n.ring).abs() < 0.015, "{n:?}");
        }
    }

    #[test]
    fn the_spread_maps_each_address_as_the_ip_answers_do() {
        let cfg = weighted();
        let ips: Vec<IpAddr> = spread_ips(2_000, 9).map(IpAddr::V4).collect();
        let sp = spread(
            &cfg,
            &["p"],
            SpreadOpts {
                ips: 2_000,
                seed: 9,
            },
            None,
        )
        .unwrap()
        .remove(0);
        let mut counts: HashMap<String, u64> = HashMap::new();
        for m in map(&cfg, &["p"], &ips, None) {
            *counts.entry(m.node).or_default() += 1;
        }
        for n in &sp.nodes {
            assert_eq!(counts.get(&n.name).copied().unwrap_or(0), n.ips, "{n:?}");
        }
    }

    #[test]
    fn the_addresses_are_distinct_and_the_same_for_a_seed() {
        let a: Vec<Ipv4Addr> = spread_ips(100_000, 1).collect();
        assert_eq!(a.len(), 100_000);
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), a.len());
        assert_eq!(a, spread_ips(100_000, 1).collect::<Vec<_>>());
        let b: Vec<Ipv4Addr> = spread_ips(100_000, 2).collect();
        assert_ne!(a, b);
        // Spread over the whole space: every first octet, none far from 1/256.
        let mut first = [0u32; 256];
        for ip in &a {
            first[ip.octets()[0] as usize] += 1;
        }
        assert!(first.iter().all(|&n| (250..=540).contains(&n)), "{first:?}");
        let cfg = weighted();
        let again = |seed| spread(&cfg, &["p"], SpreadOpts { ips: 5_000, seed }, None).unwrap();
        assert_eq!(again(4), again(4));
        assert_ne!(again(4), again(5));
    }

    #[test]
    fn a_spread_out_of_bounds_is_a_clear_error() {
        let cfg = weighted();
        for n in [0, MAX_SPREAD + 1] {
            let e = spread(&cfg, &["p"], SpreadOpts { ips: n, seed: 1 }, None).unwrap_err();
            assert!(matches!(e, WhichError::SpreadRange(_)), "{e:?}");
            assert_eq!(
                e.to_string(),
                format!("--spread {n}: the number of IPs must be 1 to 10000000")
            );
        }
        assert!(spread(
            &cfg,
            &["p"],
            SpreadOpts {
                ips: MAX_SPREAD,
                seed: 1
            },
            None
        )
        .is_ok());
    }

    #[test]
    fn a_node_down_in_a_probe_is_off_the_ring_and_out_of_the_fair_share() {
        let cfg = weighted();
        let down = ProbeOutcome {
            ok: false,
            detail: "connect refused".into(),
            latency: std::time::Duration::ZERO,
        };
        let probed: Probed = [("p".to_string(), [("two".to_string(), down)].into())].into();
        let sp = spread(&cfg, &["p"], OPTS, Some(&probed)).unwrap().remove(0);
        assert_eq!(sp.nodes[1].off.as_deref(), Some("down (connect refused)"));
        assert_eq!((sp.nodes[0].fair, sp.nodes[2].fair), (0.5, 0.5));
        assert_eq!(sp.nodes[0].ips + sp.nodes[2].ips, 20_000);
        let out = render_spread(&cfg, &sp);
        assert!(
            out.contains("\n    two         2  off the ring: down (connect refused)\n"),
            "{out}"
        );
        assert!(
            out.contains(" over 2 nodes (20000 IPs), ring max/mean "),
            "{out}"
        );
    }

    #[test]
    fn the_spread_table_names_every_figure() {
        let cfg = weighted();
        let sp = spread(&cfg, &["p"], OPTS, None).unwrap();
        let out = render(&cfg, &["p"], &[], &sp, None);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("pool p (4 nodes, key /24 IPv4"),
            "{out}"
        );
        assert!(out.contains(
            "  spread of 20000 pseudo-random IPv4 addresses (--seed 1), each to its node on the ring:\n    node   weight  points     fair     ring    IPs    share  IPs/fair\n"
        ), "{out}");
        let two = &sp[0].nodes[1];
        let row = format!(
            "    two         2  {:>6}   50.00%  {:>7}  {:>5}  {:>7}  {:>8.3}\n",
            two.points,
            pct(two.ring),
            two.ips,
            pct(two.ips as f64 / 20_000.0),
            sp[0].ratio(two).unwrap()
        );
        assert!(out.contains(&row), "{row}\n{out}");
        assert!(
            out.contains("\n    off         5  off the ring: state = \"disabled\" in the config\n"),
            "{out}"
        );
        let last = lines.last().unwrap();
        assert_eq!(
            *last,
            format!(
                "  max/mean {:.3} over 3 nodes (20000 IPs), ring max/mean {:.3} (exact)",
                sp[0].max_over_mean().unwrap(),
                sp[0].ring_max_over_mean().unwrap()
            )
        );
    }

    #[test]
    fn a_pool_with_no_node_on_the_ring_says_so() {
        let cfg = Config::parse(
            "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\n\
             [[pools.p.nodes]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\nstate = \"drain\"\n",
            "w.toml",
        )
        .unwrap();
        let sp = spread(&cfg, &["p"], OPTS, None).unwrap();
        assert_eq!(sp[0].mapped, 0);
        assert_eq!(sp[0].max_over_mean(), None);
        let out = render_spread(&cfg, &sp[0]);
        assert!(
            out.contains("\n  no node is on the ring: none of the 20000 addresses has a node\n"),
            "{out}"
        );
        assert!(
            out.contains("off the ring: state = \"drain\" in the config"),
            "{out}"
        );
    }

    #[test]
    fn every_node_down_is_said_and_the_ring_of_every_node_counted_when_failing_open() {
        let text = |mode: &str| {
            format!(
                "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
                 [pools.p]\nwhen_all_down = \"{mode}\"\n\
                 [[pools.p.nodes]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n\
                 [[pools.p.nodes]]\nname = \"b\"\naddr = \"127.0.0.1:2\"\n"
            )
        };
        let down = ProbeOutcome {
            ok: false,
            detail: "timeout after 1s".into(),
            latency: std::time::Duration::ZERO,
        };
        let probed: Probed = [(
            "p".to_string(),
            [("a".to_string(), down.clone()), ("b".to_string(), down)].into(),
        )]
        .into();
        let cfg = Config::parse(&text("any"), "w.toml").unwrap();
        let sp = spread(&cfg, &["p"], OPTS, Some(&probed)).unwrap().remove(0);
        assert!(sp.failing_open);
        assert_eq!((sp.on_ring(), sp.mapped), (2, 20_000));
        let out = render_spread(&cfg, &sp);
        assert!(
            out.contains("every node is down: the ring holds all of them"),
            "{out}"
        );
        assert!(out.contains(" over 2 nodes (20000 IPs)"), "{out}");
        let cfg = Config::parse(&text("reject"), "w.toml").unwrap();
        let sp = spread(&cfg, &["p"], OPTS, Some(&probed)).unwrap().remove(0);
        assert_eq!((sp.on_ring(), sp.mapped, sp.failing_open), (0, 0, false));
        let out = render_spread(&cfg, &sp);
        assert!(
            out.contains("\n    a          1  off the ring: down (timeout after 1s)\n"),
            "{out}"
        );
        assert!(
            out.contains("none of the 20000 addresses has a node"),
            "{out}"
        );
    }
}
