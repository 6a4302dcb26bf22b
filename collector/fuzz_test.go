package collector

import (
	"bytes"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/llmusage/llmusage/exporter"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/record"
)

// FuzzIngest feeds arbitrary bodies through decoding, validation, the
// limiter and the exporter. Nothing may panic, every accepted record must
// satisfy the documented bounds, and the exposition must stay valid.
// Seeds: testdata/fuzz/FuzzIngest, plus the cases below.
func FuzzIngest(f *testing.F) {
	f.Add([]byte(`{"user_id":"u","model":"gpt-4","prompt_tokens":10,"completion_tokens":5}`), false)
	f.Add([]byte(`[{"user_id":"u","model":"claude-3-opus","metadata":{"provider":"anthropic"}},{"user_id":"v","model":"m"}]`), false)
	f.Add([]byte("{\"user_id\":\"u\",\"model\":\"m\"}\n{\"user_id\":\"w\",\"model\":\"o3\",\"reasoning_tokens\":3}\n"), true)
	f.Add([]byte(`{"user_id":"a\"b\\c","model":"m{x=\"y\"}","provider":"p\"q","latency_ms":1e400}`), false)
	f.Add([]byte(`{"user_id":"u","model":"gpt-4o","provider_ratelimit":{"key":"4ecf4d81","requests":{"limit":30,"remaining":29,"reset_seconds":2.5},"retry_after_seconds":3}}`), false)
	f.Add([]byte(`{"user_id":"u","model":"claude-3","provider_ratelimit":{"headers":{"anthropic-ratelimit-tokens-reset":"2026-12-08T00:00:01Z","retry-after":"1d2h"}}}`), false)
	l, err := limiter.New([]limiter.Rule{{Window: limiter.Minute, Unit: limiter.Requests, Limit: 5}, {Window: limiter.Day, Unit: limiter.Tokens, Limit: 1000}}, limiter.Options{})
	if err != nil {
		f.Fatal(err)
	}
	exp := exporter.New(exporter.Options{Limiter: l, MaxUsers: 50})
	obs := &recordingObserver{}
	c := New(Options{Limiter: l, Observer: multiObserver{obs, exp}})
	f.Fuzz(func(t *testing.T, body []byte, ndjson bool) {
		format := formatJSON
		if ndjson {
			format = formatNDJSON
		}
		before := len(obs.records)
		n, err := c.ingest(body, format)
		if err != nil {
			if e, ok := err.(*Error); !ok || e.Status < 400 || e.Status > 499 {
				t.Fatalf("error %v is not a 4xx *Error", err)
			}
			if len(obs.records) != before {
				t.Fatal("a refused body applied records")
			}
			return
		}
		for _, r := range obs.records[before : before+n] {
			switch {
			case r.UserID == "" || r.Model == "" || r.Provider == "" || r.RequestID == "":
				t.Fatalf("accepted a record without an identifier: %+v", r)
			case len(r.UserID) > MaxIDLength || len(r.Model) > MaxIDLength || len(r.Provider) > MaxProviderLength:
				t.Fatalf("accepted an identifier over its bound: %+v", r)
			case !utf8.ValidString(r.UserID) || !utf8.ValidString(r.Model) || !utf8.ValidString(r.Provider):
				t.Fatalf("accepted invalid UTF-8: %+v", r)
			case r.PromptTokens < 0 || r.CompletionTokens < 0 || r.CachedTokens < 0 || r.ReasoningTokens < 0 || r.Latency < 0:
				t.Fatalf("accepted a negative count: %+v", r)
			case r.TotalTokens < r.PromptTokens+r.CompletionTokens:
				t.Fatalf("accepted a total below its parts: %+v", r)
			case r.Status != "success" && r.Status != "error":
				t.Fatalf("accepted status %q", r.Status)
			}
		}
		var buf bytes.Buffer
		exp.WriteText(&buf)
		p := expfmt.NewTextParser(model.UTF8Validation)
		if _, err := p.TextToMetricFamilies(bytes.NewReader(buf.Bytes())); err != nil {
			t.Fatalf("/metrics no longer parses after %q: %s", body, err)
		}
		if problems, err := testutil.GatherAndLint(exp.Registry()); err != nil || len(problems) > 0 {
			t.Fatalf("lint after %q: %v %v", body, problems, err)
		}
	})
}

// multiObserver tells several observers.
type multiObserver []Observer

func (m multiObserver) ObserveRecords(recs []record.Record) {
	for _, o := range m {
		o.ObserveRecords(recs)
	}
}

func (m multiObserver) ObserveRejected(n int) {
	for _, o := range m {
		o.ObserveRejected(n)
	}
}

func (m multiObserver) ObserveCheck(user string, allowed bool) {
	for _, o := range m {
		o.ObserveCheck(user, allowed)
	}
}

// The provider quota figures of records go to the members that take them
// (the exporter), so that the fuzzer reaches their gauges too.
func (m multiObserver) ObserveProviderRateLimit(provider, model, key, resource string, limit, remaining float64, reset time.Time) {
	for _, o := range m {
		if p, ok := o.(ProviderRateLimitObserver); ok {
			p.ObserveProviderRateLimit(provider, model, key, resource, limit, remaining, reset)
		}
	}
}

func (m multiObserver) ObserveProviderRetryAfter(provider, model, key string, at time.Time) {
	for _, o := range m {
		if p, ok := o.(ProviderRateLimitObserver); ok {
			p.ObserveProviderRetryAfter(provider, model, key, at)
		}
	}
}
