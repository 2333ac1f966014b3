#!/usr/bin/env bash
# Portcullis throughput / single-flight / memory / RPS benchmark.
#
# Usage (from the repository root):
#   bench/run.sh
#   BENCH_BLOB_MIB=64 BENCH_CLIENTS=4 BENCH_RPS_SECONDS=3 bench/run.sh   # quick run
#
# It starts, on 127.0.0.1 and free ports, an upstream CNCF Distribution
# (`docker-registry`) with filesystem storage, seeds it through the OCI push
# API with a large image (config + one layer of random, incompressible data)
# and a small image, then compares three paths:
#   direct     - the upstream itself
#   portcullis - target/release/portcullis serve --integrity-only --default-upstream <upstream>
#   dist-proxy - a second docker-registry in pull-through proxy mode
# and prints a markdown table (paste-able into a README) at the end.
#
# Environment (defaults in brackets):
#   BENCH_BLOB_MIB     size of the large layer in MiB                      [512]
#   BENCH_CLIENTS      concurrent clients for the herd / RSS phases         [8]
#   BENCH_REPEAT       runs of the direct, cold and warm fetches (best kept) [3]
#   BENCH_RPS_SECONDS  duration of each manifest requests/second run       [10]
#   BENCH_RPS_CONNS    keep-alive connections for the RPS runs             [16]
#   BENCH_LOADGEN      auto | wrk | python  (auto: wrk, installing it with
#                      apt-get when root, else bench/rps.py)                [auto]
#   BENCH_SKOPEO       1 to also time `skopeo copy` image pulls            [1]
#   BENCH_BUILD        1 to run `cargo build --release` first              [1]
#   PORTCULLIS_BIN     binary to benchmark        [target/release/portcullis]
#   BENCH_TMPDIR       where the scratch directory goes                   [$TMPDIR or /tmp]
#   BENCH_KEEP         1 to keep the scratch directory (logs) at the end   [0]
#
# Scratch space needed: about 4 x BENCH_BLOB_MIB (upstream copy, source file,
# and one cached copy per proxy; proxy caches are wiped between phases).
set -euo pipefail
BENCH_TAG=bench
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BLOB_MIB=${BENCH_BLOB_MIB:-512}
CLIENTS=${BENCH_CLIENTS:-8}
REPEAT=${BENCH_REPEAT:-3}
SKOPEO=${BENCH_SKOPEO:-1}

RELAY=$ROOT/target/release/examples/tcp_relay

BIG_REPO=bench/big
SMALL_REPO=bench/small
TAG=v1

for v in BLOB_MIB CLIENTS REPEAT RPS_SECONDS RPS_CONNS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "BENCH_$v must be a positive integer (got '${!v}')"
done

# --------------------------------------------------------------------------
# prerequisites
# --------------------------------------------------------------------------
need docker-registry "install CNCF Distribution (Debian: apt-get install docker-registry)"
need curl "install curl"
need python3 "install python3"
need sha256sum "install coreutils"
if [[ $SKOPEO == 1 ]] && ! command -v skopeo >/dev/null 2>&1; then
    say "skopeo not found: skipping the skopeo image-pull rows"
    SKOPEO=0
fi

build_binary
# The floor reference: a bare TCP relay (examples/tcp_relay.rs).
if [[ $BUILD == 1 ]]; then
    (cd "$ROOT" && cargo build --release --example tcp_relay) >&2 || die "cargo build --release --example tcp_relay failed"
fi
[[ -x $RELAY ]] || die "$RELAY not found (build it with: cargo build --release --example tcp_relay)"
pick_loadgen

# --------------------------------------------------------------------------
# process bookkeeping and cleanup
# --------------------------------------------------------------------------
W=$(mktemp -d "$TMPBASE/portcullis-bench.XXXXXX")
PIDS=()

trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'exit 1' TERM

PC_N=0 PC_PID= PC_URL= PC_LOG= PC_DATA=
start_portcullis() { # fresh data dir every time
    stop_portcullis
    PC_N=$((PC_N + 1))
    local port
    port=$(free_port)
    PC_URL=http://127.0.0.1:$port
    PC_DATA=$W/portcullis-data-$PC_N
    PC_LOG=$W/portcullis-$PC_N.log
    mkdir -p "$PC_DATA"
    "$BIN" serve --integrity-only --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$(free_port)" --data-dir "$PC_DATA" \
        --default-upstream "$UP_URL" --log-format json >"$PC_LOG" 2>&1 &
    PC_PID=$!
    PIDS+=("$PC_PID")
    wait_up "$PC_URL/v2/" "$PC_PID" portcullis "$PC_LOG"
    say "portcullis pid $PC_PID at $PC_URL (data $PC_DATA)"
}
stop_portcullis() {
    if [[ -n $PC_PID ]]; then
        stop_pid "$PC_PID"
        forget_pid "$PC_PID"
        rm -rf "$PC_DATA"
        PC_PID=
    fi
}

