//! Shared helpers for integration tests: real sockets on loopback, port 0, clients
//! bound to distinct 127.0.0.0/8 sources, polling instead of sleeps.
//!
//! - One way to start the real binary: [`Ringlb`] (listen on port 0, read the
//!   address from the log); [`reserve_port`] only where a port must be written
//!   into a config before its program starts (outside the ephemeral range).
//! - One way to wait: [`eventually`] / [`poll`] (and [`poll_blocking`],
//!   [`wait_exit`], [`wait_for`]); every bound times [`patience`]
//!   (`RINGLB_TEST_PATIENCE`).
//! - One [`read_line`], one [`http_get`] / [`http_request`].
//! - Tests that need root or a tool: [`require_root`] / [`needs`]: a skip
//!   prints why, and fails instead under `REQUIRE_ROOT=1` / `REQUIRE_NGINX=1`.
//! - The load lab of the upgrade tests (echo streams, a short-connection loop,
//!   descriptors and children from /proc): [`upgrade_lab`].
//!
//! These helpers must not: sleep for a fixed time to "let something happen", pick
//! a port with bind-then-close, or pass a test that did not run when CI asks for it.
#![allow(dead_code)]

pub mod bench_bin;
pub mod upgrade_lab;

use std::future::Future;
use std::io::BufRead as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitStatus;
use std::time::Duration;

use ringlb::demo::backend::{Backend, Mode};
use ringlb::{Config, Server, ShutdownReport};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Start `n` greeting echo backends named `node-0`, `node-1`, ...
pub async fn backends(n: usize) -> Vec<Backend> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(
            Backend::start(&format!("node-{i}"), SocketAddr::new(LOCAL, 0), Mode::Greet)
                .await
                .expect("backend bind"),
        );
    }
    v
}

/// Config text: one listener `lb` on 127.0.0.1:0, pool `p` with the given nodes
/// (name, addr), extra lines for the listener, the pool table and the top level.
pub fn config_text(
    nodes: &[(String, SocketAddr)],
    listener_extra: &str,
    pool_extra: &str,
    top_extra: &str,
) -> String {
    let mut s = format!(
        "{top_extra}\n[[listener]]\nname = \"lb\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n{listener_extra}\n[pools.p]\n{pool_extra}\n"
    );
    for (name, addr) in nodes {
        s.push_str(&format!(
            "[[pools.p.nodes]]\nname = \"{name}\"\naddr = \"{addr}\"\n"
        ));
    }
    s
}

pub fn nodes_of(backends: &[Backend]) -> Vec<(String, SocketAddr)> {
    backends.iter().map(|b| (b.name.clone(), b.addr)).collect()
}

/// A balancer running in this process.
pub struct Running {
    pub addr: SocketAddr,
    pub config: Config,
    pub shutdown: CancellationToken,
    pub hard_stop: CancellationToken,
    pub task: JoinHandle<ShutdownReport>,
    pub pool: std::sync::Arc<ringlb::pool::Pool>,
}

impl Running {
    pub async fn stop(self) -> ShutdownReport {
        self.shutdown.cancel();
        self.hard_stop.cancel();
        self.task.await.expect("server task")
    }
}

pub async fn start(text: &str) -> Running {
    let config = Config::parse(text, "test.toml").expect("valid config");
    let server = Server::bind(config.clone()).expect("bind");
    let addr = server.local_addr("lb").expect("listener lb");
    let pool = server.pool("p").expect("pool p").clone();
    let shutdown = CancellationToken::new();
    let hard_stop = server.hard_stop();
    let task = tokio::spawn(server.run(shutdown.clone()));
    Running {
        addr,
        config,
        shutdown,
        hard_stop,
        task,
        pool,
    }
}

/// A bound server running in this process, with its admin address and handle.
pub struct Served {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub handle: ringlb::Handle,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<ShutdownReport>,
}

impl Served {
    /// Run `server`; `addr` is the address of its listener `listener`.
    pub fn run(server: Server, listener: &str) -> Served {
        let addr = server.local_addr(listener).expect("listener");
        let admin = server.admin_addr();
        let handle = server.handle();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Served {
            addr,
            admin,
            handle,
            shutdown,
            task,
        }
    }

