//! Seeded random node names and addresses for the ring's spread measurements,
//! shared by `benches/ring_spread.rs` and `tests/ring_spread.rs`.

/// splitmix64: the next pseudo-random number of the sequence in `x`.
pub fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` distinct random names, 3..=24 characters of [a-z0-9.-], from `seed`.
pub fn names(n: usize, seed: u64) -> Vec<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789.-";
    let mut x = seed;
    let mut out: Vec<String> = Vec::with_capacity(n);
    while out.len() < n {
        let len = 3 + (splitmix(&mut x) % 22) as usize;
        let name: String = (0..len)
            .map(|_| ALPHABET[(splitmix(&mut x) % ALPHABET.len() as u64) as usize] as char)
            .collect();
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}