DP_N=0 DP_PID= DP_URL= DP_LOG= DP_DATA=
start_distproxy() { # fresh storage every time
    stop_distproxy
    DP_N=$((DP_N + 1))
    local port
    port=$(free_port)
    DP_URL=http://127.0.0.1:$port
    DP_DATA=$W/distproxy-storage-$DP_N
    DP_LOG=$W/distproxy-$DP_N.log
    write_registry_config "$W/distproxy-$DP_N.yml" "$port" "$DP_DATA" "$UP_URL"
    docker-registry serve "$W/distproxy-$DP_N.yml" >"$DP_LOG" 2>&1 &
    DP_PID=$!
    PIDS+=("$DP_PID")
    wait_up "$DP_URL/v2/" "$DP_PID" dist-proxy "$DP_LOG"
    say "distribution proxy pid $DP_PID at $DP_URL (storage $DP_DATA)"
}
stop_distproxy() {
    if [[ -n $DP_PID ]]; then
        stop_pid "$DP_PID"
        forget_pid "$DP_PID"
        rm -rf "$DP_DATA"
        DP_PID=
    fi
}

# dp_wait_stored DIGEST: Distribution's proxy answers a cold blob from one upstream
# stream and stores it from a second one in the background; until that store
# finishes, further requests also go upstream. "Warm" means after it finished:
# wait (bounded) for its "Adding new scheduler entry for <repo>@<digest>" log line.
dp_wait_stored() {
    local i
    for ((i = 0; i < 1200; i++)); do
        grep -qF "scheduler entry for $BIG_REPO@$1" "$DP_LOG" && return 0
        sleep 0.1
    done
    say "warning: the distribution proxy had not stored $1 after 120 s"
}

# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------
now() { date +%s.%N; }
# calc EXPR: floating-point arithmetic (awk), e.g. calc "3 / 2" -> 1.5
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 > b + 0) ? a : b }'; }
lines() { wc -l <"$1" | tr -d ' '; }
vm_kib() { # vm_kib PID FIELD (VmHWM, VmRSS)
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}
# upstream_gets FROM_LINE DIGEST REPO: GETs of that blob answered by the upstream since FROM_LINE
upstream_gets() {
    sleep 0.3 # let the registry flush its access log line
    python3 "$BENCH/logcount.py" "$UP_LOG" "$1" GET "/v2/$3/blobs/$2"
}

# fetch URL: "size seconds http_code" of a GET to /dev/null
fetch() {
    curl -sS -o /dev/null -H "Accept: $ACCEPT" -w '%{size_download} %{time_total} %{http_code}' "$1"
}
# fetch_ok URL EXPECTED_SIZE: like fetch, but dies on a wrong status or size; prints "size seconds"
fetch_ok() {
    local out size t code
    out=$(fetch "$1") || die "GET $1 failed"
    read -r size t code <<<"$out"
    [[ $code == 200 ]] || die "GET $1 answered $code"
    [[ $size == "$2" ]] || die "GET $1 returned $size bytes, expected $2"
    echo "$size $t"
}
mbps() { calc "$1 / $2 / 1000000"; } # bytes seconds -> MB/s (10^6)

# best_of N URL SIZE: best MB/s over N fetches
best_of() {
    local n=$1 url=$2 size=$3 i best=0 s t
    for ((i = 0; i < n; i++)); do
        read -r s t <<<"$(fetch_ok "$url" "$size")"
        best=$(max "$best" "$(mbps "$s" "$t")")
    done
    echo "$best"
}

# verify_blob URL DIGEST: stream the blob into sha256sum and compare
verify_blob() {
    local got
    got=$(curl -sS -f "$1" | sha256sum | cut -d' ' -f1) || die "GET $1 failed"
    [[ "sha256:$got" == "$2" ]] || die "content of $1 hashes to sha256:$got, expected $2"
}

# pull_image BASE REPO TAG: manifest + every blob, each streamed into sha256sum
# and checked, sequentially like a simple client. Prints "bytes seconds".
pull_image() {
    local base=$1 repo=$2 tag=$3 t0 t1 mf bytes=0 d size got
    mf=$W/pulled-manifest.json
    t0=$(now)
    curl -sS -f -H "Accept: $ACCEPT" -o "$mf" "$base/v2/$repo/manifests/$tag" || die "manifest $base/v2/$repo/manifests/$tag failed"
    bytes=$(stat -c %s "$mf")
    while read -r d size; do
        got=$(curl -sS -f "$base/v2/$repo/blobs/$d" | sha256sum | cut -d' ' -f1) || die "blob $d via $base failed"
        [[ "sha256:$got" == "$d" ]] || die "blob $d via $base hashed to sha256:$got"
        bytes=$((bytes + size))
    done < <(python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))
