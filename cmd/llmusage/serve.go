package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/llmusage/llmusage/collector"
	"github.com/llmusage/llmusage/exporter"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/spool"
	"github.com/llmusage/llmusage/store"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:         "serve",
		Usage:        "run the sidecar: intake API, limits and /metrics",
		OnUsageError: usageError,
		Flags: []cli.Flag{
			stringFlag("listen-address", "127.0.0.1:9470", "address of the intake API: host:port, or unix:/path/to/socket"),
			stringFlag("metrics-address", ":9471", "address serving /metrics, /healthz and /readyz to Prometheus and the kubelet"),
			stringFlag("limits-file", "", "YAML file of limit rules and provider prefixes; reloaded on SIGHUP. No file: nothing is limited"),
			&cli.Int64Flag{Name: "max-body-bytes", Value: 1 << 20, Usage: "largest request body accepted", EnvVars: envVars("max-body-bytes")},
			intFlag("metrics-max-users", 10_000, "most distinct user label values; further users are counted as user=\"__other__\""),
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
			databaseURLFlag(),
			dataDirFlag(),
			boolFlag("migrate", true, "apply the embedded schema migrations at start"),
			intFlag("batch-size", 5000, "most records one database transaction writes"),
			durationFlag("flush-interval", time.Second, "longest a record waits before it is written, while the database is healthy"),
			stringFlag("durability", "fsync", "fsync: a record is acknowledged once fsynced to the spool in --data-dir, and survives a crash; memory: acknowledged once queued in memory, and lost if the process dies before the database has it"),
			&cli.Int64Flag{Name: "spool-max-bytes", Value: 1 << 30, Usage: "most bytes of records the spool holds for the database; past it, POST /v1/calls answers 503", EnvVars: envVars("spool-max-bytes")},
			intFlag("queue-max-records", 100_000, "with --durability=memory: most records waiting for the database; past it, POST /v1/calls answers 503"),
		},
		Action: func(c *cli.Context) error {
			logger, err := newLogger(c.String("log-format"), c.String("log-level"))
			if err != nil {
				return err
			}
			return serve(c.Context, logger, c)
		},
	}
}

// sidecar holds what serve wires together.
type sidecar struct {
	logger    *slog.Logger
	limiter   *limiter.Limiter
	exporter  *exporter.Exporter
	collector *collector.Collector
	store     store.Store
	writer    *store.Writer
	// queue holds records for the writer: the spool, or memory.
	queue interface {
		store.Queue
		// Err tells why records cannot be accepted now, or nil.
		Err() error
	}
	// spool is the queue when --durability=fsync.
	spool *spool.Spool
	// limitsFile is reloaded on SIGHUP; empty when none was given.
	limitsFile string
	// token, when set, is required on the API (and on /metrics with metricsAuth).
	token       string
	metricsAuth bool
	// pprof serves /debug/pprof/ on the metrics listener.
	pprof bool
	// ready is false until the listeners serve and again once shutdown starts.
	ready atomic.Bool

	// rulesMu guards the two sources of rules, merged into the limiter's.
	rulesMu   sync.Mutex
	fileRules []limiter.Rule
	dbRules   []limiter.Rule
}

