package limiter

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/clock"
)

// newManualClock returns a clock at the limiter tests' fixed start.
func newManualClock() *clock.Manual {
	return clock.NewManual(time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC))
}

func mustNew(t testing.TB, rules []Rule, opts Options) *Limiter {
	t.Helper()
	l, err := New(rules, opts)
	if err != nil {
		t.Fatalf("unexpected error in New: %s", err)
	}
	return l
}

func newTestLimiter(t testing.TB, rules ...Rule) (*Limiter, *clock.Manual) {
	t.Helper()
	c := newManualClock()
	return mustNew(t, rules, Options{Clock: c}), c
}

func mustCheck(t testing.TB, l *Limiter, req Request) Decision {
	t.Helper()
	d, err := l.Check(req)
	if err != nil {
		t.Fatalf("unexpected error in Check(%+v): %s", req, err)
	}
	return d
}

func mustLimits(t testing.TB, l *Limiter, user, provider, model string) []Status {
	t.Helper()
	st, err := l.Limits(user, "", provider, model)
	if err != nil {
		t.Fatalf("unexpected error in Limits(%q, %q, %q): %s", user, provider, model, err)
	}
	return st
}

// st builds the expected Status of a bucket; resetIn is relative to now.
func st(now time.Time, w Window, u Unit, provider, model string, limit, remaining int64, resetIn time.Duration) Status {
	return Status{Window: w, Unit: u, Provider: provider, Model: model, Limit: limit, Remaining: remaining, ResetAt: now.Add(resetIn)}
}

func formatStatus(s Status) string {
	return fmt.Sprintf("{%s %s provider=%q model=%q limit=%d remaining=%d reset_at=%s}",
		s.Window, s.Unit, s.Provider, s.Model, s.Limit, s.Remaining, s.ResetAt.Format(time.RFC3339Nano))
}

func formatStatuses(ss []Status) string {
	var a []string
	for _, s := range ss {
		a = append(a, formatStatus(s))
	}
	return "[" + strings.Join(a, ", ") + "]"
}

func equalStatus(a, b Status) bool {
	return a.Window == b.Window && a.Unit == b.Unit && a.Provider == b.Provider && a.Model == b.Model &&
		a.Limit == b.Limit && a.Remaining == b.Remaining && a.ResetAt.Equal(b.ResetAt)
}

func sortStatuses(ss []Status) {
	sort.Slice(ss, func(i, j int) bool { return formatStatus(ss[i]) < formatStatus(ss[j]) })
}

func assertStatuses(t testing.TB, what string, got, want []Status) {
	t.Helper()
	if !checkStatuses(t, what, got, want) {
		t.FailNow()
	}
}

// checkStatuses reports a mismatch without stopping the test.
func checkStatuses(t testing.TB, what string, got, want []Status) bool {
	t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		ok = equalStatus(got[i], want[i])
	}
	if !ok {
		t.Errorf("unexpected %s;\ngot\n%s\nwant\n%s", what, formatStatuses(got), formatStatuses(want))
	}
	return ok
}

// assertDecision checks every field of a Decision.
func assertDecision(t testing.TB, d Decision, allowedExpected bool, retryAfterExpected time.Duration, limitsExpected ...Status) {
	t.Helper()
	if d.Allowed != allowedExpected {
		t.Fatalf("unexpected Allowed; got %v; want %v; limits: %s", d.Allowed, allowedExpected, formatStatuses(d.Limits))
	}
	if d.RetryAfter != retryAfterExpected {
		t.Fatalf("unexpected RetryAfter; got %s (%d); want %s (%d)", d.RetryAfter, int64(d.RetryAfter), retryAfterExpected, int64(retryAfterExpected))
	}
	assertStatuses(t, "Decision.Limits", d.Limits, limitsExpected)
}

func TestCheckRequestsPerMinute(t *testing.T) {
	l, c := newTestLimiter(t, Rule{Window: Minute, Unit: Requests, Limit: 3})
	t0 := c.Now()
	req := Request{UserID: "alice", Provider: "openai", Model: "gpt-4o"}

	f := func(allowedExpected bool, retryAfterExpected time.Duration, remainingExpected int64, resetInExpected time.Duration) {
		t.Helper()
		d := mustCheck(t, l, req)
		assertDecision(t, d, allowedExpected, retryAfterExpected,
			st(c.Now(), Minute, Requests, "", "", 3, remainingExpected, resetInExpected))
		// Limits agrees with the decision and charges nothing.
		for i := 0; i < 2; i++ {
			assertStatuses(t, "Limits", mustLimits(t, l, "alice", "openai", "gpt-4o"), d.Limits)
		}
	}

	// One request takes 60s/3 = 20s to refill.
	f(true, 0, 2, 20*time.Second)
	f(true, 0, 1, 40*time.Second)
	f(true, 0, 0, 60*time.Second)
	// Denied: one token is 20s away, and nothing was charged.
	f(false, 20*time.Second, 0, 60*time.Second)
	f(false, 20*time.Second, 0, 60*time.Second)

	c.Advance(10 * time.Second)
	// Half a token: still denied, 10s to go.
	f(false, 10*time.Second, 0, 50*time.Second)

	c.Advance(10 * time.Second)
	if !c.Now().Equal(t0.Add(20 * time.Second)) {
		t.Fatalf("clock drifted")
	}
	f(true, 0, 0, 60*time.Second)
	f(false, 20*time.Second, 0, 60*time.Second)

	// After a full window the bucket is full again, never more.
	c.Advance(time.Hour)
	assertStatuses(t, "Limits after an hour", mustLimits(t, l, "alice", "", ""), []Status{st(c.Now(), Minute, Requests, "", "", 3, 3, 0)})
	f(true, 0, 2, 20*time.Second)
	f(true, 0, 1, 40*time.Second)
	f(true, 0, 0, 60*time.Second)
	f(false, 20*time.Second, 0, 60*time.Second)
}

func TestCheckNoUser(t *testing.T) {
	l, _ := newTestLimiter(t, Rule{Window: Minute, Unit: Requests, Limit: 3})
	d, err := l.Check(Request{Provider: "openai", Tokens: 5})
	if !errors.Is(err, ErrNoUser) {
		t.Fatalf("expecting ErrNoUser; got %v", err)
	}
	if d.Allowed {
		t.Fatalf("a request without user must not be allowed")
	}
	// A record without user is ignored.
	l.Record(Usage{Tokens: 10})
	if n := l.Sweep(); n != 0 {
		t.Fatalf("unexpected live buckets after requests without user; got %d; want 0", n)
	}
}

func TestCheckNoRules(t *testing.T) {
	l, _ := newTestLimiter(t)
	for i := 0; i < 1000; i++ {
		d := mustCheck(t, l, Request{UserID: "alice", Tokens: 1 << 40})
		assertDecision(t, d, true, 0)
	}
	if n := l.Sweep(); n != 0 {
		t.Fatalf("unexpected live buckets without rules; got %d", n)
	}
}

