package exporter

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmusage/llmusage/record"
)

// usageMetrics are the event counters updated on ingest.
type usageMetrics struct {
	// userLabel tells whether the per-user vectors carry the user label.
	userLabel bool
	requests  *prometheus.CounterVec
	tokens    *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	checks    *prometheus.CounterVec
	accepted  prometheus.Counter
	rejected  prometheus.Counter
}

// durationBuckets are the OpenTelemetry GenAI buckets for
// gen_ai.client.operation.duration: 0.01 s doubling up to 81.92 s.
var durationBuckets = prometheus.ExponentialBuckets(0.01, 2, 14)

func newUsageMetrics(userLabel bool) *usageMetrics {
	withUser := func(labels ...string) []string {
		if userLabel {
			return append([]string{"user"}, labels...)
		}
		return labels
	}
	return &usageMetrics{
		userLabel: userLabel,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llm_requests_total",
			Help: "LLM API calls recorded, by user, provider, model and status (success or error).",
		}, withUser("provider", "model", "status")),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llm_tokens_total",
			Help: "Tokens used by LLM API calls, by user, provider, model and token_type (prompt, completion, cached, reasoning). cached is part of prompt and reasoning part of completion.",
		}, withUser("provider", "model", "token_type")),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "llm_request_duration_seconds",
			Help:    "Latency of LLM API calls as reported in latency_ms, by provider and model.",
			Buckets: durationBuckets,
		}, []string{"provider", "model"}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llm_rate_limit_checks_total",
			Help: "Quota checks, by user and decision (allowed or limited).",
		}, withUser("decision")),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmusage_records_accepted_total",
			Help: "Call records accepted by the sidecar.",
		}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmusage_records_rejected_total",
			Help: "Call records refused because their request held an invalid record.",
		}),
	}
}

func (m *usageMetrics) observeRecord(r *record.Record, user string) {
	provider, model := labelValue(r.Provider), labelValue(r.Model)
	m.requests.WithLabelValues(m.labels(user, provider, model, r.Status)...).Inc()
	m.addTokens(user, provider, model, "prompt", r.PromptTokens, true)
	m.addTokens(user, provider, model, "completion", r.CompletionTokens, true)
	// cached and reasoning exist only for the providers that report them:
	// a series of zeros would claim a breakdown that was never measured.
	m.addTokens(user, provider, model, "cached", r.CachedTokens, false)
	m.addTokens(user, provider, model, "reasoning", r.ReasoningTokens, false)
	if r.HasLatency {
		m.duration.WithLabelValues(provider, model).Observe(r.Latency.Seconds())
	}
}

func (m *usageMetrics) addTokens(user, provider, model, tokenType string, n int64, always bool) {
	if n == 0 && !always {
		return
	}
	m.tokens.WithLabelValues(m.labels(user, provider, model, tokenType)...).Add(float64(n))
}

func (m *usageMetrics) observeCheck(user string, allowed bool) {
	decision := "allowed"
	if !allowed {
		decision = "limited"
	}
	if m.userLabel {
		m.checks.WithLabelValues(user, decision).Inc()
	} else {
		m.checks.WithLabelValues(decision).Inc()
	}
}

// labels prepends the user when the user label is on.
func (m *usageMetrics) labels(user, provider, model, last string) []string {
	if m.userLabel {
		return []string{user, provider, model, last}
	}
	return []string{provider, model, last}
}

func (m *usageMetrics) deleteUser(user string) {
	match := prometheus.Labels{"user": user}
	m.requests.DeletePartialMatch(match)
	m.tokens.DeletePartialMatch(match)
	m.checks.DeletePartialMatch(match)
}

func (m *usageMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.requests.Describe(ch)
	m.tokens.Describe(ch)
	m.duration.Describe(ch)
	m.checks.Describe(ch)
	m.accepted.Describe(ch)
	m.rejected.Describe(ch)
}

func (m *usageMetrics) Collect(ch chan<- prometheus.Metric) {
	m.requests.Collect(ch)
	m.tokens.Collect(ch)
	m.duration.Collect(ch)
	m.checks.Collect(ch)
	m.accepted.Collect(ch)
	m.rejected.Collect(ch)
}
