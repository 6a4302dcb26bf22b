// Package redisquota keeps the limiter's token buckets in Redis, so that
// one user's limit holds across every replica: a limiter.Store whose
// checks run as one server-side script over all of a call's buckets, on
// the Redis server's clock, debiting all of them or none. While Redis
// cannot be reached within the timeout, checks are answered by the
// fail mode: each replica's share of every limit in its own memory
// (local), allowed (open) or refused (closed).
package redisquota

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmusage/llmusage/limiter"
)

// FailMode says how checks are answered while Redis is out of reach.
type FailMode string

// The fail modes.
const (
	// FailLocal answers from local buckets holding this replica's share
	// of each limit, limit / the number of live replicas last seen, so
	// that the fleet as a whole still admits about the limit.
	FailLocal FailMode = "local"
	// FailOpen allows every check (and counts it).
	FailOpen FailMode = "open"
	// FailClosed refuses every check with limiter.ErrStoreUnavailable.
	FailClosed FailMode = "closed"
)

// ParseFailMode parses --redis-fail-mode.
func ParseFailMode(s string) (FailMode, error) {
	switch m := FailMode(s); m {
	case FailLocal, FailOpen, FailClosed:
		return m, nil
	}
	return "", fmt.Errorf("cannot use --redis-fail-mode %q: want local, open or closed", s)
}

// Observer is told of every call to Redis and every fallback answer, for
// metrics.
type Observer interface {
	// ObserveQuotaBackend is called after each call to Redis: op is take,
	// charge, read, replicas or ping; err is nil on success.
	ObserveQuotaBackend(op string, d time.Duration, err error)
	// ObserveQuotaFallback is called for each check answered by the fail
	// mode instead of Redis.
	ObserveQuotaFallback(mode string)
	// ObserveQuotaRecovery is called when this replica put its part back
	// into Redis: reason is lost, restart or write_back.
	ObserveQuotaRecovery(reason string)
	// ObserveQuotaHoldsReleased is called with holds given back without
	// their record: reason is expired or replica_gone.
	ObserveQuotaHoldsReleased(reason string, n int)
	// ObserveQuotaDuplicate is called for a record charged already.
	ObserveQuotaDuplicate()
}

// Options configure a Store.
type Options struct {
	// Client reaches Redis, Valkey or a Redis Cluster; required.
	Client redis.UniversalClient
	// Timeout bounds each call on a check's path (50 ms when zero): a
	// check never waits longer for Redis.
	Timeout time.Duration
	// FailMode answers checks while Redis is out of reach; FailLocal when empty.
	FailMode FailMode
	// Prefix starts every key ("llmusage" when empty).
	Prefix string
	// ReplicaID names this replica in the registry of live replicas
	// (the host name, in a pod its name); required.
	ReplicaID string
	// Observer receives calls and fallbacks; optional.
	Observer Observer
	// Logger logs Redis going away and coming back; slog.Default() when nil.
	Logger *slog.Logger
	// HoldTTL is how long a check's hold waits in Redis for its record
	// (20 minutes when zero): longer than the limiter's wait, so that this
	// replica gives an expired hold back before Redis forgets it.
	HoldTTL time.Duration
	// DedupTTL is how long a charged request_id is remembered, so that a
	// record sent again within it is not charged again (15 minutes when
	// zero).
	DedupTTL time.Duration
	// StateFile keeps the epoch and the replica count across restarts
	// (see state.go); none when empty.
	StateFile string
}

