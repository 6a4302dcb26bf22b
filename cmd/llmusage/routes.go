package main

import (
	"net/http"
	"net/http/pprof"
	"strings"

	"github.com/llmusage/llmusage/collector"
	"github.com/llmusage/llmusage/docs"
)

func (s *sidecar) apiHandler() http.Handler {
	mux := http.NewServeMux()
	for _, r := range s.apiRoutes() {
		h := r.Handler
		switch {
		case s.cfg.Token != "" && strings.HasPrefix(r.Name, "proxy_"):
			h = collector.RequireTokenHeader(s.cfg.Token, h)
		case s.cfg.Token != "":
			h = collector.RequireBearer(s.cfg.Token, h)
		}
		mux.Handle(r.Pattern, s.exporter.InstrumentRoute(r.Name, h))
	}
	s.handleHealth(mux)
	mux.HandleFunc("/", collector.NotFound)
	return mux
}

// apiRoutes are the API listener's routes but the health probes, which
// take no token: the intake and quota API, the proxy, OTLP and the
// OpenAPI document. The OpenAPI test compares their patterns with the
// document's paths.
func (s *sidecar) apiRoutes() []collector.Route {
	routes := s.collector.Routes()
	if s.proxy != nil {
		routes = append(routes, s.proxy.Routes()...)
	}
	if s.otlp != nil {
		routes = append(routes, s.otlp.Routes()...)
	}
	return append(routes, collector.Route{Pattern: "/v1/openapi.json", Name: "openapi", Handler: openAPIHandler(&s.openAPI)})
}

func (s *sidecar) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	metrics := s.exporter.Handler()
	if s.cfg.MetricsAuth {
		metrics = collector.RequireBearer(s.cfg.Token, metrics)
	}
	mux.Handle("/metrics", s.exporter.InstrumentRoute("metrics", metrics))
	if s.cfg.DebugPprof {
		for _, r := range pprofRoutes() {
			mux.Handle(r.Pattern, r.Handler)
		}
	}
	s.handleHealth(mux)
	mux.HandleFunc("/", collector.NotFound)
	return mux
}

// pprofRoutes are the metrics listener's routes with --debug-pprof.
func pprofRoutes() []collector.Route {
	return []collector.Route{
		{Pattern: "/debug/pprof/", Name: "pprof", Handler: http.HandlerFunc(pprof.Index)},
		{Pattern: "/debug/pprof/profile", Name: "pprof_profile", Handler: http.HandlerFunc(pprof.Profile)},
		{Pattern: "/debug/pprof/symbol", Name: "pprof_symbol", Handler: http.HandlerFunc(pprof.Symbol)},
		{Pattern: "/debug/pprof/trace", Name: "pprof_trace", Handler: http.HandlerFunc(pprof.Trace)},
	}
}

// openAPIHandler serves GET /v1/openapi.json, the document converted
// from its YAML on the first request, so that a sidecar nobody asks
// spends nothing on it.
func openAPIHandler(doc *docs.OpenAPI) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			writeStatus(w, http.StatusMethodNotAllowed, map[string]any{"error": "cannot " + r.Method + " " + r.URL.Path + ": use GET"})
			return
		}
		body, err := doc.JSON()
		if err != nil {
			writeStatus(w, http.StatusInternalServerError, map[string]any{"error": err.Error()})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(body)
	})
}
