//! Data path end to end: real backends, the real balancer, clients bound to distinct
//! loopback addresses.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_each_way_byte_exact_on_concurrent_connections() {
    let b = backends(3).await;
    let lb = start(&config_text(&nodes_of(&b), "", "", "")).await;
    let mut set = JoinSet::new();
    for c in 0..4u32 {
        let addr = lb.addr;
        set.spawn(async move {
            let mut s = connect_from(client_ip(c * 97), addr).await.unwrap();
            let node = read_line(&mut s).await.unwrap();
            let data = Arc::new(pattern(10 * MIB, u64::from(c) + 1));
            let (mut rd, mut wr) = s.into_split();
            let to_send = data.clone();
            let writer = tokio::spawn(async move {
                for chunk in to_send.chunks(61_111) {
                    wr.write_all(chunk).await.unwrap();
                }
                wr.shutdown().await.unwrap();
            });
            let mut got = Vec::with_capacity(10 * MIB);
            tokio::time::timeout(Duration::from_secs(60), rd.read_to_end(&mut got))
                .await
                .expect("echo finished in time")
                .unwrap();
            writer.await.unwrap();
            assert_eq!(got.len(), data.len(), "connection {c} via {node}");
            assert!(got == *data, "connection {c} via {node}: bytes differ");
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let total: u64 = lb
        .pool
        .nodes()
        .iter()
        .map(|n| n.total.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(total, 4);
    // Bulk directions were spliced (Linux), and every pipe is back in the pool.
    if ringlb::proxy::splice::enabled() {
        assert!(
            ringlb::proxy::splice::pipes_in_existence() > 0,
            "splice never engaged"
        );
    }
    lb.stop().await;
    // (Other tests in this binary may hold a pipe for a moment.)
    eventually(
        Duration::from_secs(10),
        "every pipe back in the pool",
        || {
            let back = ringlb::proxy::splice::pipes_pooled()
                == ringlb::proxy::splice::pipes_in_existence();
            async move { back }
        },
    )
    .await;
}

/// A backend that reads until EOF and only then answers with the byte count: the
/// answer can only arrive if the client's FIN was forwarded as a half-close and the
/// return direction stayed open.
async fn count_after_eof_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.unwrap();
                // Reply after EOF, in several writes with pauses.
                s.write_all(format!("got {} bytes", all.len()).as_bytes())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                s.write_all(b"; bye\n").await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_client_still_receives_the_reply() {
    let (addr, _task) = count_after_eof_backend().await;
    let lb = start(&config_text(&[("counter".into(), addr)], "", "", "")).await;
    let mut s = connect_from(client_ip(5), lb.addr).await.unwrap();
    s.write_all(&pattern(100_000, 9)).await.unwrap();
    s.shutdown().await.unwrap();
    let got = read_to_eof(&mut s, Duration::from_secs(10)).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&got), "got 100000 bytes; bye\n");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_from_the_node_side_keeps_the_client_direction_open() {
    // Greet backend: after the client half-closes, the echo of everything sent still
    // arrives, then EOF.
    let b = backends(1).await;
    let lb = start(&config_text(&nodes_of(&b), "", "", "")).await;
    let mut s = connect_from(client_ip(6), lb.addr).await.unwrap();
    assert_eq!(read_line(&mut s).await.unwrap(), "node-0");
    let data = pattern(300_000, 3);
    s.write_all(&data).await.unwrap();
    s.shutdown().await.unwrap();
    let got = read_to_eof(&mut s, Duration::from_secs(10)).await.unwrap();
    assert!(got == data);
    lb.stop().await;
}

/// Ask the real binary which node each IP maps to.
fn which_cli(config_text: &str, ips: &[IpAddr]) -> HashMap<IpAddr, (String, Vec<String>)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("which.toml");
    std::fs::write(&path, config_text).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["which", "--config"])
        .arg(&path)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = ips.iter().map(|ip| format!("{ip}\n")).collect();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut map = HashMap::new();
    for line in text.lines().filter(|l| l.contains(" -> ")) {
        // "  127.0.0.2 -> node-1 (127.0.0.1:4000)  then: node-0, node-2"
        let (ip, rest) = line.trim().split_once(" -> ").unwrap();
        let node = rest.split_whitespace().next().unwrap().to_string();
        let then = rest.split_once("then: ").unwrap().1;
        // Up to the next field (`  [not tried ...]`, `  [x is down]`).
        let then = then.split("  [").next().unwrap();
        let fallback = then.split(", ").map(str::to_string).collect();
        map.insert(ip.trim().parse().unwrap(), (node, fallback));
    }
    assert_eq!(map.len(), ips.len(), "which output:\n{text}");
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stickiness_1000_ips_3_connections_each_on_the_node_which_names() {
    let b = backends(3).await;
    let text = config_text(&nodes_of(&b), "", "", "");
    let lb = start(&text).await;
    let ips: Vec<IpAddr> = (0..1000).map(client_ip).collect();
    let expected = which_cli(&text, &ips);

    let mut set = JoinSet::new();
    let chunks: Vec<Vec<IpAddr>> = ips.chunks(50).map(|c| c.to_vec()).collect();
    for chunk in chunks {
        let addr = lb.addr;
        set.spawn(async move {
            let mut seen = Vec::new();
            for ip in chunk {
                let mut nodes = Vec::new();
                for _ in 0..3 {
                    nodes.push(node_for(ip, addr).await.unwrap());
                }
                seen.push((ip, nodes));
            }
            seen
        });
    }
    let mut per_node: HashMap<String, usize> = HashMap::new();
    let mut checked = 0;
    while let Some(r) = set.join_next().await {
        for (ip, nodes) in r.unwrap() {
            assert!(
                nodes.iter().all(|n| n == &nodes[0]),
                "{ip} moved: {nodes:?}"
            );
            assert_eq!(nodes[0], expected[&ip].0, "{ip}: `ringlb which` disagrees");
            *per_node.entry(nodes[0].clone()).or_default() += 1;
            checked += 1;
        }
    }
    assert_eq!(checked, 1000);
    assert_eq!(per_node.len(), 3, "every node got clients: {per_node:?}");
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_fallback_serves_a_dead_nodes_clients_on_their_next_node_only() {
    let mut b = backends(3).await;
    // A node whose port is closed (bound, never listening).
    let (dead_addr, _dead) = closed_port(LOCAL);
    let mut nodes = nodes_of(&b);
    nodes.push(("dead".into(), dead_addr));
    let text = config_text(
        &nodes,
        "",
        "connect_attempts = 2\n[pools.p.health]\nkind = \"none\"",
        "",
    );
    let lb = start(&text).await;
    let ips: Vec<IpAddr> = (0..400).map(|i| client_ip(i * 13)).collect();
    let expected = which_cli(&text, &ips);
    let mut moved = 0;
    for ip in &ips {
        let got = node_for(*ip, lb.addr).await.unwrap();
        let (primary, fallback) = &expected[ip];
        if primary == "dead" {
            moved += 1;
            assert_eq!(&got, &fallback[0], "{ip}: not on its next node");
        } else {
            assert_eq!(&got, primary, "{ip} moved although its node is up");
        }
    }
    assert!(moved > 40, "only {moved} clients had the dead node");
    let dead_node = lb.pool.node("dead").unwrap();
    assert_eq!(
        dead_node
            .connect_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        moved
    );
    b.truncate(3);
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reachable_node_closes_the_client() {
    let (dead_addr, _dead) = closed_port(LOCAL);
    let lb = start(&config_text(&[("dead".into(), dead_addr)], "", "", "")).await;
    let mut s = connect_from(client_ip(1), lb.addr).await.unwrap();
    let got = read_to_eof(&mut s, Duration::from_secs(5)).await;
    assert!(matches!(got, Ok(ref v) if v.is_empty()) || got.is_err());
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_both_sides_but_traffic_keeps_it_open() {
    let b = backends(1).await;
    let lb = start(&config_text(
        &nodes_of(&b),
        "",
        "idle_timeout = \"400ms\"",
        "",
    ))
    .await;

    // Active connection: a message every 100 ms for 1.2 s stays open.
    let node = lb.pool.node("node-0").unwrap().clone();
    let mut active = connect_from(client_ip(1), lb.addr).await.unwrap();
    read_line(&mut active).await.unwrap();
    for i in 0..12 {
        active
            .write_all(format!("ping {i}\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(read_line(&mut active).await.unwrap(), format!("ping {i}"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Three idle timeouts later ringlb still counts it as an open connection to
    // node-0 (the echoes above prove the client side; the count proves the
    // balancer did not close it and reconnect).
    assert_eq!(
        node.active.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the active connection, as ringlb counts it on node-0"
    );

    // Idle connection: closed after the timeout, not before.
    let mut idle = connect_from(client_ip(2), lb.addr).await.unwrap();
    read_line(&mut idle).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let rest = read_to_eof(&mut idle, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(rest.is_empty());
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(350),
        "closed after {waited:?}"
    );
    // The node side is closed too: its active count drops to zero for the idle one.
    drop(active);
    eventually(Duration::from_secs(5), "node connections closed", || {
        let n = node.active.load(std::sync::atomic::Ordering::Relaxed);
        async move { n == 0 }
    })
    .await;
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_rejects_the_excess_and_keeps_serving_the_rest() {
    let b = backends(2).await;
    let lb = start(&config_text(&nodes_of(&b), "max_connections = 5", "", "")).await;
    let mut open = Vec::new();
    for i in 0..5 {
        let mut s = connect_from(client_ip(i), lb.addr).await.unwrap();
        read_line(&mut s).await.unwrap();
        open.push(s);
    }
    // The 6th..10th are accepted by the kernel and closed at once by ringlb.
    for i in 5..10 {
        let mut s = connect_from(client_ip(i), lb.addr).await.unwrap();
        let got = read_to_eof(&mut s, Duration::from_secs(5)).await;
        assert!(
            matches!(got, Ok(ref v) if v.is_empty()) || got.is_err(),
            "excess connection was served: {got:?}"
        );
    }
    // The first five still work.
    for (i, s) in open.iter_mut().enumerate() {
        s.write_all(format!("still {i}\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(read_line(s).await.unwrap(), format!("still {i}"));
    }
    // Closing one frees a slot.
    drop(open.pop());
    let addr = lb.addr;
    eventually(Duration::from_secs(5), "a slot frees up", || async move {
        match connect_from(client_ip(50), addr).await {
            Ok(mut s) => read_line(&mut s).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_open_connections_and_refuses_new_ones() {
    let b = backends(1).await;
    let lb = start(&config_text(
        &nodes_of(&b),
        "",
        "",
        "shutdown_grace = \"20s\"",
    ))
    .await;
    let mut s = connect_from(client_ip(1), lb.addr).await.unwrap();
    read_line(&mut s).await.unwrap();
    let addr = lb.addr;
    lb.shutdown.cancel();
    eventually(
        Duration::from_secs(5),
        "new connects refused",
        || async move { connect_from(client_ip(2), addr).await.is_err() },
    )
    .await;
    // The open connection keeps working during the grace period.
    for i in 0..5 {
        s.write_all(format!("during grace {i}\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(
            read_line(&mut s).await.unwrap(),
            format!("during grace {i}")
        );
    }
    assert!(!lb.task.is_finished());
    s.shutdown().await.unwrap();
    assert!(read_to_eof(&mut s, Duration::from_secs(5))
        .await
        .unwrap()
        .is_empty());
    let report = tokio::time::timeout(Duration::from_secs(10), lb.task)
        .await
        .expect("drained before the grace ran out")
        .unwrap();
    // Ours, plus any probe connect that was already queued when accepting stopped
    // (queued connections are accepted and served, not reset).
    assert!(report.open_at_shutdown >= 1);
    assert_eq!(report.closed_at_grace, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_running_out_closes_the_rest() {
    let b = backends(1).await;
    let lb = start(&config_text(
        &nodes_of(&b),
        "",
        "",
        "shutdown_grace = \"300ms\"",
    ))
    .await;
    let mut s = connect_from(client_ip(1), lb.addr).await.unwrap();
    read_line(&mut s).await.unwrap();
    lb.shutdown.cancel();
    let got = read_to_eof(&mut s, Duration::from_secs(10)).await.unwrap();
    assert!(got.is_empty());
    let report = lb.task.await.unwrap();
    assert_eq!(report.open_at_shutdown, 1);
    assert_eq!(report.closed_at_grace, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_uploads_all_arrive_and_every_eof_is_forwarded() {
    // Bulk uploads exercise splice; each backend reply comes only after the EOF
    // has crossed the balancer, so a lost read-readiness would hang a stream.
    let (addr, _task) = count_after_eof_backend().await;
    let lb = start(&config_text(&[("counter".into(), addr)], "", "", "")).await;
    let mut set = JoinSet::new();
    for c in 0..8u32 {
        let addr = lb.addr;
        set.spawn(async move {
            let mut s = connect_from(client_ip(700 + c), addr).await.unwrap();
            let chunk = pattern(256 * 1024, u64::from(c) + 11);
            for _ in 0..40 {
                s.write_all(&chunk).await.unwrap();
            }
            s.shutdown().await.unwrap();
            let got = read_to_eof(&mut s, Duration::from_secs(20)).await.unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got),
                format!("got {} bytes; bye\n", 40 * 256 * 1024),
                "stream {c}"
            );
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    lb.stop().await;
}
