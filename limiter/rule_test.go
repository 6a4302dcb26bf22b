package limiter

import (
	"fmt"
	"strings"
	"testing"
)

func TestParseWindow(t *testing.T) {
	f := func(s string, wExpected Window) {
		t.Helper()
		w, err := ParseWindow(s)
		if err != nil {
			t.Fatalf("unexpected error in ParseWindow(%q): %s", s, err)
		}
		if w != wExpected {
			t.Fatalf("unexpected ParseWindow(%q); got %d; want %d", s, w, wExpected)
		}
		if w.String() != s {
			t.Fatalf("unexpected String() for %q; got %q", s, w.String())
		}
	}

	f("second", Second)
	f("minute", Minute)
	f("hour", Hour)
	f("day", Day)
}

func TestParseWindowFailure(t *testing.T) {
	f := func(s string) {
		t.Helper()
		w, err := ParseWindow(s)
		if err == nil {
			t.Fatalf("expecting non-nil error for ParseWindow(%q); got window %d", s, w)
		}
		if !strings.Contains(err.Error(), "second, minute, hour, day") {
			t.Fatalf("error for ParseWindow(%q) must list the valid values; got %q", s, err)
		}
		if !strings.Contains(err.Error(), "\""+s+"\"") {
			t.Fatalf("error for ParseWindow(%q) must quote the input; got %q", s, err)
		}
	}

	f("")
	f("minutes")
	f("Minute")
	f("MINUTE")
	f(" minute")
	f("weeks")
	f("Month")
	f("1m")
}

func TestWindowDuration(t *testing.T) {
	f := func(w Window, name string, secondsExpected int64) {
		t.Helper()
		if got := w.String(); got != name {
			t.Fatalf("unexpected name for window %d; got %q; want %q", w, got, name)
		}
		if got := int64(w.Duration().Seconds()); got != secondsExpected {
			t.Fatalf("unexpected duration for %s; got %ds; want %ds", w, got, secondsExpected)
		}
	}

	f(Second, "second", 1)
	f(Minute, "minute", 60)
	f(Hour, "hour", 3600)
	f(Day, "day", 86400)
	f(Week, "week", 7*86400)

	if len(Windows) != 6 || Windows[0] != Second || Windows[1] != Minute || Windows[2] != Hour || Windows[3] != Day || Windows[4] != Week || Windows[5] != Month {
		t.Fatalf("unexpected Windows: %v", Windows)
	}
	if Requests.String() != "requests" || Tokens.String() != "tokens" || USD.String() != "usd" {
		t.Fatalf("unexpected unit names: %q, %q, %q", Requests, Tokens, USD)
	}
}

func TestRuleValidate(t *testing.T) {
	f := func(r Rule, errExpected string) {
		t.Helper()
		err := r.Validate()
		if errExpected == "" {
			if err != nil {
				t.Fatalf("unexpected error for %+v: %s", r, err)
			}
			return
		}
		if err == nil {
			t.Fatalf("expecting error %q for %+v; got nil", errExpected, r)
		}
		if err.Error() != errExpected {
			t.Fatalf("unexpected error for %+v;\ngot\n%q\nwant\n%q", r, err, errExpected)
		}
	}

	// valid rules
	f(Rule{Window: Minute, Unit: Requests, Limit: 1}, "")
	f(Rule{Window: Day, Unit: Tokens, Limit: MaxLimit}, "")
	f(Rule{UserID: "alice", Provider: "openai", Model: "gpt-4*", Window: Second, Unit: Tokens, Limit: 1000}, "")

	// limit out of range
	f(Rule{Window: Minute, Unit: Requests, Limit: 0}, "requests must be between 1 and 1125899906842624, got 0")
	f(Rule{Window: Minute, Unit: Requests, Limit: -1}, "requests must be between 1 and 1125899906842624, got -1")
	f(Rule{Window: Hour, Unit: Tokens, Limit: -1 << 62}, "tokens must be between 1 and 1125899906842624, got -4611686018427387904")
	f(Rule{Window: Day, Unit: Tokens, Limit: MaxLimit + 1}, "tokens must be between 1 and 1125899906842624, got 1125899906842625")

	// invalid window and unit
	f(Rule{Window: numWindows, Unit: Requests, Limit: 1}, "invalid limit_type 7")
	f(Rule{Window: 255, Unit: Requests, Limit: 1}, "invalid limit_type 255")
	f(Rule{Window: Minute, Unit: numUnits, Limit: 1}, "invalid unit 4")

	// budgets: calendar windows only, and only for usd
	f(Rule{Window: Day, Unit: USD, Limit: 1}, "")
	f(Rule{Window: Week, Unit: USD, Limit: 50_000_000_000}, "")
	f(Rule{Window: Month, Unit: USD, Limit: MaxLimit}, "")
	f(Rule{Window: Hour, Unit: USD, Limit: 1}, "a usd budget counts a calendar day, week or month, not a hour")
	f(Rule{Window: Month, Unit: Tokens, Limit: 1}, "limit_type month is a calendar window, for usd budgets only; limit tokens per day instead")
	f(Rule{Window: Week, Unit: Requests, Limit: 1}, "limit_type week is a calendar window, for usd budgets only; limit requests per day instead")
	f(Rule{Window: Month, Unit: USD, Limit: 0}, "usd must be between 0.000000001 and 1125899 (dollars), got 0 nano-USD")
}

