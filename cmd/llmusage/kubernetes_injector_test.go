package main

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
	"strconv"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/llmusage/llmusage/inject"
)

const injectorDir = kubeDir + "/injector"

func decodeStrict(t *testing.T, file string, obj any) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(injectorDir, file))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(raw, obj); err != nil {
		t.Fatalf("%s: %s", file, err)
	}
}

// TestInjectorManifests checks the webhook's example manifests against
// what the injector serves, and the settings that keep an injector
// outage from stopping applications: failurePolicy Ignore, a short
// timeout, no side effects.
func TestInjectorManifests(t *testing.T) {
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Namespace  string   `json:"namespace"`
		Resources  []string `json:"resources"`
		Images     []struct {
			Name   string `json:"name"`
			NewTag string `json:"newTag"`
		} `json:"images"`
	}
	decodeStrict(t, "kustomization.yaml", &k)
	if len(k.Resources) != 3 || k.Namespace == "" {
		t.Fatalf("kustomization %+v", k)
	}
	var d appsv1.Deployment
	var svc corev1.Service
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	decodeStrict(t, "deployment.yaml", &d)
	decodeStrict(t, "service.yaml", &svc)
	decodeStrict(t, "mutatingwebhookconfiguration.yaml", &mwc)

	c := d.Spec.Template.Spec.Containers[0]
	if c.Args[0] != "inject" {
		t.Fatalf("args %q", c.Args)
	}
	args := map[string]string{}
	for _, a := range c.Args[1:] {
		name, value, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		args[name] = value
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		mounted = mounted || (filepath.Dir(args["tls-cert-file"]) == m.MountPath && filepath.Dir(args["tls-key-file"]) == m.MountPath)
	}
	if !mounted {
		t.Fatal("the TLS files are not on a mounted volume")
	}
	_, port, _ := net.SplitHostPort(args["listen-address"])
	named := false
	for _, p := range c.Ports {
		named = named || (p.Name == svc.Spec.Ports[0].TargetPort.String() && p.ContainerPort == mustAtoi(t, port))
	}
	if !named {
		t.Fatalf("the Service's targetPort %s is not the container's --listen-address port %s", svc.Spec.Ports[0].TargetPort.String(), port)
	}
	for k, v := range svc.Spec.Selector {
		if d.Spec.Template.Labels[k] != v {
			t.Fatal("the Service does not select the injector's pods")
		}
	}

	paths := map[string]admissionregistrationv1.MutatingWebhook{}
	for _, w := range mwc.Webhooks {
		if w.FailurePolicy == nil || *w.FailurePolicy != admissionregistrationv1.Ignore {
			t.Fatalf("%s: failurePolicy must be Ignore", w.Name)
		}
		if w.TimeoutSeconds == nil || *w.TimeoutSeconds < 1 || *w.TimeoutSeconds > 5 {
			t.Fatalf("%s: timeoutSeconds must be 1 to 5", w.Name)
		}
		if w.SideEffects == nil || *w.SideEffects != admissionregistrationv1.SideEffectClassNone {
			t.Fatalf("%s: sideEffects must be None", w.Name)
		}
		if w.ReinvocationPolicy == nil || *w.ReinvocationPolicy != admissionregistrationv1.IfNeededReinvocationPolicy {
			t.Fatalf("%s: reinvocationPolicy must be IfNeeded", w.Name)
		}
		if len(w.AdmissionReviewVersions) != 1 || w.AdmissionReviewVersions[0] != "v1" {
			t.Fatalf("%s: admissionReviewVersions must be [v1]", w.Name)
		}
		s := w.ClientConfig.Service
		if s == nil || s.Name != svc.Name || s.Namespace != k.Namespace || s.Port == nil || *s.Port != svc.Spec.Ports[0].Port || s.Path == nil {
			t.Fatalf("%s: clientConfig does not name the Service", w.Name)
		}
		if len(w.Rules) != 1 || strings.Join(w.Rules[0].Resources, ",") != "pods" || len(w.Rules[0].Operations) != 1 || w.Rules[0].Operations[0] != admissionregistrationv1.Create {
			t.Fatalf("%s: rules must be CREATE of pods", w.Name)
		}
		paths[*s.Path] = w
	}
	ns, ok := paths["/mutate"]
	if !ok || ns.NamespaceSelector.MatchLabels[inject.AnnotationInject] != "enabled" {
		t.Fatal("no webhook on /mutate selecting llmusage.io/inject=enabled namespaces")
	}
	pod, ok := paths["/mutate/annotated"]
	if !ok || len(paths) != 2 {
		t.Fatal("no webhook on /mutate/annotated")
	}
	excluded := map[string]bool{}
	for _, e := range pod.NamespaceSelector.MatchExpressions {
		if e.Operator == "NotIn" {
			for _, v := range e.Values {
				excluded[e.Key+"="+v] = true
			}
		}
	}
	if !excluded[inject.AnnotationInject+"=enabled"] || !excluded["kubernetes.io/metadata.name="+k.Namespace] {
		t.Fatalf("/mutate/annotated must leave out the enabled namespaces and the injector's own: %v", excluded)
	}
	if len(pod.MatchConditions) != 1 || !strings.Contains(pod.MatchConditions[0].Expression, inject.AnnotationInject) {
		t.Fatal("/mutate/annotated: no matchCondition on the annotation")
	}
}

