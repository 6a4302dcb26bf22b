package limiter

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const dollar = 1_000_000_000

func TestPeriodOf(t *testing.T) {
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		t.Fatal(err)
	}
	f := func(w Window, at string, loc *time.Location, start, end string) {
		t.Helper()
		ts, err := time.Parse(time.RFC3339, at)
		if err != nil {
			t.Fatal(err)
		}
		p := PeriodOf(w, ts, loc)
		gotStart, gotEnd := time.Unix(p.Start, 0).In(loc).Format(time.RFC3339), time.Unix(p.End, 0).In(loc).Format(time.RFC3339)
		if gotStart != start || gotEnd != end {
			t.Fatalf("PeriodOf(%s, %s, %s) = [%s, %s), want [%s, %s)", w, at, loc, gotStart, gotEnd, start, end)
		}
		if !p.Contains(ts) {
			t.Fatalf("period [%s, %s) does not contain %s", gotStart, gotEnd, at)
		}
	}
	f(Day, "2026-12-01T13:58:00Z", time.UTC, "2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z")
	f(Day, "2026-12-01T23:59:59Z", time.UTC, "2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z")
	f(Day, "2026-12-02T00:00:00Z", time.UTC, "2026-12-02T00:00:00Z", "2026-12-03T00:00:00Z")
	// 2026-12-01 is a Tuesday; weeks start on Monday.
	f(Week, "2026-12-01T13:58:00Z", time.UTC, "2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z")
	f(Week, "2026-11-30T00:00:00Z", time.UTC, "2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z")
	f(Week, "2026-12-06T23:59:59Z", time.UTC, "2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z")
	f(Month, "2026-12-31T23:59:59Z", time.UTC, "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z")
	f(Month, "2028-02-29T12:00:00Z", time.UTC, "2028-02-01T00:00:00Z", "2028-03-01T00:00:00Z")
	// In another zone the day starts at its midnight, 23 hours long on
	// the day clocks go forward.
	f(Day, "2026-12-01T23:30:00Z", paris, "2026-12-02T00:00:00+01:00", "2026-12-03T00:00:00+01:00")
	f(Day, "2026-03-29T12:00:00Z", paris, "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00")
	f(Month, "2026-03-31T22:30:00Z", paris, "2026-04-01T00:00:00+02:00", "2026-05-01T00:00:00+02:00")
}

// spendFunc is a SpendSource; calls counts its calls.
type spendFunc struct {
	fn    func(user string, sc Scope, from, to time.Time) (int64, error)
	calls atomic.Int64
}

func (s *spendFunc) Spent(user string, sc Scope, from, to time.Time) ([]Spend, error) {
	s.calls.Add(1)
	n, err := s.fn(user, sc, from, to)
	return []Spend{{Provider: sc.Provider, Model: "m", NanoUSD: n}}, err
}

func TestBudgetAcrossWindowBoundary(t *testing.T) {
	c := newManualClock() // 2025-03-14 15:09:26 UTC
	l := mustNew(t, []Rule{{Window: Day, Unit: USD, Limit: 1 * dollar}}, Options{Clock: c})
	check := func(cost int64) Decision {
		t.Helper()
		return mustCheck(t, l, Request{UserID: "u", Model: "m", Cost: cost})
	}
	for i := 0; i < 3; i++ {
		if d := check(dollar * 3 / 10); !d.Allowed {
			t.Fatalf("check %d refused: %+v", i, d)
		}
	}
	d := check(dollar * 3 / 10)
	midnight := time.Date(2025, 3, 15, 0, 0, 0, 0, time.UTC)
	if d.Allowed || d.RetryAfter != midnight.Sub(c.Now()) {
		t.Fatalf("fourth check: allowed %v, retry after %s; want refused until midnight (%s)", d.Allowed, d.RetryAfter, midnight.Sub(c.Now()))
	}
	if s := d.Limits[0]; s.Unit != USD || s.Limit != dollar || s.Remaining != dollar/10 || !s.ResetAt.Equal(midnight) {
		t.Fatalf("status %s", formatStatus(s))
	}
	// A check that fits the remainder still passes; then even a check
	// without an estimate is refused.
	if d := check(dollar / 10); !d.Allowed {
		t.Fatalf("check of the last 0.1 refused: %+v", d)
	}
	if d := check(0); d.Allowed {
		t.Fatal("a check without an estimate passed an exhausted budget")
	}
	c.Set(midnight.Add(-time.Nanosecond))
	if d := check(1); d.Allowed {
		t.Fatal("allowed before the period ended")
	}
	c.Set(midnight)
	if d := check(dollar); !d.Allowed || d.Limits[0].Remaining != 0 || !d.Limits[0].ResetAt.Equal(midnight.Add(24*time.Hour)) {
		t.Fatalf("new day: %+v", d)
	}
}

