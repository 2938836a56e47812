#!/usr/bin/env python3
"""Draw the main table of a benches/RESULTS.md as a self-contained SVG chart.

    python3 benches/chart.py RESULTS.md OUT.svg
    python3 benches/chart.py --self-test

One group per table row (workload figure), one horizontal bar per contender:
the contender's ratio to direct (the load tool straight to a backend), or,
in rows where direct has no figure (proxy CPU, memory), its ratio to HAProxy,
which that row's label says. Bars grow left or right from the 1.0 line on a
log scale. The ratios are the ones the table prints; the chart is driven by
the table alone (any row, any contender column), so rows added to
compare.sh's report need no change here. Failed and n/a cells get a note
instead of a bar; no cell can make it crash.

Plain Python 3 standard library; no scripts, fonts or links in the output;
the same input gives the same bytes. Exit status: 0 written, 1 the input has
no usable table or cannot be read or written, 2 usage.
"""

import math
import re
import sys
from xml.sax.saxutils import escape as _escape

# characters XML 1.0 does not allow (control characters, lone surrogates)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def escape(s):
    """Text for the SVG: XML-escaped, without characters XML cannot carry."""
    return _escape(_NOT_XML.sub("", s), {'"': "&quot;"})

# --- parsing ----------------------------------------------------------------


class ChartError(Exception):
    """Input that cannot be charted, with a message naming what was wrong."""


class Cell:
    """One table cell: kind is "value", "failed", "n/a", "none" (— / empty) or
    "other" (text that is none of these)."""

    def __init__(self, raw):
        self.raw = raw.strip()
        self.kind = "other"
        self.value = None  # float
        self.value_text = ""  # the median as printed
        self.ratios = {}  # "d" / "h" -> (float, printed text)
        self.notes = []  # "[2/3 ok]", "[12 errors]"
        s = self.raw
        low = s.lower()
        if s in ("", "—", "-", "–"):
            self.kind = "none"
            return
        if low.startswith("failed"):
            self.kind = "failed"
            return
        if low.startswith("n/a"):
            self.kind = "n/a"
            return
        m = re.match(r"^([-−]?[\d,]*\.?\d+(?:[eE][-+]?\d+)?)", s)
        if not m:
            return
        try:
            self.value = float(m.group(1).replace(",", "").replace("−", "-"))
        except ValueError:
            return
        if not math.isfinite(self.value):
            self.value = None
            return
        self.kind = "value"
        self.value_text = m.group(1)
        paren = re.search(r"\(([^)]*)\)", s[m.end():])
        if paren:
            for part in paren.group(1).split(","):
                r = re.match(r"^\s*([\d.]+)×\s*([a-z])\s*$", part)
                if r:
                    try:
                        f = float(r.group(1))
                    except ValueError:
                        continue
                    if math.isfinite(f):
                        self.ratios[r.group(2)] = (f, r.group(1) + "×")
        self.notes = re.findall(r"\[[^\]]*\]", s[m.end():])


class Row:
    def __init__(self, label, unit, cells):
        self.label = label
        self.unit = unit
        self.cells = cells  # list of (column name, Cell)


def split_row(line):
    """The cells of a markdown table line (`\\|` is a literal bar)."""
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    return [c.replace("\\|", "|").strip() for c in re.split(r"(?<!\\)\|", s)]


def parse_tables(text):
    """Every row of every table whose header starts `| workload | unit |`."""
    rows = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        head = split_row(lines[i]) if lines[i].lstrip().startswith("|") else []
        if len(head) >= 3 and head[0].lower() == "workload" and head[1].lower() == "unit":
            columns = head[2:]
            i += 1
            if i < len(lines) and re.match(r"^\s*\|?\s*:?-", lines[i]):
                i += 1
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                cells = split_row(lines[i])
                i += 1
                if len(cells) < 2 or not cells[0]:
                    continue
                vals = cells[2:] + [""] * len(columns)
                rows.append(Row(cells[0], cells[1],
                                [(c, Cell(vals[k])) for k, c in enumerate(columns)]))
            continue
        i += 1
    return rows


