package dashboards

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// TestGeneratedUpToDate fails when the committed JSON no longer matches
// the Go source.
func TestGeneratedUpToDate(t *testing.T) {
	for name, build := range Files() {
		want, err := Render(build())
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(name)
		if err != nil {
			t.Fatalf("%s: %s (run go generate ./dashboards)", name, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s is stale: run go generate ./dashboards and commit the result", name)
		}
	}
}

// TestDashboardsLoad decodes each committed dashboard into the Foundation
// SDK's types, as Grafana's schema has them, and checks what every
// llmusage dashboard must have.
func TestDashboardsLoad(t *testing.T) {
	plugins.RegisterDefaultPlugins()
	for name := range Files() {
		raw, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		var d dashboard.Dashboard
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatalf("%s does not decode into dashboard.Dashboard: %s", name, err)
		}
		if d.Uid == nil || *d.Uid == "" || d.Title == nil {
			t.Fatalf("%s: no uid or title", name)
		}
		vars := map[string]string{}
		for _, v := range d.Templating.List {
			vars[v.Name] = string(v.Type)
		}
		for _, want := range []struct{ name, kind string }{{"datasource", "datasource"}, {"job", "query"}, {"namespace", "query"}} {
			if vars[want.name] != want.kind {
				t.Fatalf("%s: variable %s is %q, want a %s variable", name, want.name, vars[want.name], want.kind)
			}
		}
		ids := map[uint32]bool{}
		panels := 0
		for _, p := range d.Panels {
			var id uint32
			switch {
			case p.Panel != nil:
				panels++
				if p.Panel.Id == nil {
					t.Fatalf("%s: panel %v has no id", name, p.Panel.Title)
				}
				id = *p.Panel.Id
				if len(p.Panel.Targets) == 0 {
					t.Fatalf("%s: panel %v has no query", name, *p.Panel.Title)
				}
			case p.RowPanel != nil:
				id = p.RowPanel.Id
			}
			if ids[id] {
				t.Fatalf("%s: panel id %d used twice", name, id)
			}
			ids[id] = true
		}
		if panels < 5 {
			t.Fatalf("%s: %d panels", name, panels)
		}
	}
}

// TestKubernetesManifestsUpToDate fails when the PrometheusRule or the
// dashboards' ConfigMap under deploy/kubernetes, or the Helm chart's
// copies of the rules and dashboards, no longer match; and when the
// chart's files/dashboards holds a dashboard that is no longer generated.
func TestKubernetesManifestsUpToDate(t *testing.T) {
	kube, err := KubernetesFiles()
	if err != nil {
		t.Fatal(err)
	}
	helm, err := HelmFiles()
	if err != nil {
		t.Fatal(err)
	}
	for dir, files := range map[string]map[string][]byte{KubernetesDir: kube, HelmChartDir: helm} {
		for name, want := range files {
			got, err := os.ReadFile(dir + "/" + name)
			if err != nil {
				t.Fatalf("%s: %s (run go generate ./dashboards)", name, err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s/%s is stale: run go generate ./dashboards and commit the result", dir, name)
			}
		}
	}
	extra, err := filepath.Glob(HelmChartDir + "/files/dashboards/*")
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range extra {
		if _, ok := helm["files/dashboards/"+filepath.Base(path)]; !ok {
			t.Fatalf("%s is no dashboard of dashboards/: remove it", path)
		}
	}
}
