//! Capacity: as many proxied connections as the descriptor limit allows. The hard
//! RLIMIT_NOFILE here is 20,000 per process and a proxied connection costs ringlb
//! two descriptors, so 9,500 held connections is the target. Three processes (the
//! backend, ringlb and the load tool), so each stays under its own limit.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

mod common;

use common::{needs, Kill, Ringlb};

fn hard_nofile() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(0, |(_, hard)| hard)
}

#[test]
fn nine_thousand_five_hundred_proxied_connections_held_with_zero_errors() {
    let missing = (hard_nofile() < 20_000).then(|| {
        format!(
            "the hard descriptor limit is {}, below the 20,000 this test needs",
            hard_nofile()
        )
    });
    if !needs("REQUIRE_ROOT", missing) {
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
    let mut lb = Ringlb::start(&cfg);
    let addr = lb.listening("lb");
    // Logged at start: before (or as) the listener listens.
    let limit_line = lb
        .seen
        .iter()
        .find(|l| l.contains("descriptor limit"))
        .cloned()
        .expect("the descriptor limit is logged at start");
    // The soft limit was raised to the hard one.
    assert!(
        limit_line.contains(&format!("\"limit\":{}", hard_nofile())),
        "{limit_line}"
    );
    // (ringlb's log is read on a thread all along, so it never blocks on a full pipe.)

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
        .args(["--pid", &lb.pid().to_string()])
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
    assert!(lb.alive(), "ringlb exited");
    println!(
        "9,500 proxied connections held; ringlb RSS per connection {} bytes (debug build)",
        json["rss_per_conn_bytes"]
    );
}
