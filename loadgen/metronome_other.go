//go:build !linux

package loadgen

import (
	"context"
	"time"
)

// metronome ticks every interval on Go's timers, which may wake late; a
// paced run's latencies then include that lag (see pace).
type metronome struct {
	ctx      context.Context
	start    time.Time
	interval time.Duration
	// ticks counts the ticks returned so far.
	ticks int
}

// newMetronome starts a metronome whose n-th tick is due at start + n*interval.
func newMetronome(ctx context.Context, interval time.Duration) (*metronome, time.Time, error) {
	start := time.Now()
	return &metronome{ctx: ctx, start: start, interval: interval}, start, nil
}

// wait blocks until a tick is due and returns how many came since the last wait.
func (m *metronome) wait() (int, error) {
	next := m.start.Add(time.Duration(m.ticks+1) * m.interval)
	if d := time.Until(next); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-m.ctx.Done():
			return 0, m.ctx.Err()
		case <-t.C:
		}
	}
	due := int(time.Since(m.start) / m.interval)
	n := due - m.ticks
	m.ticks = due
	return n, nil
}

func (m *metronome) close() {}
