#!/usr/bin/env bash
# Measures the sidecar against its ceilings in one run, on this machine:
#   - single-record ingest against a bare net/http server (loopback ceiling);
#   - checks: the maximum rate, then latency paced at 70% of it;
#   - batched ingest persisted to Postgres (spool on) against a raw COPY of
#     the same kind of rows into the same database.
# Usage: bench/run.sh [seconds per run, default 10] [paced check runs,
# default 3]. Needs DATABASE_URL for the Postgres part (scripts/test-env.sh
# sets one up, as make test does).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
runs=${2:-3}
dur="${secs}s"
bin=$(mktemp -d)/llmusage
go build -o "$bin" ./cmd/llmusage
work=$(mktemp -d)
pids=()
db=""
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$work"
	if [ -n "$db" ]; then psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
. bench/lib.sh

api=127.0.0.1:$(free_port)
metrics=127.0.0.1:$(free_port)
baseline=127.0.0.1:$(free_port)
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

echo "== single-record ingest, 8 connections, $dur each"
"$bin" loadgen --serve-baseline $baseline & pids+=($!)
wait_up http://$baseline/ "${pids[-1]}"
base=$("$bin" loadgen --target http://$baseline --mode record --connections 8 --duration "$dur" --json)
stop_last
echo "baseline (bare net/http): $base"

"$bin" serve --listen-address $api --metrics-address $metrics --data-dir "$work/fsync" >"$work/fsync.log" 2>&1 & pids+=($!)
wait_up http://$metrics/readyz "${pids[-1]}"
side=$("$bin" loadgen --target "http://$api" --mode record --connections 8 --duration "$dur" --json)
echo "sidecar (spool fsync, SQLite): $side"
stop_last

"$bin" serve --listen-address $api --metrics-address $metrics --data-dir "$work/memory" --durability memory >"$work/memory.log" 2>&1 & pids+=($!)
wait_up http://$metrics/readyz "${pids[-1]}"
mem=$("$bin" loadgen --target "http://$api" --mode record --connections 8 --duration "$dur" --json)
echo "sidecar (--durability=memory, SQLite): $mem"
stop_last

# Checks: the server on CPU 0, the generator on CPU 1, so that the
# latency measures the server and the path to it rather than the two
# fighting over both cores (unpinned, a bare server's p99 doubles).
echo "== checks, 100,000 users; server pinned to CPU 0, generator to CPU 1; $runs paced runs"
pin_cpus
"${on_server[@]}" "$bin" serve --listen-address $api --metrics-address $metrics --data-dir "$work/check" >"$work/check.log" 2>&1 & pids+=($!)
wait_up http://$metrics/readyz "${pids[-1]}"
check_max=$("${on_client[@]}" "$bin" loadgen --target "http://$api" --mode check --connections 8 --duration "$dur" --users 100000 --json)
echo "checks, closed loop: $check_max"
rate=$(python3 -c "print(round(0.7 * $(field "$check_max" requests_per_second)))")
# The sidecar's own view of the paced runs: its histogram before and after.
hist() { curl -s "http://$metrics/metrics" | grep '^llmusage_http_request_duration_seconds_bucket{.*handler="check"' || true; }
hist >"$work/hist.before"
check_70=()
for i in $(seq 1 "$runs"); do
	check_70+=("$("${on_client[@]}" "$bin" loadgen --target "http://$api" --mode check --connections 16 --duration "$dur" --users 100000 --rate "$rate" --json)")
	echo "checks paced at 70% ($rate/s), run $i: ${check_70[-1]}"
done
hist >"$work/hist.after"
server_p99=$(python3 - "$work/hist.before" "$work/hist.after" <<'PY'
import sys
def buckets(path):
    total = {}
    for line in open(path):
        le = line.split('le="')[1].split('"')[0]
        le = float("inf") if le == "+Inf" else float(le)
        total[le] = total.get(le, 0) + float(line.rsplit(" ", 1)[1])  # summed over codes (200 and 429)
    return total
before, after = buckets(sys.argv[1]), buckets(sys.argv[2])
diff = {le: n - before.get(le, 0) for le, n in after.items()}
count = diff[float("inf")]
print(next(le for le in sorted(diff) if diff[le] >= 0.99 * count) * 1000)
PY
)
stop_last
"${on_server[@]}" "$bin" loadgen --serve-baseline $baseline & pids+=($!)
wait_up http://$baseline/ "${pids[-1]}"
base_70=()
for i in $(seq 1 "$runs"); do
	base_70+=("$("${on_client[@]}" "$bin" loadgen --target http://$baseline --mode check --connections 16 --duration "$dur" --users 100000 --rate "$rate" --json)")
	echo "bare server paced at the same rate, run $i: ${base_70[-1]}"
done
stop_last

python3 - "$base" "$side" "$mem" "$server_p99" "${#check_70[@]}" "${check_70[@]}" "${base_70[@]}" <<'PY'
import json, statistics, sys
base, side, mem = (json.loads(a) for a in sys.argv[1:4])
server_p99, n = float(sys.argv[4]), int(sys.argv[5])
c70 = [json.loads(a) for a in sys.argv[6:6 + n]]
b70 = [json.loads(a) for a in sys.argv[6 + n:6 + 2 * n]]
med = lambda rs, k: statistics.median(r[k] for r in rs)
print(f"single-record ingest: {side['requests_per_second']:.0f}/s = {side['requests_per_second']/base['requests_per_second']:.2f} of the bare server ({base['requests_per_second']:.0f}/s); "
      f"--durability=memory {mem['requests_per_second']:.0f}/s = {mem['requests_per_second']/base['requests_per_second']:.2f}")
print(f"checks at 70% of the maximum ({med(c70, 'requests_per_second'):.0f}/s), medians of {n} runs: client p50 {med(c70, 'latency_p50_ms'):.3f} ms, "
      f"p99 {med(c70, 'latency_p99_ms'):.3f} ms (runs: {', '.join('%.3f' % r['latency_p99_ms'] for r in c70)}); "
      f"the bare server at the same rate: p99 {med(b70, 'latency_p99_ms'):.3f} ms; the sidecar's own handling (its histogram): p99 <= {server_p99:g} ms")
PY

if [ -z "${DATABASE_URL:-}" ]; then
	echo "DATABASE_URL not set: skipping the Postgres part" >&2
	exit 0
fi
echo "== batched ingest persisted to Postgres (spool on), 1000 records a request, 4 connections, $dur"
db="llmusage_bench_$$"
psql -q "$DATABASE_URL" -c "CREATE DATABASE $db" >/dev/null
dburl=$(python3 -c "import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path='/$db').geturl())" "$DATABASE_URL")
"$bin" migrate --database-url "$dburl" >/dev/null 2>&1
"$bin" serve --listen-address $api --metrics-address $metrics --data-dir "$work/pg" --database-url "$dburl" >"$work/pg.log" 2>&1 & pids+=($!)
wait_up http://$metrics/readyz "${pids[-1]}"
start=$(date +%s.%N)
batch=$("$bin" loadgen --target "http://$api" --mode batch --batch-size 1000 --connections 4 --duration "$dur" --json)
accepted=$(field "$batch" records)
# Wait on the backlog /readyz reports: polling count(*) would scan the
# table and slow the database it measures, and a scrape of /metrics with
# thousands of users' series costs the sidecar far more than a poll is
# worth (scrapes every 50 ms took 44% of its CPU in an earlier version).
while :; do
	queued=$(curl -s "http://$metrics/readyz" | sed -n 's/.*"queued_records":\([0-9]*\).*/\1/p')
	[ "$queued" = 0 ] && break
	sleep 0.05
done
end=$(date +%s.%N)
rows=$(psql -tA "$dburl" -c "SELECT count(*) FROM llm_usage_logs")
# At least what was acknowledged: requests cut off by the end of the run
# may have been stored without their answer being counted.
[ "$rows" -ge "$accepted" ] || { echo "$accepted records acknowledged, only $rows rows stored" >&2; exit 1; }
stop_last
echo "loadgen: $batch"
# The ceiling: a raw COPY of as many rows, in batches of the sidecar's
# --batch-size, into an empty table with the same schema and indexes
# (index upkeep grows with the table, so the volume must match).
batch_size=$("$bin" serve --help | sed -n 's/.*--batch-size value.*(default: \([0-9]*\)).*/\1/p')
copy=$(go test -run '^$' -bench 'PersistPostgres/raw-copy' -benchtime "$(((rows + batch_size - 1) / batch_size))x" -count 1 ./store/ -args -persist-batch "$batch_size" | awk '/raw-copy/ {for (i=1;i<=NF;i++) if ($(i+1)=="rows/s") print $i}')
python3 - "$rows" "$start" "$end" "$copy" <<'PY'
import sys
rows, start, end, copy = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rate = rows / (end - start)
print(f"batched ingest into Postgres: {rows} rows stored in {end-start:.1f}s = {rate:.0f} rows/s = {rate/copy:.2f} of a raw COPY ({copy:.0f} rows/s)")
PY
