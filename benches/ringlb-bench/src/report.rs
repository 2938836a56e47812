//! Results: one aligned table for people, or one JSON object for scripts, built
//! from the same rows. Also the per-second progress line on stderr.

use std::net::SocketAddr;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::net::Errors;

/// A titled table printed after the main rows.
#[derive(Debug, Clone)]
pub struct Table {
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

#[derive(Debug)]
pub struct Report {
    rows: Vec<(String, String)>,
    json: Map<String, Value>,
    tables: Vec<Table>,
    notes: Vec<String>,
}

impl Report {
    pub fn new(workload: &str, description: &str, target: SocketAddr) -> Report {
        let mut r = Report {
            rows: Vec::new(),
            json: Map::new(),
            tables: Vec::new(),
            notes: Vec::new(),
        };
        r.add("workload", description, "workload", workload);
        r.add("target", target.to_string(), "target", target.to_string());
        r
    }

    /// A row in the table and a key in the JSON object.
    pub fn add(
        &mut self,
        label: &str,
        text: impl Into<String>,
        key: &str,
        value: impl Into<Value>,
    ) {
        self.rows.push((label.to_string(), text.into()));
        self.json.insert(key.to_string(), value.into());
    }

    /// JSON only.
    pub fn json(&mut self, key: &str, value: impl Into<Value>) {
        self.json.insert(key.to_string(), value.into());
    }

    pub fn table(&mut self, t: Table) {
        self.tables.push(t);
    }

    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }

    pub fn timing(&mut self, duration: Duration, warmup: Duration) {
        self.add(
            "duration",
            format!("{} (after {} warmup)", secs(duration), secs(warmup)),
            "duration_s",
            duration.as_secs_f64(),
        );
        self.json("warmup_s", warmup.as_secs_f64());
    }

    /// `errors` row with a breakdown, `errors` and `error_kinds` in JSON.
    pub fn errors(&mut self, errors: &Errors) {
        let snap = errors.snapshot();
        let total: u64 = snap.values().map(|(n, _)| n).sum();
        let text = if total == 0 {
            "0".to_string()
        } else {
            let parts: Vec<String> = snap
                .iter()
                .map(|(k, (n, _))| format!("{k} {}", int(*n)))
                .collect();
            format!("{} ({})", int(total), parts.join(", "))
        };
        self.add("errors", text, "errors", total);
        let kinds: Map<String, Value> = snap
            .iter()
            .map(|(k, (n, msg))| (snake(k), json!({"count": n, "first": msg})))
            .collect();
        self.json("error_kinds", Value::Object(kinds));
        for (k, (_, msg)) in &snap {
            self.notes.push(format!("first {k}: {msg}"));
        }
    }

    /// p50/p90/p99/p99.9/max (and mean) of a histogram in microseconds.
    pub fn latency(&mut self, h: &Histogram<u64>) {
        self.latency_as(h, "latency", "");
    }

    /// [`Report::latency`] with rows `LABEL p50`... and keys `PREFIXp50_us`...
    pub fn latency_as(&mut self, h: &Histogram<u64>, label: &str, prefix: &str) {
        let empty = h.is_empty();
        let q = |q: f64| if empty { 0 } else { h.value_at_quantile(q) };
        let rows = [
            ("p50", "p50_us", q(0.50)),
            ("p90", "p90_us", q(0.90)),
            ("p99", "p99_us", q(0.99)),
            ("p99.9", "p999_us", q(0.999)),
            ("max", "max_us", if empty { 0 } else { h.max() }),
        ];
        for (l, key, v) in rows {
            self.add(
                &format!("{label} {l}"),
                format!("{} µs", int(v)),
                &format!("{prefix}{key}"),
                v,
            );
        }
        let mean = if empty { 0.0 } else { h.mean() };
        self.add(
            &format!("{label} mean"),
            format!("{mean:.1} µs"),
            &format!("{prefix}mean_us"),
            round(mean, 1),
        );
    }

    pub fn render_text(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|(l, _)| l.chars().count())
            .max()
            .unwrap_or(0);
        let mut s = String::new();
        for (label, value) in &self.rows {
            s.push_str(&format!("{label:<width$}  {value}\n"));
        }
        for t in &self.tables {
            s.push('\n');
            s.push_str(&render_table(t));
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                s.push_str(&format!("note: {n}\n"));
            }
        }
        s
    }

    pub fn render_json(&self) -> String {
        serde_json::to_string_pretty(&Value::Object(self.json.clone()))
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    pub fn print(&self, as_json: bool) {
        if as_json {
            println!("{}", self.render_json());
        } else {
            print!("{}", self.render_text());
        }
    }
}

