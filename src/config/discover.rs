//! `[pools.NAME.discover]`: a pool's nodes from DNS (A, AAAA or SRV records)
//! instead of a `nodes` list. Validation only (kept out of `validate.rs`, which
//! has a size limit): exactly one of `nodes` and `discover`, `name` a DNS name,
//! `type` one of four, `port` required for A/AAAA and refused for SRV,
//! `interval` and `remove_after` within limits, `resolver` an `IP:port`. Pure:
//! no I/O; the lookups are the `discovery` module's.

use std::net::SocketAddr;
use std::time::Duration;

use super::problems::Problems;
use super::raw::RawDiscover;
use super::{fmt_duration, limits};

/// `interval` when left out.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Which records make the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoverType {
    A,
    Aaaa,
    /// Both families: every A and every AAAA address is a node.
    AAndAaaa,
    /// `target:port` of each SRV record of the lowest priority present.
    Srv,
}

impl DiscoverType {
    pub fn as_str(self) -> &'static str {
        match self {
            DiscoverType::A => "a",
            DiscoverType::Aaaa => "aaaa",
            DiscoverType::AAndAaaa => "a+aaaa",
            DiscoverType::Srv => "srv",
        }
    }

    fn parse(s: &str) -> Option<DiscoverType> {
        match s {
            "a" => Some(DiscoverType::A),
            "aaaa" => Some(DiscoverType::Aaaa),
            "a+aaaa" => Some(DiscoverType::AAndAaaa),
            "srv" => Some(DiscoverType::Srv),
            _ => None,
        }
    }
}

/// A validated `[pools.NAME.discover]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverConfig {
    /// The DNS name, as written.
    pub name: String,
    pub kind: DiscoverType,
    /// The nodes' port (A/AAAA); `None` for SRV, whose records carry it.
    pub port: Option<u16>,
    /// Longest time between two resolutions (a shorter TTL comes first).
    pub interval: Duration,
    /// The DNS server to ask; `None`: the system's (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
    /// A node missing from the answers leaves only after this long.
    pub remove_after: Duration,
}

impl DiscoverConfig {
    /// For `check`, the reload summary and logs.
    pub fn describe(&self) -> String {
        format!(
            "{} {}{} every {} (or its TTL if shorter), resolver {}, remove_after {}",
            self.kind.as_str(),
            self.name,
            self.port.map(|p| format!(" port {p}")).unwrap_or_default(),
            fmt_duration(self.interval),
            self.resolver
                .map_or_else(|| "/etc/resolv.conf".to_string(), |r| r.to_string()),
            fmt_duration(self.remove_after),
        )
    }
}

