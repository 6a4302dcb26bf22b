package main

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/llmusage/llmusage/internal/cli"
	"github.com/llmusage/llmusage/internal/suggest"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/otlp"
	"github.com/llmusage/llmusage/proxy"
)

// The categories of serve's flags, as --help and docs/flags.md group them
// (sorted by name).
const (
	catAPI     = "API"
	catLimits  = "Limits and budgets"
	catMetrics = "Metrics"
	catOTLP    = "OpenTelemetry"
	catOps     = "Operations"
	catProxy   = "Proxy"
	catRedis   = "Redis"
	catStorage = "Storage"
)

// serveFlags are serve's flags, each with a one-line usage; the longer
// story of each is in flagDetails, which docs/flags.md shows beside it.
func serveFlags() []cli.Flag {
	return concat(
		inCategory(catAPI,
			stringFlag("listen-address", "127.0.0.1:9470", "address of the intake API and the proxy: host:port or unix:/path"),
			stringFlag("metrics-address", ":9471", "address of /metrics, /healthz and /readyz"),
			byteSizeFlag("max-body-bytes", 1<<20, "largest request body accepted (at most 32MiB)"),
			stringFlag("auth-token-file", "", "file of a token that /v1/* and /api/* then require"),
			boolFlag("metrics-auth", false, "require the --auth-token-file token on /metrics too"),
		),
		inCategory(catLimits,
			stringFlag("limits-file", "", "YAML file of limits, budgets, prices and provider prefixes; none: no limit"),
			stringFlag("budget-timezone", "UTC", "IANA time zone of usd budgets' days, weeks and months"),
			stringFlag("budget-unpriced", "refuse", "a check of an unpriced model under a usd budget: refuse or allow"),
			durationFlag("concurrency-timeout", limiter.DefaultConcurrencyTimeout, "a concurrent limit's slot whose record never comes is given back after this"),
		),
		inCategory(catStorage, databaseFlags()...),
		inCategory(catStorage,
			dataDirFlag(),
			boolFlag("migrate", true, "apply the embedded schema migrations at start"),
			stringFlag("durability", "fsync", "fsync (acknowledge once in the spool) or memory (once queued in memory)"),
			byteSizeFlag("spool-max-bytes", 1<<30, "most bytes of records the spool holds; past it, POST /v1/calls answers 503"),
			intFlag("queue-max-records", 100_000, "with --durability=memory: most records queued; past it, 503"),
			intFlag("batch-size", 5000, "most records one database transaction writes"),
			durationFlag("flush-interval", time.Second, "longest a record waits before it is written, while the database is healthy"),
			stringFlag("retention", "", "delete llm_usage_logs rows older than this (90d, 2w, 36h); empty: keep every row"),
			durationFlag("summary-interval", time.Minute, "time between steps of llm_usage_daily_summary; 0 leaves it to cron"),
		),
		inCategory(catRedis,
			stringFlag("redis-url", "", "redis:// or rediss:// URL of a Redis or Valkey that the replicas share"),
			boolFlag("redis-cluster", false, "--redis-url names a node of a Redis Cluster"),
			stringFlag("redis-prefix", "llmusage", "starts every key: each deployment sharing a Redis needs its own"),
			durationFlag("redis-timeout", 50*time.Millisecond, "longest a check waits for Redis before --redis-fail-mode answers it"),
			stringFlag("redis-fail-mode", "local", "how checks are answered while Redis is out of reach: local, open or closed"),
		),
		inCategory(catProxy,
			&cli.StringSliceFlag{Name: "upstream", EnvVars: envVars("upstream"),
				Usage: "NAME=URL: a proxy route /NAME/... to URL (repeatable)"},
			&cli.StringSliceFlag{Name: "upstream-key-file", EnvVars: envVars("upstream-key-file"),
				Usage: "NAME=/path: send the key in this file to upstream NAME (repeatable)"},
			byteSizeFlag("proxy-max-body-bytes", 32<<20, "largest request body the proxy forwards"),
			stringFlag("proxy-user-header", "X-LLMUsage-User", "header naming the user of a proxied call"),
			stringFlag("proxy-team-header", "X-LLMUsage-Team", "header naming the team of a proxied call (optional)"),
			stringFlag("proxy-default-user", "", "user of proxied calls that name none; empty refuses them with 400"),
			durationFlag("proxy-client-retry-max", proxy.DefaultClientRetryMax, "longest wait of the sidecar's own 429 the SDK is left to retry (0 to 59s)"),
			stringFlag("provider-headroom", "off", "off, or respect: refuse at once what the provider said it would refuse"),
			durationFlag("upstream-connect-timeout", 5*time.Second, "longest wait to connect to an upstream"),
			durationFlag("upstream-first-byte-timeout", 120*time.Second, "longest wait for an upstream's response headers"),
			durationFlag("upstream-idle-timeout", 120*time.Second, "longest silence between two chunks of an upstream's answer"),
		),
		inCategory(catOTLP,
			stringFlag("otlp-grpc-address", "", "also take OTLP/gRPC traces on this address; empty: OTLP/HTTP only"),
			&cli.StringSliceFlag{Name: "otlp-user-attribute", EnvVars: envVars("otlp-user-attribute"), Value: cli.NewStringSlice(otlp.DefaultUserAttributes...),
				Usage: "span attributes naming a span's user (repeatable; the first found wins)"},
			stringFlag("otlp-team-attribute", otlp.DefaultTeamAttribute, "span attribute naming a span's team (optional)"),
			stringFlag("otlp-default-user", "", "user of GenAI spans that name none; empty refuses them"),
			byteSizeFlag("otlp-max-body-bytes", otlp.DefaultMaxBodyBytes, "largest OTLP request, compressed and decompressed (at most 64MiB)"),
		),
		inCategory(catMetrics,
			intFlag("metrics-max-users", 10_000, "most distinct user label values; more count as user=\"__other__\""),
			intFlag("metrics-max-teams", 1_000, "most distinct team label values; more count as team=\"__other__\""),
			intFlag("metrics-max-models", 1_000, "most provider and model label pairs; more count as model=\"__other__\""),
			durationFlag("metrics-user-ttl", time.Hour, "remove the series of users, and of models, idle this long"),
			boolFlag("metrics-user-label", true, "label usage metrics by user; false drops the label"),
			stringFlag("metrics-push-url", "", "also push the metrics to this URL (VictoriaMetrics, vmagent)"),
			durationFlag("metrics-push-interval", 15*time.Second, "time between pushes to --metrics-push-url"),
		),
		inCategory(catOps,
			stringFlag("log-format", "text", "log format: text or json"),
			stringFlag("log-level", "info", "log level: debug, info, warn or error"),
			durationFlag("shutdown-timeout", 15*time.Second, "time in-flight requests get to finish on SIGTERM or SIGINT"),
			stringFlag("memory-limit", "auto", "Go soft memory limit: auto, 0 for none, or a size such as 256MiB"),
			boolFlag("debug-pprof", false, "serve Go's profiler under /debug/pprof/ on --metrics-address"),
		),
	)
}

