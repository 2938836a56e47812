#!/usr/bin/env bash
# Soak (issue #17): everything at once against one ringlb (2 workers) for DURATION:
#   - fan-out: N held connections (`load fanout --reconnect`) through the push pool
#     (3 `serve push` nodes in one process with --control);
#   - churn: `load connrate` (concurrency 4, 64 B echo checked) through the echo pool;
#   - reloads: SIGHUP every RELOAD_EVERY seconds, alternating two valid configs that
#     differ in a real change (echo-b's weight 1 <-> 2), each one verified in /status;
#   - a node flapping: every FLAP_EVERY seconds one push node is killed (its
#     connections reset, the fan-out reconnects them) and revived FLAP_DOWN s later,
#     rotating over the 3 nodes;
#   - upgrades: `ringlb upgrade --pid-file` (same binary) at the middle of the run,
#     or every 5 minutes when DURATION > 10m; shutdown_grace = 5s bounds the old
#     process's drain, the fan-out reconnects what it closes.
# Checks (exit 1 if any fails): ringlb's descriptors (of the serving process,
# plus a draining old one) sampled every second stay within 5% of the warm-up
# baseline (median) and its RSS not above the warm-up's peak + 5% (a dip below is
# memory handed back after a kill, reported, not failed); at the end descriptors return to the
# starting baseline and RSS is not above the baseline + 5%; 0 corrupted bytes; 0 churn errors; every reload applied,
# every upgrade succeeded, a ringlb process always served.
#
#   benches/soak.sh                      # 20 minutes
#   DURATION=60s benches/soak.sh         # CI
#   OUT=benches/RESULTS.md benches/soak.sh   # also append a "Soak" section there
#
# Knobs: DURATION (s/m suffix), CONNECTIONS (2000), CHURN_CONCURRENCY (4),
# RELOAD_EVERY (5), FLAP_EVERY (15), FLAP_DOWN (5), BASE_PORT (24600; below the ephemeral range), SKIP_BUILD=1
# (use the release binaries as they are), KEEP_TMP=1 (keep logs and samples), OUT.
# Loopback only. Every process runs under timeout(1); an upgraded ringlb is started
# by the old one inside the same process group, which cleanup kills.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
START_EPOCH=$(date +%s)

to_secs() { # 90, 90s, 20m, 1h
    local v=$1
    case "$v" in
        *h) echo $((${v%h} * 3600)) ;;
        *m) echo $((${v%m} * 60)) ;;
        *s) echo "${v%s}" ;;
        *) echo "$v" ;;
    esac
}
DURATION=${DURATION:-20m}
DUR=$(to_secs "$DURATION")
[[ "$DUR" =~ ^[0-9]+$ ]] && [ "$DUR" -ge 30 ] && [ "$DUR" -le 7200 ] || {
    echo "DURATION=$DURATION: want 30s to 2h (e.g. 60s, 5m, 20m)" >&2
    exit 2
}
CONNECTIONS=${CONNECTIONS:-2000}
CHURN_CONCURRENCY=${CHURN_CONCURRENCY:-4}
RELOAD_EVERY=${RELOAD_EVERY:-5}
FLAP_EVERY=${FLAP_EVERY:-15}
FLAP_DOWN=${FLAP_DOWN:-5}
BASE_PORT=${BASE_PORT:-24600}
RINGLB=${RINGLB_BIN:-$ROOT/target/release/ringlb}
BENCH=${BENCH_BIN:-$ROOT/target/release/ringlb-bench}
OUT=${OUT:-}
# Warm-up: a third of the run but at least 20 s, at most 60 s, and ending 5 s
# before the first upgrade (20 s of a 60 s run, 60 s of a 20-minute one); as long
# again for a new process after each upgrade, counted from the old one's exit. A
# fresh process's RSS climbs for 20-30 s (jemalloc's caches and decaying pages
# under the churn): a 12 s warm-up caught it still climbing.
WARM=$((DUR / 3 > 20 ? DUR / 3 : 20))
WARM=$((WARM < 60 ? WARM : 60))
WARM=$((WARM < DUR / 2 - 5 ? WARM : DUR / 2 - 5))
if [ "$DUR" -gt 600 ]; then
    UPGRADES=$(seq 300 300 $((DUR - 1)) | tr '\n' ' ')
else
    UPGRADES=$((DUR / 2))
fi
SPAWN_LIMIT=$((DUR + 300)) # timeout(1) of every process

