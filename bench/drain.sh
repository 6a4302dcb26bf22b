#!/usr/bin/env bash
# Rows per second a sidecar drains into Postgres: 4 connections post
# 1,000-record batches for SECONDS, then the backlog is waited out
# (/readyz queued_records); rows stored over the whole time. Run two
# builds alternately to compare them in one sitting:
#   bench/drain.sh /tmp/old/llmusage; bench/drain.sh /tmp/new/llmusage; ...
# Usage: bench/drain.sh BINARY [SECONDS, default 10]. Needs DATABASE_URL
# (scripts/test-env.sh sets one up, as make test does).
set -euo pipefail
bin=$1
secs=${2:-10}
api=127.0.0.1:9870
metrics=127.0.0.1:9871
db="llmusage_drain_$$"
work=$(mktemp -d)
pid=""
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null || true
	rm -rf "$work"
	psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
psql -q "$DATABASE_URL" -c "CREATE DATABASE $db" >/dev/null
dburl=$(python3 -c "import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path='/$db').geturl())" "$DATABASE_URL")
"$bin" migrate --database-url "$dburl" >/dev/null 2>&1
"$bin" serve --listen-address $api --metrics-address $metrics --data-dir "$work/data" --database-url "$dburl" >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -sf "http://$metrics/readyz" >/dev/null && break; sleep 0.1; done
start=$(date +%s.%N)
"$bin" loadgen --target "http://$api" --mode batch --batch-size 1000 --connections 4 --duration "${secs}s" --json >/dev/null
while :; do
	queued=$(curl -s "http://$metrics/readyz" | sed -n 's/.*"queued_records":\([0-9]*\).*/\1/p')
	[ "$queued" = 0 ] && break
	sleep 0.05
done
end=$(date +%s.%N)
rows=$(psql -tA "$dburl" -c "SELECT count(*) FROM llm_usage_logs")
python3 -c "import sys; r=int(sys.argv[1]); print(f'{sys.argv[2]}: {r} rows in {float(sys.argv[4])-float(sys.argv[3]):.1f}s = {r/(float(sys.argv[4])-float(sys.argv[3])):.0f} rows/s')" "$rows" "$bin" "$start" "$end"