func TestCheckNoPartialConsumption(t *testing.T) {
	l, c := newTestLimiter(t,
		Rule{Window: Minute, Unit: Requests, Limit: 10},
		Rule{Window: Day, Unit: Requests, Limit: 2},
	)
	req := Request{UserID: "alice"}

	f := func(allowedExpected bool, retryAfterExpected time.Duration, minuteRemaining int64, minuteResetIn time.Duration, dayRemaining int64, dayResetIn time.Duration) {
		t.Helper()
		d := mustCheck(t, l, req)
		now := c.Now()
		want := []Status{
			st(now, Minute, Requests, "", "", 10, minuteRemaining, minuteResetIn),
			st(now, Day, Requests, "", "", 2, dayRemaining, dayResetIn),
		}
		assertDecision(t, d, allowedExpected, retryAfterExpected, want...)
		assertStatuses(t, "Limits", mustLimits(t, l, "alice", "", ""), want)
	}

	// A minute request refills in 6s, a day request in 12h.
	f(true, 0, 9, 6*time.Second, 1, 12*time.Hour)
	f(true, 0, 8, 12*time.Second, 0, 24*time.Hour)
	// The day rule denies; the minute bucket keeps its 8.
	f(false, 12*time.Hour, 8, 12*time.Second, 0, 24*time.Hour)
	f(false, 12*time.Hour, 8, 12*time.Second, 0, 24*time.Hour)

	// The minute bucket refills while the day rule keeps denying.
	c.Advance(12 * time.Second)
	f(false, 12*time.Hour-12*time.Second, 10, 0, 0, 24*time.Hour-12*time.Second)

	// RetryAfter is the largest of the denying buckets' waits, whichever
	// comes first.
	l3, c3 := newTestLimiter(t,
		Rule{Window: Minute, Unit: Requests, Limit: 1},
		Rule{Window: Hour, Unit: Tokens, Limit: 3600},
	)
	assertDecision(t, mustCheck(t, l3, Request{UserID: "alice", Tokens: 3600}), true, 0,
		st(c3.Now(), Minute, Requests, "", "", 1, 0, time.Minute),
		st(c3.Now(), Hour, Tokens, "", "", 3600, 0, time.Hour),
	)
	assertDecision(t, mustCheck(t, l3, Request{UserID: "alice", Tokens: 10}), false, time.Minute,
		st(c3.Now(), Minute, Requests, "", "", 1, 0, time.Minute),
		st(c3.Now(), Hour, Tokens, "", "", 3600, 0, time.Hour),
	)
	c3.Advance(30 * time.Second)
	assertDecision(t, mustCheck(t, l3, Request{UserID: "alice", Tokens: 10}), false, 30*time.Second,
		st(c3.Now(), Minute, Requests, "", "", 1, 0, 30*time.Second),
		st(c3.Now(), Hour, Tokens, "", "", 3600, 30, time.Hour-30*time.Second),
	)
	assertDecision(t, mustCheck(t, l3, Request{UserID: "alice", Tokens: 100}), false, 70*time.Second,
		st(c3.Now(), Minute, Requests, "", "", 1, 0, 30*time.Second),
		st(c3.Now(), Hour, Tokens, "", "", 3600, 30, time.Hour-30*time.Second),
	)

	// Exhaust three buckets at once.
	l2, c2 := newTestLimiter(t,
		Rule{Window: Minute, Unit: Requests, Limit: 1},
		Rule{Window: Hour, Unit: Requests, Limit: 1},
		Rule{Window: Second, Unit: Requests, Limit: 1},
	)
	assertDecision(t, mustCheck(t, l2, req), true, 0,
		st(c2.Now(), Second, Requests, "", "", 1, 0, time.Second),
		st(c2.Now(), Minute, Requests, "", "", 1, 0, time.Minute),
		st(c2.Now(), Hour, Requests, "", "", 1, 0, time.Hour),
	)
	c2.Advance(30 * time.Second)
	assertDecision(t, mustCheck(t, l2, req), false, time.Hour-30*time.Second,
		st(c2.Now(), Second, Requests, "", "", 1, 1, 0),
		st(c2.Now(), Minute, Requests, "", "", 1, 0, 30*time.Second),
		st(c2.Now(), Hour, Requests, "", "", 1, 0, time.Hour-30*time.Second),
	)
}

func TestCheckTokens(t *testing.T) {
	l, c := newTestLimiter(t,
		Rule{Window: Minute, Unit: Requests, Limit: 10},
		Rule{Window: Minute, Unit: Tokens, Limit: 100},
	)
	now := c.Now()

	f := func(tokens int64, allowedExpected bool, retryAfterExpected time.Duration, requestsRemaining int64, requestsResetIn time.Duration, tokensRemaining int64, tokensResetIn time.Duration) {
		t.Helper()
		d := mustCheck(t, l, Request{UserID: "alice", Tokens: tokens})
		assertDecision(t, d, allowedExpected, retryAfterExpected,
			st(now, Minute, Requests, "", "", 10, requestsRemaining, requestsResetIn),
			st(now, Minute, Tokens, "", "", 100, tokensRemaining, tokensResetIn),
		)
	}

	// A token refills in 600ms, a request in 6s.
	f(30, true, 0, 9, 6*time.Second, 70, 18*time.Second)
	f(0, true, 0, 8, 12*time.Second, 70, 18*time.Second)
	f(69, true, 0, 7, 18*time.Second, 1, 59400*time.Millisecond)
	// 2 tokens needed, 1 held: 600ms to go; nothing charged.
	f(2, false, 600*time.Millisecond, 7, 18*time.Second, 1, 59400*time.Millisecond)
	f(100, false, 59400*time.Millisecond, 7, 18*time.Second, 1, 59400*time.Millisecond)
	f(1, true, 0, 6, 24*time.Second, 0, time.Minute)
	// An exhausted token bucket stops calls without an estimate: they need 1 token.
	f(0, false, 600*time.Millisecond, 6, 24*time.Second, 0, time.Minute)
	f(-5, false, 600*time.Millisecond, 6, 24*time.Second, 0, time.Minute)
	f(30, false, 18*time.Second, 6, 24*time.Second, 0, time.Minute)
}

func TestCheckEstimateTooLarge(t *testing.T) {
	l, c := newTestLimiter(t,
		Rule{Window: Minute, Unit: Requests, Limit: 10},
		Rule{Window: Minute, Unit: Tokens, Limit: 100},
		Rule{Provider: "openai", Window: Day, Unit: Tokens, Limit: 1000},
	)

	f := func(provider string, tokens int64, windowExpected Window, limitExpected int64, providerExpected string) {
		t.Helper()
		d, err := l.Check(Request{UserID: "alice", Provider: provider, Tokens: tokens})
		var e *EstimateTooLargeError
		if !errors.As(err, &e) {
			t.Fatalf("expecting *EstimateTooLargeError for %d tokens; got %v", tokens, err)
		}
		if d.Allowed {
			t.Fatalf("an estimate larger than the capacity must not be allowed")
		}
		want := Status{Window: windowExpected, Unit: Tokens, Provider: providerExpected, Limit: limitExpected}
		if e.Tokens != tokens || !equalStatus(e.Status, want) {
			t.Fatalf("unexpected error contents; got tokens=%d %s; want tokens=%d %s", e.Tokens, formatStatus(e.Status), tokens, formatStatus(want))
		}
		msgExpected := fmt.Sprintf("cannot ever allow %d estimated tokens: the %s limit is %d tokens", tokens, windowExpected, limitExpected)
		if err.Error() != msgExpected {
			t.Fatalf("unexpected error message;\ngot\n%q\nwant\n%q", err, msgExpected)
		}
	}

	f("", 101, Minute, 100, "")
	f("", 1<<40, Minute, 100, "")
	f("openai", 101, Minute, 100, "")
	f("openai", 1001, Minute, 100, "")

	// Nothing was charged, and no bucket was created.
	if n := l.Sweep(); n != 0 {
		t.Fatalf("a refused estimate must not create buckets; got %d live", n)
	}
	// An estimate equal to the capacity passes.
	d := mustCheck(t, l, Request{UserID: "alice", Tokens: 100})
	assertDecision(t, d, true, 0,
		st(c.Now(), Minute, Requests, "", "", 10, 9, 6*time.Second),
		st(c.Now(), Minute, Tokens, "", "", 100, 0, time.Minute),
	)
	// Even when the bucket is empty, an impossible estimate is an error, not a denial.
	f("", 101, Minute, 100, "")
}

