package redisquota

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/internal/redistest"
	"github.com/llmusage/llmusage/limiter"
)

// poolRules are the issue's: each user 30 a minute, Groq's account 30 a
// minute for all users together, and team search $1 a day shared.
var poolRules = []limiter.Rule{
	{Window: limiter.Minute, Unit: limiter.Requests, Limit: 30},
	{Provider: "groq", Window: limiter.Minute, Unit: limiter.Requests, Limit: 30, Per: limiter.PerAll},
	{TeamID: "search", Window: limiter.Day, Unit: limiter.USD, Limit: dollar, Per: limiter.PerTeam},
}

// poolReplicas are three limiters on client, sharing db.
func poolReplicas(t *testing.T, client redis.UniversalClient, db limiter.SpendSource) []*limiter.Limiter {
	ls, _ := poolReplicasIn(t, client, db, FailClosed)
	return ls
}

// poolReplicasIn is poolReplicas in a fail mode, with the stores.
func poolReplicasIn(t *testing.T, client redis.UniversalClient, db limiter.SpendSource, mode FailMode) ([]*limiter.Limiter, []*Store) {
	t.Helper()
	var ls []*limiter.Limiter
	var stores []*Store
	for i := range 3 {
		s := New(Options{Client: client, FailMode: mode, ReplicaID: fmt.Sprintf("%s-%d", t.Name(), i), Timeout: time.Second})
		stores = append(stores, s)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); s.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		l, err := limiter.New(poolRules, limiter.Options{Clock: clock.System{}, Store: s, Spend: db})
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	return ls, stores
}

// TestPoolLocalShare: with Redis out of reach, each of three replicas
// admits a third of a shared pool, as of a user's limit.
func TestPoolLocalShare(t *testing.T) {
	srv, client := standalone(t)
	ls, stores := poolReplicasIn(t, client, &fixedSpend{}, FailLocal)
	waitFor(t, func() bool {
		return stores[0].Replicas() == 3 && stores[1].Replicas() == 3 && stores[2].Replicas() == 3
	})
	srv.Stop(t)
	for r, l := range ls {
		admitted := concurrently(30, func(i int) bool {
			d, err := l.Check(limiter.Request{UserID: fmt.Sprintf("user-%d-%d", r, i), Provider: "groq", Model: "llama"})
			if err != nil {
				t.Error(err)
			}
			return d.Allowed
		})
		if admitted != 10 {
			t.Fatalf("replica %d admitted %d of Groq's 30 a minute without Redis, want its third, 10", r, admitted)
		}
	}
}

func clusterClient(t *testing.T) redis.UniversalClient {
	t.Helper()
	cluster := redistest.StartCluster(t, 3)
	opts, err := redis.ParseClusterURL(cluster.URL())
	if err != nil {
		t.Fatal(err)
	}
	opts.ContextTimeoutEnabled = true
	client := redis.NewClusterClient(opts)
	t.Cleanup(func() { client.Close() })
	return client
}

// TestPoolsAcrossReplicas: three replicas admit a shared pool's and a
// team pool's limits exactly, checked concurrently by many users, with
// and without request_ids (holds), on one Redis and on a Redis Cluster,
// where a user's keys and a pool's keys live in different slots.
func TestPoolsAcrossReplicas(t *testing.T) {
	for _, topo := range []string{"standalone", "cluster"} {
		t.Run(topo, func(t *testing.T) {
			var client redis.UniversalClient
			var flush func()
			if topo == "cluster" {
				client = clusterClient(t)
				flush = func() {
					_ = client.(*redis.ClusterClient).ForEachMaster(t.Context(), func(ctx context.Context, c *redis.Client) error { return c.FlushAll(ctx).Err() })
				}
			} else {
				srv, c := standalone(t)
				client, flush = c, func() { srv.Do(t, "FLUSHALL") }
			}
			// Each round in a subtest of its own: its replicas stop with
			// it, so that none of a round's holds comes back into the next
			// round's Redis with a recovery (the flush is a loss to them).
			for round := range 3 {
				t.Run(fmt.Sprintf("round-%d", round), func(t *testing.T) {
					flush()
					ls := poolReplicas(t, client, &fixedSpend{})
					id := func(prefix string, i int) string {
						if round == 1 {
							return "" // no holds
						}
						return fmt.Sprintf("%s-%d-%d", prefix, round, i)
					}
					admitted := concurrently(60, func(i int) bool {
						d, err := ls[i%3].Check(limiter.Request{UserID: fmt.Sprintf("user-%d", i), Provider: "groq", Model: "llama", RequestID: id("groq", i)})
						if err != nil {
							t.Error(err)
						}
						return d.Allowed
					})
					// The bucket refills 0.5 a second: a slow round may see one more.
					if admitted < 30 || admitted > 31 {
						t.Fatalf("round %d: 60 users on 3 replicas against Groq's 30 a minute: %d admitted", round, admitted)
					}
					admitted = concurrently(20, func(i int) bool {
						d, err := ls[i%3].Check(limiter.Request{UserID: fmt.Sprintf("member-%d", i), TeamID: "search", Provider: "openai", Model: "m", Cost: dollar / 10, RequestID: id("team", i)})
						if err != nil {
							t.Error(err)
						}
						return d.Allowed
					})
					if admitted != 10 {
						t.Fatalf("round %d: 20 users of a $1 team pool checking $0.10: %d admitted, want 10", round, admitted)
					}
					d, err := ls[0].Check(limiter.Request{UserID: "member-0", TeamID: "ads", Provider: "openai", Model: "m", Cost: dollar / 10})
					if err != nil || !d.Allowed {
						t.Fatalf("round %d: a user of another team: %+v %v", round, d, err)
					}
				})
			}
		})
	}
}

