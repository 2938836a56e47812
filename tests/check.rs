//! `ringlb check` and `ringlb which` run as the real binary against the config
//! fixtures in `tests/fixtures/config/{valid,invalid}` and the shipped configs.
//!
//! Every `*.toml` in a fixture folder is a case, so adding a file adds a case.
//! An invalid fixture starts with `# expect: <substring>` lines; each substring must
//! appear in the stderr of `ringlb check --config FILE`, which must exit 1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fixture folder with fewer files than this fails the test (no vacuous pass).
const MIN_FIXTURES: usize = 5;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ringlb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(args)
        .current_dir(root())
        .env_remove("RUST_LOG")
        .output()
        .expect("cannot run the ringlb binary")
}

fn check(path: &Path) -> Output {
    ringlb(&["check", "--config", path.to_str().expect("UTF-8 path")])
}

/// The `*.toml` files of a fixture folder, sorted; panics if there are too few.
fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = root().join("tests/fixtures/config").join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= MIN_FIXTURES,
        "{} has {} fixture(s); expected at least {MIN_FIXTURES}",
        dir.display(),
        files.len()
    );
    files
}

/// Describe a run for a failure message.
fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Panic with every failure at once.
fn report(kind: &str, total: usize, failures: &[String]) {
    if !failures.is_empty() {
        panic!(
            "{} of {total} {kind} fixture(s) failed:\n\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
}

/// Problems with one valid config's `check` run (empty if it passed).
fn valid_problems(path: &Path) -> Vec<String> {
    let out = check(path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut problems = Vec::new();
    if out.status.code() != Some(0) {
        problems.push("expected exit code 0".to_string());
    }
    if !stdout.contains("OK") {
        problems.push("stdout has no \"OK\" summary".to_string());
    }
    if !out.stderr.is_empty() {
        problems.push("expected nothing on stderr".to_string());
    }
    if problems.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "{}: {}\n{}",
            path.display(),
            problems.join("; "),
            describe(&out)
        )]
    }
}

#[test]
fn valid_fixtures_pass_check() {
    let files = fixtures("valid");
    let failures: Vec<String> = files.iter().flat_map(|f| valid_problems(f)).collect();
    report("valid", files.len(), &failures);
}

#[test]
fn invalid_fixtures_fail_check_with_expected_messages() {
    let files = fixtures("invalid");
    let mut failures = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        // The expectations are in the comment block the file starts with.
        let expects: Vec<&str> = text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# expect:"))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if expects.is_empty() {
            failures.push(format!(
                "{}: no `# expect: <substring>` line at the top",
                path.display()
            ));
            continue;
        }
        let out = check(path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut problems = Vec::new();
        if out.status.code() != Some(1) {
            problems.push("expected exit code 1".to_string());
        }
        if stdout.contains("OK") {
            problems.push("stdout has an \"OK\" summary".to_string());
        }
        for e in &expects {
            if !stderr.contains(e) {
                problems.push(format!("stderr lacks {e:?}"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}:\n  {}\n{}",
                path.display(),
                problems.join("\n  "),
                describe(&out)
            ));
        }
    }
    report("invalid", files.len(), &failures);
}

#[test]
fn shipped_configs_pass_check() {
    let failures: Vec<String> = ["config/ringlb.toml", "config/demo.toml"]
        .iter()
        .flat_map(|p| valid_problems(&root().join(p)))
        .collect();
    report("shipped", 2, &failures);
}