def parse_meta(text):
    """What RESULTS.md says about the run: title, mode, date, rounds, machine."""
    meta = {}
    m = re.search(r"^# (.+)$", text, re.M)
    meta["title"] = m.group(1).strip() if m else "Benchmark"
    m = re.search(r"\(([\w-]+) mode\) on ([^.\n]+)", text)
    if m:
        meta["mode"], meta["date"] = m.group(1), m.group(2).strip()
    m = re.search(r"Median of \*\*(\d+) rounds?\*\*", text)
    if m:
        meta["rounds"] = m.group(1)
    m = re.search(r"^- Machine: (.+)$", text, re.M)
    if m:
        meta["machine"] = m.group(1).split(". ")[0].rstrip(".")
    m = re.search(r"^- Versions: .*?\bringlb ([0-9a-f]{7,40}[^;.\n]*)", text, re.M)
    if m:
        meta["rev"] = m.group(1).strip()
    meta["quick"] = meta.get("mode", "").upper() == "QUICK" or "**QUICK mode**" in text
    return meta


LOWER_WORDS = ("latency", "p50", "p90", "p95", "p99", "p999", "cpu", "rss", "memory",
               "failed", "failure", "error", "time until", "time to", "added over",
               "bytes per", "per connection", "per request", "per 1,000", "per message")
LOWER_UNITS = ("µs", "us", "ns", "ms", "s", "min", "bytes", "b", "kib", "mib", "gib",
               "kb", "mb", "cpu s/gb", "attempts", "failures", "errors", "%")


def lower_is_better(label, unit):
    """Whether a smaller figure is the better one, from the row's label and unit.
    Latency, CPU, memory, failures and time until recovery are costs; rates
    (a unit per second) are what a proxy delivers."""
    lab, u = label.lower(), unit.lower().strip()
    if any(w in lab for w in LOWER_WORDS):
        return True
    if u.endswith("/s") or u.endswith("per s") or u.endswith("/sec"):
        return False
    return u in LOWER_UNITS or "cpu" in u or u.startswith("bytes")


# --- what to draw -------------------------------------------------------------


def ratio_text(r):
    return f"{r:.2f}×" if r < 100 else f"{r:.0f}×"


class Entry:
    """One contender's line in a group: kind "bar", "reference", "failed",
    "n/a", "noratio" (a figure but no ratio) or "absent" (no figure)."""

    def __init__(self, name, kind, ratio=None, text=""):
        self.name, self.kind, self.ratio, self.text = name, kind, ratio, text


class Group:
    def __init__(self, row, lower, ref, ref_note, entries):
        self.row, self.lower, self.ref, self.ref_note, self.entries = row, lower, ref, ref_note, entries


def find(cells, name):
    for c, cell in cells:
        if c.lower() == name:
            return c, cell
    return None, None


def plan(row):
    """The group for one row: which reference, and one entry per contender."""
    dname, dcell = find(row.cells, "direct")
    hname, hcell = find(row.cells, "haproxy")
    if dcell is not None and dcell.kind == "value":
        ref, key, refcell = dname, "d", dcell
        note = f"bars: × direct ({dcell.value_text} {row.unit})"
    elif hcell is not None and hcell.kind == "value":
        ref, key, refcell = hname, "h", hcell
        why = {"failed": "direct failed", "n/a": "direct n/a"}.get(
            dcell.kind if dcell is not None else "", "no direct figure")
        note = f"bars: × HAProxy ({hcell.value_text} {row.unit}; {why})"
    else:
        ref, key, refcell = None, None, None
        note = "no bars: neither direct nor HAProxy has a figure"
    entries = []
    for name, cell in row.cells:
        if name == dname:
            continue
        notes = (" " + " ".join(cell.notes)) if cell.notes else ""
        if cell.kind in ("failed", "n/a"):
            entries.append(Entry(name, cell.kind, text=cell.kind))
        elif cell.kind != "value":
            entries.append(Entry(name, "absent", text="no figure" if cell.kind == "other" else "—"))
        elif name == ref:
            entries.append(Entry(name, "reference", 1.0, f"{cell.value_text} = 1 (reference){notes}"))
        elif key is None:
            entries.append(Entry(name, "noratio", text=f"{cell.value_text} (no ratio){notes}"))
        else:
            r = cell.ratios.get(key)
            if r is None and refcell.value and refcell.value > 0 and cell.value >= 0:
                f = cell.value / refcell.value
                r = (f, ratio_text(f))
            if r is None:
                entries.append(Entry(name, "noratio", text=f"{cell.value_text} (no ratio){notes}"))
            else:
                entries.append(Entry(name, "bar", r[0], f"{cell.value_text} · {r[1]}{notes}"))
    return Group(row, lower_is_better(row.label, row.unit), ref, note, entries)


