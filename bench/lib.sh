#!/usr/bin/env bash
# Settings and helpers shared by the benchmark scripts (sourced, not run).
# The caller sets BENCH_TAG (log prefix) before sourcing, and W (scratch dir)
# and PIDS (servers to stop on exit) before using the helpers.

# Knobs both benchmarks take (each script's header lists them).
RPS_SECONDS=${BENCH_RPS_SECONDS:-10}
RPS_CONNS=${BENCH_RPS_CONNS:-16}
LOADGEN=${BENCH_LOADGEN:-auto}
BUILD=${BENCH_BUILD:-1}
KEEP=${BENCH_KEEP:-0}
TMPBASE=${BENCH_TMPDIR:-${TMPDIR:-/tmp}}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
BIN=${PORTCULLIS_BIN:-$ROOT/target/release/portcullis}
ACCEPT='application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json'
MAIN_PID=$$

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

# build_binary: cargo build --release unless BUILD=0 or PORTCULLIS_BIN is set
# (uses ROOT, BIN, BUILD); fails unless $BIN is then executable.
build_binary() {
    if [[ $BUILD == 1 && -z ${PORTCULLIS_BIN:-} ]]; then
        need cargo "install Rust, or set PORTCULLIS_BIN / BENCH_BUILD=0"
        say "cargo build --release (shares the target dir; may wait for its lock)"
        (cd "$ROOT" && cargo build --release --bin portcullis) >&2 || die "cargo build --release failed (BENCH_BUILD=0 benchmarks the existing binary)"
    fi
    [[ -x $BIN ]] || die "$BIN not found or not executable (build it with: cargo build --release)"
}

# pick_loadgen: resolve LOADGEN=auto to wrk (installing it when root) or python.
pick_loadgen() {
    case $LOADGEN in
        auto)
            if ! command -v wrk >/dev/null 2>&1 && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
                say "wrk not installed: trying apt-get install -y wrk"
                timeout 180 apt-get install -y wrk >/dev/null 2>&1 || say "apt-get install wrk failed; using bench/rps.py"
            fi
            if command -v wrk >/dev/null 2>&1; then LOADGEN=wrk; else LOADGEN=python; fi ;;
        wrk) need wrk "install wrk or use BENCH_LOADGEN=python" ;;
        python) ;;
        *) die "BENCH_LOADGEN must be auto, wrk or python" ;;
    esac
}

fmt0() { awk -v x="$1" 'BEGIN { printf "%.0f", x }'; }
fmt1() { awk -v x="$1" 'BEGIN { printf "%.1f", x }'; }
fmt2() { awk -v x="$1" 'BEGIN { printf "%.2f", x }'; }

CLK_TCK=$(getconf CLK_TCK)
# cpu_s PID: user+system CPU seconds used so far by PID (0 if gone)
cpu_s() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    stat=${stat##*) } # drop "pid (comm) "
    # fields after comm: state(3) ... utime(14) stime(15) -> index 11, 12 here
    awk -v t="$CLK_TCK" '{ printf "%.2f", ($12 + $13) / t }' <<<"$stat"
}

# write_registry_config FILE PORT STORAGE [REMOTEURL]
write_registry_config() {
    local file=$1 port=$2 storage=$3 remote=${4:-}
    mkdir -p "$storage"
    cat >"$file" <<YML
version: 0.1
log:
  level: info
  formatter: json
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: portcullis-bench-not-a-secret
YML
    if [[ -n $remote ]]; then
        printf 'proxy:\n  remoteurl: %s\n' "$remote" >>"$file"
    fi
}

# start_upstream: a CNCF Distribution registry on a free port, logging each request
UP_PORT= UP_PID= UP_URL= UP_LOG=
start_upstream() {
    UP_PORT=$(free_port)
    UP_URL=http://127.0.0.1:$UP_PORT
    UP_LOG=$W/upstream.log
    write_registry_config "$W/upstream.yml" "$UP_PORT" "$W/upstream-storage"
    docker-registry serve "$W/upstream.yml" >"$UP_LOG" 2>&1 &
    UP_PID=$!
    PIDS+=("$UP_PID")
    wait_up "$UP_URL/v2/" "$UP_PID" upstream "$UP_LOG"
    say "upstream docker-registry pid $UP_PID at $UP_URL"
}

# push_blob REPO FILE: monolithic upload (POST, then PUT ?digest=)
push_blob() {
    local repo=$1 file=$2 digest loc sep code
    digest=sha256:$(sha "$file")
    code=$(curl -s -o /dev/null -w '%{http_code}' -I "$UP_URL/v2/$repo/blobs/$digest")
    [[ $code == 200 ]] && return 0
    loc=$(curl -sS -f -X POST -D - -o /dev/null "$UP_URL/v2/$repo/blobs/uploads/" |
        tr -d '\r' | awk 'tolower($1) == "location:" { print $2 }' | tail -1)
    [[ -n $loc ]] || die "upload POST to $UP_URL/v2/$repo/blobs/uploads/ returned no Location"
    [[ $loc == /* ]] && loc=$UP_URL$loc
    sep='?'
    [[ $loc == *\?* ]] && sep='&'
    code=$(curl -sS -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/octet-stream' \
        -T "$file" "$loc${sep}digest=$digest")
    [[ $code == 201 ]] || die "upload PUT of $file answered $code"
}

# push_manifest REPO REF FILE
push_manifest() {
    local code
    code=$(curl -sS -o "$W/push.out" -w '%{http_code}' -X PUT \
        -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
        --data-binary "@$3" "$UP_URL/v2/$1/manifests/$2")
    [[ $code == 201 ]] || { cat "$W/push.out" >&2; die "manifest PUT $1:$2 answered $code"; }
}

# make_image NAME LAYERFILE: writes NAME.config.json and NAME.manifest.json (OCI)
make_image() {
    python3 - "$W" "$1" "$2" "$(sha "$2")" "$(stat -c %s "$2")" <<'PY'
import hashlib, json, sys
w, name, layer, layer_hex, layer_size = sys.argv[1:6]
config = json.dumps({
    "architecture": "amd64", "os": "linux",
    "config": {"Cmd": ["/bin/true"]},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + layer_hex]},
    "history": [{"created_by": "portcullis bench"}],
}, separators=(",", ":")).encode()
open(f"{w}/{name}.config.json", "wb").write(config)
manifest = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": "sha256:" + layer_hex, "size": int(layer_size)}],
}, indent=2).encode()
open(f"{w}/{name}.manifest.json", "wb").write(manifest)
PY
}

# allow_all_policy DIR: a policy directory whose one rule allows everything
# (`static: allow`), for benchmarks that measure copying or watching, not
# signature checks.
allow_all_policy() {
    mkdir -p "$1"
    cat >"$1/allow.yaml" <<'YML'
apiVersion: portcullis.dev/v1alpha1
kind: Policy
rules:
  - name: bench
    match: { repositories: ["**"] }
    static: allow
YML
}
