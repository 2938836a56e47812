//! The client agent: this test binary, re-executed inside the client namespace
//! (`ip netns exec NS <test binary> zz_agent_entry --exact`), with `RLNT_AGENT=1`.
//!
//! It reads one JSON command per line on stdin and answers one JSON line per
//! command on stdout, prefixed with [`PREFIX`] (libtest prints its own lines on
//! the same stream). Commands run concurrently; each answer carries the
//! command's `id`. The agent exits when stdin closes (the test process is gone).

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{oneshot, Mutex};
use tokio::task::JoinHandle;

use crate::common::read_line_within;

pub const ENV: &str = "RLNT_AGENT";
pub const PREFIX: &str = "@@agent ";

/// Bound on any single read or write step of a client.
const STEP: Duration = Duration::from_secs(10);

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Run the agent when this process was started as one; otherwise return at once.
pub fn run_if_requested() {
    if std::env::var_os(ENV).is_none() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("agent runtime");
    rt.block_on(serve());
    std::process::exit(0);
}

/// Small deterministic generator for payloads, sizes and pauses.
#[derive(Clone)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform-ish in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

struct StreamSet {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Value>>,
}

struct Churn {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Vec<Value>>>,
}

struct Hold {
    stream: TcpStream,
    node: String,
    last_send: Instant,
}

#[derive(Default)]
struct State {
    streams: Mutex<HashMap<String, StreamSet>>,
    churns: Mutex<HashMap<String, Churn>>,
    holds: Mutex<HashMap<u64, Hold>>,
    next_hold: AtomicU64,
}

async fn serve() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(line.trim().to_string()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let state = Arc::new(State::default());
    while let Some(line) = rx.recv().await {
        if line.is_empty() {
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let cmd: Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(e) => {
                    reply(json!({"id": 0, "ok": false, "error": format!("bad json: {e}")}));
                    return;
                }
            };
            let id = cmd["id"].as_u64().unwrap_or(0);
            let mut out = match handle(&state, &cmd).await {
                Ok(v) => v,
                Err(e) => json!({"ok": false, "error": e}),
            };
            out["id"] = json!(id);
            if out.get("ok").is_none() {
                out["ok"] = json!(true);
            }
            reply(out);
        });
    }
    // stdin closed: the test is gone.
}

fn reply(v: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{PREFIX}{v}");
    let _ = out.flush();
}

fn addr(v: &Value, key: &str) -> Result<SocketAddr, String> {
    v[key]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("missing or bad {key}"))
}

fn ip(v: &Value, key: &str) -> Result<IpAddr, String> {
    v[key]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("missing or bad {key}"))
}

fn ips(v: &Value, key: &str) -> Result<Vec<IpAddr>, String> {
    v[key]
        .as_array()
        .ok_or_else(|| format!("missing {key}"))?
        .iter()
        .map(|x| {
            x.as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad ip in {key}"))
        })
        .collect()
}

fn num(v: &Value, key: &str, default: u64) -> u64 {
    v[key].as_u64().unwrap_or(default)
}