func TestRecordWithoutCheck(t *testing.T) {
	l, c := newTestLimiter(t,
		Rule{Window: Minute, Unit: Requests, Limit: 10},
		Rule{Window: Minute, Unit: Tokens, Limit: 100},
	)

	f := func(u Usage, requestsRemaining int64, requestsResetIn time.Duration, tokensRemaining int64, tokensResetIn time.Duration) {
		t.Helper()
		l.Record(u)
		assertStatuses(t, "Limits after Record", mustLimits(t, l, u.UserID, u.Provider, u.Model), []Status{
			st(c.Now(), Minute, Requests, "", "", 10, requestsRemaining, requestsResetIn),
			st(c.Now(), Minute, Tokens, "", "", 100, tokensRemaining, tokensResetIn),
		})
	}

	f(Usage{UserID: "alice", Tokens: 40}, 9, 6*time.Second, 60, 24*time.Second)
	f(Usage{UserID: "alice", Tokens: 0}, 8, 12*time.Second, 60, 24*time.Second)
	// An unknown RequestID is charged in full.
	f(Usage{UserID: "alice", Tokens: 10, RequestID: "never-checked"}, 7, 18*time.Second, 50, 30*time.Second)

	// Another user is unaffected.
	assertStatuses(t, "Limits for bob", mustLimits(t, l, "bob", "", ""), []Status{
		st(c.Now(), Minute, Requests, "", "", 10, 10, 0),
		st(c.Now(), Minute, Tokens, "", "", 100, 100, 0),
	})
}

func TestRecordDebt(t *testing.T) {
	l, c := newTestLimiter(t,
		Rule{Window: Minute, Unit: Requests, Limit: 10},
		Rule{Window: Minute, Unit: Tokens, Limit: 100},
	)

	// 250 tokens at 100 per minute: 150 tokens of debt, more than the
	// burst, which takes 250 tokens = 150s to refill.
	l.Record(Usage{UserID: "alice", Tokens: 250})
	assertStatuses(t, "Limits after a debt", mustLimits(t, l, "alice", "", ""), []Status{
		st(c.Now(), Minute, Requests, "", "", 10, 9, 6*time.Second),
		st(c.Now(), Minute, Tokens, "", "", 100, 0, 150*time.Second),
	})

	// A check needs 1 token: 151 are missing, which take 151*0.6s = 90.6s.
	d := mustCheck(t, l, Request{UserID: "alice"})
	assertDecision(t, d, false, 90600*time.Millisecond,
		st(c.Now(), Minute, Requests, "", "", 10, 9, 6*time.Second),
		st(c.Now(), Minute, Tokens, "", "", 100, 0, 150*time.Second),
	)
	// An estimate of 50 tokens waits for 200 tokens: 120s.
	d = mustCheck(t, l, Request{UserID: "alice", Tokens: 50})
	assertDecision(t, d, false, 120*time.Second,
		st(c.Now(), Minute, Requests, "", "", 10, 9, 6*time.Second),
		st(c.Now(), Minute, Tokens, "", "", 100, 0, 150*time.Second),
	)

	// Waiting out less than RetryAfter is not enough.
	c.Advance(90 * time.Second)
	d = mustCheck(t, l, Request{UserID: "alice"})
	assertDecision(t, d, false, 600*time.Millisecond,
		st(c.Now(), Minute, Requests, "", "", 10, 10, 0),
		st(c.Now(), Minute, Tokens, "", "", 100, 0, 60*time.Second),
	)
	// Waiting out exactly RetryAfter is.
	c.Advance(600 * time.Millisecond)
	d = mustCheck(t, l, Request{UserID: "alice"})
	assertDecision(t, d, true, 0,
		st(c.Now(), Minute, Requests, "", "", 10, 9, 6*time.Second),
		st(c.Now(), Minute, Tokens, "", "", 100, 1, 59400*time.Millisecond),
	)

	// A debit of many times the burst.
	l.Record(Usage{UserID: "bob", Tokens: 1050})
	assertStatuses(t, "Limits after a large debt", mustLimits(t, l, "bob", "", ""), []Status{
		st(c.Now(), Minute, Requests, "", "", 10, 9, 6*time.Second),
		st(c.Now(), Minute, Tokens, "", "", 100, 0, 630*time.Second),
	})
	d = mustCheck(t, l, Request{UserID: "bob"})
	assertDecision(t, d, false, 570600*time.Millisecond,
		st(c.Now(), Minute, Requests, "", "", 10, 9, 6*time.Second),
		st(c.Now(), Minute, Tokens, "", "", 100, 0, 630*time.Second),
	)
	// Debts add up.
	l.Record(Usage{UserID: "bob", Tokens: 100})
	assertStatuses(t, "Limits after two debts", mustLimits(t, l, "bob", "", ""), []Status{
		st(c.Now(), Minute, Requests, "", "", 10, 8, 12*time.Second),
		st(c.Now(), Minute, Tokens, "", "", 100, 0, 690*time.Second),
	})
}

func TestRecordSettlesCheck(t *testing.T) {
	l, c := newTestLimiter(t,
		Rule{Window: Minute, Unit: Requests, Limit: 10},
		Rule{Window: Minute, Unit: Tokens, Limit: 100},
	)
	now := c.Now()

	limitsAre := func(user string, requestsRemaining, tokensRemaining int64) {
		t.Helper()
		assertStatuses(t, "Limits for "+user, mustLimits(t, l, user, "", ""), []Status{
			st(now, Minute, Requests, "", "", 10, requestsRemaining, time.Duration(10-requestsRemaining)*6*time.Second),
			st(now, Minute, Tokens, "", "", 100, tokensRemaining, time.Duration(100-tokensRemaining)*600*time.Millisecond),
		})
	}
	check := func(user, id string, tokens int64) {
		t.Helper()
		d := mustCheck(t, l, Request{UserID: user, Tokens: tokens, RequestID: id})
		if !d.Allowed {
			t.Fatalf("check %q for %s must be allowed; limits: %s", id, user, formatStatuses(d.Limits))
		}
	}

	// Over-estimate: 50 estimated, 30 used; 20 are refunded, the request is not charged again.
	check("alice", "r1", 50)
	limitsAre("alice", 9, 50)
	l.Record(Usage{UserID: "alice", Tokens: 30, RequestID: "r1"})
	limitsAre("alice", 9, 70)

	// The estimate is settled once: a second record of r1 is charged in full.
	l.Record(Usage{UserID: "alice", Tokens: 30, RequestID: "r1"})
	limitsAre("alice", 8, 40)

	// Under-estimate: 10 estimated, 25 used; 15 more are charged.
	check("alice", "r2", 10)
	limitsAre("alice", 7, 30)
	l.Record(Usage{UserID: "alice", Tokens: 25, RequestID: "r2"})
	limitsAre("alice", 7, 15)

	// Exact estimate: nothing changes.
	check("alice", "r3", 5)
	limitsAre("alice", 6, 10)
	l.Record(Usage{UserID: "alice", Tokens: 5, RequestID: "r3"})
	limitsAre("alice", 6, 10)

	// Under-estimate into debt.
	check("alice", "r4", 10)
	limitsAre("alice", 5, 0)
	l.Record(Usage{UserID: "alice", Tokens: 60, RequestID: "r4"})
	assertStatuses(t, "Limits in debt", mustLimits(t, l, "alice", "", ""), []Status{
		st(now, Minute, Requests, "", "", 10, 5, 30*time.Second),
		st(now, Minute, Tokens, "", "", 100, 0, 90*time.Second),
	})

	// The same RequestID recorded for another user is charged in full to
	// that user, and the first user's estimate is still pending.
	// Both users live in the same shard, where the estimate is kept.
	bob := sameShardUser(l, "carol")
	check("carol", "r5", 40)
	limitsAre("carol", 9, 60)
	l.Record(Usage{UserID: bob, Tokens: 40, RequestID: "r5"})
	limitsAre(bob, 9, 60)
	limitsAre("carol", 9, 60)
	l.Record(Usage{UserID: "carol", Tokens: 10, RequestID: "r5"})
	limitsAre("carol", 9, 90)
	// And a user in another shard.
	other := otherShardUser(l, "carol")
	check("carol", "r9", 40)
	l.Record(Usage{UserID: other, Tokens: 40, RequestID: "r9"})
	limitsAre(other, 9, 60)
	l.Record(Usage{UserID: "carol", Tokens: 40, RequestID: "r9"})
	limitsAre("carol", 8, 50)

	// A refund never fills a bucket beyond its capacity.
	check("dave", "r6", 100)
	limitsAre("dave", 9, 0)
	l.Record(Usage{UserID: "dave", Tokens: 0, RequestID: "r6"})
	limitsAre("dave", 9, 100)

	// A denied check leaves no estimate behind: its record is charged in full.
	check("erin", "r7", 90)
	d := mustCheck(t, l, Request{UserID: "erin", Tokens: 20, RequestID: "r8"})
	if d.Allowed {
		t.Fatalf("check r8 must be denied")
	}
	limitsAre("erin", 9, 10)
	l.Record(Usage{UserID: "erin", Tokens: 5, RequestID: "r8"})
	limitsAre("erin", 8, 5)
}

