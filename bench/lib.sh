# shellcheck shell=bash disable=SC2154
# Sourced by the bench scripts: the helpers they share. The script keeps
# its servers' PIDs in the array pids.

# wait_up URL PID: the server answers, and it is ours (not a leftover on the port).
wait_up() {
	for _ in $(seq 1 100); do
		kill -0 "$2" 2>/dev/null || { echo "server $2 exited at start" >&2; exit 1; }
		curl -fs "$1" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "not up: $1" >&2
	exit 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# stop_last stops the server started last.
stop_last() { kill "${pids[-1]}" 2>/dev/null || true; wait "${pids[-1]}" 2>/dev/null || true; }
# cpu PID: user + system CPU seconds of a process so far.
cpu() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
# pin_cpus sets the arrays on_server (CPU 0) and on_client (CPU 1) to
# prefix commands with, or leaves both empty without 2 CPUs or taskset.
pin_cpus() {
	on_server=(taskset -c 0)
	on_client=(taskset -c 1)
	if [ "$(nproc)" -lt 2 ] || ! command -v taskset >/dev/null; then
		echo "fewer than 2 CPUs or no taskset: not pinning" >&2
		on_server=()
		on_client=()
	fi
}
