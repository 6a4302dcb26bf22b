package kube

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/kubetest"
	"github.com/llmusage/llmusage/internal/sidecartest"
)

// TestHelmInstallThenInject is the first hour in a real API
// server: `helm install llmusage deploy/helm/llmusage`, then `kubectl
// label namespace my-app llmusage.io/inject=enabled`, then the app's pod
// comes back with the sidecar. The chart's webhook configuration is used
// as installed, but for its clientConfigs, pointed at the injector run as
// a local process (no pod runs here). An upgrade keeps the certificate
// the chart made.
func TestHelmInstallThenInject(t *testing.T) {
	c := kubetest.Start(t)
	c.InstallPrometheusOperatorCRDs(t)
	helm := helmBinary(t)
	release := c.Namespace(t)
	// No hooks: a hook Job waits for a pod that never runs here; the Job
	// is created as an object of the release instead.
	install := func(verb string) {
		t.Helper()
		cmd := exec.Command(helm, verb, "llmusage", "../../deploy/helm/llmusage", "--namespace", release,
			"--kubeconfig", c.Kubeconfig(), "--set", "migration.hook=false")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("helm %s: %v\n%s", verb, err, out)
		}
	}
	install("install")
	objects := c.Kubectl(t, "-n", release, "get", "deployment,service,job,configmap,secret,podmonitor,prometheusrule", "-o", "name")
	for _, want := range []string{"deployment.apps/llmusage-injector", "service/llmusage-injector", "job.batch/llmusage-migrate",
		"configmap/llmusage-limits", "secret/llmusage-injector-tls", "podmonitor.monitoring.coreos.com/", "prometheusrule.monitoring.coreos.com/"} {
		if !strings.Contains(objects, want) {
			t.Fatalf("helm install created\n%s\nwithout %s", objects, want)
		}
	}
	if got := c.Kubectl(t, "-n", release, "get", "podmonitor", "-o", "jsonpath={.items[*].metadata.labels.release}"); !strings.Contains(got, "prometheus") {
		t.Fatalf("the PodMonitors' release labels are %q: kube-prometheus-stack's default selector would not scrape them", got)
	}
	tlsSecret := func() string {
		return c.Kubectl(t, "-n", release, "get", "secret", "llmusage-injector-tls", "-o", "jsonpath={.data.tls\\.crt}")
	}
	before := tlsSecret()
	install("upgrade")
	if tlsSecret() != before {
		t.Fatal("helm upgrade made a new certificate for the injector")
	}

	injector := startInjector(t)
	var cfg map[string]any
	if err := json.Unmarshal([]byte(c.Kubectl(t, "get", "mutatingwebhookconfiguration", "llmusage-injector", "-o", "json")), &cfg); err != nil {
		t.Fatal(err)
	}
	for _, w := range cfg["webhooks"].([]any) {
		cc := w.(map[string]any)["clientConfig"].(map[string]any)
		path := cc["service"].(map[string]any)["path"].(string)
		delete(cc, "service")
		cc["url"] = "https://" + injector.addr + path
		cc["caBundle"] = base64.StdEncoding.EncodeToString(injector.ca)
	}
	b, _ := json.Marshal(cfg)
	if out, err := c.RunKubectl(string(b), "replace", "-f", "-"); err != nil {
		t.Fatalf("kubectl replace: %v\n%s", err, out)
	}
	t.Cleanup(func() { c.Kubectl(t, "delete", "mutatingwebhookconfiguration", "llmusage-injector") })

	app := c.Namespace(t)
	c.Kubectl(t, "label", "namespace", app, "llmusage.io/inject=enabled")
	pod := appPod(t)
	sidecartest.WaitFor(t, 30*time.Second, func() bool { return hasSidecar(create(t, c, app, pod, nil)) },
		"a pod of a labelled namespace is not injected through the chart's webhook configuration")
	checkInjected(t, create(t, c, app, pod, nil))
	// The release's own namespace is left out, labelled or not.
	c.Kubectl(t, "label", "namespace", release, "llmusage.io/inject=enabled")
	if hasSidecar(create(t, c, release, pod, nil)) {
		t.Fatal("a pod of the release's namespace was injected")
	}
}

// helmBinary is the helm CLI of scripts/helm.sh (LLMUSAGE_HELM).
func helmBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("LLMUSAGE_HELM"); p != "" {
		return p
	}
	out, err := exec.Command("../../scripts/helm.sh").Output()
	if err != nil {
		t.Fatalf("cannot build helm (scripts/helm.sh): %v", err)
	}
	return strings.TrimSpace(string(out))
}

// TestChartObjectsCreated: every object `helm template` renders, with the
// default values and with every option on (ci/all-on-values.yaml, which
// turns cert-manager on), is created by the real API server with strict
// field validation, the Prometheus Operator's and cert-manager's CRDs
// installed first, each from its Go module.
func TestChartObjectsCreated(t *testing.T) {
	c := kubetest.Start(t)
	c.InstallPrometheusOperatorCRDs(t)
	out, err := exec.Command("../../scripts/cert-manager-crds.sh").Output()
	if err != nil {
		t.Fatalf("cannot get cert-manager's CRDs: %v", err)
	}
	crds, err := os.ReadFile(strings.TrimSpace(string(out)) + "/crds.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c.Apply(t, "", string(crds))
	c.Kubectl(t, "wait", "--for=condition=Established", "--timeout=60s", "crd/certificates.cert-manager.io", "crd/issuers.cert-manager.io")
	if _, err := c.RunKubectl("", "create", "namespace", "monitoring"); err != nil && !strings.Contains(err.Error(), "AlreadyExists") {
		t.Fatal(err)
	}
	helm := helmBinary(t)
	for i, values := range []string{"", "../../deploy/helm/llmusage/ci/all-on-values.yaml"} {
		ns := c.Namespace(t)
		args := []string{"template", "objects" + string(rune('a'+i)), "../../deploy/helm/llmusage", "--namespace", ns}
		if values != "" {
			args = append(args, "-f", values)
		}
		rendered, err := exec.Command(helm, args...).Output()
		if err != nil {
			t.Fatalf("helm %s: %v", strings.Join(args, " "), err)
		}
		created := c.Create(t, "", string(rendered))
		for _, name := range created {
			if strings.HasPrefix(name, "mutatingwebhookconfiguration") {
				// Its Service has no pod: left, it would be called (and
				// ignored) for the other tests' pods.
				t.Cleanup(func() { c.Kubectl(t, "delete", name) })
			}
		}
		if want := strings.Count(string(rendered), "\nkind: "); len(created) < want {
			t.Fatalf("values %q: the API server created %d objects of %d: %v", values, len(created), want, created)
		}
		t.Logf("values %q: created %v", values, created)
	}
}
