// Package ledger counts what the records accepted and not stored yet have
// spent, so that a budget's spend read after a restart, or after Redis lost
// it, is the database's sum plus these: a record waiting in the spool has
// been spent as surely as a stored one.
package ledger

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmusage/llmusage/internal/glob"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/store"
	"github.com/llmusage/llmusage/usage"
	"github.com/llmusage/llmusage/usd"
)

// Ledger sums the cost of pending records by user, provider, model and
// quarter hour: budgets' periods start on quarter hours in every time
// zone, so a slot is wholly in a period or wholly out of it, and memory
// follows the distinct calls waiting rather than their number. It is safe
// for concurrent use.
type Ledger struct {
	// off is set while no rule is a budget: nothing needs the pending
	// spend then, and a flood of new users must not cost memory for it.
	off atomic.Bool

	mu sync.Mutex
	// users holds each user's slots with a pending cost: a slice, since a
	// user has a handful (a slice costs a third of a map of one entry).
	users map[string][]slot
	// confirmed and unconfirmed keep stored records for a shared store's
	// recovery (see unconfirmed.go).
	confirmed   func() time.Time
	unconfirmed []storedBatch
	// ids are the pending records by user and request_id (see byid.go);
	// idCount counts them.
	ids     map[string]map[string]*idEntry
	idCount int
}

// New returns an empty Ledger, counting.
func New() *Ledger { return &Ledger{users: map[string][]slot{}, ids: map[string]map[string]*idEntry{}} }

// SetEnabled starts or stops counting: a sidecar whose rules hold no
// budget need not. Stopping forgets what was counted; after a start,
// records accepted before it count once stored.
func (l *Ledger) SetEnabled(on bool) {
	if l.off.Swap(!on) == !on || on {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	clear(l.users)
	clear(l.ids)
	l.idCount = 0
}

// Add counts records accepted for storage.
func (l *Ledger) Add(recs []record.Record) { l.apply(recs, 1) }

// Remove forgets records now stored (or given up on).
func (l *Ledger) Remove(recs []record.Record) { l.apply(recs, -1) }

// Spent sums the pending cost of user's records in [from, to) for a
// provider ("" for any) and a model glob ("" for any).
func (l *Ledger) Spent(user, provider, model string, from, to time.Time) usd.Amount {
	var sum usd.Amount
	for _, s := range l.SpentByModel(Owned(user, ""), provider, model, from, to) {
		sum += s.Spent
	}
	return sum
}

// SpentByModel sums the pending cost of the records of o in [from, to)
// by provider, model and team.
func (l *Ledger) SpentByModel(o Owner, provider, model string, from, to time.Time) []usage.ModelSpend {
	l.mu.Lock()
	defer l.mu.Unlock()
	by := map[[3]string]usd.Amount{}
	eachUser(o, l.users, func(_ string, slots []slot) {
		for _, s := range slots {
			if s.slot < from.Unix() || s.slot >= to.Unix() || !o.hasTeam(s.team) {
				continue
			}
			if (provider == "" || s.provider == provider) && (model == "" || glob.Match(model, s.model)) {
				g := [3]string{s.provider, s.model, s.team}
				by[g] = min(by[g]+s.cost, limiter.MaxSpend) // slots hold at most 2^62: no wrap
			}
		}
	})
	out := make([]usage.ModelSpend, 0, len(by))
	for k, a := range by {
		out = append(out, usage.ModelSpend{Provider: k[0], Model: k[1], TeamID: k[2], Spent: a})
	}
	return out
}

// Len returns the number of slots held, for tests and metrics.
func (l *Ledger) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, slots := range l.users {
		n += len(slots)
	}
	return n
}

// Queue is a store's queue (the spool, or memory) that tells why it
// takes no records.
type Queue interface {
	store.Queue
	// Err tells why records cannot be accepted now, or nil.
	Err() error
}

// Queue wraps a store's queue: what it takes is counted, what is
// committed from it forgotten.
func (l *Ledger) Queue(q Queue) Queue { return &queue{Queue: q, ledger: l} }

