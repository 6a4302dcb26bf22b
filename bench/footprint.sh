#!/usr/bin/env bash
# The sidecar's footprint at idle: the size of the binary `make build`
# builds, and its memory 30 s after start with default flags on the
# embedded SQLite store, then with --redis-url (a local redis-server on a
# free port). Memory from /proc/PID/status (VmRSS, RssAnon, RssFile) and
# the go_goroutines gauge of /metrics. The intake and metrics ports are
# free ones, not the defaults, so that the script runs beside others.
# Usage: bench/footprint.sh [seconds before measuring, default 30] [runs, default 3].
# LLMUSAGE_BIN=path measures that binary instead (an earlier commit's).
# Needs redis-server (scripts/test-deps.sh installs it). Prints medians.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
runs=${2:-3}
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT
. bench/lib.sh

bin=${LLMUSAGE_BIN:-$work/llmusage}
[ -n "${LLMUSAGE_BIN:-}" ] || make -s build BIN="$bin" >/dev/null
size=$(stat -c %s "$bin")
printf 'binary: %d bytes (%.1f MB)\n' "$size" "$(awk -v s="$size" 'BEGIN {print s / 1e6}')"

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 & pids+=($!)
for _ in $(seq 1 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

# kib PID FIELD: a field of /proc/PID/status, in KiB.
kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# measure NAME ARGS...: starts serve with ARGS, waits, samples; prints a row of medians.
measure() {
	local name=$1
	shift
	local rss=() anon=() file=() gor=()
	for r in $(seq 1 "$runs"); do
		local dir="$work/data-$name-$r" api metrics
		mkdir -p "$dir"
		api=$(free_port)
		metrics=$(free_port)
		"$bin" serve --data-dir "$dir" --listen-address "127.0.0.1:$api" --metrics-address "127.0.0.1:$metrics" "$@" >"$work/$name-$r.log" 2>&1 & pids+=($!)
		local pid=${pids[-1]}
		wait_up "http://127.0.0.1:$metrics/readyz" "$pid"
		sleep "$secs"
		rss+=("$(kib "$pid" VmRSS)")
		anon+=("$(kib "$pid" RssAnon)")
		file+=("$(kib "$pid" RssFile)")
		# After the memory sample: the scrape itself allocates.
		gor+=("$(curl -fs "http://127.0.0.1:$metrics/metrics" | awk '$1 == "go_goroutines" {print $2}')")
		stop_last
	done
	printf '%-22s %8.1f %8.1f %8.1f %6s\n' "$name" \
		"$(printf '%s\n' "${rss[@]}" | median | awk '{print $1/1024}')" \
		"$(printf '%s\n' "${anon[@]}" | median | awk '{print $1/1024}')" \
		"$(printf '%s\n' "${file[@]}" | median | awk '{print $1/1024}')" \
		"$(printf '%s\n' "${gor[@]}" | median)"
}

printf '%-22s %8s %8s %8s %6s\n' "after ${secs}s idle" "RSS MiB" "anon" "file" "gorout"
measure sqlite
measure redis --redis-url "redis://127.0.0.1:$redis_port/0"
