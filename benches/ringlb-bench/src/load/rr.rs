//! `load rr`: request/response latency on persistent connections.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Clock, Outcome};
use crate::cli::{Protocol, RrArgs};
use crate::http;
use crate::net::{bounded, connect_from, read_line, within, Errors, SourceIps};
use crate::report::{self, Progress, Report};

const HTTP_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
/// Requests up to this size are written before the reply is read; larger ones
/// are written and read at once.
const SMALL: usize = 16 * 1024;
/// Largest HTTP response body accepted.
const MAX_BODY: u64 = 16 * 1024 * 1024;

struct Shared {
    target: SocketAddr,
    timeout: Duration,
    greeting: bool,
    protocol: Protocol,
    size: usize,
    pause: Duration,
    sources: SourceIps,
    errors: Errors,
    done: AtomicU64,
    reconnects: AtomicU64,
}

struct Conn {
    stream: TcpStream,
    /// Bytes read past the last HTTP response (none expected without pipelining).
    buf: Vec<u8>,
}

pub async fn run(a: RrArgs) -> anyhow::Result<Outcome> {
    let c = &a.common;
    let shared = Arc::new(Shared {
        target: c.target,
        timeout: c.timeout,
        greeting: a.expect_greeting,
        protocol: a.protocol,
        size: a.size as usize,
        pause: a.pause,
        sources: SourceIps::new(c.source_ips),
        errors: Errors::default(),
        done: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
    });

    // Open every connection before the clock starts.
    let mut opening = JoinSet::new();
    for _ in 0..a.connections {
        let s = shared.clone();
        opening.spawn(async move { within(s.timeout, "open", open(&s)).await });
    }
    let mut conns = Vec::new();
    while let Some(joined) = opening.join_next().await {
        match joined {
            Ok(Ok(conn)) => conns.push(conn),
            Ok(Err((what, e))) => shared.errors.io(what, &e),
            Err(e) => shared.errors.record("task", e),
        }
    }
    let opened = conns.len();
    if conns.is_empty() {
        anyhow::bail!(
            "no connection could be opened to {}: {}",
            c.target,
            first_error(&shared.errors)
        );
    }

    let clock = Clock::starting_now(a.timing);
    let _progress = {
        let shared = shared.clone();
        let mut last = 0u64;
        Progress::start(c.quiet, clock.start, clock.measure_start, move |dt| {
            let now = shared.done.load(Ordering::Relaxed);
            let rate = (now - last) as f64 / dt.max(1e-9);
            last = now;
            format!(
                "{} req/s, {} errors",
                report::rate(rate),
                report::int(shared.errors.total())
            )
        })
    };
    let mut workers = JoinSet::new();
    for conn in conns {
        workers.spawn(worker(shared.clone(), conn, clock));
    }
    let mut hist = report::histogram();
    let mut measured = 0u64;
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

    let rate = measured as f64 / a.timing.duration.as_secs_f64();
    let what = match a.protocol {
        Protocol::Tcp => format!("tcp, {} B echo", a.size),
        Protocol::Http => "http, GET / keep-alive".to_string(),
    };
    let mut r = Report::new(
        "rr",
        &format!(
            "rr ({what}, {} connection{})",
            a.connections,
            if a.connections == 1 { "" } else { "s" }
        ),
        c.target,
    );
    r.json(
        "protocol",
        match a.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
        },
    );
    if a.protocol == Protocol::Tcp {
        r.json("size", a.size);
    }
    if !a.pause.is_zero() {
        r.add(
            "pause",
            format!("{} after each reply", humantime::format_duration(a.pause)),
            "pause_ms",
            report::round(a.pause.as_secs_f64() * 1000.0, 3),
        );
    }
    r.add(
        "connections",
        format!("{opened} of {} opened", a.connections),
        "connections",
        a.connections,
    );
    r.json("connections_opened", opened);
    r.timing(a.timing.duration, a.timing.warmup);
    r.add("requests", report::int(measured), "requests", measured);
    r.add(
        "rate",
        format!("{} req/s", report::rate(rate)),
        "req_per_s",
        report::round(rate, 1),
    );
    r.latency(&hist);
    let reconnects = shared.reconnects.load(Ordering::Relaxed);
    r.add(
        "reconnects",
        report::int(reconnects),
        "reconnects",
        reconnects,
    );
    r.errors(&shared.errors);
    Ok(Outcome::measured(r, measured > 0))
}

fn first_error(e: &Errors) -> String {
    e.snapshot()
        .into_iter()
        .next()
        .map(|(k, (_, m))| format!("{k}: {m}"))
        .unwrap_or_default()
}

async fn open(s: &Shared) -> Result<Conn, (&'static str, io::Error)> {
    let mut stream = connect_from(s.sources.next(), s.target, s.timeout)
        .await
        .map_err(|e| ("connect", e))?;
    if s.greeting {
        bounded("greeting", s.timeout, read_line(&mut stream, 1024))
            .await
            .map_err(|e| ("greeting", e))?;
    }
    Ok(Conn {
        stream,
        buf: Vec::new(),
    })
}

