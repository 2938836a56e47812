//! Validation of a listener's access rules: `allow` and `deny` lists (networks
//! or single addresses) and the per-client limits. Pure.

use std::net::IpAddr;

use super::problems::Problems;
use super::raw::RawListener;
use super::{limits, AccessConfig, RateLimit};

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

pub(super) fn access_list(
    p: &mut Problems,
    key: &str,
    entries: Option<&Vec<String>>,
) -> Vec<ipnet::IpNet> {
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

pub(super) fn access_config(p: &mut Problems, key: &str, l: &RawListener) -> AccessConfig {
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
