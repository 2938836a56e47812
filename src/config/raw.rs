//! The TOML file as written: serde types with `deny_unknown_fields` everywhere,
//! every key optional where the file may leave it out. No checks and no I/O
//! here; `validate` turns a [`RawConfig`] into a [`Config`](super::Config).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{AdminState, HealthKind, OnNodeDown, ProxyProtocol, WhenAllDown};

/// The TOML file as written. Use [`Config::from_file`](super::Config::from_file) /
/// [`Config::parse`](super::Config::parse) to get a validated
/// [`Config`](super::Config).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default, deserialize_with = "super::duration::option")]
    pub shutdown_grace: Option<Duration>,
    #[serde(default, deserialize_with = "super::duration::option")]
    pub upgrade_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "super::duration::option")]
    pub withdraw_delay: Option<Duration>,
    pub pid_file: Option<PathBuf>,
    pub workers: Option<usize>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub pools: BTreeMap<String, RawPool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: String,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub listen: String,
    pub pool: String,
    pub max_connections: Option<usize>,
    pub backlog: Option<u32>,
    pub ipv6_only: Option<bool>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub max_connections_per_ip: Option<u32>,
    pub new_connections_per_ip_per_sec: Option<u32>,
    pub new_connections_per_ip_burst: Option<u32>,
    pub accept_proxy_protocol: Option<bool>,
    pub trusted_proxies: Option<Vec<String>>,
    #[serde(default, deserialize_with = "super::duration::option")]
    pub proxy_header_timeout: Option<Duration>,
    pub tcp_keepalive: Option<RawKeepalive>,
    #[serde(default, deserialize_with = "super::duration::option")]
    pub max_connection_duration: Option<Duration>,
    #[serde(default, deserialize_with = "super::duration::option")]
    pub max_connection_duration_jitter: Option<Duration>,
    #[serde(default, deserialize_with = "super::duration::option")]
    pub access_log_interval: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub points_per_weight: Option<u32>,
    #[serde(default, deserialize_with = "super::duration::option")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "super::duration::option")]
    pub idle_timeout: Option<Duration>,
    pub connect_attempts: Option<u32>,
    pub key_prefix_v4: Option<u8>,
    pub key_prefix_v6: Option<u8>,
    pub on_node_down: Option<OnNodeDown>,
    pub when_all_down: Option<WhenAllDown>,
    pub passive_failures: Option<u32>,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub balance_factor: Option<f64>,
    pub tcp_keepalive: Option<RawKeepalive>,
    pub health: Option<RawHealth>,
    pub close_rate: Option<u32>,
    pub rehome: Option<RawRehome>,
    pub agent: Option<RawAgent>,
    /// `nodes` is an option so that `discover` can stand in for it.
    pub nodes: Option<Vec<RawNode>>,
    pub discover: Option<RawDiscover>,
}

/// `[pools.NAME.discover]` as written: the pool's nodes from DNS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscover {
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub port: Option<u16>,
    #[serde(default, deserialize_with = "super::duration::option")]
    pub interval: Option<Duration>,
    pub resolver: Option<String>,
    #[serde(default, deserialize_with = "super::duration::option")]
    pub remove_after: Option<Duration>,
}

/// `rehome = { after = "30s", rate = 20 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRehome {
    #[serde(default, deserialize_with = "super::duration::option")]
    pub after: Option<Duration>,
    pub rate: Option<u32>,
}

/// `[pools.NAME.agent]` as written (HAProxy's `agent-check`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub port: Option<u16>,
    #[serde(default, deserialize_with = "super::duration::option")]
    pub interval: Option<Duration>,
    #[serde(default, deserialize_with = "super::duration::option")]
    pub timeout: Option<Duration>,
    pub send: Option<String>,
}

/// `tcp_keepalive` as written: `true`, `false`, or a table of the three
/// settings (any of them may be left out).
#[derive(Debug, Clone, PartialEq)]
pub enum RawKeepalive {
    Flag(bool),
    Params(RawKeepaliveParams),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeepaliveParams {
    #[serde(default, deserialize_with = "super::duration::option")]
    pub idle: Option<Duration>,
    #[serde(default, deserialize_with = "super::duration::option")]
    pub interval: Option<Duration>,
    pub count: Option<u32>,
}

impl<'de> Deserialize<'de> for RawKeepalive {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawKeepalive;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false, or a table such as { idle = \"60s\", interval = \"10s\", count = 6 }")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RawKeepalive, E> {
                Ok(RawKeepalive::Flag(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawKeepalive, A::Error> {
                RawKeepaliveParams::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawKeepalive::Params)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub kind: Option<HealthKind>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub expect_status: Option<String>,
    pub expect_body: Option<String>,
    pub port: Option<u16>,
    #[serde(default, deserialize_with = "super::duration::option")]
    pub interval: Option<Duration>,
    #[serde(default, deserialize_with = "super::duration::option")]
    pub timeout: Option<Duration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub name: Option<String>,
    pub addr: String,
    pub weight: Option<u32>,
    pub state: Option<AdminState>,
    pub max_connections: Option<u32>,
}
