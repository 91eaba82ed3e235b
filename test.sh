#!/usr/bin/env bash
# The whole test suite: unit tests (swift test) and end-to-end tests that start the built
# `sidecar` executables, the test app and real clients (curl, openssl) on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup-deps.sh
swift build --build-tests
swift test --skip-build
python3 -m pytest -q --durations=20 tests/e2e
