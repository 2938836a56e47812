//! The lifecycle loop of a pool: the one place where ringlb closes connections
//! on its own initiative, paced ([`pacing`]). One task per pool:
//!
//! * drains the pool's close queue (a node down with `on_node_down = "close"`,
//!   disabled, removed by a reload; lifetimes run out) at `close_rate` per second;
//! * a few times a second, scans the pool's open connections ([`Pool::scan`]):
//!   recounts the misplaced ones, queues those past their
//!   `max_connection_duration`, and with `rehome` closes misplaced ones whose
//!   home has been in service for `after` and has room, oldest first, at the
//!   rehome `rate` (and within `close_rate`);
//! * during a shutdown ([`DrainPlan`]), starts closing early enough that the
//!   pool's connections are spread over the end of the grace instead of all
//!   closing at its last instant.
//!
//! It never picks nodes for new clients and never changes a node's state. Runs
//! on the control runtime, never on a worker; costs nothing per byte.

pub mod pacing;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::pool::{CloseReason, Node, Pool, RehomeCandidate};
use pacing::Pacer;

/// How often the open connections are scanned (misplaced count, lifetimes,
/// rehome).
const SCAN_EVERY: Duration = Duration::from_millis(250);
/// How often during a shutdown (when to start spreading the closes).
const DRAIN_SCAN_EVERY: Duration = Duration::from_millis(50);

/// A shutdown in progress: the grace ends at `deadline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainPlan {
    pub deadline: std::time::Instant,
    pub grace: Duration,
}

/// The closes per second that spread `open` connections over the end of a
/// grace: at least `close_rate`, more if the grace is too short for it at that
/// rate (then they are spread over the whole grace). 0 when unpaced.
pub fn drain_rate(close_rate: u32, open: usize, grace: Duration) -> u32 {
    if close_rate == 0 {
        return 0;
    }
    let secs = grace.as_secs_f64();
    let needed = if secs > 0.0 {
        (open as f64 / secs).ceil().min(f64::from(u32::MAX)) as u32
    } else {
        u32::MAX
    };
    close_rate.max(needed)
}

/// A pool's running lifecycle loop.
#[derive(Debug)]
pub struct Lifecycle {
    pub pool: Arc<Pool>,
    stop: CancellationToken,
    retire: CancellationToken,
    task: JoinHandle<()>,
}

impl Lifecycle {
    /// Start the loop of `pool` (on the current runtime). It follows `drain`
    /// and ends when `stop` is cancelled.
    pub fn start(
        pool: Arc<Pool>,
        drain: watch::Receiver<Option<DrainPlan>>,
        stop: &CancellationToken,
    ) -> Lifecycle {
        let stop = stop.child_token();
        let retire = CancellationToken::new();
        let task = tokio::spawn(run(pool.clone(), drain, stop.clone(), retire.clone()));
        Lifecycle {
            pool,
            stop,
            retire,
            task,
        }
    }

    /// The pool left the config: the loop goes on closing what it must while
    /// the pool's connections last, then ends.
    pub fn retire(&self) {
        self.retire.cancel();
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stop the loop and wait for it.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The lifecycle loops of a server's pools, kept in step with its pools by
/// [`Lifecycles::sync`]; loops of removed pools finish their work first.
#[derive(Debug)]
pub struct Lifecycles {
    running: BTreeMap<String, Lifecycle>,
    retired: Vec<Lifecycle>,
    drain: watch::Sender<Option<DrainPlan>>,
    stop: CancellationToken,
}

impl Default for Lifecycles {
    fn default() -> Self {
        Lifecycles {
            running: BTreeMap::new(),
            retired: Vec::new(),
            drain: watch::channel(None).0,
            stop: CancellationToken::new(),
        }
    }
}

impl Drop for Lifecycles {
    /// A server dropped without its shutdown stops its loops too.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Lifecycles {
    /// One loop per pool of `pools` (on the current runtime): new pools get
    /// one, removed ones are retired.
    pub fn sync(&mut self, pools: &BTreeMap<String, Arc<Pool>>) {
        let running = std::mem::take(&mut self.running);
        for (name, l) in running {
            match pools.get(&name) {
                Some(p) if Arc::ptr_eq(p, &l.pool) => {
                    self.running.insert(name, l);
                }
                _ => {
                    l.retire();
                    self.retired.push(l);
                }
            }
        }
        self.retired.retain(|l| !l.is_finished());
        for (name, pool) in pools {
            if !self.running.contains_key(name) {
                let l = Lifecycle::start(pool.clone(), self.drain.subscribe(), &self.stop);
                self.running.insert(name.clone(), l);
            }
        }
    }

    /// The shutdown started: its grace ends at `plan.deadline`.
    pub fn begin_drain(&self, plan: DrainPlan) {
        self.drain.send_replace(Some(plan));
    }

    /// Close every open connection of every pool now (removed pools too), and
    /// any that registers later. Returns how many were asked to close.
    pub fn close_all_now(&self, reason: CloseReason) -> usize {
        self.running
            .values()
            .chain(&self.retired)
            .map(|l| l.pool.close_all_now(reason))
            .sum()
    }

    /// Connections closed for `reason` by every pool (removed pools too).
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.running
            .values()
            .chain(&self.retired)
            .map(|l| l.pool.closed(reason))
            .sum()
    }

    /// Stop every loop and wait for them.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let loops: Vec<Lifecycle> = std::mem::take(&mut self.running)
            .into_values()
            .chain(std::mem::take(&mut self.retired))
            .collect();
        for l in loops {
            l.shutdown().await;
        }
    }
}

