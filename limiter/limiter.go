// Package limiter keeps token buckets and budgets of users and of the
// pools they share, on golang.org/x/time/rate semantics.
//
// Each rule is a token bucket with a capacity of its limit, refilled
// continuously at limit per window, or a budget over a calendar window.
// For every level (a user's own, a team's pool, the shared pool: see
// Per), limit type and unit the most specific matching rule applies, and
// its bucket is keyed by its owner (the user, the team, or nobody) plus
// the scope values of that rule, so a provider-scoped rule gives each user
// a separate budget per provider. A check passes only if every level
// allows it. The package knows nothing of HTTP or metrics: callers pass
// plain values and read plain values back, and time comes from an
// injected Clock.
package limiter

import (
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/usd"
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
	// Store keeps the buckets' levels; a new MemoryStore when nil.
	Store Store
	// Location is the time zone of budgets' calendar periods; UTC when nil.
	Location *time.Location
	// Spend tells a budget's spend when the store does not know it,
	// including the record being charged, if any; nil counts it as
	// nothing spent before.
	Spend SpendSource
	// AllowUnpriced lets a check without a cost estimate (its model has no
	// price) pass a budget that is not exhausted; else it is refused with
	// an *UnpricedError.
	AllowUnpriced bool
	// ConcurrencyTimeout is how long a check's slot in a concurrency limit
	// waits for the record of its request_id before it is given back
	// (10 minutes when zero): a call whose record never comes (its client
	// died) does not hold a slot for ever. A check that takes a slot
	// keeps its other estimates as long.
	ConcurrencyTimeout time.Duration
}

// Request asks whether a user may make one call.
type Request struct {
	// UserID is the caller; required.
	UserID string
	// TeamID is the team the call is for, if any: it selects the rules
	// scoped by team_id and the team's pools.
	TeamID string
	// Provider and Model select the rules scoped by them.
	Provider, Model string
	// Tokens is the estimated token use, charged to token buckets now and
	// reconciled by the record with the same RequestID.
	Tokens int64
	// RequestID, when set, lets the later record settle against this check.
	RequestID string
	// Cost is the estimated cost in nano-USD, reserved in budgets now and
	// settled by the record; meaningful unless Unpriced.
	Cost int64
	// Unpriced tells that the call's cost cannot be estimated: its model
	// has no price.
	Unpriced bool
}

// Usage is what a finished call used, charged after the fact.
type Usage struct {
	// UserID, TeamID, Provider and Model select the buckets, as in Request.
	UserID, TeamID, Provider, Model string
	// Tokens is the call's total token count.
	Tokens int64
	// RequestID matches the usage with an earlier check, if any.
	RequestID string
	// Cost is what the call cost in nano-USD, when HasCost.
	Cost    int64
	HasCost bool
	// Timestamp is when the call happened: a budget counts the cost in
	// the period that holds it (nothing, once that period is over).
	Timestamp time.Time
}

// Status is the state of one bucket as the API and metrics report it.
type Status struct {
	// Window and Unit identify the rule's limit type and what it counts.
	Window Window
	Unit   Unit
	// Provider and Model are the rule's scope values; empty when unscoped.
	Provider, Model string
	// TeamID is the rule's team scope; empty when unscoped.
	TeamID string
	// Per tells who shares the bucket.
	Per Per
	// Pool names the pool the bucket is ("all", "team:<id>"); empty for
	// a user's own bucket.
	Pool string
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
	// Tightest is the index in Limits of the tightest bucket: when refused,
	// the one whose wait is RetryAfter; when allowed, the one with the
	// least left relative to its limit; -1 without a bucket. A Decision
	// made otherwise may hold 0 with no Limits: check it against len(Limits).
	Tightest int
}

// EstimateTooLargeError is returned by Check when an estimate exceeds a
// bucket's capacity, so that no amount of waiting could let it pass.
type EstimateTooLargeError struct {
	// Tokens is the estimate asked for.
	Tokens int64
	// Cost is the cost estimate asked for, for a budget (Status.Unit USD).
	Cost int64
	// Status describes the bucket that can never hold it.
	Status Status
}

func (e *EstimateTooLargeError) Error() string {
	if e.Status.Unit == USD {
		return fmt.Sprintf("cannot ever allow an estimated cost of $%s: the %s budget is $%s", usd.Amount(e.Cost), e.Status.Window, usd.Amount(e.Status.Limit))
	}
	return fmt.Sprintf("cannot ever allow %d estimated tokens: the %s limit is %d tokens", e.Tokens, e.Status.Window, e.Status.Limit)
}

