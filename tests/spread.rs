//! `ringlb-bench load spread` through the real balancer: its per-node counts,
//! weight-fair shares and max/mean are what `ringlb which` computes for the same
//! source IPs, and a node given a `--weight` but reached by nobody counts as 0.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::*;

/// How many of `ips` `ringlb which` maps to each node.
fn which_counts(config: &Path, ips: &[String]) -> BTreeMap<String, u64> {
    let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["which", "--config"])
        .arg(config)
        .args(ips)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut counts = BTreeMap::new();
    for (_, rest) in stdout.lines().filter_map(|l| l.split_once(" -> ")) {
        let node = rest.split_whitespace().next().unwrap().to_string();
        *counts.entry(node).or_insert(0) += 1;
    }
    counts
}

/// `ringlb-bench load spread --target TARGET --ips 1500 --source-ips
/// 127.3.0.0/16 --quiet ARGS`: its stdout, once it has exited 0.
async fn load_spread(target: SocketAddr, args: &[&str]) -> String {
    let out = tokio::process::Command::new(common::bench_bin::ringlb_bench())
        .args(["load", "spread", "--target", &target.to_string()])
        .args(["--ips", "1500", "--source-ips", "127.3.0.0/16", "--quiet"])
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_spread_reports_weight_fair_shares_and_max_over_mean_as_which_maps() {
    let b = backends(3).await;
    let text = config_text(&nodes_of(&b), "", "[pools.p.health]\nkind = \"none\"\n", "")
        .replace("name = \"node-1\"\n", "name = \"node-1\"\nweight = 2\n");
    let lb = start(&text).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lb.toml");
    std::fs::write(&config, &text).unwrap();
    let saved = dir.path().join("run.json");

    let saved_arg = saved.to_str().unwrap();
    let report = load_spread(
        lb.addr,
        &[
            "--weight", "node-0=1", "--weight", "node-1=2", "--weight", "node-2=1", "--weight",
            "node-9=1", "--json", "--save", saved_arg,
        ],
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(
        (json["errors"].as_u64(), json["mapped"].as_u64()),
        (Some(0), Some(1500)),
        "{report}"
    );

    let mapping: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    let ips: Vec<String> = mapping.keys().cloned().collect();
    let expected = which_counts(&config, &ips);
    assert_eq!(expected.len(), 3, "{expected:?}");

    // Fair: weights 1, 2, 1 and 1 for node-9, which is not in the pool.
    let fair = [
        ("node-0", 0.2),
        ("node-1", 0.4),
        ("node-2", 0.2),
        ("node-9", 0.2),
    ];
    let nodes = json["nodes"].as_object().unwrap();
    assert_eq!(nodes.len(), 4, "{report}");
    let mut max = 0f64;
    for (name, share) in fair {
        let n = &nodes[name];
        let ips = expected.get(name).copied().unwrap_or(0);
        assert_eq!(n["ips"].as_u64(), Some(ips), "{name}: {report}");
        assert_eq!(
            n["fair_pct"].as_f64(),
            Some(share * 100.0),
            "{name}: {report}"
        );
        let ratio = ips as f64 / (1500.0 * share);
        let got = n["ips_over_fair"].as_f64().unwrap();
        assert!((got - ratio).abs() < 1e-4, "{name}: {got} vs {ratio}");
        max = max.max(ratio);
    }
    assert_eq!(nodes["node-9"]["ips"], 0, "{report}");
    // The largest deviation from a fair share, in percentage points.
    let dev = fair
        .iter()
        .map(|(name, share)| {
            let ips = expected.get(*name).copied().unwrap_or(0) as f64;
            (ips / 1500.0 - share).abs() * 100.0
        })
        .fold(0.0, f64::max);
    let got = json["max_deviation_pct"].as_f64().unwrap();
    assert!(
        (got - dev).abs() < 1e-3,
        "deviation {got} vs {dev}: {report}"
    );
    let got = json["max_over_mean"].as_f64().unwrap();
    assert!(
        (got - max).abs() < 1e-4,
        "max/mean {got} vs {max}: {report}"
    );

    // Without --weight: the mean over the nodes seen.
    let text_report = load_spread(lb.addr, &[]).await;
    let top = expected.values().copied().max().unwrap();
    let want = format!(
        "max/mean       {:.3} (IPs over the mean count, 3 nodes)",
        top as f64 / 500.0
    );
    assert!(text_report.contains(&want), "{want}\n{text_report}");
    lb.stop().await;
}
