package otlp

import (
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"

	"github.com/llmusage/llmusage/collector"
	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/rules"
)

var testNow = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// sink keeps what the collector enqueued, or refuses it while full.
type sink struct {
	mu   sync.Mutex
	recs []record.Record
	full bool
}

func (s *sink) Enqueue(recs []record.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.full {
		return errors.New("cannot queue the records: the spool is full")
	}
	s.recs = append(s.recs, recs...)
	return nil
}

func (s *sink) records() []record.Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]record.Record(nil), s.recs...)
}

// spans counts what the receiver observed, by outcome.
type spans struct {
	mu sync.Mutex
	n  map[string]int
}

func (s *spans) ObserveOTLPSpans(outcome string, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n[outcome] += n
}

type harness struct {
	r     *Receiver
	sink  *sink
	spans *spans
}

func newHarness(t testing.TB, opts Options) *harness {
	t.Helper()
	set := rules.Merge(nil, nil)
	clk := clock.NewManual(testNow)
	l, err := limiter.New(nil, limiter.Options{Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{sink: &sink{}, spans: &spans{n: map[string]int{}}}
	opts.Collector = collector.New(collector.Options{Limiter: l, Sink: h.sink, Rules: func() *rules.Set { return set }, Clock: clk})
	opts.Observer = h.spans
	h.r = New(opts)
	return h
}

// testSpan is one span to put in a batch.
type testSpan struct {
	attrs    map[string]any
	resource map[string]any
	// trace and span ids' last byte, 0 for a default of 1.
	id       byte
	start    time.Time
	end      time.Time
	errorSet bool
}

// traces makes a batch of one resource per span.
func traces(ss ...testSpan) ptrace.Traces {
	td := ptrace.NewTraces()
	for i, s := range ss {
		rs := td.ResourceSpans().AppendEmpty()
		_ = rs.Resource().Attributes().FromRaw(s.resource)
		sp := rs.ScopeSpans().AppendEmpty().Spans().AppendEmpty()
		sp.SetName("chat")
		_ = sp.Attributes().FromRaw(s.attrs)
		id := s.id
		if id == 0 {
			id = byte(i + 1)
		}
		sp.SetTraceID(pcommon.TraceID{0xab, 15: id})
		sp.SetSpanID(pcommon.SpanID{0xcd, 7: id})
		end := s.end
		if end.IsZero() {
			end = testNow.Add(-time.Minute)
		}
		start := s.start
		if start.IsZero() {
			start = end.Add(-1500 * time.Millisecond)
		}
		sp.SetStartTimestamp(pcommon.NewTimestampFromTime(start))
		sp.SetEndTimestamp(pcommon.NewTimestampFromTime(end))
		if s.errorSet {
			sp.Status().SetCode(ptrace.StatusCodeError)
		}
	}
	return td
}

// current is a chat span in the current semantic conventions.
func current() map[string]any {
	return map[string]any{
		"gen_ai.operation.name":                    "chat",
		"gen_ai.provider.name":                     "openai",
		"gen_ai.request.model":                     "gpt-4o",
		"gen_ai.response.model":                    "gpt-4o-2024-08-06",
		"gen_ai.usage.input_tokens":                int64(1000),
		"gen_ai.usage.output_tokens":               int64(200),
		"gen_ai.usage.cache_read.input_tokens":     int64(300),
		"gen_ai.usage.cache_creation.input_tokens": int64(100),
		"gen_ai.usage.reasoning.output_tokens":     int64(50),
		"user.id":                                  "alice",
	}
}

func with(m map[string]any, kv ...any) map[string]any {
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(m, kv[i].(string))
		} else {
			m[kv[i].(string)] = kv[i+1]
		}
	}
	return m
}