# --- drawing ----------------------------------------------------------------

W = 960
NAME_X = 16
NAME_END = 136
PX0, PX1 = 250, 830
CX = (PX0 + PX1) // 2
HALF = (PX1 - PX0) // 2
HEAD_H, LINE_H, BAR_H, GAP = 24, 18, 12, 10
FONT = "DejaVu Sans, Verdana, Helvetica, Arial, sans-serif"
RINGLB = "#e8590c"
# the same colour for a contender in every run, whichever columns it has
KNOWN = {"haproxy": "#3b5bdb", "haproxy splice": "#748ffc", "nginx": "#2f9e44"}
OTHERS = ["#9c36b5", "#868e96", "#1098ad", "#e64980", "#5c940d"]
BETTER = "#ebfbee"


def text_w(s, size):
    """A generous estimate of the rendered width of `s` in px (DejaVu Sans)."""
    return sum(size * (0.35 if ch in " .,:;'()|il1" else 0.64) for ch in s)


def wrap(s, size, width):
    words, lines, cur = s.split(" "), [], ""
    for w in words:
        nxt = (cur + " " + w) if cur else w
        if cur and text_w(nxt, size) > width:
            lines.append(cur)
            cur = w
        else:
            cur = nxt
    if cur:
        lines.append(cur)
    return lines


def num(v):
    """Coordinates with at most one decimal, so the output is stable."""
    s = f"{v:.1f}"
    return s[:-2] if s.endswith(".0") else s


class Svg:
    def __init__(self):
        self.parts = []

    def text(self, x, y, s, size=11, anchor="start", fill="#212529", weight=None, cls=None, style=None):
        attrs = f'x="{num(x)}" y="{num(y)}" font-size="{size}"'
        if anchor != "start":
            attrs += f' text-anchor="{anchor}"'
        if fill != "#212529":
            attrs += f' fill="{fill}"'
        if weight:
            attrs += f' font-weight="{weight}"'
        if style:
            attrs += f' font-style="{style}"'
        if cls:
            attrs += f' class="{cls}"'
        self.parts.append(f"<text {attrs}>{escape(s)}</text>")

    def rect(self, x, y, w, h, fill, cls=None, extra=""):
        c = f' class="{cls}"' if cls else ""
        self.parts.append(f'<rect{c} x="{num(x)}" y="{num(y)}" width="{num(w)}" height="{num(h)}" fill="{fill}"{extra}/>')

    def line(self, x1, y1, x2, y2, stroke, width=1, dash=None):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<line x1="{num(x1)}" y1="{num(y1)}" x2="{num(x2)}" y2="{num(y2)}" stroke="{stroke}" stroke-width="{width}"{d}/>')


def scale_span(groups):
    """Half-width of the log2 axis: the largest |log2 ratio|, rounded up to a
    whole doubling, between 2× and 8×; bars beyond are capped."""
    m = 0.0
    for g in groups:
        for e in g.entries:
            if e.kind == "bar" and e.ratio and e.ratio > 0:
                m = max(m, abs(math.log2(e.ratio)))
    return min(3, max(1, math.ceil(m - 1e-9)))


