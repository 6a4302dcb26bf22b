package inject

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

// ca issues the test certificates; the client trusts it only.
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t *testing.T) *ca {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &ca{cert, key, pool}
}

// issue returns the PEM pair of a serving certificate for 127.0.0.1.
func (c *ca) issue(t *testing.T, serial int64, notAfter time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "llmusage-injector"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// secretDir lays out the pair as the kubelet mounts a Secret: tls.crt
// and tls.key are links through ..data to a timestamped directory, and an
// update swaps ..data.
type secretDir struct {
	dir string
	n   int
}

func (s *secretDir) write(t *testing.T, certPEM, keyPEM []byte) {
	t.Helper()
	s.n++
	version := filepath.Join(s.dir, "..v"+string(rune('0'+s.n)))
	if err := os.Mkdir(version, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM} {
		if err := os.WriteFile(filepath.Join(version, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(s.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(version), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"tls.crt", "tls.key"} {
		link := filepath.Join(s.dir, name)
		if _, err := os.Lstat(link); err != nil {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
}

type testServer struct {
	srv     *Server
	reg     *prometheus.Registry
	client  *http.Client
	base    string
	metrics string
	secret  *secretDir
	ca      *ca
}

func startServer(t *testing.T, defaults Settings) *testServer {
	t.Helper()
	authority := newCA(t)
	secret := &secretDir{dir: t.TempDir()}
	certPEM, keyPEM := authority.issue(t, 1001, time.Now().Add(48*time.Hour))
	secret.write(t, certPEM, keyPEM)
	reg := prometheus.NewRegistry()
	srv, err := NewServer(ServerConfig{
		ListenAddress: "127.0.0.1:0", MetricsAddress: "127.0.0.1:0",
		CertFile: filepath.Join(secret.dir, "tls.crt"), KeyFile: filepath.Join(secret.dir, "tls.key"),
		ShutdownTimeout: time.Second,
		Injector:        Options{Defaults: defaults, Version: "test", Registerer: reg},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: authority.pool}, DisableKeepAlives: true}}
	ts := &testServer{srv: srv, reg: reg, client: client, secret: secret, ca: authority,
		base: "https://" + srv.APIAddr().String(), metrics: "http://" + srv.MetricsAddr().String()}
	waitReady(t, ts)
	return ts
}

func waitReady(t *testing.T, ts *testServer) {
	t.Helper()
	for i := 0; ; i++ {
		resp, err := ts.client.Get(ts.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if i > 100 {
			t.Fatalf("not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// appPod is a pod as the API server sends it for a CREATE: defaulted.
func appPod() *corev1.Pod {
	grace := int64(10)
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{GenerateName: "my-app-", Namespace: "team-a", Labels: map[string]string{"app": "my-app"}},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{
				{Name: "app", Image: "ghcr.io/example/my-app:1", Env: []corev1.EnvVar{{Name: "MODE", Value: "prod"}}},
				{Name: "helper", Image: "busybox"},
			},
		},
	}
}

// review posts an AdmissionReview of pod to path and returns the pod as
// the answer's patch leaves it, and the response.
func (ts *testServer) review(t *testing.T, path string, pod *corev1.Pod) (*corev1.Pod, *admissionv1.AdmissionResponse) {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	resp := ts.reviewRaw(t, path, "Pod", raw)
	if !resp.Allowed {
		t.Fatalf("pod refused: %+v", resp.Result)
	}
	out := &corev1.Pod{}
	if len(resp.Patch) == 0 {
		if resp.PatchType != nil {
			t.Fatal("a patch type without a patch")
		}
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatal(err)
		}
		return out, resp
	}
	if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("patch type %v, want JSONPatch", resp.PatchType)
	}
	patch, err := jsonpatch.DecodePatch(resp.Patch)
	if err != nil {
		t.Fatalf("the patch does not decode: %s\n%s", err, resp.Patch)
	}
	patched, err := patch.Apply(raw)
	if err != nil {
		t.Fatalf("the patch does not apply: %s\n%s", err, resp.Patch)
	}
	dec := json.NewDecoder(bytes.NewReader(patched))
	dec.DisallowUnknownFields()
	if err := dec.Decode(out); err != nil {
		t.Fatalf("the patched pod does not decode: %s", err)
	}
	return out, resp
}

func (ts *testServer) reviewRaw(t *testing.T, path, kind string, object []byte) *admissionv1.AdmissionResponse {
	t.Helper()
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       "0a1b2c3d",
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: kind},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: strings.ToLower(kind) + "s"},
			Namespace: "team-a",
			Operation: admissionv1.Create,
			Object:    runtime.RawExtension{Raw: object},
		},
	}
	body, _ := json.Marshal(review)
	code, b := ts.post(t, path, body)
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, b)
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" || out.Request != nil || out.Response == nil || out.Response.UID != "0a1b2c3d" {
		t.Fatalf("bad answer: %s", b)
	}
	return out.Response
}

