//! Issue #7, "same mapping on every instance": two independent `ringlb` processes,
//! started at different times from two config files that list the same nodes
//! (names and weights) in a different order and differ in everything that must not
//! matter (listener names and ports, pool name, shutdown grace, an admin endpoint,
//! health timing, connect timeout and attempts, log format and level), map every
//! client IP to the same node, in `ringlb which` and through real connections, and
//! move the same clients to the same next node when a node dies.
//!
//! Node identities mix explicit `name`s and default names (the `addr` text); every
//! backend greets with its node's identity, so a greeting names the node.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use ringlb::demo::backend::{Backend, Mode};
use ringlb::ring::canonical_ip;
use tokio::net::TcpListener;

/// Connections in flight at once, per batch.
const IN_FLIGHT: usize = 64;
// Deadline for a log line (startup, node DOWN/UP): `common::LOG_WAIT`.

// ---------------------------------------------------------------------------
// Nodes and config files
// ---------------------------------------------------------------------------

/// One node: its traffic address, weight, and whether the configs give it an
/// explicit `name` (else its identity is the `addr` text).
#[derive(Debug, Clone)]
struct NodeSpec {
    id: String,
    addr: SocketAddr,
    weight: u32,
    explicit_name: bool,
}

/// Greeting backends for `(explicit name or None, weight)`: node k listens on
/// `127.0.0.{k+1}:0`; an unnamed node greets with its `addr` text, as that is its
/// identity on the ring.
async fn start_nodes(specs: &[(Option<&str>, u32)]) -> (Vec<NodeSpec>, Vec<Option<Backend>>) {
    let mut nodes = Vec::new();
    let mut backends = Vec::new();
    for (k, (name, weight)) in specs.iter().enumerate() {
        let ip = Ipv4Addr::new(127, 0, 0, k as u8 + 1);
        let listener = TcpListener::bind((ip, 0)).await.expect("backend bind");
        let addr = listener.local_addr().unwrap();
        let id = name.map_or_else(|| addr.to_string(), str::to_string);
        backends.push(Some(Backend::from_listener(&id, listener, Mode::Greet)));
        nodes.push(NodeSpec {
            id,
            addr,
            weight: *weight,
            explicit_name: name.is_some(),
        });
    }
    (nodes, backends)
}

/// Instance A's config: text logs, an admin endpoint, pool `p`, listener
/// `front-a`, explicit defaults, nodes in `order`.
fn config_a(nodes: &[NodeSpec], order: &[usize]) -> String {
    let mut s = String::from(
        "# instance A\n\
         shutdown_grace = \"3s\"\n\
         \n\
         [admin]\n\
         listen = \"127.0.0.1:0\"\n\
         \n\
         [[listener]]\n\
         name = \"front-a\"\n\
         listen = \"127.0.0.1:0\"\n\
         pool = \"p\"\n\
         max_connections = 20000\n\
         \n\
         [pools.p]\n\
         points_per_weight = 16384\n\
         connect_timeout = \"1s\"\n\
         connect_attempts = 3\n\
         passive_failures = 2\n\
         \n\
         [pools.p.health]\n\
         kind = \"tcp\"\n\
         interval = \"200ms\"\n\
         timeout = \"150ms\"\n\
         rise = 2\n\
         fall = 2\n",
    );
    for &k in order {
        let n = &nodes[k];
        s.push_str("\n[[pools.p.nodes]]\n");
        if n.explicit_name {
            let _ = writeln!(s, "name = \"{}\"", n.id);
        }
        let _ = writeln!(s, "addr = \"{}\"\nweight = {}", n.addr, n.weight);
    }
    s
}

