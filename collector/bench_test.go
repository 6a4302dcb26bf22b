package collector

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/llmusage/llmusage/limiter"
)

const benchRecord = `{"user_id":"user-%d","model":"gpt-4o","prompt_tokens":1200,"completion_tokens":350,"cached_tokens":1024,"latency_ms":812.5,"request_id":"req-%d","metadata":{"provider":"openai","route":"/chat"}}`

func benchCollector(b *testing.B) *Collector {
	l, err := limiter.New([]limiter.Rule{
		{Window: limiter.Minute, Unit: limiter.Requests, Limit: 30},
		{Window: limiter.Day, Unit: limiter.Requests, Limit: 14400},
	}, limiter.Options{})
	if err != nil {
		b.Fatal(err)
	}
	return New(Options{Limiter: l})
}

// BenchmarkIngestSingle decodes, validates and applies one record per request.
func BenchmarkIngestSingle(b *testing.B) {
	c := benchCollector(b)
	body := []byte(fmt.Sprintf(benchRecord, 1, 1))
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.ingest(body, formatJSON); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIngestBatch decodes a JSON array and an NDJSON body of 100
// records; ns/op is per request, so divide by 100 for a record.
func BenchmarkIngestBatch(b *testing.B) {
	recs := make([]string, 100)
	for i := range recs {
		recs[i] = fmt.Sprintf(benchRecord, i, i)
	}
	for _, tc := range []struct {
		name   string
		body   string
		format bodyFormat
	}{
		{"json-array-100", "[" + strings.Join(recs, ",") + "]", formatJSON},
		{"ndjson-100", strings.Join(recs, "\n"), formatNDJSON},
	} {
		b.Run(tc.name, func(b *testing.B) {
			c := benchCollector(b)
			body := []byte(tc.body)
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if n, err := c.ingest(body, tc.format); err != nil || n != 100 {
					b.Fatal(n, err)
				}
			}
		})
	}
}

// BenchmarkCheckHandler is POST /v1/check through the handler, without
// the network: decoding, the limiter, the JSON answer.
func BenchmarkCheckHandler(b *testing.B) {
	c := benchCollector(b)
	var h http.Handler
	for _, r := range c.Routes() {
		if r.Pattern == "/v1/check" {
			h = r.Handler
		}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		body := fmt.Sprintf(`{"user_id":"user-%d","model":"gpt-4o","provider":"openai","tokens":500}`, i%100000)
		req := httptest.NewRequest(http.MethodPost, "/v1/check", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK && rec.Code != http.StatusTooManyRequests {
			b.Fatal(rec.Code, rec.Body.String())
		}
	}
}
