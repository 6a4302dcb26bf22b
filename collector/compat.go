package collector

import (
	"net/http"
	"strings"

	"github.com/llmusage/llmusage/limiter"
)

// seedLimit is the answer of the seed's check_rate_limit, for the
// requests unit of one limit type. Limit, Used, Remaining and ResetAt are
// null when no rule of that type applies, in which case nothing limits the user.
type seedLimit struct {
	CanCall   bool    `json:"can_call"`
	LimitType string  `json:"limit_type"`
	Limit     *int64  `json:"limit"`
	Used      *int64  `json:"used"`
	Remaining *int64  `json:"remaining"`
	ResetAt   *string `json:"reset_at"`
}

// serveSeedRateLimit answers GET /api/llm/usage/rate-limit/{type} like the
// seed's check_rate_limit(user_id, limit_type).
func (c *Collector) serveSeedRateLimit(w http.ResponseWriter, r *http.Request) {
	w2, err := limiter.ParseWindow(r.PathValue("type"))
	if err != nil || w2 > limiter.Day {
		writeError(w, errorf(http.StatusNotFound, "cannot find limit type %q: valid types are %s", r.PathValue("type"), windowList()))
		return
	}
	user, err := requiredUser(r)
	if err != nil {
		writeError(w, err)
		return
	}
	team, err := optionalTeam(r)
	if err != nil {
		writeError(w, err)
		return
	}
	statuses, err := c.limiter.Limits(user, team, "", "")
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, seedLimitOf(w2, statuses))
}

// serveSeedRateLimits answers GET /api/llm/usage/rate-limits with the
// seed's check_rate_limit answer for every limit type, keyed by type.
func (c *Collector) serveSeedRateLimits(w http.ResponseWriter, r *http.Request) {
	user, err := requiredUser(r)
	if err != nil {
		writeError(w, err)
		return
	}
	team, err := optionalTeam(r)
	if err != nil {
		writeError(w, err)
		return
	}
	statuses, err := c.limiter.Limits(user, team, "", "")
	if err != nil {
		writeError(w, err)
		return
	}
	out := make(map[string]seedLimit, len(seedWindows))
	for _, win := range seedWindows {
		out[win.String()] = seedLimitOf(win, statuses)
	}
	writeJSON(w, http.StatusOK, out)
}

// seedLimitOf picks the unscoped requests bucket of a window; Limits lists
// those before any provider- or model-scoped bucket.
//
// Where pools apply beside the user's own limit (per: team or all), the
// answer is the tightest of them, the one with the least left: a call
// needs every one.
func seedLimitOf(win limiter.Window, statuses []limiter.Status) seedLimit {
	var tightest *limiter.Status
	for i := range statuses {
		s := &statuses[i]
		if s.Window != win || s.Unit != limiter.Requests || s.Provider != "" || s.Model != "" {
			continue
		}
		if tightest == nil || s.Remaining < tightest.Remaining {
			tightest = s
		}
	}
	if tightest == nil {
		return seedLimit{CanCall: true, LimitType: win.String()}
	}
	s := *tightest
	used := s.Limit - s.Remaining
	resetAt := formatResetAt(s.ResetAt)
	return seedLimit{CanCall: s.Remaining >= 1, LimitType: win.String(), Limit: &s.Limit, Used: &used, Remaining: &s.Remaining, ResetAt: &resetAt}
}

// seedWindows are the seed's limit types, the request limits its
// check_rate_limit answers for; week and month are budgets' only.
var seedWindows = limiter.Windows[:limiter.Day+1]

func windowList() string {
	names := make([]string, len(seedWindows))
	for i, w := range seedWindows {
		names[i] = w.String()
	}
	return strings.Join(names, ", ")
}
