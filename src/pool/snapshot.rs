//! The hot path: the immutable [`PoolSnapshot`] every connection loads once (the
//! ring over the nodes in service) and the lazy [`Selection`] of nodes a new
//! connection tries, plus [`build_snapshot`], which makes a new one when the set
//! of nodes in service changes.
//!
//! Must not, per connection: take a lock or allocate ([`PoolSnapshot::candidates`]
//! and [`PoolSnapshot::select`] borrow from the snapshot; only
//! [`PoolSnapshot::order`], for status and tools, collects). No I/O.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Node, PoolSettings};
use crate::config::{AdminState, WhenAllDown};
use crate::ring::{Key, Ring, RingNode};

/// An immutable view used by connections: the ring over the nodes in service.
#[derive(Debug)]
pub struct PoolSnapshot {
    pub settings: Arc<PoolSettings>,
    /// Every configured node, in service or not, in file order.
    pub nodes: Vec<Arc<Node>>,
    /// Nodes on the ring; ring indexes refer to this list. Empty when every node
    /// is down and `when_all_down = "reject"`.
    pub members: Vec<Arc<Node>>,
    pub ring: Ring,
    /// Every node is down and the ring holds all of them (`when_all_down = "any"`).
    pub failing_open: bool,
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

    /// Nodes to try for a client's new connection. Without `balance_factor` this
    /// is [`select`](Self::select). With it, nodes whose open connections have
    /// reached their bound, ceil(factor x (open connections of the members + 1)
    /// / members), are skipped: the client goes to the next node along the ring
    /// (consistent hashing with bounded loads). A node below its bound keeps its
    /// clients.
    pub fn candidates(&self, ip: IpAddr) -> Selection<'_> {
        let key = self.key(ip);
        let attempts = self.settings.connect_attempts as usize;
        match self.settings.balance_factor_permille {
            None => Selection {
                snap: self,
                inner: self.ring.candidates(&key, attempts),
                bound: None,
                left: attempts,
                yielded: false,
                key,
            },
            Some(permille) => Selection {
                snap: self,
                // Walk the whole ring order; `left` stops after `attempts`.
                inner: self.ring.candidates(&key, usize::MAX),
                bound: Some(self.load_bound(permille)),
                left: attempts,
                yielded: false,
                key,
            },
        }
    }

    /// Open connections a member may have before it is skipped for new clients.
    pub fn load_bound(&self, permille: u32) -> u64 {
        let n = self.members.len().max(1) as u64;
        let total: u64 = self
            .members
            .iter()
            .map(|m| m.active.load(Ordering::Relaxed))
            .sum();
        // ceil(permille * (total + 1) / (1000 * n)), at least 1.
        ((u64::from(permille) * (total + 1)).div_ceil(1000 * n)).max(1)
    }

    /// The full order for a client: owner first, then every other member once.
    pub fn order(&self, ip: IpAddr) -> Vec<Arc<Node>> {
        self.ring
            .order(&self.key(ip))
            .into_iter()
            .map(|i| self.members[i].clone())
            .collect()
    }

    /// Share of the hash space (0..=1) the named node owns in this snapshot.
    pub fn share_of(&self, name: &str) -> f64 {
        self.members
            .iter()
            .position(|n| n.name == name)
            .map_or(0.0, |i| self.ring.share_of(i))
    }
}

/// The nodes a new connection tries, in order (see [`PoolSnapshot::candidates`]).
/// Lazy: nothing is collected per connection.
#[derive(Debug)]
pub struct Selection<'a> {
    snap: &'a PoolSnapshot,
    inner: crate::ring::Candidates<'a>,
    /// Skip members with this many open connections or more.
    bound: Option<u64>,
    left: usize,
    yielded: bool,
    key: Key,
}

impl<'a> Iterator for Selection<'a> {
    type Item = &'a Arc<Node>;

