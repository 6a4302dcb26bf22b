#!/usr/bin/env bash
# Starts a PgBouncer in front of the test server for the tests of a
# transaction pooler (pool_mode = transaction, as most production poolers
# run), on 127.0.0.1:6432, and prints its URL (the test database of
# DATABASE_URL through it; any database name reaches the one of the same
# name on the server). Idempotent: a PgBouncer it started earlier with the
# same configuration is reused, another restarted. PgBouncer refuses to run
# as root: as root it runs as the postgres user. Installs pgbouncer if it
# is missing (Debian's; 1.18 in bookworm, before protocol-level prepared
# statements, so the tests cover the strictest case).
set -euo pipefail

url=${DATABASE_URL:?DATABASE_URL names the server PgBouncer fronts}
re='^postgres(ql)?://([^:@/]+)(:([^@]*))?@([^:/?]+)(:([0-9]+))?/([^?]+)'
if ! [[ $url =~ $re ]]; then
	echo "cannot parse DATABASE_URL for PgBouncer: want postgres://user:password@host:port/db" >&2
	exit 1
fi
user=${BASH_REMATCH[2]} password=${BASH_REMATCH[4]} host=${BASH_REMATCH[5]} port=${BASH_REMATCH[7]:-5432} db=${BASH_REMATCH[8]}
listen_port=${PGBOUNCER_PORT:-6432}

if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
	echo "installing Debian package pgbouncer" >&2
	if [ "$(id -u)" = 0 ]; then as_root=(); else as_root=(sudo); fi
	"${as_root[@]}" apt-get update -qq
	"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null
fi
bin=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)

run_as=()
dir=${TMPDIR:-/tmp}/llmusage-pgbouncer-$(id -un)
if [ "$(id -u)" = 0 ]; then
	run_as=(runuser -u postgres --)
	dir=/tmp/llmusage-pgbouncer
fi
mkdir -p "$dir"
config=$(
	cat <<INI
[databases]
* = host=$host port=$port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $listen_port
unix_socket_dir =
auth_type = md5
auth_file = $dir/userlist.txt
admin_users = $user
pool_mode = transaction
max_client_conn = 2000
default_pool_size = 20
ignore_startup_parameters = extra_float_digits
pidfile = $dir/pgbouncer.pid
logfile = $dir/pgbouncer.log
INI
)
userlist="\"$user\" \"$password\""

running=false
if [ -f "$dir/pgbouncer.pid" ] && kill -0 "$(cat "$dir/pgbouncer.pid")" 2>/dev/null; then
	running=true
fi
if $running && [ "$config" = "$(cat "$dir/pgbouncer.ini" 2>/dev/null)" ] && [ "$userlist" = "$(cat "$dir/userlist.txt" 2>/dev/null)" ]; then
	: # the same PgBouncer: reuse it
else
	if $running; then
		kill "$(cat "$dir/pgbouncer.pid")"
		for _ in $(seq 1 50); do
			kill -0 "$(cat "$dir/pgbouncer.pid" 2>/dev/null)" 2>/dev/null || break
			sleep 0.1
		done
	fi
	printf '%s\n' "$config" >"$dir/pgbouncer.ini"
	printf '%s\n' "$userlist" >"$dir/userlist.txt"
	chmod 600 "$dir/userlist.txt"
	if [ "$(id -u)" = 0 ]; then chown -R postgres: "$dir"; fi
	"${run_as[@]}" "$bin" -q -d "$dir/pgbouncer.ini" >&2
fi
for _ in $(seq 1 50); do
	pg_isready -q -h 127.0.0.1 -p "$listen_port" && break
	sleep 0.1
done
if ! pg_isready -q -h 127.0.0.1 -p "$listen_port"; then
	echo "PgBouncer did not start on 127.0.0.1:$listen_port; see $dir/pgbouncer.log" >&2
	tail -n 20 "$dir/pgbouncer.log" >&2 || true
	exit 1
fi
echo "postgres://$user:$password@127.0.0.1:$listen_port/$db?sslmode=disable"
