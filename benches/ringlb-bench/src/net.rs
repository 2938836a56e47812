//! Sockets on loopback: source-IP ranges, bounded connects and waits, error counting.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpSocket, TcpStream};

/// An IPv4 range inside 127.0.0.0/8, written `127.1.0.0/16` (or one address).
///
/// Its usable addresses are the ones whose last byte is neither 0 nor 255, in
/// ascending order; [`Cidr::nth`] gives the i-th of them without a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    base: u32,
    prefix: u8,
}

impl Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Cidr, String> {
        if !(8..=32).contains(&prefix) {
            return Err(format!(
                "prefix /{prefix} is out of range /8 to /32 (127.0.0.0/8 at most)"
            ));
        }
        let base = u32::from(addr);
        let mask = Self::mask(prefix);
        if base & !mask != 0 {
            return Err(format!(
                "{addr}/{prefix} has host bits set; did you mean {}/{prefix}?",
                Ipv4Addr::from(base & mask)
            ));
        }
        if addr.octets()[0] != 127 {
            return Err(format!(
                "{addr}/{prefix} is not inside 127.0.0.0/8; ringlb-bench only uses loopback addresses"
            ));
        }
        let c = Cidr { base, prefix };
        if c.usable() == 0 {
            return Err(format!(
                "{addr}/{prefix} has no usable address (host bytes .0 and .255 are skipped)"
            ));
        }
        Ok(c)
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// For ranges smaller than a /24: the first and last usable last byte.
    fn small_bounds(&self) -> (u64, u64) {
        let low = u64::from(self.base & 0xff);
        let lo = low.max(1);
        let hi = (low + self.size() - 1).min(254);
        (lo, hi)
    }

    /// Number of usable addresses.
    pub fn usable(&self) -> u64 {
        if self.prefix <= 24 {
            self.size() / 256 * 254
        } else {
            let (lo, hi) = self.small_bounds();
            if hi >= lo {
                hi - lo + 1
            } else {
                0
            }
        }
    }

    /// The `i`-th usable address (wrapping around past the end).
    pub fn nth(&self, i: u64) -> Ipv4Addr {
        let i = i % self.usable().max(1);
        let base = u64::from(self.base);
        let addr = if self.prefix <= 24 {
            base + (i / 254) * 256 + (i % 254) + 1
        } else {
            let (lo, _) = self.small_bounds();
            (base & !0xff) + lo + i
        };
        // Always inside the range, which is inside 127.0.0.0/8.
        Ipv4Addr::from(u32::try_from(addr).unwrap_or(self.base))
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => {
                let p: u8 = p
                    .parse()
                    .map_err(|_| format!("{s:?}: bad prefix length {p:?}"))?;
                (ip, p)
            }
            None => (s, 32),
        };
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 CIDR such as 127.1.0.0/16"))?;
        Cidr::new(ip, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// Hands out the usable addresses of a [`Cidr`] round-robin, from any task.
#[derive(Debug)]
pub struct SourceIps {
    cidr: Cidr,
    next: AtomicU64,
}

impl SourceIps {
    pub fn new(cidr: Cidr) -> SourceIps {
        SourceIps {
            cidr,
            next: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> Ipv4Addr {
        self.cidr.nth(self.next.fetch_add(1, Ordering::Relaxed))
    }
}

fn timed_out(what: &str, after: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "{what} timed out after {}",
            humantime::format_duration(after)
        ),
    )
}

/// Run `fut`, failing with `TimedOut` after `after`.
pub async fn bounded<T>(
    what: &str,
    after: Duration,
    fut: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r,
        Err(_) => Err(timed_out(what, after)),
    }
}

/// An operation of several steps, failed with `what` and its error.
pub type StepResult<T> = Result<T, (&'static str, io::Error)>;

/// Bound a whole multi-step operation (connect, greeting, request, reply) by one
/// timeout, so no operation outlives `after` however its steps are bounded.
pub async fn within<T>(
    after: Duration,
    what: &'static str,
    fut: impl Future<Output = StepResult<T>>,
) -> StepResult<T> {
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r,
        Err(_) => Err((what, timed_out(what, after))),
    }
}

/// Connect to `target` from `src` (port chosen by the kernel), with TCP_NODELAY.
pub async fn connect_from(
    src: Ipv4Addr,
    target: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((src, 0)))?;
    let stream = bounded("connect", timeout, socket.connect(target)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Read one line (up to `max` bytes, without the newline), byte by byte so nothing
/// after it is consumed.
pub async fn read_line<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> io::Result<String> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        if r.read(&mut b).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a full line",
            ));
        }
        if b[0] == b'\n' {
            break;
        }
        if line.len() >= max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("line longer than {max} bytes"),
            ));
        }
        line.push(b[0]);
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8"))
}

/// A short name for an I/O error, used as a counter key.
pub fn error_kind(e: &io::Error) -> &'static str {
    use io::ErrorKind as K;
    if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE) {
        return "too many open files";
    }
    match e.kind() {
        K::ConnectionRefused => "refused",
        K::TimedOut => "timeout",
        K::ConnectionReset => "reset",
        K::ConnectionAborted => "aborted",
        K::BrokenPipe => "broken pipe",
        K::UnexpectedEof => "closed early",
        K::AddrNotAvailable => "address not available",
        K::AddrInUse => "address in use",
        K::InvalidData => "protocol",
        _ => "other",
    }
}

