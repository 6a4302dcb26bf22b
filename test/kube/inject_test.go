// Package kube tests the injector against a real Kubernetes API server
// (internal/kubetest): `llmusage inject` runs as a local process, the
// example MutatingWebhookConfiguration (deploy/kubernetes/injector) points
// at it, and pods are created as a Deployment's ReplicaSet would create
// them (no controller runs here, so the test creates the pods).
package kube

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/llmusage/llmusage/internal/kubetest"
	"github.com/llmusage/llmusage/internal/sidecartest"
)

func TestMain(m *testing.M) {
	code := sidecartest.Main(m)
	kubetest.StopShared()
	os.Exit(code)
}

// The oracle: with the injector up, a pod of a namespace labelled
// llmusage.io/inject=enabled, or annotated llmusage.io/inject: "true",
// is stored with the llmusage native sidecar; an opted-out pod, a pod of
// an unlabelled namespace and a pod that has the sidecar already are
// stored as sent; with the injector down, pods are still created, as
// sent (failurePolicy Ignore).
func TestInjectorInAPIServer(t *testing.T) {
	c := kubetest.Start(t)
	injector := startInjector(t)
	registerWebhooks(t, c, injector)

	labelled, plain := c.Namespace(t), c.Namespace(t)
	c.Kubectl(t, "label", "namespace", labelled, "llmusage.io/inject=enabled")
	app := appPod(t)

	// The configuration reaches the admission plugin within a second or
	// so: the first pods may go through before it does.
	sidecartest.WaitFor(t, 30*time.Second, func() bool {
		return hasSidecar(create(t, c, labelled, app, nil))
	}, "a pod of a labelled namespace is not injected")

	got := create(t, c, labelled, app, nil)
	checkInjected(t, got)
	if n := len(create(t, c, labelled, app, map[string]string{"llmusage.io/inject": "false"}).Spec.InitContainers); n != 0 {
		t.Fatalf("an opted-out pod got %d init containers", n)
	}
	if hasSidecar(create(t, c, plain, app, nil)) {
		t.Fatal("a pod of an unlabelled namespace was injected")
	}
	checkInjected(t, create(t, c, plain, app, map[string]string{"llmusage.io/inject": "true"}))
	// A pod that has the sidecar already (the example Deployment's own).
	full := examplePod(t)
	again := create(t, c, labelled, full, nil)
	if len(again.Spec.InitContainers) != 1 || len(again.Spec.Containers) != len(full.Spec.Containers) || again.Annotations["llmusage.io/injected"] != "" {
		t.Fatalf("a pod with its llmusage sidecar was changed: %d init containers, %d containers, annotations %v",
			len(again.Spec.InitContainers), len(again.Spec.Containers), again.Annotations)
	}

	// The injector down: pods are created, without the sidecar.
	injector.stop(t)
	down := create(t, c, labelled, app, nil)
	if hasSidecar(down) {
		t.Fatal("a pod created while the injector is down has the sidecar")
	}
}

// create creates pod (with annotations added) under a fresh name and
// returns it as the API server stored it.
func create(t *testing.T, c *kubetest.Cluster, ns string, pod corev1.Pod, annotations map[string]string) corev1.Pod {
	t.Helper()
	pod = *pod.DeepCopy()
	pod.Name = fmt.Sprintf("app-%d", time.Now().UnixNano())
	pod.Namespace = ""
	for k, v := range annotations {
		if pod.Annotations == nil {
			pod.Annotations = map[string]string{}
		}
		pod.Annotations[k] = v
	}
	b, err := yaml.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	c.Create(t, ns, "apiVersion: v1\nkind: Pod\n"+string(b))
	var stored corev1.Pod
	if err := json.Unmarshal([]byte(c.Kubectl(t, "-n", ns, "get", "pod", pod.Name, "-o", "json")), &stored); err != nil {
		t.Fatal(err)
	}
	return stored
}

func hasSidecar(p corev1.Pod) bool {
	for _, ic := range p.Spec.InitContainers {
		if ic.Name == "llmusage" {
			return true
		}
	}
	return false
}

// checkInjected compares the stored pod's sidecar with the example
// Deployment's: the same container, as the API server stores it.
func checkInjected(t *testing.T, got corev1.Pod) {
	t.Helper()
	want := examplePod(t)
	var sidecar, wantSidecar *corev1.Container
	for i := range got.Spec.InitContainers {
		if got.Spec.InitContainers[i].Name == "llmusage" {
			sidecar = &got.Spec.InitContainers[i]
		}
	}
	for i := range want.Spec.InitContainers {
		if want.Spec.InitContainers[i].Name == "llmusage" {
			wantSidecar = &want.Spec.InitContainers[i]
		}
	}
	if sidecar == nil || wantSidecar == nil {
		t.Fatalf("no llmusage init container in %+v", got.Spec.InitContainers)
	}
	if sidecar.RestartPolicy == nil || *sidecar.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Fatal("the sidecar is not a native sidecar (restartPolicy Always)")
	}
	// Compare what the example sets (the server adds defaults to both).
	if sidecar.Image != wantSidecar.Image || strings.Join(sidecar.Args, " ") != strings.Join(wantSidecar.Args, " ") ||
		len(ownMounts(sidecar)) != len(wantSidecar.VolumeMounts) || len(sidecar.Ports) != len(wantSidecar.Ports) ||
		sidecar.StartupProbe == nil || sidecar.ReadinessProbe == nil || sidecar.SecurityContext == nil ||
		sidecar.Resources.Limits.Memory().Cmp(*wantSidecar.Resources.Limits.Memory()) != 0 {
		t.Fatalf("the injected sidecar differs from the example Deployment's:\n%+v\nwant\n%+v", sidecar, wantSidecar)
	}
	for _, m := range sidecar.VolumeMounts {
		found := false
		for _, v := range got.Spec.Volumes {
			found = found || v.Name == m.Name
		}
		if !found {
			t.Fatalf("the sidecar mounts %s, which the pod lacks", m.Name)
		}
	}
	if got.Annotations["llmusage.io/injected"] == "" || got.Annotations["kubectl.kubernetes.io/default-container"] != "app" {
		t.Fatalf("annotations %v", got.Annotations)
	}
	if got.Spec.TerminationGracePeriodSeconds == nil || *got.Spec.TerminationGracePeriodSeconds < 30 {
		t.Fatal("the grace period was not raised to the sidecar's")
	}
}

