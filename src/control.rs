//! The control loop of a running balancer, on the control runtime:
//! [`Server::run`] starts the accept loops, the probers and the admin endpoint,
//! then applies reloads and upgrades one at a time until told to stop or until an
//! upgrade has handed over, and then hands over to the
//! [`drain`](fn@crate::shutdown::drain). Reloads asked for while one runs fold
//! into one more; a reload asked for during an upgrade is queued (forwarded to the
//! new process once it accepts, applied here if the upgrade fails); a second
//! upgrade is refused. A stop wins over everything queued and calls a pending
//! upgrade off. Owns no state of its own.
//!
//! [`run_process`] is `ringlb run` as a whole: the worker threads, the control
//! runtime, the signal handlers, binding (or taking the sockets over from the
//! previous process), the pid file and dropping privileges, in the order that
//! makes each of them safe.

use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::error::Error;
use crate::handle::{refuse_upgrade, UpgradeDone, UpgradeReply, UpgradeRequest};
use crate::listener::Inherited;
use crate::reload;
use crate::server::{error_chain, unix_seconds, Relaunch, Server};
use crate::shutdown::{self, handle_signals, ShutdownReport, Signals};
use crate::sys::notify;
use crate::upgrade::{self, Incoming, Pending, Takeover};
use crate::workers::Workers;

/// How long a stop waits for a called-off upgrade to stop the new process.
const ABORT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How the control loop ended.
enum End {
    Stop,
    HandedOver,
}

/// The upgrade under way, and who is waiting for its outcome.
struct Upgrading {
    pending: Pending,
    reply: Option<tokio::sync::oneshot::Sender<UpgradeReply>>,
    by: &'static str,
    reload_queued: bool,
    since: Instant,
}

impl Server {
    /// Serve until `shutdown` is cancelled (or an upgrade hands over), then stop
    /// accepting and drain. Reloads requested through
    /// [`Handle::reload`](crate::Handle::reload) and upgrades through
    /// [`Handle::upgrade`](crate::Handle::upgrade) are applied one at a time
    /// meanwhile.
    pub async fn run(mut self, shutdown: CancellationToken) -> ShutdownReport {
        self.start();
        let control = match self.relaunch {
            Some(_) => match upgrade::control::listen(self.handle()) {
                Ok(c) => Some(c),
                Err(e) => {
                    warn!(error = %error_chain(&e), "no control socket: `ringlb upgrade` cannot reach this process (SIGUSR2 still upgrades)");
                    None
                }
            },
            None => None,
        };
        notify::ready(&self.status_line());
        let mut upgrades = self.upgrade_rx.take();
        let mut upgrading: Option<Upgrading> = None;
        let end = loop {
            tokio::select! {
                // A stop signal wins over queued reloads and upgrades.
                biased;
                _ = shutdown.cancelled() => break End::Stop,
                outcome = async { upgrading.as_mut().expect("guarded").pending.outcome().await },
                    if upgrading.is_some() =>
                {
                    let u = upgrading.take().expect("guarded");
                    match outcome {
                        Ok(t) => {
                            // Before anyone is told: from the answer on, the
                            // admin endpoint answers from the new process only.
                            if let Some(a) = self.admin.take() {
                                a.stop().await;
                            }
                            self.handed_over(&t, u);
                            break End::HandedOver;
                        }
                        Err(e) => {
                            if !self.upgrade_failed(&error_chain(&e), u, &shutdown).await {
                                break End::Stop;
                            }
                        }
                    }
                }
                Some(req) = async { upgrades.as_mut().expect("guarded").recv().await },
                    if upgrades.is_some() =>
                {
                    match &upgrading {
                        Some(u) => {
                            let new = u.pending.child_pid().map(|p| format!(" (new pid {p})")).unwrap_or_default();
                            refuse_upgrade(req, format!("an upgrade is already in progress{new}, asked by {}", u.by));
                        }
                        None => upgrading = self.begin_upgrade(req),
                    }
                }
                _ = self.shared.nodes_changed.notified() => self.follow_nodes(),
                _ = self.shared.reload_requested.notified() => {
                    if shutdown.is_cancelled() {
                        break End::Stop;
                    }
                    match &mut upgrading {
                        Some(u) => {
                            u.reload_queued = true;
                            info!("reload requested during an upgrade: queued (the new process gets it once it accepts; this one applies it if the upgrade fails)");
                        }
                        None => {
                            if !self.reload(&shutdown).await {
                                break End::Stop;
                            }
                        }
                    }
                }
            }
        };
        // No more upgrade requests: a late one (a signal, or `ringlb upgrade` on
        // the control socket, which stays open through the drain) is answered
        // at once with the reason.
        drop(upgrades);
        match end {
            End::Stop => {
                if let Some(mut u) = upgrading.take() {
                    u.pending.abort();
                    let child = u.pending.child_pid();
                    warn!(new_pid = ?child, "stopping during an upgrade: the upgrade is called off");
                    // Whoever asked learns it now, before anything is awaited.
                    if let Some(reply) = u.reply.take() {
                        let _ =
                            reply.send(Err("called off: the running process is stopping".into()));
                    }
                    // The upgrade thread stops the new process (SIGTERM, then
                    // SIGKILL): wait for it, so no half-started process outlives us.
                    let outcome = tokio::time::timeout(ABORT_WAIT, u.pending.outcome()).await;
                    if let Ok(Ok(t)) = &outcome {
                        // It accepted just before the stop: it serves on, and is
                        // stopped by the same signal under a service manager.
                        warn!(
                            new_pid = t.new_pid,
                            "the new process accepted just before the stop; it keeps running"
                        );
                    }
                }
                self.withdraw().await;
            }
            End::HandedOver => {}
        }
        self.handle().set_stopping(|s| s.draining = true);
        let report = shutdown::drain(self).await;
        if let Some(c) = control {
            c.stop().await;
        }
        report
    }