func (ts *testServer) post(t *testing.T, path string, body []byte) (int, []byte) {
	t.Helper()
	resp, err := ts.client.Post(ts.base+path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// example reads the example Deployment's pod, independently of the
// package the injector reads it with.
func example(t *testing.T, file string) corev1.PodSpec {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("../deploy/kubernetes", file))
	if err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	if err := yaml.UnmarshalStrict(raw, &d); err != nil {
		t.Fatal(err)
	}
	return d.Spec.Template.Spec
}

func container(cs []corev1.Container, name string) *corev1.Container {
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	return nil
}

func volumeNamed(vs []corev1.Volume, name string) *corev1.Volume {
	for i := range vs {
		if vs[i].Name == name {
			return &vs[i]
		}
	}
	return nil
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func env(c *corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

// metric returns the value of one series of the registry (0 if absent).
func (ts *testServer) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := ts.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return 0
}

func TestInjectNamespacePod(t *testing.T) {
	ts := startServer(t, Settings{})
	pod, resp := ts.review(t, "/mutate", appPod())
	if len(resp.Patch) == 0 || len(resp.Warnings) != 0 {
		t.Fatalf("patch %s, warnings %v", resp.Patch, resp.Warnings)
	}
	want := example(t, "deployment.yaml")
	got := container(pod.Spec.InitContainers, "llmusage")
	if got == nil || len(pod.Spec.InitContainers) != 1 {
		t.Fatalf("no llmusage init container: %+v", pod.Spec.InitContainers)
	}
	// Every field as the example says: image, args, env, ports, the
	// three probes, resources, security context, mounts, restartPolicy.
	if a, b := mustJSON(t, got), mustJSON(t, container(want.InitContainers, "llmusage")); a != b {
		t.Fatalf("injected container differs from the example's:\ngot  %s\nwant %s", a, b)
	}
	if p := got.RestartPolicy; p == nil || *p != corev1.ContainerRestartPolicyAlways {
		t.Fatal("not a native sidecar")
	}
	for _, m := range got.VolumeMounts {
		v, w := volumeNamed(pod.Spec.Volumes, m.Name), volumeNamed(want.Volumes, m.Name)
		if v == nil || mustJSON(t, v) != mustJSON(t, w) {
			t.Fatalf("volume %s: got %+v, want %+v", m.Name, v, w)
		}
	}
	if len(pod.Spec.Volumes) != len(want.Volumes) {
		t.Fatalf("volumes %+v", pod.Spec.Volumes)
	}
	if g := pod.Spec.TerminationGracePeriodSeconds; g == nil || *g != *want.TerminationGracePeriodSeconds {
		t.Fatalf("terminationGracePeriodSeconds %v, want %d", g, *want.TerminationGracePeriodSeconds)
	}
	if a := pod.Annotations[AnnotationDefaultContainer]; a != "app" {
		t.Fatalf("default container %q, want app", a)
	}
	if a := pod.Annotations[AnnotationInjected]; !strings.HasPrefix(a, "test/") || len(a) != len("test/")+12 {
		t.Fatalf("injected annotation %q", a)
	}
	// The application containers are told where the sidecar is; their
	// own environment stays.
	for _, name := range []string{"app", "helper"} {
		c := container(pod.Spec.Containers, name)
		if e := env(c, "LLMUSAGE_URL"); e == nil || e.Value != "http://127.0.0.1:9470" {
			t.Fatalf("%s: LLMUSAGE_URL %+v", name, e)
		}
	}
	if e := env(&pod.Spec.Containers[0], "MODE"); e == nil || e.Value != "prod" || len(pod.Spec.Containers) != 2 {
		t.Fatalf("the app's containers changed: %+v", pod.Spec.Containers)
	}

	// A second pass (reinvocation) changes nothing.
	again, resp := ts.review(t, "/mutate", pod)
	if len(resp.Patch) != 0 || mustJSON(t, again) != mustJSON(t, pod) {
		t.Fatalf("second pass patched: %s", resp.Patch)
	}
	if n := ts.metric(t, "llmusage_inject_requests_total", map[string]string{"result": "injected", "reason": "namespace"}); n != 1 {
		t.Fatalf("injected count %v", n)
	}
	if n := ts.metric(t, "llmusage_inject_requests_total", map[string]string{"result": "skipped", "reason": "already_injected"}); n != 1 {
		t.Fatalf("already injected count %v", n)
	}
	if n := ts.metric(t, "llmusage_inject_duration_seconds", nil); n != 2 {
		t.Fatalf("duration count %v", n)
	}
}

func TestInjectLeavesAlone(t *testing.T) {
	ts := startServer(t, Settings{})
	for _, tc := range []struct {
		name, path, reason string
		pod                func(*corev1.Pod)
	}{
		{"opted out", "/mutate", "opted_out", func(p *corev1.Pod) { p.Annotations = map[string]string{AnnotationInject: "false"} }},
		{"not selected", "/mutate/annotated", "not_selected", func(*corev1.Pod) {}},
		{"has an llmusage container", "/mutate", "has_llmusage_container", func(p *corev1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "llmusage", Image: "mine"})
		}},
		{"has an llmusage init container", "/mutate/annotated", "has_llmusage_container", func(p *corev1.Pod) {
			p.Annotations = map[string]string{AnnotationInject: "true"}
			p.Spec.InitContainers = []corev1.Container{{Name: "llmusage", Image: "mine"}}
		}},
		{"marked injected", "/mutate", "already_injected", func(p *corev1.Pod) {
			p.Annotations = map[string]string{AnnotationInjected: "v0/abc"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := appPod()
			tc.pod(pod)
			got, resp := ts.review(t, tc.path, pod)
			if len(resp.Patch) != 0 || mustJSON(t, got) != mustJSON(t, pod) || len(resp.Warnings) != 0 {
				t.Fatalf("patched: %s %v", resp.Patch, resp.Warnings)
			}
			if n := ts.metric(t, "llmusage_inject_requests_total", map[string]string{"result": "skipped", "reason": tc.reason}); n < 1 {
				t.Fatalf("skip %s not counted", tc.reason)
			}
		})
	}
}

func TestInjectAnnotatedPod(t *testing.T) {
	ts := startServer(t, Settings{})
	pod := appPod()
	pod.Annotations = map[string]string{AnnotationInject: "true"}
	got, resp := ts.review(t, "/mutate/annotated", pod)
	if container(got.Spec.InitContainers, "llmusage") == nil || len(resp.Warnings) != 0 {
		t.Fatalf("not injected: %s %v", resp.Patch, resp.Warnings)
	}
	if n := ts.metric(t, "llmusage_inject_requests_total", map[string]string{"result": "injected", "reason": "annotation"}); n != 1 {
		t.Fatalf("count %v", n)
	}
}

func TestInjectOverrides(t *testing.T) {
	ts := startServer(t, Settings{RedisSecret: "shared-redis", Args: []string{"--log-level=warn"}})
	pod := appPod()
	long := int64(120)
	pod.Spec.TerminationGracePeriodSeconds = &long
	pod.Spec.InitContainers = []corev1.Container{{Name: "setup", Image: "busybox"}}
	pod.Spec.Volumes = []corev1.Volume{{Name: "cache", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		// The pod's own spool volume, a claim, is kept.
		{Name: "llmusage-data", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "spool"}}}}
	pod.Spec.Containers[0].Env = append(pod.Spec.Containers[0].Env, corev1.EnvVar{Name: "LLMUSAGE_URL", Value: "unix:/run/llmusage/api.sock"})
	pod.Annotations = map[string]string{
		AnnotationDefaultContainer: "helper",
		AnnotationImage:            "registry.example.com/llmusage:v1.2.3",
		AnnotationCPURequest:       "100m",
		AnnotationCPULimit:         "1",
		AnnotationMemoryRequest:    "128Mi",
		AnnotationMemoryLimit:      "512Mi",
		AnnotationLimitsConfigMap:  "team-a-limits",
		AnnotationDatabaseSecret:   "team-a-db",
		AnnotationArgs:             "--redis-fail-mode=open  --proxy-default-user=anonymous",
	}
	got, resp := ts.review(t, "/mutate", pod)
	if len(resp.Warnings) != 0 {
		t.Fatalf("warnings %v", resp.Warnings)
	}
	c := container(got.Spec.InitContainers, "llmusage")
	if c == nil || got.Spec.InitContainers[0].Name != "setup" {
		t.Fatalf("init containers %+v", got.Spec.InitContainers)
	}
	if c.Image != "registry.example.com/llmusage:v1.2.3" {
		t.Fatalf("image %s", c.Image)
	}
	if r := c.Resources; r.Requests.Cpu().String() != "100m" || r.Limits.Cpu().String() != "1" ||
		r.Requests.Memory().String() != "128Mi" || r.Limits.Memory().String() != "512Mi" {
		t.Fatalf("resources %+v", r)
	}
	if e := env(c, "LLMUSAGE_DATABASE_URL"); e.ValueFrom.SecretKeyRef.Name != "team-a-db" || e.ValueFrom.SecretKeyRef.Key != "url" {
		t.Fatalf("database env %+v", e)
	}
	if e := env(c, "LLMUSAGE_REDIS_URL"); e == nil || e.ValueFrom.SecretKeyRef.Name != "shared-redis" {
		t.Fatalf("redis env %+v", e)
	}
	if e := env(c, "LLMUSAGE_REDIS_FAIL_MODE"); e == nil || e.Value != "local" {
		t.Fatalf("redis fail mode env %+v", e)
	}
	ex := container(example(t, "deployment.yaml").InitContainers, "llmusage")
	wantArgs := append(append([]string(nil), ex.Args...), "--redis-fail-mode=open", "--proxy-default-user=anonymous")
	if strings.Join(c.Args, " ") != strings.Join(wantArgs, " ") {
		t.Fatalf("args %q, want %q", c.Args, wantArgs)
	}
	if v := volumeNamed(got.Spec.Volumes, "llmusage-limits"); v == nil || v.ConfigMap.Name != "team-a-limits" {
		t.Fatalf("limits volume %+v", v)
	}
	if v := volumeNamed(got.Spec.Volumes, "llmusage-data"); v.PersistentVolumeClaim == nil || len(got.Spec.Volumes) != 3 {
		t.Fatalf("volumes %+v", got.Spec.Volumes)
	}
	if *got.Spec.TerminationGracePeriodSeconds != 120 {
		t.Fatal("a longer grace period was shortened")
	}
	if got.Annotations[AnnotationDefaultContainer] != "helper" || got.Annotations[AnnotationImage] == "" {
		t.Fatalf("annotations %v", got.Annotations)
	}
	if e := env(&got.Spec.Containers[0], "LLMUSAGE_URL"); e.Value != "unix:/run/llmusage/api.sock" || len(got.Spec.Containers[0].Env) != 2 {
		t.Fatalf("the app's own LLMUSAGE_URL changed: %+v", got.Spec.Containers[0].Env)
	}
	if e := env(&got.Spec.Containers[1], "LLMUSAGE_URL"); e == nil {
		t.Fatal("helper without LLMUSAGE_URL")
	}
	// The flag's default args, replaced by the annotation's.
	for _, a := range c.Args {
		if a == "--log-level=warn" {
			t.Fatal("the annotation's args did not replace the default's")
		}
	}
}

