#!/usr/bin/env bash
# Portcullis signature-verification benchmark, end to end.
#
# Usage (from the repository root):
#   bench/verify.sh
#   BENCH_RPS_SECONDS=3 BENCH_COLD_IMAGES=3 bench/verify.sh   # quick run
#
# On 127.0.0.1 and free ports it starts an upstream CNCF Distribution
# (`docker-registry`), pushes small images and, for the signed ones, a legacy
# cosign signature object (`sha256-<hex>.sig`: OCI manifest, go-containerregistry
# empty-image config, one simple-signing layer whose
# `dev.cosignproject.cosign/signature` annotation is base64 of an ASN.1 DER
# ECDSA P-256 / SHA-256 signature made with openssl from a fresh key, exactly
# as `cosign sign --key --tlog-upload=false` writes it). It then runs
#   portcullis - serve --policies <dir> (the key required, tlog: ignore)
#   integrity  - serve --integrity-only (same binary, no signature policy)
# and measures
#   1. cold manifest-by-digest latency (first request for a digest: manifest
#      fetch + signature discovery + verification), one per signed image,
#      against the same first request through the integrity-only proxy;
#   2. cached manifest requests (verdict-cache hits), by digest and by tag,
#      requests/second, latency p50/p99 and proxy CPU per request, against
#      the integrity-only proxy: the difference is the verdict-cache hit cost
#      (proxy CPU µs per request is the steadiest figure on a shared machine;
#      by tag, both proxies ask the upstream per request, which dominates);
# plus sanity checks: the signed image is admitted (200), an unsigned image in
# the same rule is refused (403), and the audit log shows cached verdicts.
#
# Environment (defaults in brackets):
#   BENCH_COLD_IMAGES  signed images, each measured once cold              [5]
#   BENCH_FORMATS      policy formats (discovery work on a cold request)   [legacy, bundle]
#   BENCH_RPS_SECONDS  duration of each requests/second run                [10]
#   BENCH_RPS_CONNS    keep-alive connections for the RPS runs             [16]
#   BENCH_RPS_REPEAT   runs per proxy and request kind, alternating the two
#                      proxies; the best req/s run is reported              [2]
#   BENCH_LOADGEN      auto | wrk | python  (auto: wrk if installed, else
#                      bench/rps.py)                                       [auto]
#   BENCH_BUILD        1 to run `cargo build --release` first              [1]
#   PORTCULLIS_BIN     binary to benchmark        [target/release/portcullis]
#   BENCH_UPSTREAM_DELAY_MS  latency added to every upstream request, by a
#                      relay (examples/tcp_relay.rs --delay-ms) between the
#                      proxies and the upstream; cold latency then shows the
#                      upstream round trips an admission costs            [0]
#   BENCH_TMPDIR       where the scratch directory goes                   [$TMPDIR or /tmp]
#   BENCH_KEEP         1 to keep the scratch directory (logs, key) at the end [0]
#
# Process handling, ports and waits follow bench/run.sh (helpers copied, as
# that script is not a library).
set -euo pipefail
BENCH_TAG=verify-bench
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

COLD_IMAGES=${BENCH_COLD_IMAGES:-5}
FORMATS=${BENCH_FORMATS:-legacy, bundle}
RPS_REPEAT=${BENCH_RPS_REPEAT:-2}
UPSTREAM_DELAY_MS=${BENCH_UPSTREAM_DELAY_MS:-0}
RELAY=$ROOT/target/release/examples/tcp_relay

SIGNED_REPO=bench/signed
UNSIGNED_REPO=bench/unsigned
TAG=v1

[[ $UPSTREAM_DELAY_MS =~ ^[0-9]+$ ]] || die "BENCH_UPSTREAM_DELAY_MS must be a whole number of milliseconds"
for v in COLD_IMAGES RPS_SECONDS RPS_CONNS RPS_REPEAT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "BENCH_$v must be a positive integer (got '${!v}')"
done
[[ $FORMATS =~ ^[a-z,\ ]+$ ]] || die "BENCH_FORMATS must be a comma-separated list of bundle/legacy"

# --------------------------------------------------------------------------
# prerequisites
# --------------------------------------------------------------------------
need docker-registry "install CNCF Distribution (Debian: apt-get install docker-registry)"
need curl "install curl"
need python3 "install python3"
need sha256sum "install coreutils"
need base64 "install coreutils"
need openssl "install openssl (used to generate the P-256 key and sign like cosign)"

