package redisquota

// How the shared state survives Redis losing it.
//
// Redis holds an epoch, a random name that every replica learns when it
// registers. A Redis that restarted empty, was flushed or failed over to
// a replica that never had it lacks the epoch (or holds another one):
// on a single Redis every bucket script checks it and answers -3 without
// changing anything, and in a cluster the registry, every registerEvery,
// finds it changed. The replica then recovers before it goes on, once
// per new epoch:
//
//   - token and request buckets: it puts back the level it last saw of
//     each bucket it touched, the lowest of the replicas' winning, so
//     that a fresh Redis does not hand out full buckets;
//   - holds: it puts back the holds it waits on, so that their records
//     settle them;
//   - budgets: it adds its part to every budget it has a part in: what
//     it accepted and has not stored (and stored since Redis last
//     answered it under the old epoch), plus what its holds hold. The
//     first part added to a missing key brings the database's sum with
//     it; each replica's part counts once per incarnation of a key (the
//     key's set of contributors), whoever comes first.
//
// While Redis is out of reach, the local shares answer, and what this
// replica debited from them is written back when it is back: the amounts
// (owed), the holds it took, and the request_ids it charged. When Redis
// came back without the epoch, the budgets' debits are not written back:
// their records are in the database or the spool, which the recovery
// counts.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmusage/llmusage/limiter"
)

// errEpochLost is a call that found Redis without the epoch it knows.
var errEpochLost = errors.New("cannot use Redis's state: it lost it (restarted empty, flushed or failed over), recovering")

// SetRecoverer implements limiter.HoldStore: fn adds this replica's part
// to its budgets after Redis lost them (see Contribute).
func (s *Store) SetRecoverer(fn func() error) {
	f := func(bool) error { return fn() }
	s.recoverer.Store(&f)
}

// VerifiedSince tells the start of the last call that Redis answered
// under the epoch this replica knows: a record stored before it was in
// the database before Redis could have lost anything since.
func (s *Store) VerifiedSince() time.Time { return time.Unix(0, s.verifiedAt.Load()) }

// Contribute implements limiter.HoldStore: it adds part, plus what this
// replica's holds hold in b, to budget b's spend, once per incarnation of
// its key; a key that is missing is created with db(), the database's
// sum, too. It tells whether the part was added by this call.
func (s *Store) Contribute(user string, b limiter.Bucket, part int64, records []limiter.CountedSpend, db func() (int64, error)) (bool, error) {
	part = min(max(part+s.holds.heldIn(user, b), -limiter.MaxSpend), limiter.MaxSpend)
	if s.useRedis() {
		added, err := s.contribute(user, b, part, records, db)
		if err == nil || !isUnreachable(err) {
			return added, err
		}
	}
	if s.opts.FailMode != FailLocal {
		return false, s.unavailable()
	}
	stored, err := db()
	if err != nil {
		return false, err
	}
	for _, r := range records {
		if r.At.IsZero() {
			part += r.NanoUSD
		}
	}
	// This replica's share of what is left (see seedShares).
	return s.local.Load().Seed(user, b, s.shareOfSpend(b, stored+part))
}

func (s *Store) contribute(user string, b limiter.Bucket, part int64, records []limiter.CountedSpend, db func() (int64, error)) (bool, error) {
	key := s.userTag(user) + budgetKey(user, b)
	ttl := s.budgetTTL(b, time.Now())
	sum, sumAt := "", ""
	for range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), max(4*s.opts.Timeout, 200*time.Millisecond))
		start := time.Now()
		args := []any{s.instance, part, sum, ttl, sumAt, s.userTag(user) + "c:", s.opts.DedupTTL.Milliseconds()}
		for _, r := range records {
			var at int64
			if !r.At.IsZero() {
				at = r.At.UnixMicro()
			}
			args = append(args, r.RequestID, at, r.NanoUSD)
		}
		vals, err := contributeScript.Run(ctx, s.opts.Client, []string{key, key + ":by", key + ":at", key + ":ids"}, args...).Slice()
		cancel()
		s.opts.Observer.ObserveQuotaBackend(opSeed, time.Since(start), err)
		if err != nil {
			if !isRedisError(err) {
				s.markDown(err)
			} else {
				s.refuse(err)
			}
			return false, fmt.Errorf("%w: %w", limiter.ErrStoreUnavailable, err)
		}
		code, _ := vals[0].(int64)
		if code != -2 {
			s.opts.Logger.Debug("budget part", "user", user, "window", b.Scope.Window.String(), "added", code == 1,
				"spend", vals[1], "part", part, "records", len(records), "database_sum", sum)
			return code == 1, nil
		}
		// Records stored from now on may be missing from the sum: the
		// late ones stored after this count (twice at worst, never none).
		sumAt = fmt.Sprint(time.Now().UnixMicro())
		stored, err := db()
		if err != nil {
			return false, err
		}
		sum = fmt.Sprint(min(max(stored, 0), limiter.MaxSpend))
	}
	return false, errors.New("cannot learn a budget's spend: the database's sum was refused")
}

