//! `load fanout`: N held connections from distinct source IPs, each reading the
//! messages a `serve push` backend writes (directly or through ringlb). Delivery
//! rate and latency (arrival minus the server's CLOCK_MONOTONIC stamp), lost
//! connections, the spread over the nodes, and with `--pid` the proxy's CPU per
//! 1,000 messages and RSS per connection.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::procstat::{self, Cpu, Sample};
use super::pushconn::{PushConn, ReadError};
use super::Outcome;
use crate::cli::FanoutArgs;
use crate::net::{Cidr, Errors};
use crate::pushmsg;
use crate::report::{self, Progress, Report, Table};

/// Longest time spent opening the connections.
pub const ESTABLISH_CAP: Duration = Duration::from_secs(120);
/// Longest wait for the connection tasks to end after the window.
const TEARDOWN: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

struct Shared {
    /// The measured window in CLOCK_MONOTONIC ns; u64::MAX until known.
    window_start: AtomicU64,
    window_end: AtomicU64,
    stop: CancellationToken,
    opened: AtomicU64,
    open_failed: AtomicU64,
    /// All messages received (progress), and those in the window.
    received: AtomicU64,
    in_window: AtomicU64,
    /// Sequence numbers missing in the window (ticks the server skipped).
    gaps: AtomicU64,
    malformed: AtomicU64,
    lost: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    nodes: Mutex<BTreeMap<String, u64>>,
    errors: Errors,
}

impl Shared {
    fn count(&self, got: &super::pushconn::Got, last_seq: &mut u32) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let ws = self.window_start.load(Ordering::Relaxed);
        let we = self.window_end.load(Ordering::Relaxed);
        if got.recv_ns >= ws && got.recv_ns < we {
            self.in_window.fetch_add(1, Ordering::Relaxed);
            let missing = got.seq.saturating_sub(*last_seq).saturating_sub(1);
            if missing > 0 {
                self.gaps.fetch_add(u64::from(missing), Ordering::Relaxed);
            }
            report::record_us(&mut lock(&self.latency), got.latency());
        }
        *last_seq = got.seq;
    }
}

async fn client(
    shared: Arc<Shared>,
    sem: Arc<Semaphore>,
    src: std::net::Ipv4Addr,
    a: Arc<FanoutArgs>,
) {
    let c = &a.common;
    let opened = {
        let _permit = sem.acquire().await;
        PushConn::open(src, c.target, c.timeout, a.size).await
    };
    let (mut conn, name, first) = match opened {
        Ok(x) => x,
        Err((what, e)) => {
            shared.open_failed.fetch_add(1, Ordering::Relaxed);
            shared.errors.io(what, &e);
            return;
        }
    };
    *lock(&shared.nodes).entry(name.clone()).or_insert(0) += 1;
    shared.opened.fetch_add(1, Ordering::Relaxed);
    let mut last_seq = first.seq;
    shared.count(&first, &mut last_seq);
    loop {
        let r = tokio::select! {
            _ = shared.stop.cancelled() => return,
            r = conn.next_from(&name) => r,
        };
        match r {
            Ok(got) => shared.count(&got, &mut last_seq),
            Err(ReadError::Io(e)) => {
                shared.lost.fetch_add(1, Ordering::Relaxed);
                shared.errors.io("lost", &e);
                return;
            }
            Err(ReadError::Message(e)) => {
                // Framing is gone: count it and drop the connection.
                shared.malformed.fetch_add(1, Ordering::Relaxed);
                shared.errors.record("message: malformed", e);
                return;
            }
        }
    }
}

fn ms(ticks: u64, hz: u64) -> f64 {
    ticks as f64 * 1000.0 / hz as f64
}

