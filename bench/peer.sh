#!/usr/bin/env bash
# Quota checks side by side, in one run, on this machine: a bare net/http
# handler (the ceiling: reads the body, answers 202), the sidecar on local
# buckets, the sidecar on Redis, and, when given, a running
# envoyproxy/ratelimit on the same Redis. Every server gets the same
# load in alternating rounds (medians of the rounds): wrk -t1 closed loop
# at 2 connections (low load) and at 16 (high load), each check a JSON
# POST whose user cycles over the users. One rule per user, a minute
# limit no run reaches (1,000,000,000), so that every check is answered
# "allowed" and every server does the same work. The servers run on CPU
# 0; wrk and Redis share CPU 1.
#
# Usage: bench/peer.sh [seconds per run, default 10] [rounds, default 3]
# [users, default 10000]. Needs redis-server and wrk (scripts/test-deps.sh
# installs both).
#
# Environment, all optional:
#   REDIS_ADDR, REDIS_PID   use this running redis-server (host:port, its
#                           process id for its CPU) instead of starting one.
#   RATELIMIT_URL, RATELIMIT_PID
#                           a running envoyproxy/ratelimit's /json endpoint
#                           (http://host:port/json) and its process id, on
#                           REDIS_ADDR, configured with domain "bench" and
#                           this descriptor (RUNTIME_ROOT/.../config/bench.yaml):
#                             domain: bench
#                             descriptors:
#                               - key: user_id
#                                 rate_limit: {unit: minute, requests_per_unit: 1000000000}
# It prints one JSON object per run, then a markdown table of the
# medians.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-3}
users=${3:-10000}
for c in wrk redis-cli python3; do
	command -v "$c" >/dev/null || { echo "cannot run: $c is missing (scripts/test-deps.sh installs it)" >&2; exit 1; }
done
if [ -n "${RATELIMIT_URL:-}" ] && { [ -z "${RATELIMIT_PID:-}" ] || [ -z "${REDIS_ADDR:-}" ]; }; then
	echo "cannot measure ratelimit: RATELIMIT_URL needs RATELIMIT_PID and REDIS_ADDR (the Redis it uses)" >&2
	exit 1
fi
if [ -n "${REDIS_ADDR:-}" ] && [ -z "${REDIS_PID:-}" ]; then
	echo "cannot read Redis's CPU: REDIS_ADDR needs REDIS_PID" >&2
	exit 1
fi
work=$(mktemp -d)
bin=$work/llmusage
go build -o "$bin" ./cmd/llmusage
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=bench/lib.sh
. bench/lib.sh

pin_cpus

