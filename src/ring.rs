//! The consistent-hash ring, on the `hashring` crate.
//!
//! * A node owns `weight × points_per_weight` points. A point's position is SipHash-2-4
//!   (zero key, as `hashring` uses) over explicit bytes: the node's name in UTF-8, one
//!   `0xFF` byte (never present in UTF-8, so names cannot run into indexes), and the
//!   point index as a little-endian `u32`.
//! * A client key is the client IP masked to a prefix, as its network-order bytes
//!   (4 for IPv4, 16 for IPv6); an IPv4-mapped IPv6 address counts as IPv4.
//! * Nothing depends on `std::hash::Hash` layouts of std types, random seeds, or the
//!   order nodes are listed in: points are inserted in (position, name, index) order,
//!   so even a 64-bit position tie resolves the same way on every instance.
//!
//! Lookup returns the owner of the first point clockwise from the key, then the next
//! distinct nodes along the ring (the fallback order). The sorted node-per-point table
//! is precomputed at build, so the hot path walks a `Vec<u32>` and never clones the ring.

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use hashring::{DefaultHashBuilder, HashRing};

/// A node as the ring sees it: a stable name and a weight.
#[derive(Debug, Clone, Copy)]
pub struct RingNode<'a> {
    pub name: &'a str,
    pub weight: u32,
}

/// A node with an explicit number of points (its indexes `0..points`): what
/// [`Ring::with_points`] builds from. A node with fewer points than another of
/// the same name has exactly that one's lowest-index points.
#[derive(Debug, Clone, Copy)]
pub struct RingPoints<'a> {
    pub name: &'a str,
    pub points: u32,
}

/// One point on the ring. Only `name` and `index` define its position.
#[derive(Debug, Clone)]
struct Point {
    name: Arc<str>,
    index: u32,
    /// Position of this point in the sorted ring (index into `Ring::owners`).
    slot: u32,
}

impl Hash for Point {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.name.as_bytes());
        state.write(&[0xFF]);
        state.write(&self.index.to_le_bytes());
    }
}

/// A client key: masked address bytes, hashed as exactly those bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Key::V4(b) => state.write(b),
            Key::V6(b) => state.write(b),
        }
    }
}

impl Key {
    /// The key of a client address: IPv4-mapped IPv6 folded to IPv4, then masked
    /// to `v4_prefix` / `v6_prefix` bits.
    pub fn from_ip(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> Key {
        match canonical_ip(ip) {
            IpAddr::V4(a) => {
                let bits = u32::from(a) & prefix_mask_u32(v4_prefix);
                Key::V4(bits.to_be_bytes())
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a) & prefix_mask_u128(v6_prefix);
                Key::V6(bits.to_be_bytes())
            }
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) becomes IPv4; everything else is unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn prefix_mask_u32(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p if p >= 32 => u32::MAX,
        p => u32::MAX << (32 - p),
    }
}

fn prefix_mask_u128(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p if p >= 128 => u128::MAX,
        p => u128::MAX << (128 - p),
    }
}

/// An immutable consistent-hash ring over a list of nodes. Node indexes returned by
/// lookups refer to the slice given to [`Ring::new`].
#[derive(Debug, Clone)]
pub struct Ring {
    ring: HashRing<Point>,
    /// Owner (node index) of each point, in ring order.
    owners: Vec<u32>,
    /// Number of points per node.
    points: Vec<u32>,
    /// Fraction of the hash space each node owns (sums to 1 for a non-empty ring).
    shares: Vec<f64>,
}