// Source is a budget's spend as the limiter asks for it: the ledger's
// pending records plus the database's. The ledger is read first: a record
// stored in between is then counted twice, never missed.
type Source struct {
	// Ledger holds the pending records.
	Ledger *Ledger
	// DB sums the stored records' cost by provider and model; nil when
	// there is no database.
	DB func(ctx context.Context, q usage.SpendQuery) ([]usage.ModelSpend, error)
	// StoredIDs tells which of a user's request_ids the database has; nil
	// when there is no database.
	StoredIDs func(ctx context.Context, user string, ids []string) ([]string, error)
	// Timeout bounds a database read (5 seconds when zero): a check waits for it.
	Timeout time.Duration
	// Backoff is how long after a failed read the next ones fail at once
	// rather than wait for the database again (5 seconds when zero), so
	// that a hung database costs one timeout, not one per check and record.
	Backoff time.Duration

	// failed is the last failure, nil after a success.
	failed atomic.Pointer[readFailure]
}

type readFailure struct {
	at  time.Time
	err error
}

// Spent implements limiter.SpendSource.
func (s *Source) Spent(user string, sc limiter.Scope, from, to time.Time) ([]limiter.Spend, error) {
	return s.read(user, sc, from, to, true)
}

// read sums the database's part, after the ledger's when pending.
func (s *Source) read(user string, sc limiter.Scope, from, to time.Time, pending bool) ([]limiter.Spend, error) {
	var groups []usage.ModelSpend
	o := Owned(user, sc.TeamID)
	if pending {
		groups = s.Ledger.SpentByModel(o, sc.Provider, sc.Model, from, to)
	}
	if s.DB != nil {
		backoff := s.Backoff
		if backoff <= 0 {
			backoff = 5 * time.Second
		}
		if f := s.failed.Load(); f != nil && time.Since(f.at) < backoff {
			return nil, fmt.Errorf("cannot read the spend from the database, which failed %s ago (retried every %s): %w",
				time.Since(f.at).Round(time.Millisecond), backoff, f.err)
		}
		timeout := s.Timeout
		if timeout <= 0 {
			timeout = 5 * time.Second
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		stored, err := s.DB(ctx, o.query(sc, from, to))
		if err != nil {
			if unreachable(ctx, err) {
				s.failed.Store(&readFailure{time.Now(), err})
			}
			return nil, err
		}
		s.failed.Store(nil)
		groups = append(groups, stored...)
	}
	out := make([]limiter.Spend, len(groups))
	for i, g := range groups {
		out[i] = limiter.Spend{Provider: g.Provider, Model: g.Model, TeamID: g.TeamID, NanoUSD: int64(g.Spent)}
	}
	return out, nil
}

// unreachable tells a database out of reach (a timeout, a connection
// that failed) from a query that failed: only the first makes every
// user's reads wait for the backoff.
func unreachable(ctx context.Context, err error) bool {
	var ne net.Error
	return ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne)
}

// maxSlot bounds a slot's sum.
const maxSlot = usd.Amount(1 << 62)

// slot is the pending cost of a quarter hour of one provider and model's
// calls for one team.
type slot struct {
	provider, model, team string
	// slot is the quarter hour's start, in Unix seconds.
	slot int64
	cost usd.Amount
	// records counts the pending records, so that the slot goes with its last.
	records int32
	// saturated is set once the sum reached maxSlot, which it keeps.
	saturated bool
}

const slotSeconds = 15 * 60

func (l *Ledger) apply(recs []record.Record, sign int) {
	if l.off.Load() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range recs {
		r := &recs[i]
		if !r.HasCost || r.Cost == 0 {
			continue
		}
		sec := r.Timestamp.Unix()
		start := sec - mod(sec, slotSeconds)
		if !l.countByID(r, start, sign) {
			continue // a request_id counted already, or still
		}
		slots := l.users[r.UserID]
		j := 0
		for ; j < len(slots) && (slots[j].slot != start || slots[j].provider != r.Provider || slots[j].model != r.Model || slots[j].team != r.TeamID); j++ {
		}
		if j == len(slots) {
			if sign < 0 {
				continue // counted before a SetEnabled(true), or forgotten by a stop
			}
			slots = append(slots, slot{provider: r.Provider, model: r.Model, team: r.TeamID, slot: start})
			l.users[r.UserID] = slots
		}
		s := &slots[j]
		// Each record counts at most 2^53, as budgets do. A slot whose sum
		// would pass 2^62 stays there until its last record goes: records
		// may claim a billion dollars each, and a wrapped sum would open
		// every budget over it.
		c := usd.Amount(min(int64(r.Cost), limiter.MaxSpend))
		switch {
		case s.saturated:
		case sign > 0 && s.cost > maxSlot-c:
			s.cost, s.saturated = maxSlot, true
		default:
			s.cost += usd.Amount(sign) * c
		}
		s.records += int32(sign)
		if s.records <= 0 {
			slots[j] = slots[len(slots)-1]
			slots = slots[:len(slots)-1]
			if len(slots) == 0 {
				delete(l.users, r.UserID)
			} else {
				l.users[r.UserID] = slots
			}
		}
	}
}

