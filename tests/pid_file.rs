//! Two processes that overlap, the usual upgrade before `ringlb upgrade`
//! existed: the old one drains after SIGTERM while a new one starts with the same
//! config. The new one can bind every port at once (the old one closes its
//! listeners and its admin endpoint when its drain starts), the old process must
//! not delete the pid file the new one wrote, and the new one removes it when it
//! stops.

mod common;

use std::time::Duration;

use common::*;

fn pid_in(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_starts_beside_a_draining_one_which_leaves_its_pid_file_alone() {
    let backends = backends(1).await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("ringlb.pid");
    let cfg = dir.path().join("ringlb.toml");
    let mut admin_port = reserve_port();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", admin_port.release())
        .parse()
        .unwrap();
    write_file(
        &cfg,
        &config_text(
            &nodes_of(&backends),
            "",
            "",
            &format!(
                "pid_file = {:?}\nshutdown_grace = \"30s\"\n[admin]\nlisten = \"{admin}\"",
                pid_file
            ),
        ),
    );

    let mut old = spawn_ringlb_json(&cfg);
    let old_log = lines_of(old.stderr.take().unwrap());
    let mut seen = Vec::new();
    let addr = log_addr(&wait_for(&old_log, "\"listening\"", &mut seen)).unwrap();
    assert_eq!(pid_in(&pid_file), Some(old.id()));
    // A connection that keeps the old process draining.
    let mut client = connect_from(client_ip(1), addr).await.unwrap();
    assert_eq!(read_line(&mut client).await.unwrap(), "node-0");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_for(&old_log, "draining open connections", &mut seen);

    let mut new = spawn_ringlb_json(&cfg);
    let new_log = lines_of(new.stderr.take().unwrap());
    let mut new_seen = Vec::new();
    wait_for(&new_log, "\"listening\"", &mut new_seen);
    wait_for(&new_log, "admin endpoint listening", &mut new_seen);
    assert_eq!(pid_in(&pid_file), Some(new.id()));
    // The old process still drains; the admin endpoint answers from the new one.
    assert!(
        old.try_wait().unwrap().is_none(),
        "the old process is still draining"
    );
    let st: serde_json::Value =
        serde_json::from_str(&http_get(admin, "/status").await.unwrap()).unwrap();
    assert_eq!(st["process"]["pid"], new.id());
    // `ringlb check` names the instance the pid file points at, from its /status.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains(&format!("running: pid {} (version ", new.id()))
            && stdout.contains("; started fresh (no upgrade)"),
        "{stdout}"
    );

    // The old process's last connection ends: it exits, leaving the file alone.
    drop(client);
    let status = wait_exit(&mut old, patient(Duration::from_secs(20))).expect("old process exits");
    assert!(status.success(), "{status}");
    wait_for(&old_log, "pid file names another process now", &mut seen);
    assert_eq!(
        pid_in(&pid_file),
        Some(new.id()),
        "the old process removed the new one's pid file"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(new.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_exit(&mut new, patient(Duration::from_secs(20))).expect("new process exits");
    assert!(status.success(), "{status}");
    assert!(
        !pid_file.exists(),
        "the new process removes its own pid file"
    );
    // No temporary file is left beside it.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.iter().all(|n| !n.ends_with(".tmp")), "{left:?}");
}
