//! The typed difference between the running config and a new one, per listener,
//! per pool and per node, and the one-line summary logged when it is applied.
//! Pure: no sockets, no runtime state; [`apply`](fn@super::apply) carries it out
//! (binding first, so a bind failure refuses the whole reload).

use std::fmt::Write as _;

use crate::config::{
    fmt_duration, AdminState, AgentConfig, Config, Keepalive, ListenerConfig, PoolConfig,
};
use crate::pool::{PoolChange, PoolSettings};

/// What a reload changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Running listeners that keep their socket: (running name, new config).
    pub kept: Vec<(String, ListenerConfig)>,
    /// Listeners that need a new socket (new, or their address changed).
    pub bind: Vec<ListenerConfig>,
    /// Running listeners whose socket closes (removed, or moved to a new address).
    pub close: Vec<String>,
    /// Pools by name.
    pub pools_added: Vec<String>,
    pub pools_removed: Vec<String>,
    pub pools_kept: Vec<String>,
    /// Kept pools whose nodes or settings change, in name order.
    pub pools_changed: Vec<(String, PoolDiff)>,
    pub admin_changed: bool,
    pub pid_file_changed: bool,
    pub shutdown_grace_changed: bool,
    pub upgrade_timeout_changed: bool,
    pub withdraw_delay_changed: bool,
    /// `workers` applies at the next start only.
    pub workers_changed: bool,
    /// `user`/`group` apply at the next start only (the process has no root left).
    pub privileges_changed: bool,
    /// Why the new config cannot be applied in place (the reload is refused).
    pub refused: Vec<String>,
}

/// What a reload changes in one pool that stays, from the two configs alone.
/// Nodes are the same node when their name and address stay
/// ([`NodeConfig::is`](crate::config::NodeConfig::is)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolDiff {
    /// Node names, in the new file's order.
    pub nodes_added: Vec<String>,
    /// Node names, in the old file's order.
    pub nodes_removed: Vec<String>,
    /// (node, old weight, new weight).
    pub reweighted: Vec<(String, u32, u32)>,
    /// Nodes whose `state` in the file changes, with the new one.
    pub restated: Vec<(String, AdminState)>,
    /// (node, old `max_connections`, new): the node and its connections stay.
    pub recapped: Vec<(String, Option<u32>, Option<u32>)>,
    /// Anything else of the pool (timeouts, health, keys, ...).
    pub settings_changed: bool,
}

impl PoolDiff {
    /// Compare one pool's old and new config.
    pub fn between(old: &PoolConfig, new: &PoolConfig) -> PoolDiff {
        let mut d = PoolDiff::default();
        for n in &new.nodes {
            match old.nodes.iter().find(|o| n.is(&o.name, o.addr)) {
                Some(o) => {
                    if o.weight != n.weight {
                        d.reweighted.push((n.name.clone(), o.weight, n.weight));
                    }
                    if o.state != n.state {
                        d.restated.push((n.name.clone(), n.state));
                    }
                    if o.max_connections != n.max_connections {
                        d.recapped
                            .push((n.name.clone(), o.max_connections, n.max_connections));
                    }
                }
                None => d.nodes_added.push(n.name.clone()),
            }
        }
        for o in &old.nodes {
            if !new.nodes.iter().any(|n| n.is(&o.name, o.addr)) {
                d.nodes_removed.push(o.name.clone());
            }
        }
        d.settings_changed = PoolSettings::from(old) != PoolSettings::from(new);
        d
    }

    pub fn is_empty(&self) -> bool {
        *self == PoolDiff::default()
    }
}

/// Compare the running config with a new, validated one.
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let mut d = ConfigDiff::default();
    let mut matched_old = vec![false; old.listeners.len()];
    for l in &new.listeners {
        match old.listeners.iter().position(|o| o.listen == l.listen) {
            Some(i) if old.listeners[i].ipv6_only != l.ipv6_only => {
                d.refused.push(format!(
                    "listener {:?}: changing ipv6_only on the same address ({}) needs a restart",
                    l.name, l.listen
                ));
                matched_old[i] = true;
            }
            Some(i) => {
                matched_old[i] = true;
                d.kept.push((old.listeners[i].name.clone(), l.clone()));
            }
            None => d.bind.push(l.clone()),
        }
    }
    for (i, o) in old.listeners.iter().enumerate() {
        if !matched_old[i] {
            d.close.push(o.name.clone());
        }
    }
    for (name, np) in &new.pools {
        if let Some(op) = old.pools.get(name) {
            d.pools_kept.push(name.clone());
            let pd = PoolDiff::between(op, np);
            if !pd.is_empty() {
                d.pools_changed.push((name.clone(), pd));
            }
        } else {
            d.pools_added.push(name.clone());
        }
    }
    for name in old.pools.keys() {
        if !new.pools.contains_key(name) {
            d.pools_removed.push(name.clone());
        }
    }
    d.admin_changed = old.admin != new.admin;
    d.pid_file_changed = old.pid_file != new.pid_file;
    d.shutdown_grace_changed = old.shutdown_grace != new.shutdown_grace;
    d.upgrade_timeout_changed = old.upgrade_timeout != new.upgrade_timeout;
    d.withdraw_delay_changed = old.withdraw_delay != new.withdraw_delay;
    d.workers_changed = old.workers != new.workers;
    d.privileges_changed = old.user != new.user || old.group != new.group;
    d
}