build_binary
pick_loadgen
if ((UPSTREAM_DELAY_MS > 0)); then
    if [[ $BUILD == 1 ]]; then
        (cd "$ROOT" && cargo build --release --example tcp_relay) >&2 || die "cargo build --release --example tcp_relay failed"
    fi
    [[ -x $RELAY ]] || die "$RELAY not found (build it with: cargo build --release --example tcp_relay)"
fi

# --------------------------------------------------------------------------
# process bookkeeping and cleanup (as bench/run.sh)
# --------------------------------------------------------------------------
W=$(mktemp -d "$TMPBASE/portcullis-verify-bench.XXXXXX")
PIDS=()

trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'exit 1' TERM

# start_portcullis NAME ARGS...: sets <NAME>_URL, <NAME>_PID, <NAME>_LOG (fresh data dir)
start_portcullis() {
    local name=$1 port pid log
    shift
    port=$(free_port)
    log=$W/portcullis-$name.log
    mkdir -p "$W/data-$name"
    "$BIN" serve "$@" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$(free_port)" --data-dir "$W/data-$name" \
        --default-upstream "${PROXIED_UP_URL:-$UP_URL}" --log-format json >"$log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_up "http://127.0.0.1:$port/v2/" "$pid" "portcullis ($name)" "$log"
    printf -v "${name}_URL" '%s' "http://127.0.0.1:$port"
    printf -v "${name}_PID" '%s' "$pid"
    printf -v "${name}_LOG" '%s' "$log"
    say "portcullis ($name) pid $pid at http://127.0.0.1:$port: $*"
}

# --------------------------------------------------------------------------
# small helpers (as bench/run.sh)
# --------------------------------------------------------------------------
# median / p90 of numbers on stdin
quantile() { sort -g | awk -v q="$1" '{ v[NR] = $1 } END { i = int(NR * q + 0.999999); if (i < 1) i = 1; print v[i] }'; }

# fetch URL: "http_code seconds" of a manifest GET to /dev/null
fetch() {
    curl -sS -o /dev/null -H "Accept: $ACCEPT" -w '%{http_code} %{time_total}' "$1"
}
# expect_code CODE URL: one GET, dies unless it answers CODE; prints seconds
expect_code() {
    local out code t
    out=$(fetch "$2") || die "GET $2 failed"
    read -r code t <<<"$out"
    [[ $code == "$1" ]] || die "GET $2 answered $code, expected $1"
    echo "$t"
}

# push_image REPO TAG NAME: a small image (config + 4 KiB random layer); prints the manifest digest
push_image() {
    local repo=$1 tag=$2 name=$3
    head -c 4096 /dev/urandom >"$W/$name.layer"
    make_image "$name" "$W/$name.layer"
    push_blob "$repo" "$W/$name.config.json"
    push_blob "$repo" "$W/$name.layer"
    push_manifest "$repo" "$tag" "$W/$name.manifest.json"
    echo "sha256:$(sha "$W/$name.manifest.json")"
}

