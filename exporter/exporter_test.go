package exporter

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/usd"
)

var testNow = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func rec(user, provider, model string, prompt, completion int64) record.Record {
	return record.Record{UserID: user, Provider: provider, Model: model, PromptTokens: prompt, CompletionTokens: completion,
		TotalTokens: prompt + completion, Status: record.StatusSuccess}
}

func TestUsageMetrics(t *testing.T) {
	e := New(Options{Clock: clock.NewManual(testNow)})
	slow := rec("u2", "anthropic", "claude-3-opus", 7, 3)
	slow.Latency, slow.HasLatency, slow.Status = 1500*time.Millisecond, true, record.StatusError
	reasoning := rec("u1", "openai", "o3-mini", 5, 20)
	reasoning.CachedTokens, reasoning.ReasoningTokens = 2, 11
	e.ObserveRecords([]record.Record{rec("u1", "groq", "llama-3.1-70b-versatile", 100, 50), rec("u1", "groq", "llama-3.1-70b-versatile", 1, 1), slow, reasoning})
	e.ObserveCheck("u1", true)
	e.ObserveCheck("u1", false)
	e.ObserveRejected(4)

	want := `
# HELP llm_requests_total LLM API calls recorded, by user, team (empty for none), provider, model and status (success or error).
# TYPE llm_requests_total counter
llm_requests_total{model="claude-3-opus",provider="anthropic",status="error",team="",user="u2"} 1
llm_requests_total{model="llama-3.1-70b-versatile",provider="groq",status="success",team="",user="u1"} 2
llm_requests_total{model="o3-mini",provider="openai",status="success",team="",user="u1"} 1
# HELP llm_tokens_total Tokens used by LLM API calls, by user, team (empty for none), provider, model and token_type (prompt, completion, cached, reasoning). cached is part of prompt and reasoning part of completion.
# TYPE llm_tokens_total counter
llm_tokens_total{model="claude-3-opus",provider="anthropic",team="",token_type="completion",user="u2"} 3
llm_tokens_total{model="claude-3-opus",provider="anthropic",team="",token_type="prompt",user="u2"} 7
llm_tokens_total{model="llama-3.1-70b-versatile",provider="groq",team="",token_type="completion",user="u1"} 51
llm_tokens_total{model="llama-3.1-70b-versatile",provider="groq",team="",token_type="prompt",user="u1"} 101
llm_tokens_total{model="o3-mini",provider="openai",team="",token_type="cached",user="u1"} 2
llm_tokens_total{model="o3-mini",provider="openai",team="",token_type="completion",user="u1"} 20
llm_tokens_total{model="o3-mini",provider="openai",team="",token_type="prompt",user="u1"} 5
llm_tokens_total{model="o3-mini",provider="openai",team="",token_type="reasoning",user="u1"} 11
# HELP llm_rate_limit_checks_total Quota checks, by user and decision (allowed or limited).
# TYPE llm_rate_limit_checks_total counter
llm_rate_limit_checks_total{decision="allowed",user="u1"} 1
llm_rate_limit_checks_total{decision="limited",user="u1"} 1
# HELP llmusage_records_accepted_total Call records accepted by the sidecar.
# TYPE llmusage_records_accepted_total counter
llmusage_records_accepted_total 4
# HELP llmusage_records_rejected_total Call records refused because their request held an invalid record.
# TYPE llmusage_records_rejected_total counter
llmusage_records_rejected_total 4
`
	if err := testutil.GatherAndCompare(e.Registry(), strings.NewReader(want),
		"llm_requests_total", "llm_tokens_total", "llm_rate_limit_checks_total", "llmusage_records_accepted_total", "llmusage_records_rejected_total"); err != nil {
		t.Fatal(err)
	}
	hist := `
# HELP llm_request_duration_seconds Latency of LLM API calls as reported in latency_ms, by provider and model.
# TYPE llm_request_duration_seconds histogram
`
	var b strings.Builder
	b.WriteString(hist)
	for _, le := range []string{"0.01", "0.02", "0.04", "0.08", "0.16", "0.32", "0.64", "1.28"} {
		b.WriteString(`llm_request_duration_seconds_bucket{model="claude-3-opus",provider="anthropic",le="` + le + `"} 0` + "\n")
	}
	for _, le := range []string{"2.56", "5.12", "10.24", "20.48", "40.96", "81.92", "+Inf"} {
		b.WriteString(`llm_request_duration_seconds_bucket{model="claude-3-opus",provider="anthropic",le="` + le + `"} 1` + "\n")
	}
	b.WriteString(`llm_request_duration_seconds_sum{model="claude-3-opus",provider="anthropic"} 1.5` + "\n")
	b.WriteString(`llm_request_duration_seconds_count{model="claude-3-opus",provider="anthropic"} 1` + "\n")
	if err := testutil.GatherAndCompare(e.Registry(), strings.NewReader(b.String()), "llm_request_duration_seconds"); err != nil {
		t.Fatal(err)
	}
}

