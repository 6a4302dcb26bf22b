package exporter

import (
	"context"
	"errors"
	"io"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// backendMetrics describe the shared quota store (Redis) and the rules
// each replica enforces.
type backendMetrics struct {
	duration  *prometheus.HistogramVec
	errors    *prometheus.CounterVec
	fallbacks *prometheus.CounterVec
	rules     *prometheus.GaugeVec
}

func newBackendMetrics() *backendMetrics {
	return &backendMetrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "llmusage_quota_backend_duration_seconds",
			Help:    "Duration of calls to the shared quota store, by operation (take: a check; charge: a record; read; replicas; ping), failed ones included.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25},
		}, []string{"op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmusage_quota_backend_errors_total",
			Help: "Failed calls to the shared quota store, by operation and kind (timeout: no answer within --redis-timeout; connection: refused or lost; other: an error answer).",
		}, []string{"op", "kind"}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmusage_quota_fallback_checks_total",
			Help: "Checks answered by --redis-fail-mode (local shares, open or closed) because the shared quota store was out of reach.",
		}, []string{"mode"}),
		rules: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "llmusage_rules_info",
			Help: "The rules in force, by the SHA-256 of their content: replicas with different values enforce different limits (a half-rolled ConfigMap).",
		}, []string{"sha256"}),
	}
}

// QuotaBackend is the shared quota store's state, read at scrape time.
type QuotaBackend interface {
	// Err is why the store is out of reach, or nil.
	Err() error
	// Replicas is the number of live replicas last seen.
	Replicas() int
}

// WatchQuotaBackend exports the shared quota store's gauges. Call it once.
func (e *Exporter) WatchQuotaBackend(b QuotaBackend) {
	e.reg.MustRegister(e.backend.duration, e.backend.errors, e.backend.fallbacks)
	e.addGauge("llmusage_quota_backend_up", "Whether the shared quota store (Redis) answers (1) or checks go to --redis-fail-mode (0).", func() float64 {
		if b.Err() != nil {
			return 0
		}
		return 1
	})
	e.addGauge("llmusage_quota_replicas", "Live replicas sharing the quota store, as last seen in its registry; each one's share of a limit while the store is out of reach is limit / this.",
		func() float64 { return float64(b.Replicas()) })
}

// ObserveQuotaBackend records one call to the shared quota store.
func (e *Exporter) ObserveQuotaBackend(op string, d time.Duration, err error) {
	e.backend.duration.WithLabelValues(op).Observe(d.Seconds())
	if err != nil {
		e.backend.errors.WithLabelValues(op, errorKind(err)).Inc()
	}
}

// ObserveQuotaFallback counts a check answered by the fail mode.
func (e *Exporter) ObserveQuotaFallback(mode string) { e.backend.fallbacks.WithLabelValues(mode).Inc() }

// SetRulesDigest exports the digest of the rules now in force.
func (e *Exporter) SetRulesDigest(sha256 string) {
	e.backend.rules.Reset()
	e.backend.rules.WithLabelValues(sha256).Set(1)
}

func errorKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.As(err, new(*net.OpError)), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection"
	}
	return "other"
}
