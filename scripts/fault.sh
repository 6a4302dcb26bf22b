#!/usr/bin/env bash
# make fault: the fault-injection suite (the accounting oracle of budgets
# and limits under Redis, sidecar and Postgres faults; kill -9 and a Postgres outage
# under load, a full spool, a flood of 1,000,000 users). It starts
# Postgres servers of its own, which it stops and starts.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/test-env.sh
go test -tags fault -count=1 -v -timeout 30m "$@" ./test/fault/
