//! Validation of `[pools.NAME.agent]`, the capacity reports of HAProxy's
//! `agent-check` (kept out of `validate.rs`, which has a size limit): `port`
//! required, `interval` and `timeout` within limits and the timeout shorter than
//! the interval, `send` short and not empty. Pure: no I/O.

use super::problems::Problems;
use super::raw::RawAgent;
use super::{defaults, fmt_duration, limits, AgentConfig};

impl AgentConfig {
    /// For `check`, the reload summary and status: `off`, or the port and timing.
    pub fn describe(a: Option<&AgentConfig>) -> String {
        match a {
            None => "off".to_string(),
            Some(a) => format!(
                "port {} every {} (timeout {}{})",
                a.port,
                fmt_duration(a.interval),
                fmt_duration(a.timeout),
                a.send
                    .as_ref()
                    .map(|s| format!(", send {s:?}"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// `[pools.NAME.agent]` of the pool at `pool_key`; `None` when absent or when
/// `port` is missing (its problem is reported).
pub(super) fn agent(
    p: &mut Problems,
    pool_key: &str,
    raw: Option<&RawAgent>,
) -> Option<AgentConfig> {
    let a = raw?;
    let key = format!("{pool_key}.agent");
    let port = match a.port {
        None => {
            p.push(
                format!("{key}.port"),
                "required: the TCP port of the agent on each node's IP (HAProxy's agent-port)",
            );
            None
        }
        Some(port) => Some(p.range(format!("{key}.port"), Some(port), port, 1..=65535)),
    };
    let interval = p.duration(
        format!("{key}.interval"),
        a.interval,
        defaults::AGENT_INTERVAL,
        limits::AGENT_INTERVAL,
    );
    let timeout = p.duration(
        format!("{key}.timeout"),
        a.timeout,
        defaults::AGENT_TIMEOUT,
        limits::AGENT_TIMEOUT,
    );
    p.timeout_below_interval(
        format!("{key}.timeout"),
        timeout,
        interval,
        "checks of the agent",
    );
    if let Some(send) = &a.send {
        if send.is_empty() {
            p.push(
                format!("{key}.send"),
                "must not be empty; leave send out to write nothing before reading the reply",
            );
        } else if send.len() > limits::AGENT_SEND_LEN {
            p.push(
                format!("{key}.send"),
                format!("longer than {} bytes", limits::AGENT_SEND_LEN),
            );
        }
    }
    Some(AgentConfig {
        port: port?,
        interval,
        timeout,
        send: a.send.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::tests::MIN;
    use crate::config::{AgentConfig, Config};

    fn with_agent(table: &str) -> Result<Config, String> {
        let text = format!("{MIN}\n[pools.web.agent]\n{table}\n");
        Config::parse(&text, "a.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_haproxy_and_no_table_means_no_agent() {
        assert_eq!(
            Config::parse(MIN, "m.toml").unwrap().pools["web"].agent,
            None
        );
        let c = with_agent("port = 9999").unwrap();
        assert_eq!(
            c.pools["web"].agent,
            Some(AgentConfig {
                port: 9999,
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                send: None,
            })
        );
        let c =
            with_agent("port = 1\ninterval = \"500ms\"\ntimeout = \"100ms\"\nsend = \"status\\n\"")
                .unwrap();
        let a = c.pools["web"].agent.clone().unwrap();
        assert_eq!(
            (a.port, a.interval, a.timeout, a.send.as_deref()),
            (
                1,
                Duration::from_millis(500),
                Duration::from_millis(100),
                Some("status\n")
            )
        );
    }

    #[test]
    fn every_bad_value_is_named_with_its_key() {
        for (table, want) in [
            ("", "pools.web.agent.port: required"),
            (
                "port = 0",
                "pools.web.agent.port: 0 is out of range 1..=65535",
            ),
            ("port = 70000", "a.toml:12:8: pools.web.agent.port: "),
            (
                "port = 9\ninterval = \"0s\"",
                "pools.web.agent.interval: must be greater than zero",
            ),
            (
                "port = 9\ntimeout = \"2s\"",
                "pools.web.agent.timeout: 2s must be shorter than interval (2s)",
            ),
            (
                "port = 9\ninterval = \"500ms\"",
                "pools.web.agent.timeout: 1s must be shorter than interval (500ms)",
            ),
            (
                "port = 9\nsend = \"\"",
                "pools.web.agent.send: must not be empty",
            ),
            (
                "port = 9\nprot = 1",
                "a.toml:13:1: pools.web.agent.prot: unknown field `prot`",
            ),
            ("port = 9\ninterval = 2", "pools.web.agent.interval"),
        ] {
            let e = with_agent(table).unwrap_err();
            assert!(e.contains(want), "{table:?}: {e}");
        }
        let long = format!("port = 9\nsend = \"{}\"", "x".repeat(1025));
        assert!(with_agent(&long)
            .unwrap_err()
            .contains("pools.web.agent.send: longer than 1024 bytes"));
    }
}
