#!/usr/bin/env bash
# The measurements behind BENCHMARKS.md's "Missed targets": what explains a number, not the
# numbers themselves (load.sh measures those). Release build, 127.0.0.1 only, every step
# bounded in time. `syscalls` and `faults` need perf (apt-get install linux-perf).
#
#   benches/profile.sh cpu [SIZE|WHAT] [ROUNDS]
#                                   CPU per request at saturation, SIZE-byte JSON (default 1024)
#                                   or the bench path WHAT (e.g. sse/200/300/0): envelope-proxy
#                                   wrap and pass-through vs nginx and haproxy (where installed)
#                                   and hyper's floor (bench-tool floor: a hyper proxy that does
#                                   nothing else), 1 worker each, how busy each was; ROUNDS
#                                   (default 1) alternate the five, and each one's median and
#                                   ours against the best peer are printed: a host that drifts
#                                   during the run moves all five alike
#   benches/profile.sh syscalls     syscalls per request at 1,000 req/s (ours vs nginx and
#                                   haproxy), and per event of 200-event streams
#   benches/profile.sh rss [N]      RSS per open stream, N streams (default 2000): hyper's floors
#                                   (the upstream alone, a hyper HTTP/1.1 server; bench-tool
#                                   floor, a hyper proxy), then a fresh 2-worker proxy over
#                                   HTTP/1.1 clients (HTTP/1.1 and HTTP/2 upstream) and HTTP/2
#                                   clients
#   benches/profile.sh faults [N]   which code first touches the resident pages while N streams
#                                   (default 500) open: perf's page-fault event with call stacks
#   benches/profile.sh ab A B [PATH] [N] [ROUNDS] [SHAPE]
#                                   CPU per request of two builds A and B side by side, in
#                                   alternating rounds of N requests (default 10000) to PATH
#                                   (default /api/v1/bench/json/1024), ROUNDS each (default 6),
#                                   and each build's median: how a change is measured on a noisy
#                                   host, where two runs apart differ more than the change
#   benches/profile.sh cold [N] [BUILD...]
#                                   where the cold time to first event goes (load.sh's "CPU left
#                                   idle" case): N dripping streams (default 300) through each
#                                   build (default the release build), nginx and hyper's floor,
#                                   interleaved, while the kernel traces their syscalls; each
#                                   server's wake, request (client read -> upstream write) and
#                                   response (upstream read -> client write) phases, medians
#                                   (benches/tools/cold_phases.py). Needs root and tracefs.
#                                   COLD_ROUTES="v1 api/v1" asks the builds on those routes, in
#                                   order (default: v1 for every build)
#
# PROXY_BIN=path runs another build (for an A/B); SERVER_CPU/LOAD_CPU pin as in load.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

WHAT=${1:-}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-target/profile/$(date +%Y%m%d-%H%M%S)-$WHAT}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

cargo build --locked --release --bin envelope-proxy --example bench-tool >&2
PROXY_BIN=${PROXY_BIN:-target/release/envelope-proxy}
TOOL=target/release/examples/bench-tool
# shellcheck source=tools/servers.sh
source benches/tools/servers.sh
trap cleanup EXIT
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# oha_count URL [oha args...] -> the number of responses
oha_count() {
  local url=$1; shift
  taskset -c "$LOAD_CPU" oha --no-tui --output-format json --worker-threads 1 -m POST \
    -T application/json -d "$BENCH_BODY" "$@" "$url" |
    python3 -c 'import json, sys; print(sum(json.load(sys.stdin)["statusCodeDistribution"].values()))'
}

need_perf() { perf stat -e instructions true >/dev/null 2>&1 || { echo "profile.sh: perf does not run here" >&2; exit 1; }; }

