#!/usr/bin/env bash
# Installs what the tests need beyond Go modules, on Debian or Ubuntu:
# promtool (package prometheus) to lint /metrics. Idempotent.
set -euo pipefail

as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v promtool >/dev/null 2>&1; then
	echo "installing Debian package prometheus (for promtool)" >&2
	as_root apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool --version 2>&1 | head -n 1 >&2
