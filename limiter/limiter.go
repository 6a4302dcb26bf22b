// Package limiter keeps per-user token buckets on golang.org/x/time/rate.
//
// Each rule is a token bucket with a capacity of its limit, refilled
// continuously at limit per window. For every (limit type, unit) the most
// specific matching rule applies, and its bucket is keyed by the user plus
// the scope values of that rule, so a provider-scoped rule gives each user a
// separate budget per provider. The package knows nothing of HTTP or
// metrics: callers pass plain values and read plain values back, and time
// comes from an injected Clock.
package limiter

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/llmusage/llmusage/internal/clock"
)

// Options tune a Limiter. The zero value is usable.
type Options struct {
	// Clock tells the time; the wall clock when nil.
	Clock clock.Clock
	// PendingTTL is how long a check's token estimate waits for the record
	// of the same request_id before it is forgotten (15 minutes when zero).
	PendingTTL time.Duration
	// MaxPending bounds the estimates remembered across all users (100,000
	// when zero). Past it, checks are still decided, but their records are
	// charged in full, as if no check had preceded them.
	MaxPending int
}

// Request asks whether a user may make one call.
type Request struct {
	// UserID is the caller; required.
	UserID string
	// Provider and Model select the rules scoped by them.
	Provider, Model string
	// Tokens is the estimated token use, charged to token buckets now and
	// reconciled by the record with the same RequestID.
	Tokens int64
	// RequestID, when set, lets the later record settle against this check.
	RequestID string
}

// Usage is what a finished call used, charged after the fact.
type Usage struct {
	// UserID, Provider and Model select the buckets, as in Request.
	UserID, Provider, Model string
	// Tokens is the call's total token count.
	Tokens int64
	// RequestID matches the usage with an earlier check, if any.
	RequestID string
}

// Status is the state of one bucket as the API and metrics report it.
type Status struct {
	// Window and Unit identify the rule's limit type and what it counts.
	Window Window
	Unit   Unit
	// Provider and Model are the rule's scope values; empty when unscoped.
	Provider, Model string
	// Limit is the bucket's capacity.
	Limit int64
	// Remaining is the whole units left now, never negative: a bucket in
	// debt reports 0 and a ResetAt further away.
	Remaining int64
	// ResetAt is when the bucket is full again.
	ResetAt time.Time
}

// Decision answers a Request.
type Decision struct {
	// Allowed tells whether the call may go ahead; if so, it was charged.
	Allowed bool
	// RetryAfter is how long to wait before the same request could pass;
	// zero when allowed.
	RetryAfter time.Duration
	// Limits holds the status of every applicable bucket after the decision.
	Limits []Status
}

// EstimateTooLargeError is returned by Check when an estimate exceeds a
// bucket's capacity, so that no amount of waiting could let it pass.
type EstimateTooLargeError struct {
	// Tokens is the estimate asked for.
	Tokens int64
	// Status describes the bucket that can never hold it.
	Status Status
}

func (e *EstimateTooLargeError) Error() string {
	return fmt.Sprintf("cannot ever allow %d estimated tokens: the %s limit is %d tokens", e.Tokens, e.Status.Window, e.Status.Limit)
}

// ErrNoUser is returned for a request without a user.
var ErrNoUser = errors.New("cannot check a request without user_id")

// Limiter holds the rules and the live buckets. It is safe for concurrent use.
type Limiter struct {
	clock      clock.Clock
	pendingTTL time.Duration
	maxPending int64

	// rules is swapped whole on reload; buckets pick up new limits lazily.
	rules atomic.Pointer[ruleSet]
	// pendingCount counts remembered estimates across shards.
	pendingCount atomic.Int64
	// expiredCount and droppedCount count estimates forgotten without
	// their record and never remembered (see Estimates).
	expiredCount, droppedCount atomic.Int64
	// seed hashes users (userHash).
	seed maphash.Seed
	// idSeeds hash request_ids into pendingKeys.
	idSeeds [2]maphash.Seed
	shards  [numShards]shard
}

// numShards spreads lock contention; every bucket of one user lives in the
// same shard so that a check takes exactly one lock.
const numShards = 64

type shard struct {
	mu sync.Mutex
	// users holds each active user's buckets. A user has a handful at
	// most (one per limit type and unit), so a slice searched in order
	// is smaller and faster than a map keyed by user and scope.
	users   map[string][]bucket
	pending map[pendingKey]pendingCheck
	// live counts the buckets in users, so that Len need not walk them.
	live int
	// pad keeps neighbouring shards' mutexes on separate cache lines.
	_ [32]byte
}

type bucket struct {
	// scope identifies the bucket within its user's; it points into the
	// ruleSet that created the bucket and is compared by value.
	scope *scope
	// lim is the token bucket. Its burst is the rule limit it is
	// configured for; a reload that changes the limit is applied to every
	// bucket at once, keeping its level.
	lim *rate.Limiter
}