    /// Parse `text` (named `source` in errors), bind and run.
    pub fn start(text: &str, source: &str, listener: &str) -> Served {
        let config = Config::parse(text, source).expect("valid config");
        Served::run(Server::bind(config).expect("bind"), listener)
    }

    pub async fn stop(self) -> ShutdownReport {
        self.shutdown.cancel();
        self.task.await.expect("server task")
    }
}

/// The i-th distinct client address in 127.0.0.0/8 (never 127.0.0.1, never .0/.255).
pub fn client_ip(i: u32) -> IpAddr {
    let i = i + 1;
    let (a, b, c) = ((i / 250 / 250) % 250 + 1, (i / 250) % 250, i % 250 + 2);
    IpAddr::V4(Ipv4Addr::new(127, a as u8, b as u8, c as u8))
}

/// Connect to `dst` from `src` (any port).
pub async fn connect_from(src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))?;
    sock.connect(dst).await
}

/// The longest line [`read_line`] and [`read_line_blocking`] accept (a guard
/// against a peer that never sends a newline).
pub const MAX_LINE: usize = 64 * 1024;

/// One byte of a line: `Some` when the line is complete (newline, EOF or too long).
fn line_byte(line: &mut Vec<u8>, n: usize, byte: u8) -> Option<std::io::Result<String>> {
    if n == 0 {
        return Some(Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("EOF after {:?}", String::from_utf8_lossy(line)),
        )));
    }
    if byte == b'\n' {
        return Some(Ok(String::from_utf8_lossy(line).into_owned()));
    }
    line.push(byte);
    (line.len() > MAX_LINE).then(|| Err(std::io::Error::other("line too long")))
}

/// Read one line (without the newline), bounded by `within` (taken as given:
/// no patience applied).
pub async fn read_line_within<S>(stream: &mut S, within: Duration) -> std::io::Result<String>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let fut = async {
        loop {
            let n = stream.read(&mut byte).await?;
            if let Some(done) = line_byte(&mut line, n, byte[0]) {
                return done;
            }
        }
    };
    tokio::time::timeout(within, fut).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no line in {within:?}"),
        )
    })?
}

/// Read one line (without the newline), within 10 s (times the patience).
pub async fn read_line<S>(stream: &mut S) -> std::io::Result<String>
where
    S: tokio::io::AsyncRead + Unpin,
{
    read_line_within(stream, patient(Duration::from_secs(10))).await
}

/// [`read_line`] for a blocking stream (threads that entered a network
/// namespace); the stream's own read timeout bounds each read.
pub fn read_line_blocking(stream: &mut impl std::io::Read) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = stream.read(&mut byte)?;
        if let Some(done) = line_byte(&mut line, n, byte[0]) {
            return done;
        }
    }
}

/// Connect from `src` and return the name of the node that greets.
pub async fn node_for(src: IpAddr, dst: SocketAddr) -> std::io::Result<String> {
    let mut s = connect_from(src, dst).await?;
    read_line(&mut s).await
}

// ---------------------------------------------------------------------------
// Patience: one knob for every bound a slow or loaded machine can miss
// ---------------------------------------------------------------------------

/// The environment variable that scales the test suite's time bounds.
pub const PATIENCE_VAR: &str = "RINGLB_TEST_PATIENCE";

/// The value of [`PATIENCE_VAR`]: unset (or empty) is 1; otherwise a finite
/// number of at least 1, integer or not (`3`, `2.5`).
pub fn parse_patience(value: Option<&str>) -> Result<f64, String> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(1.0);
    };
    match v.parse::<f64>() {
        Ok(p) if p.is_finite() && p >= 1.0 => Ok(p),
        _ => Err(format!(
            "{PATIENCE_VAR}={v:?}: expected a number of at least 1 (e.g. 3 or 2.5)"
        )),
    }
}

