//! The load lab for upgrade tests: long-lived echo streams, a bounded loop of
//! short connections, and what `/proc` says about a process (descriptors,
//! children, whether it is gone).
//!
//! - [`Streams`]: echo streams through the balancer, each from its own client
//!   IP, sending seeded random-sized messages and checking every echo byte for
//!   byte; some run until [`Streams::finish`], others live a short time and are
//!   replaced by a new stream (so a process that handed over gets no stream
//!   after the handover and can finish its drain during the test). A stream
//!   ends with a last message and a half-close, then reads its echo and EOF.
//! - [`ShortLoop`]: a bounded, paced loop of short connections (connect, read
//!   the node's greeting, send a line, read its echo, half-close, read EOF),
//!   counting failed connects, resets and wrong bytes.
//! - [`fd_count`], [`children`], [`gone`], [`Reap`]: process inspection and the
//!   cleanup of processes the test did not spawn itself (upgrade successors).
//!
//! Every wait is bounded (times the patience); nothing sleeps to synchronise:
//! the pauses between messages and connections only pace the load.
#![allow(dead_code)]

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{client_ip, connect_from, patient, pattern, read_line_within};

/// The largest message a stream sends (the brief: 1 B to 64 KiB).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// How long one step (connect, an echo, the EOF) may take, times the patience.
const STEP: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Failures, classified
// ---------------------------------------------------------------------------

/// What went wrong with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    /// connect() failed (refused, unreachable) or did not finish in time.
    Connect,
    /// The connection was reset (ECONNRESET, EPIPE) after it was established.
    Reset,
    /// EOF before everything sent was echoed.
    EarlyEof,
    /// Bytes that differ from what was sent (or bytes after the last echo).
    WrongBytes,
    /// No progress within the step bound.
    Timeout,
    /// Any other I/O error.
    Other,
}

/// A failed connection: what, and the details (which stream, where, the error).
#[derive(Debug, Clone)]
pub struct Failed {
    pub kind: Failure,
    pub detail: String,
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.detail)
    }
}

fn classify(e: &io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Failure::Reset,
        io::ErrorKind::UnexpectedEof => Failure::EarlyEof,
        io::ErrorKind::TimedOut => Failure::Timeout,
        _ => Failure::Other,
    }
}

fn failed(kind: Failure, detail: impl Into<String>) -> Failed {
    Failed {
        kind,
        detail: detail.into(),
    }
}

fn io_failed(what: &str, e: &io::Error) -> Failed {
    failed(classify(e), format!("{what}: {e}"))
}

