//! The control loop of a running balancer, on the control runtime:
//! [`Server::run`] starts the accept loops, the probers and the admin endpoint,
//! then applies reloads one at a time (requests made meanwhile fold into one more)
//! until told to stop, and hands over to the [`drain`](crate::shutdown::drain).
//! A stop wins over queued reloads. Owns no state of its own.

use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::prober::Prober;
use crate::reload;
use crate::server::Server;
use crate::shutdown::{self, ShutdownReport};

impl Server {
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
                    reload::apply(&mut self).await
                }
            }
        }
        shutdown::drain(self).await
    }
}
