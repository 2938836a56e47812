//! The sticky-load lab of issue 15's tests: many clients, each from its own
//! 127.x.y.z address ([`client_ip`]), that behave like a real app holding one
//! long-lived connection: connect, read the greeting (the node names itself),
//! hold the connection, and when ringlb closes it (EOF or reset) record who was
//! closed on which node and when, wait a short random delay (50-150 ms) and
//! connect again. Every client is bounded in connects and in time.
//!
//! - [`Lab`]: the clients; [`Lab::view`] is a snapshot of who is on which node
//!   and of every connect, close and failure so far.
//! - Pure analysis: [`max_in_window`] (the most closes in any window),
//!   [`per_second`] (a histogram of close instants), [`span`], [`burst`] (the
//!   token bucket's size for a `close_rate`).
//! - The ring home of every client, from the library: [`ring_orders`] builds a
//!   `ringlb::pool::Pool` from the same config text the balancer runs.
//! - ringlb as a real subprocess with JSON logs: [`Proc`], and the lines it
//!   logged: [`Logged`] (`reason=...` of "connection closed", the instant of
//!   "node UP").
//!
//! Times are wall-clock ([`SystemTime`]) on both sides, so client-side instants
//! and ringlb's log timestamps compare directly.
//!
//! The lab must not sleep to synchronise: a client sleeps only between a close
//! and its reconnect (what a real app does); tests wait with [`crate::common::poll`].
//!
//! Included where used (`#[path = "common/sticky_lab.rs"] mod sticky_lab;`,
//! beside `mod common;`), so other test binaries do not compile it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rand::Rng as _;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::common::{
    client_ip, connect_from, http_get, patient, poll, read_line_within, write_file, Ringlb,
};

/// How the clients of a [`Lab`] behave.
#[derive(Debug, Clone)]
pub struct Options {
    pub clients: usize,
    /// The [`client_ip`] index of the first client (clients are `first..first + clients`).
    pub first: u32,
    /// Connect again after a close (or a failed connect); otherwise stop.
    pub reconnect: bool,
    /// The delay before a reconnect, uniform in this range.
    pub delay: std::ops::Range<Duration>,
    /// Connect attempts per client, at most.
    pub max_connects: usize,
    /// A client stops (dropping its connection) after this (times the patience).
    pub lifetime: Duration,
    /// Clients connecting at the same time, at most (a burst of thousands of
    /// SYNs would overflow the listener's backlog and cost retransmits).
    pub concurrent_connects: usize,
}

impl Options {
    /// `clients` reconnecting clients from `client_ip(first)` on, reconnecting
    /// after 50-150 ms, at most 20 connects each, for at most 2 minutes.
    pub fn new(clients: usize, first: u32) -> Options {
        Options {
            clients,
            first,
            reconnect: true,
            delay: Duration::from_millis(50)..Duration::from_millis(150),
            max_connects: 20,
            lifetime: Duration::from_secs(120),
            concurrent_connects: 64,
        }
    }
}

/// One connection a client got: the node that greeted, when it started
/// connecting and when the greeting came.
#[derive(Debug, Clone)]
pub struct Conn {
    pub client: usize,
    pub node: String,
    pub connecting: SystemTime,
    pub greeted: SystemTime,
}

/// One connection closed under a client (it did not close it itself).
#[derive(Debug, Clone)]
pub struct Close {
    pub client: usize,
    pub node: String,
    /// When the client started connecting (the connection's start is later).
    pub connecting: SystemTime,
    /// When the client saw the close.
    pub at: SystemTime,
    /// `eof`, or the read error (a reset).
    pub how: String,
}

/// A connect that did not end with a greeting.
#[derive(Debug, Clone)]
pub struct Failure {
    pub client: usize,
    pub at: SystemTime,
    pub error: String,
}

/// What the lab saw so far.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The node each client is connected to now (`None`: between connections).
    pub on: Vec<Option<String>>,
    pub conns: Vec<Conn>,
    pub closes: Vec<Close>,
    pub failures: Vec<Failure>,
}

impl View {
    /// Clients on a node now.
    pub fn placed(&self) -> usize {
        self.on.iter().filter(|n| n.is_some()).count()
    }

