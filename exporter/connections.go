package exporter

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmusage/llmusage/store"
)

// Connections is a store that reports its database connections (Postgres;
// the embedded SQLite file has none).
type Connections interface {
	Connections() store.ConnStats
}

// connCollector builds llmusage_store_connections from the pool's state
// at scrape time: the pool owns it, and a scrape must not wait for it.
type connCollector struct {
	conns     Connections
	byState   *prometheus.Desc
	maxConns  *prometheus.Desc
	listening *prometheus.Desc
}

// WatchConnections exports the store's connections. Call it once.
func (e *Exporter) WatchConnections(c Connections) {
	e.reg.MustRegister(&connCollector{
		conns: c,
		byState: prometheus.NewDesc("llmusage_store_connections",
			"Connections of the store's pool to --database-url, by state: idle, acquired (a query, or the held LISTEN), constructing.", []string{"state"}, nil),
		maxConns: prometheus.NewDesc("llmusage_store_max_connections",
			"Bound on the pool's connections (--database-max-conns).", nil, nil),
		listening: prometheus.NewDesc("llmusage_store_listen_connections",
			"Connections to --database-listen-url held for LISTEN (0 or 1; outside the pool).", nil, nil),
	})
}

func (c *connCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.byState
	ch <- c.maxConns
	ch <- c.listening
}

func (c *connCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.conns.Connections()
	ch <- prometheus.MustNewConstMetric(c.byState, prometheus.GaugeValue, float64(s.Idle), "idle")
	ch <- prometheus.MustNewConstMetric(c.byState, prometheus.GaugeValue, float64(s.Acquired), "acquired")
	ch <- prometheus.MustNewConstMetric(c.byState, prometheus.GaugeValue, float64(s.Constructing), "constructing")
	ch <- prometheus.MustNewConstMetric(c.maxConns, prometheus.GaugeValue, float64(s.Max))
	ch <- prometheus.MustNewConstMetric(c.listening, prometheus.GaugeValue, float64(s.Listening))
}
