#!/usr/bin/env bash
# benches/compare.sh: ringlb side by side with HAProxy and nginx, on loopback.
#
#   benches/compare.sh             full run (5 rounds of 3 s per workload, fanout 10 s; ~23 min)
#   QUICK=1 benches/compare.sh     smoke run (3 rounds of 0.5 s, fanout 2 s; ~4 min; CI uses it)
#
# Contenders, each with 2 worker threads/processes and the same 3 backends per
# service (echo, sink, http, push), all on 127.0.0.1:
#   direct          the load tool straight to one backend (the physical limit)
#   ringlb          target/release/ringlb run, RINGLB_WORKERS=2
#   haproxy         HAProxy mode tcp, balance source, hash-type consistent, nbthread 2
#   haproxy-splice  the same with option splice-request + option splice-response
#   nginx           stream { upstream { hash $remote_addr consistent; } }, worker_processes 2
#
# Workloads (ringlb-bench load; its client sockets bind source IPs round-robin
# from 127.1.0.0/16, so every connection is hashed and the load spreads over the
# 3 backends; a single connection (bulk1, rr1) lands on one backend):
#   bulk1     throughput --streams 1 to the sink service        Gbit/s, proxy CPU s/GB
#   bulk8     throughput --streams 8 to the sink service        Gbit/s, proxy CPU s/GB
#   connrate  connrate (short connections) to the echo service  conn/s, p99
#   rr64      rr --connections 64 (keep-alive)                  req/s, p99
#   rr1       rr --connections 1 (ping-pong) to echo            p50, p50 added over direct
#   idle      idle --connections 9000, contender restarted first RSS per held connection
#   rr64p     rr --connections 64 --pause 3ms (paced keep-alive)  req/s, p50, p99, proxy user CPU
#   fanout    fanout --connections 9000 to the push service (1 message of 64 B a
#             second each), contender restarted first           msg/s, delivery p99,
#                                                                 proxy CPU per 1,000 msgs, RSS/conn
#   storm     storm --connections 9000 over the 3 push nodes: the node with the
#             most clients is killed, its clients all reconnect at once (no
#             direct; the node is revived after each run)       time until all back, reconnect p99,
#                                                                 failed attempts
#
# Every workload runs interleaved across the contenders, in an order rotated each
# round; the table gives the median over the rounds. Writes benches/RESULTS.md
# (or $OUT), and next to it a chart of the table, benches/RESULTS.svg
# (${OUT%.md}.svg, drawn by benches/chart.py; if that fails, it is a warning).
# A contender that fails is reported as "failed" in the table; the script exits
# non-zero only when ringlb (or direct, i.e. the load tool and the backends
# themselves) fails or has the load tool count errors (a connection reset, a
# reply that never came; ALLOW_RINGLB_ERRORS=1 tolerates those for ringlb), or
# when it cannot run at all.
#
# Environment knobs (defaults in brackets, QUICK values second):
#   ROUNDS [5|3]  DURATION [3s|500ms]  WARMUP [1s|200ms]  IDLE_CONNS [9000]
#   IDLE_HOLD [3s|100ms]  CONNRATE_CONCURRENCY [16]  RR64_PROTOCOL [http|tcp]  BASE_PORT [27000]
#   RR64P_PAUSE [3ms]  FANOUT_CONNS [9000|2000]  FANOUT_DURATION [10s|2s]  FANOUT_WARMUP [2s|500ms]
#   STORM_CONNS [9000|2000]  SPREAD_IPS [3000]
#   CONTENDERS ["direct ringlb haproxy haproxy-splice nginx"]  WORKLOADS [all nine]
#   SKIP_BUILD=1 (use target/release as is)  SKIP_INSTALL=1 (no apt-get)
#   KEEP_TMP=1 (keep the temp dir with every config, log and raw result)
#   OUT [benches/RESULTS.md]
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
START_EPOCH=$(date +%s)

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    ROUNDS=${ROUNDS:-3}
    DURATION=${DURATION:-500ms}
    WARMUP=${WARMUP:-200ms}
    IDLE_HOLD=${IDLE_HOLD:-100ms}
    FANOUT_CONNS=${FANOUT_CONNS:-2000}
    FANOUT_DURATION=${FANOUT_DURATION:-2s}
    FANOUT_WARMUP=${FANOUT_WARMUP:-500ms}
    STORM_CONNS=${STORM_CONNS:-2000}
    MODE="QUICK"
else
    ROUNDS=${ROUNDS:-5}
    DURATION=${DURATION:-3s}
    WARMUP=${WARMUP:-1s}
    IDLE_HOLD=${IDLE_HOLD:-3s}
    FANOUT_CONNS=${FANOUT_CONNS:-9000}
    FANOUT_DURATION=${FANOUT_DURATION:-10s}
    FANOUT_WARMUP=${FANOUT_WARMUP:-2s}
    STORM_CONNS=${STORM_CONNS:-9000}
    MODE="full"
fi
IDLE_CONNS=${IDLE_CONNS:-9000}
CONNRATE_CONCURRENCY=${CONNRATE_CONCURRENCY:-16}
RR64_PROTOCOL=${RR64_PROTOCOL:-http}
RR64P_PAUSE=${RR64P_PAUSE:-3ms}
SPREAD_IPS=${SPREAD_IPS:-3000}
BASE_PORT=${BASE_PORT:-27000}
read -r -a CONTENDERS <<<"${CONTENDERS:-direct ringlb haproxy haproxy-splice nginx}"
read -r -a WORKLOADS <<<"${WORKLOADS:-bulk1 bulk8 connrate rr64 rr1 idle rr64p fanout storm}"
OUT=${OUT:-$ROOT/benches/RESULTS.md}
mkdir -p "$(dirname "$OUT")" || { echo "compare.sh: cannot create the directory of OUT=$OUT" >&2; exit 1; }
TEMPLATES=$ROOT/benches/compare
# (RINGLB_BIN / BENCH_BIN override the binaries, e.g. to test this script itself.)
RINGLB=${RINGLB_BIN:-$ROOT/target/release/ringlb}
BENCH=${BENCH_BIN:-$ROOT/target/release/ringlb-bench}
WORKERS=2
# Upper bound on the life of every server this script starts (they are wrapped
# in timeout(1), so nothing outlives a crashed or killed script by more).
SERVER_MAX=$([ "$QUICK" = 1 ] && echo 900 || echo 3600)

# --- helpers -----------------------------------------------------------------
SPAWN_LIMIT=$SERVER_MAX
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

# Duration text ("1s", "300ms", "2m") to milliseconds.
dur_ms() {
    local d=$1
    case $d in
        *ms) echo "${d%ms}" ;;
        *s) echo $((${d%s} * 1000)) ;;
        *m) echo $((${d%m} * 60000)) ;;
        *) echo $((d * 1000)) ;;
    esac
}

WORK=$(mktemp -d /tmp/ringlb-compare.XXXXXX) || exit 2
mkdir -p "$WORK/runs" "$WORK/logs"
WRAPPERS=()       # pids of the timeout(1) wrappers of every server we started
POLICY_RC_CREATED=0
FATAL=0           # set when ringlb or direct failed: exit non-zero at the end
ANY_FAIL=0        # set when anything failed: the temp dir is kept
DEATH=""          # set by death_reason


cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local w
    for w in "${WRAPPERS[@]}"; do
        kill -TERM "$w" 2>/dev/null
    done
    local deadline=$(($(date +%s) + 6))
    for w in "${WRAPPERS[@]}"; do
        while proc_running "$w" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.1; done
        # timeout(1) leads its own process group: this reaches every child of it.
        kill -KILL -- "-$w" 2>/dev/null
        kill -KILL "$w" 2>/dev/null
    done
    wait 2>/dev/null
    if [ "$POLICY_RC_CREATED" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ "${KEEP_TMP:-0}" = 1 ] || [ "$rc" -ne 0 ] || [ "$ANY_FAIL" = 1 ]; then
        printf '[%s] temp dir kept (configs, logs, raw results): %s\n' "$(ts)" "$WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


# Stop a wrapper started by spawn (TERM, then KILL after 5 s).
stop_wrapper() {
    local w=$1
    [ -n "$w" ] || return 0
    kill -TERM "$w" 2>/dev/null
    local i
    for i in $(seq 1 50); do
        proc_running "$w" || break
        sleep 0.1
    done
    kill -KILL -- "-$w" 2>/dev/null
    kill -KILL "$w" 2>/dev/null
    wait "$w" 2>/dev/null
    local keep=() x
    for x in "${WRAPPERS[@]}"; do [ "$x" != "$w" ] && keep+=("$x"); done
    WRAPPERS=("${keep[@]}")
    return 0
}

port_free() { [ -z "$(ss -Htln "sport = :$1" 2>/dev/null)" ]; }


