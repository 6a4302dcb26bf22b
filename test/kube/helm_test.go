package kube

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/kubetest"
	"github.com/llmusage/llmusage/internal/sidecartest"
)

// TestHelmInstallThenInject runs docs/kubernetes.md's install, the
// issue's first hour, in a real API server: its three commands as written
// (but for --set migration.hook=false added to helm's: a hook Job waits
// for a pod, and no pod runs here), then the app's pod comes back with the
// sidecar, and every ConfigMap and Secret the pod mounts or reads is in
// its namespace. The chart's webhook configuration is used as installed,
// but for its clientConfigs, pointed at the injector run as a local
// process. An upgrade keeps the certificate the chart made.
func TestHelmInstallThenInject(t *testing.T) {
	c := kubetest.Start(t)
	c.InstallPrometheusOperatorCRDs(t)
	helm := helmBinary(t)
	const app = "my-app" // the docs' namespace
	// With its default ServiceAccount, which no controller makes here.
	if _, err := c.RunKubectl("", "create", "namespace", app); err != nil {
		t.Fatal(err)
	}
	c.Kubectl(t, "-n", app, "create", "serviceaccount", "default")
	for _, line := range docCommands(t) {
		if strings.HasPrefix(line, "helm install") {
			line += " --set migration.hook=false"
		}
		cmd := exec.Command("sh", "-c", line)
		cmd.Dir = "../.."
		cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig(), "PATH="+filepath.Dir(helm)+":"+os.Getenv("PATH"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", line, err, out)
		}
	}
	objects := c.Kubectl(t, "-n", app, "get", "deployment,service,job,configmap,secret,podmonitor,prometheusrule", "-o", "name")
	for _, want := range []string{"deployment.apps/llmusage-injector", "service/llmusage-injector", "job.batch/llmusage-migrate",
		"configmap/llmusage-limits", "secret/llmusage-injector-tls", "podmonitor.monitoring.coreos.com/", "prometheusrule.monitoring.coreos.com/"} {
		if !strings.Contains(objects, want) {
			t.Fatalf("helm install created\n%s\nwithout %s", objects, want)
		}
	}
	if got := c.Kubectl(t, "-n", app, "get", "podmonitor", "-o", "jsonpath={.items[*].metadata.labels.release}"); !strings.Contains(got, "prometheus") {
		t.Fatalf("the PodMonitors' release labels are %q: kube-prometheus-stack's default selector would not scrape them", got)
	}
	if got := c.Kubectl(t, "-n", app, "get", "job", "llmusage-migrate", "-o", `jsonpath={.spec.template.metadata.annotations.llmusage\.io/inject}`); got != "false" {
		t.Fatalf("the migration Job's pod is not opted out of injection: %q", got)
	}
	tlsSecret := func() string {
		return c.Kubectl(t, "-n", app, "get", "secret", "llmusage-injector-tls", "-o", "jsonpath={.data.tls\\.crt}")
	}
	before := tlsSecret()
	if out, err := exec.Command(helm, "upgrade", "llmusage", "../../deploy/helm/llmusage", "-n", app, "--kubeconfig", c.Kubeconfig(),
		"--set", "migration.hook=false").CombinedOutput(); err != nil {
		t.Fatalf("helm upgrade: %v\n%s", err, out)
	}
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

	pod := appPod(t)
	sidecartest.WaitFor(t, 30*time.Second, func() bool { return hasSidecar(create(t, c, app, pod, nil)) },
		"a pod of a labelled namespace is not injected through the chart's webhook configuration")
	got := create(t, c, app, pod, nil)
	checkInjected(t, got)
	// What the injected pod needs is in its namespace.
	for _, v := range got.Spec.Volumes {
		if v.ConfigMap != nil {
			c.Kubectl(t, "-n", app, "get", "configmap", v.ConfigMap.Name)
		}
		if v.Secret != nil {
			c.Kubectl(t, "-n", app, "get", "secret", v.Secret.SecretName)
		}
	}
	for _, ctr := range append(got.Spec.InitContainers, got.Spec.Containers...) {
		for _, e := range ctr.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && (e.ValueFrom.SecretKeyRef.Optional == nil || !*e.ValueFrom.SecretKeyRef.Optional) {
				c.Kubectl(t, "-n", app, "get", "secret", e.ValueFrom.SecretKeyRef.Name)
			}
		}
	}
}

// docCommands are the shell commands of docs/kubernetes.md's install.
func docCommands(t *testing.T) []string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/kubernetes.md")
	if err != nil {
		t.Fatal(err)
	}
	section := string(doc)
	start := strings.Index(section, "## Install: `helm install`")
	if start < 0 {
		t.Fatal("docs/kubernetes.md has no install section")
	}
	section = section[start:]
	block := section[strings.Index(section, "```sh\n")+len("```sh\n"):]
	block = block[:strings.Index(block, "```")]
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(block), "\n") {
		lines = append(lines, strings.TrimSpace(l))
	}
	if len(lines) != 3 {
		t.Fatalf("the install has %d commands, want the secret, helm install and the label", len(lines))
	}
	// The README's "On Kubernetes" shows the same three commands.
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, readmeK8s, _ := strings.Cut(string(readme), "\n## On Kubernetes\n")
	if !strings.Contains(readmeK8s, "```sh\n"+strings.Join(lines, "\n")+"\n```") {
		t.Fatal("README's On Kubernetes section does not show docs/kubernetes.md's install commands")
	}
	return lines
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