/// `key old -> new` for every pool setting that differs (nodes aside).
fn changed_pool_keys(o: &PoolConfig, n: &PoolConfig) -> Vec<String> {
    let mut v = Vec::new();
    macro_rules! key {
        ($name:literal, $a:expr, $b:expr) => {
            if $a != $b {
                v.push(format!("{} {} -> {}", $name, $a, $b));
            }
        };
    }
    key!(
        "points_per_weight",
        o.points_per_weight,
        n.points_per_weight
    );
    key!(
        "connect_timeout",
        fmt_duration(o.connect_timeout),
        fmt_duration(n.connect_timeout)
    );
    key!(
        "idle_timeout",
        fmt_duration(o.idle_timeout),
        fmt_duration(n.idle_timeout)
    );
    key!("connect_attempts", o.connect_attempts, n.connect_attempts);
    key!("key_prefix_v4", o.key_prefix_v4, n.key_prefix_v4);
    key!("key_prefix_v6", o.key_prefix_v6, n.key_prefix_v6);
    key!(
        "on_node_down",
        o.on_node_down.as_str(),
        n.on_node_down.as_str()
    );
    key!(
        "when_all_down",
        o.when_all_down.as_str(),
        n.when_all_down.as_str()
    );
    key!("passive_failures", o.passive_failures, n.passive_failures);
    key!(
        "proxy_protocol",
        o.proxy_protocol.as_str(),
        n.proxy_protocol.as_str()
    );
    let bf = |p: Option<u32>| p.map_or("off".to_string(), |p| (f64::from(p) / 1000.0).to_string());
    key!(
        "balance_factor",
        bf(o.balance_factor_permille),
        bf(n.balance_factor_permille)
    );
    key!(
        "tcp_keepalive",
        Keepalive::describe(o.tcp_keepalive.as_ref()),
        Keepalive::describe(n.tcp_keepalive.as_ref())
    );
    if o.health != n.health {
        v.push("health settings".to_string());
    }
    key!(
        "agent",
        AgentConfig::describe(o.agent.as_ref()),
        AgentConfig::describe(n.agent.as_ref())
    );
    v
}

