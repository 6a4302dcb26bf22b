package otlp

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"

	"github.com/llmusage/llmusage/collector"
	"github.com/llmusage/llmusage/record"
)

// The attributes read from a span, each list in order of preference: the
// current GenAI semantic conventions first, then the older names and
// those of OpenLLMetry and OpenLIT. docs/opentelemetry.md maps each one.
var (
	// providerAttrs name the provider (normalised as every provider is).
	providerAttrs = []string{"gen_ai.provider.name", "gen_ai.system"}
	// modelAttrs name the model: the one that answered, else the one asked.
	modelAttrs = []string{"gen_ai.response.model", "gen_ai.request.model"}
	// inputAttrs count input tokens, cache reads and writes included.
	inputAttrs = []string{"gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.usage.prompt_tokens"}
	// outputAttrs count output tokens, reasoning included.
	outputAttrs = []string{"gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.usage.completion_tokens"}
	// cacheReadAttrs count the input tokens read from a prompt cache.
	cacheReadAttrs = []string{"gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens", "llm.usage.cache_read_input_tokens"}
	// cacheWriteAttrs count the input tokens written to a prompt cache.
	cacheWriteAttrs = []string{"gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens", "llm.usage.cache_creation_input_tokens"}
	// reasoningAttrs count the output tokens spent on reasoning.
	reasoningAttrs = []string{"gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens", "llm.usage.reasoning_tokens"}
	// totalAttrs count all of a call's tokens (no current convention has one).
	totalAttrs = []string{"llm.usage.total_tokens", "gen_ai.usage.total_tokens"}
)

// DefaultUserAttributes are where a span's user is looked up when
// --otlp-user-attribute is not given: OTel's user.id, then the older
// enduser.id.
var DefaultUserAttributes = []string{"user.id", "enduser.id"}

// DefaultTeamAttribute is where a span's team is looked up when
// --otlp-team-attribute is not given.
const DefaultTeamAttribute = "llmusage.team_id"

// outcome is what became of one span.
type outcome int

const (
	// accepted: a call record, taken.
	accepted outcome = iota
	// invalid: GenAI usage that breaks a record's rules; refused.
	invalid
	// noUser: GenAI usage without a user, and no default user; skipped.
	noUser
	// ignored: not GenAI usage (no token counts).
	ignored
	// unavailable: a record the spool had no room for; the sender retries.
	unavailable
)

// outcomeNames label llmusage_otlp_spans_total.
var outcomeNames = [...]string{accepted: "accepted", invalid: "invalid", noUser: "no_user", ignored: "ignored", unavailable: "unavailable"}

func (o outcome) String() string { return outcomeNames[o] }

// mapper turns spans into call records.
type mapper struct {
	// userAttrs are looked up on the span, then on its resource.
	userAttrs []string
	// defaultUser takes the spans that name none; empty skips them.
	defaultUser string
	// teamAttr is looked up on the span, then on its resource, for the
	// record's team_id (optional).
	teamAttr string
}

// spanRecord maps one span. A span without any token count is not GenAI
// usage (ignored, rec unset). Problems the attributes show before a record
// exists (a count that is not a number) are returned as reason, with
// outcome invalid; the record's own rules are the collector's.
func (m *mapper) spanRecord(span ptrace.Span, resource pcommon.Map, service string) (rec record.Record, o outcome, reason string) {
	attrs := span.Attributes()
	// The ids first: they name the span in the reasons of its refusal.
	tid, sid := span.TraceID(), span.SpanID()
	if !tid.IsEmpty() && !sid.IsEmpty() {
		rec.RequestID = hex.EncodeToString(tid[:]) + "-" + hex.EncodeToString(sid[:])
	}
	var counts [6]int64
	var found bool
	for i, names := range [...][]string{inputAttrs, outputAttrs, cacheReadAttrs, cacheWriteAttrs, reasoningAttrs, totalAttrs} {
		v, name, ok := first(attrs, names)
		if !ok {
			continue
		}
		if i < 2 {
			found = true // usage is input or output tokens; the others only qualify them
		}
		n, problem := count(v)
		if problem != "" {
			return rec, invalid, name + " " + problem
		}
		counts[i] = n
	}
	if !found {
		return rec, ignored, ""
	}
	addCache(&counts)
	rec = record.Record{
		RequestID:    rec.RequestID,
		PromptTokens: counts[0], CompletionTokens: counts[1], CachedTokens: counts[2],
		CacheWriteTokens: counts[3], ReasoningTokens: counts[4], TotalTokens: counts[5],
		Status: record.StatusSuccess,
	}
	if v, _, ok := firstSet(attrs, modelAttrs); ok {
		rec.Model = v.AsString()
	}
	if v, _, ok := firstSet(attrs, providerAttrs); ok {
		rec.Provider = v.AsString()
	}
	if rec.RequestID == "" {
		return rec, invalid, "a span needs its trace_id and span_id (the record's request_id)"
	}
	start, end := span.StartTimestamp(), span.EndTimestamp()
	if end == 0 {
		return rec, invalid, "a span needs its end_time_unix_nano (the record's timestamp)"
	}
	rec.Timestamp = end.AsTime().UTC()
	if start != 0 {
		// Past a day the collector refuses it; a span that ends before it
		// starts likewise, as a negative latency.
		d := int64(end) - int64(start)
		if end < start {
			d = -int64(start - end)
		}
		rec.Latency, rec.HasLatency = time.Duration(d), true
	}
	if v, ok := attrs.Get("error.type"); ok {
		rec.Status, rec.ErrorType = record.StatusError, v.AsString()
	}
	if span.Status().Code() == ptrace.StatusCodeError {
		rec.Status = record.StatusError
	}
	rec.Metadata = spanMetadata(attrs, service)
	user, problem := m.user(attrs, resource)
	if problem != "" {
		return rec, invalid, problem
	}
	if user == "" {
		return rec, noUser, ""
	}
	rec.UserID = user
	if rec.TeamID, problem = m.team(attrs, resource); problem != "" {
		return rec, invalid, problem
	}
	return rec, accepted, ""
}