// Store is a limiter.Store on Redis. Besides the buckets in Redis it
// keeps, per user it served, the scopes it touched and when they will be
// full again, so that the quota gauges of this replica's users can be
// read from Redis at scrape time.
type Store struct {
	// opts are the Options, defaults filled in.
	opts Options
	// local answers in FailLocal mode: this replica's shares, seeded at
	// the levels last seen in Redis when it went away, and dropped when it
	// is back (what was spent meanwhile is not written back).
	local atomic.Pointer[limiter.MemoryStore]
	// down is set while Redis is out of reach: checks then go to the fail
	// mode at once, without waiting for a timeout each, until a ping
	// answers (see Run).
	down atomic.Bool
	// lastErr is why Redis was last out of reach.
	lastErr atomic.Pointer[string]
	// refusal is the error answer of the last call when Redis answered
	// one (out of memory, read-only), nil after a call succeeds: Redis is
	// up, but checks go to the fail mode.
	refusal atomic.Pointer[string]
	// replicas is the number of live replicas last seen; 1 before the
	// first sighting.
	replicas atomic.Int64
	// seen indexes the buckets this replica touched.
	seen seenIndex
	// cluster tells a Redis Cluster, where a script reaches one slot only.
	cluster bool
	// instance names this process in the registry and in its holds: the
	// ReplicaID and a random suffix, so that a restarted sidecar's
	// predecessor is told apart and its holds given back.
	instance string
	// epoch is the epoch of Redis's state this replica knows (see
	// recover.go); nil before the first registration.
	epoch atomic.Pointer[string]
	// verifiedAt is when (Unix nanoseconds) the last call that Redis
	// answered under the known epoch started.
	verifiedAt atomic.Int64
	// holds are the holds this replica made and not yet saw settled.
	holds holdIndex
	// owed is what this replica debited in its local shares while Redis
	// was out of reach, to write back when it is back.
	owed owedIndex
	// recovery serialises recoveries; recoverer is the limiter's part of
	// one (see SetRecoverer).
	recovery  sync.Mutex
	recoverer atomic.Pointer[func(epochChanged bool) error]
	// settling is held while a restore puts this replica's holds and
	// debts in Redis (putBack), and while a record settles a hold taken
	// in the local shares: it never waits for another lock.
	settling sync.Mutex
	// restoring is set while a recovery or a first contact runs.
	restoring atomic.Bool
	// lostAt is when (Unix nanoseconds) this replica last recovered from
	// Redis losing its state: concurrency limits refuse for lossFence
	// after it (see fencedSlots).
	lostAt atomic.Int64
	// restarted is what a restarted sidecar does first (SetRestarted).
	restarted atomic.Pointer[func() error]
	// savedEpoch is the epoch the StateFile held at start; saved what it
	// holds now, guarded by stateMu.
	savedEpoch string
	saved      savedState
	stateMu    sync.Mutex
	// batch queues the bucket script's calls while one is in flight.
	batch batcher
	// wake nudges Run's probe loop when a call fails.
	wake chan struct{}
	// transition serialises going down (seeding the local shares) and
	// coming back.
	transition sync.Mutex
	// clockOffset is the server's clock minus this one's, in
	// microseconds, from the fastest recent round trip (bestRTT, at
	// bestAt, guarded by clockMu); hasOffset once one was measured.
	clockOffset atomic.Int64
	hasOffset   atomic.Bool
	clockMu     sync.Mutex
	bestRTT     time.Duration
	bestAt      time.Time
}

// How the registry of live replicas is kept: each replica registers every
// registerEvery, and one not seen for replicaTTL is no longer counted.
const (
	registerEvery = 2 * time.Second
	replicaTTL    = 10 * time.Second
	probeEvery    = 250 * time.Millisecond
)

// New returns a Store. Call Run to register the replica and to come back
// to Redis after an outage.
func New(opts Options) *Store {
	if opts.Timeout <= 0 {
		opts.Timeout = 50 * time.Millisecond
	}
	if opts.FailMode == "" {
		opts.FailMode = FailLocal
	}
	if opts.Prefix == "" {
		opts.Prefix = "llmusage"
	}
	if opts.Observer == nil {
		opts.Observer = nopObserver{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.HoldTTL <= 0 {
		opts.HoldTTL = 20 * time.Minute
	}
	if opts.DedupTTL <= 0 {
		opts.DedupTTL = 15 * time.Minute
	}
	s := &Store{opts: opts, wake: make(chan struct{}, 1), instance: opts.ReplicaID + "/" + randomID()}
	_, s.cluster = opts.Client.(*redis.ClusterClient)
	s.holds.init()
	s.owed.init()
	s.local.Store(limiter.NewMemoryStore())
	s.replicas.Store(1)
	s.loadState()
	s.seen.init()
	return s
}

// Run keeps the replica registered and, while Redis is out of reach,
// pings it until it answers, until ctx ends.
func (s *Store) Run(ctx context.Context) {
	_ = s.register(ctx)
	register := time.NewTicker(registerEvery)
	defer register.Stop()
	probe := time.NewTicker(probeEvery)
	defer probe.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-register.C:
			if !s.down.Load() {
				_ = s.register(ctx)
			}
		case <-s.wake:
		case <-probe.C:
		}
		if s.down.Load() {
			s.probe(ctx)
		}
	}
}

