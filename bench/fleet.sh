#!/usr/bin/env bash
# A fleet of sidecars on one Postgres (issue #16), on this machine:
#   1. N sidecars (50) with --database-max-conns 2, each driven by its own
#      loadgen at RATE batches of 100 records a second, for SECS seconds
#      (60): rows stored per second, Postgres CPU per 1,000 rows, and the
#      most connections pg_stat_activity showed;
#   2. the same load through a 2-minute outage (OUTAGE seconds) of that
#      Postgres: the time from its return until every spool is drained,
#      and whether any sidecar logged a database error meanwhile (too many
#      connections, lock timeouts, deadlocks); every accepted record must
#      be stored once.
# The Postgres is a server of the script's own (started with the machine's
# binaries as the postgres user, max_connections 150), so its outage
# touches nothing else. Usage: bench/fleet.sh [BINARY]; environment N,
# RATE, SECS, OUTAGE, DURABILITY (fsync or memory).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
n=${N:-50}
rate=${RATE:-2}
secs=${SECS:-60}
outage=${OUTAGE:-120}
durability=${DURABILITY:-fsync}
bin=${1:-}
work=$(mktemp -d)
chmod 755 "$work"
pids=()
pg=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_pg=()
[ "$(id -u)" = 0 ] && as_pg=(runuser -u postgres --)
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	"${as_pg[@]}" "$pg/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
if [ -z "$bin" ]; then
	bin=$work/llmusage
	go build -o "$bin" ./cmd/llmusage
fi

port=$(free_port)
mkdir "$work/pg" && chown postgres: "$work/pg" 2>/dev/null || true
"${as_pg[@]}" "$pg/initdb" -D "$work/pg" -U postgres --auth=trust >/dev/null
pgstart() { "${as_pg[@]}" "$pg/pg_ctl" -D "$work/pg" -l "$work/pg/log" -w -o "-p $port -k /tmp -c max_connections=150" start >/dev/null; }
pgstart
dburl="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
sql() { psql -X -q -tA "$dburl" -c "$1"; }
"$bin" migrate --database-url "$dburl" >/dev/null 2>&1

# The postmaster's CPU seconds, its children's included (live backends
# read from /proc, exited ones from the postmaster's cutime and cstime).
pg_cpu() {
	local pm
	pm=$(head -n 1 "$work/pg/postmaster.pid")
	python3 - "$pm" <<'PY'
import os, sys
pm = sys.argv[1]
hz = os.sysconf("SC_CLK_TCK")
def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()
total = 0
s = stat(pm)
total += sum(int(x) for x in s[11:15])  # utime stime cutime cstime
for pid in os.listdir("/proc"):
    if pid.isdigit() and pid != pm:
        try:
            s = stat(pid)
        except OSError:
            continue
        if s[1] == pm:
            total += int(s[11]) + int(s[12])
print(total / hz)
PY
}

echo "starting $n sidecars (--durability $durability, --database-max-conns 2)" >&2
apis=() metrics=()
for i in $(seq 1 "$n"); do
	api=127.0.0.1:$(free_port)
	met=127.0.0.1:$(free_port)
	"$bin" serve --listen-address "$api" --metrics-address "$met" --data-dir "$work/s$i" --database-url "$dburl" \
		--migrate=false --durability "$durability" --database-max-conns 2 --log-format json >"$work/s$i.log" 2>&1 &
	pids+=($!)
	apis+=("$api") metrics+=("$met")
done
for i in $(seq 0 $((n - 1))); do wait_up "http://${metrics[$i]}/readyz" "${pids[$i]}"; done
sleep 2

# load SECONDS: one loadgen per sidecar; prints the records they had accepted.
load() {
	local lp=() total=0
	for i in $(seq 0 $((n - 1))); do
		"$bin" loadgen --target "http://${apis[$i]}" --mode batch --batch-size 100 --connections 1 --rate "$rate" \
			--users 200 --duration "${1}s" --json >"$work/load$i.json" 2>/dev/null &
		lp+=($!)
	done
	wait "${lp[@]}"
	for i in $(seq 0 $((n - 1))); do
		total=$((total + $(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['records'])" "$work/load$i.json")))
	done
	echo "$total"
}
# max_conns PIDFILE: samples pg_stat_activity's client backends until PIDFILE goes.
sample_conns() {
	local max=0 c
	while [ -e "$1" ]; do
		c=$(sql "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()" 2>/dev/null || echo 0)
		[ "$c" -gt "$max" ] && max=$c
		sleep 0.5
	done
	echo "$max" >"$1.max"
}
queued() {
	local total=0 q
	for m in "${metrics[@]}"; do
		q=$(curl -s "http://$m/readyz" | sed -n 's/.*"queued_records":\([0-9]*\).*/\1/p')
		total=$((total + ${q:-0}))
	done
	echo "$total"
}
drain() { while [ "$(queued)" != 0 ]; do sleep 0.2; done; }

rows0=$(sql "SELECT count(*) FROM llm_usage_logs")
cpu0=$(pg_cpu)
touch "$work/sampling"
sample_conns "$work/sampling" &
t0=$(date +%s.%N)
accepted=$(load "$secs")
drain
t1=$(date +%s.%N)
rm "$work/sampling"
sleep 1
cpu1=$(pg_cpu)
rows1=$(sql "SELECT count(*) FROM llm_usage_logs")
python3 -c "
import sys
r0, r1, c0, c1, t0, t1, acc, conns, n = (float(x) for x in sys.argv[1:])
rows = r1 - r0
print(f'{int(n)} sidecars, {(t1 - t0):.0f} s: {int(acc):,} records accepted, {int(rows):,} rows stored = {rows / (t1 - t0):,.0f} rows/s; '
      f'Postgres CPU {c1 - c0:.1f} s = {1000 * (c1 - c0) / rows * 1000:.1f} ms per 1,000 rows; at most {int(conns)} client connections')
" "$rows0" "$rows1" "$cpu0" "$cpu1" "$t0" "$t1" "$accepted" "$(cat "$work/sampling.max")" "$n"

echo "outage: Postgres stopped for ${outage}s under the same load" >&2
before=$rows1
load $((outage + 5)) >"$work/outage-accepted" &
loader=$!
sleep 5
"${as_pg[@]}" "$pg/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null
sleep "$outage"
backlog=$(queued)
pgstart
tback=$(date +%s.%N)
touch "$work/sampling"
sample_conns "$work/sampling" &
wait "$loader"
drain
tdone=$(date +%s.%N)
rm "$work/sampling"
sleep 1
after=$(sql "SELECT count(*) FROM llm_usage_logs")
dups=$(sql "SELECT count(*) - count(DISTINCT request_id) FROM llm_usage_logs")
errors=$(cat "$work"/s*.log | grep -ciE 'too many (clients|connections)|lock timeout|deadlock|remaining connection slots' || true)
python3 -c "
import sys
backlog, tb, td, acc, stored, dups, errors, conns = sys.argv[1:9]
print(f'after {sys.argv[9]} s down: {int(backlog):,} records queued at the return; drained {float(td) - float(tb):.1f} s after it; '
      f'{int(acc):,} accepted, {int(stored):,} stored, {dups} duplicates; '
      f'{errors} log lines of connection-limit, lock-timeout or deadlock errors; at most {conns} client connections while draining')
" "$backlog" "$tback" "$tdone" "$(cat "$work/outage-accepted")" "$((after - before))" "$dups" "$errors" "$(cat "$work/sampling.max")" "$outage"
