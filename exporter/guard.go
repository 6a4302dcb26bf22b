package exporter

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

// userGuard bounds the distinct values of the user label: the first
// maxUsers users get their own series, later ones share OverflowUser until
// idle users expire and make room. A label per user is what per-user quota
// alerting needs, and an unbounded one is how a Prometheus client runs out
// of memory.
type userGuard struct {
	// enabled is false when the user label is dropped altogether.
	enabled  bool
	maxUsers int
	ttl      time.Duration

	mu sync.Mutex
	// lastSeen holds, per tracked user, the last time it was observed.
	lastSeen map[string]time.Time
	// keepEmpty passes the empty value through untracked (the team guard's
	// calls without a team).
	keepEmpty bool

	guardMetrics
}

func newUserGuard(maxUsers int, ttl time.Duration, enabled bool) *userGuard {
	return &userGuard{
		enabled:  enabled,
		maxUsers: maxUsers,
		ttl:      ttl,
		lastSeen: make(map[string]time.Time),
		guardMetrics: newGuardMetrics("llmusage_metrics_users",
			"Distinct user label values currently exported (capped by --metrics-max-users).",
			"Observations counted under user=\""+OverflowUser+"\" because the user cap was reached."),
	}
}

// newTeamGuard bounds the team label as a userGuard bounds the user
// label: the first maxTeams teams get series of their own, later ones
// share OverflowTeam until idle teams expire. The empty team (a call
// without one) is always its own value and is not counted.
func newTeamGuard(maxTeams int, ttl time.Duration) *userGuard {
	return &userGuard{
		enabled:   true,
		maxUsers:  maxTeams,
		ttl:       ttl,
		lastSeen:  make(map[string]time.Time),
		keepEmpty: true,
		guardMetrics: newGuardMetrics("llmusage_metrics_teams",
			"Distinct team label values currently exported, the empty one aside (capped by --metrics-max-teams).",
			"Records counted under team=\""+OverflowTeam+"\" because the team cap was reached."),
	}
}

// label returns the user label value for an observation of user at now.
func (g *userGuard) label(user string, now time.Time) string {
	if !g.enabled || (g.keepEmpty && user == "") {
		return ""
	}
	user = labelValue(user)
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.lastSeen[user]; ok || len(g.lastSeen) < g.maxUsers {
		g.lastSeen[user] = now
		return user
	}
	g.overflow.Inc()
	return OverflowUser
}

// users returns the set of users with series of their own.
func (g *userGuard) users() map[string]bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	set := make(map[string]bool, len(g.lastSeen))
	for u := range g.lastSeen {
		set[u] = true
	}
	return set
}

// expire forgets the users idle longer than the TTL and returns them.
func (g *userGuard) expire(now time.Time) []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var expired []string
	for u, seen := range g.lastSeen {
		if now.Sub(seen) > g.ttl {
			delete(g.lastSeen, u)
			expired = append(expired, u)
		}
	}
	return expired
}

func (g *userGuard) Collect(ch chan<- prometheus.Metric) {
	g.mu.Lock()
	n := len(g.lastSeen)
	g.mu.Unlock()
	g.collect(ch, n)
}

// guardMetrics are a guard's own metrics: how many values it tracks (a
// gauge built at scrape time) and how many observations overflowed.
type guardMetrics struct {
	tracked  *prometheus.Desc
	overflow prometheus.Counter
}

// newGuardMetrics names the gauge name and the counter name_overflow_total.
func newGuardMetrics(name, trackedHelp, overflowHelp string) guardMetrics {
	return guardMetrics{
		tracked:  prometheus.NewDesc(name, trackedHelp, nil, nil),
		overflow: prometheus.NewCounter(prometheus.CounterOpts{Name: name + "_overflow_total", Help: overflowHelp}),
	}
}

func (m guardMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.tracked
	m.overflow.Describe(ch)
}

func (m guardMetrics) collect(ch chan<- prometheus.Metric, tracked int) {
	ch <- prometheus.MustNewConstMetric(m.tracked, prometheus.GaugeValue, float64(tracked))
	m.overflow.Collect(ch)
}