func TestUserGuard(t *testing.T) {
	clk := clock.NewManual(testNow)
	e := New(Options{Clock: clk, MaxUsers: 2, UserTTL: time.Hour})
	e.ObserveRecords([]record.Record{rec("a", "openai", "gpt-4", 1, 1), rec("b", "openai", "gpt-4", 1, 1)})
	clk.Advance(30 * time.Minute)
	e.ObserveRecords([]record.Record{rec("c", "openai", "gpt-4", 1, 1), rec("d", "openai", "gpt-4", 1, 1), rec("b", "openai", "gpt-4", 1, 1)})
	e.ObserveCheck("e", true)

	requests := func(want string) {
		t.Helper()
		full := "# HELP llm_requests_total LLM API calls recorded, by user, team (empty for none), provider, model and status (success or error).\n# TYPE llm_requests_total counter\n" + want
		if err := testutil.GatherAndCompare(e.Registry(), strings.NewReader(full), "llm_requests_total"); err != nil {
			t.Fatal(err)
		}
	}
	requests(`llm_requests_total{model="gpt-4",provider="openai",status="success",team="",user="__other__"} 2
llm_requests_total{model="gpt-4",provider="openai",status="success",team="",user="a"} 1
llm_requests_total{model="gpt-4",provider="openai",status="success",team="",user="b"} 2
`)
	if got := testutil.ToFloat64(e.guard.overflow); got != 3 {
		t.Fatalf("overflow %v, want 3 (c, d and e's check)", got)
	}
	// a has been idle for more than the TTL, b has not.
	clk.Advance(31 * time.Minute)
	if n := e.Sweep(); n != 1 {
		t.Fatalf("Sweep forgot %d users, want 1", n)
	}
	requests(`llm_requests_total{model="gpt-4",provider="openai",status="success",team="",user="__other__"} 2
llm_requests_total{model="gpt-4",provider="openai",status="success",team="",user="b"} 2
`)
	// The freed slot goes to the next new user.
	e.ObserveRecords([]record.Record{rec("f", "openai", "gpt-4", 1, 1)})
	requests(`llm_requests_total{model="gpt-4",provider="openai",status="success",team="",user="__other__"} 2
llm_requests_total{model="gpt-4",provider="openai",status="success",team="",user="b"} 2
llm_requests_total{model="gpt-4",provider="openai",status="success",team="",user="f"} 1
`)
	if err := testutil.GatherAndCompare(e.Registry(), strings.NewReader("# HELP llmusage_metrics_users Distinct user label values currently exported (capped by --metrics-max-users).\n# TYPE llmusage_metrics_users gauge\nllmusage_metrics_users 2\n"), "llmusage_metrics_users"); err != nil {
		t.Fatal(err)
	}

	// A user that comes back after its series were swept gets them anew:
	// nothing it records goes to a forgotten child. (g, over the cap until
	// the sweep, keeps the model from expiring with the users.)
	clk.Advance(2 * time.Hour)
	e.ObserveRecords([]record.Record{rec("g", "openai", "gpt-4", 1, 1)})
	if n := e.Sweep(); n != 2 {
		t.Fatalf("Sweep forgot %d users, want 2 (b and f)", n)
	}
	e.ObserveRecords([]record.Record{rec("f", "openai", "gpt-4", 1, 1)})
	requests(`llm_requests_total{model="gpt-4",provider="openai",status="success",team="",user="__other__"} 3
llm_requests_total{model="gpt-4",provider="openai",status="success",team="",user="f"} 1
`)
}

