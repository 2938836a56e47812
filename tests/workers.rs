//! The data plane's worker threads, through the real binary: one listening socket
//! per worker in an SO_REUSEPORT group, connections spread over the workers and
//! counted per worker, limits exact over all of them, "address in use" still
//! refused, and reloads that add, change or remove a listener acting on every
//! worker's socket.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The listen backlog (`Send-Q` of `ss -ltn`) of every listening socket on `addr`.
fn listening_sockets(addr: SocketAddr) -> Vec<u32> {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("src {addr}")])
        .output()
        .expect("ss (iproute2) is needed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("LISTEN"))
        .map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap())
        .collect()
}

async fn status(admin: SocketAddr) -> serde_json::Value {
    let (code, _, body) = http_request(admin, "GET", "/status", "").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn worker_active(st: &serde_json::Value) -> Vec<u64> {
    st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["active"].as_u64().unwrap())
        .collect()
}

/// `ringlb run` that is expected to exit at once; killed (and reported as
/// running) if it is still up after 10 s.
fn run_briefly(config: &std::path::Path) -> std::process::Output {
    let child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["run", "--config"])
        .arg(config)
        .env_remove("RINGLB_WORKERS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Kill(child);
    let status = wait_exit(&mut child, Duration::from_secs(10)).unwrap_or_else(|| {
        panic!("still running after 10 s: it shares the address instead of refusing it")
    });
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read as _;
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    std::process::Output {
        status,
        stdout: out.into_bytes(),
        stderr: err.into_bytes(),
    }
}