// Err tells why checks go to the fail mode: Redis out of reach, or
// refusing the calls; nil while it answers them.
func (s *Store) Err() error {
	if s.useRedis() {
		if p := s.refusal.Load(); p != nil {
			return fmt.Errorf("cannot use Redis (checks answered by --redis-fail-mode=%s): it refuses the calls: %s", s.opts.FailMode, *p)
		}
		return nil
	}
	msg := "unreachable"
	if p := s.lastErr.Load(); p != nil {
		msg = *p
	}
	return fmt.Errorf("cannot reach Redis (checks answered by --redis-fail-mode=%s): %s", s.opts.FailMode, msg)
}

// Close closes the client to Redis, once Run has returned.
func (s *Store) Close() error { return s.opts.Client.Close() }

// Replicas returns the number of live replicas last seen in the registry.
func (s *Store) Replicas() int { return int(s.replicas.Load()) }

// Take implements limiter.Store.
func (s *Store) Take(now time.Time, user string, bs []limiter.Bucket, need, cost []int64, levels []float64) (bool, error) {
	if hasConcurrency(bs) {
		// A slot taken without a hold could never be given back.
		return s.refuseSlots(now, user, bs, levels)
	}
	if s.useRedis() {
		res, err := s.runRecovering(opTake, user, bs, need, cost, "")
		if err == nil {
			allowed := res[0] == 1
			copy(levels, res[1:])
			s.seen.touch(now, user, bs, levels)
			return allowed, nil
		}
		if isUnknownSpend(err) {
			return false, err
		}
	}
	if allowed, done, err := s.failModeTake(bs, levels); done {
		return allowed, err
	}
	allowed, err := s.local.Load().Take(now, user, s.shares(bs), need, cost, levels)
	if err == nil && allowed {
		s.owed.add(user, bs, cost)
	}
	return allowed, err
}

// failModeTake answers a check in the fail mode: done unless it is
// FailLocal, whose shares the caller asks.
func (s *Store) failModeTake(bs []limiter.Bucket, levels []float64) (allowed, done bool, err error) {
	s.opts.Observer.ObserveQuotaFallback(string(s.opts.FailMode))
	switch s.opts.FailMode {
	case FailOpen:
		for i, b := range bs {
			levels[i] = float64(b.Limit)
		}
		return true, true, nil
	case FailClosed:
		return false, true, s.unavailable()
	}
	return false, false, nil
}

// Charge implements limiter.Store. While Redis is out of reach a record
// is charged to this replica's share in FailLocal mode, and not at all in
// the others.
func (s *Store) Charge(now time.Time, user string, bs []limiter.Bucket, amounts []int64) error {
	if s.useRedis() {
		res, err := s.run(opCharge, user, bs, nil, amounts, "")
		if errors.Is(err, errEpochLost) {
			return limiter.ErrStateLost
		}
		if err == nil {
			s.seen.touch(now, user, bs, res[1:])
			return nil
		}
		if isUnknownSpend(err) {
			return err
		}
	}
	switch s.opts.FailMode {
	case FailLocal:
		return s.local.Load().Charge(now, user, s.shares(bs), amounts)
	default:
		return s.unavailable()
	}
}

