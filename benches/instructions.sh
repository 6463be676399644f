#!/usr/bin/env bash
# User-space instructions per request (or per stream) of envelope-proxy builds, counted by
# valgrind's callgrind: an exact figure that this shared machine's noise does not move, for
# comparing two builds of one change. It leaves out the kernel and counts a `memcpy` as a few
# instructions whatever its size, so it complements CPU time (benches/load.sh), never replaces
# it. See BENCHMARKS.md ("second step") for a table made with it.
#   benches/instructions.sh                      # target/release/envelope-proxy, every workload
#   benches/instructions.sh old=/tmp/a new=/tmp/b  # builds side by side, workload by workload
#   benches/instructions.sh --smoke              # CI: debug build, 20 requests of one workload
# WORKLOADS="name:path[:upstream-shape] …" and N (requests per workload) override the defaults.
# Each build runs alone under callgrind (one worker, instrumentation switched on after a
# warm-up), in front of bench-tool's upstream; oha sends N requests over 16 connections.
# Only 127.0.0.1 is used; every step is bounded in requests.
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
[[ "${1:-}" == "--smoke" ]] && { SMOKE=1; shift; }
if ((SMOKE)); then
  PROFILE_DIR=target/debug BUILD_FLAGS=() N=${N:-20}
  WORKLOADS=${WORKLOADS:-"1k-wrap:/api/v1/bench/json/1024"}
else
  PROFILE_DIR=target/release BUILD_FLAGS=(--release) N=${N:-1000}
  WORKLOADS=${WORKLOADS:-"1k-wrap:/api/v1/bench/json/1024 1k-pass:/v1/bench/json/1024 \
64k-wrap:/api/v1/bench/json/65536 64k-pass:/v1/bench/json/65536 \
zh64k-wrap:/api/v1/bench/zh/65536 zh64k-pass:/v1/bench/zh/65536 \
zhu64k-wrap:/api/v1/bench/zhu/65536 zhu64k-pass:/v1/bench/zhu/65536 \
sse-wrap:/api/v1/bench/sse/200/300/0 sse-pass:/v1/bench/sse/200/300/0 \
sse-unwrap:/v1/bench/envsse/200/300/0:envelope"}
fi
# oha from PATH, else the debug build `benches/load.sh --smoke` installs in target/tools (CI runs
# that step first, and nothing else puts oha on PATH on a fresh machine).
if ! command -v oha >/dev/null 2>&1 && [[ -x target/tools/bin/oha ]]; then
  PATH=$PWD/target/tools/bin:$PATH
fi
for tool in valgrind callgrind_control oha; do
  command -v "$tool" >/dev/null 2>&1 || { echo "instructions: $tool is missing" >&2; exit 1; }
done

cargo build --locked "${BUILD_FLAGS[@]}" --bin envelope-proxy --example bench-tool >&2
TOOL=$PROFILE_DIR/examples/bench-tool
BUILDS=("$@")
((${#BUILDS[@]})) || BUILDS=("envelope-proxy=$PROFILE_DIR/envelope-proxy")
OUT=${OUT:-target/instructions}
rm -rf "$OUT" && mkdir -p "$OUT"
source benches/tools/servers.sh
trap cleanup EXIT
start_upstream "$(($(nproc) > 1 ? 1 : 0))"

# requests BUILD_NAME BIN WORKLOAD_NAME PATH SHAPE: prints the workload's row for the build
requests() {
  local name=$1 bin=$2 wl=$3 path=$4 shape=$5 port pid n ir
  port=$("$TOOL" free-port)
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/$wl-$name.callgrind" \
    "$bin" --listen "127.0.0.1:$port" --upstream "$UP/v1" --upstream-shape "$shape" \
    --worker-threads 1 --stream-envelope wrap --log-level warn >"$OUT/$wl-$name.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_port "$port"
  # Warm-up: connections and the pool exist before counting starts.
  oha --no-tui -c 16 -n "$((N < 100 ? N : 100))" "http://127.0.0.1:$port$path" >/dev/null
  callgrind_control -i on "$pid" >/dev/null 2>&1
  n=$(oha --no-tui --output-format json -c 16 -n "$N" "http://127.0.0.1:$port$path" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["statusCodeDistribution"].get("200", 0))')
  callgrind_control -i off "$pid" >/dev/null 2>&1
  kill -TERM "$pid" && wait "$pid" || true
  ir=$(sed -n 's/.*Collected : //p' "$OUT/$wl-$name.log" | tr -d ,)
  if [[ $n != "$N" || -z $ir || $ir == 0 ]]; then
    echo "instructions: $wl through $name: $n of $N answered 200, ${ir:-no} instructions counted" >&2
    return 1
  fi
  printf '%-10s %-16s %8s %12s\n' "$wl" "$name" "$n" "$(python3 -c "print(f'{$ir / $n / 1000:.1f}')")"
}

printf '%-10s %-16s %8s %12s\n' workload build requests kinstr/req
for wl in $WORKLOADS; do
  IFS=: read -r wname path shape <<<"$wl"
  for build in "${BUILDS[@]}"; do
    requests "${build%%=*}" "${build#*=}" "$wname" "$path" "${shape:-bare}"
  done
done