def colours(groups):
    names = []
    for g in groups:
        for e in g.entries:
            if e.name not in names:
                names.append(e.name)
    out, k = {}, 0
    for n in names:
        if n.lower() == "ringlb":
            out[n] = RINGLB
        elif n.lower() in KNOWN:
            out[n] = KNOWN[n.lower()]
        else:
            out[n] = OTHERS[k % len(OTHERS)]
            k += 1
    return out


def head_parts(g):
    """A group's header: the row's label, then unit, direction and reference."""
    rest = f"  {g.row.unit} · {'lower' if g.lower else 'higher'} is better · {g.ref_note}"
    return g.row.label, rest


def head_wraps(g):
    head, rest = head_parts(g)
    return text_w(head, 13) + text_w(rest, 11) > W - 2 * NAME_X


def render(meta, rows, source="RESULTS.md"):
    if not rows:
        raise ChartError("no rows to chart: the input has no table whose header starts "
                         "'| workload | unit |', or that table is empty")
    groups = [plan(r) for r in rows]
    span = scale_span(groups)
    lo, hi = 2.0 ** -span, 2.0 ** span
    px_per = HALF / span
    col = colours(groups)
    svg = Svg()
    y = 32
    svg.text(NAME_X, y, meta.get("title", "Benchmark") + ": each contender relative to direct",
             size=18, weight="bold")
    sub = [meta[k] for k in ("mode",) if k in meta]
    sub = [f"{sub[0]} mode"] if sub else []
    sub += [meta[k] for k in ("date",) if k in meta]
    if "rev" in meta:
        sub.append("ringlb " + meta["rev"])
    if "rounds" in meta:
        sub.append(f"median of {meta['rounds']} round{'' if meta['rounds'] == '1' else 's'}")
    if sub:
        y += 20
        svg.text(NAME_X, y, " · ".join(sub), size=12, fill="#495057")
    if "machine" in meta:
        for ln in wrap("Machine: " + meta["machine"], 12, W - 2 * NAME_X):
            y += 17
            svg.text(NAME_X, y, ln, size=12, fill="#495057")
    if meta.get("quick"):
        y += 18
        svg.text(NAME_X, y, "QUICK mode: a smoke run with short measurements; the figures are only indicative.",
                 size=12, fill="#c92a2a", weight="bold")
    legend = [
        "Each bar is the contender's median divided by direct's (the load tool straight to a backend, the 1.0 line). "
        "Rows whose label says “× HAProxy” have no direct figure (proxy CPU, memory): there the bar is the ratio to HAProxy.",
        "Higher is better for rates (Gbit/s, conn/s, req/s, messages/s); lower is better for latency (µs), CPU, "
        "memory (bytes), time until back and failed attempts. Each row says which; its tinted side of the 1.0 line "
        "is the better side.",
        f"Log scale: each grid line doubles, {lo:g}× to {hi:g}×; bars beyond are capped and "
        "marked ‹ or › (the label gives the true ratio). At each bar end: the median and its ratio. ringlb in orange.",
    ]
    y += 8
    for para in legend:
        for ln in wrap(para, 11, W - 2 * NAME_X):
            y += 15
            svg.text(NAME_X, y, ln, size=11, fill="#495057", cls="legend")
    y += 28

    def xpos(r):
        if r <= 0:
            return PX0, True
        lr = math.log2(r)
        capped = abs(lr) > span + 1e-9
        lr = max(-span, min(span, lr))
        return CX + lr * px_per, capped

    def axis(yy):
        for k in range(-span, span + 1):
            x = CX + k * px_per
            svg.text(x, yy, f"{2.0 ** k:g}×", size=10, anchor="middle", fill="#495057", cls="tick")

    axis(y - 8)
    body = []
    gy = y
    for g in groups:
        head_h = HEAD_H + (15 if head_wraps(g) else 0)
        h = head_h + LINE_H * max(1, len(g.entries)) + GAP
        body.append((g, gy, h, head_h))
        gy += h
    bottom = gy
    # backgrounds, better side, grid
    for gi, (g, gy0, h, head_h) in enumerate(body):
        if gi % 2 == 0:
            svg.rect(0, gy0, W, h, "#f8f9fa")
        bx = PX0 if g.lower else CX
        svg.rect(bx, gy0 + head_h - 4, HALF, h - head_h - GAP + 8, BETTER)
        for k in range(-span, span + 1):  # grid over the bars, not the header
            if k:
                x = CX + k * px_per
                svg.line(x, gy0 + head_h - 4, x, gy0 + h - GAP + 4, "#ced4da", 1, "3 3")
    for g, gy0, h, head_h in body:
        head, rest = head_parts(g)
        hy = gy0 + 16
        if head_wraps(g):
            svg.parts.append(f'<text x="{NAME_X}" y="{num(hy)}" font-size="13" font-weight="bold" class="row">'
                             f"{escape(head)}</text>")
            svg.text(NAME_X, hy + 15, rest.strip(), size=11, fill="#495057")
        else:
            svg.parts.append(f'<text x="{NAME_X}" y="{num(hy)}" font-size="13" class="row">'
                             f'<tspan font-weight="bold">{escape(head)}</tspan>'
                             f'<tspan fill="#495057" font-size="11">{escape(rest)}</tspan></text>')
        ey = gy0 + head_h
        for e in g.entries:
            cy = ey + LINE_H / 2
            ringlb = e.name.lower() == "ringlb"
            svg.text(NAME_X + 6, cy + 4, e.name, size=11, weight="bold" if ringlb else None,
                     fill=RINGLB if ringlb else "#212529")
            if e.kind == "bar":
                x, capped = xpos(e.ratio)
                x0, x1 = (CX, x) if x >= CX else (x, CX)
                if x1 - x0 < 2:
                    x0, x1 = CX - 1, CX + 1
                svg.rect(x0, cy - BAR_H / 2, x1 - x0, BAR_H, col.get(e.name, OTHERS[1]), cls="bar")
                if capped:
                    tip = x1 - 4 if x >= CX else x0 + 4
                    svg.text(tip, cy + 4, "›" if x >= CX else "‹", size=12, anchor="middle",
                             fill="#ffffff", weight="bold")
                w = text_w(e.text, 11)
                right = x >= CX and not (x1 - x0 <= 2 and e.ratio < 1)
                if right and x1 + 5 + w <= W - 6:
                    svg.text(x1 + 5, cy + 4, e.text, anchor="start", cls="label")
                elif not right and x0 - 5 - w >= NAME_END:
                    svg.text(x0 - 5, cy + 4, e.text, anchor="end", cls="label")
                elif right:  # no room at the end: the other side of the 1.0 line
                    svg.text(CX - 5, cy + 4, e.text, anchor="end", cls="label")
                else:
                    svg.text(CX + 5, cy + 4, e.text, anchor="start", cls="label")
            elif e.kind == "reference":
                svg.rect(CX - 1.5, cy - BAR_H / 2, 3, BAR_H, col.get(e.name, OTHERS[1]))
                svg.text(CX + 6, cy + 4, e.text, fill="#495057", cls="label")
            else:
                cls = "status" if e.kind in ("failed", "n/a") else "label"
                svg.text(CX + 6, cy + 4, e.text, fill="#868e96" if e.kind != "failed" else "#c92a2a",
                         style="italic", cls=cls)
            ey += LINE_H
    for g, gy0, h, head_h in body:  # the 1.0 line, over the bars
        svg.line(CX, gy0 + head_h - 4, CX, gy0 + h - GAP + 4, "#343a40", 1.5)
    axis(bottom + 14)
    y = bottom + 36
    svg.text(NAME_X, y, f"From the table in {source}, which has the exact figures, the raw rounds and the setup.",
             size=11, fill="#495057")
    height = y + 14
    title = meta.get("title", "Benchmark")
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{num(height)}" '
            f'viewBox="0 0 {W} {num(height)}" font-family="{FONT}" role="img">')
    return "\n".join([head, f"<title>{escape(title)}: each contender relative to direct</title>",
                      f'<rect x="0" y="0" width="{W}" height="{num(height)}" fill="#ffffff"/>']
                     + svg.parts + ["</svg>", ""])


