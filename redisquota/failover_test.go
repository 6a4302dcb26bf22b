package redisquota

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/redistest"
	"github.com/llmusage/llmusage/internal/sidecartest"
	"github.com/llmusage/llmusage/limiter"
)

// TestClusterFailover: three replicas check one user's 60-a-minute limit
// at about 15 checks a second on a Redis Cluster whose master of that user's slot is killed while
// checks flow; its replica is promoted. Admissions stay within the limit,
// its refill, the fail mode's rounding of shares (one per replica) and
// the writes the replica had not received when its master died (none to
// a few on loopback).
func TestClusterFailover(t *testing.T) {
	cluster := redistest.StartClusterWithReplicas(t, 3)
	const limit, run = 60, 8 * time.Second
	rules := []limiter.Rule{{Window: limiter.Minute, Unit: limiter.Requests, Limit: limit}}
	var ls []*limiter.Limiter
	var stores []*Store
	for i := 0; i < 3; i++ {
		client, err := NewClient(cluster.URL(), true)
		if err != nil {
			t.Fatal(err)
		}
		s := New(Options{Client: client, FailMode: FailLocal, ReplicaID: "replica" + string(rune('0'+i)), Timeout: 200 * time.Millisecond})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); s.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done; _ = client.Close() })
		l, err := limiter.New(rules, limiter.Options{Store: s})
		if err != nil {
			t.Fatal(err)
		}
		ls, stores = append(ls, l), append(stores, s)
	}
	waitFor(t, func() bool {
		for _, s := range stores {
			if s.Replicas() != 3 || s.epoch.Load() == nil {
				return false
			}
		}
		return true
	})
	var admitted, checks atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; time.Since(start) < run; i++ {
				d, err := ls[(w+i)%3].Check(limiter.Request{UserID: "u"})
				checks.Add(1)
				if err == nil && d.Allowed {
					admitted.Add(1)
				}
				time.Sleep(200 * time.Millisecond)
			}
		}(w)
	}
	time.Sleep(2 * time.Second)
	master := cluster.MasterOf(t, stores[0].userTag("u"))
	before := admitted.Load()
	master.Stop(t)
	killedAt := time.Since(start)
	wg.Wait()
	t.Logf("%d admitted before the master was killed", before)
	// The replica's promotion takes the node timeout (1 s) and an
	// election; a loaded machine may take longer.
	for _, s := range stores {
		sidecartest.WaitFor(t, 60*time.Second, func() bool { return s.Err() == nil }, "a replica back on the cluster: %v\n%s", s.Err(), cluster.Nodes[len(cluster.Nodes)-1].Do(t, "CLUSTER", "NODES"))
	}
	refill := float64(limit) * run.Minutes()
	bound := limit + int64(math.Ceil(refill)) + 3 + 3
	t.Logf("master of the user's slot killed at %s; admitted %d of %d checks in %s; bound %d = limit %d + refill %.2f + shares' rounding 3 + lost replication 3",
		killedAt.Round(time.Millisecond), admitted.Load(), checks.Load(), run, bound, limit, refill)
	if admitted.Load() > bound {
		t.Fatalf("admitted %d, more than %d", admitted.Load(), bound)
	}
	if admitted.Load() < limit {
		t.Fatalf("admitted %d, fewer than the limit %d: the checks did not go through", admitted.Load(), limit)
	}
}