# utime+stime and utime alone (clock ticks) summed over the given pids: "TOTAL USER".
cpu_ticks() {
    local sum=0 user=0 p line rest
    for p in "$@"; do
        line=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        rest=${line##*) }
        # shellcheck disable=SC2086
        set -- $rest
        # after "pid (comm) ": state=1 ... utime=12 stime=13
        sum=$((sum + ${12} + ${13}))
        user=$((user + ${12}))
    done
    echo "$sum $user"
}

# Busy clock ticks of the whole machine (all CPUs): user, nice, system, irq and
# softirq. Not idle or iowait; not steal (the hypervisor's, not this machine's
# work); not guest, which user and nice already count.
machine_ticks() {
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat
}

# VmRSS (kB) summed over the given pids.
rss_kb() {
    local sum=0 p v
    for p in "$@"; do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null)
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

# --- preflight ---------------------------------------------------------------
log "ringlb comparison benchmark, $MODE mode: $ROUNDS round(s), duration $DURATION, warmup $WARMUP"
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
# How busy the CPUs are before we start (1 s sample of /proc/stat).
cpu_busy_pct() {
    local a b
    a=$(head -n1 /proc/stat)
    sleep 1
    b=$(head -n1 /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN {
        n = split(a, x, " "); split(b, y, " "); t = 0
        for (i = 2; i <= n; i++) t += y[i] - x[i]
        idle = (y[5] - x[5]) + (y[6] - x[6])
        printf "%.0f", (t > 0 ? 100 * (t - idle) / t : 0) }'
}
BUSY_START=$(cpu_busy_pct)
if [ "$BUSY_START" -gt 20 ]; then
    warn "the CPUs were ${BUSY_START}% busy before the start: something else is running, expect noisy figures"
fi
log "temp dir $WORK"
for tool in timeout pgrep ss python3 awk; do
    command -v "$tool" >/dev/null 2>&1 || die "missing tool: $tool"
done

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release --workspace --bins"
    timeout 1200 cargo build --release --workspace --bins >"$WORK/logs/build.log" 2>&1
    rc=$?
    tail -n 3 "$WORK/logs/build.log"
    [ "$rc" = 0 ] || die "cargo build --release --workspace --bins failed (exit $rc)"
fi
[ -x "$RINGLB" ] || die "$RINGLB missing"
[ -x "$BENCH" ] || die "$BENCH missing"
# Run copies, so a rebuild during the run changes nothing.
mkdir -p "$WORK/bin"
cp "$RINGLB" "$WORK/bin/ringlb" && cp "$BENCH" "$WORK/bin/ringlb-bench" || die "cannot copy the binaries"
RINGLB=$WORK/bin/ringlb
BENCH=$WORK/bin/ringlb-bench
timeout 10 "$BENCH" load --help >/dev/null 2>&1 || die "$BENCH load --help fails: the load tool is not usable"

# Descriptors: 9,000 idle connections are 18,000 descriptors in a proxy.
ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)
# The same for fanout and storm (the push server and the load tool hold one
# descriptor per connection, the proxy two).
if [ "$NOFILE" != unlimited ]; then
    new=$(((NOFILE - 500) / 2))
    if [ $((IDLE_CONNS * 2 + 500)) -gt "$NOFILE" ]; then
        warn "descriptor limit $NOFILE is too low for $IDLE_CONNS idle connections; using $new"
        IDLE_CONNS=$new
    fi
    if [ $((FANOUT_CONNS * 2 + 500)) -gt "$NOFILE" ]; then
        warn "descriptor limit $NOFILE is too low for $FANOUT_CONNS fanout connections; using $new"
        FANOUT_CONNS=$new
    fi
    if [ $((STORM_CONNS * 2 + 500)) -gt "$NOFILE" ]; then
        warn "descriptor limit $NOFILE is too low for $STORM_CONNS storm clients; using $new"
        STORM_CONNS=$new
    fi
fi
log "descriptor limit per process: $NOFILE"

# --- HAProxy and nginx (installed through apt when missing) --------------------
declare -A UNAVAILABLE=()   # contender -> reason it cannot run
NGINX_STREAM_MODULE=""      # load_module path, or empty when stream is built in

nginx_has_stream() {
    command -v nginx >/dev/null 2>&1 || return 1
    if nginx -V 2>&1 | grep -q -- '--with-stream\( \|$\)'; then
        NGINX_STREAM_MODULE=""
        return 0
    fi
    local m
    for m in /usr/lib/nginx/modules/ngx_stream_module.so /usr/share/nginx/modules/ngx_stream_module.so \
        /usr/lib64/nginx/modules/ngx_stream_module.so; do
        if [ -f "$m" ]; then NGINX_STREAM_MODULE=$m; return 0; fi
    done
    return 1
}

apt_install() {
    # The packages' services must not start: if no policy-rc.d forbids it, one
    # is put in place for the install and removed afterwards.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && POLICY_RC_CREATED=1
    fi
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q "$@" >>"$WORK/logs/apt.log" 2>&1
    local rc=$?
    if [ "$POLICY_RC_CREATED" = 1 ]; then rm -f /usr/sbin/policy-rc.d; POLICY_RC_CREATED=0; fi
    return $rc
}

want_haproxy=0; want_nginx=0
for c in "${CONTENDERS[@]}"; do
    case $c in haproxy | haproxy-splice) want_haproxy=1 ;; nginx) want_nginx=1 ;; esac
done
need_haproxy=0; need_nginx=0
[ "$want_haproxy" = 1 ] && ! command -v haproxy >/dev/null 2>&1 && need_haproxy=1
[ "$want_nginx" = 1 ] && ! nginx_has_stream && need_nginx=1
if [ "$need_haproxy" = 1 ] || [ "$need_nginx" = 1 ]; then
    why=""
    if [ "${SKIP_INSTALL:-0}" = 1 ]; then
        why="not installed (SKIP_INSTALL=1)"
    elif [ "$(id -u)" != 0 ]; then
        why="not installed, and apt-get needs root"
    elif ! command -v apt-get >/dev/null 2>&1; then
        why="not installed, and there is no apt-get"
    else
        log "apt-get update"
        if ! DEBIAN_FRONTEND=noninteractive timeout 300 apt-get update -q >>"$WORK/logs/apt.log" 2>&1; then
            why="apt-get update failed ($(tail -n 1 "$WORK/logs/apt.log"))"
        fi
    fi
    if [ "$need_haproxy" = 1 ]; then
        if [ -z "$why" ]; then
            log "apt-get install haproxy"
            apt_install haproxy || warn "apt-get install haproxy failed: $(tail -n 1 "$WORK/logs/apt.log")"
        fi
        command -v haproxy >/dev/null 2>&1 || {
            r=${why:-"apt-get install haproxy failed"}
            UNAVAILABLE[haproxy]=$r; UNAVAILABLE[haproxy-splice]=$r
        }
    fi
    if [ "$need_nginx" = 1 ]; then
        if [ -z "$why" ]; then
            if command -v nginx >/dev/null 2>&1; then
                log "apt-get install libnginx-mod-stream (nginx is there, its stream module is not)"
                apt_install libnginx-mod-stream
            else
                # (on Debian 12 nginx-light is only nginx plus an http module)
                log "apt-get install nginx libnginx-mod-stream"
                apt_install nginx libnginx-mod-stream ||
                    { log "apt-get install nginx-light libnginx-mod-stream"; apt_install nginx-light libnginx-mod-stream; }
            fi || warn "installing nginx's stream module failed: $(tail -n 1 "$WORK/logs/apt.log")"
        fi
        nginx_has_stream || UNAVAILABLE[nginx]=${why:-"apt-get install nginx + libnginx-mod-stream failed"}
    fi
fi
[ "$want_nginx" = 1 ] && nginx_has_stream >/dev/null
for c in "${!UNAVAILABLE[@]}"; do warn "$c will not run: ${UNAVAILABLE[$c]}"; done

# --- ports -----------------------------------------------------------------------
port_of_backend() { # kind index(1..3)
    case $1 in
        echo) echo $((BASE_PORT + $2)) ;; sink) echo $((BASE_PORT + 10 + $2)) ;;
        http) echo $((BASE_PORT + 20 + $2)) ;; greet) echo $((BASE_PORT + 30 + $2)) ;;
        push) echo $((BASE_PORT + 40 + $2)) ;;
    esac
}
# The push servers' control socket (serve push --control: kill, revive).
port_of_push_control() { echo $((BASE_PORT + 50)); }
contender_index() {
    case $1 in ringlb) echo 1 ;; haproxy) echo 2 ;; haproxy-splice) echo 3 ;; nginx) echo 4 ;; *) echo 0 ;; esac
}
port_of_listener() { # contender kind
    local i
    i=$(contender_index "$1")
    case $2 in
        echo) echo $((BASE_PORT + 100 * i + 1)) ;; sink) echo $((BASE_PORT + 100 * i + 2)) ;;
        http) echo $((BASE_PORT + 100 * i + 3)) ;; greet) echo $((BASE_PORT + 100 * i + 4)) ;;
        push) echo $((BASE_PORT + 100 * i + 5)) ;;
    esac
}
all_ports() {
    local k i c
    for k in echo sink http greet push; do
        for i in 1 2 3; do port_of_backend "$k" "$i"; done
        for c in ringlb haproxy haproxy-splice nginx; do port_of_listener "$c" "$k"; done
    done
    port_of_push_control
}
ports_ok=0
for _ in 1 2 3 4 5 6 7 8; do
    # Every port stays below the ephemeral range (32768-60999 on Linux), where
    # the load tool's and the proxies' outgoing connections take theirs.
    if [ $((BASE_PORT + 405)) -ge 32768 ]; then break; fi
    busy=""
    for p in $(all_ports); do port_free "$p" || busy="$busy $p"; done
    if [ -z "$busy" ]; then ports_ok=1; break; fi
    log "ports in use:$busy; trying BASE_PORT=$((BASE_PORT + 1000))"
    BASE_PORT=$((BASE_PORT + 1000))
done
[ "$ports_ok" = 1 ] || die "no free port range found"
log "ports: backends 127.0.0.1:$((BASE_PORT + 1))-$((BASE_PORT + 43)), push control $(port_of_push_control), contenders 127.0.0.1:$((BASE_PORT + 101))-$((BASE_PORT + 405))"

