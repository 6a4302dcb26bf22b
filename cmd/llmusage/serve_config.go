package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/prometheus/common/model"

	"github.com/llmusage/llmusage/collector"
	"github.com/llmusage/llmusage/exporter"
	"github.com/llmusage/llmusage/internal/cli"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/otlp"
	"github.com/llmusage/llmusage/proxy"
	"github.com/llmusage/llmusage/redisquota"
	"github.com/llmusage/llmusage/rules"
	"github.com/llmusage/llmusage/spool"
	"github.com/llmusage/llmusage/store"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:         "serve",
		Usage:        "run the sidecar: intake API, limits and /metrics",
		OnUsageError: usageError,
		Flags: append([]cli.Flag{
			stringFlag("listen-address", "127.0.0.1:9470", "address of the intake API: host:port, or unix:/path/to/socket"),
			stringFlag("metrics-address", ":9471", "address serving /metrics, /healthz and /readyz to Prometheus and the kubelet"),
			stringFlag("limits-file", "", "YAML file of limit rules, budgets, price overrides and provider prefixes; reloaded when it changes (a ConfigMap update too) and on SIGHUP. No file: nothing is limited"),
			byteSizeFlag("max-body-bytes", 1<<20, "largest request body accepted, in bytes or with a unit (1MiB); at most 32MiB"),
			intFlag("metrics-max-users", 10_000, "most distinct user label values; further users are counted as user=\"__other__\""),
			intFlag("metrics-max-teams", 1_000, "most distinct team label values; further teams are counted as team=\"__other__\""),
			intFlag("metrics-max-models", 1_000, "most distinct provider and model label pairs; further pairs are counted as model=\"__other__\""),
			durationFlag("metrics-user-ttl", time.Hour, "remove the series of users, and of provider and model pairs, idle this long"),
			boolFlag("metrics-user-label", true, "label usage metrics by user; false drops the label and the per-user quota gauges"),
			stringFlag("metrics-push-url", "", "also push metrics in the Prometheus text format to this URL (VictoriaMetrics, vmagent)"),
			durationFlag("metrics-push-interval", 15*time.Second, "interval between pushes to --metrics-push-url"),
			durationFlag("shutdown-timeout", 15*time.Second, "time allowed to finish in-flight requests on SIGTERM"),
			stringFlag("log-format", "text", "log format: text or json"),
			stringFlag("log-level", "info", "log level: debug, info, warn or error"),
			boolFlag("debug-pprof", false, "serve Go's profiler under /debug/pprof/ on --metrics-address (keep that port off the internet)"),
			stringFlag("memory-limit", "auto", "Go soft memory limit: auto (90% of the container's memory limit, if any), 0 for none, or a size such as 256MiB; GOMEMLIMIT wins"),
			stringFlag("auth-token-file", "", "file holding a shared token that /v1/* and /api/* then require as Authorization: Bearer <token>"),
			boolFlag("metrics-auth", false, "require the --auth-token-file token on /metrics too"),
			dataDirFlag(),
			boolFlag("migrate", true, "apply the embedded schema migrations at start"),
			intFlag("batch-size", 5000, "most records one database transaction writes"),
			stringFlag("retention", "", "delete rows of llm_usage_logs older than this (90d, 2w, 36h), in batches, one sidecar of a fleet at a time; never those a usd budget's current period needs. llm_usage_daily_summary keeps their days. Empty: keep every row"),
			durationFlag("summary-interval", time.Minute, "time between steps of llm_usage_daily_summary (Postgres; one sidecar of a fleet at a time, as refresh_llm_usage_summary()); 0 leaves it to cron"),
			durationFlag("flush-interval", time.Second, "longest a record waits before it is written, while the database is healthy"),
			stringFlag("durability", "fsync", "fsync: a record is acknowledged once fsynced to the spool in --data-dir, and survives a crash; memory: acknowledged once queued in memory, and lost if the process dies before the database has it"),
			byteSizeFlag("spool-max-bytes", 1<<30, "most bytes of records the spool holds for the database (1GiB); past it, POST /v1/calls answers 503"),
			stringFlag("redis-url", "", "redis://[user:password@]host:port/db (rediss:// for TLS) of a Redis or Valkey that every replica shares: one user's limits then hold across all of them. Empty: each sidecar's own buckets"),
			boolFlag("redis-cluster", false, "--redis-url names a node of a Redis Cluster"),
			stringFlag("redis-prefix", "llmusage", "starts every key in Redis: deployments that share a Redis (a cluster has one database) each need their own, or they share buckets and replica counts"),
			durationFlag("redis-timeout", 50*time.Millisecond, "longest a check waits for Redis before --redis-fail-mode answers it"),
			stringFlag("redis-fail-mode", "local", "how checks are answered while Redis is out of reach: local (this replica's share of each limit: limit / live replicas), open (allowed) or closed (refused with 503)"),
			intFlag("queue-max-records", 100_000, "with --durability=memory: most records waiting for the database; past it, POST /v1/calls answers 503"),
			stringFlag("budget-timezone", "UTC", "time zone (IANA name, such as Europe/Paris) of usd budgets' calendar days, weeks (from Monday) and months"),
			&cli.StringSliceFlag{Name: "upstream", EnvVars: envVars("upstream"),
				Usage: "NAME=URL: a proxy route /NAME/... to URL (repeatable; comma-separated in the environment). Adds to or overrides the built-in openai, anthropic, groq, mistral, deepseek and xai"},
			&cli.StringSliceFlag{Name: "upstream-key-file", EnvVars: envVars("upstream-key-file"),
				Usage: "NAME=/path: the proxy sends the key in this file to upstream NAME instead of the client's (repeatable)"},
			byteSizeFlag("proxy-max-body-bytes", 32<<20, "proxy: largest request body forwarded (images and PDFs travel in it), in bytes or with a unit"),
			stringFlag("proxy-user-header", "X-LLMUsage-User", "header naming the user of a proxied call (else the body's user, safety_identifier or metadata.user_id)"),
			stringFlag("proxy-team-header", "X-LLMUsage-Team", "header naming the team of a proxied call (else the body's metadata.team_id); optional"),
			stringFlag("proxy-default-user", "", "user of proxied calls that name none; empty refuses them with 400"),
			durationFlag("proxy-client-retry-max", proxy.DefaultClientRetryMax, "proxy: longest wait of the sidecar's own 429 that the SDK is left to retry (Retry-After); a longer one also says x-should-retry: false, and the official SDKs raise at once. 0: every refusal; at most 59s (the openai SDK does not wait 60 s or more)"),
			stringFlag("provider-headroom", "off", "proxy: off forwards every call the user's limits allow; respect answers 429 at once, without calling upstream, a call the provider's latest answer for the same key and model says it would refuse (nothing left until a reset to come, or its 429's Retry-After)"),
			durationFlag("upstream-connect-timeout", 5*time.Second, "proxy: longest wait to connect to an upstream"),
			durationFlag("upstream-first-byte-timeout", 120*time.Second, "proxy: longest wait for an upstream's response headers"),
			durationFlag("upstream-idle-timeout", 120*time.Second, "proxy: longest silence between two chunks of an upstream's answer"),
			stringFlag("otlp-grpc-address", "", "also take OTLP/gRPC traces on this address (host:port, or unix:/path); empty: OTLP over HTTP only, at POST /v1/traces"),
			&cli.StringSliceFlag{Name: "otlp-user-attribute", EnvVars: envVars("otlp-user-attribute"), Value: cli.NewStringSlice(otlp.DefaultUserAttributes...),
				Usage: "span attribute naming the user of an OTLP span's call, looked up on the span then on its resource; repeatable or comma-separated, first found wins"},
			stringFlag("otlp-team-attribute", otlp.DefaultTeamAttribute, "span attribute naming the team of an OTLP span's call (its team_id), looked up on the span then on its resource; optional"),
			stringFlag("otlp-default-user", "", "user of OTLP spans with GenAI usage that name none; empty refuses them (counted, and named in the partial success)"),
			byteSizeFlag("otlp-max-body-bytes", otlp.DefaultMaxBodyBytes, "largest OTLP request (HTTP body or gRPC message), compressed and once decompressed, in bytes or with a unit"),
			durationFlag("concurrency-timeout", limiter.DefaultConcurrencyTimeout, "a concurrent limit's slot whose record never comes (its client died) is given back after this long; set it past your longest call"),
			stringFlag("budget-unpriced", "refuse", "a check for a model without a price under a usd budget: refuse (400 naming the model) or allow (passes while the budget is not spent; its records cost nothing)"),
		}, databaseFlags()...),
		Action: func(c *cli.Context) error {
			cfg, err := serveConfigFrom(c)
			if err != nil {
				return err
			}
			return run(c.Context, cfg)
		},
	}
}

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
