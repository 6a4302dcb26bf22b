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
)

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
