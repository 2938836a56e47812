//! Node capacity (`max_connections` on a node) on real sockets: greeting
//! backends that name themselves, long-lived clients from distinct 127.x.y.z
//! addresses, the balancer in this process with its admin endpoint.
//!
//! - One node capped at 5 among three, 400 clients: exactly 5 on it, its other
//!   clients on their next node along the ring, nobody refused.
//! - Every node full: refused at once as `reason="nodes_full"`, one WARN per
//!   episode and one INFO with the count when a client is placed again.
//! - A reload that raises the cap: new clients get on, open connections stay.
//!
//! Each test has its own listener and pool names, so the process-wide metrics
//! and the shared log capture tell them apart.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use ringlb::pool::Node;
use ringlb::{Config, Handle, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The log of this test binary, shared by its tests.
fn logs() -> &'static Capture {
    static LOGS: OnceLock<Capture> = OnceLock::new();
    LOGS.get_or_init(Capture::install)
}

/// The WARN that starts an episode of refusals, and the INFO that ends it.
const FULL_WARN: &str = "every node in service is at its max_connections";
const FULL_INFO: &str = "a node has room again";

/// A balancer read from a file (so it can be reloaded), with an admin endpoint.
struct Lb {
    served: Served,
    admin: SocketAddr,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Lb {
    async fn start(text: &str, listener: &str) -> Lb {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_capacity.toml");
        std::fs::write(&path, text).unwrap();
        let server = Server::bind(Config::from_file(&path).unwrap()).unwrap();
        let served = Served::run(server, listener);
        let admin = served.admin.expect("admin endpoint");
        Lb {
            served,
            admin,
            path,
            _dir: dir,
        }
    }

    fn handle(&self) -> &Handle {
        &self.served.handle
    }

    async fn status(&self) -> serde_json::Value {
        serde_json::from_str(&http_get(self.admin, "/status").await.unwrap()).unwrap()
    }

    async fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").await.unwrap()
    }
}

/// Listener `name` on pool `name`, health off, and these nodes (name, address,
/// cap).
fn config(name: &str, nodes: &[(&str, SocketAddr, Option<u32>)]) -> String {
    let mut s = format!(
        "shutdown_grace = \"1s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\npool = \"{name}\"\n\
         [pools.{name}]\n[pools.{name}.health]\nkind = \"none\"\n"
    );
    for (n, addr, cap) in nodes {
        s += &format!("[[pools.{name}.nodes]]\nname = \"{n}\"\naddr = \"{addr}\"\n");
        if let Some(c) = cap {
            s += &format!("max_connections = {c}\n");
        }
    }
    s
}

