#!/usr/bin/env bash
# The installed Debian package under a real systemd (issue 14, part 4): boots systemd as PID 1
# in fresh namespaces and drives envelope-proxy_<version>_amd64.deb through install, start,
# both dialects, the credential key, a key rotation by reload, socket activation, a drain on
# stop, a crash restart, the watchdog, the security score, upgrade, remove and purge.
#
#   bash deploy/systemd/integration.sh [path/to/envelope-proxy_<version>_amd64.deb]
#
# Without an argument the package is built with deploy/debian/build.sh. Needs root, unshare and
# nsenter (util-linux), systemd, curl and jq; the mock upstream is
# target/release/examples/mock-upstream (built when missing).
#
# systemd never runs on this machine's own root: it boots inside
# `unshare --fork --pid --mount --net --uts --ipc` on an overlay of / whose upper layer is a
# tmpfs, with its own /tmp, /run and loopback-only network. Whatever it writes (/etc/passwd by
# sysusers, /tmp by tmpfiles, the journal, the installed package) is gone when it powers off.
# The trap powers it off (and kills the namespace if that hangs) on every exit.
#
# Ends with `N passed, N failed`; exits non-zero on any failure.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
passed=0
failed=0
ok() { echo "PASS: $*"; passed=$((passed + 1)); }
bad() { echo "FAIL: $*"; failed=$((failed + 1)); }
die() {
    echo "integration.sh: $*" >&2
    echo "0 passed, 1 failed"
    exit 1
}

[ "$(id -u)" = 0 ] || die "needs root (namespaces, mounts)"
for tool in unshare nsenter curl jq /lib/systemd/systemd; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done

deb="${1:-}"
if [ -z "$deb" ]; then
    deb="$(bash "$repo/deploy/debian/build.sh" | tail -n 1)" || die "deploy/debian/build.sh failed"
fi
[ -f "$deb" ] || die "no such package: $deb"
mock="${MOCK_BIN:-$repo/target/release/examples/mock-upstream}"
if [ ! -x "$mock" ]; then
    (cd "$repo" && cargo build --release --locked --example mock-upstream) >&2 || die "cannot build the mock"
fi

# ---------------------------------------------------------------- lintian
if command -v lintian >/dev/null 2>&1; then
    if report="$(lintian --fail-on error "$deb" 2>&1)"; then
        ok "lintian: no errors ($(grep -c '^W: ' <<<"$report") warnings)"
    else
        bad "lintian reports errors: $(grep '^E: ' <<<"$report")"
    fi
else
    bad "lintian is not installed (apt-get install -y lintian)"
fi

# ---------------------------------------------------------------- the sandbox
work="$(mktemp -d "${TMPDIR:-/tmp}/envelope-proxy-integration.XXXXXX")"
stage="$work/stage" # copied into the sandbox's /opt/ep-test before it boots
mkdir -p "$stage"
cp "$deb" "$stage/envelope-proxy.deb"
cp "$mock" "$stage/mock-upstream"
cp -r "$repo/fixtures" "$stage/fixtures"
echo "sk-credential-probe" >"$stage/probe-credential"

unshare_pid=""
sd="" # systemd's PID, as this machine sees it