# cosign_sign REPO DIGEST: push `sha256-<hex>.sig` for DIGEST, signed with $W/cosign.key,
# in cosign's exact legacy format (payload, config and manifest bytes as Go marshals them).
cosign_sign() {
    local repo=$1 digest=$2 d=$W/sig-${2#sha256:} payload_hex sig_b64 config_hex config_size payload_size
    mkdir -p "$d"
    # Simple-signing payload (= the layer blob = the signed bytes), no trailing newline.
    printf '{"critical":{"identity":{"docker-reference":"%s"},"image":{"docker-manifest-digest":"%s"},"type":"cosign container image signature"},"optional":null}' \
        "127.0.0.1:$UP_PORT/$repo" "$digest" >"$d/payload.json"
    # ECDSA P-256 over SHA-256(payload), ASN.1 DER, like cosign's signer.
    openssl dgst -sha256 -sign "$W/cosign.key" -out "$d/sig.der" "$d/payload.json"
    openssl dgst -sha256 -verify "$W/cosign.pub" -signature "$d/sig.der" "$d/payload.json" >/dev/null ||
        die "openssl could not verify its own signature"
    sig_b64=$(base64 -w0 <"$d/sig.der")
    payload_hex=$(sha "$d/payload.json")
    payload_size=$(stat -c %s "$d/payload.json")
    # go-containerregistry empty-image config with the payload as diff_id.
    printf '{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"config":{}}' \
        "$payload_hex" >"$d/config.json"
    config_hex=$(sha "$d/config.json")
    config_size=$(stat -c %s "$d/config.json")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":%d,"digest":"sha256:%s"},"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","size":%d,"digest":"sha256:%s","annotations":{"dev.cosignproject.cosign/signature":"%s"}}]}' \
        "$config_size" "$config_hex" "$payload_size" "$payload_hex" "$sig_b64" >"$d/manifest.json"
    python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$d/manifest.json" || die "bad .sig manifest JSON"
    push_blob "$repo" "$d/config.json"
    push_blob "$repo" "$d/payload.json"
    push_manifest "$repo" "sha256-${digest#sha256:}.sig" "$d/manifest.json"
}

# loadgen URL PID: GET URL (manifest Accept header) for RPS_SECONDS.
# Prints "rps non2xx p50 p99 cpu_us_per_request requests".
loadgen() {
    local url=$1 pid=$2 out c0 c1 n
    c0=$(cpu_s "$pid")
    if [[ $LOADGEN == wrk ]]; then
        out=$(wrk -t2 -c"$RPS_CONNS" -d"${RPS_SECONDS}s" --latency -H "Accept: $ACCEPT" "$url" 2>&1) || { echo "$out" >&2; die "wrk failed"; }
        c1=$(cpu_s "$pid")
        awk -v c="$(calc "$c1 - $c0")" '
            /^Requests\/sec:/ { rps = $2 }
            /requests in/ { n = $1 }
            /Non-2xx or 3xx responses:/ { bad = $NF }
            /^ +50%/ { p50 = $2 }
            /^ +99%/ { p99 = $2 }
            END { printf "%.0f %d %s %s %.1f %d\n", rps, bad + 0, (p50 == "" ? "-" : p50), (p99 == "" ? "-" : p99), (n > 0 ? c * 1e6 / n : 0), n }' <<<"$out"
    else
        out=$(python3 "$BENCH/rps.py" "$url" "$RPS_SECONDS" "$(((RPS_CONNS + 1) / 2))" 2 5000000 "Accept: $ACCEPT") || die "rps.py failed"
        c1=$(cpu_s "$pid")
        n=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$out")
        sed -E 's/.*rps=([0-9]+) non2xx=([0-9]+) errors=([0-9]+).*/\1 \2/' <<<"$out" |
            awk -v c="$(calc "$c1 - $c0")" -v n="$n" '{ printf "%s %s - - %.1f %d\n", $1, $2, (n > 0 ? c * 1e6 / n : 0), n }'
    fi
}

# --------------------------------------------------------------------------
# 1. upstream, key, images, signatures, policy
# --------------------------------------------------------------------------
say "scratch directory $W; $COLD_IMAGES signed images; load generator $LOADGEN; formats [$FORMATS]"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
start_upstream
if ((UPSTREAM_DELAY_MS > 0)); then
    relay_port=$(free_port)
    "$RELAY" "127.0.0.1:$relay_port" "127.0.0.1:$UP_PORT" --delay-ms "$UPSTREAM_DELAY_MS" >"$W/relay.log" 2>&1 &
    PIDS+=("$!")
    PROXIED_UP_URL=http://127.0.0.1:$relay_port
    wait_up "$PROXIED_UP_URL/v2/" "$!" "delaying relay" "$W/relay.log"
    say "the proxies reach the upstream through a relay adding ${UPSTREAM_DELAY_MS} ms per request ($PROXIED_UP_URL)"
fi

openssl ecparam -genkey -name prime256v1 -noout -out "$W/cosign.key" 2>/dev/null || die "openssl ecparam failed"
openssl pkey -in "$W/cosign.key" -pubout -out "$W/cosign.pub" 2>/dev/null || die "openssl pkey -pubout failed"
say "generated ECDSA P-256 key $W/cosign.pub"

declare -a SIGNED
for ((i = 1; i <= COLD_IMAGES; i++)); do
    tag=$TAG
    ((i > 1)) && tag=v$i
    d=$(push_image "$SIGNED_REPO" "$tag" "signed-$i")
    cosign_sign "$SIGNED_REPO" "$d"
    SIGNED+=("$d")
done
UNSIGNED=$(push_image "$UNSIGNED_REPO" "$TAG" unsigned)
say "pushed ${#SIGNED[@]} signed images to $SIGNED_REPO (first $SIGNED_REPO:$TAG@${SIGNED[0]}) and $UNSIGNED_REPO:$TAG@$UNSIGNED"

mkdir -p "$W/policies"
cp "$W/cosign.pub" "$W/policies/bench.pub"
cat >"$W/policies/bench.yaml" <<YML
apiVersion: portcullis.dev/v1alpha1
kind: Policy
defaults: { mode: enforce, noMatch: deny, formats: [$FORMATS] }
keys:
  bench: { path: bench.pub }
authorities:
  bench-key: { key: { keys: [bench] }, tlog: ignore }
rules:
  - name: bench
    match: { repositories: ["bench/**"] }
    require: { signatures: { anyOf: [bench-key] } }
YML
"$BIN" policy check "$W/policies" >&2 || die "the benchmark policy does not validate"

start_portcullis PC --policies "$W/policies"
start_portcullis IO --integrity-only

declare -A R

# --------------------------------------------------------------------------
# 2. sanity + cold verification latency
# --------------------------------------------------------------------------
say "phase 1/2: sanity checks and cold (first request) manifest-by-digest latency"
# The unsigned image is refused; this also opens the proxies' upstream connections.
t=$(expect_code 403 "$PC_URL/v2/$UNSIGNED_REPO/manifests/$UNSIGNED")
R[deny_s]=$t
expect_code 200 "$IO_URL/v2/$UNSIGNED_REPO/manifests/$UNSIGNED" >/dev/null
grep -q '"verdict":"deny"' "$PC_LOG" || die "no deny audit event for the unsigned image in $PC_LOG"
say "  unsigned image refused by portcullis (403, $(fmt1 "$(calc "$t * 1000")") ms), served by integrity-only (200)"

: >"$W/cold-pc" && : >"$W/cold-io"
# upstream_lines: access-log lines of the upstream so far (after letting it flush)
upstream_lines() { sleep 0.2; grep -c '^127\.0\.0\.1 - - \[' "$UP_LOG" || true; }
for d in "${SIGNED[@]}"; do
    u0=$(upstream_lines)
    t=$(expect_code 200 "$PC_URL/v2/$SIGNED_REPO/manifests/$d") # cold: discovery + verification
    u1=$(upstream_lines)
    echo "$t" >>"$W/cold-pc"
    echo $((u1 - u0)) >>"$W/cold-pc-up"
    if [[ $d == "${SIGNED[0]}" ]]; then
        grep '^127\.0\.0\.1 - - \[' "$UP_LOG" | sed -n "$((u0 + 1)),${u1}p" |
            awk '{ sub(/^"/, "", $6); print "    " $6, $7, $9 }' >"$W/cold-pc-requests"
    fi
    t2=$(expect_code 200 "$PC_URL/v2/$SIGNED_REPO/manifests/$d") # now a verdict-cache hit
    echo "$t2" >>"$W/second-pc"
    u0=$(upstream_lines)
    t3=$(expect_code 200 "$IO_URL/v2/$SIGNED_REPO/manifests/$d") # cold, no signature work
    u1=$(upstream_lines)
    echo "$t3" >>"$W/cold-io"
    echo $((u1 - u0)) >>"$W/cold-io-up"
    say "  $d: portcullis cold $(fmt1 "$(calc "$t * 1000")") ms ($(tail -1 "$W/cold-pc-up") upstream requests), then $(fmt2 "$(calc "$t2 * 1000")") ms; integrity-only cold $(fmt1 "$(calc "$t3 * 1000")") ms ($(tail -1 "$W/cold-io-up") upstream requests)"
done
R[cold_pc_up]=$(quantile 0.5 <"$W/cold-pc-up") R[cold_io_up]=$(quantile 0.5 <"$W/cold-io-up")
ms() { fmt2 "$(calc "$1 * 1000")"; }
R[cold_pc_med]=$(ms "$(quantile 0.5 <"$W/cold-pc")") R[cold_pc_max]=$(ms "$(quantile 1 <"$W/cold-pc")")
R[cold_io_med]=$(ms "$(quantile 0.5 <"$W/cold-io")") R[cold_io_max]=$(ms "$(quantile 1 <"$W/cold-io")")
R[second_pc_med]=$(ms "$(quantile 0.5 <"$W/second-pc")")
R[cold_first]=$(ms "$(head -1 "$W/cold-pc")")
R[cold_diff]=$(fmt2 "$(calc "${R[cold_pc_med]} - ${R[cold_io_med]}")")

# Audit trail: each signed digest verified exactly once (cached=false, allow), then cached.
allow_uncached=$(grep -c '"verdict":"allow".*"cached":false' "$PC_LOG" || true)
allow_cached=$(grep -c '"verdict":"allow".*"cached":true' "$PC_LOG" || true)
[[ $allow_uncached == "$COLD_IMAGES" ]] || die "expected $COLD_IMAGES uncached allow events, found $allow_uncached (log $PC_LOG)"
[[ $allow_cached -ge $COLD_IMAGES ]] || die "expected >= $COLD_IMAGES cached allow events, found $allow_cached"
grep -q "\"authorities_satisfied\":\[\"bench-key\"\]" "$PC_LOG" || die "no event names bench-key as satisfied"
say "  audit: $allow_uncached verifications (cached=false), $allow_cached cache hits so far; bench-key satisfied"

# --------------------------------------------------------------------------
# 3. cached verdict: requests/second, by digest and by tag
# --------------------------------------------------------------------------
say "phase 2/2: cached manifest requests/second ($LOADGEN, $RPS_CONNS connections, ${RPS_SECONDS}s each, $RPS_REPEAT alternating runs)"
BY_DIGEST=/v2/$SIGNED_REPO/manifests/${SIGNED[0]}
BY_TAG=/v2/$SIGNED_REPO/manifests/$TAG
for base in "$PC_URL" "$IO_URL"; do
    expect_code 200 "$base$BY_TAG" >/dev/null
done
before=$allow_cached
# one_run KEY KIND(d|t): one loadgen run; keeps the run with the best req/s per KEY/KIND
one_run() {
    local key=$1 kind=$2 base pid path rps bad p50 p99 cpu n
    if [[ $key == PC ]]; then base=$PC_URL pid=$PC_PID; else base=$IO_URL pid=$IO_PID; fi
    if [[ $kind == d ]]; then path=$BY_DIGEST; else path=$BY_TAG; fi
    read -r rps bad p50 p99 cpu n <<<"$(loadgen "$base$path" "$pid")"
    say "  $key by $([[ $kind == d ]] && echo digest || echo tag): $rps req/s, p50 $p50, p99 $p99, $cpu µs proxy CPU/req, non-2xx $bad"
    R[${key}_${kind}_bad]=$(( ${R[${key}_${kind}_bad]:-0} + bad ))
    R[${key}_${kind}_all]+="$rps "
    if [[ -z ${R[${key}_${kind}_rps]:-} ]] || ((rps > ${R[${key}_${kind}_rps]})); then
        R[${key}_${kind}_rps]=$rps R[${key}_${kind}_p50]=$p50 R[${key}_${kind}_p99]=$p99 R[${key}_${kind}_n]=$n
    fi
    R[${key}_${kind}_cpuall]+="$cpu "
    if [[ -z ${R[${key}_${kind}_cpu]:-} ]] || awk -v a="$cpu" -v b="${R[${key}_${kind}_cpu]}" 'BEGIN { exit !(a + 0 < b + 0) }'; then
        R[${key}_${kind}_cpu]=$cpu
    fi
}
# Alternate the two proxies so drift in machine load hits both alike.
for ((rep = 1; rep <= RPS_REPEAT; rep++)); do
    for kind in d t; do
        for key in PC IO; do one_run "$key" "$kind"; done
    done
done
sleep 0.3
allow_uncached_after=$(grep -c '"verdict":"allow".*"cached":false' "$PC_LOG" || true)
allow_cached=$(grep -c '"verdict":"allow".*"cached":true' "$PC_LOG" || true)
[[ $allow_uncached_after == "$allow_uncached" ]] || die "the load runs caused $((allow_uncached_after - allow_uncached)) new verifications (expected 0)"
R[hits]=$((allow_cached - before))

# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------
# per-request wall time at saturation (µs) = 1e6 / rps
per_req() { fmt1 "$(calc "1000000 / $1")"; }
diff_us() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f", 1000000 / a - 1000000 / b }'; }
diff_cpu() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f", a - b }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f%%", 100 * (a - b) / b }'; }

