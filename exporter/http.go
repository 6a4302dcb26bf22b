package exporter

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// InstrumentRoute records the duration of every request to h under name,
// with the labels promhttp.InstrumentHandlerDuration gives (method in
// lower case or "unknown", status code). promhttp's builds a label map
// and wraps the writer anew for every request, a fifth of the garbage a
// check made; this one looks its observers up once per method and code,
// and recycles its writers. The same duration is the added latency
// (llmusage_added_latency_seconds) of a check and of a record.
func (e *Exporter) InstrumentRoute(name string, h http.Handler) http.Handler {
	ir := &instrumentedRoute{
		vec:       e.httpDur.MustCurryWith(prometheus.Labels{"handler": name}),
		next:      h,
		observers: map[routeKey]prometheus.Observer{},
	}
	if p := addedRoute(name); p != "" {
		ir.added = e.added.WithLabelValues(p)
	}
	return ir
}

type instrumentedRoute struct {
	// vec is the duration histogram curried with the route's name.
	vec  prometheus.ObserverVec
	next http.Handler

	mu sync.RWMutex
	// observers caches vec's children: a handful of methods and codes.
	observers map[routeKey]prometheus.Observer
	// writers recycles statusWriters.
	writers sync.Pool
	// added observes the route's added latency; nil for routes that are
	// not a check or a record.
	added prometheus.Observer
}

type routeKey struct {
	method string
	code   int
}

func (ir *instrumentedRoute) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw, _ := ir.writers.Get().(*statusWriter)
	if sw == nil {
		sw = &statusWriter{}
	}
	sw.ResponseWriter, sw.status = w, 0
	ir.next.ServeHTTP(sw, r)
	code := sw.status
	sw.ResponseWriter = nil
	ir.writers.Put(sw)
	d := time.Since(start).Seconds()
	ir.observer(routeKey{method: methodLabel(r.Method), code: code}).Observe(d)
	if ir.added != nil {
		ir.added.Observe(d)
	}
}

func (ir *instrumentedRoute) observer(k routeKey) prometheus.Observer {
	ir.mu.RLock()
	o, ok := ir.observers[k]
	ir.mu.RUnlock()
	if ok {
		return o
	}
	ir.mu.Lock()
	defer ir.mu.Unlock()
	if o, ok = ir.observers[k]; !ok {
		o = ir.vec.WithLabelValues(k.method, codeLabel(k.code))
		ir.observers[k] = o
	}
	return o
}

// statusWriter remembers the status code a handler answered with.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// methodLabel bounds the method label's values as promhttp does: a
// client cannot mint series by inventing methods.
func methodLabel(m string) string {
	switch m {
	case "GET", "get":
		return "get"
	case "PUT", "put":
		return "put"
	case "HEAD", "head":
		return "head"
	case "POST", "post":
		return "post"
	case "DELETE", "delete":
		return "delete"
	case "CONNECT", "connect":
		return "connect"
	case "OPTIONS", "options":
		return "options"
	case "NOTIFY", "notify":
		return "notify"
	case "TRACE", "trace":
		return "trace"
	case "PATCH", "patch":
		return "patch"
	}
	return "unknown"
}

// codeLabel is the status as promhttp labels it: a handler that wrote
// nothing answered 200, and codes outside 100-599 are "unknown".
func codeLabel(code int) string {
	switch {
	case code == 0:
		return "200"
	case code >= 100 && code <= 599:
		return strconv.Itoa(code)
	}
	return "unknown"
}
