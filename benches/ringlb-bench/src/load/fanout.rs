//! `load fanout`: N held connections from distinct source IPs, each reading the
//! messages a `serve push` backend writes (directly or through ringlb). Delivery
//! rate and latency (arrival minus the server's CLOCK_MONOTONIC stamp), lost
//! connections, the spread over the nodes, and with `--pid` the proxy's CPU per
//! 1,000 messages and RSS per connection. With `--reconnect` a lost (or
//! malformed) connection is opened again at once, so N stay held through node
//! failures and upgrades; reconnects are counted apart from losses (`benches/soak.sh`).

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
use super::pushconn::{Got, PushConn, ReadError};
use super::Outcome;
use crate::cli::FanoutArgs;
use crate::net::{Cidr, Errors};
use crate::pushmsg;
use crate::report::{self, Progress, Report, Table};

/// Longest time spent opening the connections.
pub const ESTABLISH_CAP: Duration = Duration::from_secs(120);
/// Longest wait for the connection tasks to end after the window.
const TEARDOWN: Duration = Duration::from_secs(5);
/// With `--reconnect`: pause after a failed reconnect before the next attempt.
const RECONNECT_RETRY: Duration = Duration::from_millis(100);

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
    /// With `--reconnect`: connections opened again after a loss, and failed
    /// attempts to (each retried after [`RECONNECT_RETRY`]).
    reconnects: AtomicU64,
    reconnect_failed: AtomicU64,
    /// Connections open now (opened or reopened, not lost since).
    holding: AtomicU64,
    /// Longest time from a loss to its reconnect, in µs.
    reconnect_max_us: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    nodes: Mutex<BTreeMap<String, u64>>,
    errors: Errors,
}