/// `config/ringlb.toml` documents every key, set to its default where there is one.
#[test]
fn example_config_sets_every_key_to_its_default() {
    let path = root().join("config/ringlb.toml");
    let text = std::fs::read_to_string(&path).expect("config/ringlb.toml");
    let set: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    for key in [
        "shutdown_grace",
        "pid_file",
        "name",
        "listen",
        "pool",
        "max_connections",
        "backlog",
        "ipv6_only",
        "points_per_weight",
        "connect_timeout",
        "idle_timeout",
        "connect_attempts",
        "key_prefix_v4",
        "key_prefix_v6",
        "addr",
        "weight",
        "on_node_down",
        "when_all_down",
        "passive_failures",
        "kind",
        "path",
        "host",
        "expect_status",
        "expect_body",
        "port",
        "interval",
        "timeout",
        "rise",
        "fall",
        "accept_proxy_protocol",
        "proxy_protocol",
        "state",
    ] {
        assert!(set.contains(&key), "config/ringlb.toml does not set {key}");
    }
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "shutdown_grace 30s",
        "(max_connections 50000, backlog 4096)",
        "points_per_weight 16384, connect_timeout 2s, idle_timeout 1h, 3 attempts, key /32 v4 /64 v6",
        "health http GET /healthcheck port 8081 expect 200-399 every 2s (timeout 1s, rise 2, fall 3)",
        "passive_failures 3, on_node_down keep, when_all_down reject",
    ] {
        assert!(
            stdout.contains(want),
            "missing {want:?}\n{}",
            describe(&out)
        );
    }
    for node in ["ws-a", "ws-b", "ws-c"] {
        assert!(
            stdout.contains(&format!("node {node} ")),
            "missing node {node}\n{}",
            describe(&out)
        );
    }
}

#[test]
fn summary_lists_listener_pool_and_node_names() {
    let out = check(&root().join("tests/fixtures/config/valid/multi.toml"));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("OK: 4 listeners, 4 pools, 7 nodes"),
        "{}",
        describe(&out)
    );
    let mut missing = Vec::new();
    for listener in ["http", "http-alt", "api", "db"] {
        missing.push(format!("listener {listener} "));
    }
    for pool in ["web", "api", "spare", "db"] {
        missing.push(format!("pool {pool} "));
    }
    // `192.0.2.30:80` has no name: it is named after its addr.
    for node in [
        "web-1",
        "web-2",
        "api-1",
        "api-2",
        "api-3",
        "192.0.2.30:80",
        "db-primary",
    ] {
        missing.push(format!("node {node} "));
    }
    missing.retain(|want| !stdout.contains(want.as_str()));
    assert!(
        missing.is_empty(),
        "summary lacks {missing:?}\n{}",
        describe(&out)
    );
}

