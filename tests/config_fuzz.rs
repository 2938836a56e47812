//! Property tests of the config loader: `Config::parse` on generated and on mutated
//! TOML must return `Ok` or `Err` and never panic; an error names the source file;
//! an accepted config summarises without panicking; parsing is deterministic.
//!
//! No network: node addresses given as `host:port` are resolved at load, so every
//! input is screened first ([`would_resolve`] mirrors `config::resolve`) and a case
//! that would look up a host name other than `localhost` (answered from
//! /etc/hosts) is skipped and counted, never parsed.
//!
//! Seeds: `CONFIG_FUZZ_SEED=N` replays a run; otherwise a fresh seed is drawn and
//! printed. Failures are not persisted to files (the tree stays clean).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed, TestCaseError, TestRunner};
use ringlb::{Config, ConfigError};

/// Cases per property; `CONFIG_FUZZ_CASES=N` for a longer hunt.
fn cases() -> u32 {
    std::env::var("CONFIG_FUZZ_CASES")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(2000)
}

/// The seed of this run: `CONFIG_FUZZ_SEED`, or drawn from the clock. Printed.
fn seed(what: &str) -> u64 {
    let seed = std::env::var("CONFIG_FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("{what}: seed {seed} (replay with CONFIG_FUZZ_SEED={seed})");
    seed
}

fn runner(seed: u64) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    })
}

/// Mirrors `config::resolve`: true when loading `s` as a node address would ask
/// the system resolver about a host name.
fn would_resolve(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return false;
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    !host.is_empty() && port.parse::<u16>().is_ok()
}

/// True when `text` is safe to load without the network: it does not parse as TOML
/// (so loading stops at the syntax error, before any address is resolved), or none
/// of its strings, anywhere, would be resolved except `localhost:PORT`.
fn network_free(text: &str) -> bool {
    fn walk(v: &toml::Value) -> bool {
        match v {
            toml::Value::String(s) => {
                !would_resolve(s) || s.rsplit_once(':').is_some_and(|(h, _)| h == "localhost")
            }
            toml::Value::Array(a) => a.iter().all(walk),
            toml::Value::Table(t) => t.values().all(walk),
            _ => true,
        }
    }
    match text.parse::<toml::Table>() {
        Ok(t) => t.values().all(walk),
        Err(_) => true,
    }
}

/// The checks every input gets. `source` is the path errors must name.
fn check_text(text: &str, source: &Path) -> Result<(), TestCaseError> {
    let first = Config::parse(text, source);
    let second = Config::parse(text, source);
    let shown = source.display().to_string();
    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            prop_assert_eq!(a, b, "same text, different configs");
            let s = ringlb::cli::check::summary(a);
            prop_assert!(!s.trim().is_empty(), "empty summary");
            prop_assert!(!a.listeners.is_empty() && !a.pools.is_empty());
            for p in a.pools.values() {
                prop_assert!(!p.nodes.is_empty(), "a pool without nodes was accepted");
            }
        }
        (Err(a), Err(b)) => {
            let (ta, tb) = (a.to_string(), b.to_string());
            prop_assert_eq!(&ta, &tb, "same text, different errors");
            prop_assert!(!ta.trim().is_empty(), "empty error text");
            prop_assert!(ta.contains(&shown), "error does not name {}: {}", shown, ta);
            let messages = a.messages();
            prop_assert!(!messages.is_empty(), "no messages: {}", ta);
            for m in &messages {
                prop_assert!(m.contains(&shown), "message without the file: {}", m);
            }
            match a {
                ConfigError::Syntax { line, column, .. } => {
                    let lines = text.split('\n').count().max(1);
                    prop_assert!(
                        *line >= 1 && *line <= lines && *column >= 1,
                        "position {}:{} outside a text of {} lines: {}",
                        line,
                        column,
                        lines,
                        ta
                    );
                }
                ConfigError::Invalid { problems, .. } => {
                    prop_assert!(!problems.is_empty(), "Invalid with no problem: {}", ta);
                    for p in problems {
                        prop_assert!(
                            !p.key.is_empty() && !p.reason.is_empty(),
                            "problem without key or reason: {:?}",
                            p
                        );
                    }
                }
                ConfigError::Io { .. } => prop_assert!(false, "parse gave an Io error: {}", ta),
            }
        }
        _ => prop_assert!(
            false,
            "same text, Ok once and Err once: {:?} / {:?}",
            first.as_ref().err().map(|e| e.to_string()),
            second.as_ref().err().map(|e| e.to_string())
        ),
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Generated configs.
// ---------------------------------------------------------------------------

/// A TOML basic string with every needed escape.
fn qs(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn one_of(values: &[&str]) -> BoxedStrategy<String> {
    let v: Vec<String> = values.iter().map(|s| s.to_string()).collect();
    proptest::sample::select(v).boxed()
}

/// Free text: names, paths, garbage (rendered as TOML strings by the caller).
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => one_of(&["a", "web", "node-1", "ws_a", "main", "p", "db"]),
        1 => one_of(&["", " ", "\t", "a b", "a.b", "节点", "wéb", "🦀", "\u{0}", "\u{feff}x", "'", "\"", "\\", "[x]", "127.0.0.1:80"]),
        1 => "[a-z0-9_-]{1,12}",
        // No `:` in random text, so no string looks like `host:port`.
        1 => any::<String>().prop_map(|s| s.chars().take(40).collect::<String>().replace(':', "_")),
        1 => (1usize..5000).prop_map(|n| "x".repeat(n)),
    ]
    .boxed()
}

