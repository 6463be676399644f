#!/usr/bin/env bash
# End-to-end load benchmark: envelope-proxy vs nginx and haproxy (plain pass-through) vs
# straight to the upstream, side by side in one run, with the on-CPU time each server spends
# per response. See BENCHMARKS.md for the method.
#
#   benches/load.sh            full run (~18 minutes, estimated from the steps)
#   benches/load.sh --smoke    seconds-long run of every step (CI): debug build, tiny counts
#
# Where oha is not on PATH, both install oha $OHA_VERSION with cargo (Debian does not package
# it), with the system's TLS, which needs libssl-dev and pkg-config (rustls's aws-lc would make
# the build longer, and oha does not build without TLS): the full run a release build, globally;
# the smoke a debug build in target/tools (about half the CPU time: ~4 CPU-minutes, so ~2.5
# minutes on 2 cores; a smoke checks that every step works, not timings). nginx and haproxy
# are used where installed (apt-get install nginx haproxy); their configs are written to $OUT.
# Both exit non-zero when any request or stream of any step failed (report.py says which).
#
# Results go to $OUT (default target/load-results/<time>): raw oha JSON, results.jsonl, the
# table (summary.md, also printed) and latency.svg.
#
# CPU pinning (2-core machine): the server under test (envelope-proxy, nginx or haproxy, one
# worker each) runs alone on CPU $SERVER_CPU; the load generator (oha, bench-tool clients) and
# the upstream share CPU $LOAD_CPU. The 2-worker runs give the server both CPUs (it then shares
# one with the load side).
# Only 127.0.0.1 is used; every load step is bounded in requests and seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-target/load-results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"

if ((SMOKE)); then
  PROFILE_DIR=target/debug
  BUILD_FLAGS=()
  RATE_DURATION=1s; SAT_DURATION=1s; ROUNDS=1; TTFE_N=20; CPU_STREAMS=20; CONNS=16
  MANY_STREAMS=200; RATE=200; MANY_SHAPE=3/200/100
else
  PROFILE_DIR=target/release
  BUILD_FLAGS=(--release)
  RATE_DURATION=${RATE_DURATION:-10s}; SAT_DURATION=${SAT_DURATION:-8s}; ROUNDS=${ROUNDS:-3}
  TTFE_N=${TTFE_N:-300}; CPU_STREAMS=${CPU_STREAMS:-400}; MANY_STREAMS=${MANY_STREAMS:-10000}
  CONNS=${CONNS:-16}
  RATE=${RATE:-1000}; MANY_SHAPE=20/200/500
fi

