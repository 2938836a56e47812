//! Validation of the keys that decide when ringlb closes connections itself and
//! how fast: a pool's `close_rate` and `rehome`, a listener's
//! `max_connection_duration` (with its jitter) and `access_log_interval`. Pure.

use std::time::Duration;

use super::problems::Problems;
use super::raw::{RawListener, RawRehome};
use super::{defaults, limits, Lifetime, Rehome};

/// `pools.NAME.close_rate` (`key` is the pool's).
pub(super) fn close_rate(p: &mut Problems, key: &str, v: Option<u32>) -> u32 {
    p.range(
        format!("{key}.close_rate"),
        v,
        defaults::CLOSE_RATE,
        limits::CLOSE_RATE,
    )
}

/// `pools.NAME.rehome` (`key` is the pool's): absent is off; a table takes the
/// defaults for what it leaves out.
pub(super) fn rehome(p: &mut Problems, key: &str, raw: Option<&RawRehome>) -> Option<Rehome> {
    let raw = raw?;
    let after = p.duration(
        format!("{key}.rehome.after"),
        raw.after,
        defaults::REHOME_AFTER,
        limits::REHOME_AFTER,
    );
    let rate = p.range(
        format!("{key}.rehome.rate"),
        raw.rate,
        defaults::REHOME_RATE,
        limits::REHOME_RATE,
    );
    Some(Rehome { after, rate })
}

/// `listener[i].max_connection_duration` and `_jitter` (`key` is the listener's).
pub(super) fn lifetime(p: &mut Problems, key: &str, l: &RawListener) -> Lifetime {
    let jitter = p.duration(
        format!("{key}.max_connection_duration_jitter"),
        l.max_connection_duration_jitter,
        defaults::MAX_CONNECTION_DURATION_JITTER,
        limits::MAX_CONNECTION_DURATION_JITTER,
    );
    let Some(max) = l.max_connection_duration else {
        if l.max_connection_duration_jitter.is_some() {
            p.push(
                format!("{key}.max_connection_duration_jitter"),
                "needs max_connection_duration (the jitter is added to it)",
            );
        }
        return Lifetime::default();
    };
    let max = p.duration(
        format!("{key}.max_connection_duration"),
        Some(max),
        max,
        limits::MAX_CONNECTION_DURATION,
    );
    Lifetime {
        max: Some(max),
        jitter,
    }
}

/// `listener[i].access_log_interval` (`key` is the listener's).
pub(super) fn access_log_interval(
    p: &mut Problems,
    key: &str,
    l: &RawListener,
) -> Option<Duration> {
    let v = l.access_log_interval?;
    Some(p.duration(
        format!("{key}.access_log_interval"),
        Some(v),
        v,
        limits::ACCESS_LOG_INTERVAL,
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{Config, Rehome};

    fn parse(listener: &str, pool: &str) -> Result<Config, String> {
        Config::parse(
            &format!(
                "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n{listener}\n[pools.p]\n{pool}\n[[pools.p.nodes]]\naddr = \"127.0.0.1:1001\"\n"
            ),
            "t.toml",
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_pace_closes_and_leave_rehome_lifetime_and_interval_log_off() {
        let c = parse("", "").unwrap();
        let p = &c.pools["p"];
        assert_eq!(p.close_rate, 100);
        assert_eq!(p.rehome, None);
        assert_eq!(c.listeners[0].lifetime.max, None);
        assert_eq!(c.listeners[0].access_log_interval, None);
    }

    #[test]
    fn keys_parse_and_tables_take_defaults() {
        let c = parse(
            "max_connection_duration = \"1h\"\nmax_connection_duration_jitter = \"10m\"\naccess_log_interval = \"5m\"",
            "close_rate = 0\nrehome = { after = \"1s\", rate = 5 }",
        )
        .unwrap();
        let p = &c.pools["p"];
        assert_eq!(p.close_rate, 0);
        assert_eq!(
            p.rehome,
            Some(Rehome {
                after: Duration::from_secs(1),
                rate: 5
            })
        );
        let l = &c.listeners[0];
        assert_eq!(l.lifetime.max, Some(Duration::from_secs(3600)));
        assert_eq!(l.lifetime.jitter, Duration::from_secs(600));
        assert_eq!(l.access_log_interval, Some(Duration::from_secs(300)));
        let c = parse("", "rehome = {}").unwrap();
        assert_eq!(
            c.pools["p"].rehome,
            Some(Rehome {
                after: Duration::from_secs(30),
                rate: 20
            })
        );
    }

    #[test]
    fn bad_values_name_the_key_and_the_reason() {
        for (listener, pool, want) in [
            (
                "",
                "close_rate = 200000",
                "pools.p.close_rate: 200000 is out of range 0..=100000",
            ),
            ("", "close_rate = -1", "close_rate"),
            (
                "",
                "rehome = { rate = 0 }",
                "pools.p.rehome.rate: 0 is out of range",
            ),
            ("", "rehome = { after = \"soon\" }", "rehome"),
            ("", "rehome = { every = \"1s\" }", "unknown field `every`"),
            (
                "max_connection_duration = \"0s\"",
                "",
                "listener[0].max_connection_duration: must be greater than zero",
            ),
            (
                "max_connection_duration = \"500ms\"",
                "",
                "listener[0].max_connection_duration: 500ms is too short",
            ),
            (
                "max_connection_duration_jitter = \"1s\"",
                "",
                "listener[0].max_connection_duration_jitter: needs max_connection_duration",
            ),
            (
                "access_log_interval = \"10ms\"",
                "",
                "listener[0].access_log_interval: 10ms is too short",
            ),
        ] {
            let e = parse(listener, pool).unwrap_err();
            assert!(e.contains(want), "{listener} {pool}: {e}");
        }
    }
}
