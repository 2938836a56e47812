//! Process signals, caught from the moment [`Signals::install`] returns (so a
//! signal that arrives while starting, e.g. an early `ringlb reload`, cannot kill
//! the process), and what each one does.

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::Error;
use crate::handle::{Handle, UpgradeRequest};

/// SIGTERM/SIGINT: withdraw for `withdraw_delay` (`/ready` answers 503, still
/// accepting), then stop accepting and drain (first); during the withdrawal, a
/// second one ends it at once (stop accepting, then drain); during the drain, it
/// closes everything.
/// SIGHUP: reload the config (the demo has nothing to reload: logged and ignored).
/// SIGUSR2: upgrade to the binary at the path this process was started from.
/// SIGTERM, SIGINT, SIGHUP and SIGUSR2, caught from the moment this exists.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    /// Install the handlers (on the current tokio runtime).
    pub fn install() -> Result<Signals, Error> {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|source| Error::Io {
                what: format!("installing the {name} handler"),
                source,
            })
        };
        Ok(Signals {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
            usr2: install(SignalKind::user_defined2(), "SIGUSR2")?,
        })
    }
}

/// React to signals until the process ends: the first stop signal cancels
/// `shutdown` (the withdrawal, then the drain, starts), a second one ends the
/// withdrawal if one is under way, else cancels `hard_stop` (close what is left
/// now); SIGHUP asks `server` for a reload and SIGUSR2 for an upgrade (both
/// ignored during the drain, and by the demo, which passes `None`).
pub async fn handle_signals(
    signals: Signals,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    server: Option<Handle>,
) {
    let Signals {
        mut term,
        mut int,
        mut hup,
        mut usr2,
    } = signals;
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => {
                match &server {
                    Some(_) if shutdown.is_cancelled() => {
                        info!("SIGHUP received while shutting down: ignored (no reload during the drain)");
                    }
                    Some(h) if h.handed_over_to().is_some() => {
                        let pid = h.handed_over_to().unwrap_or_default();
                        warn!(new_pid = pid, "SIGHUP received after the upgrade handed over to pid {pid}: ignored here (this process only drains); reload pid {pid}");
                    }
                    Some(h) => {
                        info!("SIGHUP received: reloading the configuration");
                        h.reload();
                    }
                    None => warn!("SIGHUP received: the demo does not reload; ignored"),
                }
                continue;
            }
            _ = usr2.recv() => {
                match &server {
                    Some(_) if shutdown.is_cancelled() => {
                        warn!("SIGUSR2 received while shutting down: no upgrade");
                    }
                    Some(h) => {
                        info!("SIGUSR2 received: upgrading to the binary this process was started from");
                        h.upgrade(UpgradeRequest { binary: None, by: "SIGUSR2", reply: None });
                    }
                    None => warn!("SIGUSR2 received: the demo does not upgrade; ignored"),
                }
                continue;
            }
        };
        // Act first, then log: a log write that blocks (a stalled stderr pipe
        // or terminal) must not hold up the stop.
        if shutdown.is_cancelled() && server.as_ref().is_some_and(Handle::withdrawing) {
            if let Some(h) = &server {
                h.skip_withdrawal();
            }
            warn!(
                signal = name,
                "second stop signal during the withdrawal: stopping accepting now, then draining"
            );
        } else if shutdown.is_cancelled() {
            hard_stop.cancel();
            warn!(
                signal = name,
                "second stop signal: closing open connections now"
            );
        } else {
            shutdown.cancel();
            let delay = server
                .as_ref()
                .map_or(std::time::Duration::ZERO, |h| h.config().withdraw_delay);
            if delay.is_zero() {
                info!(
                    signal = name,
                    "stop signal: no longer accepting; draining open connections"
                );
            } else {
                info!(
                    signal = name,
                    withdraw_delay = %crate::config::fmt_duration(delay),
                    "stop signal: withdrawing (/ready answers 503, still accepting), then draining"
                );
            }
        }
    }
}
