#!/usr/bin/env bash
# The test command (make test): installs and starts what the tests need,
# then runs every test with the race detector.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/test-env.sh
go test -race -count=1 "$@" ./...
