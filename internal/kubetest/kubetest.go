// Package kubetest gives tests a real Kubernetes API server: kube-apiserver
// v1.34 on an etcd, both on loopback, with no controllers, scheduler or
// kubelet, so that objects are validated, defaulted, admitted (mutating
// and validating webhooks included) and stored exactly as a cluster would,
// but no pod ever runs.
//
// Start returns the server all tests of one test binary share, started on
// first use (a few seconds); call Main from TestMain to stop it when the
// binary ends. Each test takes its own namespace (Namespace) and talks to
// the server with kubectl (Kubectl, Create, Apply) or over HTTPS (Client,
// URL). Kubeconfig is a kubeconfig file for an admin (group system:masters,
// a static bearer token), for kubectl or any client.
//
// The server runs the default admission plugins, MutatingAdmissionWebhook
// and ValidatingAdmissionWebhook included, and RBAC authorization. As no
// controller manager runs, Namespace also creates the namespace's default
// ServiceAccount, which the ServiceAccount admission plugin requires of
// every pod; deleted namespaces would stay Terminating, so none is deleted:
// the whole server is thrown away with its temporary directory.
//
// kube-apiserver is built from the Go module proxy by
// scripts/kube-apiserver.sh, once per machine (about 6 minutes on 2
// cores), and cached in ${XDG_CACHE_HOME:-$HOME/.cache}/llmusage; the
// harness runs the script when KUBE_APISERVER does not name a binary. etcd
// is Debian's etcd-server package (scripts/test-deps.sh). Without either,
// tests that need the server are skipped, unless
// LLMUSAGE_TEST_REQUIRE_KUBE=1, under which they fail: make test sets it
// (scripts/test-env.sh) so that CI cannot pass without the server.
package kubetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RequireEnv is the environment variable under which a server that cannot
// be started fails the tests instead of skipping them.
const RequireEnv = "LLMUSAGE_TEST_REQUIRE_KUBE"

// Version is the Kubernetes version of the API server.
const Version = "v1.34.2"

// Cluster is a running API server and its etcd.
type Cluster struct {
	dir        string
	url        string
	token      string
	caPEM      []byte
	kubeconfig string
	client     *http.Client

	etcd, apiserver *process
	stopOnce        sync.Once

	crdOnce sync.Once
	crdErr  error
}

var shared struct {
	once sync.Once
	c    *Cluster
	err  error
}

// Main runs the tests, then stops the shared server if one was started.
func Main(m *testing.M) int {
	code := m.Run()
	StopShared()
	return code
}

// StopShared stops the shared server if one was started: for a TestMain
// whose tests another harness's Main runs (sidecartest.Main).
func StopShared() {
	if shared.c != nil {
		shared.c.Stop()
	}
}

// Start returns the API server the tests of this binary share, starting it
// on first use. If it cannot be started, t is skipped, or fails under
// LLMUSAGE_TEST_REQUIRE_KUBE=1.
func Start(t testing.TB) *Cluster {
	t.Helper()
	shared.once.Do(func() {
		start := time.Now()
		shared.c, shared.err = start1()
		if shared.err == nil {
			fmt.Fprintf(os.Stderr, "kubetest: kube-apiserver %s ready at %s in %s\n", Version, shared.c.url, time.Since(start).Round(time.Millisecond))
		}
	})
	if shared.err != nil {
		unavailable(t, "a Kubernetes API server", shared.err)
	}
	return shared.c
}

func unavailable(t testing.TB, what string, err error) {
	t.Helper()
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s is required (%s=1) but unavailable: %s", what, RequireEnv, err)
	}
	t.Skipf("%s is unavailable: %s (set %s=1 to fail instead)", what, err, RequireEnv)
}

// URL is the API server's HTTPS address, https://127.0.0.1:port.
func (c *Cluster) URL() string { return c.url }

// Token is the admin's bearer token (user admin, group system:masters).
func (c *Cluster) Token() string { return c.token }

// CACert is the PEM certificate that signs the API server's serving
// certificate.
func (c *Cluster) CACert() []byte { return bytes.Clone(c.caPEM) }

// Kubeconfig is the path of a kubeconfig file for the admin.
func (c *Cluster) Kubeconfig() string { return c.kubeconfig }

// Client is an HTTP client that trusts the API server and sends the
// admin's token.
func (c *Cluster) Client() *http.Client { return c.client }

