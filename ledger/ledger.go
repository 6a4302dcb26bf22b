// Package ledger counts what the records accepted and not stored yet have
// spent, so that a budget's spend read after a restart, or after Redis lost
// it, is the database's sum plus these: a record waiting in the spool has
// been spent as surely as a stored one.
package ledger

import (
	"context"
	"sync"
	"time"

	"github.com/llmusage/llmusage/internal/glob"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/store"
	"github.com/llmusage/llmusage/usd"
)

// Ledger sums the cost of pending records by user, provider, model and
// quarter hour: budgets' periods start on quarter hours in every time
// zone, so a slot is wholly in a period or wholly out of it, and memory
// follows the distinct calls waiting rather than their number. It is safe
// for concurrent use.
type Ledger struct {
	mu sync.Mutex
	// users holds each user's slots with a pending cost.
	users map[string]map[slotKey]*slot
}

// New returns an empty Ledger.
func New() *Ledger { return &Ledger{users: map[string]map[slotKey]*slot{}} }

// Add counts records accepted for storage.
func (l *Ledger) Add(recs []record.Record) { l.apply(recs, 1) }

// Remove forgets records now stored (or given up on).
func (l *Ledger) Remove(recs []record.Record) { l.apply(recs, -1) }

// Spent sums the pending cost of user's records in [from, to) for a
// provider ("" for any) and a model glob ("" for any).
func (l *Ledger) Spent(user, provider, model string, from, to time.Time) usd.Amount {
	l.mu.Lock()
	defer l.mu.Unlock()
	var sum usd.Amount
	for k, s := range l.users[user] {
		if k.slot < from.Unix() || k.slot >= to.Unix() {
			continue
		}
		if (provider == "" || k.provider == provider) && (model == "" || glob.Match(model, k.model)) {
			sum += s.cost
		}
	}
	return sum
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
	// DB sums the stored records' cost; nil when there is no database.
	DB func(ctx context.Context, user, provider, model string, from, to time.Time) (usd.Amount, error)
	// Timeout bounds a database read (5 seconds when zero): a check waits for it.
	Timeout time.Duration
}

// Spent implements limiter.SpendSource.
func (s *Source) Spent(user string, sc limiter.Scope, from, to time.Time) (int64, error) {
	pending := s.Ledger.Spent(user, sc.Provider, sc.Model, from, to)
	if s.DB == nil {
		return int64(pending), nil
	}
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	stored, err := s.DB(ctx, user, sc.Provider, sc.Model, from, to)
	if err != nil {
		return 0, err
	}
	return int64(stored + pending), nil
}

// slotKey is a quarter hour of one provider and model's calls.
type slotKey struct {
	provider, model string
	// slot is the quarter hour's start, in Unix seconds.
	slot int64
}

type slot struct {
	cost usd.Amount
	// records counts the pending records, so that the slot goes with its last.
	records int
}

const slotSeconds = 15 * 60

func (l *Ledger) apply(recs []record.Record, sign int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range recs {
		r := &recs[i]
		if !r.HasCost || r.Cost == 0 {
			continue
		}
		sec := r.Timestamp.Unix()
		k := slotKey{provider: r.Provider, model: r.Model, slot: sec - mod(sec, slotSeconds)}
		slots := l.users[r.UserID]
		if slots == nil {
			slots = map[slotKey]*slot{}
			l.users[r.UserID] = slots
		}
		s := slots[k]
		if s == nil {
			s = &slot{}
			slots[k] = s
		}
		s.cost += usd.Amount(sign) * r.Cost
		s.records += sign
		if s.records <= 0 {
			delete(slots, k)
			if len(slots) == 0 {
				delete(l.users, r.UserID)
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
	q.ledger.Remove(q.peeked[:min(n, len(q.peeked))])
	q.peeked = nil
	return nil
}
