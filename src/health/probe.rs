//! One health probe against one address, bounded by `health.timeout`: a TCP
//! connect, or an HTTP/1.1 `GET` whose status and, with `expect_body`, body are
//! checked.
//!
//! The HTTP response is parsed with `httparse`: the status line and headers as a
//! [`httparse::Response`] (interim `1xx` heads are skipped), then the body framed
//! as RFC 9112 section 6.3 says: `Transfer-Encoding` ending in `chunked` is decoded
//! chunk by chunk (chunk extensions tolerated; the probe stops at the last chunk,
//! so trailers are never read), any other `Transfer-Encoding` or no framing reads
//! until the server closes, else `Content-Length` bytes are read. `expect_body` is
//! matched against the decoded body. Everything read from the socket, framing
//! included, is bounded by [`MAX_RESPONSE`].
//!
//! Must not: touch the pool or the hysteresis state (it only returns a
//! [`ProbeOutcome`]), read past [`MAX_RESPONSE`], or run past `health.timeout`.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::state::ProbeOutcome;
use crate::config::{fmt_duration, HealthConfig, HealthKind};

/// The most of a response an HTTP probe reads (status line, headers and body,
/// chunk framing included). A body still going on there is judged on what was read.
pub const MAX_RESPONSE: usize = 64 * 1024;

/// The most header lines a response head may have.
const MAX_HEADERS: usize = 100;

/// Where a node is probed: its address, or the same IP on `health.port`.
pub fn probe_addr(node_addr: SocketAddr, h: &HealthConfig) -> SocketAddr {
    match h.port {
        Some(p) => SocketAddr::new(node_addr.ip(), p),
        None => node_addr,
    }
}

/// Run one probe against `addr`, bounded by `h.timeout`.
pub async fn probe(addr: SocketAddr, h: &HealthConfig) -> ProbeOutcome {
    let start = Instant::now();
    let result = tokio::time::timeout(h.timeout, async {
        match h.kind {
            HealthKind::Http => http_probe(addr, h).await,
            HealthKind::Tcp | HealthKind::None => tcp_probe(addr).await,
        }
    })
    .await;
    let (ok, detail) = match result {
        Ok(Ok(detail)) => (true, detail),
        Ok(Err(detail)) => (false, detail),
        Err(_) => (false, format!("timeout after {}", fmt_duration(h.timeout))),
    };
    ProbeOutcome {
        ok,
        detail,
        latency: start.elapsed(),
    }
}

fn connect_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect refused".to_string(),
        _ => format!("connect: {e}"),
    }
}

async fn tcp_probe(addr: SocketAddr) -> Result<String, String> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| connect_error(&e))?;
    drop(s);
    Ok("tcp connect ok".to_string())
}

async fn http_probe(addr: SocketAddr, h: &HealthConfig) -> Result<String, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| connect_error(&e))?;
    let host = h.host.clone().unwrap_or_else(|| addr.to_string());
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringlb-health\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        h.path
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut wire = Wire {
        stream: s,
        buf: Vec::with_capacity(4096),
    };
    let (head, body_at) = read_head(&mut wire).await?;
    let status = head.status;
    if !h.expect_status.contains(status) {
        return Err(format!("http {status}"));
    }
    if h.expect_body.is_empty() {
        return Ok(format!("http {status}"));
    }
    let body = read_body(&mut wire, head.framing, body_at)
        .await
        .map_err(|e| format!("http {status}, {e}"))?;
    let needle = h.expect_body.as_bytes();
    if !body.bytes.windows(needle.len()).any(|w| w == needle) {
        return Err(if body.complete {
            format!("http {status}, body lacks {:?}", h.expect_body)
        } else {
            format!(
                "http {status}, body lacks {:?} in the first {} KiB of the response",
                h.expect_body,
                MAX_RESPONSE / 1024
            )
        });
    }
    Ok(format!("http {status}"))
}

/// The probe's connection and every byte read from it (at most [`MAX_RESPONSE`]).
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// What one [`Wire::fill`] got.
enum Filled {
    More,
    Eof,
    /// [`MAX_RESPONSE`] bytes read: the probe reads no further.
    Full,
}