# --- backends --------------------------------------------------------------------
declare -A BACKEND_WRAPPER=()
start_backends() {
    local kind args i
    for kind in echo sink http greet push; do
        args=()
        for i in 1 2 3; do args+=(--listen "127.0.0.1:$(port_of_backend "$kind" "$i")"); done
        if [ "$kind" = greet ]; then
            # echo servers that first send their name: for the spread check
            args=(echo "${args[@]}" --name node --greet)
        elif [ "$kind" = push ]; then
            # push-0, push-1, push-2: 64 bytes a second on every connection;
            # the control socket kills and revives them (storm)
            args=(push "${args[@]}" --name push --control "127.0.0.1:$(port_of_push_control)")
        else
            args=("$kind" "${args[@]}" --name "$kind")
        fi
        spawn "backend-$kind" "$BENCH" serve "${args[@]}" --workers "$WORKERS" ||
            die "backend $kind did not start: $(tail -n 5 "$WORK/logs/backend-$kind.err")"
        BACKEND_WRAPPER[$kind]=$SPAWNED
    done
    wait_port "$(port_of_push_control)" 15 ||
        die "the push servers' control socket is not listening: $(tail -n 5 "$WORK/logs/backend-push.err")"
    for kind in echo sink http greet push; do
        for i in 1 2 3; do
            wait_port "$(port_of_backend "$kind" "$i")" 15 ||
                die "backend $kind #$i is not listening: $(tail -n 5 "$WORK/logs/backend-$kind.err")"
        done
    done
    log "backends up: echo, sink, http, greet (echo with a greeting), push, 3 listeners each ($(grep -c '^listening' "$WORK"/logs/backend-*.out | awk -F: '{s+=$2} END {print s}') announced)"
}
backends_alive() {
    local kind
    for kind in echo sink http greet push; do proc_running "${BACKEND_WRAPPER[$kind]}" || return 1; done
}

# --- contenders ------------------------------------------------------------------
declare -A CWRAP=() CPID=() CSTATE=() CCONF=() CFAILS=() CLOG=()

render() { # template output, then KEY VALUE pairs
    local tpl=$1 out=$2 text
    shift 2
    text=$(cat "$tpl") || return 1
    while [ $# -ge 2 ]; do
        text=${text//"@$1@"/"$2"}
        shift 2
    done
    printf '%s\n' "$text" >"$out"
}

server_lines() { # style kind
    local style=$1 kind=$2 i p out=""
    for i in 1 2 3; do
        p=$(port_of_backend "$kind" "$i")
        case $style in
            haproxy)
                out+="    server $kind-$i 127.0.0.1:$p"
                # the storm's backend: checks as fast as ringlb's push pool
                [ "$kind" = push ] && out+=" check inter 500ms fall 1 rise 1"
                out+=$'\n'
                ;;
            nginx) out+="        server 127.0.0.1:$p;"$'\n' ;;
            ringlb) out+="[[pools.$kind.nodes]]"$'\n'"name = \"$kind-$i\""$'\n'"addr = \"127.0.0.1:$p\""$'\n\n' ;;
        esac
    done
    printf '%s' "${out%$'\n'}"
}

write_configs() {
    local c dir
    for c in ringlb haproxy haproxy-splice nginx; do
        dir=$WORK/$c
        mkdir -p "$dir"
        case $c in
            ringlb)
                CCONF[$c]=$dir/ringlb.toml
                render "$TEMPLATES/ringlb.toml.in" "${CCONF[$c]}" \
                    LISTEN_ECHO "$(port_of_listener $c echo)" LISTEN_SINK "$(port_of_listener $c sink)" \
                    LISTEN_HTTP "$(port_of_listener $c http)" LISTEN_GREET "$(port_of_listener $c greet)" \
                    NODES_ECHO "$(server_lines ringlb echo)" NODES_SINK "$(server_lines ringlb sink)" \
                    NODES_HTTP "$(server_lines ringlb http)" NODES_GREET "$(server_lines ringlb greet)" \
                    LISTEN_PUSH "$(port_of_listener $c push)" NODES_PUSH "$(server_lines ringlb push)"
                ;;
            haproxy | haproxy-splice)
                local splice="" splice_global=""
                if [ "$c" = haproxy-splice ]; then
                    splice=$'    option splice-request\n    option splice-response'
                    splice_global="    maxpipes 256"
                fi
                CCONF[$c]=$dir/haproxy.cfg
                render "$TEMPLATES/haproxy.cfg.in" "${CCONF[$c]}" SPLICE "$splice" SPLICE_GLOBAL "$splice_global" \
                    LISTEN_ECHO "$(port_of_listener $c echo)" LISTEN_SINK "$(port_of_listener $c sink)" \
                    LISTEN_HTTP "$(port_of_listener $c http)" LISTEN_GREET "$(port_of_listener $c greet)" \
                    SERVERS_ECHO "$(server_lines haproxy echo)" SERVERS_SINK "$(server_lines haproxy sink)" \
                    SERVERS_HTTP "$(server_lines haproxy http)" SERVERS_GREET "$(server_lines haproxy greet)" \
                    LISTEN_PUSH "$(port_of_listener $c push)" SERVERS_PUSH "$(server_lines haproxy push)"
                ;;
            nginx)
                local lm=""
                [ -n "$NGINX_STREAM_MODULE" ] && lm="load_module $NGINX_STREAM_MODULE;"
                CCONF[$c]=$dir/nginx.conf
                render "$TEMPLATES/nginx.conf.in" "${CCONF[$c]}" LOAD_MODULE "$lm" DIR "$dir" \
                    LISTEN_ECHO "$(port_of_listener $c echo)" LISTEN_SINK "$(port_of_listener $c sink)" \
                    LISTEN_HTTP "$(port_of_listener $c http)" LISTEN_GREET "$(port_of_listener $c greet)" \
                    SERVERS_ECHO "$(server_lines nginx echo)" SERVERS_SINK "$(server_lines nginx sink)" \
                    SERVERS_HTTP "$(server_lines nginx http)" SERVERS_GREET "$(server_lines nginx greet)" \
                    LISTEN_PUSH "$(port_of_listener $c push)" SERVERS_PUSH "$(server_lines nginx push)"
                ;;
        esac
    done
}

# Every process of a contender (for CPU and RSS): nginx is its master + workers.
contender_pids() {
    local c=$1 p=${CPID[$1]:-}
    [ -n "$p" ] || return 0
    echo "$p"
    if [ "$c" = nginx ]; then pgrep -P "$p"; fi
}
# The processes that hold proxied connections (the tool's --pid gets the first).
contender_worker_pids() {
    local c=$1 p=${CPID[$1]:-}
    [ -n "$p" ] || return 0
    if [ "$c" = nginx ]; then pgrep -P "$p"; else echo "$p"; fi
}

start_contender() {
    local c=$1
    CPID[$c]=""
    CWRAP[$c]=""
    if [ "$c" = direct ]; then CSTATE[$c]=ok; return 0; fi
    if [ -n "${UNAVAILABLE[$c]:-}" ]; then CSTATE[$c]="n/a: ${UNAVAILABLE[$c]}"; return 1; fi
    # A contender that failed to start twice is not tried again.
    if [ "${CFAILS[$c]:-0}" -ge 2 ]; then return 1; fi
    local logname=$c-$((++RESTARTS))
    CLOG[$c]=$logname
    case $c in
        ringlb)
            spawn "$logname" env RINGLB_WORKERS=$WORKERS "$RINGLB" run --config "${CCONF[$c]}" --log-level warn
            ;;
        haproxy | haproxy-splice)
            spawn "$logname" haproxy -f "${CCONF[$c]}" -db
            ;;
        nginx)
            spawn "$logname" nginx -p "$WORK/nginx" -c "${CCONF[$c]}" -e "$WORK/nginx/error.log" -g 'daemon off;'
            ;;
    esac
    local ok=$?
    CWRAP[$c]=$SPAWNED
    CPID[$c]=$SPAWNED_PID
    if [ $ok -eq 0 ]; then
        local k
        for k in echo sink http greet push; do
            wait_port "$(port_of_listener "$c" "$k")" 10 || { ok=1; break; }
        done
    fi
    if [ "$c" = nginx ] && [ $ok -eq 0 ]; then
        # wait for both workers
        for _ in $(seq 1 50); do [ "$(pgrep -P "${CPID[$c]}" | wc -l)" -ge $WORKERS ] && break; sleep 0.1; done
    fi
    if [ $ok -ne 0 ] || ! proc_running "${CPID[$c]:-0}"; then
        local why
        why=$(cat "$WORK/logs/$logname.err" "$WORK/logs/$logname.out" 2>/dev/null | grep -m1 -iE 'alert|emerg|error')
        [ -n "$why" ] || why=$(cat "$WORK/logs/$logname.err" "$WORK/logs/$logname.out" 2>/dev/null | grep -v '^\s*$' | tail -n 2 | tr '\n' ' ')
        CFAILS[$c]=$((${CFAILS[$c]:-0} + 1))
        ANY_FAIL=1
        CSTATE[$c]="failed to start: ${why:-no output}"
        warn "$c did not start: ${why:-no output} (log $WORK/logs/$logname.err)"
        stop_wrapper "${CWRAP[$c]}"
        CWRAP[$c]=""; CPID[$c]=""
        return 1
    fi
    CSTATE[$c]=ok
    return 0
}
RESTARTS=0

stop_contender() {
    local c=$1
    [ -n "${CWRAP[$c]:-}" ] && stop_wrapper "${CWRAP[$c]}"
    CWRAP[$c]=""; CPID[$c]=""
}

