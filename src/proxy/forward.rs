//! Moving bytes between client and node: both directions at once, half-close
//! propagated (an EOF becomes a write shutdown on the other side, not a teardown),
//! an idle timeout over both directions, live byte counts.
//!
//! Buffers exist only while bytes flow, so an idle connection holds no buffer
//! memory; bulk directions move bytes with `splice(2)` (see `splice.rs`).

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::splice;
use crate::pool::{CloseReason, ConnCtl};

/// First buffer of a direction: enough for typical messages (chat, game updates,
/// WebSocket frames) while keeping the memory of many bursty connections small.
pub const SMALL_BUFFER: usize = 4 * 1024;
/// Buffer once a direction has filled the small one in a single read.
pub const BUFFER_SIZE: usize = 32 * 1024;

/// How a forwarding session ended.
#[derive(Debug)]
pub enum End {
    /// Both sides sent EOF and every byte was delivered.
    Done,
    /// No byte moved either way for the idle timeout.
    IdleTimeout,
    /// Reading from or writing to the client failed (reset, broken pipe...).
    ClientError(io::Error),
    /// Reading from or writing to the node failed.
    NodeError(io::Error),
    /// Closed by the balancer itself, for this reason.
    Closed(CloseReason),
}

impl End {
    /// Short, stable label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            End::Done => "closed",
            End::IdleTimeout => "idle_timeout",
            End::ClientError(_) => "client_error",
            End::NodeError(_) => "node_error",
            End::Closed(reason) => reason.as_str(),
        }
    }
}

/// Bytes moved and how it ended.
#[derive(Debug)]
pub struct Outcome {
    pub to_node: u64,
    pub to_client: u64,
    pub end: End,
}

/// Counters fed while bytes move (for long-lived connections, not only at the
/// end): one plain total per direction (the node's), which status output reads
/// and the metrics catch up from when scraped. One atomic add per write.
#[derive(Debug, Clone, Copy)]
pub struct Meters<'a> {
    pub to_node: &'a AtomicU64,
    pub to_client: &'a AtomicU64,
}

#[derive(Debug, Clone, Copy)]
enum Side {
    Client,
    Node,
}

/// Logs one line for an open connection, given the bytes moved so far (to the
/// node, to the client).
pub type LogOpen<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// What the balancer watches besides the bytes: its own request to close the
/// connection, and (optionally) a log line every so often while it is open.
#[derive(Clone, Copy)]
pub struct Watch<'a> {
    /// Set by whoever closes the connection (see `pool::ConnCtl`): the node's
    /// closes, rehome, lifetime, the end of the shutdown grace.
    pub close: &'a ConnCtl,
    /// `access_log_interval` and the line to log, given the bytes moved so far
    /// (to the node, to the client).
    pub log: Option<(Duration, LogOpen<'a>)>,
}

/// Forward until both directions are finished, the idle timeout fires, an error
/// occurs, or the balancer asks the connection to close (`watch.close`).
///
/// The state is two small `Dir` structs and one timer (idle timeout and the
/// interval log share it), polled by hand in one struct rather than composed
/// from async blocks: an idle connection costs a few hundred bytes of task
/// state, not kilobytes. The close request is the connection's own atomic and
/// waker: no lock and nothing shared with other connections while bytes move.
pub fn forward<'a>(
    client: &'a TcpStream,
    node: &'a TcpStream,
    idle_timeout: Duration,
    watch: Watch<'a>,
    meters: Meters<'a>,
) -> Forwarding<'a> {
    let now = Instant::now();
    let next_log = watch.log.map(|(every, _)| now + every);
    let first = next_log.map_or(now + idle_timeout, |l| l.min(now + idle_timeout));
    Forwarding {
        client,
        node,
        up: Dir::new(Side::Client, Side::Node),
        down: Dir::new(Side::Node, Side::Client),
        seen: 0,
        quiet_since: now,
        far: true,
        idle_timeout,
        idle: tokio::time::sleep_until(first),
        armed: false,
        waker: None,
        close: watch.close,
        log: watch.log,
        next_log,
        meters,
    }
}