/// The patience multiplier, read from the environment once (panics on a bad value).
pub fn patience() -> f64 {
    static P: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *P.get_or_init(|| {
        let v = std::env::var(PATIENCE_VAR).ok();
        parse_patience(v.as_deref()).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// `d` times the patience: for a bound on how long something may take (a wait
/// for it to happen, a latency ceiling) or a window in which something must not
/// happen. Never for a lower bound (that would loosen nothing on a slow machine).
pub fn patient(d: Duration) -> Duration {
    d.mul_f64(patience())
}

// ---------------------------------------------------------------------------
// Waiting: polling with a (patient) deadline, never a bare sleep
// ---------------------------------------------------------------------------

/// Call `f` every `every` until it returns `Some`, for at most `within` times
/// the patience; `None` if it never did.
pub async fn poll<T, F, Fut>(within: Duration, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patient(within);
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// [`poll`] every 20 ms; panics (naming `what`) if `f` never returns `Some`.
pub async fn eventually_some<T, F, Fut>(within: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll(within, Duration::from_millis(20), f)
        .await
        .unwrap_or_else(|| panic!("condition not met within {:?}: {what}", patient(within)))
}

/// Poll `cond` every 20 ms until it holds or `within` (times the patience) passes;
/// panics (naming `what`) if it never held.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_some(within, what, || {
        let c = cond();
        async move { c.await.then_some(()) }
    })
    .await
}

/// [`poll`] for plain threads: call `f` every `every` until it returns `Some`,
/// for at most `within` times the patience.
pub fn poll_blocking<T>(
    within: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = std::time::Instant::now() + patient(within);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Wait (polling every 10 ms, for at most `within` times the patience) for
/// `child` to exit; `None` if it is still running then.
pub fn wait_exit(child: &mut std::process::Child, within: Duration) -> Option<ExitStatus> {
    poll_blocking(within, Duration::from_millis(10), || {
        child.try_wait().expect("try_wait on a child")
    })
}

/// Read until EOF with a bound; returns bytes read, or an error (reset, timeout).
pub async fn read_to_eof(stream: &mut TcpStream, within: Duration) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut v))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no EOF in time"))??;
    Ok(v)
}

/// Deterministic pseudo-random bytes (xorshift), for byte-exact checks.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A node with a traffic backend (greet + echo) on `127.0.0.{k+1}:0` and an HTTP
/// health endpoint on the same IP and a port shared by every node of the fleet.
pub struct Fleet {
    pub traffic: Vec<Backend>,
    pub health: Vec<Backend>,
    pub health_port: u16,
}

impl Fleet {
    pub async fn start(n: usize) -> Fleet {
        'retry: for _ in 0..50 {
            let mut health = Vec::new();
            let first = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = first.local_addr().unwrap().port();
            health.push(Backend::from_listener("node-0", first, Mode::Http));
            for k in 1..n {
                let ip = Ipv4Addr::new(127, 0, 0, k as u8 + 1);
                match tokio::net::TcpListener::bind((ip, port)).await {
                    Ok(l) => {
                        health.push(Backend::from_listener(&format!("node-{k}"), l, Mode::Http))
                    }
                    Err(_) => continue 'retry,
                }
            }
            let mut traffic = Vec::new();
            for k in 0..n {
                let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, k as u8 + 1));
                traffic.push(
                    Backend::start(&format!("node-{k}"), SocketAddr::new(ip, 0), Mode::Greet)
                        .await
                        .unwrap(),
                );
            }
            return Fleet {
                traffic,
                health,
                health_port: port,
            };
        }
        panic!("could not find a health port free on every node address");
    }

    pub fn nodes(&self) -> Vec<(String, SocketAddr)> {
        nodes_of(&self.traffic)
    }

    /// Pool lines for an HTTP health check on the shared port.
    pub fn http_health(&self, interval: &str, timeout: &str, rise: u32, fall: u32) -> String {
        format!(
            "[pools.p.health]\nkind = \"http\"\npath = \"/healthcheck\"\nport = {}\ninterval = \"{interval}\"\ntimeout = \"{timeout}\"\nrise = {rise}\nfall = {fall}\n",
            self.health_port
        )
    }
}

