//! The balancer's parts and how they are built: [`Server::bind`] builds every pool
//! and binds every listener (and the admin socket); the server owns the running
//! listeners (one accept loop per worker), the probers, the admin endpoint, the
//! pid file and the task tracker of every connection, and starts and stops them
//! one at a time. What is done with them over time lives one level up:
//! [`control`](crate::control) runs them, [`reload`](crate::reload) changes them,
//! [`shutdown`](crate::shutdown) drains them. Nothing here reads signals or files
//! other than the pid file.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::{self, AdminServer};
use crate::admission::{ListenerShared, ListenerState};
use crate::agent::Agent;
use crate::config::{Config, ListenerConfig};
use crate::discovery::Discovery;
use crate::error::Error;
use crate::handle::Shared;
pub use crate::handle::{
    Handle, ListenerView, Predecessor, ReloadRecord, UpgradeDone, UpgradeReply, UpgradeRequest,
};
use crate::lifecycle::Lifecycles;
use crate::listener::{self, AcceptErrors, AcceptLoop, BoundListener, Inherited};
use crate::metrics::ServerMetrics;
use crate::pool::Pool;
use crate::prober::Prober;
use crate::workers::WorkerLoad;

/// One running listener.
pub(crate) struct Running {
    pub(crate) local_addr: SocketAddr,
    /// One socket per worker (see `listener::bind`); each accept loop gets its
    /// own descriptor of its socket.
    pub(crate) sockets: Vec<Arc<std::net::TcpListener>>,
    pub(crate) shared: Arc<ListenerShared>,
    /// The accept-error log shared by this listener's accept loops.
    pub(crate) accept_errors: Arc<AcceptErrors>,
    pub(crate) stop: CancellationToken,
    /// One accept loop per worker (or one on the server's runtime).
    pub(crate) tasks: Vec<JoinHandle<()>>,
}

impl Running {
    pub(crate) fn name(&self) -> String {
        self.shared.state.load().config.name.clone()
    }

    pub(crate) fn config(&self) -> ListenerConfig {
        self.shared.state.load().config.clone()
    }
}

/// A bound balancer, ready to [`run`](Server::run) (see `control.rs`).
pub struct Server {
    pub(crate) shared: Arc<Shared>,
    pub(crate) listeners: Vec<Running>,
    pub(crate) probers: BTreeMap<String, Prober>,
    /// One lifecycle loop per pool (paced closes, rehome, lifetime).
    pub(crate) lifecycles: Lifecycles,
    /// One agent per pool (loops only for pools with `[agent]`); stopped with
    /// the probers (`probe_stop`).
    pub(crate) agents: BTreeMap<String, Agent>,
    /// One DNS discovery task per pool with `[discover]`; stopped with the
    /// probers (`probe_stop`).
    pub(crate) discoveries: BTreeMap<String, Discovery>,
    pub(crate) admin: Option<AdminServer>,
    pub(crate) pending_admin: Option<TcpListener>,
    pub(crate) pid_file: Option<PathBuf>,
    /// The runtimes that accept and serve connections: the workers' (see
    /// `workers.rs`), or empty for the runtime `run` is called on.
    pub(crate) data_plane: Vec<tokio::runtime::Handle>,
    pub(crate) tracker: TaskTracker,
    /// Closes every open connection: cancelled by the shutdown only, after it
    /// has counted them.
    pub(crate) hard_stop: CancellationToken,
    /// Asks the shutdown to close what is left now (a second stop signal).
    pub(crate) close_now: CancellationToken,
    pub(crate) probe_stop: CancellationToken,
    /// Upgrade requests ([`Handle::upgrade`]); the control loop takes it.
    pub(crate) upgrade_rx: Option<mpsc::UnboundedReceiver<UpgradeRequest>>,
    /// How this process was started, so an upgrade can start the next one the
    /// same way; `None` for a server embedded in another program (no upgrades).
    pub(crate) relaunch: Option<Relaunch>,
    /// The parts have been started ([`Server::start`] ran).
    pub(crate) started: bool,
}

/// The command line that started this process: the binary (as it was at start:
/// the path, not `/proc/self/exe`, so a binary replaced on disk is the one the
/// upgrade starts) and its arguments.
#[derive(Debug, Clone)]
pub struct Relaunch {
    pub binary: PathBuf,
    pub args: Vec<OsString>,
}