contender_alive() {
    local c=$1 w=${CWRAP[$1]:-} p=${CPID[$1]:-} st
    [ "$c" = direct ] && return 0
    [ -n "$p" ] && [ -n "$w" ] || return 1
    proc_running "$w" && proc_running "$p" || return 1
    # the pid is still our process (pids wrap quickly on a busy machine)
    st=$(cat "/proc/$p/stat" 2>/dev/null) || return 1
    st=${st##*) }
    # shellcheck disable=SC2086
    set -- $st
    [ "$2" = "$w" ]
}

# Why a contender is no longer running, into DEATH: its exit status (collected
# from its timeout(1) wrapper) and the last lines it wrote. Forgets the wrapper.
# (Not to be called in $(...): the wait must happen in this shell.)
death_reason() {
    local c=$1 w=${CWRAP[$1]:-} st i why sig
    [ -n "$w" ] || { DEATH="not running"; return; }
    for i in $(seq 1 30); do proc_running "$w" || break; sleep 0.1; done
    if proc_running "$w"; then
        why="process ${CPID[$c]} gone"
        stop_wrapper "$w"
    else
        wait "$w" 2>/dev/null
        st=$?
        local keep=() x
        for x in "${WRAPPERS[@]}"; do [ "$x" != "$w" ] && keep+=("$x"); done
        WRAPPERS=("${keep[@]}")
        if [ "$st" -gt 128 ]; then
            sig=$(kill -l $((st - 128)) 2>/dev/null)
            why="killed by SIG${sig:-$((st - 128))}"
        else
            why="exited with status $st"
        fi
    fi
    local tail
    tail=$(grep -v '^\s*$' "$WORK/logs/${CLOG[$c]}.err" 2>/dev/null | tail -n 2 | tr '\n' ' ')
    CWRAP[$c]=""; CPID[$c]=""
    DEATH="$why${tail:+; last output: $tail}"
}

# --- one measurement -------------------------------------------------------------
target_of() { # contender kind
    if [ "$1" = direct ]; then
        echo "127.0.0.1:$(port_of_backend "$2" 1)"
    else
        echo "127.0.0.1:$(port_of_listener "$1" "$2")"
    fi
}

DUR_MS=$(dur_ms "$DURATION")
WARM_MS=$(dur_ms "$WARMUP")
HOLD_MS=$(dur_ms "$IDLE_HOLD")

# Prints a one-line summary of a result file (for the progress log).
summarize() { # workload json-file
    python3 - "$1" "$2" <<'PY' 2>/dev/null || echo "(unreadable result)"
import json, sys
wl, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
def g(k, fmt="{:.0f}"):
    v = r.get(k)
    return "?" if v is None else fmt.format(v)
if wl.startswith("bulk"):
    print(f"{g('gbit_per_s', '{:.2f}')} Gbit/s")
elif wl == "connrate":
    print(f"{g('conn_per_s')} conn/s, p99 {g('p99_us')} us, errors {g('errors')}")
elif wl.startswith("rr"):
    print(f"{g('req_per_s')} req/s, p50 {g('p50_us')} us, p99 {g('p99_us')} us, errors {g('errors')}")
elif wl == "idle":
    print(f"{g('established')} established; tool (--pid {g('pid')}): {g('rss_per_conn_bytes')} B/conn, errors {g('errors')}")
elif wl == "fanout":
    print(f"{g('established')} held, {g('messages_per_s')} msg/s, delivery p99 {g('latency_p99_us')} us, "
          f"proxy CPU {g('cpu_ms_per_1000_msgs', '{:.2f}')} ms/1000 msgs (user {g('cpu_user_ms_per_1000_msgs', '{:.2f}')}), "
          f"RSS {g('rss_per_conn_bytes')} B/conn, lost {g('lost')}, errors {g('errors')}")
elif wl == "storm":
    print(f"{g('affected')} affected, all back {g('all_back_ms', '{:.1f}')} ms, reconnect p99 {g('reconnect_p99_us')} us, "
          f"failed attempts {g('failed_attempts')} ({g('failed_after_first_back')} after the first back), "
          f"invariants {'hold' if r.get('invariants_hold') else 'BROKEN'}, errors {g('errors')}")
elif wl == "spread":
    nodes = r.get("nodes", {})
    print(", ".join(f"{n} {v['ips']}" for n, v in sorted(nodes.items())),
          f"(max deviation {r.get('max_deviation_pct')} points), errors {g('errors')}")
else:
    print(json.dumps(r)[:200])
PY
}

# Exit 0 when a result file holds a usable figure; otherwise print why.
check_result() { # workload json-file
    python3 - "$1" "$2" <<'PY'
import json, sys
wl, path = sys.argv[1], sys.argv[2]
try:
    r = json.load(open(path))
except Exception as e:
    print(f"no JSON result ({e}): " + open(path, errors="replace").read(200).replace("\n", " "))
    sys.exit(1)
key = {"bulk1": "gbit_per_s", "bulk8": "gbit_per_s", "connrate": "conn_per_s",
       "rr64": "req_per_s", "rr1": "req_per_s", "idle": "established",
       "rr64p": "req_per_s", "fanout": "messages_per_s", "storm": "established"}.get(wl)
v = r.get(key)
if key and (not isinstance(v, (int, float)) or v <= 0):
    kinds = r.get("error_kinds") or {}
    why = "; ".join(f"{k} x{e.get('count')}: {e.get('first')}" for k, e in kinds.items())
    print(f"{key} = {v}" + (f"; {why}" if why else ""))
    sys.exit(1)
PY
}

# "N error(s): kind xN (first message); ..." when the result counts errors.
tool_errors() { # json-file
    python3 - "$1" <<'PY' 2>/dev/null
import json, sys
r = json.load(open(sys.argv[1]))
if r.get("errors"):
    kinds = r.get("error_kinds") or {}
    print(f"{r['errors']} error(s): " + "; ".join(
        f"{k} x{v.get('count')} ({v.get('first')})" for k, v in kinds.items()))
PY
}

run_one() { # round workload contender
    local round=$1 wl=$2 c=$3
    local base=$WORK/runs/r$round-$wl-$c
    local meta=$base.meta
    : >"$meta"
    if { [ "$wl" = idle ] || [ "$wl" = storm ]; } && [ "$c" = direct ]; then
        return 0   # no proxy: nothing to measure (storm: nothing to fail over)
    fi
    if [ "${CSTATE[$c]}" != ok ] && [ "${CSTATE[$c]#n/a}" != "${CSTATE[$c]}" ]; then
        echo "status=unavailable" >>"$meta"
        return 0
    fi
    if { [ "$wl" = idle ] || [ "$wl" = fanout ]; } && [ "$c" != direct ]; then
        # A fresh process, so memory kept from earlier runs is not reused.
        stop_contender "$c"
        start_contender "$c"
    elif ! contender_alive "$c" && [ "${CFAILS[$c]:-0}" -lt 2 ]; then
        if [ -n "${CWRAP[$c]:-}" ]; then
            # died between two runs
            death_reason "$c"
            warn "$c is not running ($DEATH); restarting it"
            echo "$c: found dead before $wl in round $round ($DEATH); restarted" >>"$WORK/restarts.txt"
        else
            log "restarting $c"
        fi
        ANY_FAIL=1
        stop_contender "$c"
        start_contender "$c"
    fi
    if ! contender_alive "$c"; then
        echo "status=failed" >>"$meta"
        echo "error=${CSTATE[$c]}" >>"$meta"
        log "round $round/$ROUNDS  $(printf '%-8s %-15s' "$wl" "$c") FAILED: ${CSTATE[$c]}"
        return 0
    fi

    local args=() kind limit
    case $wl in
        bulk1) kind="sink"; args=(throughput --streams 1) ;;
        bulk8) kind="sink"; args=(throughput --streams 8) ;;
        connrate) kind="echo"; args=(connrate --concurrency "$CONNRATE_CONCURRENCY") ;;
        rr64)
            if [ "$RR64_PROTOCOL" = http ]; then kind="http"; else kind="echo"; fi
            args=(rr --connections 64 --protocol "$RR64_PROTOCOL")
            ;;
        rr1) kind="echo"; args=(rr --connections 1 --protocol tcp) ;;
        idle) kind="echo" ;;
        rr64p)
            if [ "$RR64_PROTOCOL" = http ]; then kind="http"; else kind="echo"; fi
            args=(rr --connections 64 --protocol "$RR64_PROTOCOL" --pause "$RR64P_PAUSE")
            ;;
        fanout) kind="push" ;;
        storm)
            kind="push"
            storm_wait "$c"
            ;;
    esac
    local target
    target=$(target_of "$c" "$kind")
    local pids
    pids=$(contender_pids "$c" | tr '\n' ' ')
    local sampler="" rss0=0
    if [ "$wl" = idle ]; then
        local wpids first
        wpids=$(contender_worker_pids "$c" | tr '\n' ' ')
        first=${wpids%% *}
        # shellcheck disable=SC2086
        rss0=$(rss_kb $pids)
        args=(idle --connections "$IDLE_CONNS" --hold "$IDLE_HOLD" --pid "$first")
        limit=$(((HOLD_MS + 999) / 1000 + 90))
        # Our own sampler: RSS summed over every process of the contender, every
        # 100 ms; the peak while the connections are held.
        (
            peak=0
            while :; do
                # shellcheck disable=SC2086
                s=$(rss_kb $pids)
                if [ "$s" -gt "$peak" ]; then peak=$s; echo "$peak" >"$base.rsspeak"; fi
                sleep 0.1
            done
        ) &
        sampler=$!
    elif [ "$wl" = fanout ]; then
        args=(fanout --connections "$FANOUT_CONNS" --duration "$FANOUT_DURATION" --warmup "$FANOUT_WARMUP")
        # The tool measures the proxy (nginx: the master, with its workers as
        # children) over the measured window, and its RSS before connecting.
        [ "$c" != direct ] && args+=(--pid "${CPID[$c]}")
        limit=$(((FANOUT_DUR_MS + FANOUT_WARM_MS + 999) / 1000 + 150))
    elif [ "$wl" = storm ]; then
        # No --jitter: every affected client reconnects at once. Exit 1 when an
        # invariant breaks (decided below, per contender); the tool revives the
        # killed node after its report.
        args=(storm --control "127.0.0.1:$(port_of_push_control)" --connections "$STORM_CONNS")
        limit=200
    else
        args+=(--duration "$DURATION" --warmup "$WARMUP")
        limit=$(((DUR_MS + WARM_MS + 999) / 1000 + 60))
    fi
    local cpu0 user0 t0 t1 cpu1 user1 m0 m1 rc
    # shellcheck disable=SC2086
    read -r cpu0 user0 < <(cpu_ticks $pids)
    m0=$(machine_ticks)
    t0=$(date +%s%N)
    timeout --foreground -k 5 "$limit" "$BENCH" load "${args[@]}" --target "$target" --workers "$WORKERS" --json \
        >"$base.json" 2>"$base.err" </dev/null
    rc=$?
    t1=$(date +%s%N)
    m1=$(machine_ticks)
    # shellcheck disable=SC2086
    read -r cpu1 user1 < <(cpu_ticks $pids)
    if [ -n "$sampler" ]; then
        kill "$sampler" 2>/dev/null
        wait "$sampler" 2>/dev/null
    fi
    {
        echo "rc=$rc"
        echo "target=$target"
        echo "args=${args[*]}"
        echo "wall_ms=$(((t1 - t0) / 1000000))"
        [ "$c" != direct ] && echo "cpu_ticks=$((cpu1 - cpu0))" && echo "cpu_user_ticks=$((user1 - user0))"
        echo "machine_ticks=$((m1 - m0))"
        if [ "$wl" = idle ]; then
            echo "rss_base_kb=$rss0"
            echo "rss_peak_kb=$(cat "$base.rsspeak" 2>/dev/null || echo 0)"
            echo "idle_conns=$IDLE_CONNS"
            echo "pids=$pids"
        fi
    } >>"$meta"
    local broken=""
    if [ "$wl" = storm ]; then
        storm_revive_all
        STORM_END_MS[$c]=$(($(date +%s%N) / 1000000))
        STORM_END_MS[any]=${STORM_END_MS[$c]}
        # Exit 1 with a JSON report: an invariant broke (or the node was not
        # revived). An error for ringlb; for the others a figure, noted.
        if [ $rc -eq 1 ] && broken=$(storm_broken "$base.json"); then
            echo "storm_broken=$broken" >>"$meta"
            if [ "$c" != ringlb ]; then
                warn "$c, storm, round $round: invariants broken ($broken); counted as a figure, not a failure"
                rc=0
            fi
        fi
    fi
    local alive=1
    contender_alive "$c" || alive=0
    local status=ok err=""
    if [ $rc -ne 0 ]; then
        status=failed
        if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then err="timed out after ${limit}s"; else err="exit $rc"; fi
        [ -n "$broken" ] && err="$err: invariants broken ($broken)"
        err="$err: $(grep -v '^\s*$' "$base.err" | tail -n 2 | tr '\n' ' ')"
    elif ! err=$(check_result "$wl" "$base.json"); then
        status=failed
    fi
    if [ $alive = 0 ]; then
        status=failed
        death_reason "$c"
        err="$c died during the run ($DEATH)${err:+; load tool: $err}"
        CSTATE[$c]="died during $wl"
    fi
    [ "$status" = ok ] || ANY_FAIL=1
    echo "status=$status" >>"$meta"
    [ -n "$err" ] && echo "error=$err" >>"$meta"
    local line
    line="round $round/$ROUNDS  $(printf '%-8s %-15s' "$wl" "$c")"
    if [ "$status" = ok ]; then
        local extra=""
        if [ "$wl" = idle ]; then
            local pk
            pk=$(sed -n 's/^rss_peak_kb=//p' "$meta")
            extra=", sampled: $(((pk - rss0) * 1024 / IDLE_CONNS)) B/conn over $(echo "$pids" | wc -w) process(es)"
        elif [ "$c" != direct ] && [ "$wl" != storm ]; then
            extra=", proxy CPU $(((cpu1 - cpu0) * 1000 / CLK_TCK)) ms"
        fi
        log "$line $(summarize "$wl" "$base.json")$extra"
    else
        log "$line FAILED: $err"
    fi
    if [ "$status" != ok ] && { [ "$c" = ringlb ] || [ "$c" = direct ]; }; then FATAL=1; fi
    if [ "$status" = ok ]; then
        # Errors the load tool counted in a run that still produced a figure (a
        # stream whose reply never came, a reset connection...).
        local errs
        errs=$(tool_errors "$base.json")
        if [ -n "$errs" ]; then
            warn "$c, $wl, round $round: the load tool counted $errs"
            ANY_FAIL=1
            if { [ "$c" = ringlb ] && [ "${ALLOW_RINGLB_ERRORS:-0}" != 1 ]; } || [ "$c" = direct ]; then FATAL=1; fi
        fi
    fi
    return 0
}

CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
FANOUT_DUR_MS=$(dur_ms "$FANOUT_DURATION")
FANOUT_WARM_MS=$(dur_ms "$FANOUT_WARMUP")

# Storm: the end of the last storm (ms since the epoch), of any contender and
# per contender. Before a storm starts, every contender must see the revived
# node up again: HAProxy (check inter 500ms rise 1) and ringlb (probes every
# 500 ms, rise 1) within about half a second, so 2 s after the last storm is
# plenty; nginx has only passive checks, and a node that failed stays out of
# its rotation for fail_timeout (10 s by default) after its last failure, so
# nginx's next storm starts at least 11 s after its previous one ended.
declare -A STORM_END_MS=()
storm_wait() { # contender
    local now need=0 w
    now=$(($(date +%s%N) / 1000000))
    [ -n "${STORM_END_MS[any]:-}" ] && need=$((STORM_END_MS[any] + 2000))
    if [ "$1" = nginx ] && [ -n "${STORM_END_MS[nginx]:-}" ] && [ $((STORM_END_MS[nginx] + 11000)) -gt "$need" ]; then
        need=$((STORM_END_MS[nginx] + 11000))
    fi
    w=$((need - now))
    if [ "$w" -gt 0 ]; then
        sleep "$((w / 1000)).$(printf '%03d' $((w % 1000)))"
    fi
}
# Revive every push server (the tool revives the one it killed; this covers a
# storm that ended early). "revive" on a listening server is harmless.
storm_revive_all() {
    local i
    for i in 0 1 2; do
        timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/$1 && printf "revive push-%s\n" "$2" >&3 && head -n1 <&3' \
            _ "$(port_of_push_control)" "$i" >>"$WORK/logs/storm-revive.log" 2>&1
    done
}
# The broken invariants of a storm report ("key=N, ..."); exit 1 when the file
# holds no storm report.
storm_broken() { # json-file
    python3 - "$1" <<'PY' 2>/dev/null
import json, sys
r = json.load(open(sys.argv[1]))
if "invariants_hold" not in r:
    sys.exit(1)
keys = ["survivors_disconnected", "moved", "landed_on_killed", "not_back", "not_disconnected", "reconnected_lost"]
bad = [f"{k}={r[k]}" for k in keys if r.get(k)]
if r.get("revived") is False:
    bad.append("not revived")
if not r.get("established"):
    bad.append("no client connected")
print(", ".join(bad) if bad else "none")
PY
}

# --- run ---------------------------------------------------------------------------
start_backends
write_configs
for c in "${CONTENDERS[@]}"; do
    if start_contender "$c"; then
        [ "$c" != direct ] && log "$c up (pid ${CPID[$c]}$([ "$c" = nginx ] && echo ", workers $(pgrep -P "${CPID[$c]}" | tr '\n' ' ')"))"
    else
        [ "$c" = ringlb ] && FATAL=1
    fi
done

