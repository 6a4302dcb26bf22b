#!/usr/bin/env bash
# The test command (make test): installs and starts what the tests need,
# then runs every test with the race detector.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/test-env.sh

# The official OpenAI and Anthropic SDKs for internal/sdktest, pinned in
# test/sdk/package-lock.json. Idempotent: npm ci runs only when
# node_modules is missing or was installed from another lock. Node.js 20 or
# later is required: under make test (LLMUSAGE_TEST_REQUIRE_POSTGRES=1) a
# missing node fails here rather than letting the SDK tests skip.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
	echo "node and npm (Node.js 20 or later) are required by the SDK tests (internal/sdktest) but not installed" >&2
	exit 1
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
	echo "Node.js 20 or later is required by the SDK tests, found $(node --version)" >&2
	exit 1
fi
sdk_lock_sum=$(sha256sum test/sdk/package-lock.json | cut -d' ' -f1)
sdk_stamp=test/sdk/node_modules/.llmusage-lock.sha256
if [ "$(cat "$sdk_stamp" 2>/dev/null)" != "$sdk_lock_sum" ]; then
	echo "installing the npm packages of test/sdk (npm ci)" >&2
	npm ci --prefix test/sdk --no-audit --no-fund --loglevel=error >&2
	echo "$sdk_lock_sum" >"$sdk_stamp"
fi
node -p '"node " + process.version + ", " + ["openai", "@anthropic-ai/sdk"].map((p) => p + " " + JSON.parse(require("fs").readFileSync("test/sdk/node_modules/" + p + "/package.json")).version).join(", ")' >&2

go test -race -count=1 "$@" ./...