impl Wire {
    async fn fill(&mut self) -> Result<Filled, String> {
        let room = MAX_RESPONSE.saturating_sub(self.buf.len());
        if room == 0 {
            return Ok(Filled::Full);
        }
        let mut chunk = [0u8; 4096];
        let want = room.min(chunk.len());
        let n = self
            .stream
            .read(&mut chunk[..want])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Ok(Filled::Eof);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(Filled::More)
    }
}

/// Read up to the end of the final response head; returns it and where its body
/// starts in `w.buf`. Interim heads (`1xx` but `101`) are skipped.
async fn read_head(w: &mut Wire) -> Result<(Head, usize), String> {
    let mut start = 0;
    loop {
        if let Some((head, len)) = parse_head(&w.buf[start..])? {
            if (100..200).contains(&head.status) && head.status != 101 {
                start += len;
                continue;
            }
            return Ok((head, start + len));
        }
        match w.fill().await? {
            Filled::More => {}
            Filled::Eof => {
                let rest = &w.buf[start..];
                return Err(if w.buf.is_empty() {
                    "closed before answering".to_string()
                } else if !rest.contains(&b'\n') {
                    "no HTTP status line".to_string()
                } else {
                    "closed inside the response head".to_string()
                });
            }
            Filled::Full => return Err(format!("response head over {} KiB", MAX_RESPONSE / 1024)),
        }
    }
}

/// What the probe needs of a response head.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    status: u16,
    /// How the body is delimited, or why that cannot be told (reported only
    /// when the body is checked).
    framing: Result<Framing, String>,
}

/// How a response body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `Content-Length` bytes (`0` for `1xx`, `204` and `304`).
    Length(u64),
    Chunked,
    /// Until the server closes.
    UntilClose,
}

/// Parse a response head at the start of `buf`: `Ok(None)` while it is
/// incomplete, then the head and its length in bytes.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let parsed = httparse::ParserConfig::default()
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .ignore_invalid_headers_in_responses(true)
        .parse_response(&mut resp, buf);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::Version) => {
            return Err(format!("no HTTP status line (got {:?})", first_line(buf)))
        }
        Err(httparse::Error::Status) => {
            return Err(format!("bad HTTP status line {:?}", first_line(buf)))
        }
        Err(e) => return Err(format!("bad HTTP response head: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    if !(100..=599).contains(&status) {
        return Err(format!("bad HTTP status line {:?}", first_line(buf)));
    }
    let framing = framing(status, resp.headers);
    Ok(Some((Head { status, framing }, len)))
}

/// The body's framing from the status and the headers (RFC 9112 section 6.3):
/// none for `1xx`, `204` and `304`; a `Transfer-Encoding` overrides any
/// `Content-Length` and means chunked when `chunked` is its last coding, else
/// "until close"; `Content-Length` values must all agree.
fn framing(status: u16, headers: &[httparse::Header<'_>]) -> Result<Framing, String> {
    if status < 200 || status == 204 || status == 304 {
        return Ok(Framing::Length(0));
    }
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(|v| v.trim_ascii())
    };
    if headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
    {
        let last = named("transfer-encoding").rfind(|v| !v.is_empty());
        return Ok(match last {
            Some(c) if c.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            _ => Framing::UntilClose,
        });
    }
    let mut length = None;
    for v in named("content-length") {
        let n = std::str::from_utf8(v)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok());
        match (n, length) {
            (Some(n), None) => length = Some(n),
            (Some(n), Some(l)) if n == l => {}
            _ => {
                return Err(format!(
                    "bad Content-Length {:?}",
                    truncate(&String::from_utf8_lossy(v), 40)
                ))
            }
        }
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// A response body as far as the probe read it.
struct Body {
    bytes: Vec<u8>,
    /// False when the probe stopped at [`MAX_RESPONSE`] before the body's end.
    complete: bool,
}

/// Read and decode the body that starts at `at` in `w.buf`.
async fn read_body(
    w: &mut Wire,
    framing: Result<Framing, String>,
    mut at: usize,
) -> Result<Body, String> {
    let mut dec = Decoder::new(framing?);
    loop {
        at += dec.feed(&w.buf[at..])?;
        if dec.is_done() {
            break;
        }
        match w.fill().await? {
            Filled::More => {}
            Filled::Eof => {
                dec.finish()?;
                break;
            }
            Filled::Full => {
                return Ok(Body {
                    bytes: dec.body,
                    complete: false,
                })
            }
        }
    }
    Ok(Body {
        bytes: dec.body,
        complete: true,
    })
}

/// Where a [`Decoder`] is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// This many bytes of a `Content-Length` body still to come.
    Length(u64),
    /// Everything until the server closes.
    UntilClose,
    /// A chunk-size line (with any chunk extensions) comes next.
    ChunkSize,
    /// This many bytes of chunk data still to come.
    ChunkData(u64),
    /// The CRLF after a chunk's data comes next.
    ChunkEnd,
    /// The body is complete (after the last chunk, trailers are not read).
    Done,
}

