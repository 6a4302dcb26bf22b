package collector

import (
	"bytes"
	"encoding/json"
	"fmt"
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

// TestRequestIDs checks the generated request IDs: UUIDs of version 7
// whose text order is their time order, distinct within a millisecond.
func TestRequestIDs(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 16, 0, 0, 0, time.UTC)
	f := func(a, b time.Time) {
		t.Helper()
		x, y := newRequestID(a), newRequestID(b)
		for _, id := range []string{x, y} {
			if len(id) != 36 || id[14] != '7' || !bytes.ContainsAny([]byte{id[19]}, "89ab") || id[8] != '-' || id[13] != '-' || id[18] != '-' || id[23] != '-' {
				t.Fatalf("%s is not a UUID version 7", id)
			}
		}
		if x == y {
			t.Fatalf("two IDs at %s and %s are both %s", a, b, x)
		}
		if b.Sub(a) >= time.Millisecond && x >= y {
			t.Fatalf("the ID at %s (%s) does not sort before the one at %s (%s)", a, x, b, y)
		}
		if ms := t0.UnixMilli(); a.Equal(t0) && x[:8]+x[9:13] != fmt.Sprintf("%012x", ms) {
			t.Fatalf("%s does not start with the time in milliseconds, %012x", x, ms)
		}
	}
	f(t0, t0)
	f(t0, t0.Add(time.Millisecond))
	f(t0, t0.Add(time.Hour))
	f(t0.Add(999*time.Millisecond), t0.Add(time.Second))
	f(time.Unix(0, 0), t0)
}
