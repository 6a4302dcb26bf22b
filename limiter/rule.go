package limiter

import (
	"fmt"
	"time"

	"github.com/llmusage/llmusage/internal/glob"
)

// Window is a rule's limit type: the period its limit is counted over.
type Window uint8

// The limit types of the seed's llm_rate_limit_configs table, then the
// calendar windows of budgets. A budget (unit USD) counts spend in a
// calendar day, week or month, which resets at its start; every other
// rule is a token bucket refilled continuously over its window.
const (
	Second Window = iota
	Minute
	Hour
	Day
	Week
	Month
	// InFlight is a concurrency limit's: it counts the calls in flight
	// (unit Concurrent), not a period. It is no limit type of the
	// seed's tables: rules write concurrent: N instead.
	InFlight
	numWindows
)

// Windows lists every limit type, shortest first.
var Windows = []Window{Second, Minute, Hour, Day, Week, Month}

var windowNames = [numWindows]string{"second", "minute", "hour", "day", "week", "month", "concurrent"}

// windowDurations are the token buckets' refill periods; a month's is
// nominal (budgets use calendar periods, see PeriodOf); a concurrency
// limit's slots never refill by time.
var windowDurations = [numWindows]time.Duration{time.Second, time.Minute, time.Hour, 24 * time.Hour, 7 * 24 * time.Hour, 30 * 24 * time.Hour, 0}

// String returns the limit type as it is written in the limits file and the API.
func (w Window) String() string {
	if w >= numWindows {
		return fmt.Sprintf("Window(%d)", uint8(w))
	}
	return windowNames[w]
}

// Duration returns the period a limit of this type is counted over.
func (w Window) Duration() time.Duration { return windowDurations[w] }

// ParseWindow parses a limit type name.
func ParseWindow(s string) (Window, error) {
	for _, w := range Windows {
		if s == windowNames[w] {
			return w, nil
		}
	}
	return 0, fmt.Errorf("unknown limit_type %q; valid: second, minute, hour, day, week, month", s)
}

// PeriodOf returns the calendar period of w that holds t, in loc: a day
// from midnight, a week from Monday's midnight, a month from the 1st's.
// Only Day, Week and Month have calendar periods.
func PeriodOf(w Window, t time.Time, loc *time.Location) Period {
	t = t.In(loc)
	y, m, d := t.Date()
	var start, end time.Time
	switch w {
	case Week:
		d -= (int(t.Weekday()) + 6) % 7 // days since Monday
		start = time.Date(y, m, d, 0, 0, 0, 0, loc)
		end = time.Date(y, m, d+7, 0, 0, 0, 0, loc)
	case Month:
		start = time.Date(y, m, 1, 0, 0, 0, 0, loc)
		end = time.Date(y, m+1, 1, 0, 0, 0, 0, loc)
	default:
		start = time.Date(y, m, d, 0, 0, 0, 0, loc)
		end = time.Date(y, m, d+1, 0, 0, 0, 0, loc)
	}
	return Period{Start: start.Unix(), End: end.Unix()}
}

// Period is a budget's calendar window, [Start, End) in Unix seconds.
type Period struct {
	Start, End int64
}

// Contains tells whether t falls in the period.
func (p Period) Contains(t time.Time) bool {
	s := t.Unix()
	return p.Start <= s && s < p.End
}

// Unit is what a rule counts.
type Unit uint8

// Units a rule can count.
const (
	Requests Unit = iota
	Tokens
	// USD counts spend in nano-dollars (usd.Amount): a budget.
	USD
	// Concurrent counts the calls in flight: checks allowed whose record
	// has not come (window InFlight).
	Concurrent
	numUnits
)

var unitNames = [numUnits]string{"requests", "tokens", "usd", "concurrent"}

// String returns the unit as the API and the seed's tables spell it.
func (u Unit) String() string {
	if u >= numUnits {
		return fmt.Sprintf("Unit(%d)", uint8(u))
	}
	return unitNames[u]
}

