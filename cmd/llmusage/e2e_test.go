package main

import (
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
	"syscall"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/sidecartest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestMain(m *testing.M) { os.Exit(sidecartest.Main(m)) }

// startSidecar runs llmusage serve with a limits file and extra
// environment, and waits until /readyz answers 200. The API address comes
// from the environment, as in a pod spec, and the data directory is the
// default, ./llmusage-data in a directory of the test's. Unless the
// environment names a database, it gets an SQLite database of its own
// without the seeded default rules, so that the limits file alone decides.
func startSidecar(t *testing.T, limits string, env ...string) *sidecartest.Sidecar {
	t.Helper()
	return sidecartest.Start(t, sidecartest.Options{
		Limits:         limits,
		Env:            append([]string{"LLMUSAGE_LISTEN_ADDRESS=127.0.0.1:0"}, env...),
		Flags:          []string{"--log-level", "debug", "--flush-interval", "50ms"},
		DefaultDataDir: true,
	})
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
	code, _, out := p.Post(t, "/v1/calls", "application/json", `[
  {"user_id": "alice", "model": "llama-3.1-70b-versatile", "tokens_used": 1250, "prompt_tokens": 1000, "completion_tokens": 250, "latency_ms": 420, "metadata": {"provider": "groq"}},
  {"user_id": "alice", "model": "gpt-4", "tokens_used": 300, "prompt_tokens": 200, "completion_tokens": 100, "latency_ms": 2100, "metadata": {"provider": "openai"}},
  {"user_id": "bob", "model": "claude-3-opus", "tokens_used": 80, "prompt_tokens": 50, "completion_tokens": 30, "latency_ms": 3300, "metadata": {"provider": "anthropic"}}
]`)
	if code != http.StatusAccepted || out["accepted"] != float64(3) {
		t.Fatalf("records: %d %v", code, out)
	}
	// NDJSON, and a failed call.
	code, _, _ = p.Post(t, "/v1/calls", "application/x-ndjson", `{"user_id":"carol","model":"gpt-4o-mini","prompt_tokens":5,"completion_tokens":1,"status":"error","error_type":"rate_limit"}
{"user_id":"carol","model":"o3-mini","prompt_tokens":10,"completion_tokens":40,"cached_tokens":4,"reasoning_tokens":32}`)
	if code != http.StatusAccepted {
		t.Fatalf("ndjson records: %d", code)
	}
	// Misspelt field and negative count: 400 naming them, nothing applied.
	code, _, out = p.Post(t, "/v1/calls", "application/json", `{"user_id":"alice","model":"gpt-4","prompt_token":5,"completion_tokens":-1}`)
	details, _ := json.Marshal(out["details"])
	if code != http.StatusBadRequest || !strings.Contains(string(details), `"field":"prompt_token"`) || !strings.Contains(string(details), `"field":"completion_tokens"`) {
		t.Fatalf("bad record: %d %v", code, out)
	}

	// dave: the fourth check in a row gets 429 with Retry-After.
	for i := 1; i <= 4; i++ {
		code, hdr, out := p.Post(t, "/v1/check", "application/json", `{"user_id":"dave","model":"gpt-4"}`)
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
	code, out = p.Get(t, "/api/llm/usage/rate-limit/minute?user_id=dave")
	if code != http.StatusOK || out["can_call"] != false || out["limit"] != float64(3) || out["used"] != float64(3) {
		t.Fatalf("seed rate-limit: %d %v", code, out)
	}

	// Every record stored, so that the store's counters are settled.
	sidecartest.WaitFor(t, 30*time.Second, func() bool {
		return p.Gauge("llmusage_persisted_records_total") == 5 && p.Gauge("llmusage_persist_queue_records") == 0 && p.Gauge("llmusage_spool_records") == 0
	}, "the 5 records were not stored")
	metrics := p.Scrape(t)
	promtoolCheck(t, metrics)
	compareGolden(t, "testdata/seed.metrics", goldenMetrics(metrics))
}

// goldenMetrics keeps every family of an exposition, in its order, but
// for those that vary from run to run or from machine to machine:
//   - the Go runtime's (go_*) and the process's (process_*): dropped, with
//     their HELP text, which changes with the Go version;
//   - durations the sidecar measures itself (llmusage_*_duration_seconds):
//     HELP, TYPE and the _count samples kept where the count is that of the
//     test's requests (llmusage_http_request_duration_seconds, but for
//     handler="metrics": the test polls /metrics until the records are
//     stored; llmusage_added_latency_seconds), no samples where it is not (persist_flush_duration_seconds
//     counts batches, which the flush timer cuts; the steps of
//     llm_usage_daily_summary, store_rollup_*, are a timer's);
//   - llmusage_rules_file_last_reload_success_timestamp_seconds: HELP and
//     TYPE kept, the sample (the start's time) dropped;
//   - llmusage_build_info: its revision and goversion labels normalised.
//
// The llm_* families are deterministic: their latencies are the records'
// latency_ms, and the quota gauges move by a whole unit only after 20 s.
func goldenMetrics(metrics string) string {
	var b strings.Builder
	for line := range strings.Lines(metrics) {
		name := line
		if rest, ok := strings.CutPrefix(line, "# "); ok {
			_, name, _ = strings.Cut(rest, " ") // # HELP name ..., # TYPE name ...
		}
		name = name[:strings.IndexAny(name, " {\n")]
		switch {
		case strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_"):
			continue
		case strings.HasPrefix(line, "#"):
		case strings.HasPrefix(name, "llmusage_http_request_duration_seconds"):
			if !strings.HasSuffix(name, "_count") || strings.Contains(line, `handler="metrics"`) {
				continue
			}
		case strings.HasPrefix(name, "llmusage_added_latency_seconds"):
			if !strings.HasSuffix(name, "_count") {
				continue
			}
		case strings.HasPrefix(name, "llmusage_persist_flush_duration_seconds"),
			strings.HasPrefix(name, "llmusage_store_rollup_step"),
			name == "llmusage_rules_file_last_reload_success_timestamp_seconds":
			continue
		case name == "llmusage_build_info":
			line = buildInfoVaries.ReplaceAllString(line, `$1="<$1>"`)
		}
		b.WriteString(line)
	}
	return b.String()
}

var buildInfoVaries = regexp.MustCompile(`\b(revision|goversion)="[^"]*"`)

// samples returns the sample lines of the family name in an exposition, sorted.
func samples(metrics, name string) []string {
	var lines []string
	for line := range strings.Lines(metrics) {
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			lines = append(lines, strings.TrimSuffix(line, "\n"))
		}
	}
	sort.Strings(lines)
	return lines
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
	cmd := exec.Command(sidecartest.RequireTool(t, "promtool"), "check", "metrics")
	cmd.Stdin = strings.NewReader(metrics)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check metrics: %s\n%s", err, out)
	}
}

