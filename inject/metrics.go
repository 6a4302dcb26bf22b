package inject

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the injector's llmusage_inject_* series; the certificate's
// are the server's (certReloader).
type metrics struct {
	requests *prometheus.CounterVec
	duration prometheus.Histogram
	invalid  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmusage_inject_requests_total",
			Help: "AdmissionReviews answered, by result (injected, skipped, error) and reason.",
		}, []string{"result", "reason"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "llmusage_inject_duration_seconds",
			Help:    "Time to answer an AdmissionReview, from the request to the response written.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		invalid: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmusage_inject_invalid_annotations_total",
			Help: "Pod annotations the injector ignored (their default was used), by annotation.",
		}, []string{"annotation"}),
	}
	// The series an alert may watch exist from the start, at 0.
	for _, rr := range [][2]string{{resultInjected, reasonNamespace}, {resultInjected, reasonAnnotation},
		{resultError, reasonBadRequest}, {resultError, reasonDecodePod}, {resultError, reasonRender}} {
		m.requests.WithLabelValues(rr[0], rr[1])
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.invalid} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("cannot register the injector's metrics: %w", err)
		}
	}
	return m, nil
}
