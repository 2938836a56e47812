//! The open connections of each node, so that ringlb can close chosen ones
//! itself: a node's closes on `on_node_down = "close"`, disable and removal, the
//! misplaced ones (rehome), the old ones (lifetime) and, at the end of the
//! shutdown grace, all of them, each through the pool's one close queue paced by
//! `close_rate` (the lifecycle loop drains it).
//!
//! A connection registers once, when its connect succeeded ([`Slot::open`]), and
//! leaves when it ends ([`Live`]'s drop): two locks of its node's registry per
//! connection, none while bytes move. While forwarding, a connection only looks
//! at its own [`ConnCtl`] (an atomic and a waker). The scans that decide what is
//! misplaced or too old run on the lifecycle loop, a few times a second, never on
//! a connection's path. No I/O.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Context;
use std::time::Instant;

use futures_util::task::AtomicWaker;
use slab::Slab;
use tokio::sync::Notify;

use super::{Node, Pool, Slot};
use crate::config::AdminState;

/// Why ringlb closed a connection itself (the close line's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CloseReason {
    /// The node went down while `on_node_down = "close"`.
    NodeDown = 1,
    /// The operator disabled the node.
    Disabled = 2,
    /// A reload removed the node while `on_node_down = "close"`.
    Removed = 3,
    /// The client's home node is back: closed so it reconnects there.
    Rehome = 4,
    /// The listener's `max_connection_duration` ran out.
    Lifetime = 5,
    /// The shutdown grace is ending.
    Shutdown = 6,
}

impl CloseReason {
    pub const ALL: [CloseReason; 6] = [
        CloseReason::NodeDown,
        CloseReason::Disabled,
        CloseReason::Removed,
        CloseReason::Rehome,
        CloseReason::Lifetime,
        CloseReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::NodeDown => "node_down",
            CloseReason::Disabled => "disabled",
            CloseReason::Removed => "removed",
            CloseReason::Rehome => "rehome",
            CloseReason::Lifetime => "lifetime",
            CloseReason::Shutdown => "shutdown",
        }
    }

    fn from_u8(v: u8) -> Option<CloseReason> {
        CloseReason::ALL
            .get(usize::from(v).checked_sub(1)?)
            .copied()
    }
}

/// What a forwarding connection watches: set once, by whoever closes it.
#[derive(Debug, Default)]
pub struct ConnCtl {
    reason: AtomicU8,
    /// A close is queued (or was asked): the scans and other closes leave it
    /// alone. Cleared when a queued close turns out no longer wanted.
    queued: AtomicBool,
    waker: AtomicWaker,
}

impl ConnCtl {
    /// Ask the connection to close (the first reason wins). Returns false if it
    /// was asked already.
    pub fn close(&self, reason: CloseReason) -> bool {
        let first = self
            .reason
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            self.queued.store(true, Ordering::Release);
            self.waker.wake();
        }
        first
    }

    /// Mark it queued for a close; false if it is queued (or closing) already.
    fn queue(&self) -> bool {
        !self.queued.swap(true, Ordering::AcqRel)
    }

    fn is_queued(&self) -> bool {
        self.queued.load(Ordering::Acquire)
    }

    /// The reason it was asked to close, if it was.
    pub fn reason(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.reason.load(Ordering::Acquire))
    }

    /// For the forwarding future: register its waker, then look. Two uncontended
    /// atomic operations on the connection's own state; no lock.
    #[inline]
    pub fn poll_close(&self, cx: &Context<'_>) -> Option<CloseReason> {
        self.waker.register(cx.waker());
        self.reason()
    }
}

/// One registered connection.
#[derive(Debug)]
struct Entry {
    ctl: Arc<ConnCtl>,
    /// The client address (its key is taken with the pool's current prefixes).
    ip: IpAddr,
    since: Instant,
    /// When `max_connection_duration` (plus its jitter) runs out.
    deadline: Option<Instant>,
    /// The snapshot generation `misplaced` was computed for (0: never).
    seen: u64,
    misplaced: bool,
}

/// A node's open connections (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    slab: Slab<Entry>,
    /// Set at the end of the shutdown grace: a connection registering later is
    /// closed at once.
    sealed: Option<CloseReason>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open connections registered.
    pub(super) fn len(&self) -> usize {
        self.lock().slab.len()
    }
}

/// A connection that reached its node and forwards: its [`Slot`] and its place
/// in the node's registry, both given back when dropped.
#[derive(Debug)]
pub struct Live {
    slot: Slot,
    key: usize,
    ctl: Arc<ConnCtl>,
}

