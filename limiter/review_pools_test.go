package limiter

import (
	"testing"
	"time"
)

// reviewUserBudget is each user's $10 a day; reviewPool the shared $1 a
// day added by a reload.
var (
	reviewUserBudget = Rule{Window: Day, Unit: USD, Limit: 10 * dollar, Source: "each user"}
	reviewPool       = Rule{Window: Day, Unit: USD, Limit: dollar, Per: PerAll, Source: "shared"}
)

func poolRemaining(t *testing.T, l *Limiter) int64 {
	t.Helper()
	st, err := l.Limits("nobody", "", "", "m")
	if err != nil {
		t.Fatal(err)
	}
	return findStatus(t, st, PerAll).Remaining
}

// TestReviewPoolAddedByReloadRefundedByOlderEstimate: the memory path
// settles a record against its check's estimate in every budget the
// record touches now, whether or not that budget held it. A shared pool
// added by a reload while a check's estimate waits is then refunded the
// estimate it never held when the record comes: here alice's $0.90
// estimate, settled by a $0.10 record, takes $0.80 of bob's spend off
// the new pool, which then admits $0.90 more than its $1.
func TestReviewPoolAddedByReloadRefundedByOlderEstimate(t *testing.T) {
	l, c := newTestLimiter(t, reviewUserBudget)
	if d := mustCheck(t, l, Request{UserID: "alice", Model: "m", Cost: dollar * 9 / 10, RequestID: "a1"}); !d.Allowed {
		t.Fatal("alice's check refused")
	}
	if err := l.SetRules([]Rule{reviewUserBudget, reviewPool}); err != nil {
		t.Fatal(err)
	}
	// bob spends $0.90 of the new pool.
	if d := mustCheck(t, l, Request{UserID: "bob", Model: "m", Cost: dollar * 9 / 10, RequestID: "b1"}); !d.Allowed {
		t.Fatal("bob's check refused")
	}
	if err := l.Record(Usage{UserID: "bob", Model: "m", RequestID: "b1", Cost: dollar * 9 / 10, HasCost: true, Timestamp: c.Now()}); err != nil {
		t.Fatal(err)
	}
	// alice's call, checked before the pool existed, cost $0.10.
	if err := l.Record(Usage{UserID: "alice", Model: "m", RequestID: "a1", Cost: dollar / 10, HasCost: true, Timestamp: c.Now()}); err != nil {
		t.Fatal(err)
	}
	if got := poolRemaining(t, l); got != 0 {
		t.Fatalf("$1.00 spent in the $1 pool since it was added: $%.2f left, want 0", float64(got)/dollar)
	}
}

// TestReviewPoolAddedByReloadRefundedByExpiredEstimate: the same through
// Sweep: an estimate whose record never came is given back to every
// budget its call would touch now, the pool added since included.
func TestReviewPoolAddedByReloadRefundedByExpiredEstimate(t *testing.T) {
	l, c := newTestLimiter(t, reviewUserBudget)
	if d := mustCheck(t, l, Request{UserID: "alice", Model: "m", Cost: dollar * 9 / 10, RequestID: "a1"}); !d.Allowed {
		t.Fatal("alice's check refused")
	}
	if err := l.SetRules([]Rule{reviewUserBudget, reviewPool}); err != nil {
		t.Fatal(err)
	}
	if err := l.Record(Usage{UserID: "bob", Model: "m", Cost: dollar * 9 / 10, HasCost: true, Timestamp: c.Now()}); err != nil {
		t.Fatal(err)
	}
	c.Advance(16 * time.Minute) // past PendingTTL: alice's call never happened
	l.Sweep()
	if got := poolRemaining(t, l); got != dollar/10 {
		t.Fatalf("bob spent $0.90 of the $1 pool: $%.2f left, want $0.10", float64(got)/dollar)
	}
}

// TestReviewPoolEstimateSettledAndSwept: on the memory store, check +
// record leave the user's budget and the pool each holding the actual
// cost; an estimate whose record never comes is given back to both by
// Sweep; a retried check replaces its estimate in both. (Held up.)
func TestReviewPoolEstimateSettledAndSwept(t *testing.T) {
	l, c := newTestLimiter(t, reviewUserBudget, reviewPool)
	mustCheck(t, l, Request{UserID: "a", Model: "m", Cost: dollar / 2, RequestID: "r1"})
	mustCheck(t, l, Request{UserID: "a", Model: "m", Cost: dollar / 2, RequestID: "r1"}) // retry
	if err := l.Record(Usage{UserID: "a", Model: "m", RequestID: "r1", Cost: dollar / 10, HasCost: true, Timestamp: c.Now()}); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, l, Request{UserID: "a", Model: "m", Cost: dollar / 4, RequestID: "r2"}) // never recorded
	c.Advance(16 * time.Minute)
	l.Sweep()
	st, err := l.Limits("a", "", "", "m")
	if err != nil {
		t.Fatal(err)
	}
	if u, p := findStatus(t, st, PerUser).Remaining, findStatus(t, st, PerAll).Remaining; u != 10*dollar-dollar/10 || p != dollar-dollar/10 {
		t.Fatalf("user $%d, pool $%d left", u, p)
	}
}
