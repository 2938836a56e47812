//! The status page's live charts: per node, open and misplaced connections over
//! the last minutes, as inline SVG (no script, no external assets). Pure:
//! strings from a [`HistoryStatus`].
//!
//! One chart per node, all of a pool's charts on one frame: one vertical scale
//! (so a failover reads as one line falling while its neighbours rise) and one
//! time window ending "now", which grows with the history from 1 minute to its
//! [`SPAN`] of 5. The open connections are a blue line; the misplaced ones an
//! orange line with an orange area under it (they are a part of the open ones);
//! the background is shaded red while the node was down and grey while the
//! operator had it out (drained or disabled).

use std::fmt::Write as _;
use std::time::Duration;

use super::history::{HistoryStatus, NodeHistory, Phase, SPAN};
use super::page::esc;
use super::status::PoolStatus;
use crate::config::fmt_duration;

/// Colour of the open-connections line.
pub(super) const OPEN: &str = "#1d4ed8";
/// Colour of the misplaced-connections line and area.
pub(super) const MISPLACED: &str = "#ea580c";
/// Background while the node was down / out (the page's state colours).
const DOWN_BG: &str = "#f9d6d5";
const OUT_BG: &str = "#e4e4e4";

/// The SVG's size and its plot area.
const W: f64 = 440.0;
const H: f64 = 150.0;
const LEFT: f64 = 36.0;
const RIGHT: f64 = 430.0;
const TOP: f64 = 8.0;
const BOTTOM: f64 = 108.0;
/// The shortest window drawn, and the step it grows by.
const MIN_WINDOW_MS: u64 = 60_000;
const WINDOW_STEP_MS: u64 = 30_000;

/// What a pool's charts share: the time window and the value at the top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Frame {
    /// Milliseconds from the left edge to "now".
    pub window_ms: u64,
    pub axis: u64,
}

impl Frame {
    /// The frame for a pool's nodes: a window that holds the oldest sample
    /// (rounded up to 30 s, at least 1 minute, at most the history's span), and
    /// an axis over the highest value in it.
    fn of(hist: &HistoryStatus, nodes: &[Option<&NodeHistory>]) -> Frame {
        let span_ms = span_ms();
        let oldest = hist
            .at_unix_ms
            .first()
            .map_or(0, |at| hist.now_unix_ms.saturating_sub(*at));
        let window_ms = oldest
            .div_ceil(WINDOW_STEP_MS)
            .saturating_mul(WINDOW_STEP_MS)
            .clamp(MIN_WINDOW_MS, span_ms);
        let peak = nodes
            .iter()
            .flatten()
            .flat_map(|n| visible(n, hist, window_ms).map(|(_, open, mis, _)| open.max(mis)))
            .max()
            .unwrap_or(0);
        Frame {
            window_ms,
            axis: nice_ceil(peak),
        }
    }

    fn window(self) -> String {
        fmt_duration(Duration::from_millis(self.window_ms))
    }

    fn x(self, age_ms: u64) -> f64 {
        let frac = age_ms as f64 / self.window_ms.max(1) as f64;
        RIGHT - frac.min(1.0) * (RIGHT - LEFT)
    }

    fn y(self, v: u32) -> f64 {
        BOTTOM - (f64::from(v) / self.axis.max(1) as f64).min(1.0) * (BOTTOM - TOP)
    }

    /// Time between vertical grid lines: 3 to 6 of them.
    fn grid_ms(self) -> u64 {
        match self.window_ms {
            ..=60_000 => 10_000,
            60_001..=150_000 => 30_000,
            _ => 60_000,
        }
    }
}

/// The charts of one pool's nodes, in the status's node order.
pub(super) fn pool_charts(h: &mut String, pool: &PoolStatus, hist: &HistoryStatus) {
    let nodes: Vec<Option<&NodeHistory>> = pool
        .nodes
        .iter()
        .map(|n| hist.node(&pool.name, &n.name))
        .collect();
    let frame = Frame::of(hist, &nodes);
    let _ = writeln!(
        h,
        "<p class=\"meta\">connections over the last {} &middot; a sample every {} &middot; one scale for the pool</p>\n<div class=\"charts\" id=\"charts-{}\">",
        frame.window(),
        esc(&hist.interval),
        esc(&pool.name)
    );
    for (n, history) in pool.nodes.iter().zip(nodes) {
        let _ = writeln!(
            h,
            "<figure class=\"chart\" data-node=\"{nm}\"><figcaption>{nm}</figcaption>{}</figure>",
            svg(&n.name, history, hist, frame),
            nm = esc(&n.name),
        );
    }
    h.push_str("</div>\n");
}