// pendingKey is a 128-bit hash of a request_id, and pendingCheck holds
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
	// expires is in Unix nanoseconds.
	expires int64
}

// New returns a Limiter enforcing rules, which must each pass Validate.
func New(rules []Rule, opts Options) (*Limiter, error) {
	l := &Limiter{
		clock:      opts.Clock,
		pendingTTL: opts.PendingTTL,
		maxPending: int64(opts.MaxPending),
		seed:       maphash.MakeSeed(),
		idSeeds:    [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
	}
	if l.clock == nil {
		l.clock = clock.System{}
	}
	if l.pendingTTL <= 0 {
		l.pendingTTL = 15 * time.Minute
	}
	if l.maxPending <= 0 {
		l.maxPending = 100_000
	}
	for i := range l.shards {
		l.shards[i].users = make(map[string][]bucket)
		l.shards[i].pending = make(map[pendingKey]pendingCheck)
	}
	if err := l.SetRules(rules); err != nil {
		return nil, err
	}
	return l, nil
}

// SetRules replaces the rules. Buckets keep their levels: a bucket whose
// rule changed limit adopts the new limit now, and refills at the new
// rate from now on; a bucket no rule maps to any more is dropped by the
// next Sweep.
func (l *Limiter) SetRules(rules []Rule) error {
	rs, err := newRuleSet(rules)
	if err != nil {
		return err
	}
	l.rules.Store(rs)
	now := l.clock.Now()
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for user, bs := range sh.users {
			for j := range bs {
				if r := rs.owner(user, bs[j].scope); r != nil {
					bs[j].adopt(r, now)
				}
			}
		}
		sh.mu.Unlock()
	}
	return nil
}

// Rules returns the rules in force.
func (l *Limiter) Rules() []Rule {
	all := l.rules.Load().all
	out := make([]Rule, len(all))
	for i := range all {
		out[i] = all[i].Rule
	}
	return out
}

// Applicable returns the rule that applies to a call of user on provider
// and model for each limit type and unit, as Check would choose them.
func (l *Limiter) Applicable(user, provider, model string) []Rule {
	var buf [2 * int(numWindows)]*rule
	rules := l.rules.Load().applicable(user, provider, model, buf[:0])
	out := make([]Rule, len(rules))
	for i, r := range rules {
		out[i] = r.Rule
	}
	return out
}

// Check decides whether req may go ahead. It charges one request and the
// estimated tokens to every applicable bucket only if all of them allow it.
// A token bucket allows a call while it holds at least max(estimate, 1)
// tokens, so that an exhausted token budget stops calls that give no estimate.
func (l *Limiter) Check(req Request) (Decision, error) {
	return l.CheckInto(req, nil)
}

// CheckInto is Check, appending the statuses to limits[:0] so that a
// caller that reuses the slice makes the check allocation-free.
func (l *Limiter) CheckInto(req Request, limits []Status) (Decision, error) {
	if req.UserID == "" {
		return Decision{}, ErrNoUser
	}
	now := l.clock.Now()
	var buf [2 * int(numWindows)]*rule
	rules := l.rules.Load().applicable(req.UserID, req.Provider, req.Model, buf[:0])
	for _, r := range rules {
		if r.Unit == Tokens && req.Tokens > r.Limit {
			return Decision{}, &EstimateTooLargeError{Tokens: req.Tokens, Status: Status{Window: r.Window, Unit: r.Unit, Provider: r.Provider, Model: r.Model, Limit: r.Limit}}
		}
	}

	uh := l.userHash(req.UserID)
	sh := l.shardOf(uh)
	sh.mu.Lock()
	defer sh.mu.Unlock()

	var bbuf [2 * int(numWindows)]*bucket
	buckets := sh.buckets(req.UserID, rules, bbuf[:0])
	// Each bucket's level is read once: the decision, the debit and the
	// reported status all follow from it, which saves two limiter lock
	// round trips per bucket on the hot path.
	var levels [2 * int(numWindows)]float64
	d := Decision{Allowed: true}
	for i, r := range rules {
		need := checkCost(r.Unit, req.Tokens)
		levels[i] = buckets[i].lim.TokensAt(now)
		if levels[i] < float64(need) {
			d.Allowed = false
			d.RetryAfter = max(d.RetryAfter, refillTime(&r.Rule, float64(need)-levels[i]))
		}
	}
	if d.Allowed {
		for i, r := range rules {
			cost := chargeCost(r.Unit, 1, req.Tokens)
			debit(buckets[i].lim, now, cost)
			levels[i] -= float64(cost)
		}
		if req.RequestID != "" {
			l.remember(sh, req, uh, now)
		}
	}
	if limits == nil {
		limits = make([]Status, 0, len(rules))
	}
	d.Limits = limits[:0]
	for i, r := range rules {
		d.Limits = append(d.Limits, statusAt(r, levels[i], now))
	}
	return d, nil
}