func TestInjectInvalidAnnotations(t *testing.T) {
	ts := startServer(t, Settings{})
	pod := appPod()
	pod.Annotations = map[string]string{
		AnnotationCPURequest:      "lots",
		AnnotationMemoryRequest:   "1Gi", // above the example's 256Mi limit
		AnnotationDatabaseSecret:  "Not_A_Name",
		AnnotationArgs:            "serve --x",
		AnnotationSidecarMode:     "sidecar",
		AnnotationLimitsConfigMap: "ok-limits",
	}
	got, resp := ts.review(t, "/mutate", pod)
	c := container(got.Spec.InitContainers, "llmusage")
	if c == nil {
		t.Fatal("not injected")
	}
	ex := container(example(t, "deployment.yaml").InitContainers, "llmusage")
	if mustJSON(t, c.Resources) != mustJSON(t, ex.Resources) || mustJSON(t, c.Args) != mustJSON(t, ex.Args) || mustJSON(t, c.Env) != mustJSON(t, ex.Env) {
		t.Fatalf("defaults not used: %+v", c)
	}
	if v := volumeNamed(got.Spec.Volumes, "llmusage-limits"); v.ConfigMap.Name != "ok-limits" {
		t.Fatal("the valid annotation was not applied")
	}
	if len(resp.Warnings) != 5 {
		t.Fatalf("warnings %q", resp.Warnings)
	}
	for _, w := range resp.Warnings {
		if len(w) > 160 || strings.ContainsAny(w, "\n") {
			t.Fatalf("warning too long: %q", w)
		}
	}
	for _, a := range []string{AnnotationCPURequest, AnnotationMemoryRequest, AnnotationDatabaseSecret, AnnotationArgs, AnnotationSidecarMode} {
		if n := ts.metric(t, "llmusage_inject_invalid_annotations_total", map[string]string{"annotation": a}); n != 1 {
			t.Fatalf("%s: counted %v", a, n)
		}
		found := false
		for _, w := range resp.Warnings {
			found = found || strings.Contains(w, a)
		}
		if !found {
			t.Fatalf("no warning names %s: %q", a, resp.Warnings)
		}
	}
	// An llmusage.io/inject that is neither true nor false: the
	// namespace decides, with a warning.
	pod = appPod()
	pod.Annotations = map[string]string{AnnotationInject: "yes"}
	got, resp = ts.review(t, "/mutate/annotated", pod)
	if len(resp.Patch) != 0 || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], AnnotationInject) || got.Annotations[AnnotationInjected] != "" {
		t.Fatalf("patch %s warnings %q", resp.Patch, resp.Warnings)
	}
}

