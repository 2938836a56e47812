//! Same mapping on every instance, over a real ECMP route (issue #7, the network
//! part). Needs root, `ip`, `iptables` and a kernel with multipath routing;
//! otherwise the test prints `skipped: <reason>` and passes, or fails under
//! `REQUIRE_ROOT=1` (as CI sets it).
//!
//! The lab, in network namespaces named `rlnt<pid>-ecmp-*`, all in 10.214.0.0/16
//! (nothing is created in, or routed through, the root namespace):
//!
//! ```text
//!  client ns            router ns             switch ns: br-front      balancer ns
//!  10.214.1.100-249 --- 10.214.1.1
//!  (150 source IPs)     10.214.2.1 ---------------+------------------ lb1 10.214.2.11
//!                                                 +------------------ lb2 10.214.2.12
//!                       10.214.9.1/32: ECMP
//!                       via lb1 and lb2        switch ns: br-back
//!                       (hash policy 1, L4)    lb1 10.214.3.11 ---+--- node-0 10.214.3.21
//!                                              lb2 10.214.3.12 ---+--- node-1 10.214.3.22
//!                                                                 +--- node-2 10.214.3.23
//! ```
//!
//! Both balancers own the service address 10.214.9.1 on `lo` and run the real
//! `ringlb` with the very same config file (listener 10.214.9.1:8000, three
//! nodes, admin on 127.0.0.1:9090 in each namespace). The router spreads flows
//! over the two by their 5-tuple, so connections from one client IP with
//! different source ports land on both instances. Backends are
//! `ringlb-bench serve echo --greet` on 127.0.0.1 behind a DNAT rule, as in
//! `tests/netns.rs`; the greeting names the node a connection reached.
//!
//! The client side runs in threads of this test process that entered the client
//! namespace (`setns`), so every connection's source port is known and can be
//! matched with the `connection closed` line (client IP:port, node) of the
//! instance that served it.
//!
//! The checks: (a) 10 connections per client IP spread over both instances,
//! every IP always on one node; (b) that node is the one `ringlb which` names;
//! (c) with lb1's route withdrawn, every client's new connections reach the
//! same node through lb2 (open connections on lb2 keep working, those on lb1
//! are reset by lb2); with the route back, both serve again; with lb2's route
//! withdrawn and lb2 stopped, everybody is on lb1, still on the same nodes.
//!
//! Run as root: `cargo test --test netns_ecmp` (about 2 s).

mod common;
#[path = "netns_support/mod.rs"]
#[allow(unused_imports)] // re-exports that tests/netns.rs uses
mod netns_support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::read_line_blocking;
use netns_support::{
    destroy_namespace, ip_batch_in, lab_prefix, remove_stale_lab_namespaces, serial, sh, Proc,
};
use nix::sys::signal::Signal;
use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};

const S: fn(u64) -> Duration = Duration::from_secs;

/// The service address both balancers own, and its port.
const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 214, 9, 1);
const SERVICE_PORT: u16 = 8000;
const ADMIN_PORT: u16 = 9090;
const ECHO_PORT: u16 = 7000;
/// Client source addresses: 10.214.1.100 ..= 10.214.1.249.
const CLIENTS: u8 = 150;
const ROUTER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 214, 1, 1);
const ROUTER_FRONT: Ipv4Addr = Ipv4Addr::new(10, 214, 2, 1);
const LB_FRONT: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 214, 2, 11), Ipv4Addr::new(10, 214, 2, 12)];
const LB_BACK: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 214, 3, 11), Ipv4Addr::new(10, 214, 3, 12)];
const NODES: usize = 3;

fn node_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 214, 3, 21 + k as u8)
}

fn client_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 214, 1, 100 + i as u8)
}

fn service() -> SocketAddrV4 {
    SocketAddrV4::new(SERVICE, SERVICE_PORT)
}

/// Why this test cannot run here, if it cannot.
fn skip_reason() -> Option<String> {
    if let Some(r) = netns_support::skip_reason() {
        return Some(r);
    }
    if !std::path::Path::new("/proc/sys/net/ipv4/fib_multipath_hash_policy").exists() {
        return Some("the kernel has no multipath routing (CONFIG_IP_ROUTE_MULTIPATH)".into());
    }
    None
}

/// `ip netns exec NS sysctl -qw KEY=VALUE`.
fn sysctl(ns: &str, kv: &str) {
    sh("ip", &["netns", "exec", ns, "sysctl", "-qw", kv]);
}

