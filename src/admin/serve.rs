//! Serving the admin endpoint: the accept loop, one request per connection with
//! its head parsed by `httparse`, the bearer-token check, routing and the
//! responses. Reads and changes the balancer only through [`Handle`] (never names
//! the server); bounded: a head of at most [`MAX_HEAD`] bytes sent within
//! [`REQUEST_TIMEOUT`], and the connection is closed after the answer.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use percent_encoding::percent_decode_str;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::history::{self, History};
use super::{action_state, page, status, Status};
use crate::config::{AdminState, AdminToken};
use crate::handle::Handle;

/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client gets to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most header lines in a request head.
const MAX_HEADERS: usize = 64;

/// Accept and answer until `stop`; then wait for the requests in flight.
pub(super) async fn serve(
    listener: TcpListener,
    handle: Handle,
    history: Arc<Mutex<History>>,
    stop: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let mut upkeep = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = upkeep.tick() => {
                if let Some(p) = crate::metrics::prometheus() {
                    p.run_upkeep();
                }
            }
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    let handle = handle.clone();
                    let history = history.clone();
                    let stop = stop.clone();
                    tracker.spawn(async move {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = connection(s, &handle, &history) => {}
                        }
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// What the server keeps of a request head.
#[derive(Debug, PartialEq, Eq)]
struct RequestHead {
    method: String,
    /// The target without its query.
    path: String,
    /// The query (after `?`; empty without one).
    query: String,
    /// The values of every `Authorization` header.
    authorization: Vec<Vec<u8>>,
    /// An `Origin` header is present (the request comes from a browser page).
    origin: bool,
}

/// Why no request head could be read.
#[derive(Debug)]
enum HeadError {
    Io(io::Error),
    Closed,
    TooLarge,
    Malformed(httparse::Error),
}

/// The head in `buf` once it is complete (`None`: more bytes are needed).
fn parse_head(buf: &[u8]) -> Result<Option<RequestHead>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(buf)?.is_partial() {
        return Ok(None);
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let named = |name: &'static str| {
        req.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };
    Ok(Some(RequestHead {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        authorization: named("authorization").map(|h| h.value.to_vec()).collect(),
        origin: named("origin").next().is_some(),
    }))
}

async fn read_head(s: &mut TcpStream) -> Result<RequestHead, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(head) = parse_head(&buf).map_err(HeadError::Malformed)? {
            return Ok(head);
        }
        if buf.len() >= MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let n = s.read(&mut chunk).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn connection(mut s: TcpStream, handle: &Handle, history: &Mutex<History>) -> io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut s)).await {
        Ok(Ok(head)) => head,
        Err(_) => {
            return respond(
                &mut s,
                "408 Request Timeout",
                "text/plain",
                b"timeout\n",
                false,
            )
            .await
        }
        Ok(Err(HeadError::TooLarge)) => {
            return respond(
                &mut s,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request head too large\n",
                false,
            )
            .await
        }
        Ok(Err(HeadError::Malformed(e))) => {
            tracing::debug!(peer = ?s.peer_addr().ok(), error = %e, "malformed admin request");
            return respond(
                &mut s,
                "400 Bad Request",
                "text/plain",
                b"malformed request\n",
                false,
            )
            .await;
        }
        Ok(Err(HeadError::Closed)) => return Ok(()),
        Ok(Err(HeadError::Io(e))) => return Err(e),
    };
    if head.path == "/ready" {
        // No token: load balancers' and BGP speakers' checkers poll this, and it
        // tells no more than whether to send traffic here (and why not).
        return ready(&mut s, handle, &head).await;
    }
    let config = handle.config();
    if let Some(token) = config.admin.as_ref().and_then(|a| a.token.as_ref()) {
        if !authorized(&head, token) {
            crate::metrics::admin_unauthorized();
            tracing::debug!(peer = ?s.peer_addr().ok(), "admin request without a valid bearer token");
            return respond_with(
                &mut s,
                "401 Unauthorized",
                "text/plain",
                b"a valid bearer token is required (Authorization: Bearer TOKEN)\n",
                "WWW-Authenticate: Bearer realm=\"ringlb\"\r\n",
                false,
            )
            .await;
        }
    }
    let method = head.method.as_str();
    let head_only = method == "HEAD";
    if let Some((pool, node, action)) = node_action(&head.path) {
        if method != "POST" {
            return respond_with(
                &mut s,
                "405 Method Not Allowed",
                "text/plain",
                b"POST only\n",
                "Allow: POST\r\n",
                head_only,
            )
            .await;
        }
        if head.origin {
            // A browser page on another site can send a plain POST to a loopback
            // address (no preflight); the status page itself never posts.
            return respond(
                &mut s,
                "403 Forbidden",
                "text/plain",
                b"state changes are not accepted from browser pages (Origin header present)\n",
                false,
            )
            .await;
        }
        let (status, body) = set_node_state(handle, &pool, &node, action);
        return respond(&mut s, status, "application/json", body.as_bytes(), false).await;
    }
    if method != "GET" && !head_only {
        return respond(
            &mut s,
            "405 Method Not Allowed",
            "text/plain",
            b"GET or HEAD only\n",
            false,
        )
        .await;
    }
    let (content_type, body) = match head.path.as_str() {
        "/metrics" => {
            let body = match crate::metrics::prometheus() {
                Some(p) => {
                    crate::metrics::set_ready(handle.readiness().is_ok());
                    for pool in handle.pools().values() {
                        pool.sync_byte_metrics();
                    }
                    p.run_upkeep();
                    p.render()
                }
                None => "# no Prometheus recorder is installed in this process\n".to_string(),
            };
            (
                "text/plain; version=0.0.4; charset=utf-8",
                body.into_bytes(),
            )
        }
        "/status" if wants_history(&head.query) => (
            "application/json",
            status_json(&with_history(handle, history)),
        ),
        "/status" => ("application/json", status_json(&status(handle))),
        "/" => (
            "text/html; charset=utf-8",
            page(&with_history(handle, history)).into_bytes(),
        ),
        _ => {
            return respond(
                &mut s,
                "404 Not Found",
                "text/plain",
                b"not found\n",
                head_only,
            )
            .await
        }
    };
    respond(&mut s, "200 OK", content_type, &body, head_only).await
}

