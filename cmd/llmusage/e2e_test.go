package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/pgtest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// binary is the llmusage built once for all end-to-end tests.
var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "llmusage-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "llmusage")
	build := exec.Command("go", "build", "-race", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "cannot build llmusage:", err)
		os.Exit(1)
	}
	code := pgtest.Main(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// sidecarProc is a running llmusage serve.
type sidecarProc struct {
	cmd         *exec.Cmd
	api         string // base URL of the API
	metrics     string // base URL of /metrics
	stderr      *syncBuffer
	exited      chan error
	client      *http.Client
	limitsFile  string
	exitHandled bool
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startSidecar runs llmusage serve with a limits file and extra
// environment, and waits until /readyz answers 200. Unless the environment
// names a database, it gets an SQLite file of its own without the seeded
// default rules, so that the limits file alone decides.
func startSidecar(t *testing.T, limits string, env ...string) *sidecarProc {
	t.Helper()
	dir := t.TempDir()
	limitsFile := filepath.Join(dir, "limits.yaml")
	if err := os.WriteFile(limitsFile, []byte(limits), 0o644); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(env, " "), "LLMUSAGE_DATABASE_URL=") {
		env = append(env, "LLMUSAGE_DATABASE_URL="+sqliteWithoutDefaults(t, filepath.Join(dir, "llmusage.db")))
	}
	// Port 0: the kernel picks free ports and the sidecar logs them, so
	// that tests running in parallel never race for a port.
	cmd := exec.Command(binary, "serve", "--limits-file", limitsFile, "--metrics-address", "127.0.0.1:0", "--log-level", "debug", "--flush-interval", "50ms")
	cmd.Dir = dir // the default --data-dir, ./llmusage-data, lands in the test's directory
	// The API address comes from the environment, as in a pod spec.
	cmd.Env = append(os.Environ(), append([]string{"LLMUSAGE_LISTEN_ADDRESS=127.0.0.1:0"}, env...)...)
	p := &sidecarProc{cmd: cmd, stderr: &syncBuffer{},
		exited: make(chan error, 1), client: &http.Client{Timeout: 10 * time.Second}, limitsFile: limitsFile}
	startProc(t, p)
	return p
}

// syncBuffer is a bytes.Buffer that the process's output copier and the
// test may use at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startProc starts p.cmd and waits until its /readyz answers 200.
func startProc(t *testing.T, p *sidecarProc) {
	t.Helper()
	cmd := p.cmd
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if !p.exitHandled {
			_ = cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("sidecar log:\n%s", p.stderr)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m := servingLine.FindStringSubmatch(p.stderr.String()); m != nil && p.metrics == "" {
			p.metrics = "http://" + m[2]
			if !strings.HasPrefix(m[1], "/") { // not a unix socket
				p.api = "http://" + m[1]
			}
		}
		resp, err := p.client.Get(p.metrics + "/readyz")
		if p.metrics == "" {
			err = fmt.Errorf("no address logged yet")
		}
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case err := <-p.exited:
			p.exitHandled = true
			t.Fatalf("sidecar exited before ready: %v\n%s", err, p.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar not ready after 30 s:\n%s", p.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// servingLine is the log line that names the addresses serve listens on.
var servingLine = regexp.MustCompile(`msg="llmusage serving".* api=(\S+) metrics=(\S+)`)

func (p *sidecarProc) post(t *testing.T, path, contentType, body string) (int, http.Header, map[string]any) {
	t.Helper()
	resp, err := p.client.Post(p.api+path, contentType, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, resp)
}

func (p *sidecarProc) get(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	resp, err := p.client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	code, _, out := decode(t, resp)
	return code, out
}

func decode(t *testing.T, resp *http.Response) (int, http.Header, map[string]any) {
	t.Helper()
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s: answer is not JSON: %s: %s", resp.Request.URL, err, b)
	}
	return resp.StatusCode, resp.Header, out
}

func (p *sidecarProc) scrape(t *testing.T) string {
	t.Helper()
	resp, err := p.client.Get(p.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d %s", resp.StatusCode, b)
	}
	return string(b)
}

// stop sends sig and returns the exit error.
func (p *sidecarProc) stop(t *testing.T, sig syscall.Signal) error {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		p.exitHandled = true
		return err
	case <-time.After(60 * time.Second):
		t.Fatalf("sidecar did not exit on %s", sig)
		return nil
	}
}

const seedLimits = `
limits:
  - limit_type: minute
    requests: 3
  - limit_type: day
    requests: 14400
`

// TestSeedExamples posts the seed's three usage examples and checks that
// they show up in /metrics by user, model and provider, then drives one
// user into the 3-per-minute limit.
func TestSeedExamples(t *testing.T) {
	p := startSidecar(t, seedLimits)
	code, _, out := p.post(t, "/v1/calls", "application/json", `[
  {"user_id": "alice", "model": "llama-3.1-70b-versatile", "tokens_used": 1250, "prompt_tokens": 1000, "completion_tokens": 250, "latency_ms": 420, "metadata": {"provider": "groq"}},
  {"user_id": "alice", "model": "gpt-4", "tokens_used": 300, "prompt_tokens": 200, "completion_tokens": 100, "latency_ms": 2100, "metadata": {"provider": "openai"}},
  {"user_id": "bob", "model": "claude-3-opus", "tokens_used": 80, "prompt_tokens": 50, "completion_tokens": 30, "latency_ms": 3300, "metadata": {"provider": "anthropic"}}
]`)
	if code != http.StatusAccepted || out["accepted"] != float64(3) {
		t.Fatalf("records: %d %v", code, out)
	}
	// NDJSON, and a failed call.
	code, _, _ = p.post(t, "/v1/calls", "application/x-ndjson", `{"user_id":"carol","model":"gpt-4o-mini","prompt_tokens":5,"completion_tokens":1,"status":"error","error_type":"rate_limit"}
{"user_id":"carol","model":"o3-mini","prompt_tokens":10,"completion_tokens":40,"cached_tokens":4,"reasoning_tokens":32}`)
	if code != http.StatusAccepted {
		t.Fatalf("ndjson records: %d", code)
	}
	// Misspelt field and negative count: 400 naming them, nothing applied.
	code, _, out = p.post(t, "/v1/calls", "application/json", `{"user_id":"alice","model":"gpt-4","prompt_token":5,"completion_tokens":-1}`)
	details, _ := json.Marshal(out["details"])
	if code != http.StatusBadRequest || !strings.Contains(string(details), `"field":"prompt_token"`) || !strings.Contains(string(details), `"field":"completion_tokens"`) {
		t.Fatalf("bad record: %d %v", code, out)
	}

	// dave: the fourth check in a row gets 429 with Retry-After.
	for i := 1; i <= 4; i++ {
		code, hdr, out := p.post(t, "/v1/check", "application/json", `{"user_id":"dave","model":"gpt-4"}`)
		if i <= 3 && (code != http.StatusOK || out["allowed"] != true) {
			t.Fatalf("check %d: %d %v", i, code, out)
		}
		if i == 4 {
			if code != http.StatusTooManyRequests || out["allowed"] != false {
				t.Fatalf("check 4: %d %v, want 429", code, out)
			}
			if ra := hdr.Get("Retry-After"); ra != "20" && ra != "19" {
				t.Fatalf("Retry-After %q, want about 20 s", ra)
			}
		}
	}
	code, out = p.get(t, p.api+"/api/llm/usage/rate-limit/minute?user_id=dave")
	if code != http.StatusOK || out["can_call"] != false || out["limit"] != float64(3) || out["used"] != float64(3) {
		t.Fatalf("seed rate-limit: %d %v", code, out)
	}

	metrics := p.scrape(t)
	promtoolCheck(t, metrics)
	compareGolden(t, "testdata/seed.metrics", usageLines(metrics))
}

// usageLines keeps the llm_ series, which are deterministic, sorted.
func usageLines(metrics string) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(metrics))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "llm_") && !strings.Contains(line, "_sum{") {
			lines = append(lines, line)
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}

