//! The running balancer's shared state and [`Handle`], the narrow view of it that
//! the admin endpoint, the signal handler and tests hold: ask for a reload, read the
//! config, pools, listeners, reload history and per-worker load.
//!
//! Owned by [`server`](crate::server), which creates it and publishes new
//! snapshots into it (listeners, pools, config); read by [`admin`](crate::admin),
//! which therefore never names the server. Must not own sockets or tasks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::admission::ListenerShared;
use crate::config::Config;
use crate::metrics::ServerMetrics;
use crate::pool::Pool;
use crate::workers::WorkerLoad;

/// The outcome of the last reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadRecord {
    pub ok: bool,
    pub at: SystemTime,
    /// The change summary, or every problem found.
    pub message: String,
    /// Config generation after this reload.
    pub generation: u64,
}

/// The process this one took over from in a binary upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Predecessor {
    pub pid: u32,
    /// When this process took over (it started accepting).
    pub at: SystemTime,
    /// From the new process's first word to the old one until it accepted.
    pub takeover_ms: u64,
}

/// A finished upgrade, as the old process saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpgradeDone {
    pub old_pid: u32,
    pub new_pid: u32,
    /// From starting the new binary until it accepted.
    pub took_ms: u64,
    /// Connections the old process still forwards (it drains them).
    pub open_connections: usize,
}

/// The answer to an [`UpgradeRequest`]: done, or why not (the old process keeps
/// serving).
pub type UpgradeReply = Result<UpgradeDone, String>;

/// A request for a binary upgrade (`ringlb upgrade`, SIGUSR2).
#[derive(Debug)]
pub struct UpgradeRequest {
    /// The binary to start; `None`: the one this process was started from.
    pub binary: Option<PathBuf>,
    /// Who asked, for the log.
    pub by: &'static str,
    /// Where the outcome goes (`None`: only logged).
    pub reply: Option<oneshot::Sender<UpgradeReply>>,
}

/// A listener as the status output sees it.
#[derive(Debug, Clone)]
pub struct ListenerView {
    pub local_addr: SocketAddr,
    pub shared: Arc<ListenerShared>,
}

/// State shared between the server, its reload loop, the admin endpoint and
/// [`Handle`]s.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ArcSwap<Config>,
    pub(crate) pools: ArcSwap<BTreeMap<String, Arc<Pool>>>,
    pub(crate) listeners: ArcSwap<Vec<ListenerView>>,
    pub(crate) generation: AtomicU64,
    pub(crate) reloads_ok: AtomicU64,
    pub(crate) reloads_failed: AtomicU64,
    pub(crate) last_reload: Mutex<Option<ReloadRecord>>,
    pub(crate) reload_requested: Notify,
    /// Discovery changed a pool's nodes: the control loop makes the probers
    /// and agents follow.
    pub(crate) nodes_changed: Arc<Notify>,
    /// Each discovering pool's shared state, by pool (for `/status`).
    pub(crate) discovery: Mutex<BTreeMap<String, Arc<crate::discovery::Shared>>>,
    pub(crate) started: SystemTime,
    /// This process's id (fixed in tests).
    pub(crate) pid: u32,
    /// Set once, when this process took over from an older one.
    pub(crate) upgraded_from: OnceLock<Predecessor>,
    /// Set once, when this process handed over to a newer one (it drains).
    pub(crate) handed_over_to: OnceLock<u32>,
    /// Upgrade requests, read by the control loop.
    pub(crate) upgrades: mpsc::UnboundedSender<UpgradeRequest>,
    /// One per data-plane runtime (one for the runtime `run` is called on).
    pub(crate) workers: Vec<Arc<WorkerLoad>>,
    pub(crate) metrics: ServerMetrics,
    /// Where the process is in its stop, for `/ready`.
    pub(crate) stopping: Mutex<Stopping>,
    /// Cancelled by a second stop signal during the withdrawal: stop now.
    pub(crate) skip_withdrawal: CancellationToken,
}

/// Where a process is in its stop: serving (neither), withdrawing (`/ready`
/// answers 503 while it still accepts, until `withdraw_until`), draining.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Stopping {
    pub(crate) withdraw_until: Option<Instant>,
    pub(crate) draining: bool,
}