// labelValue makes s safe as a label value. The collector already refuses
// invalid UTF-8, but client_golang panics on it, so the exporter does not
// rely on its callers. Quotes, backslashes and newlines are escaped by the
// exposition encoder.
func labelValue(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// modelGuard bounds the distinct (provider, model) label pairs the way
// userGuard bounds users: both are free-form strings a client sends, and
// one that puts a date or an ID in its model name would otherwise add
// series for every call, times every user. A pair past the cap keeps its
// provider when that provider has pairs under the cap, so a provider's
// error rate still adds up; otherwise both labels become OverflowModel.
type modelGuard struct {
	maxPairs int
	ttl      time.Duration
	// epoch is the guard's time zero: cells hold nanoseconds since it,
	// from the monotonic clock when now carries it, so that a step of the
	// wall clock does not expire every pair at once.
	epoch time.Time

	mu sync.Mutex
	// lastSeen holds, per tracked pair, when it was last observed. The
	// usage series cache holds the same cells and refreshes them itself,
	// so that a known pair costs no trip here.
	lastSeen map[modelPair]*pairSeen
	// pairsOf counts the tracked pairs of each provider.
	pairsOf map[string]int
	// overflowSeen holds the same for the overflow pairs, (provider,
	// OverflowModel) and (OverflowModel, OverflowModel), so that their
	// series expire too. A provider gets one only while it has tracked
	// pairs, so there are at most about twice maxPairs.
	overflowSeen map[modelPair]*pairSeen

	guardMetrics
}

// modelPair is a provider and model label value.
type modelPair struct{ provider, model string }

// pairSeen is when a pair was last observed, in nanoseconds since the
// guard's epoch.
type pairSeen struct{ ns atomic.Int64 }

// refresh sets the cell to ns unless it is less than a second older: the
// TTL is counted in minutes, and an atomic store on every record of a
// busy model costs a tenth of counting the record.
func (s *pairSeen) refresh(ns int64) {
	if ns-s.ns.Load() >= int64(time.Second) {
		s.ns.Store(ns)
	}
}

func newModelGuard(maxPairs int, ttl time.Duration, now time.Time) *modelGuard {
	return &modelGuard{
		maxPairs:     maxPairs,
		ttl:          ttl,
		epoch:        now,
		lastSeen:     make(map[modelPair]*pairSeen),
		pairsOf:      make(map[string]int),
		overflowSeen: make(map[modelPair]*pairSeen),
		guardMetrics: newGuardMetrics("llmusage_metrics_models",
			"Distinct provider and model label pairs currently exported (capped by --metrics-max-models).",
			"Records counted under model=\""+OverflowModel+"\" because the provider and model cap was reached."),
	}
}

// nanos is now on the guard's clock.
func (g *modelGuard) nanos(now time.Time) int64 { return int64(now.Sub(g.epoch)) }

// label returns the pair a record of provider and model (already safe
// label values) is counted under at ns, and that pair's last-seen cell.
func (g *modelGuard) label(provider, model string, ns int64) (modelPair, *pairSeen) {
	p := modelPair{provider, model}
	g.mu.Lock()
	defer g.mu.Unlock()
	if seen := g.lastSeen[p]; seen != nil {
		seen.ns.Store(ns)
		return p, seen
	}
	if len(g.lastSeen) < g.maxPairs {
		seen := &pairSeen{}
		seen.ns.Store(ns)
		g.lastSeen[p] = seen
		g.pairsOf[provider]++
		return p, seen
	}
	g.overflow.Inc()
	o := modelPair{OverflowModel, OverflowModel}
	if g.pairsOf[provider] > 0 {
		o.provider = provider
	}
	seen := g.overflowSeen[o]
	if seen == nil {
		seen = &pairSeen{}
		g.overflowSeen[o] = seen
	}
	seen.ns.Store(ns)
	return o, seen
}

// expire forgets the pairs, tracked or overflow, idle longer than the TTL
// at now and returns them.
func (g *modelGuard) expire(now time.Time) map[modelPair]bool {
	ns := g.nanos(now)
	g.mu.Lock()
	defer g.mu.Unlock()
	expired := map[modelPair]bool{}
	for p, seen := range g.lastSeen {
		if ns-seen.ns.Load() > int64(g.ttl) {
			delete(g.lastSeen, p)
			if g.pairsOf[p.provider]--; g.pairsOf[p.provider] == 0 {
				delete(g.pairsOf, p.provider)
			}
			expired[p] = true
		}
	}
	for p, seen := range g.overflowSeen {
		if ns-seen.ns.Load() > int64(g.ttl) {
			delete(g.overflowSeen, p)
			expired[p] = true
		}
	}
	return expired
}

func (g *modelGuard) Collect(ch chan<- prometheus.Metric) {
	g.mu.Lock()
	n := len(g.lastSeen)
	g.mu.Unlock()
	g.collect(ch, n)
}
