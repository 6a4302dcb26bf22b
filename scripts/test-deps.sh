#!/usr/bin/env bash
# Installs what the tests need beyond Go modules, on Debian or Ubuntu:
# promtool and prometheus (package prometheus) to lint /metrics and answer
# the dashboards' queries, redis-server and redis-cli (package
# redis-server) for the quota backend, pgbouncer for the tests through a
# transaction pooler, python3 with pip (python3-pip) for the Python
# client's tests, which install it as a new user would, etcd (package
# etcd-server, 3.4) under internal/kubetest's API server; and helm
# (scripts/helm.sh builds it once into the user's cache) for the chart's
# tests; wrk for bench/peer.sh (make bench). Idempotent.
set -euo pipefail

as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing Debian packages ${missing[*]}" >&2
	as_root apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
promtool --version 2>&1 | head -n 1 >&2
redis-server --version >&2
etcd --version | head -n 1 >&2
./scripts/helm.sh >/dev/null
