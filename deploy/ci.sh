#!/usr/bin/env bash
# CI (one step of .ci/run): the three ways to ship envelope-proxy, for real.
#
#  1. the Debian package (deploy/debian/build.sh, lintian) installed and driven under a real
#     systemd booted as PID 1 in fresh namespaces (deploy/systemd/integration.sh);
#  2. the OCI image (deploy/container/build.sh) run by podman (deploy/container/integration.sh);
#  3. the Kubernetes manifests against the schemas (deploy/kubernetes/validate.sh).
#
# Installs what is missing (Debian packages: podman runc lintian curl jq python3-venv
# ca-certificates; cargo-deb from crates.io), bounds every step with `timeout`, and ends with
# the total `N passed, N failed`; exits non-zero on any failure. Run as root.
# Reuses target/release/envelope-proxy and examples/mock-upstream when up to date (the client
# conformance step builds them); the image needs one more (static) release build.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

total_passed=0
total_failed=0
# Runs a script bounded by $1 seconds; adds its closing `N passed, N failed` to the total.
run() {
    local seconds="$1" name="$2"
    shift 2
    echo "-- $name"
    local log
    log="$(mktemp "${TMPDIR:-/tmp}/envelope-proxy-ci.XXXXXX")"
    timeout --kill-after=30 "$seconds" "$@" 2>&1 | tee "$log"
    local status="${PIPESTATUS[0]}" last
    last="$(tail -n 1 "$log")"
    rm -f "$log"
    if [[ "$last" =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
        total_passed=$((total_passed + BASH_REMATCH[1]))
        total_failed=$((total_failed + BASH_REMATCH[2]))
        [ "$status" = 0 ] || [ "${BASH_REMATCH[2]}" != 0 ] || total_failed=$((total_failed + 1))
    else
        echo "FAIL: $name ended without a result line (exit status $status; 124: timed out)"
        total_failed=$((total_failed + 1))
    fi
}
step_started=$SECONDS
took() { echo "   ($(($SECONDS - step_started)) s)"; step_started=$SECONDS; }

missing=()
for pair in podman:podman runc:runc lintian:lintian curl:curl jq:jq update-ca-certificates:ca-certificates; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "-- apt-get install ${missing[*]}"
    timeout 600 sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${missing[*]} >/dev/null" ||
        { echo "FAIL: apt-get install ${missing[*]}"; echo "0 passed, 1 failed"; exit 1; }
    took
fi
if ! cargo deb --version >/dev/null 2>&1; then
    echo "-- cargo install cargo-deb"
    timeout 900 cargo install cargo-deb --locked --version 3.8.0 --quiet ||
        { echo "FAIL: cargo install cargo-deb"; echo "0 passed, 1 failed"; exit 1; }
    took
fi

echo "-- deploy/debian/build.sh"
if deb="$(timeout 900 bash deploy/debian/build.sh | tail -n 1)" && [ -f "$deb" ]; then
    echo "   $deb"
    took
    run 600 "deploy/systemd/integration.sh (the package under systemd)" bash deploy/systemd/integration.sh "$deb"
else
    echo "FAIL: deploy/debian/build.sh"
    total_failed=$((total_failed + 1))
fi
took

echo "-- deploy/container/build.sh"
if image="$(timeout 1200 bash deploy/container/build.sh | tail -n 1)" && [ -n "$image" ]; then
    echo "   $image"
    took
    run 300 "deploy/container/integration.sh (the image under podman)" bash deploy/container/integration.sh "$image"
else
    echo "FAIL: deploy/container/build.sh"
    total_failed=$((total_failed + 1))
fi
took

run 300 "deploy/kubernetes/validate.sh (manifests against the schemas)" bash deploy/kubernetes/validate.sh
took

echo "deployment: $total_passed passed, $total_failed failed"
echo "$total_passed passed, $total_failed failed"
[ "$total_failed" = 0 ]
