package collector

import (
	"fmt"
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