/// `fut` within `within` (taken as given), a timeout as [`Failure::Timeout`].
async fn bounded<T>(
    what: &str,
    within: Duration,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T, Failed> {
    match tokio::time::timeout(within, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(io_failed(what, &e)),
        Err(_) => Err(failed(
            Failure::Timeout,
            format!("{what}: nothing in {within:?}"),
        )),
    }
}

/// Connect from `src` within the step bound, classified as [`Failure::Connect`].
async fn connect(src: IpAddr, dst: SocketAddr) -> Result<TcpStream, Failed> {
    let within = patient(STEP);
    match tokio::time::timeout(within, connect_from(src, dst)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(failed(Failure::Connect, format!("connect from {src}: {e}"))),
        Err(_) => Err(failed(
            Failure::Connect,
            format!("connect from {src}: not established in {within:?}"),
        )),
    }
}

/// Send `data` and read its echo (concurrently, so no buffer has to hold a
/// whole message); compare byte for byte.
pub async fn exchange(stream: &mut TcpStream, data: &[u8], half_close: bool) -> Result<(), Failed> {
    let (mut rd, mut wr) = stream.split();
    let mut echo = vec![0u8; data.len()];
    let write = async {
        wr.write_all(data).await?;
        if half_close {
            wr.shutdown().await?;
        }
        Ok::<_, io::Error>(())
    };
    let read = async { rd.read_exact(&mut echo).await.map(drop) };
    bounded(
        &format!("echo of {} bytes", data.len()),
        patient(STEP),
        async { tokio::try_join!(write, read).map(drop) },
    )
    .await?;
    if let Some(at) = data.iter().zip(&echo).position(|(a, b)| a != b) {
        return Err(failed(
            Failure::WrongBytes,
            format!("echo of {} bytes differs at byte {at}", data.len()),
        ));
    }
    Ok(())
}

/// After the last echo: EOF, and not one byte more.
pub async fn expect_eof(stream: &mut TcpStream) -> Result<(), Failed> {
    let mut rest = Vec::new();
    bounded("EOF after the last echo", patient(STEP), async {
        stream.read_to_end(&mut rest).await
    })
    .await?;
    if rest.is_empty() {
        Ok(())
    } else {
        Err(failed(
            Failure::WrongBytes,
            format!("{} bytes after the last echo", rest.len()),
        ))
    }
}

// ---------------------------------------------------------------------------
// Long-lived echo streams
// ---------------------------------------------------------------------------

/// What [`Streams::start`] runs.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// Streams that run until [`Streams::finish`].
    pub long: usize,
    /// Slots of short-lived streams: each stream lives a random time in
    /// `life`, then ends (half-close, echo, EOF) and a new one takes its slot,
    /// until [`Streams::finish`].
    pub rotating: usize,
    pub life: (Duration, Duration),
    /// Pause between two messages of a stream (pacing, random in the range).
    pub pause: (Duration, Duration),
    /// Message sizes: 1 ..= `max_message` bytes.
    pub max_message: usize,
    pub seed: u64,
    /// Client IPs are `client_ip(first_ip + k)`, one per stream ever opened.
    pub first_ip: u32,
}

impl StreamSpec {
    /// `long` streams until finished, `rotating` slots of 0.4–1.2 s streams,
    /// messages every 50–250 ms of 1 B to 64 KiB (log-uniform).
    pub fn new(long: usize, rotating: usize, seed: u64) -> StreamSpec {
        StreamSpec {
            long,
            rotating,
            life: (Duration::from_millis(400), Duration::from_millis(1200)),
            pause: (Duration::from_millis(50), Duration::from_millis(250)),
            max_message: MAX_MESSAGE,
            seed,
            first_ip: 1000,
        }
    }
}

/// One stream, as it ended.
#[derive(Debug, Clone)]
pub struct StreamOutcome {
    pub id: u64,
    pub src: IpAddr,
    /// The node that greeted (empty if it never did).
    pub node: String,
    pub long: bool,
    pub messages: u64,
    pub bytes: u64,
    pub lived: Duration,
    pub error: Option<Failed>,
}

/// Counters shared by the running streams (readable while they run).
#[derive(Debug, Default)]
pub struct StreamCounters {
    /// Streams that got their greeting.
    pub opened: AtomicU64,
    /// Streams that ended cleanly (last echo and EOF seen).
    pub closed: AtomicU64,
    pub failed: AtomicU64,
    /// Messages echoed correctly, over all streams.
    pub messages: AtomicU64,
}

struct StreamRun {
    id: u64,
    src: IpAddr,
    dst: SocketAddr,
    long: bool,
    rng: StdRng,
    spec: Arc<StreamSpec>,
    counters: Arc<StreamCounters>,
}

impl StreamRun {
    /// A message of 1 ..= `max_message` bytes, the size log-uniform (as many
    /// of 1–10 B as of 10–100 B, ...: every size class, few bytes in all).
    fn message(&mut self) -> Vec<u8> {
        let max = self.spec.max_message.max(1) as f64;
        let len = (max.ln() * self.rng.gen::<f64>()).exp().round() as usize;
        pattern(len.clamp(1, self.spec.max_message.max(1)), self.rng.gen())
    }

