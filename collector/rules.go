package collector

import (
	"encoding/json"
	"net/http"
	"net/url"
	"unicode/utf8"

	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/provider"
)

// serveRules answers GET /v1/rules: the rules in force and the ones they
// shadow, each with its source; with user_id, provider or model, the rule
// that applies to such a call for each limit type and unit, as a check
// chooses it.
func (c *Collector) serveRules(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if !q.Has("user_id") && !q.Has("provider") && !q.Has("model") {
		set := c.rules()
		out := struct {
			Rules    []ruleJSON `json:"rules"`
			Shadowed []ruleJSON `json:"shadowed"`
		}{Rules: make([]ruleJSON, 0, len(set.InForce)), Shadowed: make([]ruleJSON, 0, len(set.Shadowed))}
		for _, rule := range set.InForce {
			out.Rules = append(out.Rules, newRuleJSON(rule))
		}
		for _, s := range set.Shadowed {
			j := newRuleJSON(s.Rule)
			j.ShadowedBy = s.By
			out.Shadowed = append(out.Shadowed, j)
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	var user string
	if q.Has("user_id") {
		var err error
		if user, err = requiredUser(r); err != nil {
			writeError(w, err)
			return
		}
	}
	prov, model, err := c.queryScope(q)
	if err != nil {
		writeError(w, err)
		return
	}
	team, err := optionalTeam(r)
	if err != nil {
		writeError(w, err)
		return
	}
	applicable := c.limiter.Applicable(user, team, prov, model)
	out := struct {
		UserID     string     `json:"user_id"`
		TeamID     string     `json:"team_id,omitempty"`
		Provider   string     `json:"provider"`
		Model      string     `json:"model"`
		Applicable []ruleJSON `json:"applicable"`
	}{UserID: user, TeamID: team, Provider: prov, Model: model, Applicable: make([]ruleJSON, 0, len(applicable))}
	for _, rule := range applicable {
		out.Applicable = append(out.Applicable, newRuleJSON(rule))
	}
	writeJSON(w, http.StatusOK, out)
}

// queryScope is the provider and model a quota read asks about, held to
// the bounds intake holds records to (no record could carry others): the
// provider parameter, normalised as intake normalises it, else inferred
// from the model parameter as for a record.
func (c *Collector) queryScope(q url.Values) (prov, model string, err error) {
	model = q.Get("model")
	for _, f := range []struct {
		name, value string
		maxLen      int
	}{{"provider", q.Get("provider"), MaxProviderLength}, {"model", model, MaxIDLength}} {
		problem := lengthOrControl(f.value, f.maxLen, true)
		if problem == "" && !utf8.ValidString(f.value) {
			problem = "must be valid UTF-8"
		}
		if problem != "" {
			return "", "", &Error{Status: http.StatusBadRequest, Message: "cannot answer for this " + f.name + ": it " + problem,
				Details: []Detail{{Field: f.name, Message: problem}}}
		}
	}
	if prov = provider.Normalize(q.Get("provider")); prov == "" && model != "" {
		prov = c.rules().Providers.Infer(model)
	}
	return prov, model, nil
}

// ruleJSON is a rule as /v1/rules shows it.
type ruleJSON struct {
	LimitType string         `json:"limit_type"`
	Unit      string         `json:"unit"`
	Limit     json.Marshaler `json:"limit"`
	UserID    string         `json:"user_id,omitempty"`
	TeamID    string         `json:"team_id,omitempty"`
	// Per is who shares the rule's buckets: team or all; omitted for
	// user, each user's own.
	Per        string `json:"per,omitempty"`
	Provider   string `json:"provider,omitempty"`
	Model      string `json:"model,omitempty"`
	Source     string `json:"source"`
	ShadowedBy string `json:"shadowed_by,omitempty"`
}

func newRuleJSON(r limiter.Rule) ruleJSON {
	j := ruleJSON{LimitType: r.Window.String(), Unit: r.Unit.String(), Limit: limitValue(r.Unit, r.Limit),
		UserID: r.UserID, TeamID: r.TeamID, Provider: r.Provider, Model: r.Model, Source: r.Source}
	if r.Per != limiter.PerUser {
		j.Per = r.Per.String()
	}
	return j
}