func TestBudgetRecordSettlesEstimate(t *testing.T) {
	l, c := newTestLimiter(t, Rule{Window: Month, Unit: USD, Limit: 1 * dollar})
	remaining := func() int64 {
		t.Helper()
		return mustLimits(t, l, "u", "", "")[0].Remaining
	}
	mustCheck(t, l, Request{UserID: "u", Model: "m", Cost: dollar / 2, RequestID: "a"})
	if got := remaining(); got != dollar/2 {
		t.Fatalf("after the check: %d left", got)
	}
	// The record costs less: the difference is refunded.
	if err := l.Record(Usage{UserID: "u", Model: "m", RequestID: "a", Cost: dollar / 5, HasCost: true, Timestamp: c.Now()}); err != nil {
		t.Fatal(err)
	}
	if got := remaining(); got != dollar*4/5 {
		t.Fatalf("after the record: %d left, want 0.8", got)
	}
	// A record without a check is charged in full; one without a cost
	// (unpriced) not at all; one from last month not in this month.
	must := func(u Usage) {
		t.Helper()
		if err := l.Record(u); err != nil {
			t.Fatal(err)
		}
	}
	must(Usage{UserID: "u", Model: "m", Cost: dollar / 10, HasCost: true, Timestamp: c.Now()})
	must(Usage{UserID: "u", Model: "unpriced", Timestamp: c.Now()})
	must(Usage{UserID: "u", Model: "m", Cost: dollar / 10, HasCost: true, Timestamp: c.Now().AddDate(0, -1, 0)})
	if got := remaining(); got != dollar*7/10 {
		t.Fatalf("after three more records: %d left, want 0.7", got)
	}
}