// Record charges a finished call. A call is never refused (it already
// happened), so it may put buckets into debt that later checks wait out.
// If an allowed check with the same RequestID and user came first, the
// request was already charged and only the difference between the actual
// and the estimated tokens is applied, refunding an over-estimate.
func (l *Limiter) Record(u Usage) {
	if u.UserID == "" {
		return
	}
	now := l.clock.Now()
	var buf [2 * int(numWindows)]*rule
	rules := l.rules.Load().applicable(u.UserID, u.Provider, u.Model, buf[:0])

	uh := l.userHash(u.UserID)
	sh := l.shardOf(uh)
	sh.mu.Lock()
	defer sh.mu.Unlock()

	requests, tokens := int64(1), u.Tokens
	if u.RequestID != "" {
		key := l.pendingKey(u.RequestID)
		if p, ok := sh.pending[key]; ok {
			own, expired := p.user == uh, now.UnixNano() > p.expires
			if own || expired {
				delete(sh.pending, key)
				l.pendingCount.Add(-1)
			}
			if expired {
				l.expiredCount.Add(1)
			}
			if own && !expired {
				requests, tokens = 0, u.Tokens-p.tokens
			}
		}
	}
	var bbuf [2 * int(numWindows)]*bucket
	buckets := sh.buckets(u.UserID, rules, bbuf[:0])
	for i, r := range rules {
		n := chargeCost(r.Unit, requests, tokens)
		if n >= 0 {
			debit(buckets[i].lim, now, n)
		} else {
			buckets[i].refund(now, -n)
		}
	}
}

// Limits reports the user's buckets without charging anything. With a
// provider or a model it reports exactly the buckets a check for that call
// would use; without, the buckets of the rules not scoped by provider or
// model plus every live bucket of the user's scoped rules.
func (l *Limiter) Limits(user, provider, model string) []Status {
	now := l.clock.Now()
	rs := l.rules.Load()
	var buf [2 * int(numWindows)]*rule
	rules := rs.applicable(user, provider, model, buf[:0])

	sh := l.shard(user)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	bs := sh.users[user]
	out := make([]Status, 0, len(rules))
	for _, r := range rules {
		out = append(out, status(r, find(bs, r.scope), now))
	}
	if provider != "" || model != "" {
		return out
	}
	for j := range bs {
		sc := bs[j].scope
		if (sc.provider == "" && sc.model == "") || reported(rules, sc) {
			continue
		}
		if r := rs.owner(user, sc); r != nil {
			out = append(out, status(r, bs[j].lim, now))
		}
	}
	return out
}

// Each calls fn with every live bucket, for metrics built at scrape time.
// fn runs under a shard lock: it must be quick and must not call l.
func (l *Limiter) Each(fn func(user string, s Status)) {
	now := l.clock.Now()
	rs := l.rules.Load()
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for user, bs := range sh.users {
			for j := range bs {
				if r := rs.owner(user, bs[j].scope); r != nil {
					fn(user, status(r, bs[j].lim, now))
				}
			}
		}
		sh.mu.Unlock()
	}
}