pub async fn run(a: FanoutArgs) -> anyhow::Result<Outcome> {
    let a = Arc::new(a);
    let c = &a.common;
    let n = a.connections;
    let hz = procstat::ticks_per_second();
    let me = std::process::id();
    let before = if a.pids.is_empty() {
        None
    } else {
        Some(procstat::sample(&a.pids)?)
    };
    let shared = Arc::new(Shared {
        window_start: AtomicU64::new(u64::MAX),
        window_end: AtomicU64::new(u64::MAX),
        stop: CancellationToken::new(),
        opened: AtomicU64::new(0),
        open_failed: AtomicU64::new(0),
        received: AtomicU64::new(0),
        in_window: AtomicU64::new(0),
        gaps: AtomicU64::new(0),
        malformed: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        latency: Mutex::new(report::histogram()),
        nodes: Mutex::new(BTreeMap::new()),
        errors: Errors::default(),
    });
    let start = Instant::now();
    let progress = {
        let s = shared.clone();
        let mut last = 0u64;
        Progress::start(c.quiet, start, start, move |dt| {
            let got = s.received.load(Ordering::Relaxed);
            let line = format!(
                "{}/{} connections, {} messages/s, {} lost, {} errors",
                report::int(s.opened.load(Ordering::Relaxed)),
                report::int(u64::from(n)),
                report::rate((got - last) as f64 / dt.max(1e-9)),
                report::int(s.lost.load(Ordering::Relaxed)),
                report::int(s.errors.total()),
            );
            last = got;
            line
        })
    };

    let sem = Arc::new(Semaphore::new(a.batch as usize));
    let cidr: Cidr = c.source_ips;
    let mut tasks = JoinSet::new();
    for i in 0..n {
        tasks.spawn(client(
            shared.clone(),
            sem.clone(),
            cidr.nth(u64::from(i)),
            a.clone(),
        ));
    }
    let give_up = start + ESTABLISH_CAP;
    while shared.opened.load(Ordering::Relaxed) + shared.open_failed.load(Ordering::Relaxed)
        < u64::from(n)
        && Instant::now() < give_up
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let establish_time = start.elapsed();
    let established = shared.opened.load(Ordering::Relaxed);

    // The window, on the servers' clock (CLOCK_MONOTONIC) and on ours.
    let ws = pushmsg::monotonic_ns() + a.timing.warmup.as_nanos() as u64;
    shared.window_start.store(ws, Ordering::Relaxed);
    shared
        .window_end
        .store(ws + a.timing.duration.as_nanos() as u64, Ordering::Relaxed);
    let measure_start = Instant::now() + a.timing.warmup;
    let end = measure_start + a.timing.duration;
    tokio::time::sleep_until(measure_start).await;
    let sample = || -> anyhow::Result<Option<Sample>> {
        if a.pids.is_empty() {
            Ok(None)
        } else {
            procstat::sample(&a.pids).map(Some)
        }
    };
    let cpu0 = sample()?;
    let me0 = procstat::read_stat(me)?.cpu;
    tokio::time::sleep_until(measure_start + a.timing.duration / 2).await;
    let active = sample()?;
    let bench_rss = super::idle::read_rss(me)?;
    tokio::time::sleep_until(end).await;
    let cpu1 = sample()?;
    let me1 = procstat::read_stat(me)?.cpu;
    // Messages arriving in the last instant of the window are still counted.
    tokio::time::sleep(Duration::from_millis(20)).await;
    shared.stop.cancel();
    drop(progress);
    let teardown = tokio::time::timeout(TEARDOWN, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if teardown.is_err() {
        tasks.abort_all();
    }

    let messages = shared.in_window.load(Ordering::Relaxed);
    let secs = a.timing.duration.as_secs_f64();
    let per_s = messages as f64 / secs;
    let lost = shared.lost.load(Ordering::Relaxed);
    let malformed = shared.malformed.load(Ordering::Relaxed);
    let mut r = Report::new(
        "fanout",
        &format!(
            "fanout ({} connections, {}-byte push messages)",
            report::int(u64::from(n)),
            a.size
        ),
        c.target,
    );
    r.add("connections", report::int(u64::from(n)), "connections", n);
    r.add(
        "established",
        format!(
            "{} in {}",
            report::int(established),
            report::secs(establish_time)
        ),
        "established",
        established,
    );
    r.json(
        "establish_s",
        report::round(establish_time.as_secs_f64(), 3),
    );
    r.timing(a.timing.duration, a.timing.warmup);
    r.add("messages", report::int(messages), "messages", messages);
    r.add(
        "messages/s",
        report::rate(per_s),
        "messages_per_s",
        report::round(per_s, 1),
    );
    r.latency_as(&lock(&shared.latency), "latency", "latency_");
    r.add("lost", report::int(lost), "lost", lost);
    r.add("malformed", report::int(malformed), "malformed", malformed);
    let gaps = shared.gaps.load(Ordering::Relaxed);
    r.add(
        "sequence gaps",
        format!(
            "{} (ticks the servers skipped or woke too late for)",
            report::int(gaps)
        ),
        "seq_gaps",
        gaps,
    );

    let nodes = lock(&shared.nodes).clone();
    let node_json: serde_json::Map<String, Value> = nodes
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(*v)))
        .collect();
    r.json("nodes", Value::Object(node_json));
    r.table(Table {
        title: "connections per node".into(),
        header: vec!["node".into(), "connections".into(), "share".into()],
        rows: nodes
            .iter()
            .map(|(k, v)| {
                vec![
                    k.clone(),
                    report::int(*v),
                    format!("{:.1}%", *v as f64 * 100.0 / established.max(1) as f64),
                ]
            })
            .collect(),
    });

    let per_k = |ticks: u64| {
        if messages == 0 {
            0.0
        } else {
            ms(ticks, hz) / (messages as f64 / 1000.0)
        }
    };
    if let (Some(before), Some(active), Some(c0), Some(c1)) = (&before, &active, &cpu0, &cpu1) {
        let used: Cpu = c1.cpu.since(c0.cpu);
        let pids: Vec<u32> = active.pids.iter().copied().collect();
        r.add(
            "measured pids",
            format!("{pids:?} (given and their children)"),
            "pids",
            json!(pids),
        );
        let total = per_k(used.user + used.system);
        r.add(
            "cpu per 1,000 msgs",
            format!(
                "{:.3} ms (user {:.3}, system {:.3})",
                total,
                per_k(used.user),
                per_k(used.system)
            ),
            "cpu_ms_per_1000_msgs",
            report::round(total, 4),
        );
        r.json(
            "cpu_user_ms_per_1000_msgs",
            report::round(per_k(used.user), 4),
        );
        r.json(
            "cpu_sys_ms_per_1000_msgs",
            report::round(per_k(used.system), 4),
        );
        let pct = ms(used.user + used.system, hz) / 10.0 / secs;
        r.add(
            "cpu",
            format!("{pct:.1}% of one core"),
            "cpu_pct",
            report::round(pct, 2),
        );
        r.add(
            "rss before",
            report::bytes(before.rss),
            "rss_before_bytes",
            before.rss,
        );
        r.add(
            "rss active",
            report::bytes(active.rss),
            "rss_active_bytes",
            active.rss,
        );
        let per = (active.rss as f64 - before.rss as f64) / f64::from(n);
        r.add(
            "rss per connection",
            format!("{per:.0} B ({:.2} KiB)", per / 1024.0),
            "rss_per_conn_bytes",
            report::round(per, 1),
        );
        r.json("rss_per_conn_kib", report::round(per / 1024.0, 3));
        r.note(format!(
            "cpu: utime+stime from /proc/PID/stat over the window ({hz} ticks/s); \
             rss: VmRSS summed, before opening and in the middle of the window, per = (active - before) / {n}; \
             meaningful on a freshly started process (allocators keep memory a previous run freed)"
        ));
    } else {
        r.note("no --pid: proxy CPU and memory not measured");
    }
    let mine = me1.since(me0);
    r.add(
        "bench cpu per 1,000 msgs",
        format!("{:.3} ms", per_k(mine.user + mine.system)),
        "bench_cpu_ms_per_1000_msgs",
        report::round(per_k(mine.user + mine.system), 4),
    );
    r.add(
        "bench rss",
        report::bytes(bench_rss),
        "bench_rss_bytes",
        bench_rss,
    );
    r.errors(&shared.errors);
    Ok(Outcome::measured(r, messages > 0))
}
