package redisquota

import (
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/limiter"
)

// splitSpend is a SplitSpendSource: the database holds stored, and each
// replica's ledger its own pending records.
type splitSpend struct {
	stored  *fixedSpend
	pending int64
	// records are pending records known by request_id.
	records []limiter.Spend
}

func (s *splitSpend) Spent(user string, sc limiter.Scope, from, to time.Time) ([]limiter.Spend, error) {
	out, err := s.stored.Spent(user, sc, from, to)
	return append(out, first(s.Pending(user, sc, from, to))...), err
}
func (s *splitSpend) Stored(user string, sc limiter.Scope, from, to time.Time) ([]limiter.Spend, error) {
	return s.stored.Spent(user, sc, from, to)
}
func (s *splitSpend) Unconfirmed(string, limiter.Scope, time.Time, time.Time) []limiter.TimedSpend {
	return nil
}
func (s *splitSpend) Pending(string, limiter.Scope, time.Time, time.Time) (sums, records []limiter.Spend) {
	return []limiter.Spend{{Model: "m", NanoUSD: s.pending}}, s.records
}
func (s *splitSpend) Duplicate(string, string) {}
func (s *splitSpend) PendingCalls(bool) []limiter.Call {
	if s.pending == 0 && len(s.records) == 0 {
		return nil
	}
	return []limiter.Call{{UserID: "u", Model: "m"}}
}

// exactReplicas are n limiters on one Redis, each with a $1.00 day budget
// and 10 requests a minute, sharing one database.
func exactReplicas(t *testing.T, n int) (stores []*Store, ls []*limiter.Limiter, spends []*splitSpend, db *fixedSpend, clk *clock.Manual, flush func()) {
	t.Helper()
	srv, client := standalone(t)
	clk = clock.NewManual(time.Now())
	db = &fixedSpend{}
	rules := []limiter.Rule{{Window: limiter.Day, Unit: limiter.USD, Limit: dollar}, {Window: limiter.Minute, Unit: limiter.Requests, Limit: 10}}
	for i := 0; i < n; i++ {
		s := New(Options{Client: client, FailMode: FailLocal, ReplicaID: "replica" + string(rune('0'+i)), Timeout: time.Second})
		sp := &splitSpend{stored: db}
		l, err := limiter.New(rules, limiter.Options{Clock: clk, Store: s, Spend: sp})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.register(t.Context()); err != nil {
			t.Fatal(err)
		}
		stores, ls, spends = append(stores, s), append(ls, l), append(spends, sp)
	}
	return stores, ls, spends, db, clk, func() { srv.Do(t, "FLUSHALL") }
}

func left(t *testing.T, l *limiter.Limiter) (usd, requests int64) {
	t.Helper()
	st, err := l.Limits("u", "", "", "m")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Unit == limiter.USD {
			usd = s.Remaining
		} else {
			requests = s.Remaining
		}
	}
	return usd, requests
}

// TestRecordChargedOnceAcrossReplicas: a record settles its check's hold
// on another replica, and the same record sent again, to either, is not
// charged again.
func TestRecordChargedOnceAcrossReplicas(t *testing.T) {
	_, ls, _, _, clk, _ := exactReplicas(t, 2)
	if d, err := ls[0].Check(limiter.Request{UserID: "u", Model: "m", Cost: dollar / 10, RequestID: "r1"}); err != nil || !d.Allowed {
		t.Fatal(d, err)
	}
	rec := limiter.Usage{UserID: "u", Model: "m", RequestID: "r1", Cost: dollar / 100, HasCost: true, Timestamp: clk.Now()}
	for _, l := range []*limiter.Limiter{ls[1], ls[0], ls[1]} {
		if err := l.Record(rec); err != nil {
			t.Fatal(err)
		}
	}
	if usd, requests := left(t, ls[0]); usd != dollar-dollar/100 || requests != 9 {
		t.Fatalf("left $%d and %d requests, want $0.99 and 9: one $0.01 call, its $0.10 estimate settled once", usd, requests)
	}
}

// TestLapsedReplicaHoldsGivenBack: the estimate held by a replica that
// died is given back when it leaves the registry.
func TestLapsedReplicaHoldsGivenBack(t *testing.T) {
	stores, ls, _, _, _, _ := exactReplicas(t, 2)
	if d, err := ls[0].Check(limiter.Request{UserID: "u", Model: "m", Cost: dollar / 2, RequestID: "r1"}); err != nil || !d.Allowed {
		t.Fatal(d, err)
	}
	if usd, _ := left(t, ls[1]); usd != dollar/2 {
		t.Fatalf("left $%d, want $0.50 held", usd)
	}
	// Replica 0 dies: its last registration is older than replicaTTL.
	c := stores[1].opts.Client
	if err := c.ZAdd(t.Context(), stores[1].globalKey("replicas"), redisZ(0, stores[0].instance)).Err(); err != nil {
		t.Fatal(err)
	}
	if err := stores[1].register(t.Context()); err != nil {
		t.Fatal(err)
	}
	if usd, _ := left(t, ls[1]); usd != dollar {
		t.Fatalf("left $%d after the replica holding $0.50 left, want $1.00", usd)
	}
}

