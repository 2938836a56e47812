//! Defaults for keys left out of the file, in one place; `config/ringlb.toml`
//! documents the same values. Constants only; no logic, no I/O.

use std::time::Duration;

pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);
pub const WITHDRAW_DELAY: Duration = Duration::ZERO;
pub const MAX_CONNECTIONS: usize = 50_000;
pub const BACKLOG: u32 = 4_096;
pub const IPV6_ONLY: bool = true;
pub const POINTS_PER_WEIGHT: u32 = 16_384;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
pub const CONNECT_ATTEMPTS: u32 = 3;
pub const KEY_PREFIX_V4: u8 = 32;
pub const KEY_PREFIX_V6: u8 = 64;
pub const WEIGHT: u32 = 1;
pub const ON_NODE_DOWN: super::OnNodeDown = super::OnNodeDown::Keep;
pub const WHEN_ALL_DOWN: super::WhenAllDown = super::WhenAllDown::Reject;
/// With active health checks; 0 when `health.kind = "none"`.
pub const PASSIVE_FAILURES: u32 = 3;
pub const HEALTH_KIND: super::HealthKind = super::HealthKind::Tcp;
pub const HEALTH_PATH: &str = "/";
pub const EXPECT_STATUS: &str = "200-399";
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const RISE: u32 = 2;
pub const FALL: u32 = 3;
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(3);
/// Closes per second per pool: a 3-node pool of 10,000 clients loses one node's
/// 3,333 connections over 33 s, so the other nodes see 100 reconnects a second.
pub const CLOSE_RATE: u32 = 100;
pub const REHOME_AFTER: Duration = Duration::from_secs(30);
pub const REHOME_RATE: u32 = 20;
pub const MAX_CONNECTION_DURATION_JITTER: Duration = Duration::ZERO;
/// HAProxy's `agent-inter` default.
pub const AGENT_INTERVAL: Duration = Duration::from_secs(2);
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(1);