func TestInjectClassic(t *testing.T) {
	for _, tc := range []struct {
		name     string
		defaults Settings
		ann      map[string]string
	}{
		{"flag", Settings{Mode: ModeClassic}, nil},
		{"annotation", Settings{}, map[string]string{AnnotationSidecarMode: "classic"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, tc.defaults)
			pod := appPod()
			pod.Annotations = tc.ann
			got, _ := ts.review(t, "/mutate", pod)
			want := example(t, "classic-sidecar/deployment.yaml")
			if len(got.Spec.InitContainers) != 0 || len(got.Spec.Containers) != 3 || got.Spec.Containers[2].Name != "llmusage" {
				t.Fatalf("containers %+v init %+v", got.Spec.Containers, got.Spec.InitContainers)
			}
			if a, b := mustJSON(t, got.Spec.Containers[2]), mustJSON(t, container(want.Containers, "llmusage")); a != b {
				t.Fatalf("injected container differs from the classic example's:\ngot  %s\nwant %s", a, b)
			}
			if got.Annotations[AnnotationDefaultContainer] != "app" || *got.Spec.TerminationGracePeriodSeconds != 30 {
				t.Fatalf("annotations %v", got.Annotations)
			}
		})
	}
}

// restrictedViolations are what Pod Security Admission's "restricted"
// profile (k8s.io/pod-security-admission/policy) refuses of a pod spec:
// its seccompProfile, runAsNonRoot, runAsUser, allowPrivilegeEscalation
// and capabilities checks, which a sidecar's container can break.
func restrictedViolations(spec *corev1.PodSpec) []string {
	psc := spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	okSeccomp := func(p *corev1.SeccompProfile) bool {
		return p != nil && (p.Type == corev1.SeccompProfileTypeRuntimeDefault || p.Type == corev1.SeccompProfileTypeLocalhost)
	}
	var out []string
	for _, c := range append(append([]corev1.Container(nil), spec.InitContainers...), spec.Containers...) {
		sc := c.SecurityContext
		if sc == nil {
			sc = &corev1.SecurityContext{}
		}
		if sc.SeccompProfile == nil && !okSeccomp(psc.SeccompProfile) || sc.SeccompProfile != nil && !okSeccomp(sc.SeccompProfile) {
			out = append(out, c.Name+": seccompProfile")
		}
		if nonRoot := sc.RunAsNonRoot; nonRoot == nil && (psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot) || nonRoot != nil && !*nonRoot {
			out = append(out, c.Name+": runAsNonRoot")
		}
		if u := sc.RunAsUser; u != nil && *u == 0 || u == nil && psc.RunAsUser != nil && *psc.RunAsUser == 0 {
			out = append(out, c.Name+": runAsUser 0")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			out = append(out, c.Name+": allowPrivilegeEscalation")
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			out = append(out, c.Name+": capabilities.drop ALL")
		}
		if sc.Capabilities != nil {
			for _, a := range sc.Capabilities.Add {
				if a != "NET_BIND_SERVICE" {
					out = append(out, c.Name+": capabilities.add "+string(a))
				}
			}
		}
	}
	return out
}

