//! The accept loop of one listening socket: accept-error backoff (one log line
//! per out-of-resources episode), admission of each client (see
//! [`crate::admission`]), one span per connection, and each admitted
//! connection handed to the handler it was given, spawned into the server's task
//! tracker. It does not know what the handler does: the server passes the proxy.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug_span, error, info, warn, Instrument};

use crate::admission::{self, Admission, ListenerShared};
use crate::error::is_resource_exhaustion;
use crate::workers::WorkerLoad;

/// Shortest and longest pause after an accept error such as EMFILE.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Time without an accept error after which an out-of-resources episode is over.
const EPISODE_QUIET: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Episode {
    errors: u64,
    last_error: Instant,
}

/// What the accept loops of one listener (one per worker) log together about
/// accept errors: one message per episode for the listener, not one per worker.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    /// An episode of resource errors: one WARN when it starts, one INFO when
    /// accept has worked again with no error for EPISODE_QUIET (so a flapping
    /// shortage is one episode, not a log line per connection).
    episode: Mutex<Option<Episode>>,
    /// Anything in `episode` (read on every accept, so without the lock).
    in_episode: AtomicBool,
}

impl AcceptErrors {
    fn resource_error(&self, listener: &str, e: &io::Error) {
        let mut ep = self.episode.lock().unwrap_or_else(|p| p.into_inner());
        match ep.as_mut() {
            Some(ep) => {
                ep.errors += 1;
                ep.last_error = Instant::now();
            }
            None => {
                warn!(listener, error = %e, "accept failed: out of resources; backing off until it recovers");
                *ep = Some(Episode {
                    errors: 1,
                    last_error: Instant::now(),
                });
                self.in_episode.store(true, Ordering::Relaxed);
            }
        }
    }

    fn accepted(&self, listener: &str) {
        if !self.in_episode.load(Ordering::Relaxed) {
            return;
        }
        let mut ep = self.episode.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = ep.as_ref() {
            if e.last_error.elapsed() >= EPISODE_QUIET {
                info!(listener, failed_accepts = e.errors, "accept recovered");
                *ep = None;
                self.in_episode.store(false, Ordering::Relaxed);
            }
        }
    }
}

/// One accept loop: a listener's socket on one worker, and what it shares with
/// the listener's other loops.
#[derive(Debug)]
pub struct AcceptLoop {
    /// This loop's own socket of the listener (one per worker, see
    /// [`bind`](super::bind)).
    pub socket: std::net::TcpListener,
    pub local_addr: SocketAddr,
    pub shared: Arc<ListenerShared>,
    pub worker: Arc<WorkerLoad>,
    pub errors: Arc<AcceptErrors>,
    /// Every connection's task, so the shutdown can wait for them.
    pub tracker: TaskTracker,
    pub stop: CancellationToken,
}

impl AcceptLoop {
    /// Accept until `stop` is cancelled. Then accept what is already queued
    /// (those clients completed their handshake and would otherwise be reset),
    /// and return; the socket closes when its last descriptor is closed.
    ///
    /// The socket is registered with the runtime this runs on, and the
    /// connections it accepts are spawned there too. Each admitted connection is
    /// served by `handler` (the proxy, for the server), in a task of `tracker`.
    pub async fn run<H, F>(self, handler: H)
    where
        H: Fn(TcpStream, SocketAddr, Admission) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let AcceptLoop {
            socket,
            local_addr,
            shared,
            worker,
            errors,
            tracker,
            stop,
        } = self;
        accept_loop(
            socket, local_addr, &shared, &worker, &errors, &tracker, &stop, handler,
        )
        .await;
    }
}

#[allow(clippy::too_many_arguments)] // the fields of AcceptLoop, unpacked once
async fn accept_loop<H, F>(
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    shared: &Arc<ListenerShared>,
    worker: &Arc<WorkerLoad>,
    errors: &AcceptErrors,
    tracker: &TaskTracker,
    stop: &CancellationToken,
    handler: H,
) where
    H: Fn(TcpStream, SocketAddr, Admission) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            let st = shared.state.load();
            error!(listener = %st.config.name, addr = %local_addr, error = %e, "cannot watch the listening socket on this worker; the other workers still accept");
            return;
        }
    };
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let log = errors;
    let mut draining = false;
    loop {
        let accepted = if draining {
            match tokio::time::timeout(Duration::ZERO, listener.accept()).await {
                Ok(r) => r,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    draining = true;
                    continue;
                }
                r = listener.accept() => r,
            }
        };
        let state = shared.state.load_full();
        let name = &state.config.name;
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(_) if draining => break,
            Err(e) if is_resource_exhaustion(&e) => {
                state.metrics.accept_errors.increment(1);
                log.resource_error(name, &e);
                tokio::select! {
                    _ = stop.cancelled() => draining = true,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
            Err(e) => {
                // ECONNABORTED and friends: the peer went away before we got to it.
                state.metrics.accept_errors.increment(1);
                tracing::debug!(listener = %name, error = %e, "accept error");
                continue;
            }
        };
        log.accepted(name);
        backoff = ACCEPT_BACKOFF_MIN;
        state.metrics.accepted.increment(1);
        let Some(admission) = admission::admit(shared, state, worker, peer) else {
            drop(stream);
            continue;
        };
        // TCP_NODELAY is inherited from the listening socket (Linux).
        // The per-connection span is DEBUG: an enabled span costs ~300 bytes of
        // subscriber state per open connection. INFO/WARN events of a connection
        // carry `client` and `listener` themselves. Its fields are evaluated only
        // when it is enabled, so the id (shared by every worker's loop) costs
        // nothing otherwise.
        let span = debug_span!(
            "conn",
            id = shared.last_id.fetch_add(1, Ordering::Relaxed) + 1,
            listener = %admission.state().config.name,
            client = %peer
        );
        let conn = handler(stream, peer, admission);
        if span.is_disabled() {
            tracker.spawn(conn);
        } else {
            tracker.spawn(conn.instrument(span));
        }
    }
}
