//! The `ringlb check` summary: a short human description of a validated
//! [`Config`]. Reads the kernel's keepalive defaults (/proc, through
//! [`keepalive`](crate::keepalive)) to say how long a vanished peer can go
//! unnoticed; otherwise pure. Opens no sockets and changes nothing.

use crate::config::{
    fmt_duration, AdminState, AgentConfig, Config, HealthKind, Keepalive, ProxyProtocol,
};

/// A short human summary, as printed by `ringlb check`.
pub fn summary(cfg: &Config) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: OK: {} listener{}, {} pool{}, {} node{}; shutdown_grace {}",
        cfg.source.display(),
        cfg.listeners.len(),
        plural(cfg.listeners.len()),
        cfg.pools.len(),
        plural(cfg.pools.len()),
        cfg.node_count(),
        plural(cfg.node_count()),
        fmt_duration(cfg.shutdown_grace)
    );
    if let Some(a) = &cfg.admin {
        let _ = writeln!(
            s,
            "  admin on {} (/metrics, /status, /){}",
            a.listen,
            if a.token.is_some() {
                ", bearer token required"
            } else {
                ""
            }
        );
    }
    if let Some(u) = &cfg.user {
        let _ = writeln!(
            s,
            "  runs as user {u}{} after binding",
            cfg.group
                .as_ref()
                .map(|g| format!(", group {g}"))
                .unwrap_or_default()
        );
    }
    if let Some(w) = cfg.workers {
        let _ = writeln!(s, "  workers {w}");
    }
    if let Some(p) = &cfg.pid_file {
        let _ = writeln!(s, "  pid_file {}", p.display());
    }
    for l in &cfg.listeners {
        let _ = writeln!(
            s,
            "  listener {:<12} {:<22} -> pool {} (max_connections {}, backlog {}{})",
            l.name,
            l.listen,
            l.pool,
            l.max_connections,
            l.backlog,
            if l.listen.is_ipv6() {
                format!(", ipv6_only {}", l.ipv6_only)
            } else {
                String::new()
            }
        );
        let a = &l.access;
        let mut rules = Vec::new();
        if !a.allow.is_empty() {
            rules.push(format!(
                "allow {} network{}",
                a.allow.len(),
                plural(a.allow.len())
            ));
        }
        if !a.deny.is_empty() {
            rules.push(format!(
                "deny {} network{}",
                a.deny.len(),
                plural(a.deny.len())
            ));
        }
        if let Some(m) = a.max_connections_per_ip {
            rules.push(format!("max_connections_per_ip {m}"));
        }
        if let Some(r) = a.new_connections_per_ip {
            rules.push(format!(
                "new_connections_per_ip {}/s burst {}",
                r.per_sec, r.burst
            ));
        }
        if !l.trusted_proxies.is_empty() {
            rules.push(format!(
                "PROXY header required from {} network{} (timeout {})",
                l.trusted_proxies.len(),
                plural(l.trusted_proxies.len()),
                fmt_duration(l.proxy_header_timeout)
            ));
        }
        if let Some(k) = &l.tcp_keepalive {
            let _ = writeln!(
                s,
                "    tcp_keepalive to clients: {}{}",
                Keepalive::describe(Some(k)),
                detection(k)
            );
        }
        if !rules.is_empty() {
            let _ = writeln!(s, "    access: {}", rules.join(", "));
        }
        if let Some(max) = l.lifetime.max {
            let _ = writeln!(
                s,
                "    connections closed at {} old{} (max_connection_duration, paced by the pool's close_rate)",
                fmt_duration(max),
                if l.lifetime.jitter.is_zero() {
                    String::new()
                } else {
                    format!(" + up to {} of jitter", fmt_duration(l.lifetime.jitter))
                }
            );
        }
        if let Some(every) = l.access_log_interval {
            let _ = writeln!(
                s,
                "    open connections log their bytes every {}",
                fmt_duration(every)
            );
        }
    }
    for pool in cfg.pools.values() {
        let _ = writeln!(
            s,
            "  pool {:<16} {}, points_per_weight {}, connect_timeout {}, idle_timeout {}, {} attempt{}, key /{} v4 /{} v6",
            pool.name,
            if pool.discover.is_some() {
                "nodes from DNS".to_string()
            } else {
                format!("{} node{}", pool.nodes.len(), plural(pool.nodes.len()))
            },
            pool.points_per_weight,
            fmt_duration(pool.connect_timeout),
            fmt_duration(pool.idle_timeout),
            pool.connect_attempts,
            if pool.discover.is_none() && pool.connect_attempts as usize > pool.nodes.len() {
                format!("s ({} effective: one per node)", pool.nodes.len())
            } else {
                plural(pool.connect_attempts as usize).to_string()
            },
            pool.key_prefix_v4,
            pool.key_prefix_v6
        );
        let h = &pool.health;
        let health = match h.kind {
            HealthKind::None => "health none (nodes always in service)".to_string(),
            HealthKind::Tcp => format!(
                "health tcp{} every {} (timeout {}, rise {}, fall {})",
                h.port.map(|p| format!(" port {p}")).unwrap_or_default(),
                fmt_duration(h.interval),
                fmt_duration(h.timeout),
                h.rise,
                h.fall
            ),
            HealthKind::Http => format!(
                "health http GET {}{} expect {}{} every {} (timeout {}, rise {}, fall {})",
                h.path,
                h.port.map(|p| format!(" port {p}")).unwrap_or_default(),
                h.expect_status,
                if h.expect_body.is_empty() {
                    String::new()
                } else {
                    format!(" body ~ {:?}", h.expect_body)
                },
                fmt_duration(h.interval),
                fmt_duration(h.timeout),
                h.rise,
                h.fall
            ),
        };
        let _ = writeln!(
            s,
            "    {health}; passive_failures {}, on_node_down {}, when_all_down {}",
            pool.passive_failures,
            pool.on_node_down.as_str(),
            pool.when_all_down.as_str()
        );
        let _ = writeln!(
            s,
            "    closes ringlb decides on: {}; rehome {}",
            if pool.close_rate == 0 {
                "unpaced (close_rate 0)".to_string()
            } else {
                format!("at most {}/s (close_rate)", pool.close_rate)
            },
            pool.rehome.map_or_else(
                || "off".to_string(),
                |r| format!(
                    "after {} in service, {}/s",
                    crate::config::fmt_duration(r.after),
                    r.rate
                )
            )
        );
        if let Some(d) = &pool.discover {
            let _ = writeln!(
                s,
                "    nodes from DNS: {} (check --probe resolves once)",
                d.describe()
            );
        }
        if let Some(a) = &pool.agent {
            let _ = writeln!(
                s,
                "    agent on each node's IP, {} (HAProxy agent-check replies: state, weight, maxconn)",
                AgentConfig::describe(Some(a))
            );
        }
        let mut extra = Vec::new();
        if pool.proxy_protocol != ProxyProtocol::Off {
            extra.push(format!("proxy_protocol {}", pool.proxy_protocol.as_str()));
        }
        if let Some(p) = pool.balance_factor_permille {
            extra.push(format!("balance_factor {}", f64::from(p) / 1000.0));
        }
        if let Some(k) = &pool.tcp_keepalive {
            extra.push(format!(
                "tcp_keepalive to nodes: {}{}",
                Keepalive::describe(Some(k)),
                detection(k)
            ));
        }
        if !extra.is_empty() {
            let _ = writeln!(s, "    {}", extra.join(", "));
        }
        for n in &pool.nodes {
            let _ = writeln!(
                s,
                "    node {:<14} {:<22} weight {}{}{}",
                n.name,
                n.addr,
                n.weight,
                n.max_connections
                    .map(|m| format!(", max_connections {m}"))
                    .unwrap_or_default(),
                if n.state == AdminState::Enabled {
                    String::new()
                } else {
                    format!(", state {}", n.state.as_str())
                }
            );
        }
    }
    s
}