    /// The withdrawal: for `withdraw_delay`, `/ready` answers 503 (so a BGP
    /// speaker or an upstream balancer's checker takes this instance out of
    /// rotation) while it still accepts and serves; a second stop signal ends it
    /// early. Nothing with a zero delay.
    async fn withdraw(&self) {
        let delay = self.shared.config.load().withdraw_delay;
        if delay.is_zero() {
            notify::stopping("stopping: draining open connections");
            return;
        }
        let handle = self.handle();
        handle.set_stopping(|s| s.withdraw_until = Some(Instant::now() + delay));
        let delay_text = crate::config::fmt_duration(delay);
        notify::stopping(&format!(
            "withdrawing: /ready answers 503; still accepting for {delay_text}, then draining"
        ));
        info!(withdraw_delay = %delay_text, open = self.tracker.len(),
            "withdrawing: /ready answers 503; still accepting and serving for {delay_text}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {
                info!(withdraw_delay = %delay_text, open = self.tracker.len(),
                    "withdrawal over: stopping accepting");
            }
            _ = self.shared.skip_withdrawal.cancelled() => {
                info!(open = self.tracker.len(),
                    "withdrawal cut short by a second stop signal: stopping accepting");
            }
        }
    }

    fn status_line(&self) -> String {
        let listeners = self.listeners.len();
        let open = self.tracker.len();
        format!(
            "serving {listeners} listener{}, {open} open connection{}, config generation {}",
            if listeners == 1 { "" } else { "s" },
            if open == 1 { "" } else { "s" },
            self.handle().generation()
        )
    }

    /// Reload the config file: read on a blocking thread (node host names are
    /// resolved then), so a stop signal meanwhile is not kept waiting; the reload
    /// is then dropped and `false` returned.
    async fn reload(&mut self, shutdown: &CancellationToken) -> bool {
        notify::reloading("reloading the configuration");
        let path = self.shared.config.load().source.clone();
        let read = tokio::task::spawn_blocking(move || Config::from_file(&path));
        let read = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                info!("stop signal while the config file was being read: the reload is dropped");
                return false;
            }
            r = read => r,
        };
        match read {
            Ok(read) => reload::apply_read(self, read).await,
            Err(e) => {
                error!(error = %e, "reading the config file failed on its thread; reload not applied")
            }
        }
        notify::ready(&self.status_line());
        true
    }

    /// Start an upgrade, or refuse it (the reply says why).
    fn begin_upgrade(&self, req: UpgradeRequest) -> Option<Upgrading> {
        let Some(relaunch) = &self.relaunch else {
            refuse_upgrade(
                req,
                "this server runs embedded in another program, not as `ringlb run`: it cannot start its successor".into(),
            );
            return None;
        };
        let plan = match self.upgrade_plan(relaunch, req.binary.clone()) {
            Ok(p) => p,
            Err(why) => {
                refuse_upgrade(req, why);
                return None;
            }
        };
        info!(by = req.by, binary = %plan.binary.display(), "upgrade: starting the new binary");
        notify::status(&format!("upgrading: starting {}", plan.binary.display()));
        Some(Upgrading {
            pending: upgrade::begin(plan),
            reply: req.reply,
            by: req.by,
            reload_queued: false,
            since: Instant::now(),
        })
    }

    /// Every socket to hand over (a second descriptor of each), and the rest of
    /// the plan.
    fn upgrade_plan(
        &self,
        relaunch: &Relaunch,
        binary: Option<std::path::PathBuf>,
    ) -> Result<upgrade::Plan, String> {
        let dup = |fd: std::os::fd::BorrowedFd<'_>| {
            fd.try_clone_to_owned()
                .map_err(|e| format!("cannot duplicate a listening socket to hand over: {e}"))
        };
        let mut sockets = Vec::new();
        for r in &self.listeners {
            let cfg = r.config();
            for s in &r.sockets {
                use std::os::fd::AsFd as _;
                sockets.push((cfg.name.clone(), cfg.listen, dup(s.as_fd())?));
            }
        }
        let cfg = self.shared.config.load();
        let admin = match (&self.admin, &cfg.admin) {
            (Some(a), Some(ac)) => match a.socket() {
                Some(fd) => Some((ac.listen, dup(fd)?)),
                None => None,
            },
            _ => None,
        };
        Ok(upgrade::Plan {
            binary: binary.unwrap_or_else(|| relaunch.binary.clone()),
            args: relaunch.args.clone(),
            timeout: cfg.upgrade_timeout,
            sockets,
            admin,
            handle: self.handle(),
        })
    }

    /// The new process accepts: hand the process over to it.
    fn handed_over(&mut self, t: &Takeover, u: Upgrading) {
        let _ = self.shared.handed_over_to.set(t.new_pid);
        self.shared.metrics.upgrades_ok.increment(1);
        let open = self.tracker.len();
        let old_pid = std::process::id();
        info!(
            new_pid = t.new_pid,
            took_ms = t.took.as_millis() as u64,
            open_connections = open,
            "upgrade: pid {} accepts now; this process stops accepting and drains",
            t.new_pid
        );
        notify::main_pid(
            t.new_pid,
            &format!("upgraded: pid {old_pid} handed over to pid {}; pid {old_pid} drains {open} connections", t.new_pid),
        );
        if u.reload_queued {
            forward_reload(t.new_pid);
        }
        if let Some(reply) = u.reply {
            let _ = reply.send(Ok(UpgradeDone {
                old_pid,
                new_pid: t.new_pid,
                took_ms: t.took.as_millis() as u64,
                open_connections: open,
            }));
        }
    }

    /// Log and answer a failed upgrade, then apply a reload queued during it;
    /// `false` if a stop came meanwhile.
    async fn upgrade_failed(
        &mut self,
        why: &str,
        u: Upgrading,
        shutdown: &CancellationToken,
    ) -> bool {
        self.shared.metrics.upgrades_failed.increment(1);
        error!(
            by = u.by,
            after_ms = u.since.elapsed().as_millis() as u64,
            "upgrade failed: {why}; this process keeps serving"
        );
        notify::status(&format!("upgrade failed: {why}; {}", self.status_line()));
        if let Some(reply) = u.reply {
            let _ = reply.send(Err(why.to_string()));
        }
        if u.reload_queued {
            info!("applying the reload queued during the failed upgrade");
            return self.reload(shutdown).await;
        }
        true
    }
}

