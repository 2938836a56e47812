//! The agent's part of `/status` (see [`super::status`]): a pool's `[agent]`
//! settings and what each node's agent reported, a third fact beside health and
//! the operator's state.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::status::{duration, rfc3339, rfc3339_opt};
use crate::config::AgentConfig;
use crate::pool::{AgentCheck, AgentState};

/// A pool's `[agent]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentSettingsStatus {
    pub port: u16,
    #[serde(serialize_with = "duration")]
    pub interval: Duration,
    #[serde(serialize_with = "duration")]
    pub timeout: Duration,
    pub send: Option<String>,
}

impl From<&AgentConfig> for AgentSettingsStatus {
    fn from(a: &AgentConfig) -> AgentSettingsStatus {
        AgentSettingsStatus {
            port: a.port,
            interval: a.interval,
            timeout: a.timeout,
            send: a.send.clone(),
        }
    }
}

/// What a node's agent reported: a third fact beside health (`state`) and the
/// operator's state (`admin_state`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentStatus {
    /// `up` or `down` (`up` until the agent says otherwise).
    pub state: String,
    /// The health word as the agent wrote it (`down`, `fail`, `stopped`, `up`;
    /// empty until it said one).
    pub word: String,
    /// The text after `#` that came with it.
    pub reason: String,
    /// `ready`, `drain` or `maint`.
    pub admin_state: String,
    /// The agent's weight, in percent of the configured weight (100 when it gave
    /// none).
    pub weight_percent: f64,
    /// The weight as the agent gave it (`50%`, `weight:3`; `null`: none).
    pub weight: Option<String>,
    /// The agent's `maxconn` (`null`: none, the configured cap applies; 0: no cap).
    pub maxconn: Option<u64>,
    /// The agent lets the node take new clients.
    pub serving: bool,
    /// When the agent last changed any of the above (`null`: never).
    #[serde(serialize_with = "rfc3339_opt")]
    pub since: Option<SystemTime>,
    pub checks: u64,
    pub failures: u64,
    pub last_check: Option<AgentCheckStatus>,
    /// The last check that failed or carried ignored words.
    pub last_error: Option<AgentCheckStatus>,
}

/// One agent check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentCheckStatus {
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    /// `ok`, `connect`, `timeout`, `io` or `invalid`.
    pub result: String,
    /// The line read, or what went wrong.
    pub detail: String,
}

impl From<&AgentCheck> for AgentCheckStatus {
    fn from(c: &AgentCheck) -> AgentCheckStatus {
        AgentCheckStatus {
            at: c.at,
            result: c.result.as_str().to_string(),
            detail: c.detail.clone(),
        }
    }
}

impl AgentStatus {
    pub(super) fn of(st: &AgentState, configured_weight: u32) -> AgentStatus {
        let a = &st.set;
        AgentStatus {
            state: a.oper.as_str().to_string(),
            word: a.oper_word.clone(),
            reason: a.reason.clone(),
            admin_state: a.admin.as_str().to_string(),
            weight_percent: a.weight.map_or(100.0, |w| {
                (w.percent_of(configured_weight) * 100.0).round() / 100.0
            }),
            weight: a.weight.map(|w| w.text()),
            maxconn: a.maxconn,
            serving: st.serving(),
            since: st.since,
            checks: st.checks,
            failures: st.failures,
            last_check: st.last.as_ref().map(AgentCheckStatus::from),
            last_error: st.last_error.as_ref().map(AgentCheckStatus::from),
        }
    }
}
