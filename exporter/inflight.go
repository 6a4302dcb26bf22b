package exporter

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// callsInFlight counts, by user, the calls the proxy has upstream now: a
// series is made at scrape time for each user with a call in flight,
// under the user guard, so that a flood of users shares __other__.
type callsInFlight struct {
	desc *prometheus.Desc
	// labelled tells whether the user label is kept (--no-user-label
	// drops it: one series for the sidecar).
	labelled bool
	mu       sync.Mutex
	// byUser holds the calls in flight by user label value.
	byUser map[string]int
}

func newCallsInFlight(labelled bool) *callsInFlight {
	labels := []string{"user"}
	if !labelled {
		labels = nil
	}
	return &callsInFlight{
		desc: prometheus.NewDesc("llm_calls_in_flight",
			"Calls this sidecar's proxy has upstream now (streams until they end), by user; users with none have no series.", labels, nil),
		labelled: labelled,
		byUser:   map[string]int{},
	}
}

// CallStarted counts a call of user in flight until end is called, once
// (proxy.InFlightObserver).
func (e *Exporter) CallStarted(user string) (end func()) {
	label := ""
	if !e.noUserLabel {
		label = e.guard.label(user, e.clock.Now())
	}
	c := e.inFlight
	c.mu.Lock()
	c.byUser[label]++
	c.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.byUser[label]--; c.byUser[label] <= 0 {
				delete(c.byUser, label)
			}
		})
	}
}

func (c *callsInFlight) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *callsInFlight) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.labelled {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(c.byUser[""]))
		return
	}
	for user, n := range c.byUser {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), user)
	}
}
