#!/usr/bin/env bash
# Static checks of the systemd units in deploy/systemd (CI: bash deploy/systemd/check.sh).
#
#  1. systemd-analyze verify on envelope-proxy.service and .socket: any
#     warning or error that mentions our units fails the check.
#  2. systemd-analyze security --offline=true on the service: the overall
#     exposure score must be <= MAX_EXPOSURE (default 2.0).
#  3. envelope-proxy.env is valid EnvironmentFile= syntax and holds no secret.
#
# Needs only systemd-analyze (Debian/Ubuntu package "systemd", v250 or newer
# for `security --offline`); installs nothing. The binary does not need to be
# installed: verify runs with --root= on a throw-away tree holding copies of
# the units, the stock unit files they depend on, and a stub (or, if built,
# the real target/release/envelope-proxy) at /usr/bin/envelope-proxy.
# --root also keeps drop-ins of the machine running the check out of it.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
max="${MAX_EXPOSURE:-2.0}"
units=(envelope-proxy.service envelope-proxy.socket)
passed=0
failed=0
ok() { echo "PASS: $*"; passed=$((passed + 1)); }
bad() { echo "FAIL: $*"; failed=$((failed + 1)); }

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "check.sh: systemd-analyze not found; install it first" >&2
    echo "          (Debian/Ubuntu: apt-get install -y systemd)" >&2
    exit 1
fi
version="$(systemd-analyze --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p')"
echo "== $(systemd-analyze --version | head -n1)"
if [ -z "$version" ] || [ "$version" -lt 250 ]; then
    echo "check.sh: systemd >= 250 needed (security --offline, verify --root); found '${version:-?}'" >&2
    exit 1
fi
export SYSTEMD_LOG_COLOR=0 SYSTEMD_COLORS=0 SYSTEMD_PAGER= LC_ALL=C.UTF-8

# ---------------------------------------------------------------- temp root
root="$(mktemp -d "${TMPDIR:-/tmp}/envelope-proxy-check.XXXXXX")"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/etc/systemd/system" "$root/usr/bin"
for u in "${units[@]}"; do
    cp "$here/$u" "$root/etc/systemd/system/$u"
done

# Stock units our units refer to (sysinit.target, network-online.target, ...).
copied=""
for d in /usr/lib/systemd/system /lib/systemd/system; do
    [ -d "$d" ] || continue
    real="$(readlink -f "$d")"
    case " $copied " in *" $real "*) continue ;; esac
    mkdir -p "$root$real"
    cp -a "$real/." "$root$real/"
    copied="$copied $real"
done
# Minimal stand-ins for any that this machine lacks.
for t in sysinit.target basic.target shutdown.target sockets.target \
         network-online.target multi-user.target; do
    if ! ls "$root"/usr/lib/systemd/system/"$t" "$root"/lib/systemd/system/"$t" >/dev/null 2>&1; then
        mkdir -p "$root/usr/lib/systemd/system"
        printf '[Unit]\nDescription=stand-in %s\n' "$t" >"$root/usr/lib/systemd/system/$t"
    fi
done

stub() { # path: an executable that does nothing
    mkdir -p "$(dirname "$1")"
    printf '#!/bin/sh\nexit 0\n' >"$1"
    chmod 0755 "$1"
}
# The binary, where the Debian package puts it (the unit points there): the real one
# if it has been built, else a stub. A unit pointing anywhere else fails.
if [ -x "$repo/target/release/envelope-proxy" ]; then
    echo "== using built binary target/release/envelope-proxy"
    cp "$repo/target/release/envelope-proxy" "$root/usr/bin/envelope-proxy"
else
    echo "== target/release/envelope-proxy not built: stub at /usr/bin/envelope-proxy"
    stub "$root/usr/bin/envelope-proxy"