// Levels implements limiter.Store.
func (s *Store) Levels(now time.Time, user string, bs []limiter.Bucket, levels []float64) error {
	if s.useRedis() {
		res, err := s.runRecovering(opRead, user, bs, nil, nil, "")
		if err == nil {
			copy(levels, res[1:])
			// The levels seen, to put back after Redis lost them.
			s.seen.touch(now, user, bs, levels)
			return nil
		}
		if isUnknownSpend(err) {
			return err
		}
	}
	switch s.opts.FailMode {
	case FailLocal:
		return s.local.Load().Levels(now, user, s.shares(bs), levels)
	case FailOpen:
		for i, b := range bs {
			levels[i] = float64(b.Limit)
		}
		return nil
	default:
		return s.unavailable()
	}
}

// Seed implements limiter.Store: SET NX, so that of the replicas that
// found a budget's key missing, the first one's spend counts. While Redis
// is out of reach the local store is seeded in FailLocal mode.
func (s *Store) Seed(user string, b limiter.Bucket, spent int64) (bool, error) {
	if s.useRedis() {
		ctx, cancel := context.WithTimeout(context.Background(), s.opts.Timeout)
		defer cancel()
		start := time.Now()
		// Never retried: a SET whose reply was lost may have been applied,
		// and its retry would answer that the key existed.
		cmd := redis.NewCmd(ctx, "set", s.userTag(user)+budgetKey(user, b), min(max(spent, 0), limiter.MaxSpend), "nx", "px", s.budgetTTL(b, start))
		_ = s.opts.Client.Process(ctx, noRetry{cmd})
		err := cmd.Err()
		if errors.Is(err, redis.Nil) {
			err = nil
		}
		s.opts.Observer.ObserveQuotaBackend(opSeed, time.Since(start), err)
		switch {
		case err == nil:
			return cmd.Val() != nil, nil
		case isRedisError(err):
			s.refuse(err)
		default:
			s.markDown(err)
		}
	}
	switch s.opts.FailMode {
	case FailLocal:
		return s.local.Load().Seed(user, b, spent)
	case FailOpen:
		// Not seeded: the call goes again to Take, which the open mode allows.
		return false, nil
	}
	return false, s.unavailable()
}

// Each implements limiter.Store: the buckets this replica touched, their
// levels read from Redis (one script call per user, pipelined), or from
// the local shares while Redis is out of reach.
func (s *Store) Each(now time.Time, owner limiter.Owner, fn func(user string, b limiter.Bucket, level float64)) {
	if s.down.Load() {
		s.local.Load().Each(now, owner, fn)
		return
	}
	byUser := s.seen.snapshot(now, owner)
	if len(byUser) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), max(20*s.opts.Timeout, time.Second))
	defer cancel()
	type call struct {
		user string
		bs   []limiter.Bucket
		cmd  *redis.Cmd
	}
	calls := make([]call, 0, len(byUser))
	pipe := s.opts.Client.Pipeline()
	for user, bs := range byUser {
		keys, args := s.scriptArgs(opRead, user, bs, nil, nil, 0, "", "")
		calls = append(calls, call{user, bs, bucketScript.EvalSha(ctx, pipe, keys, args...)})
	}
	start := time.Now()
	_, err := pipe.Exec(ctx)
	if err != nil && isNoScript(err) {
		// The first scrape after a Redis restart: load the script, then read.
		if err = bucketScript.Load(ctx, s.opts.Client).Err(); err == nil {
			for i := range calls {
				keys, args := s.scriptArgs(opRead, calls[i].user, calls[i].bs, nil, nil, 0, "", "")
				calls[i].cmd = bucketScript.EvalSha(ctx, pipe, keys, args...)
			}
			_, err = pipe.Exec(ctx)
		}
	}
	s.opts.Observer.ObserveQuotaBackend(opRead, time.Since(start), err)
	if err != nil && !isRedisError(err) {
		s.markDown(err)
		s.local.Load().Each(now, owner, fn)
		return
	}
	// An error answer fails its own user's read (a key of another type,
	// say), not the others'.
	for _, c := range calls {
		res, err := parseResult(c.cmd, len(c.bs))
		if err != nil {
			continue
		}
		for i, b := range c.bs {
			if !math.IsNaN(res[2+i]) { // a budget whose spend Redis lost
				fn(c.user, b, res[2+i])
				if b.IsConcurrency() {
					s.seen.touch(now, c.user, c.bs[i:i+1], res[2+i:3+i])
				}
			}
		}
	}
}

