package limiter

import (
	"fmt"
	"testing"
)

// Review of concurrent: N limits in the memory path (no HoldStore).

func inFlightRemaining(t *testing.T, l *Limiter, user string) int64 {
	t.Helper()
	st, err := l.Limits(user, "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Unit == Concurrent {
			return s.Remaining
		}
	}
	t.Fatalf("no concurrency limit in %+v", st)
	return 0
}

// TestReviewConcurrencySameRequestIDOfTwoUsers: request_ids are chosen
// by clients, and two users' may be equal. The estimates were keyed by
// request_id alone within a shard of users: the second user's check
// overwrote the first one's estimate, whose record then found nothing
// to settle, and the first user's slot was never given back.
func TestReviewConcurrencySameRequestIDOfTwoUsers(t *testing.T) {
	l, _ := concurrencyLimiter(t, Options{}, concurrent(1))
	// Two users in the same shard of estimates.
	a, b := "alice", ""
	for i := 0; b == ""; i++ {
		if u := fmt.Sprint("user-", i); l.userHash(u)%numShards == l.userHash(a)%numShards {
			b = u
		}
	}
	for _, u := range []string{a, b} {
		if d := mustCheck(t, l, Request{UserID: u, RequestID: "1"}); !d.Allowed {
			t.Fatalf("%s's first call refused", u)
		}
	}
	for _, u := range []string{a, b} {
		if err := l.Record(Usage{UserID: u, RequestID: "1"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range []string{a, b} {
		if left := inFlightRemaining(t, l, u); left != 1 {
			t.Fatalf("%s: %d slots left after its only call's record, want 1", u, left)
		}
	}
}
