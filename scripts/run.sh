#!/bin/sh
# make run: build llmusage, then become it. exec, not a child: Ctrl-C,
# a terminal's hangup, kill -HUP and make's SIGTERM then reach the sidecar
# itself (go run's child got none of them, and outlived make).
# Arguments are more flags for serve, after the defaults (the last wins):
#   make run ARGS="--redis-url redis://localhost:6379 --log-level debug"
set -e
cd "$(dirname "$0")/.."
GO=${GO:-go}
if [ ! -x ./llmusage ]; then
	echo "building llmusage (the first build on a fresh machine takes about 2 minutes)..." >&2
else
	echo "building llmusage..." >&2
fi
"$GO" build -o llmusage ./cmd/llmusage
echo "starting ./llmusage serve --limits-file deploy/kubernetes/limits.yaml $*" >&2
echo "(Ctrl-C stops it; kill -HUP $$ reloads the limits file)" >&2
exec ./llmusage serve --limits-file deploy/kubernetes/limits.yaml "$@"