func compareGolden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%s (run go test -update once to create it)", err)
	}
	if string(want) != got {
		t.Fatalf("/metrics differs from %s (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// promtoolCheck lints an exposition with Prometheus' own promtool.
func promtoolCheck(t *testing.T, metrics string) {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is not installed: run `make deps` (Debian package prometheus)")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(metrics)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check metrics: %s\n%s", err, out)
	}
}

func TestReloadAndShutdown(t *testing.T) {
	p := startSidecar(t, seedLimits)
	for i := 0; i < 2; i++ {
		p.post(t, "/v1/check", "application/json", `{"user_id":"erin","model":"gpt-4"}`)
	}
	remaining := func() float64 {
		t.Helper()
		_, out := p.get(t, p.api+"/api/llm/usage/rate-limit/minute?user_id=erin")
		return out["remaining"].(float64)
	}
	reload := func(content, wantLog string) {
		t.Helper()
		if err := os.WriteFile(p.limitsFile, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		before := strings.Count(p.stderr.String(), wantLog)
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return strings.Count(p.stderr.String(), wantLog) > before })
	}
	// A broken file is refused; the old rules (3/minute) stay.
	reload("limits:\n  - limit_type: minute\n    requests: zero\n", "limits file not reloaded")
	if got := remaining(); got != 1 {
		t.Fatalf("remaining %v after a refused reload, want 1", got)
	}
	// A good file raises the limit and keeps the level (1 token left of 3 → 1 of 10).
	reload("limits:\n  - limit_type: minute\n    requests: 10\n", "limits file reloaded")
	_, out := p.get(t, p.api+"/api/llm/usage/rate-limit/minute?user_id=erin")
	if out["limit"] != float64(10) || out["remaining"] != float64(1) {
		t.Fatalf("after reload: %v, want limit 10 with the level kept at 1", out)
	}
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v, want 0", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "llmusage.sock")
	p := startSidecar(t, seedLimits, "LLMUSAGE_LISTEN_ADDRESS=unix:"+sock)
	p.api = "http://llmusage"
	p.client.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}
	code, _, out := p.post(t, "/v1/calls", "application/json", `{"user_id":"frank","model":"gpt-4"}`)
	if code != http.StatusAccepted || out["accepted"] != float64(1) {
		t.Fatalf("record over the unix socket: %d %v", code, out)
	}
	if err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket file left behind after shutdown: %v", err)
	}
}

