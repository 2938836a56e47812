//! ringlb: a Layer-4 consistent-hashing TCP load balancer keyed on the client IP.
//!
//! This page is the architecture: the data flow, then every module with what it
//! does and what it must not do. The invariants behind it (deterministic ring,
//! minimal disruption, snapshots on the hot path, nothing in flight lost, stop
//! accepting then drain, bounded everything) are in the project's shared design
//! notes (`shared/DESIGN.md` beside the repository, not in it); the README is the
//! operator's manual.
//!
//! # Data flow
//!
//! ```text
//!  config file ─parse─▶ validate ─▶ diff ─▶ apply              (SIGHUP, ringlb reload)
//!   config::raw    config::validate  reload::diff  reload::apply
//!
//!  client ─▶ listener ─accept─▶ admission ─▶ proxy ──────────────────────────────┐
//!            (SO_REUSEPORT   (allow/deny, max_connections,  key = client IP      │
//!             socket per      per-IP, trusted PROXY header) (prefix-masked)      │
//!             worker)                                            │               │
//!                                                               ▼               │
//!                          pool snapshot (ArcSwap): ring of in-service nodes    │
//!                          node, then the next distinct nodes; skip full ones   │
//!                                                               │               │
//!                                    proxy::connect (timeout, fallback, PROXY   │
//!                                    header) ─▶ proxy::forward (copy / splice,  │
//!                                    half-close, idle timeout) ◀────────────────┘
//!
//!  health probes (prober ─▶ health::probe) and passive failures ─▶ pool
//!  agent reports (agent ─▶ agent::reply, HAProxy's agent-check) ──▶ pool
//!  operator state (admin POST, ringlb node, config) ───────────────▶ pool
//!  pool: health + agent state + operator state ─▶ in-service set, points
//!        ─▶ new snapshot
//!
//!  lifecycle (one loop per pool): connections registered on their node
//!  (pool::conns) ─▶ misplaced (node ≠ home now), expired (lifetime) ─▶ paced
//!  closes (close_rate token bucket): node down with close, disable, removal,
//!  rehome, lifetime, end of the shutdown grace
//!
//!  stop: shutdown::signals ─▶ control loop ends ─▶ shutdown::drain
//!        (stop accepting, connections finish within shutdown_grace, the rest
//!        closed spread over its end, then anything left)
//!
//!  upgrade (ringlb upgrade, SIGUSR2) ─▶ upgrade::handover: new binary gets every
//!        listening socket (SCM_RIGHTS) and node state ─▶ upgrade::takeover: it
//!        prepares, accepts ─▶ the old process stops accepting and drains
//! ```
//!
//! # Module map
//!
//! Listed from the bottom up: a module uses only modules above it in this list
//! (no import circles between top-level modules).
//!
//! **Foundations** (no runtime state)
//! - [`error`]: typed errors of the library. `anyhow` lives only in `main.rs`.
//! - [`metrics`]: every metric name and label, and handles created once per
//!   listener or node. Must not create a handle per connection.
//! - [`ring`]: the consistent-hash ring (explicit bytes, golden-tested). Pure;
//!   must not depend on std `Hash` layouts, seeds or list order.
//! - [`sys`]: the process and the operating system: dropping root after
//!   binding, the open-file limit, the service manager's notify protocol
//!   ([`sys::notify`]). Knows nothing of the config or the balancer.
//! - [`config`]: file → raw serde types → validated [`Config`], with
//!   file:line:column errors naming the key. Pure except [`config::resolve`],
//!   the one network lookup (host names of node addresses, at load). Must not
//!   name any runtime module.
//! - [`keepalive`]: TCP keepalive on listening and node sockets.
//! - [`workers`]: the data-plane threads, one single-threaded runtime each.
//!
//! **Nodes and their health**
//! - [`health`]: [`health::state`] (rise/fall hysteresis, std only) and
//!   [`health::probe`] (one TCP or HTTP probe, parsed with `httparse`). Must not
//!   name the pool.
//! - [`pool`]: a pool's nodes (health, operator state, agent state, counters),
//!   its settings and the immutable [`pool::PoolSnapshot`] each connection loads
//!   (the hot path, alone in `pool/snapshot.rs`), reconfigure, and each node's
//!   registry of open connections with the pool's close queue (`pool/conns.rs`:
//!   what can be closed and why; the lifecycle loop decides when). Depends only
//!   on `health::state`; does no I/O.
//! - [`prober`]: one probe loop per node, reporting into the pool. Never picks
//!   nodes or changes a node's state itself.
//! - [`discovery`]: nodes from DNS (`[pools.NAME.discover]`: A, AAAA, SRV),
//!   one task per such pool, applied through the reload path
//!   ([`pool::Pool::reconfigure_with`]); a node's identity is its address
//!   text or SRV `target:port`. Keeps the last good set on any failure. Never
//!   picks nodes or changes a node's health.
//! - [`lifecycle`]: one loop per pool, the only place ringlb closes connections
//!   on its own initiative: the pool's close queue (node down with `close`,
//!   disable, removal, lifetime) and rehome, paced by one token bucket
//!   ([`lifecycle::pacing`]), and the shutdown spread. Never picks nodes.
//! - [`agent`]: one agent loop per node (HAProxy's `agent-check`: the node's
//!   own report of its state, weight and cap), and [`agent::reply`], the pure
//!   parser of one reply line. Reports into the pool like the prober; never
//!   picks nodes or changes a node's state itself.
//!
//! **Data plane**
//! - [`admission`]: who may connect through a listener (access lists,
//!   `max_connections`, per-client limits, trusted proxies) and a listener's live
//!   state. An [`admission::Admission`] is the connection's place in the counts.
//!   No I/O; names neither listener nor proxy.
//! - [`listener`]: listening sockets, and the accept loop that admits clients and
//!   hands each to the handler it was given. Never names the proxy or the pool.
//! - [`proxy`]: one connection from admission to close: PROXY header in,
//!   [`proxy::connect`] to a node (fallback, PROXY header out), [`proxy::forward`]
//!   (with [`proxy::splice`]) both ways. Names no listener type.
//!
//! **The running balancer**
//! - [`handle`]: the shared runtime state and [`Handle`], the narrow view the
//!   admin endpoint, signals and tests hold. Owns no sockets or tasks.
//! - [`admin`]: the admin endpoint: serving (HTTP/1.1 parsed with `httparse`,
//!   bearer token, `/metrics`, node actions), [`admin::Status`] (the typed
//!   `/status` that the JSON and the HTML page are both made from), the page, and
//!   [`admin::client`] (`ringlb node`). Reads a [`Handle`]; never names the server.
//! - [`server`]: builds pools and binds listeners ([`Server::bind`]); owns the
//!   running listeners, probers, admin endpoint, pid file and connection tasks.
//!   Does not decide when to reload or stop.
//! - [`reload`]: [`reload::diff`](mod@reload::diff) (pure: listeners, pools and nodes that change,
//!   and the summary line), [`reload::apply`](fn@reload::apply) (bind first, then swap), and the
//!   `ringlb reload` client ([`reload::signal`]).
//! - [`shutdown`]: process signals and the drain (stop accepting, grace, close and
//!   count the rest).
//! - [`upgrade`]: binary upgrades: the handover channel (listening sockets passed
//!   with `SCM_RIGHTS`, node states), the old process's side ([`upgrade::handover`]),
//!   the new one's ([`upgrade::takeover`]) and the control socket `ringlb upgrade`
//!   talks to. Never touches a running server's parts; the control loop does.
//! - [`control`]: [`Server::run`], the control loop (reloads and upgrades one at a
//!   time until stopped or handed over, then the drain), and
//!   [`control::run_process`], `ringlb run` whole.
//!
//! **Front ends**
//! - [`cli`]: the command line (clap) and the offline commands, [`cli::check`] and
//!   [`cli::which`], which answer from a config file without a running balancer;
//!   [`cli::config_path`], the config search order (pure), and [`cli::docs`], the
//!   completions and man pages generated from the clap definitions.
//! - [`demo`]: `ringlb demo`, and [`demo::backend`], the small self-naming
//!   backends that the demo and the tests use.
//!
//! `main.rs` only parses the command line, sets up logging, calls one of these and
//! maps the result to an exit code.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod agent;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod discovery;
pub mod error;
pub mod handle;
pub mod health;
pub mod keepalive;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod prober;
pub mod proxy;
pub mod reload;
pub mod ring;
pub mod server;
pub mod shutdown;
pub mod sys;
pub mod upgrade;
pub mod workers;

pub use config::Config;
pub use error::{ConfigError, Error};
pub use handle::Handle;
pub use server::Server;
pub use shutdown::ShutdownReport;
