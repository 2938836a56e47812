//! Backend awareness on real sockets: the PROXY protocol towards nodes (parsed by
//! the `ppp` crate in the test backend) and from trusted proxies, bounded load
//! (`balance_factor`), and node drain / enable / disable through the admin
//! endpoint, the `ringlb node` command and the config file.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ringlb::config::AdminState;
use ringlb::{Config, Handle, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The balancer under test: listener `lb`.
type Lb = Served;

async fn start_lb(text: &str) -> Lb {
    Served::start(text, "backend_aware.toml", "lb")
}

fn nodes_toml(nodes: &[(String, SocketAddr)]) -> String {
    nodes
        .iter()
        .map(|(n, a)| format!("[[pools.p.nodes]]\nname = \"{n}\"\naddr = \"{a}\"\n"))
        .collect()
}

/// A node that expects a PROXY header, parses it with `ppp`, answers one line
/// `NAME SRC DST` (or `NAME NOHEADER ...` if there was none), then echoes.
async fn proxy_aware_node(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 512];
                let line = loop {
                    let n = match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let parsed = ppp::HeaderResult::parse(&buf);
                    use ppp::PartialResult;
                    if parsed.is_incomplete() {
                        continue;
                    }
                    break match parsed {
                        ppp::HeaderResult::V1(Ok(h)) => {
                            let used = h.header.len();
                            let line = match h.addresses {
                                ppp::v1::Addresses::Tcp4(a) => format!(
                                    "{name} v1 {}:{} {}:{}",
                                    a.source_address,
                                    a.source_port,
                                    a.destination_address,
                                    a.destination_port
                                ),
                                other => format!("{name} v1 {other:?}"),
                            };
                            buf.drain(..used);
                            line
                        }
                        ppp::HeaderResult::V2(Ok(h)) => {
                            let used = h.len();
                            let line = match h.addresses {
                                ppp::v2::Addresses::IPv4(a) => format!(
                                    "{name} v2 {}:{} {}:{}",
                                    a.source_address,
                                    a.source_port,
                                    a.destination_address,
                                    a.destination_port
                                ),
                                other => format!("{name} v2 {other:?}"),
                            };
                            buf.drain(..used);
                            line
                        }
                        _ => {
                            let l = format!("{name} NOHEADER");
                            l
                        }
                    };
                };
                if s.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                    return;
                }
                if !buf.is_empty() && s.write_all(&buf).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_and_v2_carry_the_real_client_to_the_node() {
    for version in ["v1", "v2"] {
        let (node, _) = proxy_aware_node("n0").await;
        let lb = start_lb(&format!(
            "shutdown_grace = \"1s\"\n[[listener]]\nname = \"lb\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\nproxy_protocol = \"{version}\"\n[pools.p.health]\nkind = \"none\"\n{}",
            nodes_toml(&[("n0".into(), node)])
        ))
        .await;
        for i in 0..20 {
            let src = client_ip(5000 + i);
            let mut c = connect_from(src, lb.addr).await.unwrap();
            let local = c.local_addr().unwrap();
            // Client bytes right away: they must arrive after the header, intact.
            c.write_all(b"hello after the header\n").await.unwrap();
            let line = read_line(&mut c).await.unwrap();
            assert_eq!(
                line,
                format!("n0 {version} {local} {}", lb.addr),
                "the node saw the client's address and port, and the listener's"
            );
            assert_eq!(read_line(&mut c).await.unwrap(), "hello after the header");
        }
        lb.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_header_decides_the_client_and_others_are_plain_clients() {
    let (n0, _) = proxy_aware_node("n0").await;
    let (n1, _) = proxy_aware_node("n1").await;
    let (n2, _) = proxy_aware_node("n2").await;
    let nodes = vec![("n0".into(), n0), ("n1".into(), n1), ("n2".into(), n2)];
    ringlb::metrics::install_prometheus();
    let lb = start_lb(&format!(
        "shutdown_grace = \"1s\"\n[[listener]]\nname = \"lb\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\naccept_proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]\nproxy_header_timeout = \"300ms\"\ndeny = [\"198.51.100.0/24\"]\n[pools.p]\nproxy_protocol = \"v1\"\n[pools.p.health]\nkind = \"none\"\n{}",
        nodes_toml(&nodes)
    ))
    .await;
    let pool = lb.handle.pool("p").unwrap();
    let proxy = IpAddr::from([127, 0, 0, 1]);

    // Clients named by a v1 and a v2 header from the trusted proxy: hashed and
    // passed on as themselves.
    for i in 0..50u32 {
        let real: IpAddr = IpAddr::from([203, 0, 113, (i % 250) as u8 + 1]);
        let want = pool.snapshot().select(real).next().unwrap().name.clone();
        let mut c = connect_from(proxy, lb.addr).await.unwrap();
        let header = if i % 2 == 0 {
            format!("PROXY TCP4 {real} 192.0.2.1 4{i:04} 443\r\n").into_bytes()
        } else {
            let mut h = vec![
                0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11,
                0, 12,
            ];
            let IpAddr::V4(r) = real else { unreachable!() };
            h.extend_from_slice(&r.octets());
            h.extend_from_slice(&[192, 0, 2, 1]);
            h.extend_from_slice(&(40000 + i as u16).to_be_bytes());
            h.extend_from_slice(&443u16.to_be_bytes());
            h
        };
        // Header and first client bytes in one write.
        let mut first = header.clone();
        first.extend_from_slice(b"ping\n");
        c.write_all(&first).await.unwrap();
        let line = read_line(&mut c).await.unwrap();
        let port = 40000 + i;
        assert_eq!(line, format!("{want} v1 {real}:{port} 192.0.2.1:443"));
        assert_eq!(read_line(&mut c).await.unwrap(), "ping");
    }

    // A header split over several writes still works.
    let mut c = connect_from(proxy, lb.addr).await.unwrap();
    for part in ["PROXY TCP4 203.0", ".113.77 192.0.2.1", " 5555 443\r", "\n"] {
        c.write_all(part.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = read_line(&mut c).await.unwrap();
    assert!(
        line.ends_with(" v1 203.0.113.77:5555 192.0.2.1:443"),
        "{line}"
    );

    // The access rules judge the named client, not the proxy.
    let before = rejected("denied");
    let mut c = connect_from(proxy, lb.addr).await.unwrap();
    c.write_all(b"PROXY TCP4 198.51.100.9 192.0.2.1 1 443\r\n")
        .await
        .unwrap();
    assert_closed(&mut c).await;
    assert_eq!(rejected("denied") - before, 1.0);

    // Malformed, and missing (timeout): closed and counted.
    let before = rejected("proxy_header");
    let mut c = connect_from(proxy, lb.addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_closed(&mut c).await;
    let started = Instant::now();
    let mut c = connect_from(proxy, lb.addr).await.unwrap();
    assert_closed(&mut c).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}; proxy_header_timeout is 300ms"
    );
    assert_eq!(rejected("proxy_header") - before, 2.0);

    // Not a trusted proxy: an ordinary client, hashed on its own address, and a
    // header it sends is just data to the node.
    let src = client_ip(77);
    let want = pool.snapshot().select(src).next().unwrap().name.clone();
    let mut c = connect_from(src, lb.addr).await.unwrap();
    c.write_all(b"PROXY TCP4 203.0.113.1 192.0.2.1 1 2\r\n")
        .await
        .unwrap();
    let line = read_line(&mut c).await.unwrap();
    assert!(
        line.starts_with(&format!("{want} v1 {src}:")),
        "{line}: an untrusted client's own address is used"
    );
    assert_eq!(
        read_line(&mut c).await.unwrap(),
        "PROXY TCP4 203.0.113.1 192.0.2.1 1 2\r",
        "forwarded as data"
    );
    lb.stop().await;
}

fn rejected(reason: &str) -> f64 {
    let text = ringlb::metrics::prometheus().unwrap().render();
    text.lines()
        .find(|l| {
            l.starts_with("ringlb_connections_rejected_total{")
                && l.contains("listener=\"lb\"")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn assert_closed(c: &mut TcpStream) {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "expected a close, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => panic!("not closed within 5s"),
    }
}

/// Client IPs (from 127.60.0.0 on) whose own node, without any bound, is `node`.
fn clients_of(pool: &ringlb::pool::Pool, node: &str, n: usize, skip: u32) -> Vec<IpAddr> {
    let s = pool.snapshot();
    (skip..)
        .map(|i| IpAddr::from([127, 60, (i / 250) as u8, (i % 250) as u8 + 1]))
        .filter(|ip| s.select(*ip).next().unwrap().name == node)
        .take(n)
        .collect()
}

async fn hold(ip: IpAddr, lb: SocketAddr) -> (String, TcpStream) {
    let mut s = connect_from(ip, lb).await.unwrap();
    let name = read_line(&mut s).await.unwrap();
    (name, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_factor_bounds_every_node_and_keeps_everyone_else_sticky() {
    let backends = backends(3).await;
    let base = |extra: &str| {
        format!(
            "shutdown_grace = \"1s\"\n[[listener]]\nname = \"lb\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\nconnect_attempts = 3\n{extra}\n[pools.p.health]\nkind = \"none\"\n{}",
            nodes_toml(&nodes_of(&backends))
        )
    };
    // The population: 10 clients of each node, arriving in turn (an even load),
    // then 20 more clients of node-0 (the skew).
    let plain = start_lb(&base("")).await;
    let pool = plain.handle.pool("p").unwrap();
    let of: Vec<Vec<IpAddr>> = ["node-0", "node-1", "node-2"]
        .iter()
        .map(|n| clients_of(&pool, n, 30, 0))
        .collect();
    let even: Vec<(usize, IpAddr)> = (0..10)
        .flat_map(|i| (0..3).map(move |k| (k, i)))
        .map(|(k, i)| (k, of[k][i]))
        .collect();
    let skew: Vec<IpAddr> = of[0][10..30].to_vec();

    // Without a bound: node-0 takes all 30 of its clients.
    let mut held = Vec::new();
    for (_, ip) in &even {
        held.push(hold(*ip, plain.addr).await);
    }
    for ip in &skew {
        held.push(hold(*ip, plain.addr).await);
    }
    let count = |held: &[(String, TcpStream)], n: &str| held.iter().filter(|(m, _)| m == n).count();
    assert_eq!(count(&held, "node-0"), 30, "skewed: node-0 overloaded");
    drop(held);
    plain.stop().await;

    // With 1.25: the bound is ceil(1.25 x (open + 1) / 3) at every new connection.
    let bounded = start_lb(&base("balance_factor = 1.25")).await;
    let pool = bounded.handle.pool("p").unwrap();
    let mut held: Vec<(String, TcpStream)> = Vec::new();
    let counted = |n: u64| {
        let pool = pool.clone();
        async move {
            eventually(Duration::from_secs(5), "connection counted", || {
                let pool = pool.clone();
                async move {
                    pool.nodes()
                        .iter()
                        .map(|x| x.active.load(Ordering::Relaxed))
                        .sum::<u64>()
                        == n
                }
            })
            .await
        }
    };
    for (k, ip) in &even {
        let (name, s) = hold(*ip, bounded.addr).await;
        assert_eq!(name, format!("node-{k}"), "an even load moves nobody");
        held.push((name, s));
        counted(held.len() as u64).await;
    }
    let mut moved = 0;
    for ip in &skew {
        let open = held.len() as u64;
        let bound = (1250 * (open + 1)).div_ceil(3000);
        let (name, s) = hold(*ip, bounded.addr).await;
        if name != "node-0" {
            moved += 1;
            // It went to its next node along the ring that was below its bound.
            let order = pool.snapshot().order(*ip);
            assert_ne!(order[0].name, name);
        }
        held.push((name, s));
        counted(held.len() as u64).await;
        for node in pool.nodes() {
            let a = node.active.load(Ordering::Relaxed);
            assert!(a <= bound, "{} has {a} open, bound {bound}", node.name);
        }
    }
    // The last connection arrived with 49 open: bound ceil(1.25 x 50 / 3) = 21.
    let final_bound = (1250u64 * 50).div_ceil(3000);
    assert_eq!(
        count(&held, "node-0") as u64,
        final_bound,
        "node-0 filled up to its bound"
    );
    assert_eq!(moved, 30 - final_bound as usize);
    // Clients of the nodes below their bound still land on their own node.
    for (k, clients) in of.iter().enumerate().skip(1) {
        for ip in &clients[..10] {
            let (name, s) = hold(*ip, bounded.addr).await;
            assert_eq!(name, format!("node-{k}"));
            drop(s);
        }
    }
    let st = ringlb::admin::status(&bounded.handle);
    assert_eq!(st.pools[0].balance_factor, Some(1.25));
    drop(held);
    bounded.stop().await;
}

async fn post(admin: SocketAddr, path: &str) -> (u16, String) {
    tokio::task::spawn_blocking({
        let path = path.to_string();
        move || ringlb::admin::request(admin, "POST", &path, None, Duration::from_secs(5)).unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_enable_disable_through_the_admin_endpoint_and_the_cli() {
    let backends = backends(3).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drain.toml");
    let text = |state1: &str| {
        format!(
            "shutdown_grace = \"1s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listener]]\nname = \"lb\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\n[pools.p.health]\nkind = \"none\"\n{}",
            nodes_toml(&nodes_of(&backends)).replacen(
                "name = \"node-1\"",
                &format!("name = \"node-1\"\nstate = \"{state1}\""),
                1
            )
        )
    };
    std::fs::write(&path, text("enabled")).unwrap();
    ringlb::metrics::install_prometheus();
    let lb = Served::run(
        Server::bind(Config::from_file(&path).unwrap()).unwrap(),
        "lb",
    );
    let admin = lb.admin.unwrap();
    let pool = lb.handle.pool("p").unwrap();
    let ips: Vec<IpAddr> = (0..300).map(client_ip).collect();
    let before = nodes_for(&ips, lb.addr).await;
    let of1: Vec<usize> = (0..ips.len()).filter(|&i| before[i] == "node-1").collect();
    assert!(of1.len() > 50);
    let held_ip = ips[of1[0]];
    let (name, mut held) = hold(held_ip, lb.addr).await;
    assert_eq!(name, "node-1");

    // Drain: node-1's clients move to their next node, nobody else moves, the
    // open connection keeps flowing.
    let (code, body) = post(admin, "/pools/p/nodes/node-1/drain").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"admin_state\":\"drain\""), "{body}");
    let during = nodes_for(&ips, lb.addr).await;
    for i in 0..ips.len() {
        if before[i] == "node-1" {
            assert_ne!(during[i], "node-1");
            let next = pool.snapshot().select(ips[i]).next().unwrap().name.clone();
            assert_eq!(during[i], next);
        } else {
            assert_eq!(during[i], before[i], "client {i} moved");
        }
    }
    held.write_all(b"still flowing\n").await.unwrap();
    assert_eq!(read_line(&mut held).await.unwrap(), "still flowing");
    let st = ringlb::admin::status(&lb.handle);
    let n1 = st.pools[0]
        .nodes
        .iter()
        .find(|n| n.name == "node-1")
        .unwrap()
        .clone();
    assert_eq!(n1.admin_state.as_str(), "drain");
    assert!(!n1.in_service);
    let metrics = ringlb::metrics::prometheus().unwrap().render();
    assert!(
        metrics.contains("ringlb_node_admin_state{pool=\"p\",node=\"node-1\"} 1"),
        "{metrics}"
    );
    let page = ringlb::admin::page(&st);
    assert!(page.contains("UP · DRAIN"), "status page shows the drain");

    // Enable through the CLI: exactly node-1's clients return.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["node", "enable", "p", "node-1", "--config"])
        .arg(&path)
        .args(["--admin", &admin.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "p/node-1: enabled (was drain)"
    );
    assert_eq!(nodes_for(&ips, lb.addr).await, before);

    // Disable: off the ring and its open connections are closed.
    let (code, _) = post(admin, "/pools/p/nodes/node-1/disable").await;
    assert_eq!(code, 200);
    let r = read_to_eof(&mut held, Duration::from_secs(5)).await;
    assert!(
        r.map_or(true, |b| b.is_empty()),
        "the held connection was closed"
    );
    assert!(nodes_for(&ips, lb.addr).await.iter().all(|n| n != "node-1"));

    // Unknown pool or node: 404; GET: 405; a browser page (Origin): 403.
    assert_eq!(post(admin, "/pools/nope/nodes/node-1/drain").await.0, 404);
    assert_eq!(post(admin, "/pools/p/nodes/nope/drain").await.0, 404);
    let (code, _) = tokio::task::spawn_blocking(move || {
        ringlb::admin::request(
            admin,
            "GET",
            "/pools/p/nodes/node-1/drain",
            None,
            Duration::from_secs(5),
        )
        .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(code, 405);
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(b"POST /pools/p/nodes/node-1/enable HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert_eq!(
        pool.node("node-1").unwrap().admin_state(),
        AdminState::Disabled
    );

    // A reload that does not touch node-1's state keeps the runtime state; one
    // that changes it in the file applies it.
    let reload = |h: &Handle| {
        let before = h.generation();
        h.reload();
        let h = h.clone();
        async move {
            eventually(Duration::from_secs(10), "reload applied", || {
                let h = h.clone();
                async move { h.generation() > before }
            })
            .await
        }
    };
    std::fs::write(
        &path,
        text("enabled").replace("shutdown_grace = \"1s\"", "shutdown_grace = \"2s\""),
    )
    .unwrap();
    reload(&lb.handle).await;
    assert_eq!(
        pool.node("node-1").unwrap().admin_state(),
        AdminState::Disabled
    );
    std::fs::write(&path, text("drain")).unwrap();
    reload(&lb.handle).await;
    assert_eq!(
        pool.node("node-1").unwrap().admin_state(),
        AdminState::Drain
    );
    std::fs::write(&path, text("enabled")).unwrap();
    reload(&lb.handle).await;
    assert_eq!(
        pool.node("node-1").unwrap().admin_state(),
        AdminState::Enabled
    );
    assert_eq!(nodes_for(&ips, lb.addr).await, before);
    lb.stop().await;

    // state = "drain" at load: the node starts off the ring.
    std::fs::write(&path, text("drain")).unwrap();
    let lb = Served::run(
        Server::bind(Config::from_file(&path).unwrap()).unwrap(),
        "lb",
    );
    let at_load = nodes_for(&ips, lb.addr).await;
    assert!(at_load.iter().all(|n| n != "node-1"));
    for i in 0..ips.len() {
        if before[i] != "node-1" {
            assert_eq!(at_load[i], before[i]);
        }
    }
    lb.stop().await;
}