func TestNewInvalidRule(t *testing.T) {
	f := func(rules []Rule, errExpected string) {
		t.Helper()
		l, err := New(rules, Options{Clock: newManualClock()})
		if err == nil {
			t.Fatalf("expecting non-nil error; got limiter with rules %+v", l.Rules())
		}
		if err.Error() != errExpected {
			t.Fatalf("unexpected error;\ngot\n%q\nwant\n%q", err, errExpected)
		}
	}

	f([]Rule{
		{Window: Minute, Unit: Requests, Limit: 10, Source: "limits.yaml:3"},
		{Window: Day, Unit: Tokens, Limit: 0, Source: "limits.yaml:7"},
	}, "limits.yaml:7: tokens must be between 1 and 1125899906842624, got 0")
	f([]Rule{
		{Window: Minute, Unit: Requests, Limit: -5, Source: "limits.yaml:3"},
	}, "limits.yaml:3: requests must be between 1 and 1125899906842624, got -5")
}

func TestNewDuplicateScope(t *testing.T) {
	f := func(rules []Rule, sources ...string) {
		t.Helper()
		l, err := New(rules, Options{Clock: newManualClock()})
		if err == nil {
			t.Fatalf("expecting non-nil error for duplicate scope; got limiter with rules %+v", l.Rules())
		}
		for _, src := range sources {
			if !strings.Contains(err.Error(), src) {
				t.Fatalf("error must name %q; got %q", src, err)
			}
		}
	}

	// unscoped
	f([]Rule{
		{Window: Minute, Unit: Requests, Limit: 10, Source: "limits.yaml:3"},
		{Window: Minute, Unit: Requests, Limit: 20, Source: "limits.yaml:9"},
	}, "limits.yaml:3", "limits.yaml:9", "minute requests")

	// fully scoped, with unrelated rules around
	f([]Rule{
		{UserID: "alice", Provider: "openai", Model: "gpt-4*", Window: Day, Unit: Tokens, Limit: 10, Source: "a.yaml:1"},
		{UserID: "alice", Provider: "openai", Model: "gpt-4*", Window: Hour, Unit: Tokens, Limit: 10, Source: "a.yaml:2"},
		{UserID: "bob", Provider: "openai", Model: "gpt-4*", Window: Day, Unit: Tokens, Limit: 10, Source: "a.yaml:3"},
		{UserID: "alice", Provider: "openai", Model: "gpt-4*", Window: Day, Unit: Tokens, Limit: 99, Source: "a.yaml:4"},
	}, "a.yaml:1", "a.yaml:4", "day tokens")

	// the error names the later rule first
	l, err := New([]Rule{
		{Provider: "openai", Window: Second, Unit: Requests, Limit: 1, Source: "first"},
		{Provider: "openai", Window: Second, Unit: Requests, Limit: 1, Source: "second"},
	}, Options{Clock: newManualClock()})
	if err == nil {
		t.Fatalf("expecting error; got limiter %v", l)
	}
	if !strings.HasPrefix(err.Error(), "second: ") || !strings.HasSuffix(err.Error(), "already defined at first") {
		t.Fatalf("unexpected error: %q", err)
	}
}