/// A value (already rendered as TOML) for a duration key.
fn duration_value() -> BoxedStrategy<String> {
    prop_oneof![
        4 => one_of(&["500ms", "2s", "5m", "1h", "1d", "1h30m", "10ms", "100ms", "30d", "24h", "1ms", "0s", "750ms", "5 m", "1 hour"]).prop_map(|s| qs(&s)),
        3 => one_of(&[
            "1x", "-1s", "99999999999h", "", " ", "1.5s", "1ns", "1us", "1500us", "s", "ms",
            "18446744073709551615s", "18446744073709551616s", "9223372036854775807d",
            "99999999999999999999999999ms", "1h-1m", "+1s", "１s", "1s1s1s1s", "0", "1",
            "1e3ms", "nan", "∞", "1y", "1M", "1month", "100000d", "31d", "30d1ms",
        ])
        .prop_map(|s| qs(&s)),
        1 => (0u64..u64::MAX, one_of(&["ns", "us", "ms", "s", "m", "h", "d", "w", "y", ""])).prop_map(|(n, u)| qs(&format!("{n}{u}"))),
        1 => scalar_garbage(),
    ]
    .boxed()
}

/// Values of the wrong type, or numbers at and past every edge.
fn scalar_garbage() -> BoxedStrategy<String> {
    prop_oneof![
        one_of(&[
            "0",
            "-1",
            "1",
            "2",
            "255",
            "256",
            "65535",
            "65536",
            "4294967295",
            "4294967296",
            "9223372036854775807",
            "-9223372036854775808",
            "99999999999999999999",
            "1.5",
            "-0.0",
            "nan",
            "inf",
            "-inf",
            "1e308",
            "true",
            "false",
            "[]",
            "[1, 2]",
            "{}",
            "{ a = 1 }",
            "1979-05-27T07:32:00Z",
            "0x10",
            "0o7",
            "0b1",
            "1_000",
            "\"\"",
            "\"5\"",
            "'literal'",
            "\"\"\"multi\nline\"\"\"",
        ]),
        any::<i64>().prop_map(|n| n.to_string()),
        text().prop_map(|s| qs(&s)),
    ]
    .boxed()
}

/// An integer key whose valid range is `lo..=hi`.
fn int_value(lo: i64, hi: i64) -> BoxedStrategy<String> {
    prop_oneof![
        4 => (lo..=hi).prop_map(|n| n.to_string()),
        2 => Just(vec![lo - 1, hi + 1, hi.saturating_mul(2), lo.saturating_sub(1000), i64::MAX, i64::MIN])
            .prop_flat_map(proptest::sample::select)
            .prop_map(|n| n.to_string()),
        1 => scalar_garbage(),
    ]
    .boxed()
}

/// Node addresses that never need a DNS lookup: IP literals, `localhost`, and
/// strings the parser refuses before resolving (no port, bad port, empty host).
fn node_addr() -> BoxedStrategy<String> {
    let raw = prop_oneof![
        5 => (1u8..=254, 0u8..=255, 1u16..=65535).prop_map(|(a, b, p)| format!("127.{a}.{b}.1:{p}")),
        1 => (1u16..=65535).prop_map(|p| format!("[::1]:{p}")),
        1 => (1u16..=65535).prop_map(|p| format!("localhost:{p}")),
        2 => one_of(&[
            "127.0.0.1:9001", "10.0.0.1:80", "192.0.2.7:9000", "[2001:db8::1]:443",
            "[::ffff:127.0.0.1]:9001", "[fe80::1%1]:80", "127.0.0.1:0", "0.0.0.0:80", "[::]:80",
            "255.255.255.255:80", "224.0.0.1:80", "[ff02::1]:80", "127.0.0.1", "[::1]", "",
            ":80", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:http",
            "127.0.0.1:80:80x", "[::1]:", "::1]:x", "localhost", "localhost:", "localhost:99999",
            "localhost:0", "节点", "a b", "host:port",
        ]),
    ];
    prop_oneof![6 => raw.prop_map(|s| qs(&s)), 1 => scalar_garbage()].boxed()
}

fn listen_addr() -> BoxedStrategy<String> {
    prop_oneof![
        4 => (0u16..=65535).prop_map(|p| qs(&format!("127.0.0.1:{p}"))),
        1 => one_of(&[
            "127.0.0.1:0", "0.0.0.0:8080", "[::]:8080", "[::1]:0", "[::ffff:127.0.0.1]:80",
            "127.0.0.1", "localhost:80", "", "127.0.0.1:65536", "[::1]:", "*:http", "0.0.0.0:0",
            "127.0.0.1:8080", "0.0.0.0:8080",
        ])
        .prop_map(|s| qs(&s)),
        1 => scalar_garbage(),
    ]
    .boxed()
}