pin_project_lite::pin_project! {
    /// The future returned by [`forward`].
    pub struct Forwarding<'a> {
        client: &'a TcpStream,
        node: &'a TcpStream,
        up: Dir,
        down: Dir,
        // Bytes moved (both ways) when the timer last fired.
        seen: u64,
        // When a firing of the timer last saw bytes moved (or the start): the
        // quiet stretch began at most `check_step` before it.
        quiet_since: Instant,
        // The timer is armed at the idle deadline (or the next log line), not at
        // the next check: the first byte to move re-arms it at the next check.
        far: bool,
        idle_timeout: Duration,
        #[pin]
        idle: tokio::time::Sleep,
        // The timer holds `waker`: its last poll returned Pending with budget
        // left (a poll refused by tokio's cooperative budget registers nothing
        // and leaves none), and it has not been reset since.
        armed: bool,
        // The waker the close control and the timer hold, registered with both
        // on the first poll and again only if the task's waker changes. Both
        // wake it at most once per registration (a close is asked once; the
        // timer is polled again whenever it fired or was reset), so a poll
        // that only moves bytes registers nothing: two atomic read-modify-
        // writes less per wake-up.
        waker: Option<Waker>,
        close: &'a ConnCtl,
        log: Option<(Duration, LogOpen<'a>)>,
        next_log: Option<Instant>,
        meters: Meters<'a>,
    }
}

impl Future for Forwarding<'_> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut this = self.project();
        let end = 'end: {
            let fresh = !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
            let closing = if fresh {
                *this.waker = Some(cx.waker().clone());
                this.close.poll_close(cx)
            } else {
                this.close.reason()
            };
            if let Some(reason) = closing {
                break 'end End::Closed(reason);
            }
            let moved_before = this.up.bytes + this.down.bytes;
            let (client, node) = (*this.client, *this.node);
            let down_done = this.down.done;
            if let Poll::Ready(Err((side, e))) =
                this.up
                    .poll(cx, client, node, this.meters.to_node, down_done)
            {
                break 'end side.error(e);
            }
            let up_done = this.up.done;
            if let Poll::Ready(Err((side, e))) =
                this.down
                    .poll(cx, node, client, this.meters.to_client, up_done)
            {
                break 'end side.error(e);
            }
            if this.up.done && this.down.done {
                break 'end End::Done;
            }
            if *this.far && this.up.bytes + this.down.bytes != moved_before {
                // The first bytes after a quiet check: check again one step on.
                // (Later bytes read no clock and touch no timer.)
                *this.far = false;
                let at = Instant::now() + check_step(*this.idle_timeout);
                let at = this.next_log.map_or(at, |l| l.min(at));
                this.idle.as_mut().reset(at);
                *this.armed = false;
            }
            // The timer checks; bytes moving only advance counters. It is polled
            // (and so given the waker) when it fired, was reset, or the waker
            // is new; otherwise it still holds the waker of its last poll.
            if *this.armed && !fresh && !this.idle.is_elapsed() {
                return Poll::Pending;
            }
            while this.idle.as_mut().poll(cx).is_ready() {
                let now = Instant::now();
                let moved = this.up.bytes + this.down.bytes;
                let mut next = if moved != *this.seen {
                    *this.seen = moved;
                    *this.quiet_since = now;
                    *this.far = false;
                    now + check_step(*this.idle_timeout)
                } else {
                    let deadline = *this.quiet_since + *this.idle_timeout;
                    if now >= deadline {
                        break 'end End::IdleTimeout;
                    }
                    *this.far = true;
                    deadline
                };
                if let (Some((every, log)), Some(at)) = (*this.log, this.next_log.as_mut()) {
                    if now >= *at {
                        log(this.up.bytes, this.down.bytes);
                        while *at <= now {
                            *at += every;
                        }
                    }
                    next = next.min(*at);
                }
                this.idle.as_mut().reset(next);
            }
            *this.armed = tokio::task::coop::has_budget_remaining();
            return Poll::Pending;
        };
        // Pipes still held are returned or dropped here.
        this.up.finish();
        this.down.finish();
        Poll::Ready(Outcome {
            to_node: this.up.bytes,
            to_client: this.down.bytes,
            end,
        })
    }
}

/// How often the idle timer checks a connection that is moving bytes. Moving
/// bytes reads no clock and re-arms no timer: a check that finds bytes moved
/// since the previous one starts the quiet stretch then, so a connection is
/// closed between `idle_timeout` and `idle_timeout + idle_timeout / 8` after its
/// last byte, never before. A quiet connection's timer sits at its deadline.
fn check_step(idle_timeout: Duration) -> Duration {
    idle_timeout / 8
}

