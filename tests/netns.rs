//! Faults on real test hosts: ringlb, its backends and its clients each in their
//! own Linux network namespace, joined by veth pairs to a bridge in a dedicated
//! switch namespace (issue #6). Needs root, `ip` and `iptables`; without them
//! every test prints `skipped: <reason>` and passes, or fails under
//! `REQUIRE_ROOT=1` (as CI sets it).
//!
//! The faults: a black-holed node (iptables DROP), a hung node (SIGSTOP), a node
//! killed under load, a lossy link (10% random drop), a flapping node, a
//! seeded chaos run of kills, restarts and reloads, and dead peers found by TCP
//! keepalive (a black-holed node, then a black-holed client). See `netns_support` for the
//! lab (namespaces, processes, the client agent and teardown).
//!
//! Environment knobs: `RLNT_SEED` (chaos and flapping seed), `RLNT_CHAOS_SECS`
//! (chaos duration, default 60, 5 to 120), `RLNT_KEEP_GSO=1` (leave GSO on the
//! veths: a drop then loses a 64 KiB super-packet, not one segment; the lossy
//! test's check that over 100 packets were dropped is then expected to fail).
//!
//! Run as root: `cargo test --test netns` (about 110 s on 2 cores; the tests
//! run one at a time, they measure latencies).

mod common;
#[path = "netns_support/mod.rs"]
mod netns_support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use netns_support::{serial, stats, unix_ms, Lab, PoolCfg, XorShift};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const S: fn(u64) -> Duration = Duration::from_secs;

/// Not a test: the entry point of the client agent when this binary is
/// re-executed inside a client namespace (`RLNT_AGENT=1`). Returns at once otherwise.
#[test]
fn zz_agent_entry() {
    netns_support::agent::run_if_requested();
}

fn seed() -> u64 {
    std::env::var("RLNT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| unix_ms() ^ u64::from(std::process::id()))
}

/// Greeting-based mapping of many clients at once: src -> probe result.
fn probe_all(lab: &Lab, srcs: &[String]) -> HashMap<String, Value> {
    let v = lab.agent().call(
        json!({"op": "map", "srcs": srcs, "dst": lab.lb_dst(), "timeout_ms": 5000}),
        S(30),
    );
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["src"].as_str().unwrap().to_string(), r.clone()))
        .collect()
}

fn probe_one(lab: &Lab, src: &str) -> Value {
    lab.agent().call(
        json!({"op": "probe", "src": src, "dst": lab.lb_dst(), "timeout_ms": 5000}),
        S(30),
    )
}

/// Every client lands on the node `which` names (with every node up).
fn assert_all_on_primary(
    lab: &Lab,
    srcs: &[String],
    which: &HashMap<String, (String, Vec<String>)>,
) {
    let got = probe_all(lab, srcs);
    for src in srcs {
        let r = &got[src];
        assert_eq!(
            r["node"].as_str(),
            Some(which[src].0.as_str()),
            "client {src} did not land on its node: {r}"
        );
    }
}

fn ms(v: &Value) -> f64 {
    v["ms"].as_f64().unwrap_or(f64::NAN)
}

/// ringlb's log lines about failed new connections (`results` of a churn): the
/// lines naming their client IP logged while they ran (and a moment after).
fn explain_failures(lab: &Lab, failed: &[&Value]) -> Vec<String> {
    let mut out = Vec::new();
    for f in failed {
        let src = f["src"].as_str().unwrap_or("?");
        let t = f["t"].as_u64().unwrap_or(0);
        let took = f["ms"].as_f64().unwrap_or(0.0) as u64;
        let needle = format!("\"client\":\"{src}:");
        for l in lab.log_lines_between(&needle, t.saturating_sub(50), t + took + 1000) {
            if !out.contains(&l) {
                out.push(l);
            }
        }
    }
    out
}

/// Clients (of `srcs`) whose node is `node`, by `which`.
fn clients_of(
    which: &HashMap<String, (String, Vec<String>)>,
    srcs: &[String],
    node: &str,
) -> Vec<String> {
    srcs.iter()
        .filter(|s| which[*s].0 == node)
        .cloned()
        .collect()
}

