//! Shared helpers for integration tests: real sockets on loopback, port 0, clients
//! bound to distinct 127.0.0.0/8 sources, polling instead of sleeps.
#![allow(dead_code)]

pub mod bench_bin;

use std::future::Future;
use std::io::BufRead as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ringlb::backend::{Backend, Mode};
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

/// Read one line (without the newline), bounded in time.
pub async fn read_line(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let fut = async {
        loop {
            let n = stream.read(&mut byte).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("EOF after {:?}", String::from_utf8_lossy(&line)),
                ));
            }
            if byte[0] == b'\n' {
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            line.push(byte[0]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no line in 10s"))?
}

/// Connect from `src` and return the name of the node that greets.
pub async fn node_for(src: IpAddr, dst: SocketAddr) -> std::io::Result<String> {
    let mut s = connect_from(src, dst).await?;
    read_line(&mut s).await
}

/// Poll `cond` every 20 ms until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("condition not met within {within:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

/// Wait for a line containing `needle`; returns it. Every line seen is kept in `log`.
pub fn wait_for(
    rx: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    log: &mut Vec<String>,
) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                log.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
            Err(_) => panic!("no line with {needle:?}; saw:\n{}", log.join("\n")),
        }
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

/// One HTTP/1.1 request (extra header lines end in CRLF) to an admin endpoint;
/// the status code, the head and the body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> (u16, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: admin\r\n{headers}\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}