fn write_config(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_every_workers_socket_and_are_counted_per_worker() {
    let b = backends(2).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "w.toml",
        &config_text(
            &nodes_of(&b),
            "",
            "",
            "workers = 3\n[admin]\nlisten = \"127.0.0.1:0\"",
        ),
    );
    let mut ringlb = Ringlb::start(&path);
    let line = ringlb.find("\"listening\"");
    let admin = ringlb.admin();
    assert!(line.contains("\"accept_loops\":3"), "{line}");
    let lb = ringlb.listening("lb");
    assert_eq!(listening_sockets(lb).len(), 3, "one socket per worker");

    // 300 clients, each its own source address (so the kernel's hash spreads
    // them), each held open after a byte-exact echo.
    let mut held = Vec::new();
    for i in 0..300u32 {
        let mut s = connect_from(client_ip(i), lb).await.unwrap();
        let greeting = read_line(&mut s).await.unwrap();
        assert!(greeting.starts_with("node-"), "{greeting}");
        let msg = pattern(1000 + i as usize, u64::from(i));
        s.write_all(&msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg, "client {i}");
        held.push(s);
    }
    let st = status(admin).await;
    let active = worker_active(&st);
    assert_eq!(active.len(), 3, "{st}");
    assert_eq!(active.iter().sum::<u64>(), 300, "{active:?}");
    // A uniform split gives 100 each (standard deviation about 8).
    assert!(
        active.iter().all(|&n| n >= 50),
        "every worker takes a share: {active:?}"
    );
    let accepted: u64 = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["accepted"].as_u64().unwrap())
        .sum();
    assert_eq!(accepted, 300);
    let (_, _, metrics) = http_request(admin, "GET", "/metrics", "").await;
    for (w, &expected) in active.iter().enumerate() {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "ringlb_worker_connections_active{{worker=\"{w}\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("no active gauge of worker {w}:\n{metrics}"));
        assert_eq!(
            line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64,
            expected,
            "{line}"
        );
    }

    drop(held);
    eventually(
        Duration::from_secs(10),
        "every worker back to 0",
        || async { worker_active(&status(admin).await) == [0, 0, 0] },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_is_exact_over_all_workers() {
    let b = backends(1).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "max.toml",
        &config_text(
            &nodes_of(&b),
            "max_connections = 40",
            "",
            "workers = 4\n[admin]\nlisten = \"127.0.0.1:0\"",
        ),
    );
    let mut ringlb = Ringlb::start(&path);
    let lb = ringlb.listening("lb");
    let admin = ringlb.admin();

    // 200 clients at once: the four workers accept concurrently.
    let tasks: Vec<_> = (0..200u32)
        .map(|i| {
            tokio::spawn(async move {
                let mut s = connect_from(client_ip(i), lb).await.ok()?;
                match tokio::time::timeout(Duration::from_secs(5), read_line(&mut s)).await {
                    Ok(Ok(l)) if l.starts_with("node-") => Some(s),
                    _ => None,
                }
            })
        })
        .collect();
    let mut served = Vec::new();
    for t in tasks {
        if let Some(s) = t.await.unwrap() {
            served.push(s);
        }
    }
    assert_eq!(served.len(), 40, "exactly max_connections served");
    let st = status(admin).await;
    assert_eq!(st["listeners"][0]["active_connections"], 40, "{st}");
    assert_eq!(worker_active(&st).iter().sum::<u64>(), 40);
    let (_, _, metrics) = http_request(admin, "GET", "/metrics", "").await;
    let rejected = metrics
        .lines()
        .find(|l| {
            l.starts_with("ringlb_connections_rejected_total")
                && l.contains("reason=\"max_connections\"")
        })
        .unwrap_or_else(|| panic!("no max_connections rejections:\n{metrics}"));
    assert_eq!(rejected.rsplit(' ').next().unwrap(), "160", "{rejected}");
    // One warning for the listener, not one per worker.
    let log = ringlb.drain();
    let warnings = log
        .iter()
        .filter(|l| l.contains("max_connections reached"))
        .count();
    assert_eq!(warnings, 1, "{}", log.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_address_is_refused_not_joined() {
    let b = backends(1).await;
    let dir = tempfile::tempdir().unwrap();
    let first = write_config(
        &dir,
        "a.toml",
        &config_text(&nodes_of(&b), "", "", "workers = 2"),
    );
    let mut first = Ringlb::start(&first);
    let lb = first.listening("lb");

    // The same address, the same way of binding: must fail, not share the port.
    let text =
        config_text(&nodes_of(&b), "", "", "workers = 2").replace("127.0.0.1:0", &lb.to_string());
    let second = write_config(&dir, "b.toml", &text);
    let out = run_briefly(&second);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on {lb}")) && err.contains("in use"),
        "{err}"
    );
    assert_eq!(listening_sockets(lb).len(), 2, "only the first's two");

    // A plain socket already on the port is refused the same way.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = plain.local_addr().unwrap();
    let text = config_text(&nodes_of(&b), "", "", "workers = 2")
        .replace("127.0.0.1:0", &taken.to_string());
    let third = write_config(&dir, "c.toml", &text);
    let out = run_briefly(&third);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_add_change_and_remove_every_workers_socket() {
    let b = backends(1).await;
    let dir = tempfile::tempdir().unwrap();
    let base = config_text(&nodes_of(&b), "backlog = 100", "", "workers = 3");
    let path = write_config(&dir, "r.toml", &base);
    let mut ringlb = Ringlb::start(&path);
    let pid = nix::unistd::Pid::from_raw(ringlb.pid() as i32);
    let lb = ringlb.listening("lb");
    assert_eq!(listening_sockets(lb), [100, 100, 100]);

    // A second listener (on port 0 of another address: its port comes from the
    // log), and a new backlog for the first.
    let text = base.replace("backlog = 100", "backlog = 200").replace(
        "[pools.p]",
        "[[listener]]\nname = \"second\"\nlisten = \"127.0.0.2:0\"\npool = \"p\"\n\n[pools.p]",
    );
    std::fs::write(&path, text).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    ringlb.wait_for("reload applied");
    let second = ringlb.listening("second");
    assert_eq!(listening_sockets(lb), [200, 200, 200]);
    assert_eq!(listening_sockets(second).len(), 3);
    for (i, addr) in [lb, second].into_iter().enumerate() {
        let node = node_for(client_ip(i as u32), addr).await.unwrap();
        assert_eq!(node, "node-0");
    }

    // Remove the second listener again: all three of its sockets close.
    std::fs::write(&path, base.replace("backlog = 100", "backlog = 200")).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    ringlb.wait_for("reload applied");
    eventually(Duration::from_secs(5), "second listener closed", || async {
        listening_sockets(second).is_empty()
    })
    .await;
    let log = ringlb.drain();
    let stopped = log
        .iter()
        .filter(|l| l.contains("stopped accepting"))
        .count();
    assert_eq!(stopped, 1, "one line for the listener, not one per worker");
    assert_eq!(listening_sockets(lb), [200, 200, 200]);
    drop(ringlb);
}