/// Instance B's config: no admin, pool `backends`, listener `edge-b` on another
/// loopback address, other timings, defaults left implicit, nodes in `order`. The
/// first unnamed node gets its default name spelled out (`name` = its addr text),
/// which must be the same identity.
fn config_b(nodes: &[NodeSpec], order: &[usize]) -> String {
    let mut s = String::from(
        "shutdown_grace = \"1s\"\n\
         \n\
         [[listener]]\n\
         name = \"edge-b\"\n\
         listen = \"127.0.0.2:0\"\n\
         pool = \"backends\"\n\
         backlog = 512\n\
         \n\
         [pools.backends]\n\
         connect_timeout = \"750ms\"\n\
         connect_attempts = 2\n\
         idle_timeout = \"10m\"\n\
         key_prefix_v4 = 32\n\
         \n\
         [pools.backends.health]\n\
         interval = \"250ms\"\n\
         timeout = \"200ms\"\n\
         rise = 1\n\
         fall = 2\n",
    );
    let spelled = nodes.iter().position(|n| !n.explicit_name);
    for &k in order {
        let n = &nodes[k];
        s.push_str("\n[[pools.backends.nodes]]\n");
        let _ = writeln!(s, "addr = \"{}\"", n.addr);
        if n.explicit_name || spelled == Some(k) {
            let _ = writeln!(s, "name = \"{}\"", n.id);
        }
        if n.weight != 1 {
            let _ = writeln!(s, "weight = {}", n.weight);
        }
    }
    s
}

const WHICH_A: [&str; 2] = ["--pool", "p"];
const WHICH_B: [&str; 2] = ["--listener", "edge-b"];

// ---------------------------------------------------------------------------
// `ringlb which`
// ---------------------------------------------------------------------------

/// One `which` answer: the node, then the rest of the order (ring fallback order).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    node: String,
    then: Vec<String>,
}

fn ringlb() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ringlb"));
    c.env_remove("RUST_LOG");
    c
}

/// `ringlb which --config FILE SELECT... [--probe] -` with the IPs on stdin; one
/// answer per IP, in order. Checks every printed IP is the (canonical) input IP.
fn which(config: &Path, select: &[&str], probe: bool, ips: &[IpAddr]) -> Vec<Answer> {
    let mut cmd = ringlb();
    cmd.arg("which").arg("--config").arg(config).args(select);
    if probe {
        cmd.arg("--probe");
    }
    let mut child = cmd
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ringlb which");
    let mut input = String::with_capacity(ips.len() * 20);
    for ip in ips {
        let _ = writeln!(input, "{ip}");
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("ringlb which output");
    writer.join().unwrap().expect("write IPs to which");
    parse_which(config, &out, ips)
}

/// `which` with the IPs as command-line arguments instead of stdin.
fn which_args(config: &Path, select: &[&str], ips: &[IpAddr]) -> Vec<Answer> {
    let out = ringlb()
        .arg("which")
        .arg("--config")
        .arg(config)
        .args(select)
        .args(ips.iter().map(IpAddr::to_string))
        .output()
        .expect("run ringlb which");
    parse_which(config, &out, ips)
}

fn parse_which(config: &Path, out: &std::process::Output, ips: &[IpAddr]) -> Vec<Answer> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "which --config {} failed: {}\n{}",
        config.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut answers = Vec::with_capacity(ips.len());
    for line in stdout.lines().filter(|l| l.contains(" -> ")) {
        //   IP -> node (addr)  then: a, b, c  [x is down]
        let (ip, rest) = line.split_once(" -> ").unwrap();
        let expect = ips.get(answers.len()).map(|ip| canonical_ip(*ip));
        assert_eq!(
            Some(ip.trim()),
            expect.map(|e| e.to_string()).as_deref(),
            "which --config {}: answer {} is for another IP: {line:?}",
            config.display(),
            answers.len()
        );
        let (node, rest) = rest
            .split_once(" (")
            .unwrap_or_else(|| panic!("no node in {line:?}"));
        let then = rest
            .split_once("then: ")
            .unwrap_or_else(|| panic!("no fallback order in {line:?}"))
            .1;
        // The whole fallback order: the nodes a connection tries, then those
        // beyond `connect_attempts` (`[not tried (beyond ...): d, e]`), since the
        // two instances' connect_attempts differ on purpose.
        let (tried, fields) = then.split_once("  [").unwrap_or((then, ""));
        let tried = tried.trim();
        let mut then: Vec<String> = if tried == "-" {
            Vec::new()
        } else {
            tried.split(", ").map(str::to_string).collect()
        };
        if let Some(rest) = fields.split("not tried (beyond connect_attempts = ").nth(1) {
            let list = rest
                .split_once("): ")
                .and_then(|(_, l)| l.split(']').next())
                .unwrap_or_else(|| panic!("a not-tried field without its list in {line:?}"));
            then.extend(list.split(", ").map(str::to_string));
        }
        answers.push(Answer {
            node: node.to_string(),
            then,
        });
    }
    assert_eq!(
        answers.len(),
        ips.len(),
        "which --config {}: {} answers for {} IPs",
        config.display(),
        answers.len(),
        ips.len()
    );
    answers
}

