#!/usr/bin/env bash
# Runs each cargo-fuzz target (DataCapsule decoders, store recovery, the deploy checks, SCL bodies, trust inputs) for N seconds (default 30) from the checked-in seed
# corpus (built from crates/psl-capsule/tests/fixtures/format-v1.hex). Needs a nightly toolchain
# and cargo-fuzz (`cargo install cargo-fuzz`). Opt-in: not part of `cargo test`.
#
#   scripts/fuzz-smoke.sh [seconds] [target...]
set -euo pipefail
seconds="${1:-30}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(record_decode record_verify store_open deploy_check scl_decode trust_decode cluster_decode)
fi
cd "$(dirname "$0")/../fuzz"
for target in "${targets[@]}"; do
    echo "== fuzz $target for ${seconds}s"
    # Work on a copy so the checked-in seeds stay small; findings land in fuzz/artifacts/.
    work="$(mktemp -d)"
    if [ -d corpus/"$target" ]; then cp corpus/"$target"/* "$work"/; fi
    # The deploy target starts from the example modules when they are built.
    if [ "$target" = deploy_check ] && [ -d ../guests/out ]; then cp ../guests/out/*.wasm "$work"/; fi
    cargo +nightly fuzz run "$target" "$work" -- \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1
    rm -rf "$work"
done
echo "fuzz smoke passed: ${targets[*]}"