func mod(a, b int64) int64 {
	m := a % b
	if m < 0 {
		m += b
	}
	return m
}

// queue counts what its Queue takes and forgets what is committed.
type queue struct {
	Queue
	ledger *Ledger
	// peeked are the records of the last Peek, which Commit forgets.
	peeked []record.Record
}

func (q *queue) Enqueue(recs []record.Record) error {
	// Counted first: a record stored and committed before it is counted
	// would be forgotten before it is counted, and then count forever.
	q.ledger.Add(recs)
	if err := q.Queue.Enqueue(recs); err != nil {
		q.ledger.Remove(recs)
		return err
	}
	return nil
}

func (q *queue) Peek(limit int) ([]record.Record, error) {
	recs, err := q.Queue.Peek(limit)
	q.peeked = recs
	return recs, err
}

func (q *queue) Commit(n int) error {
	if err := q.Queue.Commit(n); err != nil {
		return err
	}
	q.ledger.stored(q.peeked[:min(n, len(q.peeked))])
	q.peeked = nil
	return nil
}

// Stored implements limiter.SplitSpendSource: the database's part.
func (s *Source) Stored(user string, sc limiter.Scope, from, to time.Time) ([]limiter.Spend, error) {
	return s.read(user, sc, from, to, false)
}

// Pending implements limiter.SplitSpendSource: the records accepted and
// not stored yet.
// A pending record that the database has was stored by another replica
// (a copy of it posted there): it is that replica's part, so it is left
// out. The records are read again after the database answered, so that
// one this replica stored meanwhile is among the stored ones (see
// Unconfirmed), not left out. A database that does not answer leaves
// them all in (counted twice rather than missed).
func (s *Source) Pending(user string, sc limiter.Scope, from, to time.Time) (sums, records []limiter.Spend) {
	o := Owned(user, sc.TeamID)
	sums, records = s.Ledger.PendingByID(o, sc.Provider, sc.Model, from.Unix(), to.Unix())
	if s.StoredIDs == nil || len(records) == 0 {
		return sums, records
	}
	ids := make([]string, len(records))
	for i, r := range records {
		ids[i] = r.RequestID
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmp.Or(s.Timeout, 5*time.Second))
	defer cancel()
	stored, err := s.StoredIDs(ctx, o.UserID(), ids)
	if err != nil || len(stored) == 0 {
		return sums, records
	}
	elsewhere := make(map[string]bool, len(stored))
	for _, id := range stored {
		elsewhere[id] = true
	}
	sums, records = s.Ledger.PendingByID(o, sc.Provider, sc.Model, from.Unix(), to.Unix())
	return sums, slices.DeleteFunc(records, func(r limiter.Spend) bool { return elsewhere[r.RequestID] })
}

// Unconfirmed implements limiter.SplitSpendSource.
func (s *Source) Unconfirmed(user string, sc limiter.Scope, from, to time.Time) []limiter.TimedSpend {
	return s.Ledger.Unconfirmed(Owned(user, sc.TeamID), sc.Provider, sc.Model, from, to)
}

// Duplicate implements limiter.SplitSpendSource.
func (s *Source) Duplicate(user, requestID string) { s.Ledger.Duplicate(user, requestID) }

// PendingCalls implements limiter.SplitSpendSource.
func (s *Source) PendingCalls(recovering bool) []limiter.Call {
	s.Ledger.mu.Lock()
	defer s.Ledger.mu.Unlock()
	var out []limiter.Call
	if recovering {
		out = s.Ledger.unconfirmedCalls(out)
	}
	for user, slots := range s.Ledger.users {
		for _, sl := range slots {
			out = append(out, limiter.Call{UserID: user, TeamID: sl.team, Provider: sl.provider, Model: sl.model})
		}
	}
	return out
}

var _ limiter.SplitSpendSource = (*Source)(nil)
