package exporter

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmusage/llmusage/collector"
	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/record"
)

// BenchmarkScrape serves /metrics with about 10k and 100k usage series
// (users x models x series kinds, plus their quota gauges); ns/op is one
// scrape.
func BenchmarkScrape(b *testing.B) {
	for _, tc := range []struct {
		name          string
		users, models int
	}{{"10k-series", 1000, 2}, {"100k-series", 10000, 2}} {
		b.Run(tc.name, func(b *testing.B) {
			l, err := limiter.New([]limiter.Rule{
				{Window: limiter.Minute, Unit: limiter.Requests, Limit: 30},
				{Window: limiter.Day, Unit: limiter.Requests, Limit: 14400},
			}, limiter.Options{})
			if err != nil {
				b.Fatal(err)
			}
			e := New(Options{Limiter: l, MaxUsers: tc.users})
			for u := 0; u < tc.users; u++ {
				user := fmt.Sprintf("user-%d", u)
				l.Record(limiter.Usage{UserID: user, Model: "m"})
				for m := 0; m < tc.models; m++ {
					r := record.Record{UserID: user, Provider: "openai", Model: fmt.Sprintf("model-%d", m), PromptTokens: 10,
						CompletionTokens: 5, TotalTokens: 15, CachedTokens: 1, ReasoningTokens: 1, Status: record.StatusSuccess}
					e.ObserveRecords([]record.Record{r})
				}
				e.ObserveCheck(user, true)
			}
			series := countSeries(b, e)
			h := e.Handler()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
				if rec.Code != 200 {
					b.Fatal(rec.Code)
				}
				_, _ = io.Copy(io.Discard, rec.Body)
			}
			b.ReportMetric(float64(series), "series")
		})
	}
}

func countSeries(b *testing.B, e *Exporter) int {
	mfs, err := e.Registry().Gather()
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if h := m.GetHistogram(); h != nil {
				n += len(h.GetBucket()) + 2
				continue
			}
			n++
		}
	}
	return n
}

// BenchmarkObserveRecords counts batches of 100 records over 1,000 users
// and five models, as a busy sidecar sees them; ns/op is one batch.
func BenchmarkObserveRecords(b *testing.B) {
	e := New(Options{MaxUsers: 10_000})
	batch := make([]record.Record, 100)
	for i := range batch {
		batch[i] = record.Record{UserID: fmt.Sprintf("user-%d", (i*7919)%1000), Provider: "openai", Model: fmt.Sprintf("model-%d", i%5),
			PromptTokens: 1200, CompletionTokens: 350, TotalTokens: 1550, CachedTokens: 100, Latency: 800_000_000, HasLatency: true,
			Status: record.StatusSuccess}
	}
	b.ReportAllocs()
	for b.Loop() {
		e.ObserveRecords(batch)
	}
}

// BenchmarkSweep expires 5,000 of 10,000 users at once, as an hour after
// a burst of new users; ns/op is one sweep.
func BenchmarkSweep(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		clk := clock.NewManual(testNow)
		e := New(Options{Clock: clk, MaxUsers: 10_000, UserTTL: time.Hour})
		for u := 0; u < 10_000; u++ {
			if u == 5_000 {
				clk.Advance(time.Hour)
			}
			user := fmt.Sprintf("user-%d", u)
			for m := 0; m < 2; m++ {
				e.ObserveRecords([]record.Record{{UserID: user, Provider: "openai", Model: fmt.Sprintf("model-%d", m), PromptTokens: 10,
					CompletionTokens: 5, TotalTokens: 15, Status: record.StatusSuccess}})
			}
			e.ObserveCheck(user, true)
		}
		clk.Advance(time.Minute)
		b.StartTimer()
		if n := e.Sweep(); n != 5_000 {
			b.Fatalf("swept %d users, want 5000", n)
		}
	}
}

// BenchmarkSweepModels expires 998 junk model names (a client that put a
// timestamp in them) at once while 10,000 users keep two real models;
// ns/op is one sweep, which walks the series cache once for all of them.
func BenchmarkSweepModels(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		clk := clock.NewManual(testNow)
		e := New(Options{Clock: clk, MaxUsers: 10_000, MaxModels: 1_000, UserTTL: time.Hour})
		for j := 0; j < 998; j++ {
			e.ObserveRecords([]record.Record{{UserID: fmt.Sprintf("user-%d", j), Provider: "openai", Model: fmt.Sprintf("gpt-4o-%d", j),
				PromptTokens: 10, CompletionTokens: 5, TotalTokens: 15, Status: record.StatusSuccess}})
		}
		clk.Advance(time.Hour)
		for u := 0; u < 10_000; u++ {
			for m := 0; m < 2; m++ {
				e.ObserveRecords([]record.Record{{UserID: fmt.Sprintf("user-%d", u), Provider: "openai", Model: fmt.Sprintf("model-%d", m),
					PromptTokens: 10, CompletionTokens: 5, TotalTokens: 15, Status: record.StatusSuccess}})
			}
		}
		clk.Advance(time.Minute)
		b.StartTimer()
		if n := e.Sweep(); n != 0 {
			b.Fatalf("swept %d users, want 0", n)
		}
		if got := testutil.ToFloat64(e.models.overflow); got != 0 {
			b.Fatalf("%v records overflowed, want 0", got)
		}
		if n := len(e.models.lastSeen); n != 2 {
			b.Fatalf("%d pairs left, want 2", n)
		}
	}
}

// BenchmarkCheckRoute is POST /v1/check as the sidecar serves it, without
// the network: the collector's handler (decoding, the limiter, the
// exporter's counters, the JSON answer) inside InstrumentRoute (the
// route's duration, and the added latency). 1,000 users: their series
// exist after the first thousand checks, as on a sidecar in service.
func BenchmarkCheckRoute(b *testing.B) {
	l, err := limiter.New([]limiter.Rule{
		{Window: limiter.Minute, Unit: limiter.Requests, Limit: 30},
		{Window: limiter.Day, Unit: limiter.Requests, Limit: 14400},
	}, limiter.Options{})
	if err != nil {
		b.Fatal(err)
	}
	e := New(Options{})
	c := collector.New(collector.Options{Limiter: l, Observer: e})
	var h http.Handler
	for _, r := range c.Routes() {
		if r.Pattern == "/v1/check" {
			h = e.InstrumentRoute(r.Name, r.Handler)
		}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		body := fmt.Sprintf(`{"user_id":"user-%d","model":"gpt-4o","provider":"openai","tokens":500}`, i%1000)
		req := httptest.NewRequest(http.MethodPost, "/v1/check", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK && rec.Code != http.StatusTooManyRequests {
			b.Fatal(rec.Code, rec.Body.String())
		}
	}
}

// BenchmarkInstrumentRoute is InstrumentRoute around a handler that does
// nothing: "check" observes the route's duration and the added latency,
// "limits" the route's duration only; the difference is what the added
// latency costs a check.
func BenchmarkInstrumentRoute(b *testing.B) {
	e := New(Options{})
	nop := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	req := httptest.NewRequest(http.MethodPost, "/", nil)
	for _, name := range []string{"check", "limits"} {
		b.Run(name, func(b *testing.B) {
			h := e.InstrumentRoute(name, nop)
			w := httptest.NewRecorder()
			b.ReportAllocs()
			for b.Loop() {
				h.ServeHTTP(w, req)
			}
		})
	}
}
