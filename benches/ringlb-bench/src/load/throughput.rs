//! `load throughput`: bulk transfer to a `sink` (up) or from a `source` (down).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{timeout_at, Instant};

use super::{Clock, Outcome};
use crate::cli::{Direction, ThroughputArgs};
use crate::net::{bounded, connect_from, Errors, SourceIps};
use crate::report::{self, Progress, Report, Table};

const CHUNK: usize = 64 * 1024;
/// Longest sink reply read (greeting line + byte count line).
const MAX_REPLY: u64 = 4096;

struct StreamResult {
    index: usize,
    src: Ipv4Addr,
    /// Bytes in the measured window (confirmed by the sink, for up).
    bytes: u64,
    /// From the start of the window to the confirmation (up) or the end (down).
    elapsed: Duration,
}

pub async fn run(a: ThroughputArgs) -> anyhow::Result<Outcome> {
    let c = &a.common;
    let sources = SourceIps::new(c.source_ips);
    let errors = Arc::new(Errors::default());

    // Connect every stream first, so they all start together.
    let mut connecting = JoinSet::new();
    for index in 0..a.streams as usize {
        let src = sources.next();
        let (target, timeout) = (c.target, c.timeout);
        connecting.spawn(async move { (index, src, connect_from(src, target, timeout).await) });
    }
    let mut streams = Vec::new();
    while let Some(joined) = connecting.join_next().await {
        match joined {
            Ok((index, src, Ok(s))) => streams.push((index, src, s)),
            Ok((_, _, Err(e))) => errors.io("connect", &e),
            Err(e) => errors.record("task", e),
        }
    }
    if streams.is_empty() {
        let first = errors
            .snapshot()
            .into_iter()
            .next()
            .map(|(k, (_, m))| format!("{k}: {m}"))
            .unwrap_or_default();
        bail!("no stream could connect to {} ({first})", c.target);
    }
    streams.sort_by_key(|(i, _, _)| *i);

    let clock = Clock::starting_now(a.timing);
    let moved = Arc::new(AtomicU64::new(0));
    let unit = match a.direction {
        Direction::Up => "written",
        Direction::Down => "read",
    };
    let _progress = {
        let moved = moved.clone();
        let mut last = 0u64;
        Progress::start(c.quiet, clock.start, clock.measure_start, move |dt| {
            let now = moved.load(Ordering::Relaxed);
            let gbps = (now - last) as f64 * 8.0 / dt.max(1e-9) / 1e9;
            last = now;
            format!("{gbps:.2} Gbit/s {unit}")
        })
    };

    let mut tasks = JoinSet::new();
    for (index, src, stream) in streams {
        let (moved, errors, timeout) = (moved.clone(), errors.clone(), c.timeout);
        let direction = a.direction;
        tasks.spawn(async move {
            let r = match direction {
                Direction::Up => up(stream, clock, &moved, &errors, timeout).await,
                Direction::Down => down(stream, clock, &moved, &errors, timeout).await,
            };
            r.map(|(bytes, elapsed)| StreamResult {
                index,
                src,
                bytes,
                elapsed,
            })
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Some(r)) => results.push(r),
            Ok(None) => {}
            Err(e) => errors.record("task", e),
        }
    }
    drop(_progress);
    results.sort_by_key(|r| r.index);

    let total_bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let elapsed = results
        .iter()
        .map(|r| r.elapsed)
        .max()
        .unwrap_or(a.timing.duration);
    let total = report::gbit(total_bytes, elapsed);
    let per: Vec<f64> = results
        .iter()
        .map(|r| report::gbit(r.bytes, r.elapsed))
        .collect();
    let n = per.len().max(1) as f64;
    let avg = per.iter().fold(0.0, |a, b| a + b) / n;
    let min = per.iter().copied().fold(f64::INFINITY, f64::min);
    let max = per.iter().copied().fold(0.0, f64::max);

    let dir = match a.direction {
        Direction::Up => "up",
        Direction::Down => "down",
    };
    let mut r = Report::new(
        "throughput",
        &format!(
            "throughput ({dir}: {} a {} backend, {} stream{})",
            if dir == "up" { "write to" } else { "read from" },
            if dir == "up" { "sink" } else { "source" },
            a.streams,
            if a.streams == 1 { "" } else { "s" }
        ),
        c.target,
    );
    r.json("direction", dir);
    r.add(
        "streams",
        format!("{} of {} completed", results.len(), a.streams),
        "streams",
        a.streams,
    );
    r.json("streams_completed", results.len());
    r.timing(a.timing.duration, a.timing.warmup);
    r.add(
        "throughput",
        format!("{total:.2} Gbit/s"),
        "gbit_per_s",
        report::round(total, 3),
    );
    r.add(
        "per stream",
        if results.is_empty() {
            "-".to_string()
        } else {
            format!("{avg:.2} Gbit/s avg (min {min:.2}, max {max:.2})")
        },
        "gbit_per_s_per_stream",
        report::round(avg, 3),
    );
    if !results.is_empty() {
        r.json("gbit_per_s_per_stream_min", report::round(min, 3));
        r.json("gbit_per_s_per_stream_max", report::round(max, 3));
    }
    let how = if dir == "up" {
        "confirmed by the sink"
    } else {
        "read"
    };
    r.add(
        "bytes",
        format!(
            "{} ({} B {how})",
            report::bytes(total_bytes),
            report::int(total_bytes)
        ),
        "bytes",
        total_bytes,
    );
    r.add(
        "elapsed",
        report::secs(elapsed),
        "elapsed_s",
        report::round(elapsed.as_secs_f64(), 4),
    );
    r.errors(&errors);
    r.json(
        "per_stream",
        serde_json::Value::Array(
            results
                .iter()
                .zip(&per)
                .map(|(s, g)| {
                    serde_json::json!({
                        "stream": s.index,
                        "source_ip": s.src.to_string(),
                        "bytes": s.bytes,
                        "elapsed_s": report::round(s.elapsed.as_secs_f64(), 4),
                        "gbit_per_s": report::round(*g, 3),
                    })
                })
                .collect(),
        ),
    );
    if results.len() > 1 && results.len() <= 64 {
        r.table(Table {
            title: "per stream".into(),
            header: vec![
                "stream".into(),
                "source".into(),
                "Gbit/s".into(),
                "bytes".into(),
            ],
            rows: results
                .iter()
                .zip(&per)
                .map(|(s, g)| {
                    vec![
                        s.index.to_string(),
                        s.src.to_string(),
                        format!("{g:.2}"),
                        report::bytes(s.bytes),
                    ]
                })
                .collect(),
        });
    }
    Ok(Outcome::measured(r, !results.is_empty()))
}

