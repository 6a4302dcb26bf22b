package kubetest_test

import (
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"

	"github.com/llmusage/llmusage/internal/kubetest"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

// TestCluster checks the harness itself: the API server answers over HTTPS
// with the admin's token and through kubectl with the kubeconfig, a
// namespace comes with its default ServiceAccount, pods are admitted and
// stored (the ServiceAccount plugin mounts the token), and strict field
// validation refuses unknown fields.
func TestCluster(t *testing.T) {
	c := kubetest.Start(t)

	resp, err := c.Client().Get(c.URL() + "/version")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var v struct {
		GitVersion string `json:"gitVersion"`
	}
	if err := json.Unmarshal(body, &v); err != nil || v.GitVersion != kubetest.Version {
		t.Fatalf("GET /version: %s %s, want gitVersion %s", body, err, kubetest.Version)
	}

	if out := c.Kubectl(t, "auth", "can-i", "*", "*"); strings.TrimSpace(out) != "yes" {
		t.Fatalf("kubectl auth can-i '*' '*': %q, want yes", out)
	}

	ns := c.Namespace(t)
	names := c.Create(t, ns, `apiVersion: v1
kind: Pod
metadata:
  name: p
spec:
  containers:
    - name: c
      image: example.invalid/c
`)
	if len(names) != 1 || names[0] != "pod/p" {
		t.Fatalf("created %q, want pod/p", names)
	}
	got := c.Kubectl(t, "-n", ns, "get", "pod", "p", "-o", "jsonpath={.spec.serviceAccountName} {.spec.volumes[0].projected.sources[0].serviceAccountToken.path}")
	if got != "default token" {
		t.Fatalf("the stored pod's service account and first volume: %q, want %q", got, "default token")
	}
	if names := c.Apply(t, ns, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\ndata:\n  a: b\n"); len(names) != 1 || names[0] != "configmap/cm" {
		t.Fatalf("applied %q, want configmap/cm", names)
	}
	if _, err := c.RunKubectl("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\nunknownField: 1\n", "create", "-n", ns, "--validate=strict", "-f", "-"); err == nil {
		t.Fatal("kubectl create --validate=strict accepts an unknown field")
	}
}

// TestMutatingWebhook registers a mutating webhook served by this test
// process, as the injector's tests do, and checks that the API server
// calls it: the ConfigMap it admits is stored with the label it adds.
func TestMutatingWebhook(t *testing.T) {
	c := kubetest.Start(t)
	ns := c.Namespace(t)

	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var review admissionv1.AdmissionReview
		if err := json.NewDecoder(r.Body).Decode(&review); err != nil || review.Request == nil {
			http.Error(w, "cannot decode the AdmissionReview", http.StatusBadRequest)
			return
		}
		patch := admissionv1.PatchTypeJSONPatch
		review.Response = &admissionv1.AdmissionResponse{
			UID:       review.Request.UID,
			Allowed:   true,
			PatchType: &patch,
			Patch:     []byte(`[{"op":"add","path":"/metadata/labels","value":{"mutated":"yes"}}]`),
		}
		review.Request = nil
		_ = json.NewEncoder(w).Encode(review)
	}))
	defer srv.Close()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})

	c.Create(t, "", fmt.Sprintf(`apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: kubetest-%[1]s
webhooks:
  - name: label.kubetest.llmusage.invalid
    clientConfig:
      url: %[2]s/mutate
      caBundle: %[3]s
    rules:
      - apiGroups: [""]
        apiVersions: ["v1"]
        operations: ["CREATE"]
        resources: ["configmaps"]
    namespaceSelector:
      matchLabels:
        kubernetes.io/metadata.name: %[1]s
    failurePolicy: Fail
    sideEffects: None
    admissionReviewVersions: ["v1"]
`, ns, srv.URL, base64.StdEncoding.EncodeToString(ca)))
	defer c.Kubectl(t, "delete", "mutatingwebhookconfiguration", "kubetest-"+ns)

	// The webhook configuration reaches the admission plugin within a second
	// or so: retry until the label appears.
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		name := fmt.Sprintf("cm%d", i)
		c.Create(t, ns, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: "+name+"\n")
		if got := c.Kubectl(t, "-n", ns, "get", "configmap", name, "-o", "jsonpath={.metadata.labels.mutated}"); got == "yes" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the API server stores ConfigMaps without calling the mutating webhook")
		}
		time.Sleep(200 * time.Millisecond)
	}
}
