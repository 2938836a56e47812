//! Node states handed from one process to the next in a binary upgrade: what the
//! old process knows of each node (health up/down, the operator's state, the
//! file's state at its last load, and what the node's agent set), and [`Pool::take_over`], which applies them to
//! a freshly built pool with the rule a reload follows. No I/O.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tracing::info;

use super::{AgentRecord, Pool};
use crate::config::AdminState;

/// One node's state as the old process knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub pool: String,
    pub node: String,
    /// The node's address as text: a record only applies to a node with the same
    /// name and address.
    pub addr: String,
    /// Healthy as far as probes and passive failures knew.
    pub up: bool,
    /// When it last changed between up and down (unix seconds).
    pub since_unix: u64,
    /// The operator's state.
    pub admin: AdminState,
    /// The state the old process's config file gave it.
    pub config_state: AdminState,
    /// What the node's agent had set (`None`: nothing, or a process from
    /// before agents). It applies when this process's pool has an agent too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentRecord>,
}

/// What [`Pool::take_over`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TakeOver {
    /// Nodes set down because the old process knew them down.
    pub down: Vec<String>,
    /// Nodes set up again because the old process knew them up (a second, fresher
    /// set of records, before this process probes on its own).
    pub up: Vec<String>,
    /// Nodes whose operator state (set through the admin endpoint or `ringlb node`)
    /// was carried over.
    pub admin: Vec<(String, AdminState)>,
    /// Nodes whose agent state was carried over.
    pub agent: Vec<String>,
}

impl Pool {
    /// Every node's state, for the next process.
    pub fn node_records(&self) -> Vec<NodeRecord> {
        self.nodes()
            .iter()
            .map(|n| {
                let health = n.health();
                NodeRecord {
                    pool: self.name.clone(),
                    node: n.name.clone(),
                    addr: n.addr.to_string(),
                    up: n.is_up(),
                    since_unix: unix(health.since),
                    admin: n.admin_state(),
                    config_state: n.config_state(),
                    agent: Some(n.agent().set).filter(|r| *r != AgentRecord::default()),
                }
            })
            .collect()
    }