func serve(ctx context.Context, logger *slog.Logger, c *cli.Context) error {
	s := &sidecar{logger: logger, limitsFile: c.String("limits-file")}
	cfg := &collector.Config{}
	if s.limitsFile != "" {
		var err error
		if cfg, err = collector.LoadConfig(s.limitsFile); err != nil {
			return err
		}
	}
	s.fileRules = cfg.Rules
	if err := applyMemoryLimit(c.String("memory-limit"), logger); err != nil {
		return err
	}
	if f := c.String("auth-token-file"); f != "" {
		var err error
		if s.token, err = collector.LoadToken(f); err != nil {
			return err
		}
	} else if c.Bool("metrics-auth") {
		return errors.New("cannot use --metrics-auth without --auth-token-file")
	}
	s.metricsAuth = c.Bool("metrics-auth")
	s.pprof = c.Bool("debug-pprof")
	// A body is one record at most, and the spool refuses records over
	// spool.MaxRecordBytes; half of it leaves room for the frame's fields.
	if n := c.Int64("max-body-bytes"); n <= 0 || n > spool.MaxRecordBytes/2 {
		return fmt.Errorf("cannot use --max-body-bytes %d: want 1 to %d (32 MiB)", n, spool.MaxRecordBytes/2)
	}
	// Ports first: a busy port is the commonest start-up error, and must
	// not wait for (or touch) the database.
	apiLn, err := listen(c.String("listen-address"))
	if err != nil {
		return err
	}
	defer apiLn.Close()
	metricsLn, err := listen(c.String("metrics-address"))
	if err != nil {
		return err
	}
	defer metricsLn.Close()
	if err := s.openQueue(c); err != nil {
		return err
	}
	defer s.closeQueue()
	if s.store, err = openStore(ctx, c, logger, c.Bool("migrate")); err != nil {
		return err
	}
	defer s.store.Close()
	s.dbRules, _ = s.readDBRules(ctx)
	rules := s.mergedRules()
	if s.limiter, err = limiter.New(rules, limiter.Options{}); err != nil {
		return err
	}
	userTTL := c.Duration("metrics-user-ttl")
	s.exporter = exporter.New(exporter.Options{
		Limiter:     s.limiter,
		MaxUsers:    c.Int("metrics-max-users"),
		MaxModels:   c.Int("metrics-max-models"),
		UserTTL:     userTTL,
		NoUserLabel: !c.Bool("metrics-user-label"),
		Version:     version,
		Revision:    revision(),
	})
	s.writer = store.NewWriter(s.store, s.queue, store.WriterOptions{
		BatchSize:     c.Int("batch-size"),
		FlushInterval: c.Duration("flush-interval"),
		Observer:      s.exporter,
		Logger:        logger,
		DeadLetter:    &store.DeadLetterFile{Path: filepath.Join(c.String("data-dir"), "dead-letter.ndjson")},
	})
	s.registerQueueMetrics()
	s.collector = collector.New(collector.Options{
		Limiter:      s.limiter,
		Sink:         s.writer,
		Usage:        s.store,
		Observer:     s.exporter,
		Providers:    collector.NewProviderTable(cfg.Providers),
		MaxBodyBytes: c.Int64("max-body-bytes"),
		Logger:       logger,
	})

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if url := c.String("metrics-push-url"); url != "" {
		if err := s.exporter.StartPush(ctx, url, c.Duration("metrics-push-interval"), logger); err != nil {
			return err
		}
	}
	go s.sweepLoop(ctx, min(30*time.Second, max(userTTL/2, 100*time.Millisecond)))
	go s.reloadOnHUP(ctx)
	go func() { _ = s.store.WatchRules(ctx, s.reloadDBRules) }()
	// The writer outlives the signal: it must drain after the servers stop.
	writerCtx, stopWriter := context.WithCancel(context.Background())
	defer stopWriter()
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		s.writer.Run(writerCtx)
	}()

	servers := []*http.Server{newServer(s.apiHandler(), logger), newServer(s.metricsHandler(), logger)}
	errc := make(chan error, len(servers))
	for i, ln := range []net.Listener{apiLn, metricsLn} {
		go func() {
			if err := servers[i].Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	s.ready.Store(true)
	logger.Info("llmusage serving", "version", version, "api", apiLn.Addr().String(), "metrics", metricsLn.Addr().String(), "rules", len(rules))

	select {
	case err := <-errc:
		return fmt.Errorf("cannot serve: %w", err)
	case <-ctx.Done():
	}
	s.ready.Store(false)
	timeout := c.Duration("shutdown-timeout")
	logger.Info("shutting down", "timeout", timeout)
	deadline := time.Now().Add(timeout)
	shutdownCtx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	for _, srv := range servers {
		if err := srv.Shutdown(shutdownCtx); err != nil {
			logger.Warn("cannot finish in-flight requests in time", "error", err)
		}
	}
	stopWriter()
	<-writerDone
	// In-flight requests may have taken the whole timeout; the last flush
	// still gets a moment (the manifests' grace period leaves 10 s).
	flushCtx, cancelFlush := context.WithTimeout(context.Background(), max(time.Until(deadline), 2*time.Second))
	defer cancelFlush()
	if err := s.writer.Flush(flushCtx); err != nil {
		logger.Error("records not persisted before shutdown", "records", s.writer.Len(), "error", err)
	}
	return nil
}

// readDBRules reads the database's rules. A failure is logged, not
// fatal: the sidecar keeps the rules it has (at start, the file's) and
// reads again when the database is back.
func (s *sidecar) readDBRules(ctx context.Context) ([]limiter.Rule, bool) {
	rules, skipped, err := s.store.Rules(ctx)
	if err != nil {
		s.logger.Error("cannot read limit rules from the database; the rules in force stay", "error", err)
		return nil, false
	}
	for _, e := range skipped {
		s.logger.Warn("limit rule row ignored", "error", e)
	}
	return rules, true
}

// mergedRules combines the file's and the database's rules, the
// database's winning for the same scope, and says which file rules lost:
// the seeded defaults of llm_rate_limit_configs (minute and day) override
// unscoped minute and day rules of the file until those rows are deleted.
func (s *sidecar) mergedRules() []limiter.Rule {
	merged := limiter.Merge(s.fileRules, s.dbRules)
	key := func(r limiter.Rule) string { return r.Source + "/" + r.Unit.String() }
	kept := make(map[string]bool, len(merged))
	for _, r := range merged {
		kept[key(r)] = true
	}
	for _, r := range s.fileRules {
		if !kept[key(r)] {
			s.logger.Warn("limits file rule overridden by a database rule of the same scope", "rule", r.Source,
				"limit_type", r.Window.String(), "unit", r.Unit.String(), "user_id", r.UserID, "provider", r.Provider, "model", r.Model)
		}
	}
	return merged
}

// reloadDBRules applies changed database rules. During an outage it
// changes nothing: an unreachable database is not an empty one.
func (s *sidecar) reloadDBRules() {
	rules, ok := s.readDBRules(context.Background())
	if !ok {
		return
	}
	s.rulesMu.Lock()
	defer s.rulesMu.Unlock()
	s.dbRules = rules
	if err := s.limiter.SetRules(s.mergedRules()); err != nil {
		s.logger.Error("database limit rules not applied", "error", err)
		return
	}
	s.logger.Info("limit rules reloaded from the database", "rules", len(rules))
}

func (s *sidecar) apiHandler() http.Handler {
	mux := http.NewServeMux()
	for _, r := range s.collector.Routes() {
		h := r.Handler
		if s.token != "" {
			h = collector.RequireBearer(s.token, h)
		}
		mux.Handle(r.Pattern, s.exporter.InstrumentRoute(r.Name, h))
	}
	s.handleHealth(mux)
	mux.HandleFunc("/", collector.NotFound)
	return mux
}

func (s *sidecar) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	metrics := s.exporter.Handler()
	if s.metricsAuth {
		metrics = collector.RequireBearer(s.token, metrics)
	}
	mux.Handle("/metrics", s.exporter.InstrumentRoute("metrics", metrics))
	if s.pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	s.handleHealth(mux)
	mux.HandleFunc("/", collector.NotFound)
	return mux
}