for d in [m["config"]] + m["layers"]:
    print(d["digest"], d["size"])' "$mf")
    t1=$(now)
    echo "$bytes $(calc "$t1 - $t0")"
}

# skopeo_pull BASE REPO TAG: seconds for `skopeo copy docker://... dir:`
skopeo_pull() {
    local host=${1#http://} out=$W/skopeo-out t0 t1
    rm -rf "$out"
    t0=$(now)
    skopeo copy --quiet --insecure-policy --src-tls-verify=false \
        "docker://$host/$2:$3" "dir:$out" >"$W/skopeo.log" 2>&1 || { cat "$W/skopeo.log" >&2; die "skopeo copy from $host failed"; }
    t1=$(now)
    rm -rf "$out"
    calc "$t1 - $t0"
}

# rss_sampler PID OUTFILE: poll VmRSS every 50 ms, keep the maximum (KiB) in OUTFILE
# until OUTFILE.stop exists. No forks in the loop.
rss_sampler() {
    local pid=$1 out=$2 max=0 k v _
    while [[ ! -e $out.stop ]] && kill -0 "$pid" 2>/dev/null; do
        while read -r k v _; do
            if [[ $k == VmRSS: ]]; then
                ((v > max)) && max=$v
                break
            fi
        done <"/proc/$pid/status" 2>/dev/null || true
        echo "$max" >"$out"
        sleep 0.05
    done
}
SAMPLER_PID= SAMPLED_KIB=
start_sampler() { rm -f "$2" "$2.stop"; echo 0 >"$2"; rss_sampler "$1" "$2" & SAMPLER_PID=$!; PIDS+=("$SAMPLER_PID"); }
# stop_sampler FILE: sets SAMPLED_KIB (call directly, not in $(...))
stop_sampler() { touch "$1.stop"; wait "$SAMPLER_PID" 2>/dev/null || true; forget_pid "$SAMPLER_PID"; SAMPLED_KIB=$(cat "$1"); }

# herd BASE NAME: CLIENTS clients each GET the manifest then the large blob, at once.
# Sets HERD_WALL (s), HERD_AGG (MB/s aggregate), HERD_MIN / HERD_MAX (per-client MB/s).
herd() {
    local base=$1 name=$2 i pids=() t0 t1 s t code ok=0 dir=$W/herd-$2
    rm -rf "$dir"
    mkdir -p "$dir"
    t0=$(now)
    for ((i = 1; i <= CLIENTS; i++)); do
        (
            curl -sS -f -o /dev/null -H "Accept: $ACCEPT" "$base/v2/$BIG_REPO/manifests/$TAG" &&
                fetch "$base/v2/$BIG_REPO/blobs/$BIG_DIGEST" >"$dir/$i"
        ) 2>"$dir/$i.err" &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || true; done
    t1=$(now)
    HERD_WALL=$(calc "$t1 - $t0")
    HERD_MIN=1e18 HERD_MAX=0
    for ((i = 1; i <= CLIENTS; i++)); do
        s= t= code=
        [[ -s $dir/$i ]] && read -r s t code <<<"$(<"$dir/$i")"
        if [[ $code == 200 && $s == "$BIG_SIZE" ]]; then
            ok=$((ok + 1))
            HERD_MIN=$(awk -v a="$HERD_MIN" -v b="$(mbps "$s" "$t")" 'BEGIN { print (b < a) ? b : a }')
            HERD_MAX=$(max "$HERD_MAX" "$(mbps "$s" "$t")")
        else
            say "herd client $i via $name failed: $(cat "$dir/$i" 2>/dev/null) $(cat "$dir/$i.err" 2>/dev/null)"
        fi
    done
    [[ $ok == "$CLIENTS" ]] || die "$((CLIENTS - ok)) of $CLIENTS herd clients via $name failed"
    HERD_AGG=$(calc "$CLIENTS * $BIG_SIZE / $HERD_WALL / 1000000")
}

# loadgen URL: requests/second for GET URL (with the manifest Accept header).
# Prints "rps non2xx p99".
loadgen() {
    local url=$1 out
    if [[ $LOADGEN == wrk ]]; then
        out=$(wrk -t2 -c"$RPS_CONNS" -d"${RPS_SECONDS}s" --latency -H "Accept: $ACCEPT" "$url" 2>&1) || { echo "$out" >&2; die "wrk failed"; }
        awk '
            /^Requests\/sec:/ { rps = $2 }
            /Non-2xx or 3xx responses:/ { bad = $NF }
            /^ +99%/ { p99 = $2 }
            /Socket errors:/ { errs = $0 }
            END { printf "%.0f %d %s\n", rps, bad + 0, (p99 == "" ? "-" : p99) }' <<<"$out"
    else
        # 2 processes sharing RPS_CONNS connections, at most 5M requests
        out=$(python3 "$BENCH/rps.py" "$url" "$RPS_SECONDS" "$(((RPS_CONNS + 1) / 2))" 2 5000000 "Accept: $ACCEPT") || die "rps.py failed"
        sed -E 's/.*rps=([0-9]+) non2xx=([0-9]+) errors=([0-9]+).*/\1 \2 -/' <<<"$out"
    fi
}

# --------------------------------------------------------------------------
# 1. upstream and seed data
# --------------------------------------------------------------------------
say "scratch directory $W; large blob ${BLOB_MIB} MiB; $CLIENTS clients; load generator $LOADGEN"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
start_upstream

say "generating ${BLOB_MIB} MiB of random data"
head -c "$((BLOB_MIB * 1024 * 1024))" /dev/urandom >"$W/big.layer"
head -c 4096 /dev/urandom >"$W/small.layer"

# push_image REPO NAME LAYERFILE
push_image() {
    local repo=$1 name=$2 layer=$3
    make_image "$name" "$layer"
    push_blob "$repo" "$W/$name.config.json"
    push_blob "$repo" "$layer"
    push_manifest "$repo" "$TAG" "$W/$name.manifest.json"
}

say "seeding the upstream via the OCI push API"
push_image "$BIG_REPO" big "$W/big.layer"
push_image "$SMALL_REPO" small "$W/small.layer"
BIG_DIGEST=sha256:$(sha "$W/big.layer")
BIG_SIZE=$(stat -c %s "$W/big.layer")
SMALL_MANIFEST_DIGEST=sha256:$(sha "$W/small.manifest.json")
rm -f "$W/big.layer" # the upstream has it; saves scratch space
say "large blob $BIG_DIGEST ($BIG_SIZE bytes); small manifest $SMALL_MANIFEST_DIGEST"

BLOB_PATH=/v2/$BIG_REPO/blobs/$BIG_DIGEST
declare -A R

# --------------------------------------------------------------------------
# 2. large blob: direct, cold and warm through each proxy
# --------------------------------------------------------------------------
say "phase 1/5: large blob throughput"

fetch_ok "$UP_URL$BLOB_PATH" "$BIG_SIZE" >/dev/null # page cache warm-up
R[direct_blob]=$(best_of "$REPEAT" "$UP_URL$BLOB_PATH" "$BIG_SIZE")

# fresh_proxy KEY: restart KEY (pc | dp) with an empty cache; sets BASE and PID
fresh_proxy() {
    case $1 in
    pc) start_portcullis && BASE=$PC_URL PID=$PC_PID ;;
    dp) start_distproxy && BASE=$DP_URL PID=$DP_PID ;;
    esac
}
# one_proxy KEY: cold fetches, each through a freshly started proxy with an
# empty cache, best of $REPEAT (the statistic used for direct and warm, so the
# ratios compare like with like); CPU figures from that best run. Then warm
# fetches through the last instance, and the upstream GETs it made.
one_proxy() {
    local key=$1 i off c0 c1 up0 up1 s t mbs
    R[${key}_cold]=0
    for ((i = 0; i < REPEAT; i++)); do
        fresh_proxy "$key"
        off=$(lines "$UP_LOG")
        curl -sS -f -o /dev/null -H "Accept: $ACCEPT" "$BASE/v2/$BIG_REPO/manifests/$TAG" || die "manifest via $key failed"
        c0=$(cpu_s "$PID")
        up0=$(cpu_s "$UP_PID")
        read -r s t <<<"$(fetch_ok "$BASE$BLOB_PATH" "$BIG_SIZE")"
        c1=$(cpu_s "$PID")
        up1=$(cpu_s "$UP_PID")
        mbs=$(mbps "$s" "$t")
        say "  $key: cold run $((i + 1)): $(fmt0 "$mbs") MB/s"
        if [[ $(max "${R[${key}_cold]}" "$mbs") == "$mbs" ]]; then
            R[${key}_cold]=$mbs
            R[${key}_cold_cpu]=$(calc "100 * ($c1 - $c0) / $t")
            R[${key}_cold_upcpu]=$(calc "100 * ($up1 - $up0) / $t")
        fi
    done
    [[ $key == dp ]] && dp_wait_stored "$BIG_DIGEST"
    c0=$(cpu_s "$PID")
    t=$(now)
    R[${key}_warm]=$(best_of "$REPEAT" "$BASE$BLOB_PATH" "$BIG_SIZE")
    R[${key}_warm_cpu]=$(calc "100 * ($(cpu_s "$PID") - $c0) / ($(now) - $t)")
    verify_blob "$BASE$BLOB_PATH" "$BIG_DIGEST"
    R[${key}_seq_upstream_gets]=$(upstream_gets "$off" "$BIG_DIGEST" "$BIG_REPO")
    say "  $key: cold $(fmt0 "${R[${key}_cold]}") MB/s (proxy CPU $(fmt0 "${R[${key}_cold_cpu]}")%, upstream CPU $(fmt0 "${R[${key}_cold_upcpu]}")%), warm $(fmt0 "${R[${key}_warm]}") MB/s, upstream blob GETs ${R[${key}_seq_upstream_gets]}"
}
say "  direct: $(fmt0 "${R[direct_blob]}") MB/s"