impl Slot {
    /// Register the connection (its connect succeeded) so ringlb can close it
    /// later. `deadline`: when its lifetime runs out.
    pub fn open(self, ip: IpAddr, deadline: Option<Instant>) -> Live {
        let ctl = Arc::new(ConnCtl::default());
        let mut inner = self.conns.lock();
        if let Some(reason) = inner.sealed {
            ctl.close(reason);
        }
        let key = inner.slab.insert(Entry {
            ctl: ctl.clone(),
            ip,
            since: Instant::now(),
            deadline,
            seen: 0,
            misplaced: false,
        });
        drop(inner);
        Live {
            slot: self,
            key,
            ctl,
        }
    }
}

impl Live {
    pub fn node(&self) -> &Arc<Node> {
        self.slot.node()
    }

    pub fn ctl(&self) -> &ConnCtl {
        &self.ctl
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let mut inner = self.slot.conns.lock();
        if let Some(e) = inner.slab.try_remove(self.key) {
            if e.misplaced {
                // The count follows at once (under the registry's lock, as the
                // scan's recount); the next scan recounts anyway.
                if let Ok(n) =
                    self.slot
                        .misplaced
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                {
                    self.slot.metrics.misplaced.set((n - 1) as f64);
                }
            }
        }
    }
}

/// A close waiting for its turn in the pool's queue.
#[derive(Debug)]
struct Pending {
    ctl: Arc<ConnCtl>,
    node: Arc<Node>,
    reason: CloseReason,
}

impl Pending {
    /// Still wanted? A node that came back in service (or was enabled again)
    /// keeps the connections not closed yet.
    fn wanted(&self) -> bool {
        if self.ctl.reason().is_some() {
            return false;
        }
        match self.reason {
            CloseReason::NodeDown => !self.node.in_service(),
            CloseReason::Disabled => self.node.admin_state() == AdminState::Disabled,
            _ => true,
        }
    }
}

/// The pool's closes waiting for their turn, oldest connection first within one
/// batch, and the wake-up of the lifecycle loop that drains them.
#[derive(Debug, Default)]
pub(super) struct CloseQueue {
    queue: Mutex<VecDeque<Pending>>,
    wake: Notify,
}

impl CloseQueue {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Pending>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a scan found in one pool (see [`Pool::scan`]).
#[derive(Debug, Default)]
pub struct Scan {
    /// Open connections (registered) in the pool, removed nodes included.
    pub open: usize,
    /// Misplaced connections whose home may take them now, oldest first.
    pub rehome: Vec<RehomeCandidate>,
    /// Connections queued because their lifetime ran out.
    pub expired: usize,
}

/// A misplaced connection that may be closed so its client goes home.
#[derive(Debug)]
pub struct RehomeCandidate {
    ctl: Arc<ConnCtl>,
    node: Arc<Node>,
    home: Arc<Node>,
    since: Instant,
}

impl RehomeCandidate {
    pub fn home(&self) -> &Arc<Node> {
        &self.home
    }
}

impl Pool {
    /// Ask one connection to close, counted by reason if it was not asked yet.
    fn shut(&self, ctl: &ConnCtl, reason: CloseReason) -> bool {
        let first = ctl.close(reason);
        if first {
            self.closed[reason as usize - 1].fetch_add(1, Ordering::Relaxed);
            if let Some(c) = self.metrics.closed(reason.as_str()) {
                c.increment(1);
            }
        }
        first
    }

    /// Close `node`'s open connections for `reason`: through the close queue
    /// when the pool has a `close_rate`, at once when it is 0. Caller may hold
    /// `rebuild`.
    pub(super) fn close_node(&self, node: &Arc<Node>, reason: CloseReason) {
        let mut batch: Vec<(Instant, Arc<ConnCtl>)> = {
            let mut inner = node.conns.lock();
            inner
                .slab
                .iter_mut()
                .filter(|(_, e)| e.ctl.queue())
                .map(|(_, e)| (e.since, e.ctl.clone()))
                .collect()
        };
        if self.settings().close_rate == 0 {
            for (_, ctl) in batch {
                self.shut(&ctl, reason);
            }
            return;
        }
        batch.sort_by_key(|(since, _)| *since);
        let mut q = self.closes.lock();
        q.extend(batch.into_iter().map(|(_, ctl)| Pending {
            ctl,
            node: node.clone(),
            reason,
        }));
        drop(q);
        self.closes.wake.notify_one();
    }

    /// Connections this pool closed itself for `reason`, since it started.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize - 1].load(Ordering::Relaxed)
    }

    /// Closes waiting in the queue.
    pub fn closes_pending(&self) -> usize {
        self.closes.lock().len()
    }

