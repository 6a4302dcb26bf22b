package ledger

import (
	"time"

	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/usage"
)

// Owner selects the records whose spend a budget counts: one user's (a
// user's own budget), or every user's (a pool's: a team's, or the
// shared one), of one team or of any.
type Owner struct {
	// user is the user_id of a user's own budget; empty for a pool.
	user string
	// team keeps the records of one team; empty keeps all of them.
	team string
}

// Owned returns the Owner of the budget of owner (a user_id or a pool's
// owner, see limiter.ParseOwner) whose rule is scoped to team (empty for
// none).
func Owned(owner, team string) Owner {
	per, id := limiter.ParseOwner(owner)
	switch per {
	case limiter.PerTeam:
		return Owner{team: id}
	case limiter.PerAll:
		return Owner{team: team}
	}
	return Owner{user: id, team: team}
}

// UserID is the user whose records o selects; empty for every user.
func (o Owner) UserID() string { return o.user }

// hasTeam tells whether o counts the records of team.
func (o Owner) hasTeam(team string) bool { return o.team == "" || o.team == team }

// query is the database's part of o's spend in scope sc.
func (o Owner) query(sc limiter.Scope, from, to time.Time) usage.SpendQuery {
	return usage.SpendQuery{UserID: o.user, TeamID: o.team, Provider: sc.Provider, Model: sc.Model, From: from, To: to}
}

// eachUser calls fn with the entries of m that o selects: its user's, or
// every user's for a pool.
func eachUser[V any](o Owner, m map[string]V, fn func(user string, v V)) {
	if o.user != "" {
		if v, ok := m[o.user]; ok {
			fn(o.user, v)
		}
		return
	}
	for user, v := range m {
		fn(user, v)
	}
}