func TestStartupErrors(t *testing.T) {
	f := func(wantInStderr string, args ...string) {
		t.Helper()
		cmd := exec.Command(binary, args...)
		cmd.Dir = t.TempDir()
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("llmusage %v exited 0, want an error", args)
		}
		if !strings.Contains(string(out), wantInStderr) {
			t.Fatalf("llmusage %v said %q, want %q", args, out, wantInStderr)
		}
		if lines := strings.Count(strings.TrimSpace(string(out)), "\n") + 1; lines != 1 {
			t.Fatalf("llmusage %v said %d lines, want one:\n%s", args, lines, out)
		}
	}
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("limits:\n  - limit_type: minute\n    requests: 3\n  - limit_type: weekly\n    requests: 1\n"), 0o644)
	f("bad.yaml:4: limits[1]: unknown limit_type", "serve", "--limits-file", bad)
	f("cannot read limits file", "serve", "--limits-file", filepath.Join(dir, "missing.yaml"))
	f("flag provided but not defined: -no-such-flag", "serve", "--no-such-flag")
	f("cannot use --log-format", "serve", "--log-format", "xml")
	f("cannot use --metrics-auth without --auth-token-file", "serve", "--metrics-auth")
	f("cannot use --durability", "serve", "--durability", "maybe", "--listen-address", freePort(t), "--metrics-address", freePort(t))
	f("cannot use --max-body-bytes 67108864", "serve", "--max-body-bytes", "67108864", "--listen-address", freePort(t), "--metrics-address", freePort(t))

	f("cannot migrate", "serve", "--listen-address", freePort(t), "--metrics-address", freePort(t),
		"--database-url", "postgres://llmusage:s3cret-pw@127.0.0.1:1/llm?connect_timeout=2")
	out, _ := exec.Command(binary, "migrate", "--database-url", "postgres://llmusage:s3cret-pw@127.0.0.1:1/llm?connect_timeout=2").CombinedOutput()
	if strings.Contains(string(out), "s3cret-pw") {
		t.Fatalf("the password leaks into the error: %s", out)
	}

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	f("cannot listen on "+busy.Addr().String(), "serve", "--listen-address", busy.Addr().String(), "--metrics-address", freePort(t))
}