# relay_floor KEY [--sha256] [--temp-file DIR]: the blob through a bare TCP
# relay (no HTTP, nothing held back), optionally hashing every byte and
# writing it to a temp file: what any proxy in the middle (and any verifying
# cache) can reach on this machine. Best of $REPEAT.
relay_floor() {
    local key=$1 port pid log=$W/relay-$1.log
    shift
    port=$(free_port)
    "$RELAY" "127.0.0.1:$port" "127.0.0.1:$UP_PORT" "$@" >"$log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_up "http://127.0.0.1:$port/v2/" "$pid" "tcp relay" "$log"
    R[${key}_blob]=$(best_of "$REPEAT" "http://127.0.0.1:$port$BLOB_PATH" "$BIG_SIZE")
    stop_pid "$pid"
    forget_pid "$pid"
    say "  $key: $(fmt0 "${R[${key}_blob]}") MB/s"
}
relay_floor relay
relay_floor relay_sha --sha256
mkdir -p "$W/relay-tmp"
relay_floor relay_sha_file --sha256 --temp-file "$W/relay-tmp"
one_proxy pc
one_proxy dp
# Portcullis cold fetch verified byte-for-byte: stream a second cold fetch into sha256sum
start_portcullis
verify_blob "$PC_URL$BLOB_PATH" "$BIG_DIGEST"
say "  portcullis cold fetch verified (sha256 of the streamed bytes matches)"