    /// Run until `until` (or `end`, for a short-lived stream), then end cleanly.
    async fn run(mut self, until: CancellationToken, end: Option<Instant>) -> StreamOutcome {
        let started = Instant::now();
        let mut out = StreamOutcome {
            id: self.id,
            src: self.src,
            node: String::new(),
            long: self.long,
            messages: 0,
            bytes: 0,
            lived: Duration::ZERO,
            error: None,
        };
        let r = self.body(&mut out, &until, end).await;
        out.lived = started.elapsed();
        match r {
            Ok(()) => self.counters.closed.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                out.error = Some(e);
                self.counters.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        out
    }

    async fn body(
        &mut self,
        out: &mut StreamOutcome,
        until: &CancellationToken,
        end: Option<Instant>,
    ) -> Result<(), Failed> {
        let mut s = connect(self.src, self.dst).await?;
        out.node = read_line_within(&mut s, patient(STEP))
            .await
            .map_err(|e| io_failed("greeting", &e))?;
        self.counters.opened.fetch_add(1, Ordering::Relaxed);
        let stop = async {
            match end {
                Some(t) => {
                    tokio::select! {
                        _ = until.cancelled() => {}
                        _ = tokio::time::sleep_until(t.into()) => {}
                    }
                }
                None => until.cancelled().await,
            }
        };
        tokio::pin!(stop);
        loop {
            let data = self.message();
            exchange(&mut s, &data, false).await?;
            out.messages += 1;
            out.bytes += data.len() as u64;
            self.counters.messages.fetch_add(1, Ordering::Relaxed);
            let pause = self.rng.gen_range(self.spec.pause.0..=self.spec.pause.1);
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        // The end: one more message with the write side closed behind it, its
        // echo in full, then EOF (the half-close went through both ways).
        let data = self.message();
        exchange(&mut s, &data, true).await?;
        out.messages += 1;
        out.bytes += data.len() as u64;
        self.counters.messages.fetch_add(1, Ordering::Relaxed);
        expect_eof(&mut s).await
    }
}

/// Running echo streams (see the module docs).
pub struct Streams {
    finish: CancellationToken,
    tasks: JoinSet<Vec<StreamOutcome>>,
    pub counters: Arc<StreamCounters>,
    spec: Arc<StreamSpec>,
}

impl Streams {
    pub fn start(dst: SocketAddr, spec: StreamSpec) -> Streams {
        let spec = Arc::new(spec);
        let counters = Arc::new(StreamCounters::default());
        let finish = CancellationToken::new();
        let next_id = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        let run = {
            let (spec, counters, next_id) = (spec.clone(), counters.clone(), next_id.clone());
            move |long: bool| {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                StreamRun {
                    id,
                    src: client_ip(spec.first_ip + id as u32),
                    dst,
                    long,
                    rng: StdRng::seed_from_u64(spec.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                    spec: spec.clone(),
                    counters: counters.clone(),
                }
            }
        };
        for _ in 0..spec.long {
            let (r, until) = (run(true), finish.clone());
            tasks.spawn(async move { vec![r.run(until, None).await] });
        }
        for slot in 0..spec.rotating {
            let (run, until, spec) = (run.clone(), finish.clone(), spec.clone());
            let mut rng = StdRng::seed_from_u64(spec.seed ^ 0x5107 ^ slot as u64);
            tasks.spawn(async move {
                let mut v = Vec::new();
                while !until.is_cancelled() {
                    let life = rng.gen_range(spec.life.0..=spec.life.1);
                    let out = run(false)
                        .run(until.clone(), Some(Instant::now() + life))
                        .await;
                    let stop = out.error.is_some();
                    v.push(out);
                    if stop {
                        break; // one failure per slot is enough to report
                    }
                }
                v
            });
        }
        Streams {
            finish,
            tasks,
            counters,
            spec,
        }
    }

    /// Wait (10 s times the patience) until at least `n` streams have opened.
    pub async fn wait_opened(&self, n: u64) {
        let c = self.counters.clone();
        let r = super::poll(Duration::from_secs(10), Duration::from_millis(20), || {
            let c = c.clone();
            async move { (c.opened.load(Ordering::Relaxed) >= n).then_some(()) }
        })
        .await;
        if r.is_none() {
            let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
            panic!(
                "not {n} streams opened within {:?}: {} opened, {} closed, {} failed, {} messages",
                patient(Duration::from_secs(10)),
                l(&c.opened),
                l(&c.closed),
                l(&c.failed),
                l(&c.messages)
            );
        }
    }

    pub fn opened(&self) -> u64 {
        self.counters.opened.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }

    /// Tell every stream to end (last message, half-close, echo, EOF) and
    /// collect how each one ended.
    pub async fn finish(mut self) -> StreamsReport {
        self.finish.cancel();
        let mut outcomes = Vec::new();
        while let Some(r) = self.tasks.join_next().await {
            outcomes.extend(r.expect("stream task"));
        }
        outcomes.sort_by_key(|o| o.id);
        StreamsReport { outcomes }
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.finish.cancel();
    }
}

/// How every stream ended.
#[derive(Debug)]
pub struct StreamsReport {
    pub outcomes: Vec<StreamOutcome>,
}

impl StreamsReport {
    pub fn failures(&self) -> Vec<&StreamOutcome> {
        self.outcomes.iter().filter(|o| o.error.is_some()).collect()
    }

    pub fn messages(&self) -> u64 {
        self.outcomes.iter().map(|o| o.messages).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.outcomes.iter().map(|o| o.bytes).sum()
    }

    /// Panic (listing the first failures) unless every stream ended cleanly.
    pub fn assert_clean(&self) {
        let f = self.failures();
        if f.is_empty() {
            return;
        }
        let list: Vec<String> = f
            .iter()
            .take(20)
            .map(|o| {
                format!(
                    "stream {} from {} (node {:?}, {}, {} messages, {} bytes, after {:?}): {}",
                    o.id,
                    o.src,
                    o.node,
                    if o.long { "long" } else { "short-lived" },
                    o.messages,
                    o.bytes,
                    o.lived,
                    o.error.as_ref().map(|e| e.to_string()).unwrap_or_default()
                )
            })
            .collect();
        panic!(
            "{} of {} streams failed:\n{}",
            f.len(),
            self.outcomes.len(),
            list.join("\n")
        );
    }
}

impl fmt::Display for StreamsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let long = self.outcomes.iter().filter(|o| o.long).count();
        write!(
            f,
            "{} streams ({} long, {} short-lived), {} messages, {:.1} MiB echoed, {} failed",
            self.outcomes.len(),
            long,
            self.outcomes.len() - long,
            self.messages(),
            self.bytes() as f64 / (1024.0 * 1024.0),
            self.failures().len()
        )
    }
}

// ---------------------------------------------------------------------------
// The short-connection loop
// ---------------------------------------------------------------------------

/// What [`ShortLoop::start`] runs.
#[derive(Debug, Clone)]
pub struct ShortSpec {
    /// Connections per second over all workers.
    pub rate: u32,
    /// Connections at once (each worker runs one at a time).
    pub workers: u32,
    /// At most this many connections in all...
    pub max: u64,
    /// ...and for at most this long (not stretched by the patience: a bound).
    pub max_time: Duration,
    /// Client IPs `client_ip(first_ip + k % ips)`.
    pub first_ip: u32,
    pub ips: u32,
}

impl ShortSpec {
    /// `rate` connections per second, bounded to 60 s and `rate * 60` connections.
    pub fn new(rate: u32) -> ShortSpec {
        ShortSpec {
            rate,
            workers: 16,
            max: u64::from(rate) * 60,
            max_time: Duration::from_secs(60),
            first_ip: 100_000,
            ips: 2000,
        }
    }
}

/// The loop's counters (readable while it runs).
#[derive(Debug, Default)]
pub struct ShortCounters {
    pub attempted: AtomicU64,
    pub ok: AtomicU64,
    pub failed_connects: AtomicU64,
    pub resets: AtomicU64,
    pub wrong_bytes: AtomicU64,
    pub early_eof: AtomicU64,
    pub timeouts: AtomicU64,
    pub other: AtomicU64,
}

impl ShortCounters {
    fn count(&self, f: Failure) {
        let c = match f {
            Failure::Connect => &self.failed_connects,
            Failure::Reset => &self.resets,
            Failure::WrongBytes => &self.wrong_bytes,
            Failure::EarlyEof => &self.early_eof,
            Failure::Timeout => &self.timeouts,
            Failure::Other => &self.other,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> ShortStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ShortStats {
            attempted: l(&self.attempted),
            ok: l(&self.ok),
            failed_connects: l(&self.failed_connects),
            resets: l(&self.resets),
            wrong_bytes: l(&self.wrong_bytes),
            early_eof: l(&self.early_eof),
            timeouts: l(&self.timeouts),
            other: l(&self.other),
            elapsed: Duration::ZERO,
            first_failures: Vec::new(),
        }
    }
}

/// What the loop did.
#[derive(Debug, Clone)]
pub struct ShortStats {
    pub attempted: u64,
    pub ok: u64,
    pub failed_connects: u64,
    pub resets: u64,
    pub wrong_bytes: u64,
    pub early_eof: u64,
    pub timeouts: u64,
    pub other: u64,
    pub elapsed: Duration,
    /// The first few failures, in full.
    pub first_failures: Vec<String>,
}

impl ShortStats {
    pub fn failures(&self) -> u64 {
        self.failed_connects
            + self.resets
            + self.wrong_bytes
            + self.early_eof
            + self.timeouts
            + self.other
    }

