package limiter

import (
	"hash/maphash"
	"math"
	"runtime"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// MemoryStore keeps the buckets in this process, on golang.org/x/time/rate:
// exact and fast, but each replica has its own. It is safe for
// concurrent use.
type MemoryStore struct {
	// seed places users in shards.
	seed   maphash.Seed
	shards [numShards]memShard
}

// numShards spreads lock contention; every bucket of one user lives in the
// same shard so that a check takes exactly one lock.
const numShards = 64

type memShard struct {
	mu sync.Mutex
	// users holds each active user's buckets. A user has a handful at
	// most (one per limit type and unit), so a slice searched in order
	// is smaller and faster than a map keyed by user and scope.
	users map[string][]memBucket
	// live counts the buckets in users, so that Len need not walk them.
	live int
	// pad keeps neighbouring shards' mutexes on separate cache lines.
	_ [40]byte
}

type memBucket struct {
	// scope identifies the bucket within its user's; it points into the
	// rule set that created the bucket and is compared by value.
	scope *Scope
	// lim is the token bucket. Its burst is the limit it is configured
	// for; a changed limit is adopted keeping the level.
	lim *rate.Limiter
	// limit is lim's burst, kept here because reading it from lim takes
	// lim's lock, on every access of the hot path.
	limit int64
	// A budget's bucket has no lim: it holds the spend of its period,
	// which starts at period (Unix seconds).
	period, spent int64
}

// level is what the bucket holds now: a budget's limit less its spend.
func (mb *memBucket) level(now time.Time, b Bucket) float64 {
	if mb.lim == nil {
		return float64(b.Limit - mb.spent)
	}
	return mb.lim.TokensAt(now)
}

// current tells whether the bucket is still the one b describes: a
// budget's spend from another period is not this period's.
func (mb *memBucket) current(b Bucket) bool {
	return mb.lim != nil || mb.period == b.Period.Start
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	m := &MemoryStore{seed: maphash.MakeSeed()}
	for i := range m.shards {
		m.shards[i].users = make(map[string][]memBucket)
	}
	return m
}

// Take implements Store. Each bucket's level is read once: the decision,
// the debit and the reported level all follow from it, which saves two
// rate.Limiter lock round trips per bucket on the hot path.
func (m *MemoryStore) Take(now time.Time, user string, bs []Bucket, need, cost []int64, levels []float64) (bool, error) {
	sh := m.shard(user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if err := sh.unknownSpend(user, bs); err != nil {
		return false, err
	}
	var buf [maxApplicable]*memBucket
	buckets := sh.buckets(now, user, bs, buf[:0])
	allowed := true
	for i, b := range buckets {
		levels[i] = b.level(now, bs[i])
		if levels[i] < float64(need[i]) {
			allowed = false
		}
	}
	if allowed {
		for i, b := range buckets {
			b.debit(now, cost[i])
			levels[i] -= float64(cost[i])
		}
	}
	return allowed, nil
}

// Charge implements Store.
func (m *MemoryStore) Charge(now time.Time, user string, bs []Bucket, amounts []int64) error {
	sh := m.shard(user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if err := sh.unknownSpend(user, bs); err != nil {
		return err
	}
	var buf [maxApplicable]*memBucket
	for i, b := range sh.buckets(now, user, bs, buf[:0]) {
		if n := amounts[i]; n >= 0 {
			b.debit(now, n)
		} else {
			b.refund(now, -n)
		}
	}
	return nil
}

// Seed implements Store.
func (m *MemoryStore) Seed(user string, b Bucket, spent int64) (bool, error) {
	sh := m.shard(user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	live := sh.users[user]
	j := index(live, b.Scope)
	switch {
	case j < 0:
		sh.users[user] = append(live, memBucket{scope: b.Scope, limit: b.Limit, period: b.Period.Start, spent: max(0, clampSpend(spent))})
		sh.live++
	case live[j].current(b):
		return false, nil
	default:
		live[j].period, live[j].spent = b.Period.Start, max(0, clampSpend(spent))
	}
	return true, nil
}

// Levels implements Store; a bucket not live is full.
func (m *MemoryStore) Levels(now time.Time, user string, bs []Bucket, levels []float64) error {
	sh := m.shard(user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if err := sh.unknownSpend(user, bs); err != nil {
		return err
	}
	live := sh.users[user]
	for i, b := range bs {
		levels[i] = float64(b.Limit)
		if j := index(live, b.Scope); j >= 0 {
			live[j].adopt(now, b)
			levels[i] = live[j].level(now, b)
		}
	}
	return nil
}

// Each implements Store. fn runs under a shard lock.
func (m *MemoryStore) Each(now time.Time, owner Owner, fn func(user string, b Bucket, level float64)) {
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		for user, bs := range sh.users {
			for j := range bs {
				if b, ok := owner(user, bs[j].scope); ok && bs[j].current(b) {
					bs[j].adopt(now, b)
					fn(user, b, bs[j].level(now, b))
				}
			}
		}
		sh.mu.Unlock()
	}
}

// EachOfUser implements Store. fn runs under a shard lock.
func (m *MemoryStore) EachOfUser(now time.Time, user string, owner Owner, fn func(user string, b Bucket, level float64)) error {
	sh := m.shard(user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	bs := sh.users[user]
	for j := range bs {
		if b, ok := owner(user, bs[j].scope); ok && bs[j].current(b) {
			bs[j].adopt(now, b)
			fn(user, b, bs[j].level(now, b))
		}
	}
	return nil
}

// Sweep implements Store.
func (m *MemoryStore) Sweep(now time.Time, owner Owner) (live int) {
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		for user, bs := range sh.users {
			kept := bs[:0]
			for _, b := range bs {
				// A budget's spend is kept for its whole period: it is
				// not refilled, and reading it again costs a query. A
				// concurrency limit with no call in flight is learnt
				// again as such, for free.
				if ob, ok := owner(user, b.scope); ok && (b.lim == nil && b.current(ob) && (b.spent > 0 || !ob.IsConcurrency()) || b.lim != nil && b.lim.TokensAt(now) < float64(b.limit)) {
					kept = append(kept, b)
				}
			}
			sh.live -= len(bs) - len(kept)
			if len(kept) == 0 {
				delete(sh.users, user)
				continue
			}
			clear(bs[len(kept):]) // let the dropped limiters go
			sh.users[user] = kept
			live += len(kept)
		}
		sh.mu.Unlock()
		// A pass over 100,000 users takes milliseconds: on a sidecar with
		// one core, checks queued meanwhile get their turn between shards.
		runtime.Gosched()
	}
	return live
}

// Len implements Store.
func (m *MemoryStore) Len() int {
	n := 0
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.Lock()
		n += sh.live
		sh.mu.Unlock()
	}
	return n
}

// Adopt implements Store: a bucket whose rule changed limit adopts the new
// limit now, and refills at the new rate from now on.
func (m *MemoryStore) Adopt(now time.Time, owner Owner) {
	m.Each(now, owner, func(string, Bucket, float64) {}) // Each adopts what it visits
}

func (m *MemoryStore) shard(user string) *memShard {
	return &m.shards[maphash.String(m.seed, user)%numShards]
}

// buckets appends to dst the user's bucket for each of bs, creating full
// ones as needed and adopting changed limits. The pointers stay valid
// while the shard lock is held and no bucket is added. The shard lock
// must be held.
func (sh *memShard) buckets(now time.Time, user string, bs []Bucket, dst []*memBucket) []*memBucket {
	live := sh.users[user]
	var idx [maxApplicable]int
	added := 0
	for i, b := range bs {
		idx[i] = index(live, b.Scope)
		if idx[i] < 0 { // never a budget: unknownSpend said so
			idx[i] = len(live)
			live = append(live, memBucket{scope: b.Scope, lim: rate.NewLimiter(rate.Limit(b.RefillPerSecond()), int(b.Limit)), limit: b.Limit})
			added++
		}
	}
	if added > 0 {
		sh.live += added
		sh.users[user] = live
	}
	for i, b := range bs {
		mb := &live[idx[i]]
		mb.adopt(now, b)
		dst = append(dst, mb)
	}
	return dst
}

// unknownSpend lists the budgets of bs whose spend in their period the
// shard does not hold. The shard lock must be held.
func (sh *memShard) unknownSpend(user string, bs []Bucket) error {
	var unknown *UnknownSpendError
	live := sh.users[user]
	for i, b := range bs {
		if !b.IsBudget() {
			continue
		}
		if j := index(live, b.Scope); j < 0 || !live[j].current(b) {
			if unknown == nil {
				unknown = &UnknownSpendError{}
			}
			unknown.Buckets = append(unknown.Buckets, i)
		}
	}
	if unknown == nil {
		return nil
	}
	return unknown
}

// index returns the position of the bucket with scope sc, or -1.
func index(bs []memBucket, sc *Scope) int {
	for i := range bs {
		if bs[i].scope == sc || *bs[i].scope == *sc {
			return i
		}
	}
	return -1
}

// adopt applies a changed limit, keeping the bucket's level, and follows
// the rule set's scope pointer so that the next lookup is a pointer
// comparison.
func (mb *memBucket) adopt(now time.Time, b Bucket) {
	mb.scope = b.Scope
	if mb.lim == nil {
		mb.limit = b.Limit // a budget's level follows its limit
		return
	}
	if mb.limit != b.Limit {
		mb.lim.SetLimitAt(now, rate.Limit(b.RefillPerSecond()))
		mb.lim.SetBurstAt(now, int(b.Limit))
		mb.limit = b.Limit
	}
}

// debit takes n units from the bucket: a budget spends them.
func (mb *memBucket) debit(now time.Time, n int64) {
	if mb.lim == nil {
		mb.spent = min(mb.spent+n, MaxSpend) // n <= MaxSpend: no wrap
		return
	}
	debit(mb.lim, now, n)
}

// debit takes n units, going into debt if need be. rate.Limiter refuses a
// single reservation larger than its burst, so for a large debit the burst
// is raised for the one reservation and restored: setting the burst keeps
// the level, and a level below the burst is not capped. This keeps a
// record of 10^12 tokens against a 1,000-token bucket to three calls
// rather than 10^9.
func debit(lim *rate.Limiter, now time.Time, n int64) {
	if n <= 0 {
		return
	}
	// A reservation over the burst is refused without touching the
	// bucket: try first, and raise the burst only when that happens
	// (one lock round trip on the common path instead of two).
	if n <= math.MaxInt32 && lim.ReserveN(now, int(n)).OK() {
		return
	}
	burst := lim.Burst()
	lim.SetBurstAt(now, int(n))
	lim.ReserveN(now, int(n))
	lim.SetBurstAt(now, burst)
}

// refund gives n units back. rate.Limiter cannot add tokens (a
// reservation can only be cancelled before its time), so the bucket's
// limiter is replaced by a full one charged down to the refunded level.
func (mb *memBucket) refund(now time.Time, n int64) {
	if mb.lim == nil {
		mb.spent = max(0, mb.spent-n)
		return
	}
	burst := int(mb.limit)
	level := min(mb.lim.TokensAt(now)+float64(n), float64(burst))
	lim := rate.NewLimiter(mb.lim.Limit(), burst)
	debit(lim, now, int64(burst)-int64(math.Floor(level)))
	mb.lim = lim
}