func TestNewDistinctScopes(t *testing.T) {
	// Rules that differ in any one of user, provider, model, window or unit
	// are all accepted.
	rules := []Rule{
		{Window: Minute, Unit: Requests, Limit: 1},
		{Window: Minute, Unit: Tokens, Limit: 1},
		{Window: Hour, Unit: Requests, Limit: 1},
		{UserID: "alice", Window: Minute, Unit: Requests, Limit: 1},
		{Provider: "openai", Window: Minute, Unit: Requests, Limit: 1},
		{Model: "gpt-4*", Window: Minute, Unit: Requests, Limit: 1},
		{Model: "gpt-4o*", Window: Minute, Unit: Requests, Limit: 1},
	}
	l, err := New(rules, Options{Clock: newManualClock()})
	if err != nil {
		t.Fatalf("unexpected error: %s", err)
	}
	got := l.Rules()
	if len(got) != len(rules) {
		t.Fatalf("unexpected number of rules; got %d; want %d", len(got), len(rules))
	}
	for i := range rules {
		if got[i] != rules[i] {
			t.Fatalf("unexpected rule #%d; got %+v; want %+v", i, got[i], rules[i])
		}
	}
	// Rules returns a copy.
	got[0].Limit = 1000
	if l.Rules()[0].Limit != 1 {
		t.Fatalf("Rules must return a copy")
	}
	// So does New: changing the caller's slice changes nothing.
	rules[0].Limit = 1000
	if l.Rules()[0].Limit != 1 {
		t.Fatalf("New must copy the rules")
	}
}

func TestPrecedence(t *testing.T) {
	// Every rule has a distinct limit, which identifies it. The list is
	// written least specific first so that order cannot explain the result.
	rules := []Rule{
		{Window: Minute, Unit: Requests, Limit: 1},
		{Model: "gpt-4*", Window: Minute, Unit: Requests, Limit: 2},
		{Provider: "openai", Window: Minute, Unit: Requests, Limit: 3},
		{Provider: "openai", Model: "gpt-4*", Window: Minute, Unit: Requests, Limit: 4},
		{UserID: "alice", Window: Minute, Unit: Requests, Limit: 5},
		{UserID: "alice", Model: "gpt-4*", Window: Minute, Unit: Requests, Limit: 6},
		{UserID: "alice", Provider: "openai", Window: Minute, Unit: Requests, Limit: 7},
		{UserID: "alice", Provider: "openai", Model: "gpt-4*", Window: Minute, Unit: Requests, Limit: 8},
	}
	l := mustNew(t, rules, Options{Clock: newManualClock()})

	f := func(user, provider, model string, limitExpected int64) {
		t.Helper()
		ss := mustLimits(t, l, user, provider, model)
		if len(ss) != 1 {
			t.Fatalf("expecting exactly one applicable bucket for (%q, %q, %q); got %+v", user, provider, model, ss)
		}
		if ss[0].Limit != limitExpected {
			t.Fatalf("unexpected rule for (%q, %q, %q); got limit %d; want %d", user, provider, model, ss[0].Limit, limitExpected)
		}
	}

	f("alice", "openai", "gpt-4o", 8)  // user+provider+model
	f("alice", "openai", "gpt-3.5", 7) // user+provider
	f("alice", "azure", "gpt-4o", 6)   // user+model
	f("alice", "azure", "gpt-3.5", 5)  // user
	f("alice", "", "", 5)
	f("bob", "openai", "gpt-4o", 4)  // provider+model
	f("bob", "openai", "gpt-3.5", 3) // provider
	f("bob", "azure", "gpt-4o", 2)   // model
	f("bob", "azure", "gpt-3.5", 1)  // unscoped
	f("bob", "", "", 1)
	f("bob", "", "gpt-4", 2)
	f("bob", "openai", "", 3)

	// Without the combined rules: provider outranks model, and
	// user+provider outranks user+model, though written later.
	l = mustNew(t, []Rule{
		{Model: "gpt-4*", Window: Minute, Unit: Requests, Limit: 2},
		{Provider: "openai", Window: Minute, Unit: Requests, Limit: 3},
		{UserID: "alice", Model: "gpt-4*", Window: Minute, Unit: Requests, Limit: 6},
		{UserID: "alice", Provider: "openai", Window: Minute, Unit: Requests, Limit: 7},
	}, Options{Clock: newManualClock()})
	f("alice", "openai", "gpt-4o", 7)
	f("alice", "azure", "gpt-4o", 6)
	f("bob", "openai", "gpt-4o", 3)
	f("bob", "azure", "gpt-4o", 2)
	// A user rule outranks a provider+model rule.
	l = mustNew(t, []Rule{
		{Provider: "openai", Model: "gpt-4*", Window: Minute, Unit: Requests, Limit: 4},
		{UserID: "alice", Window: Minute, Unit: Requests, Limit: 5},
	}, Options{Clock: newManualClock()})
	f("alice", "openai", "gpt-4o", 5)
	f("bob", "openai", "gpt-4o", 4)
}

