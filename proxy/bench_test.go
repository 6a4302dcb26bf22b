package proxy

import (
	"bufio"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llmusage/llmusage/collector"
	"github.com/llmusage/llmusage/internal/upstreamtest"
	"github.com/llmusage/llmusage/limiter"
)

// BenchmarkProxy compares a chat completion sent to the fake upstream
// directly and through the proxy (check, forward, usage, record into an
// in-process collector without a sink), JSON and streamed; ttfb-us is the
// time to the first event of a stream.
func BenchmarkProxy(b *testing.B) {
	up := upstreamtest.Start(b)
	l, err := limiter.New([]limiter.Rule{{Window: limiter.Minute, Unit: limiter.Requests, Limit: 1 << 40}}, limiter.Options{})
	if err != nil {
		b.Fatal(err)
	}
	u, _ := url.Parse(up.URL)
	p, err := New(Options{Collector: collector.New(collector.Options{Limiter: l}),
		Upstreams: []Upstream{{Name: "openai", URL: u, Kind: OpenAI, Provider: "openai"}},
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	mux := http.NewServeMux()
	for _, r := range p.Routes() {
		mux.Handle(r.Pattern, r.Handler)
	}
	srv := httptest.NewServer(mux)
	b.Cleanup(srv.Close)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	for _, c := range []struct{ name, url, body string }{
		{"json/direct", up.URL + "/v1/chat/completions", `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`},
		{"json/proxy", srv.URL + "/openai/v1/chat/completions", `{"model":"gpt-4o","user":"u","messages":[{"role":"user","content":"hi"}]}`},
		{"stream/direct", up.URL + "/v1/chat/completions", `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}`},
		{"stream/proxy", srv.URL + "/openai/v1/chat/completions", `{"model":"gpt-4o","user":"u","stream":true,"messages":[{"role":"user","content":"hi"}]}`},
	} {
		b.Run(c.name, func(b *testing.B) {
			var first time.Duration
			var lat []time.Duration
			cpu0 := cpuTime()
			for b.Loop() {
				start := time.Now()
				resp, err := client.Post(c.url, "application/json", strings.NewReader(c.body))
				if err != nil {
					b.Fatal(err)
				}
				r := bufio.NewReader(resp.Body)
				if _, err := r.ReadString('\n'); err != nil && err != io.EOF {
					b.Fatal(err)
				}
				first += time.Since(start)
				_, _ = io.Copy(io.Discard, r)
				resp.Body.Close()
				lat = append(lat, time.Since(start))
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
			b.ReportMetric(float64(first.Microseconds())/float64(b.N), "ttfb-us")
			// CPU of the whole process (client, proxy and upstream): the
			// proxy's is the difference from the direct case.
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
		})
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