cleanup() {
    if [ -n "$sd" ] && [ -d "/proc/$sd" ]; then
        timeout 30 nsenter -t "$sd" -a -r -w systemctl poweroff >/dev/null 2>&1 || true
    fi
    if [ -n "$unshare_pid" ]; then
        for _ in $(seq 300); do
            [ -d "/proc/$unshare_pid" ] || break
            sleep 0.1
        done
        # Still up after 30 s: unshare --kill-child takes systemd (and its PID namespace) along.
        if [ -d "/proc/$unshare_pid" ]; then
            echo "integration.sh: systemd did not power off; killing the namespace" >&2
            kill -KILL "$unshare_pid" 2>/dev/null || true
            wait "$unshare_pid" 2>/dev/null || true
        fi
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs in the new namespaces: overlay of /, fresh /proc, /tmp and /run, pivot_root, then
# systemd as PID 1. The mounts belong to this mount namespace only.
boot() {
    set -e
    mount --make-rprivate /
    mount -t tmpfs -o mode=0755 tmpfs "$ROOTS"
    mkdir -p "$ROOTS/upper" "$ROOTS/work" "$ROOTS/root"
    mount -t overlay overlay -o "lowerdir=/,upperdir=$ROOTS/upper,workdir=$ROOTS/work" "$ROOTS/root"
    mount --rbind /dev "$ROOTS/root/dev"
    mount --rbind /sys "$ROOTS/root/sys"
    mount -t proc proc "$ROOTS/root/proc"
    mount -t tmpfs -o mode=1777 tmpfs "$ROOTS/root/tmp"
    mount -t tmpfs -o mode=0755 tmpfs "$ROOTS/root/run"
    mkdir -p "$ROOTS/root/opt/ep-test" "$ROOTS/root/.oldroot"
    cp -a "$STAGE/." "$ROOTS/root/opt/ep-test/"
    cd "$ROOTS/root"
    pivot_root . .oldroot
    umount -l /.oldroot
    rmdir /.oldroot
    # systemd makes / shared only outside containers; credentials (LoadCredential=) are
    # mounted in a child namespace and must propagate back to PID 1's.
    mount --make-rshared /
    exec env -i container=other PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        /lib/systemd/systemd --system --unit=basic.target
}
mkdir -p "$work/roots"
export -f boot
ROOTS="$work/roots" STAGE="$stage" setsid unshare --fork --pid --mount --net --uts --ipc \
    --kill-child -- bash -c boot >"$work/console.log" 2>&1 </dev/null &
unshare_pid=$!
for _ in $(seq 100); do
    sd="$(cat "/proc/$unshare_pid/task/"*/children 2>/dev/null | tr -d ' ')"
    [ -n "$sd" ] && break
    sleep 0.1
done
[ -n "$sd" ] || die "systemd did not start; console:$(cat "$work/console.log")"

# A command in the sandbox (its root, namespaces and working directory), bounded.
sb() { timeout "${SB_TIMEOUT:-60}" nsenter -t "$sd" -a -r -w "$@"; }
# Polls `sb CMD…` for up to $1 seconds until it succeeds.
until_ok() {
    local seconds="$1"
    shift
    for _ in $(seq $((seconds * 10))); do
        sb "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}
prop() { sb systemctl show -P "$2" "$1"; } # prop UNIT PROPERTY
check() {                                   # check NAME EXPECTED ACTUAL
    if [ "$2" = "$3" ]; then ok "$1"; else bad "$1: expected '$2', got '$3'"; fi
}

state=""
for _ in $(seq 300); do
    state="$(sb systemctl is-system-running 2>/dev/null)"
    case "$state" in running | degraded) break ;; esac
    sleep 0.1
done
case "$state" in
running | degraded) echo "== $(sb systemctl --version | head -n1) booted as PID 1 in the sandbox ($state)" ;;
*) die "systemd did not finish booting (state '$state'); console:$(tail -n 20 "$work/console.log")" ;;
esac

# ---------------------------------------------------------------- can units get credentials here?
probe="$(sb systemd-run --wait --pipe --quiet -p LoadCredential=probe:/opt/ep-test/probe-credential \
    sh -c 'cat "$CREDENTIALS_DIRECTORY/probe"' 2>&1)"
if [ "$probe" = "sk-credential-probe" ]; then
    credentials=yes
    ok "probe unit: LoadCredential= delivers credentials in this sandbox"
else
    credentials=no
    echo "NOTE: this sandbox cannot deliver credentials to a service (probe unit got '$probe');"
    echo "      the key is checked through --upstream-api-key-file instead"
fi

# ---------------------------------------------------------------- mock upstream
sb systemd-run --quiet --unit=mock-upstream -p Environment=MOCK_FIXTURES_DIR=/opt/ep-test/fixtures \
    /opt/ep-test/mock-upstream --listen 127.0.0.1:9000 --shape bare >/dev/null