def chart(text, source="RESULTS.md"):
    return render(parse_meta(text), parse_tables(text), source)


# --- self-test --------------------------------------------------------------

SAMPLE = """# ringlb compared with HAProxy and nginx

Generated by `benches/compare.sh` (QUICK mode) on 2026-12-02 10:00 UTC. Reproduce with it.

Median of **3 rounds** per cell.

**QUICK mode**: a smoke run with short measurements; use a full run for figures to quote.

| workload | unit | direct | ringlb | HAProxy | HAProxy splice | nginx |
|---|---|---|---|---|---|---|
| Bulk, 1 stream | Gbit/s | 20.71 (1.88× h) | 17.55 (0.85× d, 1.59× h) | 11.04 (0.53× d) | failed | n/a |
| Bulk, 1 stream: proxy CPU | CPU s/GB | — | 0.227 (0.42× h) | 0.538 | 0.267 (0.50× h) [2/3 ok] | n/a |
| Fanout: messages/s | msg/s | 1,000,000 (10.0× h) | 950,000 (0.95× d, 9.50× h) | 100,000 (0.10× d) | 120,000 (0.12× d, 1.20× h) [5 errors] | failed |
| Ping-pong, 1 connection: p50 added over direct | µs | — | -2.0 | 22.0 | 26.0 (1.18× h) | 20.0 (0.91× h) |
| Storm: time until all back | s | failed | 1.20 (0.60× h) | 2.00 | 2.10 (1.05× h) | 1.9 (0.95× h) |
| Storm: failed attempts | attempts | — | 0 (0.00× h) | 12 | n/a | failed |
| RSS per idle proxied connection (9,000 held) | bytes | — | 1,851 (– d, 0.55× h) | 3,383 (– d) | 3,384 (– d, 1.00× h) | 9,763 (– d, 2.89× h) |
| Neither reference | µs | failed | 5.0 | failed | 6.0 | n/a |
| Broken row | µs |
| A \\| bar | µs | <b>&amp; | x | 1e999 | 3 (abc× d) | 4 (1.5× d, oops) |

## Setup

- Machine: 2 CPUs (AMD EPYC), 23.5 GiB RAM; Debian GNU/Linux 12 (bookworm), kernel 6.1.0. The load tool shares them.
- Versions: rustc 1.80.0; ringlb abc1234; HAProxy 2.6.
"""
# (bars, failed notes, n/a notes) the sample must give
EXPECT = (2 + 2 + 3 + 2 + 3 + 1 + 3 + 0 + 0 + 0, 4, 4)