start_upstream "$LOAD_CPU"
case "$WHAT" in
cpu)
  what=${2:-1024} rounds=${3:-1}
  [[ $what =~ ^[0-9]+$ ]] && what=json/$what
  start_proxy p1 1 "$SERVER_CPU"
  command -v nginx >/dev/null && start_nginx n1 1 "$SERVER_CPU"
  command -v haproxy >/dev/null && start_haproxy h1 1 "$SERVER_CPU"
  start_floor f1 "$SERVER_CPU"
  targets=("wrap $PID_p1 http://127.0.0.1:$PORT_p1/api/v1/bench/$what"
    "pass $PID_p1 http://127.0.0.1:$PORT_p1/v1/bench/$what")
  command -v nginx >/dev/null && targets+=("nginx $(nginx_workers n1) http://127.0.0.1:$PORT_n1/v1/bench/$what")
  command -v haproxy >/dev/null && targets+=("haproxy $PID_h1 http://127.0.0.1:$PORT_h1/v1/bench/$what")
  targets+=("floor $PID_f1 http://127.0.0.1:$PORT_f1/v1/bench/$what")
  for round in $(seq 1 "$rounds"); do
    for target in "${targets[@]}"; do
      read -r name pid url <<<"$target"
      before=$(cpu_ns "$pid")
      n=$(oha_count "$url" -c 32 -z 5s)
      after=$(cpu_ns "$pid")
      python3 -c "print(f'cpu {\"$name\":7} round $round requests=$n busy={($after - $before) / 5e7:.0f}% cpu_us_per_request={($after - $before) / 1e3 / $n:.2f}')"
    done
  done | tee "$OUT/cpu.txt"
  # Each target's median over the rounds, and ours against the best peer of the same rounds.
  python3 - "$OUT/cpu.txt" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, us = line.split()[1], float(re.search(r"cpu_us_per_request=([0-9.]+)", line).group(1))
    runs.setdefault(name, []).append(us)
median = {name: statistics.median(values) for name, values in runs.items()}
peers = [median[p] for p in ("nginx", "haproxy") if p in median]
for name, values in runs.items():
    gap = f", {median[name] / min(peers):.2f}x the best peer" if peers and name in ("wrap", "pass", "floor") else ""
    print(f"median {name:7} {median[name]:.2f} us per request over {len(values)} rounds{gap}")
PY
  ;;
syscalls)
  need_perf
  start_proxy p1 1 "$SERVER_CPU"
  command -v nginx >/dev/null && start_nginx n1 1 "$SERVER_CPU"
  command -v haproxy >/dev/null && start_haproxy h1 1 "$SERVER_CPU"
  # haproxy writes with sendto where nginx and envelope-proxy use writev.
  events=syscalls:sys_enter_recvfrom,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_getsockopt
  count() { awk '$1 ~ /^[0-9,]+$/ {gsub(",", "", $1); printf " %s=%.2f", $2, $1 / '"$2"'}' "$1" | sed 's/syscalls:sys_enter_//g'; }
  targets=("ours $PID_p1 http://127.0.0.1:$PORT_p1/api/v1/bench/json/1024")
  command -v nginx >/dev/null && targets+=("nginx $(nginx_workers n1) http://127.0.0.1:$PORT_n1/v1/bench/json/1024")
  command -v haproxy >/dev/null && targets+=("haproxy $PID_h1 http://127.0.0.1:$PORT_h1/v1/bench/json/1024")
  for target in "${targets[@]}"; do
    read -r name pid url <<<"$target"
    perf stat -e "$events" -p "$pid" -o "$OUT/$name.perf" -- sleep 5 &
    n=$(oha_count "$url" -q 1000 -z 5s -c 4 --latency-correction)
    wait $!
    echo "syscalls per request, $name ($n requests):$(count "$OUT/$name.perf" "$n")"
  done
  perf stat -e "$events" -p "$PID_p1" -o "$OUT/events.perf" -- sleep 6 &
  taskset -c "$LOAD_CPU" "$TOOL" sse-cpu --streams 400 --concurrency 50 \
    --url "http://127.0.0.1:$PORT_p1/v1/bench/sse/200/300/1" --pids "$PID_p1" >/dev/null
  wait $!
  echo "syscalls per event, pass-through (400 streams x 201 events):$(count "$OUT/events.perf" 80400)"
  ;;
