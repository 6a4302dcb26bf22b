package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/llmusage/llmusage/collector"
)

// handleHealth serves /healthz (the process is alive) and /readyz (it
// answers checks).
func (s *sidecar) handleHealth(mux *http.ServeMux) {
	for _, r := range s.healthRoutes() {
		mux.Handle(r.Pattern, r.Handler)
	}
}

// healthRoutes are the probes of both listeners, which take any method
// and no token.
func (s *sidecar) healthRoutes() []collector.Route {
	return []collector.Route{
		{Pattern: "/healthz", Name: "healthz", Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			writeStatus(w, http.StatusOK, map[string]any{"status": "ok"})
		})},
		{Pattern: "/readyz", Name: "readyz", Handler: http.HandlerFunc(s.serveReady)},
	}
}

// serveReady answers 503 only while the sidecar cannot answer checks at
// all: starting or shutting down. /readyz is the readiness probe of the
// application's pod, and a shared backend's trouble (the database down,
// and then every replica's spool full) must never take the application
// out of its Service: a full or unwritable spool, like an unreachable
// database, is 200 "degraded" with the reasons, while POST /v1/calls
// refuses records with 503 and Retry-After, and the metrics and alerts
// (LLMUsageSpoolFull) tell. queued_records is the backlog, cheap to poll
// where a scrape is not.
func (s *sidecar) serveReady(w http.ResponseWriter, _ *http.Request) {
	code, body := http.StatusOK, map[string]any{"status": "ok"}
	if !s.ready.Load() {
		code, body = http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "reason": "not serving (starting or shutting down)"}
	} else {
		if err := s.queue.Err(); err != nil {
			body["status"], body["spool"] = "degraded", err.Error()
		}
		if err := s.writer.StoreErr(); err != nil {
			body["status"], body["store"] = "degraded", err.Error()
		}
		if s.quota != nil {
			if err := s.quota.Err(); err != nil {
				body["status"], body["quota"] = "degraded", err.Error()
			}
		}
	}
	body["queued_records"] = s.queue.Len()
	writeStatus(w, code, body)
}

func writeStatus(w http.ResponseWriter, code int, body map[string]any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}

// listen opens host:port, or a unix socket for "unix:/path".
func listen(addr string) (net.Listener, error) { return listenFlag(addr, "") }

// listenFlag is listen for the address of flag, which its error names:
// the sidecar listens on up to three, and a busy port's error must say
// which flag to change.
func listenFlag(addr, flag string) (net.Listener, error) {
	what := addr
	if flag != "" {
		what += " (" + flag + ")"
	}
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		// A socket left by a previous run that was killed would make
		// Listen fail; a non-socket file is left alone.
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(path)
		}
		ln, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("cannot listen on %s: %w", what, err)
		}
		return ln, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on %s: %w", what, err)
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
