//! Access control on real sockets: allow/deny lists, per-client connection and
//! rate limits (checked before any node is contacted, counted by reason), and the
//! admin endpoint's bearer token. Each test uses its own listener and pool names,
//! because the Prometheus recorder is shared by the whole test binary.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use ringlb::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

type Lb = Served;

/// A balancer with listener `name` and pool `name`, the given listener lines.
async fn start(name: &str, nodes: &[(String, SocketAddr)], listener_extra: &str, top: &str) -> Lb {
    ringlb::metrics::install_prometheus();
    let mut text = format!(
        "shutdown_grace = \"1s\"\n{top}\n[[listener]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\npool = \"{name}\"\n{listener_extra}\n[pools.{name}]\n[pools.{name}.health]\nkind = \"none\"\n"
    );
    for (n, a) in nodes {
        text.push_str(&format!(
            "[[pools.{name}.nodes]]\nname = \"{n}\"\naddr = \"{a}\"\n"
        ));
    }
    Served::start(&text, "access.toml", name)
}

fn metrics_text() -> String {
    ringlb::metrics::prometheus().unwrap().render()
}

fn metric(name_and_labels: &str) -> f64 {
    metrics_text()
        .lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn rejected(listener: &str, reason: &str) -> f64 {
    metric(&format!(
        "ringlb_connections_rejected_total{{listener=\"{listener}\",reason=\"{reason}\"}}"
    ))
}

fn attempts(pool: &str) -> f64 {
    metrics_text()
        .lines()
        .filter(|l| {
            l.starts_with("ringlb_connect_attempts_total{")
                && l.contains(&format!("pool=\"{pool}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The client is closed without a byte from any node, quickly (2 s, 5 s: times
/// the patience).
async fn assert_refused(src: IpAddr, dst: SocketAddr) {
    let started = Instant::now();
    let mut s = connect_from(src, dst).await.expect("the kernel accepts");
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(patient(Duration::from_secs(5)), s.read(&mut buf))
        .await
        .expect("closed at once, not left hanging");
    match r {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("{src} was served: {:?}", String::from_utf8_lossy(&buf[..n])),
    }
    assert!(
        started.elapsed() < patient(Duration::from_secs(2)),
        "refusal took {:?}",
        started.elapsed()
    );
}

fn ip(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_and_allow_lists_refuse_before_any_node_is_contacted() {
    let nodes = backends(2).await;
    let lb = start(
        "acl",
        &nodes_of(&nodes),
        "allow = [\"127.10.0.0/16\", \"127.30.0.7\"]\ndeny = [\"127.10.5.0/24\"]",
        "",
    )
    .await;

    // Allowed: served, and attempts reach the pool.
    for c in [ip(10, 1, 1), ip(10, 200, 3), ip(30, 0, 7)] {
        let name = node_for(c, lb.addr).await.expect("allowed client served");
        assert!(name.starts_with("node-"), "{name}");
    }
    let served_attempts = attempts("acl");
    assert!(served_attempts >= 3.0, "{served_attempts}");

    // Denied (inside allow, but deny wins) and not allowed.
    for c in [ip(10, 5, 1), ip(10, 5, 254)] {
        assert_refused(c, lb.addr).await;
    }
    for c in [ip(11, 0, 1), ip(30, 0, 8), ip(20, 1, 1)] {
        assert_refused(c, lb.addr).await;
    }
    assert_eq!(rejected("acl", "denied"), 2.0);
    assert_eq!(rejected("acl", "not_allowed"), 3.0);
    assert_eq!(
        attempts("acl"),
        served_attempts,
        "a refused client must not cause a connect to any node"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_list_change_by_reload_applies_to_new_connections_only() {
    let nodes = backends(1).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acl.toml");
    let text = |extra: &str| {
        format!(
            "[[listener]]\nname = \"acl-reload\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n{extra}\n[pools.p]\n[pools.p.health]\nkind = \"none\"\n[[pools.p.nodes]]\nname = \"node-0\"\naddr = \"{}\"\n",
            nodes[0].addr
        )
    };
    std::fs::write(&path, text("")).unwrap();
    ringlb::metrics::install_prometheus();
    let server = Server::bind(Config::from_file(&path).unwrap()).unwrap();
    let addr = server.local_addr("acl-reload").unwrap();
    let handle = server.handle();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));

    let client = ip(40, 0, 1);
    let mut open = connect_from(client, addr).await.unwrap();
    assert_eq!(read_line(&mut open).await.unwrap(), "node-0");

    std::fs::write(&path, text("deny = [\"127.40.0.0/16\"]")).unwrap();
    let before = handle.generation();
    handle.reload();
    eventually(Duration::from_secs(10), "reload applied", || {
        let h = handle.clone();
        async move { h.generation() > before }
    })
    .await;
    assert_refused(client, addr).await;
    assert_refused(ip(40, 9, 9), addr).await;
    // The connection opened before the rule keeps flowing.
    open.write_all(b"still here\n").await.unwrap();
    assert_eq!(read_line(&mut open).await.unwrap(), "still here");
    assert_eq!(node_for(ip(41, 0, 1), addr).await.unwrap(), "node-0");
    drop(open);
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_ip_refuses_the_excess_of_one_client_only() {
    let nodes = backends(2).await;
    let lb = start("perip", &nodes_of(&nodes), "max_connections_per_ip = 3", "").await;
    let (a, b) = (ip(50, 0, 1), ip(50, 0, 2));
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from(a, lb.addr).await.unwrap();
        read_line(&mut s).await.expect("within the limit: served");
        held.push(s);
    }
    assert_refused(a, lb.addr).await;
    assert_refused(a, lb.addr).await;
    assert_eq!(rejected("perip", "max_connections_per_ip"), 2.0);

    // Another client is unaffected, and so are a's open connections.
    let mut others = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from(b, lb.addr).await.unwrap();
        read_line(&mut s).await.expect("other client served");
        others.push(s);
    }
    for (i, s) in held.iter_mut().enumerate() {
        let msg = format!("held {i}\n");
        s.write_all(msg.as_bytes()).await.unwrap();
        assert_eq!(read_line(s).await.unwrap(), msg.trim_end());
    }

    // One of a's connections ends: a may open one more (once ringlb saw the close).
    drop(held.pop());
    let s = eventually_some(Duration::from_secs(5), "a's slot freed", || async {
        let mut s = connect_from(a, lb.addr).await.unwrap();
        read_line(&mut s).await.is_ok().then_some(s)
    })
    .await;
    held.push(s);
    assert_eq!(held.len(), 3);
    assert_refused(a, lb.addr).await;
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_per_ip_is_a_token_bucket_per_client() {
    let nodes = backends(1).await;
    let lb = start(
        "rate",
        &nodes_of(&nodes),
        "new_connections_per_ip_per_sec = 5\nnew_connections_per_ip_burst = 4",
        "",
    )
    .await;
    let (a, b) = (ip(60, 0, 1), ip(60, 0, 2));
    // The burst: 4 in a row (each closed at once, so only the rate limit applies).
    for i in 0..4 {
        node_for(a, lb.addr)
            .await
            .unwrap_or_else(|e| panic!("connection {i} of the burst: {e}"));
    }
    assert_refused(a, lb.addr).await;
    assert_eq!(rejected("rate", "new_connections_per_ip"), 1.0);
    // Another client has its own bucket.
    for _ in 0..4 {
        node_for(b, lb.addr).await.expect("b's own burst");
    }
    // 5 per second: a token comes back within about 200 ms.
    let waited = Instant::now();
    eventually(Duration::from_secs(3), "a token refilled", || async {
        node_for(a, lb.addr).await.is_ok()
    })
    .await;
    assert!(
        waited.elapsed() < patient(Duration::from_secs(2)),
        "refill took {:?}",
        waited.elapsed()
    );
    // Sustained: 30 tries in a tight loop over ~0.3 s are mostly refused.
    let mut ok = 0;
    for _ in 0..30 {
        if node_for(a, lb.addr).await.is_ok() {
            ok += 1;
        }
    }
    assert!(ok <= 5, "{ok} of 30 rapid connections got through at 5/s");
    lb.stop().await;
}

async fn admin_get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let (status, head, body) = http_request(addr, "GET", path, &auth).await;
    (status, format!("{head}\r\n\r\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_is_required_on_every_request_and_refusals_are_counted() {
    let nodes = backends(1).await;
    let token = "s3cr3t-t0ken-0123456789";
    let lb = start(
        "admintok",
        &nodes_of(&nodes),
        "",
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\""),
    )
    .await;
    let admin = lb.admin.unwrap();
    let before = metric("ringlb_admin_unauthorized_total");
    for path in ["/metrics", "/status", "/", "/nope"] {
        let (status, text) = admin_get(admin, path, None).await;
        assert_eq!(status, 401, "{path} without a token: {text}");
        assert!(text.contains("WWW-Authenticate: Bearer"), "{text}");
        assert!(!text.contains("ringlb_"), "no data leaks in a 401: {text}");
    }
    for wrong in [
        "Bearer wrong".to_string(),
        format!("Bearer {token}x"),
        format!("Bearer {}", &token[..token.len() - 1]),
        format!("Basic {token}"),
        token.to_string(),
    ] {
        let (status, _) = admin_get(admin, "/status", Some(&wrong)).await;
        assert_eq!(status, 401, "{wrong:?}");
    }
    assert_eq!(metric("ringlb_admin_unauthorized_total") - before, 9.0);
    for good in [format!("Bearer {token}"), format!("bearer   {token}  ")] {
        let (status, text) = admin_get(admin, "/status", Some(&good)).await;
        assert_eq!(status, 200, "{good:?}: {text}");
        assert!(text.contains("\"listeners\""), "{text}");
    }
    let (status, text) = admin_get(admin, "/metrics", Some(&format!("Bearer {token}"))).await;
    assert_eq!(status, 200);
    assert!(text.contains("ringlb_admin_unauthorized_total"), "{text}");
    // The token is not in the config's debug form, so never in a log line.
    assert!(!format!("{:?}", lb.handle.config()).contains(token));
    lb.stop().await;
}
