//! Small backends that name themselves, for `ringlb demo` and for tests.
//!
//! * [`Mode::Greet`]: on connect, send one line `"<name>\n"`, then echo every byte;
//!   on EOF from the client, finish sending and close the write side (half-close).
//! * [`Mode::Demo`]: if the client speaks HTTP first (within a short wait), answer
//!   one HTTP/1.1 response naming the backend; otherwise greet and echo as above,
//!   so `nc` shows the greeting at once.
//! * [`Mode::Http`]: HTTP only, answered at once (a health endpoint on its own port).
//!
//! HTTP paths: `GET /healthcheck` answers the backend's health status (200 `ok`, or
//! 503 `overloaded` after [`Backend::set_healthy`]`(false)`); `GET /health/down`
//! and `GET /health/up` flip it (what the demo tells newcomers to `curl`); any
//! other path answers 200 `hello from <name>`. Requests are parsed with `httparse`;
//! one it refuses answers 400 `bad request`.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a demo backend waits for an HTTP request before greeting.
const SNIFF_WAIT: Duration = Duration::from_millis(150);
/// Longest HTTP request head a demo backend reads.
const MAX_HEAD: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Greet,
    Demo,
    Http,
}

/// A running backend; stops (and closes its connections) on [`Backend::stop`] or drop.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    /// Bind `addr` (port 0 picks one) and serve in the background.
    pub async fn start(name: &str, addr: SocketAddr, mode: Mode) -> io::Result<Backend> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::from_listener(name, listener, mode))
    }

    /// Serve on an already bound listener.
    pub fn from_listener(name: &str, listener: TcpListener, mode: Mode) -> Backend {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let stop = CancellationToken::new();
        let healthy = Arc::new(AtomicBool::new(true));
        let shared = Arc::new(Shared {
            name: name.to_string(),
            healthy: healthy.clone(),
        });
        let task = tokio::spawn(serve(listener, shared, mode, stop.clone()));
        Backend {
            name: name.to_string(),
            addr,
            healthy,
            stop,
            task: Some(task),
        }
    }

    /// What `GET /healthcheck` answers from now on: 200 when healthy, 503 when not.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// A handle that flips this backend's health from elsewhere.
    pub fn health_switch(&self) -> HealthSwitch {
        HealthSwitch(self.healthy.clone())
    }

    /// Close the listening socket and every open connection; wait until done.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Flips what a [`Backend`]'s `/healthcheck` answers.
#[derive(Debug, Clone)]
pub struct HealthSwitch(Arc<AtomicBool>);