# --------------------------------------------------------------------------
# 3. whole image pulls (manifest + config + layer), cold and warm
# --------------------------------------------------------------------------
say "phase 2/5: image pulls (curl, every blob streamed into sha256sum)"
start_portcullis
start_distproxy
read -r b t <<<"$(pull_image "$UP_URL" "$BIG_REPO" "$TAG")"
read -r b t <<<"$(pull_image "$UP_URL" "$BIG_REPO" "$TAG")"
R[direct_pull]=$t
IMAGE_BYTES=$b
for key in pc dp; do
    if [[ $key == pc ]]; then base=$PC_URL; else base=$DP_URL; fi
    off=$(lines "$UP_LOG")
    read -r b t <<<"$(pull_image "$base" "$BIG_REPO" "$TAG")"
    R[${key}_pull_cold]=$t
    [[ $key == dp ]] && dp_wait_stored "$BIG_DIGEST"
    read -r b t <<<"$(pull_image "$base" "$BIG_REPO" "$TAG")"
    R[${key}_pull_warm]=$t
    R[${key}_pull_upstream_gets]=$(upstream_gets "$off" "$BIG_DIGEST" "$BIG_REPO")
    say "  $key: cold $(fmt2 "${R[${key}_pull_cold]}") s, warm $(fmt2 "${R[${key}_pull_warm]}") s (direct $(fmt2 "${R[direct_pull]}") s)"
done

if [[ $SKOPEO == 1 ]]; then
    say "phase 2b/5: image pulls with skopeo copy docker:// dir:"
    start_portcullis
    start_distproxy
    skopeo_pull "$UP_URL" "$BIG_REPO" "$TAG" >/dev/null
    R[direct_skopeo]=$(skopeo_pull "$UP_URL" "$BIG_REPO" "$TAG")
    R[pc_skopeo_cold]=$(skopeo_pull "$PC_URL" "$BIG_REPO" "$TAG")
    R[pc_skopeo_warm]=$(skopeo_pull "$PC_URL" "$BIG_REPO" "$TAG")
    R[dp_skopeo_cold]=$(skopeo_pull "$DP_URL" "$BIG_REPO" "$TAG")
    dp_wait_stored "$BIG_DIGEST"
    R[dp_skopeo_warm]=$(skopeo_pull "$DP_URL" "$BIG_REPO" "$TAG")
    say "  skopeo: direct $(fmt2 "${R[direct_skopeo]}") s; portcullis $(fmt2 "${R[pc_skopeo_cold]}")/$(fmt2 "${R[pc_skopeo_warm]}") s; dist-proxy $(fmt2 "${R[dp_skopeo_cold]}")/$(fmt2 "${R[dp_skopeo_warm]}") s (cold/warm)"
