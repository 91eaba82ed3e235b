#!/usr/bin/env bash
# The whole mesh on this machine, in one command: installs what is missing, builds release
# binaries, and runs `meshctl demo` (meshd, two versions of a sample app and a caller, each
# with its sidecar, and a canary walked from 100/0 to 0/100 with live per-version figures).
#
#   ./run-demo.sh                  about a minute, then everything stops
#   ./run-demo.sh --keep-running   leaves the mesh up and prints how to reach it (Ctrl-C stops)
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup-deps.sh
echo "run-demo: building (release)..."
swift build -c release --static-swift-stdlib 2>&1 | tail -1
exec .build/release/meshctl demo "$@"
