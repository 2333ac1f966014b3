#!/usr/bin/env bash
# Promotion between two real registries, next to `skopeo copy` between the
# same two (issue 13's benchmark):
#   cold    - `portcullis promote` of an image with one BENCH_PROMOTE_MIB
#             (512) MiB layer to an empty production repository: resolve,
#             admit, stream while hashed, read back, admit again, move the tag
#   skopeo  - `skopeo copy` of the same image to another production
#             repository (no verification, no tag-last)
#   present - a second promotion of the same digest to another tag, every
#             blob already there: requests to each registry and time
# Both registries are CNCF Distribution (`docker-registry`) on loopback; the
# policy is a `static: allow` rule (this measures copying, not signatures:
# see `cargo bench --bench verification` for those).
#
# usage: bench/promote.sh        (needs docker-registry, skopeo, curl, python3)
# knobs: BENCH_PROMOTE_MIB, BENCH_BUILD=0 (use the existing release binary),
#        PORTCULLIS_BIN, BENCH_KEEP=1 (keep the scratch directory)
set -euo pipefail
BENCH_TAG=promote
source "$(dirname "$0")/lib.sh"
MIB=${BENCH_PROMOTE_MIB:-512}

need docker-registry "apt-get install docker-registry"
need skopeo "apt-get install skopeo"
need curl "apt-get install curl"
W=$(mktemp -d "$TMPBASE/portcullis-promote-bench.XXXXXX")
PIDS=()
trap cleanup EXIT
trap 'exit 130' INT TERM
build_binary

# start_registry NAME: sets NAME_URL and NAME_PORT
start_registry() {
    local name=$1 port pid log
    port=$(free_port)
    log=$W/$name.log
    write_registry_config "$W/$name.yml" "$port" "$W/$name-storage"
    docker-registry serve "$W/$name.yml" >"$log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_up "http://127.0.0.1:$port/v2/" "$pid" "$name" "$log"
    printf -v "${name}_URL" '%s' "http://127.0.0.1:$port"
    printf -v "${name}_PORT" '%s' "$port"
}
start_registry staging
start_registry production

say "seeding staging with a $MIB MiB layer"
head -c "$((MIB << 20))" /dev/urandom >"$W/layer.bin"
make_image app "$W/layer.bin"
UP_URL=$staging_URL
push_blob bench/app "$W/layer.bin"
push_blob bench/app "$W/app.config.json"
push_manifest bench/app v1 "$W/app.manifest.json"

allow_all_policy "$W/policies"
cat >"$W/portcullis.yaml" <<YML
dataDir: $W/data
upstreams:
  - host: staging.test
    url: $staging_URL
    insecurePlainHttp: true
  - host: prod.test
    url: $production_URL
    insecurePlainHttp: true
YML

# promote DST_TAG: prints "seconds json"
promote() {
    local start end
    start=$(date +%s.%N)
    "$BIN" promote staging.test/bench/app:v1 "prod.test/bench/app:$1" \
        --config "$W/portcullis.yaml" --policies "$W/policies" --json >"$W/promote-$1.json" 2>"$W/promote-$1.log" ||
        { cat "$W/promote-$1.log" >&2; die "promote to :$1 failed"; }
    end=$(date +%s.%N)
    calc "$end - $start"
}

say "cold promotion of $MIB MiB"
cold_s=$(promote v1)
say "skopeo copy of the same image"
start=$(date +%s.%N)
skopeo copy --quiet --src-tls-verify=false --dest-tls-verify=false \
    "docker://127.0.0.1:$staging_PORT/bench/app:v1" "docker://127.0.0.1:$production_PORT/bench/skopeo:v1"
skopeo_s=$(calc "$(date +%s.%N) - $start")
say "promotion with every blob already present"
present_s=$(promote v2)

requests() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["requests"]; print(" ".join(f"{k}={v}" for k,v in sorted(r.items())) if isinstance(r, dict) else r)' "$1"; }
mb=$(calc "$MIB * 1.048576")
printf '\n%-44s %10s %10s\n' "Promotion, $MIB MiB layer (loopback)" "seconds" "MB/s"
printf '%-44s %10.2f %10.0f\n' "portcullis promote (cold)" "$cold_s" "$(calc "$mb / $cold_s")"
printf '%-44s %10.2f %10.0f\n' "skopeo copy (same registries, no checks)" "$skopeo_s" "$(calc "$mb / $skopeo_s")"
printf '%-44s %10.2f %10s\n' "portcullis promote (all blobs present)" "$present_s" "-"
printf 'requests, cold:    %s\n' "$(requests "$W/promote-v1.json")"
printf 'requests, present: %s\n' "$(requests "$W/promote-v2.json")"
