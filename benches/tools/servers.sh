# Starting the servers under test, for benches/load.sh and benches/profile.sh (sourced).
#
# The caller sets PROXY_BIN, TOOL (bench-tool), OUT (a folder for logs) and UP (the upstream's
# base URL, set by start_upstream). Every process started here is in PIDS and is killed by
# `cleanup`, which the caller traps on EXIT. Only 127.0.0.1 is used.

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

wait_port() {
  for _ in $(seq 1 200); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# start_upstream CPUS -> sets UP_PORT, UP, UP_PID
start_upstream() {
  UP_PORT=$("$TOOL" free-port)
  taskset -c "$1" "$TOOL" upstream --listen "127.0.0.1:$UP_PORT" >"$OUT/upstream.log" 2>&1 &
  UP_PID=$!
  PIDS+=("$UP_PID")
  UP="http://127.0.0.1:$UP_PORT"
  wait_port "$UP_PORT"
}

# start_proxy NAME WORKERS CPUS [FLAG...] -> sets PORT_<NAME>, PID_<NAME>
# Extra flags (e.g. --upstream-shape envelope) go to envelope-proxy as they are.
start_proxy() {
  local name=$1 workers=$2 cpus=$3 port
  shift 3
  port=$("$TOOL" free-port)
  taskset -c "$cpus" "$PROXY_BIN" --listen "127.0.0.1:$port" --upstream "$UP/v1" \
    --worker-threads "$workers" --stream-envelope wrap --log-level warn "$@" \
    >"$OUT/proxy-$name.log" 2>&1 &
  PIDS+=($!)
  printf -v "PID_$name" '%s' "$!"
  printf -v "PORT_$name" '%s' "$port"
  wait_port "$port"
}

# start_nginx NAME WORKERS CPUS -> sets PORT_<NAME>, PID_<NAME> (the master)
# A plain pass-through reverse proxy to the same upstream: keep-alive both ways, no access log,
# no buffering for the SSE location.
start_nginx() {
  local name=$1 workers=$2 cpus=$3 port dir master
  port=$("$TOOL" free-port)
  dir="$OUT/nginx-$name"
  mkdir -p "$dir/logs"
  cat >"$dir/nginx.conf" <<EOF
worker_processes $workers;
daemon off;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
worker_rlimit_nofile 100000;
events { worker_connections 30000; multi_accept on; }
http {
  access_log off;
  keepalive_requests 100000;
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  upstream up { server 127.0.0.1:$UP_PORT; keepalive 256; keepalive_requests 100000; }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
    # Event streams must not be buffered (what X-Accel-Buffering: no does per response).
    location /v1/bench/sse/ {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
EOF
  taskset -c "$cpus" nginx -p "$dir" -c "$dir/nginx.conf" >"$dir/logs/stdout.log" 2>&1 &
  master=$!
  PIDS+=("$master")
  printf -v "PID_$name" '%s' "$master"
  printf -v "PORT_$name" '%s' "$port"
  wait_port "$port" || { cat "$dir/logs/stdout.log" "$dir/logs/error.log" >&2 2>/dev/null; return 1; }
  # The workers are forked after the master listens: wait for them (CPU and RSS are theirs).
  for _ in $(seq 1 100); do
    (($(pgrep -c -P "$master" || true) >= workers)) && break
    sleep 0.05
  done
}

# start_haproxy NAME THREADS CPUS -> sets PORT_<NAME>, PID_<NAME> (one process, no master)
# The second baseline: a plain pass-through reverse proxy to the same upstream, set up for
# latency: `option http-no-delay` (no MSG_MORE: what it has is sent at once), keep-alive both
# ways with idle upstream connections reused by any request (`http-reuse always`, like nginx's
# keepalive pool), no logging, default buffers (tune.bufsize 16 KiB). haproxy does not buffer
# responses, so event streams flow as they arrive. maxconn follows the open-file limit (each
# proxied connection holds two descriptors), at most 30,000 like nginx's worker_connections.
start_haproxy() {
  local name=$1 threads=$2 cpus=$3 port dir maxconn
  port=$("$TOOL" free-port)
  dir="$OUT/haproxy-$name"
  mkdir -p "$dir"
  maxconn=$((($(ulimit -n) - 100) / 2))
  ((maxconn > 30000)) && maxconn=30000
  cat >"$dir/haproxy.cfg" <<EOF
global
  nbthread $threads
  maxconn $maxconn
  pidfile $dir/haproxy.pid
defaults
  mode http
  option http-no-delay
  http-reuse always
  maxconn $maxconn
  timeout connect 5s
  timeout http-request 10s
  timeout http-keep-alive 120s
  timeout client 120s
  timeout server 120s
frontend bench
  bind 127.0.0.1:$port
  default_backend up
backend up
  server up 127.0.0.1:$UP_PORT
EOF
  # -db: in the foreground and without a master process, so PID_<NAME> does the work.
  taskset -c "$cpus" haproxy -db -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 &
  PIDS+=($!)
  printf -v "PID_$name" '%s' "$!"
  printf -v "PORT_$name" '%s' "$port"
  wait_port "$port" || { cat "$dir/haproxy.log" >&2; return 1; }
}

# start_floor NAME CPUS -> sets PORT_<NAME>, PID_<NAME>
# hyper's floor: bench-tool's minimal pass-through proxy on hyper (one thread), the cost of
# hyper's HTTP/1.1 server and client alone, beside the same upstream.
start_floor() {
  local name=$1 cpus=$2 port
  port=$("$TOOL" free-port)
  taskset -c "$cpus" "$TOOL" floor --listen "127.0.0.1:$port" --upstream "127.0.0.1:$UP_PORT" \
    >"$OUT/floor-$name.log" 2>&1 &
  PIDS+=($!)
  printf -v "PID_$name" '%s' "$!"
  printf -v "PORT_$name" '%s' "$port"
  wait_port "$port"
}

# nginx_workers NAME -> the worker pids of that nginx, comma-separated
nginx_workers() {
  local master_var="PID_$1"
  pgrep -d, -P "${!master_var}"
}

# server_pids PID -> PID and its children, comma-separated: every process of a server (nginx's
# master and workers; envelope-proxy and haproxy are one process each)
server_pids() {
  local children
  children=$(pgrep -d, -P "$1" || true)
  echo "$1${children:+,$children}"
}

# cpu_ticks PID[,PID...] -> on-CPU time so far, utime + stime in clock ticks (CLK_TCK a
# second), summed over those processes; /proc/PID/stat counts all of a process's threads, the
# ended ones too
cpu_ticks() {
  local pid total=0 t
  for pid in ${1//,/ }; do
    # After "(comm) ": state is field 1, utime field 12, stime field 13.
    t=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12 + $13}')
    total=$((total + ${t:-0}))
  done
  echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# cpu_ns PID -> CPU time used so far by all threads of PID (schedstat), in ns. Printed with
# %.0f: Debian's mawk prints a sum above 2^31 as 2.27627e+09 with print, and clamps it with %d
cpu_ns() { awk '{s += $1} END {printf "%.0f\n", s}' /proc/"$1"/task/*/schedstat; }

BENCH_BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}]}'
