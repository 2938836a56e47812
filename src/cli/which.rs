//! `ringlb which`: the node each client IP maps to, and its fallback order, computed
//! from the config exactly as the running balancer computes it (same ring code).
//! The order is split where the balancer stops: the first `connect_attempts`
//! nodes are the ones a new connection tries, the rest are listed as not tried.
//! A node's `max_connections` is named in the pool's header: whether it is full
//! depends on live connections, which are not known offline.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::config::{fmt_duration, AdminState, Config, HealthKind};
use crate::health::{self, ProbeOutcome};
use crate::pool::Pool;
use crate::ring::canonical_ip;

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
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

/// `ringlb which` as a whole: the answer for `args` (IPs; `-` reads more,
/// whitespace-separated, from `stdin`) in the pools of `pool` or `listener` (all
/// by default), probing every node once first when `probe` is set. Returns the
/// text to print.
pub fn command(
    cfg: &Config,
    pool: Option<&str>,
    listener: Option<&str>,
    probe: bool,
    args: &[String],
    mut stdin: impl std::io::Read,
) -> Result<String, WhichError> {
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
    let mut out = String::new();
    for n in notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out.push_str(&render(cfg, &mappings, probed.as_ref()));
    Ok(out)
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

/// Map every IP on every selected pool. With probe results, nodes whose probe
/// failed are taken off the ring first (one probe decides here, not rise/fall).
pub fn map(cfg: &Config, pools: &[&str], ips: &[IpAddr], probed: Option<&Probed>) -> Vec<Mapping> {
    let mut out = Vec::with_capacity(pools.len() * ips.len());
    for &name in pools {
        let pool = Pool::new(&cfg.pools[name]);
        let full = pool.snapshot();
        if let Some(results) = probed.and_then(|p| p.get(name)) {
            for (node, o) in results {
                if !o.ok {
                    pool.set_up(node, false, &o.detail);
                }
            }
        }
        let snap = pool.snapshot();
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

/// Human output: per pool a header (with node states when probed), then one line
/// per IP: `IP -> node (addr)  then: next, next` (the nodes a new connection
/// tries, `-` for none), then `  [not tried (beyond connect_attempts = N): rest]`
/// when the order goes on, then `  [node is down]` when the client's node on the
/// ring of every node is down. Fields are separated by two spaces; names by ", ".
pub fn render(cfg: &Config, mappings: &[Mapping], probed: Option<&Probed>) -> String {
    let width = mappings
        .iter()
        .map(|m| m.ip.to_string().len())
        .max()
        .unwrap_or(0);
    let mut s = String::new();
    let mut current_pool: Option<&str> = None;
    for m in mappings {
        let pool = &cfg.pools[&m.pool];
        if current_pool != Some(m.pool.as_str()) {
            let _ = writeln!(
                s,
                "pool {} ({} nodes, key /{} IPv4, /{} IPv6, connect_attempts {}):",
                m.pool,
                pool.nodes.len(),
                pool.key_prefix_v4,
                pool.key_prefix_v6,
                (pool.connect_attempts as usize).min(pool.nodes.len())
            );
            current_pool = Some(m.pool.as_str());
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
            match (h.kind, probed.and_then(|p| p.get(&m.pool))) {
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
        let addr = pool
            .nodes
            .iter()
            .find(|n| n.name == m.node)
            .map(|n| n.addr.to_string())
            .unwrap_or_default();
        if m.node.is_empty() {
            let _ = writeln!(
                s,
                "  {:<width$} -> none: every node is down (when_all_down = \"reject\")",
                m.ip.to_string()
            );
            continue;
        }
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
    s
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
        let out = render(&cfg, &map(&cfg, &["p"], &ips, None), None);
        assert!(
            out.contains("  node a: max_connections 5: once it holds 5 connections it is skipped without using an attempt, so a node listed as not tried may be tried (open connections are not known here)\n"),
            "{out}"
        );
        assert!(!out.contains("node b: max_connections"), "{out}");
    }
}
