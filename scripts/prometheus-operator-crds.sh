#!/usr/bin/env bash
# Prints a directory holding the Prometheus Operator's CustomResourceDefinitions
# (PodMonitor, PrometheusRule, ...) at the version of
# github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring in
# go.mod, for internal/kubetest to install into its test API server.
#
# The Go module proxy does not serve the Prometheus Operator's root module
# (whose example/prometheus-operator-crd/ holds the released YAML) at that
# version, so the CRDs are generated as upstream generates them: with
# controller-gen (sigs.k8s.io/controller-tools) over the API types of the
# monitoring module, both fetched through the Go module proxy. Both are kept
# in ${XDG_CACHE_HOME:-$HOME/.cache}/llmusage, outside the repository; a
# lock file keeps parallel callers from generating them twice.
#
# Usage: scripts/prometheus-operator-crds.sh [VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."

module=github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring
controller_tools=${LLMUSAGE_CONTROLLER_TOOLS_VERSION:-v0.23.0}
version=${1:-$(awk -v m="$module" '$1 == m { print $2 } $1 == "require" && $2 == m { print $3 }' go.mod | head -n 1)}
if [ -z "$version" ]; then
	echo "cannot find $module in go.mod" >&2
	exit 1
fi
cache=${XDG_CACHE_HOME:-$HOME/.cache}/llmusage
out=$cache/prometheus-operator-crds-$version
mkdir -p "$cache"
if [ -f "$out/.complete" ]; then
	echo "$out"
	exit 0
fi

exec 9>"$out.lock"
if ! flock -n 9; then
	echo "waiting for another generation of the Prometheus Operator CRDs ($out.lock)" >&2
	flock 9
fi
if [ -f "$out/.complete" ]; then
	echo "$out"
	exit 0
fi

start=$(date +%s)
echo "generating the Prometheus Operator CRDs $version with controller-gen $controller_tools into $out (once per machine)" >&2
export GOWORK=off GOFLAGS= GOTOOLCHAIN=${GOTOOLCHAIN:-local}
gobin=$cache/controller-gen-$controller_tools
if [ ! -x "$gobin/controller-gen" ]; then
	GOBIN=$gobin CGO_ENABLED=0 go install -trimpath "sigs.k8s.io/controller-tools/cmd/controller-gen@$controller_tools"
fi

work=$cache/prometheus-operator-crds-$version.build
rm -rf "$work" "$out"
mkdir -p "$work"
src=$(go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
if [ ! -d "$src" ]; then
	echo "cannot download $module@$version from the Go module proxy" >&2
	exit 1
fi
# controller-gen loads the packages with go list, which needs a writable
# module (go.sum): work on a copy of the module cache's read-only tree.
cp -R "$src" "$work/src"
chmod -R u+w "$work/src"
(cd "$work/src" && GOFLAGS=-mod=mod "$gobin/controller-gen" crd:crdVersions=v1 paths=./... output:crd:dir="$work/crds")
if ! ls "$work"/crds/monitoring.coreos.com_podmonitors.yaml "$work"/crds/monitoring.coreos.com_prometheusrules.yaml >/dev/null; then
	echo "cannot generate the PodMonitor and PrometheusRule CRDs from $module@$version" >&2
	exit 1
fi
touch "$work/crds/.complete"
mv "$work/crds" "$out"
rm -rf "$work"
echo "generated the Prometheus Operator CRDs $version in $(($(date +%s) - start))s: $(cd "$out" && echo *.yaml)" >&2
echo "$out"
