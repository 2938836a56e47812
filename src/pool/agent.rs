//! What a node's agent reports (HAProxy's `agent-check`), kept apart from its
//! health (probes) and its operator state: [`AgentState`], one per node, and
//! the pool's side of a check, [`Pool::agent_report`] and
//! [`Pool::agent_failed`]. Only the agent undoes what the agent set; a reload
//! that removes `[agent]` clears it ([`Pool::clear_agent`]). A failed check
//! (unreachable, timeout, a line without a usable word) changes nothing, as in
//! HAProxy: it is counted and shown. No I/O: `crate::agent` does the talking
//! and parses the line into an [`AgentReport`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::snapshot::build_snapshot;
use super::{Node, Pool};

/// The agent's operational word: `up`, or `down`/`fail`/`stopped`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentOper {
    #[default]
    Up,
    Down,
}

/// The agent's administrative word: `ready`, `drain` or `maint`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentAdmin {
    #[default]
    Ready,
    Drain,
    Maint,
}

impl AgentAdmin {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentAdmin::Ready => "ready",
            AgentAdmin::Drain => "drain",
            AgentAdmin::Maint => "maint",
        }
    }
}

impl AgentOper {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentOper::Up => "up",
            AgentOper::Down => "down",
        }
    }
}

/// The agent's weight: `NN%` (or `weight:NN%`) of the configured weight, or an
/// absolute `weight:N` (0 to 256).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentWeight {
    Percent(u32),
    Absolute(u32),
}

impl AgentWeight {
    /// As a percentage of `configured` (for the metric and status).
    pub fn percent_of(self, configured: u32) -> f64 {
        match self {
            AgentWeight::Percent(p) => f64::from(p.min(25_600)),
            AgentWeight::Absolute(w) => f64::from(w) * 100.0 / f64::from(configured.max(1)),
        }
    }

    /// As the agent wrote it (`50%`, `weight:3`).
    pub fn text(self) -> String {
        match self {
            AgentWeight::Percent(p) => format!("{p}%"),
            AgentWeight::Absolute(w) => format!("weight:{w}"),
        }
    }
}

/// One reply line as understood (made by `crate::agent::reply`). Categories the
/// line does not name are `None` and change nothing; when a category appears
/// more than once the last word wins, as in HAProxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentReport {
    /// The operational state and its word as written (`down`, `FAIL`, ...).
    pub oper: Option<(AgentOper, String)>,
    /// The text after `#` (HAProxy shows it with a health word only).
    pub description: String,
    pub admin: Option<AgentAdmin>,
    pub weight: Option<AgentWeight>,
    /// `maxconn:N`; `Some(0)` is no cap (HAProxy's maxconn 0).
    pub maxconn: Option<u64>,
    /// What was ignored: unknown words, a bad weight or maxconn.
    pub warnings: Vec<String>,
}

impl AgentReport {
    /// The line named nothing that could apply.
    pub fn is_empty(&self) -> bool {
        self.oper.is_none()
            && self.admin.is_none()
            && self.weight.is_none()
            && self.maxconn.is_none()
    }
}

/// How one agent check ended (the `result` label of `ringlb_agent_checks_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentResult {
    /// A line was read and applied.
    Ok,
    /// The connect failed (refused, unreachable).
    Connect,
    /// No line within the timeout.
    Timeout,
    /// Sending or reading failed after the connect.
    Io,
    /// A reply without a usable line: no word ringlb knows, no line end before
    /// the agent closed, or longer than the limit.
    Invalid,
}

impl AgentResult {
    pub const ALL: [AgentResult; 5] = [
        AgentResult::Ok,
        AgentResult::Connect,
        AgentResult::Timeout,
        AgentResult::Io,
        AgentResult::Invalid,
    ];

    /// Its `result` label.
    pub fn as_str(self) -> &'static str {
        crate::metrics::AGENT_RESULTS[self as usize]
    }
}

impl From<AgentResult> for usize {
    fn from(r: AgentResult) -> usize {
        r as usize
    }
}

/// One check, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCheck {
    pub at: SystemTime,
    pub result: AgentResult,
    /// The line read, or what went wrong.
    pub detail: String,
}