func TestReloadAndShutdown(t *testing.T) {
	p := startSidecar(t, seedLimits)
	for i := 0; i < 2; i++ {
		p.Post(t, "/v1/check", "application/json", `{"user_id":"erin","model":"gpt-4"}`)
	}
	remaining := func() float64 {
		t.Helper()
		_, out := p.Get(t, "/api/llm/usage/rate-limit/minute?user_id=erin")
		return out["remaining"].(float64)
	}
	reload := func(content, wantLog string) {
		t.Helper()
		if err := os.WriteFile(p.LimitsFile, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		before := strings.Count(p.Log(), wantLog)
		p.Signal(t, syscall.SIGHUP)
		sidecartest.WaitFor(t, 30*time.Second, func() bool { return strings.Count(p.Log(), wantLog) > before }, "no %q in the log after SIGHUP", wantLog)
	}
	// A broken file is refused; the old rules (3/minute) stay.
	reload("limits:\n  - limit_type: minute\n    requests: zero\n", "limits file not reloaded")
	if got := remaining(); got != 1 {
		t.Fatalf("remaining %v after a refused reload, want 1", got)
	}
	// A good file raises the limit and keeps the level (1 token left of 3 → 1 of 10).
	reload("limits:\n  - limit_type: minute\n    requests: 10\n", "limits file reloaded")
	_, out := p.Get(t, "/api/llm/usage/rate-limit/minute?user_id=erin")
	if out["limit"] != float64(10) || out["remaining"] != float64(1) {
		t.Fatalf("after reload: %v, want limit 10 with the level kept at 1", out)
	}
	if err := p.Stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v, want 0", err)
	}
}

func TestUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "llmusage.sock")
	p := startSidecar(t, seedLimits, "LLMUSAGE_LISTEN_ADDRESS=unix:"+sock)
	// The API is the socket alone: p.Client reaches it through the socket.
	if p.APIAddr() != sock {
		t.Fatalf("API address %q, want the socket %s", p.APIAddr(), sock)
	}
	code, _, out := p.Post(t, "/v1/calls", "application/json", `{"user_id":"frank","model":"gpt-4"}`)
	if code != http.StatusAccepted || out["accepted"] != float64(1) {
		t.Fatalf("record over the unix socket: %d %v", code, out)
	}
	if err := p.Stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket file left behind after shutdown: %v", err)
	}
}

func TestStartupErrors(t *testing.T) {
	f := func(wantInStderr string, args ...string) {
		t.Helper()
		out, err := sidecartest.Run(t, args...)
		if err == nil {
			t.Fatalf("llmusage %v exited 0, want an error", args)
		}
		if !strings.Contains(out, wantInStderr) {
			t.Fatalf("llmusage %v said %q, want %q", args, out, wantInStderr)
		}
		if lines := strings.Count(strings.TrimSpace(out), "\n") + 1; lines != 1 {
			t.Fatalf("llmusage %v said %d lines, want one:\n%s", args, lines, out)
		}
	}
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("limits:\n  - limit_type: minute\n    requests: 3\n  - limit_type: weekly\n    requests: 1\n"), 0o644)
	f("bad.yaml:4: limits[1]: unknown limit_type", "serve", "--limits-file", bad)
	f("cannot read limits file", "serve", "--limits-file", filepath.Join(dir, "missing.yaml"))
	f("flag provided but not defined: --no-such-flag", "serve", "--no-such-flag")
	f(`no command "srve"; did you mean serve?`, "srve")
	f("cannot use --log-format", "serve", "--log-format", "xml")
	f("cannot use --metrics-auth without --auth-token-file", "serve", "--metrics-auth")
	f("cannot use --durability", "serve", "--durability", "maybe", "--listen-address", sidecartest.FreeAddr(t), "--metrics-address", sidecartest.FreeAddr(t))
	f("cannot use --otlp-default-user: it must be at most 256 bytes", "serve", "--otlp-default-user", strings.Repeat("u", 257))
	f(`cannot use --otlp-default-user "a\tb": it must not be blank or hold control characters`, "serve", "--otlp-default-user", "a\tb")
	f("cannot use --proxy-client-retry-max 1m0s: want 0 to 59s", "serve", "--proxy-client-retry-max", "60s")
	f("cannot use --concurrency-timeout 500ms: want 1s to 24h", "serve", "--concurrency-timeout", "500ms")
	f(`cannot use --provider-headroom "on": want off or respect`, "serve", "--provider-headroom", "on")
	f("cannot use --max-body-bytes 67108864", "serve", "--max-body-bytes", "67108864", "--listen-address", sidecartest.FreeAddr(t), "--metrics-address", sidecartest.FreeAddr(t))

	f("cannot migrate", "serve", "--listen-address", sidecartest.FreeAddr(t), "--metrics-address", sidecartest.FreeAddr(t),
		"--database-url", "postgres://llmusage:s3cret-pw@127.0.0.1:1/llm?connect_timeout=2")
	out, _ := sidecartest.Run(t, "migrate", "--database-url", "postgres://llmusage:s3cret-pw@127.0.0.1:1/llm?connect_timeout=2")
	if strings.Contains(out, "s3cret-pw") {
		t.Fatalf("the password leaks into the error: %s", out)
	}

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	f("cannot listen on "+busy.Addr().String(), "serve", "--listen-address", busy.Addr().String(), "--metrics-address", sidecartest.FreeAddr(t))
	// Which of the three addresses is busy: the error names its flag.
	f("cannot listen on "+busy.Addr().String()+" (--otlp-grpc-address)", "serve", "--listen-address", sidecartest.FreeAddr(t),
		"--metrics-address", sidecartest.FreeAddr(t), "--otlp-grpc-address", busy.Addr().String())
}