/// Run `f` on a new thread that has entered network namespace `ns`. Sockets it
/// creates stay in that namespace wherever they are used afterwards.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on this thread only; the descriptor is valid while `file` lives.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

fn join<T>(h: std::thread::JoinHandle<T>) -> T {
    h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// One client connection: source address and port, and the greeting (the node)
/// or what went wrong.
struct Conn {
    src: Ipv4Addr,
    port: u16,
    node: Result<String, String>,
    /// The open stream, when asked to keep it.
    stream: Option<TcpStream>,
}

/// Connect from `src` (port chosen by the kernel) to the service, read the greeting.
fn connect_once(src: Ipv4Addr, keep: bool) -> Conn {
    let mut port = 0;
    let r = (|| {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        sock.bind(&SocketAddr::from((src, 0)).into())?;
        port = sock
            .local_addr()?
            .as_socket()
            .map(|a| a.port())
            .unwrap_or(0);
        sock.connect_timeout(&SocketAddr::V4(service()).into(), S(3))?;
        let mut s: TcpStream = sock.into();
        s.set_read_timeout(Some(S(5)))?;
        s.set_write_timeout(Some(S(5)))?;
        let node = read_line_blocking(&mut s)?;
        Ok::<_, std::io::Error>((node, s))
    })();
    match r {
        Ok((node, s)) => Conn {
            src,
            port,
            node: Ok(node),
            stream: keep.then_some(s),
        },
        Err(e) => Conn {
            src,
            port,
            node: Err(e.to_string()),
            stream: None,
        },
    }
}

/// `per_src` connections from every source in `srcs` (one after another per
/// source, sources spread over a few threads in the client namespace). Stops
/// opening new ones after the first failure, so a broken lab fails fast.
fn connect_many(client_ns: &str, srcs: &[Ipv4Addr], per_src: usize, keep: bool) -> Vec<Conn> {
    const THREADS: usize = 6;
    let failed = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for t in 0..THREADS {
        let mine: Vec<Ipv4Addr> = srcs.iter().skip(t).step_by(THREADS).copied().collect();
        let failed = failed.clone();
        handles.push(in_netns(client_ns, move || {
            let mut out = Vec::new();
            'all: for _ in 0..per_src {
                for &src in &mine {
                    if failed.load(Ordering::SeqCst) {
                        break 'all;
                    }
                    let c = connect_once(src, keep);
                    if c.node.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    out.push(c);
                }
            }
            out
        }));
    }
    handles.into_iter().flat_map(join).collect()
}

/// `GET /status` of a balancer's admin endpoint, from inside its namespace.
fn status(lb_ns: &str) -> Value {
    let text = join(in_netns(lb_ns, || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT)), S(3))
                .expect("connect to admin");
        s.set_read_timeout(Some(S(5))).unwrap();
        s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).expect("read /status");
        String::from_utf8_lossy(&v).into_owned()
    }));
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {text}"))
}