PUSH_PORTS=($((BASE_PORT + 1)) $((BASE_PORT + 2)) $((BASE_PORT + 3)))
CONTROL=$((BASE_PORT + 9))
ECHO_PORTS=($((BASE_PORT + 11)) $((BASE_PORT + 12)) $((BASE_PORT + 13)))
L_PUSH=$((BASE_PORT + 20))
L_ECHO=$((BASE_PORT + 21))
ADMIN=$((BASE_PORT + 29))

WORK=$(mktemp -d /tmp/ringlb-soak.XXXXXX)
mkdir -p "$WORK/logs"
PIDF=$WORK/ringlb.pid
SAMPLES=$WORK/samples.tsv
EVENTS=$WORK/events.tsv
WRAPPERS=()
RINGLB_PIDS=()
VERDICT_RC=0

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local w p
    # An upgraded ringlb is not our child: stop every ringlb we saw by its pid.
    for p in "${RINGLB_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for w in "${WRAPPERS[@]}"; do kill -TERM "$w" 2>/dev/null; done
    local deadline=$(($(date +%s) + 8))
    for w in "${WRAPPERS[@]}" "${RINGLB_PIDS[@]}"; do
        while proc_running "$w" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.1; done
    done
    for w in "${WRAPPERS[@]}"; do
        # timeout(1) leads its own process group: this reaches every child of it,
        # ringlb processes started by an upgrade included.
        kill -KILL -- "-$w" 2>/dev/null
        kill -KILL "$w" 2>/dev/null
    done
    for p in "${RINGLB_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    if [ "${KEEP_TMP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
        printf '[%s] temp dir kept (configs, logs, samples): %s\n' "$(ts)" "$WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM



event() { printf '%s\t%s\t%s\n' "$(elapsed)" "$1" "${2:-}" >>"$EVENTS"; }
elapsed() { echo $(($(date +%s) - T0)); }

# One line to the push servers' control socket; prints the reply.
control() {
    timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$CONTROL && printf '%s\n' '$1' >&3 && head -n1 <&3"
}

status() { curl -s --max-time 3 "http://127.0.0.1:$ADMIN/status"; }

fds_of() { local n; n=$(ls "/proc/$1/fd" 2>/dev/null | wc -l) && echo "$n"; }
rss_kb_of() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null; }
current_pid() { cat "$PIDF" 2>/dev/null; }

write_config() { # file echo-b-weight
    cat >"$1" <<EOF
# benches/soak.sh: generated
shutdown_grace = "5s"
upgrade_timeout = "30s"
workers = 2
pid_file = "$PIDF"

[admin]
listen = "127.0.0.1:$ADMIN"

[[listener]]
name = "push"
listen = "127.0.0.1:$L_PUSH"
pool = "push"

[[listener]]
name = "echo"
listen = "127.0.0.1:$L_ECHO"
pool = "echo"

[pools.push]
close_rate = 1000
idle_timeout = "1h"

[pools.push.health]
kind = "tcp"
interval = "1s"
timeout = "500ms"
rise = 2
fall = 2

[[pools.push.nodes]]
name = "push-0"
addr = "127.0.0.1:${PUSH_PORTS[0]}"

[[pools.push.nodes]]
name = "push-1"
addr = "127.0.0.1:${PUSH_PORTS[1]}"

[[pools.push.nodes]]
name = "push-2"
addr = "127.0.0.1:${PUSH_PORTS[2]}"

[pools.echo]

[pools.echo.health]
kind = "tcp"
interval = "1s"
timeout = "500ms"

[[pools.echo.nodes]]
name = "echo-a"
addr = "127.0.0.1:${ECHO_PORTS[0]}"

[[pools.echo.nodes]]
name = "echo-b"
addr = "127.0.0.1:${ECHO_PORTS[1]}"
weight = $2

[[pools.echo.nodes]]
name = "echo-c"
addr = "127.0.0.1:${ECHO_PORTS[2]}"
EOF
}

# --- build and start -------------------------------------------------------
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release --workspace --bins"
    cargo build --release --workspace --bins --locked -q || die "build failed"
fi
[ -x "$RINGLB" ] && [ -x "$BENCH" ] || die "missing $RINGLB or $BENCH (build first)"
# 2 descriptors per proxied connection: raise the soft limit to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)
[ "$NOFILE" = unlimited ] || [ "$NOFILE" -ge $((2 * CONNECTIONS + 200)) ] ||
    die "descriptor limit $NOFILE is too low for $CONNECTIONS connections"