/// Compare two lists element by element; panic with the count and the first 5
/// differences.
#[track_caller]
fn assert_same<T: PartialEq + std::fmt::Debug>(
    what: &str,
    ips: &[IpAddr],
    left: (&str, &[T]),
    right: (&str, &[T]),
) {
    assert_eq!(left.1.len(), right.1.len(), "{what}: lengths differ");
    let diffs: Vec<usize> = (0..left.1.len())
        .filter(|&i| left.1[i] != right.1[i])
        .collect();
    if !diffs.is_empty() {
        let mut msg = format!(
            "{what}: {} of {} client IPs differ between {} and {}; first {}:\n",
            diffs.len(),
            left.1.len(),
            left.0,
            right.0,
            diffs.len().min(5)
        );
        for &i in diffs.iter().take(5) {
            let _ = writeln!(
                msg,
                "  {}: {} {:?} vs {} {:?}",
                ips[i], left.0, left.1[i], right.0, right.1[i]
            );
        }
        panic!("{msg}");
    }
}

// ---------------------------------------------------------------------------
// Client IPs
// ---------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `v4` IPv4 addresses over every unicast /8 (1..=223), then `v6` IPv6 ones: most in
/// 2000::/3, a tenth in 2001:db8::/32, a tenth IPv4-mapped (`::ffff:a.b.c.d` of the
/// first IPv4 addresses, which must map like them).
fn many_ips(v4: usize, v6: usize, seed: u64) -> Vec<IpAddr> {
    let mut rng = Rng(seed | 1);
    let mut ips = Vec::with_capacity(v4 + v6);
    for _ in 0..v4 {
        let r = rng.next();
        let first = 1 + (r >> 40) % 223;
        let rest = (r as u32) & 0x00ff_ffff;
        ips.push(IpAddr::V4(Ipv4Addr::from(((first as u32) << 24) | rest)));
    }
    for i in 0..v6 {
        let hi = u128::from(rng.next());
        let lo = u128::from(rng.next());
        let bits = match i % 10 {
            0 => match ips[i / 10] {
                IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
                IpAddr::V6(_) => unreachable!(),
            },
            1 => (0x2001_0db8u128 << 96) | ((hi & 0xffff_ffff) << 64) | lo,
            _ => (0x2u128 << 124) | ((hi & ((1 << 60) - 1)) << 64) | lo,
        };
        ips.push(IpAddr::V6(Ipv6Addr::from(bits)));
    }
    ips
}

// ---------------------------------------------------------------------------
// Running instances
// ---------------------------------------------------------------------------