/// A plausible DNS name: labels of letters, digits, `-` and `_` (SRV names
/// such as `_http._tcp.web`), 1 to 63 bytes each, 253 at most, an optional
/// final dot.
fn dns_name(name: &str) -> bool {
    let n = name.strip_suffix('.').unwrap_or(name);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// `[pools.NAME.discover]` of the pool at `pool_key`, with `has_nodes` saying
/// whether the pool also lists `nodes` (refused: exactly one of them). `None`
/// when absent or when a required key is missing (its problem is reported).
pub(super) fn discover(
    p: &mut Problems,
    pool_key: &str,
    raw: Option<&RawDiscover>,
    has_nodes: bool,
) -> Option<DiscoverConfig> {
    let d = raw?;
    let key = format!("{pool_key}.discover");
    if has_nodes {
        p.push(
            key.clone(),
            "a pool takes its nodes from either `nodes` or `discover`, not both",
        );
    }
    let name = match &d.name {
        None => {
            p.push(format!("{key}.name"), "required: the DNS name to resolve");
            None
        }
        Some(n) if !dns_name(n) => {
            p.push(
                format!("{key}.name"),
                format!("{n:?} is not a DNS name (labels of letters, digits, '-' and '_')"),
            );
            None
        }
        Some(n) => Some(n.clone()),
    };
    let kind = match d.kind.as_deref() {
        None => {
            p.push(
                format!("{key}.type"),
                "required: \"a\", \"aaaa\", \"a+aaaa\" or \"srv\"",
            );
            None
        }
        Some(t) => {
            let k = DiscoverType::parse(t);
            if k.is_none() {
                p.push(
                    format!("{key}.type"),
                    format!("{t:?} is not one of \"a\", \"aaaa\", \"a+aaaa\", \"srv\""),
                );
            }
            k
        }
    };
    let port = match (kind, d.port) {
        (Some(DiscoverType::Srv), Some(_)) => {
            p.push(
                format!("{key}.port"),
                "SRV records carry their own port: leave port out",
            );
            None
        }
        (Some(DiscoverType::Srv), None) | (None, _) => None,
        (Some(_), None) => {
            p.push(
                format!("{key}.port"),
                "required for A/AAAA records: the nodes' TCP port",
            );
            None
        }
        (Some(_), Some(0)) => {
            p.push(format!("{key}.port"), "0 is not a valid backend port");
            None
        }
        (Some(_), Some(port)) => Some(port),
    };
    let interval = p.duration(
        format!("{key}.interval"),
        d.interval,
        DEFAULT_INTERVAL,
        limits::DISCOVER_INTERVAL,
    );
    let remove_after = p.duration(
        format!("{key}.remove_after"),
        d.remove_after,
        interval * 2,
        limits::DISCOVER_REMOVE_AFTER,
    );
    let resolver = match &d.resolver {
        None => None,
        Some(r) => match r.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => Some(a),
            _ => {
                p.push(
                    format!("{key}.resolver"),
                    format!("{r:?} is not IP:port (IPv6 as [addr]:port, port not 0)"),
                );
                None
            }
        },
    };
    let (name, kind) = (name?, kind?);
    if kind != DiscoverType::Srv && port.is_none() {
        return None;
    }
    if d.resolver.is_some() && resolver.is_none() {
        return None;
    }
    Some(DiscoverConfig {
        name,
        kind,
        port,
        interval,
        resolver,
        remove_after,
    })
}