func TestRecordSettlesCheckAfterTime(t *testing.T) {
	// A refund keeps the refill that happened since the check.
	l, c := newTestLimiter(t, Rule{Window: Minute, Unit: Tokens, Limit: 100})
	mustCheck(t, l, Request{UserID: "alice", Tokens: 80, RequestID: "r1"})
	c.Advance(6 * time.Second) // +10 tokens
	l.Record(Usage{UserID: "alice", Tokens: 50, RequestID: "r1"})
	assertStatuses(t, "Limits after refund", mustLimits(t, l, "alice", "", ""), []Status{
		st(c.Now(), Minute, Tokens, "", "", 100, 60, 24*time.Second),
	})
	c.Advance(6 * time.Second)
	assertStatuses(t, "Limits after refund and refill", mustLimits(t, l, "alice", "", ""), []Status{
		st(c.Now(), Minute, Tokens, "", "", 100, 70, 18*time.Second),
	})
}

func TestPendingExpires(t *testing.T) {
	c := newManualClock()
	l := mustNew(t, []Rule{
		{Window: Day, Unit: Requests, Limit: 10},
		{Window: Day, Unit: Tokens, Limit: 1000},
	}, Options{Clock: c, PendingTTL: 10 * time.Second})

	remaining := func(requestsExpected, tokensExpected int64) {
		t.Helper()
		ss := mustLimits(t, l, "alice", "", "")
		if len(ss) != 2 || ss[0].Remaining != requestsExpected || ss[1].Remaining != tokensExpected {
			t.Fatalf("unexpected remaining; got %s; want requests=%d tokens=%d", formatStatuses(ss), requestsExpected, tokensExpected)
		}
	}

	// Within the TTL, the record settles against the estimate. The refill
	// over 10s (about 0.001 requests and 0.1 tokens) does not show.
	mustCheck(t, l, Request{UserID: "alice", Tokens: 500, RequestID: "r1"})
	remaining(9, 500)
	c.Advance(10 * time.Second)
	if n := l.Sweep(); n != 2 {
		t.Fatalf("unexpected live buckets; got %d; want 2", n)
	}
	l.Record(Usage{UserID: "alice", Tokens: 300, RequestID: "r1"})
	remaining(9, 700)

	// Past the TTL, Sweep forgets the estimate and the record is charged in full.
	mustCheck(t, l, Request{UserID: "alice", Tokens: 500, RequestID: "r2"})
	remaining(8, 200)
	estimates(t, l, EstimateStats{Pending: 1})
	c.Advance(10*time.Second + time.Nanosecond)
	l.Sweep()
	estimates(t, l, EstimateStats{Expired: 1})
	l.Record(Usage{UserID: "alice", Tokens: 100, RequestID: "r2"})
	remaining(7, 100)

	// A record that comes after the TTL, before a sweep, is charged in
	// full and counts its estimate as expired.
	mustCheck(t, l, Request{UserID: "alice", Tokens: 50, RequestID: "r3"})
	c.Advance(10*time.Second + time.Nanosecond)
	l.Record(Usage{UserID: "alice", Tokens: 10, RequestID: "r3"})
	remaining(5, 40)
	estimates(t, l, EstimateStats{Expired: 2})
}

func estimates(t *testing.T, l *Limiter, want EstimateStats) {
	t.Helper()
	if got := l.Estimates(); got != want {
		t.Fatalf("estimates %+v, want %+v", got, want)
	}
}

func TestPendingDefaultTTL(t *testing.T) {
	l, c := newTestLimiter(t, Rule{Window: Day, Unit: Requests, Limit: 10})
	remaining := func(expected int64) {
		t.Helper()
		if got := mustLimits(t, l, "alice", "", "")[0].Remaining; got != expected {
			t.Fatalf("unexpected remaining; got %d; want %d", got, expected)
		}
	}
	mustCheck(t, l, Request{UserID: "alice", RequestID: "r1"})
	mustCheck(t, l, Request{UserID: "alice", RequestID: "r2"})
	remaining(8)
	c.Advance(15 * time.Minute)
	l.Sweep()
	l.Record(Usage{UserID: "alice", RequestID: "r1"})
	remaining(8)
	c.Advance(time.Nanosecond)
	l.Sweep()
	l.Record(Usage{UserID: "alice", RequestID: "r2"})
	remaining(7)
}

func TestMaxPending(t *testing.T) {
	c := newManualClock()
	l := mustNew(t, []Rule{
		{Window: Day, Unit: Requests, Limit: 100},
		{Window: Day, Unit: Tokens, Limit: 1000},
	}, Options{Clock: c, MaxPending: 1})

	limitsAre := func(user string, requestsRemaining, tokensRemaining int64) {
		t.Helper()
		ss := mustLimits(t, l, user, "", "")
		if len(ss) != 2 || ss[0].Remaining != requestsRemaining || ss[1].Remaining != tokensRemaining {
			t.Fatalf("unexpected remaining for %s; got %s; want requests=%d tokens=%d", user, formatStatuses(ss), requestsRemaining, tokensRemaining)
		}
	}

	mustCheck(t, l, Request{UserID: "alice", Tokens: 100, RequestID: "r1"})
	// The bound is global: another user's check is not remembered either.
	mustCheck(t, l, Request{UserID: "bob", Tokens: 100, RequestID: "r2"})
	mustCheck(t, l, Request{UserID: "alice", Tokens: 100, RequestID: "r3"})
	limitsAre("alice", 98, 800)
	limitsAre("bob", 99, 900)

	// r2 and r3 were not remembered: charged in full.
	l.Record(Usage{UserID: "bob", Tokens: 50, RequestID: "r2"})
	limitsAre("bob", 98, 850)
	l.Record(Usage{UserID: "alice", Tokens: 50, RequestID: "r3"})
	limitsAre("alice", 97, 750)
	// r1 was: settled, 50 refunded.
	estimates(t, l, EstimateStats{Pending: 1, Dropped: 2})
	l.Record(Usage{UserID: "alice", Tokens: 50, RequestID: "r1"})
	limitsAre("alice", 97, 800)
	estimates(t, l, EstimateStats{Dropped: 2})

	// Settling freed the slot.
	mustCheck(t, l, Request{UserID: "bob", Tokens: 100, RequestID: "r4"})
	limitsAre("bob", 97, 750)
	l.Record(Usage{UserID: "bob", Tokens: 100, RequestID: "r4"})
	limitsAre("bob", 97, 750)

	// So does expiry.
	mustCheck(t, l, Request{UserID: "bob", Tokens: 100, RequestID: "r5"})
	c.Advance(16 * time.Minute)
	l.Sweep()
	mustCheck(t, l, Request{UserID: "bob", Tokens: 100, RequestID: "r6"})
	before := mustLimits(t, l, "bob", "", "")
	l.Record(Usage{UserID: "bob", Tokens: 0, RequestID: "r6"})
	after := mustLimits(t, l, "bob", "", "")
	if after[0].Remaining != before[0].Remaining || after[1].Remaining != before[1].Remaining+100 {
		t.Fatalf("r6 must be settled; before %s; after %s", formatStatuses(before), formatStatuses(after))
	}
}

