#!/usr/bin/env bash
# make bench: every benchmark once, briefly, so that none of them rots. No
# figure is asserted; docs/benchmarks.md gives the commands for real runs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/test-env.sh
go test -run '^$' -bench . -benchtime 20x -count 1 "$@" ./...