/// A cheap, cloneable handle on a server: ask for a reload, read its state.
#[derive(Debug, Clone)]
pub struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl Handle {
    /// Ask for a reload of the config file. Requests made while a reload runs are
    /// folded into one more reload after it, so the last request is never lost and
    /// two reloads never run at once.
    pub fn reload(&self) {
        self.shared.reload_requested.notify_one();
    }

    /// What DNS discovery of `pool` did last (`None`: the pool lists its nodes).
    pub fn discovery(&self, pool: &str) -> Option<crate::discovery::DiscoveryStatus> {
        let map = self
            .shared
            .discovery
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.get(pool).map(|s| s.status())
    }

    /// Config generation: 1 at start, +1 per applied reload.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    pub fn last_reload(&self) -> Option<ReloadRecord> {
        self.shared
            .last_reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads applied and refused.
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.shared.reloads_ok.load(Ordering::Relaxed),
            self.shared.reloads_failed.load(Ordering::Relaxed),
        )
    }

    pub fn config(&self) -> Arc<Config> {
        self.shared.config.load_full()
    }

    pub fn pools(&self) -> Arc<BTreeMap<String, Arc<Pool>>> {
        self.shared.pools.load_full()
    }

    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.shared.pools.load().get(name).cloned()
    }

    pub fn listeners(&self) -> Arc<Vec<ListenerView>> {
        self.shared.listeners.load_full()
    }

    /// The bound address of a listener, by its current name.
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.shared
            .listeners
            .load()
            .iter()
            .find(|l| l.shared.state.load().config.name == listener)
            .map(|l| l.local_addr)
    }

    pub fn started(&self) -> SystemTime {
        self.shared.started
    }

    /// Ask for a binary upgrade. The outcome goes to `request.reply`; a server
    /// that no longer takes requests (stopping, or it handed over already) answers
    /// at once with the reason.
    pub fn upgrade(&self, request: UpgradeRequest) {
        if let Some(pid) = self.shared.handed_over_to.get() {
            let reason = format!(
                "this process (pid {}) has handed over to pid {pid} and is draining; ask pid {pid}",
                std::process::id()
            );
            return refuse_upgrade(request, reason);
        }
        if let Err(mpsc::error::SendError(r)) = self.shared.upgrades.send(request) {
            refuse_upgrade(r, "this process is shutting down".into());
        }
    }

    /// The id of the process serving.
    pub fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// The process this one took over from, if it was started by an upgrade.
    pub fn upgraded_from(&self) -> Option<Predecessor> {
        self.shared.upgraded_from.get().copied()
    }

    /// The process this one handed over to, if it did.
    pub fn handed_over_to(&self) -> Option<u32> {
        self.shared.handed_over_to.get().copied()
    }

    /// Each worker's connections.
    pub fn workers(&self) -> &[Arc<WorkerLoad>] {
        &self.shared.workers
    }

    /// Whether the balancer should get new traffic (`GET /ready`): `Ok` while it
    /// serves and every pool has a node in service; otherwise why not, e.g.
    /// `withdrawing: stopping in 3s`, `draining`, `pool web: no node in service`
    /// (every pool without one, `; `-separated).
    pub fn readiness(&self) -> Result<(), String> {
        let stopping = self.stopping();
        if stopping.draining || self.handed_over_to().is_some() {
            return Err("draining".into());
        }
        if let Some(until) = stopping.withdraw_until {
            let left = until.saturating_duration_since(Instant::now());
            // Whole seconds, rounded up: "in 0s" only once it is over.
            let secs = left.as_millis().div_ceil(1000);
            return Err(format!("withdrawing: stopping in {secs}s"));
        }
        let empty: Vec<String> = self
            .pools()
            .iter()
            .filter(|(_, p)| !p.nodes().iter().any(|n| n.in_service()))
            .map(|(name, _)| format!("pool {name}: no node in service"))
            .collect();
        if empty.is_empty() {
            Ok(())
        } else {
            Err(empty.join("; "))
        }
    }

    /// Whether the process is withdrawing (stopping, `/ready` answers 503, still
    /// accepting for `withdraw_delay`).
    pub fn withdrawing(&self) -> bool {
        let s = self.stopping();
        s.withdraw_until.is_some() && !s.draining
    }

    /// End the withdrawal now (a second stop signal): stop accepting, then drain.
    pub fn skip_withdrawal(&self) {
        self.shared.skip_withdrawal.cancel();
    }

    fn stopping(&self) -> Stopping {
        *self
            .shared
            .stopping
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Mark the stop's phases (for `/ready`).
    pub(crate) fn set_stopping(&self, f: impl FnOnce(&mut Stopping)) {
        f(&mut self
            .shared
            .stopping
            .lock()
            .unwrap_or_else(|e| e.into_inner()));
    }
}

/// Answer an upgrade request with a refusal, and log it.
pub(crate) fn refuse_upgrade(request: UpgradeRequest, reason: String) {
    tracing::warn!(by = request.by, "upgrade refused: {reason}");
    if let Some(reply) = request.reply {
        let _ = reply.send(Err(reason));
    }
}
