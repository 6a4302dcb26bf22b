package redisquota

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmusage/llmusage/internal/redistest"
	"github.com/llmusage/llmusage/limiter"
)

// bucket is a bucket whose refill over a test's seconds is negligible
// (its window is a day), so that levels are exact.
func bucket(unit limiter.Unit, limit int64, provider string) limiter.Bucket {
	return limiter.Bucket{Scope: &limiter.Scope{Window: limiter.Day, Unit: unit, Provider: provider}, Limit: limit}
}

func newStore(t *testing.T, client redis.UniversalClient, mode FailMode) *Store {
	t.Helper()
	return newStoreWithin(t, client, mode, 200*time.Millisecond)
}

// newStoreWithin is newStore with a Redis timeout: a test whose figures
// assume that Redis answered, not the fail mode, takes a long one, so
// that a slow call on a busy machine (the race detector, parallel
// packages) does not send its check to the fail mode.
func newStoreWithin(t *testing.T, client redis.UniversalClient, mode FailMode, timeout time.Duration) *Store {
	t.Helper()
	s := New(Options{Client: client, FailMode: mode, ReplicaID: t.Name(), Timeout: timeout})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

func standalone(t testing.TB) (*redistest.Server, redis.UniversalClient) {
	t.Helper()
	srv := redistest.Start(t)
	opts, err := redis.ParseURL(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	opts.ContextTimeoutEnabled = true
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return srv, c
}

func TestBucketArithmetic(t *testing.T) {
	_, client := standalone(t)
	s := newStore(t, client, FailClosed)
	checkBucketArithmetic(t, s)
}

func TestBucketArithmeticOnCluster(t *testing.T) {
	cluster := redistest.StartCluster(t, 3)
	opts, err := redis.ParseClusterURL(cluster.URL())
	if err != nil {
		t.Fatal(err)
	}
	opts.ContextTimeoutEnabled = true
	client := redis.NewClusterClient(opts)
	t.Cleanup(func() { client.Close() })
	s := newStore(t, client, FailClosed)
	// Users whose keys land on different masters: each user's buckets
	// share a slot, or the script would fail with CROSSSLOT.
	for i := 0; i < 10; i++ {
		t.Run("user"+strconv.Itoa(i), func(t *testing.T) { checkBucketArithmetic(t, s) })
	}
}

// checkBucketArithmetic runs checks and records for one user, as the
// limiter's memory store would, and compares the levels.
func checkBucketArithmetic(t *testing.T, s *Store) {
	t.Helper()
	now := time.Now()
	user := "user " + t.Name() + " {with} braces: and colons"
	requests, tokens := bucket(limiter.Requests, 3, ""), bucket(limiter.Tokens, 100, "openai")
	bs := []limiter.Bucket{requests, tokens}
	levels := make([]float64, 2)
	take := func(estimate int64, wantAllowed bool, wantRequests, wantTokens float64) {
		t.Helper()
		allowed, err := s.Take(now, user, bs, []int64{1, max(estimate, 1)}, []int64{1, estimate}, levels)
		if err != nil {
			t.Fatal(err)
		}
		if allowed != wantAllowed || !near(levels[0], wantRequests) || !near(levels[1], wantTokens) {
			t.Fatalf("take %d: allowed %v, levels %v; want %v, [%v %v]", estimate, allowed, levels, wantAllowed, wantRequests, wantTokens)
		}
	}
	take(40, true, 2, 60)
	take(50, true, 1, 10)
	// All or none: the requests bucket holds 1, the tokens bucket only 10.
	take(20, false, 1, 10)
	take(10, true, 0, 0)
	take(0, false, 0, 0)
	// A record is never refused: it puts the bucket into debt...
	if err := s.Charge(now, user, bs, []int64{1, 50}); err != nil {
		t.Fatal(err)
	}
	if err := s.Levels(now, user, bs, levels); err != nil || !near(levels[0], -1) || !near(levels[1], -50) {
		t.Fatalf("after a record in debt: %v, %v", levels, err)
	}
	// ...and a refund never fills a bucket past its capacity.
	if err := s.Charge(now, user, bs, []int64{-10, -1000}); err != nil {
		t.Fatal(err)
	}
	if err := s.Levels(now, user, bs, levels); err != nil || !near(levels[0], 3) || !near(levels[1], 100) {
		t.Fatalf("after refunds: %v, %v", levels, err)
	}
}

func near(got, want float64) bool { return got > want-0.01 && got < want+0.01 }

// TestKeysExpire: a bucket's key lives until the bucket would be full
// again, and a full bucket has none, so that Redis memory follows the
// active users.
func TestKeysExpire(t *testing.T) {
	srv, client := standalone(t)
	s := newStore(t, client, FailClosed)
	now := time.Now()
	b := limiter.Bucket{Scope: &limiter.Scope{Window: limiter.Minute, Unit: limiter.Requests}, Limit: 60}
	levels := make([]float64, 1)
	for i := 0; i < 3; i++ {
		if _, err := s.Take(now, "alice", []limiter.Bucket{b}, []int64{1}, []int64{1}, levels); err != nil {
			t.Fatal(err)
		}
	}
	keys := userKeys(t, srv)
	if len(keys) != 1 {
		t.Fatalf("keys: %v, want one bucket", keys)
	}
	// 3 of 60 a minute missing: full again in 3 s; the key expires a second after.
	ttl, _ := strconv.Atoi(srv.Do(t, "PTTL", keys[0]))
	if ttl < 3000 || ttl > 4100 {
		t.Fatalf("PTTL %d ms, want about 3000 + 1000", ttl)
	}
	// A refund that fills it deletes the key.
	if err := s.Charge(now, "alice", []limiter.Bucket{b}, []int64{-3}); err != nil {
		t.Fatal(err)
	}
	if got := srv.Do(t, "EXISTS", keys[0]); got != "0" {
		t.Fatalf("the key of a full bucket exists: %s", got)
	}
}

// TestFailModes stops Redis: every call is answered within the timeout by
// the fail mode, Err says why, and once Redis is back the shared buckets
// answer again within seconds, with what the local share admitted.
func TestFailModes(t *testing.T) {
	f := func(mode FailMode, check func(t *testing.T, allowed bool, err error)) {
		t.Run(string(mode), func(t *testing.T) {
			srv, client := standalone(t)
			s := newStore(t, client, mode)
			b := []limiter.Bucket{bucket(limiter.Requests, 10, "")}
			levels := make([]float64, 1)
			waitFor(t, func() bool { return s.Replicas() == 1 && s.Err() == nil })
			srv.Stop(t)
			for i := 0; i < 5; i++ {
				start := time.Now()
				allowed, err := s.Take(time.Now(), "alice", b, []int64{1}, []int64{1}, levels)
				if d := time.Since(start); d > 200*time.Millisecond+100*time.Millisecond {
					t.Fatalf("check %d took %s with Redis down, over the 200 ms timeout", i, d)
				}
				check(t, allowed, err)
			}
			if s.Err() == nil {
				t.Fatal("Err is nil with Redis down")
			}
			srv.Restart(t)
			waitFor(t, func() bool { return s.Err() == nil })
			allowed, err := s.Take(time.Now(), "alice", b, []int64{1}, []int64{1}, levels)
			want := 9.0 // Redis restarted empty
			if mode == FailLocal {
				want = 4 // and the 5 the local share admitted meanwhile written back
			}
			if err != nil || !allowed || !near(levels[0], want) {
				t.Fatalf("after Redis came back: %v %v %v, want the shared bucket at %v", allowed, levels, err, want)
			}
		})
	}
	f(FailLocal, func(t *testing.T, allowed bool, err error) {
		if err != nil || !allowed {
			t.Fatalf("local: %v %v", allowed, err)
		}
	})
	f(FailOpen, func(t *testing.T, allowed bool, err error) {
		if err != nil || !allowed {
			t.Fatalf("open: %v %v", allowed, err)
		}
	})
	f(FailClosed, func(t *testing.T, _ bool, err error) {
		if !errors.Is(err, limiter.ErrStoreUnavailable) {
			t.Fatalf("closed: %v, want ErrStoreUnavailable", err)
		}
	})
}

// TestLocalShare: with three replicas registered, a replica falls back to
// a third of each limit while Redis is out of reach, starting where the
// shared bucket it last saw stood: a user who had used 24 of 30 gets 6
// more from the fleet, 2 per replica, and a new user 10 per replica.
func TestLocalShare(t *testing.T) {
	srv, client := standalone(t)
	replicas := make([]*Store, 3)
	for i := range replicas {
		replicas[i] = New(Options{Client: client, ReplicaID: "replica-" + strconv.Itoa(i), Timeout: 200 * time.Millisecond})
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, r := range replicas {
		wg.Add(1)
		go func() { defer wg.Done(); r.Run(ctx) }()
	}
	defer func() { cancel(); wg.Wait() }()
	waitFor(t, func() bool { return replicas[0].Replicas() == 3 && replicas[2].Replicas() == 3 })
	b := []limiter.Bucket{bucket(limiter.Requests, 30, "")}
	levels := make([]float64, 1)
	take := func(r *Store, user string) bool {
		allowed, err := r.Take(time.Now(), user, b, []int64{1}, []int64{1}, levels)
		if err != nil {
			t.Fatal(err)
		}
		return allowed
	}
	for i := 0; i < 24; i++ { // round-robin, as a Service spreads calls
		if !take(replicas[i%3], "alice") {
			t.Fatalf("check %d refused with Redis up", i)
		}
	}
	srv.Stop(t)
	for i, r := range replicas {
		admitted := map[string]int{}
		for _, user := range []string{"alice", "bob"} {
			for j := 0; j < 30; j++ {
				if take(r, user) {
					admitted[user]++
				}
			}
		}
		if admitted["alice"] != 2 || admitted["bob"] != 10 {
			t.Fatalf("replica %d of three admitted %v with Redis down, want alice 2 (6 left of 30, shared) and bob 10 (a third)", i, admitted)
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dropProxy forwards TCP to target, and when armed, drops the connection
// after the next command instead of passing its answer back: the command
// ran, the client saw a connection lost.
func dropProxy(t *testing.T, target string, armed *atomic.Bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go func() { _, _ = io.Copy(r, c); r.Close() }()
			go func() {
				buf := make([]byte, 64<<10)
				for {
					n, err := r.Read(buf)
					if n > 0 {
						if armed.CompareAndSwap(true, false) {
							c.Close()
							r.Close()
							return
						}
						_, _ = c.Write(buf[:n])
					}
					if err != nil {
						c.Close()
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestNoRetryAfterWrite: a connection lost after the script ran must not
// make the client run it again (go-redis retries on EOF by default), or
// one check is charged twice.
func TestNoRetryAfterWrite(t *testing.T) {
	srv := redistest.Start(t)
	var armed atomic.Bool
	client, err := NewClient("redis://"+dropProxy(t, srv.Addr, &armed)+"/0", false)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	s := New(Options{Client: client, FailMode: FailClosed, ReplicaID: "r", Timeout: 500 * time.Millisecond})
	b := []limiter.Bucket{bucket(limiter.Requests, 10, "")}
	levels := make([]float64, 1)
	if _, err := s.Take(time.Now(), "dave", b, []int64{1}, []int64{1}, levels); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	_, _ = s.Take(time.Now(), "dave", b, []int64{1}, []int64{1}, levels) // lost: its answer never arrives
	direct, _ := NewClient(srv.URL(), false)
	defer direct.Close()
	got := New(Options{Client: direct, FailMode: FailClosed, ReplicaID: "reader"})
	if err := got.Levels(time.Now(), "dave", b, levels); err != nil || !near(levels[0], 8) {
		t.Fatalf("after two checks, one of them lost on the way back: level %v (%v), want 8: a retry charged it twice", levels, err)
	}
}

// TestRefusedWrites: a Redis that answers PING but refuses writes (out
// of memory) answers each check from the fail mode, and the local share
// holds: it is not reset at every failed call.
func TestRefusedWrites(t *testing.T) {
	srv, client := standalone(t)
	s := newStore(t, client, FailLocal)
	waitFor(t, func() bool { return s.Err() == nil })
	srv.Do(t, "CONFIG", "SET", "maxmemory", "1")
	b := []limiter.Bucket{bucket(limiter.Requests, 5, "")}
	levels := make([]float64, 1)
	admitted := 0
	for i := 0; i < 20; i++ {
		if allowed, err := s.Take(time.Now(), "frank", b, []int64{1}, []int64{1}, levels); err == nil && allowed {
			admitted++
		}
		time.Sleep(20 * time.Millisecond) // the probe's pace: a flap would reset the share
	}
	if admitted != 5 {
		t.Fatalf("admitted %d of a limit of 5 while Redis refused writes, want 5 from the local share", admitted)
	}
	if err := s.Err(); err == nil || !strings.Contains(err.Error(), "OOM") {
		t.Fatalf("Err while Redis refuses writes: %v, want the refusal", err)
	}
	srv.Do(t, "CONFIG", "SET", "maxmemory", "0")
	if _, err := s.Take(time.Now(), "frank", b, []int64{1}, []int64{1}, levels); err != nil || s.Err() != nil {
		t.Fatalf("after Redis takes writes again: %v, Err %v", err, s.Err())
	}
}

// TestHugeDebt: a record of 10^12 tokens against a 100-token bucket is
// charged whole, its key still expires, and Redis is not taken for down.
func TestHugeDebt(t *testing.T) {
	srv, client := standalone(t)
	s := newStore(t, client, FailClosed)
	b := []limiter.Bucket{bucket(limiter.Tokens, 100, "")}
	if err := s.Charge(time.Now(), "evil", b, []int64{1_000_000_000_000}); err != nil {
		t.Fatal(err)
	}
	keys := userKeys(t, srv)
	if len(keys) != 1 {
		t.Fatalf("keys %v", keys)
	}
	if ttl, _ := strconv.ParseInt(srv.Do(t, "PTTL", keys[0]), 10, 64); ttl <= 0 {
		t.Fatalf("PTTL %d: the key of a bucket in debt never expires", ttl)
	}
	levels := make([]float64, 1)
	if err := s.Levels(time.Now(), "evil", b, levels); err != nil || !near(levels[0], 100-1e12) || s.Err() != nil {
		t.Fatalf("level %v, %v, Err %v", levels, err, s.Err())
	}
}

// TestLateCallChangesNothing: a check that reaches Redis after its caller
// gave up (Redis busy) is not charged: the caller answered it from the
// fail mode.
func TestLateCallChangesNothing(t *testing.T) {
	srv, client := standalone(t)
	s := New(Options{Client: client, FailMode: FailClosed, ReplicaID: "r", Timeout: 50 * time.Millisecond})
	b := []limiter.Bucket{bucket(limiter.Requests, 10, "")}
	levels := make([]float64, 1)
	if _, err := s.Take(time.Now(), "carol", b, []int64{1}, []int64{1}, levels); err != nil { // learns the server's clock
		t.Fatal(err)
	}
	busy := make(chan struct{})
	go func() {
		defer close(busy)
		// Redis runs one script at a time: this one holds it for 300 ms.
		srv.Do(t, "EVAL", "local s = redis.call('TIME') local st = s[1] * 1e6 + s[2] while true do local n = redis.call('TIME') if n[1] * 1e6 + n[2] - st > 300000 then break end end return 1", "0")
	}()
	time.Sleep(50 * time.Millisecond)
	if _, err := s.Take(time.Now(), "carol", b, []int64{1}, []int64{1}, levels); !errors.Is(err, limiter.ErrStoreUnavailable) {
		t.Fatalf("a check while Redis is busy: %v, want the closed fail mode's error", err)
	}
	<-busy
	direct, _ := NewClient(srv.URL(), false)
	defer direct.Close()
	reader := New(Options{Client: direct, FailMode: FailClosed, ReplicaID: "reader"})
	if err := reader.Levels(time.Now(), "carol", b, levels); err != nil || !near(levels[0], 9) {
		t.Fatalf("level %v (%v) after a check answered 503 reached Redis late, want 9: it was charged", levels, err)
	}
}

// TestClockStep: the server's clock steps a second ahead of what this
// replica learnt (an NTP step, a failover): the next call is refused as
// late, and teaches the clock; the ones after it reach the shared bucket
// again, without the replica going down.
func TestClockStep(t *testing.T) {
	_, client := standalone(t)
	s := New(Options{Client: client, FailMode: FailClosed, ReplicaID: "r", Timeout: 200 * time.Millisecond})
	b := []limiter.Bucket{bucket(limiter.Requests, 100, "")}
	levels := make([]float64, 1)
	if _, err := s.Take(time.Now(), "alice", b, []int64{1}, []int64{1}, levels); err != nil {
		t.Fatal(err)
	}
	s.clockOffset.Add(-1_000_000) // as if the server's clock had jumped 1 s ahead
	s.bestAt = time.Time{}        // and the fastest sample were old
	failed := 0
	for i := 0; i < 10; i++ {
		if _, err := s.Take(time.Now(), "alice", b, []int64{1}, []int64{1}, levels); err != nil {
			failed++
		}
	}
	if failed > 1 || s.Err() != nil {
		t.Fatalf("%d of 10 checks failed after a clock step (want at most the first), Err %v", failed, s.Err())
	}
	if err := s.Levels(time.Now(), "alice", b, levels); err != nil || !near(levels[0], float64(100-1-10+failed)) {
		t.Fatalf("level %v (%v): the late call must have changed nothing, the others one each", levels, err)
	}
}

// TestClusterNoRetryAfterWrite is TestNoRetryAfterWrite on a cluster,
// whose client retries on its own, MaxRetries or not.
func TestClusterNoRetryAfterWrite(t *testing.T) {
	cluster := redistest.StartCluster(t, 3)
	var armed atomic.Bool
	var d net.Dialer
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &dropConn{Conn: c, armed: &armed}, nil
	}
	client, err := newClient(cluster.URL(), true, dial)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	s := New(Options{Client: client, FailMode: FailClosed, ReplicaID: "r", Timeout: 2 * time.Second})
	b := []limiter.Bucket{bucket(limiter.Requests, 10, "")}
	levels := make([]float64, 1)
	if _, err := s.Take(time.Now(), "dave", b, []int64{1}, []int64{1}, levels); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	_, _ = s.Take(time.Now(), "dave", b, []int64{1}, []int64{1}, levels)
	direct, _ := NewClient(cluster.URL(), true)
	defer direct.Close()
	reader := New(Options{Client: direct, FailMode: FailClosed, ReplicaID: "reader", Timeout: 2 * time.Second})
	if err := reader.Levels(time.Now(), "dave", b, levels); err != nil || !near(levels[0], 8) {
		t.Fatalf("after two checks, one answer lost: level %v (%v), want 8: the cluster client retried the script", levels, err)
	}
}

// dropConn closes itself instead of returning the next read when armed:
// the command was written and ran; its answer is lost.
type dropConn struct {
	net.Conn
	armed *atomic.Bool
}

func (c *dropConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.armed.CompareAndSwap(true, false) {
		c.Conn.Close()
		return 0, io.EOF
	}
	return n, err
}

// TestOneBadKeyFailsOneRead: a key of another type (one user's) fails
// that user's read at scrape time, not the replica's.
func TestOneBadKeyFailsOneRead(t *testing.T) {
	srv, client := standalone(t)
	s := newStore(t, client, FailClosed)
	b := []limiter.Bucket{bucket(limiter.Requests, 10, "")}
	levels := make([]float64, 1)
	for _, user := range []string{"alice", "bob"} {
		if _, err := s.Take(time.Now(), user, b, []int64{1}, []int64{1}, levels); err != nil {
			t.Fatal(err)
		}
	}
	key := s.userTag("alice") + scopeKey("alice", b[0].Scope)
	srv.Do(t, "DEL", key)
	srv.Do(t, "HSET", key, "l", "1")
	var got []string
	owner := func(user string, sc *limiter.Scope) (limiter.Bucket, bool) {
		return limiter.Bucket{Scope: sc, Limit: 10}, true
	}
	s.Each(time.Now(), owner, func(user string, _ limiter.Bucket, level float64) { got = append(got, user) })
	if strings.Join(got, " ") != "bob" || s.Err() != nil && strings.Contains(s.Err().Error(), "cannot reach") {
		t.Fatalf("Each read %v (want bob alone), Err %v", got, s.Err())
	}
}

// TestRefusalSeedsShares: writes refused after a user used 4 of 5: the
// local share starts where the shared bucket stood, 1 left.
func TestRefusalSeedsShares(t *testing.T) {
	srv, client := standalone(t)
	s := newStore(t, client, FailLocal)
	waitFor(t, func() bool { return s.Err() == nil })
	b := []limiter.Bucket{bucket(limiter.Requests, 5, "")}
	levels := make([]float64, 1)
	for i := 0; i < 4; i++ {
		if allowed, err := s.Take(time.Now(), "gina", b, []int64{1}, []int64{1}, levels); err != nil || !allowed {
			t.Fatalf("check %d: %v %v", i, allowed, err)
		}
	}
	srv.Do(t, "CONFIG", "SET", "maxmemory", "1")
	admitted := 0
	for i := 0; i < 5; i++ {
		if allowed, err := s.Take(time.Now(), "gina", b, []int64{1}, []int64{1}, levels); err == nil && allowed {
			admitted++
		}
	}
	if admitted != 1 {
		t.Fatalf("admitted %d more while Redis refused writes, want the 1 left of 5", admitted)
	}
}

// userKeys lists the keys of users' buckets, holds and markers: not the
// fleet's (registry, epoch) under the {g} tag.
func userKeys(t *testing.T, srv *redistest.Server) []string {
	var out []string
	for _, k := range strings.Fields(srv.Do(t, "KEYS", "llmusage:{*")) {
		if !strings.HasPrefix(k, "llmusage:{g}:") {
			out = append(out, k)
		}
	}
	return out
}
