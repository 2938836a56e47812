//! Zero-copy forwarding with `splice(2)` (Linux): socket → pipe → socket, so bulk
//! bytes never pass through user space. No `unsafe` here: `nix` wraps the calls.
//!
//! Pipes cost two descriptors each, and descriptors are the scarcest resource of
//! a balancer holding tens of thousands of connections. So a pipe is taken from a
//! small process-wide pool only while bytes are in flight in one direction, and
//! given back (empty) as soon as the source socket has nothing more to read. At
//! most [`max_pipes()`] exist; when none is free the direction copies through a
//! buffer instead, as it does for small messages (see `forward.rs`).
//!
//! `RINGLB_SPLICE=off` turns splicing off (the plain copy is always available). If
//! the kernel refuses `splice` for these sockets (EINVAL, ENOSYS), it is turned off
//! for the process and logged once.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Most pipes in existence (in use or pooled), 2 descriptors each: 256, or fewer
/// when the descriptor limit is small (at most 1/20 of the descriptors go to
/// pipes, so a balancer at its connection limit is never starved by its pipes).
pub const MAX_PIPES: usize = 256;
/// Requested pipe capacity; the kernel default (64 KiB) if refused.
pub const PIPE_SIZE: usize = 256 * 1024;

/// A pipe that holds no bytes when it is in the pool.
#[derive(Debug)]
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    capacity: u32,
}

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());
static EXISTING: AtomicUsize = AtomicUsize::new(0);
static DISABLED: AtomicBool = AtomicBool::new(false);
static ENV: OnceLock<bool> = OnceLock::new();
static LIMIT: OnceLock<usize> = OnceLock::new();

/// The pipe cap for this process (see [`MAX_PIPES`]).
pub fn max_pipes() -> usize {
    *LIMIT.get_or_init(|| {
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft as usize);
        MAX_PIPES.min(nofile / 40)
    })
}

/// Whether splicing is on for this process.
pub fn enabled() -> bool {
    let env_on = *ENV.get_or_init(|| {
        !matches!(
            std::env::var("RINGLB_SPLICE").as_deref(),
            Ok("off" | "0" | "false" | "no")
        )
    });
    env_on && !DISABLED.load(Ordering::Relaxed)
}

/// Turn splicing off for the process after the kernel refused it.
pub fn disable(e: &io::Error) {
    if !DISABLED.swap(true, Ordering::Relaxed) {
        tracing::warn!(error = %e, "splice(2) refused by the kernel; forwarding with a plain copy from now on");
    }
}

/// Pipes in existence (pooled or in use).
pub fn pipes_in_existence() -> usize {
    EXISTING.load(Ordering::Relaxed)
}

/// Pipes waiting in the pool (empty, not in use).
pub fn pipes_pooled() -> usize {
    POOL.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// Take a pipe from the pool, or make one while under [`MAX_PIPES`].
pub fn acquire() -> Option<Pipe> {
    if let Some(p) = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop() {
        return Some(p);
    }
    if EXISTING.fetch_add(1, Ordering::Relaxed) >= max_pipes() {
        EXISTING.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    match nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC) {
        Ok((r, w)) => {
            let capacity = fcntl(w.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32))
                .map(|c| c as u32)
                .unwrap_or(64 * 1024);
            Some(Pipe { r, w, capacity })
        }
        Err(_) => {
            EXISTING.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }
}

/// Give an empty pipe back to the pool.
pub fn release(p: Pipe) {
    POOL.lock().unwrap_or_else(|e| e.into_inner()).push(p);
}

/// Drop a pipe that may still hold bytes (the connection failed mid-transfer).
pub fn discard(p: Pipe) {
    drop(p);
    EXISTING.fetch_sub(1, Ordering::Relaxed);
}

fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
}

/// Move up to the pipe's capacity from a readable socket into the empty pipe.
/// `Ok(0)` is end of stream; `WouldBlock` means nothing to read now.
///
/// Unlike a copy read, a short splice does not mean the socket is drained (it
/// stops at the pipe's slot count, which counts packets, not bytes), so
/// readiness is only cleared on `WouldBlock`.
pub fn fill(from: &TcpStream, p: &Pipe) -> io::Result<usize> {
    from.try_io(Interest::READABLE, || {
        splice(from, None, &p.w, None, p.capacity as usize, flags()).map_err(io::Error::from)
    })
}

/// Move up to `len` bytes from the pipe into a writable socket.
pub fn drain(p: &Pipe, to: &TcpStream, len: usize) -> io::Result<usize> {
    to.try_io(Interest::WRITABLE, || {
        splice(&p.r, None, to, None, len, flags()).map_err(io::Error::from)
    })
}

/// Errors that mean "splice cannot work here", not "this connection failed".
pub fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS))
}
