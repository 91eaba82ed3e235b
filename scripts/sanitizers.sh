#!/usr/bin/env bash
# Runs the test suites against AddressSanitizer builds (issue: hardening): the unit tests with
# `swift test --sanitize=address`, and the end-to-end tests against sidecar/meshd/meshctl built
# with -sanitize=address (in .build-asan). Any AddressSanitizer report fails the run. Leak
# detection is off by default (the e2e processes are killed at teardown; the test harness itself
# holds memory at exit); set
# ASAN_OPTIONS yourself to change that. Bounded by the suites' own timeouts.
#
#   scripts/sanitizers.sh [pytest args...]     e.g. scripts/sanitizers.sh -k "not renewals"
set -euo pipefail
cd "$(dirname "$0")/.."
echo "sanitizers: unit tests under AddressSanitizer"
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}" swift test --sanitize=address --build-path .build-asan-tests 2>&1 | grep -E "Executed [0-9]+ tests|error:|AddressSanitizer" | tail -3
echo "sanitizers: building sidecar, meshd and meshctl with AddressSanitizer"
swift build --sanitize=address --build-path .build-asan 2>&1 | tail -1
export SIDECAR_BIN="$PWD/.build-asan/debug/sidecar"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}"
start=$(date +%s)
status=0
python3 -m pytest -q tests/e2e "$@" --basetemp=.build-asan/pytest || status=$?
if grep -rl "AddressSanitizer" .build-asan/pytest 2>/dev/null | head -5 | grep -q .; then
    echo "sanitizers: AddressSanitizer reports in:"; grep -rl "AddressSanitizer" .build-asan/pytest | head -20
    status=1
fi
echo "sanitizers: e2e under AddressSanitizer finished in $(( $(date +%s) - start )) s with status $status"
exit $status