/// One line for the INFO log: what the reload changed.
pub fn summary(
    old: &Config,
    new: &Config,
    d: &ConfigDiff,
    pool_changes: &[(String, PoolChange)],
) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (old_name, l) in &d.kept {
        let Some(o) = old.listeners.iter().find(|o| &o.name == old_name) else {
            continue;
        };
        let mut ch = Vec::new();
        if o.name != l.name {
            ch.push(format!("renamed from {:?}", o.name));
        }
        if o.pool != l.pool {
            ch.push(format!("pool {} -> {}", o.pool, l.pool));
        }
        if o.max_connections != l.max_connections {
            ch.push(format!(
                "max_connections {} -> {}",
                o.max_connections, l.max_connections
            ));
        }
        if o.backlog != l.backlog {
            ch.push(format!("backlog {} -> {}", o.backlog, l.backlog));
        }
        if o.tcp_keepalive != l.tcp_keepalive {
            ch.push(format!(
                "tcp_keepalive {} -> {} (for new connections)",
                Keepalive::describe(o.tcp_keepalive.as_ref()),
                Keepalive::describe(l.tcp_keepalive.as_ref())
            ));
        }
        if o.access != l.access {
            ch.push("access rules changed (for new connections)".to_string());
        }
        if !ch.is_empty() {
            parts.push(format!("listener {}: {}", l.name, ch.join(", ")));
        }
    }
    for l in &d.bind {
        match old.listeners.iter().find(|o| o.name == l.name) {
            Some(o) => parts.push(format!(
                "listener {}: moved {} -> {}",
                l.name, o.listen, l.listen
            )),
            None => parts.push(format!("listener {}: added on {}", l.name, l.listen)),
        }
    }
    for name in &d.close {
        if !d.bind.iter().any(|l| &l.name == name) {
            parts.push(format!(
                "listener {name}: removed (open connections continue)"
            ));
        }
    }
    for p in &d.pools_added {
        parts.push(format!(
            "pool {p}: added with {} nodes",
            new.pools[p].nodes.len()
        ));
    }
    for p in &d.pools_removed {
        parts.push(format!("pool {p}: removed"));
    }
    for (p, c) in pool_changes {
        let mut s = format!("pool {p}:");
        if !c.added.is_empty() {
            let _ = write!(s, " +nodes {}", c.added.join(","));
        }
        if !c.removed.is_empty() {
            let _ = write!(s, " -nodes {}", c.removed.join(","));
        }
        if !c.state_changed.is_empty() {
            let _ = write!(s, " state {}", c.state_changed.join(","));
        }
        if !c.reweighted.is_empty() {
            let _ = write!(s, " weights {}", c.reweighted.join(","));
        }
        if !c.recapped.is_empty() {
            let _ = write!(s, " max_connections {}", c.recapped.join(","));
        }
        if !c.agent_cleared.is_empty() {
            let _ = write!(s, " agent state cleared {}", c.agent_cleared.join(","));
        }
        if c.settings_changed {
            match (old.pools.get(p), new.pools.get(p)) {
                (Some(o), Some(n)) => {
                    let keys = changed_pool_keys(o, n);
                    if keys.is_empty() {
                        s.push_str(" settings changed");
                    } else {
                        let _ = write!(s, " {}", keys.join(", "));
                    }
                }
                _ => s.push_str(" settings changed"),
            }
        }
        parts.push(s);
    }
    if d.admin_changed {
        parts.push(match &new.admin {
            Some(a) => format!("admin on {}", a.listen),
            None => "admin off".to_string(),
        });
    }
    if d.pid_file_changed {
        parts.push("pid_file changed".to_string());
    }
    if d.shutdown_grace_changed {
        parts.push(format!(
            "shutdown_grace {} -> {}",
            fmt_duration(old.shutdown_grace),
            fmt_duration(new.shutdown_grace)
        ));
    }
    if d.upgrade_timeout_changed {
        parts.push(format!(
            "upgrade_timeout {} -> {}",
            fmt_duration(old.upgrade_timeout),
            fmt_duration(new.upgrade_timeout)
        ));
    }
    if d.withdraw_delay_changed {
        parts.push(format!(
            "withdraw_delay {} -> {}",
            fmt_duration(old.withdraw_delay),
            fmt_duration(new.withdraw_delay)
        ));
    }
    if d.workers_changed {
        parts.push("workers changed (applies at the next start)".to_string());
    }
    if d.privileges_changed {
        parts.push("user/group changed (applies at the next start)".to_string());
    }
    if parts.is_empty() {
        "no changes".to_string()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, port, weight)
    type Nodes<'a> = &'a [(&'a str, u16, u32)];

    fn cfg(listeners: &[(&str, &str, &str)], pools: &[(&str, Nodes)]) -> Config {
        let mut t = String::new();
        for (name, listen, pool) in listeners {
            t += &format!(
                "[[listener]]\nname = \"{name}\"\nlisten = \"{listen}\"\npool = \"{pool}\"\n"
            );
        }
        for (p, nodes) in pools {
            t += &format!("[pools.{p}]\n");
            for (n, port, w) in *nodes {
                t += &format!(
                    "[[pools.{p}.nodes]]\nname = \"{n}\"\naddr = \"127.0.0.1:{port}\"\nweight = {w}\n"
                );
            }
        }
        Config::parse(&t, "r.toml").unwrap()
    }

    #[test]
    fn listeners_are_matched_by_address() {
        let web: &[(&str, u16, u32)] = &[("a", 1, 1)];
        let old = cfg(
            &[
                ("ws", "127.0.0.1:8080", "web"),
                ("old", "127.0.0.1:8081", "web"),
                ("mv", "127.0.0.1:8082", "web"),
            ],
            &[("web", web)],
        );
        let new = cfg(
            &[
                ("ws-renamed", "127.0.0.1:8080", "web"),
                ("mv", "127.0.0.1:9082", "web"),
                ("new", "127.0.0.1:8083", "web"),
            ],
            &[("web", web)],
        );
        let d = diff(&old, &new);
        assert_eq!(d.kept.len(), 1);
        assert_eq!(d.kept[0].0, "ws");
        assert_eq!(d.kept[0].1.name, "ws-renamed");
        let bind: Vec<&str> = d.bind.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(bind, vec!["mv", "new"]);
        assert_eq!(d.close, vec!["old", "mv"]);
        assert!(d.refused.is_empty());
        let s = summary(&old, &new, &d, &[]);
        assert!(
            s.contains("listener ws-renamed: renamed from \"ws\""),
            "{s}"
        );
        assert!(
            s.contains("listener mv: moved 127.0.0.1:8082 -> 127.0.0.1:9082"),
            "{s}"
        );
        assert!(s.contains("listener new: added on 127.0.0.1:8083"), "{s}");
        assert!(s.contains("listener old: removed"), "{s}");
    }

    #[test]
    fn pools_and_no_change() {
        let a: &[(&str, u16, u32)] = &[("a", 1, 1)];
        let old = cfg(&[("l", "127.0.0.1:1", "p")], &[("p", a), ("gone", a)]);
        let new = cfg(&[("l", "127.0.0.1:1", "q")], &[("p", a), ("q", a)]);
        let d = diff(&old, &new);
        assert_eq!(d.pools_added, vec!["q"]);
        assert_eq!(d.pools_removed, vec!["gone"]);
        assert_eq!(d.pools_kept, vec!["p"]);
        assert!(summary(&old, &new, &d, &[]).contains("listener l: pool p -> q"));
        let same = diff(&old, &old);
        assert_eq!(summary(&old, &old, &same, &[]), "no changes");
    }

    #[test]
    fn changed_pool_settings_are_named() {
        let a: &[(&str, u16, u32)] = &[("a", 1, 1)];
        let old = cfg(&[("l", "127.0.0.1:1", "p")], &[("p", a)]);
        let mut new = old.clone();
        let p = new.pools.get_mut("p").unwrap();
        p.passive_failures = 0;
        p.connect_timeout = std::time::Duration::from_millis(500);
        p.balance_factor_permille = Some(1250);
        let d = diff(&old, &new);
        let change = crate::pool::PoolChange {
            settings_changed: true,
            ..Default::default()
        };
        let s = summary(&old, &new, &d, &[("p".to_string(), change)]);
        assert!(s.contains("passive_failures 3 -> 0"), "{s}");
        assert!(s.contains("connect_timeout 2s -> 500ms"), "{s}");
        assert!(s.contains("balance_factor off -> 1.25"), "{s}");
        assert!(!s.contains("settings changed"), "{s}");
    }

    #[test]
    fn ipv6_only_change_on_the_same_address_is_refused() {
        let a: &[(&str, u16, u32)] = &[("a", 1, 1)];
        let old = cfg(&[("l", "[::1]:8080", "p")], &[("p", a)]);
        let mut new = old.clone();
        new.listeners[0].ipv6_only = false;
        let d = diff(&old, &new);
        assert_eq!(d.refused.len(), 1);
        assert!(d.refused[0].contains("needs a restart"));
    }

    #[test]
    fn pool_diff_names_node_changes_from_the_configs_alone() {
        let old_nodes: &[(&str, u16, u32)] = &[("a", 1, 1), ("b", 2, 1), ("c", 3, 2)];
        // b moves to a new port: a different node. c is reweighted, d is new.
        let new_nodes: &[(&str, u16, u32)] = &[("a", 1, 1), ("b", 20, 1), ("c", 3, 5), ("d", 4, 1)];
        let old = cfg(
            &[("l", "127.0.0.1:1", "p")],
            &[("p", old_nodes), ("q", old_nodes)],
        );
        let mut new = cfg(
            &[("l", "127.0.0.1:1", "p")],
            &[("p", new_nodes), ("q", old_nodes)],
        );
        new.pools.get_mut("p").unwrap().nodes[0].state = AdminState::Drain;
        new.pools.get_mut("p").unwrap().nodes[2].max_connections = Some(5);
        let d = diff(&old, &new);
        // q is unchanged, so only p is listed.
        assert_eq!(d.pools_changed.len(), 1, "{:?}", d.pools_changed);
        let (name, pd) = &d.pools_changed[0];
        assert_eq!(name, "p");
        assert_eq!(pd.nodes_added, vec!["b", "d"]);
        assert_eq!(pd.nodes_removed, vec!["b"]);
        assert_eq!(pd.reweighted, vec![("c".to_string(), 2, 5)]);
        assert_eq!(pd.restated, vec![("a".to_string(), AdminState::Drain)]);
        assert_eq!(pd.recapped, vec![("c".to_string(), None, Some(5))]);
        assert!(!pd.settings_changed);
        let change = crate::pool::PoolChange {
            recapped: vec!["c none->5".to_string()],
            ..Default::default()
        };
        let s = summary(&old, &new, &d, &[("p".to_string(), change)]);
        assert!(s.contains("pool p: max_connections c none->5"), "{s}");

        let mut tuned = old.clone();
        tuned.pools.get_mut("q").unwrap().health.interval = std::time::Duration::from_secs(9);
        let d = diff(&old, &tuned);
        assert_eq!(d.pools_changed.len(), 1);
        assert_eq!(d.pools_changed[0].0, "q");
        assert!(d.pools_changed[0].1.settings_changed);
        assert!(diff(&old, &old).pools_changed.is_empty());
    }
}