// TestInjectRestricted: a pod that Pod Security "restricted" admits stays
// admitted once injected, in a namespace that enforces it, whether the
// pod sets its seccompProfile on the pod or on each container only (as
// many charts do): the sidecar must not be the container it refuses.
func TestInjectRestricted(t *testing.T) {
	yes, no, user := true, false, int64(1000)
	hardened := &corev1.SecurityContext{AllowPrivilegeEscalation: &no, RunAsNonRoot: &yes, RunAsUser: &user,
		Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	for _, mode := range []string{ModeNative, ModeClassic} {
		ts := startServer(t, Settings{Mode: mode})
		for _, podLevel := range []bool{true, false} {
			pod := appPod()
			for i := range pod.Spec.Containers {
				pod.Spec.Containers[i].SecurityContext = hardened.DeepCopy()
				if podLevel {
					pod.Spec.Containers[i].SecurityContext.SeccompProfile = nil
				}
			}
			if podLevel {
				pod.Spec.SecurityContext = &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
			}
			if v := restrictedViolations(&pod.Spec); len(v) != 0 {
				t.Fatalf("the test's pod is not restricted: %v", v)
			}
			got, _ := ts.review(t, "/mutate", pod)
			if container(append(got.Spec.InitContainers, got.Spec.Containers...), "llmusage") == nil {
				t.Fatalf("%s: not injected", mode)
			}
			if v := restrictedViolations(&got.Spec); len(v) != 0 {
				t.Fatalf("%s, seccompProfile on the pod %v: Pod Security restricted refuses the injected pod: %v", mode, podLevel, v)
			}
		}
	}
}

func TestInjectBadRequests(t *testing.T) {
	ts := startServer(t, Settings{})
	for _, tc := range []struct {
		name, body, want string
		code             int
	}{
		{"bad JSON", `{"apiVersion": `, "cannot decode the AdmissionReview", 400},
		{"wrong kind", `{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}`, "want admission.k8s.io/v1 AdmissionReview", 400},
		{"no request", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, "without a request", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, b := ts.post(t, "/mutate", []byte(tc.body))
			var e struct{ Error string }
			if code != tc.code || json.Unmarshal(b, &e) != nil || !strings.Contains(e.Error, tc.want) || !strings.HasPrefix(e.Error, "cannot ") {
				t.Fatalf("status %d body %s", code, b)
			}
		})
	}
	resp, err := ts.client.Get(ts.base + "/mutate")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
	if n := ts.metric(t, "llmusage_inject_requests_total", map[string]string{"result": "error", "reason": "bad_request"}); n != 4 {
		t.Fatalf("bad requests counted %v", n)
	}

	// Reviews it cannot handle are allowed, unchanged, with a warning.
	r := ts.reviewRaw(t, "/mutate", "Deployment", []byte(`{"kind":"Deployment"}`))
	if !r.Allowed || len(r.Patch) != 0 || len(r.Warnings) != 1 {
		t.Fatalf("not a pod: %+v", r)
	}
	r = ts.reviewRaw(t, "/mutate", "Pod", []byte(`{"spec": "nonsense"}`))
	if !r.Allowed || len(r.Patch) != 0 || len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], "cannot decode the pod") {
		t.Fatalf("bad pod: %+v", r)
	}
	if n := ts.metric(t, "llmusage_inject_requests_total", map[string]string{"result": "error", "reason": "decode_pod"}); n != 1 {
		t.Fatalf("decode_pod counted %v", n)
	}
}

