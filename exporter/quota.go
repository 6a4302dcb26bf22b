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
	limiter   *limiter.Limiter
	guard     *userGuard
	limit     *prometheus.Desc
	remaining *prometheus.Desc
}

// quotaLabels: provider and model are empty for unscoped rules, which
// Prometheus treats as absent.
var quotaLabels = []string{"user", "limit_type", "unit", "provider", "model"}

func newQuotaCollector(l *limiter.Limiter, g *userGuard) *quotaCollector {
	return &quotaCollector{
		limiter: l,
		guard:   g,
		limit: prometheus.NewDesc("llm_quota_limit",
			"Capacity of the user's token bucket for a limit type and unit (requests or tokens), or the user's budget in US dollars (unit usd, a calendar day, week or month); provider and model are set for scoped rules.",
			quotaLabels, nil),
		remaining: prometheus.NewDesc("llm_quota_remaining",
			"Whole units left in the user's token bucket now, or dollars left in the budget's period; 0 while the bucket is in debt or the budget overspent.",
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
	// for at most --metrics-max-users of them.
	tracked := c.guard.users()
	var samples []quotaSample
	c.limiter.Each(func(user string, s limiter.Status) {
		if tracked[user] {
			samples = append(samples, quotaSample{user, s})
		}
	})
	for _, q := range samples {
		s := q.status
		labels := []string{labelValue(q.user), s.Window.String(), s.Unit.String(), labelValue(s.Provider), labelValue(s.Model)}
		limit, remaining := float64(s.Limit), float64(s.Remaining)
		if s.Unit == limiter.USD { // in dollars, the base unit
			limit, remaining = usd.Amount(s.Limit).Float(), usd.Amount(s.Remaining).Float()
		}
		ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, limit, labels...)
		ch <- prometheus.MustNewConstMetric(c.remaining, prometheus.GaugeValue, remaining, labels...)
	}
}
