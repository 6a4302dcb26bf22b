// Package clock tells the time through an interface, so that the limiter,
// the collector and the exporter run on a manual clock in tests and no
// test sleeps. It is its own package so that none of them has to import
// another for it.
package clock

import "time"

// Clock tells the time.
type Clock interface {
	Now() time.Time
}

// System is the wall clock.
type System struct{}

// Now returns time.Now().
func (System) Now() time.Time { return time.Now() }

// Manual is a Clock that moves only when told to. It takes no lock, so
// that benchmarks on it measure the code and not the clock: Advance and
// Set must not run concurrently with Now.
type Manual struct {
	// t is the time Now returns.
	t time.Time
}

// NewManual returns a Manual clock at t.
func NewManual(t time.Time) *Manual { return &Manual{t: t} }

// Now returns the time the clock was last set or advanced to.
func (m *Manual) Now() time.Time { return m.t }

// Advance moves the clock by d.
func (m *Manual) Advance(d time.Duration) { m.t = m.t.Add(d) }

// Set moves the clock to t.
func (m *Manual) Set(t time.Time) { m.t = t }
