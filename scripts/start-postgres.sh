#!/usr/bin/env bash
# Starts the machine's PostgreSQL cluster for the tests, as root (CI runs as
# root, where initdb refuses to run, so the tests cannot start a throwaway
# server themselves), creates a test role and database, and prints a
# DATABASE_URL for them. Idempotent. Installs PostgreSQL if it is missing.
set -euo pipefail

if ! command -v pg_lsclusters >/dev/null 2>&1; then
	echo "installing Debian package postgresql" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

cluster=$(pg_lsclusters --no-header | head -n 1 || true)
if [ -z "$cluster" ]; then
	version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
	pg_createcluster "$version" main >&2
	cluster=$(pg_lsclusters --no-header | head -n 1)
fi
read -r version name port status _ <<<"$cluster"
if [ "$status" != online ]; then
	pg_ctlcluster "$version" "$name" start >&2
fi
for _ in $(seq 1 50); do
	pg_isready -q -h 127.0.0.1 -p "$port" && break
	sleep 0.2
done

password=llmusage-test-pw
su postgres -c "psql -q -p $port" >/dev/null <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'llmusage') THEN
        CREATE ROLE llmusage LOGIN SUPERUSER PASSWORD '$password';
    ELSE
        ALTER ROLE llmusage LOGIN SUPERUSER PASSWORD '$password';
    END IF;
END
\$\$;
SELECT 'CREATE DATABASE llmusage_test OWNER llmusage' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'llmusage_test')\gexec
SQL
echo "postgres://llmusage:$password@127.0.0.1:$port/llmusage_test?sslmode=disable"