fi

# --------------------------------------------------------------------------
# 4. thundering herd (cold) and memory (cold + warm), fresh caches
# --------------------------------------------------------------------------
say "phase 3/5: thundering herd, $CLIENTS clients, fresh caches"
start_portcullis
start_distproxy
herd "$UP_URL" direct
R[direct_herd_agg]=$HERD_AGG

for key in pc dp; do
    if [[ $key == pc ]]; then base=$PC_URL pid=$PC_PID; else base=$DP_URL pid=$DP_PID; fi
    off=$(lines "$UP_LOG")
    c0=$(cpu_s "$pid")
    start_sampler "$pid" "$W/rss-$key-cold"
    herd "$base" "$key-cold"
    stop_sampler "$W/rss-$key-cold"
    R[${key}_herd_rss_cold_sampled]=$SAMPLED_KIB
    R[${key}_herd_hwm_cold]=$(vm_kib "$pid" VmHWM)
    R[${key}_herd_cold_cpu]=$(calc "100 * ($(cpu_s "$pid") - $c0) / $HERD_WALL")
    R[${key}_herd_cold_agg]=$HERD_AGG
    R[${key}_herd_cold_min]=$HERD_MIN
    # the distribution proxy's background store stream is logged when it ends
    [[ $key == dp ]] && dp_wait_stored "$BIG_DIGEST"
    R[${key}_herd_upstream_gets]=$(upstream_gets "$off" "$BIG_DIGEST" "$BIG_REPO")
    say "  $key cold herd: upstream blob GETs ${R[${key}_herd_upstream_gets]}, aggregate $(fmt0 "$HERD_AGG") MB/s in $(fmt2 "$HERD_WALL") s, peak RSS $((${R[${key}_herd_hwm_cold]} / 1024)) MiB"

    say "phase 4/5: $key warm, $CLIENTS concurrent clients"
    c0=$(cpu_s "$pid")
    start_sampler "$pid" "$W/rss-$key-warm"
    herd "$base" "$key-warm"
    stop_sampler "$W/rss-$key-warm"
    R[${key}_herd_rss_warm_sampled]=$SAMPLED_KIB
    R[${key}_herd_hwm_all]=$(vm_kib "$pid" VmHWM)
    R[${key}_herd_warm_cpu]=$(calc "100 * ($(cpu_s "$pid") - $c0) / $HERD_WALL")
    R[${key}_herd_warm_agg]=$HERD_AGG
    say "  $key warm herd: aggregate $(fmt0 "$HERD_AGG") MB/s, sampled peak RSS $((${R[${key}_herd_rss_warm_sampled]} / 1024)) MiB"
done

# --------------------------------------------------------------------------
# 5. manifest requests/second (cached, by digest; and by tag)
# --------------------------------------------------------------------------
say "phase 5/5: manifest requests/second ($LOADGEN, $RPS_CONNS connections, ${RPS_SECONDS}s each)"
SMALL_BY_DIGEST=/v2/$SMALL_REPO/manifests/$SMALL_MANIFEST_DIGEST
SMALL_BY_TAG=/v2/$SMALL_REPO/manifests/$TAG
for base in "$PC_URL" "$DP_URL"; do
    curl -sS -f -o /dev/null -H "Accept: $ACCEPT" "$base$SMALL_BY_TAG" || die "small manifest via $base failed"
done
for key in direct pc dp; do
    case $key in direct) base=$UP_URL ;; pc) base=$PC_URL ;; dp) base=$DP_URL ;; esac
    read -r "R[${key}_rps_digest]" "R[${key}_rps_digest_bad]" "R[${key}_rps_digest_p99]" <<<"$(loadgen "$base$SMALL_BY_DIGEST")"
    read -r "R[${key}_rps_tag]" "R[${key}_rps_tag_bad]" "R[${key}_rps_tag_p99]" <<<"$(loadgen "$base$SMALL_BY_TAG")"
    say "  $key: by digest ${R[${key}_rps_digest]} req/s (non-2xx ${R[${key}_rps_digest_bad]}), by tag ${R[${key}_rps_tag]} req/s (non-2xx ${R[${key}_rps_tag_bad]})"
done

# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------
ratio() { fmt2 "$(calc "$1 / $2")"; }
verdict() { if [[ $1 == 1 ]]; then echo "ok"; else echo "**MISSED**"; fi; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 >= b + 0) }' && echo 1 || echo 0; }

