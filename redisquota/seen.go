package redisquota

import (
	"hash/fnv"
	"sync"
	"time"

	"github.com/llmusage/llmusage/limiter"
)

// seenIndex remembers, per user, the buckets this replica touched and
// when each will be full again, sharded to keep checks apart.
type seenIndex struct {
	shards [64]seenShard
}

type seenShard struct {
	mu    sync.Mutex
	users map[string][]seenBucket
}

type seenBucket struct {
	// bucket is the scope and limit last used.
	bucket limiter.Bucket
	// fullAt is when the bucket is full again, in Unix nanoseconds, if
	// nothing else touches it: a budget's period end.
	fullAt int64
	// spent is a budget's spend last seen, at (Unix nanoseconds); rate
	// is how fast the fleet spent it lately (per nanosecond), so that a
	// share taken when Redis goes away counts what the other replicas
	// spent since this one last looked.
	spent float64
	at    int64
	rate  float64
}

func (x *seenIndex) init() {
	for i := range x.shards {
		x.shards[i].users = make(map[string][]seenBucket)
	}
}

func (x *seenIndex) shard(user string) *seenShard {
	h := fnv.New32a()
	_, _ = h.Write([]byte(user))
	return &x.shards[h.Sum32()%uint32(len(x.shards))]
}

// touch records the levels a call left.
func (x *seenIndex) touch(now time.Time, user string, bs []limiter.Bucket, levels []float64) {
	sh := x.shard(user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	seen := sh.users[user]
	for i, b := range bs {
		fullAt := now.Add(b.RefillTime(now, float64(b.Limit)-levels[i])).UnixNano()
		if b.IsConcurrency() && levels[i] < float64(b.Limit) {
			// Slots come back with records, on any replica: the bucket is
			// read again (Each) until it is seen with every slot free.
			fullAt = now.Add(time.Minute).UnixNano()
		}
		j := 0
		for ; j < len(seen) && *seen[j].bucket.Scope != *b.Scope; j++ {
		}
		if j == len(seen) {
			seen = append(seen, seenBucket{})
		}
		prev := seen[j]
		sb := seenBucket{bucket: b, fullAt: fullAt, spent: float64(b.Limit) - levels[i], at: now.UnixNano()}
		// A rate of spend; calls in flight come and go.
		if b.IsBudget() && !b.IsConcurrency() && prev.bucket.Period == b.Period && prev.at > 0 {
			sb.rate = prev.rate
			if dt := sb.at - prev.at; dt > 0 && sb.spent >= prev.spent {
				sb.rate = (prev.rate + (sb.spent-prev.spent)/float64(dt)) / 2
			}
		}
		seen[j] = sb
	}
	sh.users[user] = seen
}

// snapshot returns the buckets not yet full that a rule still owns, by user.
func (x *seenIndex) snapshot(now time.Time, owner limiter.Owner) map[string][]limiter.Bucket {
	out := map[string][]limiter.Bucket{}
	for i := range x.shards {
		sh := &x.shards[i]
		sh.mu.Lock()
		for user, seen := range sh.users {
			for _, sb := range seen {
				if b, ok := owner(user, sb.bucket.Scope); ok && sb.fullAt > now.UnixNano() {
					out[user] = append(out[user], b)
				}
			}
		}
		sh.mu.Unlock()
	}
	return out
}

func (x *seenIndex) ofUser(now time.Time, user string, owner limiter.Owner) []limiter.Bucket {
	sh := x.shard(user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	var out []limiter.Bucket
	for _, sb := range sh.users[user] {
		if b, ok := owner(user, sb.bucket.Scope); ok && sb.fullAt > now.UnixNano() {
			out = append(out, b)
		}
	}
	return out
}

func (x *seenIndex) sweep(now time.Time, owner limiter.Owner) (live int) {
	for i := range x.shards {
		sh := &x.shards[i]
		sh.mu.Lock()
		for user, seen := range sh.users {
			kept := seen[:0]
			for _, sb := range seen {
				if _, ok := owner(user, sb.bucket.Scope); ok && sb.fullAt > now.UnixNano() {
					kept = append(kept, sb)
				}
			}
			if len(kept) == 0 {
				delete(sh.users, user)
				continue
			}
			sh.users[user] = kept
			live += len(kept)
		}
		sh.mu.Unlock()
	}
	return live
}

// each calls fn with every bucket not yet full and the units it misses:
// for a budget, the spend last seen and what the fleet has likely spent
// since, at the rate it spent lately.
func (x *seenIndex) each(now time.Time, fn func(user string, b limiter.Bucket, missing float64)) {
	for i := range x.shards {
		sh := &x.shards[i]
		sh.mu.Lock()
		for user, seen := range sh.users {
			for _, sb := range seen {
				switch left := sb.fullAt - now.UnixNano(); {
				case left <= 0:
				case sb.bucket.IsBudget():
					fn(user, sb.bucket, min(float64(sb.bucket.Limit), sb.spent+sb.rate*float64(max(now.UnixNano()-sb.at, 0))))
				default:
					fn(user, sb.bucket, float64(left)/float64(sb.bucket.Scope.Window.Duration())*float64(sb.bucket.Limit))
				}
			}
		}
		sh.mu.Unlock()
	}
}

func (x *seenIndex) len() int {
	n := 0
	for i := range x.shards {
		sh := &x.shards[i]
		sh.mu.Lock()
		for _, seen := range sh.users {
			n += len(seen)
		}
		sh.mu.Unlock()
	}
	return n
}
