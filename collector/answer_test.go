package collector

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/llmusage/llmusage/limiter"
)

// TestAnswersMatchEncodingJSON holds the hand-written encoders to the
// bytes encoding/json writes for the same answers.
func TestAnswersMatchEncodingJSON(t *testing.T) {
	reset := time.Date(2026, 11, 27, 16, 0, 0, 250, time.FixedZone("CET", 3600))
	f := func(d limiter.Decision, requestID, provider string, retryAfter int64) {
		t.Helper()
		var want bytes.Buffer
		_ = json.NewEncoder(&want).Encode(struct {
			Allowed           bool        `json:"allowed"`
			RequestID         string      `json:"request_id"`
			Provider          string      `json:"provider"`
			RetryAfterSeconds int64       `json:"retry_after_seconds,omitempty"`
			Limits            []limitJSON `json:"limits"`
		}{d.Allowed, requestID, provider, retryAfter, limitsJSON(d.Limits)})
		if got := appendCheckAnswer([]byte("x"), d, requestID, provider, retryAfter); string(got[1:]) != want.String() {
			t.Fatalf("check answer\n got %s\nwant %s", got[1:], want.Bytes())
		}
	}
	minute := limiter.Status{Window: limiter.Minute, Unit: limiter.Requests, Limit: 30, Remaining: 29, ResetAt: reset}
	f(limiter.Decision{Allowed: true, Limits: []limiter.Status{minute}}, "req-1", "openai", 0)
	f(limiter.Decision{Allowed: true}, "", "", 0)
	f(limiter.Decision{Allowed: false, Limits: []limiter.Status{minute, {Window: limiter.Day, Unit: limiter.Tokens, Provider: "groq", Model: "llama-3.1-70b", Limit: 1 << 40, ResetAt: reset.Add(-250)}}}, "r", "groq", 3600)
	for _, s := range []string{`quote "`, `back\slash`, "<", ">", "&", "tab\t", "é", "\u2028", "\x7f", "\x00"} {
		f(limiter.Decision{Allowed: true}, s, "p", 0)
		f(limiter.Decision{Allowed: true}, "r", s, 0)
	}
	f(limiter.Decision{Allowed: true}, "bad utf-8 \xff\xfe", "\x00\x1f\x7f", 0)
	f(limiter.Decision{Allowed: false, Limits: []limiter.Status{{Window: limiter.Hour, Unit: limiter.Requests, Model: "m<>&", ResetAt: time.Unix(0, 0)}}}, "r", "p", 1)

	g := func(n int) {
		t.Helper()
		var want bytes.Buffer
		_ = json.NewEncoder(&want).Encode(map[string]int{"accepted": n})
		if got := appendAccepted(nil, n); string(got) != want.String() {
			t.Fatalf("accepted answer: got %s, want %s", got, want.Bytes())
		}
	}
	g(0)
	g(1)
	g(100_000)
}