// handleHealth serves /healthz (the process is alive) and /readyz (it
// accepts records).
func (s *sidecar) handleHealth(mux *http.ServeMux) {
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeStatus(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	mux.HandleFunc("/readyz", s.serveReady)
}

// serveReady answers 503 only when records cannot be accepted at all: a
// database outage degrades the sidecar but must not take the
// application's pod out of service while records still reach the spool.
// queued_records is the backlog, cheap to poll where a scrape is not.
func (s *sidecar) serveReady(w http.ResponseWriter, _ *http.Request) {
	code, body := http.StatusOK, map[string]any{"status": "ok"}
	switch {
	case !s.ready.Load():
		code, body = http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "reason": "not serving (starting or shutting down)"}
	case s.queue.Err() != nil:
		code, body = http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "spool": s.queue.Err().Error()}
	case s.writer.StoreErr() != nil:
		body = map[string]any{"status": "degraded", "store": s.writer.StoreErr().Error()}
	}
	body["queued_records"] = s.queue.Len()
	writeStatus(w, code, body)
}

func writeStatus(w http.ResponseWriter, code int, body map[string]any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}

// openQueue opens the durable spool in --data-dir, or with
// --durability=memory a bounded queue in memory.
func (s *sidecar) openQueue(c *cli.Context) error {
	switch d := c.String("durability"); d {
	case "fsync":
		sp, err := spool.Open(filepath.Join(c.String("data-dir"), "spool"), spool.Options{MaxBytes: c.Int64("spool-max-bytes"), Logger: s.logger})
		if err != nil {
			return err
		}
		s.spool, s.queue = sp, sp
		if n := sp.Len(); n > 0 {
			s.logger.Info("replaying spooled records into the store", "records", n, "bytes", sp.Bytes())
		}
	case "memory":
		s.logger.Warn("--durability=memory: acknowledged records that the database does not have yet are lost if the process dies")
		s.queue = store.NewMemoryQueue(c.Int("queue-max-records"))
	default:
		return fmt.Errorf("cannot use --durability %q: want fsync or memory", d)
	}
	return nil
}

