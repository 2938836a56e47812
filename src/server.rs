//! The running balancer: binds every listener, builds every pool, runs the accept
//! loops, the health probes, the admin endpoint and the reload loop; on shutdown it
//! stops accepting, then drains open connections for `shutdown_grace` before
//! closing the rest.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::{self, AdminServer};
use crate::config::{fmt_duration, Config, ListenerConfig};
use crate::error::Error;
use crate::health::Prober;
use crate::listener::{self, BoundListener, ListenerShared, ListenerState};
use crate::metrics::ServerMetrics;
use crate::pool::Pool;
use crate::reload;
pub use crate::rlimit::raise_nofile_limit;
use crate::workers::WorkerLoad;

/// How long connections get to finish after being told to close at the end of the
/// grace period (they close at once; this only bounds a pathological case).
const HARD_STOP_WAIT: Duration = Duration::from_secs(5);

/// What shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections open when accepting stopped.
    pub open_at_shutdown: usize,
    /// Connections still open when the grace period ran out (closed by force).
    pub closed_at_grace: usize,
}

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

/// A listener as the status output sees it.
#[derive(Debug, Clone)]
pub struct ListenerView {
    pub local_addr: SocketAddr,
    pub shared: Arc<ListenerShared>,
}

/// State shared between the server, its reload loop, the admin endpoint and
/// [`Handle`]s.
#[derive(Debug)]
struct Shared {
    config: ArcSwap<Config>,
    pools: ArcSwap<BTreeMap<String, Arc<Pool>>>,
    listeners: ArcSwap<Vec<ListenerView>>,
    generation: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_reload: Mutex<Option<ReloadRecord>>,
    reload_requested: Notify,
    started: SystemTime,
    /// One per data-plane runtime (one for the runtime `run` is called on).
    workers: Vec<Arc<WorkerLoad>>,
    metrics: ServerMetrics,
}

/// A cheap, cloneable handle on a server: ask for a reload, read its state.
#[derive(Debug, Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    /// Ask for a reload of the config file. Requests made while a reload runs are
    /// folded into one more reload after it, so the last request is never lost and
    /// two reloads never run at once.
    pub fn reload(&self) {
        self.shared.reload_requested.notify_one();
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

    /// Each worker's connections.
    pub fn workers(&self) -> &[Arc<WorkerLoad>] {
        &self.shared.workers
    }
}

/// One running listener.
struct Running {
    local_addr: SocketAddr,
    /// One socket per worker (see `listener::bind`); each accept loop gets its
    /// own descriptor of its socket.
    sockets: Vec<Arc<std::net::TcpListener>>,
    shared: Arc<ListenerShared>,
    stop: CancellationToken,
    /// One accept loop per worker (or one on the server's runtime).
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    fn name(&self) -> String {
        self.shared.state.load().config.name.clone()
    }

    fn config(&self) -> ListenerConfig {
        self.shared.state.load().config.clone()
    }
}

