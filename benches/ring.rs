//! Ring benchmarks (criterion): build for 3/10/100 nodes x 160 points, lookup ns/op
//! with keys prepared outside the timed loop, and the rebuild when one node goes down.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ringlb::ring::{Key, Ring, RingNode};

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

fn bench(c: &mut Criterion) {
    let ks = keys(4096);
    for n in [3usize, 10, 100] {
        let names = names(n);
        let nodes = ring_nodes(&names);
        c.bench_with_input(BenchmarkId::new("build", n), &nodes, |b, nodes| {
            b.iter(|| Ring::new(black_box(nodes), 160))
        });
        let ring = Ring::new(&nodes, 160);
        c.bench_with_input(BenchmarkId::new("lookup_primary", n), &ring, |b, ring| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & 4095;
                ring.primary(black_box(&ks[i]))
            })
        });
        c.bench_with_input(
            BenchmarkId::new("lookup_3_candidates", n),
            &ring,
            |b, ring| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) & 4095;
                    ring.candidates(black_box(&ks[i]), 3).fold(0, |a, x| a ^ x)
                })
            },
        );
        let without_one = ring_nodes(&names[1..]);
        c.bench_with_input(
            BenchmarkId::new("rebuild_one_down", n),
            &without_one,
            |b, nodes| b.iter(|| Ring::new(black_box(nodes), 160)),
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
