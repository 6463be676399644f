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

# start_proxy NAME WORKERS CPUS -> sets PORT_<NAME>, PID_<NAME>
start_proxy() {
  local name=$1 workers=$2 cpus=$3 port
  port=$("$TOOL" free-port)
  taskset -c "$cpus" "$PROXY_BIN" --listen "127.0.0.1:$port" --upstream "$UP/v1" \
    --worker-threads "$workers" --stream-envelope wrap --log-level warn \
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
  local name=$1 workers=$2 cpus=$3 port dir
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

# cpu_ns PID -> CPU time used so far by all threads of PID (schedstat), in ns
cpu_ns() { awk '{s += $1} END {print s}' /proc/"$1"/task/*/schedstat; }

BENCH_BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}]}'
