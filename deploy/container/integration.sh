#!/usr/bin/env bash
# The OCI image under a real container runtime (issue 14, parts 3 and 4.10): podman runs
# localhost/envelope-proxy:<version> read-only as its numeric user; it answers /healthz and a
# translated request, reaching its upstream by a DNS name over verified TLS.
#
#   bash deploy/container/integration.sh [IMAGE]     # default: build it with build.sh
#
# Needs root, podman (+ runc), unshare/nsenter, ip, openssl, python3 and curl. Everything runs
# in a fresh network namespace with only loopback: the mock upstream (HTTP, :9000), a TLS front
# for it (the proxy's own HTTPS listener, :9443, certificate for upstream.test from a throwaway
# CA), a one-name DNS server (:53) and the container (--network ns:…, --dns 127.0.0.1). The
# container trusts the image's CA roots plus the throwaway CA (mounted over the bundle); a
# second container with the image's roots alone must refuse the front's certificate.
#
# This sandbox refuses raised limits and has no crun-compatible cgroups, hence
# `--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024`; plain hosts need neither.
# Ends with `N passed, N failed`; exits non-zero on any failure.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
passed=0
failed=0
ok() { echo "PASS: $*"; passed=$((passed + 1)); }
bad() { echo "FAIL: $*"; failed=$((failed + 1)); }
check() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1: expected '$2', got '$3'"; fi; }
die() {
    echo "integration.sh: $*" >&2
    echo "0 passed, 1 failed"
    exit 1
}

[ "$(id -u)" = 0 ] || die "needs root"
for tool in podman unshare nsenter ip openssl python3 curl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done

image="${1:-}"
if [ -z "$image" ]; then
    image="$(bash "$here/build.sh" | tail -n 1)" || die "deploy/container/build.sh failed"
fi
proxy_bin="$repo/target/x86_64-unknown-linux-gnu/release/envelope-proxy" # the image's binary
mock="${MOCK_BIN:-$repo/target/release/examples/mock-upstream}"
if [ ! -x "$mock" ]; then
    (cd "$repo" && cargo build --release --locked --example mock-upstream) >&2 || die "cannot build the mock"
fi
[ -x "$proxy_bin" ] || die "no $proxy_bin (deploy/container/build.sh builds it)"
run_flags=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

work="$(mktemp -d "${TMPDIR:-/tmp}/envelope-proxy-container.XXXXXX")"
chmod 0755 "$work"
netns_pid=""
pids=()
names=()
cleanup() {
    for name in "${names[@]}"; do timeout 30 podman rm -f -t 0 "$name" >/dev/null 2>&1 || true; done
    for pid in "${pids[@]}" $netns_pid; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}" $netns_pid; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- the image itself
size="$(podman image inspect --format '{{.Size}}' "$image")"
if [ -n "$size" ] && [ "$size" -le $((20 * 1000 * 1000)) ]; then
    ok "image size $((size / 1000)) kB (<= 20 MB)"
else
    bad "image size '$size' bytes (> 20 MB)"
fi
check "runs as a non-root numeric user" "65532:65532" "$(podman image inspect --format '{{.Config.User}}' "$image")"
# Read whole before grep: `grep -q` leaves at its first match, and under pipefail a writer
# still writing then dies of SIGPIPE and fails the pipeline (this check failed so once).
env_lines="$(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image")"
if grep -qx 'ENVELOPE_PROXY_LISTEN=0.0.0.0:8080' <<<"$env_lines"; then
    ok "listens on 0.0.0.0:8080 by default"
else
    bad "ENVELOPE_PROXY_LISTEN=0.0.0.0:8080 not in the image's environment (it has: ${env_lines//$'\n'/ })"
fi
check "no base image: one layer (FROM scratch + one COPY)" "1" "$(podman image inspect --format '{{len .RootFS.Layers}}' "$image")"