/// (active connections of the listener, {node: (state, total_connections)}).
fn status_summary(lb_ns: &str) -> (u64, BTreeMap<String, (String, u64)>) {
    let st = status(lb_ns);
    let active = st["listeners"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .map(|l| l["active_connections"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    let mut nodes = BTreeMap::new();
    for p in st["pools"].as_array().cloned().unwrap_or_default() {
        for n in p["nodes"].as_array().cloned().unwrap_or_default() {
            nodes.insert(
                n["name"].as_str().unwrap_or("?").to_string(),
                (
                    n["state"].as_str().unwrap_or("?").to_string(),
                    n["total_connections"].as_u64().unwrap_or(0),
                ),
            );
        }
    }
    (active, nodes)
}

/// A JSON log field, top level or under `fields`.
fn field<'a>(j: &'a Value, key: &str) -> Option<&'a str> {
    j[key].as_str().or_else(|| j["fields"][key].as_str())
}

struct EcmpLab {
    namespaces: Vec<String>,
    router: String,
    client: String,
    lbs: [String; 2],
    lb_procs: [Option<Proc>; 2],
    backend_procs: Vec<Proc>,
    stopped: Vec<Proc>,
    _dir: tempfile::TempDir,
    config: PathBuf,
    started: Instant,
}

impl EcmpLab {
    fn new() -> EcmpLab {
        remove_stale_lab_namespaces();
        let prefix = lab_prefix("ecmp");
        for ns in netns_support::namespace_names() {
            if ns.starts_with(&format!("{prefix}-")) {
                destroy_namespace(&ns);
            }
        }
        let sw = format!("{prefix}-sw");
        let router = format!("{prefix}-r");
        let client = format!("{prefix}-c");
        let lbs = [format!("{prefix}-lb1"), format!("{prefix}-lb2")];
        let backends: Vec<String> = (0..NODES).map(|k| format!("{prefix}-b{k}")).collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("ringlb.toml");
        let mut namespaces = vec![sw.clone(), router.clone(), client.clone()];
        namespaces.extend(lbs.iter().cloned());
        namespaces.extend(backends.iter().cloned());
        let mut lab = EcmpLab {
            namespaces: namespaces.clone(),
            router: router.clone(),
            client: client.clone(),
            lbs: lbs.clone(),
            lb_procs: [None, None],
            backend_procs: Vec::new(),
            stopped: Vec::new(),
            _dir: dir,
            config,
            started: Instant::now(),
        };
        // From here on, Drop deletes whatever was created.
        ip_batch_in(
            None,
            &namespaces
                .iter()
                .map(|ns| format!("netns add {ns}"))
                .collect::<Vec<_>>(),
        );

        // The switch: br-front (router, lb1, lb2), br-back (lb1, lb2, nodes).
        // (veth in the switch, host namespace, its interface there, bridge)
        let mut ports: Vec<(String, String, &str, &str)> = vec![
            ("vr".into(), router.clone(), "eth1", "br-front"),
            ("vl1f".into(), lbs[0].clone(), "eth0", "br-front"),
            ("vl2f".into(), lbs[1].clone(), "eth0", "br-front"),
            ("vl1b".into(), lbs[0].clone(), "eth1", "br-back"),
            ("vl2b".into(), lbs[1].clone(), "eth1", "br-back"),
        ];
        for (k, b) in backends.iter().enumerate() {
            ports.push((format!("vb{k}"), b.clone(), "eth0", "br-back"));
        }
        let mut lines = vec!["link set lo up".to_string()];
        for br in ["br-front", "br-back"] {
            lines.push(format!("link add {br} type bridge"));
            lines.push(format!("link set {br} up"));
        }
        for (veth, ns, ifname, br) in &ports {
            lines.push(format!(
                "link add {veth} type veth peer name {ifname} netns {ns}"
            ));
            lines.push(format!("link set {veth} master {br}"));
            lines.push(format!("link set {veth} up"));
        }
        ip_batch_in(Some(&sw), &lines);

        // The client: 150 addresses, a route to the service via the router only.
        ip_batch_in(
            Some(&router),
            &[format!(
                "link add eth0 type veth peer name eth0 netns {client}"
            )],
        );
        let mut lines = vec!["link set lo up".to_string()];
        for i in 0..CLIENTS as usize {
            lines.push(format!("addr add {}/24 dev eth0", client_ip(i)));
        }
        lines.push("link set eth0 up".into());
        lines.push(format!("route add {SERVICE}/32 via {ROUTER_CLIENT_SIDE}"));
        ip_batch_in(Some(&client), &lines);

        // The router: forwards, hashes flows by L4, ECMP to the service.
        ip_batch_in(
            Some(&router),
            &[
                "link set lo up".into(),
                format!("addr add {ROUTER_CLIENT_SIDE}/24 dev eth0"),
                format!("addr add {ROUTER_FRONT}/24 dev eth1"),
                "link set eth0 up".into(),
                "link set eth1 up".into(),
            ],
        );
        sysctl(&router, "net.ipv4.ip_forward=1");
        sysctl(&router, "net.ipv4.fib_multipath_hash_policy=1");
        lab.route_both();

        // The balancers: the service address on lo (with the usual ARP settings
        // for an address several hosts own), a route back to the clients.
        for (i, ns) in lbs.iter().enumerate() {
            sysctl(ns, "net.ipv4.conf.all.arp_ignore=1");
            sysctl(ns, "net.ipv4.conf.all.arp_announce=2");
            ip_batch_in(
                Some(ns),
                &[
                    "link set lo up".into(),
                    format!("addr add {SERVICE}/32 dev lo"),
                    format!("addr add {}/24 dev eth0", LB_FRONT[i]),
                    format!("addr add {}/24 dev eth1", LB_BACK[i]),
                    "link set eth0 up".into(),
                    "link set eth1 up".into(),
                    format!("route add 10.214.1.0/24 via {ROUTER_FRONT}"),
                ],
            );
        }

        // The nodes: as in tests/netns.rs (echo server on 127.0.0.1, DNAT).
        let bench = netns_support::ringlb_bench();
        for (k, ns) in backends.iter().enumerate() {
            let ip = node_ip(k).to_string();
            ip_batch_in(
                Some(ns),
                &[
                    "link set lo up".into(),
                    format!("addr add {ip}/24 dev eth0"),
                    "link set eth0 up".into(),
                ],
            );
            sysctl(ns, "net.ipv4.conf.all.route_localnet=1");
            sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "iptables",
                    "-w",
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-d",
                    &ip,
                    "-p",
                    "tcp",
                    "-j",
                    "DNAT",
                    "--to-destination",
                    "127.0.0.1",
                ],
            );
            let name = format!("node-{k}");
            let listen = format!("127.0.0.1:{ECHO_PORT}");
            let p = Proc::spawn_in(
                &name,
                ns,
                bench,
                &[
                    "--workers",
                    "1",
                    "serve",
                    "echo",
                    "--greet",
                    "--name",
                    &name,
                    "--listen",
                    &listen,
                ],
                &[],
            );
            let ok = p
                .lines
                .wait(0, S(20), |l| l.starts_with("listening "))
                .is_some();
            lab.backend_procs.push(p);
            assert!(ok, "{name} did not start listening");
        }
        lab
    }

    /// The ECMP route: one next hop via each balancer.
    fn route_both(&self) {
        ip_batch_in(
            Some(&self.router),
            &[format!(
                "route replace {SERVICE}/32 nexthop via {} dev eth1 weight 1 nexthop via {} dev eth1 weight 1",
                LB_FRONT[0], LB_FRONT[1]
            )],
        );
    }

    /// Withdraw every next hop but balancer `i`'s.
    fn route_only(&self, i: usize) {
        ip_batch_in(
            Some(&self.router),
            &[format!(
                "route replace {SERVICE}/32 via {} dev eth1",
                LB_FRONT[i]
            )],
        );
    }

    fn route_text(&self) -> String {
        sh(
            "ip",
            &[
                "-n",
                &self.router,
                "route",
                "show",
                &format!("{SERVICE}/32"),
            ],
        )
    }

    fn write_config(&self) {
        let mut s = format!(
            "shutdown_grace = \"1s\"\n\n[admin]\nlisten = \"127.0.0.1:{ADMIN_PORT}\"\n\n\
             [[listener]]\nname = \"svc\"\nlisten = \"{}\"\npool = \"p\"\n\n\
             [pools.p]\nconnect_timeout = \"1s\"\nidle_timeout = \"60s\"\n\n\
             [pools.p.health]\nkind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n\n",
            service()
        );
        for k in 0..NODES {
            s.push_str(&format!(
                "[[pools.p.nodes]]\nname = \"node-{k}\"\naddr = \"{}:{ECHO_PORT}\"\n\n",
                node_ip(k)
            ));
        }
        std::fs::write(&self.config, s).unwrap();
    }

    /// Start ringlb `i` (0 or 1) with the shared config; wait until it listens.
    fn start_lb(&mut self, i: usize) {
        let path = self.config.to_string_lossy().into_owned();
        let p = Proc::spawn_in(
            &format!("lb{}", i + 1),
            &self.lbs[i],
            env!("CARGO_BIN_EXE_ringlb"),
            &[
                "--log-format",
                "json",
                "--log-level",
                "info",
                "run",
                "--config",
                &path,
            ],
            &[("RINGLB_WORKERS", "1")],
        );
        let ok = p
            .lines
            .wait(0, S(20), |l| l.contains("\"message\":\"listening\""))
            .is_some();
        self.lb_procs[i] = Some(p);
        assert!(ok, "lb{} did not start listening", i + 1);
    }

    fn lb(&self, i: usize) -> &Proc {
        self.lb_procs[i]
            .as_ref()
            .or_else(|| {
                self.stopped
                    .iter()
                    .find(|p| p.name == format!("lb{}", i + 1))
            })
            .expect("balancer")
    }

    fn log_len(&self, i: usize) -> usize {
        self.lb(i).lines.len()
    }

    /// `connection closed` lines of balancer `i` from line `from` on:
    /// (client IP, client port) -> node.
    fn closed_since(&self, i: usize, from: usize) -> HashMap<(Ipv4Addr, u16), String> {
        let mut out = HashMap::new();
        for (_, l) in self.lb(i).lines.all().into_iter().skip(from) {
            if !l.contains("connection closed") {
                continue;
            }
            let Ok(j) = serde_json::from_str::<Value>(&l) else {
                continue;
            };
            if field(&j, "message") != Some("connection closed") {
                continue;
            }
            let client: Option<SocketAddrV4> = field(&j, "client").and_then(|c| c.parse().ok());
            let (Some(client), Some(node)) = (client, field(&j, "node")) else {
                panic!("connection closed line without client or node: {l}");
            };
            out.insert((*client.ip(), client.port()), node.to_string());
        }
        out
    }

    /// Wait until the balancers' logs (from `from[i]` on) hold a `connection
    /// closed` line for each of `conns`; then say which instance served each
    /// (index into `conns` -> (instance, node the instance logged)).
    fn attribute(&self, from: [usize; 2], conns: &[&Conn]) -> Vec<(usize, String)> {
        let deadline = Instant::now() + S(10);
        loop {
            let logs = [self.closed_since(0, from[0]), self.closed_since(1, from[1])];
            let mut out = Vec::new();
            let mut missing = Vec::new();
            for c in conns {
                let key = (c.src, c.port);
                match (logs[0].get(&key), logs[1].get(&key)) {
                    (Some(a), None) => out.push((0, a.clone())),
                    (None, Some(b)) => out.push((1, b.clone())),
                    (Some(a), Some(b)) => {
                        panic!("{}:{} logged by both instances ({a}, {b})", c.src, c.port)
                    }
                    (None, None) => missing.push(key),
                }
            }
            if missing.is_empty() {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "{} connections never logged as closed by either instance, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ringlb which` on the shared config: client IP -> node.
    fn which(&self, ips: &[Ipv4Addr]) -> HashMap<Ipv4Addr, String> {
        let path = self.config.to_string_lossy().into_owned();
        let ip_text: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
        let mut args = vec!["which", "--config", &path];
        args.extend(ip_text.iter().map(String::as_str));
        let out = sh(env!("CARGO_BIN_EXE_ringlb"), &args);
        let mut map = HashMap::new();
        for line in out.lines() {
            let t: Vec<&str> = line.split_whitespace().collect();
            if t.len() >= 3 && t[1] == "->" {
                if let Ok(ip) = t[0].parse() {
                    map.insert(ip, t[2].to_string());
                }
            }
        }
        assert_eq!(map.len(), ips.len(), "which output:\n{out}");
        map
    }

    /// SIGTERM balancer `i` and wait for it to exit; returns its exit status.
    fn stop_lb(&mut self, i: usize) -> std::process::ExitStatus {
        let mut p = self.lb_procs[i].take().expect("running balancer");
        p.signal(Signal::SIGTERM);
        let deadline = Instant::now() + S(10);
        let status = loop {
            if let Ok(Some(st)) = p.child.try_wait() {
                break st;
            }
            if Instant::now() >= deadline {
                p.kill();
                self.stopped.push(p);
                panic!("lb{} did not exit within 10 s of SIGTERM", i + 1);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.stopped.push(p);
        status
    }
}

impl Drop for EcmpLab {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let mut procs: Vec<Proc> = self.lb_procs.iter_mut().filter_map(Option::take).collect();
        procs.append(&mut self.backend_procs);
        procs.append(&mut self.stopped);
        for p in &mut procs {
            p.kill();
        }
        if panicking {
            eprintln!(
                "===== netns_ecmp failed after {:.1}s =====",
                self.started.elapsed().as_secs_f64()
            );
            if let Ok(cfg) = std::fs::read_to_string(&self.config) {
                eprintln!("----- config -----\n{cfg}");
            }
            if let Ok(out) = std::process::Command::new("ip")
                .args(["-n", &self.router, "route"])
                .output()
            {
                eprintln!(
                    "----- router routes -----\n{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            for p in &procs {
                // The last lines only: a balancer logs a line per connection.
                let all = p.lines.all();
                eprintln!(
                    "----- last output of {} ({} lines) -----",
                    p.name,
                    all.len()
                );
                for (_, l) in all.iter().skip(all.len().saturating_sub(60)) {
                    eprintln!("{}: {l}", p.name);
                }
            }
        }
        for ns in &self.namespaces {
            destroy_namespace(ns);
        }
    }
}

/// Per-phase summary: connections per instance, IPs seen on both.
struct Phase {
    per_instance: [usize; 2],
    ips_on_both: usize,
    /// Client IP -> the one node all its connections reached.
    node_of: HashMap<Ipv4Addr, String>,
}

/// Check one batch of connections: all succeeded, each instance logged the
/// node the client was greeted by, and every client IP reached one node only
/// (whatever instance served it).
fn check_phase(lab: &EcmpLab, what: &str, from: [usize; 2], conns: &[Conn]) -> Phase {
    let failed: Vec<String> = conns
        .iter()
        .filter_map(|c| {
            c.node
                .as_ref()
                .err()
                .map(|e| format!("{}:{} {e}", c.src, c.port))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} connections failed: {:?}",
        failed.len(),
        conns.len(),
        &failed[..failed.len().min(10)]
    );
    let refs: Vec<&Conn> = conns.iter().collect();
    let served = lab.attribute(from, &refs);
    let mut per_instance = [0usize; 2];
    let mut by_ip: HashMap<Ipv4Addr, (HashSet<String>, [usize; 2])> = HashMap::new();
    for (c, (inst, logged)) in conns.iter().zip(&served) {
        let greeted = c.node.as_ref().unwrap();
        assert_eq!(
            logged,
            greeted,
            "{what}: lb{} logged node {logged} for {}:{}, the client was greeted by {greeted}",
            inst + 1,
            c.src,
            c.port
        );
        per_instance[*inst] += 1;
        let e = by_ip.entry(c.src).or_default();
        e.0.insert(greeted.clone());
        e.1[*inst] += 1;
    }
    let mut node_of = HashMap::new();
    for (ip, (nodes, counts)) in &by_ip {
        assert_eq!(
            nodes.len(),
            1,
            "{what}: client {ip} reached several nodes {nodes:?} (connections on lb1/lb2: {counts:?})"
        );
        node_of.insert(*ip, nodes.iter().next().unwrap().clone());
    }
    let ips_on_both = by_ip.values().filter(|(_, c)| c[0] > 0 && c[1] > 0).count();
    Phase {
        per_instance,
        ips_on_both,
        node_of,
    }
}

/// Two ringlb instances behind one ECMP route share a service address. Every
/// client IP, connecting many times with different source ports, is spread
/// over both instances by the router and still always reaches the one node
/// `ringlb which` names. Withdrawing one instance's route moves its flows to the
/// other: new connections of every client reach the same nodes as before,
/// connections already on the remaining instance keep working. Stopping the
/// other instance (route withdrawn first) does the same the other way round.
#[test]
fn ecmp_two_instances_same_mapping() {
    if !common::needs("REQUIRE_ROOT", skip_reason()) {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    let mut lab = EcmpLab::new();
    lab.write_config();
    lab.start_lb(0);
    lab.start_lb(1);
    let setup_s = t0.elapsed().as_secs_f64();
    let client_ns = lab.client.clone();
    let srcs: Vec<Ipv4Addr> = (0..CLIENTS as usize).map(client_ip).collect();
    let route = lab.route_text();
    assert!(
        route.contains("nexthop") && route.contains(&LB_FRONT[0].to_string()),
        "no ECMP route: {route}"
    );

    let which = lab.which(&srcs);
    let mut which_count: BTreeMap<&str, usize> = BTreeMap::new();
    for n in which.values() {
        *which_count.entry(n.as_str()).or_default() += 1;
    }
    assert_eq!(which_count.len(), NODES, "which: {which_count:?}");

    // (a) + (b): 10 connections per client IP over the ECMP route.
    let per_src_a = 10;
    let from = [lab.log_len(0), lab.log_len(1)];
    let ta = Instant::now();
    let conns = connect_many(&client_ns, &srcs, per_src_a, false);
    let a_ms = ta.elapsed().as_secs_f64() * 1000.0;
    let a = check_phase(&lab, "ECMP", from, &conns);
    for ip in &srcs {
        assert_eq!(
            a.node_of.get(ip),
            Some(&which[ip]),
            "client {ip} is not on the node `ringlb which` names"
        );
    }
    let total_a = conns.len();
    for i in 0..2 {
        assert!(
            a.per_instance[i] * 5 >= total_a,
            "lb{} served only {} of {total_a} connections: is the router hashing by L4? {:?}",
            i + 1,
            a.per_instance[i],
            a.per_instance
        );
    }
    assert!(
        a.ips_on_both * 10 >= srcs.len() * 9,
        "only {} of {} client IPs were served by both instances",
        a.ips_on_both,
        srcs.len()
    );
    // The admin endpoints agree: every node up on both, and the per-node
    // totals add up to what each instance logged.
    let mut status_totals = [0u64; 2];
    for (i, total) in status_totals.iter_mut().enumerate() {
        let (_, nodes) = status_summary(&lab.lbs[i]);
        assert_eq!(nodes.len(), NODES, "lb{} /status nodes: {nodes:?}", i + 1);
        for (name, (state, _)) in &nodes {
            assert_eq!(state, "up", "lb{} reports {name} {state}", i + 1);
        }
        *total = nodes.values().map(|n| n.1).sum();
        assert_eq!(
            *total,
            a.per_instance[i] as u64,
            "lb{}: /status total_connections {nodes:?} vs {} connections logged",
            i + 1,
            a.per_instance[i]
        );
    }
    let baseline = a.node_of.clone();

    // (c) Withdraw lb1's route. First, one long-lived connection per client IP,
    // spread over both instances.
    let from = [lab.log_len(0), lab.log_len(1)];
    let mut held = connect_many(&client_ns, &srcs, 1, true);
    for c in &held {
        let node = c
            .node
            .as_ref()
            .unwrap_or_else(|e| panic!("held connection from {}: {e}", c.src));
        assert_eq!(node, &baseline[&c.src], "held connection from {}", c.src);
    }
    lab.route_only(1);
    let withdrawn_route = lab.route_text();
    // New connections: all on lb2, each client on its node.
    let from_c1 = [lab.log_len(0), lab.log_len(1)];
    let per_src_c1 = 4;
    let conns = connect_many(&client_ns, &srcs, per_src_c1, false);
    let c1 = check_phase(&lab, "lb1 withdrawn", from_c1, &conns);
    assert_eq!(
        c1.per_instance,
        [0, conns.len()],
        "with lb1's route withdrawn, lb1 still served connections"
    );
    assert_eq!(
        c1.node_of, baseline,
        "a client changed node when lb1's route was withdrawn"
    );
    // The long-lived ones: those on lb2 keep echoing; those on lb1 now reach
    // lb2, which knows nothing of them and resets them (what a withdrawn ECMP
    // next hop does to its open flows: the router keeps no flow state).
    let mut echo_ok = HashSet::new();
    let mut echo_failed = Vec::new();
    for (n, c) in held.iter_mut().enumerate() {
        let s = c.stream.as_mut().unwrap();
        s.set_read_timeout(Some(S(3))).unwrap();
        let msg = format!("held-{n}");
        let r = s
            .write_all(format!("{msg}\n").as_bytes())
            .and_then(|_| read_line_blocking(s));
        match r {
            Ok(back) if back == msg => {
                echo_ok.insert((c.src, c.port));
            }
            Ok(back) => panic!("held {}:{} echoed {back:?}, not {msg:?}", c.src, c.port),
            // A reset comes at once; anything else (a timeout) fails here, so
            // this loop stays short.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                echo_failed.push((c.src, c.port, e.to_string()))
            }
            Err(e) => panic!(
                "held {}:{} failed other than by a reset after the withdrawal: {e}",
                c.src, c.port
            ),
        }
    }
    let (lb1_active, _) = status_summary(&lab.lbs[0]);
    for c in &mut held {
        c.stream = None; // close
    }
    // Which instance held each: lb2 logs its own when the client closes; lb1
    // never hears of its own again (they sit until idle_timeout).
    let deadline = Instant::now() + S(10);
    let on_lb2: HashSet<(Ipv4Addr, u16)> = loop {
        let logged: HashSet<(Ipv4Addr, u16)> = lab
            .closed_since(1, from[1])
            .into_keys()
            .filter(|k| held.iter().any(|c| (c.src, c.port) == *k))
            .collect();
        if logged.len() >= echo_ok.len() || Instant::now() >= deadline {
            break logged;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        on_lb2, echo_ok,
        "the held connections that kept working are not exactly lb2's"
    );
    assert_eq!(
        echo_failed.len() as u64,
        lb1_active,
        "held connections that failed ({:?}...) vs lb1's open connections",
        &echo_failed[..echo_failed.len().min(3)]
    );
    let held_lb1 = echo_failed.len();
    let held_lb2 = echo_ok.len();
    assert!(
        held_lb1 > 0 && held_lb2 > 0,
        "held: {held_lb1} on lb1, {held_lb2} on lb2"
    );

    // Restore the ECMP route: both serve again, nobody moved.
    lab.route_both();
    let from = [lab.log_len(0), lab.log_len(1)];
    let per_src_r = 6;
    let conns = connect_many(&client_ns, &srcs, per_src_r, false);
    let r = check_phase(&lab, "ECMP restored", from, &conns);
    assert!(
        r.per_instance[0] > 0 && r.per_instance[1] > 0,
        "after restoring the route: {:?}",
        r.per_instance
    );
    assert_eq!(
        r.node_of, baseline,
        "a client changed node after the route came back"
    );

    // Withdraw lb2's route, then stop lb2: everybody on lb1, nobody moved.
    lab.route_only(0);
    let stop_t = Instant::now();
    let exit = lab.stop_lb(1);
    let stop_ms = stop_t.elapsed().as_secs_f64() * 1000.0;
    assert!(exit.success(), "lb2 exited with {exit}");
    let from = [lab.log_len(0), lab.log_len(1)];
    let per_src_c2 = 4;
    let conns = connect_many(&client_ns, &srcs, per_src_c2, false);
    let c2 = check_phase(&lab, "lb2 stopped", from, &conns);
    assert_eq!(c2.per_instance, [conns.len(), 0]);
    assert_eq!(
        c2.node_of, baseline,
        "a client changed node when lb2 stopped"
    );

    // Nothing alarming in either log.
    let mut warnings = Vec::new();
    for i in 0..2 {
        for (_, l) in lab.lb(i).lines.all() {
            assert!(!l.contains("panicked"), "lb{} panicked: {l}", i + 1);
            if l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\"") {
                warnings.push(format!("lb{}: {l}", i + 1));
            }
        }
    }
    assert!(lab.lb_procs[0].as_mut().unwrap().running(), "lb1 exited");
    assert!(warnings.is_empty(), "warnings logged: {warnings:#?}");

    // lb1's connections of the held set were reset on the client side by lb2;
    // lb1 itself never hears of it and keeps them (and their node connections)
    // until idle_timeout (no TCP keepalive). Reported, not asserted.
    let (lb1_orphans, _) = status_summary(&lab.lbs[0]);

    let mut node_share: BTreeMap<&str, usize> = BTreeMap::new();
    for n in baseline.values() {
        *node_share.entry(n.as_str()).or_default() += 1;
    }
    let flat = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!(
        "ecmp: {} client IPs (10.214.1.100-249), 3 nodes, clients per node {node_share:?}\n\
         - route: {}\n\
         - ECMP: {total_a} connections ({per_src_a} per IP) in {a_ms:.0} ms: lb1 {} / lb2 {} \
           (/status total_connections {status_totals:?}); {} of {} IPs served by both instances; \
           every IP on one node, the one `ringlb which` names\n\
         - {} held connections: {held_lb1} on lb1, {held_lb2} on lb2\n\
         - lb1 withdrawn ({}): {} new connections, all on lb2, same nodes; held ones on lb2 kept echoing, \
           held ones on lb1 were reset ({})\n\
         - ECMP restored: {} connections, lb1 {} / lb2 {}, {} IPs on both, same nodes\n\
         - lb2 withdrawn + SIGTERM ({exit} after {stop_ms:.0} ms): {} new connections, all on lb1, same nodes\n\
         - lb1 still counts {lb1_orphans} open connections (the reset held ones; idle_timeout 60s)\n\
         - setup {setup_s:.1} s, total {:.1} s",
        srcs.len(),
        flat(&route),
        a.per_instance[0],
        a.per_instance[1],
        a.ips_on_both,
        srcs.len(),
        held.len(),
        flat(&withdrawn_route),
        c1.per_instance[1],
        echo_failed.first().map(|e| e.2.as_str()).unwrap_or("-"),
        r.per_instance[0] + r.per_instance[1],
        r.per_instance[0],
        r.per_instance[1],
        r.ips_on_both,
        c2.per_instance[0],
        t0.elapsed().as_secs_f64(),
    );
}
