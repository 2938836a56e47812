//! The admin endpoint: a small HTTP/1.1 server (GET and HEAD, one request per
//! connection) with `/metrics` (Prometheus text), `/status` (JSON) and `/` (a
//! self-refreshing HTML page with the same data), and
//! `POST /pools/{pool}/nodes/{node}/drain|enable|disable`. Loopback by default; on any
//! other address the config must set a bearer token, and with a token set every
//! request must carry it (`401` otherwise, counted).

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{fmt_duration, AdminState};
use crate::error::Error;
use crate::handle::Handle;

/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client gets to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Seconds between refreshes of the HTML page.
const PAGE_REFRESH_SECS: u32 = 2;

/// A running admin endpoint.
#[derive(Debug)]
pub struct AdminServer {
    pub local_addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Stop accepting and wait for in-flight requests.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Bind the admin socket. Must run inside a tokio runtime.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    let err = |source| Error::Bind {
        listener: "admin".into(),
        addr,
        source,
    };
    let std = std::net::TcpListener::bind(addr).map_err(err)?;
    std.set_nonblocking(true).map_err(err)?;
    TcpListener::from_std(std).map_err(err)
}

/// Serve on a bound admin socket until stopped.
pub fn spawn(listener: TcpListener, handle: Handle) -> AdminServer {
    let local_addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let token = handle
        .config()
        .admin
        .as_ref()
        .is_some_and(|a| a.token.is_some());
    if local_addr.ip().is_loopback() || token {
        info!(addr = %local_addr, bearer_token = token, "admin endpoint listening (/metrics, /status, /)");
    } else {
        // Config validation requires a token off loopback; this is a last guard.
        warn!(addr = %local_addr,
            "ADMIN ENDPOINT IS NOT ON LOOPBACK AND HAS NO TOKEN: anyone who can reach this address can read /metrics and /status");
    }
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(listener, handle, stop.clone()));
    AdminServer {
        local_addr,
        stop,
        task,
    }
}

async fn serve(listener: TcpListener, handle: Handle, stop: CancellationToken) {
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
                    let stop = stop.clone();
                    tracker.spawn(async move {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = connection(s, &handle) => {}
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

async fn connection(mut s: TcpStream, handle: &Handle) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if head.len() >= MAX_HEAD {
                return Err(io::Error::other("request head too large"));
            }
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::other("closed before a full request"));
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(())
    };
    if tokio::time::timeout(REQUEST_TIMEOUT, read).await.is_err() {
        return respond(
            &mut s,
            "408 Request Timeout",
            "text/plain",
            b"timeout\n",
            false,
        )
        .await;
    }
    let line = String::from_utf8_lossy(head.split(|&b| b == b'\n').next().unwrap_or(&[]))
        .trim_end()
        .to_string();
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
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/");
    let head_only = method == "HEAD";
    if let Some((pool, node, action)) = node_action(path) {
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
        if header(&head, b"origin").is_some() {
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
        let (status, body) = set_node_state(handle, pool, node, action);
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
    match path {
        "/metrics" => {
            let body = match crate::metrics::prometheus() {
                Some(p) => {
                    p.run_upkeep();
                    p.render()
                }
                None => "# no Prometheus recorder is installed in this process\n".to_string(),
            };
            respond(
                &mut s,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                body.as_bytes(),
                head_only,
            )
            .await
        }
        "/status" => {
            let body = serde_json::to_vec_pretty(&status(handle)).unwrap_or_default();
            respond(&mut s, "200 OK", "application/json", &body, head_only).await
        }
        "/" => {
            let body = page(&status(handle));
            respond(
                &mut s,
                "200 OK",
                "text/html; charset=utf-8",
                body.as_bytes(),
                head_only,
            )
            .await
        }
        _ => {
            respond(
                &mut s,
                "404 Not Found",
                "text/plain",
                b"not found\n",
                head_only,
            )
            .await
        }
    }
}

/// The address to reach an admin endpoint bound to `listen` from this host (a
/// wildcard address is reached through loopback).
pub fn reach(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        std::net::IpAddr::V4(a) if a.is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, listen.port()))
        }
        std::net::IpAddr::V6(a) if a.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, listen.port()))
        }
        _ => listen,
    }
}