/// A reload asked of the old process during the upgrade goes to the new one.
fn forward_reload(pid: u32) {
    use nix::sys::signal::{kill, Signal};
    match kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGHUP) {
        Ok(()) => info!(
            new_pid = pid,
            "forwarded the reload queued during the upgrade (SIGHUP)"
        ),
        Err(e) => {
            error!(new_pid = pid, error = %e, "cannot forward the queued reload to the new process")
        }
    }
}

/// Run the balancer for `cfg` in this process until it is stopped by a signal or
/// hands over to its successor: the worker threads serve connections, this thread
/// runs the control work (signals, health probes, admin, reloads, upgrades).
/// With `incoming` (this process was started by an upgrade), the sockets and node
/// states come from the old process, and a failure is reported to it.
pub fn run_process(cfg: Config, incoming: Option<Incoming>) -> Result<ShutdownReport, Error> {
    // Before any pool or listener exists, so every metric handle records.
    crate::metrics::install_prometheus();
    log_nofile_limit();
    let workers = cfg.effective_workers();
    info!(workers, "starting");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "starting the tokio runtime".into(),
            source,
        })?;
    runtime.block_on(async move {
        // Handlers first: a signal that arrives while starting (e.g. an early
        // `ringlb reload`) must not kill the process.
        let signals = Signals::install()?;
        // Before binding: every worker has its own socket per listener, and all
        // are bound before privileges are dropped.
        let workers = Workers::start(workers)?;
        let mut incoming = incoming;
        let mut none = Inherited::default();
        let inherited = incoming.as_mut().map_or(&mut none, |i| &mut i.inherited);
        let server =
            Server::bind_inheriting(cfg, workers.handles(), inherited).and_then(|mut server| {
                server.relaunch = Relaunch::this_process();
                if incoming.is_none() {
                    server.write_pid_file();
                }
                server.drop_privileges()?;
                Ok(server)
            });
        let mut server = match (server, &incoming) {
            (Ok(s), _) => s,
            (Err(e), Some(i)) => {
                i.fail(&error_chain(&e));
                return Err(e);
            }
            (Err(e), None) => return Err(e),
        };
        if let Some(i) = incoming {
            take_over(&mut server, i)?;
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(handle_signals(
            signals,
            shutdown.clone(),
            server.hard_stop(),
            Some(server.handle()),
        ));
        let report = server.run(shutdown).await;
        // The drain is over: stop the worker threads.
        drop(workers);
        Ok(report)
    })
}

