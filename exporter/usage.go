package exporter

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmusage/llmusage/record"
)

// usageMetrics are the event counters updated on ingest.
type usageMetrics struct {
	// userLabel tells whether the per-user vectors carry the user label.
	userLabel bool
	// models chooses the provider and model label values of a record.
	models   *modelGuard
	requests *prometheus.CounterVec
	tokens   *prometheus.CounterVec
	cost     *prometheus.CounterVec
	unpriced *prometheus.CounterVec
	duration *prometheus.HistogramVec
	checks   *prometheus.CounterVec
	accepted prometheus.Counter
	rejected prometheus.Counter

	mu sync.Mutex
	// series caches, by user, then provider and model, the children of
	// the vectors above: WithLabelValues hashes and checks every label
	// value on every call, and a record made five calls, which cost as
	// much CPU as parsing it. A user's go with its series (deleteUser).
	series map[string]map[seriesKey]*recordSeries
}

// seriesKey names the series a record updates, but for status and token type.
type seriesKey struct{ user, team, provider, model string }

// recordSeries holds one seriesKey's children, each made on first use:
// a series of zeros would claim a breakdown that was never measured.
type recordSeries struct {
	// requests by status: success, error.
	requests [2]prometheus.Counter
	// tokens by type: prompt, completion, cached, reasoning.
	tokens   [4]prometheus.Counter
	cost     prometheus.Counter
	duration prometheus.Observer
	// seen is the pair's last-seen cell in the model guard (an overflow
	// pair's too), refreshed by the records that find these series.
	seen *pairSeen
}

var (
	statuses   = [2]string{record.StatusSuccess, record.StatusError}
	tokenTypes = [4]string{"prompt", "completion", "cached", "reasoning"}
)

// durationBuckets are the OpenTelemetry GenAI buckets for
// gen_ai.client.operation.duration: 0.01 s doubling up to 81.92 s.
var durationBuckets = prometheus.ExponentialBuckets(0.01, 2, 14)

func newUsageMetrics(userLabel bool, models *modelGuard) *usageMetrics {
	withUser := func(labels ...string) []string {
		if userLabel {
			return append([]string{"user"}, labels...)
		}
		return labels
	}
	// The usage counters carry the team too, after the user.
	withTeam := func(labels ...string) []string { return withUser(append([]string{"team"}, labels...)...) }
	return &usageMetrics{
		userLabel: userLabel,
		models:    models,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llm_requests_total",
			Help: "LLM API calls recorded, by user, team (empty for none), provider, model and status (success or error).",
		}, withTeam("provider", "model", "status")),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llm_tokens_total",
			Help: "Tokens used by LLM API calls, by user, team (empty for none), provider, model and token_type (prompt, completion, cached, reasoning). cached is part of prompt and reasoning part of completion.",
		}, withTeam("provider", "model", "token_type")),
		cost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llm_cost_usd_total",
			Help: "Cost of LLM API calls in US dollars, by user, team (empty for none), provider and model: the record's cost_usd, else priced at intake. Calls of models without a price are not in it (see llmusage_records_unpriced_total).",
		}, withTeam("provider", "model")),
		unpriced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmusage_records_unpriced_total",
			Help: "Call records of a model without a price, stored with a null cost, by provider; GET /v1/prices?unpriced=1 names the models.",
		}, []string{"provider"}),
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
		series: map[string]map[seriesKey]*recordSeries{},
	}
}

