package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os/signal"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/llmusage/llmusage/collector"
	"github.com/llmusage/llmusage/docs"
	"github.com/llmusage/llmusage/exporter"
	"github.com/llmusage/llmusage/internal/cli"
	"github.com/llmusage/llmusage/ledger"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/otlp"
	"github.com/llmusage/llmusage/proxy"
	"github.com/llmusage/llmusage/record"
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
		Flags:        serveFlags(),
		Action: func(c *cli.Context) error {
			cfg, err := serveConfigFrom(c)
			if err != nil {
				return err
			}
			return run(c.Context, cfg)
		},
	}
}

// sidecar holds what run wires together.
type sidecar struct {
	// cfg is the validated configuration.
	cfg serveConfig
	// openAPI is the document GET /v1/openapi.json serves.
	openAPI docs.OpenAPI
	// logger is cfg.Logger.
	logger *slog.Logger
	// rules owns the limit rules and reloads them.
	rules *rules.Manager
	// limiter enforces the rules in force.
	limiter *limiter.Limiter
	// exporter holds the metrics.
	exporter *exporter.Exporter
	// collector serves the API.
	collector *collector.Collector
	// store is the database.
	store store.Store
	// writer moves records from the queue to the store.
	writer *store.Writer
	// queue holds records for the writer: the spool, or memory, counted
	// in ledger.
	queue ledger.Queue
	// ledger counts what the records not stored yet spent, for budgets.
	ledger *ledger.Ledger
	// spooled are the recent records the spool held at start, charged
	// again once Redis answers (chargeSpooledAgain).
	spooled []limiter.Usage
	// proxy forwards and meters the SDKs' calls.
	proxy *proxy.Proxy
	// otlp takes OpenTelemetry traces.
	otlp *otlp.Receiver
	// spool is the queue when cfg.Durability is fsync.
	spool *spool.Spool
	// quota is the shared quota store; nil for each sidecar's own buckets.
	quota *redisquota.Store
	// ready is false until the listeners serve and again once shutdown starts.
	ready atomic.Bool
}