// Sweep drops the buckets that have refilled completely (a new bucket
// starts full, so nothing is lost), the buckets no rule maps to any more,
// and expired check estimates. Memory thus follows active users, not every
// user ever seen. It returns the number of live buckets left.
func (l *Limiter) Sweep() (live int) {
	now := l.clock.Now()
	rs := l.rules.Load()
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		for user, bs := range sh.users {
			kept := bs[:0]
			for _, b := range bs {
				if rs.owner(user, b.scope) != nil && b.lim.TokensAt(now) < float64(b.lim.Burst()) {
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
		for id, p := range sh.pending {
			if now.UnixNano() > p.expires {
				delete(sh.pending, id)
				l.pendingCount.Add(-1)
				l.expiredCount.Add(1)
			}
		}
		sh.mu.Unlock()
		// A pass over 100,000 users takes milliseconds: on a sidecar with
		// one core, checks queued meanwhile get their turn between shards.
		runtime.Gosched()
	}
	return live
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

// Len returns the number of live buckets.
func (l *Limiter) Len() int {
	n := 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		n += sh.live
		sh.mu.Unlock()
	}
	return n
}

func (l *Limiter) shard(user string) *shard { return l.shardOf(l.userHash(user)) }

// userHash places a user in a shard and names it in pendingChecks; the
// hot paths compute it once for both.
func (l *Limiter) userHash(user string) uint64 { return maphash.String(l.seed, user) }

func (l *Limiter) shardOf(userHash uint64) *shard { return &l.shards[userHash%numShards] }

func (l *Limiter) remember(sh *shard, req Request, userHash uint64, now time.Time) {
	key := l.pendingKey(req.RequestID)
	if _, dup := sh.pending[key]; !dup {
		if l.pendingCount.Add(1) > l.maxPending {
			l.pendingCount.Add(-1)
			l.droppedCount.Add(1)
			return
		}
	}
	sh.pending[key] = pendingCheck{user: userHash, tokens: req.Tokens, expires: now.Add(l.pendingTTL).UnixNano()}
}

func (l *Limiter) pendingKey(requestID string) pendingKey {
	return pendingKey{maphash.String(l.idSeeds[0], requestID), maphash.String(l.idSeeds[1], requestID)}
}

// buckets appends to dst the user's bucket for each rule, creating full
// ones as needed. The pointers stay valid while the shard lock is held
// and no bucket is added. The shard lock must be held.
func (sh *shard) buckets(user string, rules []*rule, dst []*bucket) []*bucket {
	bs := sh.users[user]
	var idx [2 * int(numWindows)]int
	added := 0
	for i, r := range rules {
		idx[i] = index(bs, r.scope)
		if idx[i] < 0 {
			idx[i] = len(bs)
			bs = append(bs, bucket{scope: r.scope, lim: rate.NewLimiter(refillRate(&r.Rule), int(r.Limit))})
			added++
		}
	}
	if added > 0 {
		sh.live += added
		sh.users[user] = bs
	}
	for i := range rules {
		dst = append(dst, &bs[idx[i]])
	}
	return dst
}

// index returns the position of the bucket with scope sc, or -1.
func index(bs []bucket, sc *scope) int {
	for i := range bs {
		if bs[i].scope == sc || *bs[i].scope == *sc {
			return i
		}
	}
	return -1
}

// find returns the limiter of the bucket with scope sc, or nil.
func find(bs []bucket, sc *scope) *rate.Limiter {
	if i := index(bs, sc); i >= 0 {
		return bs[i].lim
	}
	return nil
}

// adopt applies a changed rule limit, keeping the bucket's level.
func (b *bucket) adopt(r *rule, now time.Time) {
	if int64(b.lim.Burst()) != r.Limit {
		b.lim.SetLimitAt(now, refillRate(&r.Rule))
		b.lim.SetBurstAt(now, int(r.Limit))
	}
}

// reported tells whether one of rules owns buckets of scope sc.
func reported(rules []*rule, sc *scope) bool {
	for _, r := range rules {
		if *r.scope == *sc {
			return true
		}
	}
	return false
}

func refillRate(r *Rule) rate.Limit {
	return rate.Limit(float64(r.Limit) / r.Window.Duration().Seconds())
}

// refillTime is how long r's bucket takes to gain missing units.
func refillTime(r *Rule, missing float64) time.Duration {
	if missing <= 0 {
		return 0
	}
	d := math.Ceil(missing / float64(r.Limit) * float64(r.Window.Duration()))
	if d > float64(MaxWait) {
		// A huge debt (a record of 10^12 tokens against a small bucket)
		// would overflow time.Duration.
		return MaxWait
	}
	return time.Duration(d)
}

// MaxWait caps reported waits and reset times: beyond it, a bucket is
// effectively closed, and a longer figure would overflow time.Duration.
const MaxWait = 100 * 365 * 24 * time.Hour

// checkCost is what a bucket must hold for a check to pass.
func checkCost(u Unit, tokens int64) int64 {
	if u == Requests {
		return 1
	}
	return max(tokens, 1)
}

func chargeCost(u Unit, requests, tokens int64) int64 {
	if u == Requests {
		return requests
	}
	return tokens
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
func (b *bucket) refund(now time.Time, n int64) {
	burst := b.lim.Burst()
	level := min(b.lim.TokensAt(now)+float64(n), float64(burst))
	lim := rate.NewLimiter(b.lim.Limit(), burst)
	debit(lim, now, int64(burst)-int64(math.Floor(level)))
	b.lim = lim
}

func status(r *rule, lim *rate.Limiter, now time.Time) Status {
	if lim == nil {
		return statusAt(r, float64(r.Limit), now)
	}
	return statusAt(r, lim.TokensAt(now), now)
}

// statusAt reports a bucket of rule r holding tokens.
func statusAt(r *rule, tokens float64, now time.Time) Status {
	return Status{
		Window: r.Window, Unit: r.Unit, Provider: r.Provider, Model: r.Model, Limit: r.Limit,
		Remaining: max(0, int64(math.Floor(tokens))),
		ResetAt:   now.Add(refillTime(&r.Rule, float64(r.Limit)-tokens)),
	}
}
