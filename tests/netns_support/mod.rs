//! Test hosts as Linux network namespaces, for `tests/netns.rs`. The crate that
//! includes it also declares `mod common;` (tests/common).
//!
//! One lab per test: a "switch" namespace holding a bridge, and a client, a
//! balancer and N backend namespaces, each joined to the bridge by a veth pair
//! and given its own address in `10.213.T.0/24` (T = the test's number). Nothing
//! is created in, or routed through, the root namespace, and no namespace has a
//! route beyond its /24, so traffic cannot leave the lab.
//!
//! - Balancer: the real `ringlb` binary (`ip netns exec LB ringlb run ...`).
//! - Backends: `ringlb-bench serve echo --greet` and `serve http` on 127.0.0.1
//!   inside each backend namespace (ringlb-bench only binds loopback), reached on
//!   the node's address through a DNAT rule in that namespace
//!   (`route_localnet=1`). Faults are iptables rules in the backend namespace,
//!   or signals to its processes.
//! - Clients: this test binary re-executed in the client namespace as an agent
//!   (see `agent.rs`), driven by JSON lines; the client namespace has 100
//!   addresses so clients have distinct source IPs.
//!
//! [`Lab`]'s `Drop` kills every process it started (and anything else still in
//! its namespaces) and deletes every namespace, also when the test panics; on a
//! panic it prints the logs first. Namespaces left by a crashed earlier run (a
//! dead pid in the name) are removed when a lab is created.
#![allow(dead_code)]

pub mod agent;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

pub use crate::common::bench_bin::ringlb_bench;
pub use agent::{unix_ms, XorShift};

const NS_PREFIX: &str = "rlnt";
pub const LB_PORT: u16 = 8000;
pub const ECHO_PORT: u16 = 7000;
pub const HTTP_PORT: u16 = 7001;
/// Client addresses: 10.213.T.100 ..= 10.213.T.199.
pub const CLIENTS: u8 = 100;

/// Why these tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if let Some(r) = crate::common::not_root() {
        return Some(format!("{r}; network namespaces need root"));
    }
    for (tool, arg) in [("ip", "-V"), ("iptables", "--version")] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Some(format!(
                "`{tool}` not found or not working (apt-get install iproute2 iptables)"
            ));
        }
    }
    None
}

/// True (after printing `skipped: <reason>`) when the test cannot run here;
/// under `REQUIRE_ROOT=1` (CI) it panics with the reason instead.
pub fn skipped() -> bool {
    !crate::common::needs("REQUIRE_ROOT", skip_reason())
}