/// `GET /ready`: `200 ready`, or `503` with the reason.
async fn ready(s: &mut TcpStream, handle: &Handle, head: &RequestHead) -> io::Result<()> {
    let head_only = head.method == "HEAD";
    if head.method != "GET" && !head_only {
        return respond_with(
            s,
            "405 Method Not Allowed",
            "text/plain",
            b"GET or HEAD only\n",
            "Allow: GET, HEAD\r\n",
            false,
        )
        .await;
    }
    let readiness = handle.readiness();
    crate::metrics::set_ready(readiness.is_ok());
    match readiness {
        Ok(()) => respond(s, "200 OK", "text/plain", b"ready\n", head_only).await,
        Err(why) => {
            let body = format!("{why}\n");
            respond(
                s,
                "503 Service Unavailable",
                "text/plain",
                body.as_bytes(),
                head_only,
            )
            .await
        }
    }
}

/// The `/status` body: pretty JSON. Written through a `serde_json::Value`, so the
/// keys come out sorted as they always have.
pub(super) fn status_json(st: &super::Status) -> Vec<u8> {
    serde_json::to_value(st)
        .and_then(|v| serde_json::to_vec_pretty(&v))
        .unwrap_or_default()
}

/// The status document with the charts' samples.
fn with_history(handle: &Handle, history: &Mutex<History>) -> Status {
    let mut st = status(handle);
    st.history = Some(history::lock(history).view(Instant::now(), SystemTime::now()));
    st
}

/// Whether a `/status` query asks for the history: `history`, `history=1` or
/// `history=true` among its `&`-separated pairs.
fn wants_history(query: &str) -> bool {
    query.split('&').any(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, "1"));
        key == "history" && matches!(value, "1" | "true")
    })
}

/// `/pools/{pool}/nodes/{node}/{drain|enable|disable}`, with the pool and node
/// names percent-decoded (node names are often `host:port`, and may hold any
/// character).
pub(super) fn node_action(path: &str) -> Option<(String, String, AdminState)> {
    let rest = path.strip_prefix("/pools/")?;
    let mut it = rest.split('/');
    let (pool, nodes, node, action) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if nodes != "nodes" || it.next().is_some() || pool.is_empty() || node.is_empty() {
        return None;
    }
    let state = action_state(action)?;
    Some((unescape(pool), unescape(node), state))
}

