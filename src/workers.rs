//! The data plane's threads: `workers` threads, each running its own
//! single-threaded tokio runtime with its own event loop (epoll), the model of
//! HAProxy's threads and nginx's worker processes.
//!
//! Every worker runs an accept loop on every listener, on its own listening
//! socket of it (one `SO_REUSEPORT` socket per worker and listener, see
//! [`listener::bind`](crate::listener::bind)), and a connection
//! stays for its whole life on the worker that accepted it: its two sockets, its
//! timer and its task live in that worker's event loop, so no connection's wakeup
//! ever has to cross to another thread, and every worker waits for its own events
//! at the same time. (A work-stealing runtime has one event loop for all its
//! threads: while the thread holding it runs tasks, nobody waits for new events,
//! and a parked thread sits idle even though events are pending.)
//!
//! Control work (health probes, the admin endpoint, reloads, signals) runs on the
//! caller's runtime, so it never competes with the connections' event loops.

use std::io;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use metrics::{counter, gauge, Counter, Gauge};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::error::Error;
use crate::metrics::{L_WORKER, WORKER_CONNECTIONS_ACCEPTED, WORKER_CONNECTIONS_ACTIVE};

/// Most worker threads (the same bound as the `workers` config key).
pub const MAX: usize = *crate::config::limits::WORKERS.end();

/// Running data-plane threads. Dropping it stops them: a worker's runtime is shut
/// down (any task still on it is dropped, which closes its sockets) and its thread
/// joined. Drop it after the server's shutdown has drained the connections.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Start `n` worker threads (at least one), named `ringlb-w0`, `ringlb-w1`…
    pub fn start(n: usize) -> Result<Workers, Error> {
        let n = n.clamp(1, MAX);
        let mut w = Workers {
            handles: Vec::with_capacity(n),
            stops: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
        };
        for i in 0..n {
            let (ready_tx, ready_rx) = mpsc::channel::<io::Result<Handle>>();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let name = format!("ringlb-w{i}");
            let thread = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .thread_name(name)
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    rt.spawn(keep_next_wake_near());
                    let _ = ready_tx.send(Ok(rt.handle().clone()));
                    // Serve until told to stop (or the sender is dropped).
                    let _ = rt.block_on(stop_rx);
                })
                .map_err(|source| Error::Io {
                    what: format!("cannot start worker thread {i}"),
                    source,
                })?;
            w.threads.push(thread);
            w.stops.push(stop_tx);
            let handle = ready_rx
                .recv()
                .map_err(|_| io::Error::other("the worker thread ended while starting"))
                .and_then(|r| r)
                .map_err(|source| Error::Io {
                    what: format!("cannot start the runtime of worker thread {i}"),
                    source,
                })?;
            w.handles.push(handle);
        }
        Ok(w)
    }

    /// The workers' runtimes, to spawn onto.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

/// One worker's share of the connections, over every listener (in `/status` and
/// as `ringlb_worker_connections_*{worker}`): how evenly the kernel spreads them.
#[derive(Debug)]
pub struct WorkerLoad {
    pub index: usize,
    active: AtomicUsize,
    accepted: AtomicU64,
    active_gauge: Gauge,
    accepted_counter: Counter,
}

impl WorkerLoad {
    pub fn new(index: usize) -> WorkerLoad {
        let w = index.to_string();
        WorkerLoad {
            index,
            active: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            active_gauge: gauge!(WORKER_CONNECTIONS_ACTIVE, L_WORKER => w.clone()),
            accepted_counter: counter!(WORKER_CONNECTIONS_ACCEPTED, L_WORKER => w),
        }
    }

    /// A connection was admitted on this worker.
    pub fn opened(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.active_gauge.increment(1.0);
        self.accepted_counter.increment(1);
    }

    /// A connection admitted on this worker ended.
    pub fn closed(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        self.active_gauge.decrement(1.0);
    }

    /// Connections open on this worker now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections admitted on this worker since the start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Period of `keep_next_wake_near`.
pub const TIMER_HEARTBEAT: Duration = Duration::from_millis(500);

/// A timer that fires every [`TIMER_HEARTBEAT`], so the worker's time driver
/// always has a wake-up planned within that time.
///
/// Why: when a task registers a timer that expires before the driver's next
/// planned wake-up, tokio wakes the driver through its eventfd (a `write`, and
/// an `epoll_wait` that returns at once), even when the task runs on the
/// driver's own thread. Every proxied connection starts a connect timer, and the
/// only other timers of a worker are usually idle timeouts far in the future, so
/// without this nearly every new connection paid that self-wake (measured: 0.7
/// `write` calls per connection). With a wake-up always planned within half a
/// second, connect timeouts longer than that never force one; the cost is two
/// wake-ups per second per worker.
async fn keep_next_wake_near() {
    loop {
        tokio::time::sleep(TIMER_HEARTBEAT).await;
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_their_own_worker_thread() {
        let w = Workers::start(2).unwrap();
        assert_eq!(w.len(), 2);
        let names: Vec<String> = w
            .handles()
            .iter()
            .map(|h| {
                let (tx, rx) = mpsc::channel();
                h.spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    let _ = tx.send(std::thread::current().name().map(str::to_string));
                });
                rx.recv().unwrap().unwrap()
            })
            .collect();
        assert_eq!(names, ["ringlb-w0", "ringlb-w1"]);
        drop(w);
    }

    #[test]
    fn dropping_stops_and_joins_with_tasks_still_pending() {
        let w = Workers::start(1).unwrap();
        let (tx, rx) = mpsc::channel::<()>();
        w.handles()[0].spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        drop(w);
        // The pending task was dropped with its runtime, so its sender is gone.
        assert!(rx.recv().is_err());
    }

    #[test]
    fn count_is_clamped() {
        assert_eq!(Workers::start(0).unwrap().len(), 1);
    }
}
