//! `load idle`: how much memory a process (ringlb) needs per idle connection.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Outcome;
use crate::cli::IdleArgs;
use crate::net::{bounded, connect_from, read_line, within, Errors, SourceIps};
use crate::report::{self, Progress, Report};

/// Longest time spent opening the connections.
pub const ESTABLISH_CAP: Duration = Duration::from_secs(120);
/// Wait between "all established" and the second RSS reading.
const SETTLE: Duration = Duration::from_secs(1);

/// VmRSS of `pid` in bytes.
pub fn read_rss(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_vmrss(&text).with_context(|| format!("no VmRSS line in {path} (a kernel thread?)"))
}

fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut f = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = f.next()?.parse().ok()?;
    match f.next() {
        Some("kB") | None => Some(n * 1024),
        _ => None,
    }
}

pub async fn run(a: IdleArgs) -> anyhow::Result<Outcome> {
    let c = &a.common;
    let rss_before = a.pid.map(read_rss).transpose()?;
    let sources = Arc::new(SourceIps::new(c.source_ips));
    let errors = Arc::new(Errors::default());
    let established = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let give_up = start + ESTABLISH_CAP;

    // 0: opening, 1: settling, 2: holding
    let phase = Arc::new(AtomicU8::new(0));
    let progress = {
        let (established, errors, phase) = (established.clone(), errors.clone(), phase.clone());
        let n = a.connections;
        Progress::start(c.quiet, start, start, move |_| {
            let open = report::int(established.load(Ordering::Relaxed));
            let errors = report::int(errors.total());
            match phase.load(Ordering::Relaxed) {
                0 => format!(
                    "{open}/{} connections established, {errors} errors",
                    report::int(u64::from(n))
                ),
                1 => format!("{open} connections established, settling"),
                _ => format!("holding {open} connections"),
            }
        })
    };

    // Open in batches: at most `batch` connects in flight.
    let mut streams: Vec<TcpStream> = Vec::with_capacity(a.connections as usize);
    let mut inflight = JoinSet::new();
    let mut launched: u32 = 0;
    let mut abandoned: u64 = 0;
    loop {
        while launched < a.connections && inflight.len() < a.batch as usize {
            let (sources, target, timeout, greet) =
                (sources.clone(), c.target, c.timeout, a.expect_greeting);
            inflight.spawn(async move {
                within(timeout, "open", open(&sources, target, timeout, greet)).await
            });
            launched += 1;
        }
        let next = tokio::time::timeout_at(give_up, inflight.join_next()).await;
        match next {
            Err(_) => {
                abandoned = inflight.len() as u64 + u64::from(a.connections - launched);
                inflight.abort_all();
                break;
            }
            Ok(None) => break,
            Ok(Some(Ok(Ok(s)))) => {
                streams.push(s);
                established.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(Ok(Err((what, e))))) => errors.io(what, &e),
            Ok(Some(Err(e))) => errors.record("task", e),
        }
    }
    if abandoned > 0 {
        errors.record_n(
            "open: gave up",
            abandoned,
            format!(
                "{abandoned} connections not established within {}",
                humantime::format_duration(ESTABLISH_CAP)
            ),
        );
    }
    let establish_time = start.elapsed();
    phase.store(1, Ordering::Relaxed);
    tokio::time::sleep(SETTLE).await;
    let rss_after = a.pid.map(read_rss).transpose()?;
    phase.store(2, Ordering::Relaxed);
    tokio::time::sleep(a.hold).await;
    drop(progress);
    let rss_end = a.pid.map(read_rss).transpose()?;

    // Still open? A closed or reset connection shows as readable with EOF/error.
    let mut closed = 0u64;
    let mut buf = [0u8; 256];
    for s in &streams {
        match s.try_read(&mut buf) {
            Ok(0) => {
                closed += 1;
                errors.record(
                    "hold: closed",
                    "connection closed by the peer during the hold",
                );
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                closed += 1;
                errors.io("hold", &e);
            }
        }
    }
    let still_open = streams.len() as u64 - closed;
    drop(streams);

    let n = a.connections;
    let mut r = Report::new(
        "idle",
        &format!(
            "idle ({} connections held {}{})",
            report::int(u64::from(n)),
            humantime::format_duration(a.hold),
            if a.expect_greeting {
                ", greeting read"
            } else {
                ""
            }
        ),
        c.target,
    );
    r.add("connections", report::int(u64::from(n)), "connections", n);
    let est = still_open + closed;
    r.add(
        "established",
        format!("{} in {}", report::int(est), report::secs(establish_time)),
        "established",
        est,
    );
    r.json(
        "establish_s",
        report::round(establish_time.as_secs_f64(), 3),
    );
    r.add(
        "open after hold",
        report::int(still_open),
        "open_after_hold",
        still_open,
    );
    r.add(
        "hold",
        humantime::format_duration(a.hold).to_string(),
        "hold_s",
        a.hold.as_secs_f64(),
    );
    match (a.pid, rss_before, rss_after, rss_end) {
        (Some(pid), Some(before), Some(after), Some(end)) => {
            r.add("pid", pid.to_string(), "pid", pid);
            r.add(
                "rss before",
                report::bytes(before),
                "rss_before_bytes",
                before,
            );
            r.add(
                "rss established",
                report::bytes(after),
                "rss_after_bytes",
                after,
            );
            r.add("rss end of hold", report::bytes(end), "rss_end_bytes", end);
            let growth = after as i64 - before as i64;
            r.add(
                "rss growth",
                format!(
                    "{}{}",
                    if growth < 0 { "-" } else { "" },
                    report::bytes(growth.unsigned_abs())
                ),
                "rss_growth_bytes",
                growth,
            );
            let per = if est > 0 {
                growth as f64 / est as f64
            } else {
                0.0
            };
            r.add(
                "rss per connection",
                format!("{per:.0} B ({:.2} KiB)", per / 1024.0),
                "rss_per_conn_bytes",
                report::round(per, 1),
            );
            r.json("rss_per_conn_kib", report::round(per / 1024.0, 3));
            r.note("rss growth = VmRSS 1 s after all connections were established minus VmRSS before the first");
        }
        _ => r.note("no --pid: memory not measured"),
    }
    r.errors(&errors);
    Ok(Outcome::measured(r, est > 0))
}

async fn open(
    sources: &SourceIps,
    target: std::net::SocketAddr,
    timeout: Duration,
    greeting: bool,
) -> Result<TcpStream, (&'static str, io::Error)> {
    let mut s = connect_from(sources.next(), target, timeout)
        .await
        .map_err(|e| ("connect", e))?;
    if greeting {
        bounded("greeting", timeout, read_line(&mut s, 1024))
            .await
            .map_err(|e| ("greeting", e))?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmrss() {
        let status = "Name:\tringlb\nVmPeak:\t  100 kB\nVmRSS:\t    5120 kB\nThreads:\t3\n";
        assert_eq!(parse_vmrss(status), Some(5120 * 1024));
        assert_eq!(parse_vmrss("Name: x\n"), None);
        assert_eq!(parse_vmrss("VmRSS: lots\n"), None);
    }

    #[test]
    fn own_rss_is_readable() {
        let rss = read_rss(std::process::id()).expect("own rss");
        assert!(rss > 0);
        assert!(read_rss(u32::MAX).is_err());
    }
}