/// The second half of an upgrade in the new process: the node states, the
/// commit, accepting, the pid file, then telling the old process.
fn take_over(server: &mut Server, incoming: Incoming) -> Result<(), Error> {
    let from = incoming.from_pid;
    let err = |e: upgrade::UpgradeError| Error::Io {
        what: format!("taking over from pid {from}"),
        source: std::io::Error::other(error_chain(&e)),
    };
    for pool in server.handle().pools().values() {
        pool.take_over(&incoming.nodes);
    }
    let fresh = incoming.prepared().map_err(err)?;
    for pool in server.handle().pools().values() {
        pool.take_over(&fresh);
    }
    server.start();
    let predecessor = incoming.started();
    let _ = server.shared.upgraded_from.set(predecessor);
    server.shared.metrics.predecessor_pid.set(f64::from(from));
    server
        .shared
        .metrics
        .takeover_timestamp
        .set(unix_seconds(predecessor.at));
    info!(
        from_pid = from,
        takeover_ms = predecessor.takeover_ms,
        "upgrade: took over from pid {from}; accepting"
    );
    Ok(())
}

fn log_nofile_limit() {
    match crate::sys::rlimit::raise_nofile_limit() {
        Ok((before, after)) => info!(
            soft_before = before,
            limit = after,
            max_proxied_connections = after.saturating_sub(64) / 2,
            "descriptor limit (RLIMIT_NOFILE): two per proxied connection"
        ),
        Err(e) => warn!(error = %e, "cannot read or raise the descriptor limit"),
    }
}