/// Map client index → node name through real connections (50 at a time).
pub async fn nodes_for(ips: &[IpAddr], dst: SocketAddr) -> Vec<String> {
    let mut out = vec![String::new(); ips.len()];
    let mut set = tokio::task::JoinSet::new();
    for (chunk_no, chunk) in ips.chunks(ips.len().div_ceil(50).max(1)).enumerate() {
        let chunk = chunk.to_vec();
        set.spawn(async move {
            let mut v = Vec::new();
            for ip in chunk {
                v.push(
                    node_for(ip, dst)
                        .await
                        .unwrap_or_else(|e| format!("ERROR {e}")),
                );
            }
            (chunk_no, v)
        });
    }
    let size = ips.len().div_ceil(50).max(1);
    while let Some(r) = set.join_next().await {
        let (no, v) = r.unwrap();
        for (i, n) in v.into_iter().enumerate() {
            out[no * size + i] = n;
        }
    }
    out
}

/// Lines of a child's stream, delivered through a channel so reads have deadlines.
pub fn lines_of(stream: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// How long a wait for a log line may take (times the patience).
pub const LOG_WAIT: Duration = Duration::from_secs(20);

/// The index of the first line of `log[from..]` that `pred` accepts, receiving
/// more lines (kept in `log`) until one does or [`LOG_WAIT`] (times the
/// patience) passes; `None` then, or when the stream ended.
fn next_line(
    rx: &std::sync::mpsc::Receiver<String>,
    log: &mut Vec<String>,
    from: usize,
    mut pred: impl FnMut(&str) -> bool,
) -> Option<usize> {
    if let Some(i) = log[from.min(log.len())..].iter().position(|l| pred(l)) {
        return Some(from + i);
    }
    let deadline = std::time::Instant::now() + patient(LOG_WAIT);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).ok()?;
        let hit = pred(&line);
        log.push(line);
        if hit {
            return Some(log.len() - 1);
        }
    }
}

/// Wait for a new line containing `needle`; returns it. Every line seen is kept in `log`.
pub fn wait_for(
    rx: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    log: &mut Vec<String>,
) -> String {
    let from = log.len();
    match next_line(rx, log, from, |l| l.contains(needle)) {
        Some(i) => log[i].clone(),
        None => panic!("no line with {needle:?}; saw:\n{}", log.join("\n")),
    }
}

/// A child process, killed and reaped when dropped (also on a failed assertion).
pub struct Kill(pub std::process::Child);

impl std::ops::Deref for Kill {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Kill {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `"addr"` field of a JSON log line (`listening`, `admin endpoint listening`).
pub fn log_addr(line: &str) -> Option<SocketAddr> {
    line.split("\"addr\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|a| a.parse().ok())
}

/// `ringlb --log-format json --log-level info run --config PATH`, its log on a
/// piped stderr, stdout discarded. `RINGLB_WORKERS` is removed, so the config's
/// `workers` key decides.
pub fn spawn_ringlb_json(config: &std::path::Path) -> Kill {
    spawn_ringlb_json_with(config, &[])
}

/// [`spawn_ringlb_json`] with extra environment variables (e.g. `NOTIFY_SOCKET`).
pub fn spawn_ringlb_json_with(config: &std::path::Path, env: &[(&str, &str)]) -> Kill {
    Kill(
        std::process::Command::new(env!("CARGO_BIN_EXE_ringlb"))
            .args([
                "--log-format",
                "json",
                "--log-level",
                "info",
                "run",
                "--config",
            ])
            .arg(config)
            .env_remove("RINGLB_WORKERS")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start ringlb"),
    )
}

/// Write a config file as an operator's tooling would: to a temporary name, then
/// renamed over the old one, so a reload never reads half a file.
pub fn write_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Write `text` to `path`, ask for a reload, wait until it is applied or refused.
pub async fn reload(
    handle: &ringlb::Handle,
    path: &std::path::Path,
    text: &str,
) -> ringlb::server::ReloadRecord {
    let before = handle.reload_counts();
    write_file(path, text);
    handle.reload();
    eventually(Duration::from_secs(10), "reload finished", || {
        let now = handle.reload_counts();
        async move { now != before }
    })
    .await;
    handle.last_reload().unwrap()
}

/// One HTTP/1.1 request (extra header lines end in CRLF) to an admin endpoint,
/// answered within 10 s (times the patience): the status code, the head and the
/// body; an error if it cannot be reached or does not answer HTTP in time.
pub async fn try_http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> std::io::Result<(u16, String, String)> {
    use tokio::io::AsyncWriteExt;
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: admin\r\n{headers}\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    let within = patient(Duration::from_secs(10));
    tokio::time::timeout(within, s.read_to_end(&mut buf))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{method} {path}: no complete answer within {within:?}"),
            )
        })??;
    let text = String::from_utf8(buf).map_err(|e| bad(format!("not UTF-8: {e}")))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad(format!("no end of head in {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad(format!("no status code in {head:?}")))?;
    Ok((status, head.to_string(), body.to_string()))
}

/// [`try_http_request`], panicking on an error.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> (u16, String, String) {
    try_http_request(addr, method, path, headers)
        .await
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

/// GET `path` from an admin endpoint: the body of a `200` answer; otherwise what
/// went wrong (the head of another answer, or the I/O error).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    match try_http_request(addr, "GET", path, "").await {
        Ok((200, _, body)) => Ok(body),
        Ok((_, head, _)) => Err(format!("GET http://{addr}{path}: {head}")),
        Err(e) => Err(format!("GET http://{addr}{path}: {e}")),
    }
}