func (s *sidecar) closeQueue() {
	if s.spool != nil {
		_ = s.spool.Close()
	}
}

func (s *sidecar) registerQueueMetrics() {
	e := s.exporter
	e.AddGauge("llmusage_persist_queue_records", "Accepted records waiting to be written to the store.",
		func() float64 { return float64(s.queue.Len()) })
	e.AddGauge("llmusage_store_up", "Whether the last write to, or ping of, the store succeeded (1) or not (0).", func() float64 {
		if s.writer.StoreErr() != nil {
			return 0
		}
		return 1
	})
	if s.spool != nil {
		e.AddGauge("llmusage_spool_records", "Records in the spool that the store does not have yet.",
			func() float64 { return float64(s.spool.Len()) })
		e.AddGauge("llmusage_spool_bytes", "Bytes of the records in the spool that the store does not have yet.",
			func() float64 { return float64(s.spool.Bytes()) })
		e.AddGauge("llmusage_spool_max_bytes", "Bound on llmusage_spool_bytes (--spool-max-bytes); at it, records are refused.",
			func() float64 { return float64(s.spool.MaxBytes()) })
	}
}

// sweepLoop drops idle buckets and expires idle users' series every
// interval, and sweeps the limiter sooner when its buckets have grown by
// a quarter since the last sweep: under a flood of new users, memory must
// follow the users active in the last refill period, not wait for the
// next tick. (Waiting for them to double let a 1M-user flood at 50k
// records/s hold 890k buckets, and a heap over its --memory-limit.)
func (s *sidecar) sweepLoop(ctx context.Context, every time.Duration) {
	t := time.NewTicker(min(every, 250*time.Millisecond))
	defer t.Stop()
	last, lastLive := time.Now(), 0
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			due := now.Sub(last) >= every
			if due || s.limiter.Len() >= max(lastLive+lastLive/4, 10_000) {
				lastLive = s.limiter.Sweep()
			}
			if due {
				s.exporter.Sweep()
				last = now
			}
		}
	}
}

// reloadOnHUP rereads the limits file on SIGHUP. A file that does not
// load is logged and ignored: the rules in force stay.
func (s *sidecar) reloadOnHUP(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		if s.limitsFile == "" {
			s.logger.Warn("SIGHUP ignored: no --limits-file to reload")
			continue
		}
		cfg, err := collector.LoadConfig(s.limitsFile)
		if err == nil {
			s.rulesMu.Lock()
			previous := s.fileRules
			s.fileRules = cfg.Rules
			if err = s.limiter.SetRules(s.mergedRules()); err != nil {
				s.fileRules = previous
			}
			s.rulesMu.Unlock()
		}
		if err != nil {
			s.logger.Error("limits file not reloaded; the previous rules stay in force", "error", err)
			continue
		}
		s.collector.SetProviders(collector.NewProviderTable(cfg.Providers))
		s.logger.Info("limits file reloaded", "file", s.limitsFile, "rules", len(cfg.Rules))
	}
}

// listen opens host:port, or a unix socket for "unix:/path".
func listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		// A socket left by a previous run that was killed would make
		// Listen fail; a non-socket file is left alone.
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(path)
		}
		ln, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("cannot listen on %s: %w", addr, err)
		}
		return ln, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on %s: %w", addr, err)
	}
	return ln, nil
}

func newServer(h http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
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
