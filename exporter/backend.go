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
	// recoveries, released and duplicates count what keeps the shared
	// limits exact through faults (redisquota's recover.go and holds.go).
	recoveries *prometheus.CounterVec
	released   *prometheus.CounterVec
	duplicates prometheus.Counter
	rules      *prometheus.GaugeVec
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
		recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmusage_quota_recoveries_total",
			Help: "Times this replica put its part back into the shared quota store, by reason (lost: Redis lost its state; restart: first contact after a restart on the same data directory; write_back: what the fail mode debited during an outage).",
		}, []string{"reason"}),
		released: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmusage_quota_holds_released_total",
			Help: "Check estimates given back without their record, by reason (expired: no record within 15 minutes; replica_gone: the replica that held them left the registry).",
		}, []string{"reason"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmusage_quota_duplicate_records_total",
			Help: "Records not charged because a record of the same request_id was charged already, by any replica (a client's retry).",
		}),
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
	e.reg.MustRegister(e.backend.duration, e.backend.errors, e.backend.fallbacks, e.backend.recoveries, e.backend.released, e.backend.duplicates)
	for _, r := range []string{"lost", "restart", "write_back"} {
		e.backend.recoveries.WithLabelValues(r)
	}
	for _, r := range []string{"expired", "replica_gone"} {
		e.backend.released.WithLabelValues(r)
	}
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

// ObserveQuotaRecovery counts a recovery of the shared quota state.
func (e *Exporter) ObserveQuotaRecovery(reason string) {
	e.backend.recoveries.WithLabelValues(reason).Inc()
}

// ObserveQuotaHoldsReleased counts estimates given back without their record.
func (e *Exporter) ObserveQuotaHoldsReleased(reason string, n int) {
	e.backend.released.WithLabelValues(reason).Add(float64(n))
}

// ObserveQuotaDuplicate counts a record charged already.
func (e *Exporter) ObserveQuotaDuplicate() { e.backend.duplicates.Inc() }

// SetRulesDigest exports the digest of the rules now in force.
func (e *Exporter) SetRulesDigest(sha256 string) {
	e.backend.rules.Reset()
	e.backend.rules.WithLabelValues(sha256).Set(1)
}

// FileReloads is how the limits file's reloads went (rules.Manager).
type FileReloads interface {
	FileReloads() (failures uint64, lastOK bool, loaded time.Time)
}

// WatchFileReloads exports how the limits file's reloads (SIGHUP or a
// change to the file) went. Call it once, with a limits file.
func (e *Exporter) WatchFileReloads(r FileReloads) {
	e.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "llmusage_rules_file_reload_failures_total",
		Help: "Reloads of the limits file (SIGHUP, or a change to the file) that failed: unreadable, invalid or refused; the previous rules stayed in force.",
	}, func() float64 { n, _, _ := r.FileReloads(); return float64(n) }))
	e.addGauge("llmusage_rules_file_last_reload_successful", "Whether the last load of the limits file, at start or on reload, succeeded (1) or failed and left the previous rules in force (0).", func() float64 {
		if _, ok, _ := r.FileReloads(); ok {
			return 1
		}
		return 0
	})
	e.addGauge("llmusage_rules_file_last_reload_success_timestamp_seconds", "When the rules in force were last loaded from the limits file, at start or on reload, in Unix seconds.", func() float64 {
		_, _, at := r.FileReloads()
		return float64(at.UnixNano()) / 1e9
	})
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
