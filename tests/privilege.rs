//! `user`/`group`: the real binary binds a port below 1024 as root, then runs as
//! nobody; and refuses to start when the switch cannot be made. Needs root
//! (otherwise skipped with the reason printed, or failed under `REQUIRE_ROOT=1`).

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::*;
use ringlb::demo::backend::{Backend, Mode};

/// A free port below 1024 on 127.0.0.1 (only root can bind it; outside the
/// ephemeral range, so no client socket is ever given it). The listener keeps
/// it bound: drop it just before ringlb binds.
fn privileged_port() -> (u16, std::net::TcpListener) {
    for port in (700..1000).rev() {
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return (port, l);
        }
    }
    panic!("no free port in 700..1000");
}

/// Uid/Gid/Groups lines of /proc/PID/status.
fn ids(pid: u32) -> (String, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

/// A directory every user can read (the config must stay readable after the drop).
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_a_low_port_as_root_then_serves_as_nobody() {
    if !require_root("switching users and binding a port below 1024") {
        return;
    }
    let nobody = ringlb::sys::privilege::lookup_user("nobody").expect("user nobody");
    let backend = Backend::start("node-0", "127.0.0.1:0".parse().unwrap(), Mode::Greet)
        .await
        .unwrap();
    let (port, reserved) = privileged_port();
    let dir = open_dir();
    let pid_file = dir.path().join("ringlb.pid");
    let path = dir.path().join("ringlb.toml");
    std::fs::write(
        &path,
        format!(
            "user = \"nobody\"\nshutdown_grace = \"1s\"\npid_file = \"{}\"\n[[listener]]\nname = \"low\"\nlisten = \"127.0.0.1:{port}\"\npool = \"p\"\n[pools.p]\n[[pools.p.nodes]]\nname = \"node-0\"\naddr = \"{}\"\n",
            pid_file.display(),
            backend.addr
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(reserved);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["run", "--config", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _stdout = lines_of(child.stdout.take().unwrap());
    let out = lines_of(child.stderr.take().unwrap());
    let guard = Kill(child);
    let mut log = Vec::new();
    wait_for(&out, "dropped privileges", &mut log);
    wait_for(&out, "listening", &mut log);

    let uid = nobody.uid.as_raw();
    let gid = nobody.gid.as_raw();
    let (u, g, groups) = ids(pid);
    assert_eq!(
        u,
        format!("{uid} {uid} {uid} {uid}"),
        "real, effective, saved, fs uid"
    );
    assert_eq!(
        g,
        format!("{gid} {gid} {gid} {gid}"),
        "real, effective, saved, fs gid"
    );
    assert_eq!(
        groups,
        gid.to_string(),
        "no supplementary groups but the user's"
    );
    // Every thread switched, not only the main one (the worker threads exist
    // before the switch: their sockets are bound as root).
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid: u32 = task.unwrap().file_name().to_str().unwrap().parse().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        let gid_line = status.lines().find(|l| l.starts_with("Gid:")).unwrap();
        assert_eq!(
            uid_line.split_whitespace().skip(1).collect::<Vec<_>>(),
            vec![uid.to_string(); 4],
            "thread {tid}"
        );
        assert_eq!(
            gid_line.split_whitespace().skip(1).collect::<Vec<_>>(),
            vec![gid.to_string(); 4],
            "thread {tid}"
        );
        threads += 1;
    }
    assert!(
        threads >= 2,
        "main thread and at least one worker: {threads}"
    );
    // Written as root, before the switch.
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );

    let lb = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(node_for(client_ip(1), lb).await.unwrap(), "node-0");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_for(&out, "stopped", &mut log);
    drop(guard);
}

#[test]
fn refuses_to_start_when_the_switch_cannot_be_made() {
    if !require_root("starting ringlb as nobody (setpriv)") {
        return;
    }
    let dir = open_dir();
    let path = dir.path().join("ringlb.toml");
    std::fs::write(
        &path,
        "user = \"root\"\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\n[[pools.p.nodes]]\nname = \"a\"\naddr = \"127.0.0.1:9\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Started as nobody, told to become root: must refuse, not serve.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_ringlb"))
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .expect("setpriv (util-linux)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("cannot drop privileges"), "{text}");
    assert!(text.contains("not running as root"), "{text}");
}