/// Decodes a body from the bytes fed to it as they arrive. Pure: no I/O.
#[derive(Debug)]
struct Decoder {
    part: Part,
    body: Vec<u8>,
}

impl Decoder {
    fn new(framing: Framing) -> Decoder {
        let part = match framing {
            Framing::Length(n) => Part::Length(n),
            Framing::Chunked => Part::ChunkSize,
            Framing::UntilClose => Part::UntilClose,
        };
        Decoder {
            part,
            body: Vec::new(),
        }
    }

    /// Decode what it can of `input`; returns how many bytes it used. Bytes it
    /// did not use are the start of something it needs whole (a chunk-size line,
    /// a CRLF): feed them again with more after them.
    fn feed(&mut self, input: &[u8]) -> Result<usize, String> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            self.part = match self.part {
                Part::Done => return Ok(used),
                Part::UntilClose => {
                    self.body.extend_from_slice(rest);
                    return Ok(input.len());
                }
                Part::Length(n) | Part::ChunkData(n) => {
                    let take = self.data(n, rest);
                    used += take;
                    let left = n - take as u64;
                    let chunk = matches!(self.part, Part::ChunkData(_));
                    if left > 0 {
                        self.part = if chunk {
                            Part::ChunkData(left)
                        } else {
                            Part::Length(left)
                        };
                        return Ok(used);
                    }
                    if chunk {
                        Part::ChunkEnd
                    } else {
                        Part::Done
                    }
                }
                Part::ChunkSize => match rest.first() {
                    None => return Ok(used),
                    Some(b) if !b.is_ascii_hexdigit() => return Err(bad_chunk_size(rest)),
                    Some(_) => match httparse::parse_chunk_size(rest) {
                        Ok(httparse::Status::Complete((len, size))) => {
                            used += len;
                            if size == 0 {
                                Part::Done
                            } else {
                                Part::ChunkData(size)
                            }
                        }
                        Ok(httparse::Status::Partial) => return Ok(used),
                        Err(httparse::InvalidChunkSize) => return Err(bad_chunk_size(rest)),
                    },
                },
                Part::ChunkEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        used += 2;
                        Part::ChunkSize
                    }
                    [] | [b'\r'] => return Ok(used),
                    _ => return Err("chunk data not followed by CRLF".to_string()),
                },
            };
        }
    }

    /// Take up to `n` bytes of body data from `rest`; returns how many it took.
    fn data(&mut self, n: u64, rest: &[u8]) -> usize {
        let take = usize::try_from(n).map_or(rest.len(), |n| n.min(rest.len()));
        self.body.extend_from_slice(&rest[..take]);
        take
    }

    fn is_done(&self) -> bool {
        self.part == Part::Done
    }

    /// The server closed: fine where the body may end, an error inside it.
    fn finish(&self) -> Result<(), String> {
        match self.part {
            Part::Done | Part::UntilClose => Ok(()),
            Part::Length(n) => Err(format!(
                "body ended early (closed {n} bytes short of its Content-Length)"
            )),
            Part::ChunkSize | Part::ChunkData(_) | Part::ChunkEnd => {
                Err("chunked body ended early (closed before its last chunk)".to_string())
            }
        }
    }
}