func TestPrecedenceEqualSpecificityMany(t *testing.T) {
	// Many equally specific rules, interleaved with rules of other
	// specificity so that sorting has to move them: among those that
	// match, the first written wins.
	var rules []Rule
	prefix := "gpt-4o-mini-2024-07-18"
	for i := len(prefix); i >= 1; i-- {
		rules = append(rules,
			Rule{Model: prefix[:i] + "*", Window: Minute, Unit: Tokens, Limit: int64(100 + i)},
			Rule{Provider: fmt.Sprintf("p%d", i), Window: Minute, Unit: Tokens, Limit: int64(200 + i)},
			Rule{UserID: fmt.Sprintf("u%d", i), Window: Minute, Unit: Tokens, Limit: int64(300 + i)},
		)
	}
	rules = append(rules, Rule{Window: Minute, Unit: Tokens, Limit: 1})
	l := mustNew(t, rules, Options{Clock: newManualClock()})
	f := func(model string, limitExpected int64) {
		t.Helper()
		ss := mustLimits(t, l, "alice", "openai", model)
		if len(ss) != 1 || ss[0].Limit != limitExpected {
			t.Fatalf("unexpected rule for model %q; got %s; want limit %d", model, formatStatuses(ss), limitExpected)
		}
	}
	f(prefix, int64(100+len(prefix)))
	f("gpt-4o-mini", 111)
	f("gpt-4o", 106)
	f("gpt-3.5", 104)
	f("x", 1)
	f("claude", 1)
}

func TestPrecedencePerSlot(t *testing.T) {
	// The most specific rule is chosen separately for every (window, unit).
	rules := []Rule{
		{Window: Minute, Unit: Requests, Limit: 10},
		{UserID: "alice", Window: Minute, Unit: Requests, Limit: 11},
		{Provider: "openai", Window: Day, Unit: Requests, Limit: 20},
		{Window: Day, Unit: Requests, Limit: 21},
		{Model: "gpt-4*", Window: Minute, Unit: Tokens, Limit: 30},
		{Window: Second, Unit: Tokens, Limit: 40},
	}
	l := mustNew(t, rules, Options{Clock: newManualClock()})

	f := func(user, provider, model string, limitsExpected ...int64) {
		t.Helper()
		ss := mustLimits(t, l, user, provider, model)
		var limits []int64
		for _, s := range ss {
			limits = append(limits, s.Limit)
		}
		if !equalInts(limits, limitsExpected) {
			t.Fatalf("unexpected applicable limits for (%q, %q, %q); got %v; want %v", user, provider, model, limits, limitsExpected)
		}
	}

	// Order: window shortest first, then requests before tokens.
	f("alice", "openai", "gpt-4o", 40, 11, 30, 20)
	f("bob", "openai", "gpt-4o", 40, 10, 30, 20)
	f("bob", "azure", "gpt-4o", 40, 10, 30, 21)
	f("bob", "azure", "gpt-3.5", 40, 10, 21)
	f("alice", "anthropic", "claude", 40, 11, 21)
}

