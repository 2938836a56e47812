#!/usr/bin/env bash
# Renders the admin page (`GET /`) of a real ringlb in headless Chromium and checks
# what a person would see: one table per pool, a row per node with its state, and
# a node taken down by its health check shown DOWN. Run by .ci/run.
#
#   tests/admin_page.sh [path/to/ringlb]     (default: target/debug/ringlb)
#
# Without Chromium it prints why and exits 0, unless REQUIRE_CHROMIUM=1 (CI).
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

tmp=$(mktemp -d)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
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

"$bin" demo --config "$tmp/demo.toml" > "$tmp/demo.out" 2> "$tmp/demo.err" < /dev/null &
pid=$!
up=0
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$admin/status" > /dev/null 2>&1 && { up=1; break; }
    sleep 0.1
done
if [ "$up" != 1 ]; then
    echo "FAIL: the demo's admin endpoint did not answer within 10 s; its log:" >&2
    cat "$tmp/demo.out" "$tmp/demo.err" >&2
    exit 1
fi
curl -sf "http://127.0.0.1:$b/health/down" > /dev/null ||
    { echo "FAIL: demo-b (port $b) did not answer; demo log:" >&2; cat "$tmp/demo.out" "$tmp/demo.err" >&2; exit 1; }
# Wait until the balancer has taken demo-b down (2 probes of 200ms).
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$admin/status" | grep -q '"state": "down"' && break
    sleep 0.1
done

render() {
    timeout 60 "$chrome" --headless --no-sandbox --disable-gpu --disable-quic \
        --no-first-run --disable-background-networking --disable-component-update \
        --disable-sync --user-data-dir="$tmp/profile" "$@" "http://127.0.0.1:$admin/" 2>>"$tmp/chrome.err"
}
render --dump-dom > "$tmp/dom.html"
render --screenshot="$tmp/page.png" --window-size=1400,700 > /dev/null

fail() { echo "FAIL: $*" >&2; echo "--- DOM:" >&2; cat "$tmp/dom.html" >&2; exit 1; }
grep -q '<table class="pool" id="pool-demo">' "$tmp/dom.html" || fail "no table for pool demo"
grep -q '<tr class="node" data-node="demo-b">.*<td class="down">DOWN</td>' "$tmp/dom.html" || fail "demo-b not shown DOWN"
ups=$(grep -c '<td class="up">UP</td>' "$tmp/dom.html" || true)
[ "$ups" = 2 ] || fail "expected 2 nodes UP, saw $ups"
grep -q 'class="bar"' "$tmp/dom.html" || fail "no ring share bars"
size=$(stat -c %s "$tmp/page.png" 2>/dev/null || echo 0)
[ "$size" -gt 10000 ] || fail "screenshot is only $size bytes"
[ -n "${KEEP_SCREENSHOT:-}" ] && cp "$tmp/page.png" "$KEEP_SCREENSHOT"
echo "admin page OK: rendered by $("$chrome" --version 2>/dev/null | head -1); pool table with demo-b DOWN and 2 nodes UP; screenshot $size bytes"
