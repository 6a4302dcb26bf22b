package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/llmusage/llmusage/collector"
	"github.com/llmusage/llmusage/exporter"
	"github.com/llmusage/llmusage/internal/cli"
	"github.com/llmusage/llmusage/otlp"
	"github.com/llmusage/llmusage/proxy"
	"github.com/llmusage/llmusage/redisquota"
	"github.com/llmusage/llmusage/rules"
	"github.com/llmusage/llmusage/spool"
	"github.com/llmusage/llmusage/store"
)

// serveConfig is everything serve's flags say, read once and validated.
type serveConfig struct {
	// Logger is built from --log-format and --log-level.
	Logger *slog.Logger
	// ListenAddress is the API's host:port, or unix:/path.
	ListenAddress string
	// MetricsAddress serves /metrics, /healthz and /readyz.
	MetricsAddress string
	// LimitsFile holds the limit rules; empty for none.
	LimitsFile string
	// MaxBodyBytes bounds a request body.
	MaxBodyBytes int64
	// Exporter configures the metrics; run adds the limiter.
	Exporter exporter.Options
	// PushURL, when set, receives the metrics every PushInterval.
	PushURL string
	// PushInterval is the time between pushes.
	PushInterval time.Duration
	// ShutdownTimeout is how long in-flight requests get on SIGTERM.
	ShutdownTimeout time.Duration
	// DebugPprof serves Go's profiler on the metrics listener.
	DebugPprof bool
	// MemoryLimit is the Go soft memory limit: auto, 0 or a size.
	MemoryLimit string
	// Token, when set, is required on the API (and on /metrics with MetricsAuth).
	Token string
	// MetricsAuth requires Token on /metrics too.
	MetricsAuth bool
	// Store selects the database.
	Store store.Options
	// Migrate applies the schema migrations at start.
	Migrate bool
	// Writer batches records into the database; run adds observer,
	// logger and dead letter.
	Writer store.WriterOptions
	// Maintenance deletes rows past the retention and steps the summary;
	// run adds the budgets, observer and logger.
	Maintenance store.MaintenanceOptions
	// Durability is fsync (the spool) or memory (a queue in memory).
	Durability string
	// SpoolMaxBytes bounds the spool.
	SpoolMaxBytes int64
	// QueueMaxRecords bounds the memory queue.
	QueueMaxRecords int
	// Redis, when its URL is set, holds the buckets of every replica.
	Redis redisConfig
	// BudgetLocation is the time zone of budgets' calendar periods.
	BudgetLocation *time.Location
	// BudgetAllowUnpriced lets checks of unpriced models pass budgets.
	BudgetAllowUnpriced bool
	// ConcurrencyTimeout gives back a concurrency limit's slot whose
	// record never came.
	ConcurrencyTimeout time.Duration
	// Proxy configures proxy mode; run adds the collector.
	Proxy proxy.Options
	// OTLP configures the OTLP intake; run adds the collector, token and observer.
	OTLP otlp.Options
	// OTLPGRPCAddress serves OTLP/gRPC; empty for none.
	OTLPGRPCAddress string
}

// redisConfig selects the shared quota store.
type redisConfig struct {
	// URL is redis:// or rediss://; empty for each sidecar's own buckets.
	URL string
	// Cluster tells that URL names a node of a Redis Cluster.
	Cluster bool
	// Timeout bounds a check's wait for Redis.
	Timeout time.Duration
	// FailMode answers checks while Redis is out of reach.
	FailMode redisquota.FailMode
	// Prefix starts every key.
	Prefix string
	// HoldTTL is how long a check's hold waits in Redis: past the
	// longest a slot may wait for its record.
	HoldTTL time.Duration
}

