//! The settings of a pool that connections and probes read, copied from the
//! validated [`PoolConfig`] at load and at each reload. Plain data: no I/O.

use std::time::Duration;

use crate::config::{
    AgentConfig, HealthConfig, Keepalive, OnNodeDown, PoolConfig, ProxyProtocol, Rehome,
    WhenAllDown,
};

/// Settings a connection or a probe needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub connect_attempts: u32,
    pub key_prefix_v4: u8,
    pub key_prefix_v6: u8,
    pub points_per_weight: u32,
    pub on_node_down: OnNodeDown,
    pub when_all_down: WhenAllDown,
    pub passive_failures: u32,
    pub proxy_protocol: ProxyProtocol,
    pub balance_factor_permille: Option<u32>,
    pub tcp_keepalive: Option<Keepalive>,
    pub health: HealthConfig,
    /// Closes per second ringlb decides on (0: unpaced).
    pub close_rate: u32,
    pub rehome: Option<Rehome>,
    pub agent: Option<AgentConfig>,
}

impl From<&PoolConfig> for PoolSettings {
    fn from(c: &PoolConfig) -> Self {
        PoolSettings {
            connect_timeout: c.connect_timeout,
            idle_timeout: c.idle_timeout,
            connect_attempts: c.connect_attempts,
            key_prefix_v4: c.key_prefix_v4,
            key_prefix_v6: c.key_prefix_v6,
            points_per_weight: c.points_per_weight,
            on_node_down: c.on_node_down,
            when_all_down: c.when_all_down,
            passive_failures: c.passive_failures,
            proxy_protocol: c.proxy_protocol,
            balance_factor_permille: c.balance_factor_permille,
            tcp_keepalive: c.tcp_keepalive,
            health: c.health.clone(),
            close_rate: c.close_rate,
            rehome: c.rehome,
            agent: c.agent.clone(),
        }
    }
}
