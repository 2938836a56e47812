//! The human status page: the [`Status`] document rendered as one HTML page on
//! the server (no script, no external assets) that refreshes itself, with a live
//! chart per node ([`chart`](super::chart)) when the document carries the
//! history. Pure: builds a string from the typed status; no I/O, and it never
//! reads the handle itself.

use std::fmt::Write as _;

use super::history::HistoryStatus;
use super::status::{fmt_time, AgentStatus, NodeStatus, PoolStatus, Status};
use crate::config::AdminState;

/// Seconds between refreshes of the HTML page.
const PAGE_REFRESH_SECS: u32 = 2;

/// The page for one status document.
pub fn page(st: &Status) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{PAGE_REFRESH_SECS}">
<title>ringlb status</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}}
h1{{font-size:1.3em;margin:0 0 .3em}} h2{{font-size:1.1em;margin:1.2em 0 .4em}}
table{{border-collapse:collapse;background:#fff;min-width:60em}}
th,td{{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:middle}}
th{{background:#f0f0f0}} td.num{{text-align:right;font-variant-numeric:tabular-nums}} td.misplaced{{color:#c2570c;font-weight:bold}}
.up{{background:#d9f2d9;color:#14591a;font-weight:600}} .down{{background:#f9d6d5;color:#8a1c14;font-weight:600}} .drain{{background:#fdf0c4;color:#6b5200;font-weight:600}} .disabled{{background:#e4e4e4;color:#444;font-weight:600}}
.bar{{background:#eee;width:12em;height:.9em;display:inline-block;vertical-align:middle}}
.bar span{{display:block;height:100%;background:#4a7bd0}}
.meta{{color:#666}} .bad{{color:#8a1c14}}
.charts{{display:flex;flex-wrap:wrap;gap:.6em}} .chart{{margin:0;background:#fff;border:1px solid #ddd;padding:.3em .5em .1em}}
.chart figcaption{{font-weight:600}} .chart svg{{display:block}} .chart text{{font:11px system-ui,sans-serif;fill:#555}}
</style></head><body>
<h1>ringlb</h1>
<p class="meta">config {} &middot; generation {} &middot; started {} &middot; reloads ok {}, failed {} &middot; refreshes every {PAGE_REFRESH_SECS}s</p>
"#,
        esc(&st.config.display().to_string()),
        st.generation,
        fmt_time(st.started),
        st.reloads.ok,
        st.reloads.failed,
    );
    let p = &st.process;
    let _ = write!(
        h,
        r#"<p id="process" class="meta">pid {} &middot; version {}"#,
        p.pid,
        esc(&p.version)
    );
    if let Some(u) = &p.upgraded_from {
        let _ = write!(
            h,
            " &middot; took over from pid {} at {} ({} ms)",
            u.pid,
            fmt_time(u.at),
            u.takeover_ms
        );
    }
    if let Some(n) = p.handed_over_to {
        let _ = write!(
            h,
            r#" &middot; <span class="bad">handed over to pid {n}; draining</span>"#
        );
    }
    h.push_str("</p>\n");
    if let Some(r) = &st.last_reload {
        let _ = writeln!(
            h,
            r#"<p id="last-reload" class="{}">last reload {} at {}: {}</p>"#,
            if r.ok { "meta" } else { "bad" },
            if r.ok { "applied" } else { "REFUSED" },
            fmt_time(r.at),
            esc(&r.message)
        );
    }
    h.push_str("<h2>Listeners</h2>\n<table id=\"listeners\"><tr><th>name</th><th>address</th><th>pool</th><th>active</th><th>max</th></tr>\n");
    for l in &st.listeners {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&l.name),
            esc(&l.local_addr.to_string()),
            esc(&l.pool),
            l.active_connections,
            l.max_connections
        );
    }
    h.push_str("</table>\n");
    let workers: Vec<String> = st
        .workers
        .iter()
        .map(|w| format!("{}: {} open, {} accepted", w.worker, w.active, w.accepted))
        .collect();
    let _ = writeln!(
        h,
        "<p id=\"workers\" class=\"meta\">workers &middot; {}</p>",
        workers.join(" &middot; ")
    );
    for p in &st.pools {
        pool(&mut h, p, st.history.as_ref());
    }
    h.push_str("</body></html>\n");
    h
}

/// One pool's heading, node table and (with a history) its nodes' charts.
fn pool(h: &mut String, p: &PoolStatus, history: Option<&HistoryStatus>) {
    let name = esc(&p.name);
    let _ = writeln!(
        h,
        "<h2>Pool {name}</h2>\n<p class=\"meta\">{} of {} nodes up &middot; health {} every {} &middot; {}{}</p>",
        p.nodes_up,
        p.nodes_total,
        p.health.kind.as_str(),
        crate::config::fmt_duration(p.health.interval),
        closes(p),
        if p.failing_open {
            " &middot; <b class=\"bad\">all down: failing open</b>"
        } else {
            ""
        }
    );
    if let Some(d) = &p.discover {
        let _ = writeln!(
            h,
            "<p class=\"meta discover\">from DNS: {} {} &middot; last resolution {} &middot; {} &middot; {} nodes</p>",
            d.kind,
            esc(&d.name),
            d.last_resolution_at.map_or_else(|| "none yet".to_string(), fmt_time),
            esc(&d.outcome),
            d.nodes.len()
        );
    }
    // The agent's column only for pools with an agent.
    let agent_th = if p.agent.is_some() {
        "<th>agent</th>"
    } else {
        ""
    };
    let _ = writeln!(
        h,
        "<table class=\"pool\" id=\"pool-{name}\"><tr><th>node</th><th>address</th><th>state</th>{agent_th}<th>since</th><th>last probe</th><th>ring share</th><th>active</th><th>max</th><th>misplaced</th><th>rehomed</th><th>total</th><th>to node</th><th>to client</th></tr>"
    );
    for n in &p.nodes {
        node(h, n);
    }
    h.push_str("</table>\n");
    if let Some(history) = history {
        super::chart::pool_charts(h, p, history);
    }
}

/// How the pool closes connections itself: `close_rate`, `rehome`, and the
/// closes waiting for their turn.
fn closes(p: &PoolStatus) -> String {
    let mut s = if p.close_rate == 0 {
        "closes unpaced".to_string()
    } else {
        format!("closes at most {}/s", p.close_rate)
    };
    match &p.rehome {
        Some(r) => {
            let _ = write!(
                s,
                " &middot; rehome after {} at {}/s",
                crate::config::fmt_duration(r.after),
                r.rate
            );
        }
        None => s.push_str(" &middot; rehome off"),
    }
    if p.closes_pending > 0 {
        let _ = write!(s, " &middot; <b>{} closes pending</b>", p.closes_pending);
    }
    s
}

/// One node's row: health and operator state together (`UP · DRAIN`).
fn node(h: &mut String, n: &NodeStatus) {
    let health = n.state.as_str();
    let (state, label) = match n.admin_state {
        AdminState::Enabled => (health, health.to_uppercase()),
        other => (
            other.as_str(),
            format!(
                "{} · {}",
                health.to_uppercase(),
                other.as_str().to_uppercase()
            ),
        ),
    };
    let share = n.ring_share_pct;
    let probe = n
        .last_probe
        .as_ref()
        .map(|lp| format!("{} ({} ms)", esc(&lp.detail), json_number(lp.latency_ms)))
        .unwrap_or_else(|| "-".into());
    let _ = writeln!(
        h,
        "<tr class=\"node\" data-node=\"{nm}\"><td>{nm}</td><td>{addr}</td><td class=\"{state}\">{STATE}</td>{agent}<td title=\"{reason}\">{since}</td><td>{probe}</td><td><span class=\"bar\"><span style=\"width:{share:.1}%\"></span></span> {share:.1}%</td><td class=\"num\">{act}</td><td class=\"num\">{max}</td><td class=\"num{mis_class}\">{mis}</td><td class=\"num\">{reh}</td><td class=\"num\">{tot}</td><td class=\"num\">{bn}</td><td class=\"num\">{bc}</td></tr>",
        nm = esc(&n.name),
        addr = esc(&n.addr.to_string()),
        STATE = label,
        agent = n.agent.as_ref().map(agent_cell).unwrap_or_default(),
        reason = esc(&n.reason),
        since = fmt_time(n.since),
        act = n.active_connections,
        max = n
            .max_connections
            .map_or_else(|| "-".to_string(), |m| m.to_string()),
        mis = n.misplaced,
        mis_class = if n.misplaced > 0 { " misplaced" } else { "" },
        reh = n.rehomed,
        tot = n.total_connections,
        bn = bytes(n.bytes_to_node),
        bc = bytes(n.bytes_to_client),
    );
}

/// A node's agent cell: its words (`UP · READY`, `DOWN (fail) · DRAIN`), the
/// weight and cap it set, and its last error in the tooltip.
fn agent_cell(a: &AgentStatus) -> String {
    let class = if a.state == "down" {
        "down"
    } else if a.admin_state != "ready" {
        "drain"
    } else {
        "up"
    };
    let mut words = a.state.to_uppercase();
    if !a.word.is_empty() && !a.word.eq_ignore_ascii_case(&a.state) {
        let _ = write!(words, " ({})", esc(&a.word));
    }
    let _ = write!(words, " · {}", a.admin_state.to_uppercase());
    if let Some(w) = &a.weight {
        let _ = write!(words, " · {}", esc(w));
    }
    if let Some(m) = a.maxconn {
        let _ = write!(words, " · maxconn {m}");
    }
    let mut title = esc(&a.reason);
    if let Some(e) = &a.last_error {
        let _ = write!(
            title,
            "{}last error {}: {} ({})",
            if title.is_empty() { "" } else { "; " },
            fmt_time(e.at),
            esc(&e.detail),
            esc(&e.result)
        );
    }
    format!("<td class=\"agent {class}\" title=\"{title}\">{words}</td>")
}

/// A number written as `/status` writes it (`2.0`, `0.125`; `null` if not finite),
/// so the page and the JSON show the same text.
fn json_number(x: f64) -> String {
    serde_json::to_string(&x).unwrap_or_default()
}

/// Text escaped for HTML content and attribute values (and SVG, which is XML).
pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.2 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::admin::status::{status, tests::sample};

    /// The sample status with every clock reading fixed.
    pub(in crate::admin) fn fixed_sample() -> Status {
        let mut st = status(&sample());
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        for n in st.pools.iter_mut().flat_map(|p| p.nodes.iter_mut()) {
            n.since = t;
            if let Some(p) = &mut n.last_probe {
                p.at = t;
            }
        }
        st
    }

    #[test]
    fn the_page_is_the_one_operators_and_the_browser_test_know() {
        // testdata/page.html was written by the json!-based renderer this one
        // replaced, from the same data.
        let html = page(&fixed_sample());
        if std::env::var_os("RINGLB_UPDATE_GOLDEN").is_some() {
            std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/src/admin/testdata/page.html"),
                &html,
            )
            .unwrap();
        }
        assert_eq!(html, include_str!("testdata/page.html"));
    }

    #[test]
    fn with_a_history_every_pool_gets_a_chart_per_node_under_its_table() {
        use crate::admin::history::History;
        use std::time::Instant;
        let handle = sample();
        let mut h = History::new(3);
        let t0 = Instant::now();
        for i in 0..3 {
            h.record(
                t0 + Duration::from_secs(2 * i),
                crate::admin::history::tests::read_for_tests(&handle),
            );
        }
        let mut st = fixed_sample();
        st.history = Some(h.view(
            t0 + Duration::from_secs(4),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_100),
        ));
        let html = page(&st);
        let plain = page(&fixed_sample());
        assert!(!plain.contains("<svg"), "no history, no charts");
        for (pool, nodes) in [("db", 1), ("web", 3)] {
            let table = html
                .find(&format!("<table class=\"pool\" id=\"pool-{pool}\">"))
                .unwrap();
            let charts = html
                .find(&format!("<div class=\"charts\" id=\"charts-{pool}\">"))
                .unwrap();
            assert!(charts > table);
            let block = &html[charts..charts + html[charts..].find("</div>").unwrap()];
            assert_eq!(block.matches("<svg").count(), nodes, "{block}");
            assert_eq!(block.matches("class=\"open\"").count(), nodes);
        }
        assert!(
            html.contains("<figure class=\"chart\" data-node=\"b &lt;&amp;&quot;x&quot;&gt;\">")
        );
        // The page is the plain page plus the chart blocks.
        let mut rest = html.clone();
        while let Some(i) = rest.find("<p class=\"meta\">connections over the last") {
            let end = i + rest[i..].find("</div>\n").unwrap() + 7;
            rest.replace_range(i..end, "");
        }
        assert_eq!(rest, plain);
    }

    #[test]
    fn pools_with_an_agent_get_its_column() {
        let mut st = fixed_sample();
        let line = "down drain 50% maxconn:3 #disk <full>";
        st.pools[1].agent = Some(crate::admin::status::AgentSettingsStatus {
            port: 9,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            send: None,
        });
        let text = format!(
            "{}\n[pools.w.agent]\nport = 9\n",
            crate::config::tests::MIN.replace("web", "w")
        );
        let cfg = crate::config::Config::parse(&text, "a.toml").unwrap();
        let pool = crate::pool::Pool::new(&cfg.pools["w"]);
        let n = pool.nodes()[0].clone();
        pool.agent_report(&n, line, &crate::agent::reply::parse(line.as_bytes()));
        let json = serde_json::to_value(status(&sample())).unwrap();
        assert!(json["pools"][1]["nodes"][0]["agent"].is_null());
        let agent = crate::admin::status::tests::agent_status_of(&n);
        for node in &mut st.pools[1].nodes {
            node.agent = Some(agent.clone());
        }
        let html = page(&st);
        assert!(
            html.contains("<th>state</th><th>agent</th><th>since</th>"),
            "{html}"
        );
        assert!(html.contains(
            "<td class=\"agent down\" title=\"disk &lt;full&gt;\">DOWN · DRAIN · 50% · maxconn 3</td>"
        ), "{html}");
        // The other pool has no agent: no column.
        assert_eq!(html.matches("<th>agent</th>").count(), 1);
    }

    #[test]
    fn helpers() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(u64::MAX), "16777216.0 TiB");
        assert_eq!(json_number(2.0), "2.0");
        assert_eq!(json_number(0.125), "0.125");
        assert_eq!(json_number(f64::NAN), "null");
        assert_eq!(
            esc("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
