#!/usr/bin/env bash
# Checks on local buckets against checks on Redis, in one run, on this
# machine: for each backend the maximum rate (closed loop), then latency
# paced at 5,000 checks/s (3 runs, medians), CPU per check of the sidecar
# (and of Redis), Redis commands per check, and Redis memory per active
# user. The sidecar runs on CPU 0; the load generator and Redis share CPU 1.
# Usage: bench/redis.sh [seconds per run, default 10] [paced runs, default 3]
# [users, default 10000]. Needs redis-server (scripts/test-deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
runs=${2:-3}
users=${3:-10000}
dur="${secs}s"
rate=5000
bin=$(mktemp -d)/llmusage
go build -o "$bin" ./cmd/llmusage
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT
. bench/lib.sh

pin_cpus

redis_port=$(free_port)
"${on_client[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 & pids+=($!)
redis_pid=${pids[-1]}
for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
rcli() { redis-cli -p "$redis_port" "$@"; }
evals() { rcli info commandstats | sed -n 's/^cmdstat_\(evalsha\|eval\):calls=\([0-9]*\).*/\2/p' | awk '{s += $1} END {print s + 0}'; }
commands() { rcli info stats | sed -n 's/^total_commands_processed:\([0-9]*\).*/\1/p' | tr -d '\r'; }

results=()
for backend in local redis; do
	api=127.0.0.1:$(free_port)
	metrics=127.0.0.1:$(free_port)
	flags=()
	[ "$backend" = redis ] && flags=(--redis-url "redis://127.0.0.1:$redis_port/0")
	rcli flushall >/dev/null
	# The limits file's default rules (30 a minute, 14,400 a day): two
	# buckets per user, as on a fresh install.
	"${on_server[@]}" "$bin" serve --listen-address "$api" --metrics-address "$metrics" --data-dir "$work/$backend" \
		--limits-file deploy/kubernetes/limits.yaml "${flags[@]}" >"$work/$backend.log" 2>&1 & pids+=($!)
	pid=${pids[-1]}
	wait_up "http://$metrics/readyz" "$pid"
	mem0=$(rcli info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p' | tr -d '\r')
	max=$("${on_client[@]}" "$bin" loadgen --target "http://$api" --mode check --connections 8 --duration "$dur" --users "$users" --json)
	echo "$backend, closed loop: $max"
	keys=$(rcli dbsize | tr -d '\r')
	mem1=$(rcli info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p' | tr -d '\r')
	paced=()
	c0=$(cpu "$pid"); r0=$(cpu "$redis_pid"); e0=$(evals); k0=$(commands)
	for i in $(seq 1 "$runs"); do
		paced+=("$("${on_client[@]}" "$bin" loadgen --target "http://$api" --mode check --connections 16 --duration "$dur" --users "$users" --rate "$rate" --json)")
		echo "$backend, paced at $rate/s, run $i: ${paced[-1]}"
	done
	c1=$(cpu "$pid"); r1=$(cpu "$redis_pid"); e1=$(evals); k1=$(commands)
	stop_last
	results+=("$(python3 - "$backend" "$max" "$c0" "$c1" "$r0" "$r1" "$e0" "$e1" "$k0" "$k1" "$keys" "$mem0" "$mem1" "$users" "${paced[@]}" <<'PY'
import json, statistics, sys
backend, mx = sys.argv[1], json.loads(sys.argv[2])
c0, c1, r0, r1 = map(float, sys.argv[3:7])
e0, e1, k0, k1, keys, mem0, mem1, users = map(int, sys.argv[7:15])
paced = [json.loads(a) for a in sys.argv[15:]]
checks = sum(r["requests"] for r in paced)
med = lambda k: statistics.median(r[k] for r in paced)
out = {"backend": backend, "closed_loop_per_second": round(mx["requests_per_second"]), "closed_loop_p50_ms": mx["latency_p50_ms"], "closed_loop_p99_ms": mx["latency_p99_ms"],
       "paced_per_second": round(med("requests_per_second")), "paced_p50_ms": med("latency_p50_ms"), "paced_p99_ms": med("latency_p99_ms"),
       "paced_p99_runs_ms": [r["latency_p99_ms"] for r in paced],
       "sidecar_cpu_us_per_check": round((c1 - c0) / checks * 1e6, 1)}
if backend == "redis":
    out.update({"redis_cpu_us_per_check": round((r1 - r0) / checks * 1e6, 1), "redis_scripts_per_check": round((e1 - e0) / checks, 3),
                "redis_commands_per_check": round((k1 - k0) / checks, 3), "redis_keys": keys,
                "redis_bytes_per_active_user": round((mem1 - mem0) / users)})
print(json.dumps(out))
PY
)")
done
echo "== results"
printf '%s\n' "${results[@]}"
python3 - "${results[@]}" <<'PY'
import json, sys
local, redis = (json.loads(a) for a in sys.argv[1:3])
print(f"paced at {redis['paced_per_second']}/s, medians: local p50 {local['paced_p50_ms']:.3f} ms p99 {local['paced_p99_ms']:.3f} ms; "
      f"Redis p50 {redis['paced_p50_ms']:.3f} ms p99 {redis['paced_p99_ms']:.3f} ms ({redis['paced_p99_ms'] / local['paced_p99_ms']:.2f}x); "
      f"closed loop: local {local['closed_loop_per_second']}/s, Redis {redis['closed_loop_per_second']}/s ({redis['closed_loop_per_second'] / local['closed_loop_per_second']:.2f}x); "
      f"sidecar CPU per check {local['sidecar_cpu_us_per_check']} vs {redis['sidecar_cpu_us_per_check']} us (+ Redis {redis['redis_cpu_us_per_check']} us); "
      f"{redis['redis_scripts_per_check']} scripts and {redis['redis_commands_per_check']} commands per check; {redis['redis_bytes_per_active_user']} bytes of Redis per active user")
PY
