package exporter

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmusage/llmusage/limiter"
)

// estimatesCollector exports the limiter's count of check estimates. An
// estimate that expires unsettled is the visible trace of a client that
// does not echo the check's request_id in its record: such a call is
// charged twice, once by the check and once by the record.
type estimatesCollector struct {
	limiter                   *limiter.Limiter
	pending, expired, dropped *prometheus.Desc
}

func newEstimatesCollector(l *limiter.Limiter) *estimatesCollector {
	return &estimatesCollector{
		limiter: l,
		pending: prometheus.NewDesc("llmusage_limiter_estimates",
			"Token estimates of allowed checks waiting for the record with the same request_id.", nil, nil),
		expired: prometheus.NewDesc("llmusage_limiter_estimates_expired_total",
			"Estimates forgotten without their record within the pending TTL: calls not made, or records without the check's request_id, charged twice.", nil, nil),
		dropped: prometheus.NewDesc("llmusage_limiter_estimates_dropped_total",
			"Estimates not remembered because the bound on pending ones was reached; their records are charged in full.", nil, nil),
	}
}

func (c *estimatesCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.pending
	ch <- c.expired
	ch <- c.dropped
}

func (c *estimatesCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.limiter.Estimates()
	ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(s.Pending))
	ch <- prometheus.MustNewConstMetric(c.expired, prometheus.CounterValue, float64(s.Expired))
	ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(s.Dropped))
}
