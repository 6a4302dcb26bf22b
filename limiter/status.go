package limiter

import (
	"math"
	"time"
)

// How a bucket is reported: its Status, and the tightest of a call's.

// leastLeft is the index of the status with the least left relative to
// its limit (the first of equals), -1 for none.
func leastLeft(limits []Status) int {
	best, bestShare := -1, 0.0
	for i, s := range limits {
		share := 0.0
		if s.Limit > 0 {
			share = float64(s.Remaining) / float64(s.Limit)
		}
		if best < 0 || share < bestShare {
			best, bestShare = i, share
		}
	}
	return best
}

// status describes rule r's bucket without its level.
func (r *rule) status() Status {
	return Status{Window: r.Window, Unit: r.Unit, Provider: r.Provider, Model: r.Model, TeamID: r.TeamID, Per: r.Per, Limit: r.Limit}
}

// statusAt reports bucket b of rule r holding level units. A budget
// resets when its period ends, spent or not.
func statusAt(r *rule, b Bucket, level float64, now time.Time) Status {
	s := r.status()
	s.Remaining = max(0, int64(math.Floor(level)))
	if b.IsBudget() && !b.IsConcurrency() {
		s.ResetAt = time.Unix(b.Period.End, 0).UTC()
	} else {
		s.ResetAt = now.Add(b.RefillTime(now, float64(r.Limit)-level))
	}
	return s
}
