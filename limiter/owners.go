package limiter

import (
	"errors"
	"time"
)

// A call's buckets belong to up to three owners: the user, the team's
// pool and the shared pool (see Per), in that order, each a run of
// consecutive buckets in a callScratch. A store decides one owner's
// buckets at once (one lock, or one Redis script in one cluster slot),
// never several: pools live apart from users, in other shards and other
// slots. So a check takes its owners one after the other, and a refusal
// by one gives back what the owners before it took. No owner ever
// admits past its limit; a check refused by a pool holds its user's
// buckets for the time of one more store call, which may refuse another
// call of the same user in between: it errs on the side of refusing.

// takeAll takes req's buckets in sc, owner by owner, all or none. On a
// refusal sc.levels holds every bucket's level as if nothing was taken.
func (l *Limiter) takeAll(now time.Time, req Request, sc *callScratch, n int) (bool, error) {
	for lo, hi := 0, 0; lo < n; lo = hi {
		hi = ownerEnd(sc, lo, n)
		allowed, err := l.takeOwner(now, req, sc, lo, hi)
		if err == nil && allowed {
			continue
		}
		l.untake(now, req, sc, lo)
		if err != nil {
			return false, err
		}
		for next, end := hi, hi; next < n; next = end {
			end = ownerEnd(sc, next, n)
			if l.readLevels(now, sc, next, end) != nil {
				for i := next; i < end; i++ {
					sc.levels[i] = float64(sc.buckets[i].Limit) // unknown: not the refusal's cause
				}
			}
		}
		return false, nil
	}
	return true, nil
}

// takeOwner takes the buckets [lo, hi) of one owner.
func (l *Limiter) takeOwner(now time.Time, req Request, sc *callScratch, lo, hi int) (bool, error) {
	owner := sc.owners[lo]
	take := func() (bool, error) {
		if l.holdStore != nil && req.RequestID != "" {
			return l.holdStore.TakeHold(now, owner, sc.buckets[lo:hi], sc.need[lo:hi], sc.cost[lo:hi], sc.levels[lo:hi], HoldID(owner, req.UserID, req.RequestID), l.holdTTL(sc.buckets[lo:hi]))
		}
		return l.store.Take(now, owner, sc.buckets[lo:hi], sc.need[lo:hi], sc.cost[lo:hi], sc.levels[lo:hi])
	}
	allowed, err := take()
	if err != nil {
		err = l.learnSpend(now, owner, sc.buckets[lo:hi], err, nil, func() (err error) {
			allowed, err = take()
			return err
		})
	}
	return allowed, err
}

// untake gives back what the owners of the buckets [0, end) took for
// req, and reports their levels as before.
func (l *Limiter) untake(now time.Time, req Request, sc *callScratch, end int) {
	for lo, hi := 0, 0; lo < end; lo = hi {
		hi = ownerEnd(sc, lo, end)
		owner := sc.owners[lo]
		held := false
		if l.holdStore != nil && req.RequestID != "" {
			// A check taken without a hold (the store holds too many)
			// is refunded as one without a request_id.
			held, _ = l.holdStore.ReleaseHold(now, owner, sc.buckets[lo:hi], HoldID(owner, req.UserID, req.RequestID))
		}
		if !held {
			var refund [maxApplicable]int64
			for i := lo; i < hi; i++ {
				refund[i] = -sc.cost[i]
			}
			_ = l.store.Charge(now, owner, sc.buckets[lo:hi], refund[lo:hi])
		}
		for i := lo; i < hi; i++ {
			sc.levels[i] += float64(sc.cost[i])
		}
	}
}

// readLevels reads the levels of the buckets [lo, hi) of one owner.
func (l *Limiter) readLevels(now time.Time, sc *callScratch, lo, hi int) error {
	owner := sc.owners[lo]
	read := func() error { return l.store.Levels(now, owner, sc.buckets[lo:hi], sc.levels[lo:hi]) }
	err := read()
	if err != nil {
		err = l.learnSpend(now, owner, sc.buckets[lo:hi], err, nil, read)
	}
	return err
}

// chargeOwners charges the record of request_id id of user, whose
// buckets and amounts are sc's first n, owner by owner, but for the
// first skip owners. A record whose first owner a copy charged already
// (ErrDuplicate) is that copy's, everywhere; an owner that lost its
// state (ErrStateLost) stops the charge, which the caller repeats after
// a recovery for the owners not charged (charged tells how many were:
// the loss may have taken their charged markers).
func (l *Limiter) chargeOwners(now time.Time, user string, sc *callScratch, n int, learnt *learntBudgets, id string, skip int) (charged int, err error) {
	var first error
	for lo, hi := 0, 0; lo < n; lo, charged = hi, charged+1 {
		hi = ownerEnd(sc, lo, n)
		if charged < skip {
			continue
		}
		err := l.chargeRecord(now, sc.owners[lo], sc.buckets[lo:hi], sc.cost[lo:hi], learnt, HoldID(sc.owners[lo], user, id))
		switch {
		case errors.Is(err, ErrDuplicate) && lo == 0:
			if split, ok := l.spend.(SplitSpendSource); ok {
				split.Duplicate(user, id)
			}
			return charged + 1, nil
		case errors.Is(err, ErrDuplicate):
		case errors.Is(err, ErrStateLost):
			return charged, err
		case err != nil && first == nil:
			first = err
		}
	}
	return charged, first
}

// HoldID names, in owner's buckets, the hold and the charged record of
// user's request_id id: id itself in the user's own buckets, where it is
// theirs alone; in a pool's, which every user shares, id prefixed with
// the user, so that two users' request_ids, which clients choose, never
// settle or pass for each other's.
func HoldID(owner, user, id string) string {
	if id == "" || owner == user {
		return id
	}
	return user + "\x00" + id
}

// ownerEnd returns the end of the run of buckets of sc's owner at lo.
func ownerEnd(sc *callScratch, lo, n int) int {
	hi := lo + 1
	for hi < n && sc.owners[hi] == sc.owners[lo] {
		hi++
	}
	return hi
}

// ownedStatus names the pool of a status of owner's bucket.
func ownedStatus(s Status, owner string) Status {
	if s.Per != PerUser {
		s.Pool = PoolKey(owner)
	}
	return s
}