/// The heavy tests run one at a time: they measure latencies on a 2-core box.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run a command to completion; panic with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if !out.status.success() {
        panic!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip [-n NS] -batch -` with the given lines.
fn ip_batch(ns: Option<&str>, lines: &[String]) {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ip -batch");
    {
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        panic!(
            "ip {ns:?} -batch failed: {}\n{}\nlines:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            lines.join("\n")
        );
    }
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Every namespace name currently present.
fn netns_list() -> Vec<String> {
    sh("ip", &["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Kill whatever still runs in `ns`, then delete it. Errors are ignored (teardown).
fn destroy_netns(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(p) = pid.parse::<i32>() {
                let _ = kill(Pid::from_raw(p), Signal::SIGCONT);
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Namespaces of this suite whose creator (the pid in the name) is gone.
fn remove_stale_namespaces() {
    for ns in netns_list() {
        let Some(rest) = ns.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !pid_alive(pid) {
            eprintln!("removing stale namespace {ns} (pid {pid} is gone)");
            destroy_netns(&ns);
        }
    }
}

/// `ip netns exec NS` (which execs the program: its pid is the program's). When
/// util-linux's `setpriv` is there, the program also gets SIGKILL if the thread
/// that started it goes away (a test binary killed by SIGKILL leaves no
/// backends or balancers behind; their namespaces go at the next run).
fn netns_exec(ns: &str) -> Command {
    static SETPRIV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let setpriv = *SETPRIV.get_or_init(|| {
        Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    });
    let mut cmd = if setpriv {
        let mut c = Command::new("setpriv");
        c.args(["--pdeathsig", "KILL", "ip"]);
        c
    } else {
        Command::new("ip")
    };
    cmd.args(["netns", "exec", ns]);
    cmd
}

/// Lines of a process's stdout and stderr, with arrival times, for waiting on.
#[derive(Default)]
pub struct Lines {
    v: Mutex<Vec<(Instant, String)>>,
    cv: Condvar,
}

impl Lines {
    fn push(&self, line: String) {
        self.v.lock().unwrap().push((Instant::now(), line));
        self.cv.notify_all();
    }

    pub fn len(&self) -> usize {
        self.v.lock().unwrap().len()
    }

    pub fn all(&self) -> Vec<(Instant, String)> {
        self.v.lock().unwrap().clone()
    }

    /// The first line at index >= `from` that satisfies `pred`, waiting up to
    /// `within`. Returns its index, arrival time and text.
    pub fn wait(
        &self,
        from: usize,
        within: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<(usize, Instant, String)> {
        let deadline = Instant::now() + within;
        let mut v = self.v.lock().unwrap();
        let mut i = from;
        loop {
            while i < v.len() {
                if pred(&v[i].1) {
                    return Some((i, v[i].0, v[i].1.clone()));
                }
                i += 1;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            v = self.cv.wait_timeout(v, deadline - now).unwrap().0;
        }
    }
}

fn pump(stream: impl std::io::Read + Send + 'static, lines: Arc<Lines>, tag: &'static str) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            lines.push(if tag.is_empty() {
                line
            } else {
                format!("{tag}{line}")
            });
        }
    });
}

/// A process started in a namespace, with its output collected.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub lines: Arc<Lines>,
}

impl Proc {
    fn spawn(name: &str, ns: &str, program: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = netns_exec(ns);
        cmd.arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let lines = Arc::new(Lines::default());
        pump(child.stdout.take().unwrap(), lines.clone(), "");
        pump(child.stderr.take().unwrap(), lines.clone(), "");
        Proc {
            name: name.to_string(),
            child,
            lines,
        }
    }

    /// `ip netns exec` execs the program, so this is the program's own pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Send `sig`. SIGSTOP is made synchronous: it returns once every thread of
    /// the process is stopped (the kernel stops threads as they next run, so a
    /// thread busy at the time could otherwise still read and answer a few
    /// bytes after `kill` returned).
    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid()), sig);
        if sig == Signal::SIGSTOP {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !self.all_threads_stopped() {
                assert!(
                    Instant::now() < deadline,
                    "{} not stopped 5 s after SIGSTOP",
                    self.name
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Every thread in state T (stopped), per /proc/PID/task/*/stat.
    fn all_threads_stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return false;
        };
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|st| st.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
                .unwrap_or(false)
        })
    }

    pub fn kill(&mut self) {
        self.signal(Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn dump(&self) {
        eprintln!(
            "----- output of {} (pid {}) -----",
            self.name,
            self.child.id()
        );
        for (_, l) in self.lines.all() {
            eprintln!("{}: {l}", self.name);
        }
    }
}

/// The client agent in the client namespace.
pub struct Agent {
    proc: Proc,
    stdin: Mutex<ChildStdin>,
    next: AtomicU64,
}

impl Agent {
    fn start(ns: &str) -> Agent {
        let exe = std::env::current_exe().expect("current exe");
        let mut cmd = netns_exec(ns);
        cmd.arg(&exe)
            .args([
                "zz_agent_entry",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(agent::ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn agent");
        let lines = Arc::new(Lines::default());
        let stdin = child.stdin.take().unwrap();
        pump(child.stdout.take().unwrap(), lines.clone(), "");
        pump(child.stderr.take().unwrap(), lines.clone(), "");
        Agent {
            proc: Proc {
                name: "agent".into(),
                child,
                lines,
            },
            stdin: Mutex::new(stdin),
            next: AtomicU64::new(1),
        }
    }

    /// Send a command and wait for its answer (panics on timeout or `ok: false`).
    pub fn call(&self, cmd: Value, within: Duration) -> Value {
        let v = self.try_call(cmd.clone(), within);
        if v["ok"] != json!(true) {
            panic!("agent command {cmd} failed: {v}");
        }
        v
    }

    /// Send a command and wait for its answer, whatever it says.
    pub fn try_call(&self, mut cmd: Value, within: Duration) -> Value {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        cmd["id"] = json!(id);
        let from = self.proc.lines.len();
        {
            let mut stdin = self.stdin.lock().unwrap();
            writeln!(stdin, "{cmd}").expect("write to agent");
            stdin.flush().unwrap();
        }
        let tag = format!("\"id\":{id},");
        let tag_end = format!("\"id\":{id}}}");
        // libtest may print "test zz_agent_entry ... " in front of the first answer.
        let Some((_, _, line)) = self.proc.lines.wait(from, within, |l| {
            l.contains(agent::PREFIX) && (l.contains(&tag) || l.contains(&tag_end))
        }) else {
            panic!("agent gave no answer to {cmd} within {within:?}");
        };
        let at = line.find(agent::PREFIX).unwrap() + agent::PREFIX.len();
        serde_json::from_str(&line[at..]).expect("agent answer is JSON")
    }
}

/// One backend host: a namespace with an echo server and an HTTP server.
pub struct Node {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub echo: Option<Proc>,
    pub http: Option<Proc>,
}

impl Node {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, ECHO_PORT))
    }
}

/// Pool settings of a generated config.
#[derive(Clone, Debug)]
pub struct PoolCfg {
    /// Lines for `[pools.p]` (connect_timeout, idle_timeout, ...).
    pub pool: String,
    /// Lines for `[pools.p.health]`, or empty for no table.
    pub health: String,
    /// (node index, weight) of the nodes in the pool.
    pub nodes: Vec<(usize, u32)>,
}

pub struct Lab {
    pub idx: u8,
    pub prefix: String,
    namespaces: Vec<String>,
    pub client_ns: String,
    pub lb_ns: String,
    pub lb_ip: Ipv4Addr,
    pub nodes: Vec<Node>,
    pub ringlb: Option<Proc>,
    pub agent: Option<Agent>,
    /// A second agent, in the balancer's namespace (for the admin endpoint on
    /// its loopback), started on demand.
    pub lb_agent: Option<Agent>,
    /// Port of ringlb's admin endpoint on 127.0.0.1 in its namespace, if any.
    pub admin_port: Option<u16>,
    /// Extra lines for the `[[listener]]` table written by `write_config`.
    pub listener_extra: String,
    /// Processes that were killed or replaced; kept for their logs.
    graveyard: Vec<Proc>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    started: Instant,
    /// `started` as unix milliseconds (to place the agent's timestamps).
    started_unix_ms: u64,
}

impl Lab {
    /// Build the namespaces, links and addresses for test number `idx` (1..=250)
    /// with `backends` backend hosts, start the backends and the agent.
    pub fn new(idx: u8, backends: usize) -> Lab {
        remove_stale_namespaces();
        let prefix = format!("{NS_PREFIX}{}-{idx}", std::process::id());
        // Leftovers of this very process (cannot happen unless a test re-runs).
        for ns in netns_list() {
            if ns.starts_with(&format!("{prefix}-")) {
                destroy_netns(&ns);
            }
        }
        let net = |host: u8| Ipv4Addr::new(10, 213, idx, host);
        let sw = format!("{prefix}-sw");
        let client_ns = format!("{prefix}-c");
        let lb_ns = format!("{prefix}-lb");
        let mut hosts: Vec<(String, String, Vec<Ipv4Addr>)> = vec![
            (
                client_ns.clone(),
                "vc".into(),
                (0..CLIENTS).map(|i| net(100 + i)).collect(),
            ),
            (lb_ns.clone(), "vlb".into(), vec![net(2)]),
        ];
        for k in 0..backends {
            hosts.push((
                format!("{prefix}-b{k}"),
                format!("vb{k}"),
                vec![net(11 + k as u8)],
            ));
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("ringlb.toml");
        let mut lab = Lab {
            idx,
            prefix: prefix.clone(),
            namespaces: Vec::new(),
            client_ns: client_ns.clone(),
            lb_ns: lb_ns.clone(),
            lb_ip: net(2),
            nodes: Vec::new(),
            ringlb: None,
            agent: None,
            lb_agent: None,
            admin_port: None,
            listener_extra: String::new(),
            graveyard: Vec::new(),
            dir,
            config_path,
            started: Instant::now(),
            started_unix_ms: unix_ms(),
        };
        // From here on, Drop cleans up whatever was created.
        let all: Vec<String> = std::iter::once(sw.clone())
            .chain(hosts.iter().map(|h| h.0.clone()))
            .collect();
        lab.namespaces = all.clone();
        ip_batch(
            None,
            &all.iter()
                .map(|ns| format!("netns add {ns}"))
                .collect::<Vec<_>>(),
        );
        let mut sw_lines = vec![
            "link set lo up".to_string(),
            "link add br0 type bridge".to_string(),
            "link set br0 up".to_string(),
        ];
        for (ns, veth, _) in &hosts {
            sw_lines.push(format!(
                "link add {veth} type veth peer name eth0 netns {ns}"
            ));
            sw_lines.push(format!("link set {veth} master br0"));
            sw_lines.push(format!("link set {veth} up"));
        }
        ip_batch(Some(&sw), &sw_lines);
        for (ns, _, addrs) in &hosts {
            let mut lines = vec!["link set lo up".to_string()];
            for a in addrs {
                lines.push(format!("addr add {a}/24 dev eth0"));
            }
            // One MSS per packet (no 64 KiB GSO super-packets), so packet-level
            // faults (random drop) hit packets as they would be on a wire.
            if std::env::var_os("RLNT_KEEP_GSO").is_none() {
                lines.push("link set eth0 gso_max_segs 1".to_string());
            }
            lines.push("link set eth0 up".to_string());
            ip_batch(Some(ns), &lines);
        }
        for k in 0..backends {
            let (ns, _, addrs) = &hosts[2 + k];
            let ip = addrs[0];
            sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    "net.ipv4.conf.all.route_localnet=1",
                ],
            );
            sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-d",
                    &ip.to_string(),
                    "-p",
                    "tcp",
                    "-j",
                    "DNAT",
                    "--to-destination",
                    "127.0.0.1",
                ],
            );
            // Heavy loss makes conntrack call some retransmissions out of window
            // (INVALID): those would skip the DNAT and meet a RST from the
            // node's address. Be liberal: the lab's NAT must not add faults.
            sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    "net.netfilter.nf_conntrack_tcp_be_liberal=1",
                ],
            );
            lab.nodes.push(Node {
                name: format!("node-{k}"),
                ns: ns.clone(),
                ip,
                echo: None,
                http: None,
            });
        }
        for k in 0..backends {
            lab.start_node(k);
        }
        lab.agent = Some(Agent::start(&client_ns));
        lab.agent()
            .call(json!({"op": "ping"}), Duration::from_secs(30));
        lab
    }

    pub fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent")
    }

    pub fn lb_addr(&self) -> SocketAddr {
        SocketAddr::from((self.lb_ip, LB_PORT))
    }

    pub fn lb_dst(&self) -> String {
        self.lb_addr().to_string()
    }

    /// Client source address `i` (0..100).
    pub fn client(&self, i: usize) -> String {
        assert!(i < CLIENTS as usize);
        Ipv4Addr::new(10, 213, self.idx, 100 + i as u8).to_string()
    }

    pub fn clients(&self, range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| self.client(i)).collect()
    }

    /// Start (or restart) node `k`'s echo and HTTP servers; wait until both listen.
    pub fn start_node(&mut self, k: usize) {
        self.stop_node(k);
        let bench = ringlb_bench();
        let (ns, name) = (self.nodes[k].ns.clone(), self.nodes[k].name.clone());
        let echo_listen = format!("127.0.0.1:{ECHO_PORT}");
        let http_listen = format!("127.0.0.1:{HTTP_PORT}");
        let echo = Proc::spawn(
            &format!("{name}-echo"),
            &ns,
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
                &echo_listen,
            ],
            &[],
        );
        let http = Proc::spawn(
            &format!("{name}-http"),
            &ns,
            bench,
            &[
                "--workers",
                "1",
                "serve",
                "http",
                "--name",
                &name,
                "--listen",
                &http_listen,
            ],
            &[],
        );
        for p in [&echo, &http] {
            if p.lines
                .wait(0, Duration::from_secs(20), |l| l.starts_with("listening "))
                .is_none()
            {
                p.dump();
                panic!("{} did not start listening", p.name);
            }
        }
        self.nodes[k].echo = Some(echo);
        self.nodes[k].http = Some(http);
    }

    /// SIGKILL node `k`'s servers (keeps their logs).
    pub fn stop_node(&mut self, k: usize) {
        for p in [self.nodes[k].echo.take(), self.nodes[k].http.take()]
            .into_iter()
            .flatten()
        {
            let mut p = p;
            p.kill();
            self.graveyard.push(p);
        }
    }

    /// Send `sig` to node `k`'s servers.
    pub fn signal_node(&self, k: usize, sig: Signal) {
        for p in [&self.nodes[k].echo, &self.nodes[k].http]
            .into_iter()
            .flatten()
        {
            p.signal(sig);
        }
    }

    /// `iptables ARGS` inside node `k`'s namespace.
    pub fn iptables(&self, k: usize, args: &[&str]) {
        let mut full = vec!["netns", "exec", &self.nodes[k].ns, "iptables", "-w"];
        full.extend_from_slice(args);
        sh("ip", &full);
    }

    /// Write the config file: listener on the lb address, pool `p`.
    pub fn write_config(&self, cfg: &PoolCfg) {
        let mut s = format!(
            "shutdown_grace = \"1s\"\n\n[[listener]]\nname = \"lb\"\nlisten = \"{}\"\npool = \"p\"\n{}\n\n[pools.p]\n{}\n",
            self.lb_addr(),
            self.listener_extra,
            cfg.pool
        );
        if !cfg.health.is_empty() {
            s.push_str(&format!("[pools.p.health]\n{}\n", cfg.health));
        }
        for &(k, w) in &cfg.nodes {
            s.push_str(&format!(
                "[[pools.p.nodes]]\nname = \"{}\"\naddr = \"{}\"\nweight = {w}\n\n",
                self.nodes[k].name,
                self.nodes[k].addr()
            ));
        }
        if let Some(port) = self.admin_port {
            s.push_str(&format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n"));
        }
        // Write then rename, so a reload never reads half a file.
        let tmp = self.dir.path().join("ringlb.toml.tmp");
        std::fs::write(&tmp, s).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Start ringlb in the balancer namespace with the current config file and
    /// wait for its `listening` line.
    pub fn start_ringlb(&mut self) {
        let path = self.config_path.to_string_lossy().into_owned();
        let p = Proc::spawn(
            "ringlb",
            &self.lb_ns,
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
            &[("RINGLB_WORKERS", "2")],
        );
        let ok = p
            .lines
            .wait(0, Duration::from_secs(20), |l| {
                l.contains("\"message\":\"listening\"")
            })
            .is_some();
        self.ringlb = Some(p);
        if !ok {
            panic!("ringlb did not start listening");
        }
    }

    /// `GET /status` of the admin endpoint (needs `admin_port`), fetched from
    /// inside the balancer's namespace.
    pub fn status(&mut self) -> Value {
        let port = self.admin_port.expect("admin_port set before write_config");
        if self.lb_agent.is_none() {
            let a = Agent::start(&self.lb_ns);
            self.lb_agent = Some(a);
            self.lb_agent
                .as_ref()
                .unwrap()
                .call(json!({"op": "ping"}), Duration::from_secs(30));
        }
        let r = self.lb_agent.as_ref().unwrap().call(
            json!({"op": "http_get", "dst": format!("127.0.0.1:{port}"), "path": "/status"}),
            Duration::from_secs(10),
        );
        let text = r["text"].as_str().unwrap_or("");
        let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {text}"))
    }

    /// Nodes of pool `p` in `/status`, by name.
    pub fn status_nodes(&mut self) -> HashMap<String, Value> {
        let st = self.status();
        let pools = st["pools"].as_array().cloned().unwrap_or_default();
        let p = pools
            .iter()
            .find(|p| p["name"] == json!("p"))
            .unwrap_or_else(|| panic!("no pool p in /status: {st}"));
        p["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["name"].as_str().unwrap().to_string(), n.clone()))
            .collect()
    }

    pub fn ringlb(&self) -> &Proc {
        self.ringlb.as_ref().expect("ringlb")
    }

    pub fn ringlb_pid(&self) -> i32 {
        self.ringlb().pid()
    }

    /// Open descriptors of the ringlb process.
    pub fn ringlb_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.ringlb_pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// SIGHUP ringlb and wait for `reload applied` with generation `gen`.
    pub fn reload(&self, generation: u64) -> String {
        let from = self.ringlb().lines.len();
        self.ringlb().signal(Signal::SIGHUP);
        let want = format!("\"generation\":{generation}");
        match self
            .ringlb()
            .lines
            .wait(from, Duration::from_secs(10), |l| {
                l.contains("reload applied") && l.contains(&want)
            }) {
            Some((_, _, l)) => l,
            None => panic!("no `reload applied` with generation {generation}"),
        }
    }

    /// `ringlb which` on the current config: client IP -> (node, fallbacks).
    pub fn which(&self, ips: &[String]) -> HashMap<String, (String, Vec<String>)> {
        let path = self.config_path.to_string_lossy().into_owned();
        let mut args = vec!["which", "--config", &path];
        args.extend(ips.iter().map(String::as_str));
        let out = sh(env!("CARGO_BIN_EXE_ringlb"), &args);
        let mut map = HashMap::new();
        for line in out.lines() {
            let t: Vec<&str> = line.split_whitespace().collect();
            if t.len() >= 3 && t[1] == "->" {
                let fallback = t
                    .iter()
                    .skip_while(|x| **x != "then:")
                    .skip(1)
                    .map(|x| x.trim_end_matches(',').to_string())
                    .filter(|x| !x.is_empty() && !x.starts_with('['))
                    .collect();
                map.insert(t[0].to_string(), (t[2].to_string(), fallback));
            }
        }
        assert_eq!(map.len(), ips.len(), "which output:\n{out}");
        map
    }

    /// Node state changes ringlb logged so far: (arrival, node, up?, reason).
    pub fn transitions(&self) -> Vec<(Instant, String, bool, String)> {
        let mut v = Vec::new();
        for (at, line) in self.ringlb().lines.all() {
            if !line.contains("node UP") && !line.contains("node DOWN") {
                continue;
            }
            let Ok(j) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let msg = j["message"].as_str().unwrap_or("");
            let up = msg.starts_with("node UP");
            if !up && !msg.starts_with("node DOWN") {
                continue;
            }
            v.push((
                at,
                j["node"].as_str().unwrap_or("").to_string(),
                up,
                j["reason"].as_str().unwrap_or("").to_string(),
            ));
        }
        v
    }

    /// Wait for ringlb to log `node` going up or down, starting at line `from`.
    pub fn wait_transition(
        &self,
        from: usize,
        node: &str,
        up: bool,
        within: Duration,
    ) -> Option<(Instant, String)> {
        let msg = if up { "node UP" } else { "node DOWN" };
        let want_node = format!("\"node\":\"{node}\"");
        self.ringlb()
            .lines
            .wait(from, within, |l| l.contains(msg) && l.contains(&want_node))
            .map(|(_, at, l)| (at, l))
    }

    /// Lines of ringlb's log containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.ringlb()
            .lines
            .all()
            .into_iter()
            .map(|(_, l)| l)
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// ringlb's log lines containing `needle` that arrived between the unix
    /// times `from_ms` and `to_ms`.
    pub fn log_lines_between(&self, needle: &str, from_ms: u64, to_ms: u64) -> Vec<String> {
        self.ringlb()
            .lines
            .all()
            .into_iter()
            .filter(|(at, l)| {
                let t = self.started_unix_ms + at.duration_since(self.started).as_millis() as u64;
                t >= from_ms && t <= to_ms && l.contains(needle)
            })
            .map(|(_, l)| l)
            .collect()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let mut procs: Vec<Proc> = Vec::new();
        procs.extend(self.ringlb.take());
        for n in &mut self.nodes {
            procs.extend(n.echo.take());
            procs.extend(n.http.take());
        }
        if let Some(a) = self.agent.take() {
            procs.push(a.proc);
        }
        if let Some(a) = self.lb_agent.take() {
            procs.push(a.proc);
        }
        for p in &mut procs {
            p.kill();
        }
        if panicking {
            eprintln!(
                "===== test failed after {:.1}s; logs of lab {} =====",
                self.started.elapsed().as_secs_f64(),
                self.prefix
            );
            if let Ok(cfg) = std::fs::read_to_string(&self.config_path) {
                eprintln!("----- config -----\n{cfg}");
            }
            for p in self.graveyard.iter().chain(procs.iter()) {
                p.dump();
            }
        }
        for ns in &self.namespaces {
            destroy_netns(ns);
        }
    }
}

/// Summary numbers of a list of milliseconds: (min, median, max).
pub fn stats(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (s[0], s[s.len() / 2], s[s.len() - 1])
}

// Building blocks for labs of another shape (`tests/netns_ecmp.rs`). Thin public
// wrappers around the private helpers above; the `Lab` does not use them.

/// The namespace-name prefix of this process's labs: `rlnt<pid>-<tag>`. Names
/// made from it are cleaned up by [`remove_stale_lab_namespaces`] once the
/// process is gone, like `Lab`'s.
pub fn lab_prefix(tag: &str) -> String {
    format!("{NS_PREFIX}{}-{tag}", std::process::id())
}

/// Remove the namespaces of dead earlier runs (as `Lab::new` does).
pub fn remove_stale_lab_namespaces() {
    remove_stale_namespaces();
}

/// Every namespace name currently present.
pub fn namespace_names() -> Vec<String> {
    netns_list()
}

/// `ip [-n NS] -batch -` with the given lines; panics if it fails.
pub fn ip_batch_in(ns: Option<&str>, lines: &[String]) {
    ip_batch(ns, lines);
}

/// Kill whatever still runs in `ns`, then delete it (errors ignored).
pub fn destroy_namespace(ns: &str) {
    destroy_netns(ns);
}

impl Proc {
    /// Start `program` in namespace `ns` (SIGKILLed if the starting thread
    /// dies, when `setpriv` is there), collecting its stdout and stderr.
    pub fn spawn_in(
        name: &str,
        ns: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        Proc::spawn(name, ns, program, args, env)
    }
}
