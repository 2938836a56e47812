//! `serve push`: every connection gets one message on accept and one every
//! `--interval` after it, at a random phase within the interval (so 9,000
//! connections opened together do not all write in the same millisecond), like
//! a WebSocket app pushing a clock.
//!
//! One task per connection with one tokio timer: a tick formats the message into
//! the connection's own `size`-byte buffer and writes it without waiting. When
//! the socket buffer is full (a client that does not read) the tick is skipped
//! and counted; a message written in part is finished when the socket becomes
//! writable, and ticks meanwhile are skipped, so memory stays `size` bytes per
//! connection and no client holds up another.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;
use crate::pushmsg::{self, Message};

/// Default `--size` and `--interval`.
pub const DEFAULT_SIZE: usize = 64;
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a `kill` waits for its connections' tasks to reset them.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// `--echo`: longest wait for a client to take echoed bytes.
const ECHO_STALL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Settings {
    size: usize,
    interval: Duration,
    echo: bool,
}

/// One push server: its address, counters and whether it listens.
pub struct PushServer {
    pub name: String,
    pub addr: SocketAddr,
    settings: Settings,
    open: AtomicU64,
    sent: AtomicU64,
    skipped: AtomicU64,
    /// Ticks the runtime woke too late for (a whole interval or more).
    late: AtomicU64,
    resets: AtomicU64,
    live: Mutex<Live>,
}

struct Live {
    /// The accept loop (owns the listener) while listening.
    accept: Option<JoinHandle<()>>,
    /// Cancelled by `kill`: every connection accepted under it resets.
    kill: CancellationToken,
}

impl PushServer {
    fn live(&self) -> MutexGuard<'_, Live> {
        match self.live.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub fn listening(&self) -> bool {
        self.live().accept.is_some()
    }

    /// Close the listener (new connects are refused) and reset every open
    /// connection (SO_LINGER 0, then close); how many were reset.
    pub async fn kill(&self) -> Result<u64, String> {
        let (accept, token) = {
            let mut live = self.live();
            let Some(accept) = live.accept.take() else {
                return Err(format!("{} is not listening (killed already)", self.name));
            };
            (accept, std::mem::take(&mut live.kill))
        };
        accept.abort();
        // Dropping the aborted task drops the listener: refused from now on.
        let _ = accept.await;
        let before = self.resets.load(Ordering::SeqCst);
        token.cancel();
        let give_up = Instant::now() + KILL_WAIT;
        while self.open.load(Ordering::SeqCst) > 0 && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(self.resets.load(Ordering::SeqCst) - before)
    }

    /// Listen again on the same address.
    pub fn revive(self: &Arc<Self>) -> Result<(), String> {
        let mut live = self.live();
        if live.accept.is_some() {
            return Err(format!("{} is listening already", self.name));
        }
        let listener =
            super::bind(self.addr).map_err(|e| format!("cannot listen on {}: {e}", self.addr))?;
        live.accept = Some(tokio::spawn(accept_loop(
            listener,
            self.clone(),
            live.kill.clone(),
        )));
        Ok(())
    }