n_c=${#CONTENDERS[@]}
n_runs=$((ROUNDS * ${#WORKLOADS[@]} * n_c))
for w in idle storm; do
    case " ${WORKLOADS[*]} " in *" $w "*) case " ${CONTENDERS[*]} " in *" direct "*) n_runs=$((n_runs - ROUNDS)) ;; esac ;; esac
done
log "running $n_runs measurements: workloads ${WORKLOADS[*]}; contenders ${CONTENDERS[*]}"
for round in $(seq 1 "$ROUNDS"); do
    # Rotate the order each round so no contender always goes first.
    order=()
    for i in $(seq 0 $((n_c - 1))); do order+=("${CONTENDERS[$(((i + round - 1) % n_c))]}"); done
    log "round $round/$ROUNDS, order: ${order[*]}"
    for wl in "${WORKLOADS[@]}"; do
        for c in "${order[@]}"; do
            backends_alive || die "a backend process died (logs in $WORK/logs)"
            run_one "$round" "$wl" "$c"
        done
    done
done

# Spread check (once, not timed): SPREAD_IPS source IPs, one connection each,
# through every proxy to the greeting backends; each reply names its node.
for c in "${CONTENDERS[@]}"; do
    [ "$c" = direct ] && continue
    contender_alive "$c" || continue
    base=$WORK/runs/spread-$c
    timeout --foreground -k 5 120 "$BENCH" load spread --target "$(target_of "$c" greet)" --ips "$SPREAD_IPS" \
        --workers "$WORKERS" --json >"$base.json" 2>"$base.err" </dev/null
    rc=$?
    if [ $rc -eq 0 ]; then
        log "spread   $(printf '%-15s' "$c") $(summarize spread "$base.json")"
    else
        log "spread   $(printf '%-15s' "$c") FAILED (exit $rc): $(tail -n 1 "$base.err")"
        rm -f "$base.json"
    fi
done

for c in "${CONTENDERS[@]}"; do stop_contender "$c"; done

# --- report ------------------------------------------------------------------------
log "writing $OUT"
{
    echo "mode=$MODE"
    echo "rounds=$ROUNDS"
    echo "duration=$DURATION"
    echo "warmup=$WARMUP"
    echo "idle_hold=$IDLE_HOLD"
    echo "idle_conns=$IDLE_CONNS"
    echo "connrate_concurrency=$CONNRATE_CONCURRENCY"
    echo "rr64_protocol=$RR64_PROTOCOL"
    echo "rr64p_pause=$RR64P_PAUSE"
    echo "fanout_conns=$FANOUT_CONNS"
    echo "fanout_duration=$FANOUT_DURATION"
    echo "fanout_warmup=$FANOUT_WARMUP"
    echo "storm_conns=$STORM_CONNS"
    echo "spread_ips=$SPREAD_IPS"
    echo "clk_tck=$CLK_TCK"
    echo "nofile=$NOFILE"
    echo "contenders=${CONTENDERS[*]}"
    echo "workloads=${WORKLOADS[*]}"
    echo "nproc=$(nproc)"
    echo "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "mem=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "kernel=$(uname -r)"
    echo "os=$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
    echo "rustc=$(rustc --version 2>/dev/null)"
    echo "ringlb_rev=$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- src benches/ringlb-bench Cargo.toml Cargo.lock 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "haproxy=$(haproxy -v 2>/dev/null | head -n 1)"
    echo "nginx=$(nginx -v 2>&1 | head -n 1)"
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "elapsed_s=$(($(date +%s) - START_EPOCH))"
    echo "loadavg=$LOADAVG_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
    echo "busy_start=$BUSY_START"
    for c in "${CONTENDERS[@]}"; do echo "state_$c=${CSTATE[$c]:-}"; done
} >"$WORK/env.txt"

timeout 120 python3 - "$WORK" "$OUT" <<'PY' || die "writing the report failed"
import glob, json, os, statistics, sys

work, out = sys.argv[1], sys.argv[2]
env = {}
for line in open(os.path.join(work, "env.txt")):
    k, _, v = line.rstrip("\n").partition("=")
    env[k] = v
contenders = env["contenders"].split()
workloads = env["workloads"].split()
rounds = int(env["rounds"])
clk = float(env["clk_tck"])
warm_s = None

def dur_s(d):
    if d.endswith("ms"): return float(d[:-2]) / 1000
    if d.endswith("s"): return float(d[:-1])
    if d.endswith("m"): return float(d[:-1]) * 60
    return float(d)

dur, warm = dur_s(env["duration"]), dur_s(env["warmup"])
LABEL = {"direct": "direct", "ringlb": "ringlb", "haproxy": "HAProxy",
         "haproxy-splice": "HAProxy splice", "nginx": "nginx"}

# runs[(wl, c)] = list of dicts (one per round): status, metrics, error
runs = {}
for meta in sorted(glob.glob(os.path.join(work, "runs", "*.meta"))):
    name = os.path.basename(meta)[:-5]
    r, wl, c = name.split("-", 2)
    m = {}
    for line in open(meta):
        k, _, v = line.rstrip("\n").partition("=")
        m[k] = v
    if not m:
        continue
    rec = {"round": int(r[1:]), "status": m.get("status", "failed"), "error": m.get("error", ""), "metrics": {}}
    if rec["status"] == "ok":
        try:
            res = json.load(open(os.path.join(work, "runs", name + ".json")))
        except Exception as e:
            rec["status"], rec["error"] = "failed", f"bad JSON: {e}"
            res = {}
        met = rec["metrics"]
        if res.get("errors"):
            rec["tool_errors"] = "; ".join(f"{k} x{v.get('count')}: {v.get('first')}"
                                           for k, v in (res.get("error_kinds") or {}).items())
        for k, v in res.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                met[k] = float(v)
        if wl.startswith("bulk") and "cpu_ticks" in m and met.get("gbit_per_s"):
            cpu_s = int(m["cpu_ticks"]) / clk
            # bytes moved during the whole invocation (warmup included, like the CPU time)
            if "bytes" in met and "elapsed_s" in met:
                gb = met["bytes"] / 1e9 * (dur + warm) / max(met["elapsed_s"], 1e-9)
            else:
                gb = met["gbit_per_s"] * (dur + warm) / 8
            met["cpu_s_per_gb"] = cpu_s / gb if gb > 0 else None
            met["cpu_pct"] = 100 * cpu_s / (dur + warm)
        # CPU per connection (connrate) or request (rr64) over the whole invocation,
        # warmup included like the CPU time: the proxy's (and its user-space part)
        # and the whole machine's (load tool + backends + proxy).
        rate = met.get("conn_per_s") if wl == "connrate" else met.get("req_per_s") if wl in ("rr64", "rr64p") else None
        if rate:
            ops = rate * (dur + warm)
            if "cpu_ticks" in m:
                met["cpu_us_per_op"] = int(m["cpu_ticks"]) / clk / ops * 1e6
                met["user_us_per_op"] = int(m["cpu_user_ticks"]) / clk / ops * 1e6
            if "machine_ticks" in m:
                met["machine_us_per_op"] = int(m["machine_ticks"]) / clk / ops * 1e6
        if wl == "idle" and m.get("rss_peak_kb"):
            n = int(met.get("established") or m.get("idle_conns", "0") or 0)
            if n:
                met["rss_sampled"] = (int(m["rss_peak_kb"]) - int(m["rss_base_kb"])) * 1024 / n
            met["nprocs"] = len(m.get("pids", "").split())
        if wl == "storm" and m.get("storm_broken", "none") != "none":
            rec["storm_broken"] = m["storm_broken"]
    runs.setdefault((wl, c), []).append(rec)

def med(wl, c, key):
    vals = [r["metrics"].get(key) for r in runs.get((wl, c), []) if r["status"] == "ok"]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None

def n_ok(wl, c):
    return sum(1 for r in runs.get((wl, c), []) if r["status"] == "ok")

# rows: (workload, key, label, unit, decimals)
ROWS = [
    ("bulk1", "gbit_per_s", "Bulk, 1 stream", "Gbit/s", 2),
    ("bulk1", "cpu_s_per_gb", "Bulk, 1 stream: proxy CPU", "CPU s/GB", 3),
    ("bulk8", "gbit_per_s", "Bulk, 8 streams", "Gbit/s", 2),
    ("bulk8", "cpu_s_per_gb", "Bulk, 8 streams: proxy CPU", "CPU s/GB", 3),
    ("connrate", "conn_per_s", "New connections", "conn/s", 0),
    ("connrate", "p99_us", "New connections: p99", "µs", 0),
    ("connrate", "cpu_us_per_op", "New connections: proxy CPU per connection", "µs", 1),
    ("connrate", "user_us_per_op", "New connections: of that, proxy user space", "µs", 1),
    ("connrate", "machine_us_per_op", "New connections: whole machine CPU per connection", "µs", 1),
    ("rr64", "req_per_s", f"Keep-alive requests, 64 connections ({env['rr64_protocol']})", "req/s", 0),
    ("rr64", "p99_us", "Keep-alive requests, 64 connections: p99", "µs", 0),
    ("rr64", "cpu_us_per_op", "Keep-alive requests: proxy CPU per request", "µs", 2),
    ("rr64", "user_us_per_op", "Keep-alive requests: of that, proxy user space", "µs", 2),
    ("rr64", "machine_us_per_op", "Keep-alive requests: whole machine CPU per request", "µs", 2),
    ("rr1", "p50_us", "Ping-pong, 1 connection: p50", "µs", 1),
    ("rr1", "p50_added", "Ping-pong, 1 connection: p50 added over direct", "µs", 1),
    ("idle", "rss_sampled", f"RSS per idle proxied connection ({int(env['idle_conns']):,} held)", "bytes", 0),
    ("rr64p", "req_per_s", f"Paced keep-alive, 64 connections, {env['rr64p_pause']} pause", "req/s", 0),
    ("rr64p", "p50_us", "Paced keep-alive: p50", "µs", 0),
    ("rr64p", "p99_us", "Paced keep-alive: p99", "µs", 0),
    ("rr64p", "user_us_per_op", "Paced keep-alive: proxy user space per request", "µs", 2),
    ("fanout", "messages_per_s", f"Fanout, {int(env['fanout_conns']):,} connections, 1 msg/s each", "msg/s", 0),
    ("fanout", "latency_p99_us", "Fanout: delivery p99", "µs", 0),
    ("fanout", "cpu_ms_per_1000_msgs", "Fanout: proxy CPU per 1,000 messages", "CPU ms", 2),
    ("fanout", "cpu_user_ms_per_1000_msgs", "Fanout: of that, proxy user space", "CPU ms", 2),
    ("fanout", "rss_per_conn_bytes", "Fanout: proxy RSS per connection", "bytes", 0),
    ("storm", "all_back_ms", f"Storm, {int(env['storm_conns']):,} clients, 1 of 3 nodes killed: all back", "ms", 1),
    ("storm", "reconnect_p99_us", "Storm: reconnect p99", "µs", 0),
    ("storm", "failed_attempts", "Storm: failed attempts", "attempts", 0),
    ("storm", "failed_after_first_back", "Storm: failed after the first reconnect", "attempts", 0),
]
COUNTS = {"failed_attempts", "failed_after_first_back"}
# Figures that do not apply to direct (no proxy): "—", and no ratio to direct.
NO_DIRECT = {"cpu_s_per_gb", "p50_added", "cpu_us_per_op", "user_us_per_op", "rss_sampled",
             "cpu_ms_per_1000_msgs", "cpu_user_ms_per_1000_msgs", "rss_per_conn_bytes"}

def fmt(v, dec):
    if v is None: return "–"
    if dec == 0: return f"{v:,.0f}"
    return f"{v:,.{dec}f}"

def ratio(a, b):
    if a is None or b is None or b == 0: return "–"
    r = a / b
    return f"{r:.2f}×" if r < 100 else f"{r:.0f}×"

def value(wl, c, key):
    if key == "p50_added":
        a, d = med(wl, c, "p50_us"), med(wl, "direct", "p50_us")
        return None if a is None or d is None else a - d
    return med(wl, c, key)

import re
notes = {}   # contender -> {error text: [workloads]}
def note(c, wl, recs):
    for r in recs:
        if r["status"] != "ok" and r["error"]:
            e = re.sub(r"\(\d+\)|/tmp/ringlb-compare\.\w+/", "", r["error"])
            e = re.sub(r"\s+", " ", e).strip()[:300]
            wls = notes.setdefault(c, {}).setdefault(e, [])
            if wl not in wls:
                wls.append(wl)
def cell(wl, key, c, dec):
    if c == "direct" and (wl in ("idle", "storm") or key in NO_DIRECT):
        return "—"
    recs = runs.get((wl, c), [])
    st = env.get(f"state_{c}", "")
    if recs and all(r["status"] == "unavailable" for r in recs) or (not recs and st.startswith("n/a")):
        return "n/a"
    v = value(wl, c, key)
    if v is None and wl == "storm" and key == "all_back_ms" and n_ok(wl, c):
        # runs that worked, but in none of them did every client come back
        return f"not all back ({n_ok(wl, c)}/{len(recs)} runs)"
    if v is None:
        note(c, wl, recs)
        return "failed"
    s = fmt(v, dec)
    if key != "p50_added":
        rd = (ratio(v, value(wl, "direct", key))
              if c != "direct" and key not in NO_DIRECT and wl != "storm" else None)
    else:
        rd = None
    # (no ratio between counts of failed attempts: one of them is often 0)
    hv = (value(wl, "haproxy", key)
          if "haproxy" in contenders and c != "haproxy" and key not in COUNTS else None)
    rh = ratio(v, hv) if hv is not None and (key != "p50_added" or (v > 0 and hv > 0)) else None
    parts = [p for p in (f"{rd} d" if rd else None, f"{rh} h" if rh else None) if p]
    if parts:
        s += " (" + ", ".join(parts) + ")"
    errors = sum(r["metrics"].get("errors", 0) for r in recs if r["status"] == "ok")
    if errors:
        s += f" [{errors:,.0f} errors]"
    broken = sum(1 for r in recs if r["status"] == "ok" and r.get("storm_broken"))
    if broken and key == "all_back_ms":
        s += f" [invariants broken {broken}×]"
    ok, tot = n_ok(wl, c), len(recs)
    if ok < tot:
        s += f" [{ok}/{tot} ok]"
        note(c, wl, recs)
    return s

L = []
L.append("# ringlb compared with HAProxy and nginx")
L.append("")
L.append(f"Generated by `benches/compare.sh` ({env['mode']} mode) on {env['date']}. "
         "Reproduce with `benches/compare.sh` (full run) or `QUICK=1 benches/compare.sh` (smoke run, "
         "short durations: its figures are only indicative).")
L.append("")
L.append(f"Median of **{rounds} round{'s' if rounds != 1 else ''}** per cell; each measurement runs "
         f"{env['duration']} after {env['warmup']} of warmup (idle: {int(env['idle_conns']):,} connections "
         f"held {env['idle_hold']}; fanout: {env['fanout_duration']} after {env['fanout_warmup']}). Every workload runs interleaved across the contenders, in an order "
         f"rotated each round. Total wall time {int(env['elapsed_s']) // 60} min {int(env['elapsed_s']) % 60} s.")
if env["mode"] == "QUICK":
    L.append("")
    L.append("**QUICK mode**: a smoke run with short measurements; use a full run for figures to quote.")
L.append("")
L.append("In each cell: the median, then `(ratio to direct d, ratio to HAProxy h)`. "
         "Higher is better for Gbit/s, conn/s, req/s and msg/s; lower is better for µs, ms, CPU s/GB, "
         "CPU ms, bytes and attempts. "
         "`—`: does not apply; `n/a`: contender not available; `failed`: every round failed "
         "(`[k/n ok]`: some rounds failed, the median is over those that worked).")
L.append("")
hdr = "| workload | unit | " + " | ".join(LABEL[c] for c in contenders) + " |"
L.append(hdr)
L.append("|" + "---|" * (2 + len(contenders)))
for wl, key, label, unit, dec in ROWS:
    if wl not in workloads:
        continue
    L.append(f"| {label} | {unit} | " + " | ".join(cell(wl, key, c, dec) for c in contenders) + " |")
L.append("")
if "storm" in workloads:
    L.append("Storm health checks: HAProxy `check inter 500ms fall 1 rise 1` on the push servers; ringlb's push "
             "pool probes with TCP every 500 ms, `fall = 1`, `rise = 1` (timeout 400 ms; passive failures at "
             "their default, 3); nginx open source has only passive checks, at their defaults (`max_fails=1 "
             "fail_timeout=10s`, `proxy_next_upstream on`: a failed connect goes to the next node and takes the "
             "node out for 10 s). Failed attempts are the tool's reconnects that failed (refused, reset or "
             "closed before the first message); every affected client retries at once, up to 20 times.")
    L.append("")

# Where the CPU goes: on a machine the load tool and the backends share, a
# proxy's throughput is bounded by the whole machine's CPU per operation. The
# part a proxy controls most directly is its user-space code; the rest is the
# kernel's TCP work its syscalls ask for.
ceil = []
for wl, what in (("connrate", "connection"), ("rr64", "request")):
    if wl not in workloads or "ringlb" not in contenders:
        continue
    cpu, user, mach = (value(wl, "ringlb", k) for k in ("cpu_us_per_op", "user_us_per_op", "machine_us_per_op"))
    if None in (cpu, user, mach) or mach <= user:
        continue
    line = (f"- {'New connections' if wl == 'connrate' else 'Keep-alive requests'}: the whole machine spends "
            f"{mach:,.1f} µs of CPU per {what} through ringlb, of which ringlb {cpu:,.1f} µs "
            f"({100 * cpu / mach:.0f}%), and ringlb's user space {user:,.2f} µs ({100 * user / mach:.1f}%). "
            f"Even with no user-space cost at all, ringlb's rate could rise by at most {100 * user / (mach - user):.1f}%")
    hc, hm = value(wl, "haproxy", "cpu_us_per_op"), value(wl, "haproxy", "machine_us_per_op")
    if hc is not None and hm is not None:
        line += f"; HAProxy: {hc:,.1f} µs of {hm:,.1f} µs."
    else:
        line += "."
    ceil.append(line)
if ceil:
    L.append("Where the CPU goes (medians; proxy CPU from `/proc/PID/stat`, whole machine from `/proc/stat`, "
             "both over the whole invocation):")
    L.append("")
    L.extend(ceil)
    L.append("")

unavail = [(c, env.get(f"state_{c}", "")) for c in contenders if env.get(f"state_{c}", "").startswith("n/a")]
restarts = []
if os.path.exists(os.path.join(work, "restarts.txt")):
    restarts = [l.strip() for l in open(os.path.join(work, "restarts.txt")) if l.strip()]
tool_errs = any(r["status"] == "ok" and (r.get("tool_errors") or r.get("storm_broken"))
                for recs in runs.values() for r in recs)
if notes or unavail or restarts or tool_errs:
    L.append("Failures, restarts and errors:")
    L.append("")
    for c, st in unavail:
        L.append(f"- {LABEL[c]}: not run, {st[4:].strip()}")
    for r in restarts:
        L.append(f"- {r}")
    for (wl, c), recs in runs.items():
        for r in sorted(recs, key=lambda r: r["round"]):
            if r["status"] == "ok" and r.get("storm_broken"):
                L.append(f"- {LABEL[c]} (storm, round {r['round']}): invariants broken: {r['storm_broken']}")
        bad = [r for r in recs if r["status"] == "ok" and r.get("tool_errors")]
        if bad:
            L.append(f"- {LABEL[c]} ({wl}): the load tool counted errors in round(s) "
                     + ", ".join(str(r["round"]) for r in sorted(bad, key=lambda r: r["round"]))
                     + ": " + "; ".join(sorted({r["tool_errors"] for r in bad})))
    for c, errs in notes.items():
        for e, wls in errs.items():
            L.append(f"- {LABEL[c]} ({', '.join(wls)}): {e}")
    L.append("")

spread = {}
for c in contenders:
    f = os.path.join(work, "runs", f"spread-{c}.json")
    if os.path.exists(f):
        try:
            spread[c] = json.load(open(f))
        except Exception:
            pass
if spread:
    nodes = sorted({n for r in spread.values() for n in r.get("nodes", {})})
    L.append(f"Spread check (equivalent setups): {int(env['spread_ips']):,} client IPs, one connection each, "
             "through each proxy to 3 echo backends that greet with their name. Share of the IPs per backend; "
             "each proxy has its own hash, so the IPs land differently, but each should split about evenly.")
    L.append("")
    L.append("| contender | " + " | ".join(nodes) + " | max deviation from 33.3% |")
    L.append("|" + "---|" * (2 + len(nodes)))
    for c, r in spread.items():
        nd = r.get("nodes", {})
        L.append(f"| {LABEL[c]} | " + " | ".join(
            f"{nd[n]['share_pct']:.1f}%" if n in nd else "0" for n in nodes) +
            f" | {r.get('max_deviation_pct', float('nan')):.1f} points |")
    L.append("")

L.append("## Setup")
L.append("")
L.append(f"- Machine: {env['nproc']} CPUs ({env['cpu']}), {env['mem']} RAM; {env['os']}, kernel {env['kernel']}. "
         "The load tool, the backends and the contender share these CPUs, so a proxy that uses less CPU "
         "also leaves more to the load tool and the backends. CPUs busy in the second before the start: "
         f"{env['busy_start']}%; load average (1, 5, 15 min) {env['loadavg']}. Anything else running on the "
         "machine shows up as noise.")
L.append(f"- Versions: {env['rustc']}; ringlb {env['ringlb_rev']}; {env['haproxy'] or 'HAProxy: not installed'}; "
         f"{env['nginx'] or 'nginx: not installed'}.")
L.append("- Backends: `ringlb-bench serve` (echo, sink, http, push), 3 listeners each on 127.0.0.1, 2 workers per process. "
         "Every proxy gets the same 3 backends per service; direct goes to the first one.")
L.append("- Contenders, each with 2 worker threads/processes, all on 127.0.0.1, "
         "configs in `benches/compare/*.in`:")
L.append("  - **ringlb**: `RINGLB_WORKERS=2 ringlb run --log-level warn` (no per-connection log line), "
         "default TCP health checks (push pool: every 500 ms, fall 1, rise 1), `max_connections` 50,000.")
L.append("  - **HAProxy**: `mode tcp`, `balance source`, `hash-type consistent`, `nbthread 2`, "
         "`maxconn 9500` (the most that fits 20,000 descriptors with pipes for splicing), `ulimit-n 20000`, "
         "`check inter 2s` (push servers: `check inter 500ms fall 1 rise 1`), no logging, otherwise as shipped.")
L.append("  - **HAProxy splice**: the same plus `option splice-request` and `option splice-response` "
         "and `maxpipes 256` (splice-auto never engages on loopback here).")
L.append("  - **nginx**: `stream { upstream { hash $remote_addr consistent; } }`, `worker_processes 2`, "
         "`worker_connections 19500`, `worker_rlimit_nofile 20000`, `proxy_half_close on` (without it nginx "
         "closes both sides on a client's write shutdown, which HAProxy and ringlb forward), no access log, "
         "default `accept_mutex off` (no `reuseport`). No active health checks in nginx open source.")
L.append(f"- Descriptor limit per process: {env['nofile']}. Timeouts: connect 5 s, idle 1 h everywhere.")
L.append("- Load: `ringlb-bench load … --workers 2 --json`. Its client sockets bind source IPs round-robin "
         "from 127.1.0.0/16 (the tool's default), so each connection is hashed on its own IP and the "
         "connections spread over the 3 backends; a single-connection workload (bulk 1 stream, ping-pong) "
         "lands on one of them. Direct always goes to backend 1 (all backends of a service are one process, "
         "so that makes no difference to the backend's capacity).")
L.append("- Workloads:")
L.append("  - Bulk: `throughput --streams 1|8` into the sink backend. Proxy CPU: utime+stime of the contender's "
         "processes (`/proc/PID/stat`, nginx master + workers) over the whole invocation, divided by the bytes "
         "moved in the same time (Gbit/s × (duration + warmup)).")
L.append(f"  - New connections: `connrate --concurrency {env['connrate_concurrency']}` against echo "
         "(connect, one exchange, close); p99 is the tool's per-connection latency.")
L.append(f"  - Keep-alive requests: `rr --connections 64 --protocol {env['rr64_protocol']}`.")
L.append("  - Ping-pong: `rr --connections 1 --protocol tcp` (64 bytes to echo and back); \"p50 added\" is the contender's median p50 "
         "minus direct's median p50.")
L.append(f"  - Idle: `idle --connections {int(env['idle_conns']):,} --hold {env['idle_hold']}` against echo, on a "
         "contender started afresh just before (so memory freed by earlier runs is not reused). RSS is sampled "
         "by this script every 100 ms and summed over every process of the contender (ringlb and HAProxy: "
         "one process; nginx: master + 2 workers); the figure is (peak − RSS before) / connections. "
         "Direct has no proxy. The tool's own `--pid` figure (first worker only) is in the raw data below.")
L.append(f"  - Paced keep-alive: `rr --connections 64 --protocol {env['rr64_protocol']} --pause {env['rr64p_pause']}`: "
         "each connection waits after every reply, so the proxy handles many small wakeups instead of a busy "
         "loop; proxy user-space CPU per request as for keep-alive requests.")
L.append(f"  - Fanout: `fanout --connections {env['fanout_conns']} --duration {env['fanout_duration']} "
         f"--warmup {env['fanout_warmup']} --pid PROXY` against the push backends (`serve push`: a 64-byte message "
         "a second on every connection, stamped with the server's monotonic clock), on a contender started afresh "
         "just before. Delivery latency is receive time minus send stamp; proxy CPU (utime+stime, and utime alone) "
         "over the measured window per 1,000 messages delivered; RSS per connection is (RSS while held − RSS before "
         "connecting) / connections, summed over the proxy's processes (nginx: master + workers). Direct goes to "
         f"one push server. CPU time comes in clock ticks of {1000 / clk:.0f} ms, so in a short run the CPU rows move "
         f"in steps of {1000 / clk:.0f} ms over the messages of the window (in this run one tick is "
         f"{1e6 / clk / (int(env['fanout_conns']) * dur_s(env['fanout_duration'])):.1f} ms per 1,000 messages).")
L.append(f"  - Storm: `storm --connections {env['storm_conns']} --control ADDR` through each proxy to the 3 "
         "push nodes (about a third of the clients each); the tool kills the node with the most clients (listener "
         "closed, every connection reset), all its clients reconnect at once from the same source IP (no jitter), "
         "and it reports the time from the kill until the last one has a message again, the reconnect latency and "
         "the failed attempts, checks that no other client was disconnected or moved, and revives the node. "
         "Before the next storm the script waits 2 s (HAProxy's and ringlb's checks see the node up within about "
         "0.5 s) and, for nginx, 11 s after its own previous storm (fail_timeout 10 s). No direct.")
L.append("- Max concurrent connections: not measured (the 20,000-descriptor limit caps every proxy near "
         "10,000 proxied connections).")
L.append("")

RAW_KEYS = {
    "bulk1": ["gbit_per_s", "cpu_s_per_gb", "cpu_pct", "errors"],
    "bulk8": ["gbit_per_s", "gbit_per_s_per_stream_min", "gbit_per_s_per_stream_max", "cpu_s_per_gb", "cpu_pct", "errors"],
    "connrate": ["conn_per_s", "p50_us", "p99_us", "p999_us", "cpu_us_per_op", "user_us_per_op", "machine_us_per_op", "errors"],
    "rr64": ["req_per_s", "p50_us", "p99_us", "p999_us", "cpu_us_per_op", "user_us_per_op", "machine_us_per_op", "errors"],
    "rr1": ["req_per_s", "p50_us", "p99_us", "p999_us", "errors"],
    "idle": ["rss_sampled", "nprocs", "rss_per_conn_bytes", "established", "errors"],
    "rr64p": ["req_per_s", "p50_us", "p99_us", "p999_us", "cpu_us_per_op", "user_us_per_op", "machine_us_per_op", "errors"],
    "fanout": ["messages_per_s", "latency_p50_us", "latency_p99_us", "latency_p999_us", "cpu_ms_per_1000_msgs",
               "cpu_user_ms_per_1000_msgs", "rss_per_conn_bytes", "established", "lost", "seq_gaps", "errors"],
    "storm": ["affected", "all_back_ms", "first_back_ms", "reconnect_p50_us", "reconnect_p99_us", "failed_attempts",
              "failed_after_first_back", "not_back", "survivors_disconnected", "errors"],
}
L.append("<details><summary>Raw values per round</summary>")
L.append("")
L.append("cpu_pct: proxy CPU time over the invocation as % of one core. idle: rss_sampled is the table's "
         "figure (all processes); rss_per_conn_bytes is the load tool's own figure for the one --pid it was "
         "given (nginx: the first worker only).")
L.append("")
L.append("| workload | contender | round | status | values |")
L.append("|---|---|---|---|---|")
for wl in workloads:
    for c in contenders:
        for r in sorted(runs.get((wl, c), []), key=lambda r: r["round"]):
            if r["status"] == "ok":
                vals = ", ".join(f"{k}={r['metrics'][k]:.4g}" for k in RAW_KEYS.get(wl, [])
                                 if r["metrics"].get(k) is not None)
                if r.get("storm_broken"):
                    vals += f"; invariants broken: {r['storm_broken']}"
            else:
                vals = r["error"][:200].replace("|", "/")
            L.append(f"| {wl} | {LABEL[c]} | {r['round']} | {r['status']} | {vals} |")
L.append("")
L.append("</details>")
L.append("")
open(out, "w").write("\n".join(L))
print("\n".join(l for l in L if not l.startswith("<")).split("## Setup")[0])
PY

# The chart of the main table next to it (benches/RESULTS.svg by default); a
# chart that cannot be drawn is a warning: the results are complete without it.
CHART=${OUT%.md}.svg
if timeout 60 python3 "$ROOT/benches/chart.py" "$OUT" "$CHART"; then
    log "chart in $CHART"
else
    warn "drawing the chart $CHART failed (see above); the results in $OUT are complete"
fi

log "done in $(($(date +%s) - START_EPOCH)) s; results in $OUT"
if [ "$FATAL" = 1 ]; then
    warn "ringlb (or direct: the load tool and backends) failed, or the load tool counted errors through it; see $OUT"
    exit 1
fi
exit 0
