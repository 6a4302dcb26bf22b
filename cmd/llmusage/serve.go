package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/llmusage/llmusage/collector"
	"github.com/llmusage/llmusage/exporter"
	"github.com/llmusage/llmusage/limiter"
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
			durationFlag("metrics-user-ttl", time.Hour, "remove the series of users idle this long"),
			boolFlag("metrics-user-label", true, "label usage metrics by user; false drops the label and the per-user quota gauges"),
			stringFlag("metrics-push-url", "", "also push metrics in the Prometheus text format to this URL (VictoriaMetrics, vmagent)"),
			durationFlag("metrics-push-interval", 15*time.Second, "interval between pushes to --metrics-push-url"),
			durationFlag("shutdown-timeout", 15*time.Second, "time allowed to finish in-flight requests on SIGTERM"),
			stringFlag("log-format", "text", "log format: text or json"),
			stringFlag("log-level", "info", "log level: debug, info, warn or error"),
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
	// limitsFile is reloaded on SIGHUP; empty when none was given.
	limitsFile string
	// ready is false until the listeners serve and again once shutdown starts.
	ready atomic.Bool
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
	var err error
	if s.limiter, err = limiter.New(cfg.Rules, limiter.Options{}); err != nil {
		return err
	}
	userTTL := c.Duration("metrics-user-ttl")
	s.exporter = exporter.New(exporter.Options{
		Limiter:     s.limiter,
		MaxUsers:    c.Int("metrics-max-users"),
		UserTTL:     userTTL,
		NoUserLabel: !c.Bool("metrics-user-label"),
		Version:     version,
		Revision:    revision(),
	})
	s.collector = collector.New(collector.Options{
		Limiter:      s.limiter,
		Observer:     s.exporter,
		Providers:    collector.NewProviderTable(cfg.Providers),
		MaxBodyBytes: c.Int64("max-body-bytes"),
		Logger:       logger,
	})

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

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if url := c.String("metrics-push-url"); url != "" {
		if err := s.exporter.StartPush(ctx, url, c.Duration("metrics-push-interval"), logger); err != nil {
			return err
		}
	}
	go s.sweepLoop(ctx, min(30*time.Second, max(userTTL/2, 100*time.Millisecond)))
	go s.reloadOnHUP(ctx)

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
	logger.Info("llmusage serving", "version", version, "api", apiLn.Addr().String(), "metrics", metricsLn.Addr().String(), "rules", len(cfg.Rules))

	select {
	case err := <-errc:
		return fmt.Errorf("cannot serve: %w", err)
	case <-ctx.Done():
	}
	s.ready.Store(false)
	timeout := c.Duration("shutdown-timeout")
	logger.Info("shutting down", "timeout", timeout)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for _, srv := range servers {
		if err := srv.Shutdown(shutdownCtx); err != nil {
			logger.Warn("cannot finish in-flight requests in time", "error", err)
		}
	}
	return nil
}

func (s *sidecar) apiHandler() http.Handler {
	mux := http.NewServeMux()
	for _, r := range s.collector.Routes() {
		mux.Handle(r.Pattern, s.exporter.InstrumentRoute(r.Name, r.Handler))
	}
	s.handleHealth(mux)
	mux.HandleFunc("/", collector.NotFound)
	return mux
}

func (s *sidecar) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", s.exporter.InstrumentRoute("metrics", s.exporter.Handler()))
	s.handleHealth(mux)
	mux.HandleFunc("/", collector.NotFound)
	return mux
}

// handleHealth serves /healthz (the process is alive) and /readyz (it
// accepts records).
func (s *sidecar) handleHealth(mux *http.ServeMux) {
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeStatus(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.ready.Load() {
			writeStatus(w, http.StatusServiceUnavailable, "unavailable")
			return
		}
		writeStatus(w, http.StatusOK, "ok")
	})
}

func writeStatus(w http.ResponseWriter, code int, status string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	fmt.Fprintf(w, "{\"status\":%q}\n", status)
}

// sweepLoop drops idle buckets and expires idle users' series.
func (s *sidecar) sweepLoop(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.limiter.Sweep()
			s.exporter.Sweep()
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
			err = s.limiter.SetRules(cfg.Rules)
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
