# Shell helpers shared by benches/compare.sh and benches/soak.sh (sourced, not run).
# The caller sets START_EPOCH (for the [mm:ss] stamps), WORK (logs go to
# $WORK/logs), WRAPPERS=() (every timeout(1) wrapper started, for its cleanup)
# and SPAWN_LIMIT (seconds any spawned process may live).

ts() { local s=$(($(date +%s) - START_EPOCH)); printf '%02d:%02d' $((s / 60)) $((s % 60)); }
log() { printf '[%s] %s\n' "$(ts)" "$*"; }
warn() { printf '[%s] WARNING: %s\n' "$(ts)" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$(ts)" "$*" >&2; exit 1; }

# True while PID exists and is not a zombie.
proc_running() {
    local st
    st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    st=${st##*) }
    [ "${st%% *}" != Z ]
}

# Start "$@" in the background under timeout(1); sets SPAWNED (the wrapper pid)
# and SPAWNED_PID (the real process, waited for up to 2 s). stdout/stderr go to
# $WORK/logs/NAME.{out,err}.
spawn() {
    local name=$1
    shift
    timeout -k 5 "$SPAWN_LIMIT" "$@" >"$WORK/logs/$name.out" 2>"$WORK/logs/$name.err" </dev/null &
    SPAWNED=$!
    WRAPPERS+=("$SPAWNED")
    SPAWNED_PID=""
    local i
    for i in $(seq 1 100); do
        SPAWNED_PID=$(pgrep -P "$SPAWNED" | head -n1)
        [ -n "$SPAWNED_PID" ] && return 0
        kill -0 "$SPAWNED" 2>/dev/null || return 1
        sleep 0.02
    done
    return 1
}

# Wait until 127.0.0.1:PORT accepts a connection (up to $2 seconds, default 10).
wait_port() {
    local port=$1 limit=${2:-10} i
    for i in $(seq 1 $((limit * 10))); do
        if timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}
