//! A pool: its nodes, their live counters and state, and the current ring snapshot.
//!
//! Connections load one immutable [`PoolSnapshot`] through `arc-swap` and never take
//! a lock. Whoever changes the set of nodes that are in service (health, reload)
//! publishes a new snapshot; the ring is rebuilt only when that set changed.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{NodeConfig, PoolConfig};
use crate::metrics::NodeMetrics;
use crate::ring::{Key, Ring, RingNode};

/// One backend node and its live counters.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// In service (on the ring). Nodes start in service.
    up: AtomicBool,
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub connect_failures: AtomicU64,
    pub metrics: NodeMetrics,
}

impl Node {
    fn new(pool: &str, cfg: &NodeConfig) -> Node {
        Node {
            name: cfg.name.clone(),
            addr: cfg.addr,
            weight: cfg.weight,
            up: AtomicBool::new(true),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            metrics: NodeMetrics::new(pool, &cfg.name),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

/// Settings a connection needs, copied into each snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub connect_attempts: u32,
    pub key_prefix_v4: u8,
    pub key_prefix_v6: u8,
    pub points_per_weight: u32,
}

impl From<&PoolConfig> for PoolSettings {
    fn from(c: &PoolConfig) -> Self {
        PoolSettings {
            connect_timeout: c.connect_timeout,
            idle_timeout: c.idle_timeout,
            connect_attempts: c.connect_attempts,
            key_prefix_v4: c.key_prefix_v4,
            key_prefix_v6: c.key_prefix_v6,
            points_per_weight: c.points_per_weight,
        }
    }
}

/// An immutable view used by connections: the ring over the nodes in service.
#[derive(Debug)]
pub struct PoolSnapshot {
    pub settings: PoolSettings,
    /// Nodes on the ring; ring indexes refer to this list.
    pub members: Vec<Arc<Node>>,
    pub ring: Ring,
}

impl PoolSnapshot {
    /// The hashing key of a client address under this pool's prefixes.
    pub fn key(&self, ip: IpAddr) -> Key {
        Key::from_ip(ip, self.settings.key_prefix_v4, self.settings.key_prefix_v6)
    }

    /// Nodes to try for a client, in order: the owner, then the next distinct nodes,
    /// at most `connect_attempts`.
    pub fn select(&self, ip: IpAddr) -> impl Iterator<Item = &Arc<Node>> + '_ {
        let key = self.key(ip);
        self.ring
            .candidates(&key, self.settings.connect_attempts as usize)
            .map(move |i| &self.members[i])
    }

    /// The full order for a client: owner first, then every other member once.
    pub fn order(&self, ip: IpAddr) -> Vec<Arc<Node>> {
        self.ring
            .order(&self.key(ip))
            .into_iter()
            .map(|i| self.members[i].clone())
            .collect()
    }
}

/// A pool of nodes.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    nodes: Vec<Arc<Node>>,
    settings: PoolSettings,
    snapshot: ArcSwap<PoolSnapshot>,
    /// Serialises rebuilds so two state changes never publish out of order.
    rebuild: Mutex<()>,
}

impl Pool {
    pub fn new(cfg: &PoolConfig) -> Pool {
        let nodes: Vec<Arc<Node>> = cfg
            .nodes
            .iter()
            .map(|n| Arc::new(Node::new(&cfg.name, n)))
            .collect();
        let settings = PoolSettings::from(cfg);
        let snapshot = ArcSwap::from_pointee(build_snapshot(&settings, &nodes));
        Pool {
            name: cfg.name.clone(),
            nodes,
            settings,
            snapshot,
            rebuild: Mutex::new(()),
        }
    }

    /// The current snapshot (cheap; no lock).
    pub fn snapshot(&self) -> Arc<PoolSnapshot> {
        self.snapshot.load_full()
    }

    /// Every configured node, in service or not, in file order.
    pub fn nodes(&self) -> &[Arc<Node>] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&Arc<Node>> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Put a node in or out of service. Returns true if its state changed, in which
    /// case a new ring of the nodes in service has been published.
    pub fn set_up(&self, name: &str, up: bool) -> bool {
        let Some(node) = self.node(name) else {
            return false;
        };
        let _guard = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        if node.up.swap(up, Ordering::AcqRel) == up {
            return false;
        }
        self.snapshot
            .store(Arc::new(build_snapshot(&self.settings, &self.nodes)));
        true
    }
}

fn build_snapshot(settings: &PoolSettings, nodes: &[Arc<Node>]) -> PoolSnapshot {
    let members: Vec<Arc<Node>> = nodes.iter().filter(|n| n.is_up()).cloned().collect();
    let ring_nodes: Vec<RingNode> = members
        .iter()
        .map(|n| RingNode {
            name: &n.name,
            weight: n.weight,
        })
        .collect();
    let ring = Ring::new(&ring_nodes, settings.points_per_weight);
    for n in nodes {
        n.metrics.ring_points.set(0.0);
    }
    for (i, n) in members.iter().enumerate() {
        n.metrics.ring_points.set(f64::from(ring.points_of(i)));
    }
    PoolSnapshot {
        settings: settings.clone(),
        members,
        ring,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn pool() -> Pool {
        let cfg = Config::parse(
            r#"
[[listener]]
name = "l"
listen = "127.0.0.1:0"
pool = "p"
[pools.p]
connect_attempts = 2
[[pools.p.nodes]]
name = "a"
addr = "127.0.0.1:1001"
[[pools.p.nodes]]
name = "b"
addr = "127.0.0.1:1002"
[[pools.p.nodes]]
name = "c"
addr = "127.0.0.1:1003"
"#,
            "t.toml",
        )
        .unwrap();
        Pool::new(&cfg.pools["p"])
    }

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i * 7919))
    }

    #[test]
    fn select_is_bounded_by_connect_attempts() {
        let p = pool();
        let s = p.snapshot();
        for i in 0..200 {
            let names: Vec<&str> = s.select(ip(i)).map(|n| n.name.as_str()).collect();
            assert_eq!(names.len(), 2);
            assert_ne!(names[0], names[1]);
            assert_eq!(s.order(ip(i)).len(), 3);
        }
    }

    #[test]
    fn taking_a_node_out_moves_only_its_clients_and_back_restores() {
        let p = pool();
        let before: Vec<String> = (0..2000)
            .map(|i| p.snapshot().select(ip(i)).next().unwrap().name.clone())
            .collect();
        assert!(p.set_up("b", false));
        assert!(!p.set_up("b", false), "no change, no rebuild");
        let s = p.snapshot();
        assert_eq!(s.members.len(), 2);
        for (i, was) in before.iter().enumerate() {
            let now = &s.select(ip(i as u32)).next().unwrap().name;
            if was != "b" {
                assert_eq!(now, was);
            } else {
                assert_ne!(now, "b");
            }
        }
        assert!(p.set_up("b", true));
        let s = p.snapshot();
        for (i, was) in before.iter().enumerate() {
            assert_eq!(&s.select(ip(i as u32)).next().unwrap().name, was);
        }
        assert!(!p.set_up("nope", false));
    }
}