// run serves until ctx ends or SIGTERM/SIGINT, then drains.
func run(ctx context.Context, cfg serveConfig) error {
	// First, so that its stop runs last: a second SIGTERM while the store
	// and the spool close must not kill the process mid-close.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logger := cfg.Logger
	s := &sidecar{cfg: cfg, logger: logger}
	if err := applyMemoryLimit(cfg.MemoryLimit, logger); err != nil {
		return err
	}
	// Ports first: a busy port is the commonest start-up error, and must
	// not wait for (or touch) the database.
	apiLn, err := listenFlag(cfg.ListenAddress, "--listen-address")
	if err != nil {
		return err
	}
	defer apiLn.Close()
	metricsLn, err := listenFlag(cfg.MetricsAddress, "--metrics-address")
	if err != nil {
		return err
	}
	defer metricsLn.Close()
	var grpcLn net.Listener
	if cfg.OTLPGRPCAddress != "" {
		if grpcLn, err = listenFlag(cfg.OTLPGRPCAddress, "--otlp-grpc-address"); err != nil {
			return err
		}
		defer grpcLn.Close()
	}
	if err := s.openQueue(); err != nil {
		return err
	}
	defer s.closeQueue()
	if s.store, err = openStore(ctx, cfg.Store, logger, cfg.Migrate); err != nil {
		return err
	}
	defer s.store.Close()
	if s.rules, err = rules.New(ctx, rules.Options{File: cfg.LimitsFile, DB: s.store, Logger: logger}); err != nil {
		return err
	}
	s.exporter = exporter.New(cfg.Exporter)
	var buckets limiter.Store
	if cfg.Redis.URL != "" {
		stateFile := ""
		if cfg.Durability != "memory" {
			stateFile = filepath.Join(cfg.Store.DataDir, "quota-state.json")
		}
		if s.quota, err = openRedis(cfg.Redis, stateFile, s.exporter, logger); err != nil {
			return err
		}
		defer s.quota.Close()
		buckets = s.quota
		s.exporter.WatchQuotaBackend(s.quota)
		// Stored records count in a recovery until Redis confirms it kept
		// its state after they were stored.
		s.ledger.SetConfirmed(s.quota.VerifiedSince)
	}
	spend := &ledger.Source{Ledger: s.ledger, Timeout: 2 * time.Second, DB: s.store.SpentByModel, StoredIDs: s.store.StoredIDs}
	if s.limiter, err = limiter.New(s.rules.Set().InForce, limiter.Options{Store: buckets, Location: cfg.BudgetLocation,
		Spend: spend, AllowUnpriced: cfg.BudgetAllowUnpriced, ConcurrencyTimeout: cfg.ConcurrencyTimeout}); err != nil {
		return err
	}
	s.exporter.WatchLimiter(s.limiter)
	if s.quota != nil {
		s.quota.SetRestarted(s.chargeSpooledAgain)
	}
	s.exporter.SetRulesDigest(s.rules.Set().Digest())
	if cfg.LimitsFile != "" {
		s.exporter.WatchFileReloads(s.rules)
	}
	s.ledger.SetEnabled(hasBudget(s.rules.Set().InForce))
	writerOpts := cfg.Writer
	writerOpts.Observer, writerOpts.Logger = s.exporter, logger
	writerOpts.DeadLetter = &store.DeadLetterFile{Path: filepath.Join(cfg.Store.DataDir, "dead-letter.ndjson")}
	s.writer = store.NewWriter(s.store, s.queue, writerOpts)
	var sp exporter.Spool
	if s.spool != nil {
		sp = s.spool
	}
	s.exporter.WatchPersistence(s.writer, sp)
	if c, ok := s.store.(exporter.Connections); ok {
		s.exporter.WatchConnections(c)
	}
	s.collector = collector.New(collector.Options{
		Limiter:      s.limiter,
		Sink:         s.writer,
		Usage:        s.store,
		Observer:     s.exporter,
		Rules:        s.rules.Set,
		MaxBodyBytes: cfg.MaxBodyBytes,
		Logger:       logger,
	})
	proxyOpts := cfg.Proxy
	proxyOpts.Collector, proxyOpts.RateLimits = s.collector, s.exporter
	if s.proxy, err = proxy.New(proxyOpts); err != nil {
		return err
	}
	otlpOpts := cfg.OTLP
	otlpOpts.Collector, otlpOpts.Token, otlpOpts.Observer = s.collector, cfg.Token, s.exporter
	s.otlp = otlp.New(otlpOpts)

	if cfg.PushURL != "" {
		if err := s.exporter.StartPush(ctx, cfg.PushURL, cfg.PushInterval, logger); err != nil {
			return err
		}
	}
	maintenance := cfg.Maintenance
	maintenance.KeepSince = retentionKeepSince(s.rules, cfg.BudgetLocation)
	maintenance.Observer, maintenance.Logger = s.exporter, logger
	go store.RunMaintenance(ctx, s.store, maintenance)
	userTTL := cfg.Exporter.UserTTL
	go s.sweepLoop(ctx, min(30*time.Second, max(userTTL/2, 100*time.Millisecond)))
	go s.rules.Run(ctx, func(set *rules.Set) error {
		if err := s.limiter.SetRules(set.InForce); err != nil {
			return err
		}
		s.ledger.SetEnabled(hasBudget(set.InForce))
		s.exporter.SetRulesDigest(set.Digest())
		return nil
	})
	if s.quota != nil {
		go s.quota.Run(ctx)
	}
	// The writer outlives the signal: it must drain after the servers stop.
	writerCtx, stopWriter := context.WithCancel(context.Background())
	defer stopWriter()
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		s.writer.Run(writerCtx)
	}()

	servers := []*http.Server{newServer(s.apiHandler(), logger), newServer(s.metricsHandler(), logger)}
	errc := make(chan error, len(servers)+1) // and OTLP/gRPC's
	for i, ln := range []net.Listener{apiLn, metricsLn} {
		go func() {
			if err := servers[i].Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	var grpcServer *grpc.Server
	if grpcLn != nil {
		grpcServer = s.otlp.GRPCServer()
		go func() {
			if err := grpcServer.Serve(grpcLn); err != nil {
				errc <- fmt.Errorf("OTLP/gRPC: %w", err)
			}
		}()
		logger.Info("OTLP/gRPC serving", "address", grpcLn.Addr().String())
	}
	logStart(logger, cfg.Proxy.Upstreams, s.rules.Set().InForce)
	s.ready.Store(true)
	// What start-up alone used need not stay resident. Start-up's tail
	// counts: the rule watcher reads the embedded store until its files
	// settle (store.stampSettle), and the first flush and sweep run.
	release := time.AfterFunc(startupTail, releaseStartupMemory)
	defer release.Stop()
	logger.Info("llmusage serving", "version", version, "api", apiLn.Addr().String(), "metrics", metricsLn.Addr().String(), "rules", len(s.rules.Set().InForce))

	select {
	case err := <-errc:
		return fmt.Errorf("cannot serve: %w", err)
	case <-ctx.Done():
	}
	s.ready.Store(false)
	logger.Info("shutting down", "timeout", cfg.ShutdownTimeout)
	deadline := time.Now().Add(cfg.ShutdownTimeout)
	shutdownCtx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	for _, srv := range servers {
		if err := srv.Shutdown(shutdownCtx); err != nil {
			logger.Warn("cannot finish in-flight requests in time", "error", err)
		}
	}
	if grpcServer != nil {
		stopGRPC(shutdownCtx, grpcServer, logger)
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

// openQueue opens the durable spool in the data directory, or with
// --durability=memory a bounded queue in memory.
func (s *sidecar) openQueue() error {
	if s.cfg.Durability == "memory" {
		s.logger.Warn("--durability=memory: acknowledged records that the database does not have yet are lost if the process dies")
		s.ledger = ledger.New()
		s.queue = s.ledger.Queue(store.NewMemoryQueue(s.cfg.QueueMaxRecords))
		return nil
	}
	sp, err := spool.Open(filepath.Join(s.cfg.Store.DataDir, "spool"), spool.Options{MaxBytes: s.cfg.SpoolMaxBytes, Logger: s.logger})
	if err != nil {
		return err
	}
	s.spool = sp
	s.ledger = ledger.New()
	s.queue = s.ledger.Queue(sp)
	if n := sp.Len(); n > 0 {
		s.logger.Info("replaying spooled records into the store", "records", n, "bytes", sp.Bytes())
		// What they spent counts in budgets until they are stored.
		recent := time.Now().Add(-time.Hour)
		if err := sp.Scan(func(r *record.Record) {
			s.ledger.Add([]record.Record{*r})
			if len(s.spooled) < maxRespooled && r.Timestamp.After(recent) {
				s.spooled = append(s.spooled, limiter.Usage{UserID: r.UserID, TeamID: r.TeamID, Provider: r.Provider, Model: r.Model,
					Tokens: r.TotalTokens, RequestID: r.RequestID, Cost: int64(r.Cost), HasCost: r.HasCost, Timestamp: r.Timestamp})
			}
		}); err != nil {
			s.logger.Warn("cannot read the spool's costs for budgets; budgets count the stored records only", "error", err)
		}
	}
	return nil
}

// respoolWindow and maxRespooled bound the spooled records charged again
// at a restart: Redis remembers a charged request_id for 15 minutes, so
// an older record (by its timestamp, when Redis is reached) may have been
// charged already and is not.
const (
	respoolWindow = 14 * time.Minute
	maxRespooled  = 100_000
)

// chargeSpooledAgain charges the records found in the spool at start,
// once Redis answers with the state the predecessor knew: Redis charges
// each request_id once, so only those the predecessor did not charge
// there (accepted while Redis was out of reach, or spooled just before
// it died) count. They are charged together, so that a budget learnt
// from the spool is not charged them again.
func (s *sidecar) chargeSpooledAgain() error {
	recent := time.Now().Add(-respoolWindow)
	us := s.spooled[:0]
	for _, u := range s.spooled {
		if u.Timestamp.After(recent) {
			us = append(us, u)
		}
	}
	s.spooled = nil
	if err := s.limiter.RecordAll(us); errors.Is(err, limiter.ErrStoreUnavailable) {
		s.spooled = us // again at the next contact; Redis charges each once
		return err
	}
	return nil
}

func (s *sidecar) closeQueue() {
	if s.spool != nil {
		_ = s.spool.Close()
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