    /// Wakes when closes are queued (the lifecycle loop waits on it).
    pub fn closes_queued(&self) -> &Notify {
        &self.closes.wake
    }

    /// Close queued connections while `take` grants a turn (the pacing); stale
    /// ones (their node is back, or they ended) are dropped without a turn.
    /// Returns how many were closed, by reason.
    pub fn close_queued(&self, mut take: impl FnMut() -> bool) -> Vec<CloseReason> {
        let mut done = Vec::new();
        let mut q = self.closes.lock();
        while let Some(p) = q.front() {
            if !p.wanted() {
                // Free again for the scans and a later close.
                p.ctl.queued.store(false, Ordering::Release);
                q.pop_front();
                continue;
            }
            if !take() {
                break;
            }
            if let Some(p) = q.pop_front() {
                if self.shut(&p.ctl, p.reason) {
                    done.push(p.reason);
                }
            }
        }
        done
    }

    /// Close every open connection of the pool now (end of the shutdown grace),
    /// and any that registers later.
    pub fn close_all_now(&self, reason: CloseReason) -> usize {
        let mut closed = 0;
        for node in self.all_nodes() {
            let mut inner = node.conns.lock();
            inner.sealed = Some(reason);
            for (_, e) in &mut inner.slab {
                closed += usize::from(self.shut(&e.ctl, reason));
            }
        }
        self.closes.lock().clear();
        closed
    }

    /// Queue every open connection of the pool for `reason` (the shutdown
    /// spread), oldest first.
    pub fn queue_all(&self, reason: CloseReason) -> usize {
        let mut batch: Vec<(Instant, Arc<ConnCtl>, Arc<Node>)> = Vec::new();
        for node in self.all_nodes() {
            let mut inner = node.conns.lock();
            for (_, e) in &mut inner.slab {
                if e.ctl.queue() {
                    batch.push((e.since, e.ctl.clone(), node.clone()));
                }
            }
        }
        batch.sort_by_key(|(since, _, _)| *since);
        let n = batch.len();
        self.closes
            .lock()
            .extend(
                batch
                    .into_iter()
                    .map(|(_, ctl, node)| Pending { ctl, node, reason }),
            );
        self.closes.wake.notify_one();
        n
    }

    /// The nodes of the current snapshot, then removed nodes whose connections
    /// are still open (pruned here once they have none).
    pub(super) fn all_nodes(&self) -> Vec<Arc<Node>> {
        let mut nodes = self.snapshot().nodes.clone();
        nodes.extend(self.retired_nodes());
        nodes
    }

    /// Nodes a reload removed whose connections are still open (pruned here
    /// once they have none).
    fn retired_nodes(&self) -> Vec<Arc<Node>> {
        let mut retired = self.lock_retired();
        retired.retain(|n| n.active.load(Ordering::Relaxed) > 0);
        retired.clone()
    }

    /// Look at every open connection: recount the misplaced ones (a connection
    /// whose node is not its client's home on the current ring; every
    /// connection of a removed node is), queue those whose lifetime ran out,
    /// and, with `rehome_after`, list the misplaced ones whose home has been in
    /// service for that long and has room, oldest first.
    pub fn scan(&self, now: Instant, rehome_after: Option<std::time::Duration>) -> Scan {
        let snap = self.snapshot();
        let generation = snap.generation;
        let mut scan = Scan::default();
        let mut expired: Vec<(Arc<ConnCtl>, Arc<Node>)> = Vec::new();
        let retired = self.retired_nodes();
        let nodes = snap.nodes.iter().map(|n| (n, false));
        for (node, removed) in nodes.chain(retired.iter().map(|n| (n, true))) {
            let mut misplaced = 0u64;
            let mut inner = node.conns.lock();
            scan.open += inner.slab.len();
            for (_, e) in &mut inner.slab {
                if e.seen != generation {
                    e.seen = generation;
                    e.misplaced = removed || !snap.is_home(node, e.ip);
                }
                misplaced += u64::from(e.misplaced);
                if e.ctl.is_queued() {
                    continue;
                }
                if e.deadline.is_some_and(|d| d <= now) && e.ctl.queue() {
                    expired.push((e.ctl.clone(), node.clone()));
                    continue;
                }
                if e.misplaced && !removed {
                    if let Some(after) = rehome_after {
                        if let Some(home) = snap.home(e.ip) {
                            if home.in_service_for(now) >= Some(after) {
                                scan.rehome.push(RehomeCandidate {
                                    ctl: e.ctl.clone(),
                                    node: node.clone(),
                                    home: home.clone(),
                                    since: e.since,
                                });
                            }
                        }
                    }
                }
            }
            node.misplaced.store(misplaced, Ordering::Relaxed);
            node.metrics.misplaced.set(misplaced as f64);
            drop(inner);
        }
        scan.rehome.sort_by_key(|c| c.since);
        if !expired.is_empty() {
            scan.expired = expired.len();
            if self.settings().close_rate == 0 {
                for (ctl, _) in expired {
                    self.shut(&ctl, CloseReason::Lifetime);
                }
            } else {
                self.closes
                    .lock()
                    .extend(expired.into_iter().map(|(ctl, node)| Pending {
                        ctl,
                        node,
                        reason: CloseReason::Lifetime,
                    }));
            }
        }
        scan
    }

