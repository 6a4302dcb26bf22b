package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/sidecartest"
)

// readyz gets base's /readyz and returns the status code and the answer.
func readyz(t *testing.T, p *sidecartest.Sidecar, base string) (int, map[string]any) {
	t.Helper()
	resp, err := p.Client.Get(base + "/readyz")
	if err != nil {
		t.Fatalf("GET %s/readyz: %s", base, err)
	}
	code, _, out := sidecartest.DecodeJSON(t, resp)
	return code, out
}

// TestReadyzFullSpool fills a small spool while the database is
// unreachable: POST /v1/calls refuses records with 503 and Retry-After,
// while /readyz stays 200 "degraded" and names both reasons, so that the
// readiness probe never takes the application's pod out of its Service
// for a shared database's outage.
func TestReadyzFullSpool(t *testing.T) {
	// Nothing listens on port 1: connections are refused at once. The
	// schema is not migrated at start, which would need the database.
	p := sidecartest.Start(t, sidecartest.Options{
		DatabaseURL: "postgres://llmusage:pw@127.0.0.1:1/llmusage?sslmode=disable&connect_timeout=2",
		Flags:       []string{"--migrate=false", "--spool-max-bytes", "4096", "--flush-interval", "50ms"},
	})
	// Started with the database down: ready, and degraded once the
	// writer has tried the database.
	var code int
	var out map[string]any
	if !sidecartest.Eventually(30*time.Second, func() bool {
		code, out = readyz(t, p, p.MetricsURL())
		return code != http.StatusOK || out["status"] != "ok"
	}) || code != http.StatusOK || out["status"] != "degraded" || !strings.Contains(fmt.Sprint(out["store"]), "connection refused") || out["spool"] != nil {
		t.Fatalf("/readyz with the database down: %d %v, want 200 degraded with a store reason and no spool reason", code, out)
	}

	accepted := 0
	for i := 0; ; i++ {
		if i == 1000 {
			t.Fatalf("the 4 KiB spool took %d records and is still not full", accepted)
		}
		resp, err := p.Client.Post(p.APIURL()+"/v1/calls", "application/json",
			strings.NewReader(fmt.Sprintf(`{"user_id":"u","model":"m","prompt_tokens":1,"request_id":"fill-%d"}`, i)))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusAccepted {
			accepted++
			continue
		}
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), "spool is full") {
			t.Fatalf("POST /v1/calls to a full spool: %d Retry-After %q %s, want 503 with Retry-After and the spool's reason", resp.StatusCode, resp.Header.Get("Retry-After"), b)
		}
		break
	}
	if accepted == 0 {
		t.Fatal("no record was accepted before the spool was full")
	}

	// The probe, on both listeners: ready, degraded, both reasons.
	for _, base := range []string{p.MetricsURL(), p.APIURL()} {
		code, out := readyz(t, p, base)
		if code != http.StatusOK || out["status"] != "degraded" {
			t.Fatalf("%s/readyz with a full spool: %d %v, want 200 degraded", base, code, out)
		}
		if spool := fmt.Sprint(out["spool"]); !strings.Contains(spool, "spool is full") || !strings.Contains(spool, "of 4096 bytes") {
			t.Fatalf("%s/readyz: spool %q, want the full spool's reason", base, spool)
		}
		if store := fmt.Sprint(out["store"]); !strings.Contains(store, "connection refused") {
			t.Fatalf("%s/readyz: store %q, want the database's reason as well", base, store)
		}
		if out["queued_records"] != float64(accepted) {
			t.Fatalf("%s/readyz: queued_records %v, want the %d accepted records", base, out["queued_records"], accepted)
		}
	}
	// The metrics tell as well: the spool's bytes at (just under) its
	// bound, and the refusal counted where LLMUsageSpoolFull reads it.
	m := p.Scrape(t)
	if used, bound := sidecartest.Value(m, "llmusage_spool_bytes"), sidecartest.Value(m, "llmusage_spool_max_bytes"); bound != 4096 || used <= 0.9*bound || used > bound {
		t.Fatalf("llmusage_spool_bytes %v, llmusage_spool_max_bytes %v: want the spool at its bound of 4096", used, bound)
	}
	if n := sidecartest.Value(m, `llmusage_http_request_duration_seconds_count{code="503",handler="calls",method="post"}`); n != 1 {
		t.Fatalf("refused POST /v1/calls counted %v times, want 1", n)
	}
	if err := p.Stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

// TestReadyzShuttingDown: once SIGTERM arrives, /readyz answers 503 while
// the sidecar finishes in-flight requests, so that the kubelet stops
// sending it traffic.
func TestReadyzShuttingDown(t *testing.T) {
	p := sidecartest.Start(t, sidecartest.Options{Flags: []string{"--shutdown-timeout", "20s"}})
	if code, out := readyz(t, p, p.MetricsURL()); code != http.StatusOK || out["status"] != "ok" {
		t.Fatalf("/readyz before shutdown: %d %v, want 200 ok", code, out)
	}
	// A request in flight (its body never finishes) holds the API
	// server's shutdown, and the metrics listener keeps serving meanwhile.
	conn, err := net.Dial("tcp", p.APIAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fmt.Fprintf(conn, "POST /v1/calls HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"); err != nil {
		t.Fatal(err)
	}
	// The server reads the header before the handler waits for the body.
	time.Sleep(200 * time.Millisecond)

	p.Signal(t, syscall.SIGTERM)
	var code int
	var out map[string]any
	if !sidecartest.Eventually(10*time.Second, func() bool {
		resp, err := p.Client.Get(p.MetricsURL() + "/readyz")
		if err != nil {
			return false
		}
		code, _, out = sidecartest.DecodeJSON(t, resp)
		return code != http.StatusOK
	}) {
		t.Fatalf("/readyz still %d %v after SIGTERM, want 503", code, out)
	}
	if code != http.StatusServiceUnavailable || out["status"] != "unavailable" || !strings.Contains(fmt.Sprint(out["reason"]), "shutting down") {
		t.Fatalf("/readyz while shutting down: %d %v, want 503 unavailable", code, out)
	}
	// The in-flight request is still being served: let it end, and the
	// sidecar exits.
	conn.Close()
	if err := p.Stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}