if [ -n "${REDIS_ADDR:-}" ]; then
	redis_host=${REDIS_ADDR%:*}
	redis_port=${REDIS_ADDR##*:}
	redis_pid=$REDIS_PID
else
	redis_host=127.0.0.1
	redis_port=$(free_port)
	"${on_client[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
	pids+=($!)
	redis_pid=${pids[-1]}
fi
rcli() { redis-cli -h "$redis_host" -p "$redis_port" "$@"; }
for _ in $(seq 1 50); do rcli ping >/dev/null 2>&1 && break; sleep 0.1; done
rcli ping >/dev/null
# commandstats: every command Redis ran so far, as "name=calls ..." (the
# INFO and PING of this script left out).
commandstats() { rcli info commandstats | tr -d '\r' | sed -n 's/^cmdstat_\([a-z|]*\):calls=\([0-9]*\).*/\1=\2/p' | grep -v '^\(info\|ping\)=' | tr '\n' ' '; }

cat >"$work/limits.yaml" <<'EOF'
limits:
  - limit_type: minute
    requests: 1000000000
EOF
names=(baseline local redis)
declare -A url pid fmt
api=127.0.0.1:$(free_port)
"${on_server[@]}" "$bin" loadgen --serve-baseline "$api" &
pids+=($!)
url[baseline]=http://$api/v1/check pid[baseline]=${pids[-1]} fmt[baseline]=llmusage
wait_up "http://$api/" "${pid[baseline]}"
for backend in local redis; do
	api=127.0.0.1:$(free_port)
	metrics=127.0.0.1:$(free_port)
	flags=()
	[ "$backend" = redis ] && flags=(--redis-url "redis://$redis_host:$redis_port/0")
	"${on_server[@]}" "$bin" serve --listen-address "$api" --metrics-address "$metrics" --data-dir "$work/$backend" \
		--limits-file "$work/limits.yaml" "${flags[@]}" >"$work/$backend.log" 2>&1 &
	pids+=($!)
	url[$backend]=http://$api/v1/check pid[$backend]=${pids[-1]} fmt[$backend]=llmusage
	wait_up "http://$metrics/readyz" "${pid[$backend]}"
done
if [ -n "${RATELIMIT_URL:-}" ]; then
	names+=(ratelimit)
	url[ratelimit]=$RATELIMIT_URL pid[ratelimit]=$RATELIMIT_PID fmt[ratelimit]=ratelimit
	kill -0 "$RATELIMIT_PID" || { echo "cannot find ratelimit's process $RATELIMIT_PID" >&2; exit 1; }
fi

# load NAME CONNECTIONS SECONDS: one wrk run against NAME, as JSON.
load() {
	"${on_client[@]}" wrk -t1 -c"$2" -d"$3s" -s bench/peer.lua "${url[$1]}" -- "${fmt[$1]}" "$users" | tail -n 1
}
for name in "${names[@]}"; do
	# Warm up: connections to Redis, first buckets, the Go runtime's heap.
	load "$name" 16 1 >/dev/null
done
echo "load average before: $(cut -d ' ' -f 1-3 /proc/loadavg)" >&2
runs=()
for round in $(seq 1 "$rounds"); do
	for name in "${names[@]}"; do
		c0=$(cpu "${pid[$name]}") r0=$(cpu "$redis_pid") s0=$(commandstats)
		low=$(load "$name" 2 "$secs")
		high=$(load "$name" 16 "$secs")
		c1=$(cpu "${pid[$name]}") r1=$(cpu "$redis_pid") s1=$(commandstats)
		runs+=("$(python3 - "$name" "$round" "$low" "$high" "$c0" "$c1" "$r0" "$r1" "$s0" "$s1" <<'PY'
import json, sys
name, rnd, low, high = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
c0, c1, r0, r1 = map(float, sys.argv[5:9])
stats = [dict((kv.split("=")[0], int(kv.split("=")[1])) for kv in a.split()) for a in sys.argv[9:11]]
checks = low["requests"] + high["requests"]
delta = {k: v - stats[0].get(k, 0) for k, v in stats[1].items() if v > stats[0].get(k, 0)}
print(json.dumps({"server": name, "round": rnd, "low": low, "high": high,
    "per_second": high["requests"] / high["duration_us"] * 1e6,
    "server_cpu_us": (c1 - c0) / checks * 1e6, "redis_cpu_us": (r1 - r0) / checks * 1e6,
    "redis_commands": {k: v / checks for k, v in sorted(delta.items())},
    "refused_or_failed": low["non_2xx"] + high["non_2xx"] + low["socket_errors"] + high["socket_errors"]}))
PY
)")
		echo "${runs[-1]}"
	done
done
echo "load average after: $(cut -d ' ' -f 1-3 /proc/loadavg)" >&2
python3 - "${names[@]}" -- "${runs[@]}" <<'PY'
import json, statistics, sys
i = sys.argv.index("--")
names, runs = sys.argv[1:i], [json.loads(a) for a in sys.argv[i + 1:]]
label = {"baseline": "net/http baseline", "local": "llmusage, local buckets", "redis": "llmusage, Redis", "ratelimit": "envoyproxy/ratelimit"}
by = {n: [r for r in runs if r["server"] == n] for n in names}
for n in names:
    # A process id that is not the server's (the shell that started it,
    # say) reads no CPU: say so rather than print a cost of zero.
    if any(r["server_cpu_us"] == 0 for r in by[n]):
        print(f"warning: {n}'s process used no CPU in a round: is its process id the server's own?", file=sys.stderr)
med = lambda n, f: statistics.median(f(r) for r in by[n])
# The ratio to the baseline of the same round, then the median: rounds
# on a busy machine move every server together.
per_round = {(r["server"], r["round"]): r["per_second"] for r in runs}
ratio = lambda n, to="baseline": statistics.median(r["per_second"] / per_round[(to, r["round"])] for r in by[n])
def cmds(n):
    keys = sorted({k for r in by[n] for k in r["redis_commands"]})
    per = {k: med(n, lambda r: r["redis_commands"].get(k, 0)) for k in keys}
    per = {k: v for k, v in per.items() if v >= 0.005}
    if not per:
        return "0"
    return f"{sum(per.values()):.2f} (" + ", ".join(f"{k} {v:.2f}" for k, v in per.items()) + ")"
rows = [
    ("checks/s, 16 connections (vs baseline)", lambda n: f"{med(n, lambda r: r['per_second']):,.0f} ({ratio(n):.2f})"),
    *([("checks/s vs llmusage on Redis (same round)", lambda n: f"{ratio(n, 'redis'):.2f}" if n in ("redis", "ratelimit") else "")] if "ratelimit" in names else []),
    ("p50 / p99, 2 connections", lambda n: f"{med(n, lambda r: r['low']['p50_us']) / 1000:.3f} / {med(n, lambda r: r['low']['p99_us']) / 1000:.3f} ms"),
    ("p50 / p99, 16 connections", lambda n: f"{med(n, lambda r: r['high']['p50_us']) / 1000:.3f} / {med(n, lambda r: r['high']['p99_us']) / 1000:.3f} ms"),
    ("server CPU per check", lambda n: f"{med(n, lambda r: r['server_cpu_us']):.1f} us"),
    ("Redis CPU per check", lambda n: f"{med(n, lambda r: r['redis_cpu_us']):.1f} us" if n in ("redis", "ratelimit") else ""),
    ("Redis commands per check", lambda n: cmds(n) if n in ("redis", "ratelimit") else ""),
    ("refused or failed checks", lambda n: f"{sum(r['refused_or_failed'] for r in by[n])}"),
]
print("| | " + " | ".join(label[n] for n in names) + " |")
print("|---" * (len(names) + 1) + "|")
for title, f in rows:
    print(f"| {title} | " + " | ".join(f(n) for n in names) + " |")
PY
