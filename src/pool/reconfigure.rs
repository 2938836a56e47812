//! A reload applied to a live pool: [`Pool::reconfigure`] diffs the new node list
//! against the current one by name and address, keeps the nodes that stayed (with
//! their health and counters), adds and removes the others, applies weights,
//! `max_connections` and the file's admin states, clears what the agent set when
//! `[agent]` is gone, and publishes one new snapshot. [`PoolChange`] says
//! what changed, for the reload summary.
//!
//! Must not: close an open connection unless the config says so
//! (`on_node_down = "close"` for a removed node, `state = "disabled"`), or do I/O.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::snapshot::build_snapshot;
use super::{CloseReason, Node, Pool, PoolSettings};
use crate::config::{AdminState, OnNodeDown, PoolConfig};

/// What [`Pool::reconfigure`] changed, for the reload summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// `"name old->new"`.
    pub reweighted: Vec<String>,
    /// `"name state"` for nodes whose `state` the reload changed.
    pub state_changed: Vec<String>,
    /// `"name old->new"` for nodes whose `max_connections` changed (`none`: no
    /// cap). Open connections stay, even above a lowered cap.
    pub recapped: Vec<String>,
    /// Nodes whose agent state was cleared because `[agent]` was removed.
    pub agent_cleared: Vec<String>,
    pub settings_changed: bool,
}

impl PoolChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.reweighted.is_empty()
            && self.state_changed.is_empty()
            && self.recapped.is_empty()
            && self.agent_cleared.is_empty()
            && !self.settings_changed
    }
}

impl Pool {
    /// Apply a new config of this pool (reload). Nodes with the same name and
    /// address stay (with their health state and counters; a new weight applies);
    /// others are added (starting up) or removed (no new connections; their open
    /// connections continue, or close with `on_node_down = "close"`). Settings,
    /// health included, apply from now on. One new ring is published.
    pub fn reconfigure(&self, cfg: &PoolConfig) -> PoolChange {
        self.reconfigure_with(cfg, false)
    }

    /// [`Pool::reconfigure`] for a change of discovered nodes: with
    /// `probe_first` (and active health checks) an added node starts down, so
    /// it gets no client before its probes pass `rise` times.
    pub fn reconfigure_with(&self, cfg: &PoolConfig, probe_first: bool) -> PoolChange {
        let probe_first = probe_first && cfg.health.kind != crate::config::HealthKind::None;
        let _guard = self.lock_rebuild();
        let old = self.snapshot();
        let mut change = PoolChange::default();
        let mut nodes = Vec::with_capacity(cfg.nodes.len());
        for nc in &cfg.nodes {
            match old.nodes.iter().find(|n| nc.is(&n.name, n.addr)) {
                Some(n) => {
                    let w = n.weight.swap(nc.weight, Ordering::Relaxed);
                    if w != nc.weight {
                        change
                            .reweighted
                            .push(format!("{} {w}->{}", n.name, nc.weight));
                    }
                    let cap = n.set_max_connections(nc.max_connections);
                    if cap != nc.max_connections.map(u64::from) {
                        change.recapped.push(format!(
                            "{} {}->{}",
                            n.name,
                            cap_text(cap),
                            cap_text(nc.max_connections.map(u64::from))
                        ));
                    }
                    if n.apply_config_state(nc.state) {
                        change
                            .state_changed
                            .push(format!("{} {}", n.name, nc.state.as_str()));
                        if nc.state == AdminState::Disabled {
                            self.close_node(n, CloseReason::Disabled);
                        }
                    }
                    nodes.push(n.clone());
                }
                None => {
                    change.added.push(nc.name.clone());
                    let node = Node::new(&cfg.name, nc);
                    if probe_first {
                        node.up.store(false, Ordering::Release);
                        node.metrics.up.set(0.0);
                        let mut h = node.lock_health();
                        h.force(false, std::time::SystemTime::now());
                        h.reason = "discovered: waiting for its probes to pass".to_string();
                    }
                    nodes.push(Arc::new(node));
                }
            }
        }
        let settings = Arc::new(PoolSettings::from(cfg));
        let close = settings.on_node_down == OnNodeDown::Close;
        for n in &old.nodes {
            if !nodes.iter().any(|m| Arc::ptr_eq(m, n)) {
                change.removed.push(n.name.clone());
                n.metrics.ring_points.set(0.0);
                n.metrics.up.set(0.0);
                if n.active.load(Ordering::Relaxed) > 0 {
                    self.lock_retired().push(n.clone());
                }
            }
        }
        change.settings_changed = *old.settings != *settings;
        if settings.agent.is_none() {
            // Without an agent nobody could undo what it set: clear it.
            change.agent_cleared = self.clear_agent(&nodes);
        }
        self.snapshot
            .store(Arc::new(build_snapshot(settings, nodes, Some(&old))));
        // After the new settings are in (close_rate): the removed nodes' closes.
        if close {
            for n in &old.nodes {
                if !self.snapshot().nodes.iter().any(|m| Arc::ptr_eq(m, n)) {
                    self.close_node(n, CloseReason::Removed);
                }
            }
        }
        change
    }
}