/// `key = value` lines for a table: known keys with their value strategies, plus
/// (sometimes) an unknown key, and (rarely) a key twice.
type Keys = Vec<(&'static str, BoxedStrategy<String>)>;

fn entries(keys: Keys, unknown: &'static [&'static str]) -> BoxedStrategy<Vec<(String, String)>> {
    let n = keys.len();
    let picks: Vec<BoxedStrategy<Option<(String, String)>>> = keys
        .into_iter()
        .map(|(k, v)| {
            proptest::option::weighted(0.6, v.prop_map(move |v| (k.to_string(), v))).boxed()
        })
        .collect();
    let extra = proptest::option::weighted(
        0.08,
        (proptest::sample::select(unknown.to_vec()), scalar_garbage())
            .prop_map(|(k, v)| (k.to_string(), v)),
    );
    (picks, extra, 0usize..40 * n.max(1))
        .prop_map(move |(picks, extra, dup)| {
            let mut v: Vec<(String, String)> = picks.into_iter().flatten().collect();
            v.extend(extra);
            // Rarely, repeat one key (a TOML error).
            if dup < v.len() && dup % 7 == 0 {
                let again = v[dup].clone();
                v.push(again);
            }
            v
        })
        .boxed()
}

fn render(entries: &[(String, String)], out: &mut String) {
    for (k, v) in entries {
        out.push_str(k);
        out.push_str(" = ");
        out.push_str(v);
        out.push('\n');
    }
}

#[derive(Debug, Clone)]
struct Pool {
    name: String,
    keys: Vec<(String, String)>,
    health: Option<Vec<(String, String)>>,
    agent: Option<Vec<(String, String)>>,
    nodes: Vec<Vec<(String, String)>>,
}

fn pool_name() -> BoxedStrategy<String> {
    prop_oneof![
        6 => one_of(&["web", "p", "db", "main"]),
        1 => text(),
    ]
    .boxed()
}

fn pool_strategy() -> BoxedStrategy<Pool> {
    let keys: Keys = vec![
        ("points_per_weight", int_value(1, 10_000)),
        ("connect_timeout", duration_value()),
        ("idle_timeout", duration_value()),
        ("connect_attempts", int_value(1, 16)),
        ("key_prefix_v4", int_value(1, 32)),
        ("key_prefix_v6", int_value(1, 128)),
        ("on_node_down", prop_oneof![3 => one_of(&["\"keep\"", "\"close\""]), 1 => one_of(&["\"Keep\"", "\"\"", "\"drop\"", "1"])].boxed()),
        ("when_all_down", prop_oneof![3 => one_of(&["\"reject\"", "\"any\""]), 1 => one_of(&["\"all\"", "\"\"", "true"])].boxed()),
        ("passive_failures", int_value(0, 1000)),
        ("close_rate", int_value(0, 100_000)),
        ("rehome", prop_oneof![
            3 => (duration_value(), int_value(1, 100_000)).prop_map(|(a, r)| format!("{{ after = {a}, rate = {r} }}")).boxed(),
            1 => one_of(&["{}", "{ rate = 0 }", "{ after = 5 }", "{ every = \"1s\" }", "true", "\"30s\""]),
        ].boxed()),
    ];
    let health: Keys = vec![
        ("kind", prop_oneof![3 => one_of(&["\"tcp\"", "\"http\"", "\"none\""]), 1 => one_of(&["\"HTTP\"", "\"udp\"", "\"\"", "0"])].boxed()),
        ("path", prop_oneof![one_of(&["/", "/healthcheck", "no-slash", "", "/ä", "/a b"]), text()].prop_map(|s| qs(&s)).boxed()),
        ("host", text().prop_map(|s| qs(&s)).boxed()),
        ("expect_status", prop_oneof![
            3 => one_of(&["200-399", "200", "200,204,300-399", "100-599"]),
            2 => one_of(&["599-100", "99", "600", "abc", "", "200-", "-", "200--300", "1-99999999999999999999", ",", "200,,204", " 200 ", "２００"]),
            1 => text(),
        ].prop_map(|s| qs(&s)).boxed()),
        ("expect_body", prop_oneof![one_of(&["ok", ""]), (1000usize..1100).prop_map(|n| "b".repeat(n)), text()].prop_map(|s| qs(&s)).boxed()),
        ("port", int_value(1, 65535)),
        ("interval", duration_value()),
        ("timeout", duration_value()),
        ("rise", int_value(1, 100)),
        ("fall", int_value(1, 100)),
    ];
    let agent: Keys = vec![
        ("port", int_value(1, 65535)),
        ("interval", duration_value()),
        ("timeout", duration_value()),
        (
            "send",
            prop_oneof![one_of(&["status\\n", "", "a"]), text()]
                .prop_map(|s| qs(&s))
                .boxed(),
        ),
    ];
    let node: Keys = vec![
        ("name", text().prop_map(|s| qs(&s)).boxed()),
        ("addr", node_addr()),
        ("addr", node_addr()),
        ("weight", int_value(1, 256)),
        ("max_connections", int_value(1, 1_000_000)),
    ];
    (
        pool_name(),
        entries(keys, &["points", "idle", "nodes_x", "health_kind", "ключ"]),
        proptest::option::weighted(0.5, entries(health, &["intervall", "method", "expect"])),
        proptest::option::weighted(0.3, entries(agent, &["agent_port", "inter", "addr"])),
        proptest::collection::vec(entries(node, &["weigth", "port", "host"]), 0..5),
    )
        .prop_map(|(name, keys, health, agent, nodes)| Pool {
            name,
            keys,
            health,
            agent,
            nodes: nodes
                .into_iter()
                // `addr` is listed twice above to make it likely; keep the first
                // unless the duplicate is wanted (1 in 8).
                .enumerate()
                .map(|(i, mut n)| {
                    if i % 8 != 7 {
                        let mut seen = false;
                        n.retain(|(k, _)| {
                            let dup = k == "addr" && seen;
                            seen |= k == "addr";
                            !dup
                        });
                    }
                    n
                })
                .collect(),
        })
        .boxed()
}

