//! Admission: who may open a connection through a listener, decided on accept
//! before any node is contacted. Access lists (`allow`/`deny`, see [`access`]), the
//! listener's `max_connections`, per-client limits, and trusted proxies (whose
//! clients are judged once their PROXY header names them, in the connection's
//! task). An admitted connection holds an [`Admission`]: its place in the counts,
//! given back when dropped, whatever way the connection ends.
//!
//! Also home of a listener's live state ([`ListenerShared`], [`ListenerState`]),
//! which the accept loops, the connections and the status output read. Must not
//! do I/O (refused sockets are dropped by the caller) nor name the listener or
//! proxy modules: both depend on this one.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::ListenerConfig;
use crate::metrics::{ListenerMetrics, RejectReason};
use crate::pool::Pool;
use crate::workers::WorkerLoad;

pub mod access;

use access::PerIp;

/// What the accept loops of one listener (one per worker) log together about
/// refused clients: one message per burst for the listener, not one per worker.
#[derive(Debug, Default)]
pub struct Refusals {
    at_limit: AtomicBool,
    log: Mutex<RefusalLog>,
}

impl Refusals {
    fn refused(&self, listener: &str, reason: RejectReason, client: IpAddr) {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(listener, reason, client);
    }

    fn at_limit(&self, listener: &str, limit: usize) {
        if !self.at_limit.swap(true, Ordering::Relaxed) {
            warn!(
                listener,
                limit, "max_connections reached; closing new connections at once until some end"
            );
        }
    }

    fn below_limit(&self, listener: &str) {
        if self.at_limit.load(Ordering::Relaxed) && self.at_limit.swap(false, Ordering::Relaxed) {
            info!(listener, "below max_connections again");
        }
    }
}

/// Time between two log lines about refused clients of one listener.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Refused clients (access lists, per-client limits) are counted in metrics one
/// by one, logged at DEBUG one by one, and at WARN at most once per
/// [`REFUSAL_LOG_EVERY`] with the number refused since, so a flood cannot flood
/// the log.
#[derive(Debug, Default)]
struct RefusalLog {
    last: Option<Instant>,
    since: u64,
}

impl RefusalLog {
    fn note(&mut self, listener: &str, reason: RejectReason, client: IpAddr) {
        tracing::debug!(listener, client = %client, reason = reason.as_str(), "client refused");
        self.since += 1;
        let now = Instant::now();
        let due = match self.last {
            Some(t) => now.duration_since(t) >= REFUSAL_LOG_EVERY,
            None => true,
        };
        if due {
            warn!(
                listener,
                client = %client,
                reason = reason.as_str(),
                refused_since_last_message = self.since,
                "refusing clients (access lists or per-client limits); counted in ringlb_connections_rejected_total"
            );
            self.last = Some(now);
            self.since = 0;
        }
    }
}

/// What one accepted connection needs from its listener, replaced as a whole by a
/// reload (so a connection keeps the pool and limits it was accepted under).
#[derive(Debug)]
pub struct ListenerState {
    pub config: ListenerConfig,
    pub pool: Arc<Pool>,
    pub metrics: ListenerMetrics,
}

impl ListenerState {
    pub fn new(config: ListenerConfig, pool: Arc<Pool>) -> ListenerState {
        let metrics = ListenerMetrics::new(&config.name);
        ListenerState {
            config,
            pool,
            metrics,
        }
    }
}

/// A listener's live parts: its current state, its open connection count, and the
/// token that closes open connections (end of the shutdown grace).
#[derive(Debug)]
pub struct ListenerShared {
    pub state: ArcSwap<ListenerState>,
    /// Open connections, over every worker's accept loop.
    pub active: AtomicUsize,
    /// Last connection id given out (ids are per listener, over every worker).
    pub last_id: AtomicU64,
    /// Refusal log shared by the listener's accept loops.
    pub refusals: Refusals,
    pub hard_stop: CancellationToken,
    /// Open connections and new-connection buckets per client address (kept
    /// across reloads; used only while a per-client limit is set).
    pub per_ip: PerIp,
}

impl ListenerShared {
    pub fn new(state: ListenerState, hard_stop: CancellationToken) -> ListenerShared {
        ListenerShared {
            state: ArcSwap::from_pointee(state),
            active: AtomicUsize::new(0),
            last_id: AtomicU64::new(0),
            refusals: Refusals::default(),
            hard_stop,
            per_ip: PerIp::new(),
        }
    }
}