// TestTeamGuard checks the cap on team label values: teams past it share
// team="__other__", calls without a team keep team="" outside the cap,
// and an idle team's series go, freeing its slot.
func TestTeamGuard(t *testing.T) {
	clk := clock.NewManual(testNow)
	e := New(Options{Clock: clk, MaxTeams: 2, UserTTL: time.Hour})
	teamed := func(user, team string) record.Record {
		r := rec(user, "openai", "gpt-4", 1, 1)
		r.TeamID = team
		return r
	}
	e.ObserveRecords([]record.Record{teamed("a", "red"), teamed("a", "blue"), teamed("b", "")})
	clk.Advance(30 * time.Minute)
	e.ObserveRecords([]record.Record{teamed("b", "green"), teamed("a", "blue")})
	requests := func(want string) {
		t.Helper()
		full := "# HELP llm_requests_total LLM API calls recorded, by user, team (empty for none), provider, model and status (success or error).\n# TYPE llm_requests_total counter\n" + want
		if err := testutil.GatherAndCompare(e.Registry(), strings.NewReader(full), "llm_requests_total"); err != nil {
			t.Fatal(err)
		}
	}
	requests(`llm_requests_total{model="gpt-4",provider="openai",status="success",team="",user="b"} 1
llm_requests_total{model="gpt-4",provider="openai",status="success",team="__other__",user="b"} 1
llm_requests_total{model="gpt-4",provider="openai",status="success",team="blue",user="a"} 2
llm_requests_total{model="gpt-4",provider="openai",status="success",team="red",user="a"} 1
`)
	if err := testutil.GatherAndCompare(e.Registry(), strings.NewReader("# HELP llmusage_metrics_teams Distinct team label values currently exported, the empty one aside (capped by --metrics-max-teams).\n# TYPE llmusage_metrics_teams gauge\nllmusage_metrics_teams 2\n"), "llmusage_metrics_teams"); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(e.teams.overflow); got != 1 {
		t.Fatalf("team overflow %v, want 1 (green)", got)
	}
	// red has been idle for more than the TTL: its series go, and its
	// slot goes to the next new team.
	clk.Advance(31 * time.Minute)
	e.Sweep()
	e.ObserveRecords([]record.Record{teamed("b", "green")})
	requests(`llm_requests_total{model="gpt-4",provider="openai",status="success",team="",user="b"} 1
llm_requests_total{model="gpt-4",provider="openai",status="success",team="__other__",user="b"} 1
llm_requests_total{model="gpt-4",provider="openai",status="success",team="blue",user="a"} 2
llm_requests_total{model="gpt-4",provider="openai",status="success",team="green",user="b"} 1
`)
}