fn wild_config() -> BoxedStrategy<String> {
    let top: Keys = vec![
        ("shutdown_grace", duration_value()),
        ("workers", int_value(1, 1024)),
        (
            "pid_file",
            prop_oneof![
                one_of(&["/tmp/ringlb-fuzz.pid", "", "relative.pid", "/"]),
                text()
            ]
            .prop_map(|s| qs(&s))
            .boxed(),
        ),
    ];
    let listener: Keys = vec![
        ("name", text().prop_map(|s| qs(&s)).boxed()),
        ("listen", listen_addr()),
        ("pool", pool_name().prop_map(|s| qs(&s)).boxed()),
        ("max_connections", int_value(1, 1_000_000)),
        ("backlog", int_value(1, 65_535)),
        (
            "ipv6_only",
            prop_oneof![3 => one_of(&["true", "false"]), 1 => scalar_garbage()].boxed(),
        ),
        ("max_connection_duration", duration_value()),
        ("max_connection_duration_jitter", duration_value()),
        ("access_log_interval", duration_value()),
    ];
    (
        entries(top, &["shutdown", "listeners", "admin", "pool"]),
        proptest::option::weighted(0.3, listen_addr()),
        proptest::collection::vec(entries(listener, &["max_conections", "port", "addr"]), 0..4),
        proptest::collection::vec(pool_strategy(), 0..4),
        any::<bool>(),
    )
        .prop_map(|(top, admin, listeners, pools, name_pools_first)| {
            let mut s = String::new();
            render(&top, &mut s);
            if let Some(a) = admin {
                s.push_str("\n[admin]\nlisten = ");
                s.push_str(&a);
                s.push('\n');
            }
            let mut ls = String::new();
            for l in &listeners {
                ls.push_str("\n[[listener]]\n");
                render(l, &mut ls);
            }
            let mut ps = String::new();
            for p in &pools {
                let name = qs(&p.name);
                ps.push_str(&format!("\n[pools.{name}]\n"));
                render(&p.keys, &mut ps);
                if let Some(h) = &p.health {
                    ps.push_str(&format!("\n[pools.{name}.health]\n"));
                    render(h, &mut ps);
                }
                if let Some(a) = &p.agent {
                    ps.push_str(&format!("\n[pools.{name}.agent]\n"));
                    render(a, &mut ps);
                }
                for n in &p.nodes {
                    ps.push_str(&format!("\n[[pools.{name}.nodes]]\n"));
                    render(n, &mut ps);
                }
            }
            if name_pools_first {
                s.push_str(&ps);
                s.push_str(&ls);
            } else {
                s.push_str(&ls);
                s.push_str(&ps);
            }
            s
        })
        .boxed()
}

/// One table of a document: its header line (empty for the top level) and entries.
type Table = (String, Vec<(String, String)>);

