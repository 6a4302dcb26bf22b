package collector

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/provider"
	"github.com/llmusage/llmusage/usage"
	"github.com/llmusage/llmusage/usd"
)

// UsageReader answers usage queries from the stored records.
type UsageReader interface {
	Usage(ctx context.Context, q usage.Query) (usage.Breakdown, error)
	Logs(ctx context.Context, q usage.LogQuery) (usage.LogPage, error)
}

// Bounds of the usage API's parameters.
const (
	// MaxStatsDays bounds ?days= of /api/llm/usage/stats.
	MaxStatsDays = 366
	// DefaultLogsLimit and MaxLogsLimit bound ?limit= of /api/llm/usage/logs.
	DefaultLogsLimit = 50
	MaxLogsLimit     = 1000
)

// serveSummary answers what the seed's usage card showed: calls and
// tokens today (UTC) and, for a user, each limit type's quota and the
// usd budgets; and today's cost.
func (c *Collector) serveSummary(w http.ResponseWriter, r *http.Request) {
	user := r.URL.Query().Get("user_id")
	now := c.clock.Now().UTC()
	today := now.Truncate(24 * time.Hour)
	u, err := c.usage.Usage(r.Context(), usage.Query{UserID: user, Since: today})
	if err != nil {
		writeError(w, storeError(err))
		return
	}
	answer := map[string]any{
		"user_id":                 nullable(user),
		"date":                    today.Format(time.DateOnly),
		"calls_today":             u.Calls,
		"errors_today":            u.Errors,
		"tokens_today":            u.Tokens,
		"prompt_tokens_today":     u.PromptTokens,
		"completion_tokens_today": u.CompletionTokens,
		// The priced calls' cost; unpriced_calls_today tells a partial sum.
		"cost_usd_today":       u.CostUSD,
		"unpriced_calls_today": u.UnpricedCalls,
	}
	if user != "" {
		statuses, err := c.limiter.Limits(user, "", "", "")
		if err != nil {
			writeError(w, err)
			return
		}
		limits := map[string]seedLimit{}
		for _, win := range limiter.Windows {
			if l := seedLimitOf(win, statuses); l.Limit != nil {
				limits[win.String()] = l
			}
		}
		answer["limits"] = limits
		answer["budgets"] = budgetsOf(statuses)
	}
	writeJSON(w, http.StatusOK, answer)
}

// budgetJSON is one of a user's usd budgets in the summary, in dollars:
// the usage card shows what is left of the money as it does of the calls.
type budgetJSON struct {
	// LimitType is the budget's calendar period: day, week or month.
	LimitType string `json:"limit_type"`
	// LimitUSD is the budget.
	LimitUSD usd.Amount `json:"limit_usd"`
	// SpentUSD is what the period has spent of it, at most LimitUSD
	// (a budget in debt reports it whole).
	SpentUSD usd.Amount `json:"spent_usd"`
	// RemainingUSD is LimitUSD less SpentUSD.
	RemainingUSD usd.Amount `json:"remaining_usd"`
	// PeriodEnd is when the period ends and the budget is whole again.
	PeriodEnd string `json:"period_end"`
	// Provider, Model and TeamID are the rule's scope; empty when unscoped.
	Provider string `json:"provider,omitempty"`
	Model    string `json:"model,omitempty"`
	TeamID   string `json:"team_id,omitempty"`
	// Per and Pool name a shared budget (per team or all) and its pool.
	Per  string `json:"per,omitempty"`
	Pool string `json:"pool,omitempty"`
}

// budgetsOf picks the usd budgets of statuses, as /v1/limits reports them.
func budgetsOf(statuses []limiter.Status) []budgetJSON {
	out := []budgetJSON{}
	for _, s := range statuses {
		if s.Unit != limiter.USD {
			continue
		}
		b := budgetJSON{LimitType: s.Window.String(), LimitUSD: usd.Amount(s.Limit), SpentUSD: usd.Amount(s.Limit - s.Remaining),
			RemainingUSD: usd.Amount(s.Remaining), PeriodEnd: formatResetAt(s.ResetAt), Provider: s.Provider, Model: s.Model,
			TeamID: s.TeamID, Pool: s.Pool}
		if s.Per != limiter.PerUser {
			b.Per = s.Per.String()
		}
		out = append(out, b)
	}
	return out
}

// serveStats answers the seed's get_usage_stats(user_id, days).
func (c *Collector) serveStats(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	days, err := intParam(q.Get("days"), 30, 1, MaxStatsDays, "days")
	if err != nil {
		writeError(w, err)
		return
	}
	user, team := q.Get("user_id"), q.Get("team_id")
	if err := teamParam(team); err != nil {
		writeError(w, err)
		return
	}
	today := c.clock.Now().UTC().Truncate(24 * time.Hour)
	since := today.AddDate(0, 0, -(days - 1))
	u, err := c.usage.Usage(r.Context(), usage.Query{UserID: user, TeamID: team, Since: since})
	if err != nil {
		writeError(w, storeError(err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"user_id":           nullable(user),
		"team_id":           nullable(team),
		"days":              days,
		"since":             since.Format(time.DateOnly),
		"total_calls":       u.Calls,
		"total_errors":      u.Errors,
		"total_tokens":      u.Tokens,
		"prompt_tokens":     u.PromptTokens,
		"completion_tokens": u.CompletionTokens,
		"cost_usd":          u.CostUSD,
		"unpriced_calls":    u.UnpricedCalls,
		"by_model":          u.ByModel,
		"by_provider":       u.ByProvider,
		"by_team":           u.ByTeam,
		"by_day":            u.ByDay,
	})
}

// serveLogs answers a page of stored records, newest first.
func (c *Collector) serveLogs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, err := intParam(q.Get("limit"), DefaultLogsLimit, 1, MaxLogsLimit, "limit")
	if err != nil {
		writeError(w, err)
		return
	}
	if err := teamParam(q.Get("team_id")); err != nil {
		writeError(w, err)
		return
	}
	page, err := c.usage.Logs(r.Context(), usage.LogQuery{
		UserID: q.Get("user_id"), TeamID: q.Get("team_id"), Model: q.Get("model"), Provider: provider.Normalize(q.Get("provider")),
		Limit: limit, Before: q.Get("before"),
	})
	if errors.Is(err, usage.ErrBadCursor) {
		writeError(w, &Error{Status: http.StatusBadRequest, Message: err.Error(), Details: []Detail{{Field: "before", Message: "is not a next_cursor value"}}})
		return
	}
	if err != nil {
		writeError(w, storeError(err))
		return
	}
	writeJSON(w, http.StatusOK, page)
}

// teamParam checks a ?team_id= filter as intake checks a record's.
func teamParam(team string) error {
	if problem := textProblem(team, false, true, MaxIDLength); problem != "" {
		return &Error{Status: http.StatusBadRequest, Message: "cannot use this team_id: it " + problem,
			Details: []Detail{{Field: "team_id", Message: problem}}}
	}
	return nil
}

func intParam(raw string, def, lo, hi int, name string) (int, error) {
	if raw == "" {
		return def, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < lo || n > hi {
		return 0, &Error{Status: http.StatusBadRequest, Message: "cannot use " + name + "=" + strconv.Quote(raw),
			Details: []Detail{{Field: name, Message: "must be an integer from " + strconv.Itoa(lo) + " to " + strconv.Itoa(hi)}}}
	}
	return n, nil
}

// storeError answers a database failure with 503: the request was fine,
// the database is not.
func storeError(err error) error {
	return &Error{Status: http.StatusServiceUnavailable, Message: err.Error()}
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}
