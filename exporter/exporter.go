// Package exporter turns call records, checks and limiter state into
// Prometheus metrics, on a registry of its own.
//
// Events (requests, tokens, checks) are counters updated on ingest; state
// (quota limit and remaining) is built at scrape time from the limiter's
// live buckets. Guards cap the number of distinct user label values and
// of provider and model pairs.
package exporter

import (
	"net/http"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/record"
)

// OverflowUser is the user label value of records whose user did not fit
// under the cardinality cap.
const OverflowUser = "__other__"

// OverflowModel is the model label value (and the provider's, when that
// provider has no series of its own) of records whose provider and model
// did not fit under the cardinality cap.
const OverflowModel = "__other__"

// OverflowTeam is the team label value of records whose team did not fit
// under the cardinality cap.
const OverflowTeam = "__other__"

// Options configure an Exporter.
type Options struct {
	// Limiter is the source of the quota gauges; optional.
	Limiter *limiter.Limiter
	// MaxUsers caps the distinct user label values (10,000 when zero).
	MaxUsers int
	// UserTTL removes the series of users idle this long (1h when zero),
	// and of provider and model pairs.
	UserTTL time.Duration
	// MaxModels caps the distinct provider and model label pairs (1,000
	// when zero).
	MaxModels int
	// MaxTeams caps the distinct team label values (1,000 when zero).
	MaxTeams int
	// NoUserLabel drops the user label from every metric, and with it the
	// per-user quota gauges.
	NoUserLabel bool
	// Clock tells the time for the TTL; the wall clock when nil.
	Clock clock.Clock
	// Version and Revision describe the build, for llmusage_build_info.
	Version, Revision string
}

// Exporter implements collector.Observer and serves /metrics.
type Exporter struct {
	reg     *prometheus.Registry
	guard   *userGuard
	teams   *userGuard
	models  *modelGuard
	usage   *usageMetrics
	persist *persistMetrics
	backend *backendMetrics
	clock   clock.Clock
	// noUserLabel is Options.NoUserLabel.
	noUserLabel bool
	httpDur     *prometheus.HistogramVec
	// otlpSpans counts OTLP spans by outcome.
	otlpSpans *prometheus.CounterVec
	// providerLimits are the providers' own rate limits, from the proxy.
	providerLimits *providerLimits
	// headroomRefusals counts the proxy's --provider-headroom refusals.
	headroomRefusals *prometheus.CounterVec
	// inFlight counts the proxy's calls upstream, by user.
	inFlight *callsInFlight
	// added is llmusage_added_latency_seconds; addedProxy its child for
	// the proxy, looked up once.
	added      *prometheus.HistogramVec
	addedProxy prometheus.Observer
}

// New returns an Exporter with its registry populated.
func New(opts Options) *Exporter {
	if opts.MaxUsers <= 0 {
		opts.MaxUsers = 10_000
	}
	if opts.MaxModels <= 0 {
		opts.MaxModels = 1_000
	}
	if opts.MaxTeams <= 0 {
		opts.MaxTeams = 1_000
	}
	if opts.UserTTL <= 0 {
		opts.UserTTL = time.Hour
	}
	if opts.Clock == nil {
		opts.Clock = clock.System{}
	}
	e := &Exporter{
		reg:   prometheus.NewRegistry(),
		clock: opts.Clock,
	}
	e.guard = newUserGuard(opts.MaxUsers, opts.UserTTL, !opts.NoUserLabel)
	e.teams = newTeamGuard(opts.MaxTeams, opts.UserTTL)
	e.models = newModelGuard(opts.MaxModels, opts.UserTTL, opts.Clock.Now())
	e.usage = newUsageMetrics(!opts.NoUserLabel, e.models)
	e.persist = newPersistMetrics()
	e.backend = newBackendMetrics()
	e.otlpSpans = newOTLPSpans()
	e.providerLimits = newProviderLimits(e.models, opts.UserTTL)
	e.headroomRefusals = newHeadroomRefusals()
	e.inFlight = newCallsInFlight(!opts.NoUserLabel)
	e.httpDur = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "llmusage_http_request_duration_seconds",
		Help:    "Duration of HTTP requests served by the sidecar, by route.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
	}, []string{"handler", "method", "code"})
	e.added = newAddedLatency()
	// Every path's series from the start, at zero: a dashboard's quantile
	// then shows "no calls" rather than "no metric".
	for _, p := range []string{AddedCheck, AddedRecord, AddedProxy} {
		e.added.WithLabelValues(p)
	}
	e.addedProxy = e.added.WithLabelValues(AddedProxy)

	e.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newBuildInfo(opts.Version, opts.Revision, runtime.Version()),
		e.usage,
		e.guard,
		e.teams,
		e.models,
		e.httpDur,
		e.added,
		e.persist.persisted, e.persist.errors, e.persist.deadLettered, e.persist.duplicates, e.persist.flush,
		e.persist.deleted, e.persist.summarySteps, e.persist.summaryStep,
		e.backend.rules,
		e.otlpSpans,
		providerLimitsCollector{e.providerLimits, e},
		e.headroomRefusals,
		e.inFlight,
	)
	e.noUserLabel = opts.NoUserLabel
	if opts.Limiter != nil {
		e.WatchLimiter(opts.Limiter)
	}
	return e
}

// WatchLimiter exports the limiter's quota gauges, bucket count and
// estimates, read at scrape time. Call it once, unless Options.Limiter was set.
func (e *Exporter) WatchLimiter(l *limiter.Limiter) {
	if !e.noUserLabel {
		e.reg.MustRegister(newQuotaCollector(l, e.guard, e.teams))
	}
	e.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "llmusage_limiter_buckets",
		Help: "Live token buckets in the limiter (full, idle buckets are dropped).",
	}, func() float64 { return float64(l.Len()) }))
	e.reg.MustRegister(newEstimatesCollector(l))
}

// Registry returns the registry every metric is on.
func (e *Exporter) Registry() *prometheus.Registry { return e.reg }

// Handler serves the registry in the Prometheus exposition formats.
func (e *Exporter) Handler() http.Handler {
	return promhttp.HandlerFor(e.reg, promhttp.HandlerOpts{Registry: e.reg, ErrorHandling: promhttp.ContinueOnError})
}

// ObserveRecords counts the records of one accepted request.
func (e *Exporter) ObserveRecords(recs []record.Record) {
	now := e.clock.Now()
	ns := e.models.nanos(now)
	for i := range recs {
		e.usage.observeRecord(&recs[i], e.guard.label(recs[i].UserID, now), e.teams.label(recs[i].TeamID, now), ns)
	}
	e.usage.accepted.Add(float64(len(recs)))
}

// ObserveRejected counts the records of a request refused as invalid.
func (e *Exporter) ObserveRejected(n int) { e.usage.rejected.Add(float64(n)) }

// ObserveCheck counts a quota decision.
func (e *Exporter) ObserveCheck(userID string, allowed bool) {
	e.usage.observeCheck(e.guard.label(userID, e.clock.Now()), allowed)
}

// Sweep removes the series of users, of teams, and of provider and model
// pairs, idle longer than the TTL, returning how many users were forgotten.
func (e *Exporter) Sweep() int {
	now := e.clock.Now()
	expired := e.guard.expire(now)
	for _, u := range expired {
		e.usage.deleteUser(u)
	}
	e.usage.deleteTeams(e.teams.expire(now))
	pairs := e.models.expire(now)
	e.usage.deletePairs(pairs)
	e.providerLimits.expire(now, pairs)
	return len(expired)
}
