package ledger

import (
	"time"

	"github.com/llmusage/llmusage/internal/glob"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/usd"
)

// A record stored in the database leaves the pending records, but a
// shared quota store (Redis) that lost its state after the record was
// charged there, and before this replica heard of the loss, rebuilds a
// budget from the database's sum taken at some moment and from each
// replica's part: a record stored after that sum was taken is in neither
// unless its replica still counts it. So, with a shared store, stored
// records are kept, by batch and with the time they were stored, until
// a call that the store answered under the state it knows started after
// them (SetConfirmed): the loss, if any, came after, and the database's
// sum has them.

// SetConfirmed makes the ledger keep stored records until since() (the
// start of the last call the shared store answered under the state this
// replica knows) passes the time they were stored.
func (l *Ledger) SetConfirmed(since func() time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.confirmed = since
}

// Unconfirmed sums the cost of user's records in [from, to), for a
// provider ("" for any) and a model glob ("" for any), that were stored
// but not confirmed, by the batch they were stored in.
func (l *Ledger) Unconfirmed(user, provider, model string, from, to time.Time) []limiter.TimedSpend {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.prune()
	var out []limiter.TimedSpend
	for _, b := range l.unconfirmed {
		var spends []limiter.Spend
		for _, s := range b.slots[user] {
			if s.slot < from.Unix() || s.slot >= to.Unix() {
				continue
			}
			if (provider == "" || s.provider == provider) && (model == "" || glob.Match(model, s.model)) {
				spends = append(spends, limiter.Spend{Provider: s.provider, Model: s.model, NanoUSD: int64(s.cost)})
			}
		}
		if len(spends) > 0 {
			out = append(out, limiter.TimedSpend{At: b.at, Spends: spends})
		}
	}
	return out
}

// maxUnconfirmed bounds the batches kept: past it the oldest go, which
// only the newest could be needed for (stored after the sum was taken).
const maxUnconfirmed = 10_000

// storedBatch is the cost of the records of one commit, by user.
type storedBatch struct {
	// at is when the commit returned.
	at    time.Time
	slots map[string][]slot
}

// stored moves records from pending to a new unconfirmed batch.
func (l *Ledger) stored(recs []record.Record) {
	l.apply(recs, -1)
	if l.off.Load() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.confirmed == nil {
		return
	}
	b := storedBatch{at: time.Now(), slots: map[string][]slot{}}
	for i := range recs {
		r := &recs[i]
		if !r.HasCost || r.Cost == 0 {
			continue
		}
		sec := r.Timestamp.Unix()
		start := sec - mod(sec, slotSeconds)
		slots := b.slots[r.UserID]
		j := 0
		for ; j < len(slots) && (slots[j].slot != start || slots[j].provider != r.Provider || slots[j].model != r.Model); j++ {
		}
		if j == len(slots) {
			slots = append(slots, slot{provider: r.Provider, model: r.Model, slot: start})
		}
		slots[j].cost = min(slots[j].cost+usd.Amount(min(int64(r.Cost), limiter.MaxSpend)), maxSlot)
		b.slots[r.UserID] = slots
	}
	if len(b.slots) == 0 {
		return
	}
	l.unconfirmed = append(l.unconfirmed, b)
	if len(l.unconfirmed) > maxUnconfirmed {
		l.unconfirmed = l.unconfirmed[len(l.unconfirmed)-maxUnconfirmed:]
	}
	l.prune()
}

// prune drops the batches confirmed. l.mu is held.
func (l *Ledger) prune() {
	if l.confirmed == nil || len(l.unconfirmed) == 0 {
		return
	}
	since := l.confirmed()
	kept := 0
	for kept < len(l.unconfirmed) && l.unconfirmed[kept].at.Before(since) {
		kept++
	}
	if kept > 0 {
		l.unconfirmed = append(l.unconfirmed[:0], l.unconfirmed[kept:]...)
	}
}

// unconfirmedUsers adds the users, providers and models of the
// unconfirmed batches to calls. l.mu is held.
func (l *Ledger) unconfirmedCalls(calls []limiter.Call) []limiter.Call {
	l.prune()
	for _, b := range l.unconfirmed {
		for user, slots := range b.slots {
			for _, s := range slots {
				calls = append(calls, limiter.Call{UserID: user, Provider: s.provider, Model: s.model})
			}
		}
	}
	return calls
}