rss)
  # RSS per open stream, each server fresh: first hyper's floors, then ours. The upstream
  # alone is hyper's HTTP/1.1 server holding a client's stream and nothing more (its task,
  # connection and event body); bench-tool floor is a hyper proxy that does nothing else
  # (HTTP/1.1 on both sides). Then envelope-proxy (2 workers) over HTTP/1.1 clients with an
  # HTTP/1.1 and an HTTP/2 upstream, and over HTTP/2 clients.
  n=${2:-2000}
  stream_url=v1/bench/sse/20/200/500
  # rss_row NAME PID URL [FLAG...]: opens N streams to URL and prints PID's RSS growth per stream
  rss_row() {
    local name=$1 pid=$2 url=$3 idle line peak
    shift 3
    sleep 0.3
    idle=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    line=$("$TOOL" streams --n "$n" --ramp 256 --pid "$pid" --timeout 60 "$@" --url "$url")
    peak=$(sed -n 's/.*rss_peak_kb=\([0-9]*\).*/\1/p' <<<"$line")
    echo "rss $name idle_kb=$idle ${line#streams } kb_per_stream=$(awk -v p="$peak" -v i="$idle" -v n="$n" 'BEGIN {printf "%.1f", (p - i) / n}')"
  }
  # The upstream first, while it is fresh: every later row streams through it too.
  rss_row hyper-server "$UP_PID" "$UP/$stream_url"
  start_floor rssfloor "$SERVER_CPU"
  rss_row hyper-proxy "$PID_rssfloor" "http://127.0.0.1:$PORT_rssfloor/$stream_url"
  kill "$PID_rssfloor"
  for run in h1 h1u2 h2; do
    flags=() proxy_flags=()
    [[ $run == h2 ]] && flags=(--http2 100)
    [[ $run == h1u2 ]] && proxy_flags=(--upstream-http2)
    start_proxy "rss$run" 2 "$SERVER_CPU,$LOAD_CPU" "${proxy_flags[@]}"
    pid_var="PID_rss$run" port_var="PORT_rss$run"
    rss_row "envelope-proxy-$run" "${!pid_var}" "http://127.0.0.1:${!port_var}/$stream_url" "${flags[@]}"
    kill "${!pid_var}"
  done
  ;;
faults)
  need_perf
  n=${2:-500}
  start_proxy f 2 "$SERVER_CPU,$LOAD_CPU"
  sleep 0.3
  perf record -q -e page-faults -c 1 --call-graph dwarf,8192 -p "$PID_f" -o "$OUT/faults.data" -- sleep 4 &
  sleep 0.5
  "$TOOL" streams --n "$n" --ramp 256 --pid "$PID_f" --timeout 60 \
    --url "http://127.0.0.1:$PORT_f/v1/bench/sse/20/200/500"
  wait $!
  perf report -i "$OUT/faults.data" --no-children --stdio --sort sym -G --percent-limit 2 \
    >"$OUT/faults.txt" 2>/dev/null
  grep -E '^ +[0-9.]+%|--[0-9.]+%--' "$OUT/faults.txt" | cut -c1-160 | sed -n '1,40p'
  echo "full report: $OUT/faults.txt"
  ;;
ab)
  usage="profile.sh ab A B [PATH] [N] [ROUNDS] [SHAPE]"
  a=${2:?$usage} b=${3:?$usage}
  path=${4:-/api/v1/bench/json/1024} n=${5:-10000} rounds=${6:-6} shape=${7:-bare}
  PROXY_BIN=$a start_proxy a 1 "$SERVER_CPU" --upstream-shape "$shape"
  PROXY_BIN=$b start_proxy b 1 "$SERVER_CPU" --upstream-shape "$shape"
  for build in a b; do # warm-up, not counted
    port=PORT_$build
    oha_count "http://127.0.0.1:${!port}$path" -c 16 -n 2000 >/dev/null
  done
  for round in $(seq 1 "$rounds"); do
    for build in a b; do
      port=PORT_$build pid=PID_$build
      before=$(cpu_ns "${!pid}")
      done_n=$(oha_count "http://127.0.0.1:${!port}$path" -c 16 -n "$n")
      after=$(cpu_ns "${!pid}")
      echo "$build $round $(((after - before) / done_n))"
    done
  done | tee "$OUT/ab.txt"
  python3 - "$OUT/ab.txt" "$a" "$b" <<'PY'
import statistics, sys
rounds = [line.split() for line in open(sys.argv[1])]
ns = {build: [int(r[2]) for r in rounds if r[0] == build] for build in ("a", "b")}
for build, path in (("a", sys.argv[2]), ("b", sys.argv[3])):
    print(f"{build} ({path}): median {statistics.median(ns[build]) / 1e3:.2f} us per request, rounds {' '.join(f'{x / 1e3:.1f}' for x in ns[build])}")