// flagDetails is what docs/flags.md adds to a flag's usage, by command
// and flag name: the longer story the one-line usage of --help leaves out.
func flagDetails() map[string]map[string]string {
	db := map[string]string{
		"database-url":        "See [database.md](database.md).",
		"database-max-conns":  "The writer, the reads (usage API, budgets' spend, rule reloads) and the `LISTEN` for rule changes share them.",
		"database-exec-mode":  "`auto`: `cache_statement` on a direct connection, `cache_describe` through a pooler (detected); or pgx's `cache_statement`, `cache_describe`, `describe_exec`, `exec`, `simple_protocol`.",
		"database-listen-url": "A direct connection to the same database, for `LISTEN` only, where `--database-url` goes through a transaction pooler (PgBouncer). Empty: `LISTEN` on `--database-url`, or, through a pooler, poll the rule tables every second.",
		"data-dir":            "Holds the spool, the embedded SQLite database (without `--database-url`), `dead-letter.ndjson` and, with `--redis-url`, `quota-state.json`.",
	}
	serve := map[string]string{
		"listen-address":              "`unix:/path/to/socket` for a unix socket. The proxy's routes are served here too.",
		"metrics-address":             "For Prometheus and the kubelet's probes.",
		"max-body-bytes":              "Larger bodies get `413`. Sizes are bytes or take `KiB`, `MiB`, `GiB` (`KB`, `MB`, `GB`: powers of 1000).",
		"auth-token-file":             "Then required as `Authorization: Bearer <token>` (`401` otherwise); the proxy takes it in `X-LLMUsage-Token`.",
		"metrics-auth":                "Probes (`/healthz`, `/readyz`) stay open.",
		"limits-file":                 "Reloaded when it changes (a ConfigMap update too) and on SIGHUP; a bad file is refused at start and, at a reload, logged while the rules in force stay. See [limits.md](limits.md).",
		"budget-timezone":             "Such as `Europe/Paris`. Weeks start on Monday.",
		"budget-unpriced":             "`refuse` answers `400` naming the model; `allow` lets the check pass while the budget is not spent, and its records cost nothing.",
		"concurrency-timeout":         "Its client died. Set it past your longest call; `1s` to `24h`.",
		"durability":                  "`fsync`: a record is acknowledged once fsynced to the spool in `--data-dir`, and survives a crash. `memory`: acknowledged once queued in memory, and lost if the process dies before the database has it.",
		"spool-max-bytes":             "Sizes as `--max-body-bytes`.",
		"retention":                   "In batches, one sidecar of a fleet at a time; never the rows a usd budget's current period needs. `llm_usage_daily_summary` keeps their days.",
		"summary-interval":            "Postgres: one sidecar of a fleet at a time, as `refresh_llm_usage_summary()`.",
		"redis-url":                   "`redis://[user:password@]host:port/db` (`rediss://` for TLS): one user's limits then hold across every replica. Empty: each sidecar's own buckets.",
		"redis-prefix":                "Deployments that share a Redis (a cluster has one database) each need their own, or they share buckets and replica counts.",
		"redis-fail-mode":             "`local`: this replica's share of each limit (limit / live replicas); `open`: allowed; `closed`: refused with `503`.",
		"upstream":                    "Comma-separated in `LLMUSAGE_UPSTREAM`. Adds to or overrides the built-in `openai`, `anthropic`, `groq`, `mistral`, `deepseek` and `xai`.",
		"upstream-key-file":           "The proxy sends this key instead of the client's. Comma-separated in the environment.",
		"proxy-max-body-bytes":        "Images and PDFs travel in it. Sizes as `--max-body-bytes`.",
		"proxy-user-header":           "Else the body's `user`, `safety_identifier` or `metadata.user_id`.",
		"proxy-team-header":           "Else the body's `metadata.team_id`.",
		"proxy-client-retry-max":      "A longer wait also says `x-should-retry: false`, and the official SDKs raise at once. `0`: every refusal; at most `59s` (the openai SDK does not wait 60 s or more).",
		"provider-headroom":           "`off` forwards every call the user's limits allow. `respect` answers `429` at once, without calling upstream or charging the user, a call the provider's latest answer for the same key and model says it would refuse (nothing left until a reset to come, or its `429`'s `Retry-After`).",
		"otlp-grpc-address":           "`host:port` or `unix:/path`. OTLP over HTTP, `POST /v1/traces`, is always on.",
		"otlp-user-attribute":         "Looked up on the span, then on its resource; repeatable or comma-separated.",
		"otlp-team-attribute":         "Its `team_id`; looked up on the span, then on its resource.",
		"otlp-default-user":           "Refused spans are counted, and named in the partial success.",
		"otlp-max-body-bytes":         "HTTP body or gRPC message; four times it bounds the requests decoded at once.",
		"metrics-user-ttl":            "Users' series, and those of provider and model pairs.",
		"metrics-user-label":          "`false` also drops the per-user quota gauges.",
		"metrics-push-url":            "In the Prometheus text format, every `--metrics-push-interval`.",
		"shutdown-timeout":            "In-flight requests finish, then the records are flushed.",
		"memory-limit":                "`auto`: 90% of the container's memory limit, if any. `GOMEMLIMIT` wins.",
		"debug-pprof":                 "Keep that port off the internet.",
		"upstream-first-byte-timeout": "A model that thinks long before it answers needs more.",
	}
	migrate := map[string]string{"status": "Prints each migration's version, state (`applied` or `pending`) and name."}
	for k, v := range db {
		serve[k], migrate[k] = v, v
	}
	inject := map[string]string{
		"sidecar-mode":           "`native`: an init container with `restartPolicy: Always` (Kubernetes 1.29+); `classic`: a second regular container, for older clusters. Annotation `llmusage.io/sidecar-mode`.",
		"sidecar-image":          "Annotation `llmusage.io/image`.",
		"sidecar-cpu-request":    "Annotation `llmusage.io/cpu-request`.",
		"sidecar-cpu-limit":      "Annotation `llmusage.io/cpu-limit`.",
		"sidecar-memory-request": "Annotation `llmusage.io/memory-request`.",
		"sidecar-memory-limit":   "Annotation `llmusage.io/memory-limit`.",
		"sidecar-args":           "Comma-separated in the environment. Annotation `llmusage.io/args` (space-separated).",
		"tls-cert-file":          "Reloaded when the file changes (a Secret's update, a renewal).",
		"limits-configmap":       "Empty: the example Deployment's. Annotation `llmusage.io/limits-configmap`.",
		"database-secret":        "Empty: the example Deployment's. Annotation `llmusage.io/database-secret`.",
		"redis-secret":           "Empty: none. Annotation `llmusage.io/redis-secret`.",
	}
	loadgen := map[string]string{
		"serve-baseline": "The baseline reads the body and answers `202`, until SIGTERM: the ceiling the sidecar is compared with (docs/benchmarks.md).",
		"mode":           "`batch` sends NDJSON bodies.",
		"users":          "Zipf-distributed, as real users are.",
	}
	return map[string]map[string]string{"serve": serve, "migrate": migrate, "inject": inject, "loadgen": loadgen}
}

