#!/usr/bin/env bash
# Prints a directory holding cert-manager's CRDs as plain YAML, taken from
# its Go module (github.com/cert-manager/cert-manager, through the Go
# module proxy) and cached: its deploy/crds are Helm templates, whose
# template lines (comments, and the labels of its own chart) are dropped
# or set here. For the chart's objects in internal/kubetest's API server.
set -euo pipefail
version=v1.16.2
dir="${XDG_CACHE_HOME:-$HOME/.cache}/llmusage/cert-manager-crds-$version"
if [ ! -s "$dir/crds.yaml" ]; then
	src=$(cd /tmp && go mod download -json "github.com/cert-manager/cert-manager@$version" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
	mkdir -p "$dir"
	for f in "$src"/deploy/crds/crd-*.yaml; do
		echo "---"
		grep -v '^\s*#' "$f" | sed -E "s/'\{\{[^}]*\}\}'/cert-manager/; /\{\{/d"
	done > "$dir/crds.yaml.tmp"
	mv "$dir/crds.yaml.tmp" "$dir/crds.yaml"
fi
echo "$dir"