// UnpricedError is returned by Check for a call under a budget whose cost
// cannot be estimated, unless Options.AllowUnpriced.
type UnpricedError struct {
	// Provider and Model are the call's.
	Provider, Model string
	// Status describes the budget.
	Status Status
}

func (e *UnpricedError) Error() string {
	return fmt.Sprintf("cannot check a call of model %q (provider %q) against the %s usd budget: the model has no price", e.Model, e.Provider, e.Status.Window)
}

// ErrNoUser is returned for a request without a user.
var ErrNoUser = errors.New("cannot check a request without user_id")

// ErrNoRequestID is returned for a request under a concurrency limit
// without a request_id: no record could give its slot back.
var ErrNoRequestID = errors.New("cannot hold a slot of a concurrent limit for a check without request_id")

// Limiter holds the rules and the token estimates of allowed checks, and
// decides checks and charges records on the buckets of its Store. It is
// safe for concurrent use.
type Limiter struct {
	// clock tells the time of decisions and of the memory store's buckets.
	clock clock.Clock
	// pendingTTL and maxPending are Options.PendingTTL and MaxPending.
	pendingTTL time.Duration
	maxPending int64
	// concurrencyTimeout is Options.ConcurrencyTimeout.
	concurrencyTimeout time.Duration
	// store keeps the buckets.
	store Store
	// holdStore is store when it keeps the estimates itself (HoldStore);
	// the Limiter then keeps none in pending.
	holdStore HoldStore
	// accepting is read-held from a request's enqueue to the end of its
	// records' charges, and write-held while a recovery counts the
	// pending records (see Accept).
	accepting sync.RWMutex
	// location, spend and allowUnpriced are the Options'.
	location      *time.Location
	spend         SpendSource
	allowUnpriced bool

	// rules is swapped whole on reload.
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
	// pending holds the estimates, sharded by user.
	pending [numShards]pendingShard
	// scratch recycles the per-call arrays handed to the store: an
	// interface call makes them escape, and a check must not allocate.
	scratch sync.Pool
}

// maxApplicable is the most buckets one call touches: one per level,
// limit type and unit.
const maxApplicable = int(numPers) * int(numUnits) * int(numWindows)

// callScratch holds one call's buckets and amounts.
type callScratch struct {
	// owners holds each bucket's owner (see bucketOwner).
	owners     [maxApplicable]string
	buckets    [maxApplicable]Bucket
	need, cost [maxApplicable]int64
	levels     [maxApplicable]float64
}

