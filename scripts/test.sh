#!/usr/bin/env bash
# The test command: installs and starts what the tests need (promtool,
# PostgreSQL), then runs every test with the race detector. Tests that need
# Postgres fail rather than skip here (LLMUSAGE_TEST_REQUIRE_POSTGRES=1).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/test-deps.sh
if [ -z "${DATABASE_URL:-}" ] && [ "$(id -u)" = 0 ]; then
	# As root the tests cannot initdb a throwaway server: use the machine's.
	DATABASE_URL=$(./scripts/start-postgres.sh)
	export DATABASE_URL
fi
export LLMUSAGE_TEST_REQUIRE_POSTGRES=1
go test -race -count=1 "$@" ./...