// TestModelGuard checks the cap on provider and model pairs: pairs past
// it keep a provider that has series, others become __other__ on both
// labels, and an idle pair's series go, of every user, freeing its slot.
func TestModelGuard(t *testing.T) {
	clk := clock.NewManual(testNow)
	e := New(Options{Clock: clk, MaxModels: 2, UserTTL: time.Hour})
	timed := func(user, provider, model string) record.Record {
		r := rec(user, provider, model, 1, 1)
		r.Latency, r.HasLatency = time.Second, true
		return r
	}
	e.ObserveRecords([]record.Record{timed("a", "openai", "gpt-4o"), timed("b", "openai", "gpt-4o-mini")})
	clk.Advance(30 * time.Minute)
	e.ObserveRecords([]record.Record{timed("a", "openai", "gpt-4o-2026-11-27T12:30"), timed("b", "acme", "x-1"), timed("a", "openai", "gpt-4o")})

	f := func(name, want string) {
		t.Helper()
		var lines []string
		for _, line := range strings.Split(scrape(t, e), "\n") {
			if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
				lines = append(lines, line)
			}
		}
		if got := strings.Join(lines, "\n"); got != want {
			t.Fatalf("%s:\n%s\nwant\n%s", name, got, want)
		}
	}
	f("llm_requests_total", `llm_requests_total{model="__other__",provider="__other__",status="success",team="",user="b"} 1
llm_requests_total{model="__other__",provider="openai",status="success",team="",user="a"} 1
llm_requests_total{model="gpt-4o",provider="openai",status="success",team="",user="a"} 2
llm_requests_total{model="gpt-4o-mini",provider="openai",status="success",team="",user="b"} 1`)
	f("llm_request_duration_seconds_count", `llm_request_duration_seconds_count{model="__other__",provider="__other__"} 1
llm_request_duration_seconds_count{model="__other__",provider="openai"} 1
llm_request_duration_seconds_count{model="gpt-4o",provider="openai"} 2
llm_request_duration_seconds_count{model="gpt-4o-mini",provider="openai"} 1`)
	f("llmusage_metrics_models", "llmusage_metrics_models 2")
	f("llmusage_metrics_models_overflow_total", "llmusage_metrics_models_overflow_total 2")

	// gpt-4o-mini has been idle for more than the TTL, gpt-4o has not;
	// both users have (so no user expires): only the pair's series go.
	clk.Advance(31 * time.Minute)
	if n := e.Sweep(); n != 0 {
		t.Fatalf("Sweep forgot %d users, want 0", n)
	}
	f("llmusage_metrics_models", "llmusage_metrics_models 1")
	f("llm_tokens_total", `llm_tokens_total{model="__other__",provider="__other__",team="",token_type="completion",user="b"} 1
llm_tokens_total{model="__other__",provider="__other__",team="",token_type="prompt",user="b"} 1
llm_tokens_total{model="__other__",provider="openai",team="",token_type="completion",user="a"} 1
llm_tokens_total{model="__other__",provider="openai",team="",token_type="prompt",user="a"} 1
llm_tokens_total{model="gpt-4o",provider="openai",team="",token_type="completion",user="a"} 2
llm_tokens_total{model="gpt-4o",provider="openai",team="",token_type="prompt",user="a"} 2`)
	f("llm_request_duration_seconds_count", `llm_request_duration_seconds_count{model="__other__",provider="__other__"} 1
llm_request_duration_seconds_count{model="__other__",provider="openai"} 1
llm_request_duration_seconds_count{model="gpt-4o",provider="openai"} 2`)

	// The freed slot goes to the next new pair; gpt-4o-mini, back, finds
	// the cap full again.
	e.ObserveRecords([]record.Record{timed("b", "acme", "x-1"), timed("b", "openai", "gpt-4o-mini")})
	f("llm_requests_total", `llm_requests_total{model="__other__",provider="__other__",status="success",team="",user="b"} 1
llm_requests_total{model="__other__",provider="openai",status="success",team="",user="a"} 1
llm_requests_total{model="__other__",provider="openai",status="success",team="",user="b"} 1
llm_requests_total{model="gpt-4o",provider="openai",status="success",team="",user="a"} 2
llm_requests_total{model="x-1",provider="acme",status="success",team="",user="b"} 1`)
	f("llmusage_metrics_models_overflow_total", "llmusage_metrics_models_overflow_total 3")

	// 95m: gpt-4o (last seen at 30m) and the (__other__, __other__)
	// overflow pair (30m) expire, and so does user a (30m); openai then has
	// no pair of its own, but its overflow pair (61m) stays. gpt-4o comes
	// back to a free slot and gets its series anew; x-2 finds the cap full
	// and acme known.
	clk.Advance(34 * time.Minute)
	if n := e.Sweep(); n != 1 {
		t.Fatalf("Sweep forgot %d users, want 1 (a)", n)
	}
	e.ObserveRecords([]record.Record{timed("a", "openai", "gpt-4o"), timed("b", "acme", "x-2")})
	f("llm_requests_total", `llm_requests_total{model="__other__",provider="acme",status="success",team="",user="b"} 1
llm_requests_total{model="__other__",provider="openai",status="success",team="",user="b"} 1
llm_requests_total{model="gpt-4o",provider="openai",status="success",team="",user="a"} 1
llm_requests_total{model="x-1",provider="acme",status="success",team="",user="b"} 1`)

	// 130m: x-1 (61m), acme's only pair, and openai's overflow pair (61m)
	// expire. gpt-5 takes the free slot; x-3 finds the cap full and acme
	// without a pair of its own, so both its labels overflow.
	clk.Advance(35 * time.Minute)
	if n := e.Sweep(); n != 0 {
		t.Fatalf("Sweep forgot %d users, want 0", n)
	}
	e.ObserveRecords([]record.Record{timed("b", "openai", "gpt-5"), timed("b", "acme", "x-3")})
	f("llm_requests_total", `llm_requests_total{model="__other__",provider="__other__",status="success",team="",user="b"} 1
llm_requests_total{model="__other__",provider="acme",status="success",team="",user="b"} 1
llm_requests_total{model="gpt-4o",provider="openai",status="success",team="",user="a"} 1
llm_requests_total{model="gpt-5",provider="openai",status="success",team="",user="b"} 1`)
	f("llm_request_duration_seconds_count", `llm_request_duration_seconds_count{model="__other__",provider="__other__"} 1
llm_request_duration_seconds_count{model="__other__",provider="acme"} 1
llm_request_duration_seconds_count{model="gpt-4o",provider="openai"} 1
llm_request_duration_seconds_count{model="gpt-5",provider="openai"} 1`)
	f("llmusage_metrics_models", "llmusage_metrics_models 2")
	f("llmusage_metrics_models_overflow_total", "llmusage_metrics_models_overflow_total 5")
}

