package proxy

import (
	"compress/gzip"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmusage/llmusage/collector"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/record"
)

// sink keeps what the collector accepts.
type sink struct {
	mu   sync.Mutex
	recs []record.Record
}

func (s *sink) Enqueue(recs []record.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recs = append(s.recs, recs...)
	return nil
}

// wait returns the records once there are at least n: a call is recorded
// when the proxy has read the upstream's answer to its end, which may be
// just after the client has it.
func (s *sink) wait(t *testing.T, n int) []record.Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		recs := s.all()
		if len(recs) >= n || time.Now().After(deadline) {
			return recs
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (s *sink) all() []record.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]record.Record(nil), s.recs...)
}

// newTestProxy serves a proxy to upstream (as "openai"), recording into sink.
func newTestProxy(t *testing.T, upstream http.Handler) (*httptest.Server, *sink) {
	t.Helper()
	up := httptest.NewServer(upstream)
	t.Cleanup(up.Close)
	l, err := limiter.New(nil, limiter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	sk := &sink{}
	u, _ := url.Parse(up.URL)
	p, err := New(Options{Collector: collector.New(collector.Options{Limiter: l, Sink: sk}), MaxBodyBytes: 1024,
		Upstreams: []Upstream{{Name: "openai", URL: u, Kind: OpenAI, Provider: "openai"}},
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	for _, r := range p.Routes() {
		mux.Handle(r.Pattern, r.Handler)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, sk
}

func post(t *testing.T, url, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("X-LLMUsage-User", "u")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestBadUpstreams: an upstream answering garbage gives an error record
// and the answer as it came, never a hang or a made-up usage; bad request
// bodies get clear errors in the provider's shape.
func TestBadUpstreams(t *testing.T) {
	srv, sk := newTestProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "stream") {
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, "data: {not json\n\ndata: [DONE]\n\n")
			return
		}
		_, _ = io.WriteString(w, "<html>garbage</html>")
	}))
	code, body := post(t, srv.URL+"/openai/v1/chat/completions", `{"model":"gpt-4o","messages":[]}`)
	if code != http.StatusOK || body != "<html>garbage</html>" {
		t.Fatalf("garbage answer relayed as %d %q", code, body)
	}
	code, _ = post(t, srv.URL+"/openai/stream/chat/completions", `{"model":"gpt-4o","stream":true,"messages":[]}`)
	if code != http.StatusOK {
		t.Fatalf("garbage stream: %d", code)
	}
	recs := sk.wait(t, 2)
	if len(recs) != 2 {
		t.Fatalf("%d records, want 2", len(recs))
	}
	if r := recs[0]; r.Status != record.StatusError || r.ErrorType != "upstream_bad_response" {
		t.Fatalf("garbage JSON's record %+v", r)
	}
	if r := recs[1]; !strings.Contains(string(r.Metadata), `"usage_estimated":true`) {
		t.Fatalf("a stream without usage was not marked estimated: %+v", r)
	}

	f := func(path, body string, wantStatus int, wantInError string) {
		t.Helper()
		code, got := post(t, srv.URL+path, body)
		if code != wantStatus || !strings.Contains(got, wantInError) || !strings.Contains(got, `"error":{`) {
			t.Fatalf("%s %s: %d %s, want %d naming %q in OpenAI's error shape", path, body, code, got, wantStatus, wantInError)
		}
	}
	f("/openai/v1/chat/completions", `{"model":`, http.StatusBadRequest, "cannot parse the request body")
	f("/openai/v1/chat/completions", `{"messages":[]}`, http.StatusBadRequest, "without a model")
	f("/openai/v1/chat/completions", `{"model":"m","pad":"`+strings.Repeat("x", 2000)+`"}`, http.StatusRequestEntityTooLarge, "--max-body-bytes")
	if n := len(sk.all()); n != 2 {
		t.Fatalf("%d records after refused requests, want still 2", n)
	}
}

func TestParseUpstream(t *testing.T) {
	f := func(s string, wantErr bool, wantKind Kind, wantProvider string) {
		t.Helper()
		up, err := ParseUpstream(s)
		if (err != nil) != wantErr {
			t.Fatalf("ParseUpstream(%q): %v", s, err)
		}
		if err == nil && (up.Kind != wantKind || up.Provider != wantProvider) {
			t.Fatalf("ParseUpstream(%q) = %+v", s, up)
		}
	}
	f("openai=http://127.0.0.1:8080", false, OpenAI, "openai")
	f("anthropic=https://proxy.example/anthropic", false, Anthropic, "anthropic")
	f("vllm=http://vllm:8000", false, OpenAI, "vllm")
	f("mistral=https://eu.mistral.example", false, OpenAI, "mistral_ai")
	f("openai", true, 0, "")
	f("=http://x", true, 0, "")
	f("a/b=http://x", true, 0, "")
	f("x=ftp://x", true, 0, "")
	f("x=http://x?y=1", true, 0, "")
	f("x=not a url", true, 0, "")
}

