package collector

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/rules"
)

// failingSink refuses every record while full, as a full spool does.
type failingSink struct {
	recs []record.Record
	full bool
}

func (s *failingSink) Enqueue(recs []record.Record) error {
	if s.full {
		return errors.New("cannot queue: the spool is full")
	}
	s.recs = append(s.recs, recs...)
	return nil
}

// TestSubmit: records made in code meet the rules of a posted record,
// one by one; the valid ones are taken whatever the others.
func TestSubmit(t *testing.T) {
	set := rules.Merge(nil, nil)
	clk := clock.NewManual(testNow)
	l, err := limiter.New(nil, limiter.Options{Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	obs := &recordingObserver{}
	sink := &failingSink{}
	c := New(Options{Limiter: l, Sink: sink, Observer: obs, Rules: func() *rules.Set { return set }, Clock: clk})
	ok := func() record.Record {
		return record.Record{UserID: "alice", Model: "gpt-4o", Provider: "Azure", PromptTokens: 100, CompletionTokens: 10,
			CachedTokens: 20, Timestamp: testNow.Add(-time.Minute), Latency: time.Second, HasLatency: true}
	}
	f := func(edit func(*record.Record), want string) {
		t.Helper()
		r := ok()
		edit(&r)
		before := len(sink.recs)
		n, details, err := c.Submit([]record.Record{ok(), r})
		if err != nil || n != 1+boolInt(want == "") || len(sink.recs) != before+n {
			t.Fatalf("n %d, err %v, details %v", n, err, details)
		}
		var got []string
		for _, d := range details {
			if d.Index != 1 {
				t.Fatalf("detail of the valid record: %v", d)
			}
			got = append(got, d.Field+": "+d.Message)
		}
		if g := strings.Join(got, "; "); (want == "") != (g == "") || !strings.Contains(g, want) {
			t.Fatalf("details %q, want %q", g, want)
		}
	}
	f(func(r *record.Record) {}, "")
	f(func(r *record.Record) { r.UserID = "" }, "user_id: is required")
	f(func(r *record.Record) { r.UserID = "   " }, "user_id: must not be empty")
	f(func(r *record.Record) { r.UserID = "a\x00b" }, `user_id: must not contain \u0000 (NUL)`)
	f(func(r *record.Record) { r.UserID = "a\x01b" }, "user_id: must not contain control characters")
	f(func(r *record.Record) { r.UserID = "a\xffb" }, "user_id: must be valid UTF-8")
	f(func(r *record.Record) { r.Model = strings.Repeat("m", 257) }, "model: must be at most 256 bytes, got 257")
	f(func(r *record.Record) { r.Provider = strings.Repeat("p", 65) }, "provider: must be at most 64 bytes, got 65")
	f(func(r *record.Record) { r.RequestID = strings.Repeat("r", 129) }, "request_id: must be at most 128 bytes, got 129")
	f(func(r *record.Record) { r.ErrorType = "tab\tis fine" }, "")
	f(func(r *record.Record) { r.ErrorType = strings.Repeat("e", 257) }, "error_type: must be at most 256 bytes")
	f(func(r *record.Record) { r.PromptTokens = MaxTokens + 1 }, "prompt_tokens: must be between 0 and 1000000000000, got 1000000000001")
	f(func(r *record.Record) { r.CompletionTokens = -1 }, "completion_tokens: must be between 0 and 1000000000000, got -1")
	f(func(r *record.Record) { r.ReasoningTokens = 1 << 62 }, "reasoning_tokens: must be between")
	f(func(r *record.Record) { r.CacheWriteTokens = 81 }, "cache_write_tokens: cached_tokens + cache_write_tokens (101) must be at most prompt_tokens (100)")
	f(func(r *record.Record) { r.TotalTokens = 50 }, "tokens_used: must be at least prompt_tokens + completion_tokens (110), got 50")
	f(func(r *record.Record) { r.TotalTokens = MaxTokens + 1 }, "tokens_used: must be between")
	f(func(r *record.Record) { r.Latency = -time.Second }, "latency_ms: must be between 0 and 86400000 milliseconds, got -1000")
	f(func(r *record.Record) { r.Latency = 25 * time.Hour }, "latency_ms: must be between")
	f(func(r *record.Record) { r.Latency, r.HasLatency = -time.Second, false }, "")
	f(func(r *record.Record) { r.Status = "maybe" }, `status: must be "success" or "error", got "maybe"`)
	f(func(r *record.Record) { r.Timestamp = testNow.Add(time.Hour) }, "timestamp: must not be more than 5m0s in the future")
	f(func(r *record.Record) { r.Timestamp = testNow.Add(-32 * 24 * time.Hour) }, "timestamp: must not be more than 744h0m0s in the past")
	f(func(r *record.Record) { r.RequestID = "dup" }, "")

	// Normalised, priced, counted.
	last := sink.recs[len(sink.recs)-1]
	if last.Provider != "azure.ai.openai" || last.TotalTokens != 110 || last.RequestID == "" || last.Status != record.StatusSuccess {
		t.Fatalf("record %+v", last)
	}
	if obs.rejected == 0 {
		t.Fatal("the refused records were not counted")
	}

	// A request_id twice in one call: the second is refused.
	a, b := ok(), ok()
	a.RequestID, b.RequestID = "same", "same"
	if n, details, _ := c.Submit([]record.Record{a, b}); n != 1 || len(details) != 1 || details[0].Index != 1 || details[0].Field != "request_id" {
		t.Fatalf("n %d, details %v", n, details)
	}

	// A full sink takes nothing, and says so as a 503.
	sink.full = true
	n, _, err := c.Submit([]record.Record{ok()})
	var ce *Error
	if n != 0 || !errors.As(err, &ce) || ce.Status != 503 {
		t.Fatalf("a full sink: n %d, err %v", n, err)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
