package exporter

import "github.com/prometheus/client_golang/prometheus"

// newHeadroomRefusals counts the proxy's refusals of calls the provider
// had just said it would refuse. The providers are the proxy's routes, a
// configured few, so the vector needs no guard.
func newHeadroomRefusals() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "llmusage_proxy_headroom_refusals_total",
		Help: "Proxied calls answered with the sidecar's own 429 under --provider-headroom=respect, because the provider's latest answer for the same key and model said it had nothing left (or a Retry-After still running): upstream calls not made, by provider.",
	}, []string{"provider"})
}

// ObserveHeadroomRefusals counts n refusals of calls to provider
// (proxy.HeadroomObserver); n is 0 to make the series.
func (e *Exporter) ObserveHeadroomRefusals(provider string, n int) {
	e.headroomRefusals.WithLabelValues(labelValue(provider)).Add(float64(n))
}