log "soak: $DUR s, $CONNECTIONS held connections, churn concurrency $CHURN_CONCURRENCY," \
    "reload every ${RELOAD_EVERY}s, flap every ${FLAP_EVERY}s (down ${FLAP_DOWN}s)," \
    "upgrades at ${UPGRADES}s, warm-up ${WARM}s; work dir $WORK"

for p in "${PUSH_PORTS[@]}" "$CONTROL" "${ECHO_PORTS[@]}" "$L_PUSH" "$L_ECHO" "$ADMIN"; do
    [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ] ||
        die "port $p is in use (another run?); set BASE_PORT to a free range of 30 ports"
done
write_config "$WORK/a.toml" 1
write_config "$WORK/b.toml" 2
cp "$WORK/a.toml" "$WORK/ringlb.toml"
"$RINGLB" check --config "$WORK/a.toml" >/dev/null || die "config a refused"
"$RINGLB" check --config "$WORK/b.toml" >/dev/null || die "config b refused"

args=()
for p in "${PUSH_PORTS[@]}"; do args+=(--listen "127.0.0.1:$p"); done
spawn push "$BENCH" serve push "${args[@]}" --name push --workers 1 --control "127.0.0.1:$CONTROL" ||
    die "serve push did not start"
PUSH_W=$SPAWNED
args=()
for p in "${ECHO_PORTS[@]}"; do args+=(--listen "127.0.0.1:$p"); done
spawn echo "$BENCH" serve echo "${args[@]}" --name echo --workers 1 || die "serve echo did not start"
ECHO_W=$SPAWNED
for p in "${PUSH_PORTS[@]}" "${ECHO_PORTS[@]}" "$CONTROL"; do
    wait_port "$p" 15 || die "backend port $p not listening"
done
# --log-level warn: the per-connection INFO line would write about 2 GB per
# 15 minutes of churn. An upgrade starts the new process with the same arguments.
spawn ringlb "$RINGLB" --log-level warn run --config "$WORK/ringlb.toml" || die "ringlb did not start"
RINGLB_WRAPPER=$SPAWNED
for p in "$L_PUSH" "$L_ECHO" "$ADMIN"; do wait_port "$p" 15 || die "ringlb port $p not listening"; done
for _ in $(seq 1 100); do [ -s "$PIDF" ] && break; sleep 0.1; done
PID0=$(current_pid)
[ -n "$PID0" ] || die "no pid file $PIDF"
RINGLB_PIDS+=("$PID0")
# Every node in service before the start.
for _ in $(seq 1 100); do
    ups=$(status | jq '[.pools[].nodes[] | select(.state == "up")] | length' 2>/dev/null)
    [ "${ups:-0}" = 6 ] && break
    sleep 0.2
done
[ "${ups:-0}" = 6 ] || die "not every node is up in /status"

# Idle descriptors: the least over 3 s (a health probe in flight adds one).
START_FDS=999999
for _ in 1 2 3 4 5 6; do
    f=$(fds_of "$PID0")
    [ "$f" -lt "$START_FDS" ] && START_FDS=$f
    sleep 0.5
done
START_RSS=$(rss_kb_of "$PID0")
log "ringlb pid $PID0 ready: $START_FDS descriptors, RSS $START_RSS kB idle"

# --- load ------------------------------------------------------------------
# The loads' own time limit is 10m per --duration: longer runs put the rest in --warmup.
LD=$((DUR < 600 ? DUR : 600))
LW=$((DUR - LD))
spawn fanout "$BENCH" load fanout --target "127.0.0.1:$L_PUSH" --connections "$CONNECTIONS" \
    --reconnect --duration "${LD}s" --warmup "${LW}s" --source-ips 127.1.0.0/16 \
    --workers 1 --json -q || die "load fanout did not start"
FANOUT_W=$SPAWNED
# The run starts when every held connection is open.
for _ in $(seq 1 600); do
    active=$(status | jq '[.listeners[] | select(.name == "push") | .active_connections] | add' 2>/dev/null)
    [ "${active:-0}" -ge "$CONNECTIONS" ] && break
    proc_running "$FANOUT_W" || die "load fanout exited early: $(tail -3 "$WORK/logs/fanout.err")"
    sleep 0.2
done
[ "${active:-0}" -ge "$CONNECTIONS" ] || die "only ${active:-0} of $CONNECTIONS connections open"
spawn churn "$BENCH" load connrate --target "127.0.0.1:$L_ECHO" --concurrency "$CHURN_CONCURRENCY" \
    --duration "${LD}s" --warmup "${LW}s" --source-ips 127.2.0.0/16 --workers 1 --json -q ||
    die "load connrate did not start"
