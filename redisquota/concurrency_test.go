package redisquota

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/limiter"
)

// The oracle: under concurrent: 5, at most 5 checks of the user are
// allowed whose record has not come, whichever replicas they reach, and
// after a replica died or Redis lost its state exactly the calls still
// in flight hold slots.

var concurrencyRules = []limiter.Rule{
	{Window: limiter.InFlight, Unit: limiter.Concurrent, Limit: 5},
	{Window: limiter.Minute, Unit: limiter.Requests, Limit: 1000},
}

func concurrencyReplicas(t *testing.T, client redis.UniversalClient, n int, mode FailMode) ([]*Store, []*limiter.Limiter) {
	t.Helper()
	var stores []*Store
	var ls []*limiter.Limiter
	for i := range n {
		s := New(Options{Client: client, FailMode: mode, ReplicaID: fmt.Sprintf("%s-%d", t.Name(), i), Timeout: time.Second})
		l, err := limiter.New(concurrencyRules, limiter.Options{Clock: clock.System{}, Store: s})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.register(t.Context()); err != nil {
			t.Fatal(err)
		}
		stores, ls = append(stores, s), append(ls, l)
	}
	return stores, ls
}

// checkAll checks ids concurrently, id i on replica i % len(ls), and
// returns the allowed ones.
func checkAll(t *testing.T, ls []*limiter.Limiter, ids []string) []string {
	t.Helper()
	allowed := make([]bool, len(ids))
	concurrently(len(ids), func(i int) bool {
		d, err := ls[i%len(ls)].Check(limiter.Request{UserID: "u", RequestID: ids[i]})
		if err != nil {
			t.Error(err)
		}
		allowed[i] = d.Allowed
		return d.Allowed
	})
	var out []string
	for i, ok := range allowed {
		if ok {
			out = append(out, ids[i])
		}
	}
	return out
}

func inFlightLeft(t *testing.T, l *limiter.Limiter) int64 {
	t.Helper()
	st, err := l.Limits("u", "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Unit == limiter.Concurrent {
			return s.Remaining
		}
	}
	t.Fatal("no concurrency limit in", st)
	return 0
}

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return out
}

// TestConcurrencyAcrossReplicas: 30 calls at once over three replicas
// admit 5; their records, sent to other replicas than their checks',
// give the slots back, and the next 30 admit 5 again.
func TestConcurrencyAcrossReplicas(t *testing.T) {
	for _, topo := range []string{"standalone", "cluster"} {
		t.Run(topo, func(t *testing.T) {
			var client redis.UniversalClient
			if topo == "cluster" {
				client = clusterClient(t)
			} else {
				_, client = standalone(t)
			}
			_, ls := concurrencyReplicas(t, client, 3, FailClosed)
			for round := range 4 {
				in := checkAll(t, ls, ids(fmt.Sprintf("r%d", round), 30))
				if len(in) != 5 {
					t.Fatalf("round %d: %d calls admitted at once, want 5", round, len(in))
				}
				if left := inFlightLeft(t, ls[1]); left != 0 {
					t.Fatalf("round %d: %d slots left with 5 in flight", round, left)
				}
				for i, id := range in {
					if err := ls[(i+1)%3].Record(limiter.Usage{UserID: "u", RequestID: id, Tokens: 1}); err != nil {
						t.Fatal(err)
					}
				}
				if left := inFlightLeft(t, ls[2]); left != 5 {
					t.Fatalf("round %d: %d slots left after every record, want 5", round, left)
				}
			}
		})
	}
}

// TestConcurrencySlotsOfDeadReplica: a replica killed with 3 calls in
// flight gives its slots back when it leaves the registry, not after the
// concurrency timeout.
func TestConcurrencySlotsOfDeadReplica(t *testing.T) {
	_, client := standalone(t)
	stores, ls := concurrencyReplicas(t, client, 2, FailClosed)
	if in := checkAll(t, ls[:1], ids("dead", 3)); len(in) != 3 {
		t.Fatalf("%d admitted, want 3", len(in))
	}
	if in := checkAll(t, ls[1:], ids("live", 5)); len(in) != 2 {
		t.Fatalf("the other replica admitted %d beside 3 in flight, want 2", len(in))
	}
	// Replica 0 dies: its last registration is older than replicaTTL.
	if err := client.ZAdd(t.Context(), stores[1].globalKey("replicas"), redisZ(0, stores[0].instance)).Err(); err != nil {
		t.Fatal(err)
	}
	if err := stores[1].register(t.Context()); err != nil {
		t.Fatal(err)
	}
	if left := inFlightLeft(t, ls[1]); left != 3 {
		t.Fatalf("%d slots left after the replica with 3 left, want 3 (2 still in flight)", left)
	}
}

