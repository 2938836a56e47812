//! The message of `serve push`, written by the server and parsed by `load fanout`
//! and `load storm`: exactly `size` bytes, the server's name first, a
//! CLOCK_MONOTONIC timestamp taken just before the write, spaces, then `\n`:
//!
//! ```text
//! node-a: #12 t=183746529384756 up 12s                            \n
//! ```
//!
//! `#SEQ` counts the connection's ticks from 0 (the message on accept), so a gap
//! means a tick the server skipped because the client was not reading; `up` is the
//! whole seconds since the accept ("you have been connected for N seconds").
//! Compact on purpose: with a 20-digit timestamp the header must fit 64 bytes.

use std::fmt;
use std::io::Write as _;

/// Largest `--size`.
pub const MAX_SIZE: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub name: &'a str,
    pub seq: u32,
    /// CLOCK_MONOTONIC nanoseconds just before the server wrote it.
    pub t_ns: u64,
    pub up_s: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// The header does not fit `size - 1` bytes.
    TooLong {
        header: usize,
        size: usize,
    },
    WrongSize {
        got: usize,
        want: usize,
    },
    NoNewline,
    NotText,
    Malformed(&'static str),
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::TooLong { header, size } => write!(
                f,
                "a {header}-byte header and its newline do not fit a {size}-byte message"
            ),
            MessageError::WrongSize { got, want } => {
                write!(f, "message is {got} bytes, expected {want}")
            }
            MessageError::NoNewline => write!(f, "message does not end in a newline"),
            MessageError::NotText => write!(f, "message is not ASCII text"),
            MessageError::Malformed(what) => write!(f, "malformed message: {what}"),
        }
    }
}

impl std::error::Error for MessageError {}

/// Length of the longest header a server named `name` can write (largest
/// sequence number, timestamp and age), without padding and newline.
pub fn longest_header(name: &str) -> usize {
    header_len(name, u32::MAX, u64::MAX, u32::MAX)
}

fn header_len(name: &str, seq: u32, t_ns: u64, up_s: u32) -> usize {
    // "NAME: #SEQ t=T up Ns"
    name.len() + 3 + digits(u64::from(seq)) + 3 + digits(t_ns) + 4 + digits(u64::from(up_s)) + 1
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Smallest `size` for a server named `name`.
pub fn min_size(name: &str) -> usize {
    longest_header(name) + 1
}

/// Write one message into all of `buf` (its length is the message size).
pub fn write(buf: &mut [u8], m: &Message<'_>) -> Result<(), MessageError> {
    let size = buf.len();
    let header = header_len(m.name, m.seq, m.t_ns, m.up_s);
    if size == 0 || header > size - 1 {
        return Err(MessageError::TooLong { header, size });
    }
    let mut cursor: &mut [u8] = &mut buf[..size - 1];
    write!(cursor, "{}: #{} t={} up {}s", m.name, m.seq, m.t_ns, m.up_s)
        .map_err(|_| MessageError::TooLong { header, size })?;
    buf[header..size - 1].fill(b' ');
    buf[size - 1] = b'\n';
    Ok(())
}

/// Parse one message of exactly `size` bytes.
pub fn parse(buf: &[u8], size: usize) -> Result<Message<'_>, MessageError> {
    if buf.len() != size {
        return Err(MessageError::WrongSize {
            got: buf.len(),
            want: size,
        });
    }
    let Some((&b'\n', body)) = buf.split_last() else {
        return Err(MessageError::NoNewline);
    };
    let text = std::str::from_utf8(body).map_err(|_| MessageError::NotText)?;
    if !text.is_ascii() || text.contains('\n') {
        return Err(MessageError::NotText);
    }
    let text = text.trim_end_matches(' ');
    let (name, rest) = text
        .split_once(": #")
        .ok_or(MessageError::Malformed("no \"NAME: #\""))?;
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(MessageError::Malformed("bad server name"));
    }
    let mut f = rest.split(' ');
    let (Some(seq), Some(t), Some("up"), Some(up), None) =
        (f.next(), f.next(), f.next(), f.next(), f.next())
    else {
        return Err(MessageError::Malformed("not \"#SEQ t=NS up Ns\""));
    };
    let seq = number(seq).ok_or(MessageError::Malformed("bad #SEQ"))?;
    let t_ns = t
        .strip_prefix("t=")
        .and_then(number)
        .ok_or(MessageError::Malformed("bad t="))?;
    let up_s = up
        .strip_suffix('s')
        .and_then(number)
        .ok_or(MessageError::Malformed("bad up Ns"))?;
    Ok(Message {
        name,
        seq: u32::try_from(seq).map_err(|_| MessageError::Malformed("#SEQ out of range"))?,
        t_ns,
        up_s: u32::try_from(up_s).map_err(|_| MessageError::Malformed("up out of range"))?,
    })
}