// Kubectl runs kubectl against the server and returns its standard output;
// t fails if kubectl does.
func (c *Cluster) Kubectl(t testing.TB, args ...string) string {
	t.Helper()
	out, err := c.RunKubectl("", args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// RunKubectl runs kubectl against the server with stdin as its standard
// input and returns its standard output, or an error that holds its
// standard error.
func (c *Cluster) RunKubectl(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	full := append([]string{"--kubeconfig", c.kubeconfig, "--cache-dir", filepath.Join(c.dir, "kubectl-cache")}, args...)
	cmd := exec.CommandContext(ctx, "kubectl", full...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("cannot run kubectl %s: %s: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Create creates the objects of manifests (YAML, documents separated by
// ---) in namespace (if not empty), with strict server-side field
// validation, and returns their names as kubectl prints them (kind/name).
func (c *Cluster) Create(t testing.TB, namespace, manifests string) []string {
	t.Helper()
	return c.objects(t, manifests, "create", namespace, "--validate=strict", "-o", "name", "-f", "-")
}

// Apply applies manifests server-side in namespace (if not empty), with
// strict field validation, and returns the objects' names (kind/name).
func (c *Cluster) Apply(t testing.TB, namespace, manifests string) []string {
	t.Helper()
	return c.objects(t, manifests, "apply", namespace, "--server-side", "--field-manager=kubetest", "--validate=strict", "-o", "name", "-f", "-")
}

func (c *Cluster) objects(t testing.TB, manifests, verb, namespace string, args ...string) []string {
	t.Helper()
	if namespace != "" {
		args = append([]string{"--namespace", namespace}, args...)
	}
	out, err := c.RunKubectl(manifests, append([]string{verb}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(out)
}

// Namespace creates a namespace with a unique name and its default
// ServiceAccount, and returns its name.
func (c *Cluster) Namespace(t testing.TB) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "test-" + hex.EncodeToString(b[:])
	c.Create(t, "", fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: default\n  namespace: %s\n", name, name))
	return name
}

// InstallPrometheusOperatorCRDs installs, once per server, the Prometheus
// Operator's CustomResourceDefinitions at the version of its monitoring
// module in go.mod (generated by scripts/prometheus-operator-crds.sh), and
// waits until they are established. If they cannot be generated, t is
// skipped, or fails under LLMUSAGE_TEST_REQUIRE_KUBE=1.
func (c *Cluster) InstallPrometheusOperatorCRDs(t testing.TB) {
	t.Helper()
	c.crdOnce.Do(func() { c.crdErr = c.installPrometheusOperatorCRDs() })
	if c.crdErr != nil {
		unavailable(t, "the Prometheus Operator CRDs", c.crdErr)
	}
}

func (c *Cluster) installPrometheusOperatorCRDs() error {
	dir, err := runScript("prometheus-operator-crds.sh")
	if err != nil {
		return err
	}
	if _, err := c.RunKubectl("", "apply", "--server-side", "--field-manager=kubetest", "-f", dir); err != nil {
		return err
	}
	_, err = c.RunKubectl("", "wait", "--for=condition=Established", "--timeout=60s", "-f", dir)
	return err
}

// Stop stops the API server and etcd and removes their data.
func (c *Cluster) Stop() {
	c.stopOnce.Do(func() {
		stopProcess(c.apiserver)
		stopProcess(c.etcd)
		_ = os.RemoveAll(c.dir)
	})
}

// process is a running server; done is closed when it has exited.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func stopProcess(p *process) {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func start1() (c *Cluster, err error) {
	apiserverBin, err := apiserverBinary()
	if err != nil {
		return nil, err
	}
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, errors.New("cannot find etcd on PATH (Debian package etcd-server: scripts/test-deps.sh installs it)")
	}
	dir, err := os.MkdirTemp("", "llmusage-kube")
	if err != nil {
		return nil, err
	}
	c = &Cluster{dir: dir}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	etcdURL, err := c.startEtcd(etcdBin)
	if err != nil {
		return nil, err
	}
	if err := c.startAPIServer(apiserverBin, etcdURL); err != nil {
		return nil, err
	}
	return c, nil
}

// apiserverBinary is KUBE_APISERVER, or the cached build, built first if
// needed.
func apiserverBinary() (string, error) {
	if p := os.Getenv("KUBE_APISERVER"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("cannot use KUBE_APISERVER: %w", err)
		}
		return p, nil
	}
	return runScript("kube-apiserver.sh")
}

// runScript runs one of the repository's scripts/ and returns the last
// line it prints; its standard error goes to the test binary's.
func runScript(name string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(filepath.Join(root, "scripts", name))
	cmd.Dir = root
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("cannot run scripts/%s: %w", name, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1], nil
}

// repoRoot is the nearest directory above the working directory that
// holds go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find the repository root (go.mod) above the working directory")
		}
		dir = parent
	}
}

func (c *Cluster) startEtcd(bin string) (string, error) {
	clientPort, err := freePort()
	if err != nil {
		return "", err
	}
	peerPort, err := freePort()
	if err != nil {
		return "", err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(clientPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	c.etcd, err = c.spawn("etcd", bin,
		"--name=kubetest",
		"--data-dir="+filepath.Join(c.dir, "etcd"),
		"--listen-client-urls="+clientURL,
		"--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubetest="+peerURL,
		"--initial-cluster-state=new",
	)
	if err != nil {
		return "", err
	}
	err = c.waitFor("etcd", c.etcd, 30*time.Second, func() bool {
		resp, err := http.Get(clientURL + "/health")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return clientURL, err
}

func (c *Cluster) startAPIServer(bin, etcdURL string) error {
	pki, err := newPKI()
	if err != nil {
		return err
	}
	c.caPEM = pki.certPEM
	files := map[string][]byte{
		"apiserver.crt":       pki.certPEM,
		"apiserver.key":       pki.keyPEM,
		"service-account.key": pki.serviceAccountKeyPEM,
	}
	var b [24]byte
	_, _ = rand.Read(b[:])
	c.token = hex.EncodeToString(b[:])
	files["tokens.csv"] = []byte(c.token + `,admin,admin,"system:masters"` + "\n")
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(c.dir, name), data, 0o600); err != nil {
			return err
		}
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	c.url = "https://127.0.0.1:" + strconv.Itoa(port)
	c.apiserver, err = c.spawn("kube-apiserver", bin,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(port),
		"--cert-dir="+filepath.Join(c.dir, "certs"),
		"--tls-cert-file="+filepath.Join(c.dir, "apiserver.crt"),
		"--tls-private-key-file="+filepath.Join(c.dir, "apiserver.key"),
		"--etcd-servers="+etcdURL,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+filepath.Join(c.dir, "service-account.key"),
		"--service-account-signing-key-file="+filepath.Join(c.dir, "service-account.key"),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--token-auth-file="+filepath.Join(c.dir, "tokens.csv"),
		"--authorization-mode=RBAC",
		// On by default; named so that they stay on whatever the defaults become.
		"--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
		"--allow-privileged=true",
		// No controller manager keeps the kubernetes Service's endpoints, which
		// could not hold a loopback address anyway.
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
	)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.caPEM)
	c.client = &http.Client{
		Timeout:   30 * time.Second,
		Transport: &bearer{token: c.token, next: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}},
	}
	if err := c.waitFor("kube-apiserver", c.apiserver, 2*time.Minute, func() bool {
		resp, err := c.client.Get(c.url + "/readyz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}); err != nil {
		return err
	}
	c.kubeconfig = filepath.Join(c.dir, "kubeconfig")
	kubeconfig := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kubetest
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: kubetest
  context:
    cluster: kubetest
    user: admin
    namespace: default
current-context: kubetest
`, c.url, base64.StdEncoding.EncodeToString(c.caPEM), c.token)
	return os.WriteFile(c.kubeconfig, []byte(kubeconfig), 0o600)
}

// spawn starts a server process, its output in dir/name.log. It is killed
// if the test binary dies without Stop.
func (c *Cluster) spawn(name, bin string, args ...string) (*process, error) {
	log, err := os.Create(filepath.Join(c.dir, name+".log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("cannot start %s: %w", name, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

// waitFor polls ready until it holds, the process exits or timeout passes.
func (c *Cluster) waitFor(name string, p *process, timeout time.Duration, ready func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if ready() {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("cannot start %s: it exited: %s", name, c.logTail(name))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cannot start %s: not ready after %s: %s", name, timeout, c.logTail(name))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *Cluster) logTail(name string) string {
	data, _ := os.ReadFile(filepath.Join(c.dir, name+".log"))
	if len(data) > 3000 {
		data = data[len(data)-3000:]
	}
	return string(data)
}

type bearer struct {
	token string
	next  http.RoundTripper
}

func (b *bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