// TestGzipUpstream: an upstream that compresses its answers (as the
// providers do when asked) still has its usage read.
func TestGzipUpstream(t *testing.T) {
	srv, sk := newTestProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		answer := `{"model":"gpt-4o","usage":{"prompt_tokens":11,"completion_tokens":7}}`
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			w.Header().Set("Content-Encoding", "gzip")
			zw := gzip.NewWriter(w)
			_, _ = io.WriteString(zw, answer)
			_ = zw.Close()
			return
		}
		_, _ = io.WriteString(w, answer)
	}))
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/openai/v1/chat/completions", strings.NewReader(`{"model":"gpt-4o","messages":[]}`))
	req.Header.Set("X-LLMUsage-User", "u")
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := (&http.Client{Transport: &http.Transport{DisableCompression: true}}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "prompt_tokens") {
		t.Fatalf("the client got %q, want the answer readable", b)
	}
	recs := sk.wait(t, 1)
	if len(recs) != 1 || recs[0].PromptTokens != 11 || recs[0].CompletionTokens != 7 || recs[0].Status != record.StatusSuccess {
		t.Fatalf("records %+v, want the usage of the compressed answer", recs)
	}
}

// TestReviewFindings: what a review of the proxy found, each fixed.
func TestReviewFindings(t *testing.T) {
	var lastBody string
	var mu sync.Mutex
	srv, sk := newTestProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		lastBody = string(b)
		mu.Unlock()
		if strings.HasSuffix(r.URL.Path, "/responses") {
			w.Header().Set("Content-Type", "text/event-stream")
			_, _ = io.WriteString(w, "event: response.incomplete\ndata: {\"type\":\"response.incomplete\",\"response\":{\"usage\":{\"input_tokens\":11,\"output_tokens\":16}}}\n\n")
			return
		}
		if strings.Contains(string(b), `"stream":true`) {
			w.Header().Set("Content-Type", "text/event-stream")
			// The last event without its blank line.
			_, _ = io.WriteString(w, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}")
			return
		}
		_, _ = io.WriteString(w, `{"usage":{"prompt_tokens":1,"completion_tokens":1}}`)
	}))
	// Case variants of a field are not the field: the upstream reads
	// "model", and so does the check.
	if code, body := post(t, srv.URL+"/openai/v1/chat/completions", `{"model":"gpt-4o","Model":"cheap","messages":[]}`); code != http.StatusOK {
		t.Fatalf("%d %s", code, body)
	}
	if r := sk.wait(t, 1)[0]; r.Model != "gpt-4o" {
		t.Fatalf("checked and recorded as %q, the upstream ran gpt-4o", r.Model)
	}
	// max_tokens beyond intake's bound is refused, never wrapped.
	if code, _ := post(t, srv.URL+"/openai/v1/chat/completions", `{"model":"gpt-4o","max_tokens":9223372036854775807}`); code != http.StatusBadRequest {
		t.Fatalf("huge max_tokens: %d", code)
	}
	// A trailing slash is metered too.
	n := len(sk.wait(t, 1))
	post(t, srv.URL+"/openai/v1/chat/completions/", `{"model":"gpt-4o","messages":[]}`)
	if len(sk.wait(t, n+1)) != n+1 {
		t.Fatal("a call with a trailing slash was not recorded")
	}
	// The Responses API's usage from response.incomplete.
	post(t, srv.URL+"/openai/v1/responses", `{"model":"gpt-4o","input":"hi","stream":true}`)
	if r := sk.wait(t, n+2)[n+1]; r.PromptTokens != 11 || r.CompletionTokens != 16 {
		t.Fatalf("response.incomplete's usage: %+v", r)
	}
	// A last event without its blank line is read, and the usage chunk
	// the proxy asked for stays hidden.
	code, body := post(t, srv.URL+"/openai/v1/chat/completions", `{"model":"gpt-4o","stream":true,"messages":[]}`)
	if code != http.StatusOK || strings.Contains(body, "usage") {
		t.Fatalf("stream: %d %q", code, body)
	}
	mu.Lock()
	if !strings.Contains(lastBody, `"include_usage":true`) {
		t.Fatalf("the proxy did not ask for usage: %s", lastBody)
	}
	mu.Unlock()
	if r := sk.wait(t, n+3)[n+2]; r.PromptTokens != 3 || r.CompletionTokens != 4 {
		t.Fatalf("the unterminated last event's usage: %+v", r)
	}
}

