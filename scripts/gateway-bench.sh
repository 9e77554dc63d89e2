#!/usr/bin/env bash
# Gateway latency under an external HTTP load generator (wrk), side by side:
#   embedded  `psl dev` (the gateway calls the platform in process)
#   cluster   `psl up --nodes 3` (gateway process -> sealed invocation over a 3-server NATS
#             cluster -> worker process -> answer)
# for `hello` (no state) and `counter` (a write lock, a write, a flush that is durable in a
# JetStream stream with three replicas or in the embedded DataCapsule, an unlock).
#
# Usage: scripts/gateway-bench.sh [seconds per point] [out dir]
# Needs: wrk (apt-get install wrk), nats-server, `cargo xtask guests`, and a release build
# of psl (cargo build --release -p psl-cli).
set -euo pipefail
secs=${1:-10}
out=${2:-bench-results/gateway}
target=${CARGO_TARGET_DIR:-target}
psl="$target/release/psl"
[ -x "$psl" ] || { echo "build psl first: cargo build --release -p psl-cli" >&2; exit 1; }
command -v wrk >/dev/null || { echo "install wrk: apt-get install wrk" >&2; exit 1; }
mkdir -p "$out"
work=$(mktemp -d)
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = os.getenv("BODY") or ""
LUA
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

wait_for() { # url
  for _ in $(seq 1 300); do curl -sf "$1/health" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "no gateway at $1" >&2; return 1
}

summary="$out/summary.md"
{
  echo "# Gateway latency under wrk ($(date -u +%F), ${secs}s per point, $(nproc) cores)"
  echo
  echo "| mode | function | connections | requests/s | p50 | p90 | p99 | errors |"
  echo "|---|---|---|---|---|---|---|---|"
} > "$summary"

run_points() { # mode url
  local mode=$1 url=$2
  for fn in hello counter; do
    body=world; [ "$fn" = counter ] && body=c
    for c in 1 8 32; do
      local file="$out/$mode-$fn-c$c.txt"
      BODY=$body wrk -t"$(( c < 2 ? 1 : 2 ))" -c"$c" -d"${secs}s" --latency -s "$work/post.lua" "$url/invoke/$fn" > "$file"
      local rps p50 p90 p99 errors
      rps=$(awk '/Requests\/sec/ {print $2}' "$file")
      p50=$(awk '$1=="50%" {print $2}' "$file")
      p90=$(awk '$1=="90%" {print $2}' "$file")
      p99=$(awk '$1=="99%" {print $2}' "$file")
      errors=$(awk '/Non-2xx|Socket errors/ {printf "%s ", $0}' "$file")
      echo "| $mode | $fn | $c | $rps | $p50 | $p90 | $p99 | ${errors:-0} |" >> "$summary"
      echo "$mode $fn c=$c: $rps req/s, p50 $p50, p99 $p99 ${errors}"
    done
  done
}

# Embedded.
"$psl" dev --no-demo --workers 3 --listen 127.0.0.1:18070 > "$work/dev.log" 2>&1 &
pids+=($!)
wait_for http://127.0.0.1:18070
run_points embedded http://127.0.0.1:18070
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

# Cluster.
"$psl" up --nodes 3 --listen 127.0.0.1:18071 --dir "$work/up" > "$work/up.log" 2>&1 &
pids+=($!)
wait_for http://127.0.0.1:18071
run_points cluster http://127.0.0.1:18071
echo "wrote $summary"
