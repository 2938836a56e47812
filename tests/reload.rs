//! Reload end to end: a config file on disk, the real server in this process,
//! reloads requested as SIGHUP would (`Handle::reload`), real traffic throughout.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ringlb::demo::backend::Backend;
use ringlb::{Config, Handle, Server, ShutdownReport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

struct Live {
    handle: Handle,
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<ShutdownReport>,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Live {
    async fn start(text: &str) -> Live {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ringlb.toml");
        std::fs::write(&path, text).unwrap();
        let server = Server::bind(Config::from_file(&path).unwrap()).unwrap();
        let handle = server.handle();
        let addr = server.local_addr("lb").unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Live {
            handle,
            addr,
            shutdown,
            task,
            path,
            _dir: dir,
        }
    }

    /// Write the file, ask for a reload, wait until it was applied or refused.
    async fn reload(&self, text: &str) -> ringlb::server::ReloadRecord {
        common::reload(&self.handle, &self.path, text).await
    }

    async fn stop(self) -> ShutdownReport {
        self.shutdown.cancel();
        self.task.await.unwrap()
    }
}

fn nodes_with(b: &[Backend], pick: &[(usize, u32)]) -> String {
    pick.iter()
        .map(|&(i, w)| {
            format!(
                "[[pools.p.nodes]]\nname = \"{}\"\naddr = \"{}\"\nweight = {w}\n",
                b[i].name, b[i].addr
            )
        })
        .collect()
}

fn config(b: &[Backend], pick: &[(usize, u32)], listen: &str) -> String {
    format!(
        "shutdown_grace = \"5s\"\n[[listener]]\nname = \"lb\"\nlisten = \"{listen}\"\npool = \"p\"\n[pools.p]\n[pools.p.health]\nkind = \"none\"\n{}",
        nodes_with(b, pick)
    )
}

/// The node a fresh connection from `ip` must reach under the published ring.
fn expected(h: &Handle, ip: IpAddr) -> String {
    h.pool("p").unwrap().snapshot().order(ip)[0].name.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_drop_nothing_and_new_connections_follow_each_ring() {
    let b = backends(4).await;
    // The listener's `listen` text is the same in every variant (port 0
    // included), so every reload keeps its socket ("same socket" below).
    let listen = "127.0.0.1:0";
    let live = Live::start(&config(&b, &[(0, 1), (1, 1), (2, 1)], listen)).await;

    // 200 long-lived connections streaming both ways for the whole test.
    let stop_streaming = Arc::new(AtomicBool::new(false));
    let mut long = JoinSet::new();
    for c in 0..200u32 {
        let (addr, stop) = (live.addr, stop_streaming.clone());
        long.spawn(async move {
            let mut s = connect_from(client_ip(10_000 + c), addr).await.unwrap();
            let node = read_line(&mut s).await.unwrap();
            let (mut rd, mut wr) = s.into_split();
            let chunk = pattern(1500, u64::from(c) + 1);
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                rd.read_to_end(&mut got).await.map(|_| got)
            });
            let mut sent = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                wr.write_all(&chunk)
                    .await
                    .expect("write on a long-lived connection");
                sent.extend_from_slice(&chunk);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            wr.shutdown().await.unwrap();
            let got = reader
                .await
                .unwrap()
                .expect("read on a long-lived connection");
            assert_eq!(got.len(), sent.len(), "connection {c} via {node}");
            assert!(got == sent, "connection {c} via {node}: bytes differ");
            sent.len() as u64
        });
    }

    // A stream of short connections throughout: every one must be served.
    let short_ok = Arc::new(AtomicU64::new(0));
    let short = {
        let (addr, stop, ok) = (live.addr, stop_streaming.clone(), short_ok.clone());
        tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let mut s = connect_from(client_ip(20_000 + i % 5000), addr)
                    .await
                    .expect("short connection refused");
                read_line(&mut s)
                    .await
                    .expect("short connection not served");
                s.write_all(b"x\n").await.unwrap();
                assert_eq!(read_line(&mut s).await.unwrap(), "x");
                ok.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };

    // 20 reloads: add and remove node-3, change weights.
    let variants: [&[(usize, u32)]; 4] = [
        &[(0, 1), (1, 1), (2, 1), (3, 1)],
        &[(0, 2), (1, 1), (2, 1), (3, 1)],
        &[(0, 2), (1, 1), (2, 1)],
        &[(0, 1), (1, 1), (2, 1)],
    ];
    let probe_ips: Vec<IpAddr> = (0..60).map(|i| client_ip(30_000 + i)).collect();
    for r in 0..20 {
        let pick = variants[r % variants.len()];
        let rec = live.reload(&config(&b, pick, listen)).await;
        assert!(rec.ok, "reload {r} refused: {}", rec.message);
        assert_eq!(rec.generation, r as u64 + 2);
        // New connections follow the new ring.
        let want: Vec<String> = probe_ips
            .iter()
            .map(|ip| expected(&live.handle, *ip))
            .collect();
        let names: Vec<&str> = pick.iter().map(|&(i, _)| b[i].name.as_str()).collect();
        for (ip, want) in probe_ips.iter().zip(&want) {
            assert!(names.contains(&want.as_str()));
            assert_eq!(
                &node_for(*ip, live.addr).await.unwrap(),
                want,
                "reload {r}, {ip}"
            );
        }
        assert_eq!(live.handle.local_addr("lb"), Some(live.addr), "same socket");
    }
    stop_streaming.store(true, Ordering::Relaxed);
    short.await.unwrap();
    let mut total = 0;
    let mut conns = 0;
    while let Some(r) = long.join_next().await {
        total += r.unwrap();
        conns += 1;
    }
    assert_eq!(conns, 200);
    assert!(total > 200 * 1500, "{total}");
    assert!(short_ok.load(Ordering::Relaxed) > 20);
    assert_eq!(live.handle.reload_counts(), (20, 0));
    let report = live.stop().await;
    assert_eq!(report.closed_at_grace, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_refused_the_old_config_keeps_serving_and_a_later_valid_reload_works() {
    let b = backends(3).await;
    let good = config(&b, &[(0, 1), (1, 1)], "127.0.0.1:0");
    let live = Live::start(&good).await;
    let mut open = connect_from(client_ip(1), live.addr).await.unwrap();
    read_line(&mut open).await.unwrap();

    let bad = good.replace("[pools.p.health]", "[pools.p.health]\nrise = 0");
    let rec = live.reload(&bad).await;
    assert!(!rec.ok);
    assert!(rec.message.contains("ringlb.toml"), "{}", rec.message);
    assert!(
        rec.message
            .contains("pools.p.health.rise: 0 is out of range"),
        "{}",
        rec.message
    );
    assert_eq!(live.handle.generation(), 1);
    assert_eq!(live.handle.reload_counts(), (0, 1));
    // Still serving, old and new connections alike.
    open.write_all(b"still\n").await.unwrap();
    assert_eq!(read_line(&mut open).await.unwrap(), "still");
    let n = node_for(client_ip(2), live.addr).await.unwrap();
    assert!(n == "node-0" || n == "node-1");

    // A syntax error too.
    let rec = live.reload("[[listener]\n").await;
    assert!(!rec.ok && rec.message.contains(":1:"), "{}", rec.message);

    // A later valid reload applies.
    let rec = live.reload(&config(&b, &[(2, 1)], "127.0.0.1:0")).await;
    assert!(rec.ok, "{}", rec.message);
    assert_eq!(live.handle.generation(), 2);
    assert!(rec.message.contains("+nodes node-2"), "{}", rec.message);
    assert!(
        rec.message.contains("-nodes node-0,node-1"),
        "{}",
        rec.message
    );
    assert_eq!(node_for(client_ip(3), live.addr).await.unwrap(), "node-2");
    // The connection to a removed node continues (on_node_down = "keep").
    open.write_all(b"after removal\n").await.unwrap();
    assert_eq!(read_line(&mut open).await.unwrap(), "after removal");
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_listener_keeps_its_socket_no_connect_is_refused_during_reloads() {
    let b = backends(2).await;
    let text = config(&b, &[(0, 1), (1, 1)], "127.0.0.1:0");
    let live = Live::start(&text).await;
    let stop = Arc::new(AtomicBool::new(false));
    let hammer = {
        let (addr, stop) = (live.addr, stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut s = connect_from(client_ip((n % 3000) as u32), addr)
                    .await
                    .unwrap_or_else(|e| panic!("connect {n} refused during reloads: {e}"));
                read_line(&mut s).await.unwrap();
                n += 1;
            }
            n
        })
    };
    for i in 0..30 {
        // Alternate a weight so every reload changes something.
        let rec = live
            .reload(&config(&b, &[(0, 1 + (i % 2)), (1, 1)], "127.0.0.1:0"))
            .await;
        assert!(rec.ok);
        assert_eq!(live.handle.local_addr("lb"), Some(live.addr));
    }
    stop.store(true, Ordering::Relaxed);
    let served = hammer.await.unwrap();
    assert!(served > 30, "{served}");
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_reload_requests_never_loses_the_last_one() {
    let b = backends(3).await;
    let live = Live::start(&config(&b, &[(0, 1)], "127.0.0.1:0")).await;
    for i in 0..50 {
        write_file(
            &live.path,
            &config(&b, &[(0, 1), (1, 1 + (i % 3))], "127.0.0.1:0"),
        );
        live.handle.reload();
    }
    // The last file, and a last request right after writing it.
    write_file(&live.path, &config(&b, &[(2, 1)], "127.0.0.1:0"));
    live.handle.reload();
    let h = live.handle.clone();
    eventually(Duration::from_secs(10), "last file applied", || {
        let p = h.pool("p").unwrap();
        let names: Vec<String> = p.nodes().iter().map(|n| n.name.clone()).collect();
        async move { names == vec!["node-2".to_string()] }
    })
    .await;
    let (ok, failed) = live.handle.reload_counts();
    assert_eq!(failed, 0);
    assert!((1..=51).contains(&ok), "{ok}");
    assert_eq!(node_for(client_ip(5), live.addr).await.unwrap(), "node-2");
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_removed_and_a_bind_failure_refuses_the_whole_reload() {
    let b = backends(2).await;
    let base = config(&b, &[(0, 1)], "127.0.0.1:0");
    let live = Live::start(&base).await;
    // Add a second listener on another loopback address.
    let second = "[[listener]]\nname = \"two\"\nlisten = \"127.0.0.2:0\"\npool = \"p\"\n";
    let with_two = base.replace("[pools.p]", &format!("{second}[pools.p]"));
    let rec = live.reload(&with_two).await;
    assert!(rec.ok, "{}", rec.message);
    assert!(
        rec.message.contains("listener two: added on 127.0.0.2:0"),
        "{}",
        rec.message
    );
    let two = live.handle.local_addr("two").unwrap();
    let mut on_two = connect_from(client_ip(1), two).await.unwrap();
    assert_eq!(read_line(&mut on_two).await.unwrap(), "node-0");

    // A new listener on a busy port: the whole reload is refused, including the
    // pool change in the same file.
    let busy = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    let busy_addr = busy.local_addr().unwrap();
    let third = format!("[[listener]]\nname = \"three\"\nlisten = \"{busy_addr}\"\npool = \"p\"\n");
    let bad = config(&b, &[(1, 1)], "127.0.0.1:0")
        .replace("[pools.p]", &format!("{second}{third}[pools.p]"));
    let rec = live.reload(&bad).await;
    assert!(!rec.ok);
    assert!(
        rec.message
            .contains(&format!("cannot listen on {busy_addr}")),
        "{}",
        rec.message
    );
    assert_eq!(
        node_for(client_ip(2), live.addr).await.unwrap(),
        "node-0",
        "pool unchanged"
    );
    drop(busy);

    // Remove listener two: it stops accepting, its open connection continues.
    let rec = live.reload(&base).await;
    assert!(rec.ok, "{}", rec.message);
    assert!(
        rec.message.contains("listener two: removed"),
        "{}",
        rec.message
    );
    assert!(live.handle.local_addr("two").is_none());
    eventually(Duration::from_secs(5), "two refuses", || async move {
        connect_from(client_ip(3), two).await.is_err()
    })
    .await;
    on_two.write_all(b"still here\n").await.unwrap();
    assert_eq!(read_line(&mut on_two).await.unwrap(), "still here");
    live.stop().await;
}
