//! Measures how evenly the ring spreads clients, for a choice of
//! `points_per_weight`: max/mean of the weight-fair share, worst over 20 seeded
//! random name sets per node count, by sampling random IPv4 addresses (100,000
//! for 3/5/10 nodes, 1,000,000 for 100) and exactly from the points' arcs
//! (`Ring::share_of`), plus the build time and the point count.
//!
//! `cargo bench --bench ring_spread -- 160 1024 4096 16384` (the README's table;
//! without arguments, the default points per weight only).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use ringlb::ring::{Key, Ring, RingNode};

#[path = "common/spread_names.rs"]
mod spread_names;
use spread_names::{names, splitmix};

fn main() {
    // `cargo bench` passes `--bench`; numbers are points per weight.
    let mut ppws: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if ppws.is_empty() {
        ppws.push(ringlb::config::defaults::POINTS_PER_WEIGHT);
    }
    let sets = 20u64;
    println!("ppw   nodes  points   sampled max/mean  exact max/mean  build ms (worst)");
    for &ppw in &ppws {
        for (n, ips) in [
            (3usize, 100_000usize),
            (5, 100_000),
            (10, 100_000),
            (100, 1_000_000),
        ] {
            let (mut worst_sample, mut worst_exact, mut worst_build) = (0f64, 0f64, 0f64);
            let mut len = 0;
            for set in 0..sets {
                let names = names(n, 1000 * n as u64 + set);
                let nodes: Vec<RingNode> = names
                    .iter()
                    .map(|name| RingNode { name, weight: 1 })
                    .collect();
                let t = Instant::now();
                let ring = Ring::new(&nodes, ppw);
                worst_build = worst_build.max(t.elapsed().as_secs_f64() * 1e3);
                len = ring.len();
                let mut count = vec![0usize; n];
                let mut x = 77 + set;
                for _ in 0..ips {
                    let ip = Ipv4Addr::from(splitmix(&mut x) as u32);
                    if let Some(i) = ring.primary(&Key::from_ip(IpAddr::V4(ip), 32, 64)) {
                        count[i] += 1;
                    }
                }
                let mean = ips as f64 / n as f64;
                let max = *count.iter().max().unwrap_or(&0) as f64;
                worst_sample = worst_sample.max(max / mean);
                let exact = (0..n).map(|i| ring.share_of(i)).fold(0f64, f64::max) * n as f64;
                worst_exact = worst_exact.max(exact);
            }
            println!("{ppw:<5} {n:<6} {len:<8} {worst_sample:<17.4} {worst_exact:<15.4} {worst_build:.1}");
        }
    }
}