// TestSharedDataDirRefused: two sidecars appending to one spool would
// overwrite each other's acknowledged records, so a second sidecar on a
// running one's --data-dir refuses to start, naming it, and the first
// keeps every record it acknowledged.
func TestSharedDataDirRefused(t *testing.T) {
	first := sidecartest.Start(t, sidecartest.Options{})
	out, err := sidecartest.Run(t, "serve", "--data-dir", first.DataDir,
		"--listen-address", sidecartest.FreeAddr(t), "--metrics-address", sidecartest.FreeAddr(t))
	if err == nil {
		t.Fatal("a second sidecar on the same --data-dir started")
	}
	want := fmt.Sprintf("cannot use the spool in %s: another llmusage (pid %d) holds it; give each sidecar its own --data-dir", filepath.Join(first.DataDir, "spool"), first.PID())
	if !strings.Contains(out, want) {
		t.Fatalf("the second sidecar said %q, want %q", out, want)
	}
	for i := 0; i < 20; i++ {
		if code, _, body := first.PostJSON(t, "/v1/calls", fmt.Sprintf(`{"user_id": "u%d", "model": "gpt-4o", "tokens_used": 1}`, i)); code != http.StatusAccepted && code != http.StatusOK {
			t.Fatalf("record %d: %d %v", i, code, body)
		}
	}
	var body map[string]any
	if !sidecartest.Eventually(10*time.Second, func() bool {
		_, body = first.Get(t, "/api/llm/usage/summary")
		return body["calls_today"] == float64(20)
	}) {
		t.Fatalf("summary after 20 records: %v", body)
	}
}

func TestVersion(t *testing.T) {
	out, err := sidecartest.Run(t, "version")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^llmusage \S+ \(commit \S+, go1\.\d+`).MatchString(out) {
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
		resp, err := p.Client.Do(req)
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
	limits := p.APIURL() + "/v1/limits?user_id=u"
	f(limits, "", http.StatusUnauthorized)
	f(limits, "Bearer wrong", http.StatusUnauthorized)
	f(limits, "Bearer s3cret-token-and-more", http.StatusUnauthorized)
	f(limits, "Basic s3cret-token", http.StatusUnauthorized)
	f(limits, "Bearer s3cret-token", http.StatusOK)
	f(p.APIURL()+"/api/llm/usage/rate-limits?user_id=u", "", http.StatusUnauthorized)
	f(p.APIURL()+"/api/llm/usage/rate-limits?user_id=u", "Bearer s3cret-token", http.StatusOK)
	f(p.MetricsURL()+"/metrics", "", http.StatusUnauthorized)
	f(p.MetricsURL()+"/metrics", "Bearer s3cret-token", http.StatusOK)
	// The kubelet's probes need no token.
	f(p.MetricsURL()+"/healthz", "", http.StatusOK)
	f(p.APIURL()+"/readyz", "", http.StatusOK)
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
	if code, _, out := p.Post(t, "/v1/calls", "application/x-ndjson", body.String()); code != http.StatusAccepted {
		t.Fatalf("POST /v1/calls: %d %v", code, out)
	}
	requests := samples(p.Scrape(t), "llm_requests_total")
	want := []string{
		`llm_requests_total{model="__other__",provider="__other__",status="success",team="",user="user-0"} 1`,
		`llm_requests_total{model="__other__",provider="openai",status="success",team="",user="__other__"} 3`,
		`llm_requests_total{model="gpt-4o-2026-11-27T12:00",provider="openai",status="success",team="",user="user-0"} 1`,
		`llm_requests_total{model="gpt-4o-2026-11-27T12:01",provider="openai",status="success",team="",user="__other__"} 1`,
	}
	if got := strings.Join(requests, "\n"); got != strings.Join(want, "\n") {
		t.Fatalf("llm_requests_total:\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}
	metrics := p.Scrape(t)
	for _, line := range []string{"llmusage_metrics_users 1", "llmusage_metrics_users_overflow_total 4",
		"llmusage_metrics_models 2", "llmusage_metrics_models_overflow_total 4"} {
		if !strings.Contains(metrics, "\n"+line+"\n") {
			t.Errorf("/metrics lacks %q", line)
		}
	}
	sidecartest.WaitFor(t, 30*time.Second, func() bool {
		_, stats := p.Get(t, "/api/llm/usage/stats")
		return stats["total_calls"] == float64(6) && len(stats["by_model"].(map[string]any)) == 6
	}, "the 6 records are not all in the stats")
}
