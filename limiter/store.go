package limiter

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Store keeps the levels of the token buckets. The Limiter decides which
// buckets a call touches and what it must pay; the Store does the token
// bucket arithmetic (capacity Limit, refilled continuously at Limit per
// Window, starting full) on all of a call's buckets at once. The
// in-process MemoryStore is the default; a store shared by every replica
// (Redis) makes one limit hold across all of them.
type Store interface {
	// Take admits a check if every bucket holds at least need[i] units,
	// and then, only then, debits cost[i] from each: all or none. levels
	// receives each bucket's level after the decision.
	Take(now time.Time, user string, bs []Bucket, need, cost []int64, levels []float64) (allowed bool, err error)
	// Charge debits amounts[i] from each bucket whatever its level (a
	// record is never refused; a bucket may go into debt); a negative
	// amount refunds, up to the capacity.
	Charge(now time.Time, user string, bs []Bucket, amounts []int64) error
	// Levels reads the buckets' levels without changing them.
	Levels(now time.Time, user string, bs []Bucket, levels []float64) error
	// Each calls fn with every live bucket the store knows of, for
	// metrics built at scrape time; owner returns the bucket's current
	// rule, or false when none owns the scope any more. fn must be quick.
	Each(now time.Time, owner Owner, fn func(user string, b Bucket, level float64))
	// EachOfUser is Each for the live buckets of one user.
	EachOfUser(now time.Time, user string, owner Owner, fn func(user string, b Bucket, level float64)) error
	// Sweep forgets the buckets that have refilled completely (a bucket
	// not known is full) and those no rule owns, and returns how many are
	// left, so that memory follows the active users.
	Sweep(now time.Time, owner Owner) (live int)
	// Len returns the number of live buckets.
	Len() int
	// Adopt applies changed limits to the live buckets, keeping their
	// levels, when the rules change.
	Adopt(now time.Time, owner Owner)
	// Seed sets the spend of budget bucket b in its period, unless the
	// store knows it already: whoever seeds first wins, and seeded
	// tells whether that was this call.
	Seed(user string, b Bucket, spent int64) (seeded bool, err error)
}

// A budget bucket (unit USD) is not a token bucket: its level is Limit
// minus what was spent in its calendar Period, and a store that does not
// know the spend (a new period, a restart, a Redis that lost it) says so
// with an *UnknownSpendError rather than guessing; the Limiter then reads
// the spend from its SpendSource and seeds it. Take and Charge change
// nothing when they return one.

// UnknownSpendError lists the budget buckets whose spend a store does
// not know.
type UnknownSpendError struct {
	// Buckets are indexes into the call's buckets.
	Buckets []int
}

func (e *UnknownSpendError) Error() string {
	return fmt.Sprintf("cannot decide without the spend of %d budgets in their period", len(e.Buckets))
}

// SpendSource tells what a budget's owner spent in its scope: what the
// database has for [from, to) plus what is accepted and not stored yet,
// by provider, model and team, for the Limiter to keep the calls that
// the budget's rule is the most specific budget of (a provider's budget
// beside an unscoped one takes that provider's calls). The owner (the
// user argument of every method here) is a user_id, or a pool's owner
// (see ParseOwner): a team's pool sums the calls of every user for the
// team, the shared pool every call; sc.TeamID, when set, keeps the
// calls of that team only.
type SpendSource interface {
	Spent(user string, sc Scope, from, to time.Time) ([]Spend, error)
}

// Spend is what was spent on one provider and model by one team.
type Spend struct {
	Provider, Model string
	// TeamID is the team the calls were for; empty for none.
	TeamID string
	// NanoUSD is the amount, in nano-dollars.
	NanoUSD int64
	// RequestID names the one record the spend is, when it is one, and
	// UserID that record's user.
	RequestID, UserID string
}

// Owner returns the bucket of user with scope sc as the rules in force
// define it, or false if no rule owns that scope any more.
type Owner func(user string, sc *Scope) (Bucket, bool)

// Bucket is one token bucket of a user: the scope of its rule and the
// rule's size.
type Bucket struct {
	// Scope identifies the bucket among its user's. It points into the
	// rule set in force; stores compare it by value.
	Scope *Scope
	// Limit is the capacity, refilled at Limit per Scope.Window.
	Limit int64
	// Period is a budget's current calendar period; zero otherwise.
	Period Period
}

// IsBudget tells whether the bucket counts what it holds rather than
// refilling over time: a USD budget (its spend in its Period), or a
// concurrency limit, which is a budget of slots: a check spends one, the
// record of its request_id gives it back, and its Period never ends.
// Stores keep both alike: a level of Limit less what is spent, and a
// spend they may not know (UnknownSpendError), which replicas put back
// after a loss.
func (b Bucket) IsBudget() bool { return b.Scope.Unit == USD || b.Scope.Unit == Concurrent }

// IsConcurrency tells whether the bucket counts calls in flight.
func (b Bucket) IsConcurrency() bool { return b.Scope.Unit == Concurrent }

// RefillPerSecond is the units the bucket gains each second: none for a
// concurrency limit.
func (b Bucket) RefillPerSecond() float64 {
	if b.IsConcurrency() {
		return 0
	}
	return float64(b.Limit) / b.Scope.Window.Duration().Seconds()
}

// RefillTime is how long, from now, the bucket takes to gain missing
// units: a budget gains them all when its period ends; a concurrency
// limit's wait is ConcurrencyRetry.
func (b Bucket) RefillTime(now time.Time, missing float64) time.Duration {
	if missing <= 0 {
		return 0
	}
	if b.IsConcurrency() {
		return ConcurrencyRetry
	}
	if b.IsBudget() {
		return max(0, time.Unix(b.Period.End, 0).Sub(now))
	}
	d := math.Ceil(missing / float64(b.Limit) * float64(b.Scope.Window.Duration()))
	if d > float64(MaxWait) {
		// A huge debt (a record of 10^12 tokens against a small bucket)
		// would overflow time.Duration.
		return MaxWait
	}
	return time.Duration(d)
}