func TestProviderBudget(t *testing.T) {
	l, c := newTestLimiter(t,
		Rule{Provider: "openai", Window: Minute, Unit: Requests, Limit: 2},
		Rule{Window: Minute, Unit: Requests, Limit: 5},
	)
	now := c.Now()

	f := func(user, provider, model string, allowedExpected bool, retryAfterExpected time.Duration, limitsExpected ...Status) {
		t.Helper()
		d := mustCheck(t, l, Request{UserID: user, Provider: provider, Model: model})
		assertDecision(t, d, allowedExpected, retryAfterExpected, limitsExpected...)
	}
	openai := func(remaining int64, resetIn time.Duration) Status {
		return st(now, Minute, Requests, "openai", "", 2, remaining, resetIn)
	}
	general := func(remaining int64, resetIn time.Duration) Status {
		return st(now, Minute, Requests, "", "", 5, remaining, resetIn)
	}

	f("alice", "openai", "gpt-4o", true, 0, openai(1, 30*time.Second))
	f("alice", "openai", "gpt-3.5", true, 0, openai(0, time.Minute))
	f("alice", "openai", "gpt-4o", false, 30*time.Second, openai(0, time.Minute))

	// Other providers use the unscoped budget, untouched by openai calls.
	f("alice", "anthropic", "claude", true, 0, general(4, 12*time.Second))
	f("alice", "", "", true, 0, general(3, 24*time.Second))
	f("alice", "openai", "", false, 30*time.Second, openai(0, time.Minute))

	// Another user has budgets of their own.
	f("bob", "openai", "gpt-4o", true, 0, openai(1, 30*time.Second))
	f("bob", "anthropic", "claude", true, 0, general(4, 12*time.Second))
	f("bob", "openai", "gpt-4o", true, 0, openai(0, time.Minute))
	f("bob", "openai", "gpt-4o", false, 30*time.Second, openai(0, time.Minute))
	f("alice", "anthropic", "claude", true, 0, general(2, 36*time.Second))
}

func TestProviderBudgetOnly(t *testing.T) {
	// With only a provider rule, other calls are not limited at all.
	l, _ := newTestLimiter(t, Rule{Provider: "openai", Window: Minute, Unit: Requests, Limit: 2})
	for i := 0; i < 2; i++ {
		if d := mustCheck(t, l, Request{UserID: "alice", Provider: "openai"}); !d.Allowed {
			t.Fatalf("openai call #%d must be allowed", i)
		}
	}
	if d := mustCheck(t, l, Request{UserID: "alice", Provider: "openai"}); d.Allowed {
		t.Fatalf("third openai call must be denied")
	}
	for i := 0; i < 100; i++ {
		d := mustCheck(t, l, Request{UserID: "alice", Provider: "anthropic"})
		assertDecision(t, d, true, 0)
		d = mustCheck(t, l, Request{UserID: "alice"})
		assertDecision(t, d, true, 0)
	}
}

func TestModelBudgetPerGlob(t *testing.T) {
	// A model-scoped rule's bucket is shared by every model its glob matches.
	l, c := newTestLimiter(t, Rule{Model: "gpt-4*", Window: Hour, Unit: Requests, Limit: 2})
	now := c.Now()
	f := func(model string, allowedExpected bool, remaining int64) {
		t.Helper()
		d := mustCheck(t, l, Request{UserID: "alice", Provider: "openai", Model: model})
		retryAfter := time.Duration(0)
		resetIn := time.Duration(2-remaining) * 30 * time.Minute
		if !allowedExpected {
			retryAfter = 30 * time.Minute
		}
		assertDecision(t, d, allowedExpected, retryAfter, st(now, Hour, Requests, "", "gpt-4*", 2, remaining, resetIn))
	}
	f("gpt-4o", true, 1)
	f("gpt-4.1", true, 0)
	f("gpt-4o-mini", false, 0)
	assertDecision(t, mustCheck(t, l, Request{UserID: "alice", Model: "gpt-3.5"}), true, 0)
}

func TestSetRulesKeepsLevels(t *testing.T) {
	r5 := Rule{Window: Minute, Unit: Requests, Limit: 5}
	l, c := newTestLimiter(t, r5)
	req := Request{UserID: "alice"}
	mustCheck(t, l, req)
	mustCheck(t, l, req)
	assertStatuses(t, "Limits before reload", mustLimits(t, l, "alice", "", ""), []Status{
		st(c.Now(), Minute, Requests, "", "", 5, 3, 24*time.Second),
	})

	// Raise the limit: the level stays at 3 of the new 10.
	r10 := r5
	r10.Limit = 10
	if err := l.SetRules([]Rule{r10}); err != nil {
		t.Fatalf("unexpected error: %s", err)
	}
	assertStatuses(t, "Limits after reload", mustLimits(t, l, "alice", "", ""), []Status{
		st(c.Now(), Minute, Requests, "", "", 10, 3, 42*time.Second),
	})
	d := mustCheck(t, l, req)
	assertDecision(t, d, true, 0, st(c.Now(), Minute, Requests, "", "", 10, 2, 48*time.Second))

	// It refills at the new rate, 1 per 6s, up to the new capacity.
	c.Advance(6 * time.Second)
	assertStatuses(t, "Limits 6s after reload", mustLimits(t, l, "alice", "", ""), []Status{
		st(c.Now(), Minute, Requests, "", "", 10, 3, 42*time.Second),
	})
	c.Advance(42 * time.Second)
	assertStatuses(t, "Limits 48s after reload", mustLimits(t, l, "alice", "", ""), []Status{
		st(c.Now(), Minute, Requests, "", "", 10, 10, 0),
	})
	for i := 0; i < 10; i++ {
		if d := mustCheck(t, l, req); !d.Allowed {
			t.Fatalf("check #%d must be allowed under the raised limit", i)
		}
	}
	d = mustCheck(t, l, req)
	assertDecision(t, d, false, 6*time.Second, st(c.Now(), Minute, Requests, "", "", 10, 0, time.Minute))

	// Lower the limit below the level: the bucket is capped at the new capacity.
	c.Advance(30 * time.Second) // level 5 of 10
	r2 := r5
	r2.Limit = 2
	if err := l.SetRules([]Rule{r2}); err != nil {
		t.Fatalf("unexpected error: %s", err)
	}
	d = mustCheck(t, l, req)
	assertDecision(t, d, true, 0, st(c.Now(), Minute, Requests, "", "", 2, 1, 30*time.Second))
	mustCheck(t, l, req)
	d = mustCheck(t, l, req)
	assertDecision(t, d, false, 30*time.Second, st(c.Now(), Minute, Requests, "", "", 2, 0, time.Minute))
}

func TestSetRulesRemovedRule(t *testing.T) {
	minute := Rule{Window: Minute, Unit: Requests, Limit: 5}
	day := Rule{Window: Day, Unit: Requests, Limit: 100}
	l, c := newTestLimiter(t, minute, day)
	mustCheck(t, l, Request{UserID: "alice"})
	mustCheck(t, l, Request{UserID: "bob"})
	if got := collectEach(l); len(got) != 4 {
		t.Fatalf("expecting 4 live buckets; got %v", got)
	}

	if err := l.SetRules([]Rule{day}); err != nil {
		t.Fatalf("unexpected error: %s", err)
	}
	// The removed rule's buckets are no longer reported, even before Sweep.
	wantEach := []string{
		"alice " + formatStatus(st(c.Now(), Day, Requests, "", "", 100, 99, 864*time.Second)),
		"bob " + formatStatus(st(c.Now(), Day, Requests, "", "", 100, 99, 864*time.Second)),
	}
	assertEach(t, l, wantEach)
	if n := l.Sweep(); n != 2 {
		t.Fatalf("unexpected live buckets after removing a rule; got %d; want 2", n)
	}
	assertEach(t, l, wantEach)
	d := mustCheck(t, l, Request{UserID: "alice"})
	assertDecision(t, d, true, 0, st(c.Now(), Day, Requests, "", "", 100, 98, 1728*time.Second))

	// Restoring the rule starts from a full bucket: the old one is gone.
	if err := l.SetRules([]Rule{minute, day}); err != nil {
		t.Fatalf("unexpected error: %s", err)
	}
	assertStatuses(t, "Limits after restoring the rule", mustLimits(t, l, "alice", "", ""), []Status{
		st(c.Now(), Minute, Requests, "", "", 5, 5, 0),
		st(c.Now(), Day, Requests, "", "", 100, 98, 1728*time.Second),
	})
}