// shareOfSpend is the spend that leaves this replica its share of what
// is left of budget b when spent is spent: (limit - spent) / N.
func (s *Store) shareOfSpend(b limiter.Bucket, spent int64) int64 {
	n := max(s.replicas.Load(), 1)
	left := max(b.Limit-spent, 0)
	if b.IsConcurrency() && left > 0 {
		// One call at a time at least: a concurrent: 2 over three
		// replicas would otherwise stop every call while Redis is away.
		return b.Limit - max(left/n, 1)
	}
	return b.Limit - left/n
}

// Recover implements limiter.HoldStore.
func (s *Store) Recover() error { return s.recover() }

// recover brings Redis's state back after it lost the epoch, once: the
// first caller recovers while the others wait, and find it done.
func (s *Store) recover() error {
	s.recovery.Lock()
	defer s.recovery.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	current, err := s.currentEpoch(ctx)
	if err != nil {
		if !isRedisError(err) {
			s.markDown(err)
		}
		return fmt.Errorf("%w: %w", limiter.ErrStoreUnavailable, err)
	}
	if p := s.epoch.Load(); p != nil && *p == current {
		return nil
	}
	start := time.Now()
	if err := s.restore(ctx, current, true); err != nil {
		return err
	}
	s.epoch.Store(&current)
	s.verified(start)
	s.saveState()
	s.opts.Observer.ObserveQuotaRecovery("lost")
	s.opts.Logger.Warn("Redis lost the quota state (restarted empty, flushed or failed over); put back this replica's levels, holds and budget parts",
		"took", time.Since(start).Round(time.Millisecond))
	return nil
}

// restore puts back what this replica knows: after Redis lost its state
// (lost), the levels it last saw, its holds and its budgets' parts;
// after an outage, what it debited meanwhile.
func (s *Store) restore(ctx context.Context, epoch string, lost bool) error {
	s.restoring.Store(true)
	defer s.restoring.Store(false)
	if lost {
		s.lostAt.Store(time.Now().UnixNano())
		s.holds.forgetLoss()
		if err := s.reseed(ctx); err != nil {
			return err
		}
	}
	// Holds first: a record that arrives meanwhile settles against its
	// hold, whose estimate the write-back then brings.
	if err := s.putBack(ctx, epoch, lost); err != nil {
		return err
	}
	if lost {
		if fn := s.recoverer.Load(); fn != nil {
			if err := (*fn)(true); err != nil {
				return err
			}
		}
	}
	return nil
}

// putBack puts this replica's holds in Redis and writes back what it
// debited in its local shares, under s.settling (see ChargeOnce).
func (s *Store) putBack(ctx context.Context, epoch string, lost bool) error {
	s.settling.Lock()
	defer s.settling.Unlock()
	if err := s.rehold(ctx, !lost); err != nil {
		return err
	}
	return s.writeBack(ctx, epoch, lost)
}

// currentEpoch reads Redis's epoch, setting a new one if it has none.
func (s *Store) currentEpoch(ctx context.Context) (string, error) {
	key := s.globalKey("epoch")
	if err := s.opts.Client.SetNX(ctx, key, randomID(), 0).Err(); err != nil {
		return "", err
	}
	return s.opts.Client.Get(ctx, key).Result()
}