/// What a node's agent has set, and its last checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentState {
    /// What it set (all default: nothing).
    pub set: AgentRecord,
    /// When the agent last changed what it set.
    pub since: Option<SystemTime>,
    pub last: Option<AgentCheck>,
    /// The last check that failed or carried a warning.
    pub last_error: Option<AgentCheck>,
    pub checks: u64,
    pub failures: u64,
}

impl AgentState {
    /// The agent lets the node take new clients.
    pub fn serving(&self) -> bool {
        let s = &self.set;
        s.oper == AgentOper::Up
            && s.admin == AgentAdmin::Ready
            && !matches!(
                s.weight,
                Some(AgentWeight::Percent(0) | AgentWeight::Absolute(0))
            )
    }

    /// Nothing set: the agent has no effect on the node.
    pub fn is_clear(&self) -> bool {
        self.set == AgentRecord::default()
    }
}

/// What the agent set on a node (what a binary upgrade hands over).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub oper: AgentOper,
    /// The health word as the agent wrote it (empty until it said one).
    pub oper_word: String,
    /// The text after `#` that came with the last health word.
    pub reason: String,
    pub admin: AgentAdmin,
    /// `None`: the agent gave no weight (the configured one applies).
    pub weight: Option<AgentWeight>,
    /// `None`: the agent gave no cap (the configured one applies); `Some(0)`: no cap.
    pub maxconn: Option<u64>,
}