impl Shared {
    fn count(&self, got: &Got, last_seq: &mut u32) {
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

/// How one held connection ended.
enum Ended {
    Stopped,
    Lost,
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
    let (conn, name, first) = match opened {
        Ok(x) => x,
        Err((what, e)) => {
            shared.open_failed.fetch_add(1, Ordering::Relaxed);
            shared.errors.io(what, &e);
            return;
        }
    };
    *lock(&shared.nodes).entry(name.clone()).or_insert(0) += 1;
    shared.opened.fetch_add(1, Ordering::Relaxed);
    shared.holding.fetch_add(1, Ordering::Relaxed);
    let mut held = (conn, name, first);
    loop {
        let (conn, name, first) = held;
        if let Ended::Stopped = hold(&shared, conn, &name, first).await {
            return;
        }
        shared.holding.fetch_sub(1, Ordering::Relaxed);
        if !a.reconnect {
            return;
        }
        let lost_at = Instant::now();
        held = loop {
            let opened = tokio::select! {
                _ = shared.stop.cancelled() => return,
                r = async {
                    let _permit = sem.acquire().await;
                    PushConn::open(src, c.target, c.timeout, a.size).await
                } => r,
            };
            match opened {
                Ok(x) => break x,
                Err((what, e)) => {
                    shared.reconnect_failed.fetch_add(1, Ordering::Relaxed);
                    shared.errors.io(&format!("reconnect: {what}"), &e);
                    tokio::select! {
                        _ = shared.stop.cancelled() => return,
                        _ = tokio::time::sleep(RECONNECT_RETRY) => {}
                    }
                }
            }
        };
        let took = lost_at.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
        shared.reconnect_max_us.fetch_max(took, Ordering::Relaxed);
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        shared.holding.fetch_add(1, Ordering::Relaxed);
    }
}

/// Read one connection's messages until the stop or until it is lost (an I/O
/// error or end of stream, or a malformed message: both counted).
async fn hold(shared: &Shared, mut conn: PushConn, name: &str, first: Got) -> Ended {
    let mut last_seq = first.seq;
    shared.count(&first, &mut last_seq);
    loop {
        let r = tokio::select! {
            _ = shared.stop.cancelled() => return Ended::Stopped,
            r = conn.next_from(name) => r,
        };
        match r {
            Ok(got) => shared.count(&got, &mut last_seq),
            Err(ReadError::Io(e)) => {
                shared.lost.fetch_add(1, Ordering::Relaxed);
                shared.errors.io("lost", &e);
                return Ended::Lost;
            }
            Err(ReadError::Message(e)) => {
                // Framing is gone: count it and drop the connection.
                shared.malformed.fetch_add(1, Ordering::Relaxed);
                shared.errors.record("message: malformed", e);
                return Ended::Lost;
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
        reconnects: AtomicU64::new(0),
        reconnect_failed: AtomicU64::new(0),
        holding: AtomicU64::new(0),
        reconnect_max_us: AtomicU64::new(0),
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
                "{}/{} connections open, {} messages/s, {} lost, {} reconnected, {} errors",
                report::int(s.holding.load(Ordering::Relaxed)),
                report::int(u64::from(n)),
                report::rate((got - last) as f64 / dt.max(1e-9)),
                report::int(s.lost.load(Ordering::Relaxed)),
                report::int(s.reconnects.load(Ordering::Relaxed)),
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
    let open_at_end = shared.holding.load(Ordering::Relaxed);
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
    if a.reconnect {
        let reconnects = shared.reconnects.load(Ordering::Relaxed);
        let failed = shared.reconnect_failed.load(Ordering::Relaxed);
        let max_ms = shared.reconnect_max_us.load(Ordering::Relaxed) as f64 / 1000.0;
        r.add(
            "reconnects",
            format!(
                "{} ({} failed attempts, longest loss to reconnect {max_ms:.1} ms)",
                report::int(reconnects),
                report::int(failed)
            ),
            "reconnects",
            reconnects,
        );
        r.json("reconnect_failed", failed);
        r.json("reconnect_max_ms", report::round(max_ms, 1));
    }
    r.add(
        "open at end",
        report::int(open_at_end),
        "open_at_end",
        open_at_end,
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command, LoadArgs, Workload};
    use crate::serve::push::tests::server;
    use clap::Parser;
    use std::net::SocketAddr;

    fn args(target: SocketAddr, n: u32, duration: &str, reconnect: bool) -> FanoutArgs {
        let n = n.to_string();
        let target = target.to_string();
        let mut argv = vec![
            "ringlb-bench",
            "load",
            "fanout",
            "--target",
            &target,
            "--connections",
            &n,
            "--duration",
            duration,
            "--warmup",
            "0s",
            "--timeout",
            "2s",
            "-q",
        ];
        if reconnect {
            argv.push("--reconnect");
        }
        let Command::Load(LoadArgs {
            workload: Workload::Fanout(f),
        }) = Cli::try_parse_from(argv).expect("parses").command
        else {
            panic!("not fanout");
        };
        f
    }

    fn figures(o: &Outcome) -> Value {
        serde_json::from_str(&o.report.render_json()).expect("json")
    }

    /// Wait (bounded) until the server holds `n` connections.
    async fn holding(s: &crate::serve::push::PushServer, n: u64) {
        let give_up = Instant::now() + Duration::from_secs(20);
        while s.stats()["open"] != n && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(s.stats()["open"], n, "connections held");
    }

    #[tokio::test]
    async fn reconnect_reopens_every_lost_connection() {
        let s = server("r", 64, 50, false);
        let run = tokio::spawn(run(args(s.addr, 6, "4s", true)));
        holding(&s, 6).await;
        // Killed: all 6 are lost and their reconnects are refused ...
        assert_eq!(s.kill().await, Ok(6));
        tokio::time::sleep(Duration::from_millis(300)).await;
        // ... until it listens again: all 6 come back.
        s.revive().expect("revive");
        holding(&s, 6).await;
        let o = run.await.expect("joined").expect("ran");
        let f = figures(&o);
        assert_eq!(f["lost"], 6, "{f}");
        assert_eq!(f["reconnects"], 6, "{f}");
        assert!(f["reconnect_failed"].as_u64().expect("count") >= 6, "{f}");
        assert_eq!(f["open_at_end"], 6, "{f}");
        assert_eq!(f["malformed"], 0, "{f}");
        assert!(f["reconnect_max_ms"].as_f64().expect("ms") >= 250.0, "{f}");
    }

    #[tokio::test]
    async fn without_reconnect_a_lost_connection_stays_lost() {
        let s = server("l", 64, 50, false);
        let run = tokio::spawn(run(args(s.addr, 3, "2s", false)));
        holding(&s, 3).await;
        assert_eq!(s.kill().await, Ok(3));
        s.revive().expect("revive");
        let o = run.await.expect("joined").expect("ran");
        let f = figures(&o);
        assert_eq!(f["lost"], 3, "{f}");
        assert_eq!(f["open_at_end"], 0, "{f}");
        assert!(f.get("reconnects").is_none(), "{f}");
        assert_eq!(s.stats()["open"], 0);
    }
}