// verified records a call answered under the known epoch that started at start.
func (s *Store) verified(start time.Time) {
	for {
		old := s.verifiedAt.Load()
		if start.UnixNano() <= old || s.verifiedAt.CompareAndSwap(old, start.UnixNano()) {
			return
		}
	}
}

// reseed puts back the levels this replica last saw of its token and
// request buckets.
func (s *Store) reseed(ctx context.Context) error {
	pipe := s.opts.Client.Pipeline()
	n := 0
	now := time.Now()
	s.seen.each(now, func(user string, b limiter.Bucket, missing float64) {
		if b.IsBudget() {
			return
		}
		level := float64(b.Limit) - missing
		reseedScript.Run(ctx, pipe, []string{s.userTag(user) + scopeKey(user, b.Scope)},
			fmt.Sprint(level), b.Limit, fmt.Sprint(b.RefillPerSecond()/1e6))
		n++
	})
	if n == 0 {
		return nil
	}
	return execScripts(ctx, s.opts.Client, pipe)
}

// rehold puts holds in Redis: the local ones only, or, after a loss,
// all of them. A hold it does not put back after a loss is not this
// replica's to count in a budget's part: its record was charged since
// (on another replica, which found the loss first), or another replica
// put it back (a check sent again there moved it), and counts it.
func (s *Store) rehold(ctx context.Context, localOnly bool) error {
	hs := s.holds.all(localOnly)
	if len(hs) == 0 {
		return nil
	}
	pipe := s.opts.Client.Pipeline()
	put := make([]*redis.Cmd, len(hs))
	for i, h := range hs {
		args := []any{s.instance, s.opts.HoldTTL.Milliseconds()}
		for j, b := range h.buckets {
			if h.amounts[j] == 0 {
				continue
			}
			key := s.userTag(h.user) + scopeKey(h.user, b.Scope)
			if b.IsBudget() {
				key = s.userTag(h.user) + budgetKey(h.user, b)
			}
			args = append(args, key, h.amounts[j])
		}
		put[i] = reholdScript.Run(ctx, pipe, []string{s.holdKey(h.user, h.id), s.chargedKey(h.user, h.id)}, args...)
		if !s.cluster {
			pipe.SAdd(ctx, s.holdIndexKey(s.instance), s.holdKey(h.user, h.id))
			pipe.PExpire(ctx, s.holdIndexKey(s.instance), s.opts.HoldTTL)
		}
	}
	if err := execScripts(ctx, s.opts.Client, pipe); err != nil {
		return err
	}
	s.holds.markRedis(hs)
	if !localOnly {
		var others []hold
		for i, h := range hs {
			if n, _ := put[i].Int(); n == 0 {
				others = append(others, h)
			}
		}
		s.holds.markCounted(others)
	}
	return nil
}

// writeBack charges Redis with what this replica debited from its local
// shares while Redis was out of reach, and charges again the records it
// charged then (each once: a request_id charged already is not, and the
// hold a record's check took in Redis is settled). After a loss the
// budgets are left out: the recovery counts their records. What cannot
// be written back waits for the next write-back.
func (s *Store) writeBack(ctx context.Context, epoch string, lost bool) error {
	debts, settled := s.owed.take()
	if len(debts) == 0 && len(settled) == 0 {
		return nil
	}
	if !lost {
		s.opts.Observer.ObserveQuotaRecovery("write_back")
	}
	var failed error
	for _, d := range debts {
		if lost && d.bucket.IsBudget() {
			continue
		}
		_, err := s.runAt(epoch, opCharge, d.user, []limiter.Bucket{d.bucket}, nil, []int64{d.amount}, "")
		if isUnknownSpend(err) {
			// The budget's key is gone (its period ended, or it expired):
			// whoever learns it next reads the records.
			continue
		}
		if err != nil {
			failed = cmp.Or(failed, err)
			s.owed.add(d.user, []limiter.Bucket{d.bucket}, []int64{d.amount})
		}
	}
	for _, c := range settled {
		amounts := c.amounts
		if lost {
			// The levels put back held its check; the recovery counts
			// its cost in budgets.
			amounts = withoutBudgets(c.buckets, c.net)
		}
		_, err := s.runAt(epoch, opCharge, c.user, c.buckets, nil, amounts, c.id)
		if isUnknownSpend(err) {
			continue
		}
		if err != nil {
			failed = cmp.Or(failed, err)
			s.owed.settle(c.user, c.id, c.buckets, c.amounts, c.net)
		}
	}
	return failed
}