/// Log lines written through `tracing` in this test process (install it as the
/// subscriber's writer; a test binary has one subscriber).
#[derive(Clone, Default)]
pub struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// A capture installed as this process's subscriber, at INFO for ringlb
    /// (once per test binary: a second call panics).
    pub fn install() -> Capture {
        let logs = Capture::default();
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("ringlb=info")
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .try_init()
            .expect("the only subscriber in this test binary");
        logs
    }

    /// Lines that contain every one of `needles`.
    pub fn lines(&self, needles: &[&str]) -> Vec<String> {
        let b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&b)
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .collect()
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines(&[needle]).len()
    }
}

// ---------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------

/// A `ringlb` child process (killed and reaped when dropped, also on a failed
/// assertion) and its log, read on a thread so waits have deadlines. Its
/// addresses come from its log (`listen = "127.0.0.1:0"` in the config, then
/// [`Ringlb::listening`]), never from a port chosen before it started.
pub struct Ringlb {
    pub child: Kill,
    log: std::sync::mpsc::Receiver<String>,
    /// Every log line received so far.
    pub seen: Vec<String>,
    /// [`Ringlb::wait_for`] looks at lines from here on.
    cursor: usize,
}

impl Ringlb {
    /// [`spawn_ringlb_json`]: `ringlb --log-format json ... run --config PATH`.
    pub fn start(config: &std::path::Path) -> Ringlb {
        Ringlb::from_child(spawn_ringlb_json(config))
    }

