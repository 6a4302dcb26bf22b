package redisquota

import (
	"errors"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/limiter"
)

// budgetSpend reads the raw spend of user u's day budget from Redis.
func budgetSpend(t *testing.T, s *Store, l *limiter.Limiter, now time.Time) int64 {
	t.Helper()
	var b limiter.Bucket
	for _, r := range l.Rules() {
		if r.Unit == limiter.USD {
			sc := &limiter.Scope{Window: r.Window, Unit: r.Unit, Provider: r.Provider, Model: r.Model}
			b = limiter.Bucket{Scope: sc, Limit: r.Limit, Period: limiter.PeriodOf(r.Window, now, time.UTC)}
		}
	}
	v, err := s.opts.Client.Get(t.Context(), s.userTag("u")+budgetKey("u", b)).Int64()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestReviewRecordThatFindsLossDoubleCounted: the collector enqueues a
// record (the ledger's pending part has it) and then charges it. If that
// charge is the call that finds the epoch gone, recover() contributes the
// pending part (which holds the record) and runRecovering then charges
// the record again.
func TestReviewRecordThatFindsLossDoubleCounted(t *testing.T) {
	stores, ls, spends, _, clk, flush := exactReplicas(t, 1)
	flush()
	// Collector.apply: ledger.Add (pending) before limiter.Record.
	spends[0].pending = dollar / 10
	if err := ls[0].Record(limiter.Usage{UserID: "u", Model: "m", RequestID: "r1", Cost: dollar / 10, HasCost: true, Timestamp: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	if got := budgetSpend(t, stores[0], ls[0], clk.Now()); got != dollar/10 {
		t.Fatalf("Redis spend %d after one $0.10 record, want %d (DB+pending = $0.10)", got, dollar/10)
	}
}

// TestReviewRecordWithHoldThatFindsLossDoubleCounted: same with a hold:
// the part is pending + held, and the charge nets out the hold only.
func TestReviewRecordWithHoldThatFindsLossDoubleCounted(t *testing.T) {
	stores, ls, spends, _, clk, flush := exactReplicas(t, 1)
	if d, err := ls[0].Check(limiter.Request{UserID: "u", Model: "m", Cost: dollar / 10, RequestID: "r1"}); err != nil || !d.Allowed {
		t.Fatal(d, err)
	}
	flush()
	spends[0].pending = dollar / 10
	if err := ls[0].Record(limiter.Usage{UserID: "u", Model: "m", RequestID: "r1", Cost: dollar / 10, HasCost: true, Timestamp: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	if got := budgetSpend(t, stores[0], ls[0], clk.Now()); got != dollar/10 {
		t.Fatalf("Redis spend %d after one $0.10 record, want %d", got, dollar/10)
	}
}

// TestReviewCheckAfterRecordLeaksEstimate: a check sent again after its
// record was charged debits its estimate but keeps no hold in Redis
// (the marker exists), so the sweep cannot give it back.
func TestReviewCheckAfterRecordLeaksEstimate(t *testing.T) {
	stores, ls, _, _, clk, _ := exactReplicas(t, 1)
	// The sweep below comes 16 minutes later: in the same day, whatever
	// the hour the test runs at (an hour later failed it after 23:00 UTC).
	if now := clk.Now().UTC(); now.Hour() == 23 && now.Minute() >= 40 {
		clk.Set(now.Add(-30 * time.Minute))
	}
	req := limiter.Request{UserID: "u", Model: "m", Cost: dollar / 10, RequestID: "r1"}
	if d, err := ls[0].Check(req); err != nil || !d.Allowed {
		t.Fatal(d, err)
	}
	if err := ls[0].Record(limiter.Usage{UserID: "u", Model: "m", RequestID: "r1", Cost: dollar / 20, HasCost: true, Timestamp: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	if d, err := ls[0].Check(req); err != nil || !d.Allowed { // client retry
		t.Fatal(d, err)
	}
	clk.Advance(16 * time.Minute) // past the estimates' 15 minutes
	ls[0].Sweep()
	if got := budgetSpend(t, stores[0], ls[0], clk.Now()); got != dollar/20 {
		t.Fatalf("Redis spend %d after the retried check's wait, want %d (the one record)", got, dollar/20)
	}
}

// TestReviewBudgetKeyGoneContributorsKept: a budget key that goes away
// while its contributors set stays (eviction under maxmemory, an
// operator's DEL to reset a user) can never be rebuilt by a replica that
// contributed: contributeScript answers 0 without creating the key, and
// every check of the user fails.
func TestReviewBudgetKeyGoneContributorsKept(t *testing.T) {
	stores, ls, _, _, clk, _ := exactReplicas(t, 1)
	req := limiter.Request{UserID: "u", Model: "m", Cost: dollar / 10}
	if d, err := ls[0].Check(req); err != nil || !d.Allowed {
		t.Fatal(d, err)
	}
	var b limiter.Bucket
	for _, r := range ls[0].Rules() {
		if r.Unit == limiter.USD {
			b = limiter.Bucket{Scope: &limiter.Scope{Window: r.Window, Unit: r.Unit, Model: r.Model, Provider: r.Provider}, Limit: r.Limit, Period: limiter.PeriodOf(r.Window, clk.Now(), time.UTC)}
		}
	}
	if err := stores[0].opts.Client.Del(t.Context(), stores[0].userTag("u")+budgetKey("u", b)).Err(); err != nil {
		t.Fatal(err)
	}
	if d, err := ls[0].Check(req); err != nil || !d.Allowed {
		t.Fatalf("check after the budget key went away: %v %v", d, err)
	}
}

// TestReviewFreshStateFileDoubleCountsSpool: a sidecar restarted without
// quota-state.json (the first start of this version on a data dir, or a
// state file that could not be written) recovers as if Redis had lost
// its state, adding the spool's records (pending) that its predecessor
// already charged.
func TestReviewFreshStateFileDoubleCountsSpool(t *testing.T) {
	_, client := standalone(t)
	clk := clock.NewManual(time.Now())
	rules := []limiter.Rule{{Window: limiter.Day, Unit: limiter.USD, Limit: dollar}}
	db := &fixedSpend{}
	open := func(pending int64) (*Store, *limiter.Limiter) {
		s := New(Options{Client: client, FailMode: FailLocal, ReplicaID: "pod", Timeout: time.Second, StateFile: t.TempDir() + "/quota-state.json"})
		l, err := limiter.New(rules, limiter.Options{Clock: clk, Store: s, Spend: &splitSpend{stored: db, pending: pending}})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.register(t.Context()); err != nil {
			t.Fatal(err)
		}
		return s, l
	}
	s0, l0 := open(0)
	if d, err := l0.Check(limiter.Request{UserID: "u", Model: "m", Cost: dollar / 10, RequestID: "r1"}); err != nil || !d.Allowed {
		t.Fatal(d, err)
	}
	if err := l0.Record(limiter.Usage{UserID: "u", Model: "m", RequestID: "r1", Cost: dollar / 10, HasCost: true, Timestamp: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	_ = s0
	// The process dies before the record is stored; its successor (no state
	// file) replays the spool into the ledger: pending $0.10.
	s1, l1 := open(dollar / 10)
	if got := budgetSpend(t, s1, l1, clk.Now()); got != dollar/10 {
		t.Fatalf("Redis spend %d after a restart, want %d: the spooled record was charged already", got, dollar/10)
	}
}

// TestReviewWriteBackKeepsEveryFailedDebt: writeBack re-adds only the
// first debt whose charge fails; the others, and every settled
// request_id, are dropped.
func TestReviewWriteBackKeepsEveryFailedDebt(t *testing.T) {
	_, client := standalone(t)
	s := New(Options{Client: client, FailMode: FailLocal, ReplicaID: "r", Timeout: time.Second})
	if err := s.register(t.Context()); err != nil {
		t.Fatal(err)
	}
	b := bucket(limiter.Requests, 100, "")
	for _, u := range []string{"a", "b"} {
		s.owed.add(u, []limiter.Bucket{b}, []int64{5})
		// A key Redis refuses to read as a bucket: the charge fails.
		if err := client.HSet(t.Context(), s.userTag(u)+scopeKey(u, b.Scope), "x", "1").Err(); err != nil {
			t.Fatal(err)
		}
	}
	s.owed.settle("a", "r1", []limiter.Bucket{b}, []int64{1}, []int64{1})
	if err := s.writeBack(t.Context(), *s.epoch.Load(), false); err == nil {
		t.Fatal("writeBack succeeded")
	}
	debts, settled := s.owed.take()
	if len(debts) != 2 || len(settled) != 1 {
		t.Fatalf("after a failed write-back %d debts and %d settled ids kept, want 2 and 1", len(debts), len(settled))
	}
}

// TestReviewRecordBetweenWriteBackAndRehold: restore() writes back the
// fail mode's debits (a local hold's estimate among them) and only then
// puts the local holds in Redis; a record arriving in between (restoring
// sends it to Redis) finds no hold there and is charged in full on top
// of the estimate written back. The calls are made in the order the
// race makes them.
func TestReviewRecordBetweenWriteBackAndRehold(t *testing.T) {
	stores, ls, _, _, clk, _ := exactReplicas(t, 1)
	s, l := stores[0], ls[0]
	if d, err := l.Check(limiter.Request{UserID: "u", Model: "m", Cost: 1}); err != nil || !d.Allowed { // the key exists
		t.Fatal(d, err)
	}
	s.markDown(errTest)
	if d, err := l.Check(limiter.Request{UserID: "u", Model: "m", Cost: dollar / 10, RequestID: "r1"}); err != nil || !d.Allowed {
		t.Fatal(d, err)
	}
	s.restoring.Store(true) // restore(), as comeBack/writeBackOwed run it: holds first
	if err := s.rehold(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	if err := l.Record(limiter.Usage{UserID: "u", Model: "m", RequestID: "r1", Cost: dollar / 10, HasCost: true, Timestamp: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := s.writeBack(t.Context(), *s.epoch.Load(), false); err != nil {
		t.Fatal(err)
	}
	s.restoring.Store(false)
	if got := budgetSpend(t, s, l, clk.Now()); got != dollar/10+1 {
		t.Fatalf("Redis spend %d, want %d: one $0.10 record", got, dollar/10+1)
	}
}

var errTest = errors.New("test: Redis out of reach")

// TestReviewOutageLapsesLiveReplicasHolds: replicas do not register while
// Redis is out of reach; after an outage longer than replicaTTL (Redis
// kept its data: same epoch) the first replica back finds every other
// one lapsed and gives back their holds, though they are alive and
// settled some of them in the fail mode by charging the record less the
// hold (net). The estimate is then refunded twice.
func TestReviewOutageLapsesLiveReplicasHolds(t *testing.T) {
	stores, ls, _, _, clk, _ := exactReplicas(t, 2)
	if d, err := ls[0].Check(limiter.Request{UserID: "u", Model: "m", Cost: dollar / 10, RequestID: "r1"}); err != nil || !d.Allowed {
		t.Fatal(d, err)
	}
	// Redis goes away for replica 0 (and, for its registrations, longer
	// than replicaTTL); the call's record arrives meanwhile.
	stores[0].markDown(errTest)
	if err := ls[0].Record(limiter.Usage{UserID: "u", Model: "m", RequestID: "r1", Cost: dollar / 10, HasCost: true, Timestamp: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	c := stores[1].opts.Client
	if err := c.ZAdd(t.Context(), stores[1].globalKey("replicas"), redisZ(0, stores[0].instance)).Err(); err != nil {
		t.Fatal(err)
	}
	if err := stores[1].register(t.Context()); err != nil { // replica 1 back first
		t.Fatal(err)
	}
	stores[0].probe(t.Context())
	if stores[0].Err() != nil {
		t.Fatal(stores[0].Err())
	}
	if got := budgetSpend(t, stores[1], ls[1], clk.Now()); got != dollar/10 {
		t.Fatalf("Redis spend %d, want %d: one $0.10 record", got, dollar/10)
	}
}

// TestReviewProbeSecondWriteBackSelfDeadlock: probe()'s second
// write-back, whose charge fails and so calls refuse() or markDown(),
// which lock s.transition, must not run under s.transition: the Run
// goroutine would deadlock, and with it every later markDown.
func TestReviewProbeSecondWriteBackSelfDeadlock(t *testing.T) {
	_, client := standalone(t)
	s := New(Options{Client: client, FailMode: FailLocal, ReplicaID: "r", Timeout: time.Second})
	if err := s.register(t.Context()); err != nil {
		t.Fatal(err)
	}
	b := bucket(limiter.Requests, 100, "")
	// A debit the fail mode made while the first write-back ran, whose
	// charge Redis refuses (here a WRONGTYPE; OOM or READONLY alike).
	s.owed.add("a", []limiter.Bucket{b}, []int64{5})
	if err := client.HSet(t.Context(), s.userTag("a")+scopeKey("a", b.Scope), "x", "1").Err(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.backOnRedis(t.Context()) // the tail of probe()
	}()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("probe's second write-back deadlocked on s.transition")
	}
}
