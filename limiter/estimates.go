package limiter

import (
	"hash/maphash"
	"sync"
	"time"
)

// The estimates of allowed checks, kept by the Limiter when its store is
// no HoldStore, until the record of the same request_id settles them.

// pendingShard holds the estimates of some users.
type pendingShard struct {
	mu   sync.Mutex
	byID map[pendingKey]pendingCheck
	// holds names the call of each estimate reserved in a budget or
	// holding a slot of a concurrency limit, so that an estimate whose
	// record never comes is given back: neither refills, and a budget
	// would otherwise lose it until its period ends, a concurrency limit
	// for ever.
	holds map[pendingKey]budgetHold
	_     [32]byte // keeps neighbouring shards' mutexes on separate cache lines
}

// budgetHold is the call whose estimate a budget holds.
type budgetHold struct {
	user, team, provider, model string
}

// pendingKey is a 128-bit hash of a user's request_id, and pendingCheck holds
// no pointer either: the collector need not mark the pending map, and
// no string is kept per estimate. 100,000 estimates keyed by their IDs
// were half the live heap of a sidecar under checks, marked on every
// collection. Two IDs collide with a chance of 2^-128 a pair.
type pendingKey [2]uint64

type pendingCheck struct {
	// user hashes the checked user: a record reconciles only its own
	// user's estimate.
	user   uint64
	tokens int64
	// cost is the estimated cost reserved in budgets, in nano-USD.
	cost int64
	// budgets are the levels and limit types of the budgets that
	// reserved it, and the levels of the concurrency limits it holds a
	// slot of (budgetSlot).
	budgets uint16
	// tags are, by level, the tags of the concurrency limits it holds a
	// slot of (rule.tag): the limit of a level whose scope a reload
	// changed holds none.
	tags [numPers]uint16
	// at is the check's time and expires its end, in Unix nanoseconds.
	at, expires int64
}

// release gives back to the budgets the estimate of a check whose record
// never came, where it was reserved in their current period. An error
// (the store out of reach) loses the refund: the budget then holds the
// estimate until its period ends, erring on the side of refusing.
func (l *Limiter) release(now time.Time, h budgetHold, p pendingCheck) {
	var buf [maxApplicable]*rule
	rules := l.rules.Load().applicable(h.user, h.team, h.provider, h.model, buf[:0])
	sc := l.scratch.Get().(*callScratch)
	defer l.scratch.Put(sc)
	n := 0
	for _, r := range rules {
		if r.Unit != USD && r.Unit != Concurrent {
			continue
		}
		b := l.bucket(r, now)
		if l.holds(p, r, b.Period) {
			back := -p.cost
			if r.Unit == Concurrent {
				back = -1
			}
			sc.buckets[n], sc.cost[n], sc.owners[n] = b, back, r.bucketOwner(h.user, h.team)
			n++
		}
	}
	// A budget seeded now holds what the database says, without estimates.
	for lo, hi := 0, 0; lo < n; lo = hi {
		hi = ownerEnd(sc, lo, n)
		_ = l.charge(now, sc.owners[lo], sc.buckets[lo:hi], sc.cost[lo:hi], nil)
	}
}

// holds tells whether the budget of rule r in period holds the
// estimate of p: it was reserved in that period, in a budget of r's
// level and limit type (one that a reload added since holds nothing).
func (l *Limiter) holds(p pendingCheck, r *rule, period Period) bool {
	if r.Unit == Concurrent && p.tags[r.Per] != r.tag {
		return false
	}
	return p.budgets&budgetSlot(r) != 0 && period.Contains(time.Unix(0, p.at))
}

// budgetSlot is the bit of r's level and limit type among a check's
// budgets and concurrency limits; zero for a rule that is neither.
func budgetSlot(r *rule) uint16 {
	switch r.Unit {
	case USD:
		return 1 << (uint(r.Per)*3 + uint(r.Window-Day))
	case Concurrent:
		return 1 << (uint(numPers)*3 + uint(r.Per))
	}
	return 0
}

// concurrencySlots are the bits of budgetSlot that concurrency limits use.
const concurrencySlots = (1<<numPers - 1) << (numPers * 3)

