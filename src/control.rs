//! The control loop of a running balancer, on the control runtime:
//! [`Server::run`] starts the accept loops, the probers and the admin endpoint,
//! then applies reloads one at a time (requests made meanwhile fold into one more)
//! until told to stop, and hands over to the [`drain`](fn@crate::shutdown::drain).
//! A stop wins over queued reloads. Owns no state of its own.
//!
//! [`run_process`] is `ringlb run` as a whole: the worker threads, the control
//! runtime, the signal handlers, binding, the pid file and dropping privileges, in
//! the order that makes each of them safe.

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::Error;
use crate::reload;
use crate::server::Server;
use crate::shutdown::{self, handle_signals, ShutdownReport, Signals};
use crate::workers::Workers;

impl Server {
    /// Serve until `shutdown` is cancelled, then stop accepting and drain.
    /// Reloads requested through [`Handle::reload`](crate::Handle::reload) are
    /// applied one at a time meanwhile.
    pub async fn run(mut self, shutdown: CancellationToken) -> ShutdownReport {
        self.start();
        loop {
            tokio::select! {
                // A stop signal wins over queued reloads.
                biased;
                _ = shutdown.cancelled() => break,
                _ = self.shared.reload_requested.notified() => {
                    if shutdown.is_cancelled() {
                        break;
                    }
                    reload::apply(&mut self).await
                }
            }
        }
        shutdown::drain(self).await
    }
}

/// Run the balancer for `cfg` in this process until it is stopped by a signal:
/// the worker threads serve connections, this thread runs the control work
/// (signals, health probes, admin, reloads).
pub fn run_process(cfg: Config) -> Result<ShutdownReport, Error> {
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
        let mut server = Server::bind_on(cfg, workers.handles())?;
        server.write_pid_file();
        server.drop_privileges()?;
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