func TestPrecedenceEqualSpecificity(t *testing.T) {
	f := func(rules []Rule, model string, limitExpected int64) {
		t.Helper()
		l := mustNew(t, rules, Options{Clock: newManualClock()})
		ss := mustLimits(t, l, "alice", "openai", model)
		if len(ss) != 1 {
			t.Fatalf("expecting one applicable bucket for model %q; got %+v", model, ss)
		}
		if ss[0].Limit != limitExpected {
			t.Fatalf("unexpected rule for model %q; got limit %d; want %d", model, ss[0].Limit, limitExpected)
		}
	}

	miniFirst := []Rule{
		{Model: "*mini*", Window: Minute, Unit: Tokens, Limit: 30},
		{Model: "gpt-4*", Window: Minute, Unit: Tokens, Limit: 10},
		{Model: "gpt-4o*", Window: Minute, Unit: Tokens, Limit: 20},
	}
	f(miniFirst, "gpt-4o-mini", 30)
	f(miniFirst, "gpt-4o", 10)
	f(miniFirst, "gpt-4.1", 10)
	f(miniFirst, "o3-mini", 30)

	gptFirst := []Rule{
		{Model: "gpt-4*", Window: Minute, Unit: Tokens, Limit: 10},
		{Model: "gpt-4o*", Window: Minute, Unit: Tokens, Limit: 20},
		{Model: "*mini*", Window: Minute, Unit: Tokens, Limit: 30},
	}
	f(gptFirst, "gpt-4o-mini", 10)
	f(gptFirst, "gpt-4o", 10)
	f(gptFirst, "o3-mini", 30)

	gpt4oFirst := []Rule{
		{Model: "gpt-4o*", Window: Minute, Unit: Tokens, Limit: 20},
		{Model: "*mini*", Window: Minute, Unit: Tokens, Limit: 30},
		{Model: "gpt-4*", Window: Minute, Unit: Tokens, Limit: 10},
	}
	f(gpt4oFirst, "gpt-4o-mini", 20)
	f(gpt4oFirst, "gpt-4.1-mini", 30)
	f(gpt4oFirst, "gpt-4.1", 10)

	// A more specific rule written later still outranks earlier ones.
	f([]Rule{
		{Model: "*", Window: Minute, Unit: Tokens, Limit: 1},
		{Provider: "openai", Model: "*", Window: Minute, Unit: Tokens, Limit: 2},
	}, "gpt-4o", 2)

	// Equally specific user-scoped rules: first written wins too.
	f([]Rule{
		{UserID: "alice", Model: "*4o*", Window: Minute, Unit: Tokens, Limit: 7},
		{UserID: "alice", Model: "gpt-*", Window: Minute, Unit: Tokens, Limit: 8},
	}, "gpt-4o", 7)
	f([]Rule{
		{UserID: "alice", Model: "gpt-*", Window: Minute, Unit: Tokens, Limit: 8},
		{UserID: "alice", Model: "*4o*", Window: Minute, Unit: Tokens, Limit: 7},
	}, "gpt-4o", 8)
}

func TestSetRulesInvalidKeepsOldRules(t *testing.T) {
	l := mustNew(t, []Rule{{Window: Minute, Unit: Requests, Limit: 3, Source: "old"}}, Options{Clock: newManualClock()})
	err := l.SetRules([]Rule{
		{Window: Minute, Unit: Requests, Limit: 5, Source: "new:1"},
		{Window: Minute, Unit: Requests, Limit: 6, Source: "new:2"},
	})
	if err == nil {
		t.Fatalf("expecting error for duplicate scope")
	}
	if !strings.Contains(err.Error(), "new:1") || !strings.Contains(err.Error(), "new:2") {
		t.Fatalf("error must name both sources; got %q", err)
	}
	rules := l.Rules()
	if len(rules) != 1 || rules[0].Source != "old" || rules[0].Limit != 3 {
		t.Fatalf("a failed SetRules must keep the old rules; got %+v", rules)
	}
	if err := l.SetRules([]Rule{{Window: Minute, Unit: Requests, Limit: 0, Source: "bad"}}); err == nil {
		t.Fatalf("expecting error for limit 0")
	}
	if rules := l.Rules(); len(rules) != 1 || rules[0].Source != "old" {
		t.Fatalf("a failed SetRules must keep the old rules; got %+v", rules)
	}
}

func equalInts(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
