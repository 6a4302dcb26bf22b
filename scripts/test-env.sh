# Sourced by test.sh and bench.sh: installs and starts what the tests and
# benchmarks need (promtool, PostgreSQL, PgBouncer, etcd, kube-apiserver,
# helm) and exports DATABASE_URL, PGBOUNCER_URL (a PgBouncer in
# transaction mode in front of it) and LLMUSAGE_TEST_REQUIRE_POSTGRES=1,
# under which a missing Postgres or PgBouncer fails the tests instead of
# skipping them; KUBE_APISERVER and LLMUSAGE_TEST_REQUIRE_KUBE=1 likewise
# for internal/kubetest's API server; LLMUSAGE_HELM (the helm CLI of
# scripts/helm.sh, for the chart's tests).
./scripts/test-deps.sh
LLMUSAGE_HELM=$(./scripts/helm.sh)
export LLMUSAGE_HELM
if [ -z "${DATABASE_URL:-}" ] && [ "$(id -u)" = 0 ]; then
	# As root the tests cannot initdb a throwaway server: use the machine's.
	DATABASE_URL=$(./scripts/start-postgres.sh)
	export DATABASE_URL
fi
if [ -n "${DATABASE_URL:-}" ] && [ -z "${PGBOUNCER_URL:-}" ]; then
	PGBOUNCER_URL=$(./scripts/start-pgbouncer.sh)
	export PGBOUNCER_URL
fi
export LLMUSAGE_TEST_REQUIRE_POSTGRES=1
# internal/kubetest's API server: kube-apiserver is built from the Go module
# proxy once per machine (about 6 minutes on 2 cores, then cached in
# ~/.cache/llmusage), the Prometheus Operator CRDs generated once (under a
# minute); both print a line to stderr when they do the work.
KUBE_APISERVER=$(./scripts/kube-apiserver.sh)
export KUBE_APISERVER
./scripts/prometheus-operator-crds.sh >/dev/null
export LLMUSAGE_TEST_REQUIRE_KUBE=1
