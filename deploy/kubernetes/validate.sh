#!/usr/bin/env bash
# Validates every manifest in deploy/kubernetes against the Kubernetes OpenAPI schemas with
# kubernetes-validate (PyPI; it ships the schemas, so it works offline once installed):
#
#   bash deploy/kubernetes/validate.sh
#
# Installs kubernetes-validate (pinned) into deploy/kubernetes/.venv when it is missing
# (python3 -m venv; Debian: apt-get install -y python3-venv). --strict also rejects fields the
# schema does not know (a typo such as `readinesProbe` fails). Checked against the versions in
# K8S_VERSIONS. Ends with `N passed, N failed`; exits non-zero on any failure.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
version=1.37.0
k8s_versions="${K8S_VERSIONS:-1.30.0 1.33.0}"
passed=0
failed=0

if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    echo "== installing kubernetes-validate $version into $venv" >&2
    { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet "kubernetes-validate==$version"; } >&2 || {
        echo "validate.sh: cannot install kubernetes-validate" >&2
        echo "0 passed, 1 failed"
        exit 1
    }
fi

# A deliberately broken manifest first: the validator must reject it, or it checks nothing.
broken="$(mktemp "${TMPDIR:-/tmp}/envelope-proxy-k8s.XXXXXX.yaml")"
trap 'rm -f "$broken"' EXIT
printf 'apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  ports:\n    - port: "eighty"\n  selectr: {}\n' >"$broken"
if "$venv/bin/kubernetes-validate" --strict --quiet "$broken" >/dev/null 2>&1; then
    echo "FAIL: a broken manifest passed validation"
    failed=$((failed + 1))
else
    echo "PASS: a broken manifest is rejected"
    passed=$((passed + 1))
fi

for manifest in "$here"/*.yaml; do
    for k in $k8s_versions; do
        if out="$("$venv/bin/kubernetes-validate" --strict --kubernetes-version "$k" "$manifest" 2>&1)"; then
            echo "PASS: $(basename "$manifest") (Kubernetes $k, $(grep -c 'passed for resource' <<<"$out") resources)"
            passed=$((passed + 1))
        else
            echo "FAIL: $(basename "$manifest") (Kubernetes $k):"
            echo "$out"
            failed=$((failed + 1))
        fi
    done
done
echo "kubernetes: $passed passed, $failed failed"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
