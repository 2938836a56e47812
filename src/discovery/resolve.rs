//! One resolution of a `[discover]` table with `hickory-resolver`: the
//! records asked for, turned into node configs (address text or
//! `target:port` as the name, SRV weights scaled), and the shortest TTL seen.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{ResolveError, TokioResolver};

use crate::config::{srv_weights, AdminState, DiscoverConfig, DiscoverType, NodeConfig};

/// Longest one resolution may take, all lookups included.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The nodes of one good answer (sorted by name) and its shortest TTL.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub nodes: Vec<NodeConfig>,
    pub ttl: Option<Duration>,
}

fn resolver(cfg: &DiscoverConfig) -> Result<TokioResolver, String> {
    let provider = TokioConnectionProvider::default();
    let mut b = match cfg.resolver {
        Some(addr) => {
            let group = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
            let mut b = TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), group),
                provider,
            );
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        }
        None => TokioResolver::builder(provider)
            .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?,
    };
    let opts: &mut ResolverOpts = b.options_mut();
    // Every resolution asks the server: TTLs are followed by the loop.
    opts.cache_size = 0;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    Ok(b.build())
}

fn why(e: &ResolveError) -> String {
    if e.is_nx_domain() {
        "NXDOMAIN".to_string()
    } else if e.is_no_records_found() {
        "no records".to_string()
    } else {
        e.to_string()
    }
}

/// A usable backend address, IPv4-mapped folded to IPv4.
fn usable(ip: IpAddr) -> Option<IpAddr> {
    let ip = crate::ring::canonical_ip(ip);
    let bad = ip.is_unspecified()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    (!bad).then_some(ip)
}

fn node(name: String, addr: SocketAddr, weight: u32) -> NodeConfig {
    NodeConfig {
        addr_text: name.clone(),
        name,
        addr,
        weight,
        state: AdminState::Enabled,
        max_connections: None,
    }
}

/// Addresses of `name` for one record type; `Ok(empty)` when it has none of
/// that type (so `a+aaaa` may have only one family).
async fn addresses(
    r: &TokioResolver,
    name: &str,
    rt: RecordType,
    ttl: &mut Option<Duration>,
) -> Result<Vec<IpAddr>, String> {
    match r.lookup(name, rt).await {
        Ok(l) => {
            let left = l
                .valid_until()
                .saturating_duration_since(std::time::Instant::now());
            *ttl = Some(ttl.map_or(left, |t| t.min(left)));
            Ok(l.record_iter()
                .filter_map(|rec| match rec.data() {
                    RData::A(a) => usable(IpAddr::V4(a.0)),
                    RData::AAAA(a) => usable(IpAddr::V6(a.0)),
                    _ => None,
                })
                .collect())
        }
        Err(e) if e.is_no_records_found() && !e.is_nx_domain() => Ok(Vec::new()),
        Err(e) => Err(why(&e)),
    }
}

async fn lookup(cfg: &DiscoverConfig) -> Result<Answer, String> {
    let r = resolver(cfg)?;
    let mut ttl = None;
    let mut nodes = Vec::new();
    match cfg.kind {
        DiscoverType::Srv => {
            let l = r
                .lookup(cfg.name.as_str(), RecordType::SRV)
                .await
                .map_err(|e| why(&e))?;
            let left = l
                .valid_until()
                .saturating_duration_since(std::time::Instant::now());
            ttl = Some(left);
            let srvs: Vec<_> = l
                .record_iter()
                .filter_map(|rec| match rec.data() {
                    RData::SRV(s) if !s.target().is_root() && s.port() != 0 => Some(s.clone()),
                    _ => None,
                })
                .collect();
            let Some(lowest) = srvs.iter().map(|s| s.priority()).min() else {
                return Err("no SRV records with a target".to_string());
            };
            let chosen: Vec<_> = srvs
                .into_iter()
                .filter(|s| s.priority() == lowest)
                .collect();
            let weights = srv_weights(&chosen.iter().map(|s| s.weight()).collect::<Vec<_>>());
            for (s, w) in chosen.iter().zip(weights) {
                let target = s.target().to_ascii().to_ascii_lowercase();
                let target = target.trim_end_matches('.').to_string();
                let mut ips = addresses(&r, &target, RecordType::A, &mut ttl).await?;
                ips.extend(addresses(&r, &target, RecordType::AAAA, &mut ttl).await?);
                // One node per target:port: the lowest address (IPv4 first),
                // so every instance picks the same one.
                let Some(ip) = ips.into_iter().min() else {
                    continue;
                };
                let name = format!("{target}:{}", s.port());
                if !nodes.iter().any(|n: &NodeConfig| n.name == name) {
                    nodes.push(node(name, SocketAddr::new(ip, s.port()), w));
                }
            }
        }
        kind => {
            let port = cfg.port.unwrap_or_default();
            let mut ips = Vec::new();
            if matches!(kind, DiscoverType::A | DiscoverType::AAndAaaa) {
                ips.extend(addresses(&r, &cfg.name, RecordType::A, &mut ttl).await?);
            }
            if matches!(kind, DiscoverType::Aaaa | DiscoverType::AAndAaaa) {
                ips.extend(addresses(&r, &cfg.name, RecordType::AAAA, &mut ttl).await?);
            }
            ips.sort();
            ips.dedup();
            for ip in ips {
                let addr = SocketAddr::new(ip, port);
                nodes.push(node(addr.to_string(), addr, 1));
            }
        }
    }
    if nodes.is_empty() {
        return Err("empty answer: no usable address".to_string());
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Answer { nodes, ttl })
}

/// Resolve once, within [`RESOLVE_TIMEOUT`]. `Err` says why there is no
/// usable answer (the caller keeps its last good set).
pub async fn resolve(cfg: &DiscoverConfig) -> Result<Answer, String> {
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup(cfg)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "timed out after {}",
            crate::config::fmt_duration(RESOLVE_TIMEOUT)
        )),
    }
}

/// [`resolve`] for the offline commands (`check --probe`, `which`), on a
/// runtime of its own.
pub fn resolve_blocking(cfg: &DiscoverConfig) -> Result<Answer, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime to resolve: {e}"))?;
    rt.block_on(resolve(cfg))
}
