package exporter

import "github.com/prometheus/client_golang/prometheus"

// newOTLPSpans counts the spans of OTLP exports by what became of them.
// The outcomes are a fixed few, so the vector needs no guard.
func newOTLPSpans() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "llmusage_otlp_spans_total",
		Help: "Spans received over OTLP, by outcome: accepted (a call record), invalid (GenAI usage breaking a record's rule, refused in the partial success), no_user (GenAI usage without a user and no --otlp-default-user, refused), ignored (not GenAI usage), unavailable (not taken while the spool was full; the sender retries).",
	}, []string{"outcome"})
}

// ObserveOTLPSpans counts n spans of one OTLP export with this outcome.
func (e *Exporter) ObserveOTLPSpans(outcome string, n int) {
	e.otlpSpans.WithLabelValues(outcome).Add(float64(n))
}
