package limiter

import (
	"errors"
	"fmt"
	"time"
)

// Charging records, and learning a budget's spend when the store does
// not know it.

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
			var spent int64 // nothing in flight is in the database
			if l.spend != nil && !b.IsConcurrency() {
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