async fn handle(state: &Arc<State>, cmd: &Value) -> Result<Value, String> {
    match cmd["op"].as_str().unwrap_or("") {
        "ping" => Ok(json!({})),
        "probe" => {
            let src = ip(cmd, "src")?;
            let dst = addr(cmd, "dst")?;
            let within = Duration::from_millis(num(cmd, "timeout_ms", 5000));
            Ok(probe(src, dst, within).await)
        }
        "map" => {
            let srcs = ips(cmd, "srcs")?;
            let dst = addr(cmd, "dst")?;
            let within = Duration::from_millis(num(cmd, "timeout_ms", 5000));
            let mut set = Vec::new();
            for src in srcs {
                set.push(tokio::spawn(probe(src, dst, within)));
            }
            let mut out = Vec::new();
            for t in set {
                out.push(
                    t.await
                        .unwrap_or_else(|e| json!({"ok": false, "error": e.to_string()})),
                );
            }
            Ok(json!({ "results": out }))
        }
        "streams_start" => streams_start(state, cmd).await,
        "streams_stop" => {
            let tag = cmd["tag"].as_str().unwrap_or("").to_string();
            let set = state
                .streams
                .lock()
                .await
                .remove(&tag)
                .ok_or("no such stream set")?;
            set.stop.store(true, Ordering::SeqCst);
            let mut conns = Vec::new();
            for t in set.tasks {
                conns
                    .push(t.await.unwrap_or_else(
                        |e| json!({"alive": false, "error": format!("task: {e}")}),
                    ));
            }
            Ok(json!({ "conns": conns }))
        }
        "churn_start" => {
            let tag = cmd["tag"].as_str().unwrap_or("").to_string();
            let srcs = ips(cmd, "srcs")?;
            let dst = addr(cmd, "dst")?;
            let workers = num(cmd, "workers", 1) as usize;
            let pause = Duration::from_millis(num(cmd, "pause_ms", 20));
            let within = Duration::from_millis(num(cmd, "timeout_ms", 5000));
            let stop = Arc::new(AtomicBool::new(false));
            let mut tasks = Vec::new();
            for w in 0..workers {
                let (srcs, stop) = (srcs.clone(), stop.clone());
                tasks.push(tokio::spawn(churn_worker(
                    w, workers, srcs, dst, pause, within, stop,
                )));
            }
            state.churns.lock().await.insert(tag, Churn { stop, tasks });
            Ok(json!({}))
        }
        "churn_stop" => {
            let tag = cmd["tag"].as_str().unwrap_or("").to_string();
            let churn = state
                .churns
                .lock()
                .await
                .remove(&tag)
                .ok_or("no such churn")?;
            churn.stop.store(true, Ordering::SeqCst);
            let mut results = Vec::new();
            for t in churn.tasks {
                results.extend(t.await.unwrap_or_default());
            }
            Ok(json!({ "results": results }))
        }
        "hold" => {
            let src = ip(cmd, "src")?;
            let dst = addr(cmd, "dst")?;
            let mut stream = connect_from(src, dst, Duration::from_secs(5))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let node = read_line_within(&mut stream, STEP)
                .await
                .map_err(|e| format!("greeting: {e}"))?;
            let h = state.next_hold.fetch_add(1, Ordering::SeqCst) + 1;
            state.holds.lock().await.insert(
                h,
                Hold {
                    stream,
                    node: node.clone(),
                    last_send: Instant::now(),
                },
            );
            Ok(json!({"handle": h, "node": node}))
        }
        "hold_echo" | "hold_send" => {
            let h = num(cmd, "handle", 0);
            let text = cmd["text"].as_str().unwrap_or("x").to_string();
            let mut hold = state.holds.lock().await.remove(&h).ok_or("no such hold")?;
            let r = async {
                hold.stream
                    .write_all(format!("{text}\n").as_bytes())
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                hold.last_send = Instant::now();
                if cmd["op"] == "hold_echo" {
                    let back = read_line_within(&mut hold.stream, STEP)
                        .await
                        .map_err(|e| format!("read: {e}"))?;
                    if back != text {
                        return Err(format!("echo mismatch: {back:?} != {text:?}"));
                    }
                }
                Ok(json!({"node": hold.node}))
            }
            .await;
            state.holds.lock().await.insert(h, hold);
            r
        }
        "hold_wait_close" => {
            let h = num(cmd, "handle", 0);
            let within = Duration::from_millis(num(cmd, "timeout_ms", 10_000));
            let mut hold = state.holds.lock().await.remove(&h).ok_or("no such hold")?;
            let mut buf = [0u8; 4096];
            let mut extra = 0usize;
            let how = loop {
                match tokio::time::timeout_at(
                    (hold.last_send + within).into(),
                    hold.stream.read(&mut buf),
                )
                .await
                {
                    Err(_) => break "timeout".to_string(),
                    Ok(Ok(0)) => break "eof".to_string(),
                    Ok(Ok(n)) => extra += n,
                    Ok(Err(e)) => break format!("error: {e}"),
                }
            };
            let after = hold.last_send.elapsed().as_millis() as u64;
            Ok(json!({"how": how, "after_send_ms": after, "extra_bytes": extra, "node": hold.node}))
        }
        "bulk" => {
            let src = ip(cmd, "src")?;
            let dst = addr(cmd, "dst")?;
            let bytes = num(cmd, "bytes", 1 << 20) as usize;
            let seed = num(cmd, "seed", 1);
            let within = Duration::from_millis(num(cmd, "timeout_ms", 60_000));
            let greet_within =
                Duration::from_millis(num(cmd, "greet_timeout_ms", within.as_millis() as u64));
            Ok(bulk(src, dst, bytes, seed, within, greet_within).await)
        }
        "http_get" => {
            let dst = addr(cmd, "dst")?;
            let path = cmd["path"].as_str().unwrap_or("/").to_string();
            let fut = async {
                let mut s = TcpStream::connect(dst).await?;
                s.write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: {dst}\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await?;
                let mut v = Vec::new();
                s.read_to_end(&mut v).await?;
                Ok::<_, std::io::Error>(String::from_utf8_lossy(&v).into_owned())
            };
            match tokio::time::timeout(Duration::from_secs(5), fut).await {
                Ok(Ok(text)) => Ok(json!({ "text": text })),
                Ok(Err(e)) => Err(format!("http: {e}")),
                Err(_) => Err("http: timeout".into()),
            }
        }
        other => Err(format!("unknown op {other:?}")),
    }
}

