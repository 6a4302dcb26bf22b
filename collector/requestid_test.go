package collector

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

// TestRequestIDs checks the generated request IDs: UUIDs of version 7
// whose text order is their time order, distinct within a millisecond.
func TestRequestIDs(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 16, 0, 0, 0, time.UTC)
	f := func(a, b time.Time) {
		t.Helper()
		x, y := newRequestID(a), newRequestID(b)
		for _, id := range []string{x, y} {
			if len(id) != 36 || id[14] != '7' || !bytes.ContainsAny([]byte{id[19]}, "89ab") || id[8] != '-' || id[13] != '-' || id[18] != '-' || id[23] != '-' {
				t.Fatalf("%s is not a UUID version 7", id)
			}
		}
		if x == y {
			t.Fatalf("two IDs at %s and %s are both %s", a, b, x)
		}
		if b.Sub(a) >= time.Millisecond && x >= y {
			t.Fatalf("the ID at %s (%s) does not sort before the one at %s (%s)", a, x, b, y)
		}
		if ms := t0.UnixMilli(); a.Equal(t0) && x[:8]+x[9:13] != fmt.Sprintf("%012x", ms) {
			t.Fatalf("%s does not start with the time in milliseconds, %012x", x, ms)
		}
	}
	f(t0, t0)
	f(t0, t0.Add(time.Millisecond))
	f(t0, t0.Add(time.Hour))
	f(t0.Add(999*time.Millisecond), t0.Add(time.Second))
	f(time.Unix(0, 0), t0)
}
