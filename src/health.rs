//! Active health checks: one probe task per node (TCP connect, or an HTTP/1.1 GET
//! whose status and optionally body are checked), interval with ±10% jitter, a
//! timeout on every probe, and the rise/fall hysteresis. Results are reported to
//! the [`Pool`], which owns the ring; this module never picks nodes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{fmt_duration, HealthConfig, HealthKind};
use crate::pool::{Node, Pool};

/// The most of a response an HTTP probe reads (status line, headers and body).
pub const MAX_RESPONSE: usize = 64 * 1024;

/// One probe's result.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOutcome {
    pub ok: bool,
    /// What was seen: `"http 200"`, `"connect refused"`, `"timeout after 1s"`...
    pub detail: String,
    pub latency: Duration,
}

/// The last probe, kept for status output.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRecord {
    pub ok: bool,
    pub detail: String,
    pub at: SystemTime,
    pub latency: Duration,
}

/// Hysteresis state of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeHealth {
    pub up: bool,
    /// Consecutive successful probes.
    pub ok_streak: u32,
    /// Consecutive failed probes.
    pub fail_streak: u32,
    /// When the node entered its current state.
    pub since: SystemTime,
    /// Why it entered its current state (empty at start).
    pub reason: String,
    pub last: Option<ProbeRecord>,
    /// Number of up/down changes.
    pub transitions: u64,
    pub probes: u64,
}

impl NodeHealth {
    /// Nodes start up, so a fresh start serves at once; the first probes confirm
    /// that or take the node down after `fall` failures.
    pub fn new(now: SystemTime) -> Self {
        NodeHealth {
            up: true,
            ok_streak: 0,
            fail_streak: 0,
            since: now,
            reason: String::new(),
            last: None,
            transitions: 0,
            probes: 0,
        }
    }

    /// Feed one probe result. Returns `Some(new_state)` when it crosses `rise`
    /// (down → up) or `fall` (up → down).
    pub fn observe(&mut self, o: &ProbeOutcome, rise: u32, fall: u32) -> Option<bool> {
        let now = SystemTime::now();
        self.probes += 1;
        self.last = Some(ProbeRecord {
            ok: o.ok,
            detail: o.detail.clone(),
            at: now,
            latency: o.latency,
        });
        if o.ok {
            self.ok_streak = self.ok_streak.saturating_add(1);
            self.fail_streak = 0;
            if !self.up && self.ok_streak >= rise {
                self.set(true, now);
                return Some(true);
            }
        } else {
            self.fail_streak = self.fail_streak.saturating_add(1);
            self.ok_streak = 0;
            if self.up && self.fail_streak >= fall {
                self.set(false, now);
                return Some(false);
            }
        }
        None
    }

    /// Down without waiting for probes (passive failures): the probes must then see
    /// `rise` successes to bring it back.
    pub fn force_down(&mut self, now: SystemTime) {
        self.force(false, now);
    }

    /// Set the state by hand; streaks start over.
    pub fn force(&mut self, up: bool, now: SystemTime) {
        if self.up != up {
            self.set(up, now);
        }
        self.ok_streak = 0;
        self.fail_streak = 0;
    }

    fn set(&mut self, up: bool, now: SystemTime) {
        self.up = up;
        self.since = now;
        self.transitions += 1;
    }
}

/// Where a node is probed: its address, or the same IP on `health.port`.
pub fn probe_addr(node_addr: SocketAddr, h: &HealthConfig) -> SocketAddr {
    match h.port {
        Some(p) => SocketAddr::new(node_addr.ip(), p),
        None => node_addr,
    }
}

/// Run one probe against `addr`, bounded by `h.timeout`.
pub async fn probe(addr: SocketAddr, h: &HealthConfig) -> ProbeOutcome {
    let start = Instant::now();
    let result = tokio::time::timeout(h.timeout, async {
        match h.kind {
            HealthKind::Http => http_probe(addr, h).await,
            HealthKind::Tcp | HealthKind::None => tcp_probe(addr).await,
        }
    })
    .await;
    let (ok, detail) = match result {
        Ok(Ok(detail)) => (true, detail),
        Ok(Err(detail)) => (false, detail),
        Err(_) => (false, format!("timeout after {}", fmt_duration(h.timeout))),
    };
    ProbeOutcome {
        ok,
        detail,
        latency: start.elapsed(),
    }
}

fn connect_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect refused".to_string(),
        _ => format!("connect: {e}"),
    }
}

async fn tcp_probe(addr: SocketAddr) -> Result<String, String> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| connect_error(&e))?;
    drop(s);
    Ok("tcp connect ok".to_string())
}

async fn http_probe(addr: SocketAddr, h: &HealthConfig) -> Result<String, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| connect_error(&e))?;
    let host = h.host.clone().unwrap_or_else(|| addr.to_string());
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringlb-health\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        h.path
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    // Read the status line (and, when a body is expected, the body).
    let mut status: Option<u16> = None;
    let mut head_end: Option<usize> = None;
    loop {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        let take = n.min(MAX_RESPONSE - buf.len());
        buf.extend_from_slice(&chunk[..take]);
        if status.is_none() {
            if let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") {
                status = Some(parse_status(&buf[..eol])?);
                if h.expect_body.is_empty() {
                    break;
                }
            }
        }
        if head_end.is_none() {
            head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        }
        if let Some(he) = head_end {
            if let Some(len) = content_length(&buf[..he]) {
                if buf.len() >= he + len {
                    break;
                }
            }
        }
        if buf.len() >= MAX_RESPONSE {
            break;
        }
    }
    let Some(status) = status else {
        return Err(if buf.is_empty() {
            "closed before answering".to_string()
        } else {
            "no HTTP status line".to_string()
        });
    };
    if !h.expect_status.contains(status) {
        return Err(format!("http {status}"));
    }
    if !h.expect_body.is_empty() {
        let body = head_end.map_or(&buf[..0], |he| &buf[he..]);
        let needle = h.expect_body.as_bytes();
        if !body.windows(needle.len()).any(|w| w == needle) {
            return Err(format!("http {status}, body lacks {:?}", h.expect_body));
        }
    }
    Ok(format!("http {status}"))
}