// New returns a Limiter enforcing rules, which must each pass Validate.
func New(rules []Rule, opts Options) (*Limiter, error) {
	l := &Limiter{
		clock:              opts.Clock,
		pendingTTL:         opts.PendingTTL,
		maxPending:         int64(opts.MaxPending),
		concurrencyTimeout: opts.ConcurrencyTimeout,
		store:              opts.Store,
		location:           opts.Location,
		spend:              opts.Spend,
		seed:               maphash.MakeSeed(),
		idSeeds:            [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
	}
	l.scratch.New = func() any { return new(callScratch) }
	if l.clock == nil {
		l.clock = clock.System{}
	}
	if l.store == nil {
		l.store = NewMemoryStore()
	}
	if hs, ok := l.store.(HoldStore); ok {
		l.holdStore = hs
		hs.SetRecoverer(l.contributeAll)
	}
	if l.location == nil {
		l.location = time.UTC
	}
	l.allowUnpriced = opts.AllowUnpriced
	if l.pendingTTL <= 0 {
		l.pendingTTL = 15 * time.Minute
	}
	if l.maxPending <= 0 {
		l.maxPending = 100_000
	}
	if l.concurrencyTimeout <= 0 {
		l.concurrencyTimeout = DefaultConcurrencyTimeout
	}
	for i := range l.pending {
		l.pending[i].byID = make(map[pendingKey]pendingCheck)
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
	l.store.Adopt(now, l.owner(rs, now))
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

// Applicable returns the rule that applies to a call of user for team on
// provider and model for each level, limit type and unit, as Check would
// choose them: the user's own rules first, then the team's pools, then
// the shared pools.
func (l *Limiter) Applicable(user, team, provider, model string) []Rule {
	var buf [maxApplicable]*rule
	rules := l.rules.Load().applicable(user, team, provider, model, buf[:0])
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
// caller that reuses the slice makes the check allocation-free. An error
// wrapping ErrStoreUnavailable leaves the call undecided.
func (l *Limiter) CheckInto(req Request, limits []Status) (Decision, error) {
	if req.UserID == "" {
		return Decision{}, ErrNoUser
	}
	now := l.clock.Now()
	var buf [maxApplicable]*rule
	rules := l.rules.Load().applicable(req.UserID, req.TeamID, req.Provider, req.Model, buf[:0])
	cost := req.Cost
	if req.Unpriced {
		cost = 0
	}
	for _, r := range rules {
		switch {
		case r.Unit == Tokens && req.Tokens > r.Limit:
			return Decision{}, &EstimateTooLargeError{Tokens: req.Tokens, Status: r.status()}
		case r.Unit == USD && req.Unpriced && !l.allowUnpriced:
			return Decision{}, &UnpricedError{Provider: req.Provider, Model: req.Model, Status: r.status()}
		case r.Unit == USD && cost > r.Limit:
			return Decision{}, &EstimateTooLargeError{Cost: cost, Status: r.status()}
		case r.Unit == Concurrent && req.RequestID == "":
			return Decision{}, ErrNoRequestID
		}
	}
	sc := l.scratch.Get().(*callScratch)
	defer l.scratch.Put(sc)
	n := len(rules)
	for i, r := range rules {
		sc.buckets[i] = l.bucket(r, now)
		sc.need[i] = checkCost(r.Unit, req.Tokens, cost)
		sc.cost[i] = chargeCost(r.Unit, 1, req.Tokens, cost)
		sc.owners[i] = r.bucketOwner(req.UserID, req.TeamID)
	}
	// A check sent again (a client's retry) is the call its first check
	// holds a slot for: it needs no other, as in a HoldStore.
	retried := false
	if req.RequestID != "" && l.holdStore == nil {
		if prev, ok := l.peek(req.UserID, req.RequestID); ok {
			for i, r := range rules {
				if r.Unit == Concurrent && l.holds(prev, r, sc.buckets[i].Period) {
					sc.need[i], retried = 0, true
				}
			}
		}
	}
	allowed, err := l.takeAll(now, req, sc, n)
	if err != nil {
		return Decision{}, err
	}
	d := Decision{Allowed: allowed, Tightest: -1}
	if !allowed {
		for i := range rules {
			if missing := float64(sc.need[i]) - sc.levels[i]; missing > 0 {
				if wait := sc.buckets[i].RefillTime(now, missing); d.Tightest < 0 || wait > d.RetryAfter {
					d.RetryAfter, d.Tightest = wait, i
				}
			}
		}
	} else if req.RequestID != "" && l.holdStore == nil {
		// A check sent again with its request_id (a client's retry)
		// replaces the first one's estimate, which its budgets give back.
		slots, tags := budgetSlots(rules)
		prev, hold, replaced, kept := l.remember(req, cost, slots, tags, l.holdTTL(sc.buckets[:n]), now)
		if replaced {
			l.release(now, hold, prev)
		}
		if !kept && slots&concurrencySlots != 0 || retried && !replaced {
			// No record could give its slot back, or the first check's
			// slot it counted on was given back meanwhile: refused, as
			// if full.
			l.untake(now, req, sc, n)
			d.Allowed, d.RetryAfter, d.Tightest = false, ConcurrencyRetry, -1
		}
	}
	if limits == nil {
		limits = make([]Status, 0, n)
	}
	d.Limits = limits[:0]
	for i, r := range rules {
		d.Limits = append(d.Limits, ownedStatus(statusAt(r, sc.buckets[i], sc.levels[i], now), sc.owners[i]))
	}
	if d.Tightest < 0 {
		d.Tightest = leastLeft(d.Limits)
	}
	return d, nil
}

// Record charges a finished call. A call is never refused (it already
// happened), so it may put buckets into debt that later checks wait out.
// If an allowed check with the same RequestID and user came first, the
// request was already charged and only the difference between the actual
// and the estimated tokens is applied, refunding an over-estimate.
func (l *Limiter) Record(u Usage) error { return l.recordAll([]Usage{u}, false) }

// RecordAll records the usages of one request, whose records entered the
// SpendSource together (the spool, then the ledger, takes a request's
// records at once): a budget whose spend one of them had to learn was
// learnt with all of them in it, so the others are not charged to it
// again. It returns the first error.
func (l *Limiter) RecordAll(us []Usage) error {
	return l.recordAll(us, false)
}

// Accept enqueues a request's records (enqueue puts them among the
// SpendSource's pending records, or fails, and then nothing is charged)
// and charges them, as RecordAll does. With a HoldStore, a recovery
// (which counts the pending records in budgets) never runs between the
// two: each record is counted once, by the recovery or by its charge.
// It returns enqueue's error; a charge that fails is the store's to
// count (see Record).
func (l *Limiter) Accept(enqueue func() error, us []Usage) error {
	if l.holdStore == nil {
		if err := enqueue(); err != nil {
			return err
		}
		_ = l.RecordAll(us)
		return nil
	}
	l.accepting.RLock()
	if err := enqueue(); err != nil {
		l.accepting.RUnlock()
		return err
	}
	_ = l.recordAll(us, true)
	return nil
}

// recordAll records us; when accepting, l.accepting is read-held and is
// released.
func (l *Limiter) recordAll(us []Usage, accepting bool) error {
	var learnt learntBudgets
	var first error
	// lost are the usages whose charge met a store that lost its state,
	// and charged how many of their owners it charged before.
	var lost, charged []int
	for i := range us {
		n, err := l.record(us[i], &learnt, false, 0)
		if errors.Is(err, ErrStateLost) {
			lost, charged = append(lost, i), append(charged, n)
			continue
		}
		if err != nil && first == nil {
			first = err
		}
	}
	if accepting {
		l.accepting.RUnlock()
	}
	if len(lost) == 0 || l.holdStore == nil {
		return first
	}
	// The store lost its state: its recovery counts these records, which
	// are pending, in budgets; they are charged to the rest.
	counted := l.holdStore.Recover() == nil
	for j, i := range lost {
		if _, err := l.record(us[i], &learnt, counted, charged[j]); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// record charges u; counted tells that its budgets counted it already
// (a recovery did), so that it is charged to the other buckets only.
func (l *Limiter) record(u Usage, learnt *learntBudgets, counted bool, skip int) (charged int, err error) {
	if u.UserID == "" {
		return 0, nil
	}
	now := l.clock.Now()
	var buf [maxApplicable]*rule
	rules := l.rules.Load().applicable(u.UserID, u.TeamID, u.Provider, u.Model, buf[:0])
	requests, tokens := int64(1), u.Tokens
	var estimate pendingCheck
	var own, fresh bool
	if l.holdStore == nil { // else the store settles the estimate
		estimate, own, fresh = l.settle(u, now)
	}
	if own && fresh {
		requests, tokens = 0, u.Tokens-estimate.tokens
	}
	sc := l.scratch.Get().(*callScratch)
	defer l.scratch.Put(sc)
	n := len(rules)
	for i, r := range rules {
		sc.buckets[i] = l.bucket(r, now)
		sc.owners[i] = r.bucketOwner(u.UserID, u.TeamID)
		switch {
		case r.Unit == Concurrent:
			// The record ends the call: its check's slot comes back. A
			// HoldStore gives back the hold of the request_id itself.
			sc.cost[i] = 0
			if own && l.holds(estimate, r, sc.buckets[i].Period) {
				sc.cost[i] = -1
			}
			continue
		case r.Unit != USD:
			sc.cost[i] = chargeCost(r.Unit, requests, tokens, 0)
			continue
		}
		// The cost counts in the period of the call; the estimate is
		// refunded from the period it was reserved in, if still current.
		p, spent := sc.buckets[i].Period, int64(0)
		if u.HasCost && p.Contains(u.Timestamp) && !counted {
			spent = u.Cost
		}
		if own && l.holds(estimate, r, p) { // late or not, it was held
			spent -= estimate.cost
		}
		sc.cost[i] = clampSpend(spent)
	}
	return l.chargeOwners(now, u.UserID, sc, n, learnt, u.RequestID, skip)
}

// Limits reports the buckets of user's calls for team without charging
// anything, the team's and the shared pools included. With a provider or
// a model it reports exactly the buckets a check for that call would
// use; without, the buckets of the rules not scoped by provider or model
// plus every live bucket of the user's own scoped rules.
func (l *Limiter) Limits(user, team, provider, model string) ([]Status, error) {
	now := l.clock.Now()
	rs := l.rules.Load()
	var buf [maxApplicable]*rule
	rules := rs.applicable(user, team, provider, model, buf[:0])
	sc := l.scratch.Get().(*callScratch)
	defer l.scratch.Put(sc)
	n := len(rules)
	for i, r := range rules {
		sc.buckets[i] = l.bucket(r, now)
		sc.owners[i] = r.bucketOwner(user, team)
	}
	for lo, hi := 0, 0; lo < n; lo = hi {
		hi = ownerEnd(sc, lo, n)
		if err := l.readLevels(now, sc, lo, hi); err != nil {
			return nil, err
		}
	}
	out := make([]Status, 0, n)
	for i, r := range rules {
		out = append(out, ownedStatus(statusAt(r, sc.buckets[i], sc.levels[i], now), sc.owners[i]))
	}
	if provider != "" || model != "" {
		return out, nil
	}
	// The user's live buckets of provider- or model-scoped rules.
	owner := l.owner(rs, now)
	err := l.store.EachOfUser(now, user, func(u string, s *Scope) (Bucket, bool) {
		if (s.Provider == "" && s.Model == "") || reported(rules, s) {
			return Bucket{}, false
		}
		return owner(u, s)
	}, func(_ string, b Bucket, level float64) {
		out = append(out, statusAt(rs.owner(user, b.Scope), b, level, now))
	})
	return out, err
}

// Each calls fn with every live bucket and its owner (a user_id, or a
// pool's owner: see ParseOwner), for metrics built at scrape time. fn
// may run under a store lock: it must be quick and must not call l.
func (l *Limiter) Each(fn func(user string, s Status)) {
	now := l.clock.Now()
	rs := l.rules.Load()
	l.store.Each(now, l.owner(rs, now), func(owner string, b Bucket, level float64) {
		fn(owner, ownedStatus(statusAt(rs.owner(owner, b.Scope), b, level, now), owner))
	})
}

// Sweep drops the buckets that have refilled completely (a new bucket
// starts full, so nothing is lost), the buckets no rule maps to any more,
// and expired check estimates. Memory thus follows active users, not every
// user ever seen. It returns the number of live buckets left.
func (l *Limiter) Sweep() (live int) {
	now := l.clock.Now()
	live = l.store.Sweep(now, l.owner(l.rules.Load(), now))
	type release struct {
		hold budgetHold
		p    pendingCheck
	}
	var releases []release
	for i := range l.pending {
		sh := &l.pending[i]
		sh.mu.Lock()
		for id, p := range sh.byID {
			if now.UnixNano() > p.expires {
				delete(sh.byID, id)
				l.pendingCount.Add(-1)
				l.expiredCount.Add(1)
				if h, ok := sh.holds[id]; ok {
					delete(sh.holds, id)
					releases = append(releases, release{h, p})
				}
			}
		}
		sh.mu.Unlock()
	}
	for _, r := range releases {
		l.release(now, r.hold, r.p)
	}
	return live
}

// Len returns the number of live buckets.
func (l *Limiter) Len() int { return l.store.Len() }

// owner adapts rs to the Store's Owner, budgets in their period at now.
func (l *Limiter) owner(rs *ruleSet, now time.Time) Owner {
	return func(user string, sc *Scope) (Bucket, bool) {
		r := rs.owner(user, sc)
		if r == nil {
			return Bucket{}, false
		}
		return l.bucket(r, now), true
	}
}

// bucket is rule r's bucket at now: a budget's is in its current period.
func (l *Limiter) bucket(r *rule, now time.Time) Bucket {
	b := Bucket{Scope: r.scope, Limit: r.Limit}
	switch r.Unit {
	case USD:
		b.Period = PeriodOf(r.Window, now, l.location)
	case Concurrent:
		b.Period = Period{End: concurrencyPeriodEnd}
	}
	return b
}

// reported tells whether one of rules owns buckets of scope sc.
func reported(rules []*rule, sc *Scope) bool {
	for _, r := range rules {
		if *r.scope == *sc {
			return true
		}
	}
	return false
}

// MaxWait caps reported waits and reset times: beyond it, a bucket is
// effectively closed, and a longer figure would overflow time.Duration.
const MaxWait = 100 * 365 * 24 * time.Hour

// checkCost is what a bucket must hold for a check to pass: an exhausted
// budget or token bucket stops even calls that give no estimate.
func checkCost(u Unit, tokens, cost int64) int64 {
	switch u {
	case Requests, Concurrent:
		return 1
	case USD:
		return max(cost, 1)
	}
	return max(tokens, 1)
}

func chargeCost(u Unit, requests, tokens, cost int64) int64 {
	switch u {
	case Requests:
		return requests
	case Concurrent:
		return 1 // a check's slot; a record's is settled in record
	case USD:
		return cost
	}
	return tokens
}