/// The value of the sample of `name` whose labels include every one of
/// `labels` (0 when there is none: a counter never incremented).
fn sample(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn rejected(metrics: &str, listener: &str, reason: &str) -> f64 {
    sample(
        metrics,
        "ringlb_connections_rejected_total",
        &[
            &format!("listener=\"{listener}\""),
            &format!("reason=\"{reason}\""),
        ],
    )
}

/// Connect from `ip` and read the greeting of the node it reached.
async fn hold(ip: IpAddr, lb: SocketAddr) -> (String, TcpStream) {
    let mut s = connect_from(ip, lb).await.unwrap();
    let name = read_line(&mut s)
        .await
        .unwrap_or_else(|e| panic!("{ip}: no greeting: {e}"));
    (name, s)
}

/// Connect from `ip` and expect to be closed without a byte from any node.
async fn refused(ip: IpAddr, lb: SocketAddr) {
    let mut s = connect_from(ip, lb).await.unwrap();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(patient(Duration::from_secs(5)), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "{ip}: expected a refusal, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => panic!("{ip}: not closed in time"),
    }
}

/// One echo round trip on a held connection.
async fn echo(s: &mut TcpStream, what: &str) {
    s.write_all(format!("{what}\n").as_bytes()).await.unwrap();
    assert_eq!(read_line(s).await.unwrap(), what);
}

/// A counter of every node of `pool`, summed.
fn sum(h: &Handle, pool: &str, counter: fn(&Node) -> &AtomicU64) -> u64 {
    h.pool(pool)
        .unwrap()
        .nodes()
        .iter()
        .map(|n| counter(n).load(Ordering::Relaxed))
        .sum()
}

/// Open connections of every node of `pool`.
fn open(h: &Handle, pool: &str) -> u64 {
    sum(h, pool, |n| &n.active)
}

async fn open_reaches(h: &Handle, pool: &str, n: u64) {
    eventually(
        Duration::from_secs(10),
        &format!("{n} open on {pool}"),
        || async move { open(h, pool) == n },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_hundred_clients_one_node_capped_at_five_exactly_five_on_it_the_rest_on_their_next_nodes(
) {
    logs();
    let b = backends(3).await;
    let name = "cap400";
    let lb = Lb::start(
        &config(
            name,
            &[
                ("node-0", b[0].addr, Some(5)),
                ("node-1", b[1].addr, None),
                ("node-2", b[2].addr, None),
            ],
        ),
        name,
    )
    .await;
    let snap = lb.handle().pool(name).unwrap().snapshot();
    let mut held = Vec::new();
    let (mut on_capped, mut homes_of_capped) = (0, 0);
    for i in 0..400 {
        let ip = client_ip(i);
        let order: Vec<String> = snap.order(ip).iter().map(|n| n.name.clone()).collect();
        let want = if order[0] != "node-0" {
            order[0].clone()
        } else {
            homes_of_capped += 1;
            if on_capped < 5 {
                on_capped += 1;
                order[0].clone()
            } else {
                // Full: the next node along this client's ring order.
                order[1].clone()
            }
        };
        let (got, s) = hold(ip, lb.served.addr).await;
        assert_eq!(got, want, "client {ip} (order {order:?})");
        held.push((ip, got, s));
    }
    assert!(
        homes_of_capped > 50,
        "node-0 must own many clients for the cap to matter: {homes_of_capped}"
    );
    let count = |n: &str| held.iter().filter(|(_, m, _)| m == n).count();
    assert_eq!(count("node-0"), 5);
    assert_eq!(count("node-0") + count("node-1") + count("node-2"), 400);

    let st = lb.status().await;
    let nodes = st["pools"][0]["nodes"].as_array().unwrap();
    let node = |n: &str| nodes.iter().find(|x| x["name"] == n).unwrap().clone();
    assert_eq!(node("node-0")["max_connections"], 5);
    assert_eq!(node("node-0")["active_connections"], 5);
    assert!(node("node-1")["max_connections"].is_null());
    assert!(node("node-2")["max_connections"].is_null());
    let m = lb.metrics().await;
    for reason in ["nodes_full", "no_node", "all_down", "max_connections"] {
        assert_eq!(rejected(&m, name, reason), 0.0, "{reason}:\n{m}");
    }
    let gauge = |n: &str| {
        sample(
            &m,
            "ringlb_node_max_connections",
            &[&format!("pool=\"{name}\""), &format!("node=\"{n}\"")],
        )
    };
    assert_eq!((gauge("node-0"), gauge("node-1")), (5.0, 0.0), "{m}");
    assert!(
        m.contains("# HELP ringlb_node_max_connections "),
        "described like the others:\n{m}"
    );
    // No node was tried and failed: a full node is skipped, not attempted.
    let attempts = |n: &str| {
        sample(
            &m,
            "ringlb_connect_attempts_total",
            &[&format!("pool=\"{name}\""), &format!("node=\"{n}\"")],
        )
    };
    assert_eq!(attempts("node-0"), 5.0, "{m}");
    assert_eq!(
        attempts("node-0") + attempts("node-1") + attempts("node-2"),
        400.0
    );
    assert!(logs()
        .lines(&[FULL_WARN, &format!("pool={name}")])
        .is_empty());

    // A freed place is taken by the next client of node-0, on node-0.
    let i = held.iter().position(|(_, m, _)| m == "node-0").unwrap();
    drop(held.swap_remove(i));
    open_reaches(lb.handle(), name, 399).await;
    let next = (400..)
        .map(client_ip)
        .find(|ip| snap.order(*ip)[0].name == "node-0")
        .unwrap();
    let (got, s) = hold(next, lb.served.addr).await;
    assert_eq!(got, "node-0");
    held.push((next, got, s));
    // Every held connection still works.
    for (ip, _, s) in held.iter_mut().step_by(20) {
        echo(s, &format!("still here {ip}")).await;
    }
    drop(held);
    lb.served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_full_refuses_at_once_counts_nodes_full_and_logs_one_line_per_episode() {
    let logs = logs();
    let b = backends(2).await;
    let name = "full";
    let lb = Lb::start(
        &config(
            name,
            &[
                ("node-0", b[0].addr, Some(2)),
                ("node-1", b[1].addr, Some(2)),
            ],
        ),
        name,
    )
    .await;
    let warn = || logs.lines(&[FULL_WARN, &format!("pool={name} ")]);
    let info = || logs.lines(&[FULL_INFO, &format!("pool={name} ")]);
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(hold(client_ip(1000 + i), lb.served.addr).await);
    }
    let served = |n: &str| held.iter().filter(|(m, _)| m == n).count();
    assert_eq!((served("node-0"), served("node-1")), (2, 2));
    let total = || sum(lb.handle(), name, |n| &n.total);

    for i in 0..10 {
        refused(client_ip(2000 + i), lb.served.addr).await;
    }
    assert_eq!(total(), 4, "no refused client reached a node");
    let m = lb.metrics().await;
    assert_eq!(rejected(&m, name, "nodes_full"), 10.0, "{m}");
    assert_eq!(rejected(&m, name, "no_node"), 0.0, "{m}");
    assert_eq!(warn().len(), 1, "one WARN for the episode: {:?}", warn());
    assert!(info().is_empty(), "{:?}", info());

    // A place frees up: the next client is served, and the episode ends with
    // one INFO that counts the refusals.
    drop(held.pop());
    open_reaches(lb.handle(), name, 3).await;
    held.push(hold(client_ip(3000), lb.served.addr).await);
    let ended = info();
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert!(ended[0].contains("refused=10"), "{ended:?}");
    assert_eq!(warn().len(), 1);

    // Full again: a new episode, a new WARN.
    refused(client_ip(4000), lb.served.addr).await;
    assert_eq!(warn().len(), 2, "{:?}", warn());
    let m = lb.metrics().await;
    assert_eq!(rejected(&m, name, "nodes_full"), 11.0, "{m}");
    for (_, s) in held.iter_mut() {
        echo(s, "held through it").await;
    }
    drop(held);
    lb.served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_raises_the_cap_lets_new_clients_on_and_open_connections_stay() {
    logs();
    let b = backends(1).await;
    let name = "raise";
    let text = |cap: u32| config(name, &[("node-0", b[0].addr, Some(cap))]);
    let lb = Lb::start(&text(3), name).await;
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(hold(client_ip(5000 + i), lb.served.addr).await);
    }
    refused(client_ip(5100), lb.served.addr).await;
    let node = lb.handle().pool(name).unwrap().node("node-0").unwrap();

    let rec = reload(lb.handle(), &lb.path, &text(6)).await;
    assert!(rec.ok, "{}", rec.message);
    assert!(
        rec.message
            .contains("pool raise: max_connections node-0 3->6"),
        "{}",
        rec.message
    );
    let kept = lb.handle().pool(name).unwrap().node("node-0").unwrap();
    assert!(
        Arc::ptr_eq(&node, &kept),
        "the node stays, with its counters"
    );
    // The three open connections stay, and still carry bytes.
    for (n, (_, s)) in held.iter_mut().enumerate() {
        echo(s, &format!("after the reload {n}")).await;
    }
    // Room for three more, then full again.
    for i in 0..3 {
        let (got, s) = hold(client_ip(5200 + i), lb.served.addr).await;
        assert_eq!(got, "node-0");
        held.push((got, s));
    }
    refused(client_ip(5300), lb.served.addr).await;
    let st = lb.status().await;
    let n = &st["pools"][0]["nodes"][0];
    assert_eq!(
        (
            n["max_connections"].clone(),
            n["active_connections"].clone(),
            n["total_connections"].clone()
        ),
        (6.into(), 6.into(), 6.into()),
        "{n}"
    );
    let m = lb.metrics().await;
    assert_eq!(rejected(&m, name, "nodes_full"), 2.0, "{m}");
    assert_eq!(
        sample(
            &m,
            "ringlb_node_max_connections",
            &[&format!("pool=\"{name}\"")]
        ),
        6.0
    );
    drop(held);
    lb.served.stop().await;
}