    fn next(&mut self) -> Option<&'a Arc<Node>> {
        if self.left == 0 {
            return None;
        }
        loop {
            let Some(i) = self.inner.next() else {
                if self.bound.is_some() && !self.yielded {
                    // Every member at its bound (only when connections race):
                    // the plain order.
                    self.bound = None;
                    self.inner = self.snap.ring.candidates(&self.key, self.left);
                    continue;
                }
                return None;
            };
            let node = &self.snap.members[i];
            if self
                .bound
                .is_some_and(|b| node.active.load(Ordering::Relaxed) >= b)
            {
                continue;
            }
            self.left -= 1;
            self.yielded = true;
            return Some(node);
        }
    }
}

/// A new snapshot of `nodes`: the ring over those in service (or, when none is
/// and `when_all_down = "any"`, over every enabled node), with each node's
/// `ring_points` metric set. Called on state changes, never per connection.
pub(super) fn build_snapshot(settings: Arc<PoolSettings>, nodes: Vec<Arc<Node>>) -> PoolSnapshot {
    let mut members: Vec<Arc<Node>> = nodes.iter().filter(|n| n.in_service()).cloned().collect();
    let mut failing_open = false;
    if members.is_empty() && settings.when_all_down == WhenAllDown::Any {
        // Fail open over the nodes the operator left enabled (health ignored).
        members = nodes
            .iter()
            .filter(|n| n.admin_state() == AdminState::Enabled)
            .cloned()
            .collect();
        failing_open = !members.is_empty();
    }
    let ring_nodes: Vec<RingNode> = members
        .iter()
        .map(|n| RingNode {
            name: &n.name,
            weight: n.weight(),
        })
        .collect();
    let ring = Ring::new(&ring_nodes, settings.points_per_weight);
    for n in &nodes {
        n.metrics.ring_points.set(0.0);
    }
    for (i, n) in members.iter().enumerate() {
        n.metrics.ring_points.set(f64::from(ring.points_of(i)));
    }
    PoolSnapshot {
        settings,
        nodes,
        members,
        ring,
        failing_open,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::super::tests::{ip, pool, pool_with};

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
    fn bounded_candidates_skip_nodes_at_their_bound_and_fall_back_when_all_are() {
        let plain = pool();
        let p = pool_with("balance_factor = 1.0");
        for i in 0..100 {
            let s = plain.snapshot();
            let a: Vec<&str> = s.candidates(ip(i)).map(|n| n.name.as_str()).collect();
            let b: Vec<&str> = s.select(ip(i)).map(|n| n.name.as_str()).collect();
            assert_eq!(a, b, "without balance_factor: the plain order");
        }
        let s = p.snapshot();
        let order: Vec<String> = s.order(ip(7)).iter().map(|n| n.name.clone()).collect();
        // The client's own node holds 2, the others 0: bound ceil(1.0 x 3 / 3) = 1.
        p.node(&order[0])
            .unwrap()
            .active
            .store(2, Ordering::Relaxed);
        let got: Vec<&str> = s.candidates(ip(7)).map(|n| n.name.as_str()).collect();
        assert_eq!(got, vec![order[1].as_str(), order[2].as_str()]);
        // Every member at or past the bound (a race): the plain order, bounded by
        // connect_attempts.
        for n in &s.members {
            n.active.store(5, Ordering::Relaxed);
        }
        let got: Vec<&str> = s.candidates(ip(7)).map(|n| n.name.as_str()).collect();
        assert_eq!(got, vec![order[0].as_str(), order[1].as_str()]);
    }

    #[test]
    fn all_down_rejects_or_fails_open() {
        let p = pool();
        for n in ["a", "b", "c"] {
            p.set_up(n, false, "test");
        }
        let s = p.snapshot();
        assert!(s.members.is_empty() && !s.failing_open);
        assert_eq!(s.select(ip(1)).count(), 0);

        let p = pool_with("when_all_down = \"any\"");
        let full: Vec<String> = (0..100)
            .map(|i| p.snapshot().select(ip(i)).next().unwrap().name.clone())
            .collect();
        for n in ["a", "b", "c"] {
            p.set_up(n, false, "test");
        }
        let s = p.snapshot();
        assert!(s.failing_open);
        for (i, was) in full.iter().enumerate() {
            assert_eq!(&s.select(ip(i as u32)).next().unwrap().name, was);
        }
    }
}
