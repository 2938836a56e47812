//! The real `ringlb` binary: `run` with signals, and `demo`.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} failed");
}

/// Strip ANSI colour codes from log text.
fn plain(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_drains_on_sigterm_reloads_on_sighup_and_exits_zero() {
    let b = backends(2).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    std::fs::write(
        &path,
        config_text(&nodes_of(&b), "", "", "shutdown_grace = \"20s\""),
    )
    .unwrap();
    let mut lb = Ringlb::start(&path);
    // {"timestamp":..., "level":"INFO","message":"listening","listener":"lb","addr":"127.0.0.1:PORT",...}
    let addr = lb.listening("lb");

    let mut s = connect_from(client_ip(3), addr).await.unwrap();
    let node = read_line(&mut s).await.unwrap();
    assert!(node.starts_with("node-"));

    // SIGHUP reloads (the same file: no changes) and does not kill the process.
    signal(&lb.child, "HUP");
    let applied = lb.wait_for("reload applied");
    assert!(applied.contains("\"changes\":\"no changes\""), "{applied}");
    assert!(applied.contains("\"generation\":2"), "{applied}");
    assert!(lb.alive());

    signal(&lb.child, "TERM");
    lb.wait_for("draining");
    eventually(Duration::from_secs(5), "listener closed", || async move {
        connect_from(client_ip(4), addr).await.is_err()
    })
    .await;
    s.write_all(b"after sigterm\n").await.unwrap();
    assert_eq!(read_line(&mut s).await.unwrap(), "after sigterm");
    drop(s);
    let (st, mut lb) =
        tokio::task::spawn_blocking(move || (lb.wait_exit(Duration::from_secs(15)), lb))
            .await
            .unwrap();
    assert!(st.success(), "exit status {st}");
    // The close event of our connection (14 bytes sent).
    let close = lb.wait_for("\"bytes_to_node\":14,");
    for field in [
        "\"message\":\"connection closed\"",
        &format!("\"client\":\"{}:", client_ip(3)),
        "\"listener\":\"lb\"",
        "\"node\":",
        "\"bytes_to_client\":",
        "\"duration_ms\":",
        "\"reason\":\"",
    ] {
        assert!(close.contains(field), "{field} missing in {close}");
    }
}

#[test]
fn run_with_a_bad_config_names_the_problem_and_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[listener]]\nname=\"x\"\nlisten=\"127.0.0.1:0\"\npool=\"nope\"\n[pools.web]\n[[pools.web.nodes]]\naddr=\"127.0.0.1:9\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(
        err.contains("listener[0].pool: no pool named \"nope\""),
        "{err}"
    );
}

