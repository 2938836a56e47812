//! `load connrate`: connect, 64 bytes to an echo and back, close, in a loop.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Clock, Outcome};
use crate::cli::ConnrateArgs;
use crate::net::{bounded, connect_from, read_line, within, Errors, SourceIps};
use crate::report::{self, Progress, Report};

const MESSAGE: &[u8; 64] = b"ringlb-bench connrate: 64 bytes out and the same 64 bytes back.\n";

struct Shared {
    target: SocketAddr,
    timeout: Duration,
    greeting: bool,
    clock: Clock,
    sources: SourceIps,
    errors: Errors,
    done: AtomicU64,
}

pub async fn run(a: ConnrateArgs) -> anyhow::Result<Outcome> {
    let c = &a.common;
    let clock = Clock::starting_now(a.timing);
    let shared = Arc::new(Shared {
        target: c.target,
        timeout: c.timeout,
        greeting: a.expect_greeting,
        clock,
        sources: SourceIps::new(c.source_ips),
        errors: Errors::default(),
        done: AtomicU64::new(0),
    });
    let _progress = {
        let shared = shared.clone();
        let mut last = 0u64;
        Progress::start(c.quiet, clock.start, clock.measure_start, move |dt| {
            let now = shared.done.load(Ordering::Relaxed);
            let rate = (now - last) as f64 / dt.max(1e-9);
            last = now;
            let errors = shared.errors.total();
            format!(
                "{} conn/s, {} errors",
                report::rate(rate),
                report::int(errors)
            )
        })
    };
    let mut workers = JoinSet::new();
    for _ in 0..a.concurrency {
        workers.spawn(worker(shared.clone()));
    }
    let mut hist = report::histogram();
    let mut measured: u64 = 0;
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok((h, n)) => {
                measured += n;
                if let Err(e) = hist.add(&h) {
                    shared.errors.record("histogram", e);
                }
            }
            Err(e) => shared.errors.record("task", e),
        }
    }
    drop(_progress);

    let secs = a.timing.duration.as_secs_f64();
    let rate = measured as f64 / secs;
    let mut r = Report::new(
        "connrate",
        &format!(
            "connrate (connect, 64 B echo, close; concurrency {}{})",
            a.concurrency,
            if a.expect_greeting { ", greeting" } else { "" }
        ),
        c.target,
    );
    r.add(
        "concurrency",
        a.concurrency.to_string(),
        "concurrency",
        a.concurrency,
    );
    r.timing(a.timing.duration, a.timing.warmup);
    r.add(
        "connections",
        report::int(measured),
        "connections",
        measured,
    );
    r.add(
        "rate",
        format!("{} conn/s", report::rate(rate)),
        "conn_per_s",
        report::round(rate, 1),
    );
    r.latency(&hist);
    r.note("latency is the whole connect -> reply of each connection");
    r.errors(&shared.errors);
    Ok(Outcome::measured(r, measured > 0))
}

/// Loop until the end; returns the latencies and count of connections that
/// completed in the measured window.
async fn worker(s: Arc<Shared>) -> (Histogram<u64>, u64) {
    let mut hist = report::histogram();
    let mut count = 0u64;
    while Instant::now() < s.clock.end {
        let t0 = Instant::now();
        let src = s.sources.next();
        match within(s.timeout, "connection", one(&s, src)).await {
            Ok(()) => {
                let t1 = Instant::now();
                s.done.fetch_add(1, Ordering::Relaxed);
                if s.clock.in_window(t1) {
                    report::record_us(&mut hist, t1 - t0);
                    count += 1;
                }
            }
            Err((what, e)) => {
                s.errors.io(what, &e);
                // Do not spin on an instant failure such as "refused".
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    (hist, count)
}

async fn one(s: &Shared, src: std::net::Ipv4Addr) -> Result<(), (&'static str, io::Error)> {
    let mut stream = connect_from(src, s.target, s.timeout)
        .await
        .map_err(|e| ("connect", e))?;
    if s.greeting {
        bounded("greeting", s.timeout, read_line(&mut stream, 1024))
            .await
            .map_err(|e| ("greeting", e))?;
    }
    bounded("write", s.timeout, stream.write_all(MESSAGE))
        .await
        .map_err(|e| ("write", e))?;
    let mut back = [0u8; 64];
    bounded("read", s.timeout, stream.read_exact(&mut back))
        .await
        .map_err(|e| ("read", e))?;
    if &back != MESSAGE {
        return Err((
            "echo",
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "reply differs from what was sent (got {:?}; a greeting backend needs --expect-greeting)",
                    String::from_utf8_lossy(&back[..back.len().min(40)])
                ),
            ),
        ));
    }
    Ok(())
}
