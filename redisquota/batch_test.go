package redisquota

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/limiter"
)

// takeCall is a check of user's bucket b for cost, as runAt builds it.
func takeCall(t *testing.T, s *Store, user string, b limiter.Bucket, cost, deadline int64, id string) *scriptCall {
	t.Helper()
	epoch := ""
	if p := s.epoch.Load(); p != nil {
		epoch = *p
	}
	keys, args := s.scriptArgs(opTake, user, []limiter.Bucket{b}, []int64{cost}, []int64{cost}, deadline, id, epoch)
	return &scriptCall{ctx: t.Context(), keys: keys, args: args, n: 1}
}

// evalshaCalls is how many EVALSHA commands Redis ran.
func evalshaCalls(t *testing.T, c redis.UniversalClient) int {
	t.Helper()
	info, err := c.Info(t.Context(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_evalsha:calls="); ok {
			n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			return n
		}
	}
	return 0
}

// TestBatchedChecksAdmitExactlyTheCapacity: checks of few users, many at
// once from two replicas, go in batches, and each user gets exactly its
// capacity.
func TestBatchedChecksAdmitExactlyTheCapacity(t *testing.T) {
	_, client := standalone(t)
	rules := []limiter.Rule{{Window: limiter.Day, Unit: limiter.Requests, Limit: 25}}
	clk := clock.NewManual(time.Now())
	var ls []*limiter.Limiter
	for range 2 {
		l, err := limiter.New(rules, limiter.Options{Clock: clk, Store: newStoreWithin(t, client, FailClosed, 5*time.Second)})
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	users := []string{"a", "b", "c", "d"}
	const perUser = 120
	before := evalshaCalls(t, client)
	var allowed [4]atomic.Int64
	var wg sync.WaitGroup
	for i := range perUser * len(users) {
		wg.Go(func() {
			u := i % len(users)
			d, err := ls[i%2].Check(limiter.Request{UserID: users[u], Model: "m", RequestID: "r" + strconv.Itoa(i)})
			if err != nil {
				t.Error(err)
				return
			}
			if d.Allowed {
				allowed[u].Add(1)
			}
		})
	}
	wg.Wait()
	for u := range users {
		if got := allowed[u].Load(); got != 25 {
			t.Errorf("user %s: %d checks allowed, want 25", users[u], got)
		}
	}
	if calls := evalshaCalls(t, client) - before; calls >= perUser*len(users) {
		t.Errorf("%d script calls for %d checks: none batched", calls, perUser*len(users))
	}
}

// TestBatchMixedDeadlines: in one batch, the calls past their deadline
// change nothing and answer -1; the others are judged as if alone.
func TestBatchMixedDeadlines(t *testing.T) {
	_, client := standalone(t)
	s := newStoreWithin(t, client, FailClosed, 5*time.Second)
	if err := s.register(t.Context()); err != nil {
		t.Fatal(err)
	}
	b := bucket(limiter.Requests, 10, "")
	future := time.Now().Add(time.Hour).UnixMicro() + 1e12 // whatever the server's clock
	calls := []*scriptCall{
		takeCall(t, s, "u", b, 3, 0, ""),
		takeCall(t, s, "u", b, 3, 1, ""), // long past
		takeCall(t, s, "u", b, 3, future, ""),
		takeCall(t, s, "u", b, 3, 1, ""),
		takeCall(t, s, "u", b, 3, 0, ""),
		takeCall(t, s, "u", b, 3, 0, ""), // 1 left: refused
	}
	s.sendBatch(calls)
	want := []struct {
		allowed float64
		level   float64
	}{{1, 7}, {-1, 0}, {1, 4}, {-1, 0}, {1, 1}, {0, 1}}
	for i, c := range calls {
		if c.err != nil {
			t.Fatalf("call %d: %v", i, c.err)
		}
		if c.res[0] != want[i].allowed || (c.res[0] >= 0 && int64(c.res[2]) != int64(want[i].level)) {
			t.Errorf("call %d: allowed %v level %v, want %v and %v", i, c.res[0], c.res[2], want[i].allowed, want[i].level)
		}
	}
	levels := make([]float64, 1)
	if err := s.Levels(time.Now(), "u", []limiter.Bucket{b}, levels); err != nil || int64(levels[0]) != 1 {
		t.Fatalf("level %v (%v), want 1: three calls of 3 taken", levels[0], err)
	}
}

// TestBatchDuplicateRequestID: the second check of a request_id in the
// same batch replaces the first one's hold, as it would in the next
// call: the bucket holds one check's cost.
func TestBatchDuplicateRequestID(t *testing.T) {
	_, client := standalone(t)
	s := newStoreWithin(t, client, FailClosed, 5*time.Second)
	if err := s.register(t.Context()); err != nil {
		t.Fatal(err)
	}
	b := bucket(limiter.Tokens, 100, "")
	calls := []*scriptCall{
		takeCall(t, s, "u", b, 30, 0, "r1"),
		takeCall(t, s, "v", b, 5, 0, "r1"), // another user's request_id r1
		takeCall(t, s, "u", b, 30, 0, "r1"),
		takeCall(t, s, "u", b, 10, 0, "r2"),
	}
	s.sendBatch(calls)
	want := []struct{ allowed, level float64 }{{1, 70}, {1, 95}, {2, 70}, {1, 60}}
	for i, c := range calls {
		if c.err != nil {
			t.Fatalf("call %d: %v", i, c.err)
		}
		if c.res[0] != want[i].allowed || int64(c.res[2]) != int64(want[i].level) {
			t.Errorf("call %d: allowed %v level %v, want %v and %v", i, c.res[0], c.res[2], want[i].allowed, want[i].level)
		}
	}
	// The record of r1 settles its one hold: 30 held, 20 charged.
	if err := s.ChargeOnce(time.Now(), "u", []limiter.Bucket{b}, []int64{20}, "r1"); err != nil {
		t.Fatal(err)
	}
	levels := make([]float64, 1)
	if err := s.Levels(time.Now(), "u", []limiter.Bucket{b}, levels); err != nil || int64(levels[0]) != 70 {
		t.Fatalf("level %v (%v), want 70: r1 charged 20 once, r2 holds 10", levels[0], err)
	}
}

// TestBatchCallErrorIsItsOwn: a call that fails in the script (its key
// holds another type) answers its error; the calls around it are judged.
func TestBatchCallErrorIsItsOwn(t *testing.T) {
	_, client := standalone(t)
	s := newStoreWithin(t, client, FailClosed, 5*time.Second)
	if err := s.register(t.Context()); err != nil {
		t.Fatal(err)
	}
	b := bucket(limiter.Requests, 10, "")
	bad := takeCall(t, s, "bad", b, 1, 0, "")
	if err := client.HSet(t.Context(), bad.keys[0], "x", "1").Err(); err != nil {
		t.Fatal(err)
	}
	calls := []*scriptCall{takeCall(t, s, "u", b, 1, 0, ""), bad, takeCall(t, s, "u", b, 1, 0, "")}
	s.sendBatch(calls)
	if calls[0].err != nil || calls[2].err != nil || calls[0].res[0] != 1 || int64(calls[2].res[2]) != 8 {
		t.Fatalf("calls around the failing one: %v %v, %v %v; want allowed, level 8 after", calls[0].res, calls[0].err, calls[2].res, calls[2].err)
	}
	if calls[1].err == nil || !isRedisError(calls[1].err) || !strings.Contains(calls[1].err.Error(), "WRONGTYPE") {
		t.Fatalf("failing call: %v, want its WRONGTYPE error answer", calls[1].err)
	}
}

// TestBatchedChecksAfterEpochLoss: Redis loses its state while checks
// are queued; every call of the batch answers the loss, each recovers
// (one recovery puts the levels back), and the user gets what it had
// left, exactly.
func TestBatchedChecksAfterEpochLoss(t *testing.T) {
	srv, client := standalone(t)
	rules := []limiter.Rule{{Window: limiter.Day, Unit: limiter.Requests, Limit: 10}}
	clk := clock.NewManual(time.Now())
	s := newStoreWithin(t, client, FailClosed, 5*time.Second)
	l, err := limiter.New(rules, limiter.Options{Clock: clk, Store: s})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.register(t.Context()); err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		if d, err := l.Check(limiter.Request{UserID: "u", Model: "m", RequestID: "a" + strconv.Itoa(i)}); err != nil || !d.Allowed {
			t.Fatal(d, err)
		}
	}
	srv.Do(t, "FLUSHALL")
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			d, err := l.Check(limiter.Request{UserID: "u", Model: "m", RequestID: "b" + strconv.Itoa(i)})
			if err != nil {
				t.Error(err)
				return
			}
			if d.Allowed {
				allowed.Add(1)
			}
		})
	}
	wg.Wait()
	if got := allowed.Load(); got != 4 {
		t.Fatalf("%d checks allowed after the loss, want the 4 left", got)
	}
}

// TestExpiredCallIsAnError: a call whose time ran out before it was
// sent (alone, or queued behind a batch) is not sent and answers its
// ctx's error, so that the check goes to the fail mode; it once came
// back with neither an answer nor an error, and Take panicked.
func TestExpiredCallIsAnError(t *testing.T) {
	_, client := standalone(t)
	s := New(Options{Client: client, FailMode: FailOpen, ReplicaID: "x", Timeout: time.Nanosecond})
	levels := make([]float64, 1)
	if _, err := s.Take(time.Now(), "u", []limiter.Bucket{bucket(limiter.Requests, 10, "")}, []int64{1}, []int64{1}, levels); err != nil {
		t.Fatalf("a check past its time under the open fail mode: %v", err)
	}

	s = newStoreWithin(t, client, FailClosed, 5*time.Second)
	c := takeCall(t, s, "u", bucket(limiter.Requests, 10, ""), 1, 0, "")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c.ctx = ctx
	if err := s.callScript(c); err == nil && c.err == nil {
		t.Fatalf("a lone call past its time: no error and answer %v", c.res)
	}
}
