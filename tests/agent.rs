//! Capacity reports (HAProxy's `agent-check`) on real sockets: three greeting
//! backends on distinct loopback IPs (127.0.0.11, .12, .13), each with a test
//! agent on the same port of its own IP, speaking HAProxy's protocol (it reads
//! what `send` writes, answers one line and closes; the line can be changed
//! while the test runs). Clients come from distinct 127.x.y.z addresses; the
//! balancer runs in this process with its admin endpoint.
//!
//! - `drain`: no new client goes to the node, nobody else moves, open
//!   connections continue; `ready` brings exactly its clients back; `maint` too.
//! - `down #reason`: the node is off the ring, `/status` shows the agent down
//!   and health still up; `up` undoes it.
//! - `50%`: only the clients of its removed ring points move (checked against
//!   the ring, as `ringlb which` computes it); `up 100%`: exactly those return.
//! - An agent that stops answering (or answers garbage) changes nothing; it is
//!   counted and its last error shown. `maxconn:N` is honoured.
//! - A reload that removes `[agent]` clears what the agent set.
//!
//! Each test has its own pool name and agent port.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PPW: u32 = ringlb::config::defaults::POINTS_PER_WEIGHT;

use common::*;
use ringlb::demo::backend::{Backend, Mode};
use ringlb::pool::AgentResult;
use ringlb::ring::{Ring, RingPoints};
use ringlb::{Config, Handle, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const NODES: [(&str, [u8; 4]); 3] = [
    ("n1", [127, 0, 0, 11]),
    ("n2", [127, 0, 0, 12]),
    ("n3", [127, 0, 0, 13]),
];

/// What `send` writes; the test agents read it before they answer.
const SEND: &str = "ringlb-check\n";

/// A test agent on one node's IP: answers every check with the current line.
struct TestAgent {
    reply: Arc<Mutex<String>>,
    task: JoinHandle<()>,
}

impl TestAgent {
    fn start(listener: TcpListener, reply: &str) -> TestAgent {
        let reply = Arc::new(Mutex::new(reply.to_string()));
        let r = reply.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let line = r.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut got = vec![0u8; SEND.len()];
                    if s.read_exact(&mut got).await.is_ok() && got == SEND.as_bytes() {
                        let _ = s.write_all(line.as_bytes()).await;
                    }
                });
            }
        });
        TestAgent { reply, task }
    }

    fn set(&self, line: &str) {
        *self.reply.lock().unwrap() = line.to_string();
    }
}

/// The three nodes: backends on port 0 of their IPs, agents on one port of them.
struct Nodes {
    _backends: Vec<Backend>,
    addrs: Vec<SocketAddr>,
    agent_port: u16,
    agents: Vec<TestAgent>,
}

impl Nodes {
    async fn start(reply: &str) -> Nodes {
        let mut backends = Vec::new();
        for (name, ip) in NODES {
            let addr = SocketAddr::from((ip, 0));
            backends.push(Backend::start(name, addr, Mode::Greet).await.unwrap());
        }
        let addrs = backends.iter().map(|b| b.addr).collect();
        // One port free on all three IPs: the first IP's port 0, then the same
        // port on the others (another try when one of them has it taken).
        let (agent_port, listeners) = 'found: {
            for _ in 0..50 {
                let first = TcpListener::bind(SocketAddr::from((NODES[0].1, 0)))
                    .await
                    .unwrap();
                let port = first.local_addr().unwrap().port();
                let mut ls = vec![first];
                for (_, ip) in &NODES[1..] {
                    match TcpListener::bind(SocketAddr::from((*ip, port))).await {
                        Ok(l) => ls.push(l),
                        Err(_) => break,
                    }
                }
                if ls.len() == NODES.len() {
                    break 'found (port, ls);
                }
            }
            panic!("no port free on all three loopback IPs");
        };
        let agents = listeners
            .into_iter()
            .map(|l| TestAgent::start(l, reply))
            .collect();
        Nodes {
            _backends: backends,
            addrs,
            agent_port,
            agents,
        }
    }

    /// The agent of node `name`.
    fn agent(&self, name: &str) -> &TestAgent {
        &self.agents[index(name)]
    }
}

