//! `ringlb-bench serve`: echo, sink, source, http and push backends on loopback
//! (push, with its control socket, in [`push`] and [`control`]).

mod control;
pub(crate) mod push;

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{ServeArgs, ServeKind};
use crate::http;

/// I/O buffer per active connection (allocated on the first byte, so idle
/// connections hold none).
const BUF: usize = 64 * 1024;
/// `source`: a client that takes no byte for this long is dropped.
const SOURCE_STALL: Duration = Duration::from_secs(10);
const BACKLOG: i32 = 4096;

struct Server {
    name: String,
    kind: ServeKind,
    greet: bool,
    pattern: Arc<Vec<u8>>,
}

/// The server names: NAME alone, or NAME-0, NAME-1, ... with several --listen.
fn names(args: &ServeArgs) -> Vec<String> {
    if args.listen.len() == 1 {
        vec![args.name.clone()]
    } else {
        (0..args.listen.len())
            .map(|i| format!("{}-{i}", args.name))
            .collect()
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if args.kind == ServeKind::Push {
        return push::run(args).await;
    }
    if args.size.is_some() || args.interval.is_some() || args.echo || args.control.is_some() {
        bail!("--size, --interval, --echo and --control are for `serve push` only");
    }
    if args.greet && args.kind == ServeKind::Http {
        bail!("--greet is for echo, sink and source; an http backend cannot greet");
    }
    let names = names(&args);
    let pattern: Arc<Vec<u8>> = Arc::new((0..BUF).map(|i| b'a' + (i % 26) as u8).collect());

    let mut bound = Vec::new();
    for (name, addr) in names.iter().zip(&args.listen) {
        let listener = bind(*addr).with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        bound.push((name.clone(), local, listener));
    }
    {
        let mut out = io::stdout().lock();
        for (name, local, _) in &bound {
            writeln!(out, "listening {name} {local}")?;
        }
        out.flush()?;
    }
    for (name, _, listener) in bound {
        let server = Arc::new(Server {
            name,
            kind: args.kind,
            greet: args.greet,
            pattern: pattern.clone(),
        });
        tokio::spawn(accept_loop(listener, server));
    }

    until_signal(std::future::pending()).await
}

/// Wait for SIGTERM, SIGINT or `other`, then exit 0.
async fn until_signal(other: impl std::future::Future<Output = ()>) -> anyhow::Result<ExitCode> {
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = other => {}
    }
    Ok(ExitCode::SUCCESS)
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(listener: TcpListener, server: Arc<Server>) {
    let mut last_warn: Option<tokio::time::Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let server = server.clone();
                tokio::spawn(async move {
                    // Errors end the connection; a backend has nobody to tell.
                    let _ = handle(stream, &server).await;
                });
            }
            Err(e) => {
                let now = tokio::time::Instant::now();
                let quiet =
                    matches!(last_warn, Some(t) if now.duration_since(t) < Duration::from_secs(5));
                if !quiet {
                    eprintln!("ringlb-bench serve {}: accept: {e}", server.name);
                    last_warn = Some(now);
                }
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn handle(mut stream: TcpStream, server: &Server) -> io::Result<()> {
    stream.set_nodelay(true)?;
    if server.greet {
        let line = format!("{}\n", server.name);
        stream.write_all(line.as_bytes()).await?;
    }
    match server.kind {
        ServeKind::Echo => echo(stream).await,
        ServeKind::Sink => sink(stream).await,
        ServeKind::Source => source(stream, &server.pattern).await,
        ServeKind::Http => http_conn(stream, &server.name).await,
        // Served by `push`, never through here.
        ServeKind::Push => Ok(()),
    }
}

async fn echo(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = Buffer::default();
    loop {
        let n = buf.read(&mut stream).await?;
        if n == 0 {
            stream.shutdown().await?;
            return Ok(());
        }
        stream.write_all(&buf.data[..n]).await?;
    }
}

async fn sink(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = Buffer::default();
    let mut total: u64 = 0;
    loop {
        let n = buf.read(&mut stream).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    stream.write_all(format!("{total}\n").as_bytes()).await?;
    stream.shutdown().await
}

/// A read buffer that is allocated only once bytes (or EOF) arrive, starts small
/// and grows to [`BUF`] while reads fill it, so idle connections, and the burst
/// of EOFs when thousands of them close at once, cost little memory.
#[derive(Default)]
struct Buffer {
    data: Vec<u8>,
}

impl Buffer {
    const FIRST: usize = 4 * 1024;

    async fn read(&mut self, stream: &mut TcpStream) -> io::Result<usize> {
        if self.data.is_empty() {
            // Wait for a byte or EOF without taking it (readiness alone can be
            // reported early), then allocate.
            let mut probe = [0u8; 1];
            stream.peek(&mut probe).await?;
            self.data = vec![0u8; Self::FIRST];
        }
        let n = stream.read(&mut self.data).await?;
        if n == self.data.len() && n < BUF {
            self.data.resize((n * 4).min(BUF), 0);
        }
        Ok(n)
    }
}

async fn source(mut stream: TcpStream, pattern: &[u8]) -> io::Result<()> {
    let (mut rd, mut wr) = stream.split();
    let mut scratch = [0u8; 512];
    let mut off = 0usize;
    loop {
        tokio::select! {
            r = rd.read(&mut scratch) => {
                // EOF or error from the client: it is gone or done.
                if r? == 0 {
                    return Ok(());
                }
            }
            w = tokio::time::timeout(SOURCE_STALL, wr.write(&pattern[off..])) => {
                match w {
                    Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading")),
                    Ok(Err(e)) => return Err(e),
                    Ok(Ok(0)) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                    Ok(Ok(n)) => off = (off + n) % pattern.len(),
                }
            }
        }
    }
}

async fn http_conn(mut stream: TcpStream, name: &str) -> io::Result<()> {
    let ok_body = format!("{name}\n");
    let health_body = format!("ok {name}\n");
    let mut buf: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    // Body bytes of the current request still to be skipped.
    let mut skip: u64 = 0;
    loop {
        // Answer every complete request in the buffer, then write once.
        let mut close = false;
        loop {
            if skip > 0 {
                let n = (skip.min(buf.len() as u64)) as usize;
                buf.drain(..n);
                skip -= n as u64;
                if skip > 0 {
                    break;
                }
            }
            match http::parse_request(&buf) {
                Ok(None) => break,
                Ok(Some(req)) => {
                    buf.drain(..req.head_len);
                    if req.framing.chunked {
                        http::write_response(
                            &mut out,
                            "501 Not Implemented",
                            name,
                            "chunked request bodies are not supported\n",
                            true,
                            true,
                        );
                        close = true;
                        break;
                    }
                    skip = req.framing.content_length.unwrap_or(0);
                    let keep = req.keep_alive();
                    let path = req.path.split('?').next().unwrap_or_default();
                    let body = if path == "/healthcheck" {
                        &health_body
                    } else {
                        &ok_body
                    };
                    http::write_response(
                        &mut out,
                        "200 OK",
                        name,
                        body,
                        req.method != "HEAD",
                        !keep,
                    );
                    if !keep {
                        close = true;
                        break;
                    }
                }
                Err(e) => {
                    http::write_response(
                        &mut out,
                        "400 Bad Request",
                        name,
                        &format!("{e}\n"),
                        true,
                        true,
                    );
                    close = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if close {
            return stream.shutdown().await;
        }
        if buf.is_empty() {
            // Between requests: hold no buffer while waiting.
            buf = Vec::new();
            let mut probe = [0u8; 1];
            stream.peek(&mut probe).await?;
        }
        let old = buf.len();
        buf.resize(old + 4 * 1024, 0);
        let n = stream.read(&mut buf[old..]).await?;
        buf.truncate(old + n);
        if n == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start(kind: ServeKind, greet: bool) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server = Arc::new(Server {
            name: "t".into(),
            kind,
            greet,
            pattern: Arc::new(b"abc".to_vec()),
        });
        tokio::spawn(accept_loop(listener, server));
        addr
    }

    async fn exchange(addr: SocketAddr, send: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(send).await.expect("write");
        s.shutdown().await.expect("shutdown");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("in time")
            .expect("read");
        out
    }

    #[tokio::test]
    async fn echo_sink_source() {
        let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let echo = start(ServeKind::Echo, true).await;
        let mut want = b"t\n".to_vec();
        want.extend_from_slice(&big);
        assert_eq!(
            exchange(echo, &big).await,
            want,
            "greeting, then every byte, then EOF"
        );

        let sink = start(ServeKind::Sink, false).await;
        assert_eq!(exchange(sink, &big).await, b"300000\n");

        let source = start(ServeKind::Source, false).await;
        let mut s = TcpStream::connect(source).await.expect("connect");
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"abcabca");
    }

    #[tokio::test]
    async fn http_keep_alive_and_close() {
        let addr = start(ServeKind::Http, false).await;
        let req = b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /healthcheck HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n";
        let out = exchange(addr, req).await;
        let mut rest: &[u8] = &out;
        let mut bodies = Vec::new();
        while !rest.is_empty() {
            let head = http::parse_response(rest)
                .expect("valid")
                .expect("complete");
            assert_eq!(head.status, 200);
            let len = head.body_len(false).expect("framed") as usize;
            bodies.push(
                String::from_utf8_lossy(&rest[head.head_len..head.head_len + len]).to_string(),
            );
            rest = &rest[head.head_len + len..];
        }
        assert_eq!(bodies, vec!["t\n", "ok t\n", "t\n"]);
        let bad = exchange(addr, b"nonsense\r\n\r\n").await;
        assert!(
            bad.starts_with(b"HTTP/1.1 400 "),
            "{}",
            String::from_utf8_lossy(&bad)
        );
    }
}