// TestConcurrencyAfterRedisLoss: Redis restarts empty with 4 calls in
// flight on two replicas. No replica admits a slot that is not free:
// while the others may not have put theirs back (lossFence), new slots
// are refused; then exactly one is free, and the records of the four
// calls give theirs back.
func TestConcurrencyAfterRedisLoss(t *testing.T) {
	srv, client := standalone(t)
	stores, ls := concurrencyReplicas(t, client, 3, FailClosed)
	held := [][]string{checkAll(t, ls[:1], ids("a", 2)), checkAll(t, ls[1:2], ids("b", 2))}
	if len(held[0]) != 2 || len(held[1]) != 2 {
		t.Fatalf("admitted %v, want 2 and 2", held)
	}
	srv.Do(t, "FLUSHALL")
	// Replica 2, which holds nothing, is the first to notice the loss.
	if in := checkAll(t, ls[2:], ids("c", 3)); len(in) != 0 {
		t.Fatalf("replica 2 admitted %d right after the loss, before the others put their slots back", len(in))
	}
	for _, l := range ls[:2] {
		inFlightLeft(t, l) // each notices the loss and puts its slots back
	}
	for _, s := range stores {
		s.lostAt.Store(time.Now().Add(-lossFence).UnixNano()) // the fence is over
	}
	for i, l := range ls {
		if left := inFlightLeft(t, l); left != 1 {
			t.Fatalf("replica %d: %d slots left after the loss, want 1 (4 in flight)", i, left)
		}
	}
	if in := checkAll(t, ls, ids("d", 6)); len(in) != 1 {
		t.Fatalf("%d admitted after the loss, want 1", len(in))
	}
	for r, hs := range held {
		for _, id := range hs {
			if err := ls[2-r].Record(limiter.Usage{UserID: "u", RequestID: id}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if left := inFlightLeft(t, ls[0]); left != 4 {
		t.Fatalf("%d slots left after the four records, want 4 (1 in flight)", left)
	}
}

// TestConcurrencyLocalShare: with Redis out of reach each of three
// replicas admits its share of concurrent: 5, one.
func TestConcurrencyLocalShare(t *testing.T) {
	srv, client := standalone(t)
	stores, ls := concurrencyReplicas(t, client, 3, FailLocal)
	for _, s := range stores {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); s.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	waitFor(t, func() bool {
		return stores[0].Replicas() == 3 && stores[1].Replicas() == 3 && stores[2].Replicas() == 3
	})
	srv.Stop(t)
	for r, l := range ls {
		if in := checkAll(t, []*limiter.Limiter{l}, ids(fmt.Sprint("local", r), 5)); len(in) != 1 {
			t.Fatalf("replica %d admitted %d without Redis, want 1 (5 / 3)", r, len(in))
		}
	}
}

// TestRecordOfLocalHoldDuringRecovery: a record of a call checked while
// Redis was away arrives as the sidecar recovers from Redis losing its
// state. The record's charge holds the limiter's accepting lock, and a
// recovery holds the store's recovery lock, then takes the accepting
// lock to add its parts: the charge must not wait for the recovery lock.
// The fault test's sidecar froze there, its holds put back in Redis but
// not counted, and the records of their calls then freed slots nobody
// had taken.
func TestRecordOfLocalHoldDuringRecovery(t *testing.T) {
	srv, client := standalone(t)
	stores, ls := concurrencyReplicas(t, client, 1, FailLocal)
	s, l := stores[0], ls[0]
	srv.Stop(t)
	if in := checkAll(t, ls, ids("local", 1)); len(in) != 1 {
		t.Fatalf("the check without Redis was refused")
	}
	srv.Restart(t) // empty: a loss
	// A recovery has begun (restore: calls go to Redis), and holds the
	// recovery lock when the record comes; it then adds its parts.
	s.restoring.Store(true)
	locked := make(chan struct{})
	recovered := make(chan struct{})
	go func() {
		defer close(recovered)
		s.recovery.Lock()
		defer s.recovery.Unlock()
		close(locked)
		time.Sleep(100 * time.Millisecond) // the record's charge runs
		_ = (*s.recoverer.Load())(true)
		s.restoring.Store(false)
	}()
	accepted := make(chan error, 1)
	go func() {
		accepted <- l.Accept(func() error { <-locked; return nil },
			[]limiter.Usage{{UserID: "u", RequestID: "local-0", Tokens: 1}})
	}()
	for _, done := range []chan struct{}{recovered} {
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("the record's charge and the recovery wait for each other")
		}
	}
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}
	s.lostAt.Store(0) // past the fence
	if left := inFlightLeft(t, l); left != 5 {
		t.Fatalf("%d slots left after the only call's record, want 5", left)
	}
}
