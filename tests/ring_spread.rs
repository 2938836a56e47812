//! The default ring is even: over random client IPv4 addresses, no node gets more
//! than 1.05 × its weight-fair share (100,000 addresses for 3, 5 and 10 nodes;
//! 1,000,000 for 100), for 20 random name sets per size. The names come from a
//! seeded generator (lengths 3–24, letters, digits, '.', '-'), never picked
//! because they pass; the exact shares of the hash space (the points' arcs) are
//! held to the same bound. Timing lives in `benches/ring.rs`, not here.

use std::net::{IpAddr, Ipv4Addr};

use ringlb::config::defaults::POINTS_PER_WEIGHT;
use ringlb::ring::{Key, Ring, RingNode};

const BOUND: f64 = 1.05;
const SETS: u64 = 20;

#[path = "../benches/common/spread_names.rs"]
mod spread_names;
use spread_names::{names, splitmix};

/// (worst sampled count / fair count, worst exact share / fair share) of one
/// ring over `ips` random addresses.
fn spread(names: &[String], weights: &[u32], ips: usize, seed: u64) -> (f64, f64) {
    let nodes: Vec<RingNode> = names
        .iter()
        .zip(weights)
        .map(|(name, &weight)| RingNode { name, weight })
        .collect();
    let ring = Ring::new(&nodes, POINTS_PER_WEIGHT);
    let total: u32 = weights.iter().sum();
    let fair = |i: usize| f64::from(weights[i]) / f64::from(total);
    let mut count = vec![0usize; names.len()];
    let mut x = seed;
    for _ in 0..ips {
        let ip = Ipv4Addr::from(splitmix(&mut x) as u32);
        let i = ring
            .primary(&Key::from_ip(IpAddr::V4(ip), 32, 64))
            .expect("a ring with nodes maps every key");
        count[i] += 1;
    }
    let sampled = (0..names.len())
        .map(|i| count[i] as f64 / (ips as f64 * fair(i)))
        .fold(0f64, f64::max);
    let exact = (0..names.len())
        .map(|i| ring.share_of(i) / fair(i))
        .fold(0f64, f64::max);
    (sampled, exact)
}

fn check(n: usize, ips: usize, sets: std::ops::Range<u64>, weighted: bool) {
    let (mut worst, mut worst_exact) = (0f64, 0f64);
    for set in sets {
        let names = names(n, 1_000 * n as u64 + set + u64::from(weighted) * 7_919);
        let mut x = set ^ 0xABCD;
        let weights: Vec<u32> = (0..n)
            .map(|_| {
                if weighted {
                    1 + (splitmix(&mut x) % 4) as u32
                } else {
                    1
                }
            })
            .collect();
        let (sampled, exact) = spread(&names, &weights, ips, 77 + set);
        assert!(
            sampled <= BOUND && exact <= BOUND,
            "{n} nodes, set {set} ({names:?}, weights {weights:?}): max/mean {sampled:.4} over {ips} IPs, exact {exact:.4}"
        );
        worst = worst.max(sampled);
        worst_exact = worst_exact.max(exact);
    }
    println!("{n} nodes (weighted: {weighted}): worst max/mean {worst:.4} over {ips} IPs, exact {worst_exact:.4}");
}

#[test]
fn three_nodes() {
    check(3, 100_000, 0..SETS, false);
}

#[test]
fn five_nodes() {
    check(5, 100_000, 0..SETS, false);
}

#[test]
fn ten_nodes() {
    check(10, 100_000, 0..SETS, false);
}

#[test]
fn five_weighted_nodes() {
    check(5, 100_000, 0..SETS, true);
}

// 100 nodes in four parts, so the test threads share them.
#[test]
fn hundred_nodes_sets_0_to_4() {
    check(100, 1_000_000, 0..5, false);
}

#[test]
fn hundred_nodes_sets_5_to_9() {
    check(100, 1_000_000, 5..10, false);
}

#[test]
fn hundred_nodes_sets_10_to_14() {
    check(100, 1_000_000, 10..15, false);
}

#[test]
fn hundred_nodes_sets_15_to_19() {
    check(100, 1_000_000, 15..SETS, false);
}
