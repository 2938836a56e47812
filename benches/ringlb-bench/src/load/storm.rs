//! `load storm`: N clients hold push connections (through ringlb); one node is
//! killed through the push servers' control socket and all its clients
//! reconnect at once (or after a random delay up to `--jitter`), from the same
//! source IP. Measures how long until the last one has its first message again,
//! the reconnect latency and the failed attempts, and checks the invariants: the
//! other nodes' clients are neither disconnected nor moved, and no reconnected
//! client lands on the killed node.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::pushconn::{PushConn, ReadError};
use super::Outcome;
use crate::cli::StormArgs;
use crate::net::{bounded, error_kind, read_line, Errors};
use crate::pushmsg;
use crate::report::{self, Progress, Report, Table};

/// Longest time spent opening the connections.
pub const ESTABLISH_CAP: Duration = Duration::from_secs(120);
/// Attempts per affected client.
pub const MAX_ATTEMPTS: u32 = 20;
/// Attempts of all clients together.
const ATTEMPT_CAP: i64 = 200_000;
/// Longest wait for the connection tasks to end.
const TEARDOWN: Duration = Duration::from_secs(5);
/// Failed attempts listed in the report.
const MAX_FAILURE_ROWS: usize = 10;
/// Failed attempts listed in the JSON report (`failures`: start relative to
/// the kill, step and error kind), the first ones in the order they were seen.
const MAX_FAILURE_JSON: usize = 200;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// One failed reconnect attempt: its start relative to T0 (ns) and why.
#[derive(Debug, Clone)]
struct Failure {
    start_rel_ns: i64,
    what: &'static str,
    kind: &'static str,
}

struct Shared {
    target: SocketAddr,
    timeout: Duration,
    size: usize,
    jitter: Duration,
    stop: CancellationToken,
    opened: AtomicU64,
    open_failed: AtomicU64,
    before: Mutex<BTreeMap<String, u64>>,
    /// The node killed, set just before T0.
    killed: OnceLock<String>,
    /// CLOCK_MONOTONIC ns of T0; 0 before the kill.
    t0: AtomicU64,
    /// Affected clients back (first message received), or given up.
    back: AtomicU64,
    gave_up: AtomicU64,
    first_back_ns: AtomicU64,
    attempts_left: AtomicI64,
    failures: Mutex<Vec<Failure>>,
    reconnect: Mutex<Histogram<u64>>,
    survivors_disconnected: AtomicU64,
    moved: AtomicU64,
    landed_on_killed: AtomicU64,
    reconnected_lost: AtomicU64,
    malformed: AtomicU64,
    errors: Errors,
}

/// How one client ended.
#[derive(Debug, Default)]
struct End {
    before: Option<String>,
    after: Option<String>,
    affected: bool,
    disconnected: bool,
    back_rel_ns: Option<u64>,
}

enum Watch {
    Stopped,
    Lost(std::io::Error),
    Bad,
}

/// Read messages from `name` until stopped or the connection ends.
async fn watch(shared: &Shared, conn: &mut PushConn, name: &str) -> Watch {
    loop {
        let r = tokio::select! {
            _ = shared.stop.cancelled() => return Watch::Stopped,
            r = conn.next_from(name) => r,
        };
        match r {
            Ok(_) => {}
            Err(ReadError::Io(e)) => return Watch::Lost(e),
            Err(ReadError::Message(e)) => {
                if matches!(e, pushmsg::MessageError::Malformed(m) if m.contains("another server"))
                {
                    shared.moved.fetch_add(1, Ordering::Relaxed);
                    shared.errors.record("moved on an open connection", e);
                } else {
                    shared.malformed.fetch_add(1, Ordering::Relaxed);
                    shared.errors.record("message: malformed", e);
                }
                return Watch::Bad;
            }
        }
    }
}