impl HealthSwitch {
    pub fn set(&self, healthy: bool) {
        self.0.store(healthy, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Shared {
    name: String,
    healthy: Arc<AtomicBool>,
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, mode: Mode, stop: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let Ok((stream, _peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let shared = shared.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = connection(stream, &shared, mode) => {}
            }
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

async fn connection(mut stream: TcpStream, shared: &Shared, mode: Mode) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let name = shared.name.as_str();
    let mut first = Vec::new();
    if mode == Mode::Http {
        return http(stream, first, shared).await;
    }
    if mode == Mode::Demo {
        let mut buf = vec![0u8; MAX_HEAD];
        if let Ok(r) = tokio::time::timeout(SNIFF_WAIT, stream.read(&mut buf)).await {
            let n = r?;
            first.extend_from_slice(&buf[..n]);
            if looks_like_http(&first) {
                return http(stream, first, shared).await;
            }
            if n == 0 {
                // Client closed without sending: greet anyway, then close.
                stream.write_all(format!("{name}\n").as_bytes()).await?;
                return stream.shutdown().await;
            }
        }
    }
    stream.write_all(format!("{name}\n").as_bytes()).await?;
    stream.write_all(&first).await?;
    let (mut rd, mut wr) = stream.split();
    tokio::io::copy(&mut rd, &mut wr).await?;
    wr.shutdown().await
}

fn looks_like_http(b: &[u8]) -> bool {
    ["GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS "]
        .iter()
        .any(|m| b.starts_with(m.as_bytes()))
}

/// What a demo backend needs of a request head.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    /// The head is complete (else: what the part read says, as far as it goes).
    complete: bool,
    head_only: bool,
    path: String,
}

/// Parse a request head with `httparse`. A head cut short (the client stopped
/// sending, or [`MAX_HEAD`]) still gives what its request line gave: the path
/// defaults to `/`. An error means it is not an HTTP/1 request.
fn parse_request(head: &[u8]) -> Result<Request, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let status = req.parse(head)?;
    Ok(Request {
        complete: status.is_complete(),
        head_only: req.method == Some("HEAD"),
        path: req.path.unwrap_or("/").to_string(),
    })
}

async fn http(mut stream: TcpStream, mut head: Vec<u8>, shared: &Shared) -> io::Result<()> {
    let name = shared.name.as_str();
    // Read the rest of the request head (bounded).
    let mut buf = [0u8; 1024];
    let mut parsed = parse_request(&head);
    while matches!(
        parsed,
        Ok(Request {
            complete: false,
            ..
        })
    ) && head.len() < MAX_HEAD
    {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => head.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(e),
        }
        parsed = parse_request(&head);
    }
    let (status, body, head_only) = match parsed {
        Ok(req) => {
            let (status, body) = answer(&req.path, shared);
            (status, body, req.head_only)
        }
        Err(_) => ("400 Bad Request", "bad request\n".to_string(), false),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Backend: {name}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        if head_only { "" } else { &body }
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

/// The status and body for `path`; `/health/down` and `/health/up` flip the
/// backend's health.
fn answer(path: &str, shared: &Shared) -> (&'static str, String) {
    let name = shared.name.as_str();
    match path {
        "/healthcheck" if shared.healthy.load(Ordering::Relaxed) => {
            ("200 OK", format!("ok {name}\n"))
        }
        "/healthcheck" => ("503 Service Unavailable", format!("overloaded {name}\n")),
        "/health/down" => {
            shared.healthy.store(false, Ordering::Relaxed);
            ("200 OK", format!("{name}: /healthcheck now answers 503\n"))
        }
        "/health/up" => {
            shared.healthy.store(true, Ordering::Relaxed);
            ("200 OK", format!("{name}: /healthcheck now answers 200\n"))
        }
        _ => ("200 OK", format!("hello from {name}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_parse_with_httparse() {
        let req = |head: &[u8]| parse_request(head).map(|r| (r.complete, r.head_only, r.path));
        assert_eq!(
            req(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok((true, false, "/healthcheck".to_string()))
        );
        assert_eq!(
            req(b"HEAD /x HTTP/1.0\n\n"),
            Ok((true, true, "/x".to_string())),
            "bare LF line ends"
        );
        // Cut short: what the request line gave so far.
        assert_eq!(
            req(b"GET /health/down HTTP/1.1\r\nHost"),
            Ok((false, false, "/health/down".to_string()))
        );
        assert_eq!(req(b"GET"), Ok((false, false, "/".to_string())));
        assert!(req(b"GET /a b HTTP/1.1\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn http_mode_answers_split_heads_head_requests_and_refuses_garbage() {
        let b = Backend::start("n", SocketAddr::from(([127, 0, 0, 1], 0)), Mode::Http)
            .await
            .unwrap();
        let ask = |pieces: Vec<&'static [u8]>| async move {
            let mut s = TcpStream::connect(b.addr).await.unwrap();
            for p in pieces {
                s.write_all(p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let r = ask(vec![
            b"GET /health",
            b"check HTTP/1.1\r\n",
            b"Host: x\r\n\r\n",
        ])
        .await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nok n\n"), "{r}");
        let r = ask(vec![b"HEAD / HTTP/1.1\r\n\r\n"]).await;
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        assert!(r.contains("Content-Length: 13\r\n"), "{r}");
        let r = ask(vec![b"GET /health/down HTTP/1.1\r\n\r\n"]).await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(!b.is_healthy());
        let r = ask(vec![b"GET /a b HTTP/1.1\r\n\r\n"]).await;
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
        b.stop().await;
    }
}
