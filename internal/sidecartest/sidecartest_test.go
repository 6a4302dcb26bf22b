package sidecartest

import (
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

func TestServingAddrs(t *testing.T) {
	for _, tc := range []struct{ log, api, metrics string }{
		{`{"time":"2026-01-02T03:04:05Z","level":"INFO","msg":"llmusage serving","version":"dev","api":"127.0.0.1:1234","metrics":"127.0.0.1:5678","rules":2}`, "127.0.0.1:1234", "127.0.0.1:5678"},
		{`time=2026-01-02T03:04:05.000Z level=INFO msg="llmusage serving" version=dev api=127.0.0.1:1234 metrics=[::1]:5678 rules=2`, "127.0.0.1:1234", "[::1]:5678"},
		{`time=2026-01-02T03:04:05.000Z level=INFO msg="llmusage serving" api="/tmp/a dir/api.sock" metrics=127.0.0.1:5678`, "/tmp/a dir/api.sock", "127.0.0.1:5678"},
		// Another line naming the message first, then the one.
		{"level=DEBUG msg=\"waiting before llmusage serving\" api=x\n{\"msg\":\"llmusage serving\",\"api\":\"a:1\",\"metrics\":\"m:2\"}\n", "a:1", "m:2"},
	} {
		api, metrics, ok := servingAddrs(tc.log)
		if !ok || api != tc.api || metrics != tc.metrics {
			t.Errorf("servingAddrs(%q) = %q, %q, %v; want %q, %q", tc.log, api, metrics, ok, tc.api, tc.metrics)
		}
	}
	if _, _, ok := servingAddrs("{\"msg\":\"llmusage serving\",\"api\":\"a:1\"}\nmsg=\"llmusage serving\" api=a:1\n"); ok {
		t.Error("servingAddrs found addresses without a metrics attribute")
	}
}

// TestKill9AndRestart restarts a killed sidecar on its ports and data
// directory: the record stored before the kill is still there.
func TestKill9AndRestart(t *testing.T) {
	s := Start(t, Options{Flags: []string{"--flush-interval", "50ms"}})
	if code, _, out := s.PostJSON(t, "/v1/calls", `{"user_id":"u","model":"gpt-4o","prompt_tokens":3}`); code != http.StatusAccepted {
		t.Fatalf("POST /v1/calls: %d %v", code, out)
	}
	WaitFor(t, 30*time.Second, func() bool { return s.Gauge("llmusage_persisted_records_total") == 1 }, "the record was not stored")
	api, metrics, pid := s.APIAddr(), s.MetricsAddr(), s.PID()
	s.Kill9(t)
	s.Restart(t)
	if s.APIAddr() != api || s.MetricsAddr() != metrics || s.PID() == pid {
		t.Fatalf("after a restart: API %s, metrics %s, pid %d; want %s, %s and a new process", s.APIAddr(), s.MetricsAddr(), s.PID(), api, metrics)
	}
	if _, stats := s.Get(t, "/api/llm/usage/stats"); stats["total_calls"] != float64(1) {
		t.Fatalf("stats after the restart: %v", stats)
	}
	if n := strings.Count(s.Log(), servingMsg); n != 2 {
		t.Fatalf("%d %q lines in the log of two runs", n, servingMsg)
	}
	if err := s.Stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

// TestStartN starts three replicas with one limits file and the seeded
// defaults deleted: each has ports and a database of its own, and the
// limits file alone decides.
func TestStartN(t *testing.T) {
	replicas := StartN(t, 3, Options{Limits: "limits:\n  - limit_type: minute\n    requests: 2\n"})
	seen := map[string]bool{}
	for i, s := range replicas {
		if seen[s.APIAddr()] || seen[s.MetricsAddr()] || seen[s.DataDir] {
			t.Fatalf("replica %d shares an address or its data directory: %s %s %s", i+1, s.APIAddr(), s.MetricsAddr(), s.DataDir)
		}
		seen[s.APIAddr()], seen[s.MetricsAddr()], seen[s.DataDir] = true, true, true
		if _, out := s.Get(t, "/api/llm/usage/rate-limit/minute?user_id=u"); out["limit"] != float64(2) {
			t.Fatalf("replica %d: %v, want the limits file's 2 a minute", i+1, out)
		}
	}
}

// TestTextLogAndUnixSocket reads the addresses from a text log, and
// reaches an API on a unix socket given by a relative path.
func TestTextLogAndUnixSocket(t *testing.T) {
	s := Start(t, Options{Env: []string{"LLMUSAGE_LOG_FORMAT=text", "LLMUSAGE_LISTEN_ADDRESS=unix:api.sock"}})
	if !strings.Contains(s.Log(), `msg="llmusage serving"`) {
		t.Fatalf("not a text log:\n%s", s.Log())
	}
	if s.APIAddr() != s.Dir+"/api.sock" || s.APIURL() != "http://"+unixHost {
		t.Fatalf("API %s at %s, want the socket in %s", s.APIAddr(), s.APIURL(), s.Dir)
	}
	if code, _, out := s.PostJSON(t, "/v1/check", `{"user_id":"u","model":"gpt-4o"}`); code != http.StatusOK || out["allowed"] != true {
		t.Fatalf("check over the socket: %d %v", code, out)
	}
}

func TestRequireTool(t *testing.T) {
	if p := RequireTool(t, "go"); p == "" {
		t.Fatal("no path for go")
	}
	t.Run("missing", func(t *testing.T) {
		t.Setenv("LLMUSAGE_TEST_REQUIRE_POSTGRES", "")
		RequireTool(t, "no-such-tool-llmusage")
		t.Fatal("RequireTool did not skip for a missing tool")
	})
}