/// 1. A black-holed node (every packet to and from it dropped): its clients are
///    served by their next node after one connect_timeout; `passive_failures`
///    such timeouts take it down without waiting for the (slow) probes; from then
///    on its clients go straight to their next node (no timeout wait) and nobody
///    else moves; the probes keep it down while it is black-holed and bring it
///    back once the rule is gone, and exactly its clients return. Then, with
///    passive failures turned off by a reload, the probes alone take it down
///    within fall probes when it is black-holed again.
#[test]
fn black_holed_node_fallback_then_passive_down() {
    if netns_support::skipped() {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::new(1, 3);
    let connect_timeout_ms = 800.0;
    let cfg = PoolCfg {
        pool: "connect_timeout = \"800ms\"\nidle_timeout = \"30s\"\nconnect_attempts = 3\npassive_failures = 3\n".into(),
        health: "kind = \"tcp\"\ninterval = \"1500ms\"\ntimeout = \"1s\"\nrise = 2\nfall = 3\n".into(),
        nodes: vec![(0, 1), (1, 1), (2, 1)],
    };
    lab.write_config(&cfg);
    lab.start_ringlb();
    let srcs = lab.clients(0..60);
    let which = lab.which(&srcs);
    assert_all_on_primary(&lab, &srcs, &which);

    let victim = "node-1";
    let theirs = clients_of(&which, &srcs, victim);
    let others: Vec<String> = srcs
        .iter()
        .filter(|s| !theirs.contains(s))
        .cloned()
        .collect();
    assert!(
        theirs.len() >= 8,
        "too few clients on {victim}: {}",
        theirs.len()
    );

    let from = lab.ringlb().lines.len();
    lab.iptables(1, &["-A", "INPUT", "-j", "DROP"]);
    lab.iptables(1, &["-A", "OUTPUT", "-j", "DROP"]);
    let holed_at = Instant::now();

    // Before it is down: each of its clients waits one connect_timeout, then is
    // served by its next node. At most passive_failures of them.
    let mut slow = Vec::new();
    let mut down = None;
    for src in theirs.iter().take(6) {
        let r = probe_one(&lab, src);
        assert_eq!(r["ok"], json!(true), "{r}");
        assert_eq!(
            r["node"].as_str(),
            Some(which[src].1[0].as_str()),
            "fallback of {src}: {r}"
        );
        slow.push(ms(&r));
        down = lab.wait_transition(from, victim, false, Duration::ZERO);
        if down.is_some() {
            break;
        }
    }
    let (down_at, down_line) = down
        .or_else(|| lab.wait_transition(from, victim, false, S(5)))
        .expect("black-holed node never marked down");
    assert!(
        down_line.contains("consecutive connect failures from traffic"),
        "not a passive down: {down_line}"
    );
    assert!(
        slow.len() <= 3,
        "{} clients waited for the timeout: {slow:?}",
        slow.len()
    );
    for &t in &slow {
        assert!(
            t >= connect_timeout_ms - 50.0 && t < connect_timeout_ms + 700.0,
            "fallback took {t:.0} ms (connect_timeout {connect_timeout_ms} ms): {slow:?}"
        );
    }

    // Down: its clients go straight to their next node; nobody else moves.
    let rest: Vec<String> = theirs[slow.len()..].to_vec();
    let got = probe_all(&lab, &rest);
    let mut fast = Vec::new();
    for src in &rest {
        let r = &got[src];
        assert_eq!(
            r["node"].as_str(),
            Some(which[src].1[0].as_str()),
            "{src}: {r}"
        );
        fast.push(ms(r));
    }
    let (_, fast_med, fast_max) = stats(&fast);
    assert!(
        fast_max < connect_timeout_ms / 2.0,
        "a client of the down node still waited: {fast:?}"
    );
    assert_all_on_primary(&lab, &others, &which);

    // Still black-holed: the probes keep it down (two probe intervals and more).
    let up_early = lab.wait_transition(from, victim, true, Duration::from_millis(3500));
    assert!(
        up_early.is_none(),
        "came back while black-holed: {up_early:?}"
    );

    let from_up = lab.ringlb().lines.len();
    lab.iptables(1, &["-D", "INPUT", "-j", "DROP"]);
    lab.iptables(1, &["-D", "OUTPUT", "-j", "DROP"]);
    let healed = Instant::now();
    let (up_at, _) = lab
        .wait_transition(from_up, victim, true, S(8))
        .expect("node not back up after the rule was removed");
    assert_all_on_primary(&lab, &srcs, &which);
    let t = lab.transitions();
    assert_eq!(t.len(), 2, "exactly one DOWN and one UP: {t:?}");

    // The probes alone: passive failures turned off by a reload, the node
    // black-holed again with no client traffic. fall = 3 probes 1.5 s (+-10%)
    // apart, each failing after its 1 s timeout.
    let mut cfg2 = cfg.clone();
    cfg2.pool = cfg2
        .pool
        .replace("passive_failures = 3", "passive_failures = 0");
    lab.write_config(&cfg2);
    let applied = lab.reload(2);
    assert!(applied.contains("pool p"), "{applied}");
    let from = lab.ringlb().lines.len();
    lab.iptables(1, &["-A", "INPUT", "-j", "DROP"]);
    lab.iptables(1, &["-A", "OUTPUT", "-j", "DROP"]);
    let holed2 = Instant::now();
    let (down2_at, line) = lab
        .wait_transition(from, victim, false, S(9))
        .expect("probes did not take the black-holed node down");
    let probe_down = down2_at.duration_since(holed2).as_secs_f64() * 1000.0;
    assert!(line.contains("timeout"), "not a probe timeout: {line}");
    assert!(
        (2.0 * 1350.0..3.0 * 1650.0 + 1000.0 + 1000.0).contains(&probe_down),
        "probe DOWN {probe_down:.0} ms after the DROP"
    );
    let got = probe_all(&lab, &theirs);
    let mut after_probe_down = Vec::new();
    for src in &theirs {
        let r = &got[src];
        assert_eq!(
            r["node"].as_str(),
            Some(which[src].1[0].as_str()),
            "{src}: {r}"
        );
        after_probe_down.push(ms(r));
    }
    let (_, _, max2) = stats(&after_probe_down);
    assert!(max2 < connect_timeout_ms / 2.0, "{after_probe_down:?}");
    let from = lab.ringlb().lines.len();
    lab.iptables(1, &["-D", "INPUT", "-j", "DROP"]);
    lab.iptables(1, &["-D", "OUTPUT", "-j", "DROP"]);
    lab.wait_transition(from, victim, true, S(8))
        .expect("node not back up after the second black hole");
    assert_all_on_primary(&lab, &srcs, &which);

    eprintln!(
        "black hole: {} of {} clients of {victim} waited for the connect timeout ({slow:.0?} ms) before the passive DOWN, \
         DOWN {:.0} ms after the DROP; afterwards {} clients fell back in median {fast_med:.1} ms, max {fast_max:.1} ms; \
         UP {:.0} ms after the DROP was removed; with passive failures off, the probes took it down {probe_down:.0} ms \
         after the DROP (then its clients fell back in at most {max2:.1} ms)",
        slow.len(),
        theirs.len(),
        down_at.duration_since(holed_at).as_secs_f64() * 1000.0,
        rest.len(),
        up_at.duration_since(healed).as_secs_f64() * 1000.0,
    );
}

/// 2. A hung node (its processes SIGSTOPped: the kernel still accepts TCP, nothing
///    answers): HTTP probes time out and take it down within fall probes; its new
///    clients go to their next node at once; its open connections are closed by
///    idle_timeout (the client sees EOF idle_timeout after its last byte);
///    connections on other nodes keep streaming; after SIGCONT it comes back.
#[test]
fn hung_node_probed_down_and_idle_connections_closed() {
    if netns_support::skipped() {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::new(2, 3);
    let idle_ms = 2000.0;
    let cfg = PoolCfg {
        pool: "connect_timeout = \"1s\"\nidle_timeout = \"2s\"\nconnect_attempts = 3\npassive_failures = 3\n".into(),
        health: format!(
            "kind = \"http\"\npath = \"/healthcheck\"\nport = {}\ninterval = \"300ms\"\ntimeout = \"250ms\"\nrise = 2\nfall = 2\n",
            netns_support::HTTP_PORT
        ),
        nodes: vec![(0, 1), (1, 1), (2, 1)],
    };
    lab.write_config(&cfg);
    lab.start_ringlb();
    let srcs = lab.clients(0..60);
    let which = lab.which(&srcs);
    assert_all_on_primary(&lab, &srcs, &which);
    let victim = "node-2";
    let theirs = clients_of(&which, &srcs, victim);
    let others: Vec<String> = srcs
        .iter()
        .filter(|s| !theirs.contains(s))
        .cloned()
        .collect();
    assert!(theirs.len() >= 6, "too few clients on {victim}");

    // Long-lived connections: three idle ones on the victim, streams elsewhere.
    let mut holds = Vec::new();
    for src in theirs.iter().take(3) {
        let h = lab.agent().call(
            json!({"op": "hold", "src": src, "dst": lab.lb_dst()}),
            S(10),
        );
        assert_eq!(h["node"].as_str(), Some(victim));
        lab.agent().call(
            json!({"op": "hold_echo", "handle": h["handle"], "text": "before"}),
            S(10),
        );
        holds.push(h["handle"].clone());
    }
    let started = lab.agent().call(
        json!({"op": "streams_start", "tag": "others", "srcs": &others[..20], "per_src": 1,
               "dst": lab.lb_dst(), "max_chunk": 512, "pause_ms": 200, "seed": 2}),
        S(30),
    );
    for o in started["opened"].as_array().unwrap() {
        assert_eq!(o["ok"], json!(true), "{o}");
    }

    let from = lab.ringlb().lines.len();
    lab.signal_node(2, Signal::SIGSTOP);
    let stopped = Instant::now();
    // Bytes towards the hung node: nobody answers them.
    for h in &holds {
        lab.agent().call(
            json!({"op": "hold_send", "handle": h, "text": "anyone there?"}),
            S(10),
        );
    }
    let (down_at, line) = lab
        .wait_transition(from, victim, false, S(5))
        .expect("hung node not marked down");
    let to_down = down_at.duration_since(stopped).as_secs_f64() * 1000.0;
    assert!(line.contains("timeout"), "reason is not a timeout: {line}");
    // fall 2 probes 300 ms (+-10%) apart, each failing after 250 ms.
    assert!(
        to_down < 1500.0,
        "took {to_down:.0} ms to mark the hung node down"
    );

    // New clients of the victim: their next node, without waiting.
    let got = probe_all(&lab, &theirs[3..]);
    let mut lat = Vec::new();
    for src in &theirs[3..] {
        let r = &got[src];
        assert_eq!(
            r["node"].as_str(),
            Some(which[src].1[0].as_str()),
            "{src}: {r}"
        );
        lat.push(ms(r));
    }
    let (_, lat_med, lat_max) = stats(&lat);
    assert!(lat_max < 500.0, "clients waited: {lat:?}");

    // Open connections to the hung node: closed by idle_timeout.
    let mut closes = Vec::new();
    for h in &holds {
        let r = lab.agent().call(
            json!({"op": "hold_wait_close", "handle": h, "timeout_ms": 6000}),
            S(15),
        );
        assert_eq!(r["how"].as_str(), Some("eof"), "{r}");
        assert_eq!(r["extra_bytes"], json!(0), "{r}");
        let after = r["after_send_ms"].as_f64().unwrap();
        assert!(
            after >= idle_ms - 100.0 && after < idle_ms + 1500.0,
            "closed {after} ms after the last byte (idle_timeout {idle_ms} ms)"
        );
        closes.push(after);
    }
    let idle_closes = lab.log_lines("\"reason\":\"idle_timeout\"");
    for src in theirs.iter().take(3) {
        assert!(
            idle_closes
                .iter()
                .any(|l| l.contains(&format!("\"client\":\"{src}:"))),
            "no idle_timeout close logged for {src}"
        );
    }

    let from_up = lab.ringlb().lines.len();
    lab.signal_node(2, Signal::SIGCONT);
    lab.wait_transition(from_up, victim, true, S(5))
        .expect("node not back after SIGCONT");
    assert_all_on_primary(&lab, &srcs, &which);

    let stop = lab
        .agent()
        .call(json!({"op": "streams_stop", "tag": "others"}), S(30));
    let mut bytes = 0;
    for c in stop["conns"].as_array().unwrap() {
        assert_eq!(
            c["alive"],
            json!(true),
            "a connection to a healthy node ended: {c}"
        );
        assert_eq!(c["sent"], c["verified"], "{c}");
        bytes += c["verified"].as_u64().unwrap();
    }
    eprintln!(
        "hung node: DOWN {to_down:.0} ms after SIGSTOP; its new clients fell back in median {lat_med:.1} ms, \
         max {lat_max:.1} ms; its open connections saw EOF {closes:?} ms after their last byte \
         (idle_timeout {idle_ms} ms); 20 streams elsewhere echoed {bytes} bytes intact"
    );
}

/// 3. A node killed under load: 500 streaming echo connections and a steady flow
///    of new ones. Only the killed node's connections end; every other one keeps
///    every byte; no new connection fails once the node is marked down (none is
///    expected to fail before either: a dead node refuses, which falls back at once).
#[test]
fn node_killed_under_load() {
    if netns_support::skipped() {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::new(3, 3);
    let cfg = PoolCfg {
        pool: "connect_timeout = \"1s\"\nidle_timeout = \"60s\"\nconnect_attempts = 3\npassive_failures = 3\n".into(),
        health: "kind = \"tcp\"\ninterval = \"300ms\"\ntimeout = \"250ms\"\nrise = 2\nfall = 2\n".into(),
        nodes: vec![(0, 1), (1, 1), (2, 1)],
    };
    lab.write_config(&cfg);
    lab.start_ringlb();
    let stream_srcs = lab.clients(0..50);
    let churn_srcs = lab.clients(50..100);
    let all = lab.clients(0..100);
    let which = lab.which(&all);
    let victim = "node-0";

    let started = lab.agent().call(
        json!({"op": "streams_start", "tag": "load", "srcs": stream_srcs, "per_src": 10,
               "dst": lab.lb_dst(), "max_chunk": 1024, "pause_ms": 200, "seed": 3}),
        S(60),
    );
    let opened = started["opened"].as_array().unwrap();
    assert_eq!(opened.len(), 500);
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for o in opened {
        assert_eq!(o["ok"], json!(true), "{o}");
        let src = o["src"].as_str().unwrap();
        assert_eq!(o["node"].as_str(), Some(which[src].0.as_str()), "{o}");
        *per_node
            .entry(o["node"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(
        per_node.get(victim).copied().unwrap_or(0) >= 50,
        "{per_node:?}"
    );
    lab.agent().call(
        json!({"op": "churn_start", "tag": "new", "srcs": churn_srcs, "dst": lab.lb_dst(),
               "workers": 2, "pause_ms": 10, "timeout_ms": 5000}),
        S(10),
    );
    // Load runs for a while before and after the kill (load duration, not sync).
    std::thread::sleep(S(2));
    let from = lab.ringlb().lines.len();
    lab.stop_node(0);
    let killed = Instant::now();
    let (down_at, _) = lab
        .wait_transition(from, victim, false, S(5))
        .expect("killed node not marked down");
    let down_ms = unix_ms();
    std::thread::sleep(S(2));
    let churn = lab
        .agent()
        .call(json!({"op": "churn_stop", "tag": "new"}), S(30));
    let streams = lab
        .agent()
        .call(json!({"op": "streams_stop", "tag": "load"}), S(60));

    let mut bytes = 0u64;
    let (mut survived, mut ended) = (0, 0);
    for c in streams["conns"].as_array().unwrap() {
        assert_eq!(c["corrupt"], json!(false), "{c}");
        assert!(c["sent"].as_u64().unwrap() >= c["verified"].as_u64().unwrap());
        bytes += c["verified"].as_u64().unwrap();
        if c["node"].as_str() == Some(victim) {
            assert_eq!(
                c["alive"],
                json!(false),
                "a connection to the killed node survived: {c}"
            );
            ended += 1;
        } else {
            assert_eq!(
                c["alive"],
                json!(true),
                "a connection to a live node ended: {c}"
            );
            assert_eq!(c["sent"], c["verified"], "{c}");
            assert!(c["verified"].as_u64().unwrap() > 0, "{c}");
            survived += 1;
        }
    }
    let results = churn["results"].as_array().unwrap();
    let failed: Vec<&Value> = results.iter().filter(|r| r["ok"] != json!(true)).collect();
    let after_down: Vec<&Value> = results
        .iter()
        .filter(|r| r["t"].as_u64().unwrap() >= down_ms)
        .collect();
    let failed_after: Vec<&&Value> = after_down
        .iter()
        .filter(|r| r["ok"] != json!(true))
        .collect();
    assert!(
        failed_after.is_empty(),
        "new connections failed after DOWN: {failed_after:?}"
    );
    assert!(
        after_down
            .iter()
            .all(|r| r["node"].as_str() != Some(victim)),
        "a new connection reached the killed node after DOWN"
    );
    assert!(
        after_down.len() >= 20,
        "too few new connections after DOWN: {}",
        after_down.len()
    );
    assert!(failed.len() <= 2, "new connections failed: {failed:?}");
    eprintln!(
        "node killed under load: {per_node:?} streams; {ended} on {victim} ended, {survived} others intact; \
         {bytes} bytes echoed and checked; DOWN {:.0} ms after SIGKILL; {} new connections ({} after DOWN), {} failed {failed:?} {:?}",
        down_at.duration_since(killed).as_secs_f64() * 1000.0,
        results.len(),
        after_down.len(),
        failed.len(),
        explain_failures(&lab, &failed)
    );
}

/// What the clients', the balancer's and node `k`'s kernels know about their TCP
/// connections (sockets in every state, non-zero counters, the node's NAT entries),
/// for a connection that stalled. Best effort: a missing tool is skipped.
fn stall_report(lab: &Lab, k: usize) -> String {
    let run = |ns: &str, cmd: &[&str]| -> String {
        let mut args = vec!["netns", "exec", ns];
        args.extend_from_slice(cmd);
        match std::process::Command::new("ip").args(&args).output() {
            Ok(o) => format!(
                "--- [{ns}] {}\n{}{}",
                cmd.join(" "),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .filter(|l| !l.contains("cgroup2"))
                    .map(|l| format!("{l}\n"))
                    .collect::<String>()
            ),
            Err(e) => format!("--- [{ns}] {}: {e}\n", cmd.join(" ")),
        }
    };
    let node = &lab.nodes[k].ns;
    let mut out = String::new();
    out += &run(&lab.client_ns, &["ss", "-tanoie"]);
    out += &run(&lab.lb_ns, &["ss", "-tanoie"]);
    out += &run(node, &["ss", "-tanoie"]);
    for ns in [&lab.client_ns, &lab.lb_ns, node] {
        // Every counter that is not zero, since the namespace was made.
        out += &run(ns, &["nstat", "-a"]);
    }
    out += &run(node, &["conntrack", "-L", "-p", "tcp"]);
    out
}

/// Packets the random-drop rules threw away: in node `k`'s INPUT (towards the
/// node) and in the balancer's INPUT (from the node).
fn dropped_packets(lab: &Lab, k: usize) -> u64 {
    let mut total = 0;
    for ns in [&lab.nodes[k].ns, &lab.lb_ns] {
        let out = netns_support::sh(
            "ip",
            &[
                "netns", "exec", ns, "iptables", "-w", "-L", "INPUT", "-v", "-n", "-x",
            ],
        );
        for line in out.lines().filter(|l| l.contains("statistic")) {
            total += line
                .split_whitespace()
                .next()
                .and_then(|p| p.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// 4. A lossy link: 10% of the packets to and from one node dropped at random.
///    Several MiB echoed through the balancer over that link stay byte-exact.
#[test]
fn lossy_link_keeps_bytes_exact() {
    if netns_support::skipped() {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::new(4, 3);
    let cfg = PoolCfg {
        pool: "connect_timeout = \"5s\"\nidle_timeout = \"60s\"\nconnect_attempts = 3\npassive_failures = 0\n".into(),
        health: "kind = \"none\"\n".into(),
        nodes: vec![(0, 1), (1, 1), (2, 1)],
    };
    lab.write_config(&cfg);
    lab.start_ringlb();
    let srcs = lab.clients(0..40);
    let which = lab.which(&srcs);
    let victim = "node-0";
    let theirs = clients_of(&which, &srcs, victim);
    let other = srcs.iter().find(|s| which[*s].0 != victim).unwrap().clone();
    assert!(theirs.len() >= 4);
    // Loss as on a wire: each packet is dropped where it arrives (the node's
    // INPUT for what ringlb sends, ringlb's INPUT for what the node sends), not
    // in the sender's OUTPUT. A local OUTPUT drop is not wire loss: the sender's
    // kernel sees the send fail, and for a SYN-ACK retransmission that makes it
    // drop the half-open connection without a trace (`reqsk_timer_handler`), so
    // when ringlb's ACK had been lost too, ringlb waits for a greeting from a
    // node that forgot the connection (about 1 run in 10 of this test, until
    // the drops moved; the state captured then is what `stall_report` prints).
    let lossy = [
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        "0.1",
        "-j",
        "DROP",
    ];
    let node_ip = lab.nodes[0].ip.to_string();
    let mut to_node = vec!["-A", "INPUT"];
    to_node.extend_from_slice(&lossy);
    lab.iptables(0, &to_node);
    let mut from_node = vec![
        "netns", "exec", &lab.lb_ns, "iptables", "-w", "-A", "INPUT", "-s", &node_ip,
    ];
    from_node.extend_from_slice(&lossy);
    netns_support::sh("ip", &from_node);
    let per_conn: u64 = 2 << 20;
    let mut jobs: Vec<String> = theirs[..4].to_vec();
    jobs.push(other);
    let t0 = Instant::now();
    // Each job takes a few seconds; a greeting that never comes is given up after
    // 15 s, and the agent then closes the socket, which erases the evidence. So
    // the kernels' view is taken at 10 s if a job is still running, and printed
    // if one of them then fails.
    let finished = std::sync::atomic::AtomicUsize::new(0);
    let finished = &finished;
    let early_report: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let early_report = &early_report;
    let n_jobs = jobs.len();
    let results: Vec<(String, Value)> = std::thread::scope(|s| {
        let lab = &lab;
        s.spawn(move || {
            let t = Instant::now();
            while t.elapsed() < S(10) {
                if finished.load(std::sync::atomic::Ordering::Relaxed) == n_jobs {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            *early_report.lock().unwrap() = Some(stall_report(lab, 0));
        });
        let handles: Vec<_> = jobs
            .iter()
            .enumerate()
            .map(|(i, src)| {
                s.spawn(move || {
                    let job = json!({"op": "bulk", "src": src, "dst": lab.lb_dst(), "bytes": per_conn,
                                     "seed": 40 + i as u64, "timeout_ms": 90_000, "greet_timeout_ms": 15_000});
                    let r = lab.agent().try_call(job, S(100));
                    finished.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if r["ok"] != json!(true) {
                        panic!(
                            "{src}: {r}\nState 10 s after the start:\n{}\nringlb's lines about {src}:\n{}",
                            early_report.lock().unwrap().as_deref().unwrap_or("(not taken)"),
                            lab.log_lines(&format!("\"{src}:")).join("\n")
                        );
                    }
                    assert_eq!(r["ok"], json!(true), "{src}: {r}");
                    (src.clone(), r)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    let mut checked = 0;
    for (src, r) in &results {
        assert_eq!(r["ok"], json!(true), "{src}: {r}");
        assert_eq!(
            r["node"].as_str(),
            Some(which[src].0.as_str()),
            "{src}: {r}"
        );
        assert_eq!(r["checked"].as_u64(), Some(per_conn), "{r}");
        checked += per_conn;
    }
    let dropped = dropped_packets(&lab, 0);
    assert!(
        dropped > 100,
        "the lossy rules dropped only {dropped} packets"
    );
    let lossy_ms: Vec<f64> = results[..4].iter().map(|(_, r)| ms(r)).collect();
    let greet_ms: Vec<f64> = results[..4]
        .iter()
        .map(|(_, r)| r["greet_ms"].as_f64().unwrap_or(f64::NAN))
        .collect();
    eprintln!(
        "lossy link: {} MiB echoed byte-exact ({} MiB over the 10%-loss link, {dropped} packets dropped there) \
         in {secs:.1} s; per lossy connection {lossy_ms:.0?} ms (greeting after {greet_ms:.0?} ms), clean one {:.0} ms",
        checked >> 20,
        (4 * per_conn) >> 20,
        ms(&results[4].1),
    );
}

/// 5. A flapping node: its link dropped and restored every 1-1.6 s for about
///    10 s. The node's transitions alternate DOWN/UP, at most one of each per
///    outage; UP never comes sooner than rise probes after the link is back and a
///    probe-made DOWN never sooner than fall probes after it went; other nodes
///    never change; ringlb keeps serving. Then, without traffic, outages and
///    recoveries of 200 ms (shorter than fall-1 / rise-1 probe intervals) change
///    nothing. No descriptor leak.
#[test]
fn flapping_node_hysteresis_and_no_fd_leak() {
    if netns_support::skipped() {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::new(5, 3);
    let (interval_ms, rise, fall) = (200.0, 3.0, 3.0);
    let cfg = PoolCfg {
        pool: "connect_timeout = \"500ms\"\nidle_timeout = \"30s\"\nconnect_attempts = 3\npassive_failures = 3\n".into(),
        health: "kind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 3\nfall = 3\n".into(),
        nodes: vec![(0, 1), (1, 1), (2, 1)],
    };
    lab.admin_port = Some(9090);
    lab.write_config(&cfg);
    lab.start_ringlb();
    let srcs = lab.clients(0..60);
    let which = lab.which(&srcs);
    assert_all_on_primary(&lab, &srcs, &which);
    let fds_before = settle_fds(&lab);

    let seed = seed();
    eprintln!("flapping seed {seed} (RLNT_SEED={seed} repeats it)");
    let mut rng = XorShift::new(seed);
    let victim = "node-1";
    lab.agent().call(
        json!({"op": "churn_start", "tag": "flap", "srcs": srcs, "dst": lab.lb_dst(),
               "workers": 2, "pause_ms": 20, "timeout_ms": 3000}),
        S(10),
    );
    let mut toggles: Vec<(Instant, bool)> = Vec::new(); // (when, link up?)
    let cycles = 4;
    for _ in 0..cycles {
        lab.iptables(1, &["-I", "INPUT", "-j", "DROP"]);
        lab.iptables(1, &["-I", "OUTPUT", "-j", "DROP"]);
        toggles.push((Instant::now(), false));
        std::thread::sleep(Duration::from_millis(rng.range(1000, 1600)));
        lab.iptables(1, &["-D", "INPUT", "-j", "DROP"]);
        lab.iptables(1, &["-D", "OUTPUT", "-j", "DROP"]);
        toggles.push((Instant::now(), true));
        std::thread::sleep(Duration::from_millis(rng.range(1000, 1600)));
    }
    // The link is up now: the node must be (or come) back.
    let node_up = |lab: &Lab| {
        lab.transitions()
            .iter()
            .rev()
            .find(|t| t.1 == victim)
            .map(|t| t.2)
            .unwrap_or(true)
    };
    let deadline = Instant::now() + S(5);
    while !node_up(&lab) && Instant::now() < deadline {
        lab.ringlb()
            .lines
            .wait(lab.ringlb().lines.len(), Duration::from_millis(200), |l| {
                l.contains("node UP")
            });
    }
    assert!(node_up(&lab), "node not back up after the flapping");
    let churn = lab
        .agent()
        .call(json!({"op": "churn_stop", "tag": "flap"}), S(30));

    let all_t = lab.transitions();
    let t: Vec<_> = all_t
        .iter()
        .filter(|t| t.0 >= toggles[0].0)
        .cloned()
        .collect();
    assert!(
        t.iter().all(|x| x.1 == victim),
        "another node changed state: {t:?}"
    );
    for (i, x) in t.iter().enumerate() {
        assert_eq!(
            x.2,
            i % 2 == 1,
            "transitions do not alternate DOWN/UP: {t:?}"
        );
    }
    let downs = t.iter().filter(|x| !x.2).count();
    let ups = t.len() - downs;
    assert!(
        downs >= 1,
        "the node never went down while its link was cut"
    );
    assert!(
        downs <= cycles && ups <= cycles,
        "more transitions than outages: {t:?}"
    );
    let mut up_lags = Vec::new();
    let mut down_lags = Vec::new();
    for x in &t {
        // The latest toggle before this transition.
        let (at, link_up) = *toggles.iter().rev().find(|(at, _)| *at <= x.0).unwrap();
        let lag = x.0.duration_since(at).as_secs_f64() * 1000.0;
        assert_eq!(
            link_up,
            x.2,
            "{} while the link was {}",
            if x.2 { "UP" } else { "DOWN" },
            if link_up { "up" } else { "cut" }
        );
        if x.2 {
            // rise-1 probe intervals (jitter -10%), less 20 ms: the toggle's time
            // is taken once the `iptables -D` process has exited, a few ms after
            // the rule is gone, and a probe can pass in between (seen: 359 ms
            // against a bound of 360).
            assert!(
                lag >= (rise - 1.0) * interval_ms * 0.9 - 20.0,
                "UP {lag:.0} ms after the link came back: {t:?}"
            );
            up_lags.push(lag);
        } else {
            if !x.3.contains("from traffic") {
                assert!(
                    lag >= (fall - 1.0) * interval_ms * 0.9,
                    "DOWN {lag:.0} ms after the cut: {t:?}"
                );
            }
            down_lags.push(lag);
        }
    }

    // Hysteresis proper, with no traffic (so no passive failures): outages and
    // recoveries shorter than (fall-1) and (rise-1) probe intervals change
    // nothing. A probe fails only if it starts while the link is cut, and 3
    // consecutive probe starts need at least 2 x 180 ms.
    let blips = 5;
    let blip = Duration::from_millis(200);
    let before = lab.transitions().len();
    for _ in 0..blips {
        lab.iptables(1, &["-I", "INPUT", "-j", "DROP"]);
        std::thread::sleep(blip);
        lab.iptables(1, &["-D", "INPUT", "-j", "DROP"]);
        std::thread::sleep(Duration::from_millis(800));
    }
    let after_blips = lab.transitions();
    assert_eq!(
        after_blips.len(),
        before,
        "{blips} outages of {blip:?} changed the node's state: {:?}",
        &after_blips[before..]
    );
    let from = lab.ringlb().lines.len();
    lab.iptables(1, &["-I", "INPUT", "-j", "DROP"]);
    lab.wait_transition(from, victim, false, S(5))
        .expect("node not down with its link cut");
    let before = lab.transitions().len();
    for _ in 0..blips {
        lab.iptables(1, &["-D", "INPUT", "-j", "DROP"]);
        std::thread::sleep(blip);
        lab.iptables(1, &["-I", "INPUT", "-j", "DROP"]);
        std::thread::sleep(Duration::from_millis(800));
    }
    let after_blips = lab.transitions();
    assert_eq!(
        after_blips.len(),
        before,
        "{blips} recoveries of {blip:?} brought the node back: {:?}",
        &after_blips[before..]
    );
    let from = lab.ringlb().lines.len();
    lab.iptables(1, &["-D", "INPUT", "-j", "DROP"]);
    lab.wait_transition(from, victim, true, S(5))
        .expect("node not back up with its link restored");

    let results = churn["results"].as_array().unwrap();
    let failed = results.iter().filter(|r| r["ok"] != json!(true)).count();
    // A short connection caught on the node at the moment its link is cut fails.
    assert!(
        failed <= 2 * cycles,
        "{failed} of {} new connections failed",
        results.len()
    );
    assert_all_on_primary(&lab, &srcs, &which);
    assert!(lab.ringlb.as_mut().unwrap().running(), "ringlb exited");
    assert!(lab.log_lines("panicked").is_empty(), "ringlb panicked");

    // The admin endpoint agrees with the log, and no connection is left counted.
    let logged = lab.transitions().iter().filter(|t| t.1 == victim).count();
    let nodes = lab.status_nodes();
    for (name, n) in &nodes {
        assert_eq!(n["state"], json!("up"), "{name}: {n}");
        let want = if name == victim { logged } else { 0 };
        assert_eq!(n["transitions"].as_u64(), Some(want as u64), "{name}: {n}");
        assert!(n["probes"].as_u64().unwrap_or(0) > 0, "{name}: {n}");
    }
    let deadline = Instant::now() + S(5);
    loop {
        let nodes = lab.status_nodes();
        let active: u64 = nodes
            .values()
            .map(|n| n["active_connections"].as_u64().unwrap_or(0))
            .sum();
        if active == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections still counted active: {nodes:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let fds_after = wait_fds_at_most(&lab, fds_before + 3, S(10));
    assert!(
        fds_after <= fds_before + 3,
        "descriptor leak: {fds_before} before, {fds_after} after"
    );
    eprintln!(
        "flapping: {cycles} outages -> {downs} DOWN / {ups} UP; DOWN lags {down_lags:.0?} ms, UP lags {up_lags:.0?} ms \
         (interval {interval_ms} ms, rise {rise}, fall {fall}); {} new connections, {failed} failed; \
         {blips} outages and {blips} recoveries of {blip:?} changed nothing; fds {fds_before} -> {fds_after}",
        results.len()
    );
}

/// The descriptor count once it holds still for a moment (probes come and go).
fn settle_fds(lab: &Lab) -> usize {
    let deadline = Instant::now() + S(5);
    let mut last = lab.ringlb_fds();
    let mut same = 0;
    while Instant::now() < deadline && same < 5 {
        std::thread::sleep(Duration::from_millis(50));
        let now = lab.ringlb_fds();
        if now == last {
            same += 1;
        } else {
            same = 0;
            last = now;
        }
    }
    last
}

fn wait_fds_at_most(lab: &Lab, limit: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let n = lab.ringlb_fds();
        if n <= limit || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 6. Chaos, bounded (default 60 s): seeded random kills and restarts of node-2
///    and node-3 and SIGHUP reloads (node-1's or node-2's weight toggled, node-3
///    added and removed) while 120 echo connections stream and new ones keep
///    coming. No connection on a node that was never killed is cut (node-0 and
///    node-1 never are), every echoed byte is correct, at most two new
///    connections fail per kill (those in flight on the killed node), ringlb never
///    exits, serves everybody where the final ring says and leaks no descriptor.
#[test]
fn chaos_kills_restarts_and_reloads() {
    if netns_support::skipped() {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::new(6, 4);
    let secs: u64 = std::env::var("RLNT_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
        .clamp(5, 120);
    let seed = seed();
    eprintln!("chaos seed {seed} (RLNT_SEED={seed} repeats it), {secs} s");
    let mut rng = XorShift::new(seed);
    let pool = "connect_timeout = \"500ms\"\nidle_timeout = \"60s\"\nconnect_attempts = 3\npassive_failures = 3\n";
    let health = "kind = \"tcp\"\ninterval = \"250ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n";
    let mut weights: Vec<u32> = vec![1, 1, 1, 0]; // 0: not in the config
    let cfg_of = |w: &[u32]| PoolCfg {
        pool: pool.into(),
        health: health.into(),
        nodes: w
            .iter()
            .enumerate()
            .filter(|(_, w)| **w > 0)
            .map(|(k, w)| (k, *w))
            .collect(),
    };
    lab.admin_port = Some(9090);
    lab.write_config(&cfg_of(&weights));
    lab.start_ringlb();
    let fds_start = settle_fds(&lab);

    let started = lab.agent().call(
        json!({"op": "streams_start", "tag": "chaos", "srcs": lab.clients(0..40), "per_src": 3,
               "dst": lab.lb_dst(), "max_chunk": 2048, "pause_ms": 50, "seed": 6}),
        S(60),
    );
    for o in started["opened"].as_array().unwrap() {
        assert_eq!(o["ok"], json!(true), "{o}");
    }
    let churn_srcs = lab.clients(40..100);
    lab.agent().call(
        json!({"op": "churn_start", "tag": "chaos", "srcs": churn_srcs, "dst": lab.lb_dst(),
               "workers": 1, "pause_ms": 20, "timeout_ms": 5000}),
        S(10),
    );

    let mut alive = [true; 4];
    let mut ever_killed: HashSet<String> = HashSet::new();
    let mut generation = 1u64;
    let mut events: Vec<String> = Vec::new();
    let (mut kills, mut restarts, mut reloads) = (0, 0, 0);
    let t0 = Instant::now();
    while t0.elapsed() < S(secs) && events.len() < 500 {
        std::thread::sleep(Duration::from_millis(rng.range(500, 2000)));
        let at = t0.elapsed().as_secs_f64();
        match rng.range(0, 2) {
            0 => {
                // Kill node-2 or node-3, or restart it if it is dead. node-0 and
                // node-1 are never killed (node-1's weight changes by reloads).
                let k = rng.range(2, 3) as usize;
                if alive[k] {
                    lab.stop_node(k);
                    alive[k] = false;
                    ever_killed.insert(lab.nodes[k].name.clone());
                    kills += 1;
                    events.push(format!("{at:.1}s kill node-{k}"));
                } else {
                    lab.start_node(k);
                    alive[k] = true;
                    restarts += 1;
                    events.push(format!("{at:.1}s restart node-{k}"));
                }
            }
            1 => {
                if let Some(k) = (1..4).find(|k| !alive[*k]) {
                    lab.start_node(k);
                    alive[k] = true;
                    restarts += 1;
                    events.push(format!("{at:.1}s restart node-{k}"));
                }
            }
            _ => {
                let what = rng.range(0, 2);
                let change = match what {
                    0 => {
                        weights[1] = 3 - weights[1];
                        format!("node-1 weight {}", weights[1])
                    }
                    1 => {
                        weights[2] = 3 - weights[2];
                        format!("node-2 weight {}", weights[2])
                    }
                    _ => {
                        weights[3] = if weights[3] == 0 { 1 } else { 0 };
                        if weights[3] == 0 {
                            "remove node-3".into()
                        } else {
                            "add node-3".into()
                        }
                    }
                };
                lab.write_config(&cfg_of(&weights));
                generation += 1;
                lab.reload(generation);
                reloads += 1;
                events.push(format!("{at:.1}s reload: {change}"));
            }
        }
    }
    for (k, up) in alive.iter_mut().enumerate() {
        if !*up {
            lab.start_node(k);
            *up = true;
            events.push(format!("end: restart node-{k}"));
        }
    }
    let churn = lab
        .agent()
        .call(json!({"op": "churn_stop", "tag": "chaos"}), S(30));
    let streams = lab
        .agent()
        .call(json!({"op": "streams_stop", "tag": "chaos"}), S(60));

    let mut bytes = 0u64;
    let (mut intact, mut cut) = (0, 0);
    for c in streams["conns"].as_array().unwrap() {
        assert_eq!(
            c["corrupt"],
            json!(false),
            "corrupted: {c}\nevents: {events:?}"
        );
        bytes += c["verified"].as_u64().unwrap();
        let node = c["node"].as_str().unwrap_or("");
        if ever_killed.contains(node) {
            if c["alive"] != json!(true) {
                cut += 1;
            } else {
                intact += 1;
            }
        } else {
            assert_eq!(
                c["alive"],
                json!(true),
                "connection on {node} (never killed) was cut: {c}\nevents: {events:?}"
            );
            assert_eq!(c["sent"], c["verified"], "{c}");
            intact += 1;
        }
    }
    let results = churn["results"].as_array().unwrap();
    let failed: Vec<&Value> = results.iter().filter(|r| r["ok"] != json!(true)).collect();
    // A short connection in flight on a node at the moment it is killed fails.
    assert!(
        failed.len() <= 2 * kills,
        "{} new connections failed with {kills} kills: {failed:?}\nevents: {events:?}",
        failed.len()
    );
    assert!(lab.ringlb.as_mut().unwrap().running(), "ringlb exited");
    assert!(lab.log_lines("panicked").is_empty(), "ringlb panicked");

    // Everybody is served at the end, each where the final ring says, once every
    // node in the config is up again.
    let srcs = lab.clients(0..100);
    let which = lab.which(&srcs);
    let deadline = Instant::now() + S(10);
    loop {
        let got = probe_all(&lab, &srcs);
        let wrong: Vec<&String> = srcs
            .iter()
            .filter(|s| got[*s]["node"].as_str() != Some(which[*s].0.as_str()))
            .collect();
        if wrong.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the chaos, {} clients are not on their node: {:?}",
            wrong.len(),
            wrong.iter().map(|s| &got[*s]).collect::<Vec<_>>()
        );
        lab.ringlb()
            .lines
            .wait(lab.ringlb().lines.len(), Duration::from_millis(300), |l| {
                l.contains("node UP")
            });
    }
    // Every node in service, and no connection left counted anywhere.
    let deadline = Instant::now() + S(5);
    loop {
        let st = lab.status();
        let nodes = lab.status_nodes();
        let listeners_active: u64 = st["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["active_connections"].as_u64().unwrap_or(0))
            .sum();
        let nodes_active: u64 = nodes
            .values()
            .map(|n| n["active_connections"].as_u64().unwrap_or(0))
            .sum();
        let all_up = nodes.values().all(|n| n["state"] == json!("up"));
        if listeners_active == 0 && nodes_active == 0 && all_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the chaos: {listeners_active} client and {nodes_active} node connections still counted, nodes {nodes:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let fds_end = wait_fds_at_most(&lab, fds_start + 3, S(10));
    assert!(
        fds_end <= fds_start + 3,
        "descriptor leak: {fds_start} -> {fds_end}"
    );
    eprintln!(
        "chaos ({secs} s, seed {seed}): {kills} kills, {restarts} restarts, {reloads} reloads; \
         {intact} connections intact, {cut} cut (all on killed nodes); {bytes} bytes echoed and checked; \
         {} new connections, {} failed {failed:?} {:?}; fds {fds_start} -> {fds_end}\nevents: {events:?}",
        results.len(),
        failed.len(),
        explain_failures(&lab, &failed)
    );
}

/// 7. TCP keepalive (`tcp_keepalive` on the listener and the pool, idle 1 s, 2
///    probes 1 s apart; `idle_timeout` 1 h): when a node is black-holed, its idle
///    connections are closed once the pool's keepalive gives up, about 3 s after
///    their last byte, and their clients see EOF. When a client is black-holed,
///    the balancer closes its connection the same way, and the node sees the
///    close. Without keepalive both would stay open for the hour.
#[test]
fn keepalive_closes_connections_to_dead_peers() {
    if netns_support::skipped() {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::new(7, 2);
    let ka = "tcp_keepalive = { idle = \"1s\", interval = \"1s\", count = 2 }";
    lab.listener_extra = ka.to_string();
    let cfg = PoolCfg {
        pool: format!(
            "connect_timeout = \"2s\"\nidle_timeout = \"1h\"\npassive_failures = 0\n{ka}\n"
        ),
        health: "kind = \"none\"\n".into(),
        nodes: vec![(0, 1), (1, 1)],
    };
    lab.write_config(&cfg);
    lab.start_ringlb();
    let srcs = lab.clients(0..30);
    let which = lab.which(&srcs);
    let on0 = clients_of(&which, &srcs, "node-0");
    let on1 = clients_of(&which, &srcs, "node-1");
    assert!(on0.len() >= 2 && !on1.is_empty(), "{which:?}");

    let hold = |src: &str| {
        let h = lab.agent().call(
            json!({"op": "hold", "src": src, "dst": lab.lb_dst()}),
            S(10),
        );
        lab.agent().call(
            json!({"op": "hold_echo", "handle": h["handle"], "text": "before"}),
            S(10),
        );
        h
    };
    let node_holds: Vec<Value> = on0[..2].iter().map(|s| hold(s)).collect();
    let client_src = on1[0].clone();
    let client_hold = hold(&client_src);
    assert_eq!(client_hold["node"].as_str(), Some("node-1"));
    // The node side of the held connection to node-1, seen in node-1's namespace.
    let established_on_node1 = || {
        netns_support::sh(
            "ip",
            &[
                "netns",
                "exec",
                &lab.nodes[1].ns,
                "ss",
                "-tnH",
                "state",
                "established",
                &format!("( sport = :{} )", netns_support::ECHO_PORT),
            ],
        )
        .lines()
        .count()
    };
    assert_eq!(established_on_node1(), 1);

    // Node side: black-hole node-0. Its two idle connections end with a
    // keepalive timeout. Their probes (every second once idle for 1 s) may
    // already be running, so the end comes 2 to 3 s after the black hole: the
    // next probe and one more go unanswered. 1.5 to 6 s allows for scheduling.
    let window = 1_500.0..6_000.0;
    let from = lab.ringlb().lines.len();
    let blackholed = Instant::now();
    for chain in ["INPUT", "OUTPUT"] {
        lab.iptables(0, &["-A", chain, "-j", "DROP"]);
    }
    let mut node_closes = Vec::new();
    for h in &node_holds {
        let r = lab.agent().call(
            json!({"op": "hold_wait_close", "handle": h["handle"], "timeout_ms": 10_000}),
            S(20),
        );
        assert_eq!(r["how"].as_str(), Some("eof"), "{r}");
        node_closes.push(blackholed.elapsed().as_secs_f64() * 1000.0);
    }
    // The second hold is read after the first: its time is an upper bound.
    assert!(
        window.contains(&node_closes[0]) && node_closes[1] < window.end,
        "closed {node_closes:?} ms after the black hole (keepalive gives up within about 3 s)"
    );
    for src in &on0[..2] {
        let line = lab
            .ringlb()
            .lines
            .wait(from, S(5), |l| {
                l.contains("\"message\":\"connection closed\"")
                    && l.contains(&format!("\"client\":\"{src}:"))
            })
            .map(|(_, _, l)| l)
            .unwrap_or_else(|| panic!("no close logged for {src}"));
        assert!(
            line.contains("\"reason\":\"node_error\"") && line.contains("timed out"),
            "{line}"
        );
    }

    // Client side: black-hole one client address in the clients' namespace.
    let from = lab.ringlb().lines.len();
    let blackholed = Instant::now();
    for (chain, dir) in [("INPUT", "-d"), ("OUTPUT", "-s")] {
        netns_support::sh(
            "ip",
            &[
                "netns",
                "exec",
                &lab.client_ns,
                "iptables",
                "-w",
                "-A",
                chain,
                dir,
                &client_src,
                "-j",
                "DROP",
            ],
        );
    }
    let (_, closed_at, line) = lab
        .ringlb()
        .lines
        .wait(from, S(10), |l| {
            l.contains("\"message\":\"connection closed\"")
                && l.contains(&format!("\"client\":\"{client_src}:"))
        })
        .unwrap_or_else(|| panic!("the black-holed client's connection was not closed"));
    assert!(
        line.contains("\"reason\":\"client_error\"") && line.contains("timed out"),
        "{line}"
    );
    let client_close = closed_at.duration_since(blackholed).as_secs_f64() * 1000.0;
    assert!(
        window.contains(&client_close),
        "closed {client_close:.0} ms after the client was black-holed"
    );
    // And the node saw the close: no connection left on node-1.
    let t = Instant::now();
    while established_on_node1() != 0 {
        assert!(
            t.elapsed() < S(5),
            "node-1 still has the black-holed client's connection"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "keepalive: a black-holed node's connections closed {node_closes:.0?} ms after the black hole, \
         a black-holed client's {client_close:.0} ms after the black hole (idle 1 s + 2 probes 1 s apart; idle_timeout 1 h)"
    );
}