# ---------------------------------------------------------------- a loopback-only network namespace
unshare --net -- sleep 3600 </dev/null >/dev/null 2>&1 &
netns_pid=$!
sleep 0.2
inns() { nsenter --net="/proc/$netns_pid/ns/net" "$@"; }
inns ip link set lo up || die "cannot bring up lo in the network namespace"

# Throwaway CA and a certificate for upstream.test.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=envelope-proxy-integration-ca -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=upstream.test \
    -keyout "$work/front.key" -out "$work/front.csr" 2>/dev/null
printf 'subjectAltName=DNS:upstream.test\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$work/ext"
openssl x509 -req -in "$work/front.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -days 2 -extfile "$work/ext" -out "$work/front.pem" 2>/dev/null || die "openssl failed"
# The image's own roots plus the throwaway CA.
cid="$(podman create "$image")" && podman cp "$cid:/etc/ssl/certs/ca-certificates.crt" "$work/roots.pem" &&
    podman rm "$cid" >/dev/null || die "cannot read the image's CA bundle"
roots="$(grep -c 'BEGIN CERTIFICATE' "$work/roots.pem")"
if [ "$roots" -ge 50 ]; then ok "the image carries CA roots ($roots certificates)"; else bad "only $roots CA roots in the image"; fi
cat "$work/roots.pem" "$work/ca.pem" >"$work/roots-plus-test-ca.pem"
chmod 0644 "$work/roots-plus-test-ca.pem"

# A DNS server that knows one name.
cat >"$work/dns.py" <<'PY'
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
while True:
    q, peer = s.recvfrom(512)
    if len(q) < 17:
        continue
    i, labels = 12, []
    while i < len(q) and q[i] != 0:
        labels.append(q[i + 1:i + 1 + q[i]]); i += 1 + q[i]
    qtype = struct.unpack(">H", q[i + 1:i + 3])[0]
    question = q[12:i + 5]
    known = b".".join(labels).lower() == b"upstream.test"
    print("query", b".".join(labels).decode(errors="replace"), qtype, file=sys.stderr, flush=True)
    answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([127, 0, 0, 1]) if known and qtype == 1 else b""
    flags = 0x8180 if known else 0x8183  # NOERROR / NXDOMAIN
    s.sendto(struct.pack(">HHHHHH", q[0] << 8 | q[1], flags, 1, 1 if answer else 0, 0, 0) + question + answer, peer)
PY
# Started directly (nsenter execs them), so that $! is the process itself and cleanup ends it.
nsenter --net="/proc/$netns_pid/ns/net" python3 "$work/dns.py" </dev/null >/dev/null 2>"$work/dns.log" &
pids+=($!)
MOCK_FIXTURES_DIR="$repo/fixtures" nsenter --net="/proc/$netns_pid/ns/net" "$mock" \
    --listen 127.0.0.1:9000 --shape bare </dev/null >"$work/mock.log" 2>&1 &
pids+=($!)
nsenter --net="/proc/$netns_pid/ns/net" "$proxy_bin" --listen 127.0.0.1:9443 \
    --upstream http://127.0.0.1:9000/v1 --tls-cert "$work/front.pem" --tls-key "$work/front.key" \
    </dev/null >"$work/front.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    inns curl -sf http://127.0.0.1:9000/__mock/health >/dev/null 2>&1 &&
        inns curl -sf --cacert "$work/ca.pem" --resolve upstream.test:9443:127.0.0.1 https://upstream.test:9443/healthz >/dev/null 2>&1 && break
    sleep 0.1
done

