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

// Limiter holds the rules and the token estimates of allowed checks, and
// decides checks and charges records on the buckets of its Store. It is
// safe for concurrent use.
type Limiter struct {
	// clock tells the time of decisions and of the memory store's buckets.
	clock clock.Clock
	// pendingTTL and maxPending are Options.PendingTTL and MaxPending.
	pendingTTL time.Duration
	maxPending int64
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

// pendingShard holds the estimates of some users.
type pendingShard struct {
	mu   sync.Mutex
	byID map[pendingKey]pendingCheck
	// holds names the call of each estimate reserved in a budget, so
	// that an estimate whose record never comes is given back: a budget
	// does not refill, and would otherwise lose it until its period ends.
	holds map[pendingKey]budgetHold
	_     [32]byte // keeps neighbouring shards' mutexes on separate cache lines
}

// budgetHold is the call whose estimate a budget holds.
type budgetHold struct {
	user, team, provider, model string
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
	// cost is the estimated cost reserved in budgets, in nano-USD.
	cost int64
	// budgets are the levels and limit types of the budgets that
	// reserved it (budgetSlot).
	budgets uint16
	// at is the check's time and expires its end, in Unix nanoseconds.
	at, expires int64
}

// New returns a Limiter enforcing rules, which must each pass Validate.
func New(rules []Rule, opts Options) (*Limiter, error) {
	l := &Limiter{
		clock:      opts.Clock,
		pendingTTL: opts.PendingTTL,
		maxPending: int64(opts.MaxPending),
		store:      opts.Store,
		location:   opts.Location,
		spend:      opts.Spend,
		seed:       maphash.MakeSeed(),
		idSeeds:    [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
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
	allowed, err := l.takeAll(now, req, sc, n)
	if err != nil {
		return Decision{}, err
	}
	d := Decision{Allowed: allowed}
	if !allowed {
		for i := range rules {
			if missing := float64(sc.need[i]) - sc.levels[i]; missing > 0 {
				d.RetryAfter = max(d.RetryAfter, sc.buckets[i].RefillTime(now, missing))
			}
		}
	} else if req.RequestID != "" && l.holdStore == nil {
		// A check sent again with its request_id (a client's retry)
		// replaces the first one's estimate, which its budgets give back.
		if prev, hold, ok := l.remember(req, cost, budgetSlots(rules), now); ok {
			l.release(now, hold, prev)
		}
	}
	if limits == nil {
		limits = make([]Status, 0, n)
	}
	d.Limits = limits[:0]
	for i, r := range rules {
		d.Limits = append(d.Limits, ownedStatus(statusAt(r, sc.buckets[i], sc.levels[i], now), sc.owners[i]))
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

// learntBudgets are the budgets a request's records learnt the spend of.
type learntBudgets []learntBudget

type learntBudget struct {
	user   string
	scope  Scope
	period int64
}

func (lb *learntBudgets) has(user string, b Bucket) bool {
	for _, x := range *lb {
		if x.user == user && x.scope == *b.Scope && x.period == b.Period.Start {
			return true
		}
	}
	return false
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
		if r.Unit != USD {
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
		if r.Unit != USD {
			continue
		}
		b := l.bucket(r, now)
		if l.holds(p, r, b.Period) {
			sc.buckets[n], sc.cost[n], sc.owners[n] = b, -p.cost, r.bucketOwner(h.user, h.team)
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
	return p.budgets&budgetSlot(r) != 0 && period.Contains(time.Unix(0, p.at))
}

// budgetSlot is the bit of r's level and limit type among a check's
// budgets; zero for a rule that is no budget.
func budgetSlot(r *rule) uint16 {
	if r.Unit != USD {
		return 0
	}
	return 1 << (uint(r.Per)*3 + uint(r.Window-Day))
}

// budgetSlots is the budgets among rules, as bits (budgetSlot).
func budgetSlots(rules []*rule) uint16 {
	var slots uint16
	for _, r := range rules {
		slots |= budgetSlot(r)
	}
	return slots
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
	if r.Unit == USD {
		b.Period = PeriodOf(r.Window, now, l.location)
	}
	return b
}

// charge applies amounts to the buckets bs of user, for a record or the
// release of an estimate. A budget whose spend the store does not know is
// learnt: the SpendSource counts the record (stored, or pending in the
// ledger) and no estimate, so a budget this call learnt is not charged.
// Neither is a budget an earlier record of the same request learnt
// (learnt), which counted this record too. Without a SpendSource a
// budget is learnt as nothing spent, and charged.
func (l *Limiter) charge(now time.Time, user string, bs []Bucket, amounts []int64, learnt *learntBudgets) error {
	return l.chargeRecord(now, user, bs, amounts, learnt, "")
}

// chargeRecord is charge for the record of request_id id, which a
// HoldStore charges once and settles against its check's hold.
func (l *Limiter) chargeRecord(now time.Time, user string, bs []Bucket, amounts []int64, learnt *learntBudgets, id string) error {
	storeCharge := func() error {
		if l.holdStore != nil && id != "" {
			return l.holdStore.ChargeOnce(now, user, bs, amounts, id)
		}
		return l.store.Charge(now, user, bs, amounts)
	}
	if learnt != nil && len(*learnt) > 0 {
		var drop [maxApplicable]int
		d := drop[:0]
		for i, b := range bs {
			if b.IsBudget() && learnt.has(user, b) {
				d = append(d, i)
			}
		}
		if bs, amounts = dropBuckets(bs, amounts, d); len(bs) == 0 {
			return nil
		}
	}
	err := storeCharge()
	if err == nil {
		return nil
	}
	var unknown *UnknownSpendError
	if !errors.As(err, &unknown) {
		return err
	}
	drop := unknown.Buckets
	var seeded func(i int)
	if l.spend != nil {
		seeded = func(i int) {
			amounts[i] = 0
			if learnt != nil {
				*learnt = append(*learnt, learntBudget{user, *bs[i].Scope, bs[i].Period.Start})
			}
		}
	}
	err = l.learnSpend(now, user, bs, err, seeded, storeCharge)
	if err != nil && l.spend != nil && errors.Is(err, ErrStoreUnavailable) {
		// The spend could not be read: the other buckets are still
		// charged; the budgets, when learnt later, count the record.
		if bs, amounts = dropBuckets(bs, amounts, drop); len(bs) > 0 {
			_ = l.store.Charge(now, user, bs, amounts)
		}
	}
	return err
}

// MaxSpend bounds what one record charges a budget and what a budget
// holds spent, in nano-dollars: 2^53, exact in a float64 (and in Redis's
// Lua numbers) and eight times MaxLimit, so that a spent budget stays
// spent (a record may claim up to a billion dollars, and ten of them
// would wrap an int64) while levels stay exact.
const MaxSpend = 1 << 53

func clampSpend(n int64) int64 { return min(max(n, -MaxSpend), MaxSpend) }

// dropBuckets removes the buckets at the indexes drop (ascending) from
// bs and amounts, in place.
func dropBuckets(bs []Bucket, amounts []int64, drop []int) ([]Bucket, []int64) {
	kept, d := 0, 0
	for i := range bs {
		if d < len(drop) && drop[d] == i {
			d++
			continue
		}
		bs[kept], amounts[kept] = bs[i], amounts[i]
		kept++
	}
	return bs[:kept], amounts[:kept]
}

// maxSeedRounds bounds learnSpend: a second round only happens when a
// period ended or another replica's key expired in between.
const maxSeedRounds = 3

// learnSpend handles err, the error of a store operation on bs: when the
// store did not know the spend of some budgets, it reads it from the
// SpendSource, seeds the store and runs op (the operation again), until
// the store knows. seeded is told the buckets this call seeded. The
// first call is the caller's, so that the common path makes no closure.
func (l *Limiter) learnSpend(now time.Time, user string, bs []Bucket, err error, seeded func(i int), op func() error) error {
	for round := 1; ; round++ {
		if round > 1 {
			err = op()
		}
		var unknown *UnknownSpendError
		if !errors.As(err, &unknown) || round == maxSeedRounds {
			return err
		}
		rs := l.rules.Load()
		for _, i := range unknown.Buckets {
			b := bs[i]
			if l.holdStore != nil {
				added, err := l.contribute(user, b, false)
				if err != nil {
					return err
				}
				if added && seeded != nil {
					seeded(i)
				}
				continue
			}
			var spent int64
			if l.spend != nil {
				groups, err := l.spend.Spent(user, *b.Scope, time.Unix(b.Period.Start, 0).UTC(), time.Unix(b.Period.End, 0).UTC())
				if err != nil {
					return fmt.Errorf("%w: cannot read the spend of a %s budget: %w", ErrStoreUnavailable, b.Scope.Window, err)
				}
				spent = max(0, clampSpend(rs.budgetSpend(user, b.Scope, groups)))
			}
			ok, err := l.store.Seed(user, b, spent)
			if err != nil {
				return err
			}
			if ok && seeded != nil {
				seeded(i)
			}
		}
	}
}

// userHash names a user in pendingChecks and places it in a shard.
func (l *Limiter) userHash(user string) uint64 { return maphash.String(l.seed, user) }

// remember keeps an allowed check's estimates for its record. It returns
// the estimate of the same user's check with this request_id that it
// replaces, if that one held a budget.
func (l *Limiter) remember(req Request, cost int64, budgets uint16, now time.Time) (prev pendingCheck, hold budgetHold, replaced bool) {
	uh := l.userHash(req.UserID)
	sh := &l.pending[uh%numShards]
	key := l.pendingKey(req.RequestID)
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
			return
		}
	}
	sh.byID[key] = pendingCheck{user: uh, tokens: req.Tokens, cost: cost, budgets: budgets, at: now.UnixNano(), expires: now.Add(l.pendingTTL).UnixNano()}
	if budgets != 0 && cost > 0 {
		if sh.holds == nil {
			sh.holds = make(map[pendingKey]budgetHold)
		}
		sh.holds[key] = budgetHold{req.UserID, req.TeamID, req.Provider, req.Model}
	} else {
		delete(sh.holds, key)
	}
	return prev, hold, replaced
}

// settle takes the estimate of the allowed check that u's record
// follows: own tells it is its user's, fresh that it is within the TTL.
func (l *Limiter) settle(u Usage, now time.Time) (estimate pendingCheck, own, fresh bool) {
	if u.RequestID == "" {
		return pendingCheck{}, false, false
	}
	uh := l.userHash(u.UserID)
	sh := &l.pending[uh%numShards]
	key := l.pendingKey(u.RequestID)
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

func (l *Limiter) pendingKey(requestID string) pendingKey {
	return pendingKey{maphash.String(l.idSeeds[0], requestID), maphash.String(l.idSeeds[1], requestID)}
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
	case Requests:
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
	case USD:
		return cost
	}
	return tokens
}

// status describes rule r's bucket without its level.
func (r *rule) status() Status {
	return Status{Window: r.Window, Unit: r.Unit, Provider: r.Provider, Model: r.Model, TeamID: r.TeamID, Per: r.Per, Limit: r.Limit}
}

// statusAt reports bucket b of rule r holding level units. A budget
// resets when its period ends, spent or not.
func statusAt(r *rule, b Bucket, level float64, now time.Time) Status {
	s := r.status()
	s.Remaining = max(0, int64(math.Floor(level)))
	if b.IsBudget() {
		s.ResetAt = time.Unix(b.Period.End, 0).UTC()
	} else {
		s.ResetAt = now.Add(b.RefillTime(now, float64(r.Limit)-level))
	}
	return s
}