// TestSidecarKeyOnlyMetered: with the sidecar's own key, a call the proxy
// does not meter is refused rather than spent unrecorded; reads pass.
func TestSidecarKeyOnlyMetered(t *testing.T) {
	var auth []string
	var mu sync.Mutex
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auth = append(auth, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization"))
		mu.Unlock()
		_, _ = io.WriteString(w, `{"data":[]}`)
	}))
	t.Cleanup(up.Close)
	l, _ := limiter.New(nil, limiter.Options{})
	u, _ := url.Parse(up.URL)
	p, err := New(Options{Collector: collector.New(collector.Options{Limiter: l}),
		Upstreams: []Upstream{{Name: "openai", URL: u, Kind: OpenAI, Provider: "openai", Key: "sk-sidecar"}},
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	for _, r := range p.Routes() {
		mux.Handle(r.Pattern, r.Handler)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	if code, body := post(t, srv.URL+"/openai/v1/images/generations", `{"prompt":"x"}`); code != http.StatusForbidden || !strings.Contains(body, "not metered") {
		t.Fatalf("an unmetered POST with the sidecar's key: %d %s", code, body)
	}
	resp, err := http.Get(srv.URL + "/openai/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(auth) != 1 || auth[0] != "GET /v1/models Bearer sk-sidecar" {
		t.Fatalf("upstream saw %v, want only the model list, with the sidecar's key", auth)
	}
}

func TestPromptEstimate(t *testing.T) {
	f := func(body string, want int64) {
		t.Helper()
		if got := promptEstimate([]byte(body)); got != want {
			t.Fatalf("promptEstimate(%.60q) = %d, want %d", body, got, want)
		}
	}
	f(`{"model":"m"}`, 4)
	f(``, 0)
	image := `{"url":"data:image/png;base64,` + strings.Repeat("A", 4_000_000) + `"}`
	f(image, int64(len(`{"url":"data:image/png;base64,"}`)+3)/4+1000)
	f(image+","+image, int64(2*len(`{"url":"data:image/png;base64,"}`)+1+3)/4+2000)
}

// TestTeam: a call's team is the X-LLMUsage-Team header, else the body's
// metadata.team_id; the header is not forwarded, and an invalid team is
// refused before the upstream is called.
func TestTeam(t *testing.T) {
	var upstreamHeaders []http.Header
	var mu sync.Mutex
	srv, sk := newTestProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		upstreamHeaders = append(upstreamHeaders, r.Header.Clone())
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"model":"gpt-4o","usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}`)
	}))
	send := func(team, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/openai/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("X-LLMUsage-User", "u")
		if team != "" {
			req.Header.Set("X-LLMUsage-Team", team)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, c := range []struct{ header, body string }{
		{"red", `{"model":"gpt-4o","messages":[],"metadata":{"team_id":"blue"}}`},
		{"", `{"model":"gpt-4o","messages":[],"metadata":{"team_id":"blue"}}`},
		{"", `{"model":"gpt-4o","messages":[]}`},
	} {
		if code, body := send(c.header, c.body); code != http.StatusOK {
			t.Fatalf("%q %s: %d %s", c.header, c.body, code, body)
		}
	}
	recs := sk.wait(t, 3)
	if len(recs) != 3 || recs[0].TeamID != "red" || recs[1].TeamID != "blue" || recs[2].TeamID != "" {
		t.Fatalf("records %+v, want teams red, blue and none", recs)
	}
	for _, h := range upstreamHeaders {
		if h.Get("X-LLMUsage-Team") != "" {
			t.Fatalf("the team header was forwarded: %v", h)
		}
	}
	if code, body := send(strings.Repeat("x", 300), `{"model":"gpt-4o","messages":[]}`); code != http.StatusBadRequest || !strings.Contains(body, "team_id") {
		t.Fatalf("a team too long: %d %s", code, body)
	}
	if code, body := send("", `{"model":"gpt-4o","messages":[],"metadata":{"team_id":"bad\u0001team"}}`); code != http.StatusBadRequest || !strings.Contains(body, "team_id") {
		t.Fatalf("a team with a control character: %d %s", code, body)
	}
	if len(upstreamHeaders) != 3 {
		t.Fatalf("the upstream saw %d calls, want 3", len(upstreamHeaders))
	}
}