/// Percent-decode a path segment; a `%` not followed by two hex digits stays as
/// it is, and bytes that are not UTF-8 become U+FFFD.
fn unescape(segment: &str) -> String {
    percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

fn set_node_state(
    handle: &Handle,
    pool: &str,
    node: &str,
    state: AdminState,
) -> (&'static str, String) {
    let Some(p) = handle.pool(pool) else {
        return (
            "404 Not Found",
            json!({ "error": format!("no pool {pool:?}") }).to_string() + "\n",
        );
    };
    match p.set_admin_state(node, state, "admin endpoint") {
        Some(previous) => (
            "200 OK",
            json!({
                "pool": pool,
                "node": node,
                "admin_state": state.as_str(),
                "previous": previous.as_str(),
                "changed": previous != state,
            })
            .to_string()
                + "\n",
        ),
        None => (
            "404 Not Found",
            json!({ "error": format!("pool {pool:?} has no node {node:?}") }).to_string() + "\n",
        ),
    }
}

/// Whether the request carries `Authorization: Bearer <token>` (scheme
/// case-insensitive, as HTTP says). Every such header is compared, in time that
/// does not depend on where a wrong token differs.
fn authorized(head: &RequestHead, token: &AdminToken) -> bool {
    let mut ok = false;
    for value in &head.authorization {
        let value = value.trim_ascii();
        if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") {
            // No early exit on a match.
            ok |= token.matches(value[7..].trim_ascii());
        }
    }
    ok
}

async fn respond(
    s: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    respond_with(s, status, content_type, body, "", head_only).await
}

async fn respond_with(
    s: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    extra_headers: &str,
    head_only: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{extra_headers}Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    if !head_only {
        s.write_all(body).await?;
    }
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> RequestHead {
        parse_head(text.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn a_head_is_complete_only_at_its_empty_line() {
        assert_eq!(parse_head(b"").unwrap(), None);
        assert_eq!(
            parse_head(b"GET /status HTTP/1.1\r\nHost: x\r\n").unwrap(),
            None
        );
        let h = head("GET /status?pretty=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\nauthorization:  bearer b \r\nOrigin: http://x\r\n\r\n");
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/status");
        assert_eq!(h.query, "pretty=1");
        assert_eq!(head("GET /?a=1?b HTTP/1.1\r\n\r\n").query, "a=1?b");
        assert_eq!(head("GET / HTTP/1.1\r\n\r\n").query, "");
        assert_eq!(h.authorization.len(), 2);
        assert!(h.origin);
        assert!(!head("POST / HTTP/1.0\r\n\r\n").origin);
        assert!(parse_head(b"GET /a b HTTP/1.1\r\n\r\n").is_err());
        assert!(
            parse_head(b"\x16\x03\x01\x00\xa5\x01\x00\x00").is_err(),
            "TLS hello"
        );
    }

    #[test]
    fn bearer_tokens_are_matched_on_every_authorization_header() {
        let token = AdminToken::new("s3cret");
        let ok = |auth: &str| authorized(&head(&format!("GET / HTTP/1.1\r\n{auth}\r\n")), &token);
        assert!(ok("Authorization: Bearer s3cret\r\n"));
        assert!(ok("authorization: BEARER   s3cret  \r\n"));
        assert!(ok(
            "Authorization: Basic x\r\nAuthorization: Bearer s3cret\r\n"
        ));
        assert!(!ok(""));
        assert!(!ok("Authorization: Bearer s3cre\r\n"));
        assert!(!ok("Authorization: Bearer s3cretx\r\n"));
        assert!(!ok("Authorization: s3cret\r\n"));
        assert!(!ok("Authorization: Basic s3cret\r\n"));
        assert!(!ok("X-Authorization: Bearer s3cret\r\n"));
    }

    #[test]
    fn the_history_is_in_status_only_when_asked() {
        for yes in [
            "history",
            "history=1",
            "history=true",
            "a=b&history=1",
            "history=1&x",
        ] {
            assert!(wants_history(yes), "{yes}");
        }
        for no in [
            "",
            "history=0",
            "history=no",
            "histories=1",
            "a=history",
            "xhistory=1",
        ] {
            assert!(!wants_history(no), "{no}");
        }
    }

    #[test]
    fn node_action_paths() {
        let p = |s| node_action(s);
        assert_eq!(
            p("/pools/web/nodes/10.0.0.1:80/drain"),
            Some(("web".into(), "10.0.0.1:80".into(), AdminState::Drain))
        );
        assert_eq!(
            p("/pools/a%20b/nodes/c%2Fd%25/enable"),
            Some(("a b".into(), "c/d%".into(), AdminState::Enabled))
        );
        assert_eq!(
            p("/pools/w/nodes/%zz%4/disable"),
            Some(("w".into(), "%zz%4".into(), AdminState::Disabled))
        );
        for bad in [
            "/pools/w/nodes/n/stop",
            "/pools/w/nodes/n",
            "/pools/w/nodes/n/drain/",
            "/pools//nodes/n/drain",
            "/pools/w/nodes//drain",
            "/pools/w/node/n/drain",
            "/status",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }
}
