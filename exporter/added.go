package exporter

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Added-latency paths: the label values of llmusage_added_latency_seconds.
const (
	// AddedCheck is POST /v1/check.
	AddedCheck = "check"
	// AddedRecord is POST /v1/calls.
	AddedRecord = "record"
	// AddedProxy is a call through the proxy, less its wait on the upstream.
	AddedProxy = "proxy"
)

// ObserveProxyAddedLatency counts the time the proxy added to one call:
// its total less the time it waited on the upstream.
func (e *Exporter) ObserveProxyAddedLatency(d time.Duration) {
	e.addedProxy.Observe(d.Seconds())
}

// newAddedLatency is the histogram of the time the sidecar adds to a
// call, as Bifrost's bifrost_overhead_latency_microseconds: what a
// client pays for the sidecar, apart from the provider. Buckets from 10 us
// (a check on local buckets) to 100 ms (a stalled Redis or spool).
func newAddedLatency() *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "llmusage_added_latency_seconds",
		Help: "Time the sidecar adds to a call, by path: check and record, from the request's handling to its answer written; " +
			"proxy, the proxied call's total less its wait on the upstream (for the answer's headers and each read of its body).",
		Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1},
	}, []string{"path"})
}

// addedRoute is the added-latency path of a route, "" for the routes
// whose duration is not a call's added latency (reads, /metrics, the
// proxy's, which observes its own).
func addedRoute(name string) string {
	switch name {
	case "check":
		return AddedCheck
	case "calls":
		return AddedRecord
	}
	return ""
}
