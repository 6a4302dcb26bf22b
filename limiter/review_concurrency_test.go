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

// TestReviewConcurrencyRetryAtTheLimit: a check sent again (its answer
// was lost) under concurrent: 1 is the same call: Redis lets it through
// (its hold is given back as it is taken again), and so must the memory
// path, rather than refuse it while its own first check holds the slot
// (the call, never made, then holds it until the concurrency timeout).
func TestReviewConcurrencyRetryAtTheLimit(t *testing.T) {
	l, _ := concurrencyLimiter(t, Options{}, concurrent(1))
	for i := range 2 {
		if d := mustCheck(t, l, Request{UserID: "u", RequestID: "a"}); !d.Allowed {
			t.Fatalf("check %d of request a refused under concurrent: 1", i+1)
		}
	}
	if d := mustCheck(t, l, Request{UserID: "u", RequestID: "b"}); d.Allowed {
		t.Fatal("a second call passed concurrent: 1")
	}
	if err := l.Record(Usage{UserID: "u", RequestID: "a"}); err != nil {
		t.Fatal(err)
	}
	if left := inFlightRemaining(t, l, "u"); left != 1 {
		t.Fatalf("%d slots left after the record, want 1", left)
	}
}

// TestReviewConcurrencyRetryRefusedByPoolInMemory: the memory-path twin
// of the Redis test: a retry refused by a pool keeps the call's slot.
func TestReviewConcurrencyRetryRefusedByPoolInMemory(t *testing.T) {
	l, _ := concurrencyLimiter(t, Options{}, concurrent(1), Rule{Window: Day, Unit: Tokens, Limit: 100, Per: PerAll})
	if !mustCheck(t, l, Request{UserID: "u", RequestID: "a", Tokens: 60}).Allowed || !mustCheck(t, l, Request{UserID: "v", RequestID: "b", Tokens: 30}).Allowed {
		t.Fatal("the first two calls were refused")
	}
	if mustCheck(t, l, Request{UserID: "u", RequestID: "a", Tokens: 75}).Allowed {
		t.Fatal("the retry with 75 tokens passed a pool with 10 left")
	}
	if mustCheck(t, l, Request{UserID: "u", RequestID: "c", Tokens: 5}).Allowed {
		t.Fatal("a second call of u passed concurrent: 1 with a call in flight")
	}
	if err := l.Record(Usage{UserID: "u", RequestID: "a", Tokens: 60}); err != nil {
		t.Fatal(err)
	}
	if left := inFlightRemaining(t, l, "u"); left != 1 {
		t.Fatalf("%d slots left after the record, want 1", left)
	}
}

// TestReviewConcurrencyReloadMovesTheLimit: a reload that changes a
// concurrency limit's scope (groq only, then every provider) makes a
// new bucket, which holds none of the calls checked before. Their
// records gave it back slots it never gave out (an estimate knew the
// level and limit type of its slots, not their scope): with two calls
// checked since the reload in flight under concurrent: 2, the records
// of the two older calls left two slots free, and a third call passed.
func TestReviewConcurrencyReloadMovesTheLimit(t *testing.T) {
	groq := Rule{Window: InFlight, Unit: Concurrent, Limit: 2, Provider: "groq"}
	l, _ := concurrencyLimiter(t, Options{}, groq)
	for _, id := range []string{"old1", "old2"} {
		if !mustCheck(t, l, Request{UserID: "u", Provider: "groq", RequestID: id}).Allowed {
			t.Fatal("refused before the reload")
		}
	}
	if err := l.SetRules([]Rule{concurrent(2)}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"new1", "new2"} {
		if !mustCheck(t, l, Request{UserID: "u", Provider: "openai", RequestID: id}).Allowed {
			t.Fatal("the new limit's first two calls refused")
		}
	}
	for _, id := range []string{"old1", "old2"} {
		if err := l.Record(Usage{UserID: "u", Provider: "groq", RequestID: id}); err != nil {
			t.Fatal(err)
		}
	}
	if left := inFlightRemaining(t, l, "u"); left != 0 {
		t.Fatalf("%d slots left with new1 and new2 in flight under concurrent: 2, want 0", left)
	}
	if mustCheck(t, l, Request{UserID: "u", Provider: "openai", RequestID: "new3"}).Allowed {
		t.Fatal("a third call passed concurrent: 2")
	}
}