log() { printf '== %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------------------
OHA_VERSION=1.16.0
OHA_INSTALL=(cargo install oha --locked --version "$OHA_VERSION" --no-default-features --features native-tls)
if ! command -v oha >/dev/null 2>&1; then
  if ((SMOKE)); then
    if [[ ! -x target/tools/bin/oha ]]; then
      log "installing a debug build of oha $OHA_VERSION in target/tools (cargo install, a few minutes)"
      "${OHA_INSTALL[@]}" --debug --root target/tools
    fi
    PATH=$PWD/target/tools/bin:$PATH
  else
    log "installing oha $OHA_VERSION (cargo install, a few minutes)"
    "${OHA_INSTALL[@]}"
  fi
fi
HAVE_NGINX=0
command -v nginx >/dev/null 2>&1 && HAVE_NGINX=1
((HAVE_NGINX)) || log "nginx not installed: nginx columns are skipped (apt-get install nginx)"
HAVE_HAPROXY=0
command -v haproxy >/dev/null 2>&1 && HAVE_HAPROXY=1
((HAVE_HAPROXY)) || log "haproxy not installed: haproxy columns are skipped (apt-get install haproxy)"

log "building envelope-proxy and bench-tool (${BUILD_FLAGS[*]:-debug})"
cargo build --locked "${BUILD_FLAGS[@]}" --bin envelope-proxy --example bench-tool >&2
PROXY_BIN=$PROFILE_DIR/envelope-proxy
TOOL=$PROFILE_DIR/examples/bench-tool

ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# shellcheck source=tools/servers.sh
source benches/tools/servers.sh
trap cleanup EXIT

# Records one JSON object per line: key=value pairs (numbers stay numbers).
record() {
  local line="{" first=1 kv k v
  for kv in "$@"; do
    k=${kv%%=*}; v=${kv#*=}
    [[ $v =~ ^-?[0-9]+(\.[0-9]+)?$ ]] || v="\"$v\""
    ((first)) || line+=","
    line+="\"$k\":$v"; first=0
  done
  echo "$line}" >>"$RESULTS"
}

# --- servers -----------------------------------------------------------------------------
log "machine: $(nproc) CPUs, $(uname -r); load before start: $(cut -d' ' -f1-3 /proc/loadavg)"
record kind=machine cpus="$(nproc)" load="$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' '/')" \
  cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
record kind=config conns="$CONNS" rounds="$ROUNDS" sat_duration="$SAT_DURATION" \
  nginx="$( ((HAVE_NGINX)) && nginx -v 2>&1 | sed 's/.*nginx\///' || echo none)" \
  haproxy="$( ((HAVE_HAPROXY)) && haproxy -v | sed -n '1s/^HAProxy version \([^ ]*\).*/\1/p' || echo none)"

start_upstream "$LOAD_CPU"

idle_rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

start_proxy p1 1 "$SERVER_CPU"
start_proxy p2 2 "$SERVER_CPU,$LOAD_CPU"
# The same proxy in front of an envelope upstream (the upstream's …/envsse/… paths): its /v1
# clients get every event unwrapped.
start_proxy pu 1 "$SERVER_CPU" --upstream-shape envelope
sleep 0.2
IDLE_RSS=$(idle_rss "$PID_p1")
record kind=idle rss_kb="$IDLE_RSS"
if ((HAVE_NGINX)); then
  start_nginx n1 1 "$SERVER_CPU"
  start_nginx n2 2 "$SERVER_CPU,$LOAD_CPU"
  CPU_n1=$(server_pids "$PID_n1") CPU_n2=$(server_pids "$PID_n2")
fi
if ((HAVE_HAPROXY)); then
  start_haproxy hp1 1 "$SERVER_CPU"
  start_haproxy hp2 2 "$SERVER_CPU,$LOAD_CPU"
fi

# oha_run LABEL URL PIDS [oha args...] -> appends one result line; raw JSON in $OUT/oha.
# PIDS (comma-separated, or empty) are the server under test's processes: their on-CPU time
# (utime + stime from /proc) over the run, divided by the responses, is its CPU per request.
mkdir -p "$OUT/oha"
oha_run() {
  local label=$1 url=$2 pids=$3 before=0 after=0
  shift 3
  local file="$OUT/oha/$label.json"
  [[ -n $pids ]] && before=$(cpu_ticks "$pids")
  taskset -c "$LOAD_CPU" oha --no-tui --output-format json --worker-threads 1 \
    -m POST -T application/json -d "$BENCH_BODY" "$@" "$url" >"$file" 2>"$OUT/oha/$label.err" || {
    echo "oha failed for $label: $(cat "$OUT/oha/$label.err")" >&2
    return 1
  }
  [[ -n $pids ]] && after=$(cpu_ticks "$pids")
  python3 - "$file" "$label" "${pids:+$((after - before))}" "$CLK_TCK" >>"$RESULTS" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
s, p = d["summary"], d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
ok = sum(v for k, v in codes.items() if k.startswith("2"))
# -z ends a run by aborting the requests still in flight; those are not failures.
errors = {k: v for k, v in d.get("errorDistribution", {}).items() if k != "aborted due to deadline"}
bad = sum(v for k, v in codes.items() if not k.startswith("2")) + sum(errors.values())
label = sys.argv[2]
row = {"kind": "oha", "label": label, "rps": s["requestsPerSec"],
  "p50_us": p["p50"] * 1e6, "p90_us": p["p90"] * 1e6, "p99_us": p["p99"] * 1e6,
  "p999_us": p["p99.9"] * 1e6, "ok": ok, "bad": bad,
  "pcts": {k: v * 1e6 for k, v in p.items() if v is not None}}
if sys.argv[3]:
    cpu_us = int(sys.argv[3]) * 1e6 / int(sys.argv[4])
    row["cpu_us"] = cpu_us
    row["cpu_us_per_req"] = cpu_us / ok if ok else None
    # How busy the server was over the run (100 = one CPU all the time).
    row["busy_pct"] = cpu_us / 1e4 / s["total"] if s.get("total") else None
print(json.dumps(row))
PY
}

# --- 1. latency at a fixed moderate rate (1 KiB, wrap) -----------------------------------
URL_DIRECT="$UP/v1/bench/json/1024"
URL_WRAP="http://127.0.0.1:$PORT_p1/api/v1/bench/json/1024"
URL_PASS="http://127.0.0.1:$PORT_p1/v1/bench/json/1024"
for round in $(seq 1 "$ROUNDS"); do
  log "fixed rate $RATE req/s, 1 KiB, round $round/$ROUNDS"
  oha_run "rate-direct-r$round" "$URL_DIRECT" "$UP_PID" -q "$RATE" -z "$RATE_DURATION" -c 4 --latency-correction
  oha_run "rate-wrap-r$round" "$URL_WRAP" "$PID_p1" -q "$RATE" -z "$RATE_DURATION" -c 4 --latency-correction
  oha_run "rate-pass-r$round" "$URL_PASS" "$PID_p1" -q "$RATE" -z "$RATE_DURATION" -c 4 --latency-correction
  if ((HAVE_NGINX)); then
    oha_run "rate-nginx-r$round" "http://127.0.0.1:$PORT_n1/v1/bench/json/1024" "$CPU_n1" \
      -q "$RATE" -z "$RATE_DURATION" -c 4 --latency-correction
  fi
done

# --- 1b. the same with the server's CPU kept from idling ---------------------------------
# At 1,000 req/s the server's CPU sleeps between requests, and waking an idle vCPU costs this
# VM tens of microseconds per hop, for nginx as for us. A SCHED_IDLE spinner on that CPU
# (it yields at once to any real work) keeps it awake, which separates wake-up cost from the
# proxy's own work. Reported as its own rows; the targets are judged on the plain runs.
SPIN_PID=""
start_spinner() {
  taskset -c "$SERVER_CPU" chrt -i 0 bash -c 'end=$((SECONDS + 600)); while ((SECONDS < end)); do :; done' &
  SPIN_PID=$!
  PIDS+=("$SPIN_PID")
}
stop_spinner() { kill "$SPIN_PID" 2>/dev/null || true; wait "$SPIN_PID" 2>/dev/null || true; }
start_spinner
for round in $(seq 1 "$ROUNDS"); do
  log "fixed rate $RATE req/s, 1 KiB, server CPU kept awake, round $round/$ROUNDS"
  oha_run "spin-direct-r$round" "$URL_DIRECT" "$UP_PID" -q "$RATE" -z "$RATE_DURATION" -c 4 --latency-correction
  oha_run "spin-wrap-r$round" "$URL_WRAP" "$PID_p1" -q "$RATE" -z "$RATE_DURATION" -c 4 --latency-correction
  if ((HAVE_NGINX)); then
    oha_run "spin-nginx-r$round" "http://127.0.0.1:$PORT_n1/v1/bench/json/1024" "$CPU_n1" \
      -q "$RATE" -z "$RATE_DURATION" -c 4 --latency-correction
  fi
done
stop_spinner

# --- 2. saturation, CPU per request: 1 KiB and 64 KiB JSON, a 200-event stream ------------
# $CONNS connections as fast as they go. Every server's on-CPU time per response is the
# comparison (req/s on one shared machine also measures the load side); direct's is the
# upstream's own. Each workload runs, back to back in each round: direct; envelope-proxy
# translating (wrap for /api/v1) and pass-through (/v1), 1 worker; nginx and haproxy, 1 worker;
# the stream also unwrapped from an envelope upstream; the JSON sizes also with 2 workers each.
# The stream is 200 events of 300 B sent at once (about 61 KB with [DONE]).
sat_run() { # WORKLOAD TARGET URL PIDS
  oha_run "sat-$1-$2-r$round" "$3" "$4" -c "$CONNS" -z "$SAT_DURATION"
}
for round in $(seq 1 "$ROUNDS"); do
  for wl in 1024 65536 sse; do
    path=bench/json/$wl
    [[ $wl == sse ]] && path=bench/sse/200/300/0
    log "saturation, $CONNS connections, $([[ $wl == sse ]] && echo 200-event stream || echo "$wl B JSON"), round $round/$ROUNDS"
    sat_run "$wl" direct "$UP/v1/$path" "$UP_PID"
    sat_run "$wl" wrap1 "http://127.0.0.1:$PORT_p1/api/v1/$path" "$PID_p1"
    sat_run "$wl" pass1 "http://127.0.0.1:$PORT_p1/v1/$path" "$PID_p1"
    [[ $wl == sse ]] && sat_run "$wl" unwrap1 "http://127.0.0.1:$PORT_pu/v1/bench/envsse/200/300/0" "$PID_pu"
    ((HAVE_NGINX)) && sat_run "$wl" nginx1 "http://127.0.0.1:$PORT_n1/v1/$path" "$CPU_n1"
    ((HAVE_HAPROXY)) && sat_run "$wl" haproxy1 "http://127.0.0.1:$PORT_hp1/v1/$path" "$PID_hp1"
    [[ $wl == sse ]] && continue
    sat_run "$wl" wrap2 "http://127.0.0.1:$PORT_p2/api/v1/$path" "$PID_p2"
    ((HAVE_NGINX)) && sat_run "$wl" nginx2 "http://127.0.0.1:$PORT_n2/v1/$path" "$CPU_n2"
    ((HAVE_HAPROXY)) && sat_run "$wl" haproxy2 "http://127.0.0.1:$PORT_hp2/v1/$path" "$PID_hp2"
  done
done
# Idle again after every run above: what a busy proxy keeps (a tracker that held each finished
# response until its next sample once kept 300 MB after a 1 KiB saturation run).
record kind=idle_after_load workers=1 rss_kb="$(idle_rss "$PID_p1")"
record kind=idle_after_load workers=2 rss_kb="$(idle_rss "$PID_p2")"

# --- 3. streams: time to first event, CPU per event ---------------------------------------
log "time to first event (dripping stream: 5 events 2 ms apart), $TTFE_N each, interleaved"
TTFE_URLS=("$UP/v1/bench/sse/5/300/2"
  "http://127.0.0.1:$PORT_p1/v1/bench/sse/5/300/2"
  "http://127.0.0.1:$PORT_p1/api/v1/bench/sse/5/300/2")
names=(direct pass wrap)
if ((HAVE_NGINX)); then
  TTFE_URLS+=("http://127.0.0.1:$PORT_n1/v1/bench/sse/5/300/2")
  names+=(nginx)
fi
if ((HAVE_HAPROXY)); then
  TTFE_URLS+=("http://127.0.0.1:$PORT_hp1/v1/bench/sse/5/300/2")
  names+=(haproxy)
fi
taskset -c "$LOAD_CPU" "$TOOL" ttfe --n "$TTFE_N" "${TTFE_URLS[@]}" | tee "$OUT/ttfe.txt" >&2
i=0
while read -r _ url n p50 p99 failed; do
  record kind=ttfe target="${names[$i]}" "${p50/_us/}" "${p99/_us/}" "$failed"
  i=$((i + 1))
done <"$OUT/ttfe.txt"
log "time to first event again, server CPU kept awake (see 1b)"
start_spinner
taskset -c "$LOAD_CPU" "$TOOL" ttfe --n "$TTFE_N" "${TTFE_URLS[@]}" | tee "$OUT/ttfe-spin.txt" >&2
stop_spinner
i=0
while read -r _ url n p50 p99 failed; do
  record kind=ttfe target="spin-${names[$i]}" "${p50/_us/}" "${p99/_us/}" "$failed"
  i=$((i + 1))
done <"$OUT/ttfe-spin.txt"

log "CPU per event: $CPU_STREAMS streams of 200 vs of 1 event (1 ms apart), 50 at a time"
CPU_MODES=(pass wrap)
((HAVE_NGINX)) && CPU_MODES+=(nginx)
((HAVE_HAPROXY)) && CPU_MODES+=(haproxy)
for mode in "${CPU_MODES[@]}"; do
  prefix=/v1 port=$PORT_p1 pid=$PID_p1
  [[ $mode == wrap ]] && prefix=/api/v1
  # nginx's CPU is its worker's (the master only supervises).
  [[ $mode == nginx ]] && port=$PORT_n1 pid=$(nginx_workers n1)
  [[ $mode == haproxy ]] && port=$PORT_hp1 pid=$PID_hp1
  for events in 1 200; do
    line=$(taskset -c "$LOAD_CPU" "$TOOL" sse-cpu --streams "$CPU_STREAMS" --concurrency 50 \
      --url "http://127.0.0.1:$port$prefix/bench/sse/$events/300/1" --pids "$pid")
    echo "$mode events=$events $line" >&2
    cpu=$(sed -n 's/.*cpu_us_per_stream=\([0-9.]*\).*/\1/p' <<<"$line")
    okn=$(sed -n 's/.*streams_ok=\([0-9]*\).*/\1/p' <<<"$line")
    record kind=ssecpu mode="$mode" events="$events" cpu_us_per_stream="$cpu" ok="$okn" \
      streams="$CPU_STREAMS"
  done
done

# --- 4. many open streams, memory, start, size ---------------------------------------------
# Over HTTP/1.1 each stream costs the proxy two file descriptors (client and upstream
# connections), so the HTTP/1.1 run is capped by the open-file limit (a sandbox may forbid
# raising it); the HTTP/2 run multiplexes the clients' streams over 100 connections, so the
# proxy holds $MANY_STREAMS upstream connections and 100 client ones. The runs with
# --upstream-http2 (h1u2, h2u2: the same clients) multiplex the upstream side too, 100 streams
# per upstream connection, so HTTP/1.1 clients cost one descriptor per stream.
FD_LIMIT=$(ulimit -n)
H1_STREAMS=$(( (FD_LIMIT - 100) / 2 < MANY_STREAMS ? (FD_LIMIT - 100) / 2 : MANY_STREAMS ))
H1U2_STREAMS=$(( FD_LIMIT - 200 < MANY_STREAMS ? FD_LIMIT - 200 : MANY_STREAMS ))
for run in h1 h2 h1u2 h2u2; do
  proto=${run%u2} n=$MANY_STREAMS flags=() proxy_flags=() upstream=()
  [[ $run == h1 ]] && n=$H1_STREAMS
  [[ $run == h1u2 ]] && n=$H1U2_STREAMS
  [[ $proto == h2 ]] && flags=(--http2 100)
  [[ $run == *u2 ]] && proxy_flags=(--upstream-http2) upstream=(upstream=h2c)
  log "$n concurrent open streams over $proto${proxy_flags[*]:+ with ${proxy_flags[*]}} (events/bytes/gap ms: $MANY_SHAPE), fresh proxy, fd limit $FD_LIMIT"
  start_proxy "many$run" 2 "$SERVER_CPU,$LOAD_CPU" "${proxy_flags[@]}"
  sleep 0.2
  pid_var="PID_many$run" port_var="PORT_many$run"
  many_idle=$(idle_rss "${!pid_var}")
  line=$("$TOOL" streams --n "$n" --ramp 256 --pid "${!pid_var}" --timeout 120 "${flags[@]}" \
    --url "http://127.0.0.1:${!port_var}/v1/bench/sse/$MANY_SHAPE")
  echo "$line" >&2
  record kind=streams proto="$proto" "${upstream[@]}" idle_rss_kb="$many_idle" $(sed 's/^streams //' <<<"$line")
  kill "${!pid_var}" 2>/dev/null || true
done
# The same HTTP/1.1 streams through a fresh nginx (2 workers, proxy_buffering off): the
# baseline for the memory target. RSS is its workers' (the master only supervises).
if ((HAVE_NGINX)); then
  log "$H1_STREAMS concurrent open streams through nginx (2 workers), fresh instance"
  start_nginx manyn 2 "$SERVER_CPU,$LOAD_CPU"
  sleep 0.2
  workers=$(nginx_workers manyn)
  line=$("$TOOL" streams --n "$H1_STREAMS" --ramp 256 --pid "$workers" --timeout 120 \
    --url "http://127.0.0.1:$PORT_manyn/v1/bench/sse/$MANY_SHAPE")
  echo "nginx $line" >&2
  record kind=streams server=nginx proto=h1 $(sed 's/^streams //' <<<"$line")
  kill "$PID_manyn" 2>/dev/null || true
fi
# And through a fresh haproxy (2 threads): the second baseline. RSS is its one process's.
if ((HAVE_HAPROXY)); then
  log "$H1_STREAMS concurrent open streams through haproxy (2 threads), fresh instance"
  start_haproxy manyh 2 "$SERVER_CPU,$LOAD_CPU"
  sleep 0.2
  line=$("$TOOL" streams --n "$H1_STREAMS" --ramp 256 --pid "$PID_manyh" --timeout 120 \
    --url "http://127.0.0.1:$PORT_manyh/v1/bench/sse/$MANY_SHAPE")
  echo "haproxy $line" >&2
  record kind=streams server=haproxy proto=h1 $(sed 's/^streams //' <<<"$line")
  kill "$PID_manyh" 2>/dev/null || true
fi

log "start to ready"
line=$("$TOOL" ready --bin "$PROXY_BIN" --n "$( ((SMOKE)) && echo 3 || echo 30)")
echo "$line" >&2
record kind=ready $(sed 's/^ready //' <<<"$line")

stripped="$OUT/envelope-proxy.stripped"
strip -o "$stripped" "$PROXY_BIN"
record kind=binary bytes="$(stat -c %s "$stripped")" unstripped="$(stat -c %s "$PROXY_BIN")"
record kind=machine_after load="$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' '/')"

# --- report --------------------------------------------------------------------------------
# Exits non-zero (after the tables) when any request or stream of any step failed.
status=0
SMOKE=$SMOKE python3 benches/tools/report.py "$RESULTS" "$OUT/latency.svg" | tee "$OUT/summary.md" || status=$?
log "results in $OUT"
if ((status)); then
  log "FAILED: some requests or streams failed (the load: FAILED lines above say which)"
fi
exit "$status"