/// A config that is valid by construction (values in range, references resolved,
/// health keys matching the kind), as tables.
fn valid_tables() -> BoxedStrategy<Vec<Table>> {
    let pool = (
        one_of(&["1", "10", "160", "1000"]),
        one_of(&["\"1ms\"", "\"750ms\"", "\"2s\"", "\"5m\""]),
        one_of(&["\"100ms\"", "\"2s\"", "\"1h\"", "\"1h30m\"", "\"30d\""]),
        1u32..=16,
        1u32..=32,
        1u32..=128,
        one_of(&["\"keep\"", "\"close\""]),
        one_of(&["\"reject\"", "\"any\""]),
        0u32..=1000,
        0usize..4, // health: none table, tcp, http, none
        proptest::collection::vec((any::<bool>(), 0usize..3, 1u32..=256), 1..5),
        proptest::collection::vec(any::<bool>(), 10),
    );
    (
        proptest::collection::vec(pool, 1..4),
        proptest::collection::vec((0usize..4, 0usize..3, any::<bool>()), 1..4),
        proptest::option::of(one_of(&["\"0s\"", "\"500ms\"", "\"30s\"", "\"1d\""])),
        proptest::option::of(1u32..=1024),
        any::<bool>(),
    )
        .prop_map(|(pools, listeners, grace, workers, admin)| {
            const POOLS: [&str; 4] = ["web", "p", "db-1", "main_2"];
            let mut t: Vec<Table> = Vec::new();
            let mut top = Vec::new();
            if let Some(g) = grace {
                top.push(("shutdown_grace".to_string(), g));
            }
            if let Some(w) = workers {
                top.push(("workers".to_string(), w.to_string()));
            }
            t.push((String::new(), top));
            if admin {
                t.push((
                    "[admin]".into(),
                    vec![("listen".into(), "\"127.0.0.1:0\"".into())],
                ));
            }
            let npools = pools.len();
            for (i, (which, listen, v6only)) in listeners.iter().enumerate() {
                let mut e = vec![
                    ("name".to_string(), qs(&format!("l{i}"))),
                    (
                        "listen".to_string(),
                        qs(["127.0.0.1:0", "[::1]:0", "127.0.0.2:0"][*listen]),
                    ),
                    ("pool".to_string(), qs(POOLS[which % npools])),
                ];
                if *v6only {
                    e.push(("ipv6_only".into(), "false".into()));
                    e.push(("max_connections".into(), "1000000".into()));
                    e.push(("backlog".into(), "65535".into()));
                }
                t.push(("[[listener]]".into(), e));
            }
            for (pi, p) in pools.into_iter().enumerate() {
                let (ppw, ct, it, att, k4, k6, ond, wad, pf, health, nodes, set) = p;
                let name = qs(POOLS[pi]);
                let mut e = Vec::new();
                let kv = [
                    ("points_per_weight", ppw),
                    ("connect_timeout", ct),
                    ("idle_timeout", it),
                    ("connect_attempts", att.to_string()),
                    ("key_prefix_v4", k4.to_string()),
                    ("key_prefix_v6", k6.to_string()),
                    ("on_node_down", ond),
                    ("when_all_down", wad),
                ];
                for (j, (k, v)) in kv.into_iter().enumerate() {
                    if set[j] {
                        e.push((k.to_string(), v));
                    }
                }
                if health != 3 && set[8] {
                    e.push(("passive_failures".to_string(), pf.to_string()));
                }
                t.push((format!("[pools.{name}]"), e));
                let h = match health {
                    1 => Some(vec![
                        ("kind".to_string(), "\"tcp\"".to_string()),
                        ("interval".to_string(), "\"1s\"".to_string()),
                        ("timeout".to_string(), "\"50ms\"".to_string()),
                        ("rise".to_string(), "1".to_string()),
                        ("fall".to_string(), "100".to_string()),
                    ]),
                    2 => Some(vec![
                        ("kind".to_string(), "\"http\"".to_string()),
                        ("path".to_string(), "\"/healthcheck\"".to_string()),
                        ("host".to_string(), "\"example\"".to_string()),
                        (
                            "expect_status".to_string(),
                            "\"200,204,300-399\"".to_string(),
                        ),
                        ("expect_body".to_string(), "\"ok\"".to_string()),
                        ("port".to_string(), "8081".to_string()),
                        ("interval".to_string(), "\"100ms\"".to_string()),
                        ("timeout".to_string(), "\"90ms\"".to_string()),
                    ]),
                    3 => Some(vec![("kind".to_string(), "\"none\"".to_string())]),
                    _ => None,
                };
                if let Some(h) = h {
                    t.push((format!("[pools.{name}.health]"), h));
                }
                for (ni, (named, form, weight)) in nodes.into_iter().enumerate() {
                    let addr = match form {
                        0 => format!("127.0.{pi}.{}:9000", ni + 1),
                        1 => format!("[::1]:{}", 9000 + ni),
                        _ => format!("localhost:{}", 7000 + ni),
                    };
                    let mut e = vec![("addr".to_string(), qs(&addr))];
                    if named {
                        e.insert(0, ("name".to_string(), qs(&format!("n{ni}"))));
                    }
                    if set[9] {
                        e.push(("weight".to_string(), weight.to_string()));
                    }
                    t.push((format!("[[pools.{name}.nodes]]"), e));
                }
            }
            t
        })
        .boxed()
}

/// One damage done to a valid document.
#[derive(Debug, Clone)]
enum Damage {
    /// Replace the value of an entry with another (often invalid) value.
    Value(usize, usize, String),
    DropEntry(usize, usize),
    DuplicateEntry(usize, usize),
    AddEntry(usize, String, String),
    DropTable(usize),
    DuplicateTable(usize),
    /// Move an entry to another table.
    MoveEntry(usize, usize, usize),
}

fn any_value() -> BoxedStrategy<String> {
    prop_oneof![
        2 => one_of(&[
            "0", "-1", "17", "33", "101", "129", "256", "257", "1001", "10001", "65536",
            "1000001", "2000001", "4294967296", "\"\"", "\"none\"", "\"http\"", "\"0s\"",
            "\"1x\"", "\"-1s\"", "\"99999999999h\"", "\"31d\"", "\"1h1ms\"", "\"0.5ms\"",
            "\"127.0.0.1:0\"", "\"0.0.0.0:0\"", "\"[::]:0\"", "\"127.0.0.1:9000\"",
            "\"[::ffff:127.0.0.1]:0\"", "\"localhost:9000\"", "\"127.0.0.1\"", "\"web\"",
            "\"p\"", "\"n0\"", "\"n1\"", "\"l0\"", "\"600-100\"", "\"/\"", "\"x\"",
        ]),
        // Values for keys added later (access lists, per-client limits, PROXY
        // protocol, bounded load, node states, privileges, admin tokens).
        1 => one_of(&[
            "[\"10.0.0.0/8\"]", "[\"127.0.0.0/8\", \"2001:db8::/32\"]", "[\"::/0\", \"0.0.0.0/0\"]",
            "[\"300.0.0.0/8\"]", "[\"10.0.0.0/33\"]", "[\"2001:db8::/129\"]", "[\"\"]", "[\"x\"]",
            "[\"10.0.0.1/8\"]", "[1]", "[[\"10.0.0.0/8\"]]", "\"10.0.0.0/8\"", "\"v1\"", "\"v2\"",
            "\"v3\"", "\"off\"", "\"enabled\"", "\"drain\"", "\"disabled\"", "1.25", "1.0",
            "0.999", "0.0", "-1.5", "1e308", "nan", "inf", "\"nobody\"", "\"65534\"",
            "\"no-such-user-ringlb\"", "\"0123456789abcdef\"", "\"short\"",
            "\"0123456789abcdef\\u0007\"", "\"/nonexistent/ringlb-token\"", "\"\"",
        ]),
        1 => duration_value(),
        1 => node_addr(),
        1 => scalar_garbage(),
    ]
    .boxed()
}