func mustAtoi(t *testing.T, s string) int32 {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return int32(n)
}

// TestInjectCommand runs llmusage inject as the CLI does, a plain local
// process as an API server in a test would call it, and injects a pod.
func TestInjectCommand(t *testing.T) {
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	_ = os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	_ = os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	apiAddr, metricsAddr := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- newApp().RunContext(ctx, []string{"llmusage", "inject", "--listen-address=" + apiAddr, "--metrics-address=" + metricsAddr,
			"--tls-cert-file=" + certFile, "--tls-key-file=" + keyFile, "--sidecar-mode=classic", "--sidecar-args=--log-level=debug"})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}()
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	body := []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1",
		"kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},
		"namespace":"default","operation":"CREATE","userInfo":{},
		"object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"app","image":"x"}]}}}}`)
	var resp *http.Response
	for i := 0; ; i++ {
		if resp, err = client.Post("https://"+apiAddr+"/mutate", "application/json", bytes.NewReader(body)); err == nil {
			break
		}
		if i > 100 {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var review struct {
		Response struct {
			UID     string `json:"uid"`
			Allowed bool   `json:"allowed"`
			Patch   []byte `json:"patch"`
		} `json:"response"`
	}
	if err := json.Unmarshal(b, &review); err != nil || !review.Response.Allowed || review.Response.UID != "u1" {
		t.Fatalf("answer %s", b)
	}
	if p := string(review.Response.Patch); !strings.Contains(p, `"path":"/spec/containers/-"`) || !strings.Contains(p, "--log-level=debug") {
		t.Fatalf("patch %s", p)
	}
	m, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(m.Body)
	m.Body.Close()
	if !strings.Contains(string(b), `llmusage_inject_requests_total{reason="namespace",result="injected"} 1`) || !strings.Contains(string(b), "llmusage_build_info{") {
		t.Fatalf("metrics:\n%s", b)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestInjectorDocs checks that docs/kubernetes.md's table of annotations
// names every flag of inject that an annotation overrides, with it.
func TestInjectorDocs(t *testing.T) {
	raw, err := os.ReadFile("../../docs/kubernetes.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	_, table, ok := strings.Cut(doc, "### Annotations\n")
	if !ok {
		t.Fatal("docs/kubernetes.md has no Annotations section")
	}
	table, _, _ = strings.Cut(table, "\n### ")
	n := 0
	for _, f := range command("inject").Flags {
		// The annotation is named in the flag's details (docs/flags.md).
		_, ann, ok := strings.Cut(flagDetails()["inject"][f.Names()[0]], "Annotation `")
		if !ok {
			continue
		}
		ann, _, _ = strings.Cut(ann, "`")
		n++
		for _, line := range strings.Split(table, "\n") {
			if strings.Contains(line, "`"+ann+"`") {
				if !strings.Contains(line, "`--"+f.Names()[0]+"`") {
					t.Fatalf("the row of %s does not name --%s: %s", ann, f.Names()[0], line)
				}
				ok = false
			}
		}
		if ok {
			t.Fatalf("the annotations table has no row for %s", ann)
		}
	}
	if n != 10 {
		t.Fatalf("%d flags with an annotation", n)
	}
}