until_ok 20 curl -sf http://127.0.0.1:9000/__mock/health || die "the mock upstream did not start"
# The Authorization the upstream saw on its last chat request.
upstream_auth() {
    sb curl -sf http://127.0.0.1:9000/__mock/requests |
        jq -r '[.[] | select(.path | endswith("/chat/completions"))] | last | .headers.authorization // "none"'
}
chat='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}]}'
stream_chat='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}],"stream":true}'

# ---------------------------------------------------------------- 2. the package installs, not started
# Container images ship a policy-rc.d that forbids maintainer scripts to start or stop services
# (deb-systemd-invoke obeys it); a real host has none. Only the sandbox's copy is removed.
if sb test -e /usr/sbin/policy-rc.d; then
    echo "NOTE: removing /usr/sbin/policy-rc.d inside the sandbox (this machine's denies service actions)"
    sb rm -f /usr/sbin/policy-rc.d
fi
if sb dpkg -i /opt/ep-test/envelope-proxy.deb >"$work/dpkg.log" 2>&1; then
    ok "dpkg -i $(basename "$deb")"
else
    bad "dpkg -i: $(cat "$work/dpkg.log")"
fi
missing=""
for f in /usr/bin/envelope-proxy /lib/systemd/system/envelope-proxy.service \
    /lib/systemd/system/envelope-proxy.socket /etc/envelope-proxy/envelope-proxy.env \
    /usr/share/doc/envelope-proxy/README.md /usr/share/doc/envelope-proxy/docs/configuration.md \
    /usr/share/doc/envelope-proxy/copyright; do
    sb test -f "$f" || missing="$missing $f"
done
check "package files in place (binary, units, env file, docs)" "" "$missing"
check "the env file is a conffile" "/etc/envelope-proxy/envelope-proxy.env" \
    "$(sb dpkg-query -W -f='${Conffiles}' envelope-proxy | awk 'NF {print $1}')"
check "installing starts nothing: service inactive" "inactive" "$(sb systemctl is-active envelope-proxy.service)"
check "installing enables nothing" "disabled disabled" \
    "$(sb systemctl is-enabled envelope-proxy.service) $(sb systemctl is-enabled envelope-proxy.socket)"

# ---------------------------------------------------------------- operator setup, as in the README's Install
sb sh -c 'echo ENVELOPE_PROXY_UPSTREAM=http://127.0.0.1:9000/v1 >>/etc/envelope-proxy/envelope-proxy.env'
sb sh -c 'umask 077; echo sk-integration-one >/etc/envelope-proxy/upstream-api-key'
if [ "$credentials" = no ]; then
    # The fallback: the same key through --upstream-api-key-file (readable by the dynamic user).
    sb mkdir -p /etc/systemd/system/envelope-proxy.service.d
    sb sh -c 'printf "[Service]\nLoadCredential=\nEnvironment=ENVELOPE_PROXY_UPSTREAM_API_KEY_FILE=/etc/envelope-proxy/upstream-api-key\n" >/etc/systemd/system/envelope-proxy.service.d/no-credentials.conf'
    sb chmod 0644 /etc/envelope-proxy/upstream-api-key
    sb systemctl daemon-reload
fi

# ---------------------------------------------------------------- 1. enable --now: READY=1 and STATUS=
sb systemctl enable --now envelope-proxy.service >/dev/null 2>&1
check "systemctl enable --now: active (Type=notify: READY=1 received)" "notify active running" \
    "$(prop envelope-proxy Type) $(prop envelope-proxy ActiveState) $(prop envelope-proxy SubState)"
if [ "$credentials" = yes ]; then key_source="credential upstream-api-key"; else key_source="flag --upstream-api-key-file"; fi
expected_status="serving http://127.0.0.1:8080; upstream http://127.0.0.1:9000/v1 (bare); upstream key: $key_source; client keys: none; TLS key: none"
check "STATUS= names the listener, upstream and secret sources" "$expected_status" "$(prop envelope-proxy StatusText)"