fn index(name: &str) -> usize {
    NODES.iter().position(|(n, _)| *n == name).unwrap()
}

/// Listener and pool `name`, health off, the three nodes, and the agent
/// (checked every 100ms) unless `agent` is false.
fn config(name: &str, nodes: &Nodes, agent: bool, node_extra: &str) -> String {
    let mut s = format!(
        "shutdown_grace = \"1s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\npool = \"{name}\"\n\
         [pools.{name}]\n[pools.{name}.health]\nkind = \"none\"\n"
    );
    if agent {
        s += &format!(
            "[pools.{name}.agent]\nport = {}\ninterval = \"100ms\"\ntimeout = \"90ms\"\nsend = {SEND:?}\n",
            nodes.agent_port
        );
    }
    for ((n, _), addr) in NODES.iter().zip(&nodes.addrs) {
        s += &format!("[[pools.{name}.nodes]]\nname = \"{n}\"\naddr = \"{addr}\"\n{node_extra}");
    }
    s
}

/// A balancer read from a file (so it can be reloaded), with an admin endpoint.
struct Lb {
    served: Served,
    admin: SocketAddr,
    path: PathBuf,
    name: String,
    _dir: tempfile::TempDir,
}

impl Lb {
    async fn start(name: &str, text: &str) -> Lb {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        let server = Server::bind(Config::from_file(&path).unwrap()).unwrap();
        let served = Served::run(server, name);
        let admin = served.admin.expect("admin endpoint");
        Lb {
            served,
            admin,
            path,
            name: name.to_string(),
            _dir: dir,
        }
    }

    fn handle(&self) -> &Handle {
        &self.served.handle
    }

    async fn status(&self) -> serde_json::Value {
        serde_json::from_str(&http_get(self.admin, "/status").await.unwrap()).unwrap()
    }

    /// `/status` of node `name`.
    async fn node_status(&self, name: &str) -> serde_json::Value {
        let st = self.status().await;
        st["pools"][0]["nodes"][index(name)].clone()
    }

    /// Wait until node `name`'s agent has applied `line` (a check read it) and
    /// the next check came after it, so the ring reflects it.
    async fn applied(&self, name: &str, line: &str) {
        let node = self.handle().pool(&self.name).unwrap().node(name).unwrap();
        let line = line.trim_end().to_string();
        let seen = eventually_some(
            Duration::from_secs(10),
            &format!("{name}'s agent said {line:?}"),
            || {
                let st = node.agent();
                let ok = st
                    .last
                    .as_ref()
                    .is_some_and(|c| c.result == AgentResult::Ok && c.detail == line);
                async move { ok.then_some(st.checks) }
            },
        )
        .await;
        eventually(Duration::from_secs(10), "one more check", || {
            let n = node.agent().checks;
            async move { n > seen }
        })
        .await;
    }

    /// Where each client lands now: a real connection each, the greeting read.
    async fn homes(&self, ips: &[IpAddr]) -> Vec<String> {
        nodes_for(ips, self.served.addr).await
    }

    /// Where the ring sends each client now (the first node of its order).
    fn ring_homes(&self, ips: &[IpAddr]) -> Vec<String> {
        let snap = self.handle().pool(&self.name).unwrap().snapshot();
        ips.iter()
            .map(|ip| snap.select(*ip).next().unwrap().name.clone())
            .collect()
    }
}

fn clients(n: u32, from: u32) -> Vec<IpAddr> {
    (from..from + n).map(client_ip).collect()
}

/// Connect from `ip` and read the greeting of the node it reached.
async fn hold(ip: IpAddr, lb: SocketAddr) -> (String, TcpStream) {
    let mut s = connect_from(ip, lb).await.unwrap();
    let name = read_line(&mut s)
        .await
        .unwrap_or_else(|e| panic!("{ip}: no greeting: {e}"));
    (name, s)
}

/// One echo round trip on a held connection.
async fn echo(s: &mut TcpStream, what: &str) {
    s.write_all(format!("{what}\n").as_bytes()).await.unwrap();
    assert_eq!(read_line(s).await.unwrap(), what);
}

