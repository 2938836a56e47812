//! Limits on config values: anything outside is refused by validation with a
//! reason. Constants only; no logic, no I/O.

use std::time::Duration;

pub const WEIGHT: std::ops::RangeInclusive<u32> = 1..=256;
pub const POINTS_PER_WEIGHT: std::ops::RangeInclusive<u32> = 1..=65_536;
pub const CONNECT_ATTEMPTS: std::ops::RangeInclusive<u32> = 1..=16;
pub const MAX_CONNECTIONS: std::ops::RangeInclusive<usize> = 1..=1_000_000;
pub const BACKLOG: std::ops::RangeInclusive<u32> = 1..=65_535;
pub const KEY_PREFIX_V4: std::ops::RangeInclusive<u8> = 1..=32;
pub const KEY_PREFIX_V6: std::ops::RangeInclusive<u8> = 1..=128;
/// Total ring points of one pool: 2^23, 128 MiB of ring at 16 bytes a point
/// (the default 16,384 points per weight allows 512 weight units).
pub const MAX_POOL_POINTS: u64 = 8_388_608;
pub const MAX_NODES_PER_POOL: usize = 4_096;
pub const CONNECT_TIMEOUT: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(300));
pub const IDLE_TIMEOUT: (Duration, Duration) = (
    Duration::from_millis(100),
    Duration::from_secs(30 * 24 * 3600),
);
pub const SHUTDOWN_GRACE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(24 * 3600));
/// A BGP withdrawal converges in seconds; an hour is far past any sane delay.
pub const WITHDRAW_DELAY: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(3600));
pub const UPGRADE_TIMEOUT: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(600));
pub const HEALTH_INTERVAL: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(3600));
pub const HEALTH_TIMEOUT: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(600));
pub const RISE_FALL: std::ops::RangeInclusive<u32> = 1..=100;
pub const PASSIVE_FAILURES: std::ops::RangeInclusive<u32> = 0..=1000;
pub const HEALTH_PORT: std::ops::RangeInclusive<u16> = 1..=65535;
pub const WORKERS: std::ops::RangeInclusive<usize> = 1..=1024;
/// Longest `expect_body` (the probe reads at most 64 KiB of body).
pub const EXPECT_BODY_LEN: usize = 1024;
/// A node's `max_connections` (HAProxy `maxconn`, nginx `max_conns`), when set.
pub const NODE_MAX_CONNECTIONS: std::ops::RangeInclusive<u32> = 1..=1_000_000;
pub const MAX_CONNECTIONS_PER_IP: std::ops::RangeInclusive<u32> = 1..=1_000_000;
pub const NEW_CONNECTIONS_PER_IP_PER_SEC: std::ops::RangeInclusive<u32> = 1..=1_000_000;
/// Entries of one `allow` or `deny` list.
pub const ACCESS_LIST_LEN: usize = 10_000;
/// Shortest admin token (a bearer secret guessable in fewer tries is no secret).
pub const ADMIN_TOKEN_MIN_LEN: usize = 16;
pub const ADMIN_TOKEN_MAX_LEN: usize = 4096;
pub const PROXY_HEADER_TIMEOUT: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(60));
/// `balance_factor`: 1.0 (every node at most one above the average) to 100.
pub const BALANCE_FACTOR: (f64, f64) = (1.0, 100.0);
/// `tcp_keepalive.idle` and `.interval`: whole seconds, as the kernel takes
/// them (`TCP_KEEPIDLE`, `TCP_KEEPINTVL`: 1 to 32767).
pub const KEEPALIVE_TIME: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(32_767));
/// `tcp_keepalive.count` (`TCP_KEEPCNT`: 1 to 127).
pub const KEEPALIVE_COUNT: std::ops::RangeInclusive<u32> = 1..=127;
/// `close_rate`: 0 (unpaced) to 100,000 closes per second.
pub const CLOSE_RATE: std::ops::RangeInclusive<u32> = 0..=100_000;
pub const REHOME_AFTER: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(24 * 3600));
pub const REHOME_RATE: std::ops::RangeInclusive<u32> = 1..=100_000;
pub const MAX_CONNECTION_DURATION: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(365 * 24 * 3600));
pub const MAX_CONNECTION_DURATION_JITTER: (Duration, Duration) =
    (Duration::ZERO, Duration::from_secs(365 * 24 * 3600));
pub const ACCESS_LOG_INTERVAL: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(24 * 3600));
/// `agent.interval` and `agent.timeout` (as the health check's).
pub const AGENT_INTERVAL: (Duration, Duration) = HEALTH_INTERVAL;
pub const AGENT_TIMEOUT: (Duration, Duration) = HEALTH_TIMEOUT;
/// Longest `agent.send`.
pub const AGENT_SEND_LEN: usize = 1024;
/// `[pools.NAME.discover]`: time between two resolutions.
pub const DISCOVER_INTERVAL: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(24 * 3600));
/// How long a node may be missing from the answers before it leaves (0: at once).
pub const DISCOVER_REMOVE_AFTER: (Duration, Duration) =
    (Duration::ZERO, Duration::from_secs(7 * 24 * 3600));