impl Ring {
    /// Build the ring: each node gets `weight × points_per_weight` points.
    pub fn new(nodes: &[RingNode<'_>], points_per_weight: u32) -> Ring {
        let nodes: Vec<RingPoints> = nodes
            .iter()
            .map(|n| RingPoints {
                name: n.name,
                points: n.weight.saturating_mul(points_per_weight),
            })
            .collect();
        Ring::with_points(&nodes)
    }

    /// Build the ring with a given number of points per node: node `i` owns
    /// its points `0..points`. Lowering a node's count removes only its
    /// highest-index points, so only the keys on those points move; raising it
    /// back adds exactly them again.
    pub fn with_points(nodes: &[RingPoints<'_>]) -> Ring {
        let hasher = DefaultHashBuilder;
        let names: Vec<Arc<str>> = nodes.iter().map(|n| Arc::from(n.name)).collect();
        let total: usize = nodes.iter().map(|n| n.points as usize).sum();
        // (position, node index, point)
        let mut all: Vec<(u64, u32, Point)> = Vec::with_capacity(total);
        let mut points = Vec::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            let count = n.points;
            points.push(count);
            for index in 0..count {
                let p = Point {
                    name: names[i].clone(),
                    index,
                    slot: 0,
                };
                all.push((hasher.hash_one(&p), i as u32, p));
            }
        }
        // Total order independent of the listing order of nodes.
        all.sort_unstable_by(|a, b| {
            (a.0, &*a.2.name, a.2.index).cmp(&(b.0, &*b.2.name, b.2.index))
        });
        let mut owners = Vec::with_capacity(all.len());
        let mut shares = vec![0f64; nodes.len()];
        let len = all.len();
        for slot in 0..len {
            let (pos, owner, _) = &all[slot];
            // A key k maps to the first point with position >= k, so this point owns
            // the arc (previous position, pos]; the first point also owns the wrap.
            let prev = if slot == 0 {
                all[len - 1].0
            } else {
                all[slot - 1].0
            };
            let arc = pos.wrapping_sub(prev);
            let arc = if len == 1 { u64::MAX } else { arc };
            shares[*owner as usize] += arc as f64 / u64::MAX as f64;
            owners.push(*owner);
        }
        let mut ring = HashRing::with_hasher(hasher);
        // `batch_add` sorts by position with a stable sort: our order is kept.
        ring.batch_add(
            all.into_iter()
                .enumerate()
                .map(|(slot, (_, _, mut p))| {
                    p.slot = slot as u32;
                    p
                })
                .collect(),
        );
        Ring {
            ring,
            owners,
            points,
            shares,
        }
    }

    /// Number of nodes the ring was built from.
    pub fn node_count(&self) -> usize {
        self.points.len()
    }

    /// Total number of points.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Points owned by node `i`.
    pub fn points_of(&self, i: usize) -> u32 {
        self.points.get(i).copied().unwrap_or(0)
    }

    /// Share of the hash space owned by node `i`, in 0..=1.
    pub fn share_of(&self, i: usize) -> f64 {
        self.shares.get(i).copied().unwrap_or(0.0)
    }

    /// The node a key maps to.
    pub fn primary(&self, key: &Key) -> Option<usize> {
        self.ring
            .get(key)
            .map(|p| self.owners[p.slot as usize] as usize)
    }

    /// The point a key maps to: its owner (node index) and the point's index
    /// among that node's points.
    pub fn point(&self, key: &Key) -> Option<(usize, u32)> {
        self.ring
            .get(key)
            .map(|p| (self.owners[p.slot as usize] as usize, p.index))
    }

    /// The node a key maps to, then the next distinct nodes clockwise: at most `max`
    /// node indexes, each once.
    pub fn candidates(&self, key: &Key, max: usize) -> Candidates<'_> {
        let start = self.ring.get(key).map_or(0, |p| p.slot as usize);
        Candidates {
            owners: &self.owners,
            start,
            step: 0,
            seen: Vec::new(),
            max: max.min(self.node_count()),
        }
    }

    /// The full order for a key: primary first, then every other node once.
    pub fn order(&self, key: &Key) -> Vec<usize> {
        self.candidates(key, usize::MAX).collect()
    }
}