/// SRV weights as node weights. They are relative, so they are divided by their
/// greatest common divisor (equal weights become 1 each, `10, 20, 40` become
/// `1, 2, 4`), and only if the largest is still over 256 scaled so it becomes 256
/// (`w * 256 / max`, rounded). A weight of 0 among others (RFC 2782: "a very
/// small chance") becomes 1 with the others scaled so the largest is 256;
/// all-zero weights ("no weighting") are all 1. Small weights keep the ring
/// small: a node gets `weight x points_per_weight` points.
pub fn srv_weights(weights: &[u16]) -> Vec<u32> {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let g = weights
        .iter()
        .filter(|&&w| w > 0)
        .fold(0u64, |g, &w| gcd(g, u64::from(w)))
        .max(1);
    // A weight of 0 among others keeps its "very small chance": the others are
    // then scaled so the largest becomes 256, and the 0 becomes 1.
    let zero_among_others = weights.contains(&0) && weights.iter().any(|&w| w > 0);
    let g = if zero_among_others { 1 } else { g };
    let max = weights
        .iter()
        .copied()
        .max()
        .map_or(0, |m| u64::from(m) / g);
    let top = u64::from(*limits::WEIGHT.end());
    weights
        .iter()
        .map(|&w| {
            let w = u64::from(w) / g;
            let scaled = if max > top || zero_among_others {
                (w * top + max / 2) / max
            } else {
                w
            };
            (scaled as u32).clamp(*limits::WEIGHT.start(), top as u32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::srv_weights;
    use crate::config::Config;

    const BASE: &str =
        "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\n";

    fn parse(discover: &str) -> Result<Config, Vec<String>> {
        Config::parse(&format!("{BASE}{discover}"), "d.toml").map_err(|e| e.messages())
    }

    #[test]
    fn a_discover_table_stands_in_for_nodes_with_defaults() {
        let c =
            parse("[pools.p.discover]\nname = \"web.test\"\ntype = \"a\"\nport = 80\n").unwrap();
        let d = c.pools["p"].discover.clone().unwrap();
        assert_eq!(d.interval, std::time::Duration::from_secs(5));
        assert_eq!(d.remove_after, std::time::Duration::from_secs(10));
        assert_eq!(d.resolver, None);
        assert!(c.pools["p"].nodes.is_empty());
        let c = parse(
            "[pools.p.discover]\nname = \"_x._tcp.web.test.\"\ntype = \"srv\"\n\
             interval = \"1s\"\nremove_after = \"0s\"\nresolver = \"127.0.0.1:5353\"\n",
        )
        .unwrap();
        let d = c.pools["p"].discover.clone().unwrap();
        assert_eq!(d.port, None);
        assert_eq!(d.remove_after, std::time::Duration::ZERO);
        assert_eq!(d.resolver, Some("127.0.0.1:5353".parse().unwrap()));
        assert!(
            d.describe().contains("srv _x._tcp.web.test."),
            "{}",
            d.describe()
        );
    }

    #[test]
    fn every_mistake_is_named_with_its_line() {
        let bad = [
            ("[pools.p.discover]\ntype = \"a\"\nport = 1\n", "discover.name: required"),
            ("[pools.p.discover]\nname = \"a b\"\ntype = \"a\"\nport = 1\n", "is not a DNS name"),
            ("[pools.p.discover]\nname = \"x\"\ntype = \"mx\"\nport = 1\n", "is not one of"),
            ("[pools.p.discover]\nname = \"x\"\ntype = \"a\"\n", "required for A/AAAA"),
            ("[pools.p.discover]\nname = \"x\"\ntype = \"srv\"\nport = 80\n", "carry their own port"),
            ("[pools.p.discover]\nname = \"x\"\ntype = \"a\"\nport = 1\ninterval = \"0s\"\n", "greater than zero"),
            ("[pools.p.discover]\nname = \"x\"\ntype = \"a\"\nport = 1\nresolver = \"dns:53\"\n", "is not IP:port"),
            ("[pools.p.discover]\nname = \"x\"\ntype = \"a\"\nport = 1\nttl = 3\n", "ttl"),
            (
                "[[pools.p.nodes]]\naddr = \"127.0.0.1:1\"\n[pools.p.discover]\nname = \"x\"\ntype = \"a\"\nport = 1\n",
                "not both",
            ),
            ("", "at least one node"),
        ];
        for (text, want) in bad {
            let e = parse(text).unwrap_err();
            assert!(e.iter().any(|m| m.contains(want)), "{text}: {e:?}");
            assert!(e.iter().all(|m| m.contains("d.toml")), "{e:?}");
        }
        // A key of the wrong type gets its line and column, as everywhere.
        let e =
            parse("[pools.p.discover]\nname = \"x\"\ntype = \"a\"\nport = \"80\"\n").unwrap_err();
        assert!(
            e.iter().any(|m| m.contains("d.toml:9")),
            "the line of port: {e:?}"
        );
    }

    #[test]
    fn srv_weights_are_relative_and_capped() {
        assert_eq!(srv_weights(&[10, 20, 40]), vec![1, 2, 4]);
        assert_eq!(srv_weights(&[0, 0]), vec![1, 1]);
        assert_eq!(srv_weights(&[0, 65535]), vec![1, 256]);
        assert_eq!(srv_weights(&[5, 5]), vec![1, 1]);
        assert_eq!(srv_weights(&[33, 33, 34]), vec![33, 33, 34]);
        assert_eq!(srv_weights(&[1, 1000]), vec![1, 256]);
        assert_eq!(srv_weights(&[0, 6, 9]), vec![1, 171, 256]);
        assert_eq!(srv_weights(&[6, 9]), vec![2, 3]);
        assert_eq!(srv_weights(&[]), Vec::<u32>::new());
    }
}