// TestEstimates checks the limiter's estimate counts as exported: one
// settled, one expired, one dropped past the bound, one pending.
func TestEstimates(t *testing.T) {
	clk := clock.NewManual(testNow)
	l, err := limiter.New([]limiter.Rule{{Window: limiter.Day, Unit: limiter.Tokens, Limit: 10_000}},
		limiter.Options{Clock: clk, PendingTTL: time.Minute, MaxPending: 1})
	if err != nil {
		t.Fatal(err)
	}
	e := New(Options{Clock: clk, Limiter: l})
	check := func(id string) {
		t.Helper()
		if d, err := l.Check(limiter.Request{UserID: "u", Tokens: 100, RequestID: id}); err != nil || !d.Allowed {
			t.Fatalf("check %s: %+v, %v", id, d, err)
		}
	}
	check("settled")
	l.Record(limiter.Usage{UserID: "u", Tokens: 90, RequestID: "settled"})
	check("expires")
	clk.Advance(2 * time.Minute)
	l.Sweep()
	check("pending")
	check("dropped")
	want := `
# HELP llmusage_limiter_estimates Token estimates of allowed checks waiting for the record with the same request_id.
# TYPE llmusage_limiter_estimates gauge
llmusage_limiter_estimates 1
# HELP llmusage_limiter_estimates_dropped_total Estimates not remembered because the bound on pending ones was reached; their records are charged in full.
# TYPE llmusage_limiter_estimates_dropped_total counter
llmusage_limiter_estimates_dropped_total 1
# HELP llmusage_limiter_estimates_expired_total Estimates forgotten without their record within the pending TTL: calls not made, or records without the check's request_id, charged twice.
# TYPE llmusage_limiter_estimates_expired_total counter
llmusage_limiter_estimates_expired_total 1
`
	if err := testutil.GatherAndCompare(e.Registry(), strings.NewReader(want),
		"llmusage_limiter_estimates", "llmusage_limiter_estimates_expired_total", "llmusage_limiter_estimates_dropped_total"); err != nil {
		t.Fatal(err)
	}
}

