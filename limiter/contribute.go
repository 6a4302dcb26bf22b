package limiter

import (
	"cmp"
	"fmt"
	"time"
)

// contribute adds this replica's part of budget b of user (see
// HoldStore.Contribute): the pending spend of the calls b is the most
// specific budget of, with, when recovering, what was stored since the
// store last answered.
func (l *Limiter) contribute(user string, b Bucket, recovering bool) (bool, error) {
	if b.IsConcurrency() {
		// Only holds are in flight: the store adds this replica's.
		return l.holdStore.Contribute(user, b, 0, nil, func() (int64, error) { return 0, nil })
	}
	rs := l.rules.Load()
	from, to := time.Unix(b.Period.Start, 0).UTC(), time.Unix(b.Period.End, 0).UTC()
	split, _ := l.spend.(SplitSpendSource)
	var part int64
	var records []CountedSpend
	if split != nil {
		owner := rs.owner(user, b.Scope)
		sums, pending := split.Pending(user, *b.Scope, from, to)
		part = clampSpend(rs.budgetSpend(user, b.Scope, sums))
		// A pool names its records as its holds and charges do (HoldID).
		for _, g := range pending {
			if rs.budgetCounts(user, b.Scope, owner, g) {
				records = append(records, CountedSpend{RequestID: HoldID(user, cmp.Or(g.UserID, user), g.RequestID), NanoUSD: g.NanoUSD})
			}
		}
		if recovering {
			for _, ts := range split.Unconfirmed(user, *b.Scope, from, to) {
				for _, g := range ts.Spends {
					if rs.budgetCounts(user, b.Scope, owner, g) {
						records = append(records, CountedSpend{RequestID: HoldID(user, cmp.Or(g.UserID, user), g.RequestID), At: ts.At, NanoUSD: g.NanoUSD})
					}
				}
			}
		}
	}
	db := func() (int64, error) {
		if l.spend == nil {
			return 0, nil
		}
		var groups []Spend
		var err error
		if split != nil {
			groups, err = split.Stored(user, *b.Scope, from, to)
		} else {
			groups, err = l.spend.Spent(user, *b.Scope, from, to)
		}
		if err != nil {
			return 0, fmt.Errorf("%w: cannot read the spend of a %s budget: %w", ErrStoreUnavailable, b.Scope.Window, err)
		}
		return max(0, clampSpend(rs.budgetSpend(user, b.Scope, groups))), nil
	}
	return l.holdStore.Contribute(user, b, part, records, db)
}

// contributeAll adds this replica's part to every budget it has one in,
// after the store lost their spend: the budgets of its pending calls and
// of its holds, in their current periods.
func (l *Limiter) contributeAll() error {
	// No request between its enqueue and its charges (see Accept).
	l.accepting.Lock()
	defer l.accepting.Unlock()
	now := l.clock.Now()
	rs := l.rules.Load()
	type budgetID struct {
		user   string
		scope  Scope
		period int64
	}
	done := map[budgetID]bool{}
	add := func(user string, b Bucket) error {
		id := budgetID{user, *b.Scope, b.Period.Start}
		if done[id] {
			return nil
		}
		done[id] = true
		_, err := l.contribute(user, b, true)
		return err
	}
	if split, ok := l.spend.(SplitSpendSource); ok {
		var buf [maxApplicable]*rule
		for _, c := range split.PendingCalls(true) {
			for _, r := range rs.applicable(c.UserID, c.TeamID, c.Provider, c.Model, buf[:0]) {
				if r.Unit == USD {
					if err := add(r.bucketOwner(c.UserID, c.TeamID), l.bucket(r, now)); err != nil {
						return err
					}
				}
			}
		}
	}
	for user, bs := range l.holdStore.HeldBuckets() {
		for _, hb := range bs {
			if !hb.IsBudget() {
				continue
			}
			r := rs.owner(user, hb.Scope)
			if r == nil {
				continue
			}
			if b := l.bucket(r, now); b.Period == hb.Period {
				if err := add(user, b); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