func TestVersion(t *testing.T) {
	out, err := exec.Command(binary, "version").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^llmusage \S+ \(commit \S+, go1\.\d+`).Match(out) {
		t.Fatalf("version output %q", out)
	}
}

func TestAuthToken(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startSidecar(t, seedLimits, "LLMUSAGE_AUTH_TOKEN_FILE="+tokenFile, "LLMUSAGE_METRICS_AUTH=true")
	f := func(url, auth string, wantStatus int) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := p.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != wantStatus {
			t.Fatalf("GET %s with %q: %d %s, want %d", url, auth, resp.StatusCode, body, wantStatus)
		}
		if wantStatus == http.StatusUnauthorized && !json.Valid(body) {
			t.Fatalf("401 body is not JSON: %s", body)
		}
	}
	limits := p.api + "/v1/limits?user_id=u"
	f(limits, "", http.StatusUnauthorized)
	f(limits, "Bearer wrong", http.StatusUnauthorized)
	f(limits, "Bearer s3cret-token-and-more", http.StatusUnauthorized)
	f(limits, "Basic s3cret-token", http.StatusUnauthorized)
	f(limits, "Bearer s3cret-token", http.StatusOK)
	f(p.api+"/api/llm/usage/rate-limits?user_id=u", "", http.StatusUnauthorized)
	f(p.api+"/api/llm/usage/rate-limits?user_id=u", "Bearer s3cret-token", http.StatusOK)
	f(p.metrics+"/metrics", "", http.StatusUnauthorized)
	f(p.metrics+"/metrics", "Bearer s3cret-token", http.StatusOK)
	// The kubelet's probes need no token.
	f(p.metrics+"/healthz", "", http.StatusOK)
	f(p.api+"/readyz", "", http.StatusOK)
}

// TestCardinalityCaps sets both label caps from the environment, as a pod
// spec would, and checks what a client inventing user ids and model names
// leaves in /metrics: the first of each, and __other__ for the rest, while
// every record is still stored as sent.
func TestCardinalityCaps(t *testing.T) {
	p := startSidecar(t, seedLimits, "LLMUSAGE_METRICS_MAX_USERS=1", "LLMUSAGE_METRICS_MAX_MODELS=2")
	var body strings.Builder
	for i := 0; i < 5; i++ {
		fmt.Fprintf(&body, `{"user_id":"user-%d","provider":"openai","model":"gpt-4o-2026-11-27T12:0%d","prompt_tokens":1,"completion_tokens":1}`+"\n", i, i)
	}
	body.WriteString(`{"user_id":"user-0","provider":"acme","model":"a-1","prompt_tokens":1,"completion_tokens":1}` + "\n")
	if code, _, out := p.post(t, "/v1/calls", "application/x-ndjson", body.String()); code != http.StatusAccepted {
		t.Fatalf("POST /v1/calls: %d %v", code, out)
	}
	var requests []string
	for _, line := range strings.Split(usageLines(p.scrape(t)), "\n") {
		if strings.HasPrefix(line, "llm_requests_total") {
			requests = append(requests, line)
		}
	}
	want := []string{
		`llm_requests_total{model="__other__",provider="__other__",status="success",user="user-0"} 1`,
		`llm_requests_total{model="__other__",provider="openai",status="success",user="__other__"} 3`,
		`llm_requests_total{model="gpt-4o-2026-11-27T12:00",provider="openai",status="success",user="user-0"} 1`,
		`llm_requests_total{model="gpt-4o-2026-11-27T12:01",provider="openai",status="success",user="__other__"} 1`,
	}
	if got := strings.Join(requests, "\n"); got != strings.Join(want, "\n") {
		t.Fatalf("llm_requests_total:\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}
	metrics := p.scrape(t)
	for _, line := range []string{"llmusage_metrics_users 1", "llmusage_metrics_users_overflow_total 4",
		"llmusage_metrics_models 2", "llmusage_metrics_models_overflow_total 4"} {
		if !strings.Contains(metrics, "\n"+line+"\n") {
			t.Errorf("/metrics lacks %q", line)
		}
	}
	waitFor(t, func() bool {
		_, stats := p.get(t, p.api+"/api/llm/usage/stats")
		return stats["total_calls"] == float64(6) && len(stats["by_model"].(map[string]any)) == 6
	})
}