D=${R[direct_blob]}
PCC=${R[pc_cold]} PCW=${R[pc_warm]} DPC=${R[dp_cold]} DPW=${R[dp_warm]}
pc_rss_mib=$(( $(max "${R[pc_herd_hwm_all]}" "${R[pc_herd_rss_warm_sampled]}") / 1024 ))
pc_rss_cold_mib=$((${R[pc_herd_hwm_cold]} / 1024))
pc_rss_warm_mib=$((${R[pc_herd_rss_warm_sampled]} / 1024))
dp_rss_cold_mib=$((${R[dp_herd_hwm_cold]} / 1024))
dp_rss_warm_mib=$((${R[dp_herd_rss_warm_sampled]} / 1024))
OK_COLD=$(ge "$(calc "$PCC / $D")" 0.5)
OK_WARM=$(ge "$(calc "$PCW / $D")" 0.8)
OK_ONCE=0
[[ ${R[pc_seq_upstream_gets]} == 1 && ${R[pc_pull_upstream_gets]} == 1 && ${R[pc_herd_upstream_gets]} == 1 ]] && OK_ONCE=1
OK_RSS=0
((pc_rss_mib < 100)) && OK_RSS=1

CMD=""
for v in BENCH_BLOB_MIB BENCH_CLIENTS BENCH_REPEAT BENCH_RPS_SECONDS BENCH_RPS_CONNS BENCH_LOADGEN BENCH_SKOPEO; do
    [[ -n ${!v:-} ]] && CMD+="$v=${!v} "
done
CMD+="bench/run.sh"
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo unknown)
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | head -1)
[[ -n $DIRTY ]] && REV+="+dirty"
REGV=$(docker-registry --version 2>/dev/null | awk '{ print $NF }' || echo unknown)

blob_mb=$(fmt0 "$(calc "$BIG_SIZE / 1000000")")
img_mb=$(fmt0 "$(calc "$IMAGE_BYTES / 1000000")")
pull_cell() { printf '%s s (%s MB/s)' "$(fmt2 "$1")" "$(fmt0 "$(calc "$IMAGE_BYTES / $1 / 1000000")")"; }

cat <<EOF

## Portcullis benchmark

Large blob: ${BLOB_MIB} MiB ($blob_mb MB) of random data; $CLIENTS concurrent clients; $(nproc) cores ($CPU_MODEL);
portcullis $REV, docker-registry $REGV, load generator: $LOADGEN; load average at start / end: $LOAD_START / $(cut -d' ' -f1-3 /proc/loadavg).
Upstream, proxies and clients share the machine (loopback).
MB/s = 10^6 bytes/s. "direct" = the upstream registry itself; "dist-proxy" = docker-registry in proxy mode.

| Measurement | Direct upstream | Portcullis | Distribution proxy | Target (Portcullis) | Met |
|---|---:|---:|---:|---|---|
| Large blob, cold (MB/s; x direct) | $(fmt0 "$D") | $(fmt0 "$PCC") ($(ratio "$PCC" "$D")x) | $(fmt0 "$DPC") ($(ratio "$DPC" "$D")x) | >= 0.5x direct | $(verdict "$OK_COLD") |
| Large blob, warm (MB/s; x direct) | $(fmt0 "$D") | $(fmt0 "$PCW") ($(ratio "$PCW" "$D")x) | $(fmt0 "$DPW") ($(ratio "$DPW" "$D")x) | >= 0.8x direct | $(verdict "$OK_WARM") |
| Proxy CPU during cold / warm fetch (% of one core) | - | $(fmt0 "${R[pc_cold_cpu]}") / $(fmt0 "${R[pc_warm_cpu]}") | $(fmt0 "${R[dp_cold_cpu]}") / $(fmt0 "${R[dp_warm_cpu]}") | | |
| Upstream GETs of the blob: cold + ${REPEAT} warm + 1 verify | 1 per fetch | ${R[pc_seq_upstream_gets]} | ${R[dp_seq_upstream_gets]} | exactly 1 | |
| Image pull (manifest+config+layer, $img_mb MB, curl + sha256), cold | $(pull_cell "${R[direct_pull]}") | $(pull_cell "${R[pc_pull_cold]}") | $(pull_cell "${R[dp_pull_cold]}") | | |
| Image pull, warm | $(pull_cell "${R[direct_pull]}") | $(pull_cell "${R[pc_pull_warm]}") | $(pull_cell "${R[dp_pull_warm]}") | | |
| Upstream GETs of the layer: cold + warm image pull | - | ${R[pc_pull_upstream_gets]} | ${R[dp_pull_upstream_gets]} | exactly 1 | |
EOF
if [[ $SKOPEO == 1 ]]; then
    cat <<EOF