// withoutBudgets is amounts with the budgets' set to 0.
func withoutBudgets(bs []limiter.Bucket, amounts []int64) []int64 {
	out := make([]int64, len(amounts))
	for i, b := range bs {
		if !b.IsBudget() {
			out[i] = amounts[i]
		}
	}
	return out
}

// execScripts runs a pipeline of scripts, loading them first if Redis
// does not know them (it lost them with its state).
func execScripts(ctx context.Context, c redis.UniversalClient, pipe redis.Pipeliner) error {
	cmds := pipe.Cmds()
	for _, sc := range []*redis.Script{reseedScript, reholdScript, releaseScript, contributeScript} {
		if err := sc.Load(ctx, c).Err(); err != nil {
			return err
		}
	}
	_, err := pipe.Exec(ctx)
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
	}
	return nil
}

// register adds this replica to the registry, reads how many are live
// and the epoch, and gives back the holds of replicas that left. A
// failure to reach Redis sends the checks to the fail mode; an error
// answer keeps the count it had. A changed epoch starts a recovery.
func (s *Store) register(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, max(4*s.opts.Timeout, 200*time.Millisecond))
	defer cancel()
	start := time.Now()
	keys := []string{s.globalKey("replicas"), s.globalKey("epoch"), s.globalKey("lapsed"), s.holdIndexKey(s.instance)}
	vals, err := replicasScript.Run(rctx, s.opts.Client, keys, s.instance, replicaTTL.Milliseconds(), randomID(),
		(s.opts.HoldTTL + 2*replicaTTL).Milliseconds()).Slice()
	end := time.Now()
	var n int64
	var epoch string
	if err == nil {
		n, epoch, err = parseRegistry(vals)
	}
	s.opts.Observer.ObserveQuotaBackend("replicas", end.Sub(start), err)
	if err != nil {
		if ctx.Err() == nil && !isRedisError(err) {
			s.markDown(err)
		}
		return err
	}
	s.learnClock(start, end, int64(mustFloat(vals[1])))
	s.replicas.Store(max(n, 1))
	switch p := s.epoch.Load(); {
	case p == nil:
		if err := s.firstContact(epoch); err != nil {
			return err
		}
		s.verified(start)
	case *p == epoch:
		s.verified(start)
	case !s.down.Load():
		if err := s.recover(); err != nil {
			return err
		}
	}
	s.saveState()
	s.releaseLapsed(ctx)
	return nil
}

