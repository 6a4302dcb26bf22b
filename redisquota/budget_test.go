package redisquota

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/internal/redistest"
	"github.com/llmusage/llmusage/limiter"
)

const dollar = 1_000_000_000

// fixedSpend is a SpendSource answering what the database would: the
// same spend for every scope; calls counts how often it was asked.
type fixedSpend struct {
	spent atomic.Int64
	calls atomic.Int64
}

func (f *fixedSpend) Spent(_ string, sc limiter.Scope, _, _ time.Time) ([]limiter.Spend, error) {
	f.calls.Add(1)
	return []limiter.Spend{{Provider: sc.Provider, Model: "m", NanoUSD: f.spent.Load()}}, nil
}

// TestBudgetsAcrossReplicas: three replicas' limiters on one Redis admit
// exactly as many concurrent checks as the budget covers, rebuild the
// spend from the database when Redis lost it, and start a new period
// from what the database says of it.
func TestBudgetsAcrossReplicas(t *testing.T) {
	srv, client := standalone(t)
	rules := []limiter.Rule{{Window: limiter.Day, Unit: limiter.USD, Limit: 2 * dollar}, {Window: limiter.Minute, Unit: limiter.Requests, Limit: 1000}}
	clk := clock.NewManual(time.Now())
	spend := &fixedSpend{}
	spend.spent.Store(dollar) // $1.00 of the $2.00 already spent, says the database
	var replicas []*limiter.Limiter
	for i := 0; i < 3; i++ {
		s := New(Options{Client: client, FailMode: FailClosed, ReplicaID: "replica" + string(rune('0'+i)), Timeout: time.Second})
		l, err := limiter.New(rules, limiter.Options{Clock: clk, Store: s, Spend: spend})
		if err != nil {
			t.Fatal(err)
		}
		replicas = append(replicas, l)
	}

	// 50 concurrent checks of $0.10 against the $1.00 left.
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			d, err := replicas[i%3].Check(limiter.Request{UserID: "u", Model: "m", Cost: dollar / 10})
			if err != nil {
				t.Error(err)
				return
			}
			if d.Allowed {
				admitted.Add(1)
			}
		}(i)
	}
	wg.Wait()
	if n := admitted.Load(); n != 10 {
		t.Fatalf("%d of 50 checks of $0.10 admitted against $1.00 left on 3 replicas, want exactly 10", n)
	}
	if n := spend.calls.Load(); n < 1 || n > 50 {
		t.Fatalf("the database was asked %d times", n)
	}
	remaining := func(l *limiter.Limiter) int64 {
		t.Helper()
		st, err := l.Limits("u", "", "", "")
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range st {
			if s.Unit == limiter.USD {
				return s.Remaining
			}
		}
		t.Fatal("no usd budget in the limits")
		return 0
	}
	for _, l := range replicas {
		if got := remaining(l); got != 0 {
			t.Fatalf("a replica sees %d left, want 0", got)
		}
	}

	// A record on one replica settles on all: a refund of $0.50 (the
	// call cost less than estimated) shows everywhere.
	if err := replicas[0].Record(limiter.Usage{UserID: "u", Model: "m", Cost: -dollar / 2, HasCost: true, Timestamp: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	if got := remaining(replicas[2]); got != dollar/2 {
		t.Fatalf("after a refund on replica 0, replica 2 sees %d left, want 0.5", got)
	}

	// Redis loses everything: the spend is rebuilt from the database.
	if err := client.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	spend.spent.Store(dollar * 19 / 10)
	if got := remaining(replicas[1]); got != dollar/10 {
		t.Fatalf("after Redis lost the keys: %d left, want the database's 0.1", got)
	}

	// The next day is a new period, with its own spend.
	clk.Advance(24 * time.Hour)
	spend.spent.Store(0)
	d, err := replicas[2].Check(limiter.Request{UserID: "u", Model: "m", Cost: dollar})
	if err != nil || !d.Allowed {
		t.Fatalf("a check of $1 the next day: %+v, %v", d, err)
	}
	_ = srv
}

// TestBudgetRecordSeedsOnce: a record that finds the spend unknown seeds
// it with the database's answer, which has the record already, and does
// not add itself again; a second replica that lost the race adds it.
func TestBudgetRecordSeedsOnce(t *testing.T) {
	_, client := standalone(t)
	rules := []limiter.Rule{{Window: limiter.Month, Unit: limiter.USD, Limit: 10 * dollar}}
	clk := clock.NewManual(time.Now())
	spend := &fixedSpend{}
	spend.spent.Store(dollar) // the record's own cost, not stored yet
	s := New(Options{Client: client, FailMode: FailClosed, ReplicaID: "a", Timeout: time.Second})
	l, err := limiter.New(rules, limiter.Options{Clock: clk, Store: s, Spend: spend})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Record(limiter.Usage{UserID: "u", Model: "m", Cost: dollar, HasCost: true, Timestamp: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	st, err := l.Limits("u", "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if st[0].Remaining != 9*dollar {
		t.Fatalf("%d left, want 9: the record counted twice", st[0].Remaining)
	}
	// The key is seeded now: a second record is added.
	if err := l.Record(limiter.Usage{UserID: "u", Model: "m", Cost: dollar, HasCost: true, Timestamp: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	if st, _ = l.Limits("u", "", "", ""); st[0].Remaining != 8*dollar {
		t.Fatalf("%d left, want 8", st[0].Remaining)
	}
	// The key expires an hour after the month ends.
	b := limiter.Bucket{Scope: &limiter.Scope{Window: limiter.Month, Unit: limiter.USD}, Limit: 10 * dollar, Period: limiter.PeriodOf(limiter.Month, clk.Now(), time.UTC)}
	ttl, err := client.PTTL(context.Background(), s.userTag("u")+budgetKey("u", b)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Until(time.Unix(b.Period.End, 0).Add(time.Hour)); ttl < want-time.Minute || ttl > want+time.Second {
		t.Fatalf("key expires in %s, want about %s", ttl, want)
	}
}

// TestBudgetFailModes: while Redis is out of reach a budget is answered
// by the fail mode: local goes on from the last spend seen (or the
// database's, for a user not seen), open allows, closed refuses with
// ErrStoreUnavailable.
func TestBudgetFailModes(t *testing.T) {
	f := func(mode FailMode, check func(t *testing.T, l *limiter.Limiter)) {
		t.Run(string(mode), func(t *testing.T) {
			srv, client := standalone(t)
			s := newStore(t, client, mode)
			spend := &fixedSpend{}
			spend.spent.Store(dollar / 2)
			l, err := limiter.New([]limiter.Rule{{Window: limiter.Day, Unit: limiter.USD, Limit: dollar}},
				limiter.Options{Clock: clock.NewManual(time.Now()), Store: s, Spend: spend})
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool { return s.Replicas() == 1 && s.Err() == nil })
			// seen spends $0.30 on top of the database's $0.50 before the outage.
			if d, err := l.Check(limiter.Request{UserID: "seen", Model: "m", Cost: dollar * 3 / 10}); err != nil || !d.Allowed {
				t.Fatalf("before the outage: %+v %v", d, err)
			}
			srv.Stop(t)
			waitFor(t, func() bool {
				_, _ = l.Check(limiter.Request{UserID: "probe", Model: "m", Cost: 1})
				return s.Err() != nil
			})
			check(t, l)
		})
	}
	decide := func(t *testing.T, l *limiter.Limiter, user string, cost int64) (bool, error) {
		t.Helper()
		d, err := l.Check(limiter.Request{UserID: user, Model: "m", Cost: cost})
		return d.Allowed, err
	}
	f(FailLocal, func(t *testing.T, l *limiter.Limiter) {
		if ok, err := decide(t, l, "seen", dollar*3/10); err != nil || ok {
			t.Fatalf("seen, $0.30 more of the $0.20 left: %v %v, want refused", ok, err)
		}
		if ok, err := decide(t, l, "seen", dollar/10); err != nil || !ok {
			t.Fatalf("seen, $0.10 of the $0.20 left: %v %v, want allowed", ok, err)
		}
		if ok, err := decide(t, l, "new", dollar*6/10); err != nil || ok {
			t.Fatalf("new, $0.60 of the database's $0.50 left: %v %v, want refused", ok, err)
		}
		if ok, err := decide(t, l, "new", dollar*4/10); err != nil || !ok {
			t.Fatalf("new, $0.40: %v %v, want allowed", ok, err)
		}
	})
	f(FailOpen, func(t *testing.T, l *limiter.Limiter) {
		if ok, err := decide(t, l, "new", dollar); err != nil || !ok {
			t.Fatalf("open: %v %v", ok, err)
		}
	})
	f(FailClosed, func(t *testing.T, l *limiter.Limiter) {
		if _, err := decide(t, l, "new", 1); !errors.Is(err, limiter.ErrStoreUnavailable) {
			t.Fatalf("closed: %v, want ErrStoreUnavailable", err)
		}
	})
}

// TestLimitsAfterRedisLostScopedBudget: a user's limits list their
// scoped budgets while Redis has them, and leaves out (rather than fails
// on) one Redis lost, until a check seeds it again.
func TestLimitsAfterRedisLostScopedBudget(t *testing.T) {
	srv, client := standalone(t)
	s := New(Options{Client: client, FailMode: FailClosed, ReplicaID: "a", Timeout: time.Second})
	l, err := limiter.New([]limiter.Rule{{Provider: "openai", Window: limiter.Day, Unit: limiter.USD, Limit: dollar}},
		limiter.Options{Clock: clock.NewManual(time.Now()), Store: s, Spend: &fixedSpend{}})
	if err != nil {
		t.Fatal(err)
	}
	if d, err := l.Check(limiter.Request{UserID: "u", Provider: "openai", Model: "gpt-4o", Cost: dollar / 4}); err != nil || !d.Allowed {
		t.Fatalf("check: %+v %v", d, err)
	}
	st, err := l.Limits("u", "", "", "")
	if err != nil || len(st) != 1 || st[0].Remaining != dollar*3/4 {
		t.Fatalf("limits: %+v %v", st, err)
	}
	srv.Do(t, "FLUSHALL")
	if st, err = l.Limits("u", "", "", ""); err != nil || len(st) != 0 {
		t.Fatalf("limits after Redis lost the budget: %+v %v, want none and no error", st, err)
	}
	if st, err = l.Limits("u", "", "openai", ""); err != nil || len(st) != 1 || st[0].Remaining != dollar {
		t.Fatalf("openai limits after Redis lost the budget: %+v %v, want the database's (nothing spent)", st, err)
	}
}

// TestBudgetSpendSaturatesOnRedis: the script keeps spend within 2^53,
// so that records of absurd cost leave a budget spent, not open.
func TestBudgetSpendSaturatesOnRedis(t *testing.T) {
	_, client := standalone(t)
	s := New(Options{Client: client, FailMode: FailClosed, ReplicaID: "a", Timeout: time.Second})
	clk := clock.NewManual(time.Now())
	l, err := limiter.New([]limiter.Rule{{Window: limiter.Day, Unit: limiter.USD, Limit: dollar}}, limiter.Options{Clock: clk, Store: s, Spend: &fixedSpend{}})
	if err != nil {
		t.Fatal(err)
	}
	if d, err := l.Check(limiter.Request{UserID: "u", Model: "m", Cost: 1}); err != nil || !d.Allowed {
		t.Fatal(d, err)
	}
	for i := 0; i < 10; i++ {
		if err := l.Record(limiter.Usage{UserID: "u", Model: "m", Cost: 1e18, HasCost: true, Timestamp: clk.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if d, err := l.Check(limiter.Request{UserID: "u", Model: "m", Cost: 1}); err != nil || d.Allowed || d.Limits[0].Remaining != 0 {
		t.Fatalf("after $10^10 of records: %+v %v, want refused with nothing left", d, err)
	}
}

// TestBudgetEstimateRefundedWhereHeld: an estimate reserved in the local
// share while Redis refused writes is not refunded from the shared
// budget, which never held it; the record is charged in full.
func TestBudgetEstimateRefundedWhereHeld(t *testing.T) {
	srv, s, l, clk := newLocalBudget(t)
	remaining := func() int64 {
		t.Helper()
		st, err := l.Limits("u", "", "", "")
		if err != nil {
			t.Fatal(err)
		}
		return st[0].Remaining
	}
	// $5 spent in Redis.
	if d, err := l.Check(limiter.Request{UserID: "u", Model: "m", Cost: 5 * dollar}); err != nil || !d.Allowed {
		t.Fatal(d, err)
	}
	srv.Do(t, "CONFIG", "SET", "maxmemory", "1")
	waitFor(t, func() bool {
		d, err := l.Check(limiter.Request{UserID: "u", Model: "m", Cost: 4 * dollar, RequestID: "local"})
		return err == nil && d.Allowed && s.Err() != nil
	})
	srv.Do(t, "CONFIG", "SET", "maxmemory", "0")
	waitFor(t, func() bool { _, err := l.Limits("u", "", "", ""); return err == nil && s.Err() == nil })
	if err := l.Record(limiter.Usage{UserID: "u", Model: "m", RequestID: "local", Cost: dollar / 10, HasCost: true, Timestamp: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	if got := remaining(); got != 10*dollar-5*dollar-dollar/10 {
		t.Fatalf("%d left in Redis, want 4.9: the local estimate was refunded from the shared budget", got)
	}
}

// TestBudgetEstimateRefundedAfterBlip: an estimate reserved in Redis is
// refunded there by its record even if calls went to the fail mode for a
// while in between, for this user or another.
func TestBudgetEstimateRefundedAfterBlip(t *testing.T) {
	srv, s, l, clk := newLocalBudget(t)
	if d, err := l.Check(limiter.Request{UserID: "alice", Model: "m", Cost: 5 * dollar, RequestID: "r1"}); err != nil || !d.Allowed {
		t.Fatal(d, err)
	}
	srv.Do(t, "CONFIG", "SET", "maxmemory", "1")
	waitFor(t, func() bool {
		_, _ = l.Check(limiter.Request{UserID: "bob", Model: "m", Cost: 1})
		return s.Err() != nil
	})
	srv.Do(t, "CONFIG", "SET", "maxmemory", "0")
	waitFor(t, func() bool {
		_, err := l.Check(limiter.Request{UserID: "carol", Model: "m", Cost: 1})
		return err == nil && s.Err() == nil
	})
	if err := l.Record(limiter.Usage{UserID: "alice", Model: "m", RequestID: "r1", Cost: dollar, HasCost: true, Timestamp: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	st, err := l.Limits("alice", "", "", "")
	if err != nil || st[0].Remaining != 9*dollar {
		t.Fatalf("alice: %+v %v, want $9 left after a $1 call whose $5 estimate was reserved in Redis", st, err)
	}
}

// newLocalBudget is a limiter with a $10 day budget on a Redis store in
// FailLocal mode, once the store reaches Redis.
func newLocalBudget(t *testing.T) (*redistest.Server, *Store, *limiter.Limiter, *clock.Manual) {
	t.Helper()
	srv, client := standalone(t)
	s := newStoreWithin(t, client, FailLocal, 5*time.Second)
	clk := clock.NewManual(time.Now())
	l, err := limiter.New([]limiter.Rule{{Window: limiter.Day, Unit: limiter.USD, Limit: 10 * dollar}},
		limiter.Options{Clock: clk, Store: s, Spend: &fixedSpend{}})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return s.Err() == nil })
	return srv, s, l, clk
}