func TestSweep(t *testing.T) {
	l, c := newTestLimiter(t,
		Rule{Window: Minute, Unit: Requests, Limit: 10},
		Rule{Window: Hour, Unit: Tokens, Limit: 3600},
	)
	sweep := func(liveExpected int) {
		t.Helper()
		if n := l.Sweep(); n != liveExpected {
			t.Fatalf("unexpected live buckets; got %d; want %d; each: %v", n, liveExpected, collectEach(l))
		}
		if n := l.Len(); n != liveExpected {
			t.Fatalf("Len must agree with Sweep; got %d; want %d", n, liveExpected)
		}
		if n := len(collectEach(l)); n != liveExpected {
			t.Fatalf("Each must visit the %d live buckets; visited %d", liveExpected, n)
		}
	}

	sweep(0)
	// alice: 1 request (6s to refill) and 2 tokens (2s to refill).
	mustCheck(t, l, Request{UserID: "alice", Tokens: 2})
	sweep(2)
	c.Advance(3 * time.Second)
	// bob: 1 request, no tokens; a bucket only checked stays full.
	mustCheck(t, l, Request{UserID: "bob"})
	sweep(2) // alice's requests, bob's requests; alice's tokens refilled, bob's untouched
	c.Advance(3 * time.Second)
	sweep(1) // alice's requests refilled at 6s
	c.Advance(3*time.Second - time.Nanosecond)
	sweep(1)
	c.Advance(time.Nanosecond)
	sweep(0)

	// A swept bucket is recreated full.
	assertStatuses(t, "Limits after sweep", mustLimits(t, l, "alice", "", ""), []Status{
		st(c.Now(), Minute, Requests, "", "", 10, 10, 0),
		st(c.Now(), Hour, Tokens, "", "", 3600, 3600, 0),
	})

	// A bucket in debt stays until the debt and the capacity are refilled.
	l.Record(Usage{UserID: "carol", Tokens: 7200})
	sweep(2)
	c.Advance(time.Minute)
	sweep(1)
	c.Advance(2*time.Hour - time.Minute - time.Nanosecond)
	sweep(1)
	c.Advance(time.Nanosecond)
	sweep(0)
}

func TestSweepAtResetAt(t *testing.T) {
	// At the reported ResetAt the bucket is full, and Sweep drops it.
	f := func(r Rule, checks int, tokens int64) {
		t.Helper()
		l, c := newTestLimiter(t, r)
		for i := 0; i < checks; i++ {
			mustCheck(t, l, Request{UserID: "alice", Tokens: tokens})
		}
		ss := mustLimits(t, l, "alice", "", "")
		c.Set(ss[0].ResetAt)
		if n := l.Sweep(); n != 0 {
			t.Fatalf("the bucket must be full at its ResetAt; got %s", formatStatuses(mustLimits(t, l, "alice", "", "")))
		}
	}
	f(Rule{Window: Minute, Unit: Requests, Limit: 3}, 1, 0)
	f(Rule{Window: Minute, Unit: Requests, Limit: 3}, 2, 0)
	f(Rule{Window: Minute, Unit: Requests, Limit: 7}, 3, 0)
	f(Rule{Window: Hour, Unit: Requests, Limit: 7}, 5, 0)
	f(Rule{Window: Day, Unit: Tokens, Limit: 14400}, 3, 999)
	f(Rule{Window: Second, Unit: Tokens, Limit: 3}, 1, 2)
}

func TestLimitsUnknownUser(t *testing.T) {
	l, c := newTestLimiter(t,
		Rule{Window: Minute, Unit: Requests, Limit: 30},
		Rule{Window: Day, Unit: Requests, Limit: 14400},
		Rule{Provider: "openai", Window: Day, Unit: Tokens, Limit: 1000000},
	)
	assertStatuses(t, "Limits for an unknown user", mustLimits(t, l, "nobody", "", ""), []Status{
		st(c.Now(), Minute, Requests, "", "", 30, 30, 0),
		st(c.Now(), Day, Requests, "", "", 14400, 14400, 0),
	})
	assertStatuses(t, "Limits for an unknown user and provider", mustLimits(t, l, "nobody", "openai", "gpt-4o"), []Status{
		st(c.Now(), Minute, Requests, "", "", 30, 30, 0),
		st(c.Now(), Day, Requests, "", "", 14400, 14400, 0),
		st(c.Now(), Day, Tokens, "openai", "", 1000000, 1000000, 0),
	})
	// Checked before Sweep, which would drop full buckets anyway.
	if n := l.Len(); n != 0 {
		t.Fatalf("Limits must not create buckets; got %d live", n)
	}
	if got := collectEach(l); len(got) != 0 {
		t.Fatalf("Limits must not create buckets; Each visited %v", got)
	}
	if n := l.Sweep(); n != 0 {
		t.Fatalf("Limits must not create buckets; Sweep found %d live", n)
	}
}

func TestLimitsScoped(t *testing.T) {
	l, c := newTestLimiter(t,
		Rule{Window: Minute, Unit: Requests, Limit: 10},
		Rule{Provider: "openai", Window: Minute, Unit: Requests, Limit: 5},
		Rule{Provider: "openai", Model: "gpt-4*", Window: Day, Unit: Tokens, Limit: 100},
		Rule{Model: "claude-*", Window: Hour, Unit: Requests, Limit: 60},
		Rule{UserID: "alice", Provider: "anthropic", Window: Day, Unit: Requests, Limit: 1000},
	)
	now := c.Now()
	unscoped := st(now, Minute, Requests, "", "", 10, 10, 0)
	openaiMinute := st(now, Minute, Requests, "openai", "", 5, 4, 12*time.Second)
	openaiGPT4Day := st(now, Day, Tokens, "openai", "gpt-4*", 100, 90, 8640*time.Second)
	claudeHour := st(now, Hour, Requests, "", "claude-*", 60, 59, time.Minute)
	aliceAnthropic := st(now, Day, Requests, "anthropic", "", 1000, 999, 86400*time.Millisecond)

	f := func(user, provider, model string, want ...Status) {
		t.Helper()
		got := mustLimits(t, l, user, provider, model)
		if provider == "" && model == "" {
			// Live scoped buckets come in map order.
			sortStatuses(got)
			sortStatuses(want)
		}
		assertStatuses(t, fmt.Sprintf("Limits(%q, %q, %q)", user, provider, model), got, want)
	}

	// No bucket is live yet: only the unscoped rule is reported.
	f("alice", "", "", unscoped)

	mustCheck(t, l, Request{UserID: "alice", Provider: "openai", Model: "gpt-4o", Tokens: 10})
	f("alice", "", "", unscoped, openaiMinute, openaiGPT4Day)
	f("alice", "openai", "gpt-4o", openaiMinute, openaiGPT4Day)
	f("alice", "openai", "gpt-4.1", openaiMinute, openaiGPT4Day)
	f("alice", "openai", "", st(now, Minute, Requests, "openai", "", 5, 4, 12*time.Second))
	f("alice", "openai", "o3", openaiMinute)
	f("alice", "azure", "gpt-4o", unscoped)
	f("alice", "", "gpt-4o", unscoped)
	// Bob's buckets are his own, even when he shares alice's shard.
	f("bob", "", "", unscoped)
	mallory := sameShardUser(l, "alice")
	mustCheck(t, l, Request{UserID: mallory, Provider: "openai", Model: "gpt-4o", Tokens: 50})
	f("alice", "", "", unscoped, openaiMinute, openaiGPT4Day)
	f(mallory, "", "", unscoped,
		st(now, Minute, Requests, "openai", "", 5, 4, 12*time.Second),
		st(now, Day, Tokens, "openai", "gpt-4*", 100, 50, 43200*time.Second))
	f("bob", "openai", "gpt-4o",
		st(now, Minute, Requests, "openai", "", 5, 5, 0),
		st(now, Day, Tokens, "openai", "gpt-4*", 100, 100, 0))

	mustCheck(t, l, Request{UserID: "alice", Provider: "anthropic", Model: "claude-3-opus"})
	anthropicUnscoped := st(now, Minute, Requests, "", "", 10, 9, 6*time.Second)
	f("alice", "", "", anthropicUnscoped, openaiMinute, openaiGPT4Day, claudeHour, aliceAnthropic)
	f("alice", "anthropic", "claude-3-opus", anthropicUnscoped, claudeHour, aliceAnthropic)
	f("alice", "anthropic", "", anthropicUnscoped, aliceAnthropic)
	f("alice", "bedrock", "claude-3-opus", anthropicUnscoped, claudeHour)
	// Bob has no anthropic rule of his own.
	f("bob", "anthropic", "claude-3-opus", unscoped, st(now, Hour, Requests, "", "claude-*", 60, 60, 0))
}