/// One blocking request to an admin endpoint (for `ringlb node` and tools):
/// returns the status code and the body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&crate::config::AdminToken>,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {}\r\n", t.secret()))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.take(16 * 1024 * 1024).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            io::Error::other(format!(
                "not an HTTP response: {:?}",
                &head[..head.len().min(80)]
            ))
        })?;
    Ok((status, body.to_string()))
}

/// `/pools/{pool}/nodes/{node}/{drain|enable|disable}`.
fn node_action(path: &str) -> Option<(&str, &str, AdminState)> {
    let rest = path.strip_prefix("/pools/")?;
    let mut it = rest.split('/');
    let (pool, nodes, node, action) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if nodes != "nodes" || it.next().is_some() || pool.is_empty() || node.is_empty() {
        return None;
    }
    let state = match action {
        "drain" => AdminState::Drain,
        "enable" => AdminState::Enabled,
        "disable" => AdminState::Disabled,
        _ => return None,
    };
    Some((pool, node, state))
}

/// Percent-decode a path segment (node names may hold `:` or `%`-escaped bytes).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn set_node_state(
    handle: &Handle,
    pool: &str,
    node: &str,
    state: AdminState,
) -> (&'static str, String) {
    let (pool, node) = (unescape(pool), unescape(node));
    let Some(p) = handle.pool(&pool) else {
        return (
            "404 Not Found",
            json!({ "error": format!("no pool {pool:?}") }).to_string() + "\n",
        );
    };
    match p.set_admin_state(&node, state, "admin endpoint") {
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

/// The value of the first header named `name` (lowercase), if any.
fn header<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name)
            .then(|| line[colon + 1..].trim_ascii())
    })
}