CHURN_W=$SPAWNED
T0=$(date +%s)
: >"$EVENTS"
printf 't\tpid\tfds\trss_kb\told_pids\told_fds\told_rss_kb\n' >"$SAMPLES"
log "load running: $CONNECTIONS held connections open"

# --- the run: one tick per second -----------------------------------------
OLD=()        # draining old processes
flap_node=0
flapped=""    # the node killed now
which_cfg=a
next_reload=$RELOAD_EVERY
next_kill=$((FLAP_EVERY / 2))
revive_at=-1
read -r -a UP_AT <<<"$UPGRADES"
up_i=0
reloads=0
reload_failures=0
upgrades=0
upgrade_failures=0
no_server=0

do_reload() {
    local pid g0 g1 ok i
    pid=$(current_pid)
    g0=$(status | jq '.generation' 2>/dev/null)
    [ "$which_cfg" = a ] && which_cfg=b || which_cfg=a
    local want=1 lr wt
    [ "$which_cfg" = b ] && want=2
    cp "$WORK/$which_cfg.toml" "$WORK/ringlb.toml.new" && mv "$WORK/ringlb.toml.new" "$WORK/ringlb.toml"
    kill -HUP "$pid" 2>/dev/null
    reloads=$((reloads + 1))
    ok=no
    for i in $(seq 1 30); do
        read -r g1 lr wt < <(status | jq -r '"\(.generation) \(.last_reload.ok) \(.pools[] | select(.name == "echo") | .nodes[] | select(.name == "echo-b") | .weight)"' 2>/dev/null)
        if [[ "${g1:-}" =~ ^[0-9]+$ ]] && [[ "${g0:-}" =~ ^[0-9]+$ ]] && [ "$g1" -gt "$g0" ] &&
            [ "$lr" = true ] && [ "$wt" = "$want" ]; then
            ok=yes
            break
        fi
        sleep 0.1
    done
    if [ "$ok" = yes ]; then
        event reload "pid $pid config $which_cfg generation $g0 -> $g1 echo-b weight $wt"
    else
        reload_failures=$((reload_failures + 1))
        event reload_failed "pid $pid config $which_cfg generation ${g0:-?} -> ${g1:-?} last_reload.ok=${lr:-?}"
        log "reload $reloads NOT applied (generation ${g0:-?} -> ${g1:-?})"
    fi
}

do_upgrade() {
    local old new out rc
    old=$(current_pid)
    out=$(timeout 60 "$RINGLB" upgrade --pid-file "$PIDF" 2>&1)
    rc=$?
    new=$(current_pid)
    upgrades=$((upgrades + 1))
    if [ "$rc" = 0 ] && [ -n "$new" ] && [ "$new" != "$old" ] && proc_running "$new"; then
        OLD+=("$old")
        RINGLB_PIDS+=("$new")
        local drains
        drains=$(sed -n 's/.*drains \([0-9]*\) open.*/\1/p' <<<"$out")
        event upgrade "$old -> $new drains ${drains:-?}: $out"
        log "upgrade: $out"
    else
        upgrade_failures=$((upgrade_failures + 1))
        event upgrade_failed "rc $rc: $out"
        log "upgrade FAILED (rc $rc): $out"
    fi
}