// EachOfUser implements limiter.Store.
func (s *Store) EachOfUser(now time.Time, user string, owner limiter.Owner, fn func(user string, b limiter.Bucket, level float64)) error {
	if s.down.Load() {
		return s.local.Load().EachOfUser(now, user, owner, fn)
	}
	bs := s.seen.ofUser(now, user, owner)
	if len(bs) == 0 {
		return nil
	}
	levels := make([]float64, len(bs))
	err := s.Levels(now, user, bs, levels)
	var unknown *limiter.UnknownSpendError
	if errors.As(err, &unknown) {
		// Budgets whose spend Redis lost: not reported, as by Each, until
		// a check of theirs seeds them again; the others are read alone.
		known := bs[:0:0]
		for i, b := range bs {
			if !slices.Contains(unknown.Buckets, i) {
				known = append(known, b)
			}
		}
		bs, levels = known, levels[:len(known)]
		err = s.Levels(now, user, bs, levels)
	}
	if err != nil {
		if errors.As(err, &unknown) {
			return nil
		}
		return err
	}
	for i, b := range bs {
		fn(user, b, levels[i])
	}
	return nil
}

// Sweep implements limiter.Store: it forgets the buckets that are full
// again (Redis has deleted or expired them) and those no rule owns.
func (s *Store) Sweep(now time.Time, owner limiter.Owner) int {
	s.sweepHolds(now)
	return s.seen.sweep(now, owner) + s.local.Load().Sweep(now, owner)
}

// Len implements limiter.Store.
func (s *Store) Len() int { return s.seen.len() + s.local.Load().Len() }

// Adopt implements limiter.Store: every call hands Redis the limits in
// force, so only the local shares adopt.
func (s *Store) Adopt(now time.Time, owner limiter.Owner) { s.local.Load().Adopt(now, owner) }

// The script's modes, also the op of ObserveQuotaBackend.
const (
	opTake   = "take"
	opCharge = "charge"
	opRead   = "read"
	opSeed   = "seed"
)

// run calls the bucket script within the timeout and returns
// {allowed, level...}. A connection failure or a timeout marks Redis
// down; an error answer (OOM, READONLY, a script error) fails this call
// only, so that one user's record cannot send every user's checks to the
// fail mode, nor a Redis that answers PING but refuses writes flap.
//
// Until its first contact adopts Redis's epoch, a restarted replica
// calls under the epoch its predecessor knew (savedEpoch): a Redis that
// lost it answers -3, and the call waits for the recovery that adds this
// replica's part, as after any loss. (Without one a check could take a
// hold in a budget that another replica rebuilt, and the part, which
// counts this replica's holds, count it again.)
func (s *Store) run(op, user string, bs []limiter.Bucket, need, amounts []int64, id string) ([]float64, error) {
	epoch := s.savedEpoch
	if p := s.epoch.Load(); p != nil {
		epoch = *p
	}
	return s.runAt(epoch, op, user, bs, need, amounts, id)
}

