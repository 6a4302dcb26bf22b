package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"

	"github.com/llmusage/llmusage/rules"
)

const (
	chartDir       = "../../deploy/helm/llmusage"
	chartNamespace = "llmusage-system"
)

var helmPath = sync.OnceValues(func() (string, error) {
	if p := os.Getenv("LLMUSAGE_HELM"); p != "" {
		return p, nil
	}
	out, err := exec.Command("../../scripts/helm.sh").Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return "", &helmError{string(ee.Stderr), err}
		}
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
})

type helmError struct {
	stderr string
	err    error
}

func (e *helmError) Error() string { return e.err.Error() + ": " + e.stderr }

// helm runs the helm CLI of scripts/helm.sh (or $LLMUSAGE_HELM), built on
// first use: the test-env script builds it beforehand.
func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	bin, err := helmPath()
	if err != nil {
		t.Fatalf("no helm (scripts/helm.sh): %s", err)
	}
	var out bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	err = cmd.Run()
	return out.String(), err
}

// chartVariants are the values the chart is linted and rendered with.
var chartVariants = map[string][]string{
	"default": nil,
	"all-on":  {"--values", filepath.Join(chartDir, "ci/all-on-values.yaml")},
	// cert-manager with the chart's own self-signed Issuer.
	"cert-manager": {"--set", "certManager.enabled=true"},
	// A namespace's objects only: what injected pods of another
	// namespace need, the migration an ordinary Job.
	"namespace-only": {"--set", "injector.enabled=false,migration.hook=false,dashboards.enabled=false,monitoring.prometheusRule.enabled=false"},
}

// TestHelmChartLint runs helm lint --strict with each variant's values.
func TestHelmChartLint(t *testing.T) {
	for name, values := range chartVariants {
		out, err := helm(t, append([]string{"lint", "--strict", chartDir}, values...)...)
		if err != nil || strings.Contains(out, "[WARNING]") || strings.Contains(out, "[ERROR]") {
			t.Fatalf("helm lint with the %s values: %v\n%s", name, err, out)
		}
	}
}

// rendered is what helm template made of one variant, decoded.
type rendered struct {
	kinds          map[string]int
	deployments    []*appsv1.Deployment
	services       []*corev1.Service
	secrets        []*corev1.Secret
	configMaps     []*corev1.ConfigMap
	jobs           []*batchv1.Job
	webhooks       []*admissionregistrationv1.MutatingWebhookConfiguration
	podMonitors    []*monitoringv1.PodMonitor
	rules          []*monitoringv1.PrometheusRule
	certManager    []map[string]any
	disruptionBudg []*policyv1.PodDisruptionBudget
}