fn damage() -> BoxedStrategy<Damage> {
    const KEYS: &[&str] = &[
        // Added since: accepted where they exist, unknown keys where not.
        "allow",
        "deny",
        "max_connections_per_ip",
        "new_connections_per_ip_per_sec",
        "new_connections_per_ip_burst",
        "accept_proxy_protocol",
        "trusted_proxies",
        "proxy_header_timeout",
        "proxy_protocol",
        "balance_factor",
        "close_rate",
        "rehome",
        "agent",
        "send",
        "max_connection_duration",
        "max_connection_duration_jitter",
        "access_log_interval",
        "state",
        "user",
        "group",
        "token",
        "token_file",
        "name",
        "addr",
        "weight",
        "listen",
        "pool",
        "kind",
        "path",
        "host",
        "port",
        "rise",
        "fall",
        "interval",
        "timeout",
        "expect_status",
        "expect_body",
        "passive_failures",
        "max_connections",
        "backlog",
        "ipv6_only",
        "shutdown_grace",
        "workers",
        "pid_file",
        "nodes",
        "health",
        "listener",
        "pools",
        "admin",
        "weigth",
        "idle",
        "x",
    ];
    prop_oneof![
        5 => (any::<usize>(), any::<usize>(), any_value()).prop_map(|(t, e, v)| Damage::Value(t, e, v)),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(t, e)| Damage::DropEntry(t, e)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(t, e)| Damage::DuplicateEntry(t, e)),
        2 => (any::<usize>(), proptest::sample::select(KEYS), any_value()).prop_map(|(t, k, v)| Damage::AddEntry(t, k.to_string(), v)),
        1 => any::<usize>().prop_map(Damage::DropTable),
        1 => any::<usize>().prop_map(Damage::DuplicateTable),
        1 => (any::<usize>(), any::<usize>(), any::<usize>()).prop_map(|(a, e, b)| Damage::MoveEntry(a, e, b)),
    ]
    .boxed()
}

fn damaged(mut t: Vec<Table>, damages: &[Damage]) -> String {
    for d in damages {
        if t.is_empty() {
            break;
        }
        let n = t.len();
        match d {
            Damage::Value(ti, ei, v) => {
                let e = &mut t[ti % n].1;
                if !e.is_empty() {
                    let k = ei % e.len();
                    e[k].1 = v.clone();
                }
            }
            Damage::DropEntry(ti, ei) => {
                let e = &mut t[ti % n].1;
                if !e.is_empty() {
                    let k = ei % e.len();
                    e.remove(k);
                }
            }
            Damage::DuplicateEntry(ti, ei) => {
                let e = &mut t[ti % n].1;
                if !e.is_empty() {
                    let again = e[ei % e.len()].clone();
                    e.push(again);
                }
            }
            Damage::AddEntry(ti, k, v) => t[ti % n].1.push((k.clone(), v.clone())),
            Damage::DropTable(ti) => {
                t.remove(ti % n);
            }
            Damage::DuplicateTable(ti) => {
                let again = t[ti % n].clone();
                t.insert(ti % n, again);
            }
            Damage::MoveEntry(a, ei, b) => {
                let e = &mut t[a % n].1;
                if !e.is_empty() {
                    let k = ei % e.len();
                    let moved = e.remove(k);
                    t[b % n].1.push(moved);
                }
            }
        }
    }
    let mut s = String::new();
    // Entries without a header belong to the top level, which must come first.
    let (top, rest): (Vec<&Table>, Vec<&Table>) = t.iter().partition(|(h, _)| h.is_empty());
    for (_, e) in top {
        render(e, &mut s);
    }
    for (h, e) in rest {
        s.push('\n');
        s.push_str(h);
        s.push('\n');
        render(e, &mut s);
    }
    s
}

/// A valid document with 0 to 4 damages.
fn near_valid_config() -> BoxedStrategy<String> {
    (
        valid_tables(),
        prop_oneof![1 => Just(Vec::new()), 3 => proptest::collection::vec(damage(), 1..5)],
    )
        .prop_map(|(t, d)| damaged(t, &d))
        .boxed()
}

fn generated_config() -> BoxedStrategy<String> {
    prop_oneof![1 => wild_config(), 2 => near_valid_config()].boxed()
}

#[derive(Default)]
struct Stats {
    ok: AtomicUsize,
    err: AtomicUsize,
    skipped: AtomicUsize,
}

impl Stats {
    fn count(&self, text: &str, source: &Path) -> bool {
        if !network_free(text) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        match Config::parse(text, source) {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.err.fetch_add(1, Ordering::Relaxed),
        };
        true
    }

