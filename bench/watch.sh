#!/usr/bin/env bash
# One registry-watch round over BENCH_WATCH_TAGS (1000) watched tags against
# a local CNCF Distribution upstream (issue 14's benchmark):
#   first     - `portcullis watch --rounds 1` on an empty data directory: one
#               HEAD per tag; each distinct digest (BENCH_WATCH_IMAGES, 10)
#               fetched and judged once; the observations written
#   unchanged - the same again, nothing moved: one HEAD per tag, nothing else
# both at watch.concurrency BENCH_WATCH_CONCURRENCY (16) and at 1 (tags one
# after another, as before concurrency), against the registry directly and
# through a relay that adds BENCH_WATCH_LATENCY_MS (20) to every response
# (bench/latency_relay.py: a registry one round trip away; 0 skips it).
# Reported: the round's time (printed by the process), upstream requests
# (Distribution's access log) and the process's peak RSS (/usr/bin/time -v;
# process start-up included).
# The policy is a `static: allow` rule: this measures the watch, not
# signatures (see `cargo bench --bench verification` for those).
#
# usage: bench/watch.sh        (needs docker-registry, curl, python3, /usr/bin/time)
# knobs: BENCH_WATCH_TAGS, BENCH_WATCH_IMAGES, BENCH_WATCH_CONCURRENCY,
#        BENCH_WATCH_LATENCY_MS,
#        BENCH_BUILD=0 (use the existing release binary), PORTCULLIS_BIN,
#        BENCH_KEEP=1 (keep the scratch directory)
set -euo pipefail
BENCH_TAG=watch
source "$(dirname "$0")/lib.sh"
TAGS=${BENCH_WATCH_TAGS:-1000}
IMAGES=${BENCH_WATCH_IMAGES:-10}
CONCURRENCY=${BENCH_WATCH_CONCURRENCY:-16}
LATENCY_MS=${BENCH_WATCH_LATENCY_MS:-20}

need docker-registry "apt-get install docker-registry"
need curl "apt-get install curl"
need python3 "apt-get install python3"
[[ -x /usr/bin/time ]] || die "/usr/bin/time not found (apt-get install time)"
W=$(mktemp -d "$TMPBASE/portcullis-watch-bench.XXXXXX")
PIDS=()
trap cleanup EXIT
trap 'exit 130' INT TERM
build_binary
start_upstream

say "seeding $IMAGES images under $TAGS tags"
for ((i = 0; i < IMAGES; i++)); do
    head -c 1024 /dev/urandom >"$W/layer$i.bin"
    make_image "img$i" "$W/layer$i.bin"
    push_blob bench/app "$W/layer$i.bin"
    push_blob bench/app "$W/img$i.config.json"
done
# One process for the tag PUTs (curl per tag would dominate the set-up).
python3 - "$UP_URL" "$W" "$TAGS" "$IMAGES" <<'PY' || die "tagging failed"
import http.client, sys, urllib.parse
url, w, tags, images = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
u = urllib.parse.urlparse(url)
conn = http.client.HTTPConnection(u.hostname, u.port)
manifests = [open(f"{w}/img{i}.manifest.json", "rb").read() for i in range(images)]
for t in range(tags):
    conn.request("PUT", f"/v2/bench/app/manifests/t{t:04d}", body=manifests[t % images],
                 headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    r = conn.getresponse()
    r.read()
    if r.status != 201:
        sys.exit(f"PUT t{t:04d}: {r.status}")
PY

allow_all_policy "$W/policies"
tag_list=$(python3 -c "print(', '.join(f't{t:04d}' for t in range($TAGS)))")
# config NAME CONCURRENCY URL: writes $W/watch-NAME.yaml (its own data directory)
config() {
    cat >"$W/watch-$1.yaml" <<YML
dataDir: $W/data-$1
auditLog: $W/audit-$1.jsonl
upstreams:
  - host: upstream.test
    url: $3
    insecurePlainHttp: true
watch:
  concurrency: $2
  targets:
    - { registry: upstream.test, repository: bench/app, tags: [$tag_list] }
YML
}

# count METHOD FROM_LINE: requests with METHOD in the upstream log after FROM_LINE
count() {
    tail -n +"$(($2 + 1))" "$UP_LOG" | grep -c "\"$1 /v2/bench/app/" || true
}

# round CONFIG PHASE: one `--rounds 1` run; prints "seconds heads gets rss_mib"
round() {
    local from out secs heads gets rss
    from=$(wc -l <"$UP_LOG")
    out=$W/round-$1-$2
    /usr/bin/time -v -o "$out.time" "$BIN" watch --rounds 1 --config "$W/watch-$1.yaml" \
        --policies "$W/policies" >"$out.out" 2>"$out.log" ||
        { cat "$out.log" "$out.out" >&2; die "watch --rounds 1 ($1, $2) failed"; }
    secs=$(sed -n 's/^round 1: [0-9]* tags checked in \([0-9.]*\) s, 0 failed$/\1/p' "$out.out")
    [[ -n $secs ]] || { cat "$out.out" >&2; die "no clean round line ($1, $2)"; }
    sleep 0.2 # the registry's log lines are written after the responses
    heads=$(count HEAD "$from")
    gets=$(count GET "$from")
    rss=$(awk -F': ' '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$out.time")
    echo "$secs $heads $gets $rss"
}

results=()
# measure LABEL URL: both phases at both concurrencies against URL
measure() {
    local c phase
    for c in "$CONCURRENCY" 1; do
        config "$1-$c" "$c" "$2"
        for phase in first unchanged; do
            say "$1, concurrency $c, $phase round"
            results+=("$1 $c $phase $(round "$1-$c" "$phase")")
        done
    done
}
measure loopback "$UP_URL"
if [[ $LATENCY_MS != 0 ]]; then
    relay_port=$(free_port)
    python3 "$BENCH/latency_relay.py" "$relay_port" "$UP_PORT" "$LATENCY_MS" >"$W/relay.log" 2>&1 &
    PIDS+=("$!")
    wait_up "http://127.0.0.1:$relay_port/v2/" "$!" "latency relay" "$W/relay.log"
    measure "+${LATENCY_MS}ms" "http://127.0.0.1:$relay_port"
fi

printf '\n%-46s %8s %6s %5s %13s\n' "Watch round, $TAGS tags, $IMAGES digests" "seconds" "HEAD" "GET" "peak RSS MiB"
for r in "${results[@]}"; do
    read -r where c phase secs heads gets rss <<<"$r"
    printf '%-46s %8.3f %6s %5s %13s\n' "$where, concurrency $c, $phase round" "$secs" "$heads" "$gets" "$rss"
done