func TestQuotaGauges(t *testing.T) {
	clk := clock.NewManual(testNow)
	l, err := limiter.New([]limiter.Rule{
		{Window: limiter.Minute, Unit: limiter.Requests, Limit: 3},
		{Provider: "openai", Window: limiter.Day, Unit: limiter.Tokens, Limit: 1000},
		{Window: limiter.Month, Unit: limiter.USD, Limit: 50 * 1e9},
		{Provider: "openai", Window: limiter.Minute, Unit: limiter.Requests, Limit: 30, Per: limiter.PerAll},
		{TeamID: "search", Window: limiter.Month, Unit: limiter.USD, Limit: 1000 * 1e9, Per: limiter.PerTeam},
	}, limiter.Options{Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	e := New(Options{Clock: clk, Limiter: l})
	l.Record(limiter.Usage{UserID: "u", TeamID: "search", Provider: "openai", Model: "gpt-4", Tokens: 250, Cost: 12_345_000_000, HasCost: true, Timestamp: testNow})
	// A team pool is exported once its team has usage series (the team
	// guard caps them as the user guard caps users).
	if out := scrape(t, e); strings.Contains(out, `per="team",`) {
		t.Fatalf("a team pool exported before its team was observed:\n%s", grep(out, "llm_quota_limit"))
	}
	r := rec("u", "openai", "gpt-4", 200, 50)
	r.TeamID = "search"
	e.ObserveRecords([]record.Record{r})
	// A user over the cap, or never observed, gets no quota series; the
	// pools it touched do, with an empty user.
	l.Record(limiter.Usage{UserID: "ghost", Provider: "openai", Model: "gpt-4", Tokens: 1})

	want := `
# HELP llm_quota_limit Capacity of the token bucket for a limit type and unit (requests or tokens), or the budget in US dollars (unit usd, a calendar day, week or month), of a user (per="user") or of a pool shared by a team's users (per="team") or by every call of its scope (per="all"), whose user is empty; provider, model and team are set for scoped rules.
# TYPE llm_quota_limit gauge
llm_quota_limit{limit_type="day",model="",per="user",provider="openai",team="",unit="tokens",user="u"} 1000
llm_quota_limit{limit_type="minute",model="",per="all",provider="openai",team="",unit="requests",user=""} 30
llm_quota_limit{limit_type="minute",model="",per="user",provider="",team="",unit="requests",user="u"} 3
llm_quota_limit{limit_type="month",model="",per="team",provider="",team="search",unit="usd",user=""} 1000
llm_quota_limit{limit_type="month",model="",per="user",provider="",team="",unit="usd",user="u"} 50
# HELP llm_quota_remaining Whole units left in the token bucket now, or dollars left in the budget's period, of a user or a pool (see llm_quota_limit); 0 while the bucket is in debt or the budget overspent.
# TYPE llm_quota_remaining gauge
llm_quota_remaining{limit_type="day",model="",per="user",provider="openai",team="",unit="tokens",user="u"} 750
llm_quota_remaining{limit_type="minute",model="",per="all",provider="openai",team="",unit="requests",user=""} 28
llm_quota_remaining{limit_type="minute",model="",per="user",provider="",team="",unit="requests",user="u"} 2
llm_quota_remaining{limit_type="month",model="",per="team",provider="",team="search",unit="usd",user=""} 987.655
llm_quota_remaining{limit_type="month",model="",per="user",provider="",team="",unit="usd",user="u"} 37.655
`
	if err := testutil.GatherAndCompare(e.Registry(), strings.NewReader(want), "llm_quota_limit", "llm_quota_remaining"); err != nil {
		t.Fatal(err)
	}
}

func TestNoUserLabel(t *testing.T) {
	l, _ := limiter.New([]limiter.Rule{{Window: limiter.Minute, Unit: limiter.Requests, Limit: 3}}, limiter.Options{})
	e := New(Options{NoUserLabel: true, Limiter: l})
	l.Record(limiter.Usage{UserID: "u", Model: "m"})
	e.ObserveRecords([]record.Record{rec("u", "openai", "gpt-4", 1, 2), rec("v", "openai", "gpt-4", 1, 2)})
	e.ObserveCheck("u", false)
	out := scrape(t, e)
	if strings.Contains(grep(out, "llm_"), "user=") || strings.Contains(out, "llm_quota_") {
		t.Fatalf("user label or quota gauges present with NoUserLabel:\n%s", grep(out, "llm_"))
	}
	if !strings.Contains(out, `llm_requests_total{model="gpt-4",provider="openai",status="success",team=""} 2`) ||
		!strings.Contains(out, `llm_rate_limit_checks_total{decision="limited"} 1`) {
		t.Fatalf("aggregated series missing:\n%s", grep(out, "llm_"))
	}
}

// TestHostileLabelValues checks that any user_id survives the exposition:
// the text parser reads back exactly the value that went in.
func TestHostileLabelValues(t *testing.T) {
	e := New(Options{})
	hostile := []string{`a"b`, `back\slash`, "new\nline", "tab\there", "{}=,", "\xff\xfe invalid utf8", "ünïcödé ✓", `__other__`}
	var recs []record.Record
	for _, u := range hostile {
		recs = append(recs, rec(u, "openai", `gpt-4"x`, 1, 1))
	}
	e.ObserveRecords(recs)
	if problems, err := testutil.GatherAndLint(e.Registry()); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	families, err := p.TextToMetricFamilies(strings.NewReader(scrape(t, e)))
	if err != nil {
		t.Fatalf("exposition does not parse: %s", err)
	}
	users := map[string]bool{}
	for _, m := range families["llm_requests_total"].GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == "user" {
				users[lp.GetValue()] = true
			}
		}
	}
	for _, u := range hostile {
		if !users[labelValue(u)] {
			t.Fatalf("user %q not read back; got %v", u, users)
		}
	}
}