// inCategory files flags under category for --help and docs/flags.md.
func inCategory(category string, flags ...cli.Flag) []cli.Flag {
	for _, f := range flags {
		switch f := f.(type) {
		case *cli.StringFlag:
			f.Category = category
		case *cli.IntFlag:
			f.Category = category
		case *cli.BoolFlag:
			f.Category = category
		case *cli.DurationFlag:
			f.Category = category
		case *cli.GenericFlag:
			f.Category = category
		case *cli.StringSliceFlag:
			f.Category = category
		case *cli.Float64Flag:
			f.Category = category
		default:
			panic(fmt.Sprintf("inCategory: no category for a %T", f))
		}
	}
	return flags
}

func concat(lists ...[]cli.Flag) []cli.Flag {
	var out []cli.Flag
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

// undefinedFlag matches the flag package's error for an unknown flag.
var undefinedFlag = regexp.MustCompile(`^flag provided but not defined: -+(.+)$`)

// unknownCommand matches internal/cli's error for an unknown command.
var unknownCommand = regexp.MustCompile(`^no command "(.+)"$`)

// usageError is every command's answer to a bad command line: one line,
// naming the flag (or command) nearest an unknown one.
func usageError(c *cli.Context, err error, _ bool) error {
	msg := err.Error()
	if m := undefinedFlag.FindStringSubmatch(msg); m != nil && c != nil {
		// Named as the docs and --help name flags, with two dashes,
		// where the flag package's error has one.
		msg = "flag provided but not defined: --" + m[1]
		// The app has no flags of its own: only a command's can be meant.
		var names []string
		if c.Command != nil {
			for _, f := range c.Command.Flags {
				names = append(names, f.Names()...)
			}
		}
		if s := suggest.Nearest(m[1], names); s != "" {
			msg += fmt.Sprintf("; did you mean --%s?", s)
		}
	}
	if m := unknownCommand.FindStringSubmatch(msg); m != nil && c != nil && c.App != nil {
		var names []string
		for _, cmd := range c.App.Commands {
			names = append(names, cmd.Name)
		}
		if s := suggest.Nearest(m[1], names); s != "" {
			msg += fmt.Sprintf("; did you mean %s?", s)
		}
	}
	return fmt.Errorf("cannot parse the command line: %s (see --help)", strings.TrimSpace(msg))
}
