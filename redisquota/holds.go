package redisquota

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmusage/llmusage/limiter"
)

// TakeHold implements limiter.HoldStore: a check with a request_id takes
// its amounts as Take does and keeps them in a hold in Redis, named by
// the request_id, that the record of that request_id settles on whichever
// replica it reaches (ChargeOnce). The hold also waits here for ttl: if
// no record came by then, Sweep gives it back. Past maxHolds waiting the
// check is taken without a hold, and its record is charged in full.
func (s *Store) TakeHold(now time.Time, user string, bs []limiter.Bucket, need, cost []int64, levels []float64, id string, ttl time.Duration) (bool, error) {
	if hasConcurrency(bs) && (id == "" || !s.holds.room() || s.fencedSlots()) {
		return s.refuseSlots(now, user, bs, levels)
	}
	if id == "" || !s.holds.room() {
		return s.Take(now, user, bs, need, cost, levels)
	}
	if s.useRedis() {
		res, err := s.runRecovering(opTake, user, bs, need, cost, id)
		if err == nil {
			allowed := res[0] == 1 || res[0] == 2 || res[0] == 4
			copy(levels, res[1:])
			s.seen.touch(now, user, bs, levels)
			if allowed {
				held := cost
				if res[0] == 4 {
					// Its call is over: the check holds nothing (and a
					// pool's refusal of it gives nothing back).
					held = make([]int64, len(cost))
				}
				s.holds.put(user, id, bs, held, now.Add(ttl), false)
				if res[0] == 2 {
					s.holds.markRetried(user, id)
				}
				if s.cluster {
					s.indexHold(user, id)
				}
				if hasConcurrency(bs) && s.fencedSlots() {
					// The call found the loss and recovered first.
					if _, err := s.ReleaseHold(now, user, bs, id); err != nil {
						return false, err
					}
					return s.refuseSlots(now, user, bs, levels)
				}
			}
			return allowed, nil
		}
		if isUnknownSpend(err) {
			return false, err
		}
	}
	if allowed, done, err := s.failModeTake(bs, levels); done {
		return allowed, err
	}
	local := s.local.Load()
	shares := s.shares(bs)
	// A check sent again gives its first hold back, as in Redis; if it is
	// refused, the first hold stays, as in Redis, and is taken again.
	var back []int64
	if prev, ok := s.holds.get(user, id); ok {
		back = s.amountsIn(prev, bs)
		for i := range back {
			back[i] = -back[i]
		}
		if err := local.Charge(now, user, shares, back); err != nil {
			return false, err
		}
		s.owed.add(user, bs, back)
	}
	allowed, err := local.Take(now, user, shares, need, cost, levels)
	switch {
	case err == nil && allowed:
		s.holds.put(user, id, bs, cost, now.Add(ttl), true)
		if back != nil {
			s.holds.markRetried(user, id)
		}
		s.owed.add(user, bs, cost)
	case back != nil:
		for i := range back {
			back[i] = -back[i]
		}
		_ = local.Charge(now, user, shares, back)
		s.owed.add(user, bs, back)
	}
	return allowed, err
}

// ChargeOnce implements limiter.HoldStore: it charges a record's amounts
// less what the hold of its request_id holds in each bucket, and nothing
// when a record of that request_id was charged already, by any replica,
// within DedupTTL.
func (s *Store) ChargeOnce(now time.Time, user string, bs []limiter.Bucket, amounts []int64, id string) error {
	if id == "" {
		return s.Charge(now, user, bs, amounts)
	}
	if s.useRedis() {
		// A hold taken in the local shares that Redis does not have yet
		// (Redis refused writes, or was away, and the write-back that puts
		// it there has not run): the record is charged in full in Redis,
		// and what the write-back owes for the hold is cancelled. Under
		// s.settling, so that the write-back does not put the hold in
		// Redis in between (it would be settled, and cancelled too). Not
		// under s.recovery: a record's charge runs while the limiter holds
		// its accepting lock, which a recovery takes (contributeAll)
		// while it holds s.recovery; the sidecar froze in that deadlock.
		h, held := s.holds.get(user, id)
		if held && h.local {
			s.settling.Lock()
			defer s.settling.Unlock()
			h, held = s.holds.get(user, id)
		}
		res, err := s.run(opCharge, user, bs, nil, amounts, id)
		if errors.Is(err, errEpochLost) {
			return limiter.ErrStateLost
		}
		if err == nil {
			if held && h.local {
				back := make([]int64, len(h.amounts))
				for i, a := range h.amounts {
					back[i] = -a
				}
				s.owed.add(user, h.buckets, back)
			}
			s.holds.drop(user, id)
			s.seen.touch(now, user, bs, res[1:])
			if res[0] == 3 {
				return limiter.ErrDuplicate
			}
			return nil
		}
		if isUnknownSpend(err) {
			return err
		}
	}
	if s.opts.FailMode != FailLocal {
		return s.unavailable()
	}
	// The local shares are charged the record less its hold: the shares
	// started from levels that held a hold taken in Redis, and debited
	// one taken here. Redis gets the record again when it is back, less
	// the holds taken here (whose estimates the write-back brings); one
	// taken in Redis is settled there then, or, if Redis gave it back
	// meanwhile (this replica's registration lapsed), not.
	net := make([]int64, len(amounts))
	copy(net, amounts)
	replay := make([]int64, len(amounts))
	copy(replay, amounts)
	if h, ok := s.holds.get(user, id); ok {
		held := s.amountsIn(h, bs)
		for i := range net {
			net[i] -= held[i]
			if h.local {
				replay[i] -= held[i]
			}
		}
		if h.local {
			// Budgets of the hold that this record does not touch.
			s.releaseLocal(now, h, bs)
		}
	}
	if err := s.local.Load().Charge(now, user, s.shares(bs), net); err != nil {
		return err
	}
	s.holds.drop(user, id)
	s.owed.settle(user, id, bs, replay, net)
	return nil
}

