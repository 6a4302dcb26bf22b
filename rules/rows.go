package rules

import (
	"fmt"
	"strings"

	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/provider"
	"github.com/llmusage/llmusage/usd"
)

// The tables whose rows are limit rules.
const (
	// ConfigsTable holds the rules of every user.
	ConfigsTable = "llm_rate_limit_configs"
	// UserLimitsTable holds the rules of one user each.
	UserLimitsTable = "llm_rate_limits"
)

// Row is a row of llm_rate_limit_configs or llm_rate_limits, as a store
// reads it.
type Row struct {
	// Table is ConfigsTable or UserLimitsTable.
	Table string
	// ID is the row's id, as text (a legacy table may key rows by uuid).
	ID string
	// UserID is empty in ConfigsTable.
	UserID string
	// TeamID scopes the rule to one team's calls; empty for any.
	TeamID string
	// Per is who shares the rule's buckets: user (also when empty), team or all.
	Per string
	// LimitType is second, minute, hour or day; ignored for unit concurrent.
	LimitType string
	// Unit is requests (also when empty), tokens, usd or concurrent (a
	// concurrency limit of LimitValue calls in flight).
	Unit string
	// Provider and Model scope the rule; empty matches every one.
	Provider, Model string
	// LimitValue is the bucket's capacity.
	LimitValue int64
	// LimitUSD is the limit_usd column, as decimal text: a budget's
	// amount (unit usd), where a whole number of dollars in LimitValue
	// would not do. Nil when NULL; a usd row without it takes LimitValue
	// as whole dollars.
	LimitUSD *string
	// Seeded marks a default row the migration inserted and nobody has
	// changed since: it yields to a limits file.
	Seeded bool
}

// source names the row in messages and in the rules API.
func (r Row) source() string {
	s := fmt.Sprintf("%s id %s", r.Table, r.ID)
	if r.Seeded {
		s += " (seeded default)"
	}
	return s
}

// Rule validates the row as a limit rule.
func (r Row) Rule() (limiter.Rule, error) {
	at := r.source()
	var unit limiter.Unit
	switch strings.ToLower(strings.TrimSpace(r.Unit)) {
	case "requests", "":
		unit = limiter.Requests
	case "tokens":
		unit = limiter.Tokens
	case "usd":
		unit = limiter.USD
	case "concurrent":
		unit = limiter.Concurrent
	default:
		return limiter.Rule{}, fmt.Errorf("cannot use %s: unit %q is not requests, tokens, usd or concurrent", at, r.Unit)
	}
	w := limiter.InFlight // limit_type is NOT NULL in the seed's tables; its value means nothing here
	if unit != limiter.Concurrent {
		var err error
		if w, err = limiter.ParseWindow(strings.ToLower(strings.TrimSpace(r.LimitType))); err != nil {
			return limiter.Rule{}, fmt.Errorf("cannot use %s: %w", at, err)
		}
	}
	limit := r.LimitValue
	if unit == limiter.USD {
		amount := usd.Amount(r.LimitValue) * usd.Dollar
		if r.LimitUSD != nil {
			var err error
			if amount, err = usd.Parse(*r.LimitUSD); err != nil {
				return limiter.Rule{}, fmt.Errorf("cannot use %s: limit_usd: %w", at, err)
			}
		} else if r.LimitValue < 0 || r.LimitValue > int64(usd.Max/usd.Dollar) {
			return limiter.Rule{}, fmt.Errorf("cannot use %s: limit_value %d is not a number of dollars", at, r.LimitValue)
		}
		limit = int64(amount)
	}
	per, err := limiter.ParsePer(strings.ToLower(strings.TrimSpace(r.Per)))
	if err != nil {
		return limiter.Rule{}, fmt.Errorf("cannot use %s: %w", at, err)
	}
	rule := limiter.Rule{UserID: r.UserID, TeamID: r.TeamID, Per: per, Provider: provider.Normalize(r.Provider), Model: r.Model,
		Window: w, Unit: unit, Limit: limit, Source: at}
	if err := rule.Validate(); err != nil {
		return limiter.Rule{}, fmt.Errorf("cannot use %s: %w", at, err)
	}
	return rule, nil
}