// Rule is one token bucket definition: Limit units per Window, optionally
// scoped to a user, a provider and a model.
type Rule struct {
	// UserID scopes the rule to one user; empty matches every user.
	UserID string
	// TeamID scopes the rule to the calls of one team (the call's
	// team_id); empty matches every call, with a team or without.
	TeamID string
	// Per tells who shares the rule's buckets: each user (the default),
	// each team, or every call the scope matches.
	Per Per
	// Provider scopes the rule to one provider; empty matches every provider.
	Provider string
	// Model scopes the rule to models matching this glob, where "*"
	// matches any run of characters ("/" included, as in
	// "meta-llama/*") and "?" any one character, ASCII case ignored;
	// empty matches every model.
	Model string
	// Window is the period the limit is counted over.
	Window Window
	// Unit is what the limit counts.
	Unit Unit
	// Limit is the bucket's capacity, refilled continuously at Limit per
	// Window; for a budget (unit USD), the nano-dollars it allows per
	// calendar Window.
	Limit int64
	// Source tells where the rule came from (such as "limits.yaml:12"), for messages.
	Source string
}

// MaxConcurrent bounds a concurrency limit: each slot in flight is a
// hold that a sidecar keeps.
const MaxConcurrent = 100_000

// MaxLimit bounds a rule's limit so that bucket arithmetic stays exact in
// float64 and fits rate.Limiter's int burst.
const MaxLimit = 1 << 50

// Validate reports the first problem that makes r unusable.
func (r Rule) Validate() error {
	if r.Window >= numWindows {
		return fmt.Errorf("invalid limit_type %d", r.Window)
	}
	if r.Unit >= numUnits {
		return fmt.Errorf("invalid unit %d", r.Unit)
	}
	budget, calendar := r.Unit == USD, r.Window >= Day && r.Window != InFlight
	switch {
	case (r.Unit == Concurrent) != (r.Window == InFlight):
		return fmt.Errorf("a concurrent limit has no limit_type, and limit_type %s counts no calls in flight", r.Window)
	case r.Unit == Concurrent && (r.Limit < 1 || r.Limit > MaxConcurrent):
		return fmt.Errorf("concurrent must be between 1 and %d, got %d", MaxConcurrent, r.Limit)
	case budget && !calendar:
		return fmt.Errorf("a usd budget counts a calendar day, week or month, not a %s", r.Window)
	case !budget && r.Window > Day && r.Window != InFlight:
		return fmt.Errorf("limit_type %s is a calendar window, for usd budgets only; limit %s per day instead", r.Window, r.Unit)
	case budget && (r.Limit < 1 || r.Limit > MaxLimit):
		return fmt.Errorf("usd must be between 0.000000001 and %d (dollars), got %d nano-USD", int64(MaxLimit)/1e9, r.Limit)
	case r.Unit != Concurrent && (r.Limit < 1 || r.Limit > MaxLimit):
		return fmt.Errorf("%s must be between 1 and %d, got %d", r.Unit, int64(MaxLimit), r.Limit)
	case r.Per >= numPers:
		return fmt.Errorf("invalid per %d", r.Per)
	case r.Per != PerUser && r.UserID != "":
		return fmt.Errorf("a rule with user_id %q is that user's own: per %s would share it with nobody; drop per, or drop user_id for a pool", r.UserID, r.Per)
	}
	return nil
}

// bucketOwner returns who owns the bucket of rule r for a call of user
// for team: the user, the team's pool or the shared pool.
func (r *rule) bucketOwner(user, team string) string {
	switch r.Per {
	case PerTeam:
		return TeamOwner(team)
	case PerAll:
		return AllOwner
	}
	return user
}

// IsBudget tells whether the rule is a USD budget over calendar periods.
func (r Rule) IsBudget() bool { return r.Unit == USD }

// IsConcurrency tells whether the rule limits the calls in flight.
func (r Rule) IsConcurrency() bool { return r.Unit == Concurrent }

// specificity orders rules of one level: user scope outranks team scope,
// which outranks provider scope, which outranks model scope, so that
// user+provider+model > user+team > user > team+provider > provider+model
// > provider > model > unscoped.
func (r Rule) specificity() int {
	s := 0
	if r.UserID != "" {
		s += 8
	}
	if r.TeamID != "" {
		s += 4
	}
	if r.Provider != "" {
		s += 2
	}
	if r.Model != "" {
		s++
	}
	return s
}

// matches tells whether the rule applies to a call. The user is checked by
// the caller, which indexes user-scoped rules by user. A team's pool
// takes the calls made for a team only.
func (r *Rule) matches(team, provider, model string) bool {
	if (r.TeamID != "" && r.TeamID != team) || (r.Per == PerTeam && team == "") {
		return false
	}
	if r.Provider != "" && r.Provider != provider {
		return false
	}
	if r.Model != "" {
		return glob.Match(r.Model, model)
	}
	return true
}
