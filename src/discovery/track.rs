//! Which discovered nodes a pool has: the last answers, with each node's time
//! of going missing, so that a node leaves only after `remove_after` without
//! being in an answer (one flapping answer does not churn the ring). Pure: the
//! caller passes the clock.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::NodeConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// In the last answer.
    No,
    /// Not in the answers since then.
    Since(Instant),
    /// Not from this discovery (static nodes, or another name): the first good
    /// answer replaces it.
    Replace,
}

/// The discovered nodes of one pool, by name.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    nodes: BTreeMap<String, (NodeConfig, Missing)>,
}

impl Tracker {
    /// Start from the nodes the pool has: with `keep` they count as the last
    /// answer (seen `now`), else the first good answer replaces them.
    pub fn seeded(seed: Vec<NodeConfig>, keep: bool, now: Instant) -> Tracker {
        let _ = now;
        let m = if keep { Missing::No } else { Missing::Replace };
        Tracker {
            nodes: seed.into_iter().map(|n| (n.name.clone(), (n, m))).collect(),
        }
    }

    /// One good answer at `now`: its nodes are in (a changed address or
    /// weight applies), and nodes missing for at least `remove_after` leave.
    pub fn update(&mut self, answer: &[NodeConfig], remove_after: Duration, now: Instant) {
        for (name, (_, missing)) in self.nodes.iter_mut() {
            if !answer.iter().any(|n| &n.name == name) && *missing == Missing::No {
                *missing = Missing::Since(now);
            }
        }
        for n in answer {
            self.nodes.insert(n.name.clone(), (n.clone(), Missing::No));
        }
        self.nodes.retain(|_, (_, missing)| match *missing {
            Missing::No => true,
            Missing::Since(t) => now.saturating_duration_since(t) < remove_after,
            Missing::Replace => false,
        });
    }

    /// The nodes the pool should have now, sorted by name.
    pub fn nodes(&self) -> Vec<NodeConfig> {
        self.nodes.values().map(|(n, _)| n.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Tracker;
    use crate::config::{AdminState, NodeConfig};
    use std::time::{Duration, Instant};

    fn n(port: u16) -> NodeConfig {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        NodeConfig {
            name: addr.to_string(),
            addr_text: addr.to_string(),
            addr,
            weight: 1,
            state: AdminState::Enabled,
            max_connections: None,
        }
    }

    fn names(t: &Tracker) -> Vec<u16> {
        t.nodes().iter().map(|n| n.addr.port()).collect()
    }

    #[test]
    fn a_missing_node_leaves_only_after_remove_after() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = Tracker::default();
        t.update(&[n(2), n(1)], s(10), t0);
        assert_eq!(
            names(&t),
            vec![1, 2],
            "sorted: answer order does not matter"
        );
        t.update(&[n(1)], s(10), t0 + s(5));
        assert_eq!(names(&t), vec![1, 2], "missing for 0s");
        t.update(&[n(1)], s(10), t0 + s(14));
        assert_eq!(names(&t), vec![1, 2], "missing for 9s");
        t.update(&[n(1), n(2)], s(10), t0 + s(16));
        t.update(&[n(1)], s(10), t0 + s(20));
        t.update(&[n(1)], s(10), t0 + s(29));
        assert_eq!(names(&t), vec![1, 2], "back at 16s: the clock started over");
        t.update(&[n(1)], s(10), t0 + s(30));
        assert_eq!(names(&t), vec![1]);
        t.update(&[n(3)], Duration::ZERO, t0 + s(31));
        assert_eq!(names(&t), vec![3], "remove_after 0: at once");
    }

    #[test]
    fn seeds_stay_until_the_first_answer_and_are_replaced_unless_kept() {
        let now = Instant::now();
        let mut t = Tracker::seeded(vec![n(7)], false, now);
        assert_eq!(names(&t), vec![7]);
        t.update(&[n(1)], Duration::from_secs(60), now);
        assert_eq!(names(&t), vec![1]);
        let mut t = Tracker::seeded(vec![n(7)], true, now);
        t.update(&[n(1)], Duration::from_secs(60), now);
        assert_eq!(names(&t), vec![1, 7]);
    }
}