print(f"b lower than a in {sum(y < x for x, y in zip(ns['a'], ns['b']))} of {len(ns['a'])} rounds")
PY
  ;;
cold)
  tracing=/sys/kernel/tracing
  [[ -w $tracing/set_event ]] || { echo "profile.sh: cold needs root and tracefs ($tracing)" >&2; exit 1; }
  n=${2:-300}
  builds=("${@:3}")
  ((${#builds[@]})) || builds=("$PROXY_BIN")
  # The route each build is asked on, in order (default v1 for all): COLD_ROUTES="v1 api/v1"
  # with one build named twice compares passing through and wrapping on one build.
  read -r -a routes <<<"${COLD_ROUTES:-}"
  stream=bench/sse/5/300/2
  urls=("$UP/v1/$stream") names=(direct) servers=()
  for i in "${!builds[@]}"; do
    PROXY_BIN=${builds[$i]} start_proxy "c$i" 1 "$SERVER_CPU"
    pid=PID_c$i port=PORT_c$i
    urls+=("http://127.0.0.1:${!port}/${routes[$i]:-v1}/$stream") names+=("build$i")
    servers+=("build$i ${!pid}")
  done
  if command -v nginx >/dev/null; then
    start_nginx n1 1 "$SERVER_CPU"
    urls+=("http://127.0.0.1:$PORT_n1/v1/$stream") names+=(nginx)
    servers+=("nginx $(nginx_workers n1 | tr , ' ')")
  fi
  start_floor f1 "$SERVER_CPU"
  urls+=("http://127.0.0.1:$PORT_f1/v1/$stream") names+=(floor)
  servers+=("floor $PID_f1")
  : >"$OUT/threads"
  tids=()
  for server in "${servers[@]}"; do
    read -r name pids <<<"$server"
    line=$name
    for pid in $pids; do
      for task in /proc/"$pid"/task/*; do line+=" ${task##*/}" tids+=("${task##*/}"); done
    done
    echo "$line" >>"$OUT/threads"
  done
  # Whatever happens, the trace is emptied and the tracer left as it was found.
  # buffer_size_kb reads "7 (expanded: 1408)" until the buffer is first sized: its number only.
  saved=("$(cat $tracing/tracing_on)" "$(cut -d' ' -f1 $tracing/buffer_size_kb)"
    "$(sed -n 's/.*\[\(.*\)\].*/\1/p' $tracing/trace_clock)")
  stop_tracing() { echo 0 >$tracing/tracing_on; : >$tracing/set_event; : >$tracing/set_event_pid; }
  restore_tracing() {
    stop_tracing
    : >$tracing/trace
    echo "${saved[1]}" >$tracing/buffer_size_kb
    echo "${saved[2]}" >$tracing/trace_clock
    echo "${saved[0]}" >$tracing/tracing_on
  }
  # Under `set -e` a failed restore would end the trap before `cleanup`: the servers would
  # outlive the script.
  trap 'restore_tracing || true; cleanup' EXIT
  stop_tracing
  : >$tracing/trace
  echo 8192 >$tracing/buffer_size_kb
  echo mono >$tracing/trace_clock
  echo "${tids[*]}" >$tracing/set_event_pid
  for event in sys_enter_recvfrom sys_exit_recvfrom sys_enter_writev sys_exit_epoll_wait; do
    echo "syscalls:$event" >>$tracing/set_event
  done
  echo 1 >$tracing/tracing_on
  taskset -c "$LOAD_CPU" "$TOOL" ttfe --n "$n" "${urls[@]}" | tee "$OUT/ttfe.txt" >&2
  echo 0 >$tracing/tracing_on
  cp $tracing/trace "$OUT/trace.txt"
  restore_tracing
  for i in "${!names[@]}"; do echo "${names[$i]}: $(sed -n "$((i + 1))s/.*p50_us=\([0-9.]*\).*/\1/p" "$OUT/ttfe.txt") us to the first event (p50)"; done
  python3 benches/tools/cold_phases.py "$OUT/trace.txt" "$OUT/threads"
  ;;
*)
  sed -n '2,38p' "$0" >&2
  exit 2
  ;;
esac
