package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/common/model"
	"google.golang.org/grpc"

	"github.com/llmusage/llmusage/internal/cli"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/redisquota"
	"github.com/llmusage/llmusage/rules"
	"github.com/llmusage/llmusage/store"
)

// maintenanceOptions reads --retention (a duration as Prometheus writes
// them, 90d or 2w, which time.ParseDuration cannot) and
// --summary-interval.
func maintenanceOptions(c *cli.Context) (store.MaintenanceOptions, error) {
	o := store.MaintenanceOptions{SummaryInterval: c.Duration("summary-interval")}
	if o.SummaryInterval < 0 {
		return o, fmt.Errorf("cannot use --summary-interval %s: want a positive duration, or 0 for none", o.SummaryInterval)
	}
	if v := c.String("retention"); v != "" {
		d, err := model.ParseDuration(v)
		if err != nil || d <= 0 {
			return o, fmt.Errorf("cannot use --retention %q: want a positive duration such as 90d, 2w or 36h, or empty to keep every row", v)
		}
		o.Retention = time.Duration(d)
	}
	return o, nil
}

// retentionKeepSince is MaintenanceOptions.KeepSince: the start of the
// budgets' current periods, or, while the database's rule rows could not
// be read (its budgets unknown), the beginning of time: retention then
// deletes nothing.
func retentionKeepSince(m *rules.Manager, loc *time.Location) func(time.Time) time.Time {
	return func(now time.Time) time.Time {
		if m.Stale() {
			return time.Time{}
		}
		return budgetPeriodsStart(m.Set().InForce, now, loc)
	}
}

// budgetPeriodsStart is the start of the earliest current period of the
// usd budgets in rules at now, or now without budgets: a budget's spend
// is rebuilt from its period's rows, which retention must keep.
func budgetPeriodsStart(rules []limiter.Rule, now time.Time, loc *time.Location) time.Time {
	start := now
	for _, r := range rules {
		if !r.IsBudget() {
			continue
		}
		if p := time.Unix(limiter.PeriodOf(r.Window, now, loc).Start, 0); p.Before(start) {
			start = p
		}
	}
	return start
}

// stopGRPC lets in-flight exports finish until ctx ends, then cuts them.
func stopGRPC(ctx context.Context, gs *grpc.Server, logger *slog.Logger) {
	done := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		gs.Stop()
		logger.Warn("cannot finish in-flight OTLP/gRPC exports in time")
	}
}

// hasBudget tells whether one of rules is a usd budget: the ledger of
// pending spend is kept only then.
func hasBudget(rules []limiter.Rule) bool {
	for _, r := range rules {
		if r.IsBudget() {
			return true
		}
	}
	return false
}

// openRedis connects to the shared quota store. Redis need not answer
// yet: until it does, checks are answered by the fail mode.
func openRedis(cfg redisConfig, stateFile string, observer redisquota.Observer, logger *slog.Logger) (*redisquota.Store, error) {
	client, err := redisquota.NewClient(cfg.URL, cfg.Cluster)
	if err != nil {
		return nil, fmt.Errorf("cannot parse --redis-url %s: %w", store.Redact(cfg.URL), err)
	}
	replica, _ := os.Hostname()
	replica += "/" + strconv.Itoa(os.Getpid())
	logger.Info("limits shared through Redis", "redis", store.Redact(cfg.URL), "cluster", cfg.Cluster,
		"timeout", cfg.Timeout, "fail_mode", string(cfg.FailMode), "prefix", cfg.Prefix, "replica", replica)
	return redisquota.New(redisquota.Options{Client: client, Timeout: cfg.Timeout, FailMode: cfg.FailMode,
		Prefix: cfg.Prefix, ReplicaID: replica, Observer: observer, Logger: logger, StateFile: stateFile, HoldTTL: cfg.HoldTTL}), nil
}

func newLogger(format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("cannot use --log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("cannot use --log-format %q: want text or json", format)
}
