#!/usr/bin/env bash
# make bench: every benchmark once, briefly, so that none of them rots. No
# figure is asserted; docs/benchmarks.md gives the commands for real runs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/test-env.sh
go test -run '^$' -bench . -benchtime 20x -count 1 "$@" ./...
# The side-by-side script, one short round (no ratelimit: it is not ours
# to build).
bench/peer.sh 1 1 1000 >/dev/null