/// A bound balancer, ready to [`run`](Server::run).
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<Running>,
    probers: BTreeMap<String, Prober>,
    admin: Option<AdminServer>,
    pending_admin: Option<TcpListener>,
    pid_file: Option<PathBuf>,
    /// The runtimes that accept and serve connections: the workers' (see
    /// `workers.rs`), or empty for the runtime `run` is called on.
    data_plane: Vec<tokio::runtime::Handle>,
    tracker: TaskTracker,
    /// Closes every open connection: cancelled by the shutdown only, after it
    /// has counted them.
    hard_stop: CancellationToken,
    /// Asks the shutdown to close what is left now (a second stop signal).
    close_now: CancellationToken,
    probe_stop: CancellationToken,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listeners", &self.local_addrs())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Build pools and bind every listener (and the admin endpoint). Must run
    /// inside a tokio runtime. Nothing is accepted until [`run`](Server::run), and
    /// then on the runtime `run` is called on.
    pub fn bind(config: Config) -> Result<Server, Error> {
        Server::bind_on(config, &[])
    }

    /// [`bind`](Server::bind), to accept and serve connections on `data_plane`
    /// (normally [`Workers::handles`](crate::workers::Workers::handles)): every
    /// listener gets one socket and one accept loop per runtime, and a connection
    /// stays on the runtime that accepted it. The runtime [`run`](Server::run) is
    /// called on keeps only the control work (health probes, admin endpoint,
    /// reloads). Empty: like `bind`. The runtimes must outlive `run`.
    pub fn bind_on(config: Config, data_plane: &[tokio::runtime::Handle]) -> Result<Server, Error> {
        if config.admin.is_some() {
            crate::metrics::install_prometheus();
        }
        let hard_stop = CancellationToken::new();
        let pools: BTreeMap<String, Arc<Pool>> = config
            .pools
            .iter()
            .map(|(name, p)| (name.clone(), Arc::new(Pool::with_stop(p, &hard_stop))))
            .collect();
        let mut listeners = Vec::new();
        for lc in &config.listeners {
            let bound = listener::bind(lc, data_plane.len().max(1))?;
            listeners.push(running(bound, &pools, &hard_stop));
        }
        let pending_admin = match &config.admin {
            Some(a) => Some(admin::bind(a.listen)?),
            None => None,
        };
        let metrics = ServerMetrics::new();
        metrics.generation.set(1.0);
        let shared = Arc::new(Shared {
            config: ArcSwap::from_pointee(config.clone()),
            pools: ArcSwap::from_pointee(pools),
            listeners: ArcSwap::from_pointee(Vec::new()),
            generation: AtomicU64::new(1),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_reload: Mutex::new(None),
            reload_requested: Notify::new(),
            started: SystemTime::now(),
            workers: (0..data_plane.len().max(1))
                .map(|i| Arc::new(WorkerLoad::new(i)))
                .collect(),
            metrics,
        });
        let server = Server {
            shared,
            listeners,
            probers: BTreeMap::new(),
            admin: None,
            pending_admin,
            pid_file: None,
            data_plane: data_plane.to_vec(),
            tracker: TaskTracker::new(),
            hard_stop,
            close_now: CancellationToken::new(),
            probe_stop: CancellationToken::new(),
        };
        server.publish_listeners();
        Ok(server)
    }

    /// A handle for reloads and status (valid before and during `run`).
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.shared.config.load_full()
    }

    /// The bound address of a listener (useful with port 0).
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.handle().local_addr(listener)
    }

    /// Every listener's name and bound address.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .map(|l| (l.name(), l.local_addr))
            .collect()
    }

    /// The admin endpoint's bound address, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.pending_admin
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .or_else(|| self.admin.as_ref().map(|a| a.local_addr))
    }

    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.handle().pool(name)
    }

    /// Cancelling this token makes the shutdown close open connections at once
    /// (as when the grace period runs out), after counting them; cancelled
    /// before the shutdown, it only takes effect then. Use it for a second Ctrl-C.
    pub fn hard_stop(&self) -> CancellationToken {
        self.close_now.clone()
    }

    fn publish_listeners(&self) {
        let views = self
            .listeners
            .iter()
            .map(|r| ListenerView {
                local_addr: r.local_addr,
                shared: r.shared.clone(),
            })
            .collect();
        self.shared.listeners.store(Arc::new(views));
    }

    /// Sockets per listener: one per data-plane runtime.
    fn sockets_per_listener(&self) -> usize {
        self.data_plane.len().max(1)
    }

    fn start_listener(&mut self, i: usize) {
        let r = &mut self.listeners[i];
        if !r.tasks.is_empty() {
            return;
        }
        let ambient;
        let runtimes = if self.data_plane.is_empty() {
            ambient = [tokio::runtime::Handle::current()];
            &ambient[..]
        } else {
            &self.data_plane[..]
        };
        for ((rt, socket), worker) in runtimes.iter().zip(&r.sockets).zip(&self.shared.workers) {
            let socket = match socket.try_clone() {
                Ok(s) => s,
                Err(e) => {
                    error!(listener = %r.name(), error = %e, "cannot start an accept loop: no descriptor for the listening socket");
                    continue;
                }
            };
            r.tasks.push(rt.spawn(listener::accept_loop(
                socket,
                r.local_addr,
                r.shared.clone(),
                worker.clone(),
                self.tracker.clone(),
                r.stop.clone(),
            )));
        }
        let st = r.shared.state.load();
        info!(listener = %st.config.name, addr = %r.local_addr, pool = %st.config.pool, accept_loops = r.tasks.len(), "listening");
    }

    /// Serve until `shutdown` is cancelled, then stop accepting and drain. Reloads
    /// requested through [`Handle::reload`] are applied one at a time meanwhile.
    pub async fn run(mut self, shutdown: CancellationToken) -> ShutdownReport {
        for i in 0..self.listeners.len() {
            self.start_listener(i);
        }
        for (name, pool) in self.shared.pools.load().iter() {
            self.probers
                .insert(name.clone(), Prober::start(pool.clone(), &self.probe_stop));
        }
        if let Some(l) = self.pending_admin.take() {
            self.admin = Some(admin::spawn(l, self.handle()));
        }
        let pid_file = self.shared.config.load().pid_file.clone();
        self.set_pid_file(pid_file);

        loop {
            tokio::select! {
                // A stop signal wins over queued reloads.
                biased;
                _ = shutdown.cancelled() => break,
                _ = self.shared.reload_requested.notified() => {
                    if shutdown.is_cancelled() {
                        break;
                    }
                    self.reload().await
                }
            }
        }
        self.shutdown().await
    }

    async fn shutdown(mut self) -> ShutdownReport {
        for r in &self.listeners {
            r.stop.cancel();
        }
        for r in &mut self.listeners {
            stop_accepting(r.name(), r.local_addr, std::mem::take(&mut r.tasks)).await;
        }
        // Close the listening sockets now: new connects are refused from here on.
        self.listeners.clear();
        self.publish_listeners();
        self.probe_stop.cancel();
        for (_, p) in std::mem::take(&mut self.probers) {
            p.shutdown().await;
        }
        let tracker = self.tracker.clone();
        let hard_stop = self.hard_stop.clone();
        let close_now = self.close_now.clone();
        tracker.close();
        let open_at_shutdown = tracker.len();
        let grace = self.shared.config.load().shutdown_grace;
        if open_at_shutdown > 0 {
            info!(
                open = open_at_shutdown,
                grace = %fmt_duration(grace),
                "stopped accepting; draining open connections"
            );
        }
        let drained = tokio::time::timeout(grace, async {
            tokio::select! {
                biased;
                _ = close_now.cancelled() => false,
                _ = tracker.wait() => true,
            }
        })
        .await
        .unwrap_or(false);
        let mut closed_at_grace = 0;
        if !drained {
            closed_at_grace = tracker.len();
            if closed_at_grace > 0 {
                if close_now.is_cancelled() {
                    warn!(open = closed_at_grace, "closing open connections now");
                } else {
                    warn!(
                        open = closed_at_grace,
                        "closing connections still open at the end of the grace period"
                    );
                }
            }
            hard_stop.cancel();
            if tokio::time::timeout(HARD_STOP_WAIT, tracker.wait())
                .await
                .is_err()
            {
                warn!(open = tracker.len(), "connections did not close in time");
            }
        }
        if let Some(a) = self.admin.take() {
            a.stop().await;
        }
        self.set_pid_file(None);
        info!(open_at_shutdown, closed_at_grace, "shutdown complete");
        ShutdownReport {
            open_at_shutdown,
            closed_at_grace,
        }
    }

    /// Write the configured pid file now (before dropping privileges, so it may
    /// live in a root-owned directory such as `/run`). [`run`](Server::run) does
    /// it otherwise.
    pub fn write_pid_file(&mut self) {
        let pid_file = self.shared.config.load().pid_file.clone();
        self.set_pid_file(pid_file);
    }

    /// Switch to the configured `user` and `group`, if any. Call after
    /// [`bind`](Server::bind) (and [`write_pid_file`](Server::write_pid_file)):
    /// every socket is bound by then.
    pub fn drop_privileges(&self) -> Result<Option<crate::privilege::Identity>, Error> {
        let cfg = self.shared.config.load();
        let Some(user) = cfg.user.as_deref() else {
            return Ok(None);
        };
        let id = crate::privilege::drop_to(user, cfg.group.as_deref())?;
        info!(user = %id.user, uid = id.uid, group = %id.group, gid = id.gid, "dropped privileges");
        Ok(Some(id))
    }

    /// Write our pid to `path` (removing the previous file), or remove it (`None`).
    fn set_pid_file(&mut self, path: Option<PathBuf>) {
        if self.pid_file == path {
            return;
        }
        if let Some(old) = self.pid_file.take() {
            if let Err(e) = std::fs::remove_file(&old) {
                warn!(file = %old.display(), error = %e, "cannot remove pid file");
            }
        }
        if let Some(p) = path {
            match std::fs::write(&p, format!("{}\n", std::process::id())) {
                Ok(()) => self.pid_file = Some(p),
                Err(e) => error!(file = %p.display(), error = %e, "cannot write pid file"),
            }
        }
    }

    fn refuse(&self, path: &Path, problems: Vec<String>) {
        let n = self.shared.reloads_failed.fetch_add(1, Ordering::Relaxed) + 1;
        self.shared.metrics.reloads_failed.increment(1);
        error!(
            file = %path.display(),
            problems = %problems.join("; "),
            failed_reloads = n,
            "reload refused; the running configuration stays"
        );
        *self
            .shared
            .last_reload
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(ReloadRecord {
            ok: false,
            at: SystemTime::now(),
            message: problems.join("\n"),
            generation: self.shared.generation.load(Ordering::Acquire),
        });
    }

    /// Read the config file again and apply it, or refuse it and keep running the
    /// old config untouched.
    async fn reload(&mut self) {
        let old = self.shared.config.load_full();
        let path = old.source.clone();
        let new = match Config::from_file(&path) {
            Ok(c) => c,
            Err(e) => return self.refuse(&path, e.messages()),
        };
        let d = reload::diff(&old, &new);
        if !d.refused.is_empty() {
            return self.refuse(&path, d.refused);
        }

        // 1. Everything that can fail: bind new sockets first. Dropping them
        //    closes them again if any one fails.
        let mut bound = Vec::new();
        for lc in &d.bind {
            match listener::bind(lc, self.sockets_per_listener()) {
                Ok(b) => bound.push(b),
                Err(e) => return self.refuse(&path, vec![error_chain(&e)]),
            }
        }
        let new_admin = if d.admin_changed {
            match &new.admin {
                Some(a) if self.admin.as_ref().map(|x| x.local_addr) != Some(a.listen) => {
                    crate::metrics::install_prometheus();
                    match admin::bind(a.listen) {
                        Ok(l) => Some(Some(l)),
                        Err(e) => return self.refuse(&path, vec![error_chain(&e)]),
                    }
                }
                Some(_) => None,
                None => Some(None),
            }
        } else {
            None
        };

        // 2. Pools: new rings swapped in; stayed nodes keep state and counters.
        let mut pools = (*self.shared.pools.load_full()).clone();
        let mut pool_changes = Vec::new();
        for (name, pc) in &new.pools {
            match pools.get(name) {
                Some(p) => {
                    let ch = p.reconfigure(pc);
                    if !ch.is_empty() {
                        pool_changes.push((name.clone(), ch));
                    }
                }
                None => {
                    pools.insert(name.clone(), Arc::new(Pool::with_stop(pc, &self.hard_stop)));
                }
            }
        }
        pools.retain(|name, _| new.pools.contains_key(name));
        self.shared.pools.store(Arc::new(pools.clone()));

        // 3. Listeners that keep their socket: new state (name, pool, limits).
        for (old_name, lc) in &d.kept {
            let Some(r) = self.listeners.iter().find(|r| &r.name() == old_name) else {
                continue;
            };
            let prev = r.config();
            let pool = pools[&lc.pool].clone();
            let same_pool = Arc::ptr_eq(&r.shared.state.load().pool, &pool);
            if prev != *lc || !same_pool {
                r.shared
                    .state
                    .store(Arc::new(ListenerState::new(lc.clone(), pool)));
            }
            // Every worker's socket is tried, so one failure does not leave the
            // others behind; the warning says that /status shows the new value.
            if prev.tcp_keepalive != lc.tcp_keepalive {
                for (worker, socket) in r.sockets.iter().enumerate() {
                    let sock = socket2::SockRef::from(&**socket);
                    if let Err(e) = crate::keepalive::apply(sock, lc.tcp_keepalive.as_ref(), true) {
                        warn!(listener = %lc.name, worker, error = %e, "cannot change tcp_keepalive of a running listener: this worker's new connections keep the old setting (/status shows the new one); restart to apply it");
                    }
                }
            }
            if prev.backlog != lc.backlog {
                for (worker, socket) in r.sockets.iter().enumerate() {
                    if let Err(e) = listener::set_backlog(socket, lc.backlog) {
                        warn!(listener = %lc.name, worker, error = %e, "cannot change the backlog of a running listener: this worker's socket keeps the old one (/status shows the new one); restart to apply it");
                    }
                }
            }
        }
        // 4. Close removed or moved listeners (they accept what is queued first);
        //    their open connections continue.
        let mut closing = Vec::new();
        self.listeners.retain_mut(|r| {
            if d.close.contains(&r.name()) {
                r.stop.cancel();
                closing.push((r.name(), r.local_addr, std::mem::take(&mut r.tasks)));
                false
            } else {
                true
            }
        });
        // 5. Start the new ones.
        for b in bound {
            self.listeners.push(running(b, &pools, &self.hard_stop));
            let i = self.listeners.len() - 1;
            self.start_listener(i);
        }
        for (name, addr, tasks) in closing {
            stop_accepting(name, addr, tasks).await;
        }
        self.publish_listeners();

        // 6. Probes follow the pools' nodes; settings apply at the next probe.
        let mut probers = std::mem::take(&mut self.probers);
        for (name, pool) in &pools {
            match probers.get_mut(name) {
                Some(p) => p.sync(),
                None => {
                    probers.insert(name.clone(), Prober::start(pool.clone(), &self.probe_stop));
                }
            }
        }
        let removed: Vec<String> = probers
            .keys()
            .filter(|n| !pools.contains_key(*n))
            .cloned()
            .collect();
        for name in removed {
            if let Some(p) = probers.remove(&name) {
                p.shutdown().await;
            }
        }
        self.probers = probers;

        // 7. Admin endpoint and pid file.
        if let Some(next) = new_admin {
            if let Some(a) = self.admin.take() {
                a.stop().await;
            }
            self.admin = next.map(|l| admin::spawn(l, self.handle()));
        }
        self.set_pid_file(new.pid_file.clone());

        // 8. Publish.
        let summary = reload::summary(&old, &new, &d, &pool_changes);
        self.shared.config.store(Arc::new(new));
        let generation = self.shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.shared.metrics.generation.set(generation as f64);
        self.shared.reloads_ok.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.reloads_ok.increment(1);
        info!(file = %path.display(), generation, changes = %summary, "reload applied");
        *self
            .shared
            .last_reload
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(ReloadRecord {
            ok: true,
            at: SystemTime::now(),
            message: summary,
            generation,
        });
    }
}

/// Wait for a listener's accept loops to end (its `stop` is cancelled): they
/// accept what is queued first.
async fn stop_accepting(listener: String, addr: SocketAddr, tasks: Vec<JoinHandle<()>>) {
    if tasks.is_empty() {
        return;
    }
    for t in tasks {
        let _ = t.await;
    }
    info!(listener = %listener, addr = %addr, "stopped accepting");
}

fn running(
    bound: BoundListener,
    pools: &BTreeMap<String, Arc<Pool>>,
    hard_stop: &CancellationToken,
) -> Running {
    let state = ListenerState::new(bound.config.clone(), pools[&bound.config.pool].clone());
    Running {
        local_addr: bound.local_addr,
        sockets: bound.sockets.into_iter().map(Arc::new).collect(),
        shared: Arc::new(ListenerShared::new(state, hard_stop.clone())),
        stop: CancellationToken::new(),
        tasks: Vec::new(),
    }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