# As the README's Install says: owned by the image's user, 0400.
install -m 0400 -o 65532 -g 65532 /dev/stdin "$work/upstream-api-key" <<<"sk-container-key"
start() { # start NAME BUNDLE: the image, read-only, its upstream by name over TLS
    names+=("$1")
    podman run -d --name "$1" "${run_flags[@]}" --read-only --network "ns:/proc/$netns_pid/ns/net" \
        --dns 127.0.0.1 -v "$2:/etc/ssl/certs/ca-certificates.crt:ro" \
        -v "$work/upstream-api-key:/run/secrets/upstream-api-key:ro" \
        -e ENVELOPE_PROXY_UPSTREAM=https://upstream.test:9443/v1 -e ENVELOPE_PROXY_LISTEN="$3" \
        "$image" --upstream-api-key-file=/run/secrets/upstream-api-key >"$work/$1.id" 2>"$work/$1.err"
}
until_healthy() { # until_healthy PORT
    for _ in $(seq 100); do
        [ "$(inns curl -s "http://127.0.0.1:$1/healthz")" = ok ] && return 0
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------- 10. podman run
name="envelope-proxy-it-$$"
# The image's default listener (0.0.0.0:8080) is what is served.
if start "$name" "$work/roots-plus-test-ca.pem" 0.0.0.0:8080; then
    ok "podman run --read-only ${run_flags[*]} $image"
else
    bad "podman run: $(cat "$work/$name.err")"
fi
if until_healthy 8080; then ok "/healthz answers ok on :8080"; else bad "/healthz: $(podman logs "$name" 2>&1 | tail -n 5)"; fi
pid="$(podman inspect --format '{{.State.Pid}}' "$name")"
check "the process runs as uid/gid 65532" "65532 65532" \
    "$(awk '/^Uid:/ {u=$2} /^Gid:/ {g=$2} END {print u, g}' "/proc/$pid/status" 2>/dev/null)"
chat='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}]}'
inns curl -s -H 'content-type: application/json' -d "$chat" http://127.0.0.1:8080/api/v1/chat/completions >"$work/envelope.json"
{ printf '{"success":true,"code":"200","message":"successful","data":'; cat "$repo/fixtures/bare/chat_completion.json"; printf '}'; } >"$work/envelope.expected"
if cmp -s "$work/envelope.expected" "$work/envelope.json"; then
    ok "a translated request (/api/v1, envelope) through DNS name + verified TLS to the upstream"
else
    bad "translated request: $(head -c 400 "$work/envelope.json"); logs: $(podman logs "$name" 2>&1 | tail -n 3)"
fi
seen="$(inns curl -sf http://127.0.0.1:9000/__mock/requests | python3 -c 'import json,sys; r=[x for x in json.load(sys.stdin) if x["path"].endswith("/chat/completions")]; print(r[-1]["headers"].get("authorization","none") if r else "none")')"
check "the key from the mounted secret file reaches the upstream" "Bearer sk-container-key" "$seen"
if grep -q '^query upstream.test 1$' "$work/dns.log"; then
    ok "the container resolved upstream.test through DNS (--dns 127.0.0.1)"
else
    bad "no DNS query for upstream.test: $(cat "$work/dns.log")"
fi

# The same image with its own roots only: the throwaway CA is unknown, the handshake must fail.
strict="envelope-proxy-it-strict-$$"
start "$strict" "$work/roots.pem" 0.0.0.0:8081 || bad "podman run (roots only): $(cat "$work/$strict.err")"
until_healthy 8081 || bad "/healthz on the roots-only container"
code="$(inns curl -s -o "$work/strict.json" -w '%{http_code}' -H 'content-type: application/json' -d "$chat" http://127.0.0.1:8081/v1/chat/completions)"
if [ "$code" = 502 ] && grep -qi 'certificate\|tls' "$work/strict.json"; then
    ok "TLS is verified: an unknown CA gets 502 ($(head -c 120 "$work/strict.json"))"
else
    bad "with the image's roots only: HTTP $code $(head -c 200 "$work/strict.json")"
fi

# podman stop sends SIGTERM: the drain, then exit 0.
timeout 60 podman stop -t 20 "$name" >/dev/null 2>&1
check "podman stop: exit code 0" "0" "$(podman inspect --format '{{.State.ExitCode}}' "$name")"

echo "container: $passed passed, $failed failed"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