/// Read once from `from` with `op` (which reads at most `want` bytes). A short
/// read (fewer bytes than asked) means the socket is drained: tokio's readiness
/// is cleared as if the read had returned `WouldBlock`, so the next read waits for
/// the next readiness event instead of spending a syscall that fails with EAGAIN
/// (HAProxy does the same). Tokio clears only the readiness it saw before the
/// call, and never the read-closed state, so an event that arrives meanwhile
/// (more data, a FIN) is not lost.
pub(crate) fn read_once(
    from: &TcpStream,
    want: usize,
    op: impl FnOnce() -> io::Result<usize>,
) -> io::Result<usize> {
    let mut short = 0;
    match from.try_io(Interest::READABLE, || {
        let n = op()?;
        if n > 0 && n < want {
            short = n;
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    }) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => Ok(short),
        r => r,
    }
}

/// `recv(2)` and `send(2)` as plain system calls (rustix), not through libc's
/// wrappers: those are thread-cancellation points that switch the cancellation
/// state around every call, which a profile of keep-alive traffic showed as
/// about a tenth of ringlb's user-space time.
fn recv(from: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    Ok(rustix::net::recv(from, buf, rustix::net::RecvFlags::empty())?.0)
}

/// Write once to a socket tokio reports writable (see [`recv`]); `WouldBlock`
/// clears the readiness, as `TcpStream::try_write` does.
pub(crate) fn write_once(to: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    to.try_io(Interest::WRITABLE, || {
        Ok(rustix::net::send(
            to,
            buf,
            rustix::net::SendFlags::NOSIGNAL,
        )?)
    })
}

/// Per-thread caches of forwarding buffers, so a connection that sends a message
/// now and then does not allocate and zero a buffer for each one. Bounded: at
/// most [`buffers::KEEP`] buffers of each size per worker thread.
mod buffers {
    use std::cell::RefCell;

    use super::{BUFFER_SIZE, SMALL_BUFFER};

    pub const KEEP: usize = 64;

    thread_local! {
        static SMALL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
        static LARGE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    }

    fn with<R>(size: usize, f: impl FnOnce(&mut Vec<Box<[u8]>>) -> R) -> Option<R> {
        let cache = match size {
            SMALL_BUFFER => &SMALL,
            BUFFER_SIZE => &LARGE,
            _ => return None,
        };
        cache.try_with(|c| f(&mut c.borrow_mut())).ok()
    }

    pub fn get(size: usize) -> Box<[u8]> {
        with(size, |c| c.pop())
            .flatten()
            .unwrap_or_else(|| vec![0u8; size].into_boxed_slice())
    }

    pub fn put(b: Box<[u8]>) {
        let size = b.len();
        let mut b = Some(b);
        with(size, |c| {
            if c.len() < KEEP {
                c.extend(b.take());
            }
        });
    }
}

impl Side {
    fn error(self, e: io::Error) -> End {
        match self {
            Side::Client => End::ClientError(e),
            Side::Node => End::NodeError(e),
        }
    }
}

/// One direction: read from one socket, write everything to the other; on EOF
/// shut down the write side of the other and finish (half-close).
///
/// Small messages are copied through a buffer that exists only while bytes are
/// flowing (it is freed as soon as the source has nothing more to read, so an idle
/// connection holds none). Once a read fills the whole buffer the direction carries
/// bulk data and switches to `splice(2)` through a pooled pipe (Linux), falling
/// back to the copy whenever no pipe is free.
#[derive(Debug)]
struct Dir {
    from_side: Side,
    to_side: Side,
    /// Present only while bytes flow.
    buf: Option<Box<[u8]>>,
    pipe: Option<splice::Pipe>,
    /// Bytes read and not yet written (in `buf[off..off + pending]` or the pipe).
    pending: u32,
    off: u32,
    in_pipe: bool,
    /// Reads filled the small buffer: use the large one.
    big: bool,
    /// Reads filled the large buffer: splice.
    bulk: bool,
    done: bool,
    bytes: u64,
}

type DirResult = Result<(), (Side, io::Error)>;

impl Dir {
    fn new(from_side: Side, to_side: Side) -> Dir {
        Dir {
            from_side,
            to_side,
            buf: None,
            pipe: None,
            pending: 0,
            off: 0,
            in_pipe: false,
            big: false,
            bulk: false,
            done: false,
            bytes: 0,
        }
    }