    /// Any child with its log on a piped stderr (e.g. `ringlb` under `prlimit`).
    pub fn from_child(mut child: Kill) -> Ringlb {
        let log = lines_of(child.stderr.take().expect("stderr piped"));
        Ringlb {
            child,
            log,
            seen: Vec::new(),
            cursor: 0,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line containing `needle` after the one the previous call
    /// returned (waiting for it, [`LOG_WAIT`] at most); returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_line(needle, |l| l.contains(needle))
    }

    /// The next line `pred` accepts (as [`Ringlb::wait_for`]); `what` names it
    /// in the panic message.
    pub fn wait_for_line(&mut self, what: &str, pred: impl FnMut(&str) -> bool) -> String {
        match next_line(&self.log, &mut self.seen, self.cursor, pred) {
            Some(i) => {
                self.cursor = i + 1;
                self.seen[i].clone()
            }
            None => panic!(
                "no log line with {what:?} ({}); saw:\n{}",
                match self.child.try_wait() {
                    Ok(Some(st)) => format!("ringlb exited: {st}"),
                    _ => "ringlb still running".into(),
                },
                self.seen.join("\n")
            ),
        }
    }

    /// The first line containing `needle` logged so far, else the next one
    /// (for lines whose order with others does not matter); returns it.
    pub fn find(&mut self, needle: &str) -> String {
        match next_line(&self.log, &mut self.seen, 0, |l| l.contains(needle)) {
            Some(i) => self.seen[i].clone(),
            None => panic!(
                "no log line with {needle:?}; saw:\n{}",
                self.seen.join("\n")
            ),
        }
    }

    /// The address listener `name` listens on, from its `listening` line.
    pub fn listening(&mut self, name: &str) -> SocketAddr {
        let l = format!("\"listener\":\"{name}\"");
        let line = match next_line(&self.log, &mut self.seen, 0, |s| {
            s.contains("\"message\":\"listening\"") && s.contains(&l)
        }) {
            Some(i) => self.seen[i].clone(),
            None => panic!(
                "listener {name} never listening; saw:\n{}",
                self.seen.join("\n")
            ),
        };
        log_addr(&line).unwrap_or_else(|| panic!("no addr in {line}"))
    }

    /// The admin endpoint's address, from its `admin endpoint listening` line.
    pub fn admin(&mut self) -> SocketAddr {
        let line = self.find("admin endpoint listening");
        log_addr(&line).unwrap_or_else(|| panic!("no addr in {line}"))
    }

    /// Everything logged so far (drains the channel without waiting).
    pub fn drain(&mut self) -> &[String] {
        while let Ok(l) = self.log.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait on ringlb").is_none()
    }

    /// Wait for the exit ([`wait_exit`]; panics with the log if it does not
    /// come), then collect the rest of the log.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let Some(st) = wait_exit(&mut self.child, within) else {
            panic!(
                "ringlb did not exit within {:?}; log:\n{}",
                patient(within),
                self.drain().join("\n")
            );
        };
        // The log thread ends at EOF; collect what is left.
        while let Ok(l) = self.log.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(l);
        }
        st
    }
}

// ---------------------------------------------------------------------------
// Ports that must be known before a process starts
// ---------------------------------------------------------------------------

/// The kernel's ephemeral port range (`ip_local_port_range`): the ports that
/// `bind(:0)` and `connect` hand out, so a port chosen in advance must not be
/// one of them (another test's client socket could take it at any moment).
pub fn ephemeral_ports() -> std::ops::RangeInclusive<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some(it.next()??..=it.next()??)
        })
        .unwrap_or(32768..=60999)
}