func TestPush(t *testing.T) {
	bodies := make(chan string, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			t.Errorf("push method %s, want POST", r.Method)
		}
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			gz, err := gzipReader(r.Body)
			if err != nil {
				t.Errorf("gzip: %s", err)
				return
			}
			body = gz
		}
		b, _ := io.ReadAll(body)
		select {
		case bodies <- string(b):
		default:
		}
	}))
	defer srv.Close()
	e := New(Options{})
	e.ObserveRecords([]record.Record{rec("pushed-user", "openai", "gpt-4", 3, 4)})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := e.StartPush(ctx, srv.URL+"/api/v1/import/prometheus", 50*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	select {
	case body := <-bodies:
		if !strings.Contains(body, `llm_tokens_total{model="gpt-4",provider="openai",team="",token_type="completion",user="pushed-user"} 4`) {
			t.Fatalf("pushed body lacks the token series:\n%s", grep(body, "llm_"))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("nothing pushed")
	}
	if err := e.StartPush(ctx, "::not a url", time.Second, slog.Default()); err == nil {
		t.Fatal("a bad push URL was accepted")
	}
}

func scrape(t *testing.T, e *Exporter) string {
	t.Helper()
	var buf bytes.Buffer
	e.WriteText(&buf)
	return buf.String()
}

func grep(s, prefix string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(line, prefix) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

func gzipReader(r io.Reader) (io.Reader, error) { return gzip.NewReader(r) }

// TestSweepDeletesEverySeries checks that an expired user leaves no
// series behind, whichever it had, and that other users keep theirs.
func TestSweepDeletesEverySeries(t *testing.T) {
	clk := clock.NewManual(testNow)
	e := New(Options{Clock: clk, UserTTL: time.Hour})
	observe := func(user string) {
		r := rec(user, "openai", "gpt-4", 10, 5)
		r.CachedTokens, r.ReasoningTokens, r.Latency, r.HasLatency = 2, 1, time.Second, true
		failed := rec(user, "anthropic", "claude", 1, 0)
		failed.Status = record.StatusError
		e.ObserveRecords([]record.Record{r, failed})
		e.ObserveCheck(user, true)
		e.ObserveCheck(user, false)
	}
	count := func(user string) int {
		t.Helper()
		mfs, err := e.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "user" && l.GetValue() == user {
						n++
					}
				}
			}
		}
		return n
	}
	observe("old")
	clk.Advance(50 * time.Minute)
	observe("new")
	// requests: 2; tokens: 4, and prompt and completion of the failed call; checks: 2.
	if got := count("old"); got != 10 {
		t.Fatalf("%d series for user old before the sweep, want 10", got)
	}
	clk.Advance(20 * time.Minute)
	if n := e.Sweep(); n != 1 {
		t.Fatalf("Sweep forgot %d users, want 1", n)
	}
	if got := count("old"); got != 0 {
		t.Fatalf("%d series left for the expired user", got)
	}
	if got := count("new"); got != 10 {
		t.Fatalf("%d series for user new after the sweep, want 10", got)
	}
}