/// A bad `--log-level` is refused with exit 2 and one line naming the flag, the
/// value and what is wrong, once (it used to print the filter's error twice).
#[test]
fn a_bad_log_level_is_one_clear_line_and_exit_two() {
    for (level, why) in [
        ("ringlb=nope", "expected one of \"off\", \"error\""),
        ("foo=bar=baz", "expected one of \"off\", \"error\""),
        ("[", "invalid filter directive"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
            .args([
                "--log-level",
                level,
                "check",
                "--config",
                "config/demo.toml",
            ])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{level}: {err}");
        assert!(out.stdout.is_empty(), "{level}: nothing checked");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{level}: not one line:\n{err}");
        assert!(
            lines[0].starts_with(&format!("ringlb: --log-level {level:?}: ")),
            "{level}: {err}"
        );
        assert_eq!(lines[0].matches(why).count(), 1, "{level}: {err}");
    }
}

#[test]
fn run_reports_a_busy_port() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.toml");
    let text = config_text(&[("n".into(), "127.0.0.1:9".parse().unwrap())], "", "", "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("listener lb: cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_http_and_greets_nc_users_through_the_real_balancer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.toml");
    // The listener on port 0 (the demo prints its address), the backends on
    // reserved ports, held until just before the demo binds them.
    let (text, mut reserved) = demo_text_on_free_ports();
    std::fs::write(&path, &text).unwrap();
    reserved.iter_mut().for_each(|r| {
        r.release();
    });
    let mut child = Kill(
        Command::new(env!("CARGO_BIN_EXE_ringlb"))
            .args(["demo", "--config"])
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = child.stdin.take().unwrap();
    let out = lines_of(child.stdout.take().unwrap());
    let err = lines_of(child.stderr.take().unwrap());
    let mut log = Vec::new();
    let line = plain(&wait_for(&out, "balancer listener", &mut log));
    let addr: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    wait_for(&out, "curl", &mut log);
    wait_for(&out, "Ctrl-C", &mut log);
    // The nc hint is the README's (`nc -N`), and names the package that has it.
    let nc = format!("nc -N {} {}", addr.ip(), addr.port());
    assert!(log.iter().any(|l| l.trim() == nc), "{}", log.join("\n"));
    assert!(
        log.iter().any(|l| l.contains("package netcat-openbsd")),
        "{}",
        log.join("\n")
    );
    let readme = std::fs::read_to_string("README.md").unwrap();
    assert!(readme.contains("nc -N 127.0.0.1 7070"));
    assert!(readme.contains("`netcat-openbsd`"));

    // HTTP through the balancer.
    let mut s = connect_from(client_ip(7), addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n")
        .await
        .unwrap();
    let resp = read_to_eof(&mut s, Duration::from_secs(5)).await.unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    assert!(resp.contains("hello from demo-"), "{resp}");

    // A silent client (like nc) is greeted, then echoed.
    let mut s = connect_from(client_ip(7), addr).await.unwrap();
    let greet = read_line(&mut s).await.unwrap();
    assert!(
        resp.contains(&format!("hello from {greet}")),
        "same client IP, same node: {greet} vs {resp}"
    );
    s.write_all(b"echo me\n").await.unwrap();
    assert_eq!(read_line(&mut s).await.unwrap(), "echo me");
    drop(s);

    // Typing the node's name makes it unhealthy: the probes take it down and this
    // client moves; typing it again brings it and the client back.
    use std::io::Write as _;
    let mut errlog = Vec::new();
    writeln!(stdin, "{greet}").unwrap();
    wait_for(
        &out,
        &format!("{greet}: /healthcheck now answers 503"),
        &mut log,
    );
    let down = plain(&wait_for(&err, "node DOWN", &mut errlog));
    assert!(down.contains(&format!("node={greet}")), "{down}");
    assert!(down.contains("http 503 (2 consecutive failures)"), "{down}");
    let moved = node_for(client_ip(7), addr).await.unwrap();
    assert_ne!(moved, greet);
    writeln!(stdin, "{greet}").unwrap();
    wait_for(
        &out,
        &format!("{greet}: /healthcheck now answers 200"),
        &mut log,
    );
    wait_for(&err, "node UP", &mut errlog);
    assert_eq!(node_for(client_ip(7), addr).await.unwrap(), greet);

    signal(&child, "INT");
    let st = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap()
        .expect("demo did not exit within 15 s of SIGINT");
    assert!(st.success(), "exit status {st}");
}

/// CPU time (user + system, in clock ticks of 1/100 s) a process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_accept_backs_off_without_spinning_and_recovers() {
    let b = backends(1).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fds.toml");
    std::fs::write(
        &path,
        config_text(&nodes_of(&b), "", "[pools.p.health]\nkind = \"none\"", ""),
    )
    .unwrap();
    let mut lb = Ringlb::from_child(Kill(
        Command::new("prlimit")
            .args(["--nofile=64:64", "--"])
            .arg(env!("CARGO_BIN_EXE_ringlb"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let addr = lb.listening("lb");

    // Open connections until ringlb runs out of descriptors; keep the served ones.
    let mut served = Vec::new();
    let mut unserved = Vec::new();
    for i in 0..60 {
        let mut s = connect_from(client_ip(i), addr).await.unwrap();
        match tokio::time::timeout(Duration::from_millis(500), read_line(&mut s)).await {
            Ok(Ok(_)) => served.push(s),
            _ => unserved.push(s),
        }
        if unserved.len() >= 5 {
            break;
        }
    }
    assert!(served.len() >= 10, "only {} served", served.len());
    assert!(unserved.len() >= 5, "never ran out of descriptors");
    lb.wait_for("out of resources; backing off");

    // While out of descriptors: alive, and not spinning.
    let pid = lb.pid();
    let t0 = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - t0;
    assert!(used < 60, "{used} ticks of CPU in 2 s while backing off");
    assert!(lb.alive(), "ringlb exited");
    let log = lb.drain();
    let episodes = log
        .iter()
        .filter(|l| l.contains("out of resources; backing off"))
        .count();
    assert_eq!(episodes, 1, "one warning per episode:\n{}", log.join("\n"));

    // Free descriptors: new connections are served again.
    drop(served.drain(..20.min(served.len())).collect::<Vec<_>>());
    let addr2 = addr;
    eventually(Duration::from_secs(10), "served again", || async move {
        match connect_from(client_ip(500), addr2).await {
            Ok(mut s) => matches!(
                tokio::time::timeout(Duration::from_secs(1), read_line(&mut s)).await,
                Ok(Ok(_))
            ),
            Err(_) => false,
        }
    })
    .await;
    lb.wait_for("accept recovered");
    drop(unserved);
    drop(served);
    signal(&lb.child, "TERM");
    let st = tokio::task::spawn_blocking(move || lb.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(st.success(), "exit status {st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_command_signals_through_the_pid_file_and_checks_first() {
    let b = backends(2).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    let pid_path = dir.path().join("ringlb.pid");
    let top = format!("pid_file = \"{}\"", pid_path.display());
    let one = config_text(&nodes_of(&b[..1]), "", "", &top);
    std::fs::write(&path, &one).unwrap();
    let mut lb = Ringlb::start(&path);
    lb.listening("lb");
    let pid: u32 = std::fs::read_to_string(&pid_path)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, lb.pid());

    // An invalid file: `reload --config` refuses to signal.
    std::fs::write(&path, one.replace("pool = \"p\"", "pool = \"nope\"")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["reload", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not reloading"));

    // A valid change: signalled through the pid file named in the config.
    std::fs::write(&path, config_text(&nodes_of(&b), "", "", &top)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["reload", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let applied = lb.wait_for("reload applied");
    assert!(applied.contains("+nodes node-1"), "{applied}");
    assert!(applied.contains("\"generation\":2"), "{applied}");

    signal(&lb.child, "TERM");
    let st = tokio::task::spawn_blocking(move || lb.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(st.success());
    assert!(!pid_path.exists(), "pid file removed at exit");
    let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["reload", "--pid-file"])
        .arg(&pid_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "no pid file, no signal");
}
