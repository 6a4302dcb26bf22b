package collector

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/llmusage/llmusage/record"
)

// The rules of a record, one function each. The JSON parser (parseRecord)
// and Submit, for records decoded from other formats (OTLP), both apply
// them, so that a record means the same and is refused for the same
// reasons whatever way it came in.

// textProblem tells why s, a decoded string field, cannot be stored or
// used: invalid UTF-8 (a Go string decoded from protobuf may be), a NUL
// (which Postgres' text refuses), blank where required, too long, or for
// an identifier control characters; "" when it is fine. An empty s that
// is not required is fine.
func textProblem(s string, required, ident bool, maxLen int) string {
	switch {
	case !utf8.ValidString(s):
		return "must be valid UTF-8"
	case strings.IndexByte(s, 0) >= 0:
		return `must not contain \u0000 (NUL)`
	case required && strings.TrimSpace(s) == "":
		return "must not be empty"
	}
	return lengthOrControl(s, maxLen, ident)
}

// countProblem tells why n is not a token count of one call, "" when it is.
func countProblem(n int64) string {
	if n < 0 || n > MaxTokens {
		return fmt.Sprintf("must be between 0 and %d, got %d", int64(MaxTokens), n)
	}
	return ""
}

// cacheProblem tells why the cache reads and writes do not fit in the
// input tokens, which include them; "" when they do.
func cacheProblem(cached, cacheWrite, prompt int64) string {
	if cached+cacheWrite > prompt {
		return fmt.Sprintf("cached_tokens + cache_write_tokens (%d) must be at most prompt_tokens (%d), which include them", cached+cacheWrite, prompt)
	}
	return ""
}

// totalProblem tells why total is not a call's total of prompt +
// completion tokens, "" when it is.
func totalProblem(total, sum int64) string {
	if total < sum {
		return fmt.Sprintf("must be at least prompt_tokens + completion_tokens (%d), got %d", sum, total)
	}
	return ""
}

// latencyProblem tells why ms milliseconds is not a call's latency.
func latencyProblem(ms float64) string {
	if ms < 0 || ms > float64(MaxLatency/time.Millisecond) {
		return fmt.Sprintf("must be between 0 and %d milliseconds, got %g", MaxLatency/time.Millisecond, ms)
	}
	return ""
}

// timestampProblem tells why t (written text) is not a time a record may
// carry at now: clock skew allows a little future, the store's retention
// not much past.
func timestampProblem(t, now time.Time, text string) string {
	switch {
	case t.After(now.Add(MaxFutureSkew)):
		return fmt.Sprintf("must not be more than %s in the future, got %s", MaxFutureSkew, text)
	case t.Before(now.Add(-MaxAge)):
		return fmt.Sprintf("must not be more than %s in the past, got %s", MaxAge, text)
	}
	return ""
}

// statusProblem tells why s is not a record's status.
func statusProblem(s string) string {
	if s != record.StatusSuccess && s != record.StatusError {
		return fmt.Sprintf("must be %q or %q, got %q", record.StatusSuccess, record.StatusError, s)
	}
	return ""
}

// checkRecord applies the rules of a record to one made in code, as
// Submit receives it: every field decoded already, Provider normalised,
// Timestamp and Status set. index is the record's position, for the
// Details. Metadata must be storable JSON already (the caller made it).
func checkRecord(r *record.Record, index int, now time.Time) []Detail {
	var ds []Detail
	fail := func(field, problem string) {
		if problem != "" {
			ds = append(ds, Detail{Index: index, Field: field, Message: problem})
		}
	}
	required := func(field, s string, maxLen int) {
		if s == "" {
			fail(field, "is required")
			return
		}
		fail(field, textProblem(s, true, true, maxLen))
	}
	required("user_id", r.UserID, MaxIDLength)
	fail("team_id", textProblem(r.TeamID, false, true, MaxIDLength))
	required("model", r.Model, MaxIDLength)
	fail("provider", textProblem(r.Provider, false, true, MaxProviderLength))
	fail("request_id", textProblem(r.RequestID, false, true, MaxRequestIDLength))
	fail("error_type", textProblem(r.ErrorType, false, false, MaxErrorTypeLength))
	for _, c := range []struct {
		field string
		n     int64
	}{
		{"prompt_tokens", r.PromptTokens}, {"completion_tokens", r.CompletionTokens}, {"cached_tokens", r.CachedTokens},
		{"reasoning_tokens", r.ReasoningTokens}, {"cache_write_tokens", r.CacheWriteTokens},
	} {
		fail(c.field, countProblem(c.n))
	}
	if len(ds) == 0 { // sums of counts out of range would mean nothing
		fail("cache_write_tokens", cacheProblem(r.CachedTokens, r.CacheWriteTokens, r.PromptTokens))
		if problem := countProblem(r.TotalTokens); problem != "" {
			fail("tokens_used", problem)
		} else {
			fail("tokens_used", totalProblem(r.TotalTokens, r.PromptTokens+r.CompletionTokens))
		}
	}
	if r.HasLatency {
		fail("latency_ms", latencyProblem(float64(r.Latency)/float64(time.Millisecond)))
	}
	fail("status", statusProblem(r.Status))
	fail("timestamp", timestampProblem(r.Timestamp, now, r.Timestamp.Format(time.RFC3339Nano)))
	return ds
}