/// `ringlb which ... | head -1`: the reader goes away after one line; ringlb
/// exits 0 and does not panic on the broken pipe.
#[test]
fn which_into_a_reader_that_stops_early_is_not_an_error() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args([
            "which",
            "--config",
            "tests/fixtures/config/valid/weights.toml",
            "-",
        ])
        .current_dir(root())
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run the ringlb binary");
    // Far more output than a pipe holds (64 KiB), so the write must hit the
    // closed pipe.
    let ips: String = (0..20_000u32)
        .map(|i| format!("10.{}.{}.{}\n", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(ips.as_bytes()).unwrap();
    drop(stdin);
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is dropped here: the pipe's read end closes.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!first.is_empty());
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn which_prints_one_line_per_ip() {
    let config = "tests/fixtures/config/valid/weights.toml";
    let ips = ["127.0.0.1", "10.0.0.1"];
    let out = ringlb(&["which", "--config", config, ips[0], ips[1]]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains(" -> ")).collect();
    assert_eq!(
        lines.len(),
        ips.len(),
        "expected one ` -> ` line per IP\n{}",
        describe(&out)
    );
    let nodes = ["small", "medium", "large"];
    for (line, ip) in lines.iter().zip(ips) {
        assert!(
            line.trim_start().starts_with(ip),
            "{line:?} is not for {ip}"
        );
        assert!(line.contains("then:"), "{line:?} has no `then:`");
        let (_, after) = line.split_once(" -> ").expect("arrow");
        let node = after.split_whitespace().next().unwrap_or("");
        assert!(nodes.contains(&node), "{line:?}: unknown node {node:?}");
        // The fallback order is the other two nodes, each once.
        let (_, then) = line.split_once("then:").expect("then");
        let mut rest: Vec<&str> = then.split(',').map(str::trim).collect();
        rest.sort_unstable();
        let mut others: Vec<&str> = nodes.iter().copied().filter(|n| *n != node).collect();
        others.sort_unstable();
        assert_eq!(rest, others, "{line:?}: fallback is not the other nodes");
    }
}

/// One `which` answer line, split into its fields:
/// `IP -> NODE (ADDR)  then: A, B  [not tried (beyond connect_attempts = N): C, D]  [X is down]`.
#[derive(Debug, PartialEq)]
struct WhichLine {
    ip: String,
    node: String,
    then: Vec<String>,
    /// `N` and the names of the `[not tried ...]` field, when there is one.
    not_tried: Option<(u32, Vec<String>)>,
}

fn names(list: &str) -> Vec<String> {
    if list == "-" {
        return Vec::new();
    }
    list.split(", ").map(str::to_string).collect()
}

fn which_line(line: &str) -> WhichLine {
    let (ip, rest) = line.trim().split_once(" -> ").expect("arrow");
    let mut fields = rest.split("  ");
    let node = fields
        .next()
        .unwrap()
        .split(" (")
        .next()
        .unwrap()
        .to_string();
    let then = fields.next().and_then(|f| f.strip_prefix("then: "));
    let then = names(then.unwrap_or_else(|| panic!("no `then:` in {line:?}")));
    let mut not_tried = None;
    for f in fields {
        if let Some(f) = f.strip_prefix("[not tried (beyond connect_attempts = ") {
            let (n, list) = f.split_once("): ").expect("not tried list");
            let list = list.strip_suffix(']').expect("closing bracket");
            not_tried = Some((n.parse().unwrap(), names(list)));
        } else {
            assert!(f.ends_with(" is down]"), "unknown field {f:?} in {line:?}");
        }
    }
    WhichLine {
        ip: ip.trim().to_string(),
        node,
        then,
        not_tried,
    }
}

/// `which` marks where the balancer stops: the node and its `then:` list are
/// the first `connect_attempts` of the order; the rest of the same order is
/// listed as not tried, naming the setting. Checked against the full order
/// (`connect_attempts` as large as the pool) for 100 client IPs.
#[test]
fn which_marks_the_nodes_beyond_connect_attempts_as_not_tried() {
    let dir = tempfile::tempdir().unwrap();
    let config = |attempts: u32| {
        let mut text = format!(
            "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
             [pools.p]\nconnect_attempts = {attempts}\n"
        );
        for i in 1..=5 {
            text.push_str(&format!(
                "[[pools.p.nodes]]\nname = \"n{i}\"\naddr = \"192.0.2.{i}:80\"\n"
            ));
        }
        let path = dir.path().join(format!("attempts{attempts}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let ips: Vec<String> = (0..100)
        .map(|i| format!("10.{}.{}.7", i / 10, i % 10))
        .collect();
    let answers = |attempts: u32| -> Vec<WhichLine> {
        let path = config(attempts);
        let mut args = vec!["which", "--config", path.to_str().unwrap()];
        args.extend(ips.iter().map(String::as_str));
        let out = ringlb(&args);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<WhichLine> = stdout
            .lines()
            .filter(|l| l.contains(" -> "))
            .map(which_line)
            .collect();
        assert_eq!(lines.len(), ips.len(), "{stdout}");
        lines
    };
    let full = answers(16);
    let mut nodes_seen = std::collections::BTreeSet::new();
    for a in &full {
        assert_eq!(a.then.len(), 4, "{a:?}");
        assert_eq!(a.not_tried, None, "every node is tried: {a:?}");
        nodes_seen.insert(a.node.clone());
    }
    assert!(
        nodes_seen.len() >= 3,
        "the IPs land on few nodes: {nodes_seen:?}"
    );
    for attempts in [1, 2, 4] {
        for (a, f) in answers(attempts).iter().zip(&full) {
            assert_eq!((&a.ip, &a.node), (&f.ip, &f.node));
            let tried = attempts as usize - 1;
            assert_eq!(a.then, f.then[..tried], "{attempts}: {a:?}");
            let (n, rest) = a.not_tried.clone().unwrap_or_else(|| panic!("{a:?}"));
            assert_eq!(n, attempts);
            assert_eq!(rest, f.then[tried..], "{attempts}: {a:?} vs {f:?}");
        }
    }
}

/// The README's `which` examples are what the tool prints for
/// `config/demo.toml`: as shipped, with `connect_attempts = 2`, and with demo-b
/// off the ring (the `--probe` example, where demo-b is down; here it is
/// disabled in the file, which takes it off the ring the same way).
#[test]
fn readme_which_examples_are_what_the_tool_prints() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let demo = std::fs::read_to_string(root().join("config/demo.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let which = |text: &str, ips: &[&str]| -> Vec<String> {
        let path = dir.path().join("demo.toml");
        std::fs::write(&path, text).unwrap();
        let mut args = vec!["which", "--config", path.to_str().unwrap()];
        args.extend(ips);
        let out = ringlb(&args);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(" -> "))
            .map(str::to_string)
            .collect()
    };
    let in_readme = |line: &str| {
        assert!(
            readme
                .lines()
                .any(|r| r == line || r.starts_with(&format!("{line}  ["))),
            "README lacks the line `which` prints:\n{line}"
        );
    };
    let shipped = which(&demo, &["127.0.0.1", "2001:db8::1"]);
    shipped.iter().for_each(|l| in_readme(l));
    let two = demo.replace("[pools.demo]\n", "[pools.demo]\nconnect_attempts = 2\n");
    in_readme(&which(&two, &["127.0.0.1", "2001:db8::1"])[0]);
    // 127.0.0.4 belongs to demo-b while every node is up.
    assert!(which(&demo, &["127.0.0.4"])[0].contains("-> demo-b ("));
    let b_off = demo.replace(
        "name = \"demo-b\"\n",
        "name = \"demo-b\"\nstate = \"disabled\"\n",
    );
    assert_ne!(b_off, demo);
    which(&b_off, &["127.0.0.1", "127.0.0.4"])
        .iter()
        .for_each(|l| in_readme(l));
}

/// The README's `which --spread` example is what the tool prints for
/// `config/demo.toml` (a change of the ring's default changes both: rerun the
/// command and paste its output).
#[test]
fn readme_spread_example_is_what_which_prints() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let cmd = "which --config config/demo.toml --spread 100000";
    let example = format!("$ ringlb {cmd}\n");
    let start = readme.find(&example).expect("README has the example") + example.len();
    let block = &readme[start..];
    let block = &block[..block.find("```").expect("end of the example")];
    let out = ringlb(&cmd.split(' ').collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        block,
        String::from_utf8_lossy(&out.stdout),
        "README example vs `ringlb {cmd}`"
    );
}

#[test]
fn check_and_which_show_proxy_protocol_bounded_load_access_and_node_states() {
    let config = "tests/fixtures/config/valid/scaleout.toml";
    let out = ringlb(&["check", "--config", config]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "access: PROXY header required from 2 networks (timeout 500ms)",
        "proxy_protocol v2, balance_factor 1.25",
        "weight 1, state drain",
        "weight 1, state disabled",
    ] {
        assert!(stdout.contains(want), "check lacks {want:?}:\n{stdout}");
    }
    let out = ringlb(&[
        "check",
        "--config",
        "tests/fixtures/config/valid/access.toml",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for want in [
        "bearer token required",
        "runs as user root, group 0 after binding",
        "access: allow 4 networks, deny 1 network, max_connections_per_ip 10, new_connections_per_ip 5/s burst 20",
    ] {
        assert!(stdout.contains(want), "check lacks {want:?}:\n{stdout}");
    }
    // Nodes drained or disabled in the file are off the ring `which` computes.
    let out = ringlb(&["which", "--config", config, "10.1.2.3", "2001:db8::1"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("node b: state = \"drain\" in the config (off the ring"),
        "{stdout}"
    );
    assert!(
        stdout.contains("node c: state = \"disabled\" in the config"),
        "{stdout}"
    );
    for line in stdout.lines().filter(|l| l.contains(" -> ")) {
        assert!(line.contains(" -> a (127.0.0.1:9001)  then: -"), "{line}");
    }
}

/// One row of a `which --spread` table: node, weight, IPs, IPs/fair.
type SpreadRow = (String, u32, u64, f64);

/// The `which --spread` table of one pool: the rows of the nodes on the ring,
/// the names off it, and the closing max/mean line.
fn spread_table(stdout: &str) -> (Vec<SpreadRow>, Vec<String>, String) {
    let mut rows = Vec::new();
    let mut off = Vec::new();
    let mut lines = stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("node ") || !l.contains("IPs/fair"));
    lines.next().expect("a table header");
    for l in lines.by_ref() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if l.starts_with("  max/mean ") {
            return (rows, off, l.to_string());
        }
        if l.contains("off the ring: ") {
            off.push(f[0].to_string());
            continue;
        }
        assert_eq!(f.len(), 8, "{l:?}");
        rows.push((
            f[0].to_string(),
            f[1].parse().unwrap(),
            f[5].parse().unwrap(),
            f[7].parse().unwrap(),
        ));
    }
    panic!("no max/mean line in\n{stdout}");
}

#[test]
fn which_spread_counts_pseudo_random_ips_against_the_weight_fair_share() {
    let config = "tests/fixtures/config/valid/weights.toml";
    let run = |extra: &[&str]| {
        let mut args = vec!["which", "--config", config];
        args.extend(extra);
        let out = ringlb(&args);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = run(&["--spread", "50000"]);
    let (rows, off, last) = spread_table(&out);
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names, ["small", "medium", "large"], "{out}");
    assert!(off.is_empty(), "{out}");
    assert_eq!(rows.iter().map(|r| r.2).sum::<u64>(), 50_000, "{out}");
    // large (weight 256 of 261) gets nearly all; max/mean is the largest IPs/fair.
    assert!(rows[2].2 > 45_000, "{out}");
    let max = rows.iter().map(|r| r.3).fold(0.0, f64::max);
    assert!(
        last.starts_with(&format!(
            "  max/mean {max:.3} over 3 nodes (50000 IPs), ring max/mean "
        )),
        "{last}"
    );
    assert!(last.ends_with(" (exact)"), "{last}");
    // Deterministic: the default seed is fixed; another seed gives other counts.
    assert_eq!(run(&["--spread", "50000"]), out);
    assert_eq!(run(&["--spread", "50000", "--seed", "1"]), out);
    assert_ne!(run(&["--spread", "50000", "--seed", "2"]), out);
    // With IPs as well: their answer lines, then the spread.
    let both = run(&["--spread", "50000", "10.0.0.1"]);
    assert_eq!(
        both.lines().filter(|l| l.contains(" -> ")).count(),
        1,
        "{both}"
    );
    assert!(both.ends_with(&format!("{last}\n")), "{both}");

    // Nodes off the ring in the file are listed and out of the fair share.
    let scaleout = ringlb(&[
        "which",
        "--config",
        "tests/fixtures/config/valid/scaleout.toml",
        "--spread",
        "1000",
    ]);
    let stdout = String::from_utf8_lossy(&scaleout.stdout);
    let (rows, off, last) = spread_table(&stdout);
    assert_eq!(rows.len(), 1, "{stdout}");
    assert_eq!((rows[0].2, rows[0].3), (1000, 1.0), "{stdout}");
    assert_eq!(off, ["b", "c"], "{stdout}");
    assert!(last.contains(" over 1 node (1000 IPs)"), "{last}");

    // Out of bounds: a usage error naming the range.
    for n in ["0", "10000001", "many"] {
        let bad = ringlb(&["which", "--config", config, "--spread", n]);
        assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(err.contains("--spread <N>"), "{err}");
    }
    let bad = ringlb(&["which", "--config", config, "--spread", "0"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("0 is not in 1..=10000000"),
        "{}",
        describe(&bad)
    );
}
