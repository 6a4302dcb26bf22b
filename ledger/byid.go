package ledger

import (
	"github.com/llmusage/llmusage/internal/glob"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/usd"
)

// The ledger knows its recent pending records by request_id, so that a
// record that one replica's spool holds twice (a client's retry) counts
// once, and so that a shared store's recovery can count a record that
// two replicas' spools hold (a retry to another replica) once: each part
// names its records (limiter.Spend.RequestID).

// maxIDs bounds the pending records known by request_id: past it records
// count in the sums only, and a copy of one held twice counts twice.
const maxIDs = 100_000

// idEntry is one pending request_id: its call and how many copies of it
// are pending.
type idEntry struct {
	provider, model, team string
	slot                  int64
	cost                  usd.Amount
	copies                int32
	// dup tells a record another replica charged (Duplicate): its part
	// is that replica's, not this one's.
	dup bool
}

// Duplicate marks user's pending record requestID as another replica's,
// when it is this replica's only copy.
func (l *Ledger) Duplicate(user, requestID string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.ids[user][requestID]; e != nil && e.copies == 1 {
		e.dup = true
	}
}

// countByID tells whether r changes the sums: the first copy of a
// request_id added, or its last removed. l.mu is held.
func (l *Ledger) countByID(r *record.Record, slot int64, sign int) bool {
	if r.RequestID == "" {
		return true
	}
	byID := l.ids[r.UserID]
	e := byID[r.RequestID]
	switch {
	case e != nil && sign > 0:
		e.copies++
		return false
	case e != nil:
		if e.copies--; e.copies > 0 {
			return false
		}
		delete(byID, r.RequestID)
		if len(byID) == 0 {
			delete(l.ids, r.UserID)
		}
		l.idCount--
		return true
	case sign > 0 && l.idCount < maxIDs:
		if byID == nil {
			byID = map[string]*idEntry{}
			l.ids[r.UserID] = byID
		}
		byID[r.RequestID] = &idEntry{provider: r.Provider, model: r.Model, team: r.TeamID, slot: slot, cost: usd.Amount(min(int64(r.Cost), limiter.MaxSpend)), copies: 1}
		l.idCount++
	}
	return true
}

// PendingByID is the pending cost of the records of o in [from, to)
// (Unix seconds) for a provider and a model glob: the records known by
// request_id one by one (a copy that another replica charged left out),
// and the others' sums by provider, model and team.
func (l *Ledger) PendingByID(o Owner, provider, model string, from, to int64) (sums, records []limiter.Spend) {
	l.mu.Lock()
	defer l.mu.Unlock()
	match := func(p, m, team string, slot int64) bool {
		return slot >= from && slot < to && o.hasTeam(team) && (provider == "" || p == provider) && (model == "" || glob.Match(model, m))
	}
	by := map[[3]string]int64{}
	eachUser(o, l.users, func(_ string, slots []slot) {
		for _, s := range slots {
			if match(s.provider, s.model, s.team, s.slot) {
				by[[3]string{s.provider, s.model, s.team}] += int64(min(s.cost, limiter.MaxSpend))
			}
		}
	})
	eachUser(o, l.ids, func(user string, ids map[string]*idEntry) {
		for id, e := range ids {
			if match(e.provider, e.model, e.team, e.slot) {
				by[[3]string{e.provider, e.model, e.team}] -= int64(e.cost)
				if !e.dup {
					records = append(records, limiter.Spend{Provider: e.provider, Model: e.model, TeamID: e.team, NanoUSD: int64(e.cost), RequestID: id, UserID: user})
				}
			}
		}
	})
	for k, n := range by {
		if n != 0 {
			sums = append(sums, limiter.Spend{Provider: k[0], Model: k[1], TeamID: k[2], NanoUSD: n})
		}
	}
	return sums, records
}
