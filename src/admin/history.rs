//! What the status page's charts draw: per pool and node, the last [`SPAN`] of
//! samples taken every [`INTERVAL`] (open connections, misplaced connections, and
//! whether the node was in service), in a ring buffer of [`SAMPLES`] per node.
//!
//! The sampler is a task of the admin endpoint: it starts and stops with it, so
//! a balancer without an admin endpoint samples nothing. Each tick reads the
//! pools' snapshots and each node's atomics (no lock the data path takes) and
//! records them under a short `Mutex` the page's requests share. Nodes follow the
//! config: one a reload removes leaves the history at the next sample, one it
//! adds starts an empty series, and a node that stays (same pool, same name)
//! keeps its series across reloads.
//!
//! Memory is bounded by the config: [`SAMPLES`] ticks of 16 bytes, and per node
//! [`SAMPLES`] samples of 12 bytes (1,800 bytes) plus its name.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::fmt_duration;
use crate::handle::Handle;
use crate::pool::PoolSnapshot;

/// Time between two samples.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Time a chart spans.
pub const SPAN: Duration = Duration::from_secs(300);
/// Samples kept per node: one [`SPAN`] of them.
pub const SAMPLES: usize = (SPAN.as_secs() / INTERVAL.as_secs()) as usize;

/// Where a node stood at a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// On the ring for new connections (also every node of a pool failing open).
    InService,
    /// Off the ring: its health check (or passive failures) took it down.
    Down,
    /// Off the ring although healthy: the operator drained or disabled it.
    Out,
}

/// One node at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Open connections (`Node::active`), saturated at `u32::MAX`.
    pub open: u32,
    /// Open connections whose client's home is another node now (`Node::misplaced`).
    pub misplaced: u32,
    pub phase: Phase,
}

impl Sample {
    /// The sample of every node of a pool snapshot, in file order.
    fn of_pool(snap: &PoolSnapshot) -> Vec<(String, Sample)> {
        let members: HashSet<*const crate::pool::Node> =
            snap.members.iter().map(Arc::as_ptr).collect();
        let count = |c: &std::sync::atomic::AtomicU64| {
            u32::try_from(c.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(u32::MAX)
        };
        snap.nodes
            .iter()
            .map(|n| {
                let phase = if members.contains(&Arc::as_ptr(n)) {
                    Phase::InService
                } else if !n.is_up() {
                    Phase::Down
                } else {
                    Phase::Out
                };
                let s = Sample {
                    open: count(&n.active),
                    misplaced: count(&n.misplaced),
                    phase,
                };
                (n.name.clone(), s)
            })
            .collect()
    }
}

/// One node's samples, oldest first; the last one is from the latest tick.
#[derive(Debug)]
struct Series {
    name: String,
    samples: VecDeque<Sample>,
}

#[derive(Debug)]
struct PoolSeries {
    name: String,
    nodes: Vec<Series>,
}

/// The samples of every pool and node, bounded.
#[derive(Debug)]
pub struct History {
    capacity: usize,
    /// When each kept tick was taken, oldest first.
    ticks: VecDeque<Instant>,
    pools: Vec<PoolSeries>,
}

/// The samples of one tick: per pool, per node, in the order to keep.
pub type Tick = Vec<(String, Vec<(String, Sample)>)>;

impl Default for History {
    fn default() -> History {
        History::new(SAMPLES)
    }
}

impl History {
    /// A history that keeps `capacity` ticks (at least one).
    pub fn new(capacity: usize) -> History {
        let capacity = capacity.max(1);
        History {
            capacity,
            ticks: VecDeque::with_capacity(capacity),
            pools: Vec::new(),
        }
    }