pub async fn connect_from(
    src: IpAddr,
    dst: SocketAddr,
    within: Duration,
) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))?;
    match tokio::time::timeout(within, sock.connect(dst)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timeout",
        )),
    }
}

/// Connect from `src`, read the greeting; the node name and the time it took.
async fn probe(src: IpAddr, dst: SocketAddr, within: Duration) -> Value {
    let t0 = Instant::now();
    let r = tokio::time::timeout(within, async {
        let mut s = connect_from(src, dst, within).await?;
        let connect_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let node = read_line_within(&mut s, STEP).await?;
        Ok::<_, std::io::Error>((node, connect_ms))
    })
    .await;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    match r {
        Ok(Ok((node, connect_ms))) => {
            json!({"src": src.to_string(), "ok": true, "node": node, "ms": ms, "connect_ms": connect_ms})
        }
        Ok(Err(e)) => {
            json!({"src": src.to_string(), "ok": false, "error": e.to_string(), "ms": ms})
        }
        Err(_) => json!({"src": src.to_string(), "ok": false, "error": "timeout", "ms": ms}),
    }
}

async fn streams_start(state: &Arc<State>, cmd: &Value) -> Result<Value, String> {
    let tag = cmd["tag"].as_str().unwrap_or("").to_string();
    let srcs = ips(cmd, "srcs")?;
    let dst = addr(cmd, "dst")?;
    let per_src = num(cmd, "per_src", 1);
    let max_chunk = num(cmd, "max_chunk", 2048).max(1);
    let pause = num(cmd, "pause_ms", 100);
    let seed = num(cmd, "seed", 1);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut ready = Vec::new();
    let mut idx = 0u64;
    for src in &srcs {
        for _ in 0..per_src {
            let (tx, rx) = oneshot::channel();
            let params = StreamParams {
                idx,
                src: *src,
                dst,
                max_chunk,
                pause_ms: pause,
                seed: seed.wrapping_add(idx),
            };
            tasks.push(tokio::spawn(stream_conn(params, stop.clone(), tx)));
            ready.push(rx);
            idx += 1;
            if idx % 50 == 0 {
                // Do not open hundreds of connects in one burst.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let mut opened = Vec::new();
    for rx in ready {
        opened.push(
            rx.await
                .unwrap_or_else(|_| json!({"ok": false, "error": "task gone"})),
        );
    }
    state
        .streams
        .lock()
        .await
        .insert(tag, StreamSet { stop, tasks });
    Ok(json!({ "opened": opened }))
}

struct StreamParams {
    idx: u64,
    src: IpAddr,
    dst: SocketAddr,
    max_chunk: u64,
    pause_ms: u64,
    seed: u64,
}

/// One long-lived echo connection: greeting, then chunks of pseudo-random bytes
/// written and read back in lockstep, each compared byte for byte. On stop it
/// half-closes and expects a clean EOF with no extra byte.
async fn stream_conn(
    p: StreamParams,
    stop: Arc<AtomicBool>,
    ready: oneshot::Sender<Value>,
) -> Value {
    let src = p.src.to_string();
    let mut report = json!({"idx": p.idx, "src": src, "node": null, "sent": 0, "verified": 0,
        "alive": false, "error": null, "corrupt": false, "ended_ms": null});
    let opened = async {
        let mut s = connect_from(p.src, p.dst, Duration::from_secs(5)).await?;
        let node = read_line_within(&mut s, STEP).await?;
        Ok::<_, std::io::Error>((s, node))
    }
    .await;
    let (mut s, node) = match opened {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(json!({"ok": false, "src": src, "error": e.to_string()}));
            report["error"] = json!(format!("open: {e}"));
            report["ended_ms"] = json!(unix_ms());
            return report;
        }
    };
    report["node"] = json!(node);
    let _ = ready.send(json!({"ok": true, "src": src, "node": node}));
    let mut rng = XorShift::new(p.seed);
    let mut out = vec![0u8; p.max_chunk as usize];
    let mut back = vec![0u8; p.max_chunk as usize];
    let (mut sent, mut verified) = (0u64, 0u64);
    let result: Result<(), String> = async {
        loop {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let len = rng.range(1, p.max_chunk) as usize;
            rng.fill(&mut out[..len]);
            tokio::time::timeout(STEP, s.write_all(&out[..len]))
                .await
                .map_err(|_| "write timeout".to_string())?
                .map_err(|e| format!("write: {e}"))?;
            sent += len as u64;
            tokio::time::timeout(STEP, s.read_exact(&mut back[..len]))
                .await
                .map_err(|_| "read timeout".to_string())?
                .map_err(|e| format!("read: {e}"))?;
            if back[..len] != out[..len] {
                return Err("CORRUPT: echoed bytes differ".to_string());
            }
            verified += len as u64;
            let pause = rng.range(p.pause_ms / 2, p.pause_ms + p.pause_ms / 2);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        s.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .map_err(|_| "no EOF after half-close".to_string())?
            .map_err(|e| format!("read at end: {e}"))?;
        if !rest.is_empty() {
            return Err(format!(
                "CORRUPT: {} extra bytes after the last echo",
                rest.len()
            ));
        }
        Ok(())
    }
    .await;
    report["sent"] = json!(sent);
    report["verified"] = json!(verified);
    match result {
        Ok(()) => report["alive"] = json!(true),
        Err(e) => {
            report["corrupt"] = json!(e.starts_with("CORRUPT"));
            report["error"] = json!(e);
            report["ended_ms"] = json!(unix_ms());
        }
    }
    report
}

/// Short connections, one after another: connect, greeting, one echoed line, close.
async fn churn_worker(
    w: usize,
    workers: usize,
    srcs: Vec<IpAddr>,
    dst: SocketAddr,
    pause: Duration,
    within: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<Value> {
    let mut out = Vec::new();
    let mut i = w;
    while !stop.load(Ordering::SeqCst) && out.len() < 100_000 {
        let src = srcs[i % srcs.len()];
        i += workers;
        let start_ms = unix_ms();
        let t0 = Instant::now();
        let r = tokio::time::timeout(within, async {
            let mut s = connect_from(src, dst, within).await?;
            let node = read_line_within(&mut s, STEP).await?;
            let msg = format!("churn-{w}-{i}");
            s.write_all(format!("{msg}\n").as_bytes()).await?;
            let back = read_line_within(&mut s, STEP).await?;
            if back != msg {
                return Err(std::io::Error::other(format!("echo mismatch {back:?}")));
            }
            Ok::<_, std::io::Error>(node)
        })
        .await;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        out.push(match r {
            Ok(Ok(node)) => json!({"t": start_ms, "src": src.to_string(), "ok": true, "node": node, "ms": ms}),
            Ok(Err(e)) => json!({"t": start_ms, "src": src.to_string(), "ok": false, "error": e.to_string(), "ms": ms}),
            Err(_) => json!({"t": start_ms, "src": src.to_string(), "ok": false, "error": "timeout", "ms": ms}),
        });
        tokio::time::sleep(pause).await;
    }
    out
}

/// Echo `bytes` pseudo-random bytes through one connection, writer and reader
/// running at once; byte-exact check, then a clean EOF after the half-close.
async fn bulk(
    src: IpAddr,
    dst: SocketAddr,
    bytes: usize,
    seed: u64,
    within: Duration,
    greet_within: Duration,
) -> Value {
    let t0 = Instant::now();
    let r = tokio::time::timeout(within, async {
        let mut s = connect_from(src, dst, Duration::from_secs(10)).await?;
        // Over a lossy link a lost handshake makes the first RTO 3 s (RFC 6298),
        // and the greeting may be lost more than once: no 10 s bound here.
        let node = read_line_within(&mut s, greet_within)
            .await
            .map_err(|e| std::io::Error::other(format!("no greeting: {e}")))?;
        let greet_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let (mut rd, mut wr) = s.into_split();
        let writer = tokio::spawn(async move {
            let mut rng = XorShift::new(seed);
            let mut buf = vec![0u8; 16 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(buf.len());
                rng.fill(&mut buf[..n]);
                wr.write_all(&buf[..n]).await?;
                left -= n;
            }
            wr.shutdown().await?;
            Ok::<_, std::io::Error>(wr)
        });
        let mut rng = XorShift::new(seed);
        let mut want = vec![0u8; 16 * 1024];
        let mut got = vec![0u8; 16 * 1024];
        let mut checked = 0usize;
        let mut want_fill = 0usize; // bytes of `want` generated and not yet compared
        let mut want_off = 0usize;
        while checked < bytes {
            let n = rd.read(&mut got[..]).await?;
            if n == 0 {
                return Err(std::io::Error::other(format!(
                    "EOF after {checked} of {bytes} bytes"
                )));
            }
            let mut i = 0;
            while i < n {
                if want_off == want_fill {
                    let k = (bytes - checked).min(want.len());
                    rng.fill(&mut want[..k]);
                    want_fill = k;
                    want_off = 0;
                }
                let k = (n - i).min(want_fill - want_off);
                if got[i..i + k] != want[want_off..want_off + k] {
                    return Err(std::io::Error::other(format!(
                        "CORRUPT: bytes differ near offset {checked}"
                    )));
                }
                i += k;
                want_off += k;
                checked += k;
            }
        }
        let mut rest = Vec::new();
        rd.read_to_end(&mut rest).await?;
        if !rest.is_empty() {
            return Err(std::io::Error::other(format!(
                "CORRUPT: {} extra bytes",
                rest.len()
            )));
        }
        let _ = writer.await.map_err(std::io::Error::other)??;
        Ok::<_, std::io::Error>((node, checked, greet_ms))
    })
    .await;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    match r {
        Ok(Ok((node, checked, greet_ms))) => {
            json!({"ok": true, "node": node, "checked": checked, "ms": ms, "greet_ms": greet_ms})
        }
        Ok(Err(e)) => json!({"ok": false, "error": e.to_string(), "ms": ms}),
        Err(_) => json!({"ok": false, "error": "timeout", "ms": ms}),
    }
}