    /// Close a rehome candidate if its home still has room for one more
    /// (`room` counts the places this round already sent there). Returns true
    /// if it was closed.
    pub fn rehome(&self, c: &RehomeCandidate, room: &mut dyn FnMut(&Arc<Node>) -> bool) -> bool {
        // Ended meanwhile (its registry entry held the other reference), or
        // asked to close for another reason.
        if Arc::strong_count(&c.ctl) == 1 || c.ctl.reason().is_some() {
            return false;
        }
        if !c.home.in_service() || !room(&c.home) {
            return false;
        }
        if !self.shut(&c.ctl, CloseReason::Rehome) {
            return false;
        }
        c.node.rehomed.fetch_add(1, Ordering::Relaxed);
        c.node.metrics.rehomed.increment(1);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use super::super::tests::{ip, open_n, pool_with};
    use super::*;

    #[test]
    fn reasons_round_trip_and_the_first_close_wins() {
        for r in CloseReason::ALL {
            assert_eq!(CloseReason::from_u8(r as u8), Some(r));
        }
        assert_eq!(CloseReason::from_u8(0), None);
        assert_eq!(CloseReason::from_u8(7), None);
        let c = ConnCtl::default();
        assert_eq!(c.reason(), None);
        assert!(c.close(CloseReason::Rehome));
        assert!(!c.close(CloseReason::Shutdown));
        assert_eq!(c.reason(), Some(CloseReason::Rehome));
    }

    #[test]
    fn registering_and_dropping_keeps_the_counts() {
        let p = pool_with("");
        let lives = open_n(&p, 300);
        let total: usize = p.nodes().iter().map(|n| n.conns.len()).sum();
        assert_eq!(total, 300);
        let active: u64 = p
            .nodes()
            .iter()
            .map(|n| n.active.load(Ordering::Relaxed))
            .sum();
        assert_eq!(active, 300);
        drop(lives);
        for n in p.nodes() {
            assert_eq!(n.conns.len(), 0);
            assert_eq!(n.active.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn a_down_node_s_closes_are_queued_oldest_first_and_dropped_once_it_is_back() {
        let p = pool_with("on_node_down = \"close\"\nclose_rate = 10");
        let lives = open_n(&p, 300);
        let on_a: Vec<&Live> = lives.iter().filter(|l| l.node().name == "a").collect();
        assert!(on_a.len() > 50);
        p.set_up("a", false, "test");
        assert_eq!(p.closes_pending(), on_a.len());
        // Three turns: the three oldest of a's connections close.
        let mut turns = 3;
        let closed = p.close_queued(|| {
            turns -= 1;
            turns >= 0
        });
        assert_eq!(closed, vec![CloseReason::NodeDown; 3]);
        for (i, l) in on_a.iter().enumerate() {
            assert_eq!(l.ctl().reason().is_some(), i < 3, "{i}");
        }
        assert!(lives
            .iter()
            .filter(|l| l.node().name != "a")
            .all(|l| l.ctl().reason().is_none()));
        // Back in service: the rest are kept.
        p.set_up("a", true, "test");
        assert!(p.close_queued(|| true).is_empty());
        assert_eq!(p.closes_pending(), 0);
        assert_eq!(
            on_a.iter().filter(|l| l.ctl().reason().is_some()).count(),
            3
        );
        // Down again: the ones it kept are queued again (and only those).
        p.set_up("a", false, "test");
        assert_eq!(p.closes_pending(), on_a.len() - 3);
    }

    #[test]
    fn unpaced_closes_happen_at_once_and_a_sealed_registry_closes_newcomers() {
        let p = pool_with("on_node_down = \"close\"\nclose_rate = 0");
        let lives = open_n(&p, 100);
        p.set_up("b", false, "test");
        assert_eq!(p.closes_pending(), 0);
        for l in &lives {
            assert_eq!(
                l.ctl().reason(),
                (l.node().name == "b").then_some(CloseReason::NodeDown)
            );
        }
        let open = lives.iter().filter(|l| l.ctl().reason().is_none()).count();
        assert_eq!(p.close_all_now(CloseReason::Shutdown), open);
        let late = p
            .snapshot()
            .candidates(ip(1000))
            .next()
            .unwrap()
            .open(ip(1000), None);
        assert_eq!(late.ctl().reason(), Some(CloseReason::Shutdown));
    }

    #[test]
    fn the_scan_counts_misplaced_queues_expired_and_lists_rehome_candidates() {
        let p = pool_with("close_rate = 5");
        p.set_up("a", false, "test");
        // Placed while a is down: a's clients are on b and c.
        let lives = open_n(&p, 300);
        let now = Instant::now();
        let s = p.scan(now, Some(Duration::ZERO));
        assert_eq!(s.open, 300);
        assert!(s.rehome.is_empty(), "a is not in service");
        let misplaced: u64 = p
            .nodes()
            .iter()
            .map(|n| n.misplaced.load(Ordering::Relaxed))
            .sum();
        assert_eq!(misplaced, 0, "nothing is misplaced while a is down");
        p.set_up("a", true, "test");
        let homes_a: usize = (0..300)
            .filter(|&i| p.snapshot().select(ip(i)).next().unwrap().name == "a")
            .count();
        let s = p.scan(Instant::now(), Some(Duration::from_secs(3600)));
        assert!(s.rehome.is_empty(), "a has not been up for an hour");
        let misplaced: u64 = p
            .nodes()
            .iter()
            .map(|n| n.misplaced.load(Ordering::Relaxed))
            .sum();
        assert_eq!(misplaced as usize, homes_a);
        let s = p.scan(Instant::now(), Some(Duration::ZERO));
        assert_eq!(s.rehome.len(), homes_a);
        assert!(s.rehome.iter().all(|c| c.home().name == "a"));
        assert!(
            s.rehome.windows(2).all(|w| w[0].since <= w[1].since),
            "oldest first"
        );
        let mut n = 0;
        for c in &s.rehome {
            p.rehome(c, &mut |_| true);
            n += 1;
        }
        assert_eq!(n, homes_a);
        let rehomed: u64 = p
            .nodes()
            .iter()
            .map(|n| n.rehomed.load(Ordering::Relaxed))
            .sum();
        assert_eq!(rehomed as usize, homes_a);
        for (i, l) in lives.iter().enumerate() {
            let home = p
                .snapshot()
                .select(ip(i as u32))
                .next()
                .unwrap()
                .name
                .clone();
            let closed = l.ctl().reason() == Some(CloseReason::Rehome);
            assert_eq!(closed, home == "a", "exactly a's clients are sent home");
        }
        drop(lives);

        // Lifetime: an expired connection is queued once.
        let slot = p.snapshot().candidates(ip(1)).next().unwrap();
        let l = slot.open(ip(1), Some(Instant::now()));
        let s = p.scan(Instant::now() + Duration::from_millis(1), None);
        assert_eq!(s.expired, 1);
        let s = p.scan(Instant::now() + Duration::from_millis(1), None);
        assert_eq!(s.expired, 0);
        assert_eq!(p.close_queued(|| true), vec![CloseReason::Lifetime]);
        assert_eq!(l.ctl().reason(), Some(CloseReason::Lifetime));
    }

    #[test]
    fn ipv6_clients_register_too() {
        let p = pool_with("");
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        let slot = p.snapshot().candidates(v6).next().unwrap();
        let l = slot.open(v6, None);
        assert_eq!(p.scan(Instant::now(), None).open, 1);
        drop(l);
        assert_eq!(p.scan(Instant::now(), None).open, 0);
    }
}

#[cfg(test)]
mod size {
    use super::*;

    /// What the bookkeeping costs each open connection: its registry entry
    /// (in the node's slab) and its `ConnCtl` (behind an `Arc`: two counts).
    #[test]
    fn the_bookkeeping_per_connection_stays_small() {
        // A slab slot is the entry or a vacant marker (no larger).
        let entry = std::mem::size_of::<Option<Entry>>();
        let ctl = std::mem::size_of::<ConnCtl>() + 2 * std::mem::size_of::<usize>();
        let live = std::mem::size_of::<Live>();
        eprintln!("registry entry {entry} B, ConnCtl {ctl} B, Live {live} B");
        assert!(entry + ctl <= 160, "{entry} + {ctl}");
        assert!(live <= 24, "{live}");
    }
}
