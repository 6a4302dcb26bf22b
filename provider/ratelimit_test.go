package provider

import (
	"net/http"
	"testing"
	"time"
)

func TestParseReset(t *testing.T) {
	now := time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		in   string
		want time.Duration // from now; -1 for unreadable
	}{
		{"1m30s", 90 * time.Second},
		{"6ms", 6 * time.Millisecond},
		{"2.5", 2500 * time.Millisecond},
		{"29", 29 * time.Second},
		// Days, which time.ParseDuration does not know.
		{"1d2h3m4s", 24*time.Hour + 2*time.Hour + 3*time.Minute + 4*time.Second},
		{"2d", 48 * time.Hour},
		{"1.5d", 36 * time.Hour},
		{"0d59m", 59 * time.Minute},
		{"1d0.5s", 24*time.Hour + 500*time.Millisecond},
		{"1d.5s", 24*time.Hour + 500*time.Millisecond},
		{" 3d ", 72 * time.Hour},
		{"d", -1},
		{"1dd", -1},
		{"-1d", -1},
		{"1d-2h", -1},
		{"+1d", -1},
		{"1d2", -1},
		{"2h1d", -1},
		{"1e3d", -1},
		{"99999999d", -1},
		{"-1s", -1},
		{"soon", -1},
		{"Wed, 21 Oct 2026 07:28:00 GMT", -1},
		{"", -1},
	}
	for _, tc := range cases {
		got := ParseReset(tc.in, now)
		d := time.Duration(-1)
		if !got.IsZero() {
			d = got.Sub(now)
		}
		if d != tc.want {
			t.Errorf("ParseReset(%q) = %v from now, want %v", tc.in, d, tc.want)
		}
	}
	if got := ParseReset("2026-12-08T00:00:30.5Z", now); got.Sub(now) != 30500*time.Millisecond {
		t.Errorf("RFC 3339 reset: %v", got)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC)
	h := func(kv ...string) http.Header {
		out := http.Header{}
		for i := 0; i+1 < len(kv); i += 2 {
			out.Set(kv[i], kv[i+1])
		}
		return out
	}
	cases := []struct {
		name string
		h    http.Header
		want time.Duration // -1 for none
	}{
		{"seconds", h("Retry-After", "3"), 3 * time.Second},
		{"milliseconds win", h("retry-after-ms", "1500", "retry-after", "2"), 1500 * time.Millisecond},
		{"unreadable milliseconds give way", h("retry-after-ms", "soon", "retry-after", "2"), 2 * time.Second},
		{"an HTTP date", h("Retry-After", "Tue, 08 Dec 2026 00:01:00 GMT"), time.Minute},
		{"negative", h("Retry-After", "-5"), -1},
		{"garbage", h("Retry-After", "later"), -1},
		{"none", h(), -1},
	}
	for _, tc := range cases {
		got := ParseRetryAfter(tc.h, now)
		d := time.Duration(-1)
		if !got.IsZero() {
			d = got.Sub(now)
		}
		if d != tc.want {
			t.Errorf("%s: %v from now, want %v", tc.name, d, tc.want)
		}
	}
}

func TestParseRateLimitsDialects(t *testing.T) {
	now := time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC)
	h := http.Header{}
	h.Set("x-ratelimit-limit-requests", "14400")
	h.Set("x-ratelimit-reset-requests", "1d2h")
	h.Set("anthropic-ratelimit-tokens-limit", "100000")
	got := ParseRateLimits(DialectOf("groq"), h, now)
	if len(got) != 1 || got[0].Resource != "requests" || got[0].Limit != 14400 || got[0].Reset.Sub(now) != 26*time.Hour {
		t.Fatalf("groq: %+v", got)
	}
	got = ParseRateLimits(DialectOf("anthropic"), h, now)
	if len(got) != 1 || got[0].Resource != "tokens" || got[0].Limit != 100000 {
		t.Fatalf("anthropic: %+v", got)
	}
}

func TestKeyFingerprint(t *testing.T) {
	// The runbook's shell command gives the same:
	// printf 'llmusage provider key fingerprint v1\0%s' sk-proj-abc123 | sha256sum | cut -c1-8
	if fp := KeyFingerprint(" sk-proj-abc123 "); fp != "4ecf4d81" {
		t.Fatalf("fingerprint %q, want 4ecf4d81", fp)
	}
	if !IsKeyFingerprint(KeyFingerprint("sk-proj-abc123")) || KeyFingerprint("") != "" {
		t.Fatal("fingerprint form")
	}
	for _, s := range []string{"", "4ecf4d8", "4ECF4D81", "4ecf4d81a", "4ecf4d8g", "sk-proj-"} {
		if IsKeyFingerprint(s) {
			t.Errorf("IsKeyFingerprint(%q)", s)
		}
	}
}