// observeRecord counts r under user and team, the guards' label values,
// at ns on the model guard's clock.
func (m *usageMetrics) observeRecord(r *record.Record, user, team string, ns int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, k := m.seriesOf(seriesKey{user: user, team: team, provider: labelValue(r.Provider), model: labelValue(r.Model)}, ns)
	status := 0
	if r.Status == record.StatusError {
		status = 1
	}
	if s.requests[status] == nil {
		s.requests[status] = m.requests.WithLabelValues(m.labels(k, statuses[status])...)
	}
	s.requests[status].Inc()
	// cached and reasoning exist only for the providers that report them.
	for i, n := range [4]int64{r.PromptTokens, r.CompletionTokens, r.CachedTokens, r.ReasoningTokens} {
		if n == 0 && i >= 2 {
			continue
		}
		if s.tokens[i] == nil {
			s.tokens[i] = m.tokens.WithLabelValues(m.labels(k, tokenTypes[i])...)
		}
		s.tokens[i].Add(float64(n))
	}
	if r.HasCost {
		if s.cost == nil {
			s.cost = m.cost.WithLabelValues(m.pairLabels(k)...)
		}
		s.cost.Add(r.Cost.Float())
	} else {
		m.unpriced.WithLabelValues(k.provider).Inc()
	}
	if r.HasLatency {
		if s.duration == nil {
			s.duration = m.duration.WithLabelValues(k.provider, k.model)
		}
		s.duration.Observe(r.Latency.Seconds())
	}
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

// seriesOf returns the series a record of k updates at ns (the model
// guard's clock), and their labels. A known pair is found in the cache
// under its own values; any other asks the model guard, which may put it
// under an overflow pair. m.mu is held.
func (m *usageMetrics) seriesOf(k seriesKey, ns int64) (*recordSeries, seriesKey) {
	users := m.series[k.user]
	if users == nil {
		users = map[seriesKey]*recordSeries{}
		m.series[k.user] = users
	}
	if s := users[k]; s != nil {
		s.seen.refresh(ns)
		return s, k
	}
	pair, seen := m.models.label(k.provider, k.model, ns)
	k.provider, k.model = pair.provider, pair.model
	s := users[k]
	if s == nil {
		s = &recordSeries{}
		users[k] = s
	}
	s.seen = seen
	return s, k
}

// labels prepends the user when the user label is on, and the team.
func (m *usageMetrics) labels(k seriesKey, last string) []string {
	if m.userLabel {
		return []string{k.user, k.team, k.provider, k.model, last}
	}
	return []string{k.team, k.provider, k.model, last}
}

// deleteUser removes a user's series by their exact labels, known from
// the cache: DeletePartialMatch scans every series of a vector, so
// expiring 5,000 of 10,000 users took 33 s of CPU and stalled intake on
// the vectors' locks.
func (m *usageMetrics) deleteUser(user string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, s := range m.series[user] {
		m.deleteSeries(k, s)
	}
	delete(m.series, user)
	m.checks.DeleteLabelValues(user, "allowed")
	m.checks.DeleteLabelValues(user, "limited")
}

// deleteSeries removes the per-user series of k that s made; m.mu is held.
func (m *usageMetrics) deleteSeries(k seriesKey, s *recordSeries) {
	for i, c := range s.requests {
		if c != nil {
			m.requests.DeleteLabelValues(m.labels(k, statuses[i])...)
		}
	}
	for i, c := range s.tokens {
		if c != nil {
			m.tokens.DeleteLabelValues(m.labels(k, tokenTypes[i])...)
		}
	}
	if s.cost != nil {
		m.cost.DeleteLabelValues(m.pairLabels(k)...)
	}
}

// pairLabels are k's labels without a last one: the cost's.
func (m *usageMetrics) pairLabels(k seriesKey) []string {
	l := m.labels(k, "")
	return l[:len(l)-1]
}

// deleteTeams removes the series of teams, of every user, in one walk
// over the cache as deletePairs does.
func (m *usageMetrics) deleteTeams(teams []string) {
	if len(teams) == 0 {
		return
	}
	gone := make(map[string]bool, len(teams))
	for _, t := range teams {
		gone[t] = true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, keys := range m.series {
		for k, s := range keys {
			if gone[k.team] {
				m.deleteSeries(k, s)
				delete(keys, k)
			}
		}
	}
}

// deletePairs removes the series of provider and model pairs, of every
// user. One walk over the cache serves all the pairs a sweep expires: it
// costs less than keeping an index by pair on the ingest path, and junk
// model names expire by the hundred.
func (m *usageMetrics) deletePairs(pairs map[modelPair]bool) {
	if len(pairs) == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, keys := range m.series {
		for k, s := range keys {
			if pairs[modelPair{k.provider, k.model}] {
				m.deleteSeries(k, s)
				delete(keys, k)
			}
		}
	}
	for p := range pairs {
		m.duration.DeleteLabelValues(p.provider, p.model)
	}
}

func (m *usageMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.requests.Describe(ch)
	m.tokens.Describe(ch)
	m.cost.Describe(ch)
	m.unpriced.Describe(ch)
	m.duration.Describe(ch)
	m.checks.Describe(ch)
	m.accepted.Describe(ch)
	m.rejected.Describe(ch)
}

func (m *usageMetrics) Collect(ch chan<- prometheus.Metric) {
	m.requests.Collect(ch)
	m.tokens.Collect(ch)
	m.cost.Collect(ch)
	m.unpriced.Collect(ch)
	m.duration.Collect(ch)
	m.checks.Collect(ch)
	m.accepted.Collect(ch)
	m.rejected.Collect(ch)
}