# ---------------------------------------------------------------- 2. both dialects to the mock
# Byte for byte: the fixture the mock serves, as is (bare) and wrapped (envelope).
same_bytes() { # same_bytes NAME EXPECTED_FILE ACTUAL_FILE
    if cmp -s "$2" "$3"; then ok "$1"; else bad "$1: expected $(head -c 300 "$2"), got $(head -c 300 "$3")"; fi
}
fixture="$stage/fixtures/bare/chat_completion.json"
sb curl -s -H 'content-type: application/json' -d "$chat" http://127.0.0.1:8080/v1/chat/completions >"$work/bare.json"
same_bytes "bare dialect: /v1/chat/completions is the upstream's body" "$fixture" "$work/bare.json"
{ printf '{"success":true,"code":"200","message":"successful","data":'; cat "$fixture"; printf '}'; } >"$work/envelope.expected"
sb curl -s -H 'content-type: application/json' -d "$chat" http://127.0.0.1:8080/api/v1/chat/completions >"$work/envelope.json"
same_bytes "envelope dialect: /api/v1/chat/completions is the same body wrapped" "$work/envelope.expected" "$work/envelope.json"

# ---------------------------------------------------------------- 3. the key reaches the upstream
if [ "$credentials" = yes ]; then
    check "the key from LoadCredential= reaches the upstream" "Bearer sk-integration-one" "$(upstream_auth)"
else
    check "the key from --upstream-api-key-file reaches the upstream (credentials unavailable here)" \
        "Bearer sk-integration-one" "$(upstream_auth)"
fi

# ---------------------------------------------------------------- 4. reload with a rotated key file
# LoadCredential= copies the key at start, so a rotation by reload needs a key file the service
# reads itself: root-owned, readable through a group (the recipe in docs/operations.md, Reload).
sb groupadd --system envelope-proxy-keys
sb sh -c 'umask 027; echo sk-integration-two >/etc/envelope-proxy/upstream-api-key.rotating'
sb chgrp envelope-proxy-keys /etc/envelope-proxy/upstream-api-key.rotating
sb mkdir -p /etc/systemd/system/envelope-proxy.service.d
sb sh -c 'printf "[Service]\nSupplementaryGroups=envelope-proxy-keys\nEnvironment=ENVELOPE_PROXY_UPSTREAM_API_KEY_FILE=/etc/envelope-proxy/upstream-api-key.rotating\n" >/etc/systemd/system/envelope-proxy.service.d/rotating-key.conf'
sb systemctl daemon-reload
sb systemctl restart envelope-proxy.service
sb curl -s -o /dev/null -H 'content-type: application/json' -d "$chat" http://127.0.0.1:8080/v1/chat/completions
check "a group-readable --upstream-api-key-file is read by the service" "Bearer sk-integration-two" "$(upstream_auth)"
pid_before="$(prop envelope-proxy MainPID)"
# In flight across the reload: a keep-alive connection with one request answered before the
# reload and one after (python's http.client raises if the proxy closed it), and a stream the
# upstream holds open until released.
cat >"$stage/keepalive.py" <<'PY'
import http.client, os, sys, time
conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=20)
conn.request("GET", "/v1/models")
first = conn.getresponse(); first.read()
sock = conn.sock
print("first", first.status, flush=True)
for _ in range(300):
    if os.path.exists("/tmp/keepalive-go"):
        break
    time.sleep(0.1)
try:
    conn.request("GET", "/v1/models")
    second = conn.getresponse(); second.read()
    print("second", second.status, "same-connection" if conn.sock is sock else "reconnected", flush=True)
except Exception as error:
    print("second failed:", type(error).__name__, error, flush=True)
PY
sb cp /dev/stdin /tmp/keepalive.py <"$stage/keepalive.py"
sb python3 /tmp/keepalive.py >"$work/keepalive.out" 2>&1 &
keepalive=$!
for _ in $(seq 100); do grep -q '^first' "$work/keepalive.out" 2>/dev/null && break; sleep 0.1; done
sb curl -sN -H 'content-type: application/json' -H 'x-mock-behaviour: hold' -d "$stream_chat" \
    http://127.0.0.1:8080/v1/chat/completions >"$work/held-reload.sse" 2>&1 &
