package limiter

import (
	"fmt"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/clock"
)

// The oracle of a concurrency limit of N: a check is allowed exactly
// while fewer than N allowed checks have no record yet (nor expired).

func concurrencyLimiter(t *testing.T, opts Options, rules ...Rule) (*Limiter, *clock.Manual) {
	t.Helper()
	clk := newManualClock()
	opts.Clock = clk
	l, err := New(rules, opts)
	if err != nil {
		t.Fatal(err)
	}
	return l, clk
}

func concurrent(n int64) Rule {
	return Rule{Window: InFlight, Unit: Concurrent, Limit: n, Source: "test"}
}

func TestConcurrencyHoldsSlotsUntilRecords(t *testing.T) {
	l, clk := concurrencyLimiter(t, Options{}, concurrent(2), Rule{Window: Minute, Unit: Requests, Limit: 100})
	check := func(id string) Decision {
		t.Helper()
		d, err := l.Check(Request{UserID: "u", RequestID: id})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if !check("a").Allowed || !check("b").Allowed {
		t.Fatal("the first two calls in flight are refused")
	}
	d := check("c")
	if d.Allowed {
		t.Fatal("a third call in flight is allowed under concurrent: 2")
	}
	if d.RetryAfter != ConcurrencyRetry {
		t.Fatalf("RetryAfter = %v, want %v (a slot comes back when a call ends)", d.RetryAfter, ConcurrencyRetry)
	}
	if s := d.Limits[d.Tightest]; s.Unit != Concurrent || s.Window != InFlight || s.Remaining != 0 || s.Limit != 2 {
		t.Fatalf("tightest = %+v, want the concurrency limit with 0 left", s)
	}
	// A record without a check, or of another user's request_id, ends
	// none of them.
	for _, u := range []Usage{{UserID: "u", Tokens: 5}, {UserID: "v", RequestID: "a"}, {UserID: "u", RequestID: "zzz"}} {
		if err := l.Record(u); err != nil {
			t.Fatal(err)
		}
	}
	if check("c").Allowed {
		t.Fatal("a record that ended no call of u gave a slot back")
	}
	if err := l.Record(Usage{UserID: "u", RequestID: "a", Tokens: 10}); err != nil {
		t.Fatal(err)
	}
	if !check("c").Allowed {
		t.Fatal("the record of a call did not give its slot back")
	}
	// The record sent again gives nothing more back.
	if err := l.Record(Usage{UserID: "u", RequestID: "a", Tokens: 10}); err != nil {
		t.Fatal(err)
	}
	if check("d").Allowed {
		t.Fatal("a record sent twice gave two slots back")
	}
	// The requests bucket counted the allowed checks a, b and c, and the
	// three records that followed no check of theirs (u's without a
	// request_id, zzz, and a sent again).
	st, err := l.Limits("u", "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Unit == Requests && s.Remaining != 94 {
			t.Fatalf("requests remaining %d, want 94", s.Remaining)
		}
		if s.Unit == Concurrent && s.Remaining != 0 {
			t.Fatalf("concurrent remaining %d, want 0 (b and c in flight)", s.Remaining)
		}
	}
	// Slots whose record never comes come back after the timeout, not before.
	clk.Advance(DefaultConcurrencyTimeout - time.Second)
	l.Sweep()
	if check("e").Allowed {
		t.Fatal("a slot came back before --concurrency-timeout")
	}
	clk.Advance(2 * time.Second)
	l.Sweep()
	if !check("e").Allowed || !check("f").Allowed || check("g").Allowed {
		t.Fatal("after the timeout both slots should be back, and only them")
	}
}

func TestConcurrencyScopesAndPools(t *testing.T) {
	l, _ := concurrencyLimiter(t, Options{ConcurrencyTimeout: time.Minute},
		Rule{Window: InFlight, Unit: Concurrent, Limit: 1, Provider: "groq"},
		Rule{Window: InFlight, Unit: Concurrent, Limit: 3, Per: PerAll},
	)
	allowed := func(user, provider, id string) bool {
		t.Helper()
		d, err := l.Check(Request{UserID: user, Provider: provider, RequestID: id})
		if err != nil {
			t.Fatal(err)
		}
		return d.Allowed
	}
	if !allowed("u", "groq", "1") || allowed("u", "groq", "2") {
		t.Fatal("u's groq calls: want one in flight")
	}
	if !allowed("v", "groq", "1") {
		t.Fatal("v has a slot of its own")
	}
	if !allowed("u", "openai", "3") {
		t.Fatal("u's openai calls are not limited per user")
	}
	// Three in flight fill the shared pool: a user's own free slot does
	// not help, and the refusal takes nothing from the user's bucket.
	if allowed("w", "groq", "1") {
		t.Fatal("a fourth call past the pool's 3 is allowed")
	}
	if err := l.Record(Usage{UserID: "v", Provider: "groq", RequestID: "1"}); err != nil {
		t.Fatal(err)
	}
	if !allowed("w", "groq", "1") {
		t.Fatal("w's call refused after a pool slot came back and its own bucket held none")
	}
}

func TestConcurrencyRuleValidation(t *testing.T) {
	f := func(r Rule, want string) {
		t.Helper()
		err := r.Validate()
		if fmt.Sprint(err) != want {
			t.Fatalf("Validate(%+v) = %v, want %s", r, err, want)
		}
	}
	f(Rule{Window: InFlight, Unit: Concurrent, Limit: 5}, "<nil>")
	f(Rule{Window: InFlight, Unit: Concurrent, Limit: 0}, "concurrent must be between 1 and 100000, got 0")
	f(Rule{Window: Minute, Unit: Concurrent, Limit: 5}, "a concurrent limit has no limit_type, and limit_type minute counts no calls in flight")
	f(Rule{Window: InFlight, Unit: Requests, Limit: 5}, "a concurrent limit has no limit_type, and limit_type concurrent counts no calls in flight")
	if _, err := ParseWindow("concurrent"); err == nil {
		t.Fatal("ParseWindow accepts concurrent, which is no limit type")
	}
}