// firstContact adopts Redis's epoch the first time this process reaches
// it. A predecessor on the same data directory (StateFile) knew an
// epoch: if Redis still holds it, what this process debited in its fail
// mode is written back and the records of the spool are charged again
// (once: SetRestarted), which counts those the predecessor accepted
// while Redis was out of reach or spooled without charging. If not, or
// without a predecessor, this replica recovers: its spool and its holds
// are its part.
func (s *Store) firstContact(epoch string) error {
	s.recovery.Lock()
	defer s.recovery.Unlock()
	if s.epoch.Load() != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Without a state file (a new pod, whose spool is empty, or the
	// first start of this version) the spool is charged again too: Redis
	// charges each request_id once.
	if s.savedEpoch == epoch || s.savedEpoch == "" {
		if err := s.restore(ctx, epoch, false); err != nil {
			return err
		}
		s.restoring.Store(true)
		defer s.restoring.Store(false)
		if fn := s.restarted.Load(); fn != nil {
			if err := (*fn)(); err != nil {
				return err
			}
		}
	} else if err := s.restore(ctx, epoch, true); err != nil {
		return err
	}
	s.epoch.Store(&epoch)
	if s.savedEpoch != "" {
		s.opts.Observer.ObserveQuotaRecovery("restart")
	}
	return nil
}

// parseRegistry reads the registry script's {count, server clock, epoch}.
func parseRegistry(vals []any) (int64, string, error) {
	if len(vals) != 3 {
		return 0, "", fmt.Errorf("cannot read the registry script's answer %v", vals)
	}
	n, ok := vals[0].(int64)
	if !ok {
		return 0, "", fmt.Errorf("cannot read the registry script's answer %v", vals)
	}
	if _, ok := vals[1].(string); !ok {
		return 0, "", fmt.Errorf("cannot read the registry script's clock %v", vals[1])
	}
	epoch, ok := vals[2].(string)
	if !ok {
		return 0, "", fmt.Errorf("cannot read the registry script's epoch %v", vals[2])
	}
	return n, epoch, nil
}

// comeBack goes back to Redis after an outage: it writes back what was
// debited meanwhile, or recovers if Redis lost the epoch meanwhile.
func (s *Store) comeBack(ctx context.Context) error {
	p := s.epoch.Load()
	current, err := s.currentEpoch(ctx)
	if err != nil {
		return err
	}
	if p != nil && *p != current {
		return s.recover()
	}
	return s.writeBackOwed(ctx, current)
}

// writeBackOwed writes back what the fail mode debited, under epoch.
func (s *Store) writeBackOwed(ctx context.Context, epoch string) error {
	s.recovery.Lock()
	defer s.recovery.Unlock()
	return s.restore(ctx, epoch, false)
}

// isUnreachable tells an error that sent the call to the fail mode.
func isUnreachable(err error) bool {
	return errors.Is(err, limiter.ErrStoreUnavailable)
}

// owedIndex sums what this replica debited from its local shares while
// Redis was out of reach, by user and bucket, and keeps the records it
// charged then, to charge again in Redis.
type owedIndex struct {
	mu      sync.Mutex
	debts   map[owedKey]*debt
	settled []settledRecord
}

type owedKey struct {
	user   string
	scope  limiter.Scope
	period int64
}

type debt struct {
	user   string
	bucket limiter.Bucket
	amount int64
}

// settledRecord is a record charged in the local shares.
type settledRecord struct {
	user, id string
	buckets  []limiter.Bucket
	// amounts are what Redis is charged, less the holds taken in the
	// local shares; net is less every hold.
	amounts, net []int64
}

// maxOwed bounds the records kept: past it, a record charged while Redis
// was out of reach is written back in the debts, and a copy of it sent
// again afterwards may be charged again.
const maxOwed = 100_000

func (o *owedIndex) init() { o.debts = map[owedKey]*debt{} }

func (o *owedIndex) add(user string, bs []limiter.Bucket, amounts []int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.addLocked(user, bs, amounts)
}

func (o *owedIndex) addLocked(user string, bs []limiter.Bucket, amounts []int64) {
	for i, b := range bs {
		if amounts[i] == 0 {
			continue
		}
		k := owedKey{user, *b.Scope, b.Period.Start}
		d := o.debts[k]
		if d == nil {
			d = &debt{user: user, bucket: b}
			o.debts[k] = d
		}
		d.amount = min(max(d.amount+amounts[i], -math.MaxInt64/2), math.MaxInt64/2)
	}
}

// settle keeps a record charged in the local shares.
func (o *owedIndex) settle(user, id string, bs []limiter.Bucket, amounts, net []int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.settled) >= maxOwed {
		o.addLocked(user, bs, net)
		return
	}
	o.settled = append(o.settled, settledRecord{user: user, id: id, buckets: append([]limiter.Bucket(nil), bs...),
		amounts: append([]int64(nil), amounts...), net: append([]int64(nil), net...)})
}

// take empties the index and returns what it held.
func (o *owedIndex) take() ([]debt, []settledRecord) {
	o.mu.Lock()
	defer o.mu.Unlock()
	debts := make([]debt, 0, len(o.debts))
	for _, d := range o.debts {
		debts = append(debts, *d)
	}
	clear(o.debts)
	settled := o.settled
	o.settled = nil
	return debts, settled
}

// useRedis tells whether calls go to Redis: unless it is out of reach,
// and always while this replica restores its state there (Redis then
// answered a ping, and the recovery's calls must not go to the shares).
func (s *Store) useRedis() bool { return !s.down.Load() || s.restoring.Load() }
