//! `load spread`: which node each of N source IPs reaches, and what moved since
//! a saved run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Outcome;
use crate::cli::SpreadArgs;
use crate::net::{bounded, connect_from, read_line, Cidr, Errors};
use crate::report::{self, Progress, Report, Table};

/// Longest a spread run may take; IPs not tried by then count as errors.
pub const RUN_CAP: Duration = Duration::from_secs(600);
/// Rows of the "moved from -> to" table.
const MAX_FLOWS: usize = 30;
const MAX_EXAMPLES: usize = 10;

/// IP (text) -> node name, as saved with --save.
pub type Mapping = BTreeMap<String, String>;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// IPs with a node in both runs.
    pub common: u64,
    pub moved: u64,
    /// Moved because their earlier node is not in this run.
    pub moved_node_left: u64,
    /// Moved to a node that was not in the earlier run (their earlier node is still here).
    pub moved_to_new_node: u64,
    /// Moved although their earlier node is still here and their new node was
    /// already there: consistent hashing should not do that.
    pub unexpected: u64,
    pub only_before: u64,
    pub only_now: u64,
    pub nodes_left: Vec<String>,
    pub nodes_joined: Vec<String>,
    /// (from, to) -> IPs
    pub flows: BTreeMap<(String, String), u64>,
    /// (ip, from, to) of some unexpected moves
    pub examples: Vec<(String, String, String)>,
}

impl Comparison {
    pub fn moved_fraction(&self) -> f64 {
        if self.common == 0 {
            0.0
        } else {
            self.moved as f64 / self.common as f64
        }
    }
}

pub fn compare(before: &Mapping, now: &Mapping) -> Comparison {
    let nodes_before: BTreeSet<&String> = before.values().collect();
    let nodes_now: BTreeSet<&String> = now.values().collect();
    let mut c = Comparison {
        nodes_left: nodes_before
            .difference(&nodes_now)
            .map(|s| s.to_string())
            .collect(),
        nodes_joined: nodes_now
            .difference(&nodes_before)
            .map(|s| s.to_string())
            .collect(),
        ..Comparison::default()
    };
    for (ip, old) in before {
        let Some(new) = now.get(ip) else {
            c.only_before += 1;
            continue;
        };
        c.common += 1;
        if old == new {
            continue;
        }
        c.moved += 1;
        *c.flows.entry((old.clone(), new.clone())).or_insert(0) += 1;
        if !nodes_now.contains(old) {
            c.moved_node_left += 1;
        } else if !nodes_before.contains(new) {
            c.moved_to_new_node += 1;
        } else {
            c.unexpected += 1;
            if c.examples.len() < MAX_EXAMPLES {
                c.examples.push((ip.clone(), old.clone(), new.clone()));
            }
        }
    }
    c.only_now = now.keys().filter(|ip| !before.contains_key(*ip)).count() as u64;
    c
}

/// One node of a run, against its fair share.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeShare {
    pub name: String,
    /// From --weight, else 1.
    pub weight: u32,
    pub ips: u64,
    /// Of the mapped IPs, 0..=1.
    pub share: f64,
    /// weight / the sum of the weights, 0..=1.
    pub fair: f64,
    /// ips / (mapped x fair): 1 is exactly fair.
    pub ratio: f64,
}

/// The nodes of a run (seen, or given a weight and then 0 IPs if not seen),
/// in name order, with their weight-fair shares; and max/mean, the largest
/// IPs over fair count (`None` when no IP was mapped). Without weights every
/// node seen has weight 1, so the fair count is the mean count.
pub fn fair_shares(
    counts: &BTreeMap<&str, u64>,
    weights: &[(String, u32)],
) -> (Vec<NodeShare>, Option<f64>) {
    let mut all: BTreeMap<&str, (u32, u64)> = counts.iter().map(|(n, k)| (*n, (1, *k))).collect();
    for (n, w) in weights {
        all.entry(n.as_str()).or_insert((1, 0)).0 = *w;
    }
    let mapped: u64 = counts.values().sum();
    let total: u64 = all.values().map(|(w, _)| u64::from(*w)).sum();
    let nodes: Vec<NodeShare> = all
        .into_iter()
        .map(|(name, (weight, ips))| {
            let fair = f64::from(weight) / total as f64;
            let ratio = if mapped == 0 {
                0.0
            } else {
                ips as f64 / (mapped as f64 * fair)
            };
            NodeShare {
                name: name.to_string(),
                weight,
                ips,
                share: if mapped == 0 {
                    0.0
                } else {
                    ips as f64 / mapped as f64
                },
                fair,
                ratio,
            }
        })
        .collect();
    let max = (mapped > 0)
        .then(|| nodes.iter().map(|n| n.ratio).reduce(f64::max))
        .flatten();
    (nodes, max)
}

