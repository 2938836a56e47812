//! `ringlb-bench serve push` with `load fanout` and `load storm`, directly and
//! through the real ringlb binary: messages are delivered at the rate the push
//! servers write them and spread over the nodes; when one node is killed its
//! clients (and only they) reconnect, none to the killed node; control `kill`
//! really resets connections and `revive` listens again.

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{patient, wait_exit, Kill, Ringlb};

/// `ringlb-bench serve push --listen 127.0.0.1:0` × `n` `--name node --control
/// 127.0.0.1:0 ARGS`: the process, its servers (name, address) and the control
/// address.
fn push_servers(n: usize, args: &[&str]) -> (Kill, Vec<(String, SocketAddr)>, SocketAddr) {
    let mut cmd = Command::new(common::bench_bin::ringlb_bench());
    cmd.args([
        "serve",
        "push",
        "--name",
        "node",
        "--control",
        "127.0.0.1:0",
    ]);
    for _ in 0..n {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    let mut child = Kill(
        cmd.args(args)
            .arg("--workers")
            .arg("1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut servers = Vec::new();
    let mut control = None;
    while control.is_none() {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "serve push exited");
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["listening", name, addr] => servers.push((name.to_string(), addr.parse().unwrap())),
            ["control", addr] => control = Some(addr.parse().unwrap()),
            _ => panic!("unexpected line {line:?}"),
        }
    }
    assert_eq!(servers.len(), n);
    (child, servers, control.unwrap())
}

/// Run `ringlb-bench load WORKLOAD --quiet --json ARGS` to the end: its exit
/// code, its JSON report and its output for messages.
fn bench_load(workload: &str, args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = Command::new(common::bench_bin::ringlb_bench())
        .args(["load", workload, "--quiet", "--json", "--workers", "2"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let json = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{text}"));
    (out.status.code().unwrap_or(-1), json, text)
}

/// One control command and its reply.
fn control(addr: SocketAddr, line: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(patient(Duration::from_secs(10))))
        .unwrap();
    writeln!(s, "{line}").unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    reply.trim_end().to_string()
}

/// A client read one 64-byte message from `addr`; the server's name in it.
fn one_message(s: &mut TcpStream) -> String {
    let mut buf = [0u8; 64];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(buf[63], b'\n');
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split(": #")
        .next()
        .map(str::to_string)
        .unwrap_or_else(|| panic!("not a push message: {text:?}"))
}

/// ringlb with one listener `lb` in front of `nodes` (default TCP health checks).
fn ringlb(nodes: &[(String, SocketAddr)], dir: &std::path::Path) -> (Ringlb, SocketAddr) {
    let mut text = String::from(
        "[[listener]]\nname = \"lb\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
         [pools.p]\nidle_timeout = \"1h\"\n",
    );
    for (name, addr) in nodes {
        text.push_str(&format!(
            "[[pools.p.nodes]]\nname = \"{name}\"\naddr = \"{addr}\"\n"
        ));
    }
    let path = dir.join("ringlb.toml");
    std::fs::write(&path, text).unwrap();
    let mut lb = Ringlb::start(&path);
    let addr = lb.listening("lb");
    (lb, addr)
}

#[test]
fn fanout_direct_gets_one_message_per_connection_per_second_and_the_server_cpu() {
    let (push, servers, _) = push_servers(1, &[]);
    let target = servers[0].1.to_string();
    let pid = push.id().to_string();
    let (code, json, text) = bench_load(
        "fanout",
        &[
            "--target",
            &target,
            "--connections",
            "200",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
            "--source-ips",
            "127.5.0.0/16",
            "--pid",
            &pid,
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert_eq!(json["established"], 200, "{text}");
    assert_eq!(json["lost"], 0, "{text}");
    assert_eq!(json["malformed"], 0, "{text}");
    assert_eq!(json["errors"], 0, "{text}");
    assert_eq!(json["nodes"]["node"], 200, "{text}");
    // 200 connections, one message a second each.
    let rate = json["messages_per_s"].as_f64().unwrap();
    assert!((180.0..=220.0).contains(&rate), "{rate} messages/s: {text}");
    let p50 = json["latency_p50_us"].as_u64().unwrap();
    let p99 = json["latency_p99_us"].as_u64().unwrap();
    assert!(p50 > 0 && p99 >= p50, "{text}");
    assert!(
        p99 < patient(Duration::from_millis(500)).as_micros() as u64,
        "{text}"
    );
    for key in [
        "cpu_ms_per_1000_msgs",
        "cpu_user_ms_per_1000_msgs",
        "cpu_sys_ms_per_1000_msgs",
        "rss_per_conn_bytes",
        "latency_p999_us",
    ] {
        assert!(json[key].is_number(), "{key}: {text}");
    }
    assert_eq!(json["pids"], serde_json::json!([push.id()]), "{text}");
}

#[test]
fn fanout_through_ringlb_spreads_over_three_push_nodes() {
    let (_push, servers, _) = push_servers(3, &[]);
    let dir = tempfile::tempdir().unwrap();
    let (lb, addr) = ringlb(&servers, dir.path());
    let pid = lb.pid().to_string();
    let (code, json, text) = bench_load(
        "fanout",
        &[
            "--target",
            &addr.to_string(),
            "--connections",
            "300",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
            "--source-ips",
            "127.6.0.0/16",
            "--pid",
            &pid,
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        (json["lost"].as_u64(), json["errors"].as_u64()),
        (Some(0), Some(0)),
        "{text}"
    );
    let nodes = json["nodes"].as_object().unwrap();
    assert_eq!(nodes.len(), 3, "{text}");
    let total: u64 = nodes.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, 300, "{text}");
    assert!(nodes.values().all(|v| v.as_u64().unwrap() >= 30), "{text}");
    let rate = json["messages_per_s"].as_f64().unwrap();
    assert!((270.0..=330.0).contains(&rate), "{rate} messages/s: {text}");
    assert!(json["cpu_ms_per_1000_msgs"].is_number(), "{text}");
}

#[test]
fn storm_through_ringlb_brings_every_client_of_the_killed_node_back_elsewhere() {
    let (_push, servers, ctl) = push_servers(3, &[]);
    let dir = tempfile::tempdir().unwrap();
    let (_lb, addr) = ringlb(&servers, dir.path());
    let (code, json, text) = bench_load(
        "storm",
        &[
            "--target",
            &addr.to_string(),
            "--control",
            &ctl.to_string(),
            "--connections",
            "300",
            "--source-ips",
            "127.7.0.0/16",
            "--settle",
            "500ms",
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert_eq!(json["invariants_hold"], true, "{text}");
    let killed = json["killed"].as_str().unwrap().to_string();
    let before = json["nodes_before"].as_object().unwrap();
    let after = json["nodes_after"].as_object().unwrap();
    assert_eq!(before.len(), 3, "{text}");
    let affected = json["affected"].as_u64().unwrap();
    // The default victim is the node with the most clients.
    let most = before.values().map(|v| v.as_u64().unwrap()).max().unwrap();
    assert_eq!(
        (before[&killed].as_u64(), affected),
        (Some(most), most),
        "{text}"
    );
    assert!(affected > 0, "{text}");
    // The server reset them all (and perhaps a health probe's connection).
    assert!(
        json["reset_by_server"].as_u64().unwrap() >= affected,
        "{text}"
    );
    assert_eq!(json["back"], affected, "{text}");
    assert!(json["all_back_ms"].as_f64().unwrap() > 0.0, "{text}");
    assert!(!after.contains_key(&killed), "{text}");
    // Nobody else moved: each survivor keeps its clients, and gains some.
    let mut total = 0;
    for (name, n) in before.iter().filter(|(k, _)| **k != killed) {
        assert!(after[name].as_u64() >= n.as_u64(), "{name}: {text}");
        total += after[name].as_u64().unwrap();
    }
    assert_eq!(total, 300, "{text}");
    for key in [
        "survivors_disconnected",
        "moved",
        "landed_on_killed",
        "not_back",
    ] {
        assert_eq!(json[key], 0, "{key}: {text}");
    }
    assert_eq!(json["revived"], true, "{text}");
    // Revived: the killed node serves again.
    let (_, killed_addr) = servers.iter().find(|(n, _)| *n == killed).unwrap();
    let mut s = TcpStream::connect(killed_addr).unwrap();
    s.set_read_timeout(Some(patient(Duration::from_secs(5))))
        .unwrap();
    assert_eq!(one_message(&mut s), killed);
}

#[test]
fn control_kill_resets_connections_and_revive_listens_again() {
    let (push, servers, ctl) = push_servers(2, &["--interval", "100ms"]);
    let (name, addr) = servers[0].clone();
    let mut clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for c in &mut clients {
        c.set_read_timeout(Some(patient(Duration::from_secs(5))))
            .unwrap();
        assert_eq!(one_message(c), name);
    }
    let mut other = TcpStream::connect(servers[1].1).unwrap();
    other
        .set_read_timeout(Some(patient(Duration::from_secs(5))))
        .unwrap();
    assert_eq!(one_message(&mut other), servers[1].0);

    // By port: the same server.
    let reply = control(ctl, &format!("kill {}", addr.port()));
    assert_eq!(reply, format!("killed {name} {} 3", addr.port()));
    for c in &mut clients {
        let mut rest = Vec::new();
        let e = c.read_to_end(&mut rest).expect_err("reset");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    let e = TcpStream::connect(addr).expect_err("refused while killed");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    // The other server is untouched.
    assert_eq!(one_message(&mut other), servers[1].0);
    let stats: serde_json::Value = serde_json::from_str(&control(ctl, "stats")).unwrap();
    assert_eq!(stats["servers"][0]["listening"], false, "{stats}");
    assert_eq!(stats["servers"][0]["open"], 0, "{stats}");
    assert_eq!(stats["servers"][1]["open"], 1, "{stats}");
    assert!(control(ctl, &format!("kill {name}")).starts_with("error "));
    assert!(control(ctl, "frobnicate").starts_with("error unknown command"));

    assert_eq!(
        control(ctl, &format!("revive {name}")),
        format!("revived {name} {}", addr.port())
    );
    let mut again = TcpStream::connect(addr).unwrap();
    again
        .set_read_timeout(Some(patient(Duration::from_secs(5))))
        .unwrap();
    assert_eq!(one_message(&mut again), name);

    assert_eq!(control(ctl, "exit"), "bye");
    let mut push = push;
    let status = wait_exit(&mut push, Duration::from_secs(5));
    assert!(matches!(status, Some(s) if s.success()), "{status:?}");
}

#[test]
fn serve_push_rejects_a_size_too_small_for_its_header() {
    let out = Command::new(common::bench_bin::ringlb_bench())
        .args([
            "serve",
            "push",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "a-rather-long-name",
        ])
        .args(["--size", "64"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--size 64 is too small for server a-rather-long-name")
            && err.contains("use --size 70 or more"),
        "{err}"
    );
}

#[test]
fn storm_without_a_balancer_counts_the_refused_attempts_and_fails() {
    // Straight at one push server: its killed clients have nowhere to go.
    let (_push, servers, ctl) = push_servers(1, &[]);
    let (code, json, text) = bench_load(
        "storm",
        &[
            "--target",
            &servers[0].1.to_string(),
            "--control",
            &ctl.to_string(),
            "--connections",
            "50",
            "--source-ips",
            "127.8.0.0/16",
            "--settle",
            "100ms",
        ],
    );
    assert_eq!(code, 1, "{text}");
    assert_eq!(json["invariants_hold"], false, "{text}");
    assert_eq!(
        (json["affected"].as_u64(), json["back"].as_u64()),
        (Some(50), Some(0)),
        "{text}"
    );
    assert_eq!(json["not_back"], 50, "{text}");
    // 20 attempts each, every one refused, none after a first success.
    assert_eq!(json["failed_attempts"], 1000, "{text}");
    assert_eq!(json["failed_kinds"]["connect_refused"], 1000, "{text}");
    assert_eq!(json["failed_after_first_back"], 0, "{text}");
    assert_eq!(json["failures"][0]["kind"], "refused", "{text}");
    assert!(
        json["failures"][0]["at_ms"].as_f64().unwrap() >= 0.0,
        "{text}"
    );
    assert_eq!(json["all_back_ms"], serde_json::Value::Null, "{text}");
    // Revived after the report all the same.
    assert_eq!(json["revived"], true, "{text}");
    let mut s = TcpStream::connect(servers[0].1).unwrap();
    s.set_read_timeout(Some(patient(Duration::from_secs(5))))
        .unwrap();
    assert_eq!(one_message(&mut s), servers[0].0);
}
