#!/usr/bin/env bash
# Runs each DataCapsule cargo-fuzz target for N seconds (default 30) from the checked-in seed
# corpus (built from crates/psl-capsule/tests/fixtures/format-v1.hex). Needs a nightly toolchain
# and cargo-fuzz (`cargo install cargo-fuzz`). Opt-in: not part of `cargo test`.
#
#   scripts/fuzz-smoke.sh [seconds] [target...]
set -euo pipefail
seconds="${1:-30}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(record_decode record_verify store_open)
fi
cd "$(dirname "$0")/../fuzz"
for target in "${targets[@]}"; do
    echo "== fuzz $target for ${seconds}s"
    # Work on a copy so the checked-in seeds stay small; findings land in fuzz/artifacts/.
    work="$(mktemp -d)"
    cp corpus/"$target"/* "$work"/
    cargo +nightly fuzz run "$target" "$work" -- \
        -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1
    rm -rf "$work"
done
echo "fuzz smoke passed: ${targets[*]}"