fn span_ms() -> u64 {
    u64::try_from(SPAN.as_millis()).unwrap_or(u64::MAX)
}

/// A node's samples within the window: `(age in ms, open, misplaced, phase)`,
/// oldest first.
fn visible<'a>(
    n: &'a NodeHistory,
    hist: &'a HistoryStatus,
    window_ms: u64,
) -> impl Iterator<Item = (u64, u32, u32, Phase)> + 'a {
    hist.at_unix_ms
        .iter()
        .zip(&n.open)
        .zip(&n.misplaced)
        .zip(&n.state)
        .filter_map(move |(((at, open), mis), state)| {
            let age = hist.now_unix_ms.saturating_sub(*at);
            Some((age, (*open)?, (*mis)?, (*state)?)).filter(|_| age <= window_ms)
        })
}

/// The smallest 1, 2 or 5 times a power of ten that is at least `v` (and at
/// least 5, so a few connections do not fill the chart).
pub(super) fn nice_ceil(v: u32) -> u64 {
    let v = u64::from(v).max(5);
    let mut base = 1u64;
    loop {
        for m in [1, 2, 5] {
            if base * m >= v {
                return base * m;
            }
        }
        base *= 10;
    }
}

/// One node's chart.
pub(super) fn svg(
    name: &str,
    n: Option<&NodeHistory>,
    hist: &HistoryStatus,
    frame: Frame,
) -> String {
    let pts: Vec<(u64, u32, u32, Phase)> = n
        .map(|n| visible(n, hist, frame.window_ms).collect())
        .unwrap_or_default();
    let window = frame.window();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="spark" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img"><title>{} : open and misplaced connections, last {window}</title>"#,
        esc(name),
    );
    let _ = write!(
        s,
        r##"<rect class="plot" x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="#fff" stroke="#ccc"/>"##,
        RIGHT - LEFT,
        BOTTOM - TOP
    );
    // Down and out stretches: a sample's state holds until the next sample.
    let mut runs: Vec<(f64, f64, Phase)> = Vec::new();
    for (i, &(age, _, _, phase)) in pts.iter().enumerate() {
        if phase == Phase::InService {
            continue;
        }
        let x0 = frame.x(age);
        let x1 = pts.get(i + 1).map_or(RIGHT, |p| frame.x(p.0));
        match runs.last_mut() {
            Some(r) if r.2 == phase && (r.1 - x0).abs() < 1e-9 => r.1 = x1,
            _ => runs.push((x0, x1, phase)),
        }
    }
    for (x0, x1, phase) in &runs {
        let (class, fill) = match phase {
            Phase::Down => ("down", DOWN_BG),
            _ => ("out", OUT_BG),
        };
        let _ = write!(
            s,
            r#"<rect class="{class}" x="{x0:.1}" y="{TOP}" width="{:.1}" height="{}" fill="{fill}"/>"#,
            (x1 - x0).max(0.5),
            BOTTOM - TOP
        );
    }
    // Grid: the middle value, and a vertical line every grid step.
    let mid = (TOP + BOTTOM) / 2.0;
    let _ = write!(
        s,
        r##"<line x1="{LEFT}" y1="{mid}" x2="{RIGHT}" y2="{mid}" stroke="#e3e3e3" stroke-dasharray="3 3"/>"##
    );
    let step = frame.grid_ms();
    for age in (step..frame.window_ms).step_by(usize::try_from(step).unwrap_or(usize::MAX)) {
        let x = frame.x(age);
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{BOTTOM}" stroke="#eee"/>"##
        );
    }
    let label_x = LEFT - 4.0;
    let _ = write!(
        s,
        r#"<text x="{label_x}" y="{}" text-anchor="end">{}</text><text x="{label_x}" y="{BOTTOM}" text-anchor="end">0</text>"#,
        TOP + 8.0,
        frame.axis,
    );
    if frame.axis % 2 == 0 {
        let _ = write!(
            s,
            r#"<text x="{label_x}" y="{}" text-anchor="end">{}</text>"#,
            mid + 4.0,
            frame.axis / 2
        );
    }
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="{}">{window} ago</text><text x="{RIGHT}" y="{}" text-anchor="end">now</text>"#,
        BOTTOM + 13.0,
        BOTTOM + 13.0,
    );
    if pts.is_empty() {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">no samples yet</text>"#,
            (LEFT + RIGHT) / 2.0,
            mid + 4.0
        );
    } else {
        let line = |f: fn(&(u64, u32, u32, Phase)) -> u32| -> String {
            pts.iter()
                .map(|p| format!("{:.1},{:.1}", frame.x(p.0), frame.y(f(p))))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let misplaced = line(|p| p.2);
        if pts.iter().any(|p| p.2 > 0) {
            let (first, last) = (frame.x(pts[0].0), frame.x(pts[pts.len() - 1].0));
            let _ = write!(
                s,
                r#"<polygon class="misplaced-area" points="{first:.1},{BOTTOM} {misplaced} {last:.1},{BOTTOM}" fill="{MISPLACED}" fill-opacity="0.22"/>"#
            );
        }
        let _ = write!(
            s,
            r#"<polyline class="misplaced" points="{misplaced}" fill="none" stroke="{MISPLACED}" stroke-width="1.5" stroke-linejoin="round" stroke-linecap="round"/>"#
        );
        let _ = write!(
            s,
            r#"<polyline class="open" points="{}" fill="none" stroke="{OPEN}" stroke-width="2" stroke-linejoin="round" stroke-linecap="round"/>"#,
            line(|p| p.1)
        );
    }
    legend(&mut s, pts.last().map(|p| (p.1, p.2)), &runs);
    s.push_str("</svg>");
    s
}