fn load_mapping(path: &Path) -> anyhow::Result<Mapping> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --compare file {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a saved spread ({{\"ip\": \"node\", ...}} JSON)",
            path.display()
        )
    })
}

pub async fn run(a: SpreadArgs) -> anyhow::Result<Outcome> {
    let c = &a.common;
    let cidr: Cidr = c.source_ips;
    if u64::from(a.ips) > cidr.usable() {
        bail!(
            "--ips {} is more than the {} usable addresses of --source-ips {cidr}",
            a.ips,
            cidr.usable()
        );
    }
    let mut given = BTreeSet::new();
    if let Some((n, _)) = a.weights.iter().find(|(n, _)| !given.insert(n)) {
        bail!("--weight {n}=... is given twice");
    }
    let before = a.compare.as_deref().map(load_mapping).transpose()?;

    let start = Instant::now();
    let give_up = start + RUN_CAP;
    let errors = Arc::new(Errors::default());
    let done = Arc::new(AtomicU64::new(0));
    let progress = {
        let (done, errors, n) = (done.clone(), errors.clone(), a.ips);
        Progress::start(c.quiet, start, start, move |_| {
            format!(
                "{}/{} IPs, {} errors",
                report::int(done.load(Ordering::Relaxed)),
                report::int(u64::from(n)),
                report::int(errors.total())
            )
        })
    };

    let mut now: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    let mut inflight = JoinSet::new();
    let mut next: u32 = 0;
    loop {
        while next < a.ips && inflight.len() < a.concurrency as usize {
            let ip = cidr.nth(u64::from(next));
            let (target, timeout) = (c.target, c.timeout);
            inflight.spawn(async move {
                let r = async {
                    let mut s = connect_from(ip, target, timeout)
                        .await
                        .map_err(|e| ("connect", e))?;
                    bounded("greeting", timeout, read_line(&mut s, 1024))
                        .await
                        .map_err(|e| ("greeting", e))
                }
                .await;
                (ip, r)
            });
            next += 1;
        }
        match tokio::time::timeout_at(give_up, inflight.join_next()).await {
            Err(_) => {
                let left = inflight.len() as u64 + u64::from(a.ips - next);
                inflight.abort_all();
                errors.record_n(
                    "not tried",
                    left,
                    format!(
                        "{left} IPs left when the run reached its {} cap",
                        humantime::format_duration(RUN_CAP)
                    ),
                );
                break;
            }
            Ok(None) => break,
            Ok(Some(Ok((ip, Ok(node))))) => {
                let node = node.trim().to_string();
                if node.is_empty() {
                    errors.record("greeting: empty", format!("{ip}: empty greeting line"));
                } else {
                    now.insert(ip, node);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(Ok((ip, Err((what, e)))))) => {
                errors.record(
                    format!("{what}: {}", crate::net::error_kind(&e)),
                    format!("{ip}: {e}"),
                );
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(Err(e))) => errors.record("task", e),
        }
    }
    drop(progress);
    let elapsed = start.elapsed();

    let mapping: Mapping = now
        .iter()
        .map(|(ip, n)| (ip.to_string(), n.clone()))
        .collect();
    if let Some(path) = &a.save {
        let text = serde_json::to_string_pretty(&mapping)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write --save file {}", path.display()))?;
    }

    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for node in now.values() {
        *counts.entry(node.as_str()).or_insert(0) += 1;
    }
    let mapped = now.len() as u64;
    let even = if counts.is_empty() {
        0.0
    } else {
        100.0 / counts.len() as f64
    };
    let (shares, max_over_mean) = fair_shares(&counts, &a.weights);

    let mut r = Report::new(
        "spread",
        &format!(
            "spread ({} source IPs from {cidr}, one connection each)",
            report::int(u64::from(a.ips))
        ),
        c.target,
    );
    r.add("ips", report::int(u64::from(a.ips)), "ips", a.ips);
    r.add("mapped", report::int(mapped), "mapped", mapped);
    r.add(
        "nodes",
        counts.len().to_string(),
        "node_count",
        counts.len(),
    );
    r.add(
        "elapsed",
        report::secs(elapsed),
        "elapsed_s",
        report::round(elapsed.as_secs_f64(), 3),
    );
    // From each node's fair share: without --weight, an even share of the
    // nodes seen.
    let max_dev = shares
        .iter()
        .map(|n| (n.share - n.fair).abs() * 100.0)
        .fold(0.0, f64::max);
    r.add(
        "max deviation",
        if a.weights.is_empty() {
            format!("{max_dev:.2} points from an even {even:.2}%")
        } else {
            format!("{max_dev:.2} points from the weight-fair share")
        },
        "max_deviation_pct",
        report::round(max_dev, 3),
    );
    let fair = if a.weights.is_empty() {
        "the mean"
    } else {
        "the weight-fair"
    };
    let max_text = max_over_mean.map_or("-".to_string(), |m| {
        format!(
            "{m:.3} (IPs over {fair} count, {} node{})",
            shares.len(),
            if shares.len() == 1 { "" } else { "s" }
        )
    });
    r.add(
        "max/mean",
        max_text,
        "max_over_mean",
        max_over_mean.map(|m| report::round(m, 4)),
    );
    let unseen: Vec<String> = shares
        .iter()
        .filter(|n| n.ips == 0)
        .map(|n| n.name.clone())
        .collect();
    if !unseen.is_empty() {
        r.note(format!(
            "given a --weight but reached by no IP: {}",
            unseen.join(", ")
        ));
    }
    let unweighted: Vec<&str> = counts
        .keys()
        .copied()
        .filter(|n| !a.weights.is_empty() && !a.weights.iter().any(|(w, _)| w == n))
        .collect();
    if !unweighted.is_empty() {
        r.note(format!(
            "reached but given no --weight (weight 1): {}",
            unweighted.join(", ")
        ));
    }
    r.json(
        "nodes",
        serde_json::Value::Object(
            shares
                .iter()
                .map(|n| {
                    (
                        n.name.clone(),
                        json!({
                            "ips": n.ips,
                            "share_pct": report::round(n.share * 100.0, 3),
                            "weight": n.weight,
                            "fair_pct": report::round(n.fair * 100.0, 3),
                            "ips_over_fair": report::round(n.ratio, 4),
                        }),
                    )
                })
                .collect(),
        ),
    );
    r.table(Table {
        title: "per node".into(),
        header: ["node", "IPs", "share", "weight", "fair", "IPs/fair"]
            .map(String::from)
            .to_vec(),
        rows: shares
            .iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    report::int(n.ips),
                    format!("{:.2}%", n.share * 100.0),
                    n.weight.to_string(),
                    format!("{:.2}%", n.fair * 100.0),
                    format!("{:.3}", n.ratio),
                ]
            })
            .collect(),
    });
    if let Some(path) = &a.save {
        r.add(
            "saved",
            path.display().to_string(),
            "saved",
            path.display().to_string(),
        );
    }

    let mut exit = if mapped > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if let (Some(before), Some(path)) = (&before, &a.compare) {
        let cmp = compare(before, &mapping);
        r.add(
            "compared with",
            path.display().to_string(),
            "compared_with",
            path.display().to_string(),
        );
        r.add(
            "moved",
            format!(
                "{} of {} IPs ({:.2}%)",
                report::int(cmp.moved),
                report::int(cmp.common),
                cmp.moved_fraction() * 100.0
            ),
            "moved",
            cmp.moved,
        );
        r.json("compared_ips", cmp.common);
        r.json("moved_fraction", report::round(cmp.moved_fraction(), 6));
        r.add(
            "  its node left",
            format!(
                "{}{}",
                report::int(cmp.moved_node_left),
                list(&cmp.nodes_left)
            ),
            "moved_node_left",
            cmp.moved_node_left,
        );
        r.add(
            "  to a new node",
            format!(
                "{}{}",
                report::int(cmp.moved_to_new_node),
                list(&cmp.nodes_joined)
            ),
            "moved_to_new_node",
            cmp.moved_to_new_node,
        );
        r.add(
            "  should not have",
            report::int(cmp.unexpected),
            "moved_unexpectedly",
            cmp.unexpected,
        );
        r.json("nodes_left", cmp.nodes_left.clone());
        r.json("nodes_joined", cmp.nodes_joined.clone());
        if cmp.only_before > 0 || cmp.only_now > 0 {
            r.note(format!(
                "{} IPs mapped only in the earlier run and {} only in this one were not compared",
                report::int(cmp.only_before),
                report::int(cmp.only_now)
            ));
        }
        r.json("only_before", cmp.only_before);
        r.json("only_now", cmp.only_now);
        let mut flows: Vec<_> = cmp.flows.iter().collect();
        flows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        r.json(
            "flows",
            serde_json::Value::Array(
                flows
                    .iter()
                    .map(|((f, t), n)| json!({"from": f, "to": t, "ips": n}))
                    .collect(),
            ),
        );
        if !flows.is_empty() {
            r.table(Table {
                title: "moved (earlier node -> node now)".into(),
                header: vec!["from".into(), "to".into(), "IPs".into()],
                rows: flows
                    .iter()
                    .take(MAX_FLOWS)
                    .map(|((f, t), n)| vec![f.clone(), format!("-> {t}"), report::int(**n)])
                    .collect(),
            });
        }
        if cmp.unexpected > 0 {
            r.note(format!(
                "{} IPs moved between nodes present in both runs; the first {}:",
                report::int(cmp.unexpected),
                cmp.examples.len()
            ));
            for (ip, f, t) in &cmp.examples {
                r.note(format!(
                    "{ip} moved {f} -> {t}, but {f} is still here and {t} was there before"
                ));
            }
            r.json(
                "unexpected_examples",
                serde_json::Value::Array(
                    cmp.examples
                        .iter()
                        .map(|(ip, f, t)| json!({"ip": ip, "from": f, "to": t}))
                        .collect(),
                ),
            );
            exit = ExitCode::from(1);
        }
    }
    r.errors(&errors);
    Ok(Outcome { report: r, exit })
}