CMD=""
for v in BENCH_COLD_IMAGES BENCH_FORMATS BENCH_RPS_SECONDS BENCH_RPS_CONNS BENCH_RPS_REPEAT BENCH_LOADGEN BENCH_UPSTREAM_DELAY_MS; do
    [[ -n ${!v:-} ]] && CMD+="$v='${!v}' "
done
CMD+="bench/verify.sh"
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo unknown)
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | head -1)
[[ -n $DIRTY ]] && REV+="+dirty"
REGV=$(docker-registry --version 2>/dev/null | awk '{ print $NF }' || echo unknown)

cat <<EOF

## Portcullis signature verification, end to end

Legacy cosign \`.sig\` (ECDSA P-256, openssl-signed, \`tlog: ignore\`), policy formats [$FORMATS];
$(nproc) cores ($CPU_MODEL); portcullis $REV, docker-registry $REGV, load generator: $LOADGEN
($RPS_CONNS connections, ${RPS_SECONDS} s per run, best of $RPS_REPEAT alternating runs); load average at start / end: $LOAD_START / $(cut -d' ' -f1-3 /proc/loadavg).
Upstream, proxies and load generator share the machine (loopback).
"portcullis" = serve --policies; "integrity-only" = serve --integrity-only (no signature policy).

| First request for a digest (cold), ms, curl | portcullis | integrity-only | difference |
|---|---:|---:|---:|
| Manifest by digest, median of $COLD_IMAGES images (max) | ${R[cold_pc_med]} (${R[cold_pc_max]}) | ${R[cold_io_med]} (${R[cold_io_max]}) | ${R[cold_diff]} |
| Upstream requests made by that first request (median) | ${R[cold_pc_up]} | ${R[cold_io_up]} | |
| Same digest, second request (verdict cached), median | ${R[second_pc_med]} | | |
| Unsigned image, first request (403 refused) | $(ms "${R[deny_s]}") | | |

Upstream requests of the first cold portcullis request (method, path, status):
$(cat "$W/cold-pc-requests")

| Cached manifest requests | portcullis | integrity-only | portcullis vs integrity-only (verdict-cache hit cost) |
|---|---:|---:|---:|
| By digest: req/s, best (all runs) | ${R[PC_d_rps]} (${R[PC_d_all]% }) | ${R[IO_d_rps]} (${R[IO_d_all]% }) | $(pct "${R[PC_d_rps]}" "${R[IO_d_rps]}") |
| By digest: latency p50 / p99 (best run) | ${R[PC_d_p50]} / ${R[PC_d_p99]} | ${R[IO_d_p50]} / ${R[IO_d_p99]} | |
| By digest: µs per request at saturation (1e6 / best req/s) | $(per_req "${R[PC_d_rps]}") | $(per_req "${R[IO_d_rps]}") | $(diff_us "${R[PC_d_rps]}" "${R[IO_d_rps]}") µs |
| By digest: proxy CPU µs per request, lowest (all runs) | ${R[PC_d_cpu]} (${R[PC_d_cpuall]% }) | ${R[IO_d_cpu]} (${R[IO_d_cpuall]% }) | $(diff_cpu "${R[PC_d_cpu]}" "${R[IO_d_cpu]}") µs |
| By tag: req/s, best (all runs); the proxy asks the upstream per request | ${R[PC_t_rps]} (${R[PC_t_all]% }) | ${R[IO_t_rps]} (${R[IO_t_all]% }) | $(pct "${R[PC_t_rps]}" "${R[IO_t_rps]}") |
| By tag: latency p50 / p99 (best run) | ${R[PC_t_p50]} / ${R[PC_t_p99]} | ${R[IO_t_p50]} / ${R[IO_t_p99]} | |
| By tag: µs per request at saturation | $(per_req "${R[PC_t_rps]}") | $(per_req "${R[IO_t_rps]}") | $(diff_us "${R[PC_t_rps]}" "${R[IO_t_rps]}") µs |
| By tag: proxy CPU µs per request, lowest (all runs) | ${R[PC_t_cpu]} (${R[PC_t_cpuall]% }) | ${R[IO_t_cpu]} (${R[IO_t_cpuall]% }) | $(diff_cpu "${R[PC_t_cpu]}" "${R[IO_t_cpu]}") µs |

Checks: signed images admitted (200), unsigned image refused (403); each signed digest verified once
($allow_uncached uncached allow events) and ${R[hits]} cached-verdict allow events during the load runs, no new verification.
Cold = curl time_total of the first GET (portcullis: manifest fetch + discovery of the \`.sig\`$( [[ $FORMATS == *bundle* ]] && echo " and referrers") + verification).
Proxy CPU per request = user+system CPU of the proxy process during the run / requests; the load generator
competes for the same $(nproc) cores, so req/s understates what the proxy alone could do.

Command: \`$CMD\`
EOF
for key in PC IO; do
    for k in d t; do
        n=${R[${key}_${k}_bad]}
        [[ $n == 0 ]] || echo "Note: $n non-2xx responses in the $key by-$([[ $k == d ]] && echo digest || echo tag) run."
    done
done