func TestBudgetSpendSource(t *testing.T) {
	c := newManualClock()
	var got struct {
		sc       Scope
		from, to time.Time
	}
	spend := &spendFunc{fn: func(user string, sc Scope, from, to time.Time) (int64, error) {
		got.sc, got.from, got.to = sc, from, to
		return dollar * 8 / 10, nil
	}}
	l := mustNew(t, []Rule{{Provider: "anthropic", Window: Month, Unit: USD, Limit: dollar}}, Options{Clock: c, Spend: spend})
	// The store knows nothing: the source says 0.8 is spent.
	if d := mustCheck(t, l, Request{UserID: "u", Provider: "anthropic", Model: "m", Cost: dollar * 3 / 10}); d.Allowed {
		t.Fatalf("allowed past what the source says was spent: %+v", d)
	}
	if got.sc.Provider != "anthropic" || got.sc.Window != Month || !got.from.Equal(time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)) || !got.to.Equal(time.Date(2025, 4, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("asked the source for %+v", got)
	}
	if d := mustCheck(t, l, Request{UserID: "u", Provider: "anthropic", Model: "m", Cost: dollar / 10}); !d.Allowed {
		t.Fatalf("refused within the budget: %+v", d)
	}
	if n := spend.calls.Load(); n != 1 {
		t.Fatalf("the source was asked %d times, want once", n)
	}
	// Another provider is not under the budget; another user has their own.
	if d := mustCheck(t, l, Request{UserID: "u", Provider: "openai", Model: "m", Cost: dollar * 10}); !d.Allowed {
		t.Fatal("openai refused")
	}
	mustCheck(t, l, Request{UserID: "v", Provider: "anthropic", Model: "m", Cost: 1})
	if n := spend.calls.Load(); n != 2 {
		t.Fatalf("the source was asked %d times, want twice", n)
	}

	// A record that makes the store learn the spend is in what the
	// source says (it counts records not stored yet): it is not added.
	l2 := mustNew(t, []Rule{{Window: Day, Unit: USD, Limit: dollar}}, Options{Clock: c, Spend: &spendFunc{fn: func(string, Scope, time.Time, time.Time) (int64, error) {
		return dollar / 4, nil // the record's own cost
	}}})
	if err := l2.Record(Usage{UserID: "u", Model: "m", Cost: dollar / 4, HasCost: true, Timestamp: c.Now()}); err != nil {
		t.Fatal(err)
	}
	if got := mustLimits(t, l2, "u", "", "")[0].Remaining; got != dollar*3/4 {
		t.Fatalf("%d left, want 0.75: the record was counted twice", got)
	}

	// A source that fails leaves the check undecided.
	l3 := mustNew(t, []Rule{{Window: Day, Unit: USD, Limit: dollar}}, Options{Clock: c, Spend: &spendFunc{fn: func(string, Scope, time.Time, time.Time) (int64, error) {
		return 0, errors.New("database down")
	}}})
	if _, err := l3.Check(Request{UserID: "u", Model: "m", Cost: 1}); !errors.Is(err, ErrStoreUnavailable) {
		t.Fatalf("check with the spend unknown: %v, want ErrStoreUnavailable", err)
	}
}

func TestBudgetUnpricedAndTooLarge(t *testing.T) {
	rules := []Rule{{Window: Day, Unit: USD, Limit: dollar}, {Window: Minute, Unit: Requests, Limit: 100}}
	l, _ := newTestLimiter(t, rules...)
	var unpriced *UnpricedError
	if _, err := l.Check(Request{UserID: "u", Model: "custom", Unpriced: true}); !errors.As(err, &unpriced) || unpriced.Model != "custom" || unpriced.Status.Unit != USD {
		t.Fatalf("unpriced check: %v", err)
	}
	var tooLarge *EstimateTooLargeError
	if _, err := l.Check(Request{UserID: "u", Model: "m", Cost: dollar + 1}); !errors.As(err, &tooLarge) || tooLarge.Cost != dollar+1 {
		t.Fatalf("check over the budget: %v", err)
	}
	// With AllowUnpriced the check passes while the budget is not spent.
	l = mustNew(t, rules, Options{Clock: newManualClock(), AllowUnpriced: true})
	if d := mustCheck(t, l, Request{UserID: "u", Model: "custom", Unpriced: true, Cost: 5}); !d.Allowed || d.Limits[1].Unit != USD || d.Limits[1].Remaining != dollar {
		t.Fatalf("unpriced check with AllowUnpriced: %+v", d)
	}
	mustCheck(t, l, Request{UserID: "u", Model: "m", Cost: dollar})
	if d := mustCheck(t, l, Request{UserID: "u", Model: "custom", Unpriced: true}); d.Allowed {
		t.Fatal("unpriced check passed a spent budget")
	}
}