/// Iterator over distinct nodes clockwise from a key.
#[derive(Debug)]
pub struct Candidates<'a> {
    owners: &'a [u32],
    start: usize,
    step: usize,
    seen: Vec<u32>,
    max: usize,
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.seen.len() >= self.max {
            return None;
        }
        while self.step < self.owners.len() {
            let owner = self.owners[(self.start + self.step) % self.owners.len()];
            self.step += 1;
            if !self.seen.contains(&owner) {
                self.seen.push(owner);
                return Some(owner as usize);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ring(names: &[(&str, u32)]) -> Ring {
        let nodes: Vec<RingNode> = names
            .iter()
            .map(|&(name, weight)| RingNode { name, weight })
            .collect();
        Ring::new(&nodes, 160)
    }

    fn key(ip: Ipv4Addr) -> Key {
        Key::from_ip(IpAddr::V4(ip), 32, 64)
    }

    /// Deterministic pseudo-random IPv4 addresses (splitmix64), no dependency on rand.
    fn ips(n: usize, seed: u64) -> Vec<Ipv4Addr> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                Ipv4Addr::from((z ^ (z >> 31)) as u32)
            })
            .collect()
    }

    const THREE: [(&str, u32); 3] = [("node-a", 1), ("node-b", 1), ("node-c", 1)];

    /// Any change of this table is a change of every deployed mapping: make it on
    /// purpose, never by accident.
    #[test]
    fn golden_mapping() {
        let r = ring(&THREE);
        let names = ["node-a", "node-b", "node-c"];
        let got: Vec<String> = GOLDEN_IPS
            .iter()
            .map(|ip| {
                let k = key(ip.parse().unwrap());
                format!("{ip} {}", names[r.primary(&k).unwrap()])
            })
            .collect();
        assert_eq!(got.join("\n"), GOLDEN.trim());
    }

    const GOLDEN_IPS: [&str; 50] = [
        "0.0.0.0",
        "1.1.1.1",
        "8.8.8.8",
        "9.9.9.9",
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3",
        "10.1.2.3",
        "10.255.255.254",
        "100.64.0.1",
        "127.0.0.1",
        "127.0.0.2",
        "127.1.2.3",
        "169.254.1.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
        "192.0.2.4",
        "192.0.2.5",
        "192.0.2.100",
        "192.0.2.200",
        "192.0.2.254",
        "192.168.0.1",
        "192.168.1.1",
        "192.168.1.2",
        "192.168.100.200",
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.77",
        "203.0.113.1",
        "203.0.113.2",
        "203.0.113.3",
        "203.0.113.7",
        "203.0.113.42",
        "203.0.113.99",
        "203.0.113.250",
        "11.22.33.44",
        "23.45.67.89",
        "45.67.89.10",
        "66.77.88.99",
        "77.88.99.11",
        "88.99.11.22",
        "99.11.22.33",
        "123.45.67.89",
        "210.10.20.30",
        "223.255.255.254",
        "255.255.255.255",
    ];

    const GOLDEN: &str = include_str!("ring_golden.txt");

    #[test]
    fn removing_a_node_moves_exactly_its_clients_and_adding_it_back_restores() {
        let full = ring(&THREE);
        let without_b = ring(&[("node-a", 1), ("node-c", 1)]);
        let name_full = |i: usize| THREE[i].0;
        let name_wo = |i: usize| ["node-a", "node-c"][i];
        let mut moved = 0;
        for ip in ips(100_000, 7) {
            let k = key(ip);
            let before = name_full(full.primary(&k).unwrap());
            let after = name_wo(without_b.primary(&k).unwrap());
            if before == "node-b" {
                moved += 1;
                // It goes to its next distinct node along the full ring.
                let order = full.order(&k);
                assert_eq!(after, name_full(order[1]), "{ip}");
            } else {
                assert_eq!(before, after, "{ip} moved although its node stayed");
            }
        }
        assert!(moved > 25_000 && moved < 42_000, "moved {moved}");
        // Adding it back: the same ring as before, point for point.
        let again = ring(&THREE);
        for ip in ips(100_000, 7) {
            let k = key(ip);
            assert_eq!(full.primary(&k), again.primary(&k));
        }
    }

    #[test]
    fn listing_order_does_not_matter() {
        let a = ring(&THREE);
        let b = ring(&[("node-c", 1), ("node-a", 1), ("node-b", 1)]);
        let a_names = |i: usize| THREE[i].0;
        let b_names = |i: usize| ["node-c", "node-a", "node-b"][i];
        for ip in ips(20_000, 11) {
            let k = key(ip);
            let oa: Vec<_> = a.order(&k).into_iter().map(a_names).collect();
            let ob: Vec<_> = b.order(&k).into_iter().map(b_names).collect();
            assert_eq!(oa, ob);
        }
    }

    #[test]
    fn equal_nodes_share_evenly() {
        let r = ring(&THREE);
        let mut count = [0usize; 3];
        let n = 100_000;
        for ip in ips(n, 3) {
            count[r.primary(&key(ip)).unwrap()] += 1;
        }
        for c in count {
            assert!(
                (c as f64 - n as f64 / 3.0).abs() <= 0.05 * n as f64 / 3.0,
                "{count:?} not within ±5% of a third"
            );
        }
        let shares: f64 = (0..3).map(|i| r.share_of(i)).sum();
        assert!((shares - 1.0).abs() < 1e-9);
    }

    #[test]
    fn weight_two_gets_about_twice_the_share() {
        let r = ring(&[("node-a", 2), ("node-b", 1), ("node-c", 1)]);
        let mut count = [0usize; 3];
        for ip in ips(100_000, 5) {
            count[r.primary(&key(ip)).unwrap()] += 1;
        }
        let ratio_b = count[0] as f64 / count[1] as f64;
        let ratio_c = count[0] as f64 / count[2] as f64;
        assert!((1.8..2.2).contains(&ratio_b), "{count:?}");
        assert!((1.8..2.2).contains(&ratio_c), "{count:?}");
        assert_eq!(r.points_of(0), 320);
    }

    #[test]
    fn raising_a_weight_only_pulls_clients_to_that_node() {
        let before = ring(&THREE);
        let after = ring(&[("node-a", 2), ("node-b", 1), ("node-c", 1)]);
        for ip in ips(50_000, 9) {
            let k = key(ip);
            let (b, a) = (before.primary(&k).unwrap(), after.primary(&k).unwrap());
            assert!(a == b || a == 0, "{ip} moved from {b} to {a}");
        }
    }

    #[test]
    fn fewer_points_move_only_the_keys_of_the_removed_points_and_back_restores() {
        let pts = |b: u32| {
            Ring::with_points(&[
                RingPoints {
                    name: "node-a",
                    points: 160,
                },
                RingPoints {
                    name: "node-b",
                    points: b,
                },
                RingPoints {
                    name: "node-c",
                    points: 160,
                },
            ])
        };
        // `new` is `with_points` with weight x points_per_weight.
        let full = pts(160);
        for ip in ips(20_000, 17) {
            let k = key(ip);
            assert_eq!(full.point(&k), ring(&THREE).point(&k));
        }
        let half = pts(80);
        assert_eq!(half.points_of(1), 80);
        let (mut moved, mut on_b) = (0, 0);
        for ip in ips(100_000, 19) {
            let k = key(ip);
            let (owner, index) = full.point(&k).unwrap();
            let now = half.point(&k).unwrap();
            if owner == 1 && index >= 80 {
                // A removed point: its key goes to the next point clockwise.
                moved += usize::from(now.0 != 1);
            } else {
                assert_eq!(now, (owner, index), "{ip}: its point stayed, so must it");
            }
            on_b += usize::from(owner == 1);
        }
        // About half of b's keys were on its points 80..160.
        assert!(
            moved > on_b * 3 / 10 && moved < on_b * 6 / 10,
            "{moved} of {on_b}"
        );
        let again = pts(160);
        for ip in ips(100_000, 19) {
            let k = key(ip);
            assert_eq!(again.point(&k), full.point(&k));
        }
    }

    #[test]
    fn candidates_are_distinct_and_bounded() {
        let r = ring(&THREE);
        for ip in ips(1000, 13) {
            let k = key(ip);
            let c: Vec<_> = r.candidates(&k, 2).collect();
            assert_eq!(c.len(), 2);
            assert_ne!(c[0], c[1]);
            assert_eq!(c[0], r.primary(&k).unwrap());
            let all = r.order(&k);
            assert_eq!(all.len(), 3);
            assert_eq!(&all[..2], &c[..]);
            let mut sorted = all.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2]);
        }
    }

    #[test]
    fn empty_and_single_node_rings() {
        let empty = Ring::new(&[], 160);
        assert!(empty.primary(&key(Ipv4Addr::LOCALHOST)).is_none());
        assert_eq!(empty.candidates(&key(Ipv4Addr::LOCALHOST), 3).count(), 0);
        let one = ring(&[("solo", 1)]);
        assert_eq!(one.order(&key(Ipv4Addr::LOCALHOST)), vec![0]);
        assert!((one.share_of(0) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn keys_fold_mapped_v6_and_mask_prefixes() {
        let v4: Ipv4Addr = "203.0.113.7".parse().unwrap();
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        assert_eq!(
            Key::from_ip(mapped, 32, 64),
            Key::from_ip(IpAddr::V4(v4), 32, 64)
        );
        assert_eq!(
            Key::from_ip(IpAddr::V4(v4), 24, 64),
            Key::V4([203, 0, 113, 0])
        );
        let a: Ipv6Addr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:1:2:3:4".parse().unwrap();
        assert_eq!(
            Key::from_ip(IpAddr::V6(a), 32, 64),
            Key::from_ip(IpAddr::V6(b), 32, 64)
        );
        assert_ne!(
            Key::from_ip(IpAddr::V6(a), 32, 128),
            Key::from_ip(IpAddr::V6(b), 32, 128)
        );
    }

    #[test]
    fn positions_are_pinned() {
        // The position function itself, independent of hashring's ring layout:
        // SipHash-2-4 with a zero key over b"node-a" ++ [0xFF] ++ 0u32.to_le_bytes().
        let p = Point {
            name: Arc::from("node-a"),
            index: 0,
            slot: 99,
        };
        let mut h = siphasher::sip::SipHasher::new();
        h.write(b"node-a\xff\0\0\0\0");
        assert_eq!(DefaultHashBuilder.hash_one(&p), h.finish());
        let mut counts: HashMap<usize, usize> = HashMap::new();
        let r = ring(&THREE);
        for s in 0..r.len() {
            *counts.entry(r.owners[s] as usize).or_default() += 1;
        }
        assert_eq!(counts.values().sum::<usize>(), 480);
    }
}