/// The key under the plot: each colour with what it is and its latest value.
fn legend(s: &mut String, last: Option<(u32, u32)>, runs: &[(f64, f64, Phase)]) {
    let y = H - 8.0;
    let value = |v: Option<u32>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let (open, mis) = (value(last.map(|l| l.0)), value(last.map(|l| l.1)));
    let _ = write!(
        s,
        r#"<g class="legend"><line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="{OPEN}" stroke-width="3"/><text x="{}" y="{y}">open {open}</text>"#,
        y - 4.0,
        LEFT + 14.0,
        y - 4.0,
        LEFT + 18.0,
    );
    let mx = LEFT + 110.0;
    let _ = write!(
        s,
        r#"<line x1="{mx}" y1="{}" x2="{}" y2="{}" stroke="{MISPLACED}" stroke-width="3"/><text x="{}" y="{y}">misplaced {mis}</text>"#,
        y - 4.0,
        mx + 14.0,
        y - 4.0,
        mx + 18.0,
    );
    let mut bx = LEFT + 240.0;
    for (phase, fill, word) in [(Phase::Down, DOWN_BG, "down"), (Phase::Out, OUT_BG, "out")] {
        if runs.iter().any(|r| r.2 == phase) {
            let _ = write!(
                s,
                r#"<rect x="{bx}" y="{}" width="10" height="10" fill="{fill}"/><text x="{}" y="{y}">{word}</text>"#,
                y - 9.0,
                bx + 13.0,
            );
            bx += 38.0;
        }
    }
    s.push_str("</g>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::history::PoolHistory;

    const NOW: u64 = 10_000_000;

    /// A history of one node `name` with `(age in s, open, misplaced, phase)` samples.
    fn hist(name: &str, samples: &[(u64, u32, u32, Phase)]) -> HistoryStatus {
        HistoryStatus {
            interval: "2s".into(),
            span: "5m".into(),
            now_unix_ms: NOW,
            at_unix_ms: samples.iter().map(|s| NOW - s.0 * 1000).collect(),
            pools: vec![PoolHistory {
                name: "p".into(),
                nodes: vec![NodeHistory {
                    name: name.into(),
                    open: samples.iter().map(|s| Some(s.1)).collect(),
                    misplaced: samples.iter().map(|s| Some(s.2)).collect(),
                    state: samples.iter().map(|s| Some(s.3)).collect(),
                }],
            }],
        }
    }

    /// Checks that `s` is well-formed XML as far as this renderer can go wrong:
    /// tags nest and close, attribute values are quoted, and text and values
    /// hold no raw `<` and only known entities.
    fn well_formed(s: &str) -> Result<(), String> {
        let mut open: Vec<&str> = Vec::new();
        let mut rest = s;
        let entity_ok = |t: &str| -> Result<(), String> {
            for (i, _) in t.match_indices('&') {
                let e = &t[i..];
                if !["&amp;", "&lt;", "&gt;", "&quot;", "&middot;"]
                    .iter()
                    .any(|k| e.starts_with(k))
                {
                    return Err(format!("bad entity at {e:.10}"));
                }
            }
            Ok(())
        };
        while let Some(lt) = rest.find('<') {
            entity_ok(&rest[..lt])?;
            let gt = rest[lt..].find('>').ok_or("unclosed tag")? + lt;
            let tag = &rest[lt + 1..gt];
            if tag.contains('<') {
                return Err(format!("'<' inside tag {tag}"));
            }
            if let Some(name) = tag.strip_prefix('/') {
                if open.pop() != Some(name) {
                    return Err(format!("</{name}> closes nothing open"));
                }
            } else {
                let self_closing = tag.ends_with('/');
                let body = tag.trim_end_matches('/');
                let (name, mut attrs) = body.split_once(' ').unwrap_or((body, ""));
                while !attrs.trim().is_empty() {
                    let (key, after) = attrs
                        .split_once("=\"")
                        .ok_or(format!("unquoted attribute in <{tag}>"))?;
                    if key.trim().is_empty() || key.trim().contains(' ') {
                        return Err(format!("bad attribute name {key:?}"));
                    }
                    let (value, after) = after.split_once('"').ok_or("unterminated value")?;
                    entity_ok(value)?;
                    attrs = after;
                }
                if !self_closing {
                    open.push(name);
                }
            }
            rest = &rest[gt + 1..];
        }
        entity_ok(rest)?;
        if open.is_empty() {
            Ok(())
        } else {
            Err(format!("left open: {open:?}"))
        }
    }

    fn points(svg: &str, class: &str) -> Vec<(f64, f64)> {
        let key = format!("class=\"{class}\" points=\"");
        let at = svg
            .find(&key)
            .unwrap_or_else(|| panic!("no {class} in {svg}"))
            + key.len();
        let list = &svg[at..at + svg[at..].find('"').unwrap()];
        list.split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn axis_maxima_are_round() {
        let cases = [
            (0, 5),
            (1, 5),
            (5, 5),
            (6, 10),
            (10, 10),
            (11, 20),
            (21, 50),
            (51, 100),
            (150, 200),
            (10_001, 20_000),
        ];
        for (v, want) in cases {
            assert_eq!(nice_ceil(v), want, "{v}");
        }
        assert_eq!(nice_ceil(u32::MAX), 5_000_000_000);
    }

    #[test]
    fn lines_are_scaled_to_the_axis_and_the_window() {
        use Phase::InService as I;
        // 10 at 5 minutes ago, 0 at 150 s ago, 5 now; one older sample outside.
        let h = hist(
            "a",
            &[
                (400, 99, 0, I),
                (300, 10, 10, I),
                (150, 0, 0, I),
                (0, 5, 2, I),
            ],
        );
        let svg = svg("a", h.node("p", "a"), &h, frame(300, 10));
        well_formed(&svg).unwrap();
        let open = points(&svg, "open");
        assert_eq!(
            open,
            [
                (LEFT, TOP),
                ((LEFT + RIGHT) / 2.0, BOTTOM),
                (RIGHT, (TOP + BOTTOM) / 2.0)
            ]
        );
        let mis = points(&svg, "misplaced");
        assert_eq!(mis[0], (LEFT, TOP));
        assert_eq!(mis[2], (RIGHT, BOTTOM - 2.0 / 10.0 * (BOTTOM - TOP)));
        assert!(svg.contains("class=\"misplaced-area\""));
        assert!(svg.contains(">10</text>"), "axis max label");
        assert!(
            svg.contains(">5m ago</text>") && svg.contains(">now</text>"),
            "span labels"
        );
        assert!(
            svg.contains(">open 5</text>") && svg.contains(">misplaced 2</text>"),
            "legend"
        );
        assert!(
            svg.contains(&format!("stroke=\"{OPEN}\""))
                && svg.contains(&format!("stroke=\"{MISPLACED}\""))
        );
        // Values above the axis stay inside the plot.
        let svg = svg_of(&hist("a", &[(2, 50, 0, I), (0, 1, 0, I)]), 10);
        assert_eq!(points(&svg, "open")[0].1, TOP);
        // Grid lines every minute over 5 minutes, every 10 s over one.
        assert_eq!(svg_of(&h, 10).matches("stroke=\"#eee\"").count(), 4);
        assert_eq!(
            super::svg("a", h.node("p", "a"), &h, frame(60, 10))
                .matches("stroke=\"#eee\"")
                .count(),
            5
        );
    }

    fn frame(window_s: u64, axis: u64) -> Frame {
        Frame {
            window_ms: window_s * 1000,
            axis,
        }
    }

    /// The chart of node `a` in the frame the pool of only `a` gets.
    fn svg_of(h: &HistoryStatus, axis: u64) -> String {
        let n = h.node("p", "a");
        let f = Frame::of(h, &[n]);
        svg("a", n, h, Frame { axis, ..f })
    }

    #[test]
    fn the_window_grows_with_the_history_and_the_axis_covers_what_it_shows() {
        use Phase::InService as I;
        let f = |samples: &[(u64, u32, u32, Phase)]| {
            let h = hist("a", samples);
            Frame::of(&h, &[h.node("p", "a")])
        };
        assert_eq!(f(&[]), frame(60, 5));
        assert_eq!(f(&[(10, 7, 0, I), (0, 3, 0, I)]), frame(60, 10));
        assert_eq!(f(&[(60, 1, 0, I), (0, 1, 0, I)]), frame(60, 5));
        assert_eq!(f(&[(61, 1, 0, I), (0, 1, 0, I)]), frame(90, 5));
        assert_eq!(f(&[(299, 1, 0, I)]), frame(300, 5));
        // Older samples than the span are off the chart and off the scale.
        assert_eq!(f(&[(400, 900, 0, I), (200, 30, 40, I)]), frame(300, 50));
        let w = frame(90, 5);
        assert_eq!((w.x(0), w.x(90_000), w.x(200_000)), (RIGHT, LEFT, LEFT));
        assert_eq!((w.y(0), w.y(5), w.y(50)), (BOTTOM, TOP, TOP));
        assert_eq!(w.window(), "90s");
        assert_eq!(frame(60, 5).window(), "1m");
    }

    #[test]
    fn down_and_out_stretches_are_shaded_and_named_in_the_key() {
        use Phase::*;
        let h = hist(
            "a",
            &[
                (60, 4, 0, InService),
                (40, 0, 0, Down),
                (20, 0, 0, Down),
                (10, 0, 0, InService),
                (6, 3, 0, Out),
                (0, 3, 0, Out),
            ],
        );
        let svg = svg_of(&h, 5);
        well_formed(&svg).unwrap();
        assert_eq!(
            svg.matches("class=\"down\"").count(),
            1,
            "one merged run: {svg}"
        );
        assert_eq!(svg.matches("class=\"out\"").count(), 1);
        let down = &svg[svg.find("class=\"down\"").unwrap()..];
        let f = frame(60, 5);
        let x0 = f.x(40_000);
        let w = f.x(10_000) - x0;
        assert!(
            down.starts_with(&format!(
                "class=\"down\" x=\"{x0:.1}\" y=\"{TOP}\" width=\"{w:.1}\""
            )),
            "{down}"
        );
        assert!(svg.contains(">down</text>") && svg.contains(">out</text>"));
        assert!(
            !svg.contains("misplaced-area"),
            "no area while nothing is misplaced"
        );
        let plain = svg_of(&hist("a", &[(0, 1, 0, InService)]), 5);
        assert!(!plain.contains(">down</text>") && !plain.contains(">out</text>"));
    }

    #[test]
    fn names_are_escaped_and_a_node_without_samples_says_so() {
        let name = "b <&\"x\">";
        let h = hist(name, &[]);
        let svg = svg(name, h.node("p", name), &h, frame(60, 5));
        well_formed(&svg).unwrap();
        assert!(
            svg.contains("<title>b &lt;&amp;&quot;x&quot;&gt; : "),
            "{svg}"
        );
        assert!(svg.contains("no samples yet") && !svg.contains("<polyline"));
        assert!(svg.contains(">open -</text>"));
        let missing = super::svg(name, None, &h, frame(60, 5));
        assert!(missing.contains("no samples yet"));
        well_formed(&missing).unwrap();
        // The checker itself refuses what it should.
        for bad in [
            "<a><b></a>",
            "<a x=1/>",
            "<a>&x;</a>",
            "<a>",
            "<a x=\"<\"/>",
        ] {
            assert!(well_formed(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_pool_shares_one_scale_and_draws_every_node_in_status_order() {
        use Phase::InService as I;
        let mut st = crate::admin::status::status(&crate::admin::status::tests::sample());
        let web = st.pools.iter_mut().find(|p| p.name == "web").unwrap();
        web.name = "p".into();
        let mut h = hist("a", &[(2, 3, 0, I), (0, 37, 1, I)]);
        let mut b = h.pools[0].nodes[0].clone();
        b.name = "b <&\"x\">".into();
        b.open = vec![None, Some(2)];
        h.pools[0].nodes.insert(0, b);
        let mut out = String::new();
        pool_charts(&mut out, web, &h);
        well_formed(&out).unwrap();
        let order: Vec<&str> = out
            .match_indices("<figure class=\"chart\" data-node=\"")
            .map(|(i, _)| &out[i + 33..i + 40])
            .collect();
        assert_eq!(order, ["a\"><fig", "b &lt;&", "[2001:d"]);
        assert_eq!(
            out.matches(">50</text>").count(),
            3,
            "37 rounds up to 50 for every node: {out}"
        );
        assert_eq!(
            out.matches("no samples yet").count(),
            1,
            "the node without history"
        );
        assert!(out.contains("id=\"charts-p\""));
    }
}