    /// Panic unless every connection succeeded (and at least `min_ok` ran).
    pub fn assert_clean(&self, min_ok: u64) {
        assert!(
            self.failures() == 0 && self.ok == self.attempted,
            "short connections failed: {self}\nfirst failures:\n{}",
            self.first_failures.join("\n")
        );
        assert!(self.ok >= min_ok, "too few short connections: {self}");
    }
}

impl fmt::Display for ShortStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} short connections in {:.1?} ({:.0}/s): {} ok, {} failed connects, {} resets, \
             {} wrong bytes, {} early EOF, {} timeouts, {} other",
            self.attempted,
            self.elapsed,
            self.attempted as f64 / self.elapsed.as_secs_f64().max(1e-3),
            self.ok,
            self.failed_connects,
            self.resets,
            self.wrong_bytes,
            self.early_eof,
            self.timeouts,
            self.other
        )
    }
}

/// One short connection: connect, greeting, a line and its echo, half-close, EOF.
async fn short_connection(src: IpAddr, dst: SocketAddr, n: u64) -> Result<(), Failed> {
    let mut s = connect(src, dst).await?;
    let within = patient(STEP);
    let greeting = read_line_within(&mut s, within)
        .await
        .map_err(|e| io_failed("greeting", &e))?;
    if !greeting.starts_with("node-") {
        return Err(failed(
            Failure::WrongBytes,
            format!("greeting {greeting:?}"),
        ));
    }
    let line = format!("short {n} from {src}\n");
    exchange(&mut s, line.as_bytes(), true)
        .await
        .map_err(|e| Failed {
            detail: format!("{} (via {greeting})", e.detail),
            ..e
        })?;
    expect_eof(&mut s).await
}

