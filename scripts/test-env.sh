# Sourced by test.sh and bench.sh: installs and starts what the tests and
# benchmarks need (promtool, PostgreSQL) and exports DATABASE_URL and
# LLMUSAGE_TEST_REQUIRE_POSTGRES=1, under which a missing Postgres fails
# the tests instead of skipping them.
./scripts/test-deps.sh
if [ -z "${DATABASE_URL:-}" ] && [ "$(id -u)" = 0 ]; then
	# As root the tests cannot initdb a throwaway server: use the machine's.
	DATABASE_URL=$(./scripts/start-postgres.sh)
	export DATABASE_URL
fi
export LLMUSAGE_TEST_REQUIRE_POSTGRES=1