/// A TCP port on 127.0.0.1 reserved for a test that must write it into a config
/// before the process that listens on it starts (a demo backend, nginx). Use
/// port 0 and the log instead wherever the program can report what it bound.
///
/// Why it cannot collide:
/// - it is outside [`ephemeral_ports`], so no `bind(:0)` or outgoing connection
///   on this machine is ever given it;
/// - an exclusive lock on a file named after it (in the temp dir, per user) is
///   held until the reservation is dropped, so no other reservation, in this or
///   another test process, picks it while this test runs;
/// - a socket stays bound to it (bound, not listening: nothing can connect)
///   until [`PortReservation::release`], called just before the program binds.
///
/// Only a process that binds this very number on its own could still take it.
pub struct PortReservation {
    port: u16,
    socket: Option<socket2::Socket>,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl PortReservation {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Unbind the placeholder socket: call just before starting the program
    /// that listens on the port. The lock stays until the reservation is dropped.
    pub fn release(&mut self) -> u16 {
        self.socket = None;
        self.port
    }
}

/// Reserve a port (see [`PortReservation`]) in 20000..=65535, outside the
/// ephemeral range.
pub fn reserve_port() -> PortReservation {
    use rand::Rng as _;
    let eph = ephemeral_ports();
    let candidates: Vec<u16> = (20000..=65535u16).filter(|p| !eph.contains(p)).collect();
    assert!(!candidates.is_empty(), "no port outside {eph:?}");
    let dir = std::env::temp_dir().join(format!("ringlb-test-ports-{}", nix::unistd::geteuid()));
    std::fs::create_dir_all(&dir).expect("port lock directory");
    let mut rng = rand::thread_rng();
    for _ in 0..200 {
        let port = candidates[rng.gen_range(0..candidates.len())];
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
            .expect("port lock file");
        let Ok(lock) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        else {
            continue; // reserved by another test
        };
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        if socket.bind(&SocketAddr::new(LOCAL, port).into()).is_ok() {
            return PortReservation {
                port,
                socket: Some(socket),
                _lock: lock,
            };
        }
    }
    panic!("no free port outside {eph:?} after 200 tries");
}

/// `config/demo.toml` as a test runs it: the listener and the admin endpoint on
/// port 0 (the demo logs and prints what it bound) and the demo backends, which
/// listen on their node addresses and so must be named in the file, on reserved
/// ports ([`reserve_port`]). Release the reservations just before the demo starts.
pub fn demo_text_on_free_ports() -> (String, Vec<PortReservation>) {
    let mut text = std::fs::read_to_string("config/demo.toml").expect("config/demo.toml");
    for port in ["7070", "7080"] {
        text = text.replace(&format!(":{port}\""), ":0\"");
    }
    let mut reserved = Vec::new();
    for port in ["7071", "7072", "7073"] {
        let r = reserve_port();
        text = text.replace(&format!(":{port}\""), &format!(":{}\"", r.port()));
        reserved.push(r);
    }
    (text, reserved)
}

/// A loopback address that refuses connections for as long as the returned
/// socket lives: it is bound there and never listens, so nothing else can take
/// the port and every connect is refused.
pub fn closed_port(ip: IpAddr) -> (SocketAddr, socket2::Socket) {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(SocketAddr::new(ip, 0)),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    socket
        .bind(&SocketAddr::new(ip, 0).into())
        .expect("bind a closed port");
    let addr = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("bound address");
    (addr, socket)
}

// ---------------------------------------------------------------------------
// Tests that need what this machine may lack (root, namespaces, nginx)
// ---------------------------------------------------------------------------

/// What to do with a test that needs something: run it, skip it, or fail.
#[derive(Debug, PartialEq, Eq)]
pub enum Need {
    Run,
    /// Print this and pass.
    Skip(String),
    /// Panic with this: the environment asked for the test to run.
    Fail(String),
}

/// The decision, pure: `missing` says why the test cannot run here (`None`: it
/// can); `require` is the value of the environment switch `var` (e.g.
/// `REQUIRE_ROOT`), under which a skip is a failure.
pub fn decide(missing: Option<&str>, var: &str, require: Option<&str>) -> Need {
    match (missing, require.map(str::trim)) {
        (None, _) => Need::Run,
        (Some(why), Some("1")) => {
            Need::Fail(format!("{var}=1, but this test cannot run here: {why}"))
        }
        (Some(why), _) => Need::Skip(format!("skipped: {why} (set {var}=1 to fail instead)")),
    }
}

/// Whether a test that needs something may run: `missing` is why it cannot
/// (`None`: it can). When it cannot, prints `skipped: <why>` and returns false,
/// unless the environment sets `var=1` (CI does): then it panics, so a test
/// that cannot run fails instead of passing.
pub fn needs(var: &str, missing: Option<String>) -> bool {
    let require = std::env::var(var).ok();
    match decide(missing.as_deref(), var, require.as_deref()) {
        Need::Run => true,
        Need::Skip(msg) => {
            eprintln!("{msg}");
            false
        }
        Need::Fail(msg) => panic!("{msg}"),
    }
}

/// Why a test that needs root cannot run here, if it cannot.
pub fn not_root() -> Option<String> {
    let euid = nix::unistd::geteuid();
    (!euid.is_root()).then(|| format!("not root (effective uid {euid})"))
}

/// `needs("REQUIRE_ROOT", ...)` for a test that needs root (`why`: what for).
/// Returns false (after printing why) when it should be skipped:
/// `if !require_root("...") { return; }`.
pub fn require_root(why: &str) -> bool {
    needs(
        "REQUIRE_ROOT",
        not_root().map(|r| format!("{r}; needs root for {why}")),
    )
}
