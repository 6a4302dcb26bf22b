// Package kubernetes_test creates every manifest of deploy/kubernetes in a
// real Kubernetes API server (internal/kubetest), with the Prometheus
// Operator's CRDs installed, and reads each object back.
package kubernetes_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/llmusage/llmusage/internal/kubetest"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

// TestManifestsCreatedByAPIServer creates, each in a namespace of its
// own, the kustomize base as `kubectl apply -k deploy/kubernetes` would,
// the base with the Redis component, and the classic-sidecar Deployment,
// with strict server-side field validation, then reads every object back
// and checks that the server stored every field the manifest gives (a
// field the API does not know would be refused, and a CRD schema that
// prunes one would show here).
func TestManifestsCreatedByAPIServer(t *testing.T) {
	c := kubetest.Start(t)
	c.InstallPrometheusOperatorCRDs(t)

	classic, err := os.ReadFile("classic-sidecar/deployment.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		manifests func(t *testing.T) string
		want      []string
	}{
		{"kustomize", func(t *testing.T) string { return kustomize(t, ".") }, []string{
			"configmap/llmusage-dashboards", "configmap/llmusage-limits-*", "deployment.apps/my-app",
			"job.batch/llmusage-migrate", "podmonitor.monitoring.coreos.com/llmusage", "prometheusrule.monitoring.coreos.com/llmusage",
		}},
		{"kustomize with components/redis", renderWithRedis, []string{
			"configmap/llmusage-dashboards", "configmap/llmusage-limits-*", "deployment.apps/my-app",
			"job.batch/llmusage-migrate", "podmonitor.monitoring.coreos.com/llmusage", "prometheusrule.monitoring.coreos.com/llmusage",
		}},
		{"classic-sidecar", func(*testing.T) string { return string(classic) }, []string{"deployment.apps/my-app"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			manifests := tc.manifests(t)
			ns := c.Namespace(t)
			created := c.Create(t, ns, manifests)
			if !matchNames(created, tc.want) {
				t.Fatalf("the API server created %q, want %q", created, tc.want)
			}
			docs := documents(t, manifests)
			if len(docs) != len(created) {
				t.Fatalf("%d documents, %d objects created", len(docs), len(created))
			}
			for _, doc := range docs {
				meta := doc["metadata"].(map[string]any)
				ref := fmt.Sprintf("%s %s", doc["kind"], meta["name"])
				raw, err := json.Marshal(doc)
				if err != nil {
					t.Fatal(err)
				}
				out, err := c.RunKubectl(string(raw), "get", "--namespace", ns, "-o", "json", "-f", "-")
				if err != nil {
					t.Fatalf("%s: %s", ref, err)
				}
				var stored map[string]any
				if err := json.Unmarshal([]byte(out), &stored); err != nil {
					t.Fatalf("%s: cannot decode kubectl get: %s", ref, err)
				}
				if items, ok := stored["items"].([]any); ok && stored["kind"] == "List" && len(items) == 1 {
					stored = items[0].(map[string]any)
				}
				if m := stored["metadata"].(map[string]any); m["namespace"] != ns || m["uid"] == nil {
					t.Fatalf("%s read back as %v, want an object of namespace %s", ref, m, ns)
				}
				for _, diff := range missing("", doc, stored) {
					t.Errorf("%s: the stored object differs from the manifest at %s", ref, diff)
				}
			}
		})
	}
}

// kustomize renders dir with kubectl's kustomize.
func kustomize(t *testing.T, dir string) string {
	t.Helper()
	out, err := exec.Command("kubectl", "kustomize", dir).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("cannot render %s with kubectl kustomize: %s %s", dir, err, stderr)
	}
	return string(out)
}

// renderWithRedis renders the base with the Redis component, as the
// base's commented-out components entry would. The kustomization is
// written outside the base: kustomize refuses one under its own base.
func renderWithRedis(t *testing.T) string {
	t.Helper()
	base, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	rel, err := filepath.Rel(tmp, base)
	if err != nil {
		t.Fatal(err)
	}
	k := fmt.Sprintf("resources:\n  - %s\ncomponents:\n  - %s\n", rel, filepath.Join(rel, "components/redis"))
	if err := os.WriteFile(filepath.Join(tmp, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	out := kustomize(t, tmp)
	if !strings.Contains(out, "llmusage-redis") {
		t.Fatal("the base rendered with components/redis does not read the Secret llmusage-redis")
	}
	return out
}

// documents decodes the YAML documents of manifests.
func documents(t *testing.T, manifests string) []map[string]any {
	t.Helper()
	var docs []map[string]any
	for _, raw := range strings.Split("\n"+manifests, "\n---") {
		var doc map[string]any
		if err := yaml.Unmarshal([]byte(raw), &doc); err != nil {
			t.Fatalf("cannot decode a manifest: %s", err)
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
	return docs
}

// matchNames reports whether got holds, in any order, one name per
// pattern of want (a trailing * matches kustomize's name hash).
func matchNames(got, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	left := slices.Clone(got)
	for _, w := range want {
		i := slices.IndexFunc(left, func(g string) bool {
			if p, ok := strings.CutSuffix(w, "*"); ok {
				return strings.HasPrefix(g, p)
			}
			return g == w
		})
		if i < 0 {
			return false
		}
		left = slices.Delete(left, i, i+1)
	}
	return true
}

// missing returns the paths of the fields of want that got lacks or holds
// with another value; got may hold more (defaults, status, metadata the
// server sets).
func missing(path string, want, got any) []string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{fmt.Sprintf("%s: %v, want %v", path, got, want)}
		}
		var diffs []string
		for k, v := range w {
			gv, ok := g[k]
			if !ok {
				diffs = append(diffs, path+"."+k+": missing")
				continue
			}
			diffs = append(diffs, missing(path+"."+k, v, gv)...)
		}
		return diffs
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return []string{fmt.Sprintf("%s: %v, want %v", path, got, want)}
		}
		var diffs []string
		for i := range w {
			diffs = append(diffs, missing(fmt.Sprintf("%s[%d]", path, i), w[i], g[i])...)
		}
		return diffs
	default:
		if !reflect.DeepEqual(want, got) {
			return []string{fmt.Sprintf("%s: %v, want %v", path, got, want)}
		}
		return nil
	}
}