    fn report(&self, what: &str, t0: Instant) -> (usize, usize, usize) {
        let (ok, err, skipped) = (
            self.ok.load(Ordering::Relaxed),
            self.err.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
        );
        println!(
            "{what}: {ok} accepted, {err} refused, {skipped} skipped (would resolve a host name) in {:.2?}",
            t0.elapsed()
        );
        (ok, err, skipped)
    }
}

fn finish<T: std::fmt::Debug>(r: Result<(), proptest::test_runner::TestError<T>>) {
    if let Err(e) = r {
        panic!("{e}");
    }
}

#[test]
fn generated_configs_load_or_fail_cleanly() {
    let t0 = Instant::now();
    let stats = Stats::default();
    let source = PathBuf::from("fuzz/generated config ä.toml");
    let mut runner = runner(seed("generated"));
    finish(runner.run(&generated_config(), |text| {
        if stats.count(&text, &source) {
            check_text(&text, &source)?;
        }
        Ok(())
    }));
    let (ok, err, skipped) = stats.report("generated", t0);
    // The generator never writes a host name that needs DNS.
    assert_eq!(skipped, 0, "the generator produced names that need DNS");
    // Both outcomes are exercised, so the properties above are not vacuous.
    assert!(ok >= 20, "only {ok} generated configs were valid");
    assert!(err >= 200, "only {err} generated configs were refused");
}

/// The fixture files, valid and invalid, with their names.
fn fixtures() -> Vec<(String, String)> {
    let mut v = Vec::new();
    for dir in ["valid", "invalid"] {
        let d = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/config")
            .join(dir);
        let mut names: Vec<_> = std::fs::read_dir(&d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        names.sort();
        for p in names {
            let text = std::fs::read_to_string(&p).unwrap();
            v.push((
                format!("{dir}/{}", p.file_name().unwrap().to_string_lossy()),
                text,
            ));
        }
    }
    assert!(v.len() >= 8, "fixtures missing");
    v
}

/// One edit to a text; positions are taken modulo the length when applied.
#[derive(Debug, Clone)]
enum Edit {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    InsertLine(usize, &'static str),
    InsertBytes(usize, Vec<u8>),
}

const SNIPPETS: &[&str] = &[
    "[[listener]]",
    "[pools.web]",
    "[pools.web.health]",
    "[[pools.web.nodes]]",
    "[pools]",
    "[admin]",
    "listener = 1",
    "pools = []",
    "weight = 0",
    "weight = 257",
    "weight = -1",
    "name = \"\"",
    "name = \"a\"",
    "addr = \"127.0.0.1:0\"",
    "addr = \"localhost:1\"",
    "addr = \"[::]:1\"",
    "listen = \"127.0.0.1:0\"",
    "listen = \"0.0.0.0:0\"",
    "pool = \"nope\"",
    "idle_timeout = \"1x\"",
    "idle_timeout = \"99999999999h\"",
    "connect_timeout = \"-1s\"",
    "shutdown_grace = \"18446744073709551616s\"",
    "interval = \"10ms\"",
    "timeout = \"1h\"",
    "kind = \"http\"",
    "kind = \"none\"",
    "expect_status = \"599-100\"",
    "points_per_weight = 10000",
    "max_connections = 0",
    "backlog = 99999999999999999999",
    "key_prefix_v6 = 255",
    "workers = 0",
    "ipv6_only = \"no\"",
    "unknown_key = 1",
    "= 1",
    "a =",
    "\"",
    "\"\"\"",
    "'''",
    "[",
    "]]",
    "[[",
    "#",
    "x = { a = [1, { b = 2 }] }",
    "é = \"節\"",
    "\u{feff}",
    "\r",
];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..8).prop_map(|(p, b)| Edit::FlipBit(p, b)),
        2 => (any::<usize>(), prop_oneof![
                Just(b'"'), Just(b'='), Just(b'['), Just(b']'), Just(b'\n'), Just(b'0'),
                Just(b'9'), Just(b'-'), Just(b'.'), Just(b':'), Just(b' '), Just(b'#'),
                Just(0u8), Just(0xff), Just(0xc3), any::<u8>()
            ]).prop_map(|(p, b)| Edit::SetByte(p, b)),
        1 => any::<usize>().prop_map(Edit::Truncate),
        2 => any::<usize>().prop_map(Edit::DeleteLine),
        2 => any::<usize>().prop_map(Edit::DuplicateLine),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        2 => (any::<usize>(), proptest::sample::select(SNIPPETS)).prop_map(|(p, s)| Edit::InsertLine(p, s)),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8)).prop_map(|(p, b)| Edit::InsertBytes(p, b)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    for e in edits {
        let lines =
            |b: &[u8]| -> Vec<Vec<u8>> { b.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect() };
        match e {
            Edit::FlipBit(p, bit) if !b.is_empty() => {
                let i = p % b.len();
                b[i] ^= 1 << bit;
            }
            Edit::SetByte(p, v) if !b.is_empty() => {
                let i = p % b.len();
                b[i] = *v;
            }
            Edit::Truncate(p) => b.truncate(p % (b.len() + 1)),
            Edit::DeleteLine(p) => {
                let mut l = lines(&b);
                let i = p % l.len();
                l.remove(i);
                b = l.join(&b'\n');
            }
            Edit::DuplicateLine(p) => {
                let mut l = lines(&b);
                let i = p % l.len();
                let again = l[i].clone();
                l.insert(i, again);
                b = l.join(&b'\n');
            }
            Edit::SwapLines(x, y) => {
                let mut l = lines(&b);
                let n = l.len();
                l.swap(x % n, y % n);
                b = l.join(&b'\n');
            }
            Edit::InsertLine(p, s) => {
                let mut l = lines(&b);
                let i = p % (l.len() + 1);
                l.insert(i, s.as_bytes().to_vec());
                b = l.join(&b'\n');
            }
            Edit::InsertBytes(p, bytes) => {
                let i = p % (b.len() + 1);
                b.splice(i..i, bytes.iter().copied());
            }
            _ => {}
        }
    }
    b
}

