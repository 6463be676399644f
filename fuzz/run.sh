#!/usr/bin/env bash
# Builds the fuzz targets with plain stable cargo (the coverage instrumentation of
# `cargo fuzz build --sanitizer none`; no cargo-fuzz install, no nightly) and runs each one
# for SECONDS against fuzz/corpus/<target> (grows, git-ignored) plus fuzz/seeds/<target>.
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]     SECONDS: default 30; 0 = build only
#
# No sanitizer: envelope-proxy's only unsafe code is in the JSON check's long texts
# (src/translate/json_check): calls into code compiled for AVX2 behind the CPU check, and vector
# loads of fixed-size blocks taken from a slice, so the findings are panics (assertions,
# overflow and debug assertions, index errors), timeouts and memory blow-ups, which libFuzzer
# reports without one. For AddressSanitizer use cargo fuzz (see docs/development.md, "Fuzzing").
#
# Exit status: 0 when every target ran clean and executed at least one input; also 0 when this
# machine cannot fuzz (a "fuzz: skipped: <why>" line says why) or SECONDS is 0, unless
# FUZZ_REQUIRED=1 (CI sets it): then each of those is a failure, since nothing was fuzzed.
# Non-zero when a target does not build, executes no input, or finds a crash, hang or OOM: the
# input is then under fuzz/artifacts/<target>/ and its log is printed. The last line is always
# "fuzz: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-30}
shift || true
[[ $seconds =~ ^[0-9]+$ ]] || { echo "fuzz: SECONDS must be a whole number, not '$seconds'" >&2; exit 2; }
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(sse_framer envelope sse_transform upstream_response json_check envelope_members)
fi

# Where fuzzing cannot happen: a pass on a developer's machine, a failure where it is required.
skip() {
  if [ "${FUZZ_REQUIRED:-0}" = 1 ]; then
    echo "fuzz: FAILED: cannot fuzz, and FUZZ_REQUIRED=1: $*"
    echo "fuzz: 0 passed, ${#targets[@]} failed"
    exit 1
  fi
  echo "fuzz: skipped: $*"
  exit 0
}

# Required fuzzing with 0 seconds fails before the build (minutes) rather than after it.
[ "$seconds" -gt 0 ] || [ "${FUZZ_REQUIRED:-0}" != 1 ] || skip "SECONDS is 0: nothing would be fuzzed"
command -v cargo >/dev/null || skip "no cargo on PATH"
host=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p') || true
[ -n "$host" ] || skip "no working rustc on PATH"
case "$host" in
  x86_64-unknown-linux-gnu | aarch64-unknown-linux-gnu | x86_64-apple-darwin | aarch64-apple-darwin) ;;
  *) skip "libFuzzer does not support the host $host" ;;
esac
# libfuzzer-sys compiles libFuzzer itself from C++ source.
command -v c++ >/dev/null || skip "no C++ compiler (c++) to build libFuzzer"

# What cargo-fuzz 0.13 passes for `--sanitizer none`; all stable rustc flags.
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table
  -Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth
  -Cllvm-args=-simplifycfg-branch-fold-threshold=0 --cfg fuzzing -Cdebug-assertions
  -Coverflow-checks"
flags=$(echo $flags)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! echo 'fn main() {}' | rustc $flags --target "$host" --emit=obj -o "$work/probe.o" - 2>"$work/probe.err"; then
  skip "this rustc cannot instrument for libFuzzer: $(grep -m1 error "$work/probe.err" || head -n1 "$work/probe.err")"
fi

# A target dir of its own, so cargo fuzz builds (other flags) and these don't evict each other.
export CARGO_TARGET_DIR=$PWD/target/stable
echo "fuzz: building ${targets[*]} ($host, stable rustc, no sanitizer)"
build_start=$SECONDS
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
RUSTFLAGS="$flags" CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
  cargo build --quiet --locked --release --target "$host" "${bins[@]}"
echo "fuzz: built in $((SECONDS - build_start)) s"
[ "$seconds" -gt 0 ] || skip "SECONDS is 0: built only, nothing fuzzed"

failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log=$work/$t.log
  rc=0
  RUST_BACKTRACE=1 "$CARGO_TARGET_DIR/$host/release/$t" -max_total_time="$seconds" -timeout=10 \
    -print_final_stats=1 -artifact_prefix="artifacts/$t/" "corpus/$t" "seeds/$t" >"$log" 2>&1 || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  corpus=$(find "corpus/$t" -type f | wc -l)
  if [ "$rc" -eq 0 ] && ! [[ "$runs" =~ ^[0-9]+$ && "$runs" -gt 0 ]]; then
    # A clean exit that executed nothing tested nothing.
    cp "$log" "artifacts/$t/fuzz.log"
    echo "fuzz: $t: FAILED: executed ${runs:-no reported} inputs (full log: fuzz/artifacts/$t/fuzz.log):"
    tail -n 20 "$log"
    failed+=("$t")
  elif [ "$rc" -eq 0 ]; then
    echo "fuzz: $t: ok, $runs runs in ${seconds} s (${rate:-?} exec/s), corpus $corpus"
  else
    cp "$log" "artifacts/$t/fuzz.log"
    echo "fuzz: $t: FAILED (exit $rc) after ${runs:-?} runs (full log: fuzz/artifacts/$t/fuzz.log):"
    sed -n '/panicked at/,/^stack backtrace/p' "$log" | grep -v '^stack backtrace' || true
    sed -n '/^SUMMARY: libFuzzer/,$p' "$log" | grep -v '^stat::' || tail -n 20 "$log"
    failed+=("$t")
  fi
done

echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}; reproduce with fuzz/target/stable/$host/release/<target> fuzz/artifacts/<target>/<file>"
  exit 1
fi