// runAt is run under epoch ("" checks none).
func (s *Store) runAt(epoch, op, user string, bs []limiter.Bucket, need, amounts []int64, id string) ([]float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.Timeout)
	defer cancel()
	start := time.Now()
	keys, args := s.scriptArgs(op, user, bs, need, amounts, s.serverDeadline(start), id, epoch)
	c := scriptCall{ctx: ctx, keys: keys, args: args, n: len(bs)}
	err := s.callScript(&c)
	if err == nil {
		err = c.err
	}
	res := c.res
	end := time.Now()
	if err == nil {
		// Past its deadline or not, the answer tells the server's clock,
		// read while its batch was in flight.
		s.learnClock(c.sent, c.answered, int64(res[1]))
		switch res[0] {
		case -1:
			err = errPastDeadline
		case -2:
			s.opts.Observer.ObserveQuotaBackend(op, end.Sub(start), nil)
			unknown := &limiter.UnknownSpendError{}
			for i := range bs {
				if math.IsNaN(res[2+i]) {
					unknown.Buckets = append(unknown.Buckets, i)
				}
			}
			return nil, unknown
		case -3:
			s.opts.Observer.ObserveQuotaBackend(op, end.Sub(start), nil)
			return nil, errEpochLost
		case 3: // a record charged already: res[0] stays 3 for ChargeOnce
			s.opts.Observer.ObserveQuotaDuplicate()
			s.verified(start)
		default:
			s.verified(start)
		}
	}
	s.opts.Observer.ObserveQuotaBackend(op, end.Sub(start), err)
	switch {
	case err == nil:
		if s.refusal.Load() != nil && s.refusal.Swap(nil) != nil {
			// Redis takes writes again: what the fail mode debited
			// meanwhile goes back to it.
			if p := s.epoch.Load(); p != nil {
				go func() { _ = s.writeBackOwed(context.Background(), *p) }()
			}
		}
		return append(res[:1], res[2:]...), nil
	case errors.Is(err, errPastDeadline):
		// Redis answered, late: this call goes to the fail mode, the next
		// one to Redis with a deadline on the clock just learnt.
	case isRedisError(err):
		s.refuse(err)
	default:
		s.markDown(err)
	}
	return nil, err
}

// runRecovering is run, recovering first when Redis lost the epoch (see
// recover.go) and then calling again once.
func (s *Store) runRecovering(op, user string, bs []limiter.Bucket, need, amounts []int64, id string) ([]float64, error) {
	res, err := s.run(op, user, bs, need, amounts, id)
	if !errors.Is(err, errEpochLost) {
		return res, err
	}
	if err := s.recover(); err != nil {
		return nil, err
	}
	return s.run(op, user, bs, need, amounts, id)
}

// isRedisError tells an error answer of the server from a failure to reach it.
func isRedisError(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && !errors.Is(err, redis.Nil)
}

// scriptArgs builds the bucket script's keys and arguments; id is the
// call's request_id, "" for none.
func (s *Store) scriptArgs(op, user string, bs []limiter.Bucket, need, amounts []int64, deadline int64, id, epoch string) ([]string, []any) {
	keys := make([]string, len(bs), len(bs)+4)
	args := make([]any, 0, argsBefore+5*len(bs))
	tag := s.userTag(user)
	indexed := "0"
	if s.cluster {
		// On a single Redis every call checks the epoch and a hold joins
		// the instance's index in the same script; a cluster keeps those
		// keys in another slot (see recover.go for what that costs).
		epoch = ""
	} else {
		if id != "" && op == opTake {
			indexed = "1"
		}
	}
	args = append(args, op, deadline, len(bs), epoch, id, s.instance, s.opts.HoldTTL.Milliseconds(), s.opts.DedupTTL.Milliseconds(), indexed)
	now := time.Now()
	for i, b := range bs {
		var n, a, ttl int64
		if need != nil {
			n = need[i]
		}
		if amounts != nil {
			a = amounts[i]
		}
		if b.IsBudget() {
			keys[i] = tag + budgetKey(user, b)
			ttl = s.budgetTTL(b, now)
		} else {
			keys[i] = tag + scopeKey(user, b.Scope)
		}
		args = append(args, b.Limit, strconv.FormatFloat(b.RefillPerSecond()/1e6, 'g', -1, 64), n, a, ttl)
	}
	if id != "" {
		keys = append(keys, s.holdKey(user, id), s.chargedKey(user, id))
	}
	if indexed == "1" {
		keys = append(keys, s.holdIndexKey(s.instance))
	}
	if epoch != "" {
		keys = append(keys, s.globalKey("epoch"))
	}
	return keys, args
}

func mustFloat(v any) float64 {
	f, _ := strconv.ParseFloat(v.(string), 64)
	return f
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

type nopObserver struct{}

func (nopObserver) ObserveQuotaBackend(string, time.Duration, error) {}
func (nopObserver) ObserveQuotaFallback(string)                      {}
func (nopObserver) ObserveQuotaRecovery(string)                      {}
func (nopObserver) ObserveQuotaHoldsReleased(string, int)            {}
func (nopObserver) ObserveQuotaDuplicate()                           {}

var _ limiter.Store = (*Store)(nil)