// team is the span's team: teamAttr on the span, else on the resource,
// else none. Like a user, a string or an integer.
func (m *mapper) team(attrs, resource pcommon.Map) (team, problem string) {
	if m.teamAttr == "" {
		return "", ""
	}
	for _, where := range []pcommon.Map{attrs, resource} {
		if v, name, ok := firstSet(where, []string{m.teamAttr}); ok {
			switch v.Type() {
			case pcommon.ValueTypeStr, pcommon.ValueTypeInt:
				return v.AsString(), ""
			}
			return "", fmt.Sprintf("%s must be a string or an integer, got a %s", name, v.Type())
		}
	}
	return "", ""
}

// addCache adds the cache reads and writes to input tokens that evidently
// exclude them: OTel's input count includes them, but an instrumentation
// that copies Anthropic's usage as it is reports Anthropic's
// input_tokens, which do not. Cache tokens over the input can only mean
// the latter, and refusing the span would lose the usage; a total under
// the new input + output was counted the same way, and gains them too.
// Fewer cache tokens than input cannot be told apart, and are taken as
// OTel's. counts is input, output, cache read, cache write, reasoning,
// total; counts out of range are left for the collector to refuse.
func addCache(counts *[6]int64) {
	in, out, read, write, total := counts[0], counts[1], counts[2], counts[3], counts[5]
	inRange := func(ns ...int64) bool {
		for _, n := range ns {
			if n < 0 || n > collector.MaxTokens {
				return false
			}
		}
		return true
	}
	if !inRange(in, out, read, write) || read+write <= in {
		return
	}
	counts[0] = in + read + write
	if total != 0 && inRange(total) && total < counts[0]+out {
		counts[5] = total + read + write
	}
}

// user is the span's user: the first of userAttrs on the span, else on the
// resource, else the default user ("" for none). A user is a string or an
// integer (user.id: 42 is user "42"); a list, a map, bytes or a bool
// would be stored as its JSON or base64 under a user nobody has, so it is
// refused, with problem naming the attribute.
func (m *mapper) user(attrs, resource pcommon.Map) (user, problem string) {
	for _, where := range []pcommon.Map{attrs, resource} {
		if v, name, ok := firstSet(where, m.userAttrs); ok {
			switch v.Type() {
			case pcommon.ValueTypeStr, pcommon.ValueTypeInt:
				return v.AsString(), ""
			}
			return "", fmt.Sprintf("%s must be a string or an integer, got a %s", name, v.Type())
		}
	}
	return m.defaultUser, ""
}

// first returns the value of the first of names that attrs holds.
func first(attrs pcommon.Map, names []string) (pcommon.Value, string, bool) {
	for _, name := range names {
		if v, ok := attrs.Get(name); ok {
			return v, name, true
		}
	}
	return pcommon.Value{}, "", false
}

// firstSet is first, an empty string counting as absent: instrumentations
// set gen_ai.response.model or user.id to "" when they have none, and
// the next name (gen_ai.request.model, enduser.id) then has the value.
func firstSet(attrs pcommon.Map, names []string) (pcommon.Value, string, bool) {
	for _, name := range names {
		if v, ok := attrs.Get(name); ok && !(v.Type() == pcommon.ValueTypeStr && v.Str() == "") {
			return v, name, true
		}
	}
	return pcommon.Value{}, "", false
}

// count reads a token count: an int, a double without a fraction (some
// SDKs have no ints), or a decimal string (some instrumentations
// stringify). Its range is the collector's rule.
func count(v pcommon.Value) (int64, string) {
	switch v.Type() {
	case pcommon.ValueTypeInt:
		return v.Int(), ""
	case pcommon.ValueTypeDouble:
		f := v.Double()
		if f != math.Trunc(f) || math.IsInf(f, 0) || math.Abs(f) > collector.MaxTokens {
			return 0, fmt.Sprintf("must be an integer between 0 and %d, got %g", int64(collector.MaxTokens), f)
		}
		return int64(f), ""
	case pcommon.ValueTypeStr:
		if n, err := strconv.ParseInt(strings.TrimSpace(v.Str()), 10, 64); err == nil {
			return n, ""
		}
		return 0, fmt.Sprintf("must be an integer, got the string %q", clip(v.Str()))
	}
	return 0, fmt.Sprintf("must be an integer, got a %s", v.Type())
}

// spanMetadata keeps what a record gains from its span beyond the fields:
// the service, the operation and where the record came from. A value
// that could not be stored byte for byte is left out rather than the
// record refused: it is context, not usage.
func spanMetadata(attrs pcommon.Map, service string) json.RawMessage {
	m := map[string]string{"source": "otlp"}
	if service != "" {
		m["service"] = service
	}
	if v, ok := attrs.Get("gen_ai.operation.name"); ok {
		m["operation"] = v.AsString()
	}
	for k, v := range m {
		if !storable(v) {
			delete(m, k)
		}
	}
	b, _ := json.Marshal(m)
	return b
}

// storable tells whether a metadata value is short and plain enough to
// keep: the store refuses NUL, and a label-like value has no business
// being long or holding control characters.
func storable(s string) bool {
	if len(s) > collector.MaxIDLength {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '\uFFFD' {
			return false
		}
	}
	return true
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}