func TestHealthAndMetricsListener(t *testing.T) {
	ts := startServer(t, Settings{})
	ts.review(t, "/mutate", appPod())
	for _, u := range []string{ts.base + "/healthz", ts.base + "/readyz", ts.metrics + "/healthz", ts.metrics + "/readyz"} {
		resp, err := ts.client.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d", u, resp.StatusCode)
		}
	}
	resp, err := ts.client.Get(ts.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`llmusage_inject_requests_total{reason="namespace",result="injected"} 1`,
		`llmusage_inject_duration_seconds_count 1`,
		`llmusage_inject_certificate_reloads_total{result="ok"} 0`,
		`llmusage_inject_certificate_expiry_timestamp_seconds `,
	} {
		if !strings.Contains(string(b), want) {
			t.Fatalf("/metrics lacks %q:\n%s", want, b)
		}
	}
}

// serial is the serial of the certificate a new TLS connection sees.
func (ts *testServer) serial(t *testing.T) int64 {
	t.Helper()
	conn, err := tls.Dial("tcp", ts.srv.APIAddr().String(), &tls.Config{RootCAs: ts.ca.pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

func TestCertificateReload(t *testing.T) {
	ts := startServer(t, Settings{})
	if s := ts.serial(t); s != 1001 {
		t.Fatalf("serial %d", s)
	}
	// The Secret is updated: the kubelet swaps ..data.
	notAfter := time.Now().Add(72 * time.Hour).Truncate(time.Second)
	certPEM, keyPEM := ts.ca.issue(t, 1002, notAfter)
	ts.secret.write(t, certPEM, keyPEM)
	if s := ts.serial(t); s != 1002 {
		t.Fatalf("after the update: serial %d, want 1002", s)
	}
	if n := ts.metric(t, "llmusage_inject_certificate_reloads_total", map[string]string{"result": "ok"}); n != 1 {
		t.Fatalf("reloads %v", n)
	}
	if e := ts.metric(t, "llmusage_inject_certificate_expiry_timestamp_seconds", nil); int64(e) != notAfter.Unix() {
		t.Fatalf("expiry %v, want %d", e, notAfter.Unix())
	}
	// A pair that does not match keeps the one in service.
	_, otherKey := ts.ca.issue(t, 1003, notAfter)
	certPEM3, _ := ts.ca.issue(t, 1003, notAfter)
	ts.secret.write(t, certPEM3, otherKey)
	if s := ts.serial(t); s != 1002 {
		t.Fatalf("after a bad pair: serial %d, want 1002", s)
	}
	if n := ts.metric(t, "llmusage_inject_certificate_reloads_total", map[string]string{"result": "error"}); n != 1 {
		t.Fatalf("reload errors %v", n)
	}
	// The webhook still answers over the old one, and a good pair
	// written in place (not through a symlink) is loaded too.
	ts.review(t, "/mutate", appPod())
	certPEM4, keyPEM4 := ts.ca.issue(t, 1004, notAfter)
	dir := filepath.Join(ts.secret.dir, "..data")
	if err := os.WriteFile(filepath.Join(dir, "tls.key"), keyPEM4, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tls.crt"), certPEM4, 0o600); err != nil {
		t.Fatal(err)
	}
	if s := ts.serial(t); s != 1004 {
		t.Fatalf("after an in-place write: serial %d, want 1004", s)
	}
}

func TestServerConfigErrors(t *testing.T) {
	if _, err := NewServer(ServerConfig{ListenAddress: "127.0.0.1:0"}); err == nil || !strings.Contains(err.Error(), "--tls-cert-file") {
		t.Fatalf("no TLS files: %v", err)
	}
	if _, err := New(Options{Defaults: Settings{Mode: "sidecar"}}); err == nil || !strings.Contains(err.Error(), "--sidecar-mode") {
		t.Fatalf("bad mode: %v", err)
	}
	if _, err := New(Options{Defaults: Settings{MemoryRequest: "1Gi"}}); err == nil || !strings.Contains(err.Error(), "above its limit") {
		t.Fatalf("request above limit: %v", err)
	}
	if _, err := New(Options{Defaults: Settings{Args: []string{"serve"}}}); err == nil || !strings.Contains(err.Error(), "--sidecar-args") {
		t.Fatalf("bad args: %v", err)
	}
}
