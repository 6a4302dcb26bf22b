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
func (l *Ledger) Unconfirmed(o Owner, provider, model string, from, to time.Time) []limiter.TimedSpend {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.prune()
	var out []limiter.TimedSpend
	for _, b := range l.unconfirmed {
		var spends []limiter.Spend
		eachUser(o, b.records, func(user string, recs []storedRecord) {
			for _, r := range recs {
				if r.slot < from.Unix() || r.slot >= to.Unix() || !o.hasTeam(r.team) {
					continue
				}
				if (provider == "" || r.provider == provider) && (model == "" || glob.Match(model, r.model)) {
					spends = append(spends, limiter.Spend{Provider: r.provider, Model: r.model, TeamID: r.team, NanoUSD: int64(r.cost), RequestID: r.id, UserID: user})
				}
			}
		})
		if len(spends) > 0 {
			out = append(out, limiter.TimedSpend{At: b.at, Spends: spends})
		}
	}
	return out
}

// maxUnconfirmed bounds the batches kept: past it the oldest go, which
// only the newest could be needed for (stored after the sum was taken).
const maxUnconfirmed = 1_000

// storedBatch is the records of one commit, by user.
type storedBatch struct {
	// at is when the commit returned.
	at      time.Time
	records map[string][]storedRecord
}

// storedRecord is one record stored.
type storedRecord struct {
	id, provider, model, team string
	slot                      int64
	cost                      usd.Amount
}

// stored moves records from pending to a new unconfirmed batch.
func (l *Ledger) stored(recs []record.Record) {
	// Another replica's records (Duplicate) are not this one's part.
	l.mu.Lock()
	var dups map[*record.Record]bool
	for i := range recs {
		if e := l.ids[recs[i].UserID][recs[i].RequestID]; e != nil && e.dup {
			if dups == nil {
				dups = map[*record.Record]bool{}
			}
			dups[&recs[i]] = true
		}
	}
	l.mu.Unlock()
	l.apply(recs, -1)
	if l.off.Load() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.confirmed == nil {
		return
	}
	b := storedBatch{at: time.Now(), records: map[string][]storedRecord{}}
	for i := range recs {
		r := &recs[i]
		if !r.HasCost || r.Cost == 0 || dups[r] {
			continue
		}
		sec := r.Timestamp.Unix()
		b.records[r.UserID] = append(b.records[r.UserID], storedRecord{id: r.RequestID, provider: r.Provider, model: r.Model, team: r.TeamID,
			slot: sec - mod(sec, slotSeconds), cost: usd.Amount(min(int64(r.Cost), limiter.MaxSpend))})
	}
	if len(b.records) == 0 {
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
		for user, recs := range b.records {
			for _, r := range recs {
				calls = append(calls, limiter.Call{UserID: user, TeamID: r.team, Provider: r.provider, Model: r.model})
			}
		}
	}
	return calls
}
