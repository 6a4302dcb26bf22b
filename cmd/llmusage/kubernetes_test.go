package main

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/llmusage/llmusage/internal/cli"
	"github.com/llmusage/llmusage/rules"
)

const kubeDir = "../../deploy/kubernetes"

// TestKubernetesManifests decodes every manifest strictly (an unknown or
// misspelt field is an error) into the Kubernetes and Prometheus Operator
// API types, and checks that what they say of llmusage (commands, flags,
// environment variables, ports, probes, mounts) matches the CLI this
// binary defines.
func TestKubernetesManifests(t *testing.T) {
	var deployments []*appsv1.Deployment
	var podMonitors []*monitoringv1.PodMonitor
	var promRules []*monitoringv1.PrometheusRule
	kinds := map[string]int{}
	for _, path := range manifestFiles(t) {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var meta struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal(raw, &meta); err != nil {
			t.Fatalf("%s: %s", path, err)
		}
		kinds[meta.Kind]++
		var obj any
		switch meta.Kind {
		case "Deployment":
			d := &appsv1.Deployment{}
			deployments, obj = append(deployments, d), d
		case "Job":
			obj = &batchv1.Job{}
		case "ConfigMap":
			obj = &corev1.ConfigMap{}
		case "PodMonitor":
			pm := &monitoringv1.PodMonitor{}
			podMonitors, obj = append(podMonitors, pm), pm
		case "PrometheusRule":
			pr := &monitoringv1.PrometheusRule{}
			promRules, obj = append(promRules, pr), pr
		case "Service":
			obj = &corev1.Service{}
		case "MutatingWebhookConfiguration":
			obj = &admissionregistrationv1.MutatingWebhookConfiguration{}
		default:
			t.Fatalf("%s: unexpected kind %q", path, meta.Kind)
		}
		if err := yaml.UnmarshalStrict(raw, obj); err != nil {
			t.Fatalf("%s does not decode strictly into %T: %s", path, obj, err)
		}
		if job, ok := obj.(*batchv1.Job); ok {
			checkLLMUsageContainers(t, path, job.Spec.Template.Spec)
		}
	}
	for kind, want := range map[string]int{"Deployment": 3, "Job": 1, "ConfigMap": 1, "PodMonitor": 1, "PrometheusRule": 1,
		"Service": 1, "MutatingWebhookConfiguration": 1} {
		if kinds[kind] != want {
			t.Fatalf("%d %s manifests, want %d (%v)", kinds[kind], kind, want, kinds)
		}
	}

	for _, d := range deployments {
		spec := d.Spec.Template.Spec
		native := false
		for _, c := range spec.InitContainers {
			native = native || (isLLMUsage(c) && c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways)
		}
		if d.Name == "my-app" && !native && !hasLLMUsage(spec.Containers) {
			t.Fatalf("deployment %s has no llmusage sidecar", d.Name)
		}
		grace := int64(30)
		if spec.TerminationGracePeriodSeconds != nil {
			grace = *spec.TerminationGracePeriodSeconds
		}
		shutdown := checkLLMUsageContainers(t, d.Name, spec)
		if time.Duration(grace)*time.Second <= shutdown {
			t.Fatalf("deployment %s: terminationGracePeriodSeconds %d is not longer than --shutdown-timeout %s", d.Name, grace, shutdown)
		}
		if d.Spec.Selector.MatchLabels["app.kubernetes.io/name"] != d.Spec.Template.Labels["app.kubernetes.io/name"] {
			t.Fatalf("deployment %s: selector does not match its pods", d.Name)
		}
		for _, pm := range podMonitors {
			if d.Name == "llmusage-injector" {
				break // the webhook, not an application (injector/)
			}
			for k, v := range pm.Spec.Selector.MatchLabels {
				if d.Spec.Template.Labels[k] != v {
					t.Fatalf("PodMonitor %s does not select the pods of %s (%s=%s)", pm.Name, d.Name, k, v)
				}
			}
		}
	}
	if len(podMonitors) != 1 || len(podMonitors[0].Spec.PodMetricsEndpoints) != 1 {
		t.Fatal("want one PodMonitor with one endpoint")
	}
	ep := podMonitors[0].Spec.PodMetricsEndpoints[0]
	if ep.Port == nil || *ep.Port != "metrics" || ep.Path != "/metrics" {
		t.Fatalf("PodMonitor endpoint %+v does not scrape the sidecar's metrics port and path", ep)
	}
	relabelsJob := false
	for _, r := range ep.RelabelConfigs {
		relabelsJob = relabelsJob || (r.TargetLabel == "job" && r.Replacement != nil && *r.Replacement == "llmusage")
	}
	if !relabelsJob {
		t.Fatal(`the PodMonitor must set job="llmusage": the alerts select on it`)
	}
	// kube-prometheus-stack's default selectors pick PodMonitors and
	// PrometheusRules by its release label: without it, nothing scrapes
	// the sidecars and the alerts never fire.
	for _, r := range promRules {
		if got, want := podMonitors[0].Labels["release"], r.Labels["release"]; want == "" || got != want {
			t.Fatalf("PodMonitor %s has release label %q, want the PrometheusRule %s's %q", podMonitors[0].Name, got, r.Name, want)
		}
	}
}