    pub fn stats(&self) -> serde_json::Value {
        json!({
            "name": self.name,
            "addr": self.addr.to_string(),
            "listening": self.listening(),
            "open": self.open.load(Ordering::Relaxed),
            "sent": self.sent.load(Ordering::Relaxed),
            "skipped": self.skipped.load(Ordering::Relaxed),
            "late": self.late.load(Ordering::Relaxed),
            "reset": self.resets.load(Ordering::Relaxed),
        })
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if args.greet {
        bail!("--greet is for echo, sink and source; every push message starts with the name");
    }
    let settings = Settings {
        size: args.size.unwrap_or(DEFAULT_SIZE),
        interval: args.interval.unwrap_or(DEFAULT_INTERVAL),
        echo: args.echo,
    };
    let names = super::names(&args);
    for name in &names {
        let need = pushmsg::min_size(name);
        if settings.size < need {
            bail!(
                "--size {} is too small for server {name}: its longest message header \
                 (\"{name}: #SEQ t=NS up Ns\" at their largest) and the newline take {need} bytes; \
                 use --size {need} or more, or a shorter --name",
                settings.size
            );
        }
    }
    let mut servers = Vec::new();
    for (name, addr) in names.iter().zip(&args.listen) {
        let listener = super::bind(*addr).with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        let server = Arc::new(PushServer {
            name: name.clone(),
            addr: local,
            settings,
            open: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            late: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            live: Mutex::new(Live {
                accept: None,
                kill: CancellationToken::new(),
            }),
        });
        servers.push((server, listener));
    }
    let control = match args.control {
        Some(addr) => {
            let l = super::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
            Some((l.local_addr()?, l))
        }
        None => None,
    };
    {
        let mut out = io::stdout().lock();
        for (s, _) in &servers {
            writeln!(out, "listening {} {}", s.name, s.addr)?;
        }
        if let Some((addr, _)) = &control {
            writeln!(out, "control {addr}")?;
        }
        out.flush()?;
    }
    let mut all = Vec::new();
    for (server, listener) in servers {
        let mut live = server.live();
        live.accept = Some(tokio::spawn(accept_loop(
            listener,
            server.clone(),
            live.kill.clone(),
        )));
        drop(live);
        all.push(server);
    }
    let exit = CancellationToken::new();
    if let Some((_, listener)) = control {
        tokio::spawn(super::control::serve(
            listener,
            Arc::new(all.clone()),
            exit.clone(),
        ));
    }
    super::until_signal(exit.cancelled_owned()).await
}

async fn accept_loop(listener: TcpListener, server: Arc<PushServer>, kill: CancellationToken) {
    let mut last_warn: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (server, kill) = (server.clone(), kill.clone());
                // Counted before the task runs, so a kill right now waits for it.
                server.open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = push_conn(stream, &server, kill).await;
                    server.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(e) => {
                let now = Instant::now();
                let quiet =
                    matches!(last_warn, Some(t) if now.duration_since(t) < Duration::from_secs(5));
                if !quiet {
                    eprintln!("ringlb-bench serve {}: accept: {e}", server.name);
                    last_warn = Some(now);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Reset: SO_LINGER 0, so the close sends RST (the client sees ECONNRESET).
fn reset(stream: TcpStream, server: &PushServer) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
    server.resets.fetch_add(1, Ordering::SeqCst);
}

/// Write as much of `buf` as the socket takes now; `Ok(n)` bytes written.
fn write_now(stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    match stream.try_write(buf) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

/// Write all of `buf`, waiting for the socket (`--echo` only).
async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        let n = write_now(stream, buf)?;
        buf = &buf[n..];
    }
    Ok(())
}

async fn push_conn(
    stream: TcpStream,
    server: &PushServer,
    kill: CancellationToken,
) -> io::Result<()> {
    let Settings {
        size,
        interval,
        echo,
    } = server.settings;
    stream.set_nodelay(true)?;
    let accepted = Instant::now();
    let mut msg = vec![0u8; size];
    // Bytes of `msg` written; `size` when nothing is pending.
    let mut off = size;
    let mut seq: u32 = 0;
    // The first message at once, the later ones at a random phase within the
    // interval: a load tool opens thousands of connections within a few
    // milliseconds, and ticks tied to the accept time would then arrive as one
    // burst a second instead of a steady stream (real clients connect at all
    // sorts of times). `base` is one interval before the first periodic tick;
    // an interval started in the past fires at once, then keeps its phase.
    let phase = interval.mul_f64(fastrand::f64());
    let base = (accepted + phase).checked_sub(interval).unwrap_or(accepted);
    let mut tick = tokio::time::interval_at(base, interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut scratch = [0u8; 256];
    loop {
        tokio::select! {
            biased;
            _ = kill.cancelled() => {
                reset(stream, server);
                return Ok(());
            }
            at = tick.tick() => {
                // The sequence number is the tick's index since the accept: a
                // tick the runtime was too late for (more than a whole interval)
                // shows as a gap too, and is counted as `late`.
                let index = (at - base).as_nanos() / interval.as_nanos().max(1);
                let Ok(index) = u32::try_from(index) else {
                    // 2^32 ticks (49 days at the shortest interval): end the connection.
                    return Ok(());
                };
                if index > seq {
                    server.late.fetch_add(u64::from(index - seq), Ordering::Relaxed);
                }
                seq = index;
                if off < size {
                    server.skipped.fetch_add(1, Ordering::Relaxed);
                } else {
                    let up_s = u32::try_from(accepted.elapsed().as_secs()).unwrap_or(u32::MAX);
                    let m = Message { name: &server.name, seq, t_ns: pushmsg::monotonic_ns(), up_s };
                    pushmsg::write(&mut msg, &m)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                    off = write_now(&stream, &msg)?;
                    if off == 0 {
                        // Socket buffer full: nothing written, skip this tick.
                        off = size;
                        server.skipped.fetch_add(1, Ordering::Relaxed);
                    } else if off == size {
                        server.sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                seq = seq.saturating_add(1);
            }
            r = stream.writable(), if off < size => {
                r?;
                off += write_now(&stream, &msg[off..])?;
                if off == size {
                    server.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            r = stream.readable() => {
                r?;
                let n = match stream.try_read(&mut scratch) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                };
                if echo {
                    // Whole messages only: finish the pending one, then the echo.
                    let fut = async {
                        write_all(&stream, &msg[off..]).await?;
                        write_all(&stream, &scratch[..n]).await
                    };
                    tokio::select! {
                        biased;
                        _ = kill.cancelled() => {
                            reset(stream, server);
                            return Ok(());
                        }
                        r = tokio::time::timeout(ECHO_STALL, fut) => {
                            match r {
                                Ok(r) => r?,
                                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading")),
                            }
                        }
                    }
                    if off < size {
                        server.sent.fetch_add(1, Ordering::Relaxed);
                        off = size;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub(crate) fn server(name: &str, size: usize, interval_ms: u64, echo: bool) -> Arc<PushServer> {
        let listener = super::super::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let s = Arc::new(PushServer {
            name: name.into(),
            addr,
            settings: Settings {
                size,
                interval: Duration::from_millis(interval_ms),
                echo,
            },
            open: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            late: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            live: Mutex::new(Live {
                accept: None,
                kill: CancellationToken::new(),
            }),
        });
        let token = s.live().kill.clone();
        s.live().accept = Some(tokio::spawn(accept_loop(listener, s.clone(), token)));
        s
    }

    #[tokio::test]
    async fn pushes_then_echoes_kills_and_revives() {
        let s = server("p", 64, 50, true);
        let mut c = TcpStream::connect(s.addr).await.expect("connect");
        let mut buf = [0u8; 64];
        let mut last = None;
        for _ in 0..3 {
            c.read_exact(&mut buf).await.expect("message");
            let m = pushmsg::parse(&buf, 64).expect("parses");
            assert_eq!(m.name, "p");
            // 0 on accept, then one more per tick (more if the runtime was late).
            match last {
                None => assert_eq!(m.seq, 0),
                Some(l) => assert!(m.seq > l, "{} after {l}", m.seq),
            }
            last = Some(m.seq);
            assert!(m.t_ns <= pushmsg::monotonic_ns());
        }
        c.write_all(b"hello\n").await.expect("write");
        // The echo comes between whole messages.
        let mut got = Vec::new();
        while !got.ends_with(b"hello\n") {
            let mut b = [0u8; 1];
            c.read_exact(&mut b).await.expect("read");
            got.push(b[0]);
        }
        assert_eq!(got.len() % 64, 6, "{}", String::from_utf8_lossy(&got));

        assert_eq!(s.kill().await, Ok(1));
        let mut rest = Vec::new();
        let e = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
            .await
            .expect("in time")
            .expect_err("reset");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        let refused = TcpStream::connect(s.addr).await.expect_err("refused");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        assert!(s.kill().await.is_err(), "killed twice");

        s.revive().expect("revive");
        assert!(s.revive().is_err(), "revived twice");
        let mut c = TcpStream::connect(s.addr).await.expect("connect again");
        c.read_exact(&mut buf).await.expect("message");
        assert_eq!(pushmsg::parse(&buf, 64).expect("parses").seq, 0);
        assert_eq!(s.stats()["open"], 1);
    }

    /// Connections accepted together push at phases spread over the interval,
    /// not in one burst: with 40 uniform phases the chance that they all fall
    /// within half the interval is about 40 / 2^39.
    #[tokio::test]
    async fn connections_opened_together_tick_at_spread_phases() {
        let interval = Duration::from_millis(400);
        let s = server("r", 64, interval.as_millis() as u64, false);
        let mut conns = Vec::new();
        for _ in 0..40 {
            conns.push(TcpStream::connect(s.addr).await.expect("connect"));
        }
        let mut offsets = Vec::new();
        for mut c in conns {
            let mut buf = [0u8; 64];
            c.read_exact(&mut buf).await.expect("first message");
            let first = pushmsg::parse(&buf, 64).expect("parses").t_ns;
            c.read_exact(&mut buf).await.expect("second message");
            let second = pushmsg::parse(&buf, 64).expect("parses").t_ns;
            offsets.push(second.saturating_sub(first));
        }
        let (lo, hi) = (offsets.iter().min().unwrap(), offsets.iter().max().unwrap());
        let interval_ns = interval.as_nanos() as u64;
        assert!(
            hi - lo > interval_ns / 2,
            "first periodic ticks {lo}..{hi} ns after the first message"
        );
        // Every tick is within one interval of the first message (plus slack).
        assert!(*hi <= interval_ns + interval_ns / 2, "{hi} ns");
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_is_skipped() {
        let s = server("q", 65_536, 10, false);
        // A small receive buffer (no autotuning), so the buffers fill soon.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let c = socket.connect(s.addr).await.expect("connect");
        // Fills its buffers, then skips ticks instead of blocking or buffering.
        let give_up = Instant::now() + Duration::from_secs(20);
        while s.skipped.load(Ordering::Relaxed) == 0 && Instant::now() < give_up {
            // Another client is served meanwhile.
            let mut other = TcpStream::connect(s.addr).await.expect("connect");
            let mut buf = vec![0u8; 65_536];
            other.read_exact(&mut buf).await.expect("served");
            assert_eq!(pushmsg::parse(&buf, 65_536).expect("parses").name, "q");
        }
        assert!(s.skipped.load(Ordering::Relaxed) > 0);
        drop(c);
    }
}