/// Counts errors by `"what: kind"` and keeps the first message of each key.
#[derive(Debug, Default)]
pub struct Errors {
    inner: Mutex<BTreeMap<String, (u64, String)>>,
}

impl Errors {
    pub fn record(&self, key: impl Into<String>, message: impl fmt::Display) {
        self.record_n(key, 1, message);
    }

    pub fn record_n(&self, key: impl Into<String>, n: u64, message: impl fmt::Display) {
        if n == 0 {
            return;
        }
        let mut map = match self.inner.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let entry = map
            .entry(key.into())
            .or_insert_with(|| (0, message.to_string()));
        entry.0 += n;
    }

    pub fn io(&self, what: &str, e: &io::Error) {
        self.record(format!("{what}: {}", error_kind(e)), e);
    }

    pub fn total(&self) -> u64 {
        self.snapshot().values().map(|(n, _)| n).sum()
    }

    /// key -> (count, first message)
    pub fn snapshot(&self) -> BTreeMap<String, (u64, String)> {
        match self.inner.lock() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(c: &Cidr) -> Vec<Ipv4Addr> {
        (0..c.usable()).map(|i| c.nth(i)).collect()
    }

    #[test]
    fn parses_and_rejects() {
        let c: Cidr = "127.1.0.0/16".parse().expect("valid");
        assert_eq!(c.to_string(), "127.1.0.0/16");
        assert_eq!(c.usable(), 256 * 254);
        assert!("10.0.0.0/8".parse::<Cidr>().is_err());
        assert!("127.1.0.1/16"
            .parse::<Cidr>()
            .unwrap_err()
            .contains("did you mean 127.1.0.0/16"));
        assert!("127.0.0.0/7".parse::<Cidr>().is_err());
        assert!("127.0.0.0/33".parse::<Cidr>().is_err());
        assert!("127.0.0.0/x".parse::<Cidr>().is_err());
        assert!("banana".parse::<Cidr>().is_err());
        assert!("127.0.0.255/32".parse::<Cidr>().is_err());
        assert!("127.0.0.0/32".parse::<Cidr>().is_err());
        assert!("127.0.0.254/31".parse::<Cidr>().is_ok());
        let one: Cidr = "127.3.4.5".parse().expect("single address");
        assert_eq!(all(&one), vec![Ipv4Addr::new(127, 3, 4, 5)]);
    }

    #[test]
    fn iterates_skipping_0_and_255() {
        let c: Cidr = "127.1.0.0/23".parse().expect("valid");
        let v = all(&c);
        assert_eq!(v.len(), 508);
        assert_eq!(v[0], Ipv4Addr::new(127, 1, 0, 1));
        assert_eq!(v[253], Ipv4Addr::new(127, 1, 0, 254));
        assert_eq!(v[254], Ipv4Addr::new(127, 1, 1, 1));
        assert_eq!(v[507], Ipv4Addr::new(127, 1, 1, 254));
        assert!(v.iter().all(|a| a.octets()[3] != 0 && a.octets()[3] != 255));
        let mut sorted = v.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, v, "ascending and distinct");
        // wraps around
        assert_eq!(c.nth(508), Ipv4Addr::new(127, 1, 0, 1));
    }

    #[test]
    fn small_ranges() {
        let c: Cidr = "127.0.0.0/30".parse().expect("valid");
        assert_eq!(
            all(&c),
            vec![
                Ipv4Addr::new(127, 0, 0, 1),
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 3)
            ]
        );
        let c: Cidr = "127.0.0.252/30".parse().expect("valid");
        assert_eq!(all(&c).len(), 3);
        assert_eq!(c.nth(2), Ipv4Addr::new(127, 0, 0, 254));
        let c: Cidr = "127.0.0.128/25".parse().expect("valid");
        assert_eq!(c.usable(), 127);
        let c: Cidr = "127.0.0.0/8".parse().expect("valid");
        assert_eq!(c.usable(), 65536 * 254);
        assert_eq!(c.nth(c.usable() - 1), Ipv4Addr::new(127, 255, 255, 254));
    }

    #[test]
    fn round_robin() {
        let s = SourceIps::new("127.0.0.0/30".parse().expect("valid"));
        let got: Vec<u8> = (0..5).map(|_| s.next().octets()[3]).collect();
        assert_eq!(got, vec![1, 2, 3, 1, 2]);
    }

    #[test]
    fn errors_count_by_key() {
        let e = Errors::default();
        e.io(
            "connect",
            &io::Error::from(io::ErrorKind::ConnectionRefused),
        );
        e.io(
            "connect",
            &io::Error::from(io::ErrorKind::ConnectionRefused),
        );
        e.record("echo", "mismatch");
        assert_eq!(e.total(), 3);
        assert_eq!(e.snapshot()["connect: refused"].0, 2);
    }

    #[tokio::test]
    async fn reads_lines() {
        let mut data: &[u8] = b"node-a\r\nrest";
        assert_eq!(read_line(&mut data, 100).await.expect("line"), "node-a");
        assert_eq!(data, b"rest");
        let mut data: &[u8] = b"no newline";
        assert!(read_line(&mut data, 100).await.is_err());
        let mut data: &[u8] = b"toolong\n";
        assert!(read_line(&mut data, 3).await.is_err());
    }
}