// TestRefusedByPoolOnRedis: a check its user's buckets allow and a pool
// refuses debits neither, hold or no hold, in Redis.
func TestRefusedByPoolOnRedis(t *testing.T) {
	_, client := standalone(t)
	ls := poolReplicas(t, client, &fixedSpend{})
	if d, _ := ls[0].Check(limiter.Request{UserID: "a", TeamID: "search", Model: "m", Cost: dollar * 95 / 100, RequestID: "big"}); !d.Allowed {
		t.Fatal("first check refused")
	}
	for i, id := range []string{"held", ""} {
		before, err := ls[1].Limits("b", "search", "", "m")
		if err != nil {
			t.Fatal(err)
		}
		d, err := ls[1].Check(limiter.Request{UserID: "b", TeamID: "search", Model: "m", Cost: dollar / 10, RequestID: id})
		if err != nil || d.Allowed {
			t.Fatalf("check %d past the team pool: %+v %v", i, d, err)
		}
		after, err := ls[2].Limits("b", "search", "", "m")
		if err != nil {
			t.Fatal(err)
		}
		if remainings(before) != remainings(after) {
			t.Fatalf("check %d: levels changed by a refused check:\n before %v\n after  %v", i, before, after)
		}
	}
}

// TestPoolBudgetAfterRedisLoss: a team pool's spend is learnt again from
// the database's sum over the team's users when Redis lost it.
func TestPoolBudgetAfterRedisLoss(t *testing.T) {
	srv, client := standalone(t)
	db := &poolSpend{}
	ls := poolReplicas(t, client, db)
	for i := range 10 {
		if d, _ := ls[i%3].Check(limiter.Request{UserID: fmt.Sprintf("m%d", i), TeamID: "search", Model: "m", Cost: dollar / 10}); !d.Allowed {
			t.Fatalf("check %d refused", i)
		}
	}
	db.team.Store(dollar) // the ten calls, stored
	srv.Do(t, "FLUSHALL")
	time.Sleep(2500 * time.Millisecond) // the registry finds the loss
	d, err := ls[1].Check(limiter.Request{UserID: "new", TeamID: "search", Model: "m", Cost: dollar / 10})
	if err != nil || d.Allowed {
		t.Fatalf("after Redis lost the pool, a check past the team's stored $1: %+v %v", d, err)
	}
	if got := db.asked.Load(); got == 0 {
		t.Fatal("the team's spend was never asked of the database")
	}
}

// poolSpend answers team search's pool from team, every other budget nothing.
type poolSpend struct {
	team  atomic.Int64
	asked atomic.Int64
}

func (p *poolSpend) Spent(owner string, sc limiter.Scope, _, _ time.Time) ([]limiter.Spend, error) {
	if owner == limiter.TeamOwner("search") {
		p.asked.Add(1)
		return []limiter.Spend{{Model: "m", TeamID: "search", NanoUSD: p.team.Load()}}, nil
	}
	return nil, nil
}

// remainings lists what each status has left.
func remainings(st []limiter.Status) string {
	out := ""
	for _, s := range st {
		out += fmt.Sprintf("%s %s %s: %d; ", s.Per, s.Window, s.Unit, s.Remaining)
	}
	return out
}

// concurrently runs fn(0..n-1) at once and counts the trues.
func concurrently(n int, fn func(i int) bool) int {
	var count atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if fn(i) {
				count.Add(1)
			}
		}()
	}
	wg.Wait()
	return int(count.Load())
}