| \`skopeo copy\` to dir:, cold (s) | $(fmt2 "${R[direct_skopeo]}") | $(fmt2 "${R[pc_skopeo_cold]}") | $(fmt2 "${R[dp_skopeo_cold]}") | (skopeo is CPU-bound) | |
| \`skopeo copy\` to dir:, warm (s) | $(fmt2 "${R[direct_skopeo]}") | $(fmt2 "${R[pc_skopeo_warm]}") | $(fmt2 "${R[dp_skopeo_warm]}") | | |
EOF
fi
cat <<EOF
| Herd: $CLIENTS clients pull the cold image at once, upstream GETs of the blob | - | ${R[pc_herd_upstream_gets]} | ${R[dp_herd_upstream_gets]} | exactly 1 | $(verdict "$OK_ONCE") |
| Herd cold: aggregate MB/s (slowest client MB/s) | $(fmt0 "${R[direct_herd_agg]}") | $(fmt0 "${R[pc_herd_cold_agg]}") ($(fmt0 "${R[pc_herd_cold_min]}")) | $(fmt0 "${R[dp_herd_cold_agg]}") ($(fmt0 "${R[dp_herd_cold_min]}")) | | |
| Herd warm: aggregate MB/s | $(fmt0 "${R[direct_herd_agg]}") | $(fmt0 "${R[pc_herd_warm_agg]}") | $(fmt0 "${R[dp_herd_warm_agg]}") | | |
| Proxy CPU, herd cold / warm (% of one core) | - | $(fmt0 "${R[pc_herd_cold_cpu]}") / $(fmt0 "${R[pc_herd_warm_cpu]}") | $(fmt0 "${R[dp_herd_cold_cpu]}") / $(fmt0 "${R[dp_herd_warm_cpu]}") | | |
| Peak RSS, $CLIENTS x ${BLOB_MIB} MiB cold (VmHWM) / warm (VmRSS sampled every 50 ms), MiB | - | $pc_rss_cold_mib / $pc_rss_warm_mib | $dp_rss_cold_mib / $dp_rss_warm_mib | < 100 MiB | $(verdict "$OK_RSS") |
| Cached manifest by digest, req/s ($RPS_CONNS conns; p99) | ${R[direct_rps_digest]} (${R[direct_rps_digest_p99]}) | ${R[pc_rps_digest]} (${R[pc_rps_digest_p99]}) | ${R[dp_rps_digest]} (${R[dp_rps_digest_p99]}) | | |
| Manifest by tag, req/s (Portcullis asks the upstream per request) | ${R[direct_rps_tag]} (${R[direct_rps_tag_p99]}) | ${R[pc_rps_tag]} (${R[pc_rps_tag_p99]}) | ${R[dp_rps_tag]} (${R[dp_rps_tag_p99]}) | | |

What a relay in the middle reaches on this machine (examples/tcp_relay.rs: no HTTP parsing, nothing
held back, no fsync; same blob, same run, best of $REPEAT):

| Path | MB/s | x direct |
|---|---:|---:|
| Direct upstream | $(fmt0 "$D") | 1.00 |
| Bare TCP relay | $(fmt0 "${R[relay_blob]}") | $(ratio "${R[relay_blob]}" "$D") |
| TCP relay hashing every byte (SHA-256, second thread) | $(fmt0 "${R[relay_sha_blob]}") | $(ratio "${R[relay_sha_blob]}" "$D") |
| TCP relay hashing and writing a temp file (third thread): the work a verifying cache cannot skip | $(fmt0 "${R[relay_sha_file_blob]}") | $(ratio "${R[relay_sha_file_blob]}" "$D") |
| Portcullis, cold (hash + temp file + final byte held back) | $(fmt0 "$PCC") | $(ratio "$PCC" "$D") |

Notes: image pulls are sequential curl GETs (manifest, config, layer), each blob streamed through sha256sum
as a verifying client would. Distribution's proxy opens a second upstream stream for every cold blob to fill its
store (so 2 upstream GETs per cold fetch, N+1 for a herd of N), and keeps going upstream until that store has
finished; its warm figures are taken after it finished. Portcullis serves cold clients from the one download.
Peak RSS: VmHWM of a freshly started proxy after the cold herd; warm = highest VmRSS sampled during the warm herd.

Command: \`$CMD\`
EOF
bad=0
for key in direct pc dp; do
    for k in digest tag; do
        n=${R[${key}_rps_${k}_bad]}
        [[ $n == 0 ]] || { echo "Note: $n non-2xx responses in the $key by-$k RPS run." ; bad=1; }
    done
done
echo
echo "Targets: cold >= 0.5x direct: $(verdict "$OK_COLD"); warm >= 0.8x direct: $(verdict "$OK_WARM"); blob fetched upstream exactly once: $(verdict "$OK_ONCE"); RSS < 100 MiB: $(verdict "$OK_RSS")"