    /// `other_done`: the opposite direction already ended, so this EOF ends the
    /// connection.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        to: &TcpStream,
        meter: &AtomicU64,
        other_done: bool,
    ) -> Poll<DirResult> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Write what was read.
            while self.pending > 0 {
                let r = match (&self.pipe, &self.buf) {
                    (Some(p), _) if self.in_pipe => splice::drain(p, to, self.pending as usize),
                    (_, Some(b)) => {
                        let (off, end) = (self.off as usize, (self.off + self.pending) as usize);
                        write_once(to, &b[off..end])
                    }
                    _ => unreachable!("pending bytes are in the pipe or the buffer"),
                };
                match r {
                    Ok(k) => {
                        self.pending -= k as u32;
                        self.off += k as u32;
                        self.bytes += k as u64;
                        meter.fetch_add(k as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if let Err(e) = ready!(to.poll_write_ready(cx)) {
                            return Poll::Ready(Err((self.to_side, e)));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Poll::Ready(Err((self.to_side, e))),
                }
            }
            // Read more: splice for bulk, copy otherwise.
            let use_splice = self.bulk && splice::enabled() && {
                if self.pipe.is_none() {
                    self.pipe = splice::acquire();
                }
                self.pipe.is_some()
            };
            let r = match (&self.pipe, &mut self.buf) {
                (Some(p), _) if use_splice => splice::fill(from, p),
                (_, buf) => {
                    let size = if self.big { BUFFER_SIZE } else { SMALL_BUFFER };
                    if buf.as_ref().is_some_and(|b| b.len() != size) {
                        if let Some(b) = buf.take() {
                            buffers::put(b);
                        }
                    }
                    let b = buf.get_or_insert_with(|| buffers::get(size));
                    read_once(from, b.len(), || recv(from, b))
                }
            };
            match r {
                Ok(0) => {
                    self.done = true;
                    self.release();
                    // EOF: half-close towards the other side; the other direction
                    // keeps running. If that direction already ended, both sockets
                    // are closed next, and a close with nothing unread sends the
                    // same FIN (`to` read its EOF and holds no unread bytes): one
                    // syscall less per connection.
                    if other_done {
                        return Poll::Ready(Ok(()));
                    }
                    return match SockRef::from(to).shutdown(Shutdown::Write) {
                        Ok(()) => Poll::Ready(Ok(())),
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
                        Err(e) => Poll::Ready(Err((self.to_side, e))),
                    };
                }
                Ok(n) => {
                    if !use_splice && n == SMALL_BUFFER {
                        self.big = true;
                    }
                    if !use_splice && n == BUFFER_SIZE {
                        self.bulk = true;
                    }
                    self.pending = n as u32;
                    self.off = 0;
                    self.in_pipe = use_splice;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Nothing to read now: hold no buffer and no pipe while waiting.
                    self.release();
                    if let Err(e) = ready!(from.poll_read_ready(cx)) {
                        return Poll::Ready(Err((self.from_side, e)));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if use_splice && splice::is_unsupported(&e) => {
                    splice::disable(&e);
                    if let Some(p) = self.pipe.take() {
                        splice::discard(p);
                    }
                }
                Err(e) => return Poll::Ready(Err((self.from_side, e))),
            }
        }
    }

    /// Give back the buffer and the (empty) pipe.
    fn release(&mut self) {
        if let Some(b) = self.buf.take() {
            buffers::put(b);
        }
        if let Some(p) = self.pipe.take() {
            splice::release(p);
        }
    }

    /// At the end: an empty pipe goes back to the pool, one with bytes is dropped.
    fn finish(&mut self) {
        if let Some(b) = self.buf.take() {
            buffers::put(b);
        }
        if let Some(p) = self.pipe.take() {
            if self.in_pipe && self.pending > 0 {
                splice::discard(p);
            } else {
                splice::release(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forwarding without an interval log, both directions counted in `total`.
    fn plain<'a>(
        client: &'a TcpStream,
        node: &'a TcpStream,
        idle: Duration,
        ctl: &'a ConnCtl,
        total: &'a AtomicU64,
    ) -> Forwarding<'a> {
        let watch = Watch {
            close: ctl,
            log: None,
        };
        let meters = Meters {
            to_node: total,
            to_client: total,
        };
        forward(client, node, idle, watch, meters)
    }

    async fn pair(l: &tokio::net::TcpListener) -> (TcpStream, TcpStream) {
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// A connection that keeps moving bytes is never closed by the idle timer,
    /// however its bytes fall relative to the checks; once quiet it is closed
    /// no sooner than `idle_timeout` after its last byte and at most one check
    /// step (an eighth) later, plus scheduling slack.
    #[tokio::test]
    async fn idle_timeout_counts_from_the_last_byte_within_one_check_step() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let idle = Duration::from_millis(400);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut client, client_side) = pair(&l).await;
        let (node, mut node_peer) = pair(&l).await;
        let task = tokio::spawn(async move {
            let ctl = ConnCtl::default();
            let total = AtomicU64::new(0);
            let out = plain(&client_side, &node, idle, &ctl, &total).await;
            (out.end.as_str(), out.to_node, out.to_client)
        });
        // 1.5 s of traffic at uneven gaps, every one shorter than the timeout,
        // alternating directions.
        let mut last = Instant::now();
        let mut buf = [0u8; 1];
        for (i, gap) in [30u64, 350, 10, 390, 120, 250, 380, 5]
            .iter()
            .cycle()
            .take(8)
            .enumerate()
        {
            tokio::time::sleep(Duration::from_millis(*gap)).await;
            if i % 2 == 0 {
                client.write_all(b"x").await.unwrap();
                node_peer.read_exact(&mut buf).await.unwrap();
            } else {
                node_peer.write_all(b"y").await.unwrap();
                client.read_exact(&mut buf).await.unwrap();
            }
            last = Instant::now();
        }
        // Now quiet: the client sees EOF when the balancer closes.
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap();
        let after = last.elapsed();
        assert_eq!(n, 0);
        let (end, to_node, to_client) = task.await.unwrap();
        assert_eq!((end, to_node, to_client), ("idle_timeout", 4, 4));
        assert!(after >= idle, "closed {after:?} after the last byte");
        let slack = Duration::from_millis(300);
        assert!(
            after <= idle + check_step(idle) + slack,
            "closed {after:?} after the last byte (timeout {idle:?})"
        );
    }

    /// The timer keeps the waker between polls, so a poll that moves bytes
    /// does not register it again. A first poll made when tokio's cooperative
    /// budget is spent registers nothing: the idle timeout must still fire
    /// (the timer is polled again, not taken as armed).
    #[tokio::test]
    async fn the_idle_timer_fires_after_a_poll_refused_by_the_budget() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (_client, client_side) = pair(&l).await;
        let (node, _node_peer) = pair(&l).await;
        let ctl = ConnCtl::default();
        let total = AtomicU64::new(0);
        let idle = Duration::from_millis(200);
        let mut f = std::pin::pin!(plain(&client_side, &node, idle, &ctl, &total));
        let started = Instant::now();
        let mut polls = 0u32;
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            std::future::poll_fn(|cx| {
                polls += 1;
                if polls == 1 {
                    // Spend the task's whole budget before the first poll.
                    while tokio::task::coop::has_budget_remaining() {
                        match tokio::task::coop::poll_proceed(cx) {
                            Poll::Ready(c) => c.made_progress(),
                            Poll::Pending => break,
                        }
                    }
                    assert!(!tokio::task::coop::has_budget_remaining());
                }
                f.as_mut().poll(cx)
            }),
        )
        .await
        .expect("the idle timeout fired");
        assert_eq!(out.end.as_str(), "idle_timeout");
        assert!(started.elapsed() >= idle);
    }

    /// A close asked while the connection waits is seen, though the close
    /// control was registered only on the first poll.
    #[tokio::test]
    async fn a_close_wakes_a_waiting_connection_registered_once() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut client, client_side) = pair(&l).await;
        let (node, mut node_peer) = pair(&l).await;
        let ctl = std::sync::Arc::new(ConnCtl::default());
        let ctl2 = ctl.clone();
        let task = tokio::spawn(async move {
            let total = AtomicU64::new(0);
            let out = plain(&client_side, &node, Duration::from_secs(60), &ctl2, &total).await;
            out.end.as_str()
        });
        // Several wake-ups that only move bytes, then a close.
        let mut buf = [0u8; 3];
        for _ in 0..5 {
            client.write_all(b"abc").await.unwrap();
            node_peer.read_exact(&mut buf).await.unwrap();
        }
        assert!(ctl.close(CloseReason::Rehome));
        let end = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("closed in time")
            .unwrap();
        assert_eq!(end, "rehome");
    }

    /// The forwarding state is what every open connection keeps for its lifetime:
    /// keep it small (it was 2 KiB as composed async blocks).
    #[test]
    fn forward_state_stays_small() {
        fn size_of_future<F: Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let s = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let ctl = ConnCtl::default();
            let total = AtomicU64::new(0);
            let f = plain(&s, &s, Duration::from_secs(1), &ctl, &total);
            let size = size_of_future(&f);
            eprintln!("forward state: {size} bytes");
            assert!(size <= 512, "forward state is {size} bytes");
            assert!(
                std::mem::size_of::<Dir>() <= 64,
                "{}",
                std::mem::size_of::<Dir>()
            );
        });
    }
}
