package exporter

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// persistMetrics describe the batched writer that stores records.
type persistMetrics struct {
	persisted    prometheus.Counter
	errors       prometheus.Counter
	deadLettered prometheus.Counter
	duplicates   prometheus.Counter
	flush        *prometheus.HistogramVec
	// deleted and summarySteps describe the upkeep of the usage tables.
	deleted      prometheus.Counter
	summarySteps *prometheus.CounterVec
	summaryStep  prometheus.Histogram
}

func newPersistMetrics() *persistMetrics {
	m := &persistMetrics{
		persisted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmusage_persisted_records_total",
			Help: "Records written to the store (a redelivered request_id counts, but is stored once).",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmusage_persist_errors_total",
			Help: "Batches the store refused or could not be reached for; their records stay queued and are retried.",
		}),
		deadLettered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmusage_persist_dead_lettered_total",
			Help: "Records the store rejected (a value the database refuses), moved to the dead-letter file so that the records behind them are stored.",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmusage_persist_duplicates_total",
			Help: "Records not stored because their request_id was stored already: a replay after a crash or a retried POST (harmless), or a client reusing request_ids for different calls (their usage is not stored).",
		}),
		flush: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "llmusage_persist_flush_duration_seconds",
			Help:    "Duration of one batch write to the store, by result (ok or error).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"result"}),
		deleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmusage_store_rows_deleted_total",
			Help: "Rows of llm_usage_logs this sidecar deleted past --retention.",
		}),
		summarySteps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmusage_store_rollup_steps_total",
			Help: "Steps of llm_usage_daily_summary by result: ok, skipped (another sidecar held the lock) or error.",
		}, []string{"result"}),
		summaryStep: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "llmusage_store_rollup_step_duration_seconds",
			Help:    "Duration of this sidecar's steps of llm_usage_daily_summary that it ran (result ok).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
	}
	// Every result from the start, at 0, so that rates and alerts see a
	// series before the first step (as client_golang advises for known
	// label values).
	for _, result := range []string{"ok", "skipped", "error"} {
		m.summarySteps.WithLabelValues(result)
	}
	return m
}

// ObserveDeleted counts rows deleted past the retention.
func (e *Exporter) ObserveDeleted(n int) { e.persist.deleted.Add(float64(n)) }

// ObserveSummaryStep counts one step of the daily summary.
func (e *Exporter) ObserveSummaryStep(_ int, held bool, d time.Duration, err error) {
	switch {
	case err != nil:
		e.persist.summarySteps.WithLabelValues("error").Inc()
	case !held:
		e.persist.summarySteps.WithLabelValues("skipped").Inc()
	default:
		e.persist.summarySteps.WithLabelValues("ok").Inc()
		e.persist.summaryStep.Observe(d.Seconds())
	}
}

// ObserveFlush records one batch write of the persistence writer.
func (e *Exporter) ObserveFlush(n int, d time.Duration, err error) {
	if err != nil {
		e.persist.errors.Inc()
		e.persist.flush.WithLabelValues("error").Observe(d.Seconds())
		return
	}
	e.persist.persisted.Add(float64(n))
	e.persist.flush.WithLabelValues("ok").Observe(d.Seconds())
}

// ObserveDuplicates counts records whose request_id was stored already.
func (e *Exporter) ObserveDuplicates(n int) { e.persist.duplicates.Add(float64(n)) }

// ObserveDeadLettered counts a record the store rejected.
func (e *Exporter) ObserveDeadLettered() { e.persist.deadLettered.Inc() }

// addGauge exports fn, read at scrape time, as a gauge: state such as
// queue lengths belongs to its owner and is only read here.
func (e *Exporter) addGauge(name, help string, fn func() float64) {
	e.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, fn))
}

// Backlog is what the persistence pipeline tells about itself at scrape
// time: the records waiting for the store, and whether it is reachable.
type Backlog interface {
	// Len is the number of accepted records the store does not have yet.
	Len() int
	// StoreErr is why the last write to (or ping of) the store failed, or nil.
	StoreErr() error
}

// Spool is the durable queue's size, read at scrape time.
type Spool interface {
	// Len is the number of records in the spool.
	Len() int
	// Bytes is the size of those records.
	Bytes() int64
	// MaxBytes is the bound past which records are refused.
	MaxBytes() int64
}

// WatchPersistence exports the backlog's gauges, and the spool's when
// spool is not nil (--durability=memory has none). Call it once.
func (e *Exporter) WatchPersistence(backlog Backlog, spool Spool) {
	e.addGauge("llmusage_persist_queue_records", "Accepted records waiting to be written to the store.",
		func() float64 { return float64(backlog.Len()) })
	e.addGauge("llmusage_store_up", "Whether the last write to, or ping of, the store succeeded (1) or not (0).", func() float64 {
		if backlog.StoreErr() != nil {
			return 0
		}
		return 1
	})
	if spool == nil {
		return
	}
	e.addGauge("llmusage_spool_records", "Records in the spool that the store does not have yet.",
		func() float64 { return float64(spool.Len()) })
	e.addGauge("llmusage_spool_bytes", "Bytes of the records in the spool that the store does not have yet.",
		func() float64 { return float64(spool.Bytes()) })
	e.addGauge("llmusage_spool_max_bytes", "Bound on llmusage_spool_bytes (--spool-max-bytes); at it, records are refused.",
		func() float64 { return float64(spool.MaxBytes()) })
}