// HeldIn sums what this replica's holds of user hold in bucket b, for a
// budget's part (see Contribute).
func (s *Store) HeldIn(user string, b limiter.Bucket) int64 {
	return s.holds.heldIn(user, b)
}

// amountsIn is what hold h holds in each of bs.
func (s *Store) amountsIn(h hold, bs []limiter.Bucket) []int64 {
	out := make([]int64, len(bs))
	for i, b := range bs {
		for j, hb := range h.buckets {
			if sameBucket(hb, b) {
				out[i] = h.amounts[j]
			}
		}
	}
	return out
}

// releaseLocal gives back, in the local shares, what hold h holds in
// budgets other than bs.
func (s *Store) releaseLocal(now time.Time, h hold, bs []limiter.Bucket) {
	for j, hb := range h.buckets {
		if !hb.IsBudget() || h.amounts[j] == 0 {
			continue
		}
		found := false
		for _, b := range bs {
			found = found || sameBucket(hb, b)
		}
		if !found {
			one := []limiter.Bucket{hb}
			back := []int64{-h.amounts[j]}
			_ = s.local.Load().Charge(now, h.user, s.shares(one), back)
			s.owed.add(h.user, one, back)
		}
	}
}

// sweepHolds gives back the holds whose record did not come within their
// wait: in Redis, unless the record settled it meanwhile, or in the local
// shares for those taken there. A hold whose release fails waits for the
// next sweep.
func (s *Store) sweepHolds(now time.Time) {
	for _, h := range s.holds.expired(now) {
		if h.local { // Redis never had it
			s.releaseLocal(now, h, nil)
			s.holds.drop(h.user, h.id)
			continue
		}
		if s.down.Load() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), max(4*s.opts.Timeout, 200*time.Millisecond))
		n, err := releaseScript.Run(ctx, s.opts.Client, []string{s.holdKey(h.user, h.id)}, s.instance).Int()
		cancel()
		if err == nil || errors.Is(err, redis.Nil) {
			s.holds.drop(h.user, h.id)
			if n > 0 {
				s.opts.Observer.ObserveQuotaHoldsReleased("expired", n)
			}
		}
	}
}

// indexHold adds a hold to this instance's index where the bucket script
// cannot (a Redis Cluster keeps the index in another slot). A hold left
// out of the index is given back by its wait, not when its replica dies.
// The index's expiry is set by the registration (replicasScript).
func (s *Store) indexHold(user, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.Timeout)
	defer cancel()
	_ = s.opts.Client.SAdd(ctx, s.holdIndexKey(s.instance), s.holdKey(user, id)).Err()
}

// releaseLapsed gives back the holds of the instances that left the
// registry without a record for them: a sidecar killed mid-call strands
// no estimate for longer than replicaTTL. Each lapsed instance is taken
// by one replica (SPOP); one whose release fails is put back.
func (s *Store) releaseLapsed(ctx context.Context) {
	for range 16 {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		inst, err := s.opts.Client.SPop(rctx, s.globalKey("lapsed")).Result()
		if err != nil {
			cancel()
			return
		}
		if err := s.releaseInstance(rctx, inst); err != nil {
			s.opts.Client.SAdd(rctx, s.globalKey("lapsed"), inst)
			s.opts.Logger.Warn("cannot give back the holds of a replica that left; retrying", "instance", inst, "error", err)
		}
		cancel()
	}
}