    /// Clients on `node` now.
    pub fn on_node(&self, node: &str) -> Vec<usize> {
        (0..self.on.len())
            .filter(|&k| self.on[k].as_deref() == Some(node))
            .collect()
    }

    /// Clients on each node now.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for n in self.on.iter().flatten() {
            *m.entry(n.clone()).or_insert(0) += 1;
        }
        m
    }

    /// The closes of client `k`, in order.
    pub fn closes_of(&self, k: usize) -> Vec<&Close> {
        self.closes.iter().filter(|c| c.client == k).collect()
    }

    /// The connections of client `k`, in order.
    pub fn conns_of(&self, k: usize) -> Vec<&Conn> {
        self.conns.iter().filter(|c| c.client == k).collect()
    }

    /// Instants of the closes `pick` accepts.
    pub fn close_times(&self, pick: impl Fn(&Close) -> bool) -> Vec<SystemTime> {
        self.closes
            .iter()
            .filter(|c| pick(c))
            .map(|c| c.at)
            .collect()
    }
}

/// The running clients (stopped, their connections dropped, on [`Lab::stop`] or drop).
pub struct Lab {
    pub ips: Vec<IpAddr>,
    pub started: SystemTime,
    record: Arc<Mutex<View>>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Lab {
    /// Start the clients against `lb` (they connect at once, at most
    /// `concurrent_connects` at a time).
    pub fn start(lb: SocketAddr, opts: Options) -> Lab {
        let ips: Vec<IpAddr> = (0..opts.clients as u32)
            .map(|k| client_ip(opts.first + k))
            .collect();
        let record = Arc::new(Mutex::new(View {
            on: vec![None; opts.clients],
            ..View::default()
        }));
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let gate = Arc::new(Semaphore::new(opts.concurrent_connects.max(1)));
        for (k, ip) in ips.iter().enumerate() {
            tracker.spawn(client(
                k,
                *ip,
                lb,
                opts.clone(),
                record.clone(),
                stop.clone(),
                gate.clone(),
            ));
        }
        tracker.close();
        Lab {
            ips,
            started: SystemTime::now(),
            record,
            stop,
            tracker,
        }
    }

    /// A copy of what the lab saw so far.
    pub fn view(&self) -> View {
        lock(&self.record).clone()
    }

    /// The client whose address is the IP of `addr` (`127.x.y.z:port`, as
    /// ringlb logs a client).
    pub fn client_of(&self, addr: &str) -> Option<usize> {
        let ip: IpAddr = addr.parse::<SocketAddr>().ok()?.ip();
        self.ips.iter().position(|i| *i == ip)
    }

    /// Wait (polling, `within` times the patience) until `cond` holds for the
    /// lab's view; panics naming `what` and showing the view otherwise.
    pub async fn wait(&self, within: Duration, what: &str, cond: impl Fn(&View) -> bool) {
        let ok = poll(within, Duration::from_millis(20), || {
            let v = self.view();
            let hit = cond(&v);
            async move { hit.then_some(()) }
        })
        .await;
        if ok.is_none() {
            let v = self.view();
            panic!(
                "not within {:?}: {what}; placed {} of {}, on nodes {:?}, {} closes, {} failures (last: {:?})",
                patient(within),
                v.placed(),
                v.on.len(),
                v.counts(),
                v.closes.len(),
                v.failures.len(),
                v.failures.last()
            );
        }
    }

    /// Wait until every client is on a node.
    pub async fn all_placed(&self, within: Duration) {
        let n = self.ips.len();
        self.wait(within, &format!("all {n} clients placed"), |v| {
            v.placed() == n
        })
        .await;
    }

