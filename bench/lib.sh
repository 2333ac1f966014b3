#!/usr/bin/env bash
# Helpers shared by the benchmark scripts (sourced, not run). The caller sets
# BENCH_TAG (log prefix), MAIN_PID, KEEP, W (scratch dir) and PIDS (servers
# to stop on exit) before using them.

say() { printf '[%s %s] %s\n' "$BENCH_TAG" "$(date +%T)" "$*" >&2; }
# die MESSAGE: also works inside $(...) and background subshells, by
# signalling the main shell (whose TERM trap exits through the cleanup).
die() {
    printf '[%s] ERROR: %s\n' "$BENCH_TAG" "$*" >&2
    if [[ $BASHPID != "$MAIN_PID" ]]; then
        kill -TERM "$MAIN_PID" 2>/dev/null || true
    fi
    exit 1
}
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found: $2"; }
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
forget_pid() {
    local pid=$1 p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
cleanup() {
    local rc=$? pid
    set +e
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [[ $KEEP == 1 ]]; then
        say "scratch directory kept: $W"
    else
        rm -rf "$W"
    fi
    exit "$rc"
}
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_up() {
    local url=$1 pid=$2 name=$3 log=$4 i code
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$log" >&2; die "$name exited during start-up (log: $log)"; }
        code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null || true)
        [[ $code == 200 || $code == 401 ]] && return 0
        sleep 0.1
    done
    tail -20 "$log" >&2
    die "$name did not answer $url within 30 s"
}
sha() { sha256sum "$1" | cut -d' ' -f1; }
calc() { awk "BEGIN { printf \"%.6g\", $* }"; }