func TestLimitsStarModelReportedOnce(t *testing.T) {
	// A "*" model glob matches every model, the empty one included. Its
	// bucket must be reported once by Limits(user, "", "").
	l, c := newTestLimiter(t, Rule{Model: "*", Window: Minute, Unit: Requests, Limit: 10})
	want := []Status{st(c.Now(), Minute, Requests, "", "*", 10, 10, 0)}
	assertStatuses(t, "Limits before any check", mustLimits(t, l, "alice", "", ""), want)

	mustCheck(t, l, Request{UserID: "alice", Provider: "openai", Model: "gpt-4o"})
	want = []Status{st(c.Now(), Minute, Requests, "", "*", 10, 9, 6*time.Second)}
	assertStatuses(t, "Limits(alice, openai, gpt-4o)", mustLimits(t, l, "alice", "openai", "gpt-4o"), want)
	assertStatuses(t, "Limits(alice, \"\", \"\")", mustLimits(t, l, "alice", "", ""), want)
}

func TestLimitsAfterLoweredLimit(t *testing.T) {
	// Remaining never exceeds Limit, even for a bucket not used since a
	// reload lowered its rule's limit.
	r := Rule{Window: Minute, Unit: Requests, Limit: 10}
	l, c := newTestLimiter(t, r)
	mustCheck(t, l, Request{UserID: "alice"})
	mustCheck(t, l, Request{UserID: "alice"})
	r.Limit = 5
	if err := l.SetRules([]Rule{r}); err != nil {
		t.Fatalf("unexpected error: %s", err)
	}
	want := []Status{st(c.Now(), Minute, Requests, "", "", 5, 5, 0)}
	checkStatuses(t, "Limits after lowering the limit", mustLimits(t, l, "alice", "", ""), want)
	var each []Status
	l.Each(func(_ string, s Status) { each = append(each, s) })
	checkStatuses(t, "Each after lowering the limit", each, want)
	// A check adopts the new limit: it sees 5 tokens, not 8.
	d := mustCheck(t, l, Request{UserID: "alice"})
	assertDecision(t, d, true, 0, st(c.Now(), Minute, Requests, "", "", 5, 4, 12*time.Second))
}

func TestLimitsAfterRaisedLimit(t *testing.T) {
	// A bucket not used since a reload raised its rule's limit refills up
	// to the new limit, and Limits and Each say so.
	r := Rule{Window: Minute, Unit: Requests, Limit: 5}
	l, c := newTestLimiter(t, r)
	mustCheck(t, l, Request{UserID: "alice"})
	mustCheck(t, l, Request{UserID: "alice"})
	r.Limit = 10
	if err := l.SetRules([]Rule{r}); err != nil {
		t.Fatalf("unexpected error: %s", err)
	}
	c.Advance(24 * time.Hour)
	want := []Status{st(c.Now(), Minute, Requests, "", "", 10, 10, 0)}
	checkStatuses(t, "Limits a day after raising the limit", mustLimits(t, l, "alice", "", ""), want)
	var each []Status
	l.Each(func(_ string, s Status) { each = append(each, s) })
	checkStatuses(t, "Each a day after raising the limit", each, want)
}

func TestCheckAfterRaisedLimit(t *testing.T) {
	// After a reload raises a limit, a bucket keeps its level and refills
	// at the new rate up to the new capacity, whether or not it was used
	// in between.
	f := func(idle time.Duration, remainingExpected int64, resetInExpected time.Duration) {
		t.Helper()
		r := Rule{Window: Minute, Unit: Requests, Limit: 5}
		l, c := newTestLimiter(t, r)
		mustCheck(t, l, Request{UserID: "alice"})
		mustCheck(t, l, Request{UserID: "alice"})
		// Level 3 of 5; the new limit refills 1 request every 6s.
		r.Limit = 10
		if err := l.SetRules([]Rule{r}); err != nil {
			t.Fatalf("unexpected error: %s", err)
		}
		c.Advance(idle)
		d := mustCheck(t, l, Request{UserID: "alice"})
		checkStatuses(t, fmt.Sprintf("Decision.Limits %s after raising the limit", idle), d.Limits,
			[]Status{st(c.Now(), Minute, Requests, "", "", 10, remainingExpected, resetInExpected)})
	}
	f(0, 2, 48*time.Second)
	// 3 + 12s/6s = 5, minus this check.
	f(12*time.Second, 4, 36*time.Second)
	// Full at 10, minus this check.
	f(24*time.Hour, 9, 6*time.Second)
}

func TestSweepAfterChangedLimit(t *testing.T) {
	// Buckets not used since a reload changed their rule's limit are
	// dropped by Sweep once refilled, like any other: memory follows
	// active users.
	f := func(oldLimit, newLimit int64) {
		t.Helper()
		r := Rule{Window: Minute, Unit: Requests, Limit: oldLimit}
		l, c := newTestLimiter(t, r)
		mustCheck(t, l, Request{UserID: "alice"})
		mustCheck(t, l, Request{UserID: "alice"})
		r.Limit = newLimit
		if err := l.SetRules([]Rule{r}); err != nil {
			t.Fatalf("unexpected error: %s", err)
		}
		c.Advance(24 * time.Hour)
		if n := l.Sweep(); n != 0 {
			t.Errorf("limit %d -> %d: a bucket idle for a day must be swept; got %d live: %v", oldLimit, newLimit, n, collectEach(l))
		}
	}
	f(5, 10)
	f(10, 5)
}

// sameShardUser returns a user other than user whose estimates and
// buckets live in the same shards as user's.
func sameShardUser(l *Limiter, user string) string {
	for i := 0; ; i++ {
		u := fmt.Sprintf("user-%d", i)
		if u != user && sameShards(l, u, user) {
			return u
		}
	}
}

// otherShardUser returns a user whose estimates and buckets live in other
// shards than user's.
func otherShardUser(l *Limiter, user string) string {
	for i := 0; ; i++ {
		u := fmt.Sprintf("user-%d", i)
		if pendingShardOf(l, u) != pendingShardOf(l, user) && l.store.(*MemoryStore).shard(u) != l.store.(*MemoryStore).shard(user) {
			return u
		}
	}
}

func sameShards(l *Limiter, a, b string) bool {
	m := l.store.(*MemoryStore)
	return pendingShardOf(l, a) == pendingShardOf(l, b) && m.shard(a) == m.shard(b)
}

func pendingShardOf(l *Limiter, user string) *pendingShard {
	return &l.pending[l.userHash(user)%numShards]
}

func collectEach(l *Limiter) []string {
	var a []string
	l.Each(func(user string, s Status) { a = append(a, user+" "+formatStatus(s)) })
	sort.Strings(a)
	return a
}