/// A `ringlb run` child process; killed on drop (also when a test panics).
struct Instance {
    label: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
    /// (client IP, node) of every `connection closed` line seen so far.
    closed: Vec<(IpAddr, String)>,
    addr: SocketAddr,
    json: bool,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Instance {
    /// Start `ringlb [global...] run --config FILE`; wait until `listener` listens.
    async fn start(
        label: &'static str,
        global: &[&str],
        config: &Path,
        listener: &str,
    ) -> Instance {
        let mut child = ringlb()
            .args(global)
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringlb run");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let json = global.contains(&"json");
        let mut inst = Instance {
            label,
            child,
            lines: rx,
            log: Vec::new(),
            closed: Vec::new(),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            json,
        };
        let line = if json {
            let l = format!("\"listener\":\"{listener}\"");
            inst.wait_for("listening", |s| {
                s.contains("\"message\":\"listening\"") && s.contains(&l)
            })
            .await
        } else {
            let l = format!("listener={listener} ");
            inst.wait_for("listening", |s| s.contains(" listening ") && s.contains(&l))
                .await
        };
        inst.addr = field(&line, "addr", json)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{label}: no addr in {line}"));
        inst
    }

    /// Wait (polling, never blocking the runtime; [`LOG_WAIT`] at most, times
    /// the patience) for a log line that `pred` accepts.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let mut next = || loop {
            match self.lines.try_recv() {
                Ok(line) => {
                    let hit = pred(&line);
                    self.keep(&line);
                    if hit {
                        return Some(line);
                    }
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    panic!(
                        "{}: exited before {what}: {:?}\n{}",
                        self.label,
                        self.child.try_wait(),
                        self.log.join("\n")
                    )
                }
                Err(mpsc::TryRecvError::Empty) => return None,
            }
        };
        let found = poll(LOG_WAIT, Duration::from_millis(20), || {
            let line = next();
            async move { line }
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "{}: no {what} within {:?}; log (without connection lines):\n{}",
                self.label,
                patient(LOG_WAIT),
                self.log.join("\n")
            )
        })
    }

    /// Record a log line: connection lines as (client, node), the rest as text.
    fn keep(&mut self, line: &str) {
        if !line.contains("connection closed") {
            self.log.push(line.to_string());
            return;
        }
        let client = field(line, "client", self.json)
            .and_then(|c| c.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("{}: no client in {line}", self.label));
        let node = field(line, "node", self.json).unwrap_or("NONE");
        self.closed.push((client.ip(), node.to_string()));
    }

    /// Wait for the `node DOWN` (`up` false) or `node UP` log line of `node`.
    async fn wait_node(&mut self, node: &str, up: bool) -> String {
        let msg = if up { "node UP" } else { "node DOWN" };
        let field = if self.json {
            format!("\"node\":\"{node}\"")
        } else {
            format!(" node={node} ")
        };
        self.wait_for(&format!("{msg} of {node}"), |s| {
            s.contains(msg) && s.contains(&field)
        })
        .await
    }

    /// SIGTERM, then expect a clean exit (status 0). Returns the log lines (without
    /// connection lines) and the (client, node) of every closed connection.
    async fn stop(mut self) -> (Vec<String>, Vec<(IpAddr, String)>) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status =
            tokio::task::block_in_place(|| wait_exit(&mut self.child, Duration::from_secs(15)))
                .unwrap_or_else(|| panic!("{}: no exit 15 s after SIGTERM", self.label));
        assert!(status.success(), "{}: exit status {status}", self.label);
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.keep(&line);
        }
        (
            std::mem::take(&mut self.log),
            std::mem::take(&mut self.closed),
        )
    }
}

/// A field of a log line: `"key":"value"` (JSON) or `key=value` (text).
fn field<'a>(line: &'a str, key: &str, json: bool) -> Option<&'a str> {
    if json {
        let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
        line[start..].split('"').next()
    } else {
        let start = line.find(&format!(" {key}="))? + key.len() + 2;
        line[start..].split_whitespace().next()
    }
}

