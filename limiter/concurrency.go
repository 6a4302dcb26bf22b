package limiter

import (
	"math"
	"time"
)

// Concurrency limits (unit Concurrent, window InFlight): a budget of
// slots (see Bucket.IsBudget) that a check spends and the record of its
// request_id gives back, or its wait (ConcurrencyTimeout) does.

// ConcurrencyRetry is the wait a concurrency limit's refusal reports: a
// slot comes back when a call ends, which no clock tells, and calls
// last seconds, so a client tries again soon (and an SDK's own retry
// does, see proxy/errors.go) rather than waiting out a window.
const ConcurrencyRetry = time.Second

// DefaultConcurrencyTimeout is Options.ConcurrencyTimeout's default.
const DefaultConcurrencyTimeout = 10 * time.Minute

// concurrencyPeriodEnd ends every concurrency limit's Period, which
// starts at 0: its slots are spent by checks and given back by records,
// never by a period's end.
const concurrencyPeriodEnd = math.MaxInt64

// holdTTL is how long a check's estimates on bs wait for its record: a
// slot in flight waits ConcurrencyTimeout.
func (l *Limiter) holdTTL(bs []Bucket) time.Duration {
	for _, b := range bs {
		if b.IsConcurrency() {
			return l.concurrencyTimeout
		}
	}
	return l.pendingTTL
}