/// Resolve every pool's `[discover]` once and put the answers in as its
/// nodes (for `check --probe` and `which`). Returns one line per such pool:
/// the nodes found, or why there are none.
pub fn resolve_discovered(cfg: &mut Config) -> Vec<String> {
    let mut lines = Vec::new();
    for (name, pool) in cfg.pools.iter_mut() {
        let Some(d) = &pool.discover else { continue };
        match crate::discovery::resolve_blocking(d) {
            Ok(a) => {
                let nodes: Vec<String> = a
                    .nodes
                    .iter()
                    .map(|n| format!("{} (addr {}, weight {})", n.name, n.addr, n.weight))
                    .collect();
                lines.push(format!(
                    "pool {name}: resolved {} {} now: {} node{}: {}",
                    d.kind.as_str(),
                    d.name,
                    nodes.len(),
                    plural(nodes.len()),
                    nodes.join(", ")
                ));
                pool.nodes = a.nodes;
            }
            Err(why) => lines.push(format!(
                "pool {name}: resolving {} {} failed: {why} (ringlb run starts this pool with no nodes and keeps trying)",
                d.kind.as_str(),
                d.name
            )),
        }
    }
    lines
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// For `check`: how long a vanished peer can go unnoticed with `k` (the
/// kernel's values, read from this host, standing in for keys left out).
fn detection(k: &Keepalive) -> String {
    k.detection_time(&crate::keepalive::kernel_defaults())
        .map(|d| {
            format!(
                " (a vanished peer is closed after {} of silence)",
                humantime::format_duration(d)
            )
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::with_keepalive;

    #[test]
    fn node_lines_name_a_cap_when_set() {
        let text = crate::config::tests::MIN.replace(
            "addr = \"127.0.0.1:9001\"",
            "addr = \"127.0.0.1:9001\"\nmax_connections = 250\n[[pools.web.nodes]]\naddr = \"127.0.0.1:9002\"",
        );
        let summary = summary(&Config::parse(&text, "m.toml").unwrap());
        assert!(
            summary.contains("127.0.0.1:9001         weight 1, max_connections 250\n"),
            "{summary}"
        );
        assert!(
            summary.contains("127.0.0.1:9002         weight 1\n"),
            "{summary}"
        );
    }

    #[test]
    fn lifetime_interval_log_close_rate_and_rehome_have_lines() {
        let text = crate::config::tests::MIN
            .replace(
                "[pools.web]",
                "[pools.web]\nclose_rate = 0\nrehome = { after = \"10s\", rate = 5 }",
            )
            .replacen(
                "pool = \"web\"",
                "pool = \"web\"\nmax_connection_duration = \"1h\"\nmax_connection_duration_jitter = \"5m\"\naccess_log_interval = \"1m\"",
                1,
            );
        let out = summary(&crate::config::Config::parse(&text, "t.toml").unwrap());
        for want in [
            "    closes ringlb decides on: unpaced (close_rate 0); rehome after 10s in service, 5/s\n",
            "    connections closed at 1h old + up to 5m of jitter (max_connection_duration, paced by the pool's close_rate)\n",
            "    open connections log their bytes every 1m\n",
        ] {
            assert!(out.contains(want), "{want}\n{out}");
        }
    }

    #[test]
    fn a_discover_pool_has_its_settings_line() {
        let text = "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
                    [pools.p.discover]\nname = \"_a._tcp.x\"\ntype = \"srv\"\nresolver = \"127.0.0.1:53\"\n";
        let out = summary(&Config::parse(text, "d.toml").unwrap());
        assert!(
            out.contains("  pool p                nodes from DNS, points_per_weight 16384"),
            "{out}"
        );
        assert!(
            out.contains("    nodes from DNS: srv _a._tcp.x every 5s (or its TTL if shorter), resolver 127.0.0.1:53, remove_after 10s (check --probe resolves once)\n"),
            "{out}"
        );
    }

    #[test]
    fn the_agent_has_a_line_when_set() {
        let text = format!(
            "{}\n[pools.web.agent]\nport = 9777\nsend = \"status\\n\"\n",
            crate::config::tests::MIN
        );
        let text = summary(&Config::parse(&text, "a.toml").unwrap());
        assert!(
            text.contains("    agent on each node's IP, port 9777 every 2s (timeout 1s, send \"status\\n\") (HAProxy agent-check replies: state, weight, maxconn)\n"),
            "{text}"
        );
        let plain = summary(&Config::parse(crate::config::tests::MIN, "m.toml").unwrap());
        assert!(!plain.contains("agent"), "{plain}");
    }

    #[test]
    fn keepalive_lines_say_how_long_a_vanished_peer_goes_unnoticed() {
        let c = Config::parse(&with_keepalive(), "k.toml").unwrap();
        let summary = summary(&c);
        assert!(
            summary.contains("tcp_keepalive to clients: idle 1m, interval 10s, count 6 (a vanished peer is closed after 2m of silence)"),
            "{summary}"
        );
        assert!(
            summary.contains("tcp_keepalive to nodes: on, the kernel's settings"),
            "{summary}"
        );
    }
}