/// Whether the request head carries `Authorization: Bearer <token>` (header name
/// and scheme case-insensitive, as HTTP says).
fn authorized(head: &[u8], token: &crate::config::AdminToken) -> bool {
    let mut ok = false;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if !name.eq_ignore_ascii_case(b"authorization") {
            continue;
        }
        let value = value.trim_ascii();
        if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") {
            // Every Authorization header is checked (no early exit on a match).
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

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The `/status` document.
pub fn status(handle: &Handle) -> Value {
    let config = handle.config();
    let (ok, failed) = handle.reload_counts();
    let last_reload = handle.last_reload().map(|r| {
        json!({
            "ok": r.ok,
            "at": rfc3339(r.at),
            "generation": r.generation,
            "message": r.message,
        })
    });
    let listeners: Vec<Value> = handle
        .listeners()
        .iter()
        .map(|l| {
            let st = l.shared.state.load();
            json!({
                "name": st.config.name,
                "listen": st.config.listen.to_string(),
                "local_addr": l.local_addr.to_string(),
                "pool": st.config.pool,
                "max_connections": st.config.max_connections,
                "tcp_keepalive": crate::config::Keepalive::describe(st.config.tcp_keepalive.as_ref()),
                "active_connections": l.shared.active.load(std::sync::atomic::Ordering::Relaxed),
            })
        })
        .collect();
    let pools: Vec<Value> = handle
        .pools()
        .iter()
        .map(|(name, pool)| {
            let snap = pool.snapshot();
            let h = &snap.settings.health;
            let up = snap.nodes.iter().filter(|n| n.is_up()).count();
            let nodes: Vec<Value> = snap
                .nodes
                .iter()
                .map(|n| {
                    let health = n.health();
                    let on_ring = snap.members.iter().position(|m| std::sync::Arc::ptr_eq(m, n));
                    json!({
                        "name": n.name,
                        "addr": n.addr.to_string(),
                        "weight": n.weight(),
                        "state": if n.is_up() { "up" } else { "down" },
                        "admin_state": n.admin_state().as_str(),
                        "in_service": on_ring.is_some(),
                        "since": rfc3339(health.since),
                        "reason": health.reason,
                        "last_probe": health.last.as_ref().map(|p| json!({
                            "ok": p.ok,
                            "detail": p.detail,
                            "at": rfc3339(p.at),
                            "latency_ms": (p.latency.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
                        })),
                        "probes": health.probes,
                        "transitions": health.transitions,
                        "active_connections": n.active.load(std::sync::atomic::Ordering::Relaxed),
                        "total_connections": n.total.load(std::sync::atomic::Ordering::Relaxed),
                        "connect_failures": n.connect_failures.load(std::sync::atomic::Ordering::Relaxed),
                        "bytes_to_node": n.bytes_to_node.load(std::sync::atomic::Ordering::Relaxed),
                        "bytes_to_client": n.bytes_to_client.load(std::sync::atomic::Ordering::Relaxed),
                        "ring_points": on_ring.map_or(0, |i| snap.ring.points_of(i)),
                        "ring_share_pct": on_ring.map_or(0.0, |i| (snap.ring.share_of(i) * 10_000.0).round() / 100.0),
                    })
                })
                .collect();
            json!({
                "name": name,
                "nodes_up": up,
                "nodes_total": snap.nodes.len(),
                "failing_open": snap.failing_open,
                "proxy_protocol": snap.settings.proxy_protocol.as_str(),
                "balance_factor": snap.settings.balance_factor_permille.map(|p| f64::from(p) / 1000.0),
                "tcp_keepalive": crate::config::Keepalive::describe(snap.settings.tcp_keepalive.as_ref()),
                "load_bound": snap.settings.balance_factor_permille.map(|p| snap.load_bound(p)),
                "health": {
                    "kind": h.kind.as_str(),
                    "interval": fmt_duration(h.interval),
                    "timeout": fmt_duration(h.timeout),
                    "rise": h.rise,
                    "fall": h.fall,
                },
                "nodes": nodes,
            })
        })
        .collect();
    json!({
        "config": config.source.display().to_string(),
        "generation": handle.generation(),
        "started": rfc3339(handle.started()),
        "reloads": { "ok": ok, "failed": failed },
        "last_reload": last_reload,
        "listeners": listeners,
        "pools": pools,
        "workers": handle
            .workers()
            .iter()
            .map(|w| json!({ "worker": w.index, "active": w.active(), "accepted": w.accepted() }))
            .collect::<Vec<_>>(),
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The human page: the same data as `/status`, rendered on the server (no script,
/// no external assets), refreshing itself.
pub fn page(st: &Value) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{PAGE_REFRESH_SECS}">
<title>ringlb status</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}}
h1{{font-size:1.3em;margin:0 0 .3em}} h2{{font-size:1.1em;margin:1.2em 0 .4em}}
table{{border-collapse:collapse;background:#fff;min-width:60em}}
th,td{{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:middle}}
th{{background:#f0f0f0}} td.num{{text-align:right;font-variant-numeric:tabular-nums}}
.up{{background:#d9f2d9;color:#14591a;font-weight:600}} .down{{background:#f9d6d5;color:#8a1c14;font-weight:600}} .drain{{background:#fdf0c4;color:#6b5200;font-weight:600}} .disabled{{background:#e4e4e4;color:#444;font-weight:600}}
.bar{{background:#eee;width:12em;height:.9em;display:inline-block;vertical-align:middle}}
.bar span{{display:block;height:100%;background:#4a7bd0}}
.meta{{color:#666}} .bad{{color:#8a1c14}}
</style></head><body>
<h1>ringlb</h1>
<p class="meta">config {} &middot; generation {} &middot; started {} &middot; reloads ok {}, failed {} &middot; refreshes every {PAGE_REFRESH_SECS}s</p>
"#,
        esc(st["config"].as_str().unwrap_or("")),
        st["generation"],
        esc(st["started"].as_str().unwrap_or("")),
        st["reloads"]["ok"],
        st["reloads"]["failed"],
    );
    if let Some(r) = st["last_reload"].as_object() {
        let ok = r["ok"].as_bool().unwrap_or(false);
        let _ = writeln!(
            h,
            r#"<p id="last-reload" class="{}">last reload {} at {}: {}</p>"#,
            if ok { "meta" } else { "bad" },
            if ok { "applied" } else { "REFUSED" },
            esc(r["at"].as_str().unwrap_or("")),
            esc(r["message"].as_str().unwrap_or(""))
        );
    }
    h.push_str("<h2>Listeners</h2>\n<table id=\"listeners\"><tr><th>name</th><th>address</th><th>pool</th><th>active</th><th>max</th></tr>\n");
    for l in st["listeners"].as_array().into_iter().flatten() {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(l["name"].as_str().unwrap_or("")),
            esc(l["local_addr"].as_str().unwrap_or("")),
            esc(l["pool"].as_str().unwrap_or("")),
            l["active_connections"],
            l["max_connections"]
        );
    }
    h.push_str("</table>\n");
    let workers: Vec<String> = st["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            format!(
                "{}: {} open, {} accepted",
                w["worker"], w["active"], w["accepted"]
            )
        })
        .collect();
    let _ = writeln!(
        h,
        "<p id=\"workers\" class=\"meta\">workers &middot; {}</p>",
        workers.join(" &middot; ")
    );
    for p in st["pools"].as_array().into_iter().flatten() {
        let name = esc(p["name"].as_str().unwrap_or(""));
        let _ = writeln!(
            h,
            "<h2>Pool {name}</h2>\n<p class=\"meta\">{} of {} nodes up &middot; health {} every {}{}</p>",
            p["nodes_up"],
            p["nodes_total"],
            esc(p["health"]["kind"].as_str().unwrap_or("")),
            esc(p["health"]["interval"].as_str().unwrap_or("")),
            if p["failing_open"].as_bool() == Some(true) {
                " &middot; <b class=\"bad\">all down: failing open</b>"
            } else {
                ""
            }
        );
        let _ = writeln!(
            h,
            "<table class=\"pool\" id=\"pool-{name}\"><tr><th>node</th><th>address</th><th>state</th><th>since</th><th>last probe</th><th>ring share</th><th>active</th><th>total</th><th>to node</th><th>to client</th></tr>"
        );
        for n in p["nodes"].as_array().into_iter().flatten() {
            let health = n["state"].as_str().unwrap_or("");
            let admin = n["admin_state"].as_str().unwrap_or("enabled");
            let (state, label) = match admin {
                "enabled" => (health.to_string(), health.to_uppercase()),
                other => (
                    other.to_string(),
                    format!("{} · {}", health.to_uppercase(), other.to_uppercase()),
                ),
            };
            let share = n["ring_share_pct"].as_f64().unwrap_or(0.0);
            let probe = n["last_probe"]
                .as_object()
                .map(|lp| {
                    format!(
                        "{} ({} ms)",
                        esc(lp["detail"].as_str().unwrap_or("")),
                        lp["latency_ms"]
                    )
                })
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                h,
                "<tr class=\"node\" data-node=\"{nm}\"><td>{nm}</td><td>{addr}</td><td class=\"{state}\">{STATE}</td><td title=\"{reason}\">{since}</td><td>{probe}</td><td><span class=\"bar\"><span style=\"width:{share:.1}%\"></span></span> {share:.1}%</td><td class=\"num\">{act}</td><td class=\"num\">{tot}</td><td class=\"num\">{bn}</td><td class=\"num\">{bc}</td></tr>",
                nm = esc(n["name"].as_str().unwrap_or("")),
                addr = esc(n["addr"].as_str().unwrap_or("")),
                STATE = label,
                reason = esc(n["reason"].as_str().unwrap_or("")),
                since = esc(n["since"].as_str().unwrap_or("")),
                act = n["active_connections"],
                tot = n["total_connections"],
                bn = bytes(n["bytes_to_node"].as_u64().unwrap_or(0)),
                bc = bytes(n["bytes_to_client"].as_u64().unwrap_or(0)),
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("</body></html>\n");
    h
}