/// One admitted client connection: the listener state it was accepted under, and
/// its place in the listener's count (given back when dropped, whatever way the
/// connection's task ends).
#[derive(Debug)]
pub struct Admission {
    shared: Arc<ListenerShared>,
    worker: Arc<WorkerLoad>,
    state: Arc<ListenerState>,
    /// The per-client key this connection is counted under, if it is.
    per_ip: Option<IpAddr>,
    /// From a trusted proxy: a PROXY header comes first, and the access rules
    /// apply to the client it names.
    expect_proxy_header: bool,
}

impl Admission {
    pub fn state(&self) -> &ListenerState {
        &self.state
    }

    /// Cancelled when open connections must close (end of the shutdown grace).
    pub fn hard_stop(&self) -> &CancellationToken {
        &self.shared.hard_stop
    }

    /// The connection comes from a trusted proxy and starts with a PROXY header.
    pub fn expects_proxy_header(&self) -> bool {
        self.expect_proxy_header
    }

    /// Apply the access lists and per-client limits to `ip` (the client a PROXY
    /// header named). Counted by reason when refused.
    pub fn admit_client(&mut self, ip: IpAddr) -> Result<(), RejectReason> {
        let access = &self.state.config.access;
        let ip = access::client_ip(ip);
        let verdict = access::check_lists(access, ip).and_then(|()| {
            if access.per_ip() {
                let key = access::per_ip_key(ip);
                self.shared
                    .per_ip
                    .admit(key, access, std::time::Instant::now())?;
                self.per_ip = Some(key);
            }
            Ok(())
        });
        if let Err(reason) = verdict {
            self.state.metrics.rejected(reason).increment(1);
        }
        verdict
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Ordering::Relaxed);
        self.worker.closed();
        self.state.metrics.active.decrement(1.0);
        if let Some(key) = self.per_ip {
            // The current rules decide whether the address's entry can go.
            let st = self.shared.state.load();
            self.shared
                .per_ip
                .release(key, &st.config.access, std::time::Instant::now());
        }
    }
}

/// Decide on a connection just accepted from `peer` under the listener's current
/// `state`: access lists, `max_connections`, per-client limits. Refusals are
/// counted by reason and logged (rate-limited); the caller drops the socket.
/// Clients of a trusted proxy are judged later, by the client their PROXY
/// header names ([`Admission::admit_client`]).
pub fn admit(
    shared: &Arc<ListenerShared>,
    state: Arc<ListenerState>,
    worker: &Arc<WorkerLoad>,
    peer: SocketAddr,
) -> Option<Admission> {
    let name = &state.config.name;
    let log = &shared.refusals;
    let access = &state.config.access;
    let client_ip = access::client_ip(peer.ip());
    // A trusted proxy's connections are judged by the client its header names.
    let from_proxy = !state.config.trusted_proxies.is_empty()
        && state
            .config
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&client_ip));
    if from_proxy {
        // Checked after the header, in the connection's task.
    } else if let Err(reason) = access::check_lists(access, client_ip) {
        state.metrics.rejected(reason).increment(1);
        log.refused(name, reason, client_ip);
        return None;
    }
    let limit = state.config.max_connections;
    // Take a place under the limit (other workers' loops take places too).
    let reserved = shared
        .active
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok();
    if !reserved {
        state
            .metrics
            .rejected(RejectReason::MaxConnections)
            .increment(1);
        log.at_limit(name, limit);
        tracing::debug!(listener = %name, client = %peer, "over max_connections; closed");
        return None;
    }
    log.below_limit(name);
    let per_ip = if access.per_ip() && !from_proxy {
        let key = access::per_ip_key(client_ip);
        if let Err(reason) = shared.per_ip.admit(key, access, std::time::Instant::now()) {
            shared.active.fetch_sub(1, Ordering::Relaxed);
            state.metrics.rejected(reason).increment(1);
            log.refused(name, reason, client_ip);
            return None;
        }
        Some(key)
    } else {
        None
    };
    // The place taken above is given back when the Admission is dropped.
    state.metrics.active.increment(1.0);
    worker.opened();
    Some(Admission {
        shared: shared.clone(),
        worker: worker.clone(),
        state,
        per_ip,
        expect_proxy_header: from_proxy,
    })
}