/// Only the clients of `node` moved between `before` and `after`, all of them
/// off it; returns how many.
fn only_its_clients_moved(before: &[String], after: &[String], node: &str) -> usize {
    let mut moved = 0;
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        if b == node {
            assert_ne!(a, node, "client {i} still on {node}");
            moved += 1;
        } else {
            assert_eq!(a, b, "client {i} moved although its node {b} stayed");
        }
    }
    moved
}

/// The value of the sample of `name` whose labels include every one of
/// `labels` (0 when there is none).
fn sample(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_down_and_maint_take_only_that_node_off_and_ready_and_up_bring_exactly_its_clients_back(
) {
    let nodes = Nodes::start("up ready\n").await;
    let name = "agstate";
    let lb = Lb::start(name, &config(name, &nodes, true, "")).await;
    lb.applied("n2", "up ready").await;
    let ips = clients(150, 0);
    let before = lb.homes(&ips).await;
    assert_eq!(before, lb.ring_homes(&ips));
    let on_n2: Vec<IpAddr> = ips
        .iter()
        .zip(&before)
        .filter(|(_, h)| *h == "n2")
        .map(|(ip, _)| *ip)
        .collect();
    assert!(on_n2.len() > 20, "{}", on_n2.len());
    // Long-lived connections of n2's clients, opened before the drain.
    let mut held = Vec::new();
    for ip in &on_n2[..10] {
        let (got, s) = hold(*ip, lb.served.addr).await;
        assert_eq!(got, "n2");
        held.push(s);
    }
    let snap = lb.handle().pool(name).unwrap().snapshot();

    for (set, undo) in [("drain\n", "ready\n"), ("maint\n", "ready\n")] {
        nodes.agent("n2").set(set);
        lb.applied("n2", set).await;
        let now = lb.homes(&ips).await;
        let moved = only_its_clients_moved(&before, &now, "n2");
        assert_eq!(moved, on_n2.len());
        // Each of them on its next node along its ring order.
        for (ip, (b, a)) in ips.iter().zip(before.iter().zip(&now)) {
            if b == "n2" {
                assert_eq!(a, &snap.order(*ip)[1].name, "{ip}");
            }
        }
        for (i, s) in held.iter_mut().enumerate() {
            echo(s, &format!("{} {i}", set.trim())).await;
        }
        let n = lb.node_status("n2").await;
        assert_eq!(n["state"], "up", "health stays up: {n}");
        assert_eq!(
            n["admin_state"], "enabled",
            "the operator's state stays: {n}"
        );
        assert_eq!(n["agent"]["admin_state"], set.trim(), "{n}");
        assert_eq!(n["in_service"], false, "{n}");
        nodes.agent("n2").set(undo);
        lb.applied("n2", undo).await;
        assert_eq!(
            lb.homes(&ips).await,
            before,
            "{undo} brings exactly them back"
        );
    }

    nodes.agent("n2").set("down # maintenance window\n");
    lb.applied("n2", "down # maintenance window").await;
    let now = lb.homes(&ips).await;
    assert_eq!(only_its_clients_moved(&before, &now, "n2"), on_n2.len());
    let n = lb.node_status("n2").await;
    assert_eq!(
        (
            n["state"].clone(),
            n["agent"]["state"].clone(),
            n["agent"]["word"].clone(),
            n["agent"]["reason"].clone(),
            n["in_service"].clone()
        ),
        (
            "up".into(),
            "down".into(),
            "down".into(),
            "maintenance window".into(),
            false.into()
        ),
        "{n}"
    );
    let m = http_get(lb.admin, "/metrics").await.unwrap();
    let labels = [format!("pool=\"{name}\""), "node=\"n2\"".to_string()];
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    assert_eq!(sample(&m, "ringlb_node_agent_up", &labels), 0.0, "{m}");
    assert_eq!(sample(&m, "ringlb_node_up", &labels), 1.0, "{m}");
    assert!(
        sample(
            &m,
            "ringlb_agent_checks_total",
            &[labels[0], labels[1], "result=\"ok\""]
        ) > 5.0
    );
    nodes.agent("n2").set("up\n");
    lb.applied("n2", "up").await;
    assert_eq!(lb.homes(&ips).await, before, "up brings exactly them back");
    for (i, s) in held.iter_mut().enumerate() {
        echo(s, &format!("at the end {i}")).await;
    }
    drop(held);
    lb.served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_weight_moves_only_the_clients_of_the_removed_points_and_full_weight_brings_exactly_them_back(
) {
    let nodes = Nodes::start("100%\n").await;
    let name = "agweight";
    let lb = Lb::start(name, &config(name, &nodes, true, "")).await;
    lb.applied("n1", "100%").await;
    let ips = clients(400, 1000);
    let before = lb.homes(&ips).await;
    // The ring as `ringlb which` computes it: the default points per node, and n1 at
    // half its points.
    let ring = |n1: u32| {
        Ring::with_points(&[
            RingPoints {
                name: "n1",
                points: n1,
            },
            RingPoints {
                name: "n2",
                points: PPW,
            },
            RingPoints {
                name: "n3",
                points: PPW,
            },
        ])
    };
    let (full, half) = (ring(PPW), ring(PPW / 2));
    let snap = lb.handle().pool(name).unwrap().snapshot();
    let names = ["n1", "n2", "n3"];
    let mut expect = Vec::new();
    let mut of_removed = 0;
    for (ip, was) in ips.iter().zip(&before) {
        let key = snap.key(*ip);
        let (owner, point) = full.point(&key).unwrap();
        assert_eq!(names[owner], was, "{ip}: the ring agrees with the balancer");
        let now = names[half.primary(&key).unwrap()];
        if owner == 0 && point >= PPW / 2 {
            of_removed += 1;
        } else {
            assert_eq!(now, was, "{ip}: its point stayed");
        }
        expect.push(now.to_string());
    }
    let movers = before.iter().zip(&expect).filter(|(b, e)| b != e).count();
    assert!(
        movers > 10 && of_removed >= movers,
        "{movers} of {of_removed}"
    );

    nodes.agent("n1").set("50%\n");
    lb.applied("n1", "50%").await;
    let now = lb.homes(&ips).await;
    assert_eq!(
        now, expect,
        "exactly the clients of n1's removed points moved"
    );
    let n = lb.node_status("n1").await;
    assert_eq!(
        (
            n["ring_points"].clone(),
            n["agent"]["weight_percent"].clone(),
            n["in_service"].clone()
        ),
        (u64::from(PPW / 2).into(), 50.0.into(), true.into()),
        "{n}"
    );
    let m = http_get(lb.admin, "/metrics").await.unwrap();
    assert_eq!(
        sample(
            &m,
            "ringlb_node_agent_weight_percent",
            &[&format!("pool=\"{name}\""), "node=\"n1\""]
        ),
        50.0
    );

    nodes.agent("n1").set("up 100%\n");
    lb.applied("n1", "up 100%").await;
    assert_eq!(lb.homes(&ips).await, before, "exactly those came back");
    lb.served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_garbled_agent_changes_nothing_and_maxconn_is_honoured() {
    let nodes = Nodes::start("ready\n").await;
    let name = "agfail";
    let lb = Lb::start(name, &config(name, &nodes, true, "")).await;
    let ips = clients(150, 3000);
    lb.applied("n3", "ready").await;
    nodes.agent("n3").set("drain\n");
    lb.applied("n3", "drain").await;
    let drained = lb.homes(&ips).await;
    assert!(!drained.iter().any(|h| h == "n3"));

    // n3's agent goes away: the drain it set stays, the failures are counted.
    nodes.agent("n3").task.abort();
    let pool = lb.handle().pool(name).unwrap();
    let n3 = pool.node("n3").unwrap();
    eventually(Duration::from_secs(10), "three failed checks", || {
        let failures = n3.agent().failures;
        async move { failures >= 3 }
    })
    .await;
    assert_eq!(
        lb.homes(&ips).await,
        drained,
        "an unreachable agent changes nothing"
    );
    let n = lb.node_status("n3").await;
    assert_eq!(n["agent"]["admin_state"], "drain", "{n}");
    assert_eq!(n["agent"]["last_error"]["result"], "connect", "{n}");
    let m = http_get(lb.admin, "/metrics").await.unwrap();
    assert!(
        sample(
            &m,
            "ringlb_agent_checks_total",
            &[
                &format!("pool=\"{name}\""),
                "node=\"n3\"",
                "result=\"connect\""
            ]
        ) >= 3.0,
        "{m}"
    );

    // Garbage, and a line without an end, change nothing either.
    let n1 = pool.node("n1").unwrap();
    for (line, want) in [
        ("hello world\n", "unknown word"),
        ("50%", "incomplete line"),
    ] {
        let before = n1.agent().failures;
        nodes.agent("n1").set(line);
        eventually(Duration::from_secs(10), "a failed check of n1", || {
            let failures = n1.agent().failures;
            async move { failures > before + 1 }
        })
        .await;
        let st = n1.agent();
        assert!(st.is_clear(), "{st:?}");
        let e = st.last_error.unwrap();
        assert_eq!(e.result, AgentResult::Invalid);
        assert!(e.detail.contains(want), "{}", e.detail);
        assert_eq!(lb.homes(&ips).await, drained);
    }

    // maxconn:2 on n1: two of its clients get on, the next goes along its order.
    nodes.agent("n1").set("maxconn:2\n");
    lb.applied("n1", "maxconn:2").await;
    let snap = pool.snapshot();
    // The connections of the last look are gone from n1's count first.
    eventually(Duration::from_secs(10), "n1 has no open connection", || {
        let open = n1.active.load(std::sync::atomic::Ordering::Relaxed);
        async move { open == 0 }
    })
    .await;
    let on_n1: Vec<IpAddr> = ips
        .iter()
        .zip(&drained)
        .filter(|(_, h)| *h == "n1")
        .map(|(ip, _)| *ip)
        .collect();
    assert!(on_n1.len() >= 3);
    let mut held = Vec::new();
    for (i, ip) in on_n1[..3].iter().enumerate() {
        let (got, s) = hold(*ip, lb.served.addr).await;
        if i < 2 {
            assert_eq!(got, "n1");
        } else {
            let next = snap
                .order(*ip)
                .into_iter()
                .find(|n| n.name != "n1")
                .unwrap();
            assert_eq!(got, next.name, "the third on its next node with room");
        }
        held.push(s);
    }
    let n = lb.node_status("n1").await;
    assert_eq!(
        (n["max_connections"].clone(), n["agent"]["maxconn"].clone()),
        (2.into(), 2.into()),
        "{n}"
    );
    assert!(n["configured_max_connections"].is_null(), "{n}");
    drop(held);
    lb.served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_the_agent_clears_what_it_set() {
    let nodes = Nodes::start("ready\n").await;
    let name = "agreload";
    let lb = Lb::start(name, &config(name, &nodes, true, "max_connections = 50\n")).await;
    let ips = clients(150, 6000);
    lb.applied("n1", "ready").await;
    let before = lb.homes(&ips).await;
    nodes.agent("n1").set("drain 50% maxconn:1 down\n");
    lb.applied("n1", "drain 50% maxconn:1 down").await;
    assert!(!lb.homes(&ips).await.iter().any(|h| h == "n1"));

    let rec = reload(
        lb.handle(),
        &lb.path,
        &config(name, &nodes, false, "max_connections = 50\n"),
    )
    .await;
    assert!(rec.ok, "{}", rec.message);
    assert!(
        rec.message.contains("agent state cleared n1"),
        "{}",
        rec.message
    );
    assert_eq!(lb.homes(&ips).await, before, "its clients are back");
    let st = lb.status().await;
    assert!(st["pools"][0]["agent"].is_null(), "{st}");
    let n = &st["pools"][0]["nodes"][0];
    assert_eq!(
        (
            n["in_service"].clone(),
            n["max_connections"].clone(),
            n["ring_points"].clone()
        ),
        (true.into(), 50.into(), u64::from(PPW).into()),
        "{n}"
    );
    assert!(n["agent"].is_null(), "{n}");
    lb.served.stop().await;
}