/// A cap as the reload summary writes it.
fn cap_text(cap: Option<u64>) -> String {
    cap.map_or_else(|| "none".to_string(), |c| c.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use super::super::tests::{cfg_with, ip, node_toml, open_n};
    use super::super::{CloseReason, Pool};

    #[test]
    fn reconfigure_keeps_stayed_nodes_adds_removes_and_reweights() {
        let abc = [
            node_toml("a", 1001, 1),
            node_toml("b", 1002, 1),
            node_toml("c", 1003, 1),
        ]
        .concat();
        let p = Pool::new(&cfg_with(&abc, ""));
        let a = p.node("a").unwrap();
        a.total.store(7, Ordering::Relaxed);
        p.set_up("b", false, "test");
        let before: Vec<String> = (0..3000)
            .map(|i| p.snapshot().select(ip(i)).next().unwrap().name.clone())
            .collect();
        // b stays (still down), c removed, d added, a weight 2.
        let next = [
            node_toml("a", 1001, 2),
            node_toml("b", 1002, 1),
            node_toml("d", 1004, 1),
        ]
        .concat();
        let change = p.reconfigure(&cfg_with(&next, "on_node_down = \"close\""));
        assert_eq!(change.added, vec!["d"]);
        assert_eq!(change.removed, vec!["c"]);
        assert_eq!(change.reweighted, vec!["a 1->2"]);
        assert!(change.settings_changed);
        let a2 = p.node("a").unwrap();
        assert!(Arc::ptr_eq(&a, &a2), "a stayed: same node, same counters");
        assert_eq!(a2.total.load(Ordering::Relaxed), 7);
        assert!(!p.node("b").unwrap().is_up(), "b keeps its health state");
        assert!(p.node("d").unwrap().is_up(), "added nodes start up");
        assert!(p.node("c").is_none());
        let s = p.snapshot();
        let names: Vec<&str> = s.members.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, vec!["a", "d"]);
        // Clients of a stay on a (its old points remain) unless the new node d
        // took them; nobody goes to c.
        for (i, was) in before.iter().enumerate() {
            let now = &s.select(ip(i as u32)).next().unwrap().name;
            assert_ne!(now, "c");
            if was == "a" {
                assert!(now == "a" || now == "d", "{now}");
            }
        }
        // An address change under the same name is a new node (fresh state).
        let moved = [
            node_toml("a", 2001, 2),
            node_toml("b", 1002, 1),
            node_toml("d", 1004, 1),
        ]
        .concat();
        let change = p.reconfigure(&cfg_with(&moved, ""));
        assert_eq!(
            (change.added.clone(), change.removed.clone()),
            (vec!["a".to_string()], vec!["a".to_string()])
        );
        assert_eq!(p.node("a").unwrap().total.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_new_cap_keeps_the_node_its_connections_and_its_clients() {
        let nodes =
            |cap_a: &str| [node_toml("a", 1001, 1) + cap_a, node_toml("b", 1002, 1)].concat();
        let p = Pool::new(&cfg_with(&nodes("max_connections = 2\n"), ""));
        let a = p.node("a").unwrap();
        let s = p.snapshot();
        let ip_a = (0..)
            .map(ip)
            .find(|i| s.select(*i).next().unwrap().name == "a")
            .unwrap();
        let held: Vec<_> = (0..2).map(|_| s.candidates(ip_a).next().unwrap()).collect();
        assert!(held.iter().all(|h| h.name == "a") && a.is_full());
        // Raised: the same node, its two connections still counted, room for one more.
        let change = p.reconfigure(&cfg_with(&nodes("max_connections = 3\n"), ""));
        assert_eq!(change.recapped, vec!["a 2->3"]);
        assert!(change.added.is_empty() && change.removed.is_empty());
        assert!(Arc::ptr_eq(&a, &p.node("a").unwrap()));
        assert_eq!(p.closes_pending(), 0, "open connections stay");
        assert_eq!(a.active.load(Ordering::Relaxed), 2);
        let third = p.snapshot().candidates(ip_a).next().unwrap();
        assert_eq!(third.name, "a");
        // Lowered below what it holds: nobody is closed, new clients go elsewhere.
        let change = p.reconfigure(&cfg_with(&nodes("max_connections = 1\n"), ""));
        assert_eq!(change.recapped, vec!["a 3->1"]);
        assert_eq!(a.active.load(Ordering::Relaxed), 3);
        assert_eq!(p.snapshot().candidates(ip_a).next().unwrap().name, "b");
        // Removed: no cap.
        let change = p.reconfigure(&cfg_with(&nodes(""), ""));
        assert_eq!(change.recapped, vec!["a 1->none"]);
        assert_eq!(a.max_connections(), None);
        assert_eq!(p.snapshot().candidates(ip_a).next().unwrap().name, "a");
        let change = p.reconfigure(&cfg_with(&nodes(""), ""));
        assert!(change.is_empty(), "{change:?}");
        drop((held, third));
        assert_eq!(a.active.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_reload_without_the_agent_clears_what_it_set_and_one_with_it_keeps_it() {
        use crate::pool::{AgentAdmin, AgentReport};
        let ab = [node_toml("a", 1001, 1), node_toml("b", 1002, 1)].concat();
        let agent = "[pools.p.agent]\nport = 9\n";
        let p = Pool::new(&cfg_with(&format!("{ab}{agent}"), ""));
        let a = p.node("a").unwrap();
        let drain = AgentReport {
            admin: Some(AgentAdmin::Drain),
            ..AgentReport::default()
        };
        p.agent_report(&a, "drain", &drain);
        assert!(!a.in_service());
        // Another interval: the agent's state stays.
        let change = p.reconfigure(&cfg_with(&format!("{ab}{agent}interval = \"5s\"\n"), ""));
        assert!(change.agent_cleared.is_empty() && change.settings_changed);
        assert!(!a.in_service());
        let change = p.reconfigure(&cfg_with(&ab, ""));
        assert_eq!(change.agent_cleared, vec!["a"]);
        assert!(a.in_service() && a.agent().is_clear());
        assert_eq!(p.snapshot().members.len(), 2);
    }

    #[test]
    fn removing_a_node_with_close_queues_its_connections_and_keep_retires_it() {
        let ab = [node_toml("a", 1001, 1), node_toml("b", 1002, 1)].concat();
        for (extra, close) in [
            ("on_node_down = \"close\"\nclose_rate = 0", true),
            ("", false),
        ] {
            let p = Pool::new(&cfg_with(&ab, extra));
            let lives = open_n(&p, 40);
            p.reconfigure(&cfg_with(&node_toml("a", 1001, 1), extra));
            for l in &lives {
                let closed = l.ctl().reason() == Some(CloseReason::Removed);
                assert_eq!(closed, close && l.node().name == "b", "{extra}");
            }
            // The removed node is still reached (scans, the end of the grace).
            assert_eq!(p.all_nodes().len(), 2, "{extra}");
            let s = p.scan(std::time::Instant::now(), None);
            assert_eq!(s.open, 40);
            let b = lives.iter().find(|l| l.node().name == "b").unwrap();
            assert_eq!(
                b.node().misplaced.load(Ordering::Relaxed) as usize,
                lives.iter().filter(|l| l.node().name == "b").count(),
                "a removed node's connections are all misplaced"
            );
            drop(lives);
            assert_eq!(p.all_nodes().len(), 1, "pruned once empty");
        }
    }
}