// TestKustomization checks the kustomization's resources and its limits
// ConfigMap, which must load as a limits file.
func TestKustomization(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(kubeDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		APIVersion         string   `json:"apiVersion"`
		Kind               string   `json:"kind"`
		Resources          []string `json:"resources"`
		Components         []string `json:"components"`
		ConfigMapGenerator []struct {
			Name  string   `json:"name"`
			Files []string `json:"files"`
		} `json:"configMapGenerator"`
		Images []struct {
			Name   string `json:"name"`
			NewTag string `json:"newTag"`
		} `json:"images"`
	}
	if err := yaml.UnmarshalStrict(raw, &k); err != nil {
		t.Fatalf("kustomization.yaml: %s", err)
	}
	for _, r := range k.Resources {
		if _, err := os.Stat(filepath.Join(kubeDir, r)); err != nil {
			t.Fatalf("kustomization resource %s: %s", r, err)
		}
	}
	for _, c := range k.Components {
		if _, err := loadComponent(filepath.Join(kubeDir, c)); err != nil {
			t.Fatalf("kustomization component %s: %s", c, err)
		}
	}
	if len(k.ConfigMapGenerator) != 1 || k.ConfigMapGenerator[0].Name != "llmusage-limits" {
		t.Fatalf("want the llmusage-limits ConfigMap generator, got %+v", k.ConfigMapGenerator)
	}
	for _, f := range k.ConfigMapGenerator[0].Files {
		if _, err := rules.LoadFile(filepath.Join(kubeDir, f)); err != nil {
			t.Fatalf("the limits ConfigMap's %s: %s", f, err)
		}
	}
}