// TestRedisLossRebuildsExactly: after Redis restarted empty, request
// buckets go on from the levels replicas last saw, and a budget's spend
// is the database's plus every replica's pending records and holds.
func TestRedisLossRebuildsExactly(t *testing.T) {
	_, ls, spends, db, clk, flush := exactReplicas(t, 3)
	// Replica 0 holds $0.20 for a call in flight; replica 1 has stored a
	// $0.10 call; replica 2 has a $0.30 call accepted, not stored.
	if d, err := ls[0].Check(limiter.Request{UserID: "u", Model: "m", Cost: dollar / 5, RequestID: "held"}); err != nil || !d.Allowed {
		t.Fatal(d, err)
	}
	for i, c := range []struct {
		l    *limiter.Limiter
		cost int64
	}{{ls[1], dollar / 10}, {ls[2], 3 * dollar / 10}} {
		id := "rec" + string(rune('0'+i))
		if d, err := c.l.Check(limiter.Request{UserID: "u", Model: "m", Cost: c.cost, RequestID: id}); err != nil || !d.Allowed {
			t.Fatal(d, err)
		}
		if err := c.l.Record(limiter.Usage{UserID: "u", Model: "m", RequestID: id, Cost: c.cost, HasCost: true, Timestamp: clk.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	db.spent.Store(dollar / 10)
	spends[2].pending = 3 * dollar / 10
	if usd, requests := left(t, ls[0]); usd != 4*dollar/10 || requests != 7 {
		t.Fatalf("before: $%d and %d requests left, want $0.40 and 7", usd, requests)
	}
	flush()
	// Each replica finds the epoch gone at its next call and recovers;
	// until all have, the spend lacks the parts of those that have not.
	for _, l := range ls {
		left(t, l)
	}
	for round := 0; round < 2; round++ { // a replica that asks again changes nothing
		for i, l := range ls {
			if usd, requests := left(t, l); usd != 4*dollar/10 || requests != 7 {
				t.Fatalf("replica %d after Redis lost everything: $%d and %d requests left, want $0.40 and 7", i, usd, requests)
			}
		}
	}
	// The held call's record settles against its put-back hold.
	if err := ls[0].Record(limiter.Usage{UserID: "u", Model: "m", RequestID: "held", Cost: dollar / 5, HasCost: true, Timestamp: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	if usd, _ := left(t, ls[1]); usd != 4*dollar/10 {
		t.Fatalf("after the held call's record: $%d left, want $0.40", usd)
	}
}

func redisZ(score float64, member string) redis.Z { return redis.Z{Score: score, Member: member} }

// TestBudgetShareAndWriteBack: while Redis is out of reach each replica
// may spend its share of what was left, and what it spent is in Redis
// once it is back.
func TestBudgetShareAndWriteBack(t *testing.T) {
	srv, client := standalone(t)
	clk := clock.NewManual(time.Now())
	rules := []limiter.Rule{{Window: limiter.Day, Unit: limiter.USD, Limit: dollar}}
	var ls []*limiter.Limiter
	var stores []*Store
	for i := 0; i < 2; i++ {
		s := New(Options{Client: client, FailMode: FailLocal, ReplicaID: "replica" + string(rune('0'+i)), Timeout: 100 * time.Millisecond})
		l, err := limiter.New(rules, limiter.Options{Clock: clk, Store: s, Spend: &splitSpend{stored: &fixedSpend{}}})
		if err != nil {
			t.Fatal(err)
		}
		ls, stores = append(ls, l), append(stores, s)
	}
	for range 2 { // each sees the other
		for _, s := range stores {
			if err := s.register(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
	}
	check := func(l *limiter.Limiter, id string) bool {
		d, err := l.Check(limiter.Request{UserID: "u", Model: "m", Cost: dollar / 10, RequestID: id})
		return err == nil && d.Allowed
	}
	for i := range 4 { // $0.40 of $1.00 spent in Redis
		if !check(ls[i%2], "before"+string(rune('0'+i))) {
			t.Fatal("refused before the outage")
		}
	}
	srv.Pause(t)
	admitted := 0
	for i := range 20 {
		if check(ls[0], "during"+string(rune('a'+i))) {
			admitted++
		}
	}
	if admitted != 3 {
		t.Fatalf("replica 0 admitted %d checks of $0.10 during the outage, want 3: its share of the $0.60 left", admitted)
	}
	srv.Resume(t)
	for _, s := range stores {
		waitFor(t, func() bool {
			s.probe(t.Context())
			return s.Err() == nil
		})
	}
	if usd, _ := left(t, ls[1]); usd != 3*dollar/10 {
		t.Fatalf("left $%d in Redis after the outage, want $0.30: what replica 0 spent meanwhile written back", usd)
	}
}

// TestRestartKnowsTheEpoch: a store restarted on its state file charges
// its spool again when Redis kept its state (or without a state file),
// and adds its part when Redis lost it meanwhile.
func TestRestartKnowsTheEpoch(t *testing.T) {
	srv, client := standalone(t)
	state := t.TempDir() + "/quota-state.json"
	open := func() (*Store, *int, *int) {
		s := New(Options{Client: client, FailMode: FailLocal, ReplicaID: "pod", StateFile: state, Timeout: time.Second})
		var restarted, recovered int
		s.SetRestarted(func() error { restarted++; return nil })
		s.SetRecoverer(func() error { recovered++; return nil })
		if err := s.register(t.Context()); err != nil {
			t.Fatal(err)
		}
		return s, &restarted, &recovered
	}
	_, restarted, recovered := open()
	if *restarted != 1 || *recovered != 0 {
		t.Fatalf("first start: restarted %d, recovered %d; want 1 and 0 (without a state file the spool is charged again, once)", *restarted, *recovered)
	}
	_, restarted, recovered = open()
	if *restarted != 1 || *recovered != 0 {
		t.Fatalf("restart, Redis kept its state: restarted %d, recovered %d; want 1 and 0", *restarted, *recovered)
	}
	srv.Do(t, "FLUSHALL")
	_, restarted, recovered = open()
	if *restarted != 0 || *recovered != 1 {
		t.Fatalf("restart, Redis lost its state: restarted %d, recovered %d; want 0 and 1", *restarted, *recovered)
	}
}

func first[T, U any](a T, _ U) T { return a }

// TestRedisLossCountsARecordOnce: a record that two replicas' spools
// hold (a client's retry to another replica) counts once when Redis lost
// its state.
func TestRedisLossCountsARecordOnce(t *testing.T) {
	_, ls, spends, _, _, flush := exactReplicas(t, 2)
	dup := limiter.Spend{Model: "m", NanoUSD: 3 * dollar / 10, RequestID: "dup"}
	for _, sp := range spends {
		sp.records = []limiter.Spend{dup}
	}
	flush()
	for _, l := range ls {
		left(t, l)
	}
	for i, l := range ls {
		if usd, _ := left(t, l); usd != 7*dollar/10 {
			t.Fatalf("replica %d: $%d left, want $0.70: the $0.30 record in both spools counted once", i, usd)
		}
	}
}

// TestRestartAfterLossFencesChecks: a sidecar restarted on its data
// directory while Redis was away finds, at its first contact, a Redis
// that lost the epoch its predecessor knew, and another replica that
// rebuilt the budget already. While it adds its part (its holds, its
// spool), a check it answers must not take a hold in the rebuilt budget:
// the part would count that hold a second time.
func TestRestartAfterLossFencesChecks(t *testing.T) {
	srv, client := standalone(t)
	clk := clock.NewManual(time.Now())
	rules := []limiter.Rule{{Window: limiter.Day, Unit: limiter.USD, Limit: dollar}}
	db := &fixedSpend{}
	db.spent.Store(4 * dollar / 10)
	state := t.TempDir() + "/quota-state.json"
	open := func(stateFile string) (*Store, *limiter.Limiter) {
		s := New(Options{Client: client, FailMode: FailLocal, ReplicaID: "pod", StateFile: stateFile, Timeout: time.Second})
		l, err := limiter.New(rules, limiter.Options{Clock: clk, Store: s, Spend: &splitSpend{stored: db}})
		if err != nil {
			t.Fatal(err)
		}
		return s, l
	}
	// The predecessor knew the epoch, and died; Redis restarted empty.
	if s, _ := open(state); s.register(t.Context()) != nil {
		t.Fatal("cannot register")
	}
	srv.Do(t, "FLUSHALL")
	// Another replica rebuilt the budget: $0.40 stored, and its $0.10 check.
	other, lo := open("")
	if err := other.register(t.Context()); err != nil {
		t.Fatal(err)
	}
	if d, err := lo.Check(limiter.Request{UserID: "u", Model: "m", Cost: dollar / 10, RequestID: "r1"}); err != nil || !d.Allowed {
		t.Fatal(d, err)
	}
	// The successor: a check arrives while its first contact adds its part.
	s, l := open(state)
	contribute := *s.recoverer.Load()
	checked := make(chan error, 1)
	recoverer := func(changed bool) error {
		go func() {
			d, err := l.Check(limiter.Request{UserID: "u", Model: "m", Cost: dollar / 10, RequestID: "r2"})
			if err == nil && !d.Allowed {
				err = errors.New("refused")
			}
			checked <- err
		}()
		select {
		case err := <-checked: // it did not wait for the part
			checked <- err
		case <-time.After(300 * time.Millisecond):
		}
		return contribute(changed)
	}
	s.recoverer.Store(&recoverer)
	if err := s.register(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := <-checked; err != nil {
		t.Fatal(err)
	}
	if got, want := budgetSpend(t, s, l, clk.Now()), int64(6*dollar/10); got != want {
		t.Fatalf("Redis spend $%d, want $%d: $0.40 stored and two $0.10 holds, each once", got, want)
	}
}