def check_svg(svg, expect=None):
    """Parse with xml.etree; return (bars, failed, n/a); raise on a mismatch."""
    import xml.etree.ElementTree as ET
    root = ET.fromstring(svg)
    if not root.tag.endswith("svg"):
        raise AssertionError(f"root element is {root.tag}, not svg")
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag in ("script", "image", "foreignObject", "style", "a", "use"):
            raise AssertionError(f"element <{tag}> in the SVG (it must be self-contained)")
        for k, v in el.attrib.items():
            if "href" in k or "url(" in v:
                raise AssertionError(f"external reference {k}={v!r}")
    bars = sum(1 for el in root.iter() if el.get("class") == "bar")
    status = [el.text for el in root.iter() if el.get("class") == "status"]
    got = (bars, status.count("failed"), status.count("n/a"))
    if expect is not None and got != expect:
        raise AssertionError(f"expected (bars, failed, n/a) = {expect}, got {got}")
    return got


def self_test():
    checks = []

    def ok(cond, what):
        checks.append(what)
        if not cond:
            raise AssertionError(what)

    rows = parse_tables(SAMPLE)
    ok(len(rows) == 10, f"10 rows parsed (got {len(rows)})")
    dirs = {r.label: lower_is_better(r.label, r.unit) for r in rows}
    for label, lower in [("Bulk, 1 stream", False), ("Bulk, 1 stream: proxy CPU", True),
                         ("Fanout: messages/s", False), ("Storm: time until all back", True),
                         ("Storm: failed attempts", True), ("RSS per idle proxied connection (9,000 held)", True)]:
        ok(dirs[label] == lower, f"{label}: {'lower' if lower else 'higher'} is better")
    for label, unit, lower in [("New connections", "conn/s", False), ("New connections: p99", "µs", True),
                               ("Fanout: delivery latency p99", "µs", True),
                               ("Fanout: proxy CPU per 1,000 messages", "ms", True),
                               ("Fanout: RSS per connection", "bytes", True),
                               ("Keep-alive requests, 64 connections (http)", "req/s", False)]:
        ok(lower_is_better(label, unit) == lower, f"{label} ({unit}): {'lower' if lower else 'higher'} is better")
    g = [plan(r) for r in rows]
    ok(g[0].ref == "direct" and "× direct" in g[0].ref_note, "a row with direct uses direct")
    ok(g[1].ref == "HAProxy" and "× HAProxy" in g[1].ref_note, "a row without direct says × HAProxy")
    ok("direct failed" in g[4].ref_note, "a row whose direct failed says so")
    ok(g[7].ref is None and all(e.kind != "bar" for e in g[7].entries), "no reference: no bars")
    ok([e.kind for e in g[3].entries] == ["noratio", "reference", "bar", "bar"], "negative figure: no ratio")
    ok(any("[2/3 ok]" in e.text for e in g[1].entries), "partial rounds shown at the bar")
    meta = parse_meta(SAMPLE)
    ok(meta.get("quick") and meta.get("date") == "2026-12-02 10:00 UTC" and meta.get("rounds") == "3",
       f"run details parsed ({meta})")
    svg = chart(SAMPLE)
    got = check_svg(svg, EXPECT)
    checks.append(f"SVG parses; (bars, failed, n/a) = {got}")
    ok(svg == chart(SAMPLE), "same input, same bytes")
    ok("QUICK mode" in svg and "2 CPUs (AMD EPYC)" in svg and "ringlb abc1234" in svg, "title has mode, machine, rev")
    ok(f'fill="{RINGLB}"' in svg, "ringlb has its colour")
    # every prefix of the sample renders or is refused with a ChartError, never a crash
    n = 0
    for cut in range(0, len(SAMPLE), 23):
        try:
            check_svg(chart(SAMPLE[:cut]))
            n += 1
        except ChartError:
            pass
    ok(n > 10, f"{n} truncated samples rendered, the rest refused cleanly")
    for bad in ("", "no table here\n", "| workload | unit |\n|---|---|\n"):
        try:
            chart(bad)
            ok(False, f"{bad!r} refused")
        except ChartError:
            checks.append(f"{bad!r} refused with a ChartError")
    for c in checks:
        print("ok:", c)
    print(f"self-test passed ({len(checks)} checks)")


# --- main -------------------------------------------------------------------


def main(argv):
    if argv == ["--self-test"]:
        try:
            self_test()
        except Exception as e:  # any failure of the self-test, reported as such
            print(f"chart.py self-test FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        return 0
    if len(argv) != 2 or argv[0].startswith("-"):
        print("usage: chart.py RESULTS.md OUT.svg | chart.py --self-test", file=sys.stderr)
        return 2
    src, dst = argv
    try:
        try:
            with open(src, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as e:
            raise ChartError(f"cannot read {src}: {e.strerror or e}")
        svg = chart(text, source=src.replace("\\", "/").rsplit("/", 1)[-1])
        try:
            with open(dst, "w", encoding="utf-8", newline="\n") as f:
                f.write(svg)
        except OSError as e:
            raise ChartError(f"cannot write {dst}: {e.strerror or e}")
    except ChartError as e:
        print(f"chart.py: {src}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