func TestSpanRecord(t *testing.T) {
	m := &mapper{userAttrs: DefaultUserAttributes}
	f := func(s testSpan, wantOutcome outcome, want string) {
		t.Helper()
		td := traces(s)
		rs := td.ResourceSpans().At(0)
		rec, o, reason := m.spanRecord(rs.ScopeSpans().At(0).Spans().At(0), rs.Resource().Attributes(), "svc")
		if o != wantOutcome {
			t.Fatalf("outcome %s (%s), want %s", o, reason, wantOutcome)
		}
		got := reason
		if o == accepted || o == noUser {
			got = strings.Join([]string{rec.UserID, rec.Provider, rec.Model, tokensOf(rec), rec.Status, rec.ErrorType,
				rec.Latency.String(), rec.Timestamp.Format(time.RFC3339), rec.RequestID, string(rec.Metadata)}, " ")
		}
		if !strings.Contains(got, want) {
			t.Fatalf("got %q, want it to hold %q", got, want)
		}
	}
	ok := "alice openai gpt-4o-2024-08-06 1000/200 cache 300+100 reasoning 50 total 0 success  1.5s 2026-11-27T11:59:00Z " +
		"ab000000000000000000000000000001-cd00000000000001 " + `{"operation":"chat","service":"svc","source":"otlp"}`
	f(testSpan{attrs: current()}, accepted, ok)

	// The older names, OpenLLMetry's and OpenLIT's.
	f(testSpan{attrs: map[string]any{"gen_ai.system": "Anthropic", "gen_ai.request.model": "claude-3-opus",
		"gen_ai.usage.prompt_tokens": int64(10), "gen_ai.usage.completion_tokens": int64(5), "enduser.id": "bob"}},
		accepted, "bob Anthropic claude-3-opus 10/5 cache 0+0 reasoning 0 total 0")
	f(testSpan{attrs: map[string]any{"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o", "llm.usage.prompt_tokens": int64(10),
		"llm.usage.completion_tokens": int64(5), "llm.usage.total_tokens": int64(15), "gen_ai.usage.cache_read_input_tokens": int64(4),
		"gen_ai.usage.cache_creation_input_tokens": int64(3), "gen_ai.usage.reasoning_tokens": int64(2), "user.id": "carol"}},
		accepted, "carol openai gpt-4o 10/5 cache 4+3 reasoning 2 total 15")
	f(testSpan{attrs: map[string]any{"gen_ai.request.model": "m", "gen_ai.usage.input_tokens": int64(1),
		"llm.usage.cache_read_input_tokens": int64(1), "llm.usage.cache_creation_input_tokens": int64(0), "llm.usage.reasoning_tokens": int64(0), "user.id": "u"}},
		accepted, "u  m 1/0 cache 1+0 reasoning 0")
	// The current name wins over the older one.
	f(testSpan{attrs: with(current(), "gen_ai.system", "anthropic", "gen_ai.usage.prompt_tokens", int64(7))}, accepted, ok)
	// The request's model when the answer names none.
	f(testSpan{attrs: with(current(), "gen_ai.response.model", nil)}, accepted, "alice openai gpt-4o 1000/200")

	// An empty value is no value: the next name is looked up.
	f(testSpan{attrs: with(current(), "gen_ai.response.model", "")}, accepted, "alice openai gpt-4o 1000/200")
	f(testSpan{attrs: with(current(), "gen_ai.provider.name", "", "gen_ai.system", "anthropic")}, accepted, "alice anthropic gpt-4o")

	// Counts as doubles without a fraction, and as decimal strings.
	f(testSpan{attrs: with(current(), "gen_ai.usage.input_tokens", 1000.0, "gen_ai.usage.output_tokens", "200")}, accepted, ok)
	f(testSpan{attrs: with(current(), "gen_ai.usage.input_tokens", 10.5)}, invalid, "gen_ai.usage.input_tokens must be an integer between 0 and 1000000000000, got 10.5")
	f(testSpan{attrs: with(current(), "gen_ai.usage.output_tokens", 1e300)}, invalid, "gen_ai.usage.output_tokens must be an integer")
	f(testSpan{attrs: with(current(), "gen_ai.usage.output_tokens", "many")}, invalid, `gen_ai.usage.output_tokens must be an integer, got the string "many"`)
	f(testSpan{attrs: with(current(), "gen_ai.usage.cache_read.input_tokens", true)}, invalid, "gen_ai.usage.cache_read.input_tokens must be an integer, got a Bool")
	f(testSpan{attrs: with(current(), "gen_ai.usage.input_tokens", []any{int64(1)})}, invalid, "got a Slice")

	// Not GenAI usage: no token counts, whatever else the span says.
	f(testSpan{attrs: map[string]any{"http.method": "GET", "user.id": "alice"}}, ignored, "")
	f(testSpan{attrs: with(current(), "gen_ai.usage.input_tokens", nil, "gen_ai.usage.output_tokens", nil)}, ignored, "")
	f(testSpan{attrs: map[string]any{"gen_ai.usage.cache_read.input_tokens": int64(5), "user.id": "alice"}}, ignored, "")

	// The user: the span's, else the resource's, first attribute first.
	f(testSpan{attrs: with(current(), "user.id", nil), resource: map[string]any{"user.id": "res-user"}}, accepted, "res-user openai")
	f(testSpan{attrs: with(current(), "user.id", nil, "enduser.id", "span-user"), resource: map[string]any{"user.id": "res-user"}}, accepted, "span-user openai")
	f(testSpan{attrs: with(current(), "enduser.id", "second")}, accepted, "alice openai")
	f(testSpan{attrs: with(current(), "user.id", int64(42))}, accepted, "42 openai")
	f(testSpan{attrs: with(current(), "user.id", nil)}, noUser, " openai gpt-4o")
	f(testSpan{attrs: with(current(), "user.id", "")}, noUser, "")
	f(testSpan{attrs: with(current(), "user.id", "", "enduser.id", "bob")}, accepted, "bob openai")
	// A user is a name or a number: a list or a map is no user's id.
	f(testSpan{attrs: with(current(), "user.id", []any{"alice"})}, invalid, "user.id must be a string or an integer, got a Slice")
	f(testSpan{attrs: with(current(), "user.id", map[string]any{"id": "alice"})}, invalid, "user.id must be a string or an integer, got a Map")
	f(testSpan{attrs: with(current(), "user.id", nil), resource: map[string]any{"enduser.id": true}}, invalid, "enduser.id must be a string or an integer, got a Bool")

	// Errors: error.type, or the span's status.
	f(testSpan{attrs: with(current(), "error.type", "rate_limit_exceeded")}, accepted, "error rate_limit_exceeded 1.5s")
	f(testSpan{attrs: current(), errorSet: true}, accepted, "error  1.5s")

	// Latency and timestamp from the span's times.
	f(testSpan{attrs: current(), start: testNow.Add(-time.Hour), end: testNow}, accepted, "1h0m0s 2026-11-27T12:00:00Z")
	f(testSpan{attrs: current(), start: testNow, end: testNow.Add(-time.Second)}, accepted, "-1s")
	f(testSpan{attrs: current(), start: time.Unix(0, 0), end: testNow}, accepted, "success  0s")

	// ids.
	f(testSpan{attrs: current(), id: 0xff}, accepted, "ab0000000000000000000000000000ff-cd000000000000ff")

	// Metadata keeps only what it can store.
	f(testSpan{attrs: with(current(), "gen_ai.operation.name", "chat\x00")}, accepted, `{"service":"svc","source":"otlp"}`)
	f(testSpan{attrs: with(current(), "gen_ai.operation.name", strings.Repeat("x", 300))}, accepted, `{"service":"svc","source":"otlp"}`)
}

