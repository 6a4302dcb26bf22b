#!/usr/bin/env bash
# Refreshes the embedded price table, pricing/data/genai-prices.json, from
# the @pydantic/genai-prices version pinned in pricing/refresh/package.json
# and package-lock.json, and pricing/testdata/golden.json, the source's own
# answers that go test ./pricing/ compares the Go lookups with. To move to a new version, change the pin, run
# `npm install` in pricing/refresh, then this script, then go test ./pricing/.
# Idempotent: the snapshot date is the pinned version's publish date.
set -euo pipefail
cd "$(dirname "$0")/../pricing/refresh"
npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
version=$(node -p 'require("./node_modules/@pydantic/genai-prices/package.json").version')
date=$(npm view "@pydantic/genai-prices@$version" time --json |
	node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s)[process.argv[1]].slice(0,10)))' "$version")
node dump.mjs "$date"
node golden.mjs