    /// Apply the old process's node states: a node it knew down starts down here
    /// (so no client is sent to it before this process's own probes say so; a
    /// later, fresher record can set it up again before they start), and
    /// the operator's state carries over unless the config file changed that node's
    /// `state` since the old process loaded it (then the file wins, as on a reload).
    /// What the node's agent had set carries over when this pool has an agent
    /// (the agent's next reply updates it; without one nobody could undo it).
    /// Records of other pools, of nodes this pool does not have, or of a node
    /// whose address changed, are ignored.
    pub fn take_over(&self, records: &[NodeRecord]) -> TakeOver {
        let mut done = TakeOver::default();
        let with_agent = self.settings().agent.is_some();
        for r in records.iter().filter(|r| r.pool == self.name) {
            let Some(node) = self.node(&r.node) else {
                continue;
            };
            if node.addr.to_string() != r.addr {
                continue;
            }
            let why = if r.up {
                "up in the previous process (upgrade)"
            } else {
                "down in the previous process (upgrade)"
            };
            if self.set_up(&r.node, r.up, why) {
                if r.up { &mut done.up } else { &mut done.down }.push(r.node.clone());
            }
            if r.config_state == node.config_state() && r.admin != node.admin_state() {
                self.set_admin_state(&r.node, r.admin, "previous process (upgrade)");
                done.admin.push((r.node.clone(), r.admin));
            }
            if with_agent {
                let agent = r.agent.clone().unwrap_or_default();
                if self.take_over_agent(&node, &agent) {
                    done.agent.push(r.node.clone());
                }
            }
        }
        if !done.down.is_empty()
            || !done.up.is_empty()
            || !done.admin.is_empty()
            || !done.agent.is_empty()
        {
            info!(pool = %self.name, down = ?done.down, up = ?done.up, operator_state = ?done.admin, agent = ?done.agent,
                "node states taken over from the previous process");
        }
        done
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn pool(text_state_b: &str) -> Pool {
        let text = format!(
            r#"
[[listener]]
name = "l"
listen = "127.0.0.1:0"
pool = "p"
[pools.p]
nodes = [
  {{ name = "a", addr = "127.0.0.1:1" }},
  {{ name = "b", addr = "127.0.0.1:2"{text_state_b} }},
  {{ name = "c", addr = "127.0.0.1:3" }},
]
"#
        );
        let cfg = Config::parse(&text, "t.toml").unwrap();
        Pool::new(&cfg.pools["p"])
    }

    #[test]
    fn down_and_operator_states_carry_over_and_the_file_wins_when_it_changed() {
        let old = pool("");
        old.set_up("a", false, "test");
        old.set_admin_state("b", AdminState::Drain, "test");
        let records = old.node_records();
        assert_eq!(records.len(), 3);

        // Same file: a starts down, b stays drained, c untouched.
        let new = pool("");
        let t = new.take_over(&records);
        assert_eq!(t.down, vec!["a".to_string()]);
        assert_eq!(t.admin, vec![("b".to_string(), AdminState::Drain)]);
        assert!(!new.node("a").unwrap().is_up());
        assert_eq!(new.node("b").unwrap().admin_state(), AdminState::Drain);
        assert!(new.node("c").unwrap().in_service());
        let on_ring: Vec<String> = new
            .snapshot()
            .members
            .iter()
            .map(|n| n.name.clone())
            .collect();
        assert_eq!(on_ring, vec!["c".to_string()]);

        // Fresher records: a came back up meanwhile, b was enabled again.
        old.set_up("a", true, "test");
        old.set_admin_state("b", AdminState::Enabled, "test");
        let t = new.take_over(&old.node_records());
        assert_eq!(t.up, vec!["a".to_string()]);
        assert_eq!(t.admin, vec![("b".to_string(), AdminState::Enabled)]);
        assert!(new.node("a").unwrap().in_service() && new.node("b").unwrap().in_service());

        // The file now says b is disabled: the file wins.
        old.set_admin_state("b", AdminState::Drain, "test");
        let changed = pool(r#", state = "disabled""#);
        changed.take_over(&records);
        assert_eq!(
            changed.node("b").unwrap().admin_state(),
            AdminState::Disabled
        );
    }

    #[test]
    fn the_agents_state_carries_over_to_a_pool_with_an_agent() {
        use crate::pool::{AgentAdmin, AgentReport, AgentWeight};
        let with_agent = |p: &str| {
            let cfg = Config::parse(
                &format!("[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\n{p}\nnodes = [{{ name = \"a\", addr = \"127.0.0.1:1\" }}, {{ name = \"b\", addr = \"127.0.0.1:2\" }}]\n"),
                "t.toml",
            )
            .unwrap();
            Pool::new(&cfg.pools["p"])
        };
        let old = with_agent("agent = { port = 9 }");
        let a = old.node("a").unwrap();
        let report = AgentReport {
            admin: Some(AgentAdmin::Drain),
            weight: Some(AgentWeight::Percent(50)),
            maxconn: Some(4),
            ..AgentReport::default()
        };
        old.agent_report(&a, "drain 50% maxconn:4", &report);
        let records = old.node_records();
        // JSON as the upgrade channel sends it; a record without the field
        // (an older process) reads as no agent state.
        let json = serde_json::to_string(&records).unwrap();
        let back: Vec<NodeRecord> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, records);
        assert!(back[1].agent.is_none());
        let new = with_agent("agent = { port = 9 }");
        let t = new.take_over(&records);
        assert_eq!(t.agent, vec!["a".to_string()]);
        let na = new.node("a").unwrap();
        assert_eq!(na.agent().set, a.agent().set);
        assert!(!na.in_service() && na.max_connections() == Some(4));
        assert_eq!(new.snapshot().members.len(), 1);
        // No agent in the new config: nothing set carries over.
        let plain = with_agent("");
        assert!(plain.take_over(&records).agent.is_empty());
        assert!(plain.node("a").unwrap().in_service());
    }

    #[test]
    fn records_of_another_address_or_pool_are_ignored() {
        let old = pool("");
        old.set_up("a", false, "test");
        let mut records = old.node_records();
        records[0].addr = "127.0.0.1:99".into();
        let mut other_pool = records[0].clone();
        other_pool.pool = "q".into();
        other_pool.addr = "127.0.0.1:1".into();
        records.push(other_pool);
        let new = pool("");
        assert_eq!(new.take_over(&records), TakeOver::default());
        assert!(new.node("a").unwrap().is_up());
    }
}
