//! The consistent-hash ring, on the `hashring` crate.
//!
//! * A node owns `weight × points_per_weight` points. A point's position is SipHash-2-4
//!   (zero key, `hashring`'s default hasher) over explicit bytes: the node's name in
//!   UTF-8, one `0xFF` byte (never present in UTF-8, so names cannot run into indexes),
//!   and the point index as a little-endian `u32`.
//! * A client key is the client IP masked to a prefix, as its network-order bytes
//!   (4 for IPv4, 16 for IPv6); an IPv4-mapped IPv6 address counts as IPv4. Its
//!   position is SipHash-2-4 of those bytes, and it maps to the first point at or after
//!   it (wrapping to the first point).
//! * Nothing depends on `std::hash::Hash` layouts of std types, random seeds, or the
//!   order nodes are listed in: points are ordered by (position, name, index), so even
//!   a 64-bit position tie resolves the same way on every instance.
//!
//! An even ring needs many points: a node's share of the hash space is the sum of
//! the arcs before its points, which varies by about `1/sqrt(points)`, so the default
//! of 16,384 points per weight keeps every node within a few percent of its fair share
//! (see the README's spread table). To keep lookups fast at that size, the sorted
//! points live in flat arrays (position, owner, index: 16 bytes a point), and `hashring`
//! indexes them in chunks of [`CHUNK`] points: a lookup asks `hashring` for the chunk
//! that holds the key's successor, then finds the point within the chunk. A full
//! binary search over 1.6 million points (100 nodes) costs 600–900 ns on a 2-core
//! test machine; the chunk index keeps `hashring`'s search inside a table 1/32 the
//! size. Lookup returns the owner of that point, then the next distinct nodes along
//! the ring (the fallback order).

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;

use hashring::{DefaultHashBuilder, HashRing};

/// Points per `hashring` entry: after `hashring`'s binary search over the chunks, a
/// lookup searches at most this many positions (512 bytes) of the flat table.
pub const CHUNK: usize = 64;

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

/// The bytes a point's position is the hash of.
struct PointId<'a> {
    name: &'a str,
    index: u32,
}

impl Hash for PointId<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.name.as_bytes());
        state.write(&[0xFF]);
        state.write(&self.index.to_le_bytes());
    }
}

/// Position of point `index` of node `name` on the ring.
pub fn point_position(name: &str, index: u32) -> u64 {
    DefaultHashBuilder.hash_one(PointId { name, index })
}

/// Position of a client key on the ring.
pub fn key_position(key: &Key) -> u64 {
    DefaultHashBuilder.hash_one(key)
}

/// One `hashring` entry: a run of [`CHUNK`] consecutive points, placed at the
/// position of its last point.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    last: u64,
    first: u32,
}

impl Hash for Chunk {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.last);
    }
}

/// A position already computed, looked up as itself.
struct Position(u64);

impl Hash for Position {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

/// The index's hasher: a position written with `write_u64` is its own hash (chunks
/// and key positions are hashed once, before they reach `hashring`).
#[derive(Debug, Clone, Copy, Default)]
struct Prehashed;

#[derive(Debug, Default)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else still gets a defined result.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

impl BuildHasher for Prehashed {
    type Hasher = PrehashedHasher;

    fn build_hasher(&self) -> PrehashedHasher {
        PrehashedHasher(0)
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
    /// The chunks of the sorted points, by the position of each chunk's last point.
    index: HashRing<Chunk, Prehashed>,
    /// Point positions, in ring order.
    positions: Vec<u64>,
    /// Owner (node index) of each point, in ring order.
    owners: Vec<u32>,
    /// Each point's index among its owner's points, in ring order.
    indexes: Vec<u32>,
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
        let total: usize = nodes.iter().map(|n| n.points as usize).sum();
        // (position, node index, point index)
        let mut all: Vec<(u64, u32, u32)> = Vec::with_capacity(total);
        for (i, n) in nodes.iter().enumerate() {
            all.extend((0..n.points).map(|index| (point_position(n.name, index), i as u32, index)));
        }
        let names: Vec<&str> = nodes.iter().map(|n| n.name).collect();
        sort_points(&mut all, &names);
        Ring::from_sorted(all.into_iter(), nodes)
    }

