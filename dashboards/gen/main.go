// Command gen writes the dashboards' JSON next to their Go source, and
// the Kubernetes manifests and the Helm chart's files made from them:
// go generate ./dashboards.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/llmusage/llmusage/dashboards"
)

func main() {
	for name, build := range dashboards.Files() {
		out, err := dashboards.Render(build())
		if err == nil {
			err = os.WriteFile(name, out, 0o644)
		}
		if err != nil {
			fail(name, err)
		}
	}
	files, err := dashboards.KubernetesFiles()
	if err != nil {
		fail(dashboards.KubernetesDir, err)
	}
	for name, out := range files {
		path := filepath.Join(dashboards.KubernetesDir, name)
		if err := os.WriteFile(path, out, 0o644); err != nil {
			fail(path, err)
		}
	}
	helm, err := dashboards.HelmFiles()
	if err != nil {
		fail(dashboards.HelmChartDir, err)
	}
	for name, out := range helm {
		path := filepath.Join(dashboards.HelmChartDir, name)
		err := os.MkdirAll(filepath.Dir(path), 0o755)
		if err == nil {
			err = os.WriteFile(path, out, 0o644)
		}
		if err != nil {
			fail(path, err)
		}
	}
}

func fail(name string, err error) {
	fmt.Fprintf(os.Stderr, "cannot write %s: %s\n", name, err)
	os.Exit(1)
}
