//! Probe descriptor hygiene, alone in its own test binary so no other test opens or
//! closes descriptors in this process while it counts them.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_probes_against_refusing_and_silent_nodes_leak_no_descriptor() {
    // A refusing node: a port that is bound and never listens.
    let (refusing_addr, _refusing) = closed_port(LOCAL);
    // A silent node: accepts, never answers, lets go when the prober closes.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = silent.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 256];
                while matches!(s.read(&mut b).await, Ok(n) if n > 0) {}
            });
        }
    });
    let text = config_text(
        &[("refusing".into(), refusing_addr), ("silent".into(), silent_addr)],
        "",
        "passive_failures = 0\n[pools.p.health]\nkind = \"http\"\ninterval = \"10ms\"\ntimeout = \"5ms\"",
        "",
    );
    let lb = start(&text).await;
    // Baseline once the balancer and its probe tasks exist.
    let refusing_node = lb.pool.node("refusing").unwrap().clone();
    let silent_node = lb.pool.node("silent").unwrap().clone();
    eventually(Duration::from_secs(5), "first probes ran", || {
        let ok = refusing_node.health().probes >= 5 && silent_node.health().probes >= 5;
        async move { ok }
    })
    .await;
    let baseline = open_fds();
    // Sample the descriptor count every 5 ms until 500 more probes ran.
    let mut peak = baseline;
    poll(Duration::from_secs(60), Duration::from_millis(5), || {
        peak = peak.max(open_fds());
        let done = refusing_node.health().probes >= 505 && silent_node.health().probes >= 505;
        async move { done.then_some(()) }
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "500 probes took over {:?}",
            patient(Duration::from_secs(60))
        )
    });
    assert_eq!(
        refusing_node.health().last.unwrap().detail,
        "connect refused"
    );
    assert_eq!(
        silent_node.health().last.unwrap().detail,
        "timeout after 5ms"
    );
    // In flight at any moment: at most one probe socket per node, plus the silent
    // server's side of it.
    assert!(
        peak <= baseline + 6,
        "fds peaked at {peak}, baseline {baseline}"
    );
    eventually(Duration::from_secs(5), "fd count back to baseline", || {
        let n = open_fds();
        async move { n <= baseline }
    })
    .await;
    lb.stop().await;
    eventually(Duration::from_secs(5), "fds released after stop", || {
        let n = open_fds();
        async move { n <= baseline }
    })
    .await;
}
