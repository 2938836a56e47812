//! Capacity: as many proxied connections as the descriptor limit allows. The hard
//! RLIMIT_NOFILE here is 20,000 per process and a proxied connection costs ringlb
//! two descriptors, so 9,500 held connections is the target. Three processes (the
//! backend, ringlb and the load tool), so each stays under its own limit.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{log_addr, spawn_ringlb_json, Kill};

fn hard_nofile() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(0, |(_, hard)| hard)
}

#[test]
fn nine_thousand_five_hundred_proxied_connections_held_with_zero_errors() {
    if hard_nofile() < 20_000 {
        println!(
            "SKIP: the hard descriptor limit is {}, below the 20,000 this test needs",
            hard_nofile()
        );
        return;
    }
    let mut backend = Kill(
        Command::new(common::bench_bin::ringlb_bench())
            .args([
                "serve",
                "echo",
                "--listen",
                "127.0.0.1:0",
                "--name",
                "cap",
                "--greet",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(backend.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "listening cap 127.0.0.1:PORT"
    let backend_addr = line.split_whitespace().nth(2).unwrap().to_string();

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cap.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[listener]]\nname = \"lb\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
             [pools.p]\n[pools.p.health]\nkind = \"none\"\n\
             [[pools.p.nodes]]\nname = \"cap\"\naddr = \"{backend_addr}\"\n"
        ),
    )
    .unwrap();
    let mut lb = spawn_ringlb_json(&cfg);
    let mut lines = BufReader::new(lb.0.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut limit_line, mut addr) = (None, None);
    while addr.is_none() && Instant::now() < deadline {
        let Some(Ok(l)) = lines.next() else { break };
        if l.contains("descriptor limit") {
            limit_line = Some(l.clone());
        }
        if l.contains("\"listening\"") {
            addr = log_addr(&l);
        }
    }
    let addr = addr.expect("ringlb did not start");
    let limit_line = limit_line.expect("the descriptor limit is logged at start");
    // The soft limit was raised to the hard one.
    assert!(
        limit_line.contains(&format!("\"limit\":{}", hard_nofile())),
        "{limit_line}"
    );
    // Keep draining ringlb's log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});

    let out = Command::new(common::bench_bin::ringlb_bench())
        .args([
            "load",
            "idle",
            "--target",
            &addr.to_string(),
            "--connections",
            "9500",
        ])
        .args(["--hold", "2s", "--expect-greeting", "--json", "--quiet"])
        .args(["--pid", &lb.0.id().to_string()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(json["errors"], 0, "{report}");
    assert_eq!(json["established"], 9500, "{report}");
    assert!(lb.0.try_wait().unwrap().is_none(), "ringlb exited");
    println!(
        "9,500 proxied connections held; ringlb RSS per connection {} bytes (debug build)",
        json["rss_per_conn_bytes"]
    );
}