/// A running short-connection loop.
pub struct ShortLoop {
    stop: CancellationToken,
    pub counters: Arc<ShortCounters>,
    task: tokio::task::JoinHandle<ShortStats>,
}

impl ShortLoop {
    pub fn start(dst: SocketAddr, spec: ShortSpec) -> ShortLoop {
        let stop = CancellationToken::new();
        let counters = Arc::new(ShortCounters::default());
        let first: Arc<Mutex<Vec<String>>> = Arc::default();
        let task = tokio::spawn({
            let (stop, counters) = (stop.clone(), counters.clone());
            async move {
                let started = Instant::now();
                let deadline = started + spec.max_time;
                let next = Arc::new(AtomicU64::new(0));
                let every = Duration::from_secs_f64(
                    f64::from(spec.workers.max(1)) / f64::from(spec.rate.max(1)),
                );
                let mut set = JoinSet::new();
                for w in 0..spec.workers.max(1) {
                    let (stop, counters, first, next, spec) = (
                        stop.clone(),
                        counters.clone(),
                        first.clone(),
                        next.clone(),
                        spec.clone(),
                    );
                    set.spawn(async move {
                        // Workers start spread over one period.
                        let offset = every.mul_f64(f64::from(w) / f64::from(spec.workers.max(1)));
                        let mut tick =
                            tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            tokio::select! {
                                _ = stop.cancelled() => break,
                                _ = tick.tick() => {}
                            }
                            if Instant::now() >= deadline {
                                break;
                            }
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            if n >= spec.max {
                                break;
                            }
                            counters.attempted.fetch_add(1, Ordering::Relaxed);
                            let src =
                                client_ip(spec.first_ip + (n % u64::from(spec.ips.max(1))) as u32);
                            match short_connection(src, dst, n).await {
                                Ok(()) => {
                                    counters.ok.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    counters.count(e.kind);
                                    let mut f = first.lock().expect("failure list");
                                    if f.len() < 20 {
                                        f.push(format!("#{n} from {src}: {e}"));
                                    }
                                }
                            }
                        }
                    });
                }
                while let Some(r) = set.join_next().await {
                    r.expect("short-connection worker");
                }
                let mut stats = counters.stats();
                stats.elapsed = started.elapsed();
                stats.first_failures = first.lock().expect("failure list").clone();
                stats
            }
        });
        ShortLoop {
            stop,
            counters,
            task,
        }
    }

    pub fn ok(&self) -> u64 {
        self.counters.ok()
    }

    /// Wait (10 s times the patience) until `n` more connections succeeded
    /// than `since` (a previous [`ShortLoop::ok`]): the loop makes progress.
    pub async fn wait_progress(&self, since: u64, n: u64) {
        let c = self.counters.clone();
        let r = super::poll(Duration::from_secs(10), Duration::from_millis(20), || {
            let c = c.clone();
            async move { (c.ok() >= since + n).then_some(()) }
        })
        .await;
        if r.is_none() {
            panic!(
                "not {n} more short connections than {since} within {:?}: {}",
                patient(Duration::from_secs(10)),
                self.counters.stats()
            );
        }
    }

    /// Stop starting connections, let the running ones end, return the counts.
    pub async fn stop(self) -> ShortStats {
        self.stop.cancel();
        self.task.await.expect("short-connection loop")
    }
}

