package exporter

import (
	"strings"
	"sync"
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

	usersDesc *prometheus.Desc
	overflow  prometheus.Counter
}

func newUserGuard(maxUsers int, ttl time.Duration, enabled bool) *userGuard {
	return &userGuard{
		enabled:  enabled,
		maxUsers: maxUsers,
		ttl:      ttl,
		lastSeen: make(map[string]time.Time),
		usersDesc: prometheus.NewDesc("llmusage_metrics_users",
			"Distinct user label values currently exported (capped by --metrics-max-users).", nil, nil),
		overflow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "llmusage_metrics_users_overflow_total",
			Help: "Observations counted under user=\"" + OverflowUser + "\" because the user cap was reached.",
		}),
	}
}

// label returns the user label value for an observation of user at now.
func (g *userGuard) label(user string, now time.Time) string {
	if !g.enabled {
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

func (g *userGuard) Describe(ch chan<- *prometheus.Desc) {
	ch <- g.usersDesc
	g.overflow.Describe(ch)
}

func (g *userGuard) Collect(ch chan<- prometheus.Metric) {
	g.mu.Lock()
	n := len(g.lastSeen)
	g.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(g.usersDesc, prometheus.GaugeValue, float64(n))
	g.overflow.Collect(ch)
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