// helmTemplate renders the chart and decodes every object strictly (an
// unknown or misspelt field is an error) into its Kubernetes or
// Prometheus Operator type; cert-manager's, which go.mod lacks, into maps.
func helmTemplate(t *testing.T, values ...string) *rendered {
	t.Helper()
	out, err := helm(t, append([]string{"template", "rel", chartDir, "--namespace", chartNamespace}, values...)...)
	if err != nil {
		t.Fatalf("helm template %s: %s\n%s", strings.Join(values, " "), err, out)
	}
	r := &rendered{kinds: map[string]int{}}
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(out, -1) {
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("%s\n%s", err, doc)
		}
		if meta.Kind == "" {
			if strings.TrimSpace(regexp.MustCompile(`(?m)^#.*$`).ReplaceAllString(doc, "")) != "" {
				t.Fatalf("an object without kind:\n%s", doc)
			}
			continue
		}
		r.kinds[meta.Kind]++
		var obj any
		switch meta.APIVersion + " " + meta.Kind {
		case "apps/v1 Deployment":
			d := &appsv1.Deployment{}
			r.deployments, obj = append(r.deployments, d), d
		case "v1 Service":
			s := &corev1.Service{}
			r.services, obj = append(r.services, s), s
		case "v1 Secret":
			s := &corev1.Secret{}
			r.secrets, obj = append(r.secrets, s), s
		case "v1 ConfigMap":
			c := &corev1.ConfigMap{}
			r.configMaps, obj = append(r.configMaps, c), c
		case "batch/v1 Job":
			j := &batchv1.Job{}
			r.jobs, obj = append(r.jobs, j), j
		case "admissionregistration.k8s.io/v1 MutatingWebhookConfiguration":
			w := &admissionregistrationv1.MutatingWebhookConfiguration{}
			r.webhooks, obj = append(r.webhooks, w), w
		case "policy/v1 PodDisruptionBudget":
			p := &policyv1.PodDisruptionBudget{}
			r.disruptionBudg, obj = append(r.disruptionBudg, p), p
		case "monitoring.coreos.com/v1 PodMonitor":
			p := &monitoringv1.PodMonitor{}
			r.podMonitors, obj = append(r.podMonitors, p), p
		case "monitoring.coreos.com/v1 PrometheusRule":
			p := &monitoringv1.PrometheusRule{}
			r.rules, obj = append(r.rules, p), p
		case "cert-manager.io/v1 Certificate", "cert-manager.io/v1 Issuer":
			m := map[string]any{}
			r.certManager, obj = append(r.certManager, m), &m
		default:
			t.Fatalf("unexpected %s %s:\n%s", meta.APIVersion, meta.Kind, doc)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%s does not decode strictly into %T: %s\n%s", meta.Kind, obj, err, doc)
		}
	}
	return r
}

// TestHelmChart renders the chart with each variant's values and checks
// what the objects say of llmusage against this binary's CLI and against
// each other: the injector's arguments and the sidecars' it passes on, its
// certificate and the webhook's CA, the webhooks' service, paths and
// selectors, the PodMonitors' job labels, and that the rules, dashboards
// and default limits are those of dashboards/ and deploy/kubernetes/.
func TestHelmChart(t *testing.T) {
	for name, values := range chartVariants {
		t.Run(name, func(t *testing.T) {
			r := helmTemplate(t, values...)
			checkHelmObjects(t, name, r)
		})
	}
}