func assertEach(t testing.TB, l *Limiter, want []string) {
	t.Helper()
	got := collectEach(l)
	sort.Strings(want)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("unexpected Each;\ngot\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestEach(t *testing.T) {
	l, c := newTestLimiter(t,
		Rule{Window: Minute, Unit: Requests, Limit: 10},
		Rule{Provider: "openai", Window: Day, Unit: Tokens, Limit: 1000},
		Rule{UserID: "carol", Window: Minute, Unit: Requests, Limit: 2},
	)
	now := c.Now()
	assertEach(t, l, nil)

	mustCheck(t, l, Request{UserID: "alice", Provider: "openai", Tokens: 100})
	mustCheck(t, l, Request{UserID: "alice"})
	mustCheck(t, l, Request{UserID: "bob", Provider: "openai", Tokens: 10})
	mustCheck(t, l, Request{UserID: "carol"})
	l.Record(Usage{UserID: "dave", Provider: "openai", Tokens: 500})
	// A check that leaves its bucket full still makes it live until Sweep.
	mustCheck(t, l, Request{UserID: "erin", Provider: "anthropic", Tokens: 10})
	mustLimits(t, l, "frank", "openai", "") // creates nothing
	if n := l.Len(); n != 8 {
		t.Fatalf("unexpected number of live buckets; got %d; want 8", n)
	}

	assertEach(t, l, []string{
		"alice " + formatStatus(st(now, Minute, Requests, "", "", 10, 8, 12*time.Second)),
		"alice " + formatStatus(st(now, Day, Tokens, "openai", "", 1000, 900, 8640*time.Second)),
		"bob " + formatStatus(st(now, Minute, Requests, "", "", 10, 9, 6*time.Second)),
		"bob " + formatStatus(st(now, Day, Tokens, "openai", "", 1000, 990, 864*time.Second)),
		"carol " + formatStatus(st(now, Minute, Requests, "", "", 2, 1, 30*time.Second)),
		"dave " + formatStatus(st(now, Minute, Requests, "", "", 10, 9, 6*time.Second)),
		"dave " + formatStatus(st(now, Day, Tokens, "openai", "", 1000, 500, 43200*time.Second)),
		"erin " + formatStatus(st(now, Minute, Requests, "", "", 10, 9, 6*time.Second)),
	})

	// Many users over all shards.
	for i := 0; i < 1000; i++ {
		mustCheck(t, l, Request{UserID: fmt.Sprintf("user-%d", i)})
	}
	seen := make(map[string]int)
	l.Each(func(user string, s Status) {
		if s.Remaining != s.Limit-1 && strings.HasPrefix(user, "user-") {
			t.Errorf("unexpected status for %s: %s", user, formatStatus(s))
		}
		seen[user]++
	})
	for i := 0; i < 1000; i++ {
		if n := seen[fmt.Sprintf("user-%d", i)]; n != 1 {
			t.Fatalf("Each must visit user-%d once; visited %d times", i, n)
		}
	}
	if len(seen) != 1005 {
		t.Fatalf("unexpected number of users visited; got %d; want 1005", len(seen))
	}
}

func TestCheckConcurrent(t *testing.T) {
	c := newManualClock()
	l := mustNew(t, []Rule{
		{Window: Minute, Unit: Requests, Limit: 100},
		{Window: Minute, Unit: Tokens, Limit: 1 << 40},
	}, Options{Clock: c})

	const workers = 32
	const checksPerWorker = 50
	var allowed, denied atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < checksPerWorker; i++ {
				d, err := l.Check(Request{UserID: "alice", Tokens: 1, RequestID: fmt.Sprintf("%d-%d", w, i)})
				if err != nil {
					t.Errorf("unexpected error: %s", err)
					return
				}
				if d.Allowed {
					allowed.Add(1)
				} else {
					denied.Add(1)
				}
				// Other users and readers run alongside.
				l.Record(Usage{UserID: fmt.Sprintf("user-%d", w), Tokens: 3, RequestID: fmt.Sprintf("%d-%d", w, i)})
				mustLimits(t, l, "alice", "", "")
				if i%10 == 0 {
					l.Each(func(string, Status) {})
					l.Sweep()
				}
			}
		}(w)
	}
	wg.Wait()
	if n := allowed.Load(); n != 100 {
		t.Fatalf("unexpected number of allowed checks; got %d; want 100", n)
	}
	if n := denied.Load(); n != workers*checksPerWorker-100 {
		t.Fatalf("unexpected number of denied checks; got %d; want %d", n, workers*checksPerWorker-100)
	}
	ss := mustLimits(t, l, "alice", "", "")
	if ss[0].Remaining != 0 || ss[1].Remaining != 1<<40-100 {
		t.Fatalf("unexpected limits after the concurrent checks: %s", formatStatuses(ss))
	}
	for w := 0; w < workers; w++ {
		ss := mustLimits(t, l, fmt.Sprintf("user-%d", w), "", "")
		if ss[0].Remaining != 100-checksPerWorker || ss[1].Remaining != 1<<40-3*checksPerWorker {
			t.Fatalf("unexpected limits for user-%d: %s", w, formatStatuses(ss))
		}
	}
}

// TestHugeDebitIsCheap guards against a record of 10^12 tokens costing
// 10^9 reservations against a small bucket (found by FuzzIngest), and
// against its wait overflowing time.Duration.
func TestHugeDebitIsCheap(t *testing.T) {
	l, c := newTestLimiter(t, Rule{Window: Second, Unit: Tokens, Limit: 1000}, Rule{Window: Day, Unit: Tokens, Limit: 1000})
	l.Record(Usage{UserID: "alice", Tokens: 1_000_000_000_000})
	ss := mustLimits(t, l, "alice", "", "")
	if ss[0].Remaining != 0 || ss[1].Remaining != 0 {
		t.Fatalf("remaining %+v after a huge debit", ss)
	}
	// Per second: 10^12 tokens of debt refill in 10^9 s, about 31.7 years.
	if want := c.Now().Add(1_000_000_000 * time.Second); ss[0].ResetAt.Sub(want).Abs() > time.Second {
		t.Fatalf("per-second reset_at %s, want %s", ss[0].ResetAt, want)
	}
	// Per day it would take 2.7 million years: capped.
	if want := c.Now().Add(MaxWait); !ss[1].ResetAt.Equal(want) {
		t.Fatalf("per-day reset_at %s, want the cap %s", ss[1].ResetAt, want)
	}
	d, err := l.Check(Request{UserID: "alice"})
	if err != nil || d.Allowed || d.RetryAfter != MaxWait {
		t.Fatalf("check after the debt: %+v, %v", d, err)
	}
}

// TestDecisionTightest: a refusal names the bucket whose wait is the
// RetryAfter; an allowed call the bucket with the least left relative to
// its limit.
func TestDecisionTightest(t *testing.T) {
	l, _ := newTestLimiter(t,
		Rule{Window: Minute, Unit: Requests, Limit: 4},
		Rule{Window: Second, Unit: Requests, Limit: 1},
		Rule{Window: Hour, Unit: Tokens, Limit: 1000},
	)
	name := func(d Decision) string {
		if d.Tightest < 0 || d.Tightest >= len(d.Limits) {
			return "none"
		}
		s := d.Limits[d.Tightest]
		return s.Window.String() + "-" + s.Unit.String()
	}
	// 0 of 1 a second left: the tightest.
	if d := mustCheck(t, l, Request{UserID: "u", Tokens: 100}); !d.Allowed || name(d) != "second-requests" {
		t.Fatalf("first call: allowed %v, tightest %s, want the second's requests", d.Allowed, name(d))
	}
	// Refused by the second's bucket alone.
	if d := mustCheck(t, l, Request{UserID: "u", Tokens: 100}); d.Allowed || name(d) != "second-requests" || d.RetryAfter != time.Second {
		t.Fatalf("second call: allowed %v, tightest %s, wait %s, want refused by the second's requests, 1s", d.Allowed, name(d), d.RetryAfter)
	}
	// Refused by two: the longer wait, the hour's tokens, names it.
	if d := mustCheck(t, l, Request{UserID: "u", Tokens: 950}); d.Allowed || name(d) != "hour-tokens" || d.RetryAfter <= time.Second {
		t.Fatalf("large call: allowed %v, tightest %s, wait %s, want refused by the hour's tokens", d.Allowed, name(d), d.RetryAfter)
	}
	none, _ := newTestLimiter(t)
	if d := mustCheck(t, none, Request{UserID: "u"}); !d.Allowed || d.Tightest != -1 {
		t.Fatalf("without rules: allowed %v, tightest %d, want -1", d.Allowed, d.Tightest)
	}
}