// ---------------------------------------------------------------------------
// Processes, from /proc
// ---------------------------------------------------------------------------

/// Open descriptors of `pid` (entries of /proc/PID/fd).
pub fn fd_count(pid: u32) -> io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// The descriptors of a process, with the splice pipe pool apart: ringlb keeps
/// emptied pipes (both ends) for reuse, at most
/// [`ringlb::proxy::splice::MAX_PIPES`], so "back to the baseline" means the
/// rest are back and the pool is within its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fds {
    pub total: usize,
    /// Descriptors of pipes with both ends in the process (beyond fd 2).
    pub pipe_pool: usize,
}

impl Fds {
    /// Everything but the pipe pool.
    pub fn rest(&self) -> usize {
        self.total - self.pipe_pool
    }
}

impl fmt::Display for Fds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} descriptors ({} in pooled pipes)",
            self.total, self.pipe_pool
        )
    }
}

/// [`Fds`] of `pid`.
pub fn fds(pid: u32) -> io::Result<Fds> {
    let mut pipes: std::collections::HashMap<String, usize> = Default::default();
    let mut total = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let e = e?;
        total += 1;
        let fd: u32 = e.file_name().to_string_lossy().parse().unwrap_or(0);
        if let Ok(t) = std::fs::read_link(e.path()) {
            let t = t.display().to_string();
            if fd > 2 && t.starts_with("pipe:") {
                *pipes.entry(t).or_default() += 1;
            }
        }
    }
    let pipe_pool = pipes.values().filter(|&&n| n == 2).count() * 2;
    Ok(Fds { total, pipe_pool })
}