func (s *Store) releaseInstance(ctx context.Context, inst string) error {
	index := s.holdIndexKey(inst)
	keys, err := s.opts.Client.SMembers(ctx, index).Result()
	if err != nil {
		return err
	}
	released := 0
	for _, k := range keys {
		n, err := releaseScript.Run(ctx, s.opts.Client, []string{k}, inst).Int()
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		released += n
	}
	if released > 0 {
		s.opts.Observer.ObserveQuotaHoldsReleased("replica_gone", released)
		s.opts.Logger.Info("gave back the holds of a replica that left", "instance", inst, "holds", released)
	}
	return s.opts.Client.Del(ctx, index).Err()
}

// holdIndex keeps the holds this replica made, until their record settles
// them or their wait ends: to give them back then, and to put them back
// in a Redis that lost them.
type holdIndex struct {
	mu sync.Mutex
	// byUser holds them by user and request_id, so that a recovery sums a
	// user's holds without reading every other user's; count is their
	// number.
	byUser map[string]map[string]hold
	count  int
}

// hold is one check's estimate in each of its buckets.
type hold struct {
	user, id string
	buckets  []limiter.Bucket
	amounts  []int64
	// expires is when it is given back, in Unix nanoseconds.
	expires int64
	// local tells a hold taken in the local shares while Redis was out of
	// reach, which Redis does not know yet.
	local bool
	// inKey tells a hold taken in Redis, whose debit is in the budget
	// keys it holds in until Redis loses them (forgetLoss): a budget
	// part (Contribute) does not count it again. A check that learnt a
	// pool's spend while another of this replica's checks took a hold in
	// the key a replica had just made counted it twice. A hold that
	// another replica counts after a loss (markCounted) is marked too.
	inKey bool
	// retried tells a hold that replaced the hold of the same request_id
	// (the check was sent again): it stands for a call in flight, and a
	// pool's refusal of the check sent again does not give it back.
	retried bool
}

// maxHolds bounds the holds waiting, as the limiter bounds its estimates.
const maxHolds = 100_000

func (x *holdIndex) init() { x.byUser = map[string]map[string]hold{} }

func (x *holdIndex) room() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.count < maxHolds
}

func (x *holdIndex) put(user, id string, bs []limiter.Bucket, amounts []int64, expires time.Time, local bool) {
	h := hold{user: user, id: id, buckets: append([]limiter.Bucket(nil), bs...), amounts: append([]int64(nil), amounts...), expires: expires.UnixNano(), local: local, inKey: !local}
	x.mu.Lock()
	defer x.mu.Unlock()
	ofUser := x.byUser[user]
	if ofUser == nil {
		ofUser = map[string]hold{}
		x.byUser[user] = ofUser
	}
	if _, ok := ofUser[id]; !ok {
		x.count++
	}
	ofUser[id] = h
}

func (x *holdIndex) get(user, id string) (hold, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	h, ok := x.byUser[user][id]
	return h, ok
}

func (x *holdIndex) drop(user, id string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	ofUser := x.byUser[user]
	if _, ok := ofUser[id]; !ok {
		return
	}
	delete(ofUser, id)
	x.count--
	if len(ofUser) == 0 {
		delete(x.byUser, user)
	}
}

// each calls fn with every hold waiting; x.mu is held.
func (x *holdIndex) each(fn func(h hold)) {
	for _, ofUser := range x.byUser {
		for _, h := range ofUser {
			fn(h)
		}
	}
}

func (x *holdIndex) expired(now time.Time) []hold {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []hold
	x.each(func(h hold) {
		if h.expires < now.UnixNano() {
			out = append(out, h)
		}
	})
	return out
}

// all returns every hold waiting, local ones only when localOnly.
func (x *holdIndex) all(localOnly bool) []hold {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]hold, 0, x.count)
	x.each(func(h hold) {
		if h.local || !localOnly {
			out = append(out, h)
		}
	})
	return out
}

// markRedis records that holds hs are now in Redis too.
func (x *holdIndex) markRedis(hs []hold) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, h := range hs {
		if cur, ok := x.byUser[h.user][h.id]; ok && cur.local {
			cur.local = false
			x.byUser[h.user][h.id] = cur
		}
	}
}

// forgetLoss records that Redis lost the debits of every hold.
func (x *holdIndex) forgetLoss() {
	x.mu.Lock()
	defer x.mu.Unlock()
	for user, hs := range x.byUser {
		for id, h := range hs {
			if h.inKey {
				h.inKey = false
				x.byUser[user][id] = h
			}
		}
	}
}

// markRetried records that the hold of user's id replaced another.
func (x *holdIndex) markRetried(user, id string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if h, ok := x.byUser[user][id]; ok {
		h.retried = true
		x.byUser[user][id] = h
	}
}

// markCounted records that the debits of holds hs are counted in their
// budget keys by others (see rehold): a part does not count them.
func (x *holdIndex) markCounted(hs []hold) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, h := range hs {
		if cur, ok := x.byUser[h.user][h.id]; ok {
			cur.inKey = true
			x.byUser[h.user][h.id] = cur
		}
	}
}

