#!/usr/bin/env bash
# Replicas on one bucket: upstream GETs per blob when 8 clients pull one cold
# image spread over 3 replicas (target: exactly 1 each), the first byte of a
# cold blob on every replica with and without cluster.peers, then the store's own
# figures on both backends (local and S3 through s3s-fs): listing, per-request
# overhead, eviction of 10,000 blobs, a 512 MiB blob cold and warm.
#
# Usage (from the repository root): bench/replicas.sh
# Runs tests/replicas (three replicas of the built binary on an in-process
# s3s-fs bucket, the counting fake upstream) and `cargo bench --bench store`.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== 8 cold pulls over 3 replicas (tests/replicas)"
cargo test --test replicas eight_cold_pulls -- --nocapture 2>&1 | grep -E '^BENCH|test result'
echo "== cluster.peers: first byte of a cold 4 MiB layer on 3 replicas, and a leader killed mid-download"
cargo test --test replicas with_peers -- --nocapture --test-threads 1 2>&1 | grep -E '^BENCH|test result'
echo "== the store, local and S3 (cargo bench --bench store)"
cargo bench --bench store