    /// Stop every client (dropping its connection) and wait until they ended.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tracker.wait().await;
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock(m: &Mutex<View>) -> MutexGuard<'_, View> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One client: connect, greet, hold; on a close record it and (maybe) reconnect.
async fn client(
    k: usize,
    ip: IpAddr,
    lb: SocketAddr,
    opts: Options,
    record: Arc<Mutex<View>>,
    stop: CancellationToken,
    gate: Arc<Semaphore>,
) {
    let deadline = tokio::time::Instant::now() + patient(opts.lifetime);
    for _ in 0..opts.max_connects {
        let attempt = async {
            let _permit = gate
                .acquire()
                .await
                .map_err(|_| std::io::Error::other("lab stopped"))?;
            let connecting = SystemTime::now();
            let mut s = connect_from(ip, lb).await?;
            let name = read_line_within(&mut s, patient(Duration::from_secs(10))).await?;
            Ok::<_, std::io::Error>((s, name, connecting))
        };
        let got = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(deadline) => return,
            r = attempt => r,
        };
        match got {
            Ok((mut s, node, connecting)) => {
                {
                    let mut r = lock(&record);
                    r.on[k] = Some(node.clone());
                    r.conns.push(Conn {
                        client: k,
                        node: node.clone(),
                        connecting,
                        greeted: SystemTime::now(),
                    });
                }
                let how = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(deadline) => return,
                    how = held(&mut s) => how,
                };
                let at = SystemTime::now();
                let mut r = lock(&record);
                r.on[k] = None;
                r.closes.push(Close {
                    client: k,
                    node,
                    connecting,
                    at,
                    how,
                });
            }
            Err(e) => lock(&record).failures.push(Failure {
                client: k,
                at: SystemTime::now(),
                error: e.to_string(),
            }),
        }
        if !opts.reconnect {
            return;
        }
        let delay = if opts.delay.is_empty() {
            opts.delay.start
        } else {
            rand::thread_rng().gen_range(opts.delay.clone())
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Hold a connection until the other side closes it: `eof`, or the error.
async fn held(s: &mut TcpStream) -> String {
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return "eof".into(),
            Ok(_) => {}
            Err(e) => return e.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------
// Analysis (pure)
// ---------------------------------------------------------------------------

/// The most instants of `times` in any half-open window `[t, t + window)`.
pub fn max_in_window(times: &[SystemTime], window: Duration) -> usize {
    let mut t = times.to_vec();
    t.sort();
    let (mut best, mut lo) = (0, 0);
    for hi in 0..t.len() {
        while t[hi].duration_since(t[lo]).unwrap_or_default() >= window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// A histogram of `times` per second from `from` (an instant before `from`
/// counts in the first second).
pub fn per_second(times: &[SystemTime], from: SystemTime) -> Vec<usize> {
    let mut h = Vec::new();
    for t in times {
        let i = t.duration_since(from).unwrap_or_default().as_secs() as usize;
        if h.len() <= i {
            h.resize(i + 1, 0);
        }
        h[i] += 1;
    }
    h
}

/// From the first to the last of `times` (zero for fewer than two).
pub fn span(times: &[SystemTime]) -> Duration {
    match (times.iter().min(), times.iter().max()) {
        (Some(a), Some(b)) => b.duration_since(*a).unwrap_or_default(),
        _ => Duration::ZERO,
    }
}

/// The token bucket of a `close_rate`: `max(1, ceil(rate / 10))` closes at once.
pub fn burst(rate: u32) -> usize {
    rate.div_ceil(10).max(2) as usize
}

/// How many of `times` are before `t`.
pub fn before(times: &[SystemTime], t: SystemTime) -> usize {
    times.iter().filter(|x| **x < t).count()
}

/// `times` (n of them) were paced at `rate` per second with its bucket: never
/// more than rate + burst (+ `slack`) in any second, spread over at least the
/// time the bucket needs for them (a lower bound: no patience), and over at
/// most n/rate + 1 s (times the patience). Prints the per-second histogram.
pub fn check_paced(what: &str, times: &[SystemTime], rate: u32, slack: usize) {
    let n = times.len();
    let bucket = burst(rate);
    let most = max_in_window(times, Duration::from_secs(1));
    let from = times
        .iter()
        .min()
        .copied()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let hist = per_second(times, from);
    eprintln!("{what}: {n} closes, per second {hist:?}, most in 1 s {most}");
    assert!(
        most <= rate as usize + bucket + slack,
        "{what}: {most} closes in one second, rate {rate} + bucket {bucket} (+{slack}); per second {hist:?}"
    );
    let least = n.saturating_sub(bucket + 1) as f64 / f64::from(rate);
    let took = span(times);
    assert!(
        took.as_secs_f64() >= least,
        "{what}: {n} closes within {took:?}, the bucket allows no less than {least:.2}s; per second {hist:?}"
    );
    let bound = patient(Duration::from_secs_f64(n as f64 / f64::from(rate) + 1.0));
    assert!(
        took <= bound,
        "{what}: {n} closes took {took:?}, more than {bound:?}"
    );
}

// ---------------------------------------------------------------------------
// A scenario: everybody home, then one node's clients move
// ---------------------------------------------------------------------------

/// ringlb running `text` (listener `lb`, pool `p`) with a lab of clients, all
/// on their ring home, and the clients of one node (the victim) picked out.
pub struct Placed {
    pub lb: Proc,
    pub lab: Lab,
    pub orders: Vec<Vec<String>>,
    pub victim: String,
    /// The clients whose home is the victim.
    pub victims: Vec<usize>,
}

impl Placed {
    /// Start ringlb and `clients` clients from `client_ip(first)` on; check
    /// that every client is on its ring home and that the victim owns enough
    /// of them (25) for pacing to show.
    pub async fn start(text: &str, clients: usize, first: u32, victim: &str) -> Placed {
        let lb = Proc::start(text);
        let lab = Lab::start(lb.addr, Options::new(clients, first));
        lab.all_placed(Duration::from_secs(20)).await;
        let orders = ring_orders(text, "p", &lab.ips);
        let v = lab.view();
        for (k, order) in orders.iter().enumerate() {
            assert_eq!(
                v.on[k].as_deref(),
                Some(order[0].as_str()),
                "client {} is not on its ring home",
                lab.ips[k]
            );
        }
        assert!(v.closes.is_empty(), "{:?}", v.closes);
        assert!(v.failures.is_empty(), "{:?}", v.failures);
        let victims: Vec<usize> = (0..clients).filter(|&k| orders[k][0] == victim).collect();
        assert!(
            victims.len() >= 25,
            "{victim} must own many clients for the pacing to show: {}",
            victims.len()
        );
        Placed {
            lb,
            lab,
            orders,
            victim: victim.to_string(),
            victims,
        }
    }

    pub fn is_victim(&self, k: usize) -> bool {
        self.victims.contains(&k)
    }

    /// Every client's ring home (all nodes in service).
    pub fn homes(&self) -> Vec<String> {
        self.orders.iter().map(|o| o[0].clone()).collect()
    }

    /// Where client `k` is while the victim is out of service.
    pub fn failed_over(&self, k: usize) -> String {
        let out = if self.is_victim(k) {
            vec![self.victim.as_str()]
        } else {
            vec![]
        };
        next_home(&self.orders[k], &out).to_string()
    }

    /// Wait until every client of the victim was closed (once more than
    /// `before`) and is placed again, for n/`rate` + 10 s at most.
    pub async fn victims_moved(&self, before: usize, rate: u32) {
        let paced = Duration::from_secs_f64(self.victims.len() as f64 / f64::from(rate.max(1)));
        let vs = self.victims.clone();
        self.lab
            .wait(
                paced + Duration::from_secs(10),
                "every client of the victim closed and placed again",
                move |v| {
                    vs.iter()
                        .all(|&k| v.closes_of(k).len() > before && v.on[k].is_some())
                },
            )
            .await;
    }

    /// Closes only of the victim's clients, `per_victim` each, and every
    /// client on the node `want` names; no failed connect.
    pub fn check_closes_and_places(
        &self,
        per_victim: usize,
        want: impl Fn(usize) -> String,
    ) -> View {
        let v = self.lab.view();
        for c in &v.closes {
            assert!(
                self.is_victim(c.client),
                "client {} of {} was closed ({c:?})",
                self.lab.ips[c.client],
                self.orders[c.client][0]
            );
        }
        for &k in &self.victims {
            assert_eq!(
                v.closes_of(k).len(),
                per_victim,
                "{}: {:?}",
                self.lab.ips[k],
                v.closes_of(k)
            );
        }
        for k in 0..v.on.len() {
            assert_eq!(
                v.on[k].as_deref(),
                Some(want(k).as_str()),
                "client {} (order {:?})",
                self.lab.ips[k],
                self.orders[k]
            );
        }
        assert!(v.failures.is_empty(), "{:?}", v.failures);
        v
    }

    /// ringlb logged one close for `reason` of each client of the victim, on
    /// the node `node_of` names for it, none before `after`; returns them.
    pub fn check_logged_closes(
        &mut self,
        reason: &str,
        node_of: impl Fn(usize) -> String,
        after: SystemTime,
    ) -> Vec<Logged> {
        let log = self.lb.log();
        let closed = closed_lines(&log, reason);
        let mut clients: Vec<usize> = closed
            .iter()
            .map(|l| {
                let k = self
                    .lab
                    .client_of(l.str("client"))
                    .filter(|k| self.is_victim(*k))
                    .unwrap_or_else(|| panic!("not a client of the victim: {:?}", l.fields));
                assert_eq!(l.str("node"), node_of(k), "{:?}", l.fields);
                assert!(l.at >= after, "closed too early: {:?}", l.fields);
                k
            })
            .collect();
        clients.sort_unstable();
        clients.dedup();
        assert_eq!(
            (closed.len(), clients.len()),
            (self.victims.len(), self.victims.len()),
            "one {reason} close per client of the victim"
        );
        closed
    }
}

// ---------------------------------------------------------------------------
// The ring, from the library
// ---------------------------------------------------------------------------

/// Every client's ring order (distinct nodes, home first) in pool `pool` of the
/// config `text`, every node in service: what a fresh `ringlb` computes.
pub fn ring_orders(text: &str, pool: &str, ips: &[IpAddr]) -> Vec<Vec<String>> {
    let config = ringlb::Config::parse(text, "sticky_lab.toml").expect("valid config");
    let cfg = config.pools.get(pool).expect("the pool is in the config");
    let snap = ringlb::pool::Pool::new(cfg).snapshot();
    ips.iter()
        .map(|ip| snap.order(*ip).iter().map(|n| n.name.clone()).collect())
        .collect()
}

/// Every client's ring home (the first node of its order).
pub fn ring_homes(text: &str, pool: &str, ips: &[IpAddr]) -> Vec<String> {
    ring_orders(text, pool, ips)
        .into_iter()
        .map(|o| o.into_iter().next().expect("a pool with nodes"))
        .collect()
}

/// The first node of `order` that is not one of `out`.
pub fn next_home<'a>(order: &'a [String], out: &[&str]) -> &'a str {
    order
        .iter()
        .find(|n| !out.contains(&n.as_str()))
        .expect("a node left in service")
}

// ---------------------------------------------------------------------------
// ringlb as a subprocess, and its JSON log
// ---------------------------------------------------------------------------

/// One JSON log line of ringlb (`--log-format json`): its time and fields.
#[derive(Debug, Clone)]
pub struct Logged {
    pub at: SystemTime,
    pub fields: serde_json::Value,
}

impl Logged {
    /// Parse one line (`None`: not a JSON object with an RFC 3339 `timestamp`).
    pub fn parse(line: &str) -> Option<Logged> {
        let fields: serde_json::Value = serde_json::from_str(line).ok()?;
        let at = humantime::parse_rfc3339(fields.get("timestamp")?.as_str()?).ok()?;
        Some(Logged { at, fields })
    }

    /// A text field (empty if absent or not text).
    pub fn str(&self, key: &str) -> &str {
        self.fields.get(key).and_then(|v| v.as_str()).unwrap_or("")
    }

    /// A number field (`None` if absent).
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(|v| v.as_u64())
    }

    pub fn message(&self) -> &str {
        self.str("message")
    }
}

/// The lines of `log` whose message starts with `message` and whose fields
/// include every `(key, value)` of `with` (text values).
pub fn logged(log: &[String], message: &str, with: &[(&str, &str)]) -> Vec<Logged> {
    log.iter()
        .filter_map(|l| Logged::parse(l))
        .filter(|l| l.message().starts_with(message) && with.iter().all(|(k, v)| l.str(k) == *v))
        .collect()
}

/// The "connection closed" lines with `reason`.
pub fn closed_lines(log: &[String], reason: &str) -> Vec<Logged> {
    logged(log, "connection closed", &[("reason", reason)])
}

/// The time of each line.
pub fn times(lines: &[Logged]) -> Vec<SystemTime> {
    lines.iter().map(|l| l.at).collect()
}

/// ringlb running as a subprocess on a config file in a temporary directory,
/// with its listener `lb` and (when the config has one) admin endpoint found
/// from its log.
pub struct Proc {
    pub ringlb: Ringlb,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    /// Write `text`, start `ringlb --log-format json run` on it and wait until
    /// it listens (blocking: called from an async test it takes a runtime
    /// thread off for the wait, see [`tokio::task::block_in_place`]).
    pub fn start(text: &str) -> Proc {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sticky_lab.toml");
        std::fs::write(&path, text).expect("write the config");
        let mut ringlb = Ringlb::start(&path);
        let (addr, admin) = tokio::task::block_in_place(|| {
            let addr = ringlb.listening("lb");
            let admin = text.contains("[admin]").then(|| ringlb.admin());
            (addr, admin)
        });
        Proc {
            ringlb,
            addr,
            admin,
            path,
            _dir: dir,
        }
    }

    /// Every line logged so far (without waiting).
    pub fn log(&mut self) -> Vec<String> {
        self.ringlb.drain().to_vec()
    }

    /// Wait (polling) until a line with `message` and the fields `with` is
    /// logged; returns the first such line.
    pub async fn wait_logged(
        &mut self,
        within: Duration,
        message: &str,
        with: &[(&str, &str)],
    ) -> Logged {
        let found = poll(within, Duration::from_millis(20), || {
            let hit = logged(self.ringlb.drain(), message, with)
                .into_iter()
                .next();
            async move { hit }
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "no {message:?} {with:?} logged within {:?}; log:\n{}",
                patient(within),
                self.ringlb.seen.join("\n")
            )
        })
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let admin = self.admin.expect("the config has an [admin] endpoint");
        http_get(admin, "/metrics").await.expect("GET /metrics")
    }

    /// `GET /status`, parsed.
    pub async fn status(&self) -> serde_json::Value {
        let admin = self.admin.expect("the config has an [admin] endpoint");
        let body = http_get(admin, "/status").await.expect("GET /status");
        serde_json::from_str(&body).expect("/status is JSON")
    }

    /// Send `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.ringlb.pid() as i32);
        nix::sys::signal::kill(pid, signal).unwrap_or_else(|e| panic!("kill -{signal}: {e}"));
    }