#[test]
fn mutated_fixture_files_load_or_fail_cleanly() {
    let t0 = Instant::now();
    let fixtures = fixtures();
    let n = fixtures.len();
    let stats = Stats::default();
    let not_utf8 = AtomicUsize::new(0);
    let dir = tempfile::tempdir().unwrap();
    let mut runner = runner(seed("mutated"));
    let valid = fixtures
        .iter()
        .filter(|(n, _)| n.starts_with("valid/"))
        .count();
    // Half the cases start from a valid file (fixtures() lists those first).
    let pick = prop_oneof![0..valid, 0..n];
    let edits = prop_oneof![
        2 => proptest::collection::vec(edit(), 1..2),
        1 => proptest::collection::vec(edit(), 2..6),
    ];
    let strategy = (pick, edits).prop_map(move |(i, edits)| {
        let (name, text) = &fixtures[i];
        (name.clone(), apply(text, &edits))
    });
    finish(runner.run(&strategy, |(name, bytes)| {
        let source = PathBuf::from(format!("fuzz/{name}"));
        match std::str::from_utf8(&bytes) {
            Ok(text) => {
                if stats.count(text, &source) {
                    check_text(text, &source)?;
                }
            }
            Err(_) => {
                // Not UTF-8: what `from_file` does with it (the file as given).
                not_utf8.fetch_add(1, Ordering::Relaxed);
                let path = dir.path().join("mutated.toml");
                std::fs::write(&path, &bytes).unwrap();
                match Config::from_file(&path) {
                    Err(e @ ConfigError::Io { .. }) => {
                        let t = e.to_string();
                        prop_assert!(t.contains(&path.display().to_string()), "{}", t);
                    }
                    other => prop_assert!(false, "invalid UTF-8 gave {:?}", other.map(|_| ())),
                }
                // And the lossy text through `parse`.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                if stats.count(&text, &source) {
                    check_text(&text, &source)?;
                }
            }
        }
        Ok(())
    }));
    let (ok, err, skipped) = stats.report("mutated", t0);
    println!(
        "mutated: {} not UTF-8 (from_file refuses them as unreadable)",
        not_utf8.load(Ordering::Relaxed)
    );
    assert!(ok >= 20, "only {ok} mutated files still loaded");
    assert!(err >= 200, "only {err} mutated files were refused");
    // Skipping is the exception, not the rule.
    assert!(skipped * 10 < cases() as usize, "{skipped} cases skipped");
}

/// Deeply nested values and very long lines: refused (or read), never a stack
/// overflow or a panic, and the error stays small enough to print.
#[test]
fn deep_nesting_and_huge_lines_are_refused_cleanly() {
    let source = Path::new("fuzz/deep.toml");
    for depth in [10usize, 100, 1_000, 100_000] {
        for (open, close) in [("[", "]"), ("{ a = ", " }")] {
            let v = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            let text = format!("workers = {v}\n");
            // A 2 MiB stack, like every test and tokio worker thread.
            let t = text.clone();
            let r = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || {
                    Config::parse(&t, source)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
                .unwrap()
                .join();
            let r = r.unwrap_or_else(|_| panic!("parse panicked at depth {depth} ({open})"));
            let e = r.expect_err("a nested value is not a worker count");
            assert!(e.contains("fuzz/deep.toml"), "{e}");
        }
    }
    // A 4 MiB line and a key of 1 MiB: refused, error names the file.
    let long = format!("workers = \"{}\"\n", "9".repeat(4 << 20));
    let e = Config::parse(&long, source).unwrap_err().to_string();
    assert!(e.contains("fuzz/deep.toml"), "{}", &e[..200.min(e.len())]);
    let key = format!("{} = 1\n", "k".repeat(1 << 20));
    let e = Config::parse(&key, source).unwrap_err().to_string();
    assert!(e.contains("fuzz/deep.toml"), "{}", &e[..200.min(e.len())]);
    // Durations at the edge of u64 seconds: refused with a reason, not a panic.
    for d in [
        "18446744073709551615s",
        "18446744073709551616s",
        "584942417355y",
        "99999999999h",
        "213503982334601d",
        "18446744073709551615s999ms",
    ] {
        let text = format!(
            "shutdown_grace = \"{d}\"\n[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\n[[pools.p.nodes]]\naddr = \"127.0.0.1:9\"\n"
        );
        let e = Config::parse(&text, source).expect_err(d).to_string();
        assert!(e.contains("shutdown_grace"), "{d}: {e}");
    }
}