while :; do
    t=$(elapsed)
    [ "$t" -ge "$DUR" ] && break
    # Sample first, then act.
    pid=$(current_pid)
    if [ -n "$pid" ] && proc_running "$pid"; then
        f=$(fds_of "$pid")
        r=$(rss_kb_of "$pid")
    else
        no_server=$((no_server + 1))
        f=0 r=0
        event no_server "pid file names ${pid:-nothing}"
    fi
    alive=() of=0 orss=0
    for o in "${OLD[@]}"; do
        if proc_running "$o"; then
            alive+=("$o")
            of=$((of + $(fds_of "$o" || echo 0)))
            orss=$((orss + $(rss_kb_of "$o" || echo 0)))
        else
            event old_exited "$o"
        fi
    done
    OLD=("${alive[@]}")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$pid" "$f" "$r" "${OLD[*]:-}" "$of" "$orss" >>"$SAMPLES"

    if [ "$up_i" -lt "${#UP_AT[@]}" ] && [ "$t" -ge "${UP_AT[$up_i]}" ]; then
        up_i=$((up_i + 1))
        do_upgrade
    elif [ "$t" -ge "$next_reload" ]; then
        do_reload
        next_reload=$((t + RELOAD_EVERY))
    fi
    if [ "$revive_at" -ge 0 ] && [ "$t" -ge "$revive_at" ]; then
        reply=$(control "revive $flapped")
        event revive "$flapped: $reply"
        revive_at=-1
    elif [ "$revive_at" -lt 0 ] && [ "$t" -ge "$next_kill" ] && [ "$t" -lt $((DUR - FLAP_DOWN - 2)) ]; then
        flapped=push-$flap_node
        flap_node=$(((flap_node + 1) % 3))
        reply=$(control "kill $flapped")
        # "killed NAME PORT N": N connections reset.
        event kill "$flapped $(awk '{print $4}' <<<"$reply"): $reply"
        revive_at=$((t + FLAP_DOWN))
        next_kill=$((t + FLAP_EVERY))
    fi
    proc_running "$PUSH_W" || { event backend_exited "serve push: $(tail -c 300 "$WORK/logs/push.err")"; break; }
    proc_running "$ECHO_W" || { event backend_exited "serve echo: $(tail -c 300 "$WORK/logs/echo.err")"; break; }
    proc_running "$FANOUT_W" || { event load_exited fanout; break; }
    proc_running "$CHURN_W" || { event load_exited churn; break; }
    sleep_to=$((T0 + t + 1))
    while [ "$(date +%s)" -lt "$sleep_to" ]; do sleep 0.05; done
done
[ "$revive_at" -ge 0 ] && event revive "$flapped: $(control "revive $flapped")"
log "load window over; waiting for the loads' reports"

# --- the end: loads stop, connections close, descriptors return -----------
for w in "$FANOUT_W" "$CHURN_W"; do
    for _ in $(seq 1 600); do proc_running "$w" || break; sleep 0.1; done
done
wait "$FANOUT_W"
FANOUT_RC=$?
wait "$CHURN_W"
CHURN_RC=$?
T_END=$(elapsed)
# The held connections close with the load; the least descriptor count over 5 s
# once /status shows none open (a health probe in flight adds one for a moment).
for _ in $(seq 1 150); do
    active=$(status | jq '[.listeners[].active_connections] | add' 2>/dev/null)
    [ "${active:-1}" = 0 ] && break
    sleep 0.2
done
for _ in $(seq 1 100); do
    alive=()
    for o in "${OLD[@]}"; do proc_running "$o" && alive+=("$o"); done
    OLD=("${alive[@]}")
    [ "${#OLD[@]}" = 0 ] && break
    sleep 0.2
done
PID_END=$(current_pid)
END_FDS=999999
END_RSS=0
for _ in $(seq 1 10); do
    f=$(fds_of "$PID_END")
    [ -n "$f" ] && [ "$f" -lt "$END_FDS" ] && END_FDS=$f
    sleep 0.5
done
END_RSS=$(rss_kb_of "$PID_END")
STATUS_END=$WORK/status-end.json
status >"$STATUS_END"
proc_running "$PID_END" && END_ALIVE=yes || END_ALIVE=no
log "end: pid $PID_END, $END_FDS descriptors, RSS $END_RSS kB, ${active:-?} connections open"

# --- verdict ---------------------------------------------------------------
python3 "$ROOT/benches/soak_report.py" \
    --samples "$SAMPLES" --events "$EVENTS" --fanout "$WORK/logs/fanout.out" \
    --churn "$WORK/logs/churn.out" --status-end "$STATUS_END" \
    --duration "$DUR" --warm "$WARM" --connections "$CONNECTIONS" \
    --start-fds "$START_FDS" --start-rss "$START_RSS" --end-fds "$END_FDS" --end-rss "$END_RSS" \
    --end-alive "$END_ALIVE" --end-active "${active:-?}" --fanout-rc "$FANOUT_RC" --churn-rc "$CHURN_RC" \
    --reloads "$reloads" --reload-failures "$reload_failures" --upgrades "$upgrades" \
    --upgrade-failures "$upgrade_failures" --no-server "$no_server" \
    --flap-every "$FLAP_EVERY" --churn-concurrency "$CHURN_CONCURRENCY" \
    --version "$("$RINGLB" --version 2>/dev/null)" ${OUT:+--out "$OUT"}
VERDICT_RC=$?
[ "$VERDICT_RC" = 0 ] || KEEP_TMP=1
exit "$VERDICT_RC"