    /// Record one tick taken `at`. Pools and nodes missing from `tick` are
    /// forgotten; new ones start with this sample; the others keep theirs (by
    /// name), at most `capacity` each.
    pub fn record(&mut self, at: Instant, tick: Tick) {
        if self.ticks.len() == self.capacity {
            self.ticks.pop_front();
        }
        self.ticks.push_back(at);
        let mut old: HashMap<String, HashMap<String, VecDeque<Sample>>> = self
            .pools
            .drain(..)
            .map(|p| {
                let nodes = p.nodes.into_iter().map(|s| (s.name, s.samples)).collect();
                (p.name, nodes)
            })
            .collect();
        for (pool, nodes) in tick {
            let mut kept = old.remove(&pool).unwrap_or_default();
            let nodes = nodes
                .into_iter()
                .map(|(name, sample)| {
                    let mut samples = kept
                        .remove(&name)
                        .unwrap_or_else(|| VecDeque::with_capacity(self.capacity));
                    if samples.len() == self.capacity {
                        samples.pop_front();
                    }
                    samples.push_back(sample);
                    Series { name, samples }
                })
                .collect();
            self.pools.push(PoolSeries { name: pool, nodes });
        }
    }

    /// Samples kept for a node, oldest first.
    pub fn samples(&self, pool: &str, node: &str) -> Option<Vec<Sample>> {
        self.pools
            .iter()
            .find(|p| p.name == pool)?
            .nodes
            .iter()
            .find(|s| s.name == node)
            .map(|s| s.samples.iter().copied().collect())
    }

    /// Nodes kept, as `(pool, node)`, in recording order.
    pub fn nodes(&self) -> Vec<(&str, &str)> {
        self.pools
            .iter()
            .flat_map(|p| p.nodes.iter().map(|s| (p.name.as_str(), s.name.as_str())))
            .collect()
    }