/// Digits only (no sign, no spaces), as u64.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// CLOCK_MONOTONIC in nanoseconds: system-wide on Linux, so two processes can
/// compare readings.
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = Message {
            name: "node-a",
            seq: 12,
            t_ns: 183_746_529_384_756,
            up_s: 12,
        };
        let mut buf = vec![0u8; 64];
        write(&mut buf, &m).expect("fits");
        assert_eq!(buf.len(), 64);
        assert!(buf.starts_with(b"node-a: #12 t=183746529384756 up 12s "));
        assert_eq!(buf[63], b'\n');
        assert_eq!(parse(&buf, 64), Ok(m));

        // The largest values still fit the smallest size, and parse back.
        let big = Message {
            name: "backend-0",
            seq: u32::MAX,
            t_ns: u64::MAX,
            up_s: u32::MAX,
        };
        let size = min_size("backend-0");
        assert_eq!(size, longest_header("backend-0") + 1);
        let mut buf = vec![0u8; size];
        write(&mut buf, &big).expect("fits exactly");
        assert_eq!(parse(&buf, size), Ok(big));
        assert!(size <= 64, "the default size fits names up to 12 bytes");
        assert_eq!(min_size("node-a-bcdefg"), 65);
        let mut small = vec![0u8; size - 1];
        assert!(matches!(
            write(&mut small, &big),
            Err(MessageError::TooLong { .. })
        ));
    }

    #[test]
    fn rejects_garbage() {
        let mut good = vec![0u8; 64];
        let m = Message {
            name: "n",
            seq: 1,
            t_ns: 2,
            up_s: 3,
        };
        write(&mut good, &m).expect("fits");
        assert!(matches!(
            parse(&good[..63], 64),
            Err(MessageError::WrongSize { .. })
        ));
        let mut no_nl = good.clone();
        no_nl[63] = b' ';
        assert_eq!(parse(&no_nl, 64), Err(MessageError::NoNewline));
        for bad in [
            "n #1 t=2 up 3s",
            ": #1 t=2 up 3s",
            "n: #x t=2 up 3s",
            "n: #1 t=-2 up 3s",
            "n: #1 t=2 up 3",
            "n: #1 t=2 down 3s",
            "n: #1 t=2 up 3s extra",
            "n: #1  t=2 up 3s",
            "n: #99999999999 t=2 up 3s",
            "n: #1 t=99999999999999999999999 up 3s",
            "a\tb: #1 t=2 up 3s",
        ] {
            let mut buf = vec![b' '; 64];
            buf[..bad.len()].copy_from_slice(bad.as_bytes());
            buf[63] = b'\n';
            assert!(parse(&buf, 64).is_err(), "{bad:?}");
        }
        let mut inner_nl = good.clone();
        inner_nl[40] = b'\n';
        assert_eq!(parse(&inner_nl, 64), Err(MessageError::NotText));
        let mut bin = good.clone();
        bin[40] = 0xff;
        assert_eq!(parse(&bin, 64), Err(MessageError::NotText));
    }

    #[test]
    fn monotonic_is_monotonic() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}
