package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/sidecartest"
)

// TestLoadgen drives a running sidecar in each mode and checks the
// report, and the baseline server.
func TestLoadgen(t *testing.T) {
	p := startSidecar(t, "limits:\n  - limit_type: minute\n    requests: 50\n")
	type report struct {
		Mode           string  `json:"mode"`
		Requests       int64   `json:"requests"`
		Records        int64   `json:"records"`
		Errors         int64   `json:"errors"`
		Limited        int64   `json:"limited"`
		RequestsPerSec float64 `json:"requests_per_second"`
		P50            float64 `json:"latency_p50_ms"`
		P99ms          float64 `json:"latency_p99_ms"`
		FirstError     string  `json:"first_error"`
	}
	f := func(wantRecordsPerRequest float64, args ...string) report {
		t.Helper()
		out, err := sidecartest.Command(t, append([]string{"loadgen", "--target", p.APIURL(), "--duration", "1s", "--connections", "2", "--json"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("loadgen %v: %s\n%s", args, err, out)
		}
		var r report
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("loadgen --json printed %q: %s", out, err)
		}
		if r.Requests == 0 || r.Errors != 0 || r.RequestsPerSec <= 0 || r.P50 <= 0 || r.P99ms < r.P50 {
			t.Fatalf("loadgen %v: %+v", args, r)
		}
		if wantRecordsPerRequest > 0 && float64(r.Records) != wantRecordsPerRequest*float64(r.Requests) {
			t.Fatalf("loadgen %v: %d records for %d requests", args, r.Records, r.Requests)
		}
		if r.Mode == "check" && r.Limited == 0 {
			t.Fatalf("loadgen %v: no check was limited by a 50-a-minute rule: %+v", args, r)
		}
		return r
	}
	f(1, "--mode", "record")
	f(25, "--mode", "batch", "--batch-size", "25")
	f(0, "--mode", "check", "--users", "3")
	// Paced: no more sends than scheduled in the second, and not far fewer.
	if r := f(1, "--mode", "record", "--rate", "200"); r.Requests > 201 || r.Requests < 100 {
		t.Fatalf("loadgen --rate 200 for 1s sent %d requests", r.Requests)
	}

	// The text report names throughput and percentiles.
	text, err := sidecartest.Run(t, "loadgen", "--target", p.APIURL(), "--duration", "500ms")
	if err != nil || !strings.Contains(text, "requests") || !strings.Contains(text, "p99") {
		t.Fatalf("loadgen text report: %v\n%s", err, text)
	}

	// The baseline server answers 202 to anything, until SIGTERM.
	addr := sidecartest.FreeAddr(t)
	base := sidecartest.Command(t, "loadgen", "--serve-baseline", addr)
	if err := base.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = base.Process.Kill(); _ = base.Wait() }()
	sidecartest.WaitFor(t, 30*time.Second, func() bool {
		resp, err := http.Post("http://"+addr+"/v1/calls", "application/json", strings.NewReader("{}"))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusAccepted
	}, "the baseline server does not answer 202")
	if out, err := sidecartest.Run(t, "loadgen", "--target", "ftp://x"); err == nil || !strings.Contains(out, "cannot use --target") {
		t.Fatalf("a bad target: %v %s", err, out)
	}
}
