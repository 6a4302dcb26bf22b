#!/usr/bin/env bash
# The shared check's cost: two builds of the sidecar (a baseline commit's
# and this tree's) on Redis, in alternating rounds of the same run, for
# checks over one bucket and over a user bucket, a pool bucket and a
# budget. Per round, on a fresh sidecar and an empty Redis: a warm-up
# (closed loop, discarded, until 110,000 checks: it fills the sidecar's
# room for 100,000 holds, as the load generator sends no records, so that
# every measured check takes the same path, without a hold), a closed-loop run (16 connections) and a run paced at
# --rate checks/s (RATE, default 2,000); for each, checks/s, sidecar and Redis CPU per check
# (user + system time from /proc/PID/stat over the run, divided by the
# checks), scripts and commands per check (INFO commandstats, INFO
# stats). The sidecar runs on CPU 0; the load generator and Redis share
# CPU 1.
# HOLDS=1: every measured check takes a hold (the common case in
# production, where each check's record follows it): each run gets a
# fresh sidecar and an empty Redis, a warm-up of 1 s only, and the run
# must stay under the sidecar's 100,000 holds (keep the seconds per run
# at 5 or fewer under the closed loop of this host); "holds" reports the
# index's SADDs per check (1 when every check took one).
# Usage: [HOLDS=1] bench/redis-cost.sh BASE_COMMIT [seconds per run, default 10]
# [rounds, default 3] [users, default 10000].
set -euo pipefail
cd "$(dirname "$0")/.."
base=$1
secs=${2:-10}
rounds=${3:-3}
users=${4:-10000}
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT
. bench/lib.sh
mkdir "$work/base-src"
git archive "$base" | tar -x -C "$work/base-src"
(cd "$work/base-src" && go build -o "$work/base" ./cmd/llmusage)
go build -o "$work/new" ./cmd/llmusage

pin_cpus
redis_port=$(free_port)
"${on_client[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 & pids+=($!)
redis_pid=${pids[-1]}
for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
rcli() { redis-cli -p "$redis_port" "$@"; }
evals() { rcli info commandstats | sed -n 's/^cmdstat_\(evalsha\|eval\):calls=\([0-9]*\).*/\2/p' | awk '{s += $1} END {print s + 0}'; }
sadds() { rcli info commandstats | sed -n 's/^cmdstat_sadd:calls=\([0-9]*\).*/\1/p' | awk '{s += $1} END {print s + 0}'; }
commands() { rcli info stats | sed -n 's/^total_commands_processed:\([0-9]*\).*/\1/p' | tr -d '\r'; }

# One bucket a check: each user's requests a minute, high enough that
# checks are allowed (an allowed check writes its buckets).
cat >"$work/one.yaml" <<'YAML'
limits:
  - limit_type: minute
    requests: 1000000
YAML
# A user bucket, a pool (all users) and the user's budget: two script
# calls a check, one for the user's bucket and budget, one for the pool.
cat >"$work/three.yaml" <<'YAML'
limits:
  - limit_type: minute
    requests: 1000000
  - limit_type: minute
    requests: 1000000000
    per: all
  - limit_type: month
    usd: 1000000
YAML

# start BIN LIMITS: a fresh sidecar on an empty Redis, warmed up; sets
# api and pid.
start() {
	local bin=$1 limits=$2
	api=127.0.0.1:$(free_port)
	local metrics=127.0.0.1:$(free_port)
	rcli flushall >/dev/null
	rm -rf "$work/data"
	"${on_server[@]}" "$work/$bin" serve --listen-address "$api" --metrics-address "$metrics" --data-dir "$work/data" \
		--limits-file "$work/$limits.yaml" --budget-unpriced allow --redis-url "redis://127.0.0.1:$redis_port/0" >"$work/$bin.log" 2>&1 & pids+=($!)
	pid=${pids[-1]}
	wait_up "http://$metrics/readyz" "$pid"
	local warm=0 until=110000 chunk=5s
	[ -n "${HOLDS:-}" ] && until=1 chunk=1s
	while [ "$warm" -lt "$until" ]; do
		warm=$((warm + $("${on_client[@]}" "$work/new" loadgen --target "http://$api" --mode check --connections 16 --duration "$chunk" --users "$users" --json |
			python3 -c 'import json, sys; print(json.load(sys.stdin)["requests"])')))
	done
}

