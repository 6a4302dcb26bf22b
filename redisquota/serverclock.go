package redisquota

import (
	"errors"
	"time"
)

// learnClock takes the offset of the server's clock (serverNow, read
// between start and end) from this one's, keeping the sample of the
// fastest round trip of the last clockWindow: a slow round trip tells
// the offset only within half of it, and one slow reply must not make
// the next deadlines early.
func (s *Store) learnClock(start, end time.Time, serverNow int64) {
	rtt := end.Sub(start)
	s.clockMu.Lock()
	defer s.clockMu.Unlock()
	if !s.hasOffset.Load() || rtt <= s.bestRTT || end.Sub(s.bestAt) > clockWindow {
		s.bestRTT, s.bestAt = rtt, end
		s.clockOffset.Store(serverNow - start.Add(rtt/2).UnixMicro())
		s.hasOffset.Store(true)
	}
}

// clockWindow is how long the fastest round trip's clock offset is kept.
const clockWindow = 10 * time.Second

// errPastDeadline is a call that reached Redis after its caller gave up.
var errPastDeadline = errors.New("cannot use the call: it reached Redis after its deadline and changed nothing")

// serverDeadline is when, on the server's clock, a call started at start
// must no longer change anything: a little before the caller gives up,
// so that an answer computed in time still arrives in time. 0 (none)
// until a first answer told the server's clock.
func (s *Store) serverDeadline(start time.Time) int64 {
	if !s.hasOffset.Load() {
		return 0
	}
	margin := min(s.opts.Timeout/5, 10*time.Millisecond)
	return start.Add(s.opts.Timeout-margin).UnixMicro() + s.clockOffset.Load()
}