fn render_table(t: &Table) -> String {
    let cols = t.header.len();
    let mut widths: Vec<usize> = t.header.iter().map(|h| h.chars().count()).collect();
    for row in &t.rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (i, w) in widths.iter().enumerate() {
            let cell = cells.get(i).map(String::as_str).unwrap_or("");
            if i > 0 {
                s.push_str("  ");
            }
            if i == 0 {
                s.push_str(&format!("{cell:<w$}"));
            } else {
                s.push_str(&format!("{cell:>w$}"));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut s = format!("{}\n", t.title);
    s.push_str(&line(&t.header));
    for row in &t.rows {
        s.push_str(&line(row));
    }
    s
}

/// `"sink reply: count mismatch"` -> `"sink_reply_count_mismatch"`
pub fn snake(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

/// `1234567` -> `1,234,567`
pub fn int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate such as connections/s: grouped integer when large, 1 decimal when small.
pub fn rate(x: f64) -> String {
    if !x.is_finite() || x < 0.0 {
        return "0".into();
    }
    if x >= 100.0 {
        int(x.round() as u64)
    } else {
        format!("{x:.1}")
    }
}

pub fn bytes(n: u64) -> String {
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
        format!("{v:.2} {}", UNITS[u])
    }
}

pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

pub fn round(x: f64, decimals: i32) -> f64 {
    if !x.is_finite() {
        return 0.0;
    }
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

pub fn gbit(bytes: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s <= 0.0 {
        0.0
    } else {
        bytes as f64 * 8.0 / s / 1e9
    }
}

/// One line per second on stderr until dropped: `[3s] 2.41 Gbit/s`, with
/// `warmup` while before the measured window.
pub struct Progress(Option<tokio::task::JoinHandle<()>>);

impl Progress {
    pub fn start(
        quiet: bool,
        start: tokio::time::Instant,
        measure_start: tokio::time::Instant,
        mut line: impl FnMut(f64) -> String + Send + 'static,
    ) -> Progress {
        if quiet {
            return Progress(None);
        }
        let handle = tokio::spawn(async move {
            let period = Duration::from_secs(1);
            let mut tick = tokio::time::interval_at(start + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = start;
            loop {
                tick.tick().await;
                let now = tokio::time::Instant::now();
                let dt = now.duration_since(last).as_secs_f64();
                // The second just reported was (mostly) warmup.
                let tag = if last + (now - last) / 2 < measure_start {
                    " warmup"
                } else {
                    ""
                };
                last = now;
                let t = now.duration_since(start).as_secs_f64().round();
                eprintln!("[{t}s{tag}] {}", line(dt));
            }
        });
        Progress(Some(handle))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// Latency histogram in microseconds, 1 µs to 1 hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

pub fn record_us(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(us);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(int(0), "0");
        assert_eq!(int(999), "999");
        assert_eq!(int(1000), "1,000");
        assert_eq!(int(1234567), "1,234,567");
        assert_eq!(rate(18200.4), "18,200");
        assert_eq!(rate(12.34), "12.3");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.00 GiB");
        assert!((gbit(125_000_000, Duration::from_secs(1)) - 1.0).abs() < 1e-9);
        assert_eq!(round(1.26, 1), 1.3);
        assert_eq!(
            snake("sink reply: count mismatch"),
            "sink_reply_count_mismatch"
        );
        assert_eq!(
            snake("connect: too many open files"),
            "connect_too_many_open_files"
        );
    }

    #[test]
    fn text_and_json() {
        let target: SocketAddr = "127.0.0.1:7070".parse().expect("addr");
        let mut r = Report::new("rr", "rr (tcp)", target);
        r.add("req/s", "41,152", "req_per_s", 41152.0);
        let mut h = histogram();
        for v in [10u64, 20, 30, 1000] {
            h.saturating_record(v);
        }
        r.latency(&h);
        r.table(Table {
            title: "nodes".into(),
            header: vec!["node".into(), "IPs".into()],
            rows: vec![
                vec!["a".into(), "10".into()],
                vec!["bbbb".into(), "1,000".into()],
            ],
        });
        let text = r.render_text();
        assert!(text.contains("workload       rr (tcp)\n"), "{text}");
        assert!(text.contains("latency max    1,000 µs"), "{text}");
        assert!(
            text.contains("node    IPs\na        10\nbbbb  1,000\n"),
            "{text}"
        );
        let v: Value = serde_json::from_str(&r.render_json()).expect("json");
        assert_eq!(v["workload"], "rr");
        assert_eq!(v["target"], "127.0.0.1:7070");
        assert_eq!(v["max_us"], 1000);
        assert_eq!(v["p50_us"], 20);
    }
}