    /// Write `text` over the config file and reload (SIGHUP); wait until the
    /// reload is applied.
    pub async fn reload(&mut self, text: &str) -> Logged {
        let before = logged(self.ringlb.drain(), "reload applied", &[]).len();
        write_file(&self.path, text);
        self.signal(nix::sys::signal::Signal::SIGHUP);
        let found = poll(Duration::from_secs(10), Duration::from_millis(20), || {
            let all = logged(self.ringlb.drain(), "reload applied", &[]);
            let hit = all.into_iter().nth(before);
            async move { hit }
        })
        .await;
        found.unwrap_or_else(|| panic!("reload not applied; log:\n{}", self.ringlb.seen.join("\n")))
    }
}

/// One node of `/status`'s pool `pool` (panics if absent).
pub fn status_node<'a>(
    status: &'a serde_json::Value,
    pool: &str,
    node: &str,
) -> &'a serde_json::Value {
    status["pools"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == pool))
        .and_then(|p| p["nodes"].as_array())
        .and_then(|ns| ns.iter().find(|n| n["name"] == node))
        .unwrap_or_else(|| panic!("no node {node} of pool {pool} in /status: {status}"))
}

/// One lab-heavy test at a time in a test binary: they measure timing, and the
/// machine is small.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// The sum of every sample of metric `name` whose labels include each of
/// `labels` (`pool="p"`); 0 when there is none (a counter never incremented).
pub fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