/// What each descriptor of `pid` is (for a failure message).
pub fn fd_listing(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut v: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_else(|e| format!("({e})"));
            format!("{} -> {target}", e.file_name().to_string_lossy())
        })
        .collect();
    v.sort();
    v
}

/// `(state, ppid)` from /proc/PID/stat; `None` when there is no such process.
pub fn stat(pid: u32) -> Option<(char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may hold spaces and parentheses.
    let rest = &s[s.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` has exited: no process, or a zombie (exited, not yet reaped).
pub fn gone(pid: u32) -> bool {
    !matches!(stat(pid), Some((s, _)) if s != 'Z' && s != 'X')
}

/// Every process whose parent is `pid`, zombies included (not reaped yet).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut v: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| matches!(stat(p), Some((_, pp)) if pp == pid))
        .collect();
    v.sort_unstable();
    v
}

/// The command line of `pid`, NUL-separated words joined by spaces.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Whether `pid` catches every one of `signals` (`SigCgt` in /proc/PID/status).
pub fn catches(pid: u32, signals: &[nix::sys::signal::Signal]) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let Some(mask) = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
    else {
        return false;
    };
    signals.iter().all(|&s| mask & (1 << (s as i32 - 1)) != 0)
}

/// Make this test process the reaper of its orphaned descendants: a process
/// started by a ringlb child (an upgrade's new process) becomes this process's
/// child when its parent exits, so the test can wait for its exit status.
pub fn become_subreaper() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    });
}

/// Wait (polling, `within` times the patience) for `pid` to exit; its exit
/// status if this process could reap it (it was a child, e.g. adopted through
/// [`become_subreaper`]), `Ok(None)` if it is gone but someone else reaped it
/// (or will), `Err` if it is still running then.
pub async fn wait_gone(
    pid: u32,
    within: Duration,
) -> Result<Option<nix::sys::wait::WaitStatus>, String> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let p = nix::unistd::Pid::from_raw(pid as i32);
    super::poll(within, Duration::from_millis(10), || {
        let r = match waitpid(p, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => None,
            Ok(st) => Some(Ok(Some(st))),
            // Not our child: it is someone else's to reap; gone is what counts.
            Err(_) => gone(pid).then_some(Ok(None)),
        };
        async move { r }
    })
    .await
    .unwrap_or_else(|| {
        Err(format!(
            "pid {pid} still running after {:?}: {:?} {}",
            patient(within),
            stat(pid),
            cmdline(pid)
        ))
    })
}

/// Processes the test did not spawn itself (upgrade successors), killed when
/// dropped (also on a failed assertion) if they still run a command line
/// containing `marker` (the test's config path: never another process that
/// got the pid).
pub struct Reap {
    pub marker: String,
    pub pids: Vec<u32>,
}

impl Reap {
    pub fn new(marker: &std::path::Path) -> Reap {
        Reap {
            marker: marker.display().to_string(),
            pids: Vec::new(),
        }
    }

    pub fn add(&mut self, pid: u32) {
        if !self.pids.contains(&pid) {
            self.pids.push(pid);
        }
    }
}

impl Drop for Reap {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        for &pid in &self.pids {
            let p = nix::unistd::Pid::from_raw(pid as i32);
            if !gone(pid) && cmdline(pid).contains(&self.marker) {
                let _ = kill(p, Signal::SIGKILL);
            }
            // Reap it if it is ours (adopted); harmless otherwise.
            let _ = super::poll_blocking(Duration::from_secs(2), Duration::from_millis(10), || {
                match nix::sys::wait::waitpid(p, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                    Ok(nix::sys::wait::WaitStatus::StillAlive) => None,
                    _ => Some(()),
                }
            });
        }
    }
}

/// Read the pid in a pid file (`None`: missing or not a number).
pub fn read_pid(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Run a command to its end with a bound (`within` times the patience); its
/// output. Panics (naming it) if it does not end in time (it is killed).
pub fn run_bounded(mut cmd: std::process::Command, within: Duration) -> std::process::Output {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(patient(within)) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("{what} did not finish within {:?}", patient(within));
        }
    }
}