async fn client(shared: Arc<Shared>, sem: Arc<Semaphore>, src: Ipv4Addr) -> End {
    let mut end = End::default();
    let opened = {
        let _permit = sem.acquire().await;
        PushConn::open(src, shared.target, shared.timeout, shared.size).await
    };
    let (mut conn, mut node) = match opened {
        Ok((conn, name, _)) => (conn, name),
        Err((what, e)) => {
            shared.open_failed.fetch_add(1, Ordering::Relaxed);
            shared.errors.io(what, &e);
            return end;
        }
    };
    *lock(&shared.before).entry(node.clone()).or_insert(0) += 1;
    shared.opened.fetch_add(1, Ordering::Relaxed);
    end.before = Some(node.clone());
    let e = match watch(&shared, &mut conn, &node).await {
        Watch::Stopped => {
            end.after = Some(node);
            return end;
        }
        Watch::Bad => return end,
        Watch::Lost(e) => e,
    };
    let t0 = shared.t0.load(Ordering::SeqCst);
    if t0 == 0 || shared.killed.get() != Some(&node) {
        shared
            .survivors_disconnected
            .fetch_add(1, Ordering::Relaxed);
        shared.errors.io("survivor disconnected", &e);
        return end;
    }
    end.affected = true;
    end.disconnected = true;
    drop(conn);
    if !shared.jitter.is_zero() {
        let max = u64::try_from(shared.jitter.as_micros()).unwrap_or(u64::MAX);
        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..=max))).await;
    }
    let mut back = None;
    for _ in 0..MAX_ATTEMPTS {
        if shared.stop.is_cancelled() || shared.attempts_left.fetch_sub(1, Ordering::Relaxed) <= 0 {
            break;
        }
        let start = pushmsg::monotonic_ns();
        match PushConn::open(src, shared.target, shared.timeout, shared.size).await {
            Ok((c, name, got)) => {
                report::record_us(
                    &mut lock(&shared.reconnect),
                    Duration::from_nanos(got.recv_ns.saturating_sub(start)),
                );
                shared
                    .first_back_ns
                    .fetch_min(got.recv_ns, Ordering::SeqCst);
                end.back_rel_ns = Some(got.recv_ns.saturating_sub(t0));
                if Some(&name) == shared.killed.get() {
                    shared.landed_on_killed.fetch_add(1, Ordering::Relaxed);
                }
                back = Some((c, name));
                break;
            }
            Err((what, e)) => {
                lock(&shared.failures).push(Failure {
                    start_rel_ns: start as i64 - t0 as i64,
                    what,
                    kind: error_kind(&e),
                });
            }
        }
    }
    let Some((c, name)) = back else {
        shared.gave_up.fetch_add(1, Ordering::SeqCst);
        shared.errors.record(
            "reconnect: gave up",
            format!("no first message after {MAX_ATTEMPTS} attempts (or the run's cap)"),
        );
        return end;
    };
    shared.back.fetch_add(1, Ordering::SeqCst);
    conn = c;
    node = name;
    match watch(&shared, &mut conn, &node).await {
        Watch::Stopped => end.after = Some(node),
        Watch::Bad => {}
        Watch::Lost(e) => {
            shared.reconnected_lost.fetch_add(1, Ordering::Relaxed);
            shared.errors.io("reconnected client disconnected", &e);
        }
    }
    end
}

/// One command to the push servers' control socket; its reply line.
async fn control(addr: SocketAddr, timeout: Duration, line: &str) -> anyhow::Result<String> {
    let mut s = bounded("control connect", timeout, TcpStream::connect(addr))
        .await
        .with_context(|| format!("control {addr}"))?;
    s.write_all(format!("{line}\n").as_bytes()).await?;
    let reply = bounded("control reply", timeout, read_line(&mut s, 64 * 1024))
        .await
        .with_context(|| format!("control {addr}: no reply to {line:?}"))?;
    Ok(reply)
}

