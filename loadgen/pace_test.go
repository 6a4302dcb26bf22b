package loadgen

import (
	"context"
	"testing"
	"time"
)

// TestPace checks the schedule a paced run follows: tickets every
// 1/rate exactly, none due after the run ends, then a closed channel.
func TestPace(t *testing.T) {
	f := func(rate float64, d time.Duration) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		interval := time.Duration(float64(time.Second) / rate)
		m, start, err := newMetronome(ctx, interval)
		if err != nil {
			t.Fatal(err)
		}
		tickets := make(chan time.Time)
		go pace(ctx, m, start, interval, tickets)
		var due []time.Time
		for tk := range tickets {
			due = append(due, tk)
		}
		deadline, _ := ctx.Deadline()
		for i, tk := range due {
			if tk.After(deadline) {
				t.Fatalf("rate %g: ticket %d is due %s after the run ended", rate, i, tk.Sub(deadline))
			}
		}
		want := int(rate * d.Seconds())
		if len(due) > want || len(due) < want/2 {
			t.Fatalf("rate %g for %s: %d tickets, want about %d", rate, d, len(due), want)
		}
		for i := 1; i < len(due); i++ {
			if gap := due[i].Sub(due[i-1]); gap != interval {
				t.Fatalf("rate %g: tickets %d and %d are %s apart, want %s", rate, i-1, i, gap, interval)
			}
		}
	}
	f(1000, 300*time.Millisecond)
	f(20000, 100*time.Millisecond)
	f(3, 1100*time.Millisecond)
}
