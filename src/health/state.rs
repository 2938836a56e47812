//! The hysteresis state of one node: consecutive successes and failures, the
//! rise/fall thresholds, the last probe. Pure: std only, no I/O, no clock other than
//! the `SystemTime` stamps it records, and no dependency on any other module of the
//! crate, so the pool can own this state without depending on the probes.

use std::time::{Duration, SystemTime};

/// One probe's result.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOutcome {
    pub ok: bool,
    /// What was seen: `"http 200"`, `"connect refused"`, `"timeout after 1s"`...
    pub detail: String,
    pub latency: Duration,
}

/// The last probe, kept for status output.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRecord {
    pub ok: bool,
    pub detail: String,
    pub at: SystemTime,
    pub latency: Duration,
}

/// Hysteresis state of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeHealth {
    pub up: bool,
    /// Consecutive successful probes.
    pub ok_streak: u32,
    /// Consecutive failed probes.
    pub fail_streak: u32,
    /// When the node entered its current state.
    pub since: SystemTime,
    /// Why it entered its current state (empty at start).
    pub reason: String,
    pub last: Option<ProbeRecord>,
    /// Number of up/down changes.
    pub transitions: u64,
    pub probes: u64,
}

impl NodeHealth {
    /// Nodes start up, so a fresh start serves at once; the first probes confirm
    /// that or take the node down after `fall` failures.
    pub fn new(now: SystemTime) -> Self {
        NodeHealth {
            up: true,
            ok_streak: 0,
            fail_streak: 0,
            since: now,
            reason: String::new(),
            last: None,
            transitions: 0,
            probes: 0,
        }
    }

    /// Feed one probe result. Returns `Some(new_state)` when it crosses `rise`
    /// (down → up) or `fall` (up → down).
    pub fn observe(&mut self, o: &ProbeOutcome, rise: u32, fall: u32) -> Option<bool> {
        let now = SystemTime::now();
        self.probes += 1;
        self.last = Some(ProbeRecord {
            ok: o.ok,
            detail: o.detail.clone(),
            at: now,
            latency: o.latency,
        });
        if o.ok {
            self.ok_streak = self.ok_streak.saturating_add(1);
            self.fail_streak = 0;
            if !self.up && self.ok_streak >= rise {
                self.set(true, now);
                return Some(true);
            }
        } else {
            self.fail_streak = self.fail_streak.saturating_add(1);
            self.ok_streak = 0;
            if self.up && self.fail_streak >= fall {
                self.set(false, now);
                return Some(false);
            }
        }
        None
    }

    /// Down without waiting for probes (passive failures): the probes must then see
    /// `rise` successes to bring it back.
    pub fn force_down(&mut self, now: SystemTime) {
        self.force(false, now);
    }

    /// Set the state by hand; streaks start over.
    pub fn force(&mut self, up: bool, now: SystemTime) {
        if self.up != up {
            self.set(up, now);
        }
        self.ok_streak = 0;
        self.fail_streak = 0;
    }

    fn set(&mut self, up: bool, now: SystemTime) {
        self.up = up;
        self.since = now;
        self.transitions += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(ok: bool) -> ProbeOutcome {
        ProbeOutcome {
            ok,
            detail: String::new(),
            latency: Duration::ZERO,
        }
    }

    #[test]
    fn hysteresis() {
        let mut h = NodeHealth::new(SystemTime::now());
        assert_eq!(h.observe(&o(false), 2, 2), None);
        assert_eq!(h.observe(&o(false), 2, 2), Some(false));
        assert_eq!(h.observe(&o(false), 2, 2), None, "already down");
        assert_eq!(h.observe(&o(true), 2, 2), None);
        assert_eq!(h.observe(&o(false), 2, 2), None);
        assert_eq!(h.observe(&o(true), 2, 2), None);
        assert_eq!(h.observe(&o(true), 2, 2), Some(true));
        assert_eq!(h.transitions, 2);
        assert_eq!(h.probes, 7);
        h.force_down(SystemTime::now());
        assert!(!h.up);
        assert_eq!(h.observe(&o(true), 1, 1), Some(true));
    }
}
