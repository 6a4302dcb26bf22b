package inject

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ServerConfig configures the webhook's process.
type ServerConfig struct {
	// ListenAddress serves the webhook over HTTPS: /mutate,
	// /mutate/annotated, /healthz and /readyz.
	ListenAddress string
	// MetricsAddress serves /metrics, /healthz and /readyz over HTTP.
	MetricsAddress string
	// CertFile and KeyFile are the serving key pair (PEM), reloaded
	// when they change.
	CertFile, KeyFile string
	// ReloadInterval is the time between two checks of the files
	// besides those of each TLS handshake; 0 for 10s.
	ReloadInterval time.Duration
	// ShutdownTimeout bounds the wait for requests in flight on stop.
	ShutdownTimeout time.Duration
	// Injector configures the decisions; its Logger and Registerer are
	// the server's too.
	Injector Options
	// Gatherer serves /metrics; nil for the Registerer's, if it is a
	// *prometheus.Registry.
	Gatherer prometheus.Gatherer
}

// Server is the webhook's listeners, bound but not yet serving.
type Server struct {
	cfg              ServerConfig
	logger           *slog.Logger
	certs            *certReloader
	api, metrics     net.Listener
	apiSrv, metricsS *http.Server
	ready            atomic.Bool
}

// NewServer loads the key pair, checks the settings and binds both
// listeners, so that a start-up error comes before anything is served.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.CertFile == "" || cfg.KeyFile == "" {
		return nil, errors.New("cannot serve the webhook without --tls-cert-file and --tls-key-file: the API server calls it over HTTPS only")
	}
	if cfg.Injector.Logger == nil {
		cfg.Injector.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Injector.Registerer == nil {
		cfg.Injector.Registerer = prometheus.NewRegistry()
	}
	if cfg.Gatherer == nil {
		g, ok := cfg.Injector.Registerer.(prometheus.Gatherer)
		if !ok {
			return nil, errors.New("cannot serve /metrics: no Gatherer")
		}
		cfg.Gatherer = g
	}
	if cfg.ReloadInterval <= 0 {
		cfg.ReloadInterval = 10 * time.Second
	}
	logger := cfg.Injector.Logger
	in, err := New(cfg.Injector)
	if err != nil {
		return nil, err
	}
	certs, err := newCertReloader(cfg.CertFile, cfg.KeyFile, logger, cfg.Injector.Registerer)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, logger: logger, certs: certs}

	api := http.NewServeMux()
	in.Register(api)
	s.health(api)
	metrics := http.NewServeMux()
	metrics.Handle("/metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}))
	s.health(metrics)
	s.apiSrv, s.metricsS = newHTTPServer(api, logger), newHTTPServer(metrics, logger)
	s.apiSrv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.GetCertificate}

	if s.api, err = listen(cfg.ListenAddress, "--listen-address"); err != nil {
		return nil, err
	}
	if s.metrics, err = listen(cfg.MetricsAddress, "--metrics-address"); err != nil {
		s.api.Close()
		return nil, err
	}
	return s, nil
}

// APIAddr is the HTTPS listener's address.
func (s *Server) APIAddr() net.Addr { return s.api.Addr() }

// MetricsAddr is the metrics listener's address.
func (s *Server) MetricsAddr() net.Addr { return s.metrics.Addr() }

// Run serves until ctx ends, then stops: /readyz answers 503 at once,
// requests in flight get ShutdownTimeout.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 2)
	go func() { errc <- s.apiSrv.ServeTLS(s.api, "", "") }()
	go func() { errc <- s.metricsS.Serve(s.metrics) }()
	s.ready.Store(true)
	s.logger.Info("injector serving", "listen_address", s.api.Addr().String(), "metrics_address", s.metrics.Addr().String(),
		"sidecar_mode", s.cfg.Injector.Defaults.Mode)
	tick := time.NewTicker(s.cfg.ReloadInterval)
	defer tick.Stop()
	var err error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
			s.certs.check(true)
		case err = <-errc:
			err = fmt.Errorf("cannot serve: %w", err)
			break loop
		}
	}
	s.ready.Store(false)
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	_ = s.apiSrv.Shutdown(sctx)
	_ = s.metricsS.Shutdown(sctx)
	s.logger.Info("injector stopped")
	return err
}

func (s *Server) health(mux *http.ServeMux) {
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.ready.Load() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "reason": "not serving (starting or shutting down)"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
}

func listen(addr, flag string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on %s (%s): %w", addr, flag, err)
	}
	return ln, nil
}

func newHTTPServer(h http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}
