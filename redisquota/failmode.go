package redisquota

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmusage/llmusage/limiter"
)

// What answers while Redis is out of reach or refuses the calls, and how
// the store goes back to it.

// shares scales each bucket to this replica's share of its limit, for
// the local fail mode.
func (s *Store) shares(bs []limiter.Bucket) []limiter.Bucket {
	n := max(s.replicas.Load(), 1)
	dst := make([]limiter.Bucket, 0, len(bs))
	for _, b := range bs {
		// A budget's share is in the spend it is seeded with (shareOfSpend).
		if !b.IsBudget() {
			b.Limit = max(1, int64(math.Ceil(float64(b.Limit)/float64(n))))
		}
		dst = append(dst, b)
	}
	return dst
}

func (s *Store) unavailable() error {
	cause := s.Err()
	if cause == nil { // a call just failed, then another succeeded
		cause = errors.New("a call to Redis failed")
	}
	return fmt.Errorf("%w: %w", limiter.ErrStoreUnavailable, cause)
}

// refuse records an error answer of Redis (out of memory, read-only):
// Redis is up, but this call, and any like it, goes to the fail mode. The
// first seeds the local shares, as going down does.
func (s *Store) refuse(err error) {
	msg := err.Error()
	if s.refusal.Swap(&msg) == nil {
		if s.opts.FailMode == FailLocal {
			s.transition.Lock()
			s.seedShares(time.Now())
			s.transition.Unlock()
		}
	}
}

// markDown sends the checks to the fail mode until a ping answers.
func (s *Store) markDown(err error) {
	msg := err.Error()
	s.lastErr.Store(&msg)
	s.transition.Lock()
	if !s.down.Load() {
		if s.opts.FailMode == FailLocal {
			s.seedShares(time.Now())
		}
		s.down.Store(true)
		s.opts.Logger.Warn("Redis out of reach; checks are answered by the fail mode until it is back",
			"fail_mode", string(s.opts.FailMode), "replicas", s.replicas.Load(), "error", msg)
	}
	s.transition.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// probe goes back to Redis once it answers a ping and takes a write (the
// registry's): a Redis that answers PING but refuses writes (OOM,
// READONLY) stays in the fail mode rather than flapping. The local
// shares are kept: the next outage starts from them.
func (s *Store) probe(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, max(s.opts.Timeout, 100*time.Millisecond))
	defer cancel()
	if c, ok := s.opts.Client.(*redis.ClusterClient); ok {
		// A master that died is still in the client's map of slots until
		// it reloads it, and calls without retries never make it reload:
		// a replica promoted meanwhile would never be used.
		c.ReloadState(pctx)
	}
	start := time.Now()
	err := s.opts.Client.Ping(pctx).Err()
	s.opts.Observer.ObserveQuotaBackend("ping", time.Since(start), err)
	if err == nil {
		err = s.register(ctx)
	}
	if err != nil {
		msg := err.Error()
		s.lastErr.Store(&msg)
		return
	}
	if err := s.comeBack(ctx); err != nil {
		msg := err.Error()
		s.lastErr.Store(&msg)
		return
	}
	s.backOnRedis(ctx)
}

// backOnRedis sends the calls to Redis again, then writes back what the
// fail mode debited while the first write-back ran. (Not under
// s.transition: a write-back call that fails takes it, in markDown.)
func (s *Store) backOnRedis(ctx context.Context) {
	s.transition.Lock()
	if s.down.Swap(false) {
		s.opts.Logger.Info("Redis is back; checks use the shared buckets again")
	}
	s.transition.Unlock()
	if p := s.epoch.Load(); p != nil {
		_ = s.writeBackOwed(ctx, *p)
	}
}

// seedShares starts this replica's local shares where the shared buckets
// it last saw stood, so that the fleet goes on admitting what was left of
// each limit rather than a full one more: of a bucket missing m units of
// its limit, each of N replicas' shares (limit / N) misses m / N. A share
// lower still from an earlier outage stays as low. Buckets it never saw
// start full. s.transition is held.
func (s *Store) seedShares(now time.Time) {
	prev, local := s.local.Load(), limiter.NewMemoryStore()
	n := float64(max(s.replicas.Load(), 1))
	level := make([]float64, 1)
	s.seen.each(now, func(user string, b limiter.Bucket, missing float64) {
		if b.IsBudget() {
			// The last spend seen. (An earlier outage's local share is not
			// a spend: what was spent then was written back.)
			// This replica's share of what was left: (limit - spent) / N.
			_, _ = local.Seed(user, b, s.shareOfSpend(b, int64(math.Ceil(missing))))
			return
		}
		bs := s.shares([]limiter.Bucket{b})
		_ = prev.Levels(now, user, bs, level)
		debit := max(int64(math.Ceil(missing/n)), bs[0].Limit-int64(math.Floor(level[0])))
		_ = local.Charge(now, user, bs, []int64{debit})
	})
	s.local.Store(local)
}
