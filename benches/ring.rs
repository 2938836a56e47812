//! Ring benchmarks (criterion): build for 3/10/100 nodes at the default
//! `points_per_weight` (or `RINGLB_BENCH_PPW`), lookup ns/op with keys prepared
//! outside the timed loop, and the rebuild when one node goes down.
//! Targets at 100 nodes: lookup <= 300 ns, rebuild <= 50 ms. `rebuild_*_from_previous`
//! is what a pool does on a health or weight change ([`Ring::rebuild`]): the
//! previous ring's points are kept in order and only the missing ones are hashed.
//! Lookups cycle through 65,536 distinct keys, so the ring's upper levels are warm
//! but the points themselves are mostly cache misses, as with many clients
//! (`lookup_primary_4096_keys`: the 4,096 keys earlier versions of this bench used).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ringlb::ring::{Key, Ring, RingNode, RingPoints};

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i:03}")).collect()
}

fn ring_nodes(names: &[String]) -> Vec<RingNode<'_>> {
    names
        .iter()
        .map(|name| RingNode { name, weight: 1 })
        .collect()
}

fn keys(n: usize) -> Vec<Key> {
    let mut x: u32 = 0x9E37_79B9;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            Key::from_ip(IpAddr::V4(Ipv4Addr::from(x)), 32, 64)
        })
        .collect()
}

/// Points per weight unit under test: `RINGLB_BENCH_PPW`, else the default.
fn points_per_weight() -> u32 {
    std::env::var("RINGLB_BENCH_PPW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ringlb::config::defaults::POINTS_PER_WEIGHT)
}

const KEYS: usize = 1 << 16;

fn bench(c: &mut Criterion) {
    let ppw = points_per_weight();
    let ks = keys(KEYS);
    for n in [3usize, 10, 100] {
        let names = names(n);
        let nodes = ring_nodes(&names);
        c.bench_with_input(BenchmarkId::new("build", n), &nodes, |b, nodes| {
            b.iter(|| Ring::new(black_box(nodes), ppw))
        });
        let ring = Ring::new(&nodes, ppw);
        c.bench_with_input(
            BenchmarkId::new("lookup_primary_4096_keys", n),
            &ring,
            |b, ring| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) & 4095;
                    ring.primary(black_box(&ks[i]))
                })
            },
        );
        c.bench_with_input(BenchmarkId::new("lookup_primary", n), &ring, |b, ring| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (KEYS - 1);
                ring.primary(black_box(&ks[i]))
            })
        });
        c.bench_with_input(
            BenchmarkId::new("lookup_3_candidates", n),
            &ring,
            |b, ring| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) & (KEYS - 1);
                    ring.candidates(black_box(&ks[i]), 3).fold(0, |a, x| a ^ x)
                })
            },
        );
        let without_one = ring_nodes(&names[1..]);
        c.bench_with_input(
            BenchmarkId::new("rebuild_one_down", n),
            &without_one,
            |b, nodes| b.iter(|| Ring::new(black_box(nodes), ppw)),
        );
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let down: Vec<RingPoints> = names[1..]
            .iter()
            .map(|name| RingPoints { name, points: ppw })
            .collect();
        c.bench_with_input(
            BenchmarkId::new("rebuild_one_down_from_previous", n),
            &down,
            |b, down| b.iter(|| Ring::rebuild(&ring, &name_refs, black_box(down))),
        );
        let back = ring_nodes(&names);
        let without = Ring::new(&without_one, ppw);
        let without_refs: Vec<&str> = name_refs[1..].to_vec();
        c.bench_with_input(
            BenchmarkId::new("rebuild_one_up_from_previous", n),
            &back,
            |b, back| {
                b.iter(|| {
                    let back: Vec<RingPoints> = back
                        .iter()
                        .map(|n| RingPoints {
                            name: n.name,
                            points: ppw,
                        })
                        .collect();
                    Ring::rebuild(&without, &without_refs, black_box(&back))
                })
            },
        );
        eprintln!(
            "ring at {n} nodes x {ppw} points: {} points, {} bytes",
            ring.len(),
            ring.heap_bytes()
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
