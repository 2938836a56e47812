//! `ringlb which`: the node each client IP maps to, and its fallback order, computed
//! from the config exactly as the running balancer computes it (same ring code).

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::config::Config;
use crate::pool::Pool;
use crate::ring::canonical_ip;

/// Why `which` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum WhichError {
    #[error("{0:?} is not an IP address")]
    BadIp(String),
    #[error("no pool named {0:?} in the config")]
    NoPool(String),
    #[error("no listener named {0:?} in the config")]
    NoListener(String),
}

/// One answer: pool, client, node and the rest of the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub pool: String,
    pub ip: IpAddr,
    pub node: String,
    pub fallback: Vec<String>,
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

/// Map every IP on every selected pool.
pub fn map(cfg: &Config, pools: &[&str], ips: &[IpAddr]) -> Vec<Mapping> {
    let mut out = Vec::with_capacity(pools.len() * ips.len());
    for &name in pools {
        let pool = Pool::new(&cfg.pools[name]);
        let snap = pool.snapshot();
        for &ip in ips {
            let order = snap.order(ip);
            let mut names = order.iter().map(|n| n.name.clone());
            let node = names.next().unwrap_or_default();
            out.push(Mapping {
                pool: name.to_string(),
                ip: canonical_ip(ip),
                node,
                fallback: names.collect(),
            });
        }
    }
    out
}

/// Human output: one line per IP, `IP -> node (addr)  then: next, next...`.
pub fn render(cfg: &Config, mappings: &[Mapping]) -> String {
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
                pool.connect_attempts
            );
            current_pool = Some(m.pool.as_str());
        }
        let addr = pool
            .nodes
            .iter()
            .find(|n| n.name == m.node)
            .map(|n| n.addr.to_string())
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {:<width$} -> {} ({})  then: {}",
            m.ip.to_string(),
            m.node,
            addr,
            if m.fallback.is_empty() {
                "-".to_string()
            } else {
                m.fallback.join(", ")
            }
        );
    }
    s
}
