#!/usr/bin/env bash
# Renders the admin page (`GET /`) of a real ringlb in headless Chromium and checks
# what a person would see: one table per pool, a row per node with its state, a
# node taken down by its health check shown DOWN, and per node a live chart of
# its connections. Clients that reconnect when closed hold connections through
# ringlb (so the charts' open lines are not flat at zero); then demo-b goes down
# (the demo closes its connections, `on_node_down = "close"`) and its clients
# move to the other nodes, which is what the charts must show. Run by .ci/run.
#
#   tests/admin_page.sh [path/to/ringlb]     (default: target/debug/ringlb)
#
# Without Chromium it prints why and exits 0, unless REQUIRE_CHROMIUM=1 (CI).
# The screenshot is kept in ${CARGO_TARGET_DIR:-target}/admin_page/page.png (or
# KEEP_SCREENSHOT=PATH); waits scale with RINGLB_TEST_PATIENCE as in the Rust tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/ringlb}
chrome=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$chrome" ]; then
    if [ "${REQUIRE_CHROMIUM:-0}" = 1 ]; then
        echo "FAIL: chromium is not installed" >&2
        exit 1
    fi
    echo "SKIP: chromium is not installed (apt-get install chromium)"
    exit 0
fi
[ -x "$bin" ] || cargo build -q
patience=${RINGLB_TEST_PATIENCE:-1}
# The colours of the charts' lines (src/admin/chart.rs: OPEN, MISPLACED).
open_rgb="29,78,216"
clients=24