fn list(nodes: &[String]) -> String {
    if nodes.is_empty() {
        String::new()
    } else {
        format!(" ({})", nodes.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> Mapping {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn nothing_moved() {
        let a = m(&[("1", "a"), ("2", "b")]);
        let c = compare(&a, &a);
        assert_eq!(c.common, 2);
        assert_eq!(c.moved, 0);
        assert_eq!(c.unexpected, 0);
        assert_eq!(c.moved_fraction(), 0.0);
    }

    #[test]
    fn node_left_explains_moves() {
        let before = m(&[("1", "a"), ("2", "b"), ("3", "c"), ("4", "c")]);
        let now = m(&[("1", "a"), ("2", "b"), ("3", "a"), ("4", "b")]);
        let c = compare(&before, &now);
        assert_eq!(c.moved, 2);
        assert_eq!(c.moved_node_left, 2);
        assert_eq!(c.unexpected, 0);
        assert_eq!(c.nodes_left, vec!["c".to_string()]);
        assert!(c.nodes_joined.is_empty());
        assert_eq!(c.flows[&("c".to_string(), "a".to_string())], 1);
        assert_eq!(c.moved_fraction(), 0.5);
    }

    #[test]
    fn node_joined_explains_moves() {
        let before = m(&[("1", "a"), ("2", "b"), ("3", "a")]);
        let now = m(&[("1", "d"), ("2", "b"), ("3", "a")]);
        let c = compare(&before, &now);
        assert_eq!(c.moved, 1);
        assert_eq!(c.moved_to_new_node, 1);
        assert_eq!(c.unexpected, 0);
        assert_eq!(c.nodes_joined, vec!["d".to_string()]);
    }

    #[test]
    fn unexplained_moves_are_counted() {
        // a and b exist in both runs: 1 moving a -> b is wrong.
        let before = m(&[("1", "a"), ("2", "b"), ("3", "c")]);
        let now = m(&[("1", "b"), ("2", "b"), ("3", "a"), ("4", "a")]);
        let c = compare(&before, &now);
        assert_eq!(c.moved, 2);
        assert_eq!(c.unexpected, 1, "{c:?}");
        assert_eq!(c.moved_node_left, 1, "3 moved because c left");
        assert_eq!(c.examples, vec![("1".into(), "a".into(), "b".into())]);
        assert_eq!(c.only_now, 1);
        assert_eq!(c.only_before, 0);
    }

    #[test]
    fn missing_ips_are_not_compared() {
        let before = m(&[("1", "a"), ("2", "b")]);
        let now = m(&[("1", "a")]);
        let c = compare(&before, &now);
        assert_eq!(c.common, 1);
        assert_eq!(c.only_before, 1);
        assert_eq!(c.moved, 0);
        // b no longer appears at all: it counts as a node that left.
        assert_eq!(c.nodes_left, vec!["b".to_string()]);
    }

    fn counts<'a>(pairs: &[(&'a str, u64)]) -> BTreeMap<&'a str, u64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn max_over_mean_is_the_largest_count_over_the_mean() {
        let (nodes, max) = fair_shares(&counts(&[("a", 30), ("b", 50), ("c", 20)]), &[]);
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(nodes
            .iter()
            .all(|n| n.weight == 1 && (n.fair - 1.0 / 3.0).abs() < 1e-12));
        assert_eq!((nodes[1].ips, nodes[1].share), (50, 0.5));
        // Mean 33.3: b's 50 is 1.5 times it.
        assert!((max.unwrap() - 1.5).abs() < 1e-12, "{max:?}");
        assert!((nodes[2].ratio - 0.6).abs() < 1e-12);
        let (_, even) = fair_shares(&counts(&[("a", 7), ("b", 7)]), &[]);
        assert_eq!(even, Some(1.0));
        assert_eq!(fair_shares(&counts(&[]), &[]), (Vec::new(), None));
    }

    #[test]
    fn weights_make_the_fair_share_proportional_and_unseen_nodes_count_as_zero() {
        let w = |pairs: &[(&str, u32)]| -> Vec<(String, u32)> {
            pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect()
        };
        // b has twice a's weight and twice its IPs: exactly fair.
        let (nodes, max) = fair_shares(
            &counts(&[("a", 100), ("b", 200)]),
            &w(&[("a", 1), ("b", 2)]),
        );
        assert_eq!((nodes[0].fair, nodes[1].weight), (1.0 / 3.0, 2));
        assert!((max.unwrap() - 1.0).abs() < 1e-12, "{nodes:?}");
        // c is given but reached by nobody: it takes a fair share and gets 0,
        // so the others are over theirs (300 IPs, fair 75/150/75).
        let (nodes, max) = fair_shares(
            &counts(&[("a", 100), ("b", 200)]),
            &w(&[("a", 1), ("b", 2), ("c", 1)]),
        );
        assert_eq!(nodes.len(), 3);
        assert_eq!(
            (nodes[2].name.as_str(), nodes[2].ips, nodes[2].ratio),
            ("c", 0, 0.0)
        );
        assert_eq!(nodes[2].fair, 0.25);
        assert!((max.unwrap() - 4.0 / 3.0).abs() < 1e-12, "{nodes:?}");
        // d is seen but given no weight: weight 1.
        let (nodes, _) = fair_shares(&counts(&[("a", 1), ("d", 1)]), &w(&[("a", 3)]));
        assert_eq!((nodes[1].name.as_str(), nodes[1].weight), ("d", 1));
        assert_eq!(nodes[0].fair, 0.75);
        // Nothing mapped: no max/mean.
        assert_eq!(fair_shares(&counts(&[]), &w(&[("a", 1)])).1, None);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("ringlb-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let p = dir.join("bad.json");
        std::fs::write(&p, "[1, 2]").expect("write");
        let e = load_mapping(&p).expect_err("not a mapping");
        assert!(format!("{e:#}").contains("is not a saved spread"), "{e:#}");
        let e = load_mapping(&dir.join("missing.json")).expect_err("missing");
        assert!(
            format!("{e:#}").contains("cannot read --compare file"),
            "{e:#}"
        );
        std::fs::write(&p, r#"{"127.1.0.1": "a"}"#).expect("write");
        assert_eq!(load_mapping(&p).expect("valid")["127.1.0.1"], "a");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