func TestCostMetrics(t *testing.T) {
	e := New(Options{Clock: clock.NewManual(testNow)})
	priced := func(r record.Record, cost usd.Amount) record.Record {
		r.Cost, r.HasCost = cost, true
		return r
	}
	e.ObserveRecords([]record.Record{
		priced(rec("u1", "groq", "llama-3.1-70b-versatile", 100, 50), 98_500),
		priced(rec("u1", "groq", "llama-3.1-70b-versatile", 100, 50), 98_500),
		priced(rec("u2", "openai", "gpt-4", 10, 5), 600_000),
		priced(rec("u2", "openai", "gpt-4o", 0, 0), 0), // a known cost of nothing
		rec("u2", "unknown", "my-finetune", 5, 5),
		rec("u1", "unknown", "other", 5, 5),
		rec("u1", "vllm", "llama-local", 5, 5),
	})
	want := `
# HELP llm_cost_usd_total Cost of LLM API calls in US dollars, by user, team (empty for none), provider and model: the record's cost_usd, else priced at intake. Calls of models without a price are not in it (see llmusage_records_unpriced_total).
# TYPE llm_cost_usd_total counter
llm_cost_usd_total{model="gpt-4",provider="openai",team="",user="u2"} 0.0006
llm_cost_usd_total{model="gpt-4o",provider="openai",team="",user="u2"} 0
llm_cost_usd_total{model="llama-3.1-70b-versatile",provider="groq",team="",user="u1"} 0.000197
# HELP llmusage_records_unpriced_total Call records of a model without a price, stored with a null cost, by provider; GET /v1/prices?unpriced=1 names the models.
# TYPE llmusage_records_unpriced_total counter
llmusage_records_unpriced_total{provider="unknown"} 2
llmusage_records_unpriced_total{provider="vllm"} 1
`
	if err := testutil.GatherAndCompare(e.Registry(), strings.NewReader(want), "llm_cost_usd_total", "llmusage_records_unpriced_total"); err != nil {
		t.Fatal(err)
	}
	// A user's cost series go with the user.
	e.usage.deleteUser("u2")
	if n := testutil.CollectAndCount(e.usage.cost); n != 1 {
		t.Fatalf("%d cost series after u2 was forgotten, want 1", n)
	}
}