    /// A copy for `/status?history=1` and the page, with tick times as wall-clock
    /// milliseconds counted back from `now` (so a clock step does not bend them).
    pub fn view(&self, now: Instant, wall: SystemTime) -> HistoryStatus {
        let wall_ms = unix_ms(wall);
        let ticks = self.ticks.len();
        let at_unix_ms = self
            .ticks
            .iter()
            .map(|t| {
                let age = now.saturating_duration_since(*t).as_millis();
                wall_ms.saturating_sub(u64::try_from(age).unwrap_or(u64::MAX))
            })
            .collect();
        let pools = self
            .pools
            .iter()
            .map(|p| PoolHistory {
                name: p.name.clone(),
                nodes: p
                    .nodes
                    .iter()
                    .map(|s| {
                        // Aligned with the ticks: a node younger than the
                        // history starts with nulls.
                        let pad = ticks.saturating_sub(s.samples.len());
                        let col = |f: fn(&Sample) -> u32| {
                            std::iter::repeat(None)
                                .take(pad)
                                .chain(s.samples.iter().map(|x| Some(f(x))))
                                .collect()
                        };
                        NodeHistory {
                            name: s.name.clone(),
                            open: col(|x| x.open),
                            misplaced: col(|x| x.misplaced),
                            state: std::iter::repeat(None)
                                .take(pad)
                                .chain(s.samples.iter().map(|x| Some(x.phase)))
                                .collect(),
                        }
                    })
                    .collect(),
            })
            .collect();
        HistoryStatus {
            interval: fmt_duration(INTERVAL),
            span: fmt_duration(SPAN),
            now_unix_ms: wall_ms,
            at_unix_ms,
            pools,
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The history as `/status?history=1` shows it (key `history`) and the page
/// draws it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryStatus {
    /// Time between samples (`2s`).
    pub interval: String,
    /// Time a chart spans (`5m`).
    pub span: String,
    /// When this copy was made.
    pub now_unix_ms: u64,
    /// When each sample was taken, oldest first.
    pub at_unix_ms: Vec<u64>,
    pub pools: Vec<PoolHistory>,
}

/// One pool's nodes in the history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolHistory {
    pub name: String,
    pub nodes: Vec<NodeHistory>,
}

/// One node's samples, aligned with `at_unix_ms` (`null` before the node existed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeHistory {
    pub name: String,
    pub open: Vec<Option<u32>>,
    pub misplaced: Vec<Option<u32>>,
    /// `in_service`, `down` or `out` (drained or disabled while healthy).
    pub state: Vec<Option<Phase>>,
}

impl HistoryStatus {
    /// A node's samples, if the history has it.
    pub fn node(&self, pool: &str, node: &str) -> Option<&NodeHistory> {
        self.pools
            .iter()
            .find(|p| p.name == pool)?
            .nodes
            .iter()
            .find(|n| n.name == node)
    }
}

/// The history behind a lock the sampler and the requests share; a poisoned
/// lock is still read (the data is plain samples).
pub(super) fn lock(h: &Mutex<History>) -> MutexGuard<'_, History> {
    h.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One tick's samples of every pool of the running balancer.
fn read(handle: &Handle) -> Tick {
    handle
        .pools()
        .iter()
        .map(|(name, pool)| (name.clone(), Sample::of_pool(&pool.snapshot())))
        .collect()
}

/// Sample every [`INTERVAL`] (the first at once) until `stop`.
pub(super) fn spawn_sampler(
    handle: Handle,
    history: Arc<Mutex<History>>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = every.tick() => {
                    let tick = read(&handle);
                    lock(&history).record(Instant::now(), tick);
                }
            }
        }
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// One tick of a handle, for other modules' tests.
    pub(in crate::admin) fn read_for_tests(handle: &Handle) -> Tick {
        read(handle)
    }

    fn s(open: u32) -> Sample {
        Sample {
            open,
            misplaced: open / 2,
            phase: Phase::InService,
        }
    }

    fn tick(nodes: &[(&str, &[(&str, u32)])]) -> Tick {
        nodes
            .iter()
            .map(|(p, ns)| {
                (
                    p.to_string(),
                    ns.iter().map(|(n, v)| (n.to_string(), s(*v))).collect(),
                )
            })
            .collect()
    }

    fn opens(h: &History, pool: &str, node: &str) -> Vec<u32> {
        h.samples(pool, node)
            .unwrap()
            .iter()
            .map(|x| x.open)
            .collect()
    }

    #[test]
    fn the_window_is_five_minutes_of_two_second_samples() {
        assert_eq!(SAMPLES, 150);
        assert_eq!(SAMPLES as u32 * INTERVAL, SPAN);
        // What the docs state per node: 150 samples of 12 bytes.
        assert_eq!(std::mem::size_of::<Sample>(), 12);
        assert_eq!(std::mem::size_of::<Instant>(), 16);
    }

    #[test]
    fn samples_are_bounded_and_kept_oldest_first() {
        let mut h = History::new(4);
        let t0 = Instant::now();
        for i in 0..10u32 {
            h.record(
                t0 + Duration::from_secs(u64::from(i) * 2),
                tick(&[("p", &[("a", i)])]),
            );
            assert!(h.ticks.len() <= 4);
            assert!(h.pools[0].nodes[0].samples.len() <= 4);
        }
        assert_eq!(opens(&h, "p", "a"), [6, 7, 8, 9]);
        let v = h.view(
            t0 + Duration::from_secs(18),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
        );
        assert_eq!(v.at_unix_ms, [994_000, 996_000, 998_000, 1_000_000]);
        assert_eq!(v.now_unix_ms, 1_000_000);
        let a = v.node("p", "a").unwrap();
        assert_eq!(a.open, [Some(6), Some(7), Some(8), Some(9)]);
        assert_eq!(a.misplaced, [Some(3), Some(3), Some(4), Some(4)]);
        assert_eq!(a.state, [Some(Phase::InService); 4]);
        // A zero capacity still keeps the latest tick.
        let mut one = History::new(0);
        one.record(t0, tick(&[("p", &[("a", 1)])]));
        one.record(t0, tick(&[("p", &[("a", 2)])]));
        assert_eq!(opens(&one, "p", "a"), [2]);
    }

    #[test]
    fn nodes_come_and_go_with_the_config_and_stayers_keep_their_series() {
        let mut h = History::new(5);
        let t0 = Instant::now();
        h.record(
            t0,
            tick(&[("p", &[("a", 1), ("b", 1)]), ("q", &[("x", 1)])]),
        );
        h.record(
            t0,
            tick(&[("p", &[("a", 2), ("b", 2)]), ("q", &[("x", 2)])]),
        );
        // A reload: b removed, c added, pool q removed, pool r added.
        h.record(
            t0,
            tick(&[("p", &[("c", 3), ("a", 3)]), ("r", &[("x", 3)])]),
        );
        assert_eq!(h.nodes(), [("p", "c"), ("p", "a"), ("r", "x")]);
        assert_eq!(opens(&h, "p", "a"), [1, 2, 3]);
        assert_eq!(opens(&h, "p", "c"), [3]);
        assert_eq!(h.samples("p", "b"), None);
        assert_eq!(h.samples("q", "x"), None);
        assert_eq!(opens(&h, "r", "x"), [3], "a new pool starts anew");
        // b comes back: a new series, not the old one.
        h.record(t0, tick(&[("p", &[("a", 4), ("b", 4)])]));
        assert_eq!(opens(&h, "p", "b"), [4]);
        let v = h.view(t0, SystemTime::UNIX_EPOCH);
        assert_eq!(v.at_unix_ms.len(), 4);
        let b = v.node("p", "b").unwrap();
        assert_eq!(b.open, [None, None, None, Some(4)]);
        assert_eq!(b.state, [None, None, None, Some(Phase::InService)]);
        assert_eq!(v.node("p", "a").unwrap().open.len(), 4);
        assert!(v.node("r", "x").is_none(), "r left with the last reload");
        // An empty tick (no pools) forgets everything but the tick itself.
        h.record(t0, Vec::new());
        assert!(h.nodes().is_empty());
    }

    #[test]
    fn a_tick_reads_counts_and_whether_each_node_serves() {
        use crate::health::ProbeOutcome;
        let handle = crate::admin::status::tests::sample();
        let web = handle.pool("web").unwrap();
        let phases = |handle: &Handle| -> Vec<(String, String, Sample)> {
            read(handle)
                .into_iter()
                .flat_map(|(p, ns)| ns.into_iter().map(move |(n, s)| (p.clone(), n, s)))
                .collect()
        };
        let got = phases(&handle);
        let want = [
            ("db", "db1", 0, Phase::InService), // down, but the pool fails open
            ("web", "a", 1, Phase::InService),
            ("web", "b <&\"x\">", 3, Phase::Out), // drained
            ("web", "[2001:db8::1]:80", 0, Phase::Out), // disabled
        ];
        assert_eq!(got.len(), want.len());
        for ((p, n, s), (wp, wn, open, phase)) in got.iter().zip(want) {
            assert_eq!(
                (p.as_str(), n.as_str(), s.open, s.misplaced, s.phase),
                (wp, wn, open, 0, phase)
            );
        }
        let a = web.node("a").unwrap();
        a.misplaced.store(2, std::sync::atomic::Ordering::Relaxed);
        a.active
            .store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
        for _ in 0..3 {
            let fail = ProbeOutcome {
                ok: false,
                detail: "connect refused".into(),
                latency: Duration::from_millis(1),
            };
            web.probe_result(&a, fail);
        }
        let a = phases(&handle)
            .into_iter()
            .find(|(_, n, _)| n == "a")
            .unwrap()
            .2;
        assert_eq!(
            a,
            Sample {
                open: u32::MAX,
                misplaced: 2,
                phase: Phase::Down
            }
        );
    }

    #[test]
    fn the_json_form_uses_config_words() {
        let mut h = History::new(3);
        let t0 = Instant::now();
        let down = Sample {
            open: u32::MAX,
            misplaced: 0,
            phase: Phase::Down,
        };
        h.record(t0, vec![("p".into(), vec![("a".into(), down)])]);
        let v =
            serde_json::to_value(h.view(t0, SystemTime::UNIX_EPOCH + Duration::from_millis(1500)))
                .unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "interval": "2s",
                "span": "5m",
                "now_unix_ms": 1500,
                "at_unix_ms": [1500],
                "pools": [{"name": "p", "nodes": [{
                    "name": "a", "open": [4294967295u32], "misplaced": [0], "state": ["down"]
                }]}]
            })
        );
        for (p, w) in [(Phase::InService, "in_service"), (Phase::Out, "out")] {
            assert_eq!(serde_json::to_value(p).unwrap(), w);
        }
    }
}
