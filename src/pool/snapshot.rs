//! The hot path: the immutable [`PoolSnapshot`] every connection loads once (the
//! ring over the nodes in service) and the lazy [`Selection`] of nodes a new
//! connection tries, plus [`build_snapshot`], which makes a new one when the set
//! of nodes in service changes.
//!
//! Must not, per connection: take a lock or allocate ([`PoolSnapshot::candidates`]
//! and [`PoolSnapshot::select`] borrow from the snapshot; only
//! [`PoolSnapshot::order`], for status and tools, collects). A node's place is
//! one atomic (a `fetch_add`, or a compare-and-swap when the node has a cap). No
//! I/O.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Node, PoolSettings, Slot};
use crate::config::{limits, AdminState, WhenAllDown};
use crate::ring::{Key, Ring, RingPoints};

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
    /// Distinct for every snapshot built in this process (never 0): what a
    /// connection's cached "misplaced" was computed for.
    pub generation: u64,
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

    /// Places on the nodes a client's new connection tries, in order: the
    /// client's node, then the next distinct nodes along the ring, at most
    /// `connect_attempts` of them. Each item is a [`Slot`] already taken on its
    /// node (drop it when the connect fails). Two kinds of node are skipped
    /// without using an attempt, and the walk goes on along the ring order:
    ///
    /// * a node at its `max_connections` (strict: the place is taken with a
    ///   compare-and-swap, so racing connections never exceed the cap);
    /// * with `balance_factor`, a node whose open connections have reached the
    ///   bound, ceil(factor x (open connections of the members + 1) / members)
    ///   (consistent hashing with bounded loads). The bound is soft: when every
    ///   node with room is at it (connections racing), the plain order is used,
    ///   full nodes still skipped.
    ///
    /// Without either, this is [`select`](Self::select) with a place taken on
    /// each node given out. When it gives out nothing,
    /// [`Selection::saw_full`] says whether nodes at their cap were the reason.
    pub fn candidates(&self, ip: IpAddr) -> Selection<'_> {
        let key = self.key(ip);
        Selection {
            snap: self,
            // The whole ring order: `left` stops after `connect_attempts`
            // places given out, so without skips this walks as far as
            // `select` does.
            inner: self.ring.candidates(&key, usize::MAX),
            bound: self
                .settings
                .balance_factor_permille
                .map(|permille| self.load_bound(permille)),
            left: self.settings.connect_attempts as usize,
            yielded: false,
            saw_full: false,
            key,
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

    /// The client's home: the node its key maps to on this ring. `None` when
    /// the ring is empty or failing open (no node is anyone's home then).
    pub fn home(&self, ip: IpAddr) -> Option<&Arc<Node>> {
        if self.failing_open {
            return None;
        }
        self.ring.primary(&self.key(ip)).map(|i| &self.members[i])
    }

    /// `node` is the client's home, or the client has none now (so a
    /// connection of it is not misplaced).
    pub fn is_home(&self, node: &Arc<Node>, ip: IpAddr) -> bool {
        self.home(ip).map_or(true, |h| Arc::ptr_eq(h, node))
    }

    /// Share of the hash space (0..=1) the named node owns in this snapshot.
    pub fn share_of(&self, name: &str) -> f64 {
        self.members
            .iter()
            .position(|n| n.name == name)
            .map_or(0.0, |i| self.ring.share_of(i))
    }
}

/// Places on the nodes a new connection tries, in order (see
/// [`PoolSnapshot::candidates`]). Lazy: nothing is collected per connection.
#[derive(Debug)]
pub struct Selection<'a> {
    snap: &'a PoolSnapshot,
    inner: crate::ring::Candidates<'a>,
    /// Skip members with this many open connections or more.
    bound: Option<u64>,
    left: usize,
    yielded: bool,
    saw_full: bool,
    key: Key,
}

impl Selection<'_> {
    /// A node was skipped because it was at its `max_connections`.
    pub fn saw_full(&self) -> bool {
        self.saw_full
    }
}