/// The node to kill: the one given, else the one with the most clients (the
/// first name on a tie).
fn pick(before: &BTreeMap<String, u64>, given: Option<&str>) -> Option<String> {
    if let Some(g) = given {
        return Some(g.to_string());
    }
    let most = before.values().copied().max()?;
    before
        .iter()
        .find(|(_, &v)| v == most)
        .map(|(k, _)| k.clone())
}

/// `killed NAME PORT N` -> N.
fn parse_killed(reply: &str, name: &str) -> Option<u64> {
    let mut w = reply.split_whitespace();
    match (w.next(), w.next(), w.next(), w.next(), w.next()) {
        (Some("killed"), Some(n), Some(_port), Some(count), None) if n == name => {
            count.parse().ok()
        }
        _ => None,
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

pub async fn run(a: StormArgs) -> anyhow::Result<Outcome> {
    let c = &a.common;
    let n = a.connections;
    let shared = Arc::new(Shared {
        target: c.target,
        timeout: c.timeout,
        size: a.size,
        jitter: a.jitter,
        stop: CancellationToken::new(),
        opened: AtomicU64::new(0),
        open_failed: AtomicU64::new(0),
        before: Mutex::new(BTreeMap::new()),
        killed: OnceLock::new(),
        t0: AtomicU64::new(0),
        back: AtomicU64::new(0),
        gave_up: AtomicU64::new(0),
        first_back_ns: AtomicU64::new(u64::MAX),
        attempts_left: AtomicI64::new(ATTEMPT_CAP.min(i64::from(n) * i64::from(MAX_ATTEMPTS))),
        failures: Mutex::new(Vec::new()),
        reconnect: Mutex::new(report::histogram()),
        survivors_disconnected: AtomicU64::new(0),
        moved: AtomicU64::new(0),
        landed_on_killed: AtomicU64::new(0),
        reconnected_lost: AtomicU64::new(0),
        malformed: AtomicU64::new(0),
        errors: Errors::default(),
    });
    let start = Instant::now();
    let progress = {
        let s = shared.clone();
        Progress::start(c.quiet, start, start, move |_| {
            let failed = lock(&s.failures).len();
            if s.t0.load(Ordering::Relaxed) == 0 {
                format!(
                    "{}/{} connected, {} errors",
                    report::int(s.opened.load(Ordering::Relaxed)),
                    report::int(u64::from(n)),
                    report::int(s.errors.total())
                )
            } else {
                format!(
                    "{} back, {} failed attempts, {} errors",
                    report::int(s.back.load(Ordering::Relaxed)),
                    report::int(failed as u64),
                    report::int(s.errors.total())
                )
            }
        })
    };
    let sem = Arc::new(Semaphore::new(a.batch as usize));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        tasks.spawn(client(
            shared.clone(),
            sem.clone(),
            c.source_ips.nth(u64::from(i)),
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
    let before = lock(&shared.before).clone();
    let Some(victim) = pick(&before, a.kill.as_deref()) else {
        shared.stop.cancel();
        bail!(
            "no client got a first message from {} (is it a `serve push` or a ringlb in front of some?)",
            c.target
        );
    };
    let affected = before.get(&victim).copied().unwrap_or(0);

    // T0, just before the kill goes out.
    let _ = shared.killed.set(victim.clone());
    let t0 = pushmsg::monotonic_ns();
    shared.t0.store(t0, Ordering::SeqCst);
    let reply = match control(a.control, c.timeout, &format!("kill {victim}")).await {
        Ok(r) => r,
        Err(e) => {
            shared.stop.cancel();
            return Err(e);
        }
    };
    let Some(reset) = parse_killed(&reply, &victim) else {
        shared.stop.cancel();
        bail!("control {}: kill {victim}: {reply}", a.control);
    };

    // Until every affected client is back (or gave up), within --recover-within.
    let deadline = Instant::now() + a.recover_within;
    while shared.back.load(Ordering::SeqCst) + shared.gave_up.load(Ordering::SeqCst) < affected
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(a.settle).await;
    shared.stop.cancel();
    drop(progress);
    let mut ends = Vec::new();
    let teardown = tokio::time::timeout(TEARDOWN, async {
        while let Some(r) = tasks.join_next().await {
            if let Ok(end) = r {
                ends.push(end);
            }
        }
    })
    .await;
    if teardown.is_err() {
        tasks.abort_all();
    }
    let revived = if a.no_revive {
        None
    } else {
        Some(
            control(a.control, c.timeout, &format!("revive {victim}"))
                .await
                .map_err(|e| format!("{e:#}"))
                .and_then(|r| {
                    if r.starts_with("revived ") {
                        Ok(r)
                    } else {
                        Err(r)
                    }
                }),
        )
    };

    // Figures.
    let back: Vec<u64> = ends.iter().filter_map(|e| e.back_rel_ns).collect();
    let all_back_ns = back.iter().copied().max();
    let disconnected = ends.iter().filter(|e| e.disconnected).count() as u64;
    let not_disconnected = ends
        .iter()
        .filter(|e| e.before.as_deref() == Some(&victim) && !e.affected)
        .count() as u64;
    let not_back = affected - (back.len() as u64).min(affected);
    let failures = lock(&shared.failures).clone();
    let first_back = shared.first_back_ns.load(Ordering::SeqCst);
    let after_first = failures
        .iter()
        .filter(|f| first_back != u64::MAX && f.start_rel_ns > first_back as i64 - t0 as i64)
        .count();
    let mut after: BTreeMap<String, u64> = BTreeMap::new();
    for e in &ends {
        if let Some(node) = &e.after {
            *after.entry(node.clone()).or_insert(0) += 1;
        }
    }
    let survivors_disconnected = shared.survivors_disconnected.load(Ordering::Relaxed);
    let moved = shared.moved.load(Ordering::Relaxed);
    let landed = shared.landed_on_killed.load(Ordering::Relaxed);
    let reconnected_lost = shared.reconnected_lost.load(Ordering::Relaxed);
    let broken =
        survivors_disconnected + moved + landed + not_back + reconnected_lost + not_disconnected;

    let mut r = Report::new(
        "storm",
        &format!(
            "storm ({} clients, kill {victim}{})",
            report::int(u64::from(n)),
            if a.jitter.is_zero() {
                String::new()
            } else {
                format!(
                    ", reconnect jitter {}",
                    humantime::format_duration(a.jitter)
                )
            }
        ),
        c.target,
    );
    let established = shared.opened.load(Ordering::Relaxed);
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
    r.add(
        "killed",
        format!("{victim} (control: {reply})"),
        "killed",
        victim.clone(),
    );
    r.json("reset_by_server", reset);
    r.add(
        "affected clients",
        format!(
            "{} ({} disconnected, server reset {})",
            report::int(affected),
            report::int(disconnected),
            report::int(reset)
        ),
        "affected",
        affected,
    );
    r.add(
        "back",
        format!(
            "{} of {}",
            report::int(back.len() as u64),
            report::int(affected)
        ),
        "back",
        back.len() as u64,
    );
    r.add(
        "all back after",
        match all_back_ns {
            Some(ns) if not_back == 0 => format!("{:.1} ms after the kill", ms(ns)),
            Some(ns) => format!(
                "not all ({} missing; last back at {:.1} ms)",
                not_back,
                ms(ns)
            ),
            None => "none came back".into(),
        },
        "all_back_ms",
        match all_back_ns {
            Some(ns) if not_back == 0 => json!(report::round(ms(ns), 2)),
            _ => Value::Null,
        },
    );
    if first_back != u64::MAX {
        r.add(
            "first back after",
            format!("{:.1} ms", ms(first_back.saturating_sub(t0))),
            "first_back_ms",
            report::round(ms(first_back.saturating_sub(t0)), 2),
        );
    }
    r.latency_as(&lock(&shared.reconnect), "reconnect", "reconnect_");
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for f in &failures {
        *kinds.entry(format!("{}: {}", f.what, f.kind)).or_insert(0) += 1;
    }
    r.add(
        "failed attempts",
        if failures.is_empty() {
            "0".into()
        } else {
            let parts: Vec<String> = kinds.iter().map(|(k, v)| format!("{k} {v}")).collect();
            format!(
                "{} ({}), {} started after the first client was back",
                failures.len(),
                parts.join(", "),
                after_first
            )
        },
        "failed_attempts",
        failures.len() as u64,
    );
    r.json("failed_after_first_back", after_first as u64);
    r.json(
        "failed_kinds",
        Value::Object(
            kinds
                .iter()
                .map(|(k, v)| (report::snake(k), Value::from(*v)))
                .collect(),
        ),
    );
    r.json(
        "failures",
        Value::Array(
            failures
                .iter()
                .take(MAX_FAILURE_JSON)
                .map(|f| {
                    json!({
                        "at_ms": report::round(f.start_rel_ns as f64 / 1e6, 3),
                        "what": f.what,
                        "kind": f.kind,
                    })
                })
                .collect(),
        ),
    );
    for f in failures.iter().take(MAX_FAILURE_ROWS) {
        r.note(format!(
            "failed attempt at {:+.1} ms: {} {}",
            f.start_rel_ns as f64 / 1e6,
            f.what,
            f.kind
        ));
    }
    let invariant_rows = [
        (
            "survivors disconnected",
            "survivors_disconnected",
            survivors_disconnected,
        ),
        ("moved on a connection", "moved", moved),
        ("landed on killed node", "landed_on_killed", landed),
        ("affected not back", "not_back", not_back),
        ("affected not reset", "not_disconnected", not_disconnected),
        (
            "reconnected then lost",
            "reconnected_lost",
            reconnected_lost,
        ),
    ];
    for (label, key, v) in invariant_rows {
        r.add(label, report::int(v), key, v);
    }
    r.add(
        "invariants",
        if broken == 0 {
            "hold".to_string()
        } else {
            format!("BROKEN ({broken})")
        },
        "invariants_hold",
        broken == 0,
    );
    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    r.json("nodes_before", json!(before));
    r.json("nodes_after", json!(after));
    r.table(Table {
        title: "clients per node".into(),
        header: vec!["node".into(), "before".into(), "after".into()],
        rows: names
            .iter()
            .map(|k| {
                vec![
                    if **k == victim {
                        format!("{k} (killed)")
                    } else {
                        k.to_string()
                    },
                    report::int(before.get(*k).copied().unwrap_or(0)),
                    report::int(after.get(*k).copied().unwrap_or(0)),
                ]
            })
            .collect(),
    });
    match &revived {
        None => r.add("revived", "no (--no-revive)", "revived", false),
        Some(Ok(line)) => r.add("revived", line.clone(), "revived", true),
        Some(Err(e)) => {
            r.add("revived", format!("failed: {e}"), "revived", false);
        }
    }
    r.errors(&shared.errors);
    let ok = broken == 0 && established > 0 && !matches!(revived, Some(Err(_)));
    Ok(Outcome::measured(r, ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_busiest_node() {
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), 3);
        m.insert("b".to_string(), 5);
        m.insert("c".to_string(), 5);
        assert_eq!(pick(&m, None).as_deref(), Some("b"));
        assert_eq!(pick(&m, Some("a")).as_deref(), Some("a"));
        assert_eq!(pick(&BTreeMap::new(), None), None);
    }

    #[test]
    fn kill_reply() {
        assert_eq!(parse_killed("killed node-a 7070 12", "node-a"), Some(12));
        assert_eq!(parse_killed("killed node-b 7070 12", "node-a"), None);
        assert_eq!(
            parse_killed("error node-a is not listening", "node-a"),
            None
        );
        assert_eq!(parse_killed("killed node-a 7070 x", "node-a"), None);
    }
}