held=$!
for _ in $(seq 100); do grep -q '^data:' "$work/held-reload.sse" 2>/dev/null && break; sleep 0.1; done
sb sh -c 'umask 027; echo sk-integration-three >/etc/envelope-proxy/upstream-api-key.rotating.new &&
    chgrp envelope-proxy-keys /etc/envelope-proxy/upstream-api-key.rotating.new &&
    mv /etc/envelope-proxy/upstream-api-key.rotating.new /etc/envelope-proxy/upstream-api-key.rotating'
sb systemctl reload envelope-proxy.service
check "systemctl reload: same process, active" "$pid_before active" \
    "$(prop envelope-proxy MainPID) $(prop envelope-proxy ActiveState)"
sb curl -s -o /dev/null -H 'content-type: application/json' -d "$chat" http://127.0.0.1:8080/v1/chat/completions
check "after the reload the next upstream request carries the new key" "Bearer sk-integration-three" "$(upstream_auth)"
sb touch /tmp/keepalive-go
wait "$keepalive"
check "a keep-alive connection open across the reload serves its next request" \
    "first 200|second 200 same-connection" "$(paste -sd'|' "$work/keepalive.out")"
sb curl -sf -X POST http://127.0.0.1:9000/__mock/release >/dev/null
wait "$held"
if [ "$(tail -n 3 "$work/held-reload.sse" | grep -c '^data: \[DONE\]')" = 1 ] && [ "$(grep -c '^data: ' "$work/held-reload.sse")" -gt 2 ]; then
    ok "a stream in flight across the reload completes ([DONE])"
else
    bad "the stream in flight across the reload: $(cat "$work/held-reload.sse")"
fi
sb rm -f /etc/systemd/system/envelope-proxy.service.d/rotating-key.conf
sb systemctl daemon-reload

# ---------------------------------------------------------------- 5. socket activation
sb systemctl stop envelope-proxy.service
sb systemctl start envelope-proxy.socket
check "socket started, service stopped" "active inactive" \
    "$(sb systemctl is-active envelope-proxy.socket) $(sb systemctl is-active envelope-proxy.service)"
sb curl -s http://127.0.0.1:8080/v1/models >"$work/models.json"
same_bytes "the first request starts the service and is answered" "$stage/fixtures/bare/models.json" "$work/models.json"
check "the service was started by the socket" "active" "$(sb systemctl is-active envelope-proxy.service)"

# ---------------------------------------------------------------- 6. stop while a stream is in flight
sb curl -sN -H 'content-type: application/json' -H 'x-mock-behaviour: hold' -d "$stream_chat" \
    http://127.0.0.1:8080/v1/chat/completions >"$work/held-stop.sse" 2>&1 &
held=$!
for _ in $(seq 100); do grep -q '^data:' "$work/held-stop.sse" 2>/dev/null && break; sleep 0.1; done
sb systemctl stop envelope-proxy.socket envelope-proxy.service &
stopping=$!
# The drain has started (STOPPING=1): deactivating; the stream is still open. Then the upstream
# finishes it, well inside the 30 s grace.
for _ in $(seq 100); do [ "$(prop envelope-proxy ActiveState)" = deactivating ] && break; sleep 0.1; done
check "systemctl stop: draining (deactivating) while the stream is open" "deactivating" "$(prop envelope-proxy ActiveState)"
sleep 1
sb curl -sf -X POST http://127.0.0.1:9000/__mock/release >/dev/null
wait "$held"
wait "$stopping"
if [ "$(tail -n 3 "$work/held-stop.sse" | grep -c '^data: \[DONE\]')" = 1 ] && ! grep -q shutting_down "$work/held-stop.sse"; then
    ok "the stream in flight at stop ends complete ([DONE]) within the grace"
else
    bad "the stream in flight at stop: $(cat "$work/held-stop.sse")"
fi
check "stopped with exit status 0 (Result=success)" "0 success inactive" \
    "$(prop envelope-proxy ExecMainStatus) $(prop envelope-proxy Result) $(prop envelope-proxy ActiveState)"

# ---------------------------------------------------------------- 7. kill -9: Restart=on-failure
sb systemctl start envelope-proxy.service
killed="$(prop envelope-proxy MainPID)"
restarts="$(prop envelope-proxy NRestarts)"
sb kill -9 "$killed"
restarted=no
for _ in $(seq 200); do
    pid="$(prop envelope-proxy MainPID)"
    if [ "$pid" != "$killed" ] && [ "$pid" != 0 ] && [ "$(prop envelope-proxy ActiveState)" = active ]; then
        restarted=yes
        break
    fi
    sleep 0.1