// checkLLMUsageContainers checks every llmusage container of a pod
// against the CLI and returns the sidecar's --shutdown-timeout.
func checkLLMUsageContainers(t *testing.T, where string, spec corev1.PodSpec) time.Duration {
	t.Helper()
	shutdown := 15 * time.Second // serve's default
	mounts := map[string]bool{}
	for _, c := range append(append([]corev1.Container(nil), spec.InitContainers...), spec.Containers...) {
		if !isLLMUsage(c) {
			continue
		}
		if len(c.Args) == 0 {
			t.Fatalf("%s/%s: no command in args", where, c.Name)
		}
		cmd := command(c.Args[0])
		if cmd == nil {
			t.Fatalf("%s/%s: llmusage has no command %q", where, c.Name, c.Args[0])
		}
		flags := map[string]cli.Flag{}
		envs := map[string]bool{}
		for _, f := range cmd.Flags {
			for _, n := range f.Names() {
				flags[n] = f
			}
			if ev, ok := f.(interface{ GetEnvVars() []string }); ok {
				for _, e := range ev.GetEnvVars() {
					envs[e] = true
				}
			}
		}
		values := map[string]string{}
		for _, a := range c.Args[1:] {
			name, value, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
			if !strings.HasPrefix(a, "--") || flags[name] == nil {
				t.Fatalf("%s/%s: llmusage %s has no flag %s", where, c.Name, cmd.Name, a)
			}
			values[name] = value
		}
		for _, e := range c.Env {
			if strings.HasPrefix(e.Name, "LLMUSAGE_") && !envs[e.Name] {
				t.Fatalf("%s/%s: llmusage %s reads no environment variable %s", where, c.Name, cmd.Name, e.Name)
			}
		}
		sc := c.SecurityContext
		if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil ||
			len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
			t.Fatalf("%s/%s: securityContext must be non-root, read-only root, no privilege escalation, all capabilities dropped", where, c.Name)
		}
		if c.Resources.Limits.Memory().IsZero() {
			t.Fatalf("%s/%s: no memory limit (--memory-limit=auto follows it)", where, c.Name)
		}
		for _, m := range c.VolumeMounts {
			mounts[m.MountPath] = true
		}
		if cmd.Name != "serve" {
			continue
		}
		if d := values["data-dir"]; d == "" || !mounts[d] {
			t.Fatalf("%s/%s: --data-dir %q is not a mounted volume (the spool must survive container restarts)", where, c.Name, d)
		}
		if f := values["limits-file"]; f != "" && !mounts[filepath.Dir(f)] {
			t.Fatalf("%s/%s: --limits-file %s is not on a mounted volume", where, c.Name, f)
		}
		if host, _, _ := net.SplitHostPort(values["listen-address"]); host != "127.0.0.1" {
			t.Fatalf("%s/%s: the API must listen on loopback, got --listen-address %q", where, c.Name, values["listen-address"])
		}
		if v := values["shutdown-timeout"]; v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				t.Fatal(err)
			}
			shutdown = d
		}
		_, port, err := net.SplitHostPort(values["metrics-address"])
		if err != nil {
			t.Fatalf("%s/%s: --metrics-address: %s", where, c.Name, err)
		}
		metricsPort, _ := strconv.Atoi(port)
		named := false
		for _, p := range c.Ports {
			named = named || (p.Name == "metrics" && int(p.ContainerPort) == metricsPort)
		}
		if !named {
			t.Fatalf("%s/%s: no container port named metrics on %d, where --metrics-address serves", where, c.Name, metricsPort)
		}
		for probe, want := range map[string]struct {
			p    *corev1.Probe
			path string
		}{"startup": {c.StartupProbe, "/healthz"}, "liveness": {c.LivenessProbe, "/healthz"}, "readiness": {c.ReadinessProbe, "/readyz"}} {
			p := want.p
			if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != want.path || p.HTTPGet.Port.String() != "metrics" {
				t.Fatalf("%s/%s: %s probe must GET %s on the metrics port", where, c.Name, probe, want.path)
			}
		}
	}
	return shutdown
}

func manifestFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	for _, pattern := range []string{"*.yaml", "*/*.yaml"} {
		m, err := filepath.Glob(filepath.Join(kubeDir, pattern))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range m {
			if base := filepath.Base(f); base != "kustomization.yaml" && base != "limits.yaml" {
				files = append(files, f)
			}
		}
	}
	if len(files) < 6 {
		t.Fatalf("only %d manifests in %s", len(files), kubeDir)
	}
	return files
}

func command(name string) *cli.Command {
	for _, c := range newApp().Commands {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func isLLMUsage(c corev1.Container) bool { return strings.Contains(c.Image, "/llmusage/llmusage") }

func hasLLMUsage(cs []corev1.Container) bool {
	for _, c := range cs {
		if isLLMUsage(c) {
			return true
		}
	}
	return false
}