impl Iterator for Selection<'_> {
    type Item = Slot;

    fn next(&mut self) -> Option<Slot> {
        if self.left == 0 {
            return None;
        }
        loop {
            let Some(i) = self.inner.next() else {
                if self.bound.is_some() && !self.yielded {
                    // Every member with room is at its bound (only when
                    // connections race): the plain order, caps still hold.
                    self.bound = None;
                    self.inner = self.snap.ring.candidates(&self.key, usize::MAX);
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
            let Some(slot) = node.reserve() else {
                self.saw_full = true;
                continue;
            };
            self.left -= 1;
            self.yielded = true;
            return Some(slot);
        }
    }
}

/// A new snapshot of `nodes`: the ring over those in service (or, when none is
/// and `when_all_down = "any"`, over every enabled node at its configured
/// weight), with each node's `ring_points` metric set. A node's points are its
/// weight's, scaled by its agent's weight ([`Node::ring_points`]); should the
/// agents' raises take the pool past its limit of ring points, the raises do not
/// apply (the configured weights fit, validation saw to that; discovered nodes'
/// weights are scaled down to fit). Called on state
/// changes, never per connection. With the snapshot it replaces, the ring is
/// rebuilt from that one's ([`Ring::rebuild`]: the same ring, made faster).
pub(super) fn build_snapshot(
    settings: Arc<PoolSettings>,
    nodes: Vec<Arc<Node>>,
    prev: Option<&PoolSnapshot>,
) -> PoolSnapshot {
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
    let ppw = settings.points_per_weight;
    let configured = |n: &Node| n.weight().saturating_mul(ppw);
    let mut points: Vec<u32> = members
        .iter()
        .map(|n| {
            if failing_open {
                configured(n)
            } else {
                n.ring_points(ppw)
            }
        })
        .collect();
    if points.iter().map(|&p| u64::from(p)).sum::<u64>() > limits::MAX_POOL_POINTS {
        for (p, n) in points.iter_mut().zip(&members) {
            *p = (*p).min(configured(n));
        }
    }
    // Discovered nodes' weights were not validated: past the limit even at their
    // own weights, every node's points shrink in proportion (this moves clients,
    // but keeps the ring's memory bounded).
    let total: u64 = points.iter().map(|&p| u64::from(p)).sum();
    if total > limits::MAX_POOL_POINTS {
        for p in points.iter_mut() {
            *p = ((u64::from(*p) * limits::MAX_POOL_POINTS / total) as u32).max(1);
        }
    }
    let ring_nodes: Vec<RingPoints> = members
        .iter()
        .zip(&points)
        .map(|(n, &points)| RingPoints {
            name: &n.name,
            points,
        })
        .collect();
    let ring = match prev {
        Some(prev) => {
            let names: Vec<&str> = prev.members.iter().map(|m| m.name.as_str()).collect();
            Ring::rebuild(&prev.ring, &names, &ring_nodes)
        }
        None => Ring::with_points(&ring_nodes),
    };
    for n in &nodes {
        n.metrics.ring_points.set(0.0);
    }
    for (i, n) in members.iter().enumerate() {
        n.metrics.ring_points.set(f64::from(ring.points_of(i)));
    }
    let now = std::time::Instant::now();
    for n in &nodes {
        let points = members
            .iter()
            .position(|m| Arc::ptr_eq(m, n))
            .filter(|_| !failing_open)
            .map(|i| ring.points_of(i));
        n.mark_service(points, now);
    }
    PoolSnapshot {
        settings,
        nodes,
        members,
        ring,
        failing_open,
        generation: GENERATION.fetch_add(1, Ordering::Relaxed),
    }
}

/// The next snapshot's `generation`.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::super::tests::{cfg_with, ip, node_toml, pool, pool_with};
    use super::super::{Pool, Slot};

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
            let a: Vec<String> = s.candidates(ip(i)).map(|n| n.name.clone()).collect();
            let b: Vec<String> = s.select(ip(i)).map(|n| n.name.clone()).collect();
            assert_eq!(a, b, "without balance_factor: the plain order");
        }
        let s = p.snapshot();
        let order: Vec<String> = s.order(ip(7)).iter().map(|n| n.name.clone()).collect();
        // The client's own node holds 2, the others 0: bound ceil(1.0 x 3 / 3) = 1.
        p.node(&order[0])
            .unwrap()
            .active
            .store(2, Ordering::Relaxed);
        let got: Vec<String> = s.candidates(ip(7)).map(|n| n.name.clone()).collect();
        assert_eq!(got, vec![order[1].as_str(), order[2].as_str()]);
        // Every member at or past the bound (a race): the plain order, bounded by
        // connect_attempts.
        for n in &s.members {
            n.active.store(5, Ordering::Relaxed);
        }
        let got: Vec<String> = s.candidates(ip(7)).map(|n| n.name.clone()).collect();
        assert_eq!(got, vec![order[0].as_str(), order[1].as_str()]);
        for n in &s.members {
            assert_eq!(n.active.load(Ordering::Relaxed), 5, "places given back");
        }
    }

    /// Nodes a, b, c (connect_attempts 2) with these caps.
    fn capped(caps: [Option<u32>; 3], extra: &str) -> Pool {
        let nodes: String = ["a", "b", "c"]
            .iter()
            .zip(caps)
            .enumerate()
            .map(|(i, (n, cap))| {
                let mut t = node_toml(n, 1001 + i as u16, 1);
                if let Some(c) = cap {
                    t += &format!("max_connections = {c}\n");
                }
                t
            })
            .collect();
        Pool::new(&cfg_with(&nodes, &format!("connect_attempts = 2\n{extra}")))
    }

    fn names(slots: &[Slot]) -> Vec<String> {
        slots.iter().map(|s| s.name.clone()).collect()
    }

    #[test]
    fn full_nodes_are_skipped_along_the_ring_order_without_using_an_attempt() {
        let p = capped([Some(1), Some(1), Some(1)], "");
        let s = p.snapshot();
        for i in 0..50 {
            let order: Vec<String> = s.order(ip(i)).iter().map(|n| n.name.clone()).collect();
            // Nobody full: the plain order, two attempts.
            let all: Vec<Slot> = s.candidates(ip(i)).collect();
            assert_eq!(names(&all), order[..2]);
            drop(all);
            let first = s.candidates(ip(i)).next().unwrap();
            assert_eq!(first.name, order[0]);
            // Its node full: the next two, in ring order (the full one used no attempt).
            let mut sel = s.candidates(ip(i));
            let rest: Vec<Slot> = sel.by_ref().collect();
            assert_eq!(names(&rest), order[1..]);
            assert!(sel.saw_full());
            drop(rest);
            let second = s.candidates(ip(i)).next().unwrap();
            let third = s.candidates(ip(i)).next().unwrap();
            assert_eq!(
                (second.name.as_str(), third.name.as_str()),
                (order[1].as_str(), order[2].as_str())
            );
            // Every node full: nothing, and the selection says why.
            let mut sel = s.candidates(ip(i));
            assert!(sel.next().is_none());
            assert!(sel.saw_full());
            // A place given back is taken by the next client, on that node.
            drop(second);
            let again: Vec<Slot> = s.candidates(ip(i)).collect();
            assert_eq!(names(&again), [order[1].clone()]);
            drop((again, first, third));
            for n in &s.members {
                assert_eq!(n.active.load(Ordering::Relaxed), 0);
                assert!(!n.is_full());
            }
        }
    }

    #[test]
    fn a_node_without_a_cap_is_never_full_and_caps_do_not_move_clients_with_room() {
        let plain = pool();
        let p = capped([Some(1000), None, Some(1000)], "");
        for i in 0..500 {
            let a: Vec<String> = plain
                .snapshot()
                .candidates(ip(i))
                .map(|n| n.name.clone())
                .collect();
            let b: Vec<String> = p
                .snapshot()
                .candidates(ip(i))
                .map(|n| n.name.clone())
                .collect();
            assert_eq!(a, b, "{i}: a cap with room changes nothing");
        }
        let b = p.node("b").unwrap();
        assert_eq!(b.max_connections(), None);
        b.active.store(u64::MAX / 2, Ordering::Relaxed);
        assert!(!b.is_full());
        b.active.store(0, Ordering::Relaxed);
        assert_eq!(p.node("a").unwrap().max_connections(), Some(1000));
    }

    #[test]
    fn caps_hold_under_balance_factor_and_its_fallback() {
        let p = capped([Some(5), Some(5), Some(5)], "balance_factor = 1.0");
        let s = p.snapshot();
        let order: Vec<String> = s.order(ip(7)).iter().map(|n| n.name.clone()).collect();
        // Every member at its bound (a race): the plain order, the full one skipped.
        p.node(&order[0])
            .unwrap()
            .active
            .store(5, Ordering::Relaxed);
        p.node(&order[1])
            .unwrap()
            .active
            .store(4, Ordering::Relaxed);
        p.node(&order[2])
            .unwrap()
            .active
            .store(4, Ordering::Relaxed);
        let got: Vec<String> = s.candidates(ip(7)).map(|n| n.name.clone()).collect();
        assert_eq!(got, order[1..]);
    }

    #[test]
    fn racing_threads_never_take_more_places_than_a_cap() {
        const THREADS: usize = 16;
        // Twenty rounds: a lost race needs the two threads in the same few
        // instructions, which one round on two cores does not always give.
        for _round in 0..20 {
            let p = std::sync::Arc::new(capped([Some(10), Some(20), Some(30)], ""));
            let s = p.snapshot();
            let start = std::sync::Barrier::new(THREADS);
            let held: Vec<Vec<Slot>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|t| {
                        let (s, start) = (&s, &start);
                        scope.spawn(move || {
                            let mut mine = Vec::new();
                            start.wait();
                            for i in 0..500u32 {
                                // Churn: give back a place now and then, take more.
                                if i % 7 == 0 && !mine.is_empty() {
                                    mine.swap_remove(0);
                                }
                                if let Some(slot) = s.candidates(ip(t as u32 * 1000 + i)).next() {
                                    let cap = slot.max_connections().unwrap();
                                    let now = slot.active.load(Ordering::Relaxed);
                                    assert!(
                                        now <= cap,
                                        "{} has {now} places, cap {cap}",
                                        slot.name
                                    );
                                    mine.push(slot);
                                }
                            }
                            // Fill up: every client walks the whole order, so this
                            // ends with every node at its cap exactly.
                            for i in 0..200u32 {
                                if let Some(slot) =
                                    s.candidates(ip(200_000 + t as u32 * 1000 + i)).next()
                                {
                                    mine.push(slot);
                                }
                            }
                            mine
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (name, cap) in [("a", 10), ("b", 20), ("c", 30)] {
                let holding = held.iter().flatten().filter(|s| s.name == name).count();
                assert_eq!(holding, cap, "{name}: places held");
                assert_eq!(
                    p.node(name).unwrap().active.load(Ordering::Relaxed),
                    cap as u64
                );
            }
            drop(held);
            for n in &s.members {
                assert_eq!(
                    n.active.load(Ordering::Relaxed),
                    0,
                    "every place given back"
                );
            }
        }
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
