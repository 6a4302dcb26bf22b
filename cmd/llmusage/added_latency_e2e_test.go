package main

import (
	"net/http"
	"strings"
	"testing"

	"github.com/llmusage/llmusage/internal/sidecartest"
	"github.com/llmusage/llmusage/internal/upstreamtest"
)

// TestAddedLatency: llmusage_added_latency_seconds counts every check,
// record and proxied call, and a proxied call's added time leaves out its
// wait on a slow upstream (its answer's headers, then its stream's
// chunks), which the route's own duration includes.
func TestAddedLatency(t *testing.T) {
	up := upstreamtest.Start(t)
	s := sidecartest.Start(t, sidecartest.Options{
		Flags: []string{"--upstream", "openai=" + up.URL},
	})
	for range 3 {
		if code, _, out := s.PostJSON(t, "/v1/check", `{"user_id":"alice","model":"gpt-4o-mini"}`); code != http.StatusOK {
			t.Fatalf("check: %d %v", code, out)
		}
	}
	if code, _, out := s.PostJSON(t, "/v1/calls", `{"user_id":"alice","model":"gpt-4o-mini","prompt_tokens":5,"completion_tokens":1}`); code != http.StatusAccepted {
		t.Fatalf("record: %d %v", code, out)
	}
	// Each call waits SlowStreamDuration on the upstream: the JSON one
	// for its answer, the streamed one between its chunks.
	user := map[string]string{"X-LLMUsage-User": "alice"}
	for _, body := range []string{
		`{"model":"slow-stream","messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"slow-stream","stream":true,"messages":[{"role":"user","content":"hi"}]}`,
	} {
		if code, _, out := proxyPost(t, s, "/openai/v1/chat/completions", user, body); code != http.StatusOK || !strings.Contains(out, "Hello") {
			t.Fatalf("proxied call: %d %s", code, out)
		}
	}

	m := s.Scrape(t)
	for path, want := range map[string]float64{"check": 3, "record": 1, "proxy": 2} {
		if got := sidecartest.Value(m, `llmusage_added_latency_seconds_count{path="`+path+`"}`); got != want {
			t.Errorf("%s: %v observations, want %v", path, got, want)
		}
	}
	added := sidecartest.Value(m, `llmusage_added_latency_seconds_sum{path="proxy"}`)
	total := sidecartest.Value(m, `llmusage_http_request_duration_seconds_sum{code="200",handler="proxy_openai",method="post"}`)
	waited := 2 * upstreamtest.SlowStreamDuration.Seconds()
	// The upstream's sleeps are in the route's duration and not in the
	// added latency: both calls together added less than one's wait.
	if !(total >= waited && added > 0 && added < waited/2) {
		t.Fatalf("proxy: added %v s, route duration %v s, upstream waits %v s: want 0 < added < %v <= duration", added, total, waited, waited/2)
	}
	if check := sidecartest.Value(m, `llmusage_added_latency_seconds_sum{path="check"}`); !(check > 0) {
		t.Fatalf("check: added %v s, want > 0", check)
	}
}