done
check "kill -9 of the main process: Restart=on-failure brings it back" "yes $((restarts + 1))" \
    "$restarted $(prop envelope-proxy NRestarts)"

# ---------------------------------------------------------------- 8. the watchdog
# A service that never pings is killed: the watchdog is enforced in this sandbox at all.
sb systemd-run --quiet --unit=watchdog-control -p WatchdogSec=1s sleep 30
for _ in $(seq 100); do [ "$(prop watchdog-control Result)" = watchdog ] && break; sleep 0.1; done
check "control: a unit that never pings WATCHDOG=1 is killed" "watchdog" "$(prop watchdog-control Result)"
sb mkdir -p /etc/systemd/system/envelope-proxy.service.d
sb sh -c 'printf "[Service]\nWatchdogSec=2s\n" >/etc/systemd/system/envelope-proxy.service.d/watchdog.conf'
sb systemctl daemon-reload
sb systemctl restart envelope-proxy.service
watched="$(prop envelope-proxy MainPID)"
restarts="$(prop envelope-proxy NRestarts)"
sleep 7 # 3.5 watchdog periods
check "WatchdogSec=2s: still running after 7 s, same process, no restart" "2s $watched $restarts active" \
    "$(prop envelope-proxy WatchdogUSec) $(prop envelope-proxy MainPID) $(prop envelope-proxy NRestarts) $(prop envelope-proxy ActiveState)"
sb rm -f /etc/systemd/system/envelope-proxy.service.d/watchdog.conf
sb systemctl daemon-reload

# ---------------------------------------------------------------- 9. security score, journal
score="$(sb systemd-analyze security --no-pager envelope-proxy.service 2>/dev/null |
    sed -n 's/.*Overall exposure level for envelope-proxy.service: \([0-9.]*\).*/\1/p')"
if [ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }'; then
    ok "systemd-analyze security on the live unit: $score (<= 2.0)"
else
    bad "systemd-analyze security on the live unit: '${score:-no score}' (> 2.0)"
fi
journal="$(sb journalctl --no-pager -o cat -u envelope-proxy.service)"
access_lines="$(grep -c 'INFO access: request' <<<"$journal")"
if [ "$access_lines" -ge 5 ]; then ok "the journal holds the access lines ($access_lines)"; else bad "access lines in the journal: $access_lines"; fi
if grep -q 'sk-integration' <<<"$journal"; then bad "a key appears in the journal"; else ok "no key in the journal"; fi

# ---------------------------------------------------------------- 2. upgrade, remove, purge
upgraded_from="$(prop envelope-proxy MainPID)"
sb dpkg -i /opt/ep-test/envelope-proxy.deb >"$work/dpkg.log" 2>&1 || bad "dpkg -i (upgrade): $(cat "$work/dpkg.log")"
pid="$(prop envelope-proxy MainPID)"
if [ "$pid" != "$upgraded_from" ] && [ "$pid" != 0 ] && [ "$(prop envelope-proxy ActiveState)" = active ]; then
    ok "an upgrade restarts the running service"
else
    bad "after the upgrade: MainPID $pid (was $upgraded_from), $(prop envelope-proxy ActiveState)"
fi
sb dpkg -r envelope-proxy >"$work/dpkg.log" 2>&1 || bad "dpkg -r: $(cat "$work/dpkg.log")"
check "remove stops it and keeps the conffile" "inactive kept" \
    "$(sb systemctl is-active envelope-proxy.service) $(sb test -f /etc/envelope-proxy/envelope-proxy.env && echo kept)"
sb dpkg -P envelope-proxy >"$work/dpkg.log" 2>&1 || bad "dpkg -P: $(cat "$work/dpkg.log")"
check "purge removes the conffile" "gone" "$(sb test -e /etc/envelope-proxy/envelope-proxy.env || echo gone)"

echo "systemd integration: $passed passed, $failed failed"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