impl Relaunch {
    /// This process's own command line. The binary is the path it was started
    /// by (`argv[0]` made absolute, so a symlink such as `/usr/sbin/ringlb` stays
    /// a symlink and follows a package upgrade), or, when it was found on `$PATH`,
    /// the executable itself. Call it at start, before the working directory
    /// or the file on disk can change.
    pub fn this_process() -> Option<Relaunch> {
        let mut args = std::env::args_os();
        let argv0 = args.next();
        let by_path = argv0
            .filter(|a| a.as_encoded_bytes().contains(&b'/'))
            .and_then(|a| std::path::absolute(a).ok());
        let binary = by_path.or_else(|| std::env::current_exe().ok())?;
        Some(Relaunch {
            binary,
            args: args.collect(),
        })
    }
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
        Server::bind_inheriting(config, data_plane, &mut Inherited::default())
    }

    /// [`bind_on`](Server::bind_on), taking the listening sockets (and the admin
    /// socket) a previous process handed over where the config keeps their
    /// `listen` address (see [`Inherited::take`]); the others are bound anew.
    pub fn bind_inheriting(
        config: Config,
        data_plane: &[tokio::runtime::Handle],
        inherited: &mut Inherited,
    ) -> Result<Server, Error> {
        if config.admin.is_some() {
            crate::metrics::install_prometheus();
        }
        let hard_stop = CancellationToken::new();
        let pools: BTreeMap<String, Arc<Pool>> = config
            .pools
            .iter()
            .map(|(name, p)| (name.clone(), Arc::new(Pool::new(p))))
            .collect();
        let mut listeners = Vec::new();
        for lc in &config.listeners {
            let bound = match inherited.take(lc) {
                Some(sockets) => listener::adopt(lc, sockets)?,
                None => listener::bind(lc, data_plane.len().max(1))?,
            };
            listeners.push(running(bound, &pools, &hard_stop));
        }
        let pending_admin = match &config.admin {
            Some(a) => match inherited.take_admin(a.listen) {
                Some(s) => Some(admin::adopt(a.listen, s)?),
                None => Some(admin::bind(a.listen)?),
            },
            None => None,
        };
        let metrics = ServerMetrics::new();
        metrics.generation.set(1.0);
        let started = SystemTime::now();
        metrics.process_start_time.set(unix_seconds(started));
        let (upgrades, upgrade_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            config: ArcSwap::from_pointee(config.clone()),
            pools: ArcSwap::from_pointee(pools),
            listeners: ArcSwap::from_pointee(Vec::new()),
            generation: AtomicU64::new(1),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_reload: Mutex::new(None),
            reload_requested: Notify::new(),
            nodes_changed: Default::default(),
            discovery: Default::default(),
            started,
            pid: std::process::id(),
            upgraded_from: OnceLock::new(),
            handed_over_to: OnceLock::new(),
            upgrades,
            workers: (0..data_plane.len().max(1))
                .map(|i| Arc::new(WorkerLoad::new(i)))
                .collect(),
            metrics,
            stopping: Mutex::new(Default::default()),
            skip_withdrawal: CancellationToken::new(),
        });
        let server = Server {
            shared,
            listeners,
            probers: BTreeMap::new(),
            lifecycles: Lifecycles::default(),
            agents: BTreeMap::new(),
            discoveries: BTreeMap::new(),
            admin: None,
            pending_admin,
            pid_file: None,
            data_plane: data_plane.to_vec(),
            tracker: TaskTracker::new(),
            hard_stop,
            close_now: CancellationToken::new(),
            probe_stop: CancellationToken::new(),
            upgrade_rx: Some(upgrade_rx),
            relaunch: None,
            started: false,
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

    pub(crate) fn publish_listeners(&self) {
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
    pub(crate) fn sockets_per_listener(&self) -> usize {
        self.data_plane.len().max(1)
    }

    pub(crate) fn start_listener(&mut self, i: usize) {
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
        // One accept loop per runtime and per socket: normally one socket per
        // worker; sockets taken over from a process with another worker count are
        // shared out (a worker may serve two, two workers may share one), and none
        // is closed, so nothing queued on any of them is lost.
        let loops = runtimes.len().max(r.sockets.len());
        for i in 0..loops {
            let (rt, socket) = (
                &runtimes[i % runtimes.len()],
                &r.sockets[i % r.sockets.len()],
            );
            let worker = &self.shared.workers[i % runtimes.len()];
            let socket = match socket.try_clone() {
                Ok(s) => s,
                Err(e) => {
                    error!(listener = %r.name(), error = %e, "cannot start an accept loop: no descriptor for the listening socket");
                    continue;
                }
            };
            let accept = AcceptLoop {
                socket,
                local_addr: r.local_addr,
                shared: r.shared.clone(),
                worker: worker.clone(),
                errors: r.accept_errors.clone(),
                tracker: self.tracker.clone(),
                stop: r.stop.clone(),
            };
            r.tasks.push(rt.spawn(accept.run(crate::proxy::handle)));
        }
        let st = r.shared.state.load();
        info!(listener = %st.config.name, addr = %r.local_addr, pool = %st.config.pool, accept_loops = r.tasks.len(), "listening");
    }

    /// Start every part: the accept loops, one prober and agent per pool, the admin
    /// endpoint, and the pid file (if not written yet).
    pub(crate) fn start(&mut self) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        for i in 0..self.listeners.len() {
            self.start_listener(i);
        }
        for (name, pool) in self.shared.pools.load().iter() {
            self.probers
                .insert(name.clone(), Prober::start(pool.clone(), &self.probe_stop));
            self.agents
                .insert(name.clone(), Agent::start(pool.clone(), &self.probe_stop));
        }
        self.lifecycles.sync(&self.shared.pools.load());
        let config = self.shared.config.load_full();
        for (name, pool) in self.shared.pools.load().iter() {
            if let Some(pc) = config.pools.get(name) {
                self.start_discovery(pool.clone(), pc, Vec::new(), false);
            }
        }
        self.publish_discovery();
        if let Some(l) = self.pending_admin.take() {
            self.admin = Some(admin::spawn(l, self.handle()));
        }
        let pid_file = self.shared.config.load().pid_file.clone();
        self.set_pid_file(pid_file);
    }

    /// Start the discovery task of `pool` if its config has `[discover]`
    /// (`seed`, `keep`: see [`Discovery::start`]).
    pub(crate) fn start_discovery(
        &mut self,
        pool: Arc<Pool>,
        pc: &crate::config::PoolConfig,
        seed: Vec<crate::config::NodeConfig>,
        keep: bool,
    ) {
        let changed = self.shared.nodes_changed.clone();
        if let Some(d) = Discovery::start(pool, pc.clone(), seed, keep, changed, &self.probe_stop) {
            self.discoveries.insert(pc.name.clone(), d);
        }
    }

    /// `/status` reads the running discovery tasks' state.
    pub(crate) fn publish_discovery(&self) {
        let map = self
            .discoveries
            .iter()
            .map(|(n, d)| (n.clone(), d.shared().clone()))
            .collect();
        *self
            .shared
            .discovery
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = map;
    }

    /// Discovery changed some pool's nodes: probes and agents follow them, as
    /// after a reload.
    pub(crate) fn follow_nodes(&mut self) {
        for p in self.probers.values_mut() {
            p.sync();
        }
        for a in self.agents.values_mut() {
            a.sync();
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
    pub fn drop_privileges(&self) -> Result<Option<crate::sys::privilege::Identity>, Error> {
        let cfg = self.shared.config.load();
        let Some(user) = cfg.user.as_deref() else {
            return Ok(None);
        };
        let id = crate::sys::privilege::drop_to(user, cfg.group.as_deref())?;
        info!(user = %id.user, uid = id.uid, group = %id.group, gid = id.gid, "dropped privileges");
        Ok(Some(id))
    }

    /// Write our pid to `path` (removing the previous file), or remove it (`None`).
    /// The file is written whole (a temporary file renamed over it), so a reader
    /// never sees half a pid, and removed only while it still names this process:
    /// a newer process (an upgrade, or a restart that overlapped the drain) may
    /// have written its own pid there meanwhile.
    pub(crate) fn set_pid_file(&mut self, path: Option<PathBuf>) {
        if self.pid_file == path {
            return;
        }
        if let Some(old) = self.pid_file.take() {
            remove_pid_file(&old);
        }
        if let Some(p) = path {
            match write_pid_file(&p) {
                Ok(()) => self.pid_file = Some(p),
                Err(e) => error!(file = %p.display(), error = %e, "cannot write pid file"),
            }
        }
    }
}

fn write_pid_file(path: &std::path::Path) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn remove_pid_file(path: &std::path::Path) {
    let ours = std::process::id().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim() == ours => {
            if let Err(e) = std::fs::remove_file(path) {
                warn!(file = %path.display(), error = %e, "cannot remove pid file");
            }
        }
        Ok(text) => info!(file = %path.display(), pid = %text.trim(),
            "pid file names another process now; left in place"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(file = %path.display(), error = %e, "cannot read pid file"),
    }
}

/// Seconds since the Unix epoch, for gauges.
pub(crate) fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Wait for a listener's accept loops to end (its `stop` is cancelled): they
/// accept what is queued first.
pub(crate) async fn stop_accepting(listener: String, addr: SocketAddr, tasks: Vec<JoinHandle<()>>) {
    if tasks.is_empty() {
        return;
    }
    for t in tasks {
        let _ = t.await;
    }
    info!(listener = %listener, addr = %addr, "stopped accepting");
}

pub(crate) fn running(
    bound: BoundListener,
    pools: &BTreeMap<String, Arc<Pool>>,
    hard_stop: &CancellationToken,
) -> Running {
    let state = ListenerState::new(bound.config.clone(), pools[&bound.config.pool].clone());
    Running {
        local_addr: bound.local_addr,
        sockets: bound.sockets.into_iter().map(Arc::new).collect(),
        shared: Arc::new(ListenerShared::new(state, hard_stop.clone())),
        accept_errors: Arc::default(),
        stop: CancellationToken::new(),
        tasks: Vec::new(),
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