/// Write until the end, shut down writing, read the sink's byte count.
async fn up(
    mut s: TcpStream,
    clock: Clock,
    moved: &AtomicU64,
    errors: &Errors,
    timeout: Duration,
) -> Option<(u64, Duration)> {
    let chunk = vec![b'x'; CHUNK];
    let mut written: u64 = 0;
    let mut at_measure: Option<u64> = None;
    loop {
        let now = Instant::now();
        if at_measure.is_none() && now >= clock.measure_start {
            at_measure = Some(written);
        }
        if now >= clock.end {
            break;
        }
        // A write that has not completed when the time is up wrote nothing.
        match timeout_at(clock.end, s.write(&chunk)).await {
            Err(_) => break,
            Ok(Ok(0)) => {
                errors.record("write: closed", "peer accepts no more bytes");
                return None;
            }
            Ok(Ok(n)) => {
                written += n as u64;
                moved.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                errors.io("write", &e);
                return None;
            }
        }
    }
    let at_measure = at_measure.unwrap_or(written);
    if let Err(e) = bounded("shutdown", timeout, s.shutdown()).await {
        errors.io("shutdown", &e);
        return None;
    }
    let mut reply = Vec::new();
    let read = bounded("sink reply", timeout, async {
        (&mut s).take(MAX_REPLY).read_to_end(&mut reply).await
    })
    .await;
    let confirmed_at = Instant::now();
    if let Err(e) = read {
        errors.io("sink reply", &e);
        return None;
    }
    let Some(confirmed) = parse_sink_reply(&reply) else {
        errors.record(
            "sink reply: protocol",
            format!(
                "expected a byte count line from a sink backend, got {:?}",
                String::from_utf8_lossy(&reply[..reply.len().min(80)])
            ),
        );
        return None;
    };
    if confirmed != written {
        errors.record(
            "sink reply: count mismatch",
            format!("sink confirmed {confirmed} of {written} bytes written"),
        );
    }
    Some((
        confirmed.saturating_sub(at_measure),
        confirmed_at.duration_since(clock.measure_start),
    ))
}

/// Read as fast as possible until the end, then close.
async fn down(
    mut s: TcpStream,
    clock: Clock,
    moved: &AtomicU64,
    errors: &Errors,
    timeout: Duration,
) -> Option<(u64, Duration)> {
    let mut buf = vec![0u8; CHUNK];
    let mut measured: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= clock.end {
            break;
        }
        let stall = now + timeout;
        let until = stall.min(clock.end);
        match timeout_at(until, s.read(&mut buf)).await {
            Err(_) if until == clock.end => break,
            Err(_) => {
                errors.record(
                    "read: timeout",
                    format!("no byte for {}", humantime::format_duration(timeout)),
                );
                return None;
            }
            Ok(Ok(0)) => {
                errors.record("read: closed early", "the source closed before the end");
                return None;
            }
            Ok(Ok(n)) => {
                moved.fetch_add(n as u64, Ordering::Relaxed);
                if Instant::now() >= clock.measure_start {
                    measured += n as u64;
                }
            }
            Ok(Err(e)) => {
                errors.io("read", &e);
                return None;
            }
        }
    }
    Some((measured, clock.end.duration_since(clock.measure_start)))
}

/// The sink's reply is `[greeting line\n]count\n`: the last non-empty line.
pub fn parse_sink_reply(reply: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(reply).ok()?;
    if !text.ends_with('\n') {
        return None;
    }
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_reply() {
        assert_eq!(parse_sink_reply(b"123\n"), Some(123));
        assert_eq!(parse_sink_reply(b"node-a\n123\n"), Some(123));
        assert_eq!(parse_sink_reply(b"123"), None, "incomplete line");
        assert_eq!(parse_sink_reply(b"node-a\n"), None);
        assert_eq!(parse_sink_reply(b""), None);
        assert_eq!(parse_sink_reply(b"\xff\n"), None);
    }
}