// Scope is what, besides the user, identifies a bucket: the limit type,
// the unit, and the provider and model values of its rule's scope.
type Scope struct {
	// Provider and Model are the rule's scope values; empty when unscoped.
	Provider, Model string
	// TeamID is the rule's team scope; empty when unscoped.
	TeamID string
	// Per is who shares the bucket (see Per): the bucket's owner is a
	// user, a team's pool or the shared pool accordingly.
	Per Per
	// Window is the rule's limit type.
	Window Window
	// Unit is what the rule counts.
	Unit Unit
}

// ErrStateLost is returned by a HoldStore's ChargeOnce and Charge when
// the store lost its state (a Redis restarted empty) and has not
// recovered yet: nothing was charged. The Limiter then has the store
// Recover, which counts the records accepted and not stored (the one
// being charged among them) in budgets, and charges the record again
// without its budgets.
var ErrStateLost = errors.New("cannot charge: the quota store lost its state and must recover first")

// ErrDuplicate is returned by a HoldStore's ChargeOnce for a record of
// a request_id charged already (by any replica): nothing was charged.
var ErrDuplicate = errors.New("not charged: a record of this request_id was charged already")

// ErrStoreUnavailable marks a Store error that leaves the call undecided:
// the shared store cannot be reached and no fallback answers.
var ErrStoreUnavailable = errors.New("cannot reach the quota store")

// HoldStore is a Store shared by replicas that keeps checks' estimates
// itself, by request_id, rather than leaving them to each Limiter: a
// record then settles its check's estimate on whichever replica it
// reaches, a record sent again (a client's retry) is charged once
// fleet-wide, and the estimates of a replica that died are given back.
// The Limiter then hands it whole amounts and the request_id, and keeps
// no estimates of its own.
type HoldStore interface {
	Store
	// TakeHold is Take for a check with request_id id: what it debits is
	// held for the record of id, which settles it (ChargeOnce), or given
	// back after ttl. A hold of id already there (the check sent again)
	// is given back as the new one is taken.
	TakeHold(now time.Time, user string, bs []Bucket, need, cost []int64, levels []float64, id string, ttl time.Duration) (allowed bool, err error)
	// ReleaseHold gives back what the hold of id took from bs, at once:
	// a check refused by a pool after its user's buckets allowed it
	// undoes what it took there. Nothing is marked charged. released
	// tells whether there was such a hold (TakeHold may take without
	// one).
	ReleaseHold(now time.Time, user string, bs []Bucket, id string) (released bool, err error)
	// ChargeOnce is Charge for the record of request_id id: each amount
	// less what the hold of id holds in that bucket, and nothing at all
	// when a record of id was charged already.
	ChargeOnce(now time.Time, user string, bs []Bucket, amounts []int64, id string) error
	// Contribute adds part, this replica's share of budget b's spend
	// that the database does not have yet (records accepted and not
	// stored, estimates held), to the store's spend of b, once per
	// replica while the store keeps b; a store that does not know b's
	// spend learns it from db, the database's sum, and part. records are
	// the part's records known by request_id, each counted once in b
	// whichever replicas hold it, and, with a time, records stored since
	// the store last answered under the state this replica knows, each
	// counted if stored after the database's sum was taken. It tells
	// whether part was added by this call.
	Contribute(user string, b Bucket, part int64, records []CountedSpend, db func() (int64, error)) (added bool, err error)
	// HeldBuckets returns, by user, the buckets of the estimates this
	// replica holds.
	HeldBuckets() map[string][]Bucket
	// Recover brings the store's state back after it answered
	// ErrStateLost, once: a call while another recovers waits for it.
	Recover() error
	// SetRecoverer registers what the Limiter does when the store lost
	// its budgets' spend (a Redis restarted empty): add its part of every
	// budget it has one in.
	SetRecoverer(fn func() error)
}

// SplitSpendSource is a SpendSource that tells the database's part and
// this replica's pending part apart, for a HoldStore.
type SplitSpendSource interface {
	SpendSource
	// Stored is what the database has.
	Stored(user string, sc Scope, from, to time.Time) ([]Spend, error)
	// Pending is what was accepted and is not stored yet: sums, and the
	// records known by request_id one by one.
	Pending(user string, sc Scope, from, to time.Time) (sums, records []Spend)
	// Unconfirmed is what was stored since the store last answered under
	// the state this replica knows, by the time it was stored.
	Unconfirmed(user string, sc Scope, from, to time.Time) []TimedSpend
	// PendingCalls returns the users, providers and models with a
	// pending part, and when recovering an unconfirmed one.
	PendingCalls(recovering bool) []Call
	// Duplicate tells that user's pending record requestID was not
	// charged here: another replica charged a copy of it, whose part it
	// is.
	Duplicate(user, requestID string)
}

// TimedSpend is what was stored at one time.
type TimedSpend struct {
	At     time.Time
	Spends []Spend
}

// CountedSpend is one record of a replica's part of a budget.
type CountedSpend struct {
	// RequestID names the record.
	RequestID string
	// At is when it was stored; zero for a record not stored yet.
	At time.Time
	// NanoUSD is what it cost.
	NanoUSD int64
}

// Call names a user's calls of one provider and model for a team.
type Call struct {
	UserID, Provider, Model string
	// TeamID is the team the calls were for; empty for none.
	TeamID string
}
