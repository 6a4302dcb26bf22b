#!/usr/bin/env bash
# The daily summary and the usage API on a large llm_usage_logs (issue
# #16), in one sitting on this machine:
#   1. ROWS rows (10 million) over the last 30 days, USERS users, 3 models,
#      inserted with SQL in chunks of a million (the trigger collects each
#      chunk's totals), then folded by one step;
#   2. the cost of one incremental step after NEW rows (10,000) were added,
#      against a full REFRESH MATERIALIZED VIEW CONCURRENTLY of the view the
#      summary replaces (migration 00005's definition), 5 times each,
#      medians;
#   3. /api/llm/usage/stats?days=30, for one user and for all users, p50 and
#      p99 over REQS requests each, answered by BINARY (reading whole days
#      from the summary) and by BASELINE, when given (a build that reads
#      every row: say main before the summary), on the same database.
# Usage: bench/summary.sh BINARY [BASELINE] . Environment: ROWS, USERS, NEW,
# REQS. Needs DATABASE_URL (scripts/test-env.sh sets one up).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
bin=$1
baseline=${2:-}
rows=${ROWS:-10000000}
users=${USERS:-1000}
new=${NEW:-10000}
reqs=${REQS:-200}
db="llmusage_summary_$$"
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$work"
	psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
psql -q "$DATABASE_URL" -c "CREATE DATABASE $db" >/dev/null
dburl=$(python3 -c "import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path='/$db').geturl())" "$DATABASE_URL")
"$bin" migrate --database-url "$dburl" >/dev/null
sql() { psql -X -q -tA "$dburl" -c "$1"; }
# ms SQL: the wall time of SQL in milliseconds, from psql's \timing.
ms() { psql -X -q -tA "$dburl" -c '\timing on' -c "$1" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -n 1; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "inserting $rows rows over 30 days for $users users" >&2
t0=$(date +%s.%N)
for ((off = 0; off < rows; off += 1000000)); do
	n=$((rows - off < 1000000 ? rows - off : 1000000))
	sql "INSERT INTO llm_usage_logs (request_id, user_id, provider, model, tokens_used, prompt_tokens, completion_tokens, cost_usd, created_at)
		SELECT 'b-' || i, 'user-' || (i % $users), 'openai', (ARRAY['gpt-4o', 'gpt-4o-mini', 'o3'])[1 + i % 3], 30, 20, 10, 0.000125,
		       now() - interval '30 days' + (i::float8 / $rows) * interval '30 days'
		FROM generate_series($off, $off + $n - 1) i"
done
t1=$(date +%s.%N)
first=$(ms "SELECT refresh_llm_usage_summary()")
sql "VACUUM ANALYZE llm_usage_logs, llm_usage_summary_pending, llm_usage_daily_summary"
size=$(sql "SELECT pg_size_pretty(pg_total_relation_size('llm_usage_logs'))")
groups=$(sql "SELECT count(*) FROM llm_usage_daily_summary")
python3 -c "import sys; print(f'inserted {int(sys.argv[1]):,} rows in {float(sys.argv[3])-float(sys.argv[2]):.0f} s; table {sys.argv[4]}; first step (every row pending) {float(sys.argv[5])/1000:.1f} s, {int(sys.argv[6]):,} summary rows')" \
	"$rows" "$t0" "$t1" "$size" "$first" "$groups"

# The materialized view the summary replaces, as migration 00005 made it.
sql "CREATE MATERIALIZED VIEW bench_full_summary AS
	SELECT (created_at AT TIME ZONE 'UTC')::date AS day, user_id, provider, model, count(*) AS calls,
	       count(*) FILTER (WHERE status = 'error') AS errors, sum(tokens_used)::bigint AS tokens_used,
	       sum(prompt_tokens)::bigint AS prompt_tokens, sum(completion_tokens)::bigint AS completion_tokens,
	       sum(cached_tokens)::bigint AS cached_tokens, sum(reasoning_tokens)::bigint AS reasoning_tokens,
	       sum(cost_usd) AS cost_usd, count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_calls
	FROM llm_usage_logs GROUP BY 1, 2, 3, 4"
sql "CREATE UNIQUE INDEX ON bench_full_summary (day, user_id, provider, model)"
steps=() fulls=()
for k in 1 2 3 4 5; do
	sql "INSERT INTO llm_usage_logs (request_id, user_id, provider, model, tokens_used, prompt_tokens, completion_tokens, cost_usd, created_at)
		SELECT 'n$k-' || i, 'user-' || (i % $users), 'openai', 'gpt-4o', 30, 20, 10, 0.000125, now() FROM generate_series(1, $new) i"
	steps+=("$(ms "SELECT refresh_llm_usage_summary()")")
	fulls+=("$(ms "REFRESH MATERIALIZED VIEW CONCURRENTLY bench_full_summary")")
done
step=$(printf '%s\n' "${steps[@]}" | median)
full=$(printf '%s\n' "${fulls[@]}" | median)
python3 -c "import sys; s,f=float(sys.argv[1]),float(sys.argv[2]); print(f'after {int(sys.argv[3]):,} new rows: incremental step {s:.1f} ms, full refresh {f:.0f} ms (median of 5; ratio {f/s:.0f}x)')" "$step" "$full" "$new"
sql "DROP MATERIALIZED VIEW bench_full_summary"

# stats BINARY LABEL: p50 and p99 of the usage API's stats, one user and all users.
stats() {
	local b=$1 label=$2 api metrics
	api=127.0.0.1:$(free_port)
	metrics=127.0.0.1:$(free_port)
	# No step while measuring (an environment variable, which a baseline
	# without the flag ignores).
	LLMUSAGE_SUMMARY_INTERVAL=0 "$b" serve --listen-address "$api" --metrics-address "$metrics" --data-dir "$work/data-$label" \
		--database-url "$dburl" --migrate=false >"$work/serve-$label.log" 2>&1 &
	pids+=($!)
	wait_up "http://$metrics/readyz" "${pids[-1]}"
	for q in "user_id=user-7&days=30" "days=30"; do
		local n=$reqs
		[ "$q" = days=30 ] && n=$((reqs / 10 > 5 ? reqs / 10 : 5))
		curl -s -o /dev/null "http://$api/api/llm/usage/stats?$q" # warm
		for ((i = 0; i < n; i++)); do
			curl -s -o /dev/null -w '%{time_total}\n' "http://$api/api/llm/usage/stats?$q"
		done | sort -n | awk -v label="$label" -v q="$q" '{a[NR]=$1} END {printf "%s stats?%s: p50 %.1f ms, p99 %.1f ms (%d requests)\n", label, q, a[int((NR+1)/2)]*1000, a[int(NR*0.99+0.999)]*1000, NR}'
	done
	stop_last
}
stats "$bin" summary
if [ -n "$baseline" ]; then
	stats "$baseline" baseline
fi