/// Bounded text for status and logs.
fn bounded(mut s: String) -> String {
    const MAX: usize = 256;
    if s.len() > MAX {
        let mut cut = MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

impl Pool {
    /// A line from `node`'s agent: apply what it names (the rest stays), and
    /// publish a new ring when the node's membership or points change. A line
    /// that names nothing usable changes nothing and counts as `invalid`.
    pub fn agent_report(&self, node: &Arc<Node>, line: &str, report: &AgentReport) {
        let now = SystemTime::now();
        let line = bounded(line.to_string());
        if report.is_empty() {
            let why = if report.warnings.is_empty() {
                "empty line".to_string()
            } else {
                report.warnings.join("; ")
            };
            self.agent_failed(node, AgentResult::Invalid, format!("{line:?}: {why}"));
            return;
        }
        node.metrics.agent_check(AgentResult::Ok).increment(1);
        let _guard = self.lock_rebuild();
        let ppw = self.settings().points_per_weight;
        let points_before = node.ring_points(ppw);
        let mut st = node.lock_agent();
        let before = st.set.clone();
        let recovered = st
            .last
            .as_ref()
            .is_some_and(|l| l.result != AgentResult::Ok);
        if let Some((oper, word)) = &report.oper {
            st.set.oper = *oper;
            st.set.oper_word = word.clone();
            st.set.reason = bounded(report.description.clone());
        }
        if let Some(a) = report.admin {
            st.set.admin = a;
        }
        if let Some(w) = report.weight {
            st.set.weight = Some(w);
        }
        if let Some(m) = report.maxconn {
            st.set.maxconn = Some(m);
        }
        st.checks += 1;
        let check = AgentCheck {
            at: now,
            result: AgentResult::Ok,
            detail: line.clone(),
        };
        if !report.warnings.is_empty() {
            st.last_error = Some(AgentCheck {
                detail: bounded(format!("{line:?}: ignored {}", report.warnings.join("; "))),
                ..check.clone()
            });
        }
        st.last = Some(check);
        let after = st.set.clone();
        let changed = after != before;
        if changed {
            st.since = Some(now);
        }
        let membership = node.set_agent_serving(&st);
        let maxconn = st.set.maxconn;
        drop(st);
        if recovered {
            info!(pool = %self.name, node = %node.name, line = %line, "agent answers again");
        }
        if !changed {
            debug!(pool = %self.name, node = %node.name, line = %line, "agent check: no change");
            return;
        }
        self.agent_metrics(node, &after);
        if before.maxconn != after.maxconn {
            node.refresh_cap(maxconn);
        }
        let points_after = node.ring_points(ppw);
        let on_ring = self.snapshot().nodes.iter().any(|n| Arc::ptr_eq(n, node));
        if on_ring && (membership || points_after != points_before) {
            let old = self.snapshot();
            self.snapshot.store(Arc::new(build_snapshot(
                old.settings.clone(),
                old.nodes.clone(),
                Some(&old),
            )));
        }
        self.log_agent_change(node, &line, &before, &after, points_before, points_after);
    }

    /// A check of `node`'s agent that gave no usable line: counted and shown,
    /// nothing else changes (HAProxy: "failure to connect to the agent is not
    /// considered an error"). The first failure after a good check is logged
    /// at WARN, the others at DEBUG.
    pub fn agent_failed(&self, node: &Arc<Node>, result: AgentResult, detail: String) {
        node.metrics.agent_check(result).increment(1);
        let detail = bounded(detail);
        let mut st = node.lock_agent();
        let first = st
            .last
            .as_ref()
            .map_or(true, |l| l.result == AgentResult::Ok);
        let check = AgentCheck {
            at: SystemTime::now(),
            result,
            detail: detail.clone(),
        };
        st.checks += 1;
        st.failures += 1;
        st.last = Some(check.clone());
        st.last_error = Some(check);
        drop(st);
        if first {
            warn!(pool = %self.name, node = %node.name, result = result.as_str(), error = %detail,
                "agent check failed: the node keeps what its agent last reported");
        } else {
            debug!(pool = %self.name, node = %node.name, result = result.as_str(), error = %detail, "agent check failed");
        }
    }

    /// The pool's `[agent]` was removed: forget what every node's agent set
    /// (the operator's state and health stay) and publish one new ring.
    /// Returns the nodes that had something set. Caller holds `rebuild`.
    pub(super) fn clear_agent(&self, nodes: &[Arc<Node>]) -> Vec<String> {
        let mut cleared = Vec::new();
        for n in nodes {
            let mut st = n.lock_agent();
            let had = !st.is_clear();
            *st = AgentState::default();
            n.set_agent_serving(&st);
            drop(st);
            n.refresh_cap(None);
            self.agent_metrics(n, &AgentRecord::default());
            if had {
                cleared.push(n.name.clone());
            }
        }
        if !cleared.is_empty() {
            info!(pool = %self.name, nodes = ?cleared,
                "agent removed from the config: what it had set on these nodes is cleared");
        }
        cleared
    }

    /// Apply what the previous process's agent had set on `node` (upgrade).
    /// Returns true if it changed anything.
    pub(super) fn take_over_agent(&self, node: &Arc<Node>, record: &AgentRecord) -> bool {
        let _guard = self.lock_rebuild();
        let mut st = node.lock_agent();
        if st.set == *record {
            return false;
        }
        st.set = AgentRecord {
            oper_word: bounded(record.oper_word.clone()),
            reason: bounded(record.reason.clone()),
            ..record.clone()
        };
        st.since = Some(SystemTime::now());
        node.set_agent_serving(&st);
        drop(st);
        node.refresh_cap(record.maxconn);
        self.agent_metrics(node, record);
        let old = self.snapshot();
        self.snapshot.store(Arc::new(build_snapshot(
            old.settings.clone(),
            old.nodes.clone(),
            Some(&old),
        )));
        true
    }

    fn agent_metrics(&self, node: &Node, r: &AgentRecord) {
        let m = &node.metrics;
        m.agent_up
            .set(if r.oper == AgentOper::Up { 1.0 } else { 0.0 });
        m.agent_admin_state.set(f64::from(r.admin as u8));
        m.agent_weight_percent
            .set(r.weight.map_or(100.0, |w| w.percent_of(node.weight())));
    }

    fn log_agent_change(
        &self,
        node: &Node,
        line: &str,
        before: &AgentRecord,
        after: &AgentRecord,
        points_before: u32,
        points_after: u32,
    ) {
        let open = node.active.load(Ordering::Relaxed);
        let (pool, name) = (&self.name, &node.name);
        if before.oper != after.oper {
            match after.oper {
                AgentOper::Down => {
                    warn!(pool = %pool, node = %name, line, word = %after.oper_word, reason = %after.reason, open_connections = open,
                    "node agent DOWN: off the ring for new connections; its clients move to their next node; open connections continue")
                }
                AgentOper::Up => {
                    info!(pool = %pool, node = %name, line, in_service = node.in_service(),
                    "node agent UP: back on the ring when healthy, enabled and ready")
                }
            }
        }
        if before.admin != after.admin {
            match after.admin {
                AgentAdmin::Ready => {
                    info!(pool = %pool, node = %name, line, in_service = node.in_service(),
                    "node agent READY: back on the ring when healthy, enabled and up")
                }
                other => warn!(pool = %pool, node = %name, line, open_connections = open,
                    "node agent {}: off the ring for new connections; its clients move to their next node; open connections continue",
                    other.as_str().to_uppercase()),
            }
        }
        if before.weight != after.weight {
            info!(pool = %pool, node = %name, line,
                weight = %after.weight.map_or_else(|| "100%".to_string(), |w| w.text()),
                ring_points = points_after, was = points_before,
                "node agent weight: only the clients of the points removed or added move");
        }
        if before.maxconn != after.maxconn {
            info!(pool = %pool, node = %name, line,
                max_connections = ?node.max_connections(), configured = ?node.config_max_connections(),
                "node agent maxconn: the node's cap follows the agent");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::super::tests::{ip, pool, pool_with};
    use super::*;

    fn report(f: impl FnOnce(&mut AgentReport)) -> AgentReport {
        let mut r = AgentReport::default();
        f(&mut r);
        r
    }

    fn homes(p: &Pool, n: u32) -> Vec<String> {
        (0..n)
            .map(|i| p.snapshot().select(ip(i)).next().unwrap().name.clone())
            .collect()
    }

    #[test]
    fn drain_down_and_maint_move_only_the_nodes_clients_and_only_the_agent_undoes_them() {
        let p = pool();
        let b = p.node("b").unwrap();
        let before = homes(&p, 2000);
        for (undo, set) in [
            (
                report(|r| r.admin = Some(AgentAdmin::Ready)),
                report(|r| r.admin = Some(AgentAdmin::Drain)),
            ),
            (
                report(|r| r.admin = Some(AgentAdmin::Ready)),
                report(|r| r.admin = Some(AgentAdmin::Maint)),
            ),
            (
                report(|r| r.oper = Some((AgentOper::Up, "up".into()))),
                report(|r| r.oper = Some((AgentOper::Down, "stopped".into()))),
            ),
        ] {
            p.agent_report(&b, "set", &set);
            assert!(!b.in_service() && b.is_up(), "health stays up");
            assert_eq!(b.admin_state(), crate::config::AdminState::Enabled);
            for (i, (was, now)) in before.iter().zip(homes(&p, 2000)).enumerate() {
                if was == "b" {
                    assert_ne!(now, "b", "{i}");
                } else {
                    assert_eq!(&now, was, "{i}: nobody else moves");
                }
            }
            // The operator's enable does not undo the agent's state.
            p.set_admin_state("b", crate::config::AdminState::Enabled, "test");
            assert!(!b.in_service());
            // A failed check changes nothing.
            p.agent_failed(&b, AgentResult::Connect, "refused".into());
            assert!(!b.in_service());
            p.agent_report(&b, "undo", &undo);
            assert!(b.in_service());
            assert_eq!(homes(&p, 2000), before, "exactly its clients come back");
        }
        let st = b.agent();
        assert_eq!((st.checks, st.failures), (9, 3));
        assert_eq!(st.set.oper_word, "up");
    }

    #[test]
    fn a_lower_weight_moves_only_the_clients_of_the_removed_points_and_back_restores() {
        let p = pool();
        let b = p.node("b").unwrap();
        let s = p.snapshot();
        let full: Vec<_> = (0..3000).map(|i| s.ring.point(&s.key(ip(i)))).collect();
        let bi = s.members.iter().position(|m| m.name == "b").unwrap();
        p.agent_report(
            &b,
            "50%",
            &report(|r| r.weight = Some(AgentWeight::Percent(50))),
        );
        let half = p.snapshot();
        let ppw = crate::config::defaults::POINTS_PER_WEIGHT;
        assert_eq!(half.ring.points_of(bi), ppw / 2);
        let mut moved = 0;
        for (i, was) in full.iter().enumerate() {
            let (owner, index) = was.unwrap();
            let now = half.ring.point(&half.key(ip(i as u32))).unwrap();
            if owner == bi && index >= ppw / 2 {
                moved += usize::from(now.0 != bi);
            } else {
                assert_eq!(now, (owner, index), "{i}");
            }
        }
        assert!(moved > 200, "{moved}");
        assert_eq!(b.agent().set.weight, Some(AgentWeight::Percent(50)));
        p.agent_report(
            &b,
            "100%",
            &report(|r| r.weight = Some(AgentWeight::Percent(100))),
        );
        let back = p.snapshot();
        for (i, was) in full.iter().enumerate() {
            assert_eq!(back.ring.point(&back.key(ip(i as u32))), *was);
        }
        // 0% and weight:0 take it off the ring; HAProxy's cap of weight 256.
        p.agent_report(
            &b,
            "0%",
            &report(|r| r.weight = Some(AgentWeight::Percent(0))),
        );
        assert!(!b.in_service() && p.snapshot().members.len() == 2);
        p.agent_report(
            &b,
            "x",
            &report(|r| r.weight = Some(AgentWeight::Percent(90_000))),
        );
        assert_eq!(b.ring_points(160), 256 * 160);
        p.agent_report(
            &b,
            "x",
            &report(|r| r.weight = Some(AgentWeight::Absolute(3))),
        );
        assert_eq!(b.ring_points(160), 480);
        assert_eq!(AgentWeight::Absolute(3).percent_of(1), 300.0);
    }

    #[test]
    fn maxconn_wins_while_set_and_the_configured_cap_returns_when_cleared() {
        let p = pool_with(
            "[[pools.p.nodes]]\nname = \"d\"\naddr = \"127.0.0.1:1004\"\nmax_connections = 7",
        );
        let d = p.node("d").unwrap();
        assert_eq!(d.max_connections(), Some(7));
        p.agent_report(&d, "maxconn:2", &report(|r| r.maxconn = Some(2)));
        assert_eq!(d.max_connections(), Some(2));
        assert_eq!(d.config_max_connections(), Some(7));
        p.agent_report(&d, "maxconn:0", &report(|r| r.maxconn = Some(0)));
        assert_eq!(
            d.max_connections(),
            None,
            "maxconn:0 is no cap, as in HAProxy"
        );
        // A reload's new cap does not override the agent's.
        d.set_max_connections(Some(9));
        assert_eq!(d.max_connections(), None);
        let _g = p.lock_rebuild();
        let cleared = p.clear_agent(&p.nodes());
        assert_eq!(cleared, vec!["d".to_string()]);
        assert_eq!(d.max_connections(), Some(9));
        assert!(d.agent().is_clear());
        assert_eq!(d.active.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_line_without_a_usable_word_is_counted_and_changes_nothing() {
        let p = pool();
        let a = p.node("a").unwrap();
        let garbage = report(|r| r.warnings.push("unknown word \"hello\"".into()));
        p.agent_report(&a, "hello", &garbage);
        let st = a.agent();
        assert!(st.is_clear() && a.in_service());
        assert_eq!(st.last.unwrap().result, AgentResult::Invalid);
        assert!(st.last_error.unwrap().detail.contains("hello"));
        // A usable line with a warning: applied, and the warning shown.
        let mixed = report(|r| {
            r.admin = Some(AgentAdmin::Drain);
            r.warnings.push("unknown word \"x\"".into());
        });
        p.agent_report(&a, "drain x", &mixed);
        let st = a.agent();
        assert_eq!(st.set.admin, AgentAdmin::Drain);
        assert_eq!(st.last.unwrap().result, AgentResult::Ok);
        assert!(st
            .last_error
            .unwrap()
            .detail
            .contains("ignored unknown word"));
    }
}
