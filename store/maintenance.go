package store

import (
	"context"
	"log/slog"
	"time"

	"github.com/llmusage/llmusage/internal/clock"
)

// Maintainer is the upkeep of the usage tables that a fleet of sidecars
// on one database shares: each step takes a lock of the database's, so
// one sidecar does it at a time and the others skip it.
type Maintainer interface {
	// DeleteBefore deletes, in one transaction, up to batch rows of
	// llm_usage_logs created before cutoff, oldest first. held is false
	// when another sidecar holds the retention lock and nothing was done.
	DeleteBefore(ctx context.Context, cutoff time.Time, batch int) (deleted int, held bool, err error)
	// StepSummary moves the totals inserted since the last step into
	// llm_usage_daily_summary and returns the summary rows written. held
	// is false when another sidecar is doing it.
	StepSummary(ctx context.Context) (written int, held bool, err error)
}

// Advisory lock keys ("llmusag" and a number), one per kind of upkeep.
// The summary's is also taken by refresh_llm_usage_summary() itself
// (migration 00006), so that a step from cron waits for the fleet's.
const (
	summaryLockKey   int64 = 0x6c6c6d7573616701
	retentionLockKey int64 = 0x6c6c6d7573616702
)

// MaintenanceObserver receives the outcomes of the upkeep; Exporter
// implements it.
type MaintenanceObserver interface {
	// ObserveDeleted counts rows that retention deleted.
	ObserveDeleted(n int)
	// ObserveSummaryStep reports one summary step: done (written rows),
	// skipped (another sidecar held the lock) or failed (err).
	ObserveSummaryStep(written int, held bool, d time.Duration, err error)
}

// MaintenanceOptions configure RunMaintenance. Zero values take the defaults.
type MaintenanceOptions struct {
	// Retention is how long rows of llm_usage_logs are kept; 0 keeps them
	// all.
	Retention time.Duration
	// KeepSince, when set, returns the oldest time whose rows are still
	// needed at now (the start of the longest budget period in force):
	// retention never deletes rows a budget's spend is rebuilt from.
	KeepSince func(now time.Time) time.Time
	// RetentionInterval is the time between retention runs (10m); the
	// first runs at start.
	RetentionInterval time.Duration
	// SummaryInterval is the time between summary steps; 0 runs none
	// (another sidecar or cron runs refresh_llm_usage_summary()).
	SummaryInterval time.Duration
	// BatchSize is the most rows one retention transaction deletes (5000),
	// so that no transaction holds its locks for long.
	BatchSize int
	// Observer receives the outcomes; optional.
	Observer MaintenanceObserver
	// Clock tells the time; the wall clock when nil.
	Clock clock.Clock
	// Logger logs failures; slog.Default() when nil.
	Logger *slog.Logger
}

// RunMaintenance runs retention and summary steps until ctx is done.
// Failures are logged and retried at the next interval: the upkeep can
// wait, and an unreachable database is reported by the writer already.
func RunMaintenance(ctx context.Context, m Maintainer, opts MaintenanceOptions) {
	opts = opts.withDefaults()
	if opts.Retention <= 0 && opts.SummaryInterval <= 0 {
		return
	}
	var retention, summary <-chan time.Time
	if opts.Retention > 0 {
		t := time.NewTicker(opts.RetentionInterval)
		defer t.Stop()
		retention = t.C
		runRetention(ctx, m, opts)
	}
	if opts.SummaryInterval > 0 {
		t := time.NewTicker(opts.SummaryInterval)
		defer t.Stop()
		summary = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-retention:
			runRetention(ctx, m, opts)
		case <-summary:
			stepSummary(ctx, m, opts)
		}
	}
}

// RetentionCutoff is the time before which rows are deleted at now:
// now less the retention, or earlier where KeepSince needs older rows,
// and never after today's UTC midnight: the usage API reads today from
// the raw rows (whole days from the summary), so a retention shorter
// than a day keeps today's.
func (o MaintenanceOptions) RetentionCutoff(now time.Time) time.Time {
	cutoff := now.Add(-o.Retention)
	if today := now.UTC().Truncate(24 * time.Hour); today.Before(cutoff) {
		cutoff = today
	}
	if o.KeepSince != nil {
		if keep := o.KeepSince(now); keep.Before(cutoff) {
			cutoff = keep
		}
	}
	return cutoff
}

func (o MaintenanceOptions) withDefaults() MaintenanceOptions {
	if o.RetentionInterval <= 0 {
		o.RetentionInterval = 10 * time.Minute
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 5000
	}
	if o.Clock == nil {
		o.Clock = clock.System{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Observer == nil {
		o.Observer = nopMaintenanceObserver{}
	}
	return o
}

// runRetention deletes batch after batch until none is full, another
// sidecar takes over, or a batch fails.
func runRetention(ctx context.Context, m Maintainer, o MaintenanceOptions) {
	cutoff := o.RetentionCutoff(o.Clock.Now())
	for ctx.Err() == nil {
		deleted, held, err := m.DeleteBefore(ctx, cutoff, o.BatchSize)
		if err != nil {
			if ctx.Err() == nil {
				o.Logger.Warn("cannot delete usage rows past the retention; retrying at the next run", "cutoff", cutoff, "error", err)
			}
			return
		}
		o.Observer.ObserveDeleted(deleted)
		if !held || deleted < o.BatchSize {
			return
		}
	}
}

func stepSummary(ctx context.Context, m Maintainer, o MaintenanceOptions) {
	start := time.Now()
	written, held, err := m.StepSummary(ctx)
	if ctx.Err() != nil {
		return
	}
	o.Observer.ObserveSummaryStep(written, held, time.Since(start), err)
	if err != nil {
		o.Logger.Warn("cannot update llm_usage_daily_summary; the usage API stays exact, retrying at the next step", "error", err)
	}
}

type nopMaintenanceObserver struct{}

func (nopMaintenanceObserver) ObserveDeleted(int)                                 {}
func (nopMaintenanceObserver) ObserveSummaryStep(int, bool, time.Duration, error) {}
