package main

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/proxy"
	"github.com/llmusage/llmusage/usd"
)

// logStart tells, at start, what the sidecar will do with a call: each
// proxy route and where it goes, and each rule in force and where it came
// from, so that a typo in --upstream or the limits file shows in the first
// lines of the log rather than at the first refused call.
func logStart(logger *slog.Logger, upstreams []proxy.Upstream, rules []limiter.Rule) {
	for _, u := range upstreams {
		key := "the client's"
		if u.Key != "" {
			key = "--upstream-key-file"
		}
		logger.Info("proxy route", "route", "/"+u.Name+"/", "upstream", u.URL.Redacted(), "provider", u.Provider, "key", key)
	}
	if len(rules) == 0 {
		logger.Info("no rule in force: nothing is limited")
	}
	for _, r := range rules {
		logger.Info("rule in force", "scope", ruleScope(r), "limit", ruleLimit(r), "source", r.Source)
	}
}

// ruleScope is who and what a rule applies to, as the limits file says it.
func ruleScope(r limiter.Rule) string {
	var parts []string
	for _, p := range []struct{ key, value string }{
		{"user_id", r.UserID}, {"team_id", r.TeamID}, {"provider", r.Provider}, {"model", r.Model},
	} {
		if p.value != "" {
			parts = append(parts, p.key+"="+p.value)
		}
	}
	if r.Per != limiter.PerUser {
		parts = append(parts, "per="+r.Per.String())
	}
	if len(parts) == 0 {
		return "every user"
	}
	return strings.Join(parts, " ")
}

// ruleLimit is a rule's amount and window: 30 requests per minute, $50
// per month, 2 concurrent.
func ruleLimit(r limiter.Rule) string {
	switch r.Unit {
	case limiter.USD:
		return fmt.Sprintf("$%s per %s", usd.Amount(r.Limit), r.Window)
	case limiter.Concurrent:
		return fmt.Sprintf("%d concurrent", r.Limit)
	}
	return fmt.Sprintf("%d %s per %s", r.Limit, r.Unit, r.Window)
}
