//! Listening sockets (socket2: SO_REUSEADDR, backlog, explicit IPV6_V6ONLY) and the
//! accept loop: connection limit, accept-error backoff, one span per connection,
//! each connection spawned into the server's task tracker.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug_span, error, info, warn, Instrument};

use crate::access::{self, PerIp};
use crate::config::ListenerConfig;
use crate::error::{is_resource_exhaustion, Error};
use crate::metrics::{ListenerMetrics, RejectReason};
use crate::pool::Pool;
use crate::proxy;
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

/// What the accept loops of one listener (one per worker) log together: one
/// message per episode or refusal burst for the listener, not one per worker.
#[derive(Debug, Default)]
pub struct AcceptLog {
    /// An episode of resource errors: one WARN when it starts, one INFO when
    /// accept has worked again with no error for EPISODE_QUIET (so a flapping
    /// shortage is one episode, not a log line per connection).
    episode: Mutex<Option<Episode>>,
    /// Anything in `episode` (read on every accept, so without the lock).
    in_episode: AtomicBool,
    at_limit: AtomicBool,
    refusals: Mutex<RefusalLog>,
}

impl AcceptLog {
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

    fn refused(&self, listener: &str, reason: RejectReason, client: std::net::IpAddr) {
        self.refusals
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
    fn note(&mut self, listener: &str, reason: RejectReason, client: std::net::IpAddr) {
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

/// A listener's bound, listening sockets: one per worker (see `workers.rs`),
/// non-blocking, not yet registered with any event loop (each accept loop
/// registers its own).
#[derive(Debug)]
pub struct BoundListener {
    pub config: ListenerConfig,
    pub local_addr: SocketAddr,
    pub sockets: Vec<std::net::TcpListener>,
}

/// Create, configure and bind a listener's sockets: `sockets` of them (one per
/// worker, at least one).
///
/// With more than one, they form an `SO_REUSEPORT` group on the same address,
/// and the kernel spreads new connections over them by a hash of the
/// connection's addresses and ports (nginx's `reuseport`, HAProxy's shards,
/// Envoy's default): every worker accepts from its own queue, so none waits on
/// another, and the connections of a busy listener split about evenly. A group
/// would also let another process of the same user join the port silently, so
/// the address is first bound once without `SO_REUSEPORT`: if anything already
/// listens there, binding fails with "address in use" as it does with one socket.
pub fn bind(config: &ListenerConfig, sockets: usize) -> Result<BoundListener, Error> {
    let addr = config.listen;
    let err = |source| Error::Bind {
        listener: config.name.clone(),
        addr,
        source,
    };
    let group = sockets > 1;
    if group && addr.port() != 0 {
        // Bound, never listening (so no client can be queued on it), closed at
        // once; the group's first socket takes its place.
        drop(socket_on(config, addr, false).map_err(err)?);
    }
    let first = listening_socket(config, addr, group).map_err(err)?;
    let local_addr = first.local_addr().map_err(err)?;
    let mut all = Vec::with_capacity(sockets.max(1));
    all.push(first);
    for _ in 1..sockets {
        // Port 0 was resolved by the first socket: the others join its port.
        all.push(listening_socket(config, local_addr, true).map_err(err)?);
    }
    Ok(BoundListener {
        config: config.clone(),
        local_addr,
        sockets: all,
    })
}

/// A bound (not yet listening) socket with the listener's options.
fn socket_on(config: &ListenerConfig, addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(config.ipv6_only)?;
    }
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

fn listening_socket(
    config: &ListenerConfig,
    addr: SocketAddr,
    reuse_port: bool,
) -> io::Result<std::net::TcpListener> {
    let socket = socket_on(config, addr, reuse_port)?;
    // Accepted sockets inherit it (see `keepalive.rs`).
    crate::keepalive::apply(
        socket2::SockRef::from(&socket),
        config.tcp_keepalive.as_ref(),
        false,
    )?;
    socket.listen(config.backlog as i32)?;
    Ok(socket.into())
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
    /// Log state shared by the listener's accept loops.
    pub log: AcceptLog,
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
            log: AcceptLog::default(),
            hard_stop,
            per_ip: PerIp::new(),
        }
    }
}

/// Set a new accept queue length on a listening socket (Linux applies a second
/// `listen()` call to the queue of the same socket).
pub fn set_backlog(listener: &std::net::TcpListener, backlog: u32) -> io::Result<()> {
    socket2::SockRef::from(listener).listen(backlog as i32)
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
    per_ip: Option<std::net::IpAddr>,
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
    pub fn admit_client(&mut self, ip: std::net::IpAddr) -> Result<(), RejectReason> {
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

/// Accept until `stop` is cancelled. Then accept what is already queued (those
/// clients completed their handshake and would otherwise be reset), and return;
/// the socket closes when its last descriptor is closed.
///
/// `listener` is this loop's own socket of the listener (one per worker, see
/// [`bind`]); it is registered with the runtime this runs on, and the
/// connections it accepts are spawned there too.
pub async fn accept_loop(
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    shared: Arc<ListenerShared>,
    worker: Arc<WorkerLoad>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            let st = shared.state.load();
            error!(listener = %st.config.name, addr = %local_addr, error = %e, "cannot watch the listening socket on this worker; the other workers still accept");
            return;
        }
    };
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let log = &shared.log;
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
            drop(stream);
            continue;
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
            drop(stream);
            continue;
        }
        log.below_limit(name);
        let per_ip = if access.per_ip() && !from_proxy {
            let key = access::per_ip_key(client_ip);
            if let Err(reason) = shared.per_ip.admit(key, access, std::time::Instant::now()) {
                shared.active.fetch_sub(1, Ordering::Relaxed);
                state.metrics.rejected(reason).increment(1);
                log.refused(name, reason, client_ip);
                drop(stream);
                continue;
            }
            Some(key)
        } else {
            None
        };
        // The place taken above is given back when the Admission is dropped.
        state.metrics.active.increment(1.0);
        // TCP_NODELAY is inherited from the listening socket (Linux).
        // The per-connection span is DEBUG: an enabled span costs ~300 bytes of
        // subscriber state per open connection. INFO/WARN events of a connection
        // carry `client` and `listener` themselves. Its fields are evaluated only
        // when it is enabled, so the id (shared by every worker's loop) costs
        // nothing otherwise.
        let span = debug_span!(
            "conn",
            id = shared.last_id.fetch_add(1, Ordering::Relaxed) + 1,
            listener = %name,
            client = %peer
        );
        worker.opened();
        let admission = Admission {
            shared: shared.clone(),
            worker: worker.clone(),
            state,
            per_ip,
            expect_proxy_header: from_proxy,
        };
        let conn = proxy::handle(stream, peer, admission);
        if span.is_disabled() {
            tracker.spawn(conn);
        } else {
            tracker.spawn(conn.instrument(span));
        }
    }
}