// ownMounts are c's volume mounts but the service account token's, which
// the API server adds to every container.
func ownMounts(c *corev1.Container) []corev1.VolumeMount {
	var out []corev1.VolumeMount
	for _, m := range c.VolumeMounts {
		if !strings.HasPrefix(m.Name, "kube-api-access-") {
			out = append(out, m)
		}
	}
	return out
}

// examplePod is the pod of the example Deployment, sidecar included.
func examplePod(t *testing.T) corev1.Pod {
	t.Helper()
	raw, err := os.ReadFile("../../deploy/kubernetes/deployment.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	if err := yaml.UnmarshalStrict(raw, &d); err != nil {
		t.Fatal(err)
	}
	return corev1.Pod{ObjectMeta: d.Spec.Template.ObjectMeta, Spec: d.Spec.Template.Spec}
}

// appPod is the example pod without its sidecar: the application as it
// is before llmusage, with a grace period shorter than the sidecar needs.
func appPod(t *testing.T) corev1.Pod {
	t.Helper()
	p := examplePod(t)
	p.Spec.InitContainers = nil
	used := map[string]bool{}
	for _, ctr := range p.Spec.Containers {
		for _, m := range ctr.VolumeMounts {
			used[m.Name] = true
		}
		for i := range p.Spec.Containers {
			var env []corev1.EnvVar
			for _, e := range p.Spec.Containers[i].Env {
				if !strings.HasPrefix(e.Name, "LLMUSAGE_") {
					env = append(env, e)
				}
			}
			p.Spec.Containers[i].Env = env
		}
	}
	var vols []corev1.Volume
	for _, v := range p.Spec.Volumes {
		if used[v.Name] {
			vols = append(vols, v)
		}
	}
	p.Spec.Volumes = vols
	grace := int64(5)
	p.Spec.TerminationGracePeriodSeconds = &grace
	delete(p.Annotations, "kubectl.kubernetes.io/default-container")
	return p
}

// injectorProcess is `llmusage inject` running on loopback.
type injectorProcess struct {
	cmd  *exec.Cmd
	addr string
	ca   []byte
}

func startInjector(t *testing.T) *injectorProcess {
	t.Helper()
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "llmusage-injector"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &injectorProcess{addr: sidecartest.FreeAddr(t), ca: certPEM}
	p.cmd = sidecartest.Command(t, "inject", "--listen-address="+p.addr, "--metrics-address="+sidecartest.FreeAddr(t),
		"--tls-cert-file="+certFile, "--tls-key-file="+keyFile)
	p.cmd.Stdout, p.cmd.Stderr = os.Stderr, os.Stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.stop(t) })
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	sidecartest.WaitFor(t, 30*time.Second, func() bool {
		resp, err := client.Get("https://" + p.addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "llmusage inject is not ready on %s", p.addr)
	return p
}

func (p *injectorProcess) stop(t *testing.T) {
	if p.cmd.Process != nil && p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	}
}

// registerWebhooks creates the example MutatingWebhookConfiguration with
// its clientConfigs pointing at the local injector instead of the
// in-cluster Service, under a name of this test's.
func registerWebhooks(t *testing.T, c *kubetest.Cluster, p *injectorProcess) {
	t.Helper()
	raw, err := os.ReadFile("../../deploy/kubernetes/injector/mutatingwebhookconfiguration.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	meta := cfg["metadata"].(map[string]any)
	name := fmt.Sprintf("llmusage-injector-%d", time.Now().UnixNano())
	meta["name"] = name
	delete(meta, "annotations") // no cert-manager here: the caBundle is set
	for _, w := range cfg["webhooks"].([]any) {
		cc := w.(map[string]any)["clientConfig"].(map[string]any)
		path := cc["service"].(map[string]any)["path"].(string)
		delete(cc, "service")
		cc["url"] = "https://" + p.addr + path
		cc["caBundle"] = base64.StdEncoding.EncodeToString(p.ca)
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.Create(t, "", string(b))
	t.Cleanup(func() { c.Kubectl(t, "delete", "mutatingwebhookconfiguration", name) })
}