func tokensOf(r record.Record) string {
	return strings.Join([]string{itoa(r.PromptTokens) + "/" + itoa(r.CompletionTokens), "cache", itoa(r.CachedTokens) + "+" + itoa(r.CacheWriteTokens),
		"reasoning", itoa(r.ReasoningTokens), "total", itoa(r.TotalTokens)}, " ")
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// TestSpanIDs: spans without ids or an end cannot make a record.
func TestSpanIDs(t *testing.T) {
	m := &mapper{userAttrs: DefaultUserAttributes}
	f := func(edit func(ptrace.Span), want string) {
		t.Helper()
		td := traces(testSpan{attrs: current()})
		rs := td.ResourceSpans().At(0)
		sp := rs.ScopeSpans().At(0).Spans().At(0)
		edit(sp)
		_, o, reason := m.spanRecord(sp, rs.Resource().Attributes(), "")
		if o != invalid || !strings.Contains(reason, want) {
			t.Fatalf("outcome %s, reason %q; want invalid, %q", o, reason, want)
		}
	}
	f(func(sp ptrace.Span) { sp.SetTraceID(pcommon.NewTraceIDEmpty()) }, "needs its trace_id and span_id")
	f(func(sp ptrace.Span) { sp.SetSpanID(pcommon.NewSpanIDEmpty()) }, "needs its trace_id and span_id")
	f(func(sp ptrace.Span) { sp.SetEndTimestamp(0) }, "needs its end_time_unix_nano")
}

// TestExport: a batch is taken span by span, through the collector's
// rules; the refused are counted and named in the partial success.
func TestExport(t *testing.T) {
	h := newHarness(t, Options{})
	td := traces(
		testSpan{attrs: current()},
		testSpan{attrs: with(current(), "gen_ai.system", "az.ai.openai", "gen_ai.provider.name", nil)},
		testSpan{attrs: map[string]any{"http.route": "/", "user.id": "alice"}}, // ignored
		testSpan{attrs: with(current(), "gen_ai.usage.input_tokens", int64(2_000_000_000_000))},
		testSpan{attrs: with(current(), "gen_ai.response.model", strings.Repeat("m", 300))},
		testSpan{attrs: with(current(), "user.id", nil)},                           // no user
		testSpan{attrs: with(current(), "gen_ai.usage.input_tokens", int64(-1))},   // negative
		testSpan{attrs: current(), start: testNow, end: testNow.Add(-time.Minute)}, // ends before it starts
		testSpan{attrs: current(), id: 1},                                          // a repeat of the first
		testSpan{attrs: current(), end: testNow.Add(-40 * 24 * time.Hour)},         // too old
		testSpan{attrs: with(current(), "gen_ai.usage.output_tokens", "x")},        // not a number
		testSpan{attrs: with(current(), "gen_ai.provider.name", "Some Provider Inc.")},
		testSpan{attrs: with(current(), "gen_ai.request.model", nil, "gen_ai.response.model", nil)},
		testSpan{attrs: with(current(), "llm.usage.total_tokens", int64(10))},
		testSpan{attrs: with(current(), "error.type", strings.Repeat("e", 300))},
		testSpan{attrs: current(), start: testNow.Add(-25 * time.Hour)},
	)
	resp, err := h.r.Export(td)
	if err != nil {
		t.Fatal(err)
	}
	recs := h.sink.records()
	var got []string
	for _, r := range recs {
		got = append(got, r.UserID+"/"+r.Provider+"/"+r.Model)
	}
	want := "alice/openai/gpt-4o-2024-08-06 alice/azure.ai.openai/gpt-4o-2024-08-06 alice/some provider inc./gpt-4o-2024-08-06"
	if strings.Join(got, " ") != want {
		t.Fatalf("records %v, want %s", got, want)
	}
	if !recs[0].HasCost || recs[0].Cost == 0 {
		t.Fatalf("the record was not priced: %+v", recs[0])
	}
	ps := resp.PartialSuccess()
	if ps.RejectedSpans() != 12 {
		t.Fatalf("rejected %d, want 12: %s", ps.RejectedSpans(), ps.ErrorMessage())
	}
	msg := ps.ErrorMessage()
	for _, want := range []string{
		"cannot take 11 invalid spans",
		"span ab000000000000000000000000000004-cd00000000000004: gen_ai.usage.input_tokens must be between 0 and 1000000000000",
		"the model (gen_ai.response.model, gen_ai.request.model) must be at most 256 bytes",
		"the span's duration must be between 0 and 86400000 milliseconds, got -60000",
		"request_id repeats record 0's",
		"the span's end must not be more than 744h0m0s in the past",
		`gen_ai.usage.output_tokens must be an integer, got the string "x"`,
		"and 1 more problems",
		"cannot take 1 spans with GenAI usage but no user: set one of user.id, enduser.id",
	} {
		if !strings.Contains(msg, want) {
			t.Fatalf("message %q lacks %q", msg, want)
		}
	}
	if got := h.spans.n; got["accepted"] != 3 || got["invalid"] != 11 || got["no_user"] != 1 || got["ignored"] != 1 || got["unavailable"] != 0 {
		t.Fatalf("spans by outcome %v", got)
	}

	// All valid: no partial success at all, as the specification asks.
	resp, err = h.r.Export(traces(testSpan{attrs: current(), id: 0x42}, testSpan{attrs: map[string]any{"a": "b"}, id: 0x43}))
	if err != nil || resp.PartialSuccess().RejectedSpans() != 0 || resp.PartialSuccess().ErrorMessage() != "" {
		t.Fatalf("a valid batch: %v, %d %q", err, resp.PartialSuccess().RejectedSpans(), resp.PartialSuccess().ErrorMessage())
	}

	// A full spool takes nothing, and says so.
	h.sink.full = true
	before := len(h.sink.records())
	_, err = h.r.Export(traces(testSpan{attrs: current(), id: 0x44}, testSpan{attrs: with(current(), "user.id", nil), id: 0x45}))
	if !errors.Is(err, ErrUnavailable) || len(h.sink.records()) != before || h.spans.n["unavailable"] != 1 {
		t.Fatalf("a full spool: %v, %d records, spans %v", err, len(h.sink.records())-before, h.spans.n)
	}
}

// TestDefaultUser: spans that name no user go to --otlp-default-user, and
// --otlp-user-attribute chooses where the user is.
func TestDefaultUser(t *testing.T) {
	h := newHarness(t, Options{DefaultUser: "fallback", UserAttributes: []string{"app.user"}})
	if _, err := h.r.Export(traces(testSpan{attrs: current()}, testSpan{attrs: with(current(), "app.user", "zed")})); err != nil {
		t.Fatal(err)
	}
	recs := h.sink.records()
	if len(recs) != 2 || recs[0].UserID != "fallback" || recs[1].UserID != "zed" {
		t.Fatalf("records %+v", recs)
	}
}

// TestTeamAttribute: the team is llmusage.team_id (or the attribute
// configured) on the span, else on its resource; none leaves it empty,
// and a value past the collector's rules refuses the span.
func TestTeamAttribute(t *testing.T) {
	h := newHarness(t, Options{})
	res, err := h.r.Export(traces(
		testSpan{attrs: with(current(), "llmusage.team_id", "red"), resource: map[string]any{"llmusage.team_id": "blue"}},
		testSpan{attrs: current(), resource: map[string]any{"llmusage.team_id": "blue"}, id: 2},
		testSpan{attrs: current(), id: 3},
		testSpan{attrs: with(current(), "llmusage.team_id", int64(7)), id: 4},
		testSpan{attrs: with(current(), "llmusage.team_id", []any{"x"}), id: 5},
		testSpan{attrs: with(current(), "llmusage.team_id", "bad\nteam"), id: 6},
	))
	if err != nil {
		t.Fatal(err)
	}
	recs := h.sink.records()
	var teams []string
	for _, r := range recs {
		teams = append(teams, r.TeamID)
	}
	if strings.Join(teams, ",") != "red,blue,,7" {
		t.Fatalf("teams %q", teams)
	}
	if ps := res.PartialSuccess(); ps.RejectedSpans() != 2 || !strings.Contains(ps.ErrorMessage(), "llmusage.team_id must be a string or an integer") ||
		!strings.Contains(ps.ErrorMessage(), "the team (llmusage.team_id) must not contain control characters") {
		t.Fatalf("partial success %d: %s", ps.RejectedSpans(), ps.ErrorMessage())
	}

	h = newHarness(t, Options{TeamAttribute: "app.team"})
	if _, err := h.r.Export(traces(testSpan{attrs: with(current(), "app.team", "green", "llmusage.team_id", "red")})); err != nil {
		t.Fatal(err)
	}
	if recs := h.sink.records(); len(recs) != 1 || recs[0].TeamID != "green" {
		t.Fatalf("records with --otlp-team-attribute app.team: %+v", recs)
	}
}

// TestInputWithoutCache: an instrumentation that copies Anthropic's usage
// as it is puts input tokens that exclude the cache in
// gen_ai.usage.input_tokens. Cache reads and writes over the input can
// only mean that: they are added to it (and to a total counted the same
// way) rather than the span refused.
func TestInputWithoutCache(t *testing.T) {
	h := newHarness(t, Options{})
	anthropic := func(kv ...any) map[string]any {
		return with(map[string]any{"gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude-3-5-sonnet-20241022", "user.id": "u",
			"gen_ai.usage.input_tokens": int64(100), "gen_ai.usage.output_tokens": int64(50),
			"gen_ai.usage.cache_read.input_tokens": int64(300), "gen_ai.usage.cache_creation.input_tokens": int64(200)}, kv...)
	}
	td := traces(
		testSpan{attrs: anthropic()},                                                                                         // 100 uncached, so 600 in all
		testSpan{attrs: anthropic("llm.usage.total_tokens", int64(150))},                                                     // a total without the cache too
		testSpan{attrs: anthropic("llm.usage.total_tokens", int64(650))},                                                     // a total with it already
		testSpan{attrs: anthropic("gen_ai.usage.input_tokens", int64(600))},                                                  // OTel's count, cache included
		testSpan{attrs: anthropic("gen_ai.usage.input_tokens", int64(500), "llm.usage.total_tokens", nil)},                   // cache == input: OTel's
		testSpan{attrs: anthropic("gen_ai.usage.cache_read.input_tokens", int64(collector.MaxTokens)+1)},                     // still refused
		testSpan{attrs: anthropic("gen_ai.usage.input_tokens", int64(-1), "gen_ai.usage.cache_read.input_tokens", int64(0))}, // still refused
	)
	resp, err := h.r.Export(td)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	recs := h.sink.records()
	for _, r := range recs {
		got = append(got, tokensOf(r))
	}
	want := []string{
		"600/50 cache 300+200 reasoning 0 total 650",
		"600/50 cache 300+200 reasoning 0 total 650",
		"600/50 cache 300+200 reasoning 0 total 650",
		"600/50 cache 300+200 reasoning 0 total 650",
		"500/50 cache 300+200 reasoning 0 total 550",
	}
	if strings.Join(got, "; ") != strings.Join(want, "; ") {
		t.Fatalf("records\n%s\nwant\n%s\n(%s)", strings.Join(got, "\n"), strings.Join(want, "\n"), resp.PartialSuccess().ErrorMessage())
	}
	if recs[0].Cost != recs[3].Cost || !recs[0].HasCost {
		t.Fatalf("the same usage priced %v and %v", recs[0].Cost, recs[3].Cost)
	}
	if n := resp.PartialSuccess().RejectedSpans(); n != 2 {
		t.Fatalf("rejected %d, want 2: %s", n, resp.PartialSuccess().ErrorMessage())
	}
}
