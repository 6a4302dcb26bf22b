#!/usr/bin/env bash
# Prints the path of a kube-apiserver binary for internal/kubetest, building
# it first if it is not cached yet. The build takes about 6 minutes on 2
# cores and happens once per machine: the binary is kept in
# ${XDG_CACHE_HOME:-$HOME/.cache}/llmusage/kube-apiserver-$VERSION, outside
# the repository, and nothing of it is committed.
#
# kube-apiserver is built from the Go module proxy, from k8s.io/kubernetes
# at $VERSION, in a throwaway module in the cache directory (never in this
# repository's go.mod): k8s.io/kubernetes requires its staging modules
# (k8s.io/api, k8s.io/apiserver, ...) at v0.0.0 and replaces them with
# ./staging directories, which a dependency's replace directives cannot do;
# the throwaway module replaces each of them with its published v0.$MINOR
# release instead. A lock file keeps parallel callers (test packages, CI)
# from building it twice.
#
# Usage: scripts/kube-apiserver.sh        prints the binary's path
# KUBE_APISERVER=/path/to/kube-apiserver   is printed as is, without a build
set -euo pipefail

if [ -n "${KUBE_APISERVER:-}" ]; then
	echo "$KUBE_APISERVER"
	exit 0
fi

version=${LLMUSAGE_KUBE_VERSION:-v1.34.2}
minor=${version#v1.}
staging_version=v0.$minor
cache=${XDG_CACHE_HOME:-$HOME/.cache}/llmusage
bin=$cache/kube-apiserver-$version
mkdir -p "$cache"

if [ -x "$bin" ]; then
	echo "$bin"
	exit 0
fi

exec 9>"$bin.lock"
if ! flock -n 9; then
	echo "waiting for another build of kube-apiserver $version ($bin.lock)" >&2
	flock 9
fi
if [ -x "$bin" ]; then
	echo "$bin"
	exit 0
fi

start=$(date +%s)
echo "building kube-apiserver $version from the Go module proxy into $bin (once per machine, about 6 minutes on 2 cores)" >&2
work=$cache/kube-apiserver-$version.build
rm -rf "$work"
mkdir -p "$work"
cd "$work"
export GOWORK=off GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local}

# The staging modules k8s.io/kubernetes replaces with ./staging directories.
kube_gomod=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
if [ ! -f "$kube_gomod" ]; then
	echo "cannot download k8s.io/kubernetes@$version from the Go module proxy" >&2
	exit 1
fi
staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/.*#\1#p' "$kube_gomod" | sort -u)
if [ -z "$staging" ]; then
	echo "cannot find the staging modules in the go.mod of k8s.io/kubernetes@$version" >&2
	exit 1
fi

{
	echo "// Throwaway module: builds k8s.io/kubernetes/cmd/kube-apiserver for internal/kubetest (scripts/kube-apiserver.sh)."
	echo "module llmusage.invalid/kube-apiserver-build"
	echo
	echo "go 1.24.0"
	echo
	echo "require k8s.io/kubernetes $version"
	echo
	for m in $staging; do
		echo "replace $m => $m $staging_version"
	done
} >go.mod
go get "k8s.io/kubernetes/cmd/kube-apiserver@$version" >&2

ldflags="-s -w"
ldflags+=" -X k8s.io/component-base/version.gitVersion=$version"
ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
ldflags+=" -X k8s.io/component-base/version.gitMinor=${minor%%.*}"
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$bin.tmp" k8s.io/kubernetes/cmd/kube-apiserver
"$bin.tmp" --version >&2
mv "$bin.tmp" "$bin"
cd /
rm -rf "$work"
echo "built kube-apiserver $version in $(($(date +%s) - start))s" >&2
echo "$bin"
