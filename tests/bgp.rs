//! The BGP lab (issue 16, part 3): two ringlb hosts announce one service
//! address over eBGP to a router that installs an ECMP route, each only while
//! its ringlb's `/ready` answers 200; a graceful stop (SIGTERM with
//! `withdraw_delay`) withdraws the route before anything is refused. Root only,
//! with BIRD2 (`bird`, `birdc`), `curl` and `python3`; otherwise it prints
//! `skipped: <reason>` and passes, or fails under `REQUIRE_ROOT=1`.
//!
//! The lab itself is `tests/bgp_support/lab.py` (namespaces `rlbgp<pid>-*`, all
//! in 10.216.0.0/16; nothing in the root namespace), with the BIRD configs
//! `router.conf` and `host.conf`, the ringlb config `ringlb.toml`, the `/ready`
//! poller `poller.sh` that enables and disables BIRD's static protocol `svc` via
//! `birdc`, and the client `client.py`. Checks: both paths used, each client IP
//! on one node; on SIGTERM of one instance its route goes before it stops
//! accepting, 0 new connections fail, every client stays on its node through
//! the other instance; a restart re-announces. The times are printed.

mod common;

use std::process::{Command, Stdio};

use common::*;

fn missing_tool() -> Option<String> {
    for (tool, arg) in [
        ("ip", "-V"),
        ("bird", "--version"),
        ("birdc", "--version"),
        ("curl", "--version"),
        ("python3", "--version"),
    ] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !ok {
            return Some(format!(
                "`{tool}` not found (apt-get install bird2 curl python3 iproute2)"
            ));
        }
    }
    None
}

#[test]
fn bgp_withdraws_before_refusing_and_clients_keep_their_nodes() {
    let why = not_root()
        .map(|r| format!("{r}; network namespaces need root"))
        .or_else(missing_tool);
    if !needs("REQUIRE_ROOT", why) {
        return;
    }
    let lab = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bgp_support/lab.py");
    let out = Command::new("python3")
        .arg(lab)
        .env("RINGLB", env!("CARGO_BIN_EXE_ringlb"))
        .env("RINGLB_BENCH", common::bench_bin::ringlb_bench())
        .env("PATIENCE", patience().to_string())
        .env("LAB_PREFIX", format!("rlbgp{}", std::process::id()))
        .stdin(Stdio::null())
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the BGP lab failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}