func checkHelmObjects(t *testing.T, variant string, r *rendered) {
	injector := variant != "namespace-only"
	want := map[string]int{"ConfigMap": 2, "Job": 1, "PodMonitor": 2, "PrometheusRule": 1, "Deployment": 1,
		"Service": 1, "MutatingWebhookConfiguration": 1, "PodDisruptionBudget": 1}
	switch variant {
	case "default":
		want["Secret"] = 1
	case "all-on":
		want["Certificate"] = 1
	case "cert-manager":
		// The serving certificate, and the chart's own CA that signs it.
		want["Certificate"], want["Issuer"] = 2, 2
	case "namespace-only":
		want = map[string]int{"ConfigMap": 1, "Job": 1, "PodMonitor": 1}
	}
	if !reflect.DeepEqual(r.kinds, want) {
		t.Fatalf("rendered %v, want %v", r.kinds, want)
	}

	// The migration Job: llmusage migrate, a hook unless told otherwise.
	job := r.jobs[0]
	checkLLMUsageContainers(t, "Job "+job.Name, job.Spec.Template.Spec)
	if c := job.Spec.Template.Spec.Containers[0]; c.Args[0] != "migrate" || len(c.Env) != 1 || c.Env[0].Name != "LLMUSAGE_DATABASE_URL" || c.Env[0].ValueFrom.SecretKeyRef == nil {
		t.Fatalf("the Job does not run llmusage migrate with the database URL's Secret: %+v", c)
	}
	databaseSecret := job.Spec.Template.Spec.Containers[0].Env[0].ValueFrom.SecretKeyRef.Name
	if hook := job.Annotations["helm.sh/hook"]; (hook == "pre-install,pre-upgrade") != (variant != "namespace-only") {
		t.Fatalf("the Job's helm.sh/hook is %q", hook)
	}

	// The limits ConfigMap loads as a limits file; by default it is
	// deploy/kubernetes/limits.yaml.
	var limits *corev1.ConfigMap
	for _, cm := range r.configMaps {
		if _, ok := cm.Data["limits.yaml"]; ok {
			limits = cm
		}
	}
	if limits == nil {
		t.Fatal("no limits ConfigMap")
	}
	path := filepath.Join(t.TempDir(), "limits.yaml")
	if err := os.WriteFile(path, []byte(limits.Data["limits.yaml"]), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := rules.LoadFile(path); err != nil {
		t.Fatalf("the limits ConfigMap: %s", err)
	}
	if variant == "default" {
		example, err := os.ReadFile(filepath.Join(kubeDir, "limits.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if limits.Data["limits.yaml"] != string(example) {
			t.Fatalf("values.yaml's limits.file is not deploy/kubernetes/limits.yaml:\n%s", limits.Data["limits.yaml"])
		}
	}

	// The sidecars' PodMonitor: the container llmusage, job="llmusage".
	var sidecars *monitoringv1.PodMonitor
	for _, pm := range r.podMonitors {
		if len(pm.Spec.PodMetricsEndpoints) != 1 {
			t.Fatalf("PodMonitor %s: want one endpoint", pm.Name)
		}
		ep := pm.Spec.PodMetricsEndpoints[0]
		if ep.Port == nil || *ep.Port != "metrics" || ep.Path != "/metrics" {
			t.Fatalf("PodMonitor %s does not scrape the port metrics on /metrics", pm.Name)
		}
		for _, rc := range ep.RelabelConfigs {
			if rc.TargetLabel == "job" && rc.Replacement != nil && *rc.Replacement == "llmusage" {
				sidecars = pm
			}
		}
		if pm.Labels["release"] == "" {
			t.Fatalf("PodMonitor %s has no release label", pm.Name)
		}
	}
	if sidecars == nil {
		t.Fatal(`no PodMonitor sets job="llmusage": the alerts select on it`)
	}
	keepsSidecar := false
	for _, rc := range sidecars.Spec.PodMetricsEndpoints[0].RelabelConfigs {
		keepsSidecar = keepsSidecar || (rc.Action == "keep" && len(rc.SourceLabels) == 1 &&
			rc.SourceLabels[0] == "__meta_kubernetes_pod_container_name" && rc.Regex == sidecarContainerName(t))
	}
	if !keepsSidecar {
		t.Fatalf("PodMonitor %s does not keep only the container %s", sidecars.Name, sidecarContainerName(t))
	}

	// The rules and dashboards are those of dashboards/.
	if len(r.rules) == 1 {
		checkHelmRules(t, r.rules[0])
	}
	for _, cm := range r.configMaps {
		if cm != limits {
			checkHelmDashboards(t, cm)
		}
	}

	if injector {
		checkHelmInjector(t, variant, r, limits.Name, databaseSecret)
	}
}

// sidecarContainerName is the name of the sidecar container of
// deploy/kubernetes/deployment.yaml, which the injector copies.
func sidecarContainerName(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(kubeDir, "deployment.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	d := &appsv1.Deployment{}
	if err := yaml.Unmarshal(raw, d); err != nil {
		t.Fatal(err)
	}
	for _, c := range d.Spec.Template.Spec.InitContainers {
		if isLLMUsage(c) {
			return c.Name
		}
	}
	t.Fatal("no llmusage sidecar in deploy/kubernetes/deployment.yaml")
	return ""
}

func checkHelmRules(t *testing.T, pr *monitoringv1.PrometheusRule) {
	t.Helper()
	raw, err := os.ReadFile("../../dashboards/rules/llmusage.rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var want monitoringv1.PrometheusRuleSpec
	if err := yaml.UnmarshalStrict(raw, &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(pr.Spec, want) {
		t.Fatalf("the PrometheusRule's groups are not dashboards/rules/llmusage.rules.yaml's: run go generate ./dashboards")
	}
	if pr.Labels["release"] == "" {
		t.Fatal("the PrometheusRule has no release label")
	}
}

func checkHelmDashboards(t *testing.T, cm *corev1.ConfigMap) {
	t.Helper()
	files, err := filepath.Glob("../../dashboards/*.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(cm.Data) != len(files) || len(files) == 0 {
		t.Fatalf("ConfigMap %s has %d dashboards, dashboards/ %d", cm.Name, len(cm.Data), len(files))
	}
	for _, f := range files {
		want, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if got := cm.Data[filepath.Base(f)]; got != strings.TrimRight(string(want), "\n") {
			t.Fatalf("ConfigMap %s: %s is not dashboards/%s: run go generate ./dashboards", cm.Name, filepath.Base(f), filepath.Base(f))
		}
	}
	if cm.Labels["grafana_dashboard"] == "" {
		t.Fatalf("ConfigMap %s has no grafana_dashboard label", cm.Name)
	}
}

func checkHelmInjector(t *testing.T, variant string, r *rendered, limitsConfigMap, databaseSecret string) {
	t.Helper()
	d := r.deployments[0]
	spec := d.Spec.Template.Spec
	if len(spec.Containers) != 1 || !isLLMUsage(spec.Containers[0]) || spec.Containers[0].Args[0] != "inject" {
		t.Fatalf("Deployment %s does not run llmusage inject", d.Name)
	}
	c := spec.Containers[0]
	for k, v := range d.Spec.Selector.MatchLabels {
		if d.Spec.Template.Labels[k] != v {
			t.Fatalf("Deployment %s: selector does not match its pods", d.Name)
		}
	}
	// The injector's arguments against its CLI; the sidecars' against serve's.
	if command("inject") == nil {
		t.Fatal("this binary has no inject command")
	}
	checkLLMUsageContainers(t, "Deployment "+d.Name, spec)
	args := map[string][]string{}
	for _, a := range c.Args[1:] {
		name, value, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		args[name] = append(args[name], value)
	}
	serve := map[string]bool{}
	for _, f := range command("serve").Flags {
		for _, n := range f.Names() {
			serve[n] = true
		}
	}
	for _, a := range args["sidecar-args"] {
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !serve[name] {
			t.Fatalf("--sidecar-args=%s: llmusage serve has no such flag", a)
		}
	}
	if got := args["limits-configmap"]; len(got) != 1 || got[0] != limitsConfigMap {
		t.Fatalf("--limits-configmap %v, the chart's ConfigMap is %s", got, limitsConfigMap)
	}
	if got := args["database-secret"]; len(got) != 1 || got[0] != databaseSecret {
		t.Fatalf("--database-secret %v, the migration Job's Secret is %s", got, databaseSecret)
	}
	if variant == "all-on" && len(args["redis-secret"]) != 1 {
		t.Fatal("redis.secretName gives no --redis-secret")
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	for flag, port := range map[string]string{"listen-address": "https", "metrics-address": "metrics"} {
		if got := args[flag]; len(got) != 1 || got[0] != ":"+strconv.Itoa(int(ports[port])) {
			t.Fatalf("--%s %v, the container port %s is %d", flag, got, port, ports[port])
		}
	}
	// The TLS files are the mounted Secret's.
	var tlsSecret string
	for _, v := range spec.Volumes {
		for _, m := range c.VolumeMounts {
			if m.Name == v.Name && v.Secret != nil && filepath.Dir(args["tls-cert-file"][0]) == m.MountPath && filepath.Dir(args["tls-key-file"][0]) == m.MountPath {
				tlsSecret = v.Secret.SecretName
			}
		}
	}
	if tlsSecret == "" {
		t.Fatal("--tls-cert-file and --tls-key-file are not in a mounted Secret")
	}

	// The Service reaches the webhook's port; the PodDisruptionBudget and
	// the injector's PodMonitor select its pods.
	svc := r.services[0]
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 443 || svc.Spec.Ports[0].TargetPort.String() != "https" {
		t.Fatalf("Service %s does not forward 443 to the port https", svc.Name)
	}
	for k, v := range svc.Spec.Selector {
		if d.Spec.Template.Labels[k] != v {
			t.Fatalf("Service %s does not select the injector's pods", svc.Name)
		}
	}
	for k, v := range r.disruptionBudg[0].Spec.Selector.MatchLabels {
		if d.Spec.Template.Labels[k] != v {
			t.Fatal("the PodDisruptionBudget does not select the injector's pods")
		}
	}

	// The webhooks: the Service, the injector's two paths, never blocking
	// a pod for long, never asking the injector about its own pods.
	w := r.webhooks[0]
	if len(w.Webhooks) != 2 {
		t.Fatalf("%d webhooks, want 2", len(w.Webhooks))
	}
	paths := map[string]bool{}
	for _, wh := range w.Webhooks {
		s := wh.ClientConfig.Service
		if s == nil || s.Name != svc.Name || s.Namespace != chartNamespace || s.Port == nil || *s.Port != 443 || s.Path == nil {
			t.Fatalf("webhook %s does not call the Service %s/%s on 443", wh.Name, chartNamespace, svc.Name)
		}
		paths[*s.Path] = true
		if wh.SideEffects == nil || *wh.SideEffects != admissionregistrationv1.SideEffectClassNone ||
			!reflect.DeepEqual(wh.AdmissionReviewVersions, []string{"v1"}) || wh.TimeoutSeconds == nil || *wh.TimeoutSeconds > 5 {
			t.Fatalf("webhook %s: want sideEffects None, admissionReviewVersions [v1], a timeout of 5s at most", wh.Name)
		}
		if wh.FailurePolicy == nil || (*wh.FailurePolicy != admissionregistrationv1.Ignore) != (variant == "all-on") {
			t.Fatalf("webhook %s: failurePolicy %v", wh.Name, wh.FailurePolicy)
		}
		for _, e := range wh.NamespaceSelector.MatchExpressions {
			if e.Key == "kubernetes.io/metadata.name" && e.Operator == "NotIn" && slices.Contains(e.Values, chartNamespace) {
				t.Fatalf("webhook %s excludes the release's namespace, which may be the application's", wh.Name)
			}
		}
		for what, sel := range map[string]*metav1.LabelSelector{"namespaceSelector": wh.NamespaceSelector, "objectSelector": wh.ObjectSelector} {
			if errs := metav1validation.ValidateLabelSelector(sel, metav1validation.LabelSelectorValidationOptions{}, field.NewPath(what)); len(errs) > 0 {
				t.Fatalf("webhook %s: the API server refuses its %s: %v", wh.Name, what, errs.ToAggregate())
			}
		}
		excludesPods := false
		for _, e := range wh.ObjectSelector.MatchExpressions {
			excludesPods = excludesPods || (e.Operator == "NotIn" && slices.Contains(e.Values, d.Spec.Template.Labels[e.Key]))
		}
		if !excludesPods {
			t.Fatalf("webhook %s does not exclude the injector's pods", wh.Name)
		}
		if *s.Path == "/mutate" && wh.NamespaceSelector.MatchLabels["llmusage.io/inject"] != "enabled" {
			t.Fatalf("webhook %s does not select the namespaces labelled llmusage.io/inject=enabled", wh.Name)
		}
		if *s.Path == "/mutate/annotated" && (len(wh.MatchConditions) != 1 || !strings.Contains(wh.MatchConditions[0].Expression, `'llmusage.io/inject'`)) {
			t.Fatalf("webhook %s has no matchCondition on the annotation llmusage.io/inject", wh.Name)
		}
	}
	if !paths["/mutate"] || !paths["/mutate/annotated"] {
		t.Fatalf("webhook paths %v, want /mutate and /mutate/annotated", paths)
	}

	// The certificate: cert-manager's (and its CA in the annotation), or
	// helm's, valid for the Service's name and signed by the caBundle.
	dnsName := svc.Name + "." + chartNamespace + ".svc"
	if variant == "default" {
		if w.Annotations["cert-manager.io/inject-ca-from"] != "" {
			t.Fatal("cert-manager's annotation without cert-manager")
		}
		s := r.secrets[0]
		if s.Name != tlsSecret || s.Type != corev1.SecretTypeTLS {
			t.Fatalf("the generated Secret %s (%s) is not the injector's %s", s.Name, s.Type, tlsSecret)
		}
		for _, wh := range w.Webhooks {
			if !bytes.Equal(wh.ClientConfig.CABundle, s.Data["ca.crt"]) {
				t.Fatalf("webhook %s: caBundle is not the Secret's ca.crt", wh.Name)
			}
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(s.Data["ca.crt"]) {
			t.Fatal("ca.crt holds no certificate")
		}
		block, _ := pem.Decode(s.Data["tls.crt"])
		if block == nil {
			t.Fatal("tls.crt holds no PEM")
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: dnsName, Roots: roots}); err != nil {
			t.Fatalf("the generated certificate does not serve %s: %s", dnsName, err)
		}
		return
	}
	objects := map[string]map[string]any{} // by kind/name
	for _, o := range r.certManager {
		meta, _ := o["metadata"].(map[string]any)
		objects[o["kind"].(string)+"/"+meta["name"].(string)] = o
	}
	injectFrom := w.Annotations["cert-manager.io/inject-ca-from"]
	name, ok := strings.CutPrefix(injectFrom, chartNamespace+"/")
	cert := objects["Certificate/"+name]
	if !ok || cert == nil {
		t.Fatalf("cert-manager.io/inject-ca-from is %q, not %s/ and a Certificate of the chart", injectFrom, chartNamespace)
	}
	certSpec, _ := cert["spec"].(map[string]any)
	// With the chart's own issuer, the webhook's certificate is signed by
	// a CA (the caBundle) that outlives its renewals: a self-signed
	// serving certificate would change the caBundle at each renewal, a
	// minute or two before the kubelet gives the injector the new files.
	if variant == "cert-manager" {
		ref, _ := certSpec["issuerRef"].(map[string]any)
		issuer := objects[fmt.Sprintf("%v/%v", ref["kind"], ref["name"])]
		issuerSpec, _ := issuer["spec"].(map[string]any)
		ca, _ := issuerSpec["ca"].(map[string]any)
		if ca == nil {
			t.Fatalf("the webhook's Certificate is issued by %v, not by a CA Issuer", ref)
		}
		var caCert map[string]any
		for _, o := range r.certManager {
			if spec, _ := o["spec"].(map[string]any); o["kind"] == "Certificate" && spec["secretName"] == ca["secretName"] {
				caCert = spec
			}
		}
		if caCert == nil || caCert["isCA"] != true {
			t.Fatalf("the CA Issuer's Secret %v is not that of a Certificate with isCA", ca["secretName"])
		}
		if pk, _ := caCert["privateKey"].(map[string]any); pk["rotationPolicy"] != "Never" {
			t.Fatal("the CA's key changes when it is renewed: the certificates it signed would no longer verify")
		}
	}
	if certSpec["secretName"] != tlsSecret {
		t.Fatalf("the Certificate's Secret %v is not the injector's %s", certSpec["secretName"], tlsSecret)
	}
	if names, _ := certSpec["dnsNames"].([]any); !slices.Contains(names, any(dnsName)) {
		t.Fatalf("the Certificate's dnsNames %v lack %s", names, dnsName)
	}
	for _, wh := range w.Webhooks {
		if len(wh.ClientConfig.CABundle) != 0 {
			t.Fatalf("webhook %s: a caBundle besides cert-manager's", wh.Name)
		}
	}
}

// TestHelmChartWebhookSelectors: the webhooks' selectors are valid
// whatever injector.webhook.excludeNamespaces holds; an empty list (or
// null) excludes no namespace, where "NotIn" with no values would have
// made the API server refuse the MutatingWebhookConfiguration.
func TestHelmChartWebhookSelectors(t *testing.T) {
	for _, values := range [][]string{
		{"--set-json", "injector.webhook.excludeNamespaces=[]"},
		{"--set", "injector.webhook.excludeNamespaces=null"},
		{"--set", "injector.webhook.excludeNamespaces={kube-system,kube-system}"},
	} {
		r := helmTemplate(t, values...)
		if len(r.webhooks) != 1 || len(r.webhooks[0].Webhooks) != 2 {
			t.Fatalf("%v: webhooks %+v", values, r.webhooks)
		}
		for _, wh := range r.webhooks[0].Webhooks {
			for what, sel := range map[string]*metav1.LabelSelector{"namespaceSelector": wh.NamespaceSelector, "objectSelector": wh.ObjectSelector} {
				if errs := metav1validation.ValidateLabelSelector(sel, metav1validation.LabelSelectorValidationOptions{}, field.NewPath(what)); len(errs) > 0 {
					t.Fatalf("%v: webhook %s: the API server refuses its %s: %v", values, wh.Name, what, errs.ToAggregate())
				}
			}
		}
	}
}

// TestHelmChartNativeSidecarKubeVersion: before Kubernetes 1.29 the API
// server drops an init container's restartPolicy (after the webhook's
// patch), so that a native sidecar becomes an init container that never
// ends and every injected pod stays in Init: the chart refuses
// injector.sidecar.mode=native there, and says to use classic.
func TestHelmChartNativeSidecarKubeVersion(t *testing.T) {
	for _, v := range []string{"1.28.5", "v1.28.5-eks-5e0fdde"} {
		out, err := helm(t, "template", "rel", chartDir, "--kube-version", v)
		if err == nil || !strings.Contains(out, "injector.sidecar.mode=classic") {
			t.Fatalf("Kubernetes %s, native sidecars: want an error naming injector.sidecar.mode=classic, got %v\n%.500s", v, err, out)
		}
	}
	for _, values := range [][]string{
		{"--kube-version", "1.28.5", "--set", "injector.sidecar.mode=classic"},
		{"--kube-version", "1.28.5", "--set", "injector.enabled=false"},
		{"--kube-version", "1.29.0"},
		{"--kube-version", "v1.29.1-gke.1589000"},
	} {
		if out, err := helm(t, append([]string{"template", "rel", chartDir}, values...)...); err != nil {
			t.Fatalf("helm template %v: %s\n%.500s", values, err, out)
		}
	}
}

// TestHelmChartNamespaceRelease: the README's release for another
// application namespace makes the limits ConfigMap only. The first
// release's PodMonitor (namespaceSelector any), PrometheusRule and
// dashboards cover every namespace already: a second copy would scrape
// each sidecar twice into the same series and fire each alert twice.
func TestHelmChartNamespaceRelease(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(chartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var sets []string
	for _, block := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(string(readme), -1) {
		if strings.Contains(block[1], "injector.enabled=false") {
			for _, m := range regexp.MustCompile(`--set (\S+)`).FindAllStringSubmatch(block[1], -1) {
				sets = append(sets, "--set", m[1])
			}
		}
	}
	if len(sets) == 0 {
		t.Fatal("the README has no command for another namespace (injector.enabled=false)")
	}
	r := helmTemplate(t, sets...)
	if want := map[string]int{"ConfigMap": 1}; !reflect.DeepEqual(r.kinds, want) || r.configMaps[0].Data["limits.yaml"] == "" {
		t.Fatalf("the README's %v renders %v, want the limits ConfigMap only", sets, r.kinds)
	}
	doc, err := os.ReadFile("../../docs/kubernetes.md")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(doc), "--set injector.enabled=false`") {
		t.Fatal("docs/kubernetes.md gives another namespace a release with injector.enabled=false only")
	}
}

// TestHelmChartPullPolicy: with the default tag (appVersion, latest) the
// injector and the migration Job pull their image, as the sidecars do
// (Kubernetes' default for latest): with IfNotPresent a node would run
// the "latest" it pulled first, and the migration an older schema than
// the sidecars'.
func TestHelmChartPullPolicy(t *testing.T) {
	r := helmTemplate(t)
	var specs []corev1.PodSpec
	for _, d := range r.deployments {
		specs = append(specs, d.Spec.Template.Spec)
	}
	for _, j := range r.jobs {
		specs = append(specs, j.Spec.Template.Spec)
	}
	for _, spec := range specs {
		for _, c := range spec.Containers {
			if strings.HasSuffix(c.Image, ":latest") && c.ImagePullPolicy != "" && c.ImagePullPolicy != corev1.PullAlways {
				t.Fatalf("container %s: image %s with imagePullPolicy %s", c.Name, c.Image, c.ImagePullPolicy)
			}
		}
	}
	if len(specs) != 2 {
		t.Fatalf("%d pods, want the injector's and the Job's", len(specs))
	}
}

// TestHelmChartRejectsBadValues: values.schema.json turns a value of the
// wrong type, an unknown key or a value out of range into an error of
// helm template (and so of install and upgrade).
func TestHelmChartRejectsBadValues(t *testing.T) {
	for _, bad := range [][]string{
		{"--set-string", "injector.replicas=two"},
		{"--set", "injector.replicaz=2"},
		{"--set", "unknown=1"},
		{"--set", "injector.webhook.failurePolicy=Maybe"},
		{"--set", "injector.webhook.timeoutSeconds=60"},
		{"--set", "injector.sidecar.mode=sometimes"},
		{"--set", "injector.sidecar.memoryLimit=lots"},
		{"--set", "database.secretName=Not_A_Name"},
		{"--set", "monitoring.podMonitor.interval=soon"},
		{"--set", "injector.extraArgs[0]=not-a-flag"},
		{"--set-string", "migration.enabled=yes"},
	} {
		out, err := helm(t, append([]string{"template", "rel", chartDir}, bad...)...)
		if err == nil || !strings.Contains(out, "schema") {
			t.Fatalf("helm template %s: want a schema error, got %v\n%.500s", strings.Join(bad, " "), err, out)
		}
	}
}

// TestHelmChartReadme checks the chart's README: every --set of its
// commands renders, and every key of its values table is in values.yaml.
func TestHelmChartReadme(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(chartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var sets []string
	for _, m := range regexp.MustCompile(`--set (\S+)`).FindAllStringSubmatch(string(readme), -1) {
		sets = append(sets, "--set", m[1])
	}
	if len(sets) == 0 {
		t.Fatal("no --set in the README")
	}
	if out, err := helm(t, append([]string{"template", "rel", chartDir}, sets...)...); err != nil {
		t.Fatalf("the README's %v: %s\n%.500s", sets, err, out)
	}
	raw, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatal(err)
	}
	rows := regexp.MustCompile("(?m)^\\| (`[^|]+) \\|").FindAllStringSubmatch(string(readme), -1)
	if len(rows) < 40 {
		t.Fatalf("only %d rows in the README's values table", len(rows))
	}
	documented := map[string]bool{}
	for _, row := range rows {
		// `a.b`, `.c` (a sibling of the previous key), `d`
		var parent string
		for _, k := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(row[1], -1) {
			key := k[1]
			if strings.HasPrefix(key, ".") {
				key = parent + key
			} else if i := strings.LastIndex(key, "."); i >= 0 {
				parent = key[:i]
			}
			var v any = values
			for _, part := range strings.Split(key, ".") {
				m, ok := v.(map[string]any)
				if !ok {
					t.Fatalf("README key %s is not in values.yaml", key)
				}
				if v, ok = m[part]; !ok {
					t.Fatalf("README key %s is not in values.yaml", key)
				}
			}
			documented[key] = true
		}
	}
	// Every leaf of values.yaml (or map of free-form content) has a row.
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		m, ok := v.(map[string]any)
		if documented[prefix] || (!ok && prefix != "") || (ok && len(m) == 0) {
			if !documented[prefix] {
				t.Errorf("values.yaml's %s is not in the README's table", prefix)
			}
			return
		}
		for k, sub := range m {
			if prefix != "" {
				k = prefix + "." + k
			}
			walk(k, sub)
		}
	}
	walk("", values)
}
