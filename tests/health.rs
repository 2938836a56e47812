//! Health end to end: deep HTTP checks, killed and hung backends, passive failures,
//! keep/close of open connections, all nodes down. Real sockets on loopback; state
//! changes are awaited by polling with a deadline, never by sleeping.

mod common;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WITHIN: Duration = Duration::from_secs(10);

fn ips(n: u32) -> Vec<IpAddr> {
    (0..n).map(|i| client_ip(i * 7 + 3)).collect()
}

/// Wait until the node has the state and the published ring agrees with it.
async fn wait_state(lb: &Running, node: &str, up: bool) {
    let n = lb.pool.node(node).unwrap().clone();
    let pool = lb.pool.clone();
    eventually(WITHIN, &format!("{node} up={up}"), || {
        let snap = pool.snapshot();
        let on_ring = snap.members.iter().any(|m| m.name == n.name);
        let ok = n.is_up() == up && (snap.failing_open || on_ring == up);
        async move { ok }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_check_503_moves_only_that_nodes_clients_and_200_brings_them_back() {
    let fleet = Fleet::start(3).await;
    let text = config_text(
        &fleet.nodes(),
        "",
        &fleet.http_health("100ms", "80ms", 2, 3),
        "",
    );
    let lb = start(&text).await;
    let clients = ips(1000);
    let before = nodes_for(&clients, lb.addr).await;
    let orders: Vec<Vec<String>> = {
        let snap = lb.pool.snapshot();
        clients
            .iter()
            .map(|ip| snap.order(*ip).iter().map(|n| n.name.clone()).collect())
            .collect()
    };
    for (b, o) in before.iter().zip(&orders) {
        assert_eq!(b, &o[0]);
    }

    // node-1 is overloaded: its deep check answers 503.
    let node1 = lb.pool.node("node-1").unwrap().clone();
    let probes_at_flip = node1.health().probes;
    fleet.health[1].set_healthy(false);
    wait_state(&lb, "node-1", false).await;
    let h = node1.health();
    assert!(
        h.probes - probes_at_flip >= 3,
        "down after {} probes, fall is 3",
        h.probes - probes_at_flip
    );
    assert_eq!(h.last.as_ref().unwrap().detail, "http 503");
    assert_eq!(h.reason, "http 503 (3 consecutive failures)");

    let during = nodes_for(&clients, lb.addr).await;
    let mut moved = 0;
    for i in 0..clients.len() {
        if before[i] == "node-1" {
            moved += 1;
            assert_eq!(
                during[i], orders[i][1],
                "{}: not on its next node",
                clients[i]
            );
        } else {
            assert_eq!(
                during[i], before[i],
                "{} moved but its node is up",
                clients[i]
            );
        }
    }
    assert!(moved > 200, "node-1 had only {moved} of 1000 clients");

    // Healthy again: back after `rise` probes, and exactly its clients return.
    let probes_at_recover = node1.health().probes;
    fleet.health[1].set_healthy(true);
    wait_state(&lb, "node-1", true).await;
    assert!(node1.health().probes - probes_at_recover >= 2);
    let after = nodes_for(&clients, lb.addr).await;
    assert_eq!(after, before);
    assert_eq!(node1.health().transitions, 2);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_is_taken_down_by_probes_and_then_no_client_fails() {
    let mut b = backends(3).await;
    let text = config_text(
        &nodes_of(&b),
        "",
        "passive_failures = 0\n[pools.p.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"80ms\"\nfall = 2",
        "",
    );
    let lb = start(&text).await;
    let killed = b.remove(2);
    killed.stop().await;
    wait_state(&lb, "node-2", false).await;
    let n2 = lb.pool.node("node-2").unwrap().clone();
    assert_eq!(n2.health().last.unwrap().detail, "connect refused");
    let failures_at_down = n2.connect_failures.load(Ordering::Relaxed);
    let got = nodes_for(&ips(300), lb.addr).await;
    assert!(
        got.iter().all(|n| n == "node-0" || n == "node-1"),
        "{got:?}"
    );
    assert_eq!(
        n2.connect_failures.load(Ordering::Relaxed),
        failures_at_down,
        "no connection tried the down node"
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_failures_take_a_killed_node_down_before_any_probe() {
    let mut b = backends(3).await;
    // Probes every hour: only real traffic can notice the dead node in this test.
    let text = config_text(
        &nodes_of(&b),
        "",
        "passive_failures = 2\n[pools.p.health]\ninterval = \"1h\"\ntimeout = \"1s\"",
        "",
    );
    let lb = start(&text).await;
    let clients = ips(600);
    let orders: Vec<Vec<String>> = {
        let snap = lb.pool.snapshot();
        clients
            .iter()
            .map(|ip| snap.order(*ip).iter().map(|n| n.name.clone()).collect())
            .collect()
    };
    let killed = b.remove(1);
    killed.stop().await;
    let n1 = lb.pool.node("node-1").unwrap().clone();

    // Its clients, one after another: every one is served (fallback), and after two
    // connect failures the node is down, so nobody waits on it again.
    let mut served = 0;
    for (ip, order) in clients.iter().zip(&orders) {
        if order[0] != "node-1" {
            continue;
        }
        let got = node_for(*ip, lb.addr).await.expect("client served");
        assert_eq!(&got, &order[1]);
        served += 1;
    }
    assert!(served > 100, "{served}");
    assert!(!n1.is_up());
    let reason = n1.health().reason;
    assert!(
        reason.starts_with("2 consecutive connect failures from traffic"),
        "taken down by traffic, not by a probe: {reason}"
    );
    assert_eq!(n1.connect_failures.load(Ordering::Relaxed), 2);
    lb.stop().await;
}

/// A health endpoint that accepts and then says nothing (or half a status line).
async fn hung_health(port: u16, ip: [u8; 4], half: bool) -> tokio::task::JoinHandle<()> {
    let l = TcpListener::bind((std::net::Ipv4Addr::from(ip), port))
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if half {
                    let _ = s.write_all(b"HTTP/1.1 20").await;
                }
                // Hold the socket until the prober closes it.
                let mut sink = [0u8; 1024];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_accepts_but_never_answers_the_probe_is_down_at_the_timeout() {
    let fleet = Fleet::start(3).await;
    // Replace the health endpoints of node-1 (silent) and node-2 (half a line).
    let port = fleet.health_port;
    let Fleet {
        traffic, health, ..
    } = fleet;
    let mut health = health.into_iter();
    let keep0 = health.next().unwrap();
    for h in health {
        h.stop().await;
    }
    let _silent = hung_health(port, [127, 0, 0, 2], false).await;
    let _half = hung_health(port, [127, 0, 0, 3], true).await;
    let probe = format!(
        "[pools.p.health]\nkind = \"http\"\npath = \"/healthcheck\"\nport = {port}\ninterval = \"150ms\"\ntimeout = \"100ms\"\nfall = 2"
    );
    let lb = start(&config_text(&nodes_of(&traffic), "", &probe, "")).await;
    wait_state(&lb, "node-1", false).await;
    wait_state(&lb, "node-2", false).await;
    for name in ["node-1", "node-2"] {
        let h = lb.pool.node(name).unwrap().health();
        let last = h.last.unwrap();
        assert_eq!(last.detail, "timeout after 100ms", "{name}");
        assert!(last.latency >= Duration::from_millis(100), "{name}");
        assert!(
            last.latency < patient(Duration::from_millis(600)),
            "{name}: {last:?}"
        );
    }
    assert!(lb.pool.node("node-0").unwrap().is_up());
    drop(keep0);
    lb.stop().await;
}

async fn open_connections_when_node_goes_down(on_node_down: &str) -> (usize, usize) {
    let fleet = Fleet::start(2).await;
    let pool = format!(
        "on_node_down = \"{on_node_down}\"\n{}",
        fleet.http_health("100ms", "80ms", 1, 2)
    );
    let lb = start(&config_text(&fleet.nodes(), "", &pool, "")).await;
    // Open connections until 5 are on node-0.
    let mut on_node0 = Vec::new();
    for i in 0..200 {
        let mut s = connect_from(client_ip(i), lb.addr).await.unwrap();
        if read_line(&mut s).await.unwrap() == "node-0" {
            on_node0.push(s);
        }
        if on_node0.len() == 5 {
            break;
        }
    }
    assert_eq!(on_node0.len(), 5);
    fleet.health[0].set_healthy(false);
    wait_state(&lb, "node-0", false).await;
    let (mut alive, mut closed) = (0, 0);
    for (i, s) in on_node0.iter_mut().enumerate() {
        let msg = format!("still there {i}\n");
        let ok = async {
            s.write_all(msg.as_bytes()).await?;
            let line = read_line(s).await?;
            Ok::<_, std::io::Error>(line == msg.trim_end())
        }
        .await;
        match ok {
            Ok(true) => alive += 1,
            _ => closed += 1,
        }
    }
    lb.stop().await;
    (alive, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_node_down_keep_lets_open_connections_flow() {
    assert_eq!(open_connections_when_node_goes_down("keep").await, (5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_node_down_close_closes_open_connections() {
    assert_eq!(open_connections_when_node_goes_down("close").await, (0, 5));
}

async fn all_down(when_all_down: &str) -> (Running, Fleet) {
    let fleet = Fleet::start(3).await;
    let pool = format!(
        "when_all_down = \"{when_all_down}\"\n{}",
        fleet.http_health("100ms", "80ms", 1, 1)
    );
    let lb = start(&config_text(&fleet.nodes(), "", &pool, "")).await;
    for h in &fleet.health {
        h.set_healthy(false);
    }
    for n in ["node-0", "node-1", "node-2"] {
        wait_state(&lb, n, false).await;
    }
    (lb, fleet)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down_with_reject_closes_new_connections_at_once() {
    let (lb, fleet) = all_down("reject").await;
    for i in 0..20 {
        let mut s = connect_from(client_ip(i), lb.addr).await.unwrap();
        let got = read_to_eof(&mut s, patient(Duration::from_secs(5))).await;
        assert!(
            matches!(got, Ok(ref v) if v.is_empty()) || got.is_err(),
            "served while all down: {got:?}"
        );
    }
    let total: u64 = lb
        .pool
        .nodes()
        .iter()
        .map(|n| n.total.load(Ordering::Relaxed))
        .sum();
    assert_eq!(total, 0, "no node was contacted");
    // One node recovers: service resumes on it.
    fleet.health[2].set_healthy(true);
    wait_state(&lb, "node-2", true).await;
    assert_eq!(node_for(client_ip(1), lb.addr).await.unwrap(), "node-2");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_down_with_any_fails_open_on_the_full_ring() {
    let (lb, _fleet) = all_down("any").await;
    let snap = lb.pool.snapshot();
    assert!(snap.failing_open);
    let clients = ips(100);
    let got = nodes_for(&clients, lb.addr).await;
    for (ip, node) in clients.iter().zip(&got) {
        assert_eq!(node, &snap.order(*ip)[0].name, "{ip}");
    }
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn which_probe_shows_node_states_and_maps_around_down_nodes() {
    let fleet = Fleet::start(3).await;
    fleet.health[1].set_healthy(false);
    let mut nodes = fleet.nodes();
    // node-2 refuses: point it at a closed port (bound, never listening).
    let (closed, _closed) = closed_port("127.0.0.3".parse().unwrap());
    nodes[2].1 = closed;
    let text = config_text(&nodes, "", &fleet.http_health("1s", "500ms", 2, 3), "");
    // Stop node-2's health endpoint so its probe is refused too.
    let mut health = fleet.health;
    health.pop().unwrap().stop().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    std::fs::write(&path, &text).unwrap();
    let clients = ips(50);
    let out = tokio::task::spawn_blocking(move || {
        let mut args = vec!["which".to_string(), "--probe".into(), "--config".into()];
        args.push(path.display().to_string());
        args.extend(clients.iter().map(|ip| ip.to_string()));
        std::process::Command::new(env!("CARGO_BIN_EXE_ringlb"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("node node-0       UP   http 200"), "{text}");
    assert!(text.contains("node node-1       DOWN http 503"), "{text}");
    assert!(
        text.contains("node node-2       DOWN connect refused"),
        "{text}"
    );
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(" -> ")).collect();
    assert_eq!(lines.len(), 50);
    for l in &lines {
        assert!(l.contains("-> node-0 ("), "{l}");
    }
    assert!(
        lines.iter().any(|l| l.ends_with("[node-1 is down]")),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with("[node-2 is down]")),
        "{text}"
    );
}

/// An HTTP endpoint that reads one request head and answers `pieces`, one write
/// each with a short pause between (so they reach the prober as separate reads),
/// then closes.
async fn scripted_http(
    pieces: Vec<&'static [u8]>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let pieces = pieces.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                for p in pieces {
                    if s.write_all(p).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_check_reads_a_chunked_body_split_across_chunks() {
    const HEAD: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
    // "all systems go": the expected text split across two chunks.
    let (good, _g) = scripted_http(vec![
        HEAD,
        b"7\r\nall sys\r\n",
        b"8\r\ntems go\n\r\n0\r\n\r\n",
    ])
    .await;
    // The same framing without the text.
    let (bad, _b) = scripted_http(vec![
        HEAD,
        b"7\r\nall sys\r\n",
        b"9\r\ntems down\r\n0\r\n\r\n",
    ])
    .await;
    let text = config_text(
        &[("good".into(), good), ("bad".into(), bad)],
        "",
        "passive_failures = 0\n[pools.p.health]\nkind = \"http\"\npath = \"/status\"\nexpect_body = \"all systems go\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 1\nfall = 2",
        "",
    );
    let lb = start(&text).await;
    wait_state(&lb, "bad", false).await;
    let b = lb.pool.node("bad").unwrap().health();
    assert_eq!(
        b.last.unwrap().detail,
        "http 200, body lacks \"all systems go\""
    );
    let g = lb.pool.node("good").unwrap().clone();
    eventually(WITHIN, "good probed 3 times", || {
        let n = g.health().probes;
        async move { n >= 3 }
    })
    .await;
    let h = g.health();
    assert!(g.is_up(), "{h:?}");
    assert_eq!(h.transitions, 0, "{h:?}");
    assert_eq!(h.last.unwrap().detail, "http 200");
    lb.stop().await;
}