fn bad_chunk_size(rest: &[u8]) -> String {
    format!("bad chunk size line {:?}", first_line(rest))
}

/// The first line of `buf` (without its line end), at most 40 characters, for
/// messages.
fn first_line(buf: &[u8]) -> String {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    truncate(&String::from_utf8_lossy(line), 40)
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpListener;

    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
    const TEXT: &str = "all systems go";

    fn http(expect_body: &str) -> HealthConfig {
        HealthConfig {
            kind: HealthKind::Http,
            expect_body: expect_body.to_string(),
            timeout: Duration::from_secs(5),
            ..HealthConfig::default()
        }
    }

    /// Read one request head from `s`; false if the client went away first.
    async fn read_request(s: &mut TcpStream) -> bool {
        let mut head = Vec::new();
        let mut b = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&b[..n]),
            }
        }
        true
    }

    /// A loopback HTTP endpoint on 127.0.0.1:0: for each connection it reads the
    /// request head, writes `pieces` (one write each, 1 ms apart, no Nagle, so they
    /// arrive as separate reads), then closes.
    async fn serve(pieces: Vec<Vec<u8>>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let pieces = pieces.clone();
                tokio::spawn(async move {
                    let _ = s.set_nodelay(true);
                    if !read_request(&mut s).await {
                        return;
                    }
                    for p in pieces {
                        if s.write_all(&p).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    let _ = s.shutdown().await;
                });
            }
        });
        addr
    }

    /// Probe an endpoint that answers `pieces`.
    async fn check(expect_body: &str, pieces: &[&[u8]]) -> ProbeOutcome {
        let addr = serve(pieces.iter().map(|p| p.to_vec()).collect()).await;
        probe(addr, &http(expect_body)).await
    }

    fn down(o: &ProbeOutcome) -> &str {
        assert!(!o.ok, "up: {o:?}");
        &o.detail
    }

    fn up(o: &ProbeOutcome) {
        assert!(o.ok, "down: {o:?}");
        assert_eq!(o.detail, "http 200");
    }

    #[tokio::test]
    async fn chunked_body_with_the_text_split_across_two_chunks_is_up() {
        up(&check(
            TEXT,
            &[CHUNKED, b"7\r\nall sys\r\n", b"7\r\ntems go\r\n0\r\n\r\n"],
        )
        .await);
        // Chunk extensions and trailers are tolerated.
        up(&check(
            TEXT,
            &[
                CHUNKED,
                b"7;name=\"v\"\r\nall sys\r\n7 ; x\r\ntems go\r\n",
                b"0\r\nX-Checked: 1\r\n\r\n",
            ],
        )
        .await);
        // The text across a chunk-size line is found only in the decoded body.
        up(&check("s go", &[CHUNKED, b"1\r\ns\r\n3\r\n go\r\n0\r\n\r\n"]).await);
    }

    #[tokio::test]
    async fn chunked_body_without_the_text_is_down() {
        let o = check(
            TEXT,
            &[CHUNKED, b"7\r\nall sys\r\n", b"9\r\ntems down\r\n0\r\n\r\n"],
        )
        .await;
        assert_eq!(down(&o), "http 200, body lacks \"all systems go\"");
        // Nor is the text found in the chunk framing or after the last chunk.
        let o = check("3\r\nabc", &[CHUNKED, b"3\r\nabc\r\n0\r\n\r\n"]).await;
        assert_eq!(down(&o), "http 200, body lacks \"3\\r\\nabc\"");
        let o = check(TEXT, &[CHUNKED, b"2\r\nok\r\n0\r\n\r\nall systems go"]).await;
        assert_eq!(down(&o), "http 200, body lacks \"all systems go\"");
    }

    #[tokio::test]
    async fn content_length_body_is_read_to_its_length_only() {
        up(&check(
            TEXT,
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nall systems go"],
        )
        .await);
        up(&check(
            TEXT,
            &[
                b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 14\r\n\r\n",
                b"all systems",
                b" go",
            ],
        )
        .await);
        // Bytes past Content-Length are not the body.
        let o = check(
            TEXT,
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nall systems go"],
        )
        .await;
        assert_eq!(down(&o), "http 200, body lacks \"all systems go\"");
        // Transfer-Encoding overrides Content-Length.
        up(&check(
            TEXT,
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\ne\r\nall systems go\r\n0\r\n\r\n"],
        )
        .await);
        // No framing: the body runs until the server closes.
        up(&check(TEXT, &[b"HTTP/1.0 200 OK\r\n\r\nall sys", b"tems go"]).await);
        let o = check(
            TEXT,
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nall systems go"],
        )
        .await;
        assert_eq!(
            down(&o),
            "http 200, body ended early (closed 6 bytes short of its Content-Length)"
        );
        let o = check(TEXT, &[b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\nContent-Length: 15\r\n\r\nall systems go"]).await;
        assert_eq!(down(&o), "http 200, bad Content-Length \"15\"");
        // A 204 has no body, whatever it says.
        let h = http(TEXT);
        assert!(h.expect_status.contains(204));
        let addr = serve(vec![
            b"HTTP/1.1 204 No Content\r\nContent-Length: 14\r\n\r\nall systems go".to_vec(),
        ])
        .await;
        let o = probe(addr, &h).await;
        assert_eq!(down(&o), "http 204, body lacks \"all systems go\"");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_judged_on_the_first_64_kib() {
        let big = |text_at_start: bool| {
            let mut body = vec![b'x'; 200 * 1024];
            let at = if text_at_start {
                0
            } else {
                body.len() - TEXT.len()
            };
            body[at..at + TEXT.len()].copy_from_slice(TEXT.as_bytes());
            let mut r =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            r.extend_from_slice(&body);
            r
        };
        up(&check(TEXT, &[&big(true)]).await);
        let o = check(TEXT, &[&big(false)]).await;
        assert_eq!(
            down(&o),
            "http 200, body lacks \"all systems go\" in the first 64 KiB of the response"
        );
        // A chunked body that never ends stops at the limit, long before the timeout.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            if !read_request(&mut s).await || s.write_all(CHUNKED).await.is_err() {
                return;
            }
            let chunk = [b"1000\r\n".as_slice(), &[b'x'; 4096], b"\r\n"].concat();
            for _ in 0..10_000 {
                if s.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let o = probe(addr, &http(TEXT)).await;
        assert!(
            down(&o).ends_with("in the first 64 KiB of the response"),
            "{o:?}"
        );
        assert!(o.latency < Duration::from_secs(2), "{o:?}");
        // A head that does not fit is refused.
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..70 {
            head.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "p".repeat(1024)).as_bytes());
        }
        let o = check("", &[&head]).await;
        assert_eq!(down(&o), "response head over 64 KiB");
    }

    #[tokio::test]
    async fn malformed_chunked_bodies_are_down_with_the_reason() {
        let cases: [(&[u8], &str); 6] = [
            (
                b"zz\r\nall systems go\r\n0\r\n\r\n",
                "bad chunk size line \"zz\"",
            ),
            (
                b"-e\r\nall systems go\r\n0\r\n\r\n",
                "bad chunk size line \"-e\"",
            ),
            (
                b"\r\nall systems go\r\n0\r\n\r\n",
                "bad chunk size line \"\"",
            ),
            (
                b"ffffffffffffffffff\r\n",
                "bad chunk size line \"ffffffffffffffffff\"",
            ),
            (
                b"7\r\nall systems go\r\n0\r\n\r\n",
                "chunk data not followed by CRLF",
            ),
            (
                b"e\r\nall systems go\r\n",
                "chunked body ended early (closed before its last chunk)",
            ),
        ];
        for (body, why) in cases {
            let o = check(TEXT, &[CHUNKED, body]).await;
            assert_eq!(down(&o), format!("http 200, {why}"));
        }
    }

    #[tokio::test]
    async fn a_response_split_across_many_small_writes_is_read_whole() {
        let chunked = [
            CHUNKED,
            b"7\r\nall sys\r\n7;x=y\r\ntems go\r\n0\r\nT: 1\r\n\r\n",
        ]
        .concat();
        let bytes: Vec<&[u8]> = chunked.chunks(1).collect();
        up(&check(TEXT, &bytes).await);
        let interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nall systems go";
        let threes: Vec<&[u8]> = interim.chunks(3).collect();
        up(&check(TEXT, &threes).await);
    }

    #[tokio::test]
    async fn existing_outcomes_keep_their_words() {
        let o = check("", &[b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]).await;
        up(&o);
        let o = check(
            "",
            &[b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 12\r\n\r\noverloaded\r\n"],
        )
        .await;
        assert_eq!(down(&o), "http 503");
        let o = check(TEXT, &[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]).await;
        assert_eq!(down(&o), "http 200, body lacks \"all systems go\"");
        assert_eq!(down(&check("", &[]).await), "closed before answering");
        assert_eq!(
            down(&check("", &[b"HTTP/1.1 20"]).await),
            "no HTTP status line"
        );
        assert_eq!(
            down(&check("", &[b"SSH-2.0-OpenSSH_9.6\r\n"]).await),
            "no HTTP status line (got \"SSH-2.0-OpenSSH_9.6\")"
        );
        assert_eq!(
            down(&check("", &[b"HTTP/1.1 20x OK\r\n\r\n"]).await),
            "bad HTTP status line \"HTTP/1.1 20x OK\""
        );
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        assert_eq!(down(&probe(addr, &http("")).await), "connect refused");
    }

    #[test]
    fn status_lines() {
        let status = |head: &[u8]| parse_head(head).map(|h| h.map(|(h, _)| h.status));
        assert_eq!(status(b"HTTP/1.1 200 OK\r\n\r\n"), Ok(Some(200)));
        assert_eq!(
            status(b"HTTP/1.0 503 Service Unavailable\r\n\r\n"),
            Ok(Some(503))
        );
        assert_eq!(
            status(b"HTTP/1.1 200 OK\r\nServer: x"),
            Ok(None),
            "incomplete"
        );
        assert!(status(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(status(b"HTTP/1.1 20x OK\r\n\r\n").is_err());
        assert!(status(b"HTTP/1.1 999 OK\r\n\r\n").is_err());
        let head = parse_head(b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 12\r\n\r\n");
        assert_eq!(head.unwrap().unwrap().0.framing, Ok(Framing::Length(12)));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |head: &str| parse_head(head.as_bytes()).unwrap().unwrap().0.framing;
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"
            ),
            Ok(Framing::UntilClose),
            "chunked is not the last coding"
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n"),
            Err("bad Content-Length \"+5\"".to_string())
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), Ok(Framing::UntilClose));
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
            Ok(Framing::Length(0))
        );
    }

    #[test]
    fn the_decoder_gives_one_body_however_the_bytes_arrive() {
        let wire = b"7;x=1\r\nall sys\r\n7\r\ntems go\r\n0\r\nTrailer: t\r\n\r\n";
        // Feed the wire as a socket would: what the decoder did not use is fed
        // again with the bytes that follow it.
        let decode = |cuts: &[usize]| {
            let mut dec = Decoder::new(Framing::Chunked);
            let mut at = 0;
            for &end in cuts.iter().chain([wire.len()].iter()) {
                at += dec.feed(&wire[at..end]).unwrap();
            }
            assert!(dec.is_done(), "{cuts:?}");
            dec.body
        };
        assert_eq!(decode(&[]), TEXT.as_bytes());
        for cut in 0..wire.len() {
            assert_eq!(decode(&[cut]), TEXT.as_bytes(), "cut at {cut}");
        }
        let every: Vec<usize> = (1..wire.len()).collect();
        assert_eq!(decode(&every), TEXT.as_bytes());
        let mut dec = Decoder::new(Framing::Length(4));
        assert_eq!(dec.feed(b"ab").unwrap(), 2);
        assert_eq!(dec.feed(b"cdef").unwrap(), 2);
        assert!(dec.is_done());
        assert_eq!(dec.body, b"abcd");
    }
}