async fn worker(s: Arc<Shared>, conn: Conn, clock: Clock) -> (Histogram<u64>, u64) {
    let mut hist = report::histogram();
    let mut count = 0u64;
    let request: Vec<u8> = match s.protocol {
        Protocol::Tcp => (0..s.size).map(|i| b'a' + (i % 26) as u8).collect(),
        Protocol::Http => HTTP_REQUEST.to_vec(),
    };
    let mut reply = vec![0u8; s.size];
    let mut conn = Some(conn);
    while Instant::now() < clock.end {
        let mut c = match conn.take() {
            Some(c) => c,
            None => match within(s.timeout, "open", open(&s)).await {
                Ok(c) => {
                    s.reconnects.fetch_add(1, Ordering::Relaxed);
                    c
                }
                Err((what, e)) => {
                    s.errors.io(what, &e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let t0 = Instant::now();
        let result = match s.protocol {
            Protocol::Tcp => echo_once(&s, &mut c, &request, &mut reply).await,
            Protocol::Http => within(s.timeout, "http", http_once(&s, &mut c)).await,
        };
        match result {
            Ok(keep) => {
                let t1 = Instant::now();
                s.done.fetch_add(1, Ordering::Relaxed);
                if clock.in_window(t1) {
                    report::record_us(&mut hist, t1 - t0);
                    count += 1;
                }
                if keep {
                    conn = Some(c);
                }
                if !s.pause.is_zero() {
                    tokio::time::sleep(s.pause).await;
                }
            }
            Err((what, e)) => {
                s.errors.io(what, &e);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (hist, count)
}

type OpResult = Result<bool, (&'static str, io::Error)>;

async fn echo_once(s: &Shared, c: &mut Conn, request: &[u8], reply: &mut [u8]) -> OpResult {
    // Write and read at once, so a request larger than the socket buffers
    // cannot deadlock against its own echo.
    // Small requests go out in one write first (cheaper).
    let (mut rd, mut wr) = c.stream.split();
    let both = async {
        if request.len() <= SMALL {
            wr.write_all(request).await.map_err(|e| ("write", e))?;
            rd.read_exact(reply).await.map_err(|e| ("read", e))?;
            Ok(())
        } else {
            tokio::try_join!(
                async { wr.write_all(request).await.map_err(|e| ("write", e)) },
                async { rd.read_exact(reply).await.map_err(|e| ("read", e)) },
            )
            .map(|_| ())
        }
    };
    match tokio::time::timeout(s.timeout, both).await {
        Err(_) => {
            return Err((
                "read",
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no full echo within {}",
                        humantime::format_duration(s.timeout)
                    ),
                ),
            ))
        }
        Ok(r) => {
            r?;
        }
    }
    if reply != request {
        return Err((
            "echo",
            io::Error::new(
                io::ErrorKind::InvalidData,
                "reply differs from the request (a greeting backend needs --expect-greeting)",
            ),
        ));
    }
    Ok(true)
}

fn protocol_error(msg: impl Into<String>) -> (&'static str, io::Error) {
    (
        "http",
        io::Error::new(io::ErrorKind::InvalidData, msg.into()),
    )
}

/// One request and its full response; `Ok(keep_alive)`.
async fn http_once(s: &Shared, c: &mut Conn) -> OpResult {
    bounded("write", s.timeout, c.stream.write_all(HTTP_REQUEST))
        .await
        .map_err(|e| ("write", e))?;
    let deadline = Instant::now() + s.timeout;
    let head = loop {
        match http::parse_response(&c.buf) {
            Ok(Some(h)) => break h,
            Ok(None) => fill(c, deadline, s.timeout).await?,
            Err(e) => return Err(protocol_error(e)),
        }
    };
    let Some(body) = head.body_len(false) else {
        return Err(protocol_error(
            "response without Content-Length (chunked or until-close) is not supported",
        ));
    };
    if body > MAX_BODY {
        return Err(protocol_error(format!(
            "response body of {body} bytes is too large"
        )));
    }
    let total = head.head_len + body as usize;
    while c.buf.len() < total {
        fill(c, deadline, s.timeout).await?;
    }
    c.buf.drain(..total);
    if head.status != 200 {
        return Err(protocol_error(format!("status {}", head.status)));
    }
    Ok(head.keep_alive())
}

/// Read more bytes into the connection buffer, by the deadline.
async fn fill(
    c: &mut Conn,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), (&'static str, io::Error)> {
    let old = c.buf.len();
    c.buf.resize(old + 16 * 1024, 0);
    let r = tokio::time::timeout_at(deadline, c.stream.read(&mut c.buf[old..])).await;
    let n = match r {
        Err(_) => {
            c.buf.truncate(old);
            return Err((
                "read",
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no full response within {}",
                        humantime::format_duration(timeout)
                    ),
                ),
            ));
        }
        Ok(Err(e)) => {
            c.buf.truncate(old);
            return Err(("read", e));
        }
        Ok(Ok(n)) => n,
    };
    c.buf.truncate(old + n);
    if n == 0 {
        return Err((
            "read",
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-response",
            ),
        ));
    }
    Ok(())
}