fn parse_status(line: &[u8]) -> Result<u16, String> {
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!(
            "no HTTP status line (got {:?})",
            truncate(&line, 40)
        ));
    }
    code.parse::<u16>()
        .ok()
        .filter(|c| (100..=599).contains(c))
        .ok_or_else(|| format!("bad HTTP status line {:?}", truncate(&line, 40)))
}

fn content_length(head: &[u8]) -> Option<usize> {
    let head = String::from_utf8_lossy(head);
    head.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// A small deterministic-per-node jitter source (no global RNG needed).
struct Jitter(u64);

impl Jitter {
    fn new(name: &str) -> Jitter {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut x = t ^ 0x9E37_79B9_7F4A_7C15;
        for b in name.bytes() {
            x = (x ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
        }
        Jitter(x | 1)
    }

    /// A factor in [lo, hi).
    fn factor(&mut self, lo: f64, hi: f64) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + (hi - lo) * ((self.0 >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// The probe tasks of one pool: one per node (none when `health.kind = "none"`),
/// kept in step with the pool's nodes by [`Prober::sync`] after a reload.
#[derive(Debug)]
pub struct Prober {
    pool: Arc<Pool>,
    tasks: Vec<(Arc<Node>, CancellationToken)>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Prober {
    /// Start probing every node of `pool`; everything stops when `stop` is cancelled.
    pub fn start(pool: Arc<Pool>, stop: &CancellationToken) -> Prober {
        let mut p = Prober {
            pool,
            tasks: Vec::new(),
            stop: stop.child_token(),
            tracker: TaskTracker::new(),
        };
        p.sync();
        p
    }

    /// Start tasks for new nodes, stop those of removed nodes (or all of them when
    /// health checks were turned off). Settings changes need no restart: every
    /// probe reads the pool's current settings.
    pub fn sync(&mut self) {
        let nodes = if self.pool.settings().health.kind == HealthKind::None {
            Vec::new()
        } else {
            self.pool.nodes()
        };
        self.tasks.retain(|(n, tok)| {
            let keep = nodes.iter().any(|m| Arc::ptr_eq(m, n));
            if !keep {
                tok.cancel();
            }
            keep
        });
        for n in nodes {
            if !self.tasks.iter().any(|(m, _)| Arc::ptr_eq(m, &n)) {
                let tok = self.stop.child_token();
                self.tracker
                    .spawn(probe_loop(self.pool.clone(), n.clone(), tok.clone()));
                self.tasks.push((n, tok));
            }
        }
    }

    /// Number of running probe tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Stop every probe and wait for them.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Probe one node forever: never two probes at once for one node; starts spaced
/// by `interval` ± 10%. The first probe comes within the first 10% of an interval.
async fn probe_loop(pool: Arc<Pool>, node: Arc<Node>, stop: CancellationToken) {
    let mut jitter = Jitter::new(&node.name);
    let mut delay = pool
        .settings()
        .health
        .interval
        .mul_f64(jitter.factor(0.0, 0.1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        let settings = pool.settings();
        let h = &settings.health;
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            o = probe(probe_addr(node.addr, h), h) => o,
        };
        pool.probe_result(&node, outcome);
        delay = h
            .interval
            .mul_f64(jitter.factor(0.9, 1.1))
            .saturating_sub(started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(ok: bool) -> ProbeOutcome {
        ProbeOutcome {
            ok,
            detail: String::new(),
            latency: Duration::ZERO,
        }
    }

    #[test]
    fn hysteresis() {
        let mut h = NodeHealth::new(SystemTime::now());
        assert_eq!(h.observe(&o(false), 2, 2), None);
        assert_eq!(h.observe(&o(false), 2, 2), Some(false));
        assert_eq!(h.observe(&o(false), 2, 2), None, "already down");
        assert_eq!(h.observe(&o(true), 2, 2), None);
        assert_eq!(h.observe(&o(false), 2, 2), None);
        assert_eq!(h.observe(&o(true), 2, 2), None);
        assert_eq!(h.observe(&o(true), 2, 2), Some(true));
        assert_eq!(h.transitions, 2);
        assert_eq!(h.probes, 7);
        h.force_down(SystemTime::now());
        assert!(!h.up);
        assert_eq!(h.observe(&o(true), 1, 1), Some(true));
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK"), Ok(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service Unavailable"), Ok(503));
        assert!(parse_status(b"SSH-2.0-OpenSSH").is_err());
        assert!(parse_status(b"HTTP/1.1 20x OK").is_err());
        assert!(parse_status(b"HTTP/1.1 999 OK").is_err());
        assert_eq!(
            content_length(b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 12\r\n\r\n"),
            Some(12)
        );
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut j = Jitter::new("x");
        for _ in 0..10_000 {
            let f = j.factor(0.9, 1.1);
            assert!((0.9..1.1).contains(&f));
        }
    }
}