# measure BIN LIMITS ROUND: prints one JSON line per run of the round.
measure() {
	local bin=$1 limits=$2 round=$3
	local api pid
	[ -z "${HOLDS:-}" ] && start "$bin" "$limits"
	for kind in closed paced; do
		if [ -n "${HOLDS:-}" ]; then
			[ "$kind" = paced ] && stop_last
			start "$bin" "$limits"
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "$bin sidecar exited (round $round, $limits); its log ends:" >&2
			tail -20 "$work/$bin.log" >&2
			return
		fi
		local rate=()
		[ "$kind" = paced ] && rate=(--rate "${RATE:-2000}")
		local c0 r0 e0 k0 s0 out c1 r1 e1 k1 s1
		c0=$(cpu "$pid"); r0=$(cpu "$redis_pid"); e0=$(evals); k0=$(commands); s0=$(sadds)
		out=$("${on_client[@]}" "$work/new" loadgen --target "http://$api" --mode check --connections 16 --duration "${secs}s" --users "$users" "${rate[@]}" --json)
		c1=$(cpu "$pid"); r1=$(cpu "$redis_pid"); e1=$(evals); k1=$(commands); s1=$(sadds)
		python3 - "$bin" "$limits" "$kind" "$round" "$out" "$c0" "$c1" "$r0" "$r1" "$e0" "$e1" "$k0" "$k1" "$s0" "$s1" <<'PY'
import json, sys
bin, limits, kind, rnd, out = sys.argv[1:6]
out = json.loads(out)
c0, c1, r0, r1 = map(float, sys.argv[6:10])
e0, e1, k0, k1, s0, s1 = map(int, sys.argv[10:16])
n = out["requests"]
print(json.dumps({"bin": bin, "limits": limits, "kind": kind, "round": int(rnd), "per_second": round(out["requests_per_second"]),
    "p50_ms": out["latency_p50_ms"], "p99_ms": out["latency_p99_ms"], "sidecar_cpu_us": round((c1 - c0) / n * 1e6, 1),
    "redis_cpu_us": round((r1 - r0) / n * 1e6, 1), "scripts": round((e1 - e0) / n, 3), "commands": round((k1 - k0) / n, 2), "holds": round((s1 - s0) / n, 3)}))
PY
	done
	stop_last
	grep -i "error\|cannot" "$work/$bin.log" | head -3 >&2 || true
}

results=()
for round in $(seq 1 "$rounds"); do
	for limits in one three; do
		for bin in base new; do
			while read -r line; do
				echo "$line"
				results+=("$line")
			done < <(measure "$bin" "$limits" "$round")
		done
	done
done
echo "== medians over $rounds rounds (base $base, new $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes'))"
python3 - "${results[@]}" <<'PY'
import json, statistics, sys
rows = [json.loads(a) for a in sys.argv[1:]]
keys = ["per_second", "p50_ms", "p99_ms", "sidecar_cpu_us", "redis_cpu_us", "scripts", "commands", "holds"]
for limits in ("one", "three"):
    for kind in ("closed", "paced"):
        for bin in ("base", "new"):
            rs = [r for r in rows if r["limits"] == limits and r["kind"] == kind and r["bin"] == bin]
            med = {k: statistics.median(r[k] for r in rs) for k in keys}
            print(f"{limits:5} {kind:6} {bin:4} " + " ".join(f"{k}={med[k]:g}" for k in keys))
PY