    /// The ring [`Ring::with_points`] builds for `nodes`, made from `prev` (built
    /// over nodes named `prev_names`, in its order): the points both rings share
    /// are kept in their order, only the points `prev` lacks are hashed, and the
    /// two runs are merged. A node going down, coming back, or changing weight
    /// costs one pass over the points instead of hashing and sorting them all.
    pub fn rebuild(prev: &Ring, prev_names: &[&str], nodes: &[RingPoints<'_>]) -> Ring {
        let names: Vec<&str> = nodes.iter().map(|n| n.name).collect();
        let by_name: std::collections::HashMap<&str, u32> = names
            .iter()
            .enumerate()
            .map(|(i, &n)| (n, i as u32))
            .collect();
        // prev node index -> (new node index, points it keeps)
        let map: Vec<Option<(u32, u32)>> = (0..prev.node_count())
            .map(|i| {
                let j = *by_name.get(prev_names.get(i)?)?;
                Some((j, nodes[j as usize].points))
            })
            .collect();
        let mut had = vec![0u32; nodes.len()];
        for (i, m) in map.iter().enumerate() {
            if let Some((j, keep)) = *m {
                had[j as usize] = prev.points_of(i).min(keep);
            }
        }
        let mut added: Vec<(u64, u32, u32)> = Vec::new();
        for (j, n) in nodes.iter().enumerate() {
            added.extend(
                (had[j]..n.points).map(|index| (point_position(n.name, index), j as u32, index)),
            );
        }
        sort_points(&mut added, &names);
        let kept = (0..prev.len()).filter_map(|s| {
            let (j, keep) = map[prev.owners[s] as usize]?;
            let index = prev.indexes[s];
            (index < keep).then_some((prev.positions[s], j, index))
        });
        let cmp = |a: &(u64, u32, u32), b: &(u64, u32, u32)| {
            a.0.cmp(&b.0)
                .then_with(|| names[a.1 as usize].cmp(names[b.1 as usize]))
                .then(a.2.cmp(&b.2))
        };
        let mut kept = kept.peekable();
        let mut added = added.into_iter().peekable();
        let merged = std::iter::from_fn(|| match (kept.peek(), added.peek()) {
            (Some(k), Some(a)) if cmp(a, k).is_lt() => added.next(),
            (Some(_), _) => kept.next(),
            (None, _) => added.next(),
        });
        Ring::from_sorted(merged, nodes)
    }

    /// The ring over points already in ring order.
    fn from_sorted(all: impl Iterator<Item = (u64, u32, u32)>, nodes: &[RingPoints<'_>]) -> Ring {
        let points: Vec<u32> = nodes.iter().map(|n| n.points).collect();
        let total: usize = points.iter().map(|&p| p as usize).sum();
        let mut positions = Vec::with_capacity(total);
        let mut owners = Vec::with_capacity(total);
        let mut indexes = Vec::with_capacity(total);
        // A key k maps to the first point with position >= k, so a point owns the
        // arc (previous position, its position]; the first point also owns the wrap.
        let mut arcs = vec![0u64; nodes.len()];
        let mut prev: Option<u64> = None;
        for (pos, owner, index) in all {
            if let Some(prev) = prev {
                arcs[owner as usize] += pos - prev;
            }
            prev = Some(pos);
            positions.push(pos);
            owners.push(owner);
            indexes.push(index);
        }
        let len = positions.len();
        let mut shares: Vec<f64> = arcs.iter().map(|&a| a as f64 / u64::MAX as f64).collect();
        if len > 0 {
            let wrap = if len == 1 {
                u64::MAX
            } else {
                positions[0].wrapping_sub(positions[len - 1])
            };
            shares[owners[0] as usize] += wrap as f64 / u64::MAX as f64;
        }
        let mut index = HashRing::with_hasher(Prehashed);
        // Chunk boundaries are non-decreasing and `batch_add` sorts stably: the
        // chunks stay in ring order.
        index.batch_add(
            (0..len)
                .step_by(CHUNK)
                .map(|first| Chunk {
                    last: positions[(first + CHUNK).min(len) - 1],
                    first: first as u32,
                })
                .collect(),
        );
        Ring {
            index,
            positions,
            owners,
            indexes,
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

    /// Bytes the ring holds (its arrays and its index), for the memory figures.
    pub fn heap_bytes(&self) -> usize {
        self.positions.capacity() * 8
            + (self.owners.capacity() + self.indexes.capacity() + self.points.capacity()) * 4
            + self.shares.capacity() * 8
            + self.index.len() * std::mem::size_of::<(u64, Chunk)>()
    }

    /// Slot (ring order) of the first point at or after `key`, wrapping.
    fn slot(&self, key: &Key) -> Option<usize> {
        self.slot_at(key_position(key))
    }

    /// Slot of the first point at or after position `h`, wrapping.
    fn slot_at(&self, h: u64) -> Option<usize> {
        let chunk = self.index.get(&Position(h))?;
        let mut first = chunk.first as usize;
        // Chunks that end at the same position (a 64-bit tie) are found in either
        // order; the first point at or after `h` may then sit in the chunk before.
        while first > 0 && self.positions[first - 1] >= h {
            first -= 1;
        }
        let end = (chunk.first as usize + CHUNK).min(self.positions.len());
        let within = self.positions[first..end].partition_point(|&p| p < h);
        // Past the last point (hashring wrapped to the first chunk): the first point.
        Some(if first + within == end && self.positions[end - 1] < h {
            0
        } else {
            first + within
        })
    }

    /// The node a key maps to.
    pub fn primary(&self, key: &Key) -> Option<usize> {
        self.slot(key).map(|s| self.owners[s] as usize)
    }

    /// The point a key maps to: its owner (node index) and the point's index
    /// among that node's points.
    pub fn point(&self, key: &Key) -> Option<(usize, u32)> {
        self.slot(key)
            .map(|s| (self.owners[s] as usize, self.indexes[s]))
    }

    /// The node a key maps to, then the next distinct nodes clockwise: at most `max`
    /// node indexes, each once.
    pub fn candidates(&self, key: &Key, max: usize) -> Candidates<'_> {
        let start = self.slot(key).unwrap_or(0);
        Candidates {
            owners: &self.owners,
            start,
            step: 0,
            seen: Seen::default(),
            max: max.min(self.node_count()),
        }
    }

    /// The full order for a key: primary first, then every other node once.
    pub fn order(&self, key: &Key) -> Vec<usize> {
        self.candidates(key, usize::MAX).collect()
    }
}

/// Sort points by (position, name, index). Positions are uniform hashes, so a
/// counting pass by their top bits puts them nearly in order; each bucket (a few
/// points) is then sorted on its own. About 10× faster than a comparison sort of
/// 1.6 million points.
fn sort_points(all: &mut Vec<(u64, u32, u32)>, names: &[&str]) {
    let cmp = |a: &(u64, u32, u32), b: &(u64, u32, u32)| {
        a.0.cmp(&b.0)
            .then_with(|| names[a.1 as usize].cmp(names[b.1 as usize]))
            .then(a.2.cmp(&b.2))
    };
    if all.len() < 4096 {
        all.sort_unstable_by(cmp);
        return;
    }
    // About four points per bucket.
    let bits = (usize::BITS - (all.len() / 4).leading_zeros()).min(24);
    let shift = 64 - bits;
    let mut starts = vec![0usize; (1 << bits) + 1];
    for p in all.iter() {
        starts[(p.0 >> shift) as usize + 1] += 1;
    }
    for b in 1..starts.len() {
        starts[b] += starts[b - 1];
    }
    let mut next = starts.clone();
    let mut sorted = vec![(0u64, 0u32, 0u32); all.len()];
    for p in all.iter() {
        let b = (p.0 >> shift) as usize;
        sorted[next[b]] = *p;
        next[b] += 1;
    }
    for b in 0..(1 << bits) {
        sorted[starts[b]..starts[b + 1]].sort_unstable_by(cmp);
    }
    *all = sorted;
}

/// Iterator over distinct nodes clockwise from a key.
#[derive(Debug)]
pub struct Candidates<'a> {
    owners: &'a [u32],
    start: usize,
    step: usize,
    seen: Seen,
    max: usize,
}

/// The nodes a [`Candidates`] has given: the first few inline, so picking a
/// connection's node allocates nothing (a connection tries `connect_attempts`
/// nodes, 3 by default).
#[derive(Debug, Default)]
struct Seen {
    first: [u32; Seen::INLINE],
    len: usize,
    more: Vec<u32>,
}

impl Seen {
    const INLINE: usize = 8;

    fn len(&self) -> usize {
        self.len
    }

    fn contains(&self, owner: u32) -> bool {
        self.first[..self.len.min(Self::INLINE)].contains(&owner) || self.more.contains(&owner)
    }

    fn push(&mut self, owner: u32) {
        if self.len < Self::INLINE {
            self.first[self.len] = owner;
        } else {
            self.more.push(owner);
        }
        self.len += 1;
    }
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
            if !self.seen.contains(owner) {
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

    /// The default `points_per_weight`: the one the golden table is for.
    const GOLDEN_POINTS_PER_WEIGHT: u32 = crate::config::defaults::POINTS_PER_WEIGHT;

    /// Any change of this table is a change of every deployed mapping: make it on
    /// purpose, never by accident (`tests/ring_reference.py src/ring_golden.txt
    /// --write` regenerates it from the independent implementation). It changed
    /// once: 160 points per weight became 16,384 (an even ring).
    #[test]
    fn golden_mapping() {
        let nodes: Vec<RingNode> = THREE
            .iter()
            .map(|&(name, weight)| RingNode { name, weight })
            .collect();
        let r = Ring::new(&nodes, GOLDEN_POINTS_PER_WEIGHT);
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
        // More nodes than are kept inline: still each node once, in ring order.
        let names: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
        let nodes: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
        let r = ring(&nodes);
        for ip in ips(200, 14) {
            let k = key(ip);
            let all = r.order(&k);
            let mut sorted = all.clone();
            sorted.sort();
            assert_eq!(sorted, (0..20).collect::<Vec<_>>());
            assert_eq!(r.candidates(&k, 11).collect::<Vec<_>>(), all[..11]);
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
        // The position function itself, independent of the ring's layout:
        // SipHash-2-4 with a zero key over b"node-a" ++ [0xFF] ++ 0u32.to_le_bytes().
        let mut h = siphasher::sip::SipHasher::new();
        h.write(b"node-a\xff\0\0\0\0");
        assert_eq!(point_position("node-a", 0), h.finish());
        let mut h = siphasher::sip::SipHasher::new();
        h.write(&[203, 0, 113, 7]);
        assert_eq!(key_position(&Key::V4([203, 0, 113, 7])), h.finish());
        let mut counts: HashMap<usize, usize> = HashMap::new();
        let r = ring(&THREE);
        for s in 0..r.len() {
            *counts.entry(r.owners[s] as usize).or_default() += 1;
        }
        assert_eq!(counts.values().sum::<usize>(), 480);
    }

    /// The chunked lookup finds exactly what a plain search of the sorted
    /// positions finds: at, just before and just after every point, at both ends
    /// of the hash space, and at random positions; for rings smaller than a chunk,
    /// a few chunks, and many.
    #[test]
    fn chunked_lookup_is_the_first_point_at_or_after() {
        for per_node in [1u32, 5, 11, 32, 100, 700] {
            let r = Ring::new(
                &[
                    RingNode {
                        name: "x",
                        weight: 1,
                    },
                    RingNode {
                        name: "y",
                        weight: 2,
                    },
                    RingNode {
                        name: "z",
                        weight: 1,
                    },
                ],
                per_node,
            );
            let naive = |h: u64| {
                let s = r.positions.partition_point(|&p| p < h);
                if s == r.positions.len() {
                    0
                } else {
                    s
                }
            };
            let mut probes = vec![0, 1, u64::MAX - 1, u64::MAX];
            for &p in &r.positions {
                probes.extend([p.wrapping_sub(1), p, p.wrapping_add(1)]);
            }
            let mut x = u64::from(per_node);
            for _ in 0..2000 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                probes.push(x);
            }
            for h in probes {
                assert_eq!(r.slot_at(h), Some(naive(h)), "{per_node} points: {h:#x}");
            }
            assert!(r.positions.windows(2).all(|w| w[0] <= w[1]));
        }
        assert_eq!(Ring::new(&[], 160).slot_at(7), None);
    }

    /// The bucketed sort orders exactly as a comparison sort by (position, name,
    /// index), ties included.
    #[test]
    fn bucketed_sort_matches_a_comparison_sort() {
        let nodes = ["b", "a"];
        let mut x = 99u64;
        let mut all: Vec<(u64, u32, u32)> = (0..20_000u32)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Every 7th point ties with a neighbour's position.
                let pos = if i % 7 == 0 { x & !0xFFFF } else { x };
                (pos, i % 2, i / 2)
            })
            .collect();
        all.extend_from_slice(&[(5, 0, 1), (5, 1, 1), (5, 1, 0), (u64::MAX, 0, 0)]);
        let mut expect = all.clone();
        expect
            .sort_by(|a, b| (a.0, nodes[a.1 as usize], a.2).cmp(&(b.0, nodes[b.1 as usize], b.2)));
        sort_points(&mut all, &nodes);
        assert_eq!(all, expect);
    }

    /// `rebuild` from any earlier ring gives exactly the ring `with_points`
    /// builds: nodes removed, added, reordered, with fewer and more points.
    #[test]
    fn rebuild_from_a_previous_ring_is_the_same_ring() {
        let mk = |v: &[(&'static str, u32)]| -> Vec<RingPoints<'static>> {
            v.iter()
                .map(|&(name, points)| RingPoints { name, points })
                .collect()
        };
        let steps: [&[(&str, u32)]; 7] = [
            &[("a", 300), ("b", 300), ("c", 300)],
            &[("a", 300), ("c", 300)],
            &[("c", 300), ("b", 300), ("a", 300), ("d", 50)],
            &[("c", 300), ("b", 150), ("a", 300), ("d", 5000)],
            &[("b", 400), ("e", 1)],
            &[],
            &[("a", 10), ("b", 20)],
        ];
        for from in steps {
            for to in steps {
                let (from, to) = (mk(from), mk(to));
                let prev = Ring::with_points(&from);
                let names: Vec<&str> = from.iter().map(|n| n.name).collect();
                let got = Ring::rebuild(&prev, &names, &to);
                let want = Ring::with_points(&to);
                assert_eq!(got.positions, want.positions);
                assert_eq!(got.owners, want.owners);
                assert_eq!(got.indexes, want.indexes);
                assert_eq!(got.points, want.points);
                for ip in ips(500, 23) {
                    assert_eq!(got.order(&key(ip)), want.order(&key(ip)));
                }
            }
        }
    }
}