tmp=$(mktemp -d)
pid=""
holder=""
# (The waits report how the killed processes ended, a signal for the clients'
# holder: not this script's result, which `set -e` would otherwise make it.)
cleanup() {
    if [ -n "$holder" ] && kill "$holder" 2>/dev/null; then wait "$holder" 2>/dev/null || true; fi
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then wait "$pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# Five distinct free ports (all held until printed, so none is handed out twice).
read -r lb a b c admin < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(5)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
sed -e "s/:7070\"/:$lb\"/; s/:7071\"/:$a\"/; s/:7072\"/:$b\"/; s/:7073\"/:$c\"/" \
    -e 's/^interval = "1s"/interval = "200ms"/; s/^timeout = "500ms"/timeout = "150ms"/' \
    config/demo.toml > "$tmp/demo.toml"
sed -i "s/^listen = \"127.0.0.1:7080\"/listen = \"127.0.0.1:$admin\"/" "$tmp/demo.toml"
grep -q "127.0.0.1:$admin" "$tmp/demo.toml" || { echo "FAIL: config/demo.toml has no [admin] on 127.0.0.1:7080" >&2; exit 1; }
grep -q '^on_node_down = "close"' "$tmp/demo.toml" || { echo "FAIL: config/demo.toml does not close a down node's connections" >&2; exit 1; }

"$bin" demo --config "$tmp/demo.toml" > "$tmp/demo.out" 2> "$tmp/demo.err" < /dev/null &
pid=$!
log() { cat "$tmp/demo.out" "$tmp/demo.err" >&2; [ -f "$tmp/holder.log" ] && cat "$tmp/holder.log" >&2; true; }

# until SECONDS WHAT CMD...: run CMD every 100 ms until it succeeds, for at most
# SECONDS times the patience.
until_ok() {
    local secs=$1 what=$2
    shift 2
    local end
    end=$(python3 -c "import time,sys; print(time.time() + float(sys.argv[1]) * float(sys.argv[2]))" "$secs" "$patience")
    while ! "$@" > /dev/null 2>&1; do
        if python3 -c "import time,sys; sys.exit(time.time() < float(sys.argv[1]))" "$end"; then
            echo "FAIL: $what within $secs s (x$patience); the demo's log:" >&2
            log
            exit 1
        fi
        sleep 0.1
    done
}
# hist_holds PYTHON: the latest /status?history=1 as `h` (and `last(node)`, that
# node's latest sample as a dict) for a Python expression that must hold.
hist_holds() {
    curl -sf "http://127.0.0.1:$admin/status?history=1" | python3 -c '
import json, sys
h = json.load(sys.stdin)["history"]
nodes = {n["name"]: n for p in h["pools"] for n in p["nodes"]}
def last(name):
    n = nodes[name]
    return {k: n[k][-1] for k in ("open", "misplaced", "state")}
sys.exit(0 if eval(sys.argv[1]) else 1)' "$1"
}

until_ok 10 "the demo's admin endpoint answered" curl -sf "http://127.0.0.1:$admin/status"
until_ok 10 "the first history sample was taken" hist_holds 'len(h["at_unix_ms"]) >= 1'

# Clients from distinct IPs that hold their connection open and reconnect (from
# the same IP) when it is closed, like the seed app's. Each logs its node.
python3 - "$lb" "$clients" > "$tmp/holder.log" 2>&1 <<'EOF' &
import selectors, socket, sys, time
lb, n = int(sys.argv[1]), int(sys.argv[2])
sel = selectors.DefaultSelector()
def connect(ip):
    while True:
        try:
            s = socket.socket()
            s.bind((ip, 0))
            s.connect(("127.0.0.1", lb))
            sel.register(s, selectors.EVENT_READ, ip)
            return
        except OSError as e:
            print(ip, "connect failed:", e, flush=True)
            s.close()
            time.sleep(0.2)
for i in range(n):
    connect(f"127.0.0.{10 + i}")
while True:
    for key, _ in sel.select():
        data = key.fileobj.recv(256)
        if data:
            print(key.data, "on", data.decode(errors="replace").strip(), flush=True)
        else:
            sel.unregister(key.fileobj)
            key.fileobj.close()
            print(key.data, "closed; reconnecting", flush=True)
            connect(key.data)
EOF
holder=$!
until_ok 20 "a sample counted the $clients clients, some of them on demo-b" \
    hist_holds "sum(last(n)['open'] for n in nodes) == $clients and last('demo-b')['open'] > 0"
on_b=$(grep -c ' on demo-b$' "$tmp/holder.log" || true)

curl -sf "http://127.0.0.1:$b/health/down" > /dev/null ||
    { echo "FAIL: demo-b (port $b) did not answer; demo log:" >&2; log; exit 1; }
# Two probes of 200 ms take demo-b down; its clients are closed and reconnect elsewhere.
until_ok 30 "a sample showed demo-b down with its clients moved to the other nodes" \
    hist_holds "last('demo-b') == {'open': 0, 'misplaced': 0, 'state': 'down'} and sum(last(n)['open'] for n in nodes) == $clients"

render() {
    timeout 60 "$chrome" --headless --no-sandbox --disable-gpu --disable-quic \
        --no-first-run --disable-background-networking --disable-component-update \
        --disable-sync --hide-scrollbars --user-data-dir="$tmp/profile" "$@" "http://127.0.0.1:$admin/" 2>>"$tmp/chrome.err"
}
render --dump-dom > "$tmp/dom.html"
render --screenshot="$tmp/page.png" --window-size=1500,1000 > /dev/null
shot=${KEEP_SCREENSHOT:-${CARGO_TARGET_DIR:-target}/admin_page/page.png}
mkdir -p "$(dirname "$shot")"
cp "$tmp/page.png" "$shot"

fail() { echo "FAIL: $*" >&2; echo "--- DOM:" >&2; cat "$tmp/dom.html" >&2; echo "--- screenshot: $shot" >&2; exit 1; }
grep -q '<table class="pool" id="pool-demo">' "$tmp/dom.html" || fail "no table for pool demo"
grep -q '<tr class="node" data-node="demo-b">.*<td class="down">DOWN</td>' "$tmp/dom.html" || fail "demo-b not shown DOWN"
ups=$(grep -c '<td class="up">UP</td>' "$tmp/dom.html" || true)
[ "$ups" = 2 ] || fail "expected 2 nodes UP, saw $ups"
grep -q 'class="bar"' "$tmp/dom.html" || fail "no ring share bars"

# The charts in the DOM: one per node, each an SVG with the open line, an axis
# maximum, the span and the legend; every open line rises above zero (all nodes
# had clients), demo-b's ends at zero and its chart is shaded where it was down.
python3 - "$tmp/dom.html" <<'EOF' || fail "the charts in the DOM are not what the page should show"
import re, sys
dom = open(sys.argv[1]).read()
block = re.search(r'<div class="charts" id="charts-demo">(.*?)</div>', dom, re.S)
assert block, "no charts for pool demo"
figs = dict(re.findall(r'<figure class="chart" data-node="([^"]+)">(.*?)</figure>', block.group(1), re.S))
assert sorted(figs) == ["demo-a", "demo-b", "demo-c"], sorted(figs)
for name, fig in figs.items():
    assert fig.count("<svg") == 1, name
    pts = re.search(r'class="open" points="([^"]+)"', fig)
    assert pts, f"{name}: no open line"
    ys = [float(p.split(",")[1]) for p in pts.group(1).split()]
    assert min(ys) < max(ys), f"{name}: the open line is flat: {ys}"
    assert re.search(r'text-anchor="end">\d+</text>', fig), f"{name}: no axis maximum"
    assert re.search(r">\w+ ago</text>", fig) and ">now</text>" in fig, f"{name}: no span labels"
    assert re.search(r'>open \d+</text>', fig) and re.search(r'>misplaced \d+</text>', fig), f"{name}: no legend"
    if name == "demo-b":
        assert ys[-1] == max(ys), f"demo-b's line does not end at zero: {ys}"
        assert 'class="down"' in fig, "demo-b's chart is not shaded down"
        assert ">open 0</text>" in fig
print("charts in the DOM: 3 nodes, open lines above zero, demo-b down and empty")
EOF

# The charts in the screenshot: pixels of the open line's colour. The legends
# alone (3 keys of 14x3 px) cover 3 rows; the lines rising from zero cover many.
read -r px rows < <(python3 - "$tmp/page.png" "$open_rgb" <<'EOF'
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
want = [int(v) for v in sys.argv[2].split(",")]
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, ihdr = 8, b"", None
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b"IHDR":
        ihdr = struct.unpack(">IIBBBBB", body)
    elif kind == b"IDAT":
        idat += body
    pos += 12 + n
w, h, depth, ctype, _, _, interlace = ihdr
assert depth == 8 and ctype in (2, 6) and interlace == 0, ihdr
bpp = 3 if ctype == 2 else 4
raw = zlib.decompress(idat)
stride = w * bpp
prev = bytearray(stride)
count, rows = 0, set()
for y in range(h):
    f = raw[y * (stride + 1)]
    line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        a = line[i - bpp] if i >= bpp else 0
        b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
        if f == 1: line[i] = (line[i] + a) & 255
        elif f == 2: line[i] = (line[i] + b) & 255
        elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    for x in range(0, stride, bpp):
        if all(abs(line[x + k] - want[k]) <= 24 for k in range(3)):
            count += 1
            rows.add(y)
    prev = line
print(count, len(rows))
EOF
)
size=$(stat -c %s "$tmp/page.png" 2>/dev/null || echo 0)
[ "$size" -gt 10000 ] || fail "screenshot is only $size bytes"
[ "$px" -ge 150 ] || fail "the screenshot has only $px pixels of the open line's colour (rgb $open_rgb)"
[ "$rows" -ge 20 ] || fail "the open line's colour covers only $rows rows of the screenshot: no chart line rising from zero"
echo "admin page OK: rendered by $("$chrome" --version 2>/dev/null | head -1); pool table with demo-b DOWN and 2 nodes UP; a chart per node; $clients clients ($on_b first on demo-b, moved when it went down); $px open-line pixels over $rows rows; screenshot $size bytes: $shot"