// serveConfigFrom reads and validates serve's flags.
func serveConfigFrom(c *cli.Context) (serveConfig, error) {
	logger, err := newLogger(c.String("log-format"), c.String("log-level"))
	if err != nil {
		return serveConfig{}, err
	}
	cfg := serveConfig{
		Logger:         logger,
		ListenAddress:  c.String("listen-address"),
		MetricsAddress: c.String("metrics-address"),
		LimitsFile:     c.String("limits-file"),
		MaxBodyBytes:   bytesOf(c, "max-body-bytes"),
		Exporter: exporter.Options{
			MaxUsers:    c.Int("metrics-max-users"),
			MaxModels:   c.Int("metrics-max-models"),
			MaxTeams:    c.Int("metrics-max-teams"),
			UserTTL:     c.Duration("metrics-user-ttl"),
			NoUserLabel: !c.Bool("metrics-user-label"),
			Version:     version,
			Revision:    revision(),
		},
		PushURL:         c.String("metrics-push-url"),
		PushInterval:    c.Duration("metrics-push-interval"),
		ShutdownTimeout: c.Duration("shutdown-timeout"),
		DebugPprof:      c.Bool("debug-pprof"),
		MemoryLimit:     c.String("memory-limit"),
		MetricsAuth:     c.Bool("metrics-auth"),
		Migrate:         c.Bool("migrate"),
		Writer:          store.WriterOptions{BatchSize: c.Int("batch-size"), FlushInterval: c.Duration("flush-interval")},
		Durability:      c.String("durability"),
		SpoolMaxBytes:   bytesOf(c, "spool-max-bytes"),
		QueueMaxRecords: c.Int("queue-max-records"),
		Redis: redisConfig{URL: c.String("redis-url"), Cluster: c.Bool("redis-cluster"), Timeout: c.Duration("redis-timeout"),
			Prefix: c.String("redis-prefix")},
	}
	if cfg.Store, err = storeOptions(c); err != nil {
		return serveConfig{}, err
	}
	if cfg.Maintenance, err = maintenanceOptions(c); err != nil {
		return serveConfig{}, err
	}
	if cfg.Redis.FailMode, err = redisquota.ParseFailMode(c.String("redis-fail-mode")); err != nil {
		return serveConfig{}, err
	}
	if cfg.Redis.Timeout <= 0 {
		return serveConfig{}, fmt.Errorf("cannot use --redis-timeout %s: want a positive duration", cfg.Redis.Timeout)
	}
	if cfg.Redis.Prefix == "" || strings.ContainsAny(cfg.Redis.Prefix, "{}") {
		return serveConfig{}, fmt.Errorf("cannot use --redis-prefix %q: want a non-empty prefix without braces (they would make a cluster hash tag)", cfg.Redis.Prefix)
	}
	if cfg.Redis.Cluster && cfg.Redis.URL == "" {
		return serveConfig{}, errors.New("cannot use --redis-cluster without --redis-url")
	}
	if f := c.String("auth-token-file"); f != "" {
		if cfg.Token, err = collector.LoadToken(f); err != nil {
			return serveConfig{}, err
		}
	} else if cfg.MetricsAuth {
		return serveConfig{}, errors.New("cannot use --metrics-auth without --auth-token-file")
	}
	// A body is one record at most, and the spool refuses records over
	// spool.MaxRecordBytes; half of it leaves room for the frame's fields.
	if n := cfg.MaxBodyBytes; n <= 0 || n > spool.MaxRecordBytes/2 {
		return serveConfig{}, fmt.Errorf("cannot use --max-body-bytes %d: want 1 to %d (32MiB)", n, spool.MaxRecordBytes/2)
	}
	// A bad limits file ends serve before it touches ports or the database.
	if cfg.LimitsFile != "" {
		if _, err := rules.LoadFile(cfg.LimitsFile); err != nil {
			return serveConfig{}, err
		}
	}
	if cfg.ConcurrencyTimeout = c.Duration("concurrency-timeout"); cfg.ConcurrencyTimeout < time.Second || cfg.ConcurrencyTimeout > 24*time.Hour {
		return serveConfig{}, fmt.Errorf("cannot use --concurrency-timeout %s: want 1s to 24h", cfg.ConcurrencyTimeout)
	}
	// A hold in Redis outlives its slot's wait, so that the replica that
	// took it gives it back (Redis dropping it would not).
	cfg.Redis.HoldTTL = max(20*time.Minute, cfg.ConcurrencyTimeout+5*time.Minute)
	if cfg.Durability != "fsync" && cfg.Durability != "memory" {
		return serveConfig{}, fmt.Errorf("cannot use --durability %q: want fsync or memory", cfg.Durability)
	}
	if cfg.BudgetLocation, err = time.LoadLocation(c.String("budget-timezone")); err != nil || c.String("budget-timezone") == "" {
		return serveConfig{}, fmt.Errorf("cannot use --budget-timezone %q: want an IANA time zone such as UTC or Europe/Paris", c.String("budget-timezone"))
	}
	cfg.Proxy = proxy.Options{UserHeader: c.String("proxy-user-header"), TeamHeader: c.String("proxy-team-header"), DefaultUser: c.String("proxy-default-user"),
		MaxBodyBytes: bytesOf(c, "proxy-max-body-bytes"), ConnectTimeout: c.Duration("upstream-connect-timeout"),
		FirstByteTimeout: c.Duration("upstream-first-byte-timeout"), IdleTimeout: c.Duration("upstream-idle-timeout"), Logger: cfg.Logger}
	switch d := c.Duration("proxy-client-retry-max"); {
	case d < 0 || d >= time.Minute:
		return serveConfig{}, fmt.Errorf("cannot use --proxy-client-retry-max %s: want 0 to 59s (the openai SDK replaces a Retry-After of 60 s or more with its own short backoff)", d)
	case d == 0:
		cfg.Proxy.ClientRetryMax = -1 // proxy.Options' zero is its default
	default:
		cfg.Proxy.ClientRetryMax = d
	}
	if cfg.Proxy.Headroom, err = proxy.ParseHeadroom(c.String("provider-headroom")); err != nil {
		return serveConfig{}, err
	}
	var overrides []proxy.Upstream
	for _, s := range c.StringSlice("upstream") {
		up, err := proxy.ParseUpstream(s)
		if err != nil {
			return serveConfig{}, err
		}
		overrides = append(overrides, up)
	}
	cfg.Proxy.Upstreams = proxy.Merge(proxy.Defaults(), overrides)
	for _, s := range c.StringSlice("upstream-key-file") {
		name, key, err := proxy.LoadKey(s)
		if err != nil {
			return serveConfig{}, err
		}
		found := false
		for i := range cfg.Proxy.Upstreams {
			if cfg.Proxy.Upstreams[i].Name == name {
				cfg.Proxy.Upstreams[i].Key, found = key, true
			}
		}
		if !found {
			return serveConfig{}, fmt.Errorf("cannot use --upstream-key-file %s=...: no upstream is named %s", name, name)
		}
	}
	var userAttrs []string
	for _, s := range c.StringSlice("otlp-user-attribute") {
		for _, a := range strings.Split(s, ",") {
			if a = strings.TrimSpace(a); a != "" {
				userAttrs = append(userAttrs, a)
			}
		}
	}
	if len(userAttrs) == 0 {
		return serveConfig{}, errors.New("cannot use an empty --otlp-user-attribute: name at least one attribute, such as user.id")
	}
	cfg.OTLP = otlp.Options{UserAttributes: userAttrs, TeamAttribute: c.String("otlp-team-attribute"), DefaultUser: c.String("otlp-default-user"), MaxBodyBytes: bytesOf(c, "otlp-max-body-bytes"), Logger: cfg.Logger}
	if n := cfg.OTLP.MaxBodyBytes; n <= 0 || n > 64<<20 {
		return serveConfig{}, fmt.Errorf("cannot use --otlp-max-body-bytes %d: want 1 to %d (64MiB)", n, 64<<20)
	}
	// A default user the record rules refuse would refuse, span by span,
	// every span it was meant to take: it is refused here, once.
	if u := cfg.OTLP.DefaultUser; len(u) > collector.MaxIDLength {
		return serveConfig{}, fmt.Errorf("cannot use --otlp-default-user: it must be at most %d bytes, got %d", collector.MaxIDLength, len(u))
	} else if u != "" && (strings.TrimSpace(u) == "" || !utf8.ValidString(u) || strings.IndexFunc(u, unicode.IsControl) >= 0) {
		return serveConfig{}, fmt.Errorf("cannot use --otlp-default-user %q: it must not be blank or hold control characters", u)
	}
	cfg.OTLPGRPCAddress = c.String("otlp-grpc-address")
	switch c.String("budget-unpriced") {
	case "allow":
		cfg.BudgetAllowUnpriced = true
	case "refuse":
	default:
		return serveConfig{}, fmt.Errorf("cannot use --budget-unpriced %q: want refuse or allow", c.String("budget-unpriced"))
	}
	return cfg, nil
}