// budgetSlots is the budgets among rules, as bits (budgetSlot), and the
// tags of their concurrency limits by level.
func budgetSlots(rules []*rule) (slots uint16, tags [numPers]uint16) {
	for _, r := range rules {
		slots |= budgetSlot(r)
		if r.Unit == Concurrent {
			tags[r.Per] = r.tag
		}
	}
	return slots, tags
}

// EstimateStats counts the token estimates of allowed checks, which wait
// for the record of the same request_id to settle them.
type EstimateStats struct {
	// Pending are remembered now.
	Pending int64
	// Expired were forgotten after PendingTTL without their record, or met
	// it too late: either the call was never made, or its record did not
	// carry the check's request_id and was charged in full on top of the
	// estimate.
	Expired int64
	// Dropped were never remembered because MaxPending were; their
	// records are charged in full too.
	Dropped int64
}

// Estimates returns the counts of estimates since the Limiter was made.
func (l *Limiter) Estimates() EstimateStats {
	return EstimateStats{Pending: l.pendingCount.Load(), Expired: l.expiredCount.Load(), Dropped: l.droppedCount.Load()}
}

// userHash names a user in pendingChecks and places it in a shard.
func (l *Limiter) userHash(user string) uint64 { return maphash.String(l.seed, user) }

// remember keeps an allowed check's estimates for its record. It returns
// the estimate of the same user's check with this request_id that it
// replaces, if that one held a budget, and whether it kept this one
// (not past MaxPending).
func (l *Limiter) remember(req Request, cost int64, budgets uint16, tags [numPers]uint16, ttl time.Duration, now time.Time) (prev pendingCheck, hold budgetHold, replaced, kept bool) {
	uh := l.userHash(req.UserID)
	sh := &l.pending[uh%numShards]
	key := l.pendingKey(uh, req.RequestID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if old, dup := sh.byID[key]; dup {
		if h, held := sh.holds[key]; held && old.user == uh {
			prev, hold, replaced = old, h, true
		}
	} else {
		if l.pendingCount.Add(1) > l.maxPending {
			l.pendingCount.Add(-1)
			l.droppedCount.Add(1)
			return prev, hold, false, false
		}
	}
	sh.byID[key] = pendingCheck{user: uh, tokens: req.Tokens, cost: cost, budgets: budgets, tags: tags, at: now.UnixNano(), expires: now.Add(ttl).UnixNano()}
	if (budgets != 0 && cost > 0) || budgets&concurrencySlots != 0 {
		if sh.holds == nil {
			sh.holds = make(map[pendingKey]budgetHold)
		}
		sh.holds[key] = budgetHold{req.UserID, req.TeamID, req.Provider, req.Model}
	} else {
		delete(sh.holds, key)
	}
	return prev, hold, replaced, true
}

// peek returns the estimate of user's check with request_id id, if any.
func (l *Limiter) peek(user, id string) (pendingCheck, bool) {
	uh := l.userHash(user)
	sh := &l.pending[uh%numShards]
	key := l.pendingKey(uh, id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	p, ok := sh.byID[key]
	return p, ok && p.user == uh
}

// settle takes the estimate of the allowed check that u's record
// follows: own tells it is its user's, fresh that it is within the TTL.
func (l *Limiter) settle(u Usage, now time.Time) (estimate pendingCheck, own, fresh bool) {
	if u.RequestID == "" {
		return pendingCheck{}, false, false
	}
	uh := l.userHash(u.UserID)
	sh := &l.pending[uh%numShards]
	key := l.pendingKey(uh, u.RequestID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	p, found := sh.byID[key]
	if !found {
		return pendingCheck{}, false, false
	}
	own, expired := p.user == uh, now.UnixNano() > p.expires
	if own || expired {
		delete(sh.byID, key)
		delete(sh.holds, key)
		l.pendingCount.Add(-1)
	}
	if expired {
		l.expiredCount.Add(1)
	}
	return p, own, !expired
}

// pendingKey names the estimate of the check of request_id requestID
// of the user whose hash is uh: request_ids are the clients', and two
// users' may be equal, in the same shard.
func (l *Limiter) pendingKey(uh uint64, requestID string) pendingKey {
	return pendingKey{maphash.String(l.idSeeds[0], requestID) ^ uh, maphash.String(l.idSeeds[1], requestID)}
}