/// The node that greets each client (connecting from its IP to `dst`), at most
/// `IN_FLIGHT` connections at once. Errors come back as `ERROR ...`.
async fn greetings(ips: &[IpAddr], dst: SocketAddr) -> Vec<String> {
    let ips = Arc::new(ips.to_vec());
    let mut set = tokio::task::JoinSet::new();
    for w in 0..IN_FLIGHT {
        let ips = ips.clone();
        set.spawn(async move {
            let mut out = Vec::new();
            for i in (w..ips.len()).step_by(IN_FLIGHT) {
                let got = node_for(ips[i], dst)
                    .await
                    .unwrap_or_else(|e| format!("ERROR {e}"));
                out.push((i, got));
            }
            out
        });
    }
    let mut all = vec![String::new(); ips.len()];
    while let Some(r) = set.join_next().await {
        for (i, g) in r.expect("client task") {
            all[i] = g;
        }
    }
    all
}

fn nodes_of_answers(a: &[Answer]) -> Vec<String> {
    a.iter().map(|a| a.node.clone()).collect()
}

/// Clients per node, and a check that every node has a share near its weight's.
fn assert_spread(what: &str, nodes: &[NodeSpec], answers: &[Answer]) -> BTreeMap<String, usize> {
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for a in answers {
        *per.entry(a.node.clone()).or_default() += 1;
    }
    let total_weight: u32 = nodes.iter().map(|n| n.weight).sum();
    for n in nodes {
        let share = *per.get(&n.id).unwrap_or(&0) as f64 / answers.len() as f64;
        let expect = f64::from(n.weight) / f64::from(total_weight);
        assert!(
            share > expect * 0.6 && share < expect * 1.4,
            "{what}: node {} has {share:.3} of the clients, its weight says {expect:.3}: {per:?}",
            n.id
        );
    }
    assert_eq!(per.len(), nodes.len(), "{what}: unknown nodes in {per:?}");
    per
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_map_100k_ips_and_10k_real_clients_identically() {
    let t0 = Instant::now();
    let (nodes, _backends) = start_nodes(&[
        (Some("alpha"), 1),
        (None, 2),
        (Some("bravo"), 3),
        (None, 1),
        (Some("charlie.7"), 2),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.toml", &config_a(&nodes, &[0, 1, 2, 3, 4]));
    let b = write(dir.path(), "b.toml", &config_b(&nodes, &[3, 0, 4, 2, 1]));
    let b_perms: Vec<PathBuf> = [[4, 3, 2, 1, 0], [1, 4, 0, 3, 2], [2, 0, 3, 1, 4]]
        .iter()
        .enumerate()
        .map(|(i, order)| write(dir.path(), &format!("b{i}.toml"), &config_b(&nodes, order)))
        .collect();

    // 100,000 IPs: the 10,000 real clients below (127.0.0.0/8), 80,000 IPv4 over
    // every /8, 10,000 IPv6.
    let clients: Vec<IpAddr> = (0..10_000).map(client_ip).collect();
    let mut ips = clients.clone();
    ips.extend(many_ips(80_000, 10_000, 0x5eed_0007));
    assert_eq!(ips.len(), 100_000);
    let eights: BTreeSet<u8> = ips
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(a) => Some(a.octets()[0]),
            IpAddr::V6(_) => None,
        })
        .collect();
    assert!(eights.len() >= 200, "only {} /8s", eights.len());

    let t_which = Instant::now();
    let on_a = which(&a, &WHICH_A, false, &ips);
    let on_b = which(&b, &WHICH_B, false, &ips);
    assert_same(
        "which, node and fallback order",
        &ips,
        ("A", &on_a),
        ("B", &on_b),
    );
    for (i, perm) in b_perms.iter().enumerate() {
        let on_perm = which(perm, &WHICH_B, false, &ips);
        let label = format!("B, order permutation {}", i + 1);
        assert_same(
            "which, node and fallback order",
            &ips,
            ("A", &on_a),
            (&label, &on_perm),
        );
    }
    // The same answers with the IPs as arguments (a batch of 2,000).
    let sample: Vec<IpAddr> = ips.iter().step_by(50).copied().collect();
    let sample_a: Vec<Answer> = on_a.iter().step_by(50).cloned().collect();
    assert_same(
        "which, arguments vs stdin",
        &sample,
        ("A stdin", &sample_a),
        ("B arguments", &which_args(&b, &WHICH_B, &sample)),
    );
    let which_time = t_which.elapsed();

    // Sanity of the answers themselves: full orders over all 5 nodes, shares near
    // the weights, IPv4-mapped IPv6 like the IPv4 address.
    for (ip, ans) in ips.iter().zip(&on_a) {
        let mut all: Vec<&str> = ans.then.iter().map(String::as_str).collect();
        all.push(&ans.node);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), nodes.len(), "{ip}: order {ans:?}");
    }
    let per = assert_spread("which A, 100,000 IPs", &nodes, &on_a);
    let v4_start = clients.len();
    let v6_start = clients.len() + 80_000;
    for i in (0..10_000).step_by(10) {
        assert_eq!(
            on_a[v6_start + i],
            on_a[v4_start + i / 10],
            "{} vs {}",
            ips[v6_start + i],
            ips[v4_start + i / 10]
        );
    }

    // Real connections: A first; B starts only after A has served every client.
    let t_conn = Instant::now();
    let inst_a = Instance::start("A", &[], &a, "front-a").await;
    let via_a = greetings(&clients, inst_a.addr).await;
    let expect = nodes_of_answers(&on_a[..clients.len()]);
    assert_same("connections", &clients, ("which", &expect), ("A", &via_a));

    let inst_b = Instance::start(
        "B",
        &["--log-format", "json", "--log-level", "ringlb=debug"],
        &b,
        "edge-b",
    )
    .await;
    assert_ne!(inst_a.addr, inst_b.addr);
    let via_b = greetings(&clients, inst_b.addr).await;
    assert_same("connections", &clients, ("A", &via_a), ("B", &via_b));
    let conn_time = t_conn.elapsed();

    // Each instance's own log agrees: one close line per client, naming the node
    // that greeted it; and no node went down.
    for (label, inst, via) in [("A", inst_a, &via_a), ("B", inst_b, &via_b)] {
        let (log, closed) = inst.stop().await;
        let index: BTreeMap<IpAddr, usize> =
            clients.iter().enumerate().map(|(i, ip)| (*ip, i)).collect();
        let mut logged = vec![String::from("NO LOG LINE"); clients.len()];
        for (ip, node) in closed {
            let i = index[&ip];
            assert_eq!(
                logged[i], "NO LOG LINE",
                "{label}: two close lines for {ip}"
            );
            logged[i] = node;
        }
        assert_same("close log", &clients, ("greeting", via), (label, &logged));
        let bad: Vec<&String> = log
            .iter()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        assert!(bad.is_empty(), "{label}: warnings: {bad:#?}");
        // Only A has an admin endpoint.
        let admin = log.iter().any(|l| l.contains("admin endpoint listening"));
        assert_eq!(admin, label == "A", "{label}: admin endpoint {admin}");
    }
    eprintln!(
        "which: 100,000 IPs x 5 configs (+2,000 as arguments) in {which_time:?}; \
         connections: 2 x {} clients in {conn_time:?}; whole test {:?}; clients per node {per:?}",
        clients.len(),
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_moves_the_same_clients_to_the_same_next_node_on_both_instances() {
    let t0 = Instant::now();
    let (nodes, mut backends) =
        start_nodes(&[(Some("delta"), 2), (None, 1), (Some("echo"), 1), (None, 3)]).await;
    let victim = 3;
    let dead = nodes[victim].id.clone();
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.toml", &config_a(&nodes, &[0, 1, 2, 3]));
    let b = write(dir.path(), "b.toml", &config_b(&nodes, &[3, 1, 2, 0]));
    let without: Vec<usize> = (0..nodes.len()).filter(|&k| k != victim).collect();
    let a_without = write(dir.path(), "a-without.toml", &config_a(&nodes, &without));

    // Clients distinct from the other test's.
    let clients: Vec<IpAddr> = (0..5_000).map(|i| client_ip(20_000 + i)).collect();
    let on_a = which(&a, &WHICH_A, false, &clients);
    let on_b = which(&b, &WHICH_B, false, &clients);
    assert_same("which", &clients, ("A", &on_a), ("B", &on_b));
    let per = assert_spread("which A", &nodes, &on_a);

    let mut inst_a = Instance::start("A", &["--log-level", "info"], &a, "front-a").await;
    let before_a = greetings(&clients, inst_a.addr).await;
    let mut inst_b = Instance::start("B", &["--log-format", "json"], &b, "edge-b").await;
    let before_b = greetings(&clients, inst_b.addr).await;
    let expect = nodes_of_answers(&on_a);
    assert_same("before", &clients, ("which", &expect), ("A", &before_a));
    assert_same("before", &clients, ("A", &before_a), ("B", &before_b));

    // The node dies: its backend stops listening. Health probes (and passive
    // failures) take it down on both instances.
    backends[victim].take().unwrap().stop().await;
    let down_a = inst_a.wait_node(&dead, false).await;
    let down_b = inst_b.wait_node(&dead, false).await;

    // Expected now: nobody else moves; the dead node's clients go to the first node
    // of their fallback order.
    let expect_after: Vec<String> = on_a
        .iter()
        .map(|ans| {
            if ans.node == dead {
                ans.then[0].clone()
            } else {
                ans.node.clone()
            }
        })
        .collect();
    let moved = on_a.iter().filter(|ans| ans.node == dead).count();
    assert!(moved > clients.len() / 5, "only {moved} clients on {dead}");
    // The same thing, as `which` sees it: with the node off the config, and with a
    // probe that finds it dead (on B's file).
    let without_answers = which(&a_without, &WHICH_A, false, &clients);
    assert_same(
        "dead node: fallback order vs config without the node",
        &clients,
        ("fallback", &expect_after),
        ("without", &nodes_of_answers(&without_answers)),
    );
    let probed_b = which(&b, &WHICH_B, true, &clients);
    assert_same(
        "dead node: fallback order vs which --probe",
        &clients,
        ("fallback", &expect_after),
        ("B --probe", &nodes_of_answers(&probed_b)),
    );

    let after_a = greetings(&clients, inst_a.addr).await;
    let after_b = greetings(&clients, inst_b.addr).await;
    assert_same(
        "node down",
        &clients,
        ("expected", &expect_after),
        ("A", &after_a),
    );
    assert_same("node down", &clients, ("A", &after_a), ("B", &after_b));

    // It comes back on the same address: exactly its clients return, on both.
    let listener = TcpListener::bind(nodes[victim].addr)
        .await
        .expect("rebind the dead node's address");
    backends[victim] = Some(Backend::from_listener(&dead, listener, Mode::Greet));
    inst_a.wait_node(&dead, true).await;
    inst_b.wait_node(&dead, true).await;
    let back_a = greetings(&clients, inst_a.addr).await;
    let back_b = greetings(&clients, inst_b.addr).await;
    assert_same("node back", &clients, ("before", &before_a), ("A", &back_a));
    assert_same("node back", &clients, ("A", &back_a), ("B", &back_b));

    // No other node changed state on either instance, and the dead one went down
    // and up once.
    for inst in [inst_a, inst_b] {
        let label = inst.label;
        let (log, _) = inst.stop().await;
        let changes: Vec<&String> = log
            .iter()
            .filter(|l| l.contains("node DOWN") || l.contains("node UP"))
            .collect();
        assert_eq!(changes.len(), 2, "{label}: {changes:#?}");
        let (json, text) = (format!("\"node\":\"{dead}\""), format!(" node={dead} "));
        assert!(
            changes
                .iter()
                .all(|l| l.contains(&json) || l.contains(&text)),
            "{label}: {changes:#?}"
        );
    }
    eprintln!(
        "{} clients x 2 instances x 3 phases; {moved} moved off {dead} and back; \
         clients per node {per:?}; whole test {:?}\nA: {down_a}\nB: {down_b}",
        clients.len(),
        t0.elapsed()
    );
}
