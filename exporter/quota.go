package exporter

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/usd"
)

// quotaCollector builds llm_quota_limit and llm_quota_remaining at scrape
// time from the limiter's live buckets, as node_exporter builds state
// metrics, so that nothing has to be kept in sync between the two. Only
// users with series of their own (see userGuard) are exported. A user
// without a live bucket has its whole quota left; those series vanish
// until the user calls again.
type quotaCollector struct {
	limiter *limiter.Limiter
	guard   *userGuard
	// teams caps the team pools exported as guard caps the users: a
	// per: team rule without a team_id has a pool per team.
	teams     *userGuard
	limit     *prometheus.Desc
	remaining *prometheus.Desc
}

// quotaLabels: provider, model and team are empty for unscoped rules,
// which Prometheus treats as absent. per tells who shares the bucket: a
// pool (per "team" or "all") has an empty user, and a team pool's team
// is its team; a pool's series are the same on every replica, so that
// max without (instance, pod) makes one series per pool fleet-wide.
var quotaLabels = []string{"user", "limit_type", "unit", "provider", "model", "per", "team"}

func newQuotaCollector(l *limiter.Limiter, g, teams *userGuard) *quotaCollector {
	return &quotaCollector{
		limiter: l,
		guard:   g,
		teams:   teams,
		limit: prometheus.NewDesc("llm_quota_limit",
			"Capacity of the token bucket for a limit type and unit (requests or tokens), or the budget in US dollars (unit usd, a calendar day, week or month), of a user (per=\"user\") or of a pool shared by a team's users (per=\"team\") or by every call of its scope (per=\"all\"), whose user is empty; provider, model and team are set for scoped rules.",
			quotaLabels, nil),
		remaining: prometheus.NewDesc("llm_quota_remaining",
			"Whole units left in the token bucket now, or dollars left in the budget's period, of a user or a pool (see llm_quota_limit); 0 while the bucket is in debt or the budget overspent.",
			quotaLabels, nil),
	}
}

func (c *quotaCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.limit
	ch <- c.remaining
}

type quotaSample struct {
	user   string
	status limiter.Status
}

func (c *quotaCollector) Collect(ch chan<- prometheus.Metric) {
	// Copy the tracked users' buckets first: Each holds a limiter lock,
	// which must not wait on the registry reading ch. Only tracked users
	// are copied, so that a scrape during a flood of users costs memory
	// for at most --metrics-max-users of them, and team pools of at most
	// --metrics-max-teams teams (those with usage series).
	tracked, teams := c.guard.users(), c.teams.users()
	var samples []quotaSample
	c.limiter.Each(func(owner string, s limiter.Status) {
		switch per, id := limiter.ParseOwner(owner); {
		case per == limiter.PerAll, per == limiter.PerUser && tracked[owner], per == limiter.PerTeam && teams[labelValue(id)]:
			samples = append(samples, quotaSample{owner, s})
		}
	})
	for _, q := range samples {
		s := q.status
		per, id := limiter.ParseOwner(q.user)
		user, team := id, s.TeamID
		switch per {
		case limiter.PerTeam:
			user, team = "", id
		case limiter.PerAll:
			user = ""
		}
		labels := []string{labelValue(user), s.Window.String(), s.Unit.String(), labelValue(s.Provider), labelValue(s.Model), per.String(), labelValue(team)}
		limit, remaining := float64(s.Limit), float64(s.Remaining)
		if s.Unit == limiter.USD { // in dollars, the base unit
			limit, remaining = usd.Amount(s.Limit).Float(), usd.Amount(s.Remaining).Float()
		}
		ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, limit, labels...)
		ch <- prometheus.MustNewConstMetric(c.remaining, prometheus.GaugeValue, remaining, labels...)
	}
}
