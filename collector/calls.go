package collector

import (
	"fmt"
	"time"

	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/provider"
	"github.com/llmusage/llmusage/record"
)

// Call is a check asked for in code rather than by POST /v1/check: by the
// proxy, for the calls it forwards.
type Call struct {
	// UserID, Provider and Model identify the call; Provider is
	// normalised, and inferred from the model when empty.
	UserID, Provider, Model string
	// TeamID is the team the call is for; empty for none.
	TeamID string
	// PromptTokens and MaxTokens estimate it, as a check's fields do.
	PromptTokens, MaxTokens int64
}

// Check decides a call as POST /v1/check does (estimate, cost, budgets,
// metrics). The request_id returned is the one its record must carry.
func (c *Collector) Check(call Call) (d limiter.Decision, requestID string, err error) {
	now := c.clock.Now()
	req := checkRequest{UserID: call.UserID, TeamID: call.TeamID, Model: call.Model, Provider: call.Provider,
		Tokens: call.PromptTokens + call.MaxTokens, PromptTokens: call.PromptTokens, MaxTokens: call.MaxTokens,
		RequestID: newRequestID(now)}
	for _, f := range []struct{ name, value string }{{"user_id", req.UserID}, {"model", req.Model}} {
		if problem := lengthOrControl(f.value, MaxIDLength, true); problem != "" || f.value == "" {
			if problem == "" {
				problem = "is required"
			}
			return limiter.Decision{}, "", &Error{Status: 400, Message: fmt.Sprintf("cannot check: %s %s", f.name, problem),
				Details: []Detail{{Field: f.name, Message: problem}}}
		}
	}
	if problem := textProblem(req.TeamID, false, true, MaxIDLength); problem != "" {
		return limiter.Decision{}, "", &Error{Status: 400, Message: "cannot check: team_id " + problem,
			Details: []Detail{{Field: "team_id", Message: problem}}}
	}
	req.Provider = c.normaliseProvider(req.Provider, req.Model)
	lr := limiter.Request{UserID: req.UserID, TeamID: req.TeamID, Provider: req.Provider, Model: req.Model, Tokens: req.Tokens, RequestID: req.RequestID}
	cost, priced := checkCost(c.rules().Prices, &req, now)
	lr.Cost, lr.Unpriced = int64(cost), !priced
	d, err = c.limiter.Check(lr)
	if err != nil {
		return d, "", err
	}
	c.observer.ObserveCheck(req.UserID, d.Allowed)
	return d, req.RequestID, nil
}

// Accept takes records made in code (the proxy's) as POST /v1/calls takes
// posted ones: priced unless they carry a cost, persisted, charged and
// counted. The records must be valid; Provider is normalised here.
func (c *Collector) Accept(recs []record.Record) error {
	now := c.clock.Now().UTC()
	for i := range recs {
		r := &recs[i]
		c.fillDefaults(r, now)
		if r.RequestID == "" {
			r.RequestID = newRequestID(now)
		}
		r.TotalTokens = max(r.TotalTokens, r.PromptTokens+r.CompletionTokens)
		if !r.HasCost {
			r.Cost, r.HasCost = c.rules().Prices.Cost(r.Provider, r.Model, r.Timestamp, usageOf(r))
		}
	}
	return c.apply(recs, now)
}

// Submit takes records decoded in code from another format (OTLP spans)
// by the rules of POST /v1/calls, but record by record: the valid ones
// are accepted as Accept accepts them, and each invalid one is refused
// with its Details (Index is its position in recs) without refusing the
// others, as OTLP's partial success wants. A record without a timestamp
// is stamped now, one without a total gets prompt + completion, one
// without a request_id gets a new one; recs is normalised in place. err
// is for the valid records not taken (a full spool: retry later); n
// counts those taken.
func (c *Collector) Submit(recs []record.Record) (n int, details []Detail, err error) {
	now := c.clock.Now().UTC()
	valid := make([]record.Record, 0, len(recs))
	bad := map[int]bool{}
	for i := range recs {
		r := &recs[i]
		c.fillDefaults(r, now)
		if r.TotalTokens == 0 {
			r.TotalTokens = r.PromptTokens + r.CompletionTokens
		}
		if ds := checkRecord(r, i, now); len(ds) > 0 {
			details = append(details, ds...)
			bad[i] = true
		}
	}
	for _, d := range repeatedRequestIDs(recs) {
		details = append(details, d)
		bad[d.Index] = true
	}
	for i := range recs {
		if bad[i] {
			continue
		}
		r := recs[i]
		if r.RequestID == "" {
			r.RequestID = newRequestID(now)
		}
		if !r.HasCost {
			r.Cost, r.HasCost = c.rules().Prices.Cost(r.Provider, r.Model, r.Timestamp, usageOf(&r))
		}
		valid = append(valid, r)
	}
	sortDetails(details)
	if len(bad) > 0 {
		c.observer.ObserveRejected(len(bad))
	}
	if len(valid) == 0 {
		return 0, details, nil
	}
	if err := c.apply(valid, now); err != nil {
		return 0, details, err
	}
	return len(valid), details, nil
}

// fillDefaults completes a record made in code as intake completes a
// posted one: its provider normalised (or inferred), now for a missing
// timestamp, success for a missing status.
func (c *Collector) fillDefaults(r *record.Record, now time.Time) {
	r.Provider = c.normaliseProvider(r.Provider, r.Model)
	if r.Timestamp.IsZero() {
		r.Timestamp = now
	}
	if r.Status == "" {
		r.Status = record.StatusSuccess
	}
}

// normaliseProvider is a record's provider as intake resolves it.
func (c *Collector) normaliseProvider(prov, model string) string {
	if p := provider.Normalize(prov); p != "" {
		return p
	}
	if model == "" {
		return record.UnknownProvider
	}
	return c.rules().Providers.Infer(model)
}
