//! Who may connect: a listener's `allow`/`deny` networks, and per-client limits
//! (open connections per address, and a token bucket of new connections per
//! address). Checked on accept, before any node is contacted.
//!
//! Per-client state lives in the listener's shared part, so it survives reloads;
//! it exists only while a per-client limit is configured, and an address's entry
//! is dropped as soon as it holds no connection and its bucket is full again, so
//! memory follows the clients seen in the last seconds, not all clients ever.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::AccessConfig;
use crate::metrics::RejectReason;

/// Shards of the per-client table (accepts from many threads rarely contend).
const SHARDS: usize = 16;
/// How often a shard drops entries that carry no information any more.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The address a client is matched and counted by: IPv4-mapped IPv6 addresses (a
/// dual-stack listener's IPv4 clients) as IPv4.
pub fn client_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The key per-client limits count by: the IPv4 address, or the IPv6 /64 (one
/// IPv6 host usually holds a whole /64 and can pick any address in it).
pub fn per_ip_key(ip: IpAddr) -> IpAddr {
    match client_ip(ip) {
        IpAddr::V4(a) => IpAddr::V4(a),
        IpAddr::V6(a) => {
            let s = a.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// `deny` first, then `allow` (when given). `ip` is already canonical.
pub fn check_lists(cfg: &AccessConfig, ip: IpAddr) -> Result<(), RejectReason> {
    if cfg.deny.iter().any(|n| n.contains(&ip)) {
        return Err(RejectReason::Denied);
    }
    if !cfg.allow.is_empty() && !cfg.allow.iter().any(|n| n.contains(&ip)) {
        return Err(RejectReason::NotAllowed);
    }
    Ok(())
}

#[derive(Debug)]
struct Entry {
    active: u32,
    tokens: f64,
    refilled: Instant,
}

#[derive(Debug)]
struct Shard {
    map: HashMap<IpAddr, Entry>,
    swept: Instant,
}

/// Open connections and new-connection buckets per client address.
#[derive(Debug)]
pub struct PerIp {
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for PerIp {
    fn default() -> Self {
        PerIp::new()
    }
}

impl PerIp {
    pub fn new() -> PerIp {
        let now = Instant::now();
        PerIp {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        swept: now,
                    })
                })
                .collect(),
            hasher: Default::default(),
        }
    }

    fn shard(&self, key: &IpAddr) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admit one new connection from `key` (see [`per_ip_key`]) under `cfg`'s
    /// limits. On success the connection is counted until [`release`](Self::release).
    pub fn admit(&self, key: IpAddr, cfg: &AccessConfig, now: Instant) -> Result<(), RejectReason> {
        let mut shard = self.shard(&key);
        if now.saturating_duration_since(shard.swept) >= SWEEP_EVERY {
            shard.swept = now;
            shard
                .map
                .retain(|_, e| e.active > 0 || refill(e, cfg, now) < full(cfg));
        }
        let e = shard.map.entry(key).or_insert(Entry {
            active: 0,
            tokens: full(cfg),
            refilled: now,
        });
        if cfg.new_connections_per_ip.is_some() {
            if refill(e, cfg, now) < 1.0 {
                return Err(RejectReason::PerIpRate);
            }
            e.tokens -= 1.0;
        }
        if let Some(max) = cfg.max_connections_per_ip {
            if e.active >= max {
                return Err(RejectReason::PerIpConnections);
            }
        }
        e.active += 1;
        Ok(())
    }

    /// A connection admitted by [`admit`](Self::admit) ended. The address is
    /// forgotten at once when it holds nothing more and its bucket is full.
    pub fn release(&self, key: IpAddr, cfg: &AccessConfig, now: Instant) {
        let mut shard = self.shard(&key);
        if let Some(e) = shard.map.get_mut(&key) {
            e.active = e.active.saturating_sub(1);
            if e.active == 0 && refill(e, cfg, now) >= full(cfg) {
                shard.map.remove(&key);
            }
        }
    }

    /// Addresses with state (open connections or a bucket not yet full).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }

    /// Open connections counted for `key`.
    pub fn active(&self, key: IpAddr) -> u32 {
        self.shard(&key).map.get(&key).map_or(0, |e| e.active)
    }
}

fn full(cfg: &AccessConfig) -> f64 {
    cfg.new_connections_per_ip
        .map_or(0.0, |r| f64::from(r.burst))
}

/// Bring the bucket up to `now`; returns the tokens.
fn refill(e: &mut Entry, cfg: &AccessConfig, now: Instant) -> f64 {
    if let Some(r) = cfg.new_connections_per_ip {
        let dt = now.saturating_duration_since(e.refilled).as_secs_f64();
        e.tokens = (e.tokens + dt * f64::from(r.per_sec)).min(f64::from(r.burst));
    } else {
        e.tokens = 0.0;
    }
    e.refilled = now;
    e.tokens
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimit;

    fn net(s: &str) -> ipnet::IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deny_wins_over_allow_and_allow_limits_the_rest() {
        let cfg = AccessConfig {
            allow: vec![net("10.0.0.0/8"), net("2001:db8::/32")],
            deny: vec![net("10.9.0.0/16")],
            ..Default::default()
        };
        assert_eq!(check_lists(&cfg, ip("10.1.2.3")), Ok(()));
        assert_eq!(check_lists(&cfg, ip("2001:db8::1")), Ok(()));
        assert_eq!(check_lists(&cfg, ip("10.9.1.1")), Err(RejectReason::Denied));
        assert_eq!(
            check_lists(&cfg, ip("192.0.2.1")),
            Err(RejectReason::NotAllowed)
        );
        assert_eq!(
            check_lists(&cfg, ip("2001:db9::1")),
            Err(RejectReason::NotAllowed)
        );
        let open = AccessConfig::default();
        assert_eq!(check_lists(&open, ip("192.0.2.1")), Ok(()));
    }

    #[test]
    fn mapped_ipv4_is_matched_as_ipv4_and_ipv6_counts_per_64() {
        let mapped = ip("::ffff:10.1.2.3");
        assert_eq!(client_ip(mapped), ip("10.1.2.3"));
        let cfg = AccessConfig {
            deny: vec![net("10.0.0.0/8")],
            ..Default::default()
        };
        assert_eq!(
            check_lists(&cfg, client_ip(mapped)),
            Err(RejectReason::Denied)
        );
        assert_eq!(per_ip_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(per_ip_key(ip("2001:db8:1:2:bbbb::9")), ip("2001:db8:1:2::"));
        assert_eq!(per_ip_key(mapped), ip("10.1.2.3"));
    }

    #[test]
    fn max_connections_per_ip_counts_open_connections_per_address() {
        let cfg = AccessConfig {
            max_connections_per_ip: Some(2),
            ..Default::default()
        };
        let t = PerIp::new();
        let now = Instant::now();
        let a = ip("10.0.0.1");
        let b = ip("10.0.0.2");
        assert_eq!(t.admit(a, &cfg, now), Ok(()));
        assert_eq!(t.admit(a, &cfg, now), Ok(()));
        assert_eq!(t.admit(a, &cfg, now), Err(RejectReason::PerIpConnections));
        assert_eq!(
            t.admit(b, &cfg, now),
            Ok(()),
            "another address is unaffected"
        );
        t.release(a, &cfg, now);
        assert_eq!(t.active(a), 1);
        assert_eq!(t.admit(a, &cfg, now), Ok(()));
        t.release(a, &cfg, now);
        t.release(a, &cfg, now);
        assert_eq!(t.tracked(), 1, "a holds nothing more and is forgotten");
        t.release(b, &cfg, now);
        assert_eq!(t.tracked(), 0);
        // A release that does not match an admit (limit added by a reload) is harmless.
        t.release(b, &cfg, now);
        assert_eq!(t.admit(b, &cfg, now), Ok(()));
        assert_eq!(t.active(b), 1);
    }

    #[test]
    fn buckets_are_forgotten_once_full_again() {
        let cfg = AccessConfig {
            new_connections_per_ip: Some(RateLimit {
                per_sec: 100,
                burst: 100,
            }),
            ..Default::default()
        };
        let t = PerIp::new();
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let k = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            t.admit(k, &cfg, t0).unwrap();
            t.release(k, &cfg, t0);
        }
        assert_eq!(t.tracked(), 1000, "buckets not full yet");
        // Two seconds later every bucket is full: each shard's next admit sweeps it.
        let later = t0 + Duration::from_secs(2);
        for i in 0..1000u32 {
            let k = IpAddr::from((0x0b00_0000 + i).to_be_bytes());
            t.admit(k, &cfg, later).unwrap();
        }
        assert_eq!(t.tracked(), 1000, "only the 1,000 new addresses remain");
    }

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let cfg = AccessConfig {
            new_connections_per_ip: Some(RateLimit {
                per_sec: 10,
                burst: 5,
            }),
            ..Default::default()
        };
        let t = PerIp::new();
        let t0 = Instant::now();
        let a = ip("192.0.2.7");
        for _ in 0..5 {
            t.admit(a, &cfg, t0).unwrap();
            t.release(a, &cfg, t0);
        }
        assert_eq!(t.admit(a, &cfg, t0), Err(RejectReason::PerIpRate));
        assert_eq!(t.admit(ip("192.0.2.8"), &cfg, t0), Ok(()));
        // 10/s: one token per 100 ms.
        assert_eq!(
            t.admit(a, &cfg, t0 + Duration::from_millis(50)),
            Err(RejectReason::PerIpRate)
        );
        assert_eq!(t.admit(a, &cfg, t0 + Duration::from_millis(110)), Ok(()));
        assert_eq!(
            t.admit(a, &cfg, t0 + Duration::from_millis(120)),
            Err(RejectReason::PerIpRate)
        );
        // A long pause refills to the burst, never beyond.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            t.admit(a, &cfg, later).unwrap();
        }
        assert_eq!(t.admit(a, &cfg, later), Err(RejectReason::PerIpRate));
    }
}