// heldIn sums what the holds of user whose debit b's key lacks hold in b.
func (x *holdIndex) heldIn(user string, b limiter.Bucket) int64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	var sum int64
	for _, h := range x.byUser[user] {
		if h.inKey {
			continue
		}
		for j, hb := range h.buckets {
			if sameBucket(hb, b) {
				sum += h.amounts[j]
			}
		}
	}
	return sum
}

// users returns the users with holds waiting, with their holds' buckets.
func (x *holdIndex) users() map[string][]limiter.Bucket {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make(map[string][]limiter.Bucket, len(x.byUser))
	for user, ofUser := range x.byUser {
		for _, h := range ofUser {
			out[user] = append(out[user], h.buckets...)
		}
	}
	return out
}

func (x *holdIndex) len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.count
}

// sameBucket tells whether a and b are one bucket: the same scope and,
// for budgets, the same period.
func sameBucket(a, b limiter.Bucket) bool {
	return *a.Scope == *b.Scope && a.Period == b.Period
}

// randomID is 8 random bytes in hex.
func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// HeldBuckets implements limiter.HoldStore.
func (s *Store) HeldBuckets() map[string][]limiter.Bucket { return s.holds.users() }

var _ limiter.HoldStore = (*Store)(nil)

// ReleaseHold implements limiter.HoldStore: the hold of a check that a
// pool refused after user's buckets allowed it is given back at once,
// budgets and token and request buckets alike, in Redis or in the local
// shares it was taken in. A release that fails leaves the hold to its
// wait (Sweep), erring on the side of refusing.
func (s *Store) ReleaseHold(now time.Time, user string, bs []limiter.Bucket, id string) (bool, error) {
	h, ok := s.holds.get(user, id)
	if !ok {
		return false, nil
	}
	if h.retried {
		// The hold of a check sent again took its first check's place:
		// it holds the call in flight, whose record settles it.
		return true, nil
	}
	back := s.amountsIn(h, bs)
	for i := range back {
		back[i] = -back[i]
	}
	if h.local {
		if err := s.local.Load().Charge(now, user, s.shares(bs), back); err != nil {
			return true, err
		}
		s.owed.add(user, bs, back)
		s.holds.drop(user, id)
		return true, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), max(4*s.opts.Timeout, 200*time.Millisecond))
	defer cancel()
	if _, err := releaseScript.Run(ctx, s.opts.Client, []string{s.holdKey(user, id)}, s.instance).Int(); err != nil && !errors.Is(err, redis.Nil) {
		return true, err
	}
	s.holds.drop(user, id)
	// The script gave the budgets back; token and request buckets are
	// refunded as a record's over-estimate is.
	var rest []limiter.Bucket
	var refund []int64
	for i, b := range bs {
		if !b.IsBudget() && back[i] != 0 {
			rest, refund = append(rest, b), append(refund, back[i])
		}
	}
	if len(rest) == 0 {
		return true, nil
	}
	return true, s.Charge(now, user, rest, refund)
}

// Concurrency limits (see limiter.Bucket.IsBudget): a slot is a hold of
// one in a budget of slots, which the record of its request_id gives
// back on whichever replica it reaches, its wait (ttl, the
// concurrency timeout) gives back if no record comes, and the registry
// gives back when its replica dies (replicaTTL). After Redis lost its
// state each replica puts its slots back (a budget part of its holds),
// but not all at once: lossFence after its recovery, while the others
// notice the loss (each within registerEvery) and put theirs back, this
// replica refuses new slots rather than count the others' as free.

// lossFence is how long after a recovery from a loss new slots are refused.
const lossFence = 2*registerEvery + time.Second

// hasConcurrency tells whether bs hold a concurrency limit.
func hasConcurrency(bs []limiter.Bucket) bool {
	for _, b := range bs {
		if b.IsConcurrency() {
			return true
		}
	}
	return false
}

// fencedSlots tells whether new slots are refused after a loss.
func (s *Store) fencedSlots() bool {
	at := s.lostAt.Load()
	return at != 0 && time.Since(time.Unix(0, at)) < lossFence
}

// refuseSlots refuses a check of concurrency limits bs: the levels are
// read, and every concurrency limit's reported full, so that the
// refusal's wait is a concurrency limit's.
func (s *Store) refuseSlots(now time.Time, user string, bs []limiter.Bucket, levels []float64) (bool, error) {
	if err := s.Levels(now, user, bs, levels); err != nil {
		return false, err
	}
	for i, b := range bs {
		if b.IsConcurrency() {
			levels[i] = min(levels[i], 0)
		}
	}
	return false, nil
}
