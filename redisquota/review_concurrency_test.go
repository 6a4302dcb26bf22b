package redisquota

import (
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/limiter"
)

// Review of concurrent: N limits on Redis. The oracle, as in
// concurrency_test.go: the slots held equal the calls in flight (checks
// allowed whose record has not come), whatever the faults.

// endFence ends every store's lossFence, as if its time had passed.
func endFence(stores []*Store) {
	for _, s := range stores {
		s.lostAt.Store(time.Now().Add(-lossFence).UnixNano())
	}
}

// TestReviewConcurrencyRecordBeforeHolderRecovers: Redis loses its state
// with one call in flight, checked on replica 0. The call ends and its
// record reaches replica 1, which finds the loss first and charges the
// record (there is no hold to settle: the marker is set). Replica 0 then
// recovers: its rehold finds the marker and puts nothing back, but its
// budget part still counts the hold, so a slot stays taken by a call
// that is over (until the key expires, which a user's calls never let
// it do).
func TestReviewConcurrencyRecordBeforeHolderRecovers(t *testing.T) {
	srv, client := standalone(t)
	stores, ls := concurrencyReplicas(t, client, 2, FailClosed)
	if in := checkAll(t, ls[:1], []string{"x"}); len(in) != 1 {
		t.Fatalf("admitted %v", in)
	}
	srv.Do(t, "FLUSHALL")
	if err := ls[1].Record(limiter.Usage{UserID: "u", RequestID: "x"}); err != nil {
		t.Fatal(err)
	}
	inFlightLeft(t, ls[0]) // replica 0 notices the loss and recovers
	endFence(stores)
	for i, l := range ls {
		if left := inFlightLeft(t, l); left != 5 {
			t.Fatalf("replica %d: %d slots left with no call in flight, want 5", i, left)
		}
	}
}

// TestReviewConcurrencyRetryOnOtherReplicaThenLoss: a check sent again
// (a client's retry) on another replica moves the call's hold there;
// the first replica still lists it. After Redis lost its state both put
// the hold back and both count it: two slots for one call, and after
// its record one slot stays taken for ever.
func TestReviewConcurrencyRetryOnOtherReplicaThenLoss(t *testing.T) {
	srv, client := standalone(t)
	stores, ls := concurrencyReplicas(t, client, 2, FailClosed)
	for i := range ls {
		if in := checkAll(t, ls[i:i+1], []string{"x"}); len(in) != 1 {
			t.Fatalf("replica %d: admitted %v", i, in)
		}
	}
	if left := inFlightLeft(t, ls[0]); left != 4 {
		t.Fatalf("%d slots left with one call in flight (checked twice), want 4", left)
	}
	srv.Do(t, "FLUSHALL")
	for _, l := range ls {
		inFlightLeft(t, l) // each recovers
	}
	endFence(stores)
	if left := inFlightLeft(t, ls[0]); left != 4 {
		t.Fatalf("after the loss %d slots left with one call in flight, want 4", left)
	}
	if err := ls[0].Record(limiter.Usage{UserID: "u", RequestID: "x"}); err != nil {
		t.Fatal(err)
	}
	if left := inFlightLeft(t, ls[1]); left != 5 {
		t.Fatalf("after the record %d slots left with no call in flight, want 5", left)
	}
}

// TestReviewConcurrencyRetryRefusedByPool: a retried check passes the
// user's concurrent: 1 (its own hold is given back as it is taken
// again) and is refused by a shared pool of tokens that another user
// spent meanwhile. Undoing the user's part must leave the call's slot
// held (the call is in flight), not give it back: else a second call
// of the user runs beside it.
func TestReviewConcurrencyRetryRefusedByPool(t *testing.T) {
	_, client := standalone(t)
	rules := []limiter.Rule{
		{Window: limiter.InFlight, Unit: limiter.Concurrent, Limit: 1},
		{Window: limiter.Day, Unit: limiter.Tokens, Limit: 100, Per: limiter.PerAll},
	}
	s := New(Options{Client: client, FailMode: FailClosed, ReplicaID: t.Name(), Timeout: time.Second})
	l, err := limiter.New(rules, limiter.Options{Clock: clock.System{}, Store: s})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.register(t.Context()); err != nil {
		t.Fatal(err)
	}
	check := func(user, id string, tokens int64) bool {
		t.Helper()
		d, err := l.Check(limiter.Request{UserID: user, RequestID: id, Tokens: tokens})
		if err != nil {
			t.Fatal(err)
		}
		return d.Allowed
	}
	if !check("u", "a", 60) || !check("v", "b", 30) {
		t.Fatal("the first two calls were refused")
	}
	if check("u", "a", 75) {
		t.Fatal("the retry with 75 tokens passed a pool with 10 left and 60 held for it")
	}
	if check("u", "c", 5) {
		t.Fatal("a second call of u passed concurrent: 1 with a call in flight")
	}
}

// TestReviewConcurrencyCheckAfterItsRecordThenLoss: a check sent again
// after its call's record holds nothing in Redis (the charged marker
// says the call is over), but this replica listed a hold for it with
// the check's amounts; after Redis lost its state (and the marker) it
// put that hold back and counted its slot for a call that is over.
func TestReviewConcurrencyCheckAfterItsRecordThenLoss(t *testing.T) {
	srv, client := standalone(t)
	stores, ls := concurrencyReplicas(t, client, 1, FailClosed)
	l := ls[0]
	if in := checkAll(t, ls, []string{"x"}); len(in) != 1 {
		t.Fatalf("admitted %v", in)
	}
	if err := l.Record(limiter.Usage{UserID: "u", RequestID: "x"}); err != nil {
		t.Fatal(err)
	}
	if in := checkAll(t, ls, []string{"x"}); len(in) != 1 { // sent again, late
		t.Fatalf("admitted %v", in)
	}
	if left := inFlightLeft(t, l); left != 5 {
		t.Fatalf("%d slots left with no call in flight, want 5", left)
	}
	srv.Do(t, "FLUSHALL")
	inFlightLeft(t, l) // recovers
	endFence(stores)
	if left := inFlightLeft(t, l); left != 5 {
		t.Fatalf("after the loss %d slots left with no call in flight, want 5", left)
	}
}