fi
# Other commands named in Exec*= lines (ExecReload=kill ...): copied from
# this machine, so a typo still fails verify. `kill` alone is stubbed if this
# machine lacks it (procps not installed): every real systemd host has it.
grep -hE '^[[:space:]]*Exec[A-Za-z]*=' "${units[@]/#/$here/}" |
    sed -E 's/^[^=]*=[[:space:]]*[-@:+!]*//; s/[[:space:]].*$//' | sort -u |
    while read -r cmd; do
        case "$cmd" in
        '' | /usr/bin/envelope-proxy) ;;
        /*) if [ -x "$cmd" ]; then mkdir -p "$root$(dirname "$cmd")" && cp -L "$cmd" "$root$cmd"; fi ;;
        *)
            host="$(type -P "$cmd" || true)"
            if [ -n "$host" ]; then
                cp -L "$host" "$root/usr/bin/$cmd"
            elif [ "$cmd" = kill ]; then
                echo "== note: no kill(1) on this machine (procps); stubbed for verify"
                stub "$root/usr/bin/kill"
            fi
            ;;
        esac
    done

verify() { # unit paths...; prints the output, returns systemd-analyze's status
    systemd-analyze verify --man=no --recursive-errors=no --root="$root" "$@" 2>&1
}

# ---------------------------------------------------------------- 0. the tool reports problems at all
broken="$root/etc/systemd/system/envelope-proxy-selftest.service"
printf '[Service]\nExecStart=/usr/bin/envelope-proxy\nNoSuchKey=1\n' >"$broken"
selftest="$(verify "$broken")"
# A here-string, not a pipe: under pipefail, `grep -q` leaving early can fail the writer.
if grep -q 'NoSuchKey' <<<"$selftest"; then
    ok "systemd-analyze verify reports a deliberately broken unit"
else
    bad "systemd-analyze verify did not flag a broken unit: this check would pass vacuously"
fi
rm -f "$broken"

# ---------------------------------------------------------------- 1. verify
paths=()
for u in "${units[@]}"; do paths+=("$root/etc/systemd/system/$u"); done
out="$(verify "${paths[@]}")"
rc=$?
ours="$(printf '%s\n' "$out" | grep -E 'envelope-proxy' || true)"
echo "== systemd-analyze verify ${units[*]} (exit $rc)"
[ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/   /'
if [ "$rc" -eq 0 ] && [ -z "$ours" ]; then
    ok "systemd-analyze verify: no warnings or errors for ${units[*]}"
else
    bad "systemd-analyze verify: problems in our units (see above)"
fi

# ---------------------------------------------------------------- 2. security
sec="$(systemd-analyze security --offline=true --no-pager --root="$root" \
    "$root/etc/systemd/system/envelope-proxy.service" 2>&1)"
rc=$?
score="$(printf '%s\n' "$sec" |
    sed -n 's/.*Overall exposure level for envelope-proxy\.service: \([0-9][0-9.]*\).*/\1/p' | tail -n1)"
echo "== systemd-analyze security --offline=true envelope-proxy.service (exit $rc)"
printf '%s\n' "$sec" | grep -E '✗|Overall' | sed 's/^/   /'
if [ -z "$score" ]; then
    printf '%s\n' "$sec" | sed 's/^/   /'
    bad "could not read the overall exposure score"
elif awk -v s="$score" -v m="$max" 'BEGIN { exit !(s + 0 <= m + 0) }'; then
    ok "exposure score $score <= $max"
else
    bad "exposure score $score > $max"
fi
echo "exposure score: ${score:-unknown}"

# ---------------------------------------------------------------- 3. env file
envfile="$here/envelope-proxy.env"
envbad="$(grep -nvE '^[[:space:]]*(#.*)?$|^[A-Za-z_][A-Za-z0-9_]*=' "$envfile" || true)"
secret="$(grep -nE '^[[:space:]]*#?[[:space:]]*[A-Z_]*(API_KEY|SECRET|TOKEN|PASSWORD)[A-Z_]*=[^[:space:]]' "$envfile" |
    grep -vE '_FILE=' || true)"
envsvc="$(grep -nE '^[[:space:]]*Environment=.*(KEY|SECRET|TOKEN|PASSWORD)' "$here/envelope-proxy.service" || true)"
if [ -z "$envbad$secret$envsvc" ]; then
    ok "envelope-proxy.env is KEY=VALUE/comments only; no secrets in env file or Environment="
else
    printf '%s\n' "$envbad" "$secret" "$envsvc" | grep . | sed 's/^/   /'
    bad "envelope-proxy.env / Environment= problems (see above)"
fi

echo "systemd: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