// TestBudgetConcurrentOvershootBound: concurrent checks never reserve
// more than the budget, and what is spent past it is exactly what calls
// cost beyond their estimates.
func TestBudgetConcurrentOvershootBound(t *testing.T) {
	l, c := newTestLimiter(t, Rule{Window: Day, Unit: USD, Limit: dollar})
	const checks, estimate = 50, int64(dollar / 10)
	var allowed atomic.Int64
	var wg sync.WaitGroup
	ids := make(chan string, checks)
	for i := 0; i < checks; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			id := string(rune('A' + i))
			if d := mustCheck(t, l, Request{UserID: "u", Model: "m", Cost: estimate, RequestID: id}); d.Allowed {
				allowed.Add(1)
				ids <- id
			}
		}(i)
	}
	wg.Wait()
	close(ids)
	if n := allowed.Load(); n != 10 {
		t.Fatalf("%d checks of 0.1 allowed against 1.00, want exactly 10", n)
	}
	// Half the calls cost 50% more than estimated, half 20% less.
	var spent, beyond int64
	i := 0
	for id := range ids {
		actual := estimate * 3 / 2
		if i%2 == 1 {
			actual = estimate * 4 / 5
		}
		i++
		spent += actual
		beyond += max(0, actual-estimate)
		if err := l.Record(Usage{UserID: "u", Model: "m", RequestID: id, Cost: actual, HasCost: true, Timestamp: c.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if spent > dollar+beyond {
		t.Fatalf("spent %d, past the budget by more than the calls' cost beyond their estimates (%d)", spent, beyond)
	}
	s := mustLimits(t, l, "u", "", "")[0]
	if want := max(0, dollar-spent); s.Remaining != want {
		t.Fatalf("%d left, want %d", s.Remaining, want)
	}
	if d := mustCheck(t, l, Request{UserID: "u", Model: "m", Cost: 1}); d.Allowed {
		t.Fatal("a check passed the overspent budget")
	}
}

func TestBudgetSweepKeepsPeriod(t *testing.T) {
	l, c := newTestLimiter(t, Rule{Window: Day, Unit: USD, Limit: dollar})
	mustCheck(t, l, Request{UserID: "u", Model: "m", Cost: dollar / 2})
	if live := l.Sweep(); live != 1 {
		t.Fatalf("%d live after a sweep, want the budget kept", live)
	}
	if got := mustLimits(t, l, "u", "", "")[0].Remaining; got != dollar/2 {
		t.Fatalf("%d left after a sweep", got)
	}
	c.Advance(24 * time.Hour)
	if live := l.Sweep(); live != 0 {
		t.Fatalf("%d live after the period ended, want 0", live)
	}
}

// TestBudgetReleasesExpiredEstimates: a budget does not refill, so the
// estimate of a check whose record never comes is given back when it
// expires; a record that comes late gives it back and is charged in full.
func TestBudgetReleasesExpiredEstimates(t *testing.T) {
	c := newManualClock()
	l := mustNew(t, []Rule{{Window: Month, Unit: USD, Limit: dollar}, {Window: Minute, Unit: Requests, Limit: 100}}, Options{Clock: c, PendingTTL: time.Minute})
	remaining := func() int64 {
		t.Helper()
		for _, s := range mustLimits(t, l, "u", "", "") {
			if s.Unit == USD {
				return s.Remaining
			}
		}
		t.Fatal("no budget")
		return 0
	}
	mustCheck(t, l, Request{UserID: "u", Model: "m", Cost: dollar / 2, RequestID: "never-recorded"})
	mustCheck(t, l, Request{UserID: "u", Model: "m", Cost: dollar / 4, RequestID: "recorded-late"})
	mustCheck(t, l, Request{UserID: "u", Model: "m", Cost: dollar / 8}) // no request_id: nothing to settle, held for good
	if got := remaining(); got != dollar/8 {
		t.Fatalf("%d left after three checks, want 0.125", got)
	}
	c.Advance(2 * time.Minute)
	// The late record settles its own estimate before the sweep does.
	if err := l.Record(Usage{UserID: "u", Model: "m", RequestID: "recorded-late", Cost: dollar / 10, HasCost: true, Timestamp: c.Now()}); err != nil {
		t.Fatal(err)
	}
	if got := remaining(); got != dollar/8+dollar/4-dollar/10 {
		t.Fatalf("%d left after the late record, want 0.275", got)
	}
	l.Sweep()
	if got := remaining(); got != dollar/8+dollar/4-dollar/10+dollar/2 {
		t.Fatalf("%d left after the sweep, want 0.775: the unrecorded estimate was not given back", got)
	}
	if e := l.Estimates(); e.Pending != 0 || e.Expired != 2 {
		t.Fatalf("estimates %+v", e)
	}
	// An estimate reserved in last month's budget is not given to this one.
	mustCheck(t, l, Request{UserID: "u", Model: "m", Cost: dollar / 2, RequestID: "across-months"})
	c.Set(time.Date(2025, 4, 1, 0, 0, 30, 0, time.UTC))
	if err := l.Record(Usage{UserID: "u", Model: "m", Cost: dollar * 3 / 10, HasCost: true, Timestamp: c.Now()}); err != nil {
		t.Fatal(err)
	}
	l.Sweep()
	if got := remaining(); got != dollar*7/10 {
		t.Fatalf("%d left in the new month, want 0.7: March's estimate was given to April", got)
	}
}

// TestBudgetBatchRecordsCountOnce: a request's records all enter the
// ledger before the first is charged; a budget the first learns the
// spend of, with all of them in it, is not charged the rest again.
func TestBudgetBatchRecordsCountOnce(t *testing.T) {
	c := newManualClock()
	pending := int64(0) // what the ledger holds
	spend := &spendFunc{fn: func(string, Scope, time.Time, time.Time) (int64, error) { return pending, nil }}
	l := mustNew(t, []Rule{{Window: Day, Unit: USD, Limit: dollar}, {Provider: "p", Window: Day, Unit: USD, Limit: dollar}}, Options{Clock: c, Spend: spend})
	recs := []Usage{
		{UserID: "u", Model: "m", Cost: dollar * 3 / 10, HasCost: true, Timestamp: c.Now()},
		{UserID: "u", Model: "m", Cost: dollar * 3 / 10, HasCost: true, Timestamp: c.Now()},
		{UserID: "v", Model: "m", Cost: dollar / 10, HasCost: true, Timestamp: c.Now()},
	}
	for _, r := range recs[:2] {
		pending += r.Cost
	}
	if err := l.RecordAll(recs[:2]); err != nil {
		t.Fatal(err)
	}
	if n := spend.calls.Load(); n != 1 {
		t.Fatalf("the batch read the spend %d times, want once", n)
	}
	if got := mustLimits(t, l, "u", "", "")[0].Remaining; got != dollar*4/10 {
		t.Fatalf("%d left, want 0.4: a record of the batch counted twice", got)
	}
	// Known now: the next request's record is charged.
	if err := l.Record(Usage{UserID: "u", Model: "m", Cost: dollar / 10, HasCost: true, Timestamp: c.Now()}); err != nil {
		t.Fatal(err)
	}
	if got := mustLimits(t, l, "u", "", "")[0].Remaining; got != dollar*3/10 {
		t.Fatalf("%d left, want 0.3", got)
	}
}

// TestBudgetOverlappingScopes: with a month budget for every call and
// one for anthropic's, an anthropic call counts in the anthropic budget
// only, live and when the spend is learnt from the database after a
// restart.
func TestBudgetOverlappingScopes(t *testing.T) {
	rules := []Rule{{Window: Month, Unit: USD, Limit: 50 * dollar}, {Provider: "anthropic", Window: Month, Unit: USD, Limit: 500 * dollar}}
	c := newManualClock()
	// The database has $40 of anthropic and $5 of openai this month.
	db := &groupSpend{groups: []Spend{{Provider: "anthropic", Model: "claude-3-opus", NanoUSD: 40 * dollar}, {Provider: "openai", Model: "gpt-4o", NanoUSD: 5 * dollar}}}
	remaining := func(l *Limiter, provider string) int64 {
		t.Helper()
		return mustLimits(t, l, "u", provider, "m")[0].Remaining
	}
	restarted := mustNew(t, rules, Options{Clock: c, Spend: db})
	if got := remaining(restarted, "openai"); got != 45*dollar {
		t.Fatalf("the unscoped budget after a restart: %d left, want 45 (anthropic's $40 is not its)", got)
	}
	if got := remaining(restarted, "anthropic"); got != 460*dollar {
		t.Fatalf("the anthropic budget after a restart: %d left, want 460", got)
	}
	// Live, the same: an anthropic record does not touch the unscoped budget.
	if err := restarted.Record(Usage{UserID: "u", Provider: "anthropic", Model: "m", Cost: dollar, HasCost: true, Timestamp: c.Now()}); err != nil {
		t.Fatal(err)
	}
	if got := remaining(restarted, "openai"); got != 45*dollar {
		t.Fatalf("the unscoped budget after an anthropic record: %d left, want 45", got)
	}
}

// groupSpend is a SpendSource answering groups, filtered by the scope's
// provider as the database filters them.
type groupSpend struct{ groups []Spend }

func (g *groupSpend) Spent(_ string, sc Scope, _, _ time.Time) ([]Spend, error) {
	var out []Spend
	for _, s := range g.groups {
		if sc.Provider == "" || s.Provider == sc.Provider {
			out = append(out, s)
		}
	}
	return out, nil
}

// TestBudgetSpendSaturates: records may claim up to a billion dollars
// each; ten of them must leave the budget spent, not wrap it open.
func TestBudgetSpendSaturates(t *testing.T) {
	l, c := newTestLimiter(t, Rule{Window: Day, Unit: USD, Limit: dollar})
	mustCheck(t, l, Request{UserID: "u", Model: "m", Cost: 1})
	for i := 0; i < 10; i++ {
		if err := l.Record(Usage{UserID: "u", Model: "m", Cost: 1e18, HasCost: true, Timestamp: c.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if d := mustCheck(t, l, Request{UserID: "u", Model: "m", Cost: 1}); d.Allowed || d.Limits[0].Remaining != 0 {
		t.Fatalf("after $10^10 of records: %+v, want refused with nothing left", d)
	}
}

// TestBudgetRetriedCheck: a check sent twice with one request_id holds
// one estimate, not two, once its record settles.
func TestBudgetRetriedCheck(t *testing.T) {
	l, c := newTestLimiter(t, Rule{Window: Month, Unit: USD, Limit: dollar})
	mustCheck(t, l, Request{UserID: "u", Model: "m", Cost: dollar / 2, RequestID: "x"})
	mustCheck(t, l, Request{UserID: "u", Model: "m", Cost: dollar / 2, RequestID: "x"})
	if err := l.Record(Usage{UserID: "u", Model: "m", RequestID: "x", Cost: dollar / 10, HasCost: true, Timestamp: c.Now()}); err != nil {
		t.Fatal(err)
	}
	if got := mustLimits(t, l, "u", "", "")[0].Remaining; got != dollar*9/10 {
		t.Fatalf("%d left, want 0.9: the first check's estimate leaked", got)
	}
}

// TestRecordChargesTokensWhenBudgetUnknown: a record whose budget cannot
// be learnt (the database is down) is still charged to its token and
// request buckets.
func TestRecordChargesTokensWhenBudgetUnknown(t *testing.T) {
	c := newManualClock()
	down := true
	spend := &spendFunc{fn: func(string, Scope, time.Time, time.Time) (int64, error) {
		if down {
			return 0, errors.New("database down")
		}
		return 0, nil
	}}
	l := mustNew(t, []Rule{{Window: Day, Unit: USD, Limit: 10 * dollar}, {Window: Day, Unit: Tokens, Limit: 10_000}}, Options{Clock: c, Spend: spend})
	if err := l.Record(Usage{UserID: "u", Model: "m", Tokens: 9000, Cost: dollar, HasCost: true, Timestamp: c.Now()}); !errors.Is(err, ErrStoreUnavailable) {
		t.Fatalf("record with the database down: %v, want ErrStoreUnavailable", err)
	}
	down = false
	for _, s := range mustLimits(t, l, "u", "", "") {
		if s.Unit == Tokens && s.Remaining != 1000 {
			t.Fatalf("tokens %d left after a 9,000-token record, want 1,000", s.Remaining)
		}
	}
}