async fn run(
    pool: Arc<Pool>,
    mut drain: watch::Receiver<Option<DrainPlan>>,
    stop: CancellationToken,
    retire: CancellationToken,
) {
    let now = Instant::now();
    let mut closes = Pacer::new(pool.settings().close_rate, now.into_std());
    let mut rehomes: Option<Pacer> = None;
    let mut rehoming = Rehoming::default();
    let mut next_scan = now;
    let mut draining: Option<Drain> = None;
    loop {
        let now = Instant::now();
        let std_now = now.into_std();
        let settings = pool.settings();
        let plan = *drain.borrow_and_update();
        match (plan, &mut draining) {
            (Some(plan), None) => draining = Some(Drain::new(plan)),
            (None, Some(_)) => draining = None,
            _ => {}
        }
        let rate = draining
            .as_ref()
            .and_then(|d| d.rate)
            .unwrap_or(settings.close_rate);
        closes.set_rate(rate, std_now);

        // 1. Queued closes, as far as the bucket lets.
        let done = pool.close_queued(|| closes.take(std_now));
        if !done.is_empty() {
            debug!(pool = %pool.name, closed = done.len(), "paced closes");
        }

        // 2. The scan.
        if now >= next_scan {
            let rehome = settings.rehome;
            let scan = pool.scan(std_now, rehome.map(|r| r.after));
            next_scan = now
                + if draining.is_some() {
                    DRAIN_SCAN_EVERY
                } else {
                    SCAN_EVERY
                };
            match rehome {
                Some(r) if draining.is_none() => {
                    rehomes
                        .get_or_insert_with(|| Pacer::new(r.rate, std_now))
                        .set_rate(r.rate, std_now);
                    rehoming = Rehoming::new(scan.rehome);
                }
                _ => {
                    rehomes = None;
                    rehoming = Rehoming::default();
                }
            }
            if let Some(d) = draining.as_mut() {
                d.step(&pool, scan.open, settings.close_rate, std_now);
            }
            if retire.is_cancelled() && scan.open == 0 && !has_places(&pool) {
                debug!(pool = %pool.name, "removed pool has no connection left; its lifecycle loop ends");
                return;
            }
        }
        // 3. Rehome: the misplaced connections of the last scan, as far as
        //    both buckets let (a queued close goes first).
        if let Some(p) = rehomes.as_mut() {
            if pool.closes_pending() == 0 {
                rehoming.close_some(&pool, p, &mut closes, std_now);
            }
        }
        let pending = pool.closes_pending();
        pool.metrics.closes_pending.set(pending as f64);

        // 4. Wait: the next scan, the next token (with jitter) when closes
        //    wait, new closes queued, a shutdown starting, or the stop.
        let mut wake = next_scan;
        if pending > 0 || !rehoming.queue.is_empty() {
            let mut at = closes.next_token(std_now);
            if let Some(p) = rehomes.as_mut().filter(|_| pending == 0) {
                at = at.max(p.next_token(std_now));
            }
            let jitter = closes.interval().mul_f64(fastrand::f64());
            wake = wake.min(Instant::from_std(at) + jitter);
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = pool.closes_queued().notified() => {}
            // The sender gone (its server dropped without a shutdown): stop.
            changed = drain.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Any node of the pool still holds a place (a connection connecting or open).
fn has_places(pool: &Pool) -> bool {
    pool.nodes()
        .iter()
        .any(|n| n.active.load(std::sync::atomic::Ordering::Relaxed) > 0)
}

/// The misplaced connections the last scan found, oldest first, and how many
/// clients were sent to each home since (so a home is not sent more than it
/// has room for before they arrive).
#[derive(Debug, Default)]
struct Rehoming {
    queue: VecDeque<RehomeCandidate>,
    sent: HashMap<usize, u64>,
}

impl Rehoming {
    fn new(candidates: Vec<RehomeCandidate>) -> Rehoming {
        Rehoming {
            queue: candidates.into(),
            sent: HashMap::new(),
        }
    }

    /// Close misplaced connections, oldest first, while both buckets have a
    /// token and each one's home has room (its cap and its balance_factor
    /// bound, counting those already sent there).
    fn close_some(
        &mut self,
        pool: &Pool,
        rehomes: &mut Pacer,
        closes: &mut Pacer,
        now: std::time::Instant,
    ) {
        if self.queue.is_empty() {
            return;
        }
        let snap = pool.snapshot();
        let bound = snap
            .settings
            .balance_factor_permille
            .map(|permille| snap.load_bound(permille));
        let sent = &mut self.sent;
        let mut room = |home: &Arc<Node>| {
            let n = sent.entry(Arc::as_ptr(home) as usize).or_insert(0);
            let after = home.active.load(std::sync::atomic::Ordering::Relaxed) + *n + 1;
            let fits = home.max_connections().map_or(true, |cap| after <= cap)
                && bound.map_or(true, |b| after <= b);
            if fits {
                *n += 1;
            }
            fits
        };
        let mut closed = 0;
        while rehomes.ready(now) && closes.ready(now) {
            let Some(c) = self.queue.pop_front() else {
                break;
            };
            if pool.rehome(&c, &mut room) {
                rehomes.take(now);
                closes.take(now);
                closed += 1;
            }
        }
        if closed > 0 {
            debug!(pool = %pool.name, closed, waiting = self.queue.len(), "rehome: closed misplaced connections so their clients reconnect home");
        }
    }
}

/// The shutdown spread of one pool.
#[derive(Debug)]
struct Drain {
    plan: DrainPlan,
    /// Set once the closes started: the rate they go at.
    rate: Option<u32>,
    /// Open connections at the first look.
    open_at_start: Option<usize>,
}

impl Drain {
    fn new(plan: DrainPlan) -> Drain {
        Drain {
            plan,
            rate: None,
            open_at_start: None,
        }
    }

    /// Start the closes once the open connections at the drain's rate need
    /// the rest of the grace.
    fn step(&mut self, pool: &Pool, open: usize, close_rate: u32, now: std::time::Instant) {
        let n0 = *self.open_at_start.get_or_insert(open);
        if self.rate.is_some() || open == 0 || close_rate == 0 {
            return;
        }
        let rate = drain_rate(close_rate, n0, self.plan.grace);
        let left = self.plan.deadline.saturating_duration_since(now);
        if open as f64 >= f64::from(rate) * left.as_secs_f64() {
            self.rate = Some(rate);
            let queued = pool.queue_all(CloseReason::Shutdown);
            info!(pool = %pool.name, open, queued, rate, left_ms = left.as_millis() as u64,
                "shutdown grace ending: closing the open connections at {rate}/s so clients do not reconnect all at once");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropped_or_shut_down_the_loops_end() {
        let cfg = crate::config::Config::parse(
            "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\n[[pools.p.nodes]]\naddr = \"127.0.0.1:1001\"\n",
            "t.toml",
        )
        .unwrap();
        let pools: BTreeMap<String, Arc<Pool>> =
            [("p".to_string(), Arc::new(Pool::new(&cfg.pools["p"])))].into();
        let mut ls = Lifecycles::default();
        ls.sync(&pools);
        let stop = ls.stop.clone();
        let task_of = |ls: &Lifecycles| ls.running["p"].stop.clone();
        let child = task_of(&ls);
        drop(ls);
        assert!(stop.is_cancelled() && child.is_cancelled());
        // A removed pool's loop ends once it has no connection.
        let mut ls = Lifecycles::default();
        ls.sync(&pools);
        ls.sync(&BTreeMap::new());
        assert_eq!(ls.retired.len(), 1);
        for _ in 0..100 {
            if ls.retired[0].is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ls.retired[0].is_finished());
        ls.shutdown().await;
    }

    #[test]
    fn drain_rate_is_close_rate_unless_the_grace_is_too_short() {
        assert_eq!(drain_rate(0, 5000, Duration::from_secs(30)), 0);
        assert_eq!(drain_rate(100, 2000, Duration::from_secs(30)), 100);
        assert_eq!(drain_rate(100, 6000, Duration::from_secs(30)), 200);
        assert_eq!(drain_rate(10, 5, Duration::ZERO), u32::MAX);
    }
}
