#!/usr/bin/env bash
# Prints the path of the helm CLI that the chart's tests and CI use
# (deploy/helm/llmusage), building it once into the user's cache with
# go install: helm is not a module of this repository (its Kubernetes
# dependencies would clash with go.mod's). The first build takes a few
# minutes; later calls only print the path. HELM_VERSION overrides the
# version. Nothing built here is under the repository.
set -euo pipefail

version=${HELM_VERSION:-v4.3.2}
dir=${XDG_CACHE_HOME:-$HOME/.cache}/llmusage/helm-$version
bin=$dir/helm
if [ ! -x "$bin" ]; then
	mkdir -p "$dir"
	# One build at a time: parallel test packages may all ask at once.
	exec 9>"$dir.lock"
	flock 9
	if [ ! -x "$bin" ]; then
		echo "building helm $version into $dir (go install, once)" >&2
		tmp=$(mktemp -d "$dir.build.XXXXXX")
		trap 'rm -rf "$tmp"' EXIT
		major=${version%%.*}
		# Outside any module, so that go.mod and GOFLAGS of the caller
		# play no part; GOFLAGS=-mod=mod in case the environment says vendor.
		(cd "$tmp" && GOFLAGS=-mod=mod GOBIN="$tmp" GOWORK=off go install "helm.sh/helm/$major/cmd/helm@$version") >&2
		mv "$tmp/helm" "$bin"
	fi
fi
echo "$bin"
